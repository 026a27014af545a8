//! `cargo xtask bench origin`: requests per second and latency percentiles of the origin (release
//! build, TLS) for `GET /api/v1/health` and an authenticated `GET /api/v1/videos`, with `wrk` on
//! loopback, against a throwaway hardened PostgreSQL.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::db::{Cluster, Role};
use crate::envoy::Daemon;
use crate::stage::{cmd, exec, output, root, stage, target_dir};

const PORT: u16 = 19443;
const SECONDS: u32 = 10;

/// wrk prints the percentiles this script asks for (its own report has no p95).
const PERCENTILES: &str = r#"
done = function(summary, latency, requests)
  io.write(string.format("portcullis-rps %.1f\n", summary.requests / (summary.duration / 1e6)))
  for _, p in ipairs({50, 95, 99}) do
    io.write(string.format("portcullis-p%d %d\n", p, latency:percentile(p)))
  end
  io.write(string.format("portcullis-errors %d\n", summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"#;

pub fn run() -> Result<Vec<(String, String)>> {
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is not installed: `apt-get install -y wrk`");
    }
    let cluster = Cluster::for_tests()?;
    let result = measure(&cluster);
    if let Err(err) = cluster.destroy() {
        eprintln!("warning: could not remove {}: {err:#}", cluster.dir.display());
    }
    result
}

fn measure(cluster: &Cluster) -> Result<Vec<(String, String)>> {
    stage("bench: hardened PostgreSQL", || cluster.start(&crate::db::Migrate::Cargo))?;
    stage("bench: origin release build", || {
        exec(&mut cmd("cargo", &["build", "--quiet", "--release", "-p", "portcullis-origin"]))
    })?;
    let binary = target_dir()?.join("release/portcullis-origin");
    let certs = crate::certs::ensure()?;
    let app_url = cluster.url(Role::App)?;
    let password = "benchmark password 1";

    let mut add = Command::new(&binary)
        .args(["user", "add", "--username", "bench"])
        .env("PORTCULLIS_DATABASE_URL", &app_url)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    add.stdin.take().context("stdin")?.write_all(format!("{password}\n").as_bytes())?;
    if !add.wait()?.success() {
        bail!("creating the benchmark user failed");
    }

    let keys = format!("bench:{}", "YmVuY2htYXJrLWtleS1iZW5jaG1hcmsta2V5LWJlbmNoISE=");
    let mut origin = Daemon::spawn(
        "bench-origin",
        Command::new(&binary)
            .arg("serve")
            .current_dir(root())
            .env("PORTCULLIS_LISTEN", format!("127.0.0.1:{PORT}"))
            .env("PORTCULLIS_TLS_CERT", certs.join("origin.crt"))
            .env("PORTCULLIS_TLS_KEY_FILE", certs.join("origin.key"))
            .env("PORTCULLIS_DATABASE_URL", &app_url)
            .env("PORTCULLIS_JWT_KEYS", keys)
            .env("PORTCULLIS_DATA_KEY", "benchmark-data-key-0123456789")
            .env("PORTCULLIS_LOG", "warn"),
    )?;
    let ca = certs.join("ca.crt");
    let base = format!("https://localhost:{PORT}");
    origin.wait_until(Duration::from_secs(20), || {
        Command::new("curl")
            .args(["-sf", "--cacert"])
            .arg(&ca)
            .arg(format!("{base}/api/v1/health"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })?;
    let login = output(
        Command::new("curl")
            .args(["-sf", "--cacert"])
            .arg(&ca)
            .args(["-H", "content-type: application/json", "-d"])
            .arg(format!(r#"{{"username":"bench","password":"{password}"}}"#))
            .arg(format!("{base}/api/v1/auth/login")),
    )?;
    let token: serde_json::Value = serde_json::from_str(&login).context("login answer")?;
    let token = token["access_token"].as_str().context("no access token")?.to_owned();

    let script = crate::tools::state_dir().join("bench/percentiles.lua");
    std::fs::create_dir_all(script.parent().context("script dir")?)?;
    std::fs::write(&script, PERCENTILES)?;
    let mut rows = Vec::new();
    for (name, path, auth) in
        [("GET /api/v1/health", "/api/v1/health", None), ("GET /api/v1/videos (JWT)", "/api/v1/videos", Some(&token))]
    {
        let mut wrk = Command::new("wrk");
        wrk.args(["-t1", "-c16", &format!("-d{SECONDS}s"), "-s"]).arg(&script);
        if let Some(token) = auth {
            wrk.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        wrk.arg(format!("{base}{path}"));
        let out = stage(&format!("bench: wrk {name} ({SECONDS} s)"), || output(&mut wrk))?;
        let value = |key: &str| -> Result<f64> {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("portcullis-{key} ")))
                .context(format!("wrk printed no {key}"))?
                .trim()
                .parse()
                .context(format!("wrk's {key}"))
        };
        if value("errors")? > 0.0 {
            bail!("wrk saw errors or non-2xx answers for {name}:\n{out}");
        }
        rows.push((format!("origin: {name}"), format!("{:.0} req/s", value("rps")?)));
        rows.push((
            format!("origin: {name} latency p50 / p95 / p99"),
            format!("{:.2} / {:.2} / {:.2} ms", value("p50")? / 1000.0, value("p95")? / 1000.0, value("p99")? / 1000.0),
        ));
    }
    drop(origin);
    Ok(rows)
}
