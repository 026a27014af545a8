//! `cargo xtask test` and `cargo xtask lint`.

use anyhow::Result;

use crate::envoy;
use crate::stage::{cmd, exec, root, stage};
use crate::{certs, tools};

pub fn run() -> Result<()> {
    let filter = stage(
        "build: the Envoy filter (wasm32-wasip1)",
        envoy::build_filter,
    )?;
    stage(
        "test: workspace (unit, property, snapshot, conformance, wasmtime host, doc tests)",
        || {
            exec(
                cmd("cargo", &["test", "--workspace", "--all-targets"])
                    .env("INSTA_UPDATE", "no")
                    .env("PORTCULLIS_FILTER_WASM", &filter),
            )?;
            exec(&mut cmd("cargo", &["test", "--workspace", "--doc"]))
        },
    )?;
    for target in ["wasm32-unknown-unknown", "wasm32-wasip1"] {
        stage(
            &format!("test: portcullis-core builds for {target}"),
            || {
                exec(&mut cmd(
                    "cargo",
                    &[
                        "build",
                        "--quiet",
                        "-p",
                        "portcullis-core",
                        "--target",
                        target,
                    ],
                ))
            },
        )?;
    }
    stage("test: the filter inside real Envoy 1.40", real_envoy)?;
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
        cmd(
            &tools::venv_python().to_string_lossy(),
            &["wasm-tests/envoy/test_envoy.py"],
        )
        .env("PORTCULLIS_ENVOY", &envoy_bin)
        .env("PORTCULLIS_ROOT", root()),
    );
    if result.is_err() {
        eprintln!(
            "--- Envoy log ({}):\n{}",
            envoy.log.display(),
            envoy.tail(40)
        );
    }
    result
}

pub fn lint() -> Result<()> {
    stage("lint: cargo fmt --check", || {
        exec(&mut cmd("cargo", &["fmt", "--all", "--", "--check"]))
    })?;
    stage("lint: cargo clippy -D warnings", || {
        exec(&mut cmd(
            "cargo",
            &[
                "clippy",
                "--quiet",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ))
    })
}
