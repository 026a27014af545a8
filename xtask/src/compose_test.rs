//! `cargo xtask compose-test`: `docker compose up` brought up for real on a Docker engine, checked
//! through its published ports, and taken down again leaving nothing behind.
//!
//! Where Docker Hub cannot be reached, the official base images are replaced by stand-ins built
//! from Debian's packages (`xtask/standin/`): a Debian root filesystem from `debootstrap`,
//! PostgreSQL 15 with an entrypoint of the official image's contract, Envoy from the PyPI wheel
//! the tests use, and a Rust build stage that hands over the host's build of the origin. The
//! compose file and the project's Dockerfiles are the ones users run; only their `FROM`s differ.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::stage::{exec, output, root, stage, target_dir};
use crate::tools::{cache_dir, random_hex, state_dir};

const PROJECT: &str = "portcullis-compose-test";
const DEBIAN_STANDIN: &str = "portcullis-standin/debian:bookworm";

/// The official images and the compose variable that names each.
const OFFICIAL: [(&str, &str); 4] = [
    ("PORTCULLIS_PG_IMAGE", "postgres:16-bookworm"),
    ("PORTCULLIS_RUST_IMAGE", "rust:1.95-bookworm"),
    ("PORTCULLIS_RUNTIME_IMAGE", "debian:bookworm-slim"),
    ("PORTCULLIS_ENVOY_IMAGE", "envoyproxy/envoy:v1.40.0"),
];

pub fn run() -> Result<()> {
    let engine = stage("compose: a Docker engine (docker.io's dockerd)", Engine::ensure)?;
    let result = (|| {
        crate::envoy::ensure_ports_free(&[(8080, "compose's Envoy (HTTP)"), (8443, "compose's Envoy (HTTPS)")])?;
        crate::compose::secrets()?;
        let images = stage("compose: base images (official, else stand-ins from Debian)", base_images)?;
        let stack = Stack { images };
        let checked = stack.up_and_check();
        let down = stage("compose: docker compose down -v leaves nothing behind", || stack.down());
        checked.and(down)
    })();
    drop(engine);
    result
}

/// The engine this run uses: one already running, or a `dockerd` started (and stopped) here.
struct Engine {
    started: Option<Child>,
}

