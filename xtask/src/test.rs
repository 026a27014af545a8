//! `cargo xtask test` and `cargo xtask lint`.

use anyhow::Result;

use crate::db::Cluster;
use crate::envoy;
use crate::stage::{cmd, exec, root, stage};
use crate::{certs, tools};

/// `skip_compose`: leave out `docker compose up` (a Docker engine and a few minutes of image
/// builds); the stage says it was skipped and by which flag.
pub fn run(skip_compose: bool) -> Result<()> {
    let filter = stage("build: the Envoy filter (wasm32-wasip1)", envoy::build_filter)?;
    let cluster = Cluster::for_tests()?;
    let description = cluster.dir.join("cluster.json");
    let started = stage("test: start a hardened PostgreSQL for the tests", || {
        cluster.start(&crate::db::Migrate::Cargo)?;
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
    stage("test: fleet: three Envoys, portcullis-ratelimit, Redis and a Redis Cluster", real_fleet)?;
    crate::worker::test()?;
    stage("test: end to end: `cargo xtask up`, the demo scenarios, Ctrl-C", crate::e2e::run)?;
    stage("test: API fuzzing: schemathesis through Envoy (all checks)", crate::api_fuzz::run)?;
    if skip_compose {
        println!(
            "==> test: docker compose up for real — SKIPPED (--skip-compose); run it with `cargo xtask compose-test`"
        );
    } else {
        stage("test: docker compose up for real (cargo xtask compose-test)", crate::compose_test::run)?;
    }
    // Last: it rebuilds the tested crates instrumented, and every functional result is in by now.
    crate::coverage::run()?;
    println!("\nall tests passed");
    Ok(())
}

pub fn real_envoy() -> Result<()> {
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

/// Three Envoys in global mode, the service and Redis on their fixed ports, driven by
/// `wasm-tests/envoy/test_fleet.py`; then the same exactness tests over a Redis Cluster.
pub fn real_fleet() -> Result<()> {
    use crate::fleet;
    let envoy_bin = tools::ensure_envoy()?;
    certs::ensure()?;
    envoy::ensure_ports_free(&fleet::ports())?;
    envoy::ensure_ports_free(&[(9443, "the test origin")])?;
    let service_bin = fleet::build_service(false)?;
    // The default 20 ms holds on an idle loopback; here the test's own 300 TLS handshakes share
    // two cores with three Envoys and a debug-built service, and a call that times out is
    // decided by one Envoy's limiter, which these tests must tell apart from the fleet's.
    let policy = fleet::global_policy(envoy::envoy_yaml_policy()?, 250)?;
    let single = format!("redis://127.0.0.1:{}", fleet::REDIS_PORT);
    let redis = fleet::start_redis()?;
    let service = fleet::start_service(&service_bin, &single, &policy)?;
    let envoys = fleet::start_envoys(&envoy_bin, &policy)?;
    let python = tools::venv_python();
    let run = |args: &[&str], redis_pid: u32| {
        let mut command = cmd(&python.to_string_lossy(), &["wasm-tests/envoy/test_fleet.py"]);
        command
            .args(args)
            .env("PORTCULLIS_ENVOY", &envoy_bin)
            .env("PORTCULLIS_ROOT", root())
            .env("PORTCULLIS_REDIS_PID", redis_pid.to_string());
        let mut argv = vec!["redis-server".to_owned()];
        argv.extend(fleet::redis_args()?);
        command.env("PORTCULLIS_REDIS_ARGS", serde_json::to_string(&argv)?);
        exec(&mut command)
    };
    let report = |daemons: &[&crate::envoy::Daemon]| {
        for daemon in daemons {
            eprintln!("--- {} ({}):\n{}", daemon.name, daemon.log.display(), daemon.tail(25));
        }
    };
    let result = run(&[], redis.child.id());
    if result.is_err() {
        report(&[&redis, &service, &envoys[0], &envoys[1], &envoys[2]]);
    }
    result?;
    // A fresh fleet over the cluster: the Envoys still remember the refusals the first run ended
    // with (until their Retry-After), which would answer its first requests without a call.
    drop(envoys);
    drop(service);
    drop(redis);
    let (nodes, urls) = fleet::start_redis_cluster()?;
    let service = fleet::start_service(&service_bin, &urls, &policy)?;
    let envoys = fleet::start_envoys(&envoy_bin, &policy)?;
    let result = run(&["-k", "exact"], 0);
    if result.is_err() {
        report(&[&service, &envoys[0], &nodes[0]]);
    }
    drop(envoys);
    drop(service);
    drop(nodes);
    result
}

pub fn lint() -> Result<()> {
    stage("lint: cargo fmt --check", || exec(&mut cmd("cargo", &["fmt", "--all", "--", "--check"])))?;
    stage("lint: cargo clippy -D warnings", || {
        exec(&mut cmd("cargo", &["clippy", "--quiet", "--workspace", "--all-targets", "--", "-D", "warnings"]))
    })
}
