//! Docker compose support: `cargo xtask compose-secrets` writes the files `docker-compose.yml`
//! mounts as secrets (made once, reused), and the test stage validates the compose file.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::stage::{exec, root, stage};
use crate::tools::{random_bytes, random_hex, state_dir};

fn secrets_dir() -> PathBuf {
    state_dir().join("compose/secrets")
}

/// Writes `name` unless it exists. Files are world-readable inside a 0700 directory: compose
/// bind-mounts them, and the origin reads them as an unprivileged user.
fn write_once(name: &str, make: impl FnOnce() -> Result<String>) -> Result<String> {
    crate::tools::write_once(&secrets_dir().join(name), 0o644, make)
}

pub fn secrets() -> Result<()> {
    stage("compose: secrets in .portcullis/compose/secrets", || {
        let certs = crate::certs::ensure()?;
        std::fs::create_dir_all(secrets_dir())?;
        std::fs::set_permissions(secrets_dir(), std::fs::Permissions::from_mode(0o700))?;
        for (name, file) in [
            ("ca_crt", "ca.crt"),
            ("db_tls_crt", "postgres.crt"),
            ("db_tls_key", "postgres.key"),
            ("origin_tls_crt", "origin.crt"),
            ("origin_tls_key", "origin.key"),
            ("envoy_tls_crt", "envoy.crt"),
            ("envoy_tls_key", "envoy.key"),
            ("envoy_client_crt", "envoy-client.crt"),
            ("envoy_client_key", "envoy-client.key"),
        ] {
            write_once(name, || std::fs::read_to_string(certs.join(file)).with_context(|| format!("reading {file}")))?;
        }
        write_once("db_superuser_password", || random_hex(24))?;
        let owner = write_once("db_owner_password", || random_hex(24))?;
        let app = write_once("db_app_password", || random_hex(24))?;
        let url = |user: &str, password: &str| {
            format!(
                "postgres://{user}:{password}@db:5432/portcullis?sslmode=verify-full&sslrootcert=/run/secrets/ca_crt"
            )
        };
        write_once("database_url", || Ok(url("portcullis_app", &app)))?;
        write_once("migration_database_url", || Ok(url("portcullis_owner", &owner)))?;
        write_once("jwt_keys", || {
            use base64::Engine as _;
            Ok(format!("compose1:{}", base64::engine::general_purpose::STANDARD.encode(random_bytes(32)?)))
        })?;
        write_once("data_key", || random_hex(32))?;
        // The limiter's hash key for the fleet profile (the service; Envoys and origins that
        // share its Redis put the same key in their policy).
        write_once("hash_key", || random_hex(16))?;
        println!("    {}", secrets_dir().display());
        Ok(())
    })?;
    stage("compose: the filter for the envoy service", crate::envoy::build_filter).map(|_| ())
}

/// `docker-compose config -q`: the compose file parses and every reference resolves (no Docker
/// engine needed).
pub fn validate() -> Result<()> {
    if Command::new("docker-compose").arg("version").output().is_err() {
        bail!(
            "docker-compose is missing: `apt-get install -y --no-install-recommends docker-compose` (cargo xtask setup does it)"
        );
    }
    exec(Command::new("docker-compose").args(["-f", "docker-compose.yml", "config", "-q"]).current_dir(root()))
}

/// Installs the Debian `docker-compose` (validation only; no engine runs here).
pub fn ensure_tool() -> Result<()> {
    if Command::new("docker-compose").arg("version").output().is_ok() {
        return Ok(());
    }
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", "docker-compose"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("installing docker-compose (needs root)")
}