impl Engine {
    fn ensure() -> Result<Self> {
        if docker_answers() {
            println!("    present: a Docker engine answers");
            return Ok(Self { started: None });
        }
        if Command::new("dockerd").arg("--version").output().is_err() {
            apt_install(&["docker.io"])?;
        }
        let log = state_dir().join("compose/dockerd.log");
        std::fs::create_dir_all(log.parent().context("log dir")?)?;
        let child = Command::new("dockerd")
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?.try_clone()?)
            .spawn()
            .context("starting dockerd")?;
        let engine = Self { started: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !docker_answers() {
            if Instant::now() > deadline {
                bail!("dockerd did not answer within 60 s; its log:\n{}", crate::tools::tail_file(&log, 20));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        println!("    started dockerd (pid {}); it stops when this run ends", engine.pid());
        Ok(engine)
    }

    fn pid(&self) -> u32 {
        self.started.as_ref().map_or(0, Child::id)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(child) = &mut self.started {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn docker_answers() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn apt_install(packages: &[&str]) -> Result<()> {
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("installing {} (needs root)", packages.join(" ")))
}

fn docker(args: &[&str]) -> Command {
    let mut command = Command::new("docker");
    command.args(args).current_dir(root());
    command
}

fn image_present(name: &str) -> bool {
    docker(&["image", "inspect", name]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// `docker pull`, given at most a minute (an unreachable registry fails in well under that).
fn pulled(name: &str) -> bool {
    let Ok(mut child) = docker(&["pull", "--quiet", name]).stdout(Stdio::null()).stderr(Stdio::null()).spawn() else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// Each compose image variable: the official image when it is here or can be pulled, else its
/// stand-in (built once; the Rust one each run, as it carries the host's current build).
fn base_images() -> Result<Vec<(&'static str, String)>> {
    let mut chosen = Vec::new();
    for (variable, official) in OFFICIAL {
        if image_present(official) || pulled(official) {
            println!("    {variable}: {official}");
            chosen.push((variable, official.to_owned()));
            continue;
        }
        let standin = match variable {
            "PORTCULLIS_RUNTIME_IMAGE" => debian_standin()?,
            "PORTCULLIS_PG_IMAGE" => build_standin("postgres:15-bookworm", "postgres.Dockerfile", &[], false)?,
            "PORTCULLIS_ENVOY_IMAGE" => {
                let envoy = crate::tools::ensure_envoy()?;
                build_standin("envoy:v1.40.0", "envoy.Dockerfile", &[(envoy, "envoy")], false)?
            }
            _ => {
                exec(&mut crate::stage::cmd("cargo", &["build", "--quiet", "-p", "portcullis-origin"]))?;
                let origin = target_dir()?.join("debug/portcullis-origin");
                build_standin("rust:host-build", "rust.Dockerfile", &[(origin, "bin/portcullis-origin")], true)?
            }
        };
        println!("    {variable}: {standin} (stand-in for {official}, which cannot be pulled here)");
        chosen.push((variable, standin));
    }
    Ok(chosen)
}

/// The Debian bookworm base: `debootstrap --variant=minbase`, imported once.
fn debian_standin() -> Result<String> {
    if image_present(DEBIAN_STANDIN) {
        return Ok(DEBIAN_STANDIN.to_owned());
    }
    if Command::new("debootstrap").arg("--version").output().is_err() {
        apt_install(&["debootstrap"])?;
    }
    let rootfs = cache_dir().join("compose/bookworm-rootfs");
    if !rootfs.join("etc/debian_version").exists() {
        let _ = std::fs::remove_dir_all(&rootfs);
        std::fs::create_dir_all(&rootfs)?;
        exec(Command::new("debootstrap").args(["--variant=minbase", "bookworm"]).arg(&rootfs))
            .context("debootstrap bookworm (needs root and the Debian mirror)")?;
    }
    let tar = Command::new("tar").arg("-C").arg(&rootfs).args(["-c", "."]).stdout(Stdio::piped()).spawn()?;
    let import = docker(&["import", "-", DEBIAN_STANDIN]).stdin(tar.stdout.context("tar's output")?).output()?;
    ensure!(import.status.success(), "docker import failed: {}", String::from_utf8_lossy(&import.stderr));
    Ok(DEBIAN_STANDIN.to_owned())
}

/// `xtask/standin/<dockerfile>` built on the Debian stand-in as `portcullis-standin/<tag>`, with
/// `files` copied into its context; reused when present unless `always`.
fn build_standin(tag: &str, dockerfile: &str, files: &[(PathBuf, &str)], always: bool) -> Result<String> {
    let name = format!("portcullis-standin/{tag}");
    if !always && image_present(&name) {
        return Ok(name);
    }
    let base = debian_standin()?;
    let context = state_dir().join("compose/standin").join(tag.replace(':', "-"));
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(&context)?;
    for entry in std::fs::read_dir(root().join("xtask/standin"))? {
        let path = entry?.path();
        if let Some(file) = path.file_name() {
            std::fs::copy(&path, context.join(file))?;
        }
    }
    for (from, to) in files {
        let target = context.join(to);
        std::fs::create_dir_all(target.parent().context("target dir")?)?;
        std::fs::copy(from, &target).with_context(|| format!("copying {}", from.display()))?;
    }
    exec(
        docker(&["build", "--quiet", "-t", &name, "--build-arg", &format!("BASE_IMAGE={base}"), "-f", dockerfile, "."])
            .current_dir(&context),
    )?;
    Ok(name)
}

struct Stack {
    images: Vec<(&'static str, String)>,
}

impl Stack {
    fn compose(&self, args: &[&str]) -> Command {
        let mut command = Command::new("docker-compose");
        command.args(["-p", PROJECT, "-f", "docker-compose.yml"]).args(args).current_dir(root());
        for (variable, image) in &self.images {
            command.env(variable, image);
        }
        command
    }

    fn compose_output(&self, args: &[&str]) -> Result<String> {
        output(&mut self.compose(args))
    }

    /// The failing services' last log lines, for an error.
    fn logs(&self) -> String {
        let ps = self.compose_output(&["ps"]).unwrap_or_default();
        let logs = self.compose_output(&["logs", "--no-color", "--tail", "30"]).unwrap_or_default();
        format!("docker compose ps:\n{ps}\nlast log lines:\n{logs}")
    }

    fn up_and_check(&self) -> Result<()> {
        let started = Instant::now();
        stage("compose: docker compose up -d --build", || {
            exec(&mut self.compose(&["up", "-d", "--build"])).map_err(|err| anyhow::anyhow!("{err}\n{}", self.logs()))
        })?;
        stage("compose: every healthcheck passes; Envoy → origin → db answers", || {
            self.wait_healthy().map_err(|err| anyhow::anyhow!("{err}\n{}", self.logs()))
        })?;
        println!("    up and healthy {:.0} s after `up`", started.elapsed().as_secs_f64());
        stage("compose: checks through the published ports", || {
            self.check().map_err(|err| anyhow::anyhow!("{err}\n{}", self.logs()))
        })?;
        stage("compose: a missing secret file stops its service, naming the file", || self.missing_secret())
    }

    /// With `jwt_keys` gone, the origin (removed first) does not start, and compose names the file.
    fn missing_secret(&self) -> Result<()> {
        let file = state_dir().join("compose/secrets/jwt_keys");
        let aside = state_dir().join("compose/jwt_keys.aside");
        exec(&mut self.compose(&["rm", "--stop", "--force", "origin"]))?;
        std::fs::rename(&file, &aside)?;
        let attempt = self.compose(&["up", "-d", "--no-deps", "origin"]).output();
        std::fs::rename(&aside, &file)?;
        let attempt = attempt?;
        let said = format!("{}{}", String::from_utf8_lossy(&attempt.stdout), String::from_utf8_lossy(&attempt.stderr));
        ensure!(!attempt.status.success(), "the origin came up without its jwt_keys secret:\n{said}");
        ensure!(said.contains(&file.display().to_string()), "compose did not name the missing file:\n{said}");
        let running = self.compose_output(&["ps", "-q", "origin"])?;
        ensure!(running.trim().is_empty(), "an origin container exists without its secret");
        println!("    {}", said.lines().find(|l| l.contains("jwt_keys")).unwrap_or_default().trim());
        Ok(())
    }

    fn container(&self, service: &str) -> Result<String> {
        let id = self.compose_output(&["ps", "-q", service])?;
        let id = id.trim();
        ensure!(!id.is_empty(), "no container for the {service} service");
        Ok(id.to_owned())
    }

    fn inspect(&self, service: &str, format: &str) -> Result<String> {
        Ok(output(&mut docker(&["inspect", "-f", format, &self.container(service)?]))?.trim().to_owned())
    }

    fn wait_healthy(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let db = self.inspect("db", "{{.State.Health.Status}}").unwrap_or_default();
            let health = curl(&["https://localhost:8443/api/v1/health"]).unwrap_or_default();
            if db == "healthy" && health.contains(r#""database":"ok""#) {
                return Ok(());
            }
            for service in ["db", "origin", "envoy"] {
                let state = self.inspect(service, "{{.State.Status}}").unwrap_or_default();
                if state == "exited" || state == "dead" {
                    bail!("the {service} service stopped ({state})");
                }
            }
            if Instant::now() > deadline {
                bail!("not healthy within 240 s: db {db:?}, /api/v1/health through Envoy {health:?}");
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    fn check(&self) -> Result<()> {
        // The HTTP → HTTPS redirect and the security headers, through compose's Envoy.
        let redirect =
            curl(&["-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "http://localhost:8080/api/v1/videos"])?;
        ensure!(redirect == "301 https://localhost:8443/api/v1/videos", "redirect: {redirect}");
        let headers =
            curl(&["-D", "-", "-o", "/dev/null", "https://localhost:8443/api/v1/health"])?.to_ascii_lowercase();
        for expected in ["x-frame-options: deny", "strict-transport-security: max-age=31536000", "server: unknown"] {
            ensure!(headers.contains(expected), "{expected} on the health answer:\n{headers}");
        }
        ensure!(!headers.contains("x-envoy"), "no x-envoy-* header:\n{headers}");
        println!("    redirect 301 and the security headers");

        // A user made with `docker compose exec origin … user add`, then a login.
        let username = format!("compose-{}", random_hex(3)?);
        let password = random_hex(12)?;
        let added = crate::up::user_add(
            &mut self.compose(&["exec", "-T", "origin", "portcullis-origin", "user", "add", "--username", &username]),
            &password,
        )?;
        ensure!(added.status.success(), "user add: {}", String::from_utf8_lossy(&added.stderr));
        let login = |password: &str| {
            curl(&[
                "-w",
                "\n%{http_code}",
                "-H",
                "content-type: application/json",
                "-d",
                &format!(r#"{{"username":"{username}","password":"{password}"}}"#),
                "https://localhost:8443/api/v1/auth/login",
            ])
        };
        let answer = login(&password)?;
        ensure!(answer.ends_with("\n200"), "login: {answer}");
        let token = answer
            .split(r#""access_token":""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .context("no access_token in the login answer")?
            .to_owned();
        println!("    user add and login");

        // A job round trip.
        let auth = format!("authorization: Bearer {token}");
        let job = curl(&[
            "-w",
            "\n%{http_code}",
            "-H",
            &auth,
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"source_url":"https://media.example/compose.mp4"}"#,
            "https://localhost:8443/api/v1/transcribe",
        ])?;
        ensure!(job.ends_with("\n202"), "transcribe: {job}");
        let id = job.split(r#""id":""#).nth(1).and_then(|rest| rest.split('"').next()).context("no job id")?;
        let status = curl(&["-w", "\n%{http_code}", "-H", &auth, &format!("https://localhost:8443/api/v1/jobs/{id}")])?;
        ensure!(status.ends_with("\n200") && status.contains(id), "the job read back: {status}");
        println!("    a job round trip ({id})");

        // The login tier: the four left of its 5/minute, then 429 from the edge.
        // Another unknown username each time: the origin slows failures per account too.
        let mut last = String::new();
        for i in 0..5 {
            last = curl(&[
                "-D",
                "-",
                "-H",
                "content-type: application/json",
                "-d",
                &format!(r#"{{"username":"nobody-{i}","password":"wrong"}}"#),
                "https://localhost:8443/api/v1/auth/login",
            ])?;
        }
        let lower = last.to_ascii_lowercase();
        ensure!(
            lower.starts_with("http/1.1 429") || lower.starts_with("http/2 429"),
            "the login tier's 429 after five logins:\n{last}"
        );
        ensure!(
            lower.contains(r#"ratelimit-policy: "login";q=5;w=60"#) && last.contains(r#""error":"rate_limited""#),
            "the edge's 429:\n{last}"
        );
        println!("    the login tier's 429");

        // The database: TLS only, even from inside its network, and not published on the host.
        let app_password = std::fs::read_to_string(state_dir().join("compose/secrets/db_app_password"))?;
        let url = |mode: &str| {
            format!("postgresql://portcullis_app:{}@db:5432/portcullis?sslmode={mode}", app_password.trim())
        };
        let plain = self
            .compose(&["exec", "-T", "db", "psql", &url("disable"), "-tAc", "select 1"])
            .output()
            .context("psql inside the db container")?;
        let said = String::from_utf8_lossy(&plain.stderr).into_owned();
        ensure!(!plain.status.success() && said.contains("no encryption"), "a plain connection to db: {said}");
        let tls = self.compose_output(&["exec", "-T", "db", "psql", &url("require"), "-tAc", "select 1"])?;
        ensure!(tls.trim() == "1", "a TLS connection to db: {tls}");
        let published = self.inspect("db", "{{json .NetworkSettings.Ports}}")?;
        ensure!(!published.contains("HostPort"), "the database port is published: {published}");
        println!("    db: plain connections refused, TLS accepted, port not published");

        // The origin: non-root, read-only root filesystem.
        ensure!(self.inspect("origin", "{{.Config.User}}")? == "10001:10001", "the origin's user");
        ensure!(self.inspect("origin", "{{.HostConfig.ReadonlyRootfs}}")? == "true", "the origin's root filesystem");
        let uid = self.compose_output(&["exec", "-T", "origin", "id", "-u"])?;
        ensure!(uid.trim() == "10001", "the origin runs as {uid}");
        let write = self.compose(&["exec", "-T", "origin", "touch", "/probe"]).output()?;
        ensure!(!write.status.success(), "the origin could write to its root filesystem");
        println!("    origin: uid 10001, read-only root filesystem");
        Ok(())
    }

    fn down(&self) -> Result<()> {
        exec(&mut self.compose(&["down", "-v", "--remove-orphans"]))?;
        let label = format!("label=com.docker.compose.project={PROJECT}");
        for kind in ["container", "network", "volume"] {
            let mut args = vec![kind, "ls", "-q", "--filter", label.as_str()];
            if kind == "container" {
                args.insert(2, "-a");
            }
            let left = output(&mut docker(&args))?;
            ensure!(left.trim().is_empty(), "{kind}s left behind: {left}");
        }
        Ok(())
    }
}

/// curl against compose's Envoy, trusting the compose CA.
fn curl(args: &[&str]) -> Result<String> {
    let ca: &Path = &state_dir().join("compose/secrets/ca_crt");
    let out = Command::new("curl")
        .args(["-s", "--http1.1", "--max-time", "15", "--cacert"])
        .arg(ca)
        .args(args)
        .output()
        .context("running curl")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
