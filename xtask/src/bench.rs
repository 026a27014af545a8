//! `cargo xtask bench`: runs the benchmarks and prints one markdown table.

use std::path::Path;

use anyhow::{Context, Result};

use crate::stage::{cmd, exec, stage, target_dir};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// ns per decision of portcullis-core (criterion).
    Core,
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
    println!("\n| benchmark | result |\n| --- | --- |");
    for (name, value) in rows {
        println!("| {name} | {value} |");
    }
    Ok(())
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
    let dir: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let file = criterion.join(dir).join("new").join("estimates.json");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)?;
    value["mean"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("no mean in {}", file.display()))
}
