//! `cargo xtask bench fleet`: what counting in the fleet costs a limited request.
//!
//! One Envoy (one worker, pinned to CPU 0) with the Portcullis filter in front of a direct-reply
//! upstream, its policy one limited tier that never refuses, in local mode and in global mode
//! against the release-built `portcullis-ratelimit` and a `redis-server` (pinned to CPU 1 with the
//! load generator), measured side by side: rounds alternate the two modes, and each figure is the
//! median of the rounds with their range. Per limited request: wrk's latency p50/p99, Envoy's CPU
//! time (from /proc), and Redis round trips (its `EVALSHA`/`EVAL` calls over requests). Then the
//! service alone, driven over gRPC by `edge/ratelimit/examples/load.rs`: decisions per second and
//! its CPU time per decision.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::bench_envoy::{PROXY_ADMIN, PROXY_PORT, UPSTREAM_PORT, cpu_ticks, filter_proxy_config, ticks_per_second};
use crate::envoy::{self, Daemon, admin_ready, spawn_envoy};
use crate::stage::{cmd, exec, output, stage, target_dir};
use crate::tools::state_dir;

const REDIS_PORT: u16 = 18379;
const SERVICE_PORT: u16 = 18089;
const SERVICE_METRICS_PORT: u16 = 18090;
const ROUNDS: usize = 3;
const SECONDS_PER_RUN: u32 = 6;

/// A tier that never refuses, so every request runs the limiter fully; the key the filter and
/// the service share (a benchmark's, not a secret).
const POLICY: &str = r#"{"https_redirect": {"enabled": false}, "allowed_hosts": ["*"],
 "limiter": {"hash_key": "62656e6368206b6579206f6e6c792121"},
 "rate_limits": [{"name": "bench", "method": "GET", "path": "/bench", "limit": "1000000/second"}]}"#;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Local,
    Global,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Global => "global",
        }
    }

    fn policy(self) -> Result<String> {
        let policy: serde_json::Value = serde_json::from_str(POLICY)?;
        Ok(match self {
            Self::Local => policy,
            Self::Global => crate::fleet::global_policy(policy, 20)?,
        }
        .to_string())
    }
}

/// One run of one mode.
struct Sample {
    p50_ms: f64,
    p99_ms: f64,
    envoy_us: f64,
    redis_calls_per_request: f64,
}

/// `taskset -c CPU` before `program`, when this machine has `taskset` and more than one CPU.
fn pinned(cpu: usize, program: &Path) -> Command {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    if cpus > 1 && Command::new("taskset").arg("-V").output().is_ok() {
        let mut command = Command::new("taskset");
        command.args(["-c", &(cpu % cpus).to_string()]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn redis_cli(args: &[&str]) -> Result<String> {
    output(Command::new("redis-cli").args(["-p", &REDIS_PORT.to_string()]).args(args))
}

/// Script calls Redis has served so far.
fn redis_script_calls() -> Result<u64> {
    let stats = redis_cli(&["INFO", "commandstats"])?;
    Ok(stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
        .sum())
}

/// wrk with latency percentiles: (requests, p50 ms, p99 ms).
fn wrk(seconds: u32) -> Result<(u64, f64, f64)> {
    let wrk = which("wrk")?;
    let out = output(
        pinned(1, &wrk)
            .args(["-t1", "-c1", "--latency", &format!("-d{seconds}s")])
            .arg(format!("http://127.0.0.1:{PROXY_PORT}/bench")),
    )?;
    if out.lines().any(|l| l.contains("Non-2xx")) {
        bail!("wrk saw non-2xx responses:\n{out}");
    }
    let requests: u64 = out
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n.trim().to_owned()))
        .with_context(|| format!("no request count in wrk output:\n{out}"))?
        .parse()?;
    let percentile = |label: &str| -> Result<f64> {
        let value = out
            .lines()
            .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_owned()))
            .with_context(|| format!("no {label} percentile in wrk output:\n{out}"))?;
        parse_duration_ms(&value)
    };
    Ok((requests, percentile("50%")?, percentile("99%")?))
}

