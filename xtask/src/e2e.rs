//! The newcomer's path as a test: `cargo xtask up` in the background, the demo scenarios through
//! Envoy → origin → PostgreSQL with curl, then Ctrl-C, and no process left behind.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::envoy::{self, PORTS};
use crate::stage::root;
use crate::tools::state_dir;

pub struct Stack {
    child: Child,
    log: std::path::PathBuf,
}

impl Stack {
    fn tail(&self) -> String {
        crate::tools::tail_file(&self.log, 30)
    }

    /// Ctrl-C, as a user would press it; then wait for a clean exit.
    pub fn interrupt(&mut self) -> Result<()> {
        Command::new("kill").args(["-INT", &self.child.id().to_string()]).status()?;
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                ensure!(status.success(), "`cargo xtask up` exited with {status} after Ctrl-C:\n{}", self.tail());
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("`cargo xtask up` did not stop within 40 s of Ctrl-C:\n{}", self.tail())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
            std::thread::sleep(Duration::from_secs(5));
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn curl(args: &[&str]) -> Result<String> {
    // HTTP/1.1: over HTTP/2, Envoy ends an early reply with RST_STREAM(NO_ERROR) while a
    // request body is still uploading, and curl before 8.x reports that as a failure.
    let mut full = vec!["--http1.1", "--max-time", "10"];
    full.extend_from_slice(args);
    let out = crate::up::curl(&full).output().context("running curl")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Stack {
    /// `cargo xtask up <args>` in the background, once it says it is up.
    pub fn start(args: &[&str]) -> Result<Self> {
        envoy::ensure_ports_free(&PORTS)?;
        envoy::ensure_ports_free(&[(8787, "wrangler dev")])?;
        let log = state_dir().join("logs/xtask-up.log");
        std::fs::create_dir_all(log.parent().context("log dir")?)?;
        let child = Command::new(std::env::current_exe()?)
            .arg("up")
            .args(args)
            .current_dir(root())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(log.with_extension("err"))?)
            .spawn()
            .context("starting `cargo xtask up`")?;
        let mut stack = Stack { child, log };

        // The first run builds the origin; allow for it.
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Some(status) = stack.child.try_wait()? {
                bail!("`cargo xtask up` exited early ({status}):\n{}", stack.tail());
            }
            if std::fs::read_to_string(&stack.log).unwrap_or_default().contains("Portcullis is up.") {
                return Ok(stack);
            }
            ensure!(Instant::now() < deadline, "the stack was not up after 10 minutes:\n{}", stack.tail());
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Logs in as the demo user through Envoy; the access token.
    pub fn demo_token(&self) -> Result<String> {
        let password = std::fs::read_to_string(state_dir().join("secrets/demo_password"))?;
        let body = format!(r#"{{"username":"{}","password":"{password}"}}"#, crate::up::DEMO_USER);
        let login =
            curl(&["-H", "content-type: application/json", "-d", &body, "https://localhost:8443/api/v1/auth/login"])?;
        let token: serde_json::Value =
            serde_json::from_str(&login).with_context(|| format!("login answer: {login}"))?;
        Ok(token["access_token"].as_str().with_context(|| format!("no token in {login}"))?.to_owned())
    }
}

pub fn run() -> Result<()> {
    let mut stack = Stack::start(&["--worker"])?;

    // A second `up` says the stack runs instead of failing on busy ports.
    let second = Command::new(std::env::current_exe()?).arg("up").current_dir(root()).output()?;
    let said = String::from_utf8_lossy(&second.stderr);
    ensure!(
        !second.status.success() && said.contains("already running"),
        "a second `up` should say it is already running: {said}"
    );

    // 1. The redirect.
    let redirect = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "http://localhost:8080/api/v1/videos?limit=5",
    ])?;
    ensure!(redirect == "301 https://localhost:8443/api/v1/videos?limit=5", "redirect: {redirect}");

    // 2. Log in as the demo user and use the token.
    let auth = format!("Authorization: Bearer {}", stack.demo_token()?);
    let job = curl(&[
        "-H",
        &auth,
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"source_url":"https://media.example/e2e.mp4"}"#,
        "https://localhost:8443/api/v1/transcribe",
    ])?;
    ensure!(job.contains(r#""status":"queued""#), "transcribe through the edge: {job}");
    let videos = curl(&["-H", &auth, "https://localhost:8443/api/v1/videos"])?;
    ensure!(videos.contains("https://media.example/e2e.mp4"), "the video is listed: {videos}");
    let headers = curl(&["-D", "-", "-o", "/dev/null", "-H", &auth, "https://localhost:8443/api/v1/videos"])?;
    ensure!(headers.to_ascii_lowercase().contains("x-frame-options: deny"), "security headers: {headers}");
    crate::observatory::seed_values_present()?;

    // 3. The login tier's burst: after the demo login, four more fit, then 429s.
    let mut codes = Vec::new();
    let wrong = format!(r#"{{"username":"{}","password":"wrong"}}"#, crate::up::DEMO_USER);
    for _ in 0..7 {
        codes.push(login_status(&[], "https://localhost:8443", &wrong)?);
    }
    ensure!(codes == ["401", "401", "401", "401", "429", "429", "429"], "login burst: {codes:?}");

    // The Worker (wrangler dev) in front of the same stack: its policy, then Envoy's, then the origin.
    let through_worker = curl(&["-k", "-D", "-", "https://localhost:8787/api/v1/health"])?;
    ensure!(
        through_worker.starts_with("HTTP/1.1 200") && through_worker.contains(r#"{"status":"ok","database":"ok"}"#),
        "the Worker forwards to the stack: {through_worker}"
    );
    ensure!(through_worker.to_ascii_lowercase().contains("x-frame-options: deny"), "{through_worker}");

    // Each client keeps its own login quota through the Worker (two loopback addresses as two
    // clients): the Worker keys by its real peer, Envoy trusts exactly the Worker's hop. The
    // direct burst above has spent 127.0.0.1's quota at Envoy, so a shared key would refuse
    // both at once.
    // A new unknown username each time, so only the per-client limits answer (the origin also
    // slows down repeated failures for one account).
    let worker_logins = |interface: &str, n: usize| -> Result<Vec<String>> {
        (0..n)
            .map(|i| {
                let body = format!(r#"{{"username":"e2e-{interface}-{i}","password":"wrong"}}"#);
                login_status(&["-k", "--interface", interface], "https://localhost:8787", &body)
            })
            .collect()
    };
    let first = worker_logins("127.0.0.2", 6)?;
    ensure!(first == ["401", "401", "401", "401", "401", "429"], "one client through the Worker: {first:?}");
    let second = worker_logins("127.0.0.3", 1)?;
    ensure!(second == ["401"], "another client through the Worker keeps its own quota: {second:?}");

    // The Worker straight to this origin over mTLS (its client CA admits the worker-client
    // certificate, nothing without one), inside workerd.
    crate::stage::exec(
        crate::worker::wrangler_env(&mut crate::stage::cmd(
            "node",
            &["--test", "--test-reporter=spec", "edge/worker/test/mtls.test.mjs"],
        ))
        .env("PORTCULLIS_CERTS", crate::certs::dir())
        .env("PORTCULLIS_MTLS_ORIGIN", "https://localhost:9443"),
    )
    .context("the Worker → origin over mTLS")?;

    // 4. TLS of the edge and of the origin (with Envoy's client certificate: mTLS) against
    // Mozilla's "intermediate" profile.
    let certs = crate::certs::dir();
    for (what, target, client) in
        [("Envoy", "localhost:8443{127.0.0.1}", false), ("origin", "localhost:9443{127.0.0.1}", true)]
    {
        let mut sslyze = Command::new(crate::tools::sslyze());
        // The dev CA is the trust anchor (path validation is part of the profile).
        sslyze.args(["--mozilla_config=intermediate", "--quiet", "--certinfo_ca_file"]).arg(certs.join("ca.crt"));
        if client {
            sslyze.arg("--cert").arg(certs.join("envoy-client.crt")).arg("--key").arg(certs.join("envoy-client.key"));
        }
        let out = sslyze.arg(target).output().context("running sslyze")?;
        let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        ensure!(
            out.status.success(),
            "sslyze --mozilla_config=intermediate on the {what} ({target}) is not compliant:\n{report}"
        );
    }

    // 5. Load and faults: 30 s of wrk through Envoy to the origin; PostgreSQL stopped and
    // restarted under load; Envoy killed beside a running origin.
    println!("    load: {}", crate::load::steady_load(30)?);
    println!("    database outage: {}", crate::load::database_outage()?);
    println!("    Envoy restart: {}", crate::load::envoy_restart()?);

    stack.interrupt()?;
    for (port, what) in PORTS.into_iter().chain([(8787, "wrangler dev")]) {
        ensure!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(), "{what} (:{port}) still bound after Ctrl-C");
    }
    Ok(())
}

/// The status of `POST {base}/api/v1/auth/login` with a JSON `body`, curl given `extra` first.
fn login_status(extra: &[&str], base: &str, body: &str) -> Result<String> {
    let url = format!("{base}/api/v1/auth/login");
    let mut args = extra.to_vec();
    args.extend(["-o", "/dev/null", "-w", "%{http_code}", "-H", "content-type: application/json", "-d", body, &url]);
    curl(&args)
}
