//! `cargo xtask bench`: runs the benchmarks and prints one markdown table.

use std::path::Path;

use anyhow::{Context, Result};

use crate::stage::{cmd, exec, stage, target_dir};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// ns per decision of portcullis-core (criterion).
    Core,
    /// Envoy CPU per request: router only vs native equivalent vs the filter; fuel; sizes.
    Envoy,
    /// Worker bundle size (raw and gzipped).
    Worker,
    /// Line coverage of the core, the filter and the origin (as `cargo xtask coverage`).
    Coverage,
    /// Origin requests/s and latency percentiles (wrk over TLS).
    Origin,
    /// Global vs local mode per limited request (latency, Envoy CPU, Redis round trips), and the
    /// rate-limit service alone.
    Fleet,
    /// Every suite.
    All,
}

/// The criterion benchmarks of the core, by id, in the order the table shows them.
const CORE_BENCHES: [&str; 5] = [
    "decide/forwarded (limited tier)",
    "decide/rate limited (429)",
    "decide/forwarded (no tier)",
    "decide/redirect (301)",
    "response edits",
];

pub fn run(suite: Suite) -> Result<()> {
    let mut rows = Vec::new();
    if matches!(suite, Suite::Core | Suite::All) {
        rows.extend(core()?);
    }
    if matches!(suite, Suite::Envoy | Suite::All) {
        rows.extend(envoy()?);
    }
    if matches!(suite, Suite::Worker | Suite::All) {
        rows.extend(worker()?);
    }
    if matches!(suite, Suite::Origin | Suite::All) {
        rows.extend(crate::bench_origin::run()?);
    }
    if matches!(suite, Suite::Fleet | Suite::All) {
        rows.extend(crate::bench_fleet::run()?);
    }
    if matches!(suite, Suite::Coverage | Suite::All) {
        rows.extend(crate::coverage::run()?);
    }
    println!("\n| benchmark | result |\n| --- | --- |");
    for (name, value) in rows {
        println!("| {name} | {value} |");
    }
    Ok(())
}

fn envoy() -> Result<Vec<(String, String)>> {
    let filter = stage("build: the Envoy filter", crate::envoy::build_filter)?;
    let size = std::fs::metadata(&filter)?.len();
    let envoy = crate::tools::ensure_envoy()?;
    crate::envoy::ensure_ports_free(&[(18000, "bench upstream"), (18080, "bench proxy"), (18901, "bench admin")])?;
    let mut rows = stage(
        "bench: Envoy CPU per request, each request class against its native equivalent (interleaved, pinned)",
        || crate::bench_envoy::run(&envoy),
    )?;
    rows.push(("envoy: filter .wasm size".into(), kib(size)));
    let empty = crate::stage::root().join(crate::bench_envoy::BASELINE_FILTER);
    rows.push(("envoy: empty proxy-wasm filter .wasm size".into(), kib(std::fs::metadata(&empty)?.len())));
    rows.extend(stage("bench: fuel per request and limiter bytes per key (wasmtime host)", || {
        filter_figures(&filter)
    })?);
    Ok(rows)
}

fn kib(bytes: u64) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

/// Deterministic figures of the built filter, from `wasm-tests/examples/filter_figures.rs`.
fn filter_figures(filter: &Path) -> Result<Vec<(String, String)>> {
    let out = crate::stage::output(
        cmd("cargo", &["run", "--quiet", "-p", "wasm-tests", "--example", "filter_figures"])
            .env("PORTCULLIS_FILTER_WASM", filter),
    )?;
    let figures: serde_json::Value = serde_json::from_str(out.trim()).with_context(|| format!("figures: {out}"))?;
    let number = |key: &str| figures[key].as_f64().with_context(|| format!("no {key} in {out}"));
    let mut rows = Vec::new();
    for (key, what) in [
        ("fuel_forwarded_tier", "forwarded, rate-limited tier"),
        ("fuel_forwarded_untiered", "forwarded, no tier"),
        ("fuel_redirect", "redirect (301)"),
        ("fuel_rate_limited", "rate limited (429)"),
    ] {
        rows.push((format!("envoy: Wasm instructions (fuel) per request, {what}"), format!("{:.0}", number(key)?)));
    }
    rows.push((
        "envoy: limiter shared data per client key".into(),
        format!("{:.1} bytes ({} tiers, every slot taken)", number("limiter_bytes_per_key")?, number("limiter_tiers")?),
    ));
    Ok(rows)
}

