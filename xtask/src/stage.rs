//! Progress output and command running shared by every task.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Runs `body` as a named stage, printing its name, duration and outcome.
pub fn stage<T>(name: &str, body: impl FnOnce() -> Result<T>) -> Result<T> {
    println!("==> {name}");
    let started = Instant::now();
    let result = body().with_context(|| format!("stage \"{name}\" failed"));
    let secs = started.elapsed().as_secs_f32();
    match &result {
        Ok(_) => println!("    ok ({secs:.1} s)"),
        Err(_) => println!("    FAILED after {secs:.1} s"),
    }
    result
}

/// A command run from the workspace root.
pub fn cmd(program: &str, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(args).current_dir(root());
    command
}

/// Runs a command with inherited output; fails naming the command and its exit status.
pub fn exec(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    let status = command.status().with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} exited with {status}");
    }
    Ok(())
}

/// Runs a command and returns its standard output; fails with its standard error.
pub fn output(command: &mut Command) -> Result<String> {
    let shown = format!("{command:?}");
    let out = command.output().with_context(|| format!("could not start {shown}"))?;
    if !out.status.success() {
        bail!("{shown} exited with {}:\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The directory cargo builds into (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> Result<PathBuf> {
    let metadata = output(&mut cmd("cargo", &["metadata", "--format-version", "1", "--no-deps"]))?;
    let value: serde_json::Value = serde_json::from_str(&metadata).context("cargo metadata output")?;
    value["target_directory"].as_str().map(PathBuf::from).context("cargo metadata has no target_directory")
}