/// wrk's `812.00us`, `1.23ms`, `2.00s` in milliseconds.
fn parse_duration_ms(text: &str) -> Result<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        bail!("{text:?} is not a wrk duration");
    };
    Ok(number.parse::<f64>()? * scale)
}

fn which(program: &str) -> Result<std::path::PathBuf> {
    let path = output(&mut cmd("sh", &["-c", &format!("command -v {program}")]))?;
    if path.trim().is_empty() {
        bail!("{program} is not installed: run `cargo xtask setup`");
    }
    Ok(path.trim().into())
}

fn measure(envoy_bin: &Path, mode: Mode, dir: &Path) -> Result<Sample> {
    let cluster = format!(
        r#"    - name: ratelimit
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {{ http2_protocol_options: {{}} }}
      load_assignment:
        cluster_name: ratelimit
        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {SERVICE_PORT} }} }} }} }}] }}]
"#
    );
    let config = dir.join(format!("fleet-proxy-{}.yaml", mode.name()));
    std::fs::write(&config, filter_proxy_config(&mode.policy()?, &cluster))?;
    envoy::validate(envoy_bin, &config)?;
    let mut proxy = Daemon::spawn(
        "bench-fleet-proxy",
        pinned(0, envoy_bin)
            .args(["--disable-hot-restart", "--concurrency", "1", "--log-level", "error", "--base-id", "53", "-c"])
            .arg(&config)
            .current_dir(crate::stage::root()),
    )?;
    proxy.wait_until(Duration::from_secs(20), || admin_ready(PROXY_ADMIN))?;
    // Warm-up: connections (the filter's to the service too), V8 tier-up.
    std::thread::sleep(Duration::from_millis(1200));
    wrk(1)?;
    let pid = proxy.child.id();
    let (cpu_before, calls_before) = (cpu_ticks(pid)?, redis_script_calls()?);
    let (requests, p50_ms, p99_ms) = wrk(SECONDS_PER_RUN)?;
    let (cpu_after, calls_after) = (cpu_ticks(pid)?, redis_script_calls()?);
    let envoy_us = (cpu_after - cpu_before) as f64 / ticks_per_second()? * 1e6 / requests as f64;
    let redis_calls_per_request = (calls_after - calls_before) as f64 / requests as f64;
    Ok(Sample { p50_ms, p99_ms, envoy_us, redis_calls_per_request })
}

/// The median of `values` and their range.
fn summary(values: &mut [f64], unit: &str, decimals: usize) -> String {
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    let (low, high) = (values[0], values[values.len() - 1]);
    format!("{median:.decimals$} {unit} (range {low:.decimals$}–{high:.decimals$})")
}

