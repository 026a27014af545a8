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
    /// Origin requests/s and latency percentiles (wrk over TLS).
    Origin,
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
    if matches!(suite, Suite::Origin | Suite::All) {
        rows.extend(crate::bench_origin::run()?);
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
    let mut rows =
        stage("bench: Envoy CPU per request, three configurations side by side", || crate::bench_envoy::run(&envoy))?;
    rows.push(("envoy: filter .wasm size".into(), format!("{:.1} KiB", size as f64 / 1024.0)));
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

/// Criterion's point estimate of the mean, from the estimates file of the latest run.
fn mean_ns(criterion: &Path, id: &str) -> Result<f64> {
    // Criterion stores each benchmark under its id with `/` kept as a directory separator and
    // other unsafe characters replaced by `_`.
    let dir: String =
        id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '/' || c == '-' { c } else { '_' }).collect();
    let file = criterion.join(dir).join("new").join("estimates.json");
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)?;
    value["mean"]["point_estimate"].as_f64().with_context(|| format!("no mean in {}", file.display()))
}
