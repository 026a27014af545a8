//! `cargo xtask test` and `cargo xtask lint`.

use anyhow::Result;

use crate::db::Cluster;
use crate::envoy;
use crate::stage::{cmd, exec, root, stage};
use crate::{certs, tools};

pub fn run() -> Result<()> {
    let filter = stage("build: the Envoy filter (wasm32-wasip1)", envoy::build_filter)?;
    let cluster = Cluster::for_tests()?;
    let description = cluster.dir.join("cluster.json");
    let started = stage("test: start a hardened PostgreSQL for the tests", || {
        cluster.start()?;
        std::fs::write(&description, serde_json::to_string_pretty(&cluster.describe()?)?)?;
        println!("    127.0.0.1:{} (log {})", cluster.port, cluster.log().display());
        Ok(())
    });
    let tested = started.and_then(|()| {
        stage("test: workspace (unit, property, snapshot, conformance, wasmtime host, database, doc tests)", || {
            exec(
                cmd("cargo", &["test", "--workspace", "--all-targets"])
                    .env("INSTA_UPDATE", "no")
                    .env("PORTCULLIS_FILTER_WASM", &filter)
                    .env("PORTCULLIS_TEST_PG", &description),
            )?;
            exec(&mut cmd("cargo", &["test", "--workspace", "--doc"]))
        })
    });
    // The cluster goes whatever happened; failing to remove it must not hide a test failure.
    if let Err(err) = cluster.destroy() {
        eprintln!("warning: could not remove the test cluster {}: {err:#}", cluster.dir.display());
    }
    tested?;
    for target in ["wasm32-unknown-unknown", "wasm32-wasip1"] {
        stage(&format!("test: portcullis-core builds for {target}"), || {
            exec(&mut cmd("cargo", &["build", "--quiet", "-p", "portcullis-core", "--target", target]))
        })?;
    }
    crate::fuzz::run(10)?;
    stage("test: docker-compose.yml is valid (docker-compose config -q)", crate::compose::validate)?;
    stage("test: the filter inside real Envoy 1.40", real_envoy)?;
    crate::worker::test()?;
    stage("test: end to end: `cargo xtask up`, the demo scenarios, Ctrl-C", crate::e2e::run)?;
    stage("test: API fuzzing: schemathesis through Envoy (all checks)", crate::api_fuzz::run)?;
    // Last: it rebuilds the tested crates instrumented, and every functional result is in by now.
    crate::coverage::run()?;
    println!("\nall tests passed");
    Ok(())
}

fn real_envoy() -> Result<()> {
    let envoy_bin = tools::ensure_envoy()?;
    certs::ensure()?;
    envoy::validate(&envoy_bin, &root().join("envoy.yaml"))?;
    envoy::ensure_ports_free(&envoy::PORTS)?;
    let envoy = envoy::start_envoy(&envoy_bin, &root().join("envoy.yaml"), "envoy-test", 41)?;
    let result = exec(
        cmd(&tools::venv_python().to_string_lossy(), &["wasm-tests/envoy/test_envoy.py"])
            .env("PORTCULLIS_ENVOY", &envoy_bin)
            .env("PORTCULLIS_ROOT", root()),
    );
    if result.is_err() {
        eprintln!("--- Envoy log ({}):\n{}", envoy.log.display(), envoy.tail(40));
    }
    result
}

pub fn lint() -> Result<()> {
    stage("lint: cargo fmt --check", || exec(&mut cmd("cargo", &["fmt", "--all", "--", "--check"])))?;
    stage("lint: cargo clippy -D warnings", || {
        exec(&mut cmd("cargo", &["clippy", "--quiet", "--workspace", "--all-targets", "--", "-D", "warnings"]))
    })
}
