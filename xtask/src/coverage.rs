//! `cargo xtask coverage`: line coverage (cargo-llvm-cov) of the core and of the origin (its
//! tests run against a hardened PostgreSQL started for the run). The core must stay at 95 % or
//! more, the origin at 85 % or more.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::db::Cluster;
use crate::stage::{exec, root, stage};
use crate::tools::cache_dir;

const CARGO_LLVM_COV: &str = "0.9.1";

fn tool_root() -> std::path::PathBuf {
    cache_dir().join("tools/cargo-llvm-cov")
}

fn ensure_tool() -> Result<()> {
    exec(Command::new("rustup").args(["component", "add", "llvm-tools"])).context("adding llvm-tools")?;
    crate::tools::cargo_install("cargo-llvm-cov", CARGO_LLVM_COV, &tool_root().join("bin/cargo-llvm-cov"))
}

/// Line coverage of one package, in percent.
fn measure(package: &str, envs: &[(&str, String)]) -> Result<f64> {
    let path = format!("{}:{}", tool_root().join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let mut command = Command::new("cargo");
    command
        .args(["llvm-cov", "--quiet", "-p", package, "--json", "--summary-only"])
        .current_dir(root())
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", cache_dir().join("coverage-target"));
    for (k, v) in envs {
        command.env(k, v);
    }
    let out = command.output().context("running cargo llvm-cov")?;
    if !out.status.success() {
        bail!("cargo llvm-cov -p {package} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).context("llvm-cov JSON")?;
    report["data"][0]["totals"]["lines"]["percent"].as_f64().context("no line total in the report")
}

pub fn run() -> Result<Vec<(String, String)>> {
    stage("coverage: cargo-llvm-cov", ensure_tool)?;
    let core = stage("coverage: portcullis-core", || measure("portcullis-core", &[]))?;
    let cluster = Cluster::for_tests()?;
    let origin = stage("coverage: portcullis-origin (against a hardened PostgreSQL)", || {
        cluster.start()?;
        let description = cluster.dir.join("cluster.json");
        std::fs::write(&description, serde_json::to_string(&cluster.describe()?)?)?;
        measure("portcullis-origin", &[("PORTCULLIS_TEST_PG", description.display().to_string())])
    });
    let _ = cluster.destroy();
    let origin = origin?;
    println!("    core {core:.1} %, origin {origin:.1} %");
    if core < 95.0 || origin < 85.0 {
        bail!("coverage below the bar (core ≥ 95 %, origin ≥ 85 %): core {core:.1} %, origin {origin:.1} %");
    }
    Ok(vec![
        ("coverage: portcullis-core (lines)".into(), format!("{core:.1} %")),
        ("coverage: portcullis-origin (lines)".into(), format!("{origin:.1} %")),
    ])
}
