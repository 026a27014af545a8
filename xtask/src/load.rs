//! Load and faults against a running stack (`cargo xtask up`): wrk through Envoy to the origin,
//! with every status counted, RSS of Envoy and the origin before and after; PostgreSQL stopped
//! and restarted in the middle of a run; Envoy killed and restarted beside a running origin.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::db::Cluster;
use crate::tools::state_dir;

/// Counts statuses per wrk thread and prints them at the end (wrk's report has no breakdown).
const COUNT_STATUSES: &str = r#"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {} end
function response(status, headers, body) counts[status] = (counts[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("counts")) do total[status] = (total[status] or 0) + n end
  end
  for status, n in pairs(total) do io.write(string.format("portcullis-status %d %d\n", status, n)) end
  io.write(string.format("portcullis-socket-errors %d\n", summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"#;

const HEALTH: &str = "https://localhost:8443/api/v1/health";
/// The origin's process, as `cargo xtask up` runs it.
const ORIGIN: &str = "portcullis-origin serve";

fn start_wrk(seconds: u32) -> Result<Child> {
    let script = state_dir().join("bench/count-statuses.lua");
    std::fs::create_dir_all(script.parent().context("script dir")?)?;
    std::fs::write(&script, COUNT_STATUSES)?;
    Command::new("wrk")
        .args(["-t1", "-c8", &format!("-d{seconds}s"), "--timeout", "5s", "-s"])
        .arg(&script)
        .arg(HEALTH)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting wrk (apt-get install -y wrk)")
}

/// Status → count, and socket errors, from a finished wrk.
fn finish_wrk(child: Child) -> Result<(Vec<(u16, u64)>, u64)> {
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut statuses = Vec::new();
    let mut socket_errors = None;
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["portcullis-status", status, n] => statuses.push((status.parse()?, n.parse()?)),
            ["portcullis-socket-errors", n] => socket_errors = Some(n.parse()?),
            _ => {}
        }
    }
    let socket_errors = socket_errors.with_context(|| format!("wrk printed no summary:\n{text}"))?;
    statuses.sort();
    Ok((statuses, socket_errors))
}

fn pid_of(pattern: &str) -> Result<u32> {
    let pids = String::from_utf8_lossy(&Command::new("pgrep").args(["-f", pattern]).output()?.stdout).into_owned();
    let pid = pids.lines().next().with_context(|| format!("no process matches {pattern:?}"))?;
    Ok(pid.trim().parse()?)
}

fn rss_kib(pattern: &str) -> Result<u64> {
    let pid = pid_of(pattern)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

fn envoy_pattern() -> String {
    format!("envoy.*--base-id {}", crate::up::ENVOY_BASE_ID)
}

pub fn steady_load(seconds: u32) -> Result<String> {
    // Warm up connections and allocators before the first RSS reading.
    finish_wrk(start_wrk(3)?)?;
    let before = (rss_kib(ORIGIN)?, rss_kib(&envoy_pattern())?);
    let (statuses, socket_errors) = finish_wrk(start_wrk(seconds)?)?;
    let after = (rss_kib(ORIGIN)?, rss_kib(&envoy_pattern())?);
    ensure!(socket_errors == 0, "{socket_errors} socket errors under load");
    ensure!(statuses.iter().all(|(s, _)| *s == 200), "unexpected statuses under load: {statuses:?}");
    let total: u64 = statuses.iter().map(|(_, n)| n).sum();
    // Stable means no growth with the request count: a leak of even 100 bytes a request would show.
    for (what, b, a) in [("origin", before.0, after.0), ("Envoy", before.1, after.1)] {
        ensure!(a <= b + 16 * 1024, "{what} RSS grew from {b} KiB to {a} KiB over {total} requests");
    }
    Ok(format!(
        "{total} requests, all 200; RSS origin {} → {} KiB, Envoy {} → {} KiB",
        before.0, after.0, before.1, after.1
    ))
}

pub fn database_outage() -> Result<String> {
    let cluster = Cluster::dev();
    let wrk = start_wrk(16)?;
    std::thread::sleep(Duration::from_secs(4));
    cluster.stop()?;
    std::thread::sleep(Duration::from_secs(4));
    cluster.start(&crate::db::Migrate::Cargo)?;
    let (statuses, socket_errors) = finish_wrk(wrk)?;
    ensure!(socket_errors == 0, "{socket_errors} socket errors during the outage");
    ensure!(statuses.iter().all(|(s, _)| *s == 200 || *s == 503), "only 200s and 503s expected: {statuses:?}");
    ensure!(statuses.iter().any(|(s, _)| *s == 503), "the outage was not seen (no 503): {statuses:?}");
    // Recovery without restarting anything.
    for _ in 0..50 {
        let ok = crate::up::curl(&["-f", "-o", "/dev/null", HEALTH]).status()?.success();
        if ok {
            return Ok(format!("statuses {statuses:?}, then 200 again"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("no recovery after the database came back: statuses {statuses:?}")
}

/// Envoy killed (SIGKILL, as a crash) while clients talk to the origin directly: the origin
/// keeps its process and answers every request; `cargo xtask up` starts Envoy again, and
/// requests through the edge succeed once more.
pub fn envoy_restart() -> Result<String> {
    let origin = pid_of(ORIGIN)?;
    let envoy = pid_of(&envoy_pattern())?;
    let certs = crate::certs::dir();
    let (cert, key) = (certs.join("envoy-client.crt"), certs.join("envoy-client.key"));
    let direct = move || -> Result<String> {
        let out = crate::up::curl(&["-o", "/dev/null", "-w", "%{http_code}", "--cert"])
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg("https://localhost:9443/api/v1/health")
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<Vec<String>> {
            let mut codes = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                codes.push(direct()?);
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(codes)
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    Command::new("kill").args(["-KILL", &envoy.to_string()]).status()?;
    let restarted = (0..300).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        let again = pid_of(&envoy_pattern()).ok().filter(|pid| *pid != envoy)?;
        crate::up::curl(&["-f", "-o", "/dev/null", HEALTH]).status().ok()?.success().then_some(again)
    });
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let codes = prober.join().map_err(|_| anyhow::anyhow!("the probing thread panicked"))??;
    let new_envoy = restarted.context("Envoy was not restarted (or not serving) within 30 s of being killed")?;
    ensure!(pid_of(ORIGIN)? == origin, "the origin's process changed while Envoy restarted");
    ensure!(codes.len() >= 10 && codes.iter().all(|c| c == "200"), "direct requests to the origin: {codes:?}");
    Ok(format!(
        "Envoy {envoy} killed, {new_envoy} serving; origin {origin} answered all {} direct requests with 200",
        codes.len()
    ))
}
