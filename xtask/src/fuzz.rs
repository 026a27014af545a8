//! `cargo xtask fuzz`: libFuzzer (cargo fuzz) over the core's untrusted-input surfaces. The
//! corpus in `shared/fuzz/corpus` seeds every run; inputs found during a run go to a scratch
//! corpus, so the repository changes only when someone commits a new seed. A crash fails with
//! the artifact's path: turn it into a regression test.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::stage::{root, stage};
use crate::tools::{cache_dir, state_dir};

pub const TARGETS: [&str; 5] = ["config", "path", "authority", "forwarded", "decide"];
const CARGO_FUZZ: &str = "0.13.1";

fn cargo_fuzz_root() -> PathBuf {
    cache_dir().join(format!("tools/cargo-fuzz-{CARGO_FUZZ}"))
}

pub fn ensure_tool() -> Result<()> {
    crate::tools::cargo_install("cargo-fuzz", CARGO_FUZZ, &cargo_fuzz_root().join("bin/cargo-fuzz"))
}

pub fn run(seconds: u32) -> Result<()> {
    ensure_tool()?;
    let path = format!("{}:{}", cargo_fuzz_root().join("bin").display(), std::env::var("PATH").unwrap_or_default());
    for target in TARGETS {
        stage(&format!("fuzz: {target} ({seconds} s)"), || {
            let scratch = state_dir().join("fuzz").join(target);
            std::fs::create_dir_all(&scratch)?;
            let seeds = root().join("shared/fuzz/corpus").join(target);
            let status = Command::new("cargo")
                .args(["fuzz", "run", "--release", target])
                .arg(&scratch)
                .arg(&seeds)
                .args(["--", &format!("-max_total_time={seconds}"), "-rss_limit_mb=2048", "-print_final_stats=0"])
                .current_dir(root().join("shared"))
                .env("PATH", &path)
                // The machine's one toolchain is stable; libFuzzer instrumentation needs -Z flags.
                .env("RUSTC_BOOTSTRAP", "1")
                // Instrumented builds are kept apart from the normal ones, outside the clone.
                .env("CARGO_TARGET_DIR", cache_dir().join("fuzz-target"))
                .status()
                .context("running cargo fuzz")?;
            if !status.success() {
                bail!(
                    "fuzz target {target} failed; the crashing input is under shared/fuzz/artifacts/{target}/ \
                     (reproduce: cargo fuzz run {target} <file>, then add it as a regression test)"
                );
            }
            Ok(())
        })?;
    }
    Ok(())
}
