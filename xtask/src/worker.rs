//! The Cloudflare Worker: its tools (npm packages, wasm-bindgen-cli, worker-build), its offline
//! build and its tests inside workerd.
//!
//! worker-build would download wasm-bindgen, wasm-opt and esbuild from the internet; here it
//! gets a wasm-bindgen-cli built at exactly Cargo.lock's `wasm-bindgen` version, npm's esbuild,
//! and `--no-opt`: npm's pinned Binaryen runs over the module afterwards. Tools are cached under
//! `~/.cache/portcullis/tools/<name>-<version>/` (outside the clone), so a second run — even
//! from a fresh clone — installs nothing.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::stage::{cmd, exec, output, root, stage};
use crate::tools::{cargo_install, state_dir};

const WORKER_BUILD_VERSION: &str = "0.8.7";
/// The Worker crate, relative to the workspace root; worker-build writes `build/` inside it.
const CRATE_DIR: &str = "edge/worker";

fn tools_dir() -> PathBuf {
    crate::tools::cache_dir().join("tools")
}

fn wasm_bindgen_bin(version: &str) -> PathBuf {
    tools_dir().join(format!("wasm-bindgen-cli-{version}")).join("bin/wasm-bindgen")
}

fn worker_build_bin() -> PathBuf {
    tools_dir().join(format!("worker-build-{WORKER_BUILD_VERSION}")).join("bin/worker-build")
}

pub fn node_bin(name: &str) -> PathBuf {
    root().join("node_modules/.bin").join(name)
}

/// Installs the npm packages (`npm ci`), wasm-bindgen-cli and worker-build, each only if missing.
pub fn setup() -> Result<()> {
    stage("setup: npm packages (wrangler, miniflare, binaryen)", npm_ci)?;
    let version = wasm_bindgen_version()?;
    stage(&format!("setup: wasm-bindgen-cli {version} (= Cargo.lock's wasm-bindgen)"), || {
        cargo_install("wasm-bindgen-cli", &version, &wasm_bindgen_bin(&version))
    })?;
    stage(&format!("setup: worker-build {WORKER_BUILD_VERSION}"), || {
        cargo_install("worker-build", WORKER_BUILD_VERSION, &worker_build_bin())
    })
}

/// Builds the Worker offline, runs its unit tests, its workerd tests and a deploy dry run.
pub fn test() -> Result<()> {
    stage("worker: unit tests (native)", || exec(&mut cmd("cargo", &["test", "--quiet", "-p", "portcullis-worker"])))?;
    stage("worker: build (worker-build, offline)", build)?;
    stage("worker: tests inside workerd (node --test, miniflare)", || {
        // Node 20 takes no globs: name the *.test.mjs files (the harness is not a test).
        let dir = root().join(CRATE_DIR).join("test");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.to_string_lossy().ends_with(".test.mjs"))
            .map(|path| path.to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut args = vec!["--test", "--test-reporter=spec"];
        args.extend(files.iter().map(String::as_str));
        // mtls.test.mjs presents the dev CA's worker-client certificate.
        let certs = crate::certs::ensure()?;
        exec(wrangler_env(&mut cmd("node", &args)).env("PORTCULLIS_CERTS", certs))
    })?;
    stage("worker: wrangler deploy --dry-run", || {
        let outdir = state_dir().join("worker-dist");
        exec(wrangler_env(&mut cmd(
            &node_bin("wrangler").to_string_lossy(),
            &["deploy", "--dry-run", "--outdir", &outdir.to_string_lossy()],
        )))
    })
}

/// `worker-build --profile worker --no-opt edge/worker` with the locally installed tools, then
/// npm's pinned Binaryen `wasm-opt -Oz` over the module.
pub fn build() -> Result<()> {
    let version = wasm_bindgen_version()?;
    let wasm_bindgen = wasm_bindgen_bin(&version);
    let worker_build = worker_build_bin();
    for (tool, path) in [("wasm-bindgen-cli", &wasm_bindgen), ("worker-build", &worker_build)] {
        if !path.exists() {
            bail!("{tool} is not installed at {}: run `cargo xtask setup`", path.display());
        }
    }
    let esbuild = node_bin("esbuild");
    if !esbuild.exists() {
        bail!("{} is missing: run `cargo xtask setup`", esbuild.display());
    }
    exec(
        cmd(&worker_build.to_string_lossy(), &["--profile", "worker", "--no-opt", CRATE_DIR])
            .env("WASM_BINDGEN_BIN", &wasm_bindgen)
            .env("ESBUILD_BIN", &esbuild),
    )?;
    let shim = root().join(CRATE_DIR).join("build/worker/shim.mjs");
    if !shim.exists() {
        bail!("worker-build finished without {}", shim.display());
    }
    wasm_opt(&root().join(CRATE_DIR).join("build/index_bg.wasm"))
}

