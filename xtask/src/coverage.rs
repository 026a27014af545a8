//! `cargo xtask coverage`: line coverage (cargo-llvm-cov) of the core, of the Envoy filter and of
//! the origin (its tests run against a hardened PostgreSQL started for the run). The core must
//! stay at 95 % or more, the filter and the origin at 85 % or more.
//!
//! Coverage cannot instrument the filter inside a Wasm VM, so its figure comes from the same
//! wasm-tests cases run on their native backend, which links `portcullis-envoy` into the test
//! binary; only the lines of `edge/envoy/src` count.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::db::Cluster;
use crate::stage::{exec, root, stage};
use crate::tools::cache_dir;

const CARGO_LLVM_COV: &str = "0.9.1";

/// The instrumented builds, outside the clone and one directory per checkout: cargo-llvm-cov
/// reports on every test binary in its target directory, and another checkout's binaries would
/// add that checkout's files — all uncovered — to this one's figures.
fn target_dir() -> std::path::PathBuf {
    let checkout: String =
        root().to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    cache_dir().join("coverage").join(checkout.trim_matches('-'))
}

fn tool_root() -> std::path::PathBuf {
    cache_dir().join("tools/cargo-llvm-cov")
}

fn ensure_tool() -> Result<()> {
    exec(Command::new("rustup").args(["component", "add", "llvm-tools"])).context("adding llvm-tools")?;
    crate::tools::cargo_install("cargo-llvm-cov", CARGO_LLVM_COV, &tool_root().join("bin/cargo-llvm-cov"))
}

/// What to measure: the packages whose tests run, arguments for the test binaries, and which
/// source files count (all of the selected packages' when `None`).
struct Target<'a> {
    packages: &'a [&'a str],
    /// The sources that count (a path prefix); the target's own test binaries also run code of
    /// other crates.
    only: &'a str,
}

/// Line coverage of `target`, in percent.
fn measure(target: &Target<'_>, envs: &[(&str, String)]) -> Result<f64> {
    let path = format!("{}:{}", tool_root().join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let mut command = Command::new("cargo");
    command.args(["llvm-cov", "--quiet", "--json", "--summary-only"]);
    for package in target.packages {
        command.args(["-p", package]);
    }
    // A target directory per measured package: cargo-llvm-cov reports on every test binary it
    // finds there, and one package's binaries would count towards another's figure.
    let dir = target_dir().join(target.packages[0]);
    command.current_dir(root()).env("PATH", path).env("CARGO_TARGET_DIR", dir);
    for (k, v) in envs {
        command.env(k, v);
    }
    let out = command.output().context("running cargo llvm-cov")?;
    let packages = target.packages.join(" -p ");
    if !out.status.success() {
        bail!("cargo llvm-cov -p {packages} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).context("llvm-cov JSON")?;
    let data = &report["data"][0];
    let only = target.only;
    let (mut covered, mut count) = (0, 0);
    let files = data["files"].as_array().context("no files in the report")?;
    for file in files.iter().filter(|f| f["filename"].as_str().is_some_and(|name| name.starts_with(only))) {
        covered += file["summary"]["lines"]["covered"].as_u64().context("no covered lines")?;
        count += file["summary"]["lines"]["count"].as_u64().context("no line count")?;
    }
    if count == 0 {
        bail!("cargo llvm-cov -p {packages} reported no lines under {only}");
    }
    Ok(100.0 * covered as f64 / count as f64)
}

pub fn run() -> Result<Vec<(String, String)>> {
    stage("coverage: cargo-llvm-cov", ensure_tool)?;
    let core_src = format!("{}/", root().join("shared/src").display());
    let core = Target { packages: &["portcullis-core"], only: &core_src };
    let core = stage("coverage: portcullis-core", || measure(&core, &[]))?;
    // The filter crate's own tests and the wasm-tests cases; only the native backend's runs
    // count, since under wasmtime the filter's lines execute inside the VM, out of sight.
    let filter = Target {
        packages: &["portcullis-envoy", "wasm-tests"],
        only: &format!("{}/", root().join("edge/envoy/src").display()),
    };
    let wasm = crate::envoy::build_filter()?;
    let filter = stage("coverage: portcullis-envoy (its tests and the wasm-tests cases, natively linked)", || {
        measure(&filter, &[("PORTCULLIS_FILTER_WASM", wasm.display().to_string())])
    })?;
    let cluster = Cluster::for_tests()?;
    let origin = stage("coverage: portcullis-origin (against a hardened PostgreSQL)", || {
        cluster.start(&crate::db::Migrate::Cargo)?;
        let description = cluster.dir.join("cluster.json");
        std::fs::write(&description, serde_json::to_string(&cluster.describe()?)?)?;
        let origin_src = format!("{}/", root().join("origin/src").display());
        let origin = Target { packages: &["portcullis-origin"], only: &origin_src };
        measure(&origin, &[("PORTCULLIS_TEST_PG", description.display().to_string())])
    });
    let _ = cluster.destroy();
    let origin = origin?;
    println!("    core {core:.1} %, filter {filter:.1} %, origin {origin:.1} %");
    if core < 95.0 || filter < 85.0 || origin < 85.0 {
        bail!(
            "coverage below the bar (core ≥ 95 %, filter ≥ 85 %, origin ≥ 85 %): core {core:.1} %, \
             filter {filter:.1} %, origin {origin:.1} %"
        );
    }
    Ok(vec![
        ("coverage: portcullis-core (lines)".into(), format!("{core:.1} %")),
        ("coverage: portcullis-envoy (lines)".into(), format!("{filter:.1} %")),
        ("coverage: portcullis-origin (lines)".into(), format!("{origin:.1} %")),
    ])
}
