//! `cargo xtask bench envoy`: Envoy's CPU time per request for three configurations measured
//! side by side in one run — router only, Envoy's native equivalent of the policy, and the
//! Portcullis filter. CPU time of the Envoy process (from /proc) per request is far steadier on
//! shared machines than requests per second.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::envoy::{INSTALLED_FILTER, admin_ready, spawn_envoy};
use crate::stage::{cmd, exec, output, root};
use crate::tools::state_dir;

pub const UPSTREAM_PORT: u16 = 18000;
pub const BASELINE_FILTER: &str = ".portcullis/envoy/baseline_filter.wasm";
pub const PROXY_PORT: u16 = 18080;
pub const PROXY_ADMIN: u16 = 18901;
const SECONDS_PER_RUN: u32 = 8;
const ROUNDS: usize = 3;

#[derive(Clone, Copy)]
enum Variant {
    RouterOnly,
    Native,
    /// A proxy-wasm filter that does nothing: the floor any Wasm filter pays.
    EmptyWasm,
    Portcullis,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Self::RouterOnly => "router only",
            Self::Native => "Envoy native (header mutation + local_ratelimit)",
            Self::EmptyWasm => "empty proxy-wasm filter (floor)",
            Self::Portcullis => "Portcullis filter",
        }
    }
}

/// The policy both the native configuration and the filter apply: the seed headers and a
/// per-client limit high enough never to refuse, so the limiter does its full work every time.
const POLICY: &str = r#"{"https_redirect": {"enabled": false}, "allowed_hosts": ["*"],
 "rate_limits": [{"name": "bench", "method": "GET", "path": "/bench", "limit": "1000000/second"}]}"#;

const SEED_HEADERS: [(&str, &str); 7] = [
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("x-xss-protection", "1; mode=block"),
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'",
    ),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    ("permissions-policy", "geolocation=(), microphone=(), camera=(), payment=(), usb=(), magnetometer=()"),
    ("server", "Unknown"),
];

fn proxy_config(variant: Variant) -> String {
    // Items of `http_filters` sit at 18 spaces, route fields at 26.
    let (filters, route_extra) = match variant {
        Variant::RouterOnly => (String::new(), String::new()),
        Variant::Native => {
            let headers: String = SEED_HEADERS
                .iter()
                .map(|(k, v)| {
                    format!(
                        "\n{0}- header: {{ key: {k}, value: \"{v}\" }}\n{0}  append_action: OVERWRITE_IF_EXISTS_OR_ADD",
                        " ".repeat(28)
                    )
                })
                .collect();
            let filter = r#"
                  - name: envoy.filters.http.local_ratelimit
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                      stat_prefix: bench
                      max_dynamic_descriptors: 100000
                      token_bucket: { max_tokens: 1000000, tokens_per_fill: 1000000, fill_interval: 1s }
                      filter_enabled: { default_value: { numerator: 100, denominator: HUNDRED }, runtime_key: rl_enabled }
                      filter_enforced: { default_value: { numerator: 100, denominator: HUNDRED }, runtime_key: rl_enforced }
                      descriptors:
                        - entries: [{ key: remote_address }]
                          token_bucket: { max_tokens: 1000000, tokens_per_fill: 1000000, fill_interval: 1s }"#;
            let route = format!(
                r#"
                            rate_limits: [{{ actions: [{{ remote_address: {{}} }}] }}]
                          response_headers_to_remove: [x-powered-by]
                          response_headers_to_add:{headers}"#
            );
            (filter.to_owned(), route)
        }
        Variant::EmptyWasm => (
            format!(
                r#"
                  - name: envoy.filters.http.wasm
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        vm_config:
                          runtime: envoy.wasm.runtime.v8
                          code: {{ local: {{ filename: {BASELINE_FILTER} }} }}"#
            ),
            String::new(),
        ),
        Variant::Portcullis => return filter_proxy_config(POLICY, ""),
    };
    proxy_yaml(&filters, &route_extra, "")
}

/// The bench proxy with the Portcullis filter under `policy` (JSON), plus `extra_clusters`
/// (YAML list items at four spaces).
pub fn filter_proxy_config(policy: &str, extra_clusters: &str) -> String {
    let filter = format!(
        r#"
                  - name: envoy.filters.http.wasm
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        root_id: portcullis
                        vm_config:
                          vm_id: portcullis
                          runtime: envoy.wasm.runtime.v8
                          code: {{ local: {{ filename: {INSTALLED_FILTER} }} }}
                        configuration:
                          "@type": type.googleapis.com/google.protobuf.StringValue
                          value: '{}'"#,
        policy.replace('\n', "")
    );
    proxy_yaml(&filter, "", extra_clusters)
}

