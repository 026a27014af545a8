//! `cargo xtask fuzz`: libFuzzer (cargo fuzz) over the core's untrusted-input surfaces, and over
//! the built filter: the `.wasm` under the wasmtime host, on arbitrary requests and upstream
//! answers. The corpora in `shared/fuzz/corpus` and `wasm-tests/fuzz/corpus` seed every run;
//! inputs found during a run go to a scratch corpus, so the repository changes only when someone
//! commits a new seed. A crash fails with the artifact's path: turn it into a regression test.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::stage::{root, stage};
use crate::tools::{cache_dir, state_dir};

pub const TARGETS: [&str; 5] = ["config", "path", "authority", "forwarded", "decide"];
/// The target over the built filter, in `wasm-tests/fuzz`.
pub const FILTER_TARGET: &str = "filter";
const CARGO_FUZZ: &str = "0.13.1";

fn cargo_fuzz_root() -> PathBuf {
    cache_dir().join(format!("tools/cargo-fuzz-{CARGO_FUZZ}"))
}

pub fn ensure_tool() -> Result<()> {
    crate::tools::cargo_install("cargo-fuzz", CARGO_FUZZ, &cargo_fuzz_root().join("bin/cargo-fuzz"))
}

/// One `cargo fuzz run`.
struct Run<'a> {
    target: &'a str,
    /// The fuzz crate, relative to the project root.
    fuzz_dir: &'a str,
    /// Where cargo fuzz runs: it finds `fuzz/` below it, or is the fuzz crate itself.
    cwd: &'a str,
    build_flags: &'a [&'a str],
    /// Under the cache directory.
    target_dir: &'a str,
    env: &'a [(&'a str, &'a Path)],
}

pub fn run(seconds: u32) -> Result<()> {
    ensure_tool()?;
    for target in TARGETS {
        stage(&format!("fuzz: {target} ({seconds} s)"), || {
            fuzz(
                &Run {
                    target,
                    fuzz_dir: "shared/fuzz",
                    cwd: "shared",
                    build_flags: &[],
                    target_dir: "fuzz-target",
                    env: &[],
                },
                seconds,
            )
        })?;
    }
    stage(&format!("fuzz: {FILTER_TARGET}, the built filter under wasmtime ({seconds} s)"), || {
        let filter = crate::envoy::build_filter()?;
        fuzz(
            &Run {
                target: FILTER_TARGET,
                fuzz_dir: "wasm-tests/fuzz",
                // Its `.cargo/config.toml` (the rustc wrapper that keeps coverage instrumentation
                // out of wasmtime and Cranelift) applies only to cargo runs started inside it.
                cwd: "wasm-tests/fuzz",
                // The code under test is Wasm inside wasmtime's sandbox, where AddressSanitizer
                // sees nothing (a memory bug in the filter is a trap, which the target reports);
                // it would only instrument wasmtime itself, at a cost in build and run time.
                build_flags: &["--sanitizer", "none"],
                // Its own directory: wasmtime built without sanitizers, not rebuilt whenever the
                // core's targets (with AddressSanitizer) are built, and the other way round.
                target_dir: "fuzz-target-filter",
                env: &[("PORTCULLIS_FILTER_WASM", &filter)],
            },
            seconds,
        )
    })
}

fn fuzz(run: &Run<'_>, seconds: u32) -> Result<()> {
    let path = format!("{}:{}", cargo_fuzz_root().join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let target = run.target;
    let scratch = state_dir().join("fuzz").join(target);
    std::fs::create_dir_all(&scratch)?;
    let seeds = root().join(run.fuzz_dir).join("corpus").join(target);
    let mut command = Command::new("cargo");
    command
        .args(["fuzz", "run", "--release"])
        .args(run.build_flags)
        .arg(target)
        .arg(&scratch)
        .arg(&seeds)
        .args(["--", &format!("-max_total_time={seconds}"), "-rss_limit_mb=2048", "-print_final_stats=0"])
        .current_dir(root().join(run.cwd))
        .env("PATH", &path)
        // The machine's one toolchain is stable; libFuzzer instrumentation needs -Z flags.
        .env("RUSTC_BOOTSTRAP", "1")
        // Instrumented builds are kept apart from the normal ones, outside the clone.
        .env("CARGO_TARGET_DIR", cache_dir().join(run.target_dir));
    for (name, value) in run.env {
        command.env(name, value);
    }
    let status = command.status().context("running cargo fuzz")?;
    if !status.success() {
        let env: String = run.env.iter().map(|(name, value)| format!("{name}={} ", value.display())).collect();
        let flags: String = run.build_flags.iter().map(|flag| format!("{flag} ")).collect();
        bail!(
            "fuzz target {target} failed; the crashing input is under {}/artifacts/{target}/ \
             (reproduce: cd {} && {env}RUSTC_BOOTSTRAP=1 cargo fuzz run {flags}{target} <file>, \
             then add it as a regression test)",
            run.fuzz_dir,
            run.cwd
        );
    }
    Ok(())
}
