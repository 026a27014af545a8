//! `cargo xtask test` and `cargo xtask lint`.

use anyhow::Result;

use crate::stage::{cmd, exec, stage};

pub fn run() -> Result<()> {
    stage(
        "test: workspace (unit, property, snapshot, conformance, doc tests)",
        || {
            exec(
                cmd("cargo", &["test", "--workspace", "--all-targets"]).env("INSTA_UPDATE", "no"),
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
    println!("\nall tests passed");
    Ok(())
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