/// What `wrangler deploy` uploads: the JS glue, the Wasm module and the shim, raw and gzipped
/// (Cloudflare's size limits apply to the compressed bundle); and workerd's CPU per request
/// through it (`edge/worker/bench/cpu.mjs`), a redirect and a forward, in alternating rounds.
fn worker() -> Result<Vec<(String, String)>> {
    stage("build: the Worker (worker-build)", crate::worker::build)?;
    let build = crate::stage::root().join("edge/worker/build");
    let files = [build.join("index.js"), build.join("index_bg.wasm"), build.join("worker/shim.mjs")];
    let mut raw = 0;
    let mut bundle = Vec::new();
    for file in &files {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        raw += bytes.len() as u64;
        bundle.extend(bytes);
    }
    let joined = crate::tools::state_dir().join("bench/worker-bundle");
    std::fs::create_dir_all(joined.parent().context("bench dir")?)?;
    std::fs::write(&joined, bundle)?;
    let gzipped = crate::stage::output(&mut cmd("sh", &["-c", "gzip -9c \"$0\" | wc -c", &joined.to_string_lossy()]))?;
    let gzipped: u64 = gzipped.trim().parse().context("gzip size")?;
    let wasm = std::fs::metadata(build.join("index_bg.wasm"))?.len();
    let mut rows = vec![
        ("worker: bundle (JS + Wasm)".into(), format!("{} raw, {} gzipped", kib(raw), kib(gzipped))),
        ("worker: Wasm module".into(), kib(wasm)),
    ];
    let script = crate::stage::root().join("edge/worker/bench/cpu.mjs");
    let cpu = stage("bench: workerd CPU per request (miniflare)", || {
        crate::stage::output(crate::worker::wrangler_env(&mut cmd("node", &[&script.to_string_lossy()])))
    })?;
    let cpu: serde_json::Value = serde_json::from_str(cpu.trim()).context("cpu.mjs printed no JSON")?;
    for (key, what) in [("redirect", "redirect (301)"), ("forwarded", "forwarded to a local origin")] {
        let rounds: Vec<f64> =
            cpu[key].as_array().into_iter().flatten().filter_map(serde_json::Value::as_f64).collect();
        if rounds.is_empty() {
            anyhow::bail!("cpu.mjs gave no rounds for {key}");
        }
        rows.push((format!("worker: workerd CPU per request, {what}"), crate::bench_envoy::summary(&rounds, " µs")));
    }
    Ok(rows)
}

fn core() -> Result<Vec<(String, String)>> {
    stage("bench: portcullis-core decisions (criterion)", || {
        exec(&mut cmd(
            "cargo",
            &[
                "bench",
                "-p",
                "portcullis-core",
                "--bench",
                "decision",
                "--",
                "--warm-up-time",
                "1",
                "--measurement-time",
                "3",
            ],
        ))
    })?;
    let criterion = target_dir()?.join("criterion");
    CORE_BENCHES
        .iter()
        .map(|id| {
            let ns = mean_ns(&criterion, id)?;
            Ok((format!("core: {id}"), format!("{ns:.0} ns")))
        })
        .collect()
}

/// Criterion's point estimate of the mean, from the estimates file of the latest run. The
/// benchmark's directory is found by the id recorded in it, since criterion rewrites ids into
/// file names by rules of its own.
fn mean_ns(criterion: &Path, id: &str) -> Result<f64> {
    for entry in std::fs::read_dir(criterion).with_context(|| format!("reading {}", criterion.display()))? {
        let latest = entry?.path().join("new");
        let Ok(text) = std::fs::read_to_string(latest.join("benchmark.json")) else { continue };
        let benchmark: serde_json::Value = serde_json::from_str(&text)?;
        if benchmark["full_id"].as_str() != Some(id) {
            continue;
        }
        let file = latest.join("estimates.json");
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)?;
        return value["mean"]["point_estimate"].as_f64().with_context(|| format!("no mean in {}", file.display()));
    }
    anyhow::bail!("criterion recorded no benchmark {id:?} under {}", criterion.display())
}