fn proxy_yaml(filters: &str, route_extra: &str, extra_clusters: &str) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {PROXY_ADMIN} }} }}
static_resources:
  listeners:
    - address: {{ socket_address: {{ address: 127.0.0.1, port_value: {PROXY_PORT} }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: bench
                server_name: Unknown
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: "/" }}
                          route:
                            cluster: upstream{route_extra}
                http_filters:{filters}
                  - name: envoy.filters.http.router
                    typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
    - name: upstream
      type: STATIC
      load_assignment:
        cluster_name: upstream
        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {UPSTREAM_PORT} }} }} }} }}] }}]
{extra_clusters}"#
    )
}

pub fn upstream_config() -> String {
    format!(
        r#"static_resources:
  listeners:
    - address: {{ socket_address: {{ address: 127.0.0.1, port_value: {UPSTREAM_PORT} }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: upstream
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      response_headers_to_add: [{{ header: {{ key: x-powered-by, value: FastAPI }} }}]
                      routes: [{{ match: {{ prefix: "/" }}, direct_response: {{ status: 200, body: {{ inline_string: "{{\"ok\":true}}" }} }} }}]
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    )
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

pub fn ticks_per_second() -> Result<f64> {
    Ok(output(&mut cmd("getconf", &["CLK_TCK"]))?.trim().parse()?)
}

/// Runs wrk against the proxy; returns the number of requests completed.
fn wrk(seconds: u32) -> Result<u64> {
    let out = output(&mut cmd(
        "wrk",
        &["-t1", "-c16", &format!("-d{seconds}s"), &format!("http://127.0.0.1:{PROXY_PORT}/bench")],
    ))?;
    let non_2xx = out.lines().any(|l| l.contains("Non-2xx"));
    if non_2xx {
        bail!("wrk saw non-2xx responses:\n{out}");
    }
    let requests = out
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n.trim().to_owned()))
        .with_context(|| format!("no request count in wrk output:\n{out}"))?;
    Ok(requests.parse()?)
}

fn measure(envoy: &Path, variant: Variant, dir: &Path) -> Result<(f64, u64)> {
    let config = dir.join(format!("proxy-{}.yaml", variant as u8));
    std::fs::write(&config, proxy_config(variant))?;
    let mut proxy = spawn_envoy(envoy, &config, "bench-proxy", 52, 1, "error")?;
    proxy.wait_until(Duration::from_secs(20), || admin_ready(PROXY_ADMIN))?;
    wrk(1)?; // warm-up: connections, V8 tier-up
    let pid = proxy.child.id();
    let before = cpu_ticks(pid)?;
    let requests = wrk(SECONDS_PER_RUN)?;
    let ticks = cpu_ticks(pid)? - before;
    let micros = ticks as f64 / ticks_per_second()? * 1e6 / requests as f64;
    Ok((micros, requests))
}

pub fn run(envoy: &Path) -> Result<Vec<(String, String)>> {
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is not installed: `apt-get install -y wrk` (cargo xtask setup does it when run as root)");
    }
    let dir = state_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let upstream_config_path = dir.join("upstream.yaml");
    std::fs::write(&upstream_config_path, upstream_config())?;
    let mut upstream = spawn_envoy(envoy, &upstream_config_path, "bench-upstream", 51, 1, "error")?;
    upstream
        .wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", UPSTREAM_PORT)).is_ok())?;

    exec(&mut cmd(
        "cargo",
        &["build", "--quiet", "-p", "baseline-filter", "--target", "wasm32-wasip1", "--profile", "filter"],
    ))?;
    std::fs::copy(
        crate::stage::target_dir()?.join("wasm32-wasip1/filter/baseline_filter.wasm"),
        root().join(BASELINE_FILTER),
    )?;
    let variants = [Variant::RouterOnly, Variant::Native, Variant::EmptyWasm, Variant::Portcullis];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 1..=ROUNDS {
        for (i, variant) in variants.iter().enumerate() {
            let (micros, requests) = measure(envoy, *variant, &dir)?;
            println!("    round {round}: {:<50} {micros:7.2} µs CPU/request ({requests} requests)", variant.name());
            samples[i].push(micros);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let medians: Vec<f64> = samples.iter_mut().map(median).collect();
    let mut rows: Vec<(String, String)> = variants
        .iter()
        .zip(&medians)
        .map(|(v, m)| (format!("envoy: {}", v.name()), format!("{m:.2} µs CPU/request")))
        .collect();
    let [router, native, empty, filter] = [medians[0], medians[1], medians[2], medians[3]];
    rows.push(("envoy: filter / native".into(), format!("{:.2}×", filter / native)));
    rows.push(("envoy: filter / router only".into(), format!("{:.2}×", filter / router)));
    rows.push(("envoy: native / router only".into(), format!("{:.2}×", native / router)));
    rows.push(("envoy: empty Wasm filter / router only".into(), format!("{:.2}×", empty / router)));
    rows.push((
        "envoy: Portcullis work above the empty Wasm filter".into(),
        format!("{:.2} µs CPU/request", filter - empty),
    ));
    Ok(rows)
}