/// `wasm-opt -Oz` over the Worker's module, in place: about 23 % smaller raw, 11 % gzipped. It
/// is npm's `binaryen` (package.json pins the version worker-build 0.8.7 would download), since
/// Debian's Binaryen 108 cannot read the module's exception-handling instructions.
fn wasm_opt(module: &std::path::Path) -> Result<()> {
    let wasm_opt = node_bin("wasm-opt");
    if !wasm_opt.exists() {
        bail!("{} is missing: run `cargo xtask setup`", wasm_opt.display());
    }
    let optimised = module.with_extension("opt.wasm");
    let mut command = cmd(&wasm_opt.to_string_lossy(), &["-Oz"]);
    // The features worker-build itself enables: rustc's defaults (as for the filter) plus the
    // exception handling of wasm-bindgen's catch wrappers, listed rather than `--all-features`
    // so that no encoding workerd does not read yet is emitted.
    command.args(crate::envoy::WASM_FEATURES).arg("--enable-exception-handling");
    command.arg(module).arg("-o").arg(&optimised);
    exec(&mut command)?;
    std::fs::rename(&optimised, module)
        .with_context(|| format!("moving {} over {}", optimised.display(), module.display()))
}

/// wrangler and workerd without login, telemetry or network look-ups, config inside
/// `.portcullis/` (ignored by git).
pub fn wrangler_env(command: &mut Command) -> &mut Command {
    command
        .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
        .env("WRANGLER_SEND_METRICS", "false")
        .env("XDG_CONFIG_HOME", state_dir().join("wrangler-config"))
}

/// `npm ci` when the lockfile changed since the last install (or nothing is installed).
fn npm_ci() -> Result<()> {
    let lock = std::fs::read(root().join("package-lock.json")).context("reading package-lock.json")?;
    let stamp = tools_dir().join("npm-ci.stamp");
    let fingerprint = format!("{:016x}", fnv1a(&lock));
    let current = std::fs::read_to_string(&stamp).unwrap_or_default();
    let installed = ["wrangler", "esbuild", "wasm-opt"].iter().all(|bin| node_bin(bin).exists());
    if current.trim() == fingerprint && installed {
        println!("    present: node_modules matches package-lock.json");
        return Ok(());
    }
    // Install scripts are not needed: workerd and esbuild ship their binaries as optional
    // platform packages, and skipping scripts keeps the install offline and quiet.
    exec(&mut cmd("npm", &["ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]))?;
    std::fs::create_dir_all(tools_dir())?;
    std::fs::write(&stamp, fingerprint)?;
    Ok(())
}

/// `cargo install name@=version` into its own root under `.portcullis/tools`, unless present.
/// The `wasm-bindgen` version in Cargo.lock: the CLI must match it exactly.
fn wasm_bindgen_version() -> Result<String> {
    for attempt in 0..2 {
        if attempt == 1 {
            // Let cargo bring the lockfile up to date with the Worker's dependencies, then retry.
            output(&mut cmd("cargo", &["metadata", "--format-version", "1"]))?;
        }
        let lock = std::fs::read_to_string(root().join("Cargo.lock")).context("reading Cargo.lock")?;
        let mut lines = lock.lines();
        while let Some(line) = lines.next() {
            if line.trim() == "name = \"wasm-bindgen\"" {
                let version =
                    lines.next().and_then(|l| l.trim().strip_prefix("version = \"")).and_then(|v| v.strip_suffix('"'));
                if let Some(version) = version {
                    return Ok(version.to_owned());
                }
            }
        }
    }
    bail!("Cargo.lock has no wasm-bindgen package (is edge/worker a workspace member?)")
}

/// A stable 64-bit FNV-1a hash (std's hashers are not stable across releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
