//! What `cargo xtask` and the tests share, so a plain `cargo test` finds the same environment
//! the xtask builds: the development certificates ([`certs`]) and hardened PostgreSQL clusters
//! ([`postgres`]), each made on first use under `.portcullis/` (ignored by git).

pub mod certs;
pub mod postgres;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The workspace root.
pub fn root() -> PathBuf {
    // This crate lives at `xtask/devenv`.
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Where generated state lives: certificates, clusters, tools.
pub fn state_dir() -> PathBuf {
    root().join(".portcullis")
}

/// `n` bytes from the kernel's random source.
pub fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf)
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> Result<String> {
    Ok(random_bytes(n)?.iter().map(|b| format!("{b:02x}")).collect())
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail_file(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