pub fn run() -> Result<Vec<(String, String)>> {
    let envoy_bin = crate::tools::ensure_envoy()?;
    envoy::ensure_ports_free(&[
        (UPSTREAM_PORT, "bench upstream"),
        (PROXY_PORT, "bench proxy"),
        (PROXY_ADMIN, "bench admin"),
        (REDIS_PORT, "bench Redis"),
        (SERVICE_PORT, "bench rate-limit service"),
        (SERVICE_METRICS_PORT, "bench rate-limit metrics"),
    ])?;
    stage("build: the Envoy filter", envoy::build_filter)?;
    let service_bin = stage("build: portcullis-ratelimit (release)", || crate::fleet::build_service(true))?;
    exec(&mut cmd("cargo", &["build", "--quiet", "--release", "-p", "portcullis-ratelimit", "--example", "load"]))?;
    let load_bin = target_dir()?.join("release/examples/load");

    let dir = state_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let upstream_config = dir.join("upstream.yaml");
    std::fs::write(&upstream_config, crate::bench_envoy::upstream_config())?;
    let mut upstream = spawn_envoy(&envoy_bin, &upstream_config, "bench-upstream", 51, 1, "error")?;
    upstream
        .wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", UPSTREAM_PORT)).is_ok())?;
    let redis_args = crate::fleet::redis_args_for(REDIS_PORT, &dir.join("redis"))?;
    let mut redis = Daemon::spawn("bench-redis", pinned(1, &which("redis-server")?).args(redis_args))?;
    redis.wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", REDIS_PORT)).is_ok())?;
    let policy_path = dir.join("fleet-policy.json");
    std::fs::write(&policy_path, POLICY)?;
    let mut service = Daemon::spawn(
        "bench-ratelimit",
        pinned(1, &service_bin)
            .args(["--listen", &format!("127.0.0.1:{SERVICE_PORT}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{SERVICE_METRICS_PORT}")])
            .args(["--redis-url", &format!("redis://127.0.0.1:{REDIS_PORT}")])
            .arg("--policy")
            .arg(&policy_path),
    )?;
    service.wait_until(Duration::from_secs(20), || {
        envoy::local_http_get(SERVICE_METRICS_PORT, "/metrics").is_some_and(|r| r.contains("redis_up 1"))
    })?;

    let modes = [Mode::Local, Mode::Global];
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(), Vec::new()];
    for round in 1..=ROUNDS {
        for (i, mode) in modes.iter().enumerate() {
            let sample = measure(&envoy_bin, *mode, &dir)?;
            println!(
                "    round {round}: {:<6} p50 {:.3} ms, p99 {:.3} ms, Envoy {:.2} µs CPU/request, {:.3} Redis calls/request",
                mode.name(),
                sample.p50_ms,
                sample.p99_ms,
                sample.envoy_us,
                sample.redis_calls_per_request
            );
            samples[i].push(sample);
        }
    }

    let mut rows = Vec::new();
    let column = |mode: usize, pick: fn(&Sample) -> f64| samples[mode].iter().map(pick).collect::<Vec<f64>>();
    for (i, mode) in modes.iter().enumerate() {
        let name = mode.name();
        rows.push((format!("fleet: {name} mode, latency p50"), summary(&mut column(i, |s| s.p50_ms), "ms", 3)));
        rows.push((format!("fleet: {name} mode, latency p99"), summary(&mut column(i, |s| s.p99_ms), "ms", 3)));
        rows.push((format!("fleet: {name} mode, Envoy CPU"), summary(&mut column(i, |s| s.envoy_us), "µs/request", 2)));
        rows.push((
            format!("fleet: {name} mode, Redis round trips"),
            summary(&mut column(i, |s| s.redis_calls_per_request), "per limited request", 3),
        ));
    }
    // The added cost, round by round (each global run against the local run beside it).
    let added = |pick: fn(&Sample) -> f64| -> Vec<f64> {
        samples[1].iter().zip(&samples[0]).map(|(g, l)| pick(g) - pick(l)).collect()
    };
    rows.push(("fleet: global adds, latency p50".into(), summary(&mut added(|s| s.p50_ms), "ms", 3)));
    rows.push(("fleet: global adds, latency p99".into(), summary(&mut added(|s| s.p99_ms), "ms", 3)));
    rows.push(("fleet: global adds, Envoy CPU".into(), summary(&mut added(|s| s.envoy_us), "µs/request", 2)));

    // The service alone.
    let mut rates = Vec::new();
    let mut cpu_per_decision = Vec::new();
    for _ in 0..ROUNDS {
        let before = cpu_ticks(service.child.id())?;
        let out = output(pinned(0, &load_bin).args([&format!("http://127.0.0.1:{SERVICE_PORT}"), "5", "64"]))?;
        let after = cpu_ticks(service.child.id())?;
        let field = |name: &str| -> Result<f64> {
            out.split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{name}=")))
                .with_context(|| format!("no {name} in {out:?}"))?
                .parse::<f64>()
                .map_err(Into::into)
        };
        let (decisions, seconds, errors) = (field("decisions")?, field("seconds")?, field("errors")?);
        if errors > 0.0 {
            bail!("the service answered {errors} calls with an error: {out}");
        }
        println!("    service alone: {:.0} decisions/s", decisions / seconds);
        rates.push(decisions / seconds);
        cpu_per_decision.push((after - before) as f64 / ticks_per_second()? * 1e6 / decisions);
    }
    rows.push(("fleet: service alone, decisions/s".into(), summary(&mut rates, "decisions/s", 0)));
    rows.push(("fleet: service alone, CPU".into(), summary(&mut cpu_per_decision, "µs/decision", 1)));
    drop(service);
    drop(redis);
    drop(upstream);
    Ok(rows)
}
