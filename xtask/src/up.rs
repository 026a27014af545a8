//! `cargo xtask up`: the whole stack from local processes — hardened PostgreSQL on :55432, the
//! origin on :9443 (mTLS: only Envoy's client certificate gets in), Envoy with `envoy.yaml` on
//! :8080/:8443 (admin :9901) — then the URLs, demo credentials and three curl lines. Ctrl-C stops
//! everything it started.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;

use crate::db::{Cluster, Role};
use crate::envoy::{self, Daemon};
use crate::stage::{cmd, exec, root, stage, target_dir};
use crate::tools::{random_bytes, random_hex, state_dir};

pub const DEMO_USER: &str = "demo";
/// Envoy's `--base-id` in the stack (the load checks find its process by it).
pub const ENVOY_BASE_ID: u32 = 61;

fn secrets_dir() -> PathBuf {
    state_dir().join("secrets")
}

/// A random secret kept in `.portcullis/secrets/<name>` (0600), made on first use.
fn secret(name: &str, make: impl FnOnce() -> Result<String>) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = secrets_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let path = dir.join(name);
    crate::tools::write_once(&path, 0o600, make)?;
    Ok(path)
}

/// `curl` against the stack, trusting the dev CA (a later `--max-time` in `args` wins).
pub fn curl(args: &[&str]) -> Command {
    let mut command = Command::new("curl");
    command.args(["-s", "--max-time", "5", "--cacert"]).arg(crate::certs::dir().join("ca.crt")).args(args);
    command
}

fn https_ok(url: &str) -> bool {
    curl(&["-f", "-o", "/dev/null", url]).status().is_ok_and(|s| s.success())
}

/// What `cargo xtask up` runs.
#[derive(Default)]
pub struct Options {
    /// Also the Worker under `wrangler dev`.
    pub worker: bool,
    /// A policy (JSON file) for Envoy's filter instead of the one in `envoy.yaml`.
    pub policy: Option<PathBuf>,
    /// Three Envoys in global mode, `portcullis-ratelimit` and Redis instead of one Envoy.
    pub fleet: bool,
}

pub fn run(options: Options) -> Result<()> {
    let with_worker = options.worker;
    if envoy::admin_ready(9901) {
        bail!(
            "the stack is already running (Envoy's admin answers on 127.0.0.1:9901): use it, or stop it with \
             Ctrl-C in the terminal that runs `cargo xtask up`"
        );
    }
    envoy::ensure_ports_free(&envoy::PORTS)?;
    if options.fleet {
        envoy::ensure_ports_free(&crate::fleet::ports())?;
    }
    if with_worker {
        envoy::ensure_ports_free(&[
            (8787, "wrangler dev"),
            (envoy::WORKER_HOP_PORT, "Envoy's listener for the Worker"),
        ])?;
    }
    crate::setup::stack(crate::setup::Stack { worker: with_worker, fleet: options.fleet })?;
    stage("up: build the Envoy filter", envoy::build_filter)?;
    let mut envoy_config = match &options.policy {
        None => root().join("envoy.yaml"),
        Some(policy) => {
            let json = std::fs::read_to_string(policy).with_context(|| format!("reading {}", policy.display()))?;
            envoy::config_with_policy(&json).with_context(|| format!("the policy in {}", policy.display()))?
        }
    };
    // Behind the Worker, Envoy must tell the Worker's clients apart: a listener of its own that
    // trusts exactly that hop (the fleet's Envoys have none; there the Worker uses :8443).
    let worker_target = if with_worker && !options.fleet {
        envoy_config = envoy::with_worker_hop(&envoy_config)?;
        format!("https://localhost:{}", envoy::WORKER_HOP_PORT)
    } else {
        "https://localhost:8443".to_owned()
    };
    let service_bin = if options.fleet {
        Some(stage("up: build portcullis-ratelimit", || crate::fleet::build_service(false))?)
    } else {
        None
    };
    stage("up: build the origin", || exec(&mut cmd("cargo", &["build", "--quiet", "-p", "portcullis-origin"])))?;
    let origin_bin = target_dir()?.join("debug/portcullis-origin");

    let cluster = Cluster::dev();
    let db_was_running = cluster.is_running();
    stage("up: hardened PostgreSQL on 127.0.0.1:55432", || cluster.start(&crate::db::Migrate::Cargo))?;
    let stop_db = |cluster: &Cluster| {
        if !db_was_running {
            let _ = cluster.stop();
        }
    };

    let result = (|| -> Result<()> {
        let jwt = secret("jwt_keys", || {
            Ok(format!("dev1:{}", base64::engine::general_purpose::STANDARD.encode(random_bytes(32)?)))
        })?;
        let data_key = secret("data_key", || random_hex(32))?;
        let password_file = secret("demo_password", || random_hex(9))?;
        let password = std::fs::read_to_string(&password_file)?;
        let app_url = cluster.url(Role::App)?;
        stage("up: demo user", || create_demo_user(&origin_bin, &app_url, &password))?;

        let certs = crate::certs::dir();
        let start_origin = || -> Result<Daemon> {
            let mut origin = Daemon::spawn(
                "origin",
                Command::new(&origin_bin)
                    .arg("serve")
                    .current_dir(root())
                    .env("PORTCULLIS_LISTEN", "127.0.0.1:9443")
                    .env("PORTCULLIS_TLS_CERT", certs.join("origin.crt"))
                    .env("PORTCULLIS_TLS_KEY_FILE", certs.join("origin.key"))
                    .env("PORTCULLIS_CLIENT_CA", certs.join("ca.crt"))
                    .env("PORTCULLIS_DATABASE_URL", &app_url)
                    .env("PORTCULLIS_JWT_KEYS_FILE", &jwt)
                    .env("PORTCULLIS_DATA_KEY_FILE", &data_key),
            )?;
            origin.wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", 9443)).is_ok())?;
            Ok(origin)
        };
        let origin = stage("up: origin on https://127.0.0.1:9443 (mTLS from Envoy)", start_origin)?;
        let envoy_bin = crate::tools::ensure_envoy()?;
        let start_envoy = || envoy::start_envoy(&envoy_bin, &envoy_config, "envoy", ENVOY_BASE_ID);
        let mut fleet = match &service_bin {
            None => None,
            Some(service_bin) => Some(start_fleet(&envoy_bin, service_bin, &envoy_config)?),
        };
        let mut envoy = match &fleet {
            Some(_) => None,
            None => {
                let envoy = stage("up: Envoy on :8080 (redirects) and :8443, admin :9901", || {
                    envoy::validate(&envoy_bin, &envoy_config)?;
                    start_envoy()
                })?;
                Some(Supervised::new(envoy, &start_envoy))
            }
        };
        stage("up: end to end: Envoy → origin → PostgreSQL", || {
            let probe = |port: u16| https_ok(&format!("https://localhost:{port}/api/v1/health"));
            match (&mut envoy, &fleet) {
                (Some(envoy), _) => envoy.daemon.wait_until(Duration::from_secs(20), || probe(8443)),
                (None, Some(_)) => {
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while !crate::fleet::ENVOYS.iter().all(|e| probe(e.https)) {
                        if Instant::now() > deadline {
                            bail!("the fleet's Envoys do not all answer /api/v1/health");
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Ok(())
                }
                (None, None) => Ok(()),
            }
        })?;
        let mut origin = Supervised::new(origin, &start_origin);
        let start = || start_worker(&worker_target);
        let mut worker = if with_worker {
            stage("up: build the Worker", crate::worker::build)?;
            let worker = stage(
                &format!("up: Worker on https://127.0.0.1:8787 (wrangler dev, in front of {worker_target})"),
                start,
            )?;
            Some(Supervised::new(worker, &start))
        } else {
            None
        };

        print_welcome(&password, with_worker, fleet.is_some());
        // Whatever dies on its own is started again; the fleet's parts are watched, not
        // restarted (its Envoys, service and Redis depend on one another's ports).
        let mut running: Vec<&mut Supervised> = vec![&mut origin];
        running.extend(envoy.as_mut());
        running.extend(worker.as_mut());
        wait_for_stop(&mut running, fleet.as_mut())?;
        println!(
            "\nstopping: {}{}, the origin{}",
            if with_worker { "the Worker, " } else { "" },
            if fleet.is_some() { "the three Envoys, portcullis-ratelimit, Redis" } else { "Envoy" },
            if db_was_running { "" } else { ", PostgreSQL" }
        );
        // The edge first, so nothing reaches a stopping origin.
        drop(worker);
        drop(envoy);
        drop(fleet);
        drop(origin);
        Ok(())
    })();
    stop_db(&cluster);
    result
}

/// The fleet's processes, stopped edge first when dropped.
struct Fleet {
    envoys: Vec<Daemon>,
    service: Daemon,
    redis: Daemon,
}

impl Fleet {
    fn check(&mut self) -> Result<()> {
        for daemon in self.envoys.iter_mut().chain([&mut self.service, &mut self.redis]) {
            if let Some(status) = daemon.child.try_wait()? {
                bail!("{} exited ({status}); its log ({}):\n{}", daemon.name, daemon.log.display(), daemon.tail(30));
            }
        }
        Ok(())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.envoys.clear();
        // `service` and `redis` drop after this, in field order.
    }
}

/// Redis on :56379, the service on :8089 and three Envoys in global mode (the policy of
/// `envoy_config`, counted in the fleet).
fn start_fleet(envoy_bin: &Path, service_bin: &Path, envoy_config: &Path) -> Result<Fleet> {
    use crate::fleet::{self, REDIS_PORT, SERVICE_PORT};
    let policy = fleet::global_policy(policy_of(envoy_config)?, 20)?;
    let redis = stage(&format!("up: Redis on 127.0.0.1:{REDIS_PORT}"), fleet::start_redis)?;
    let service = stage(&format!("up: portcullis-ratelimit on 127.0.0.1:{SERVICE_PORT}"), || {
        fleet::start_service(service_bin, &format!("redis://127.0.0.1:{REDIS_PORT}"), &policy)
    })?;
    let envoys = stage("up: three Envoys in global mode on :8443/:8444/:8445 (admin :9901-:9903)", || {
        fleet::start_envoys(envoy_bin, &policy)
    })?;
    Ok(Fleet { envoys, service, redis })
}

/// The filter's policy in an Envoy config written from `envoy.yaml`.
fn policy_of(config: &Path) -> Result<serde_json::Value> {
    if config == root().join("envoy.yaml") {
        return envoy::envoy_yaml_policy();
    }
    envoy::policy_in(config)
}

/// A process of the stack that is started again when it dies on its own, as a service manager
/// (or compose's `restart:`) would: the rest of the stack keeps running. One that keeps dying —
/// more than [`Supervised::MAX_RESTARTS`] times a minute — stops the stack with its log.
struct Supervised<'a> {
    daemon: Daemon,
    start: &'a dyn Fn() -> Result<Daemon>,
    restarts: Vec<Instant>,
}

impl<'a> Supervised<'a> {
    const MAX_RESTARTS: usize = 3;

    fn new(daemon: Daemon, start: &'a dyn Fn() -> Result<Daemon>) -> Self {
        Self { daemon, start, restarts: Vec::new() }
    }

    /// Restarts the process if it has exited; fails when it exits too often or cannot start.
    fn check(&mut self) -> Result<()> {
        let Some(status) = self.daemon.child.try_wait()? else {
            return Ok(());
        };
        let name = self.daemon.name.clone();
        let tail = self.daemon.tail(30);
        self.restarts.retain(|at| at.elapsed() < Duration::from_secs(60));
        if self.restarts.len() >= Self::MAX_RESTARTS {
            bail!("{name} exited ({status}) {} times within a minute; its log:\n{tail}", Self::MAX_RESTARTS + 1);
        }
        self.restarts.push(Instant::now());
        eprintln!("\n{name} exited ({status}); restarting it. The last lines of its log:\n{tail}");
        self.daemon = (self.start)().with_context(|| format!("restarting {name}"))?;
        eprintln!("{name} is running again (pid {})", self.daemon.child.id());
        Ok(())
    }
}

/// The Worker under `wrangler dev` (workerd) on https://127.0.0.1:8787, forwarding to Envoy at
/// `target` (its listener for the Worker's hop): `wrangler dev` cannot present the Worker's
/// client certificate, so locally the Worker reaches the origin through Envoy. The Worker trusts
/// the dev CA through NODE_EXTRA_CA_CERTS.
fn start_worker(target: &str) -> Result<Daemon> {
    let mut command = Command::new(crate::worker::node_bin("wrangler"));
    command
        .args(["dev", "--local", "--ip", "127.0.0.1", "--port", "8787", "--local-protocol", "https"])
        .args(["--var", &format!("ORIGIN_URL:{target}")])
        // The Worker refuses to serve without its secret hash key: a fresh one per `up`.
        .args(["--var", &format!("PORTCULLIS_HASH_KEY:{}", crate::tools::random_hex(16)?)])
        .current_dir(root())
        .env("NODE_EXTRA_CA_CERTS", crate::certs::dir().join("ca.crt"));
    crate::worker::wrangler_env(&mut command);
    let mut worker = Daemon::spawn("worker", &mut command)?;
    worker.wait_until(Duration::from_secs(60), || {
        curl(&["-k", "-f", "-o", "/dev/null", "https://localhost:8787/api/v1/health"])
            .status()
            .is_ok_and(|s| s.success())
    })?;
    Ok(worker)
}

/// Runs `portcullis-origin user add` as `command` gives it (locally or through `docker compose
/// exec`), the password on its standard input as the command reads it; its output.
pub fn user_add(command: &mut Command, password: &str) -> Result<std::process::Output> {
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    child.stdin.take().context("stdin")?.write_all(format!("{password}\n").as_bytes())?;
    Ok(child.wait_with_output()?)
}

fn create_demo_user(origin: &Path, app_url: &str, password: &str) -> Result<()> {
    let out = user_add(
        Command::new(origin).args(["user", "add", "--username", DEMO_USER]).env("PORTCULLIS_DATABASE_URL", app_url),
        password,
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || stderr.contains("already exists") {
        Ok(())
    } else {
        bail!("creating the demo user failed: {stderr}")
    }
}

fn print_welcome(password: &str, with_worker: bool, fleet: bool) {
    let ca = crate::certs::dir().join("ca.crt");
    let ca = ca.strip_prefix(root()).unwrap_or(&ca).display().to_string();
    println!(
        r#"
Portcullis is up.

  API (through the edge)   https://localhost:8443/api/v1/…   (dev CA: {ca})
  plain HTTP               http://localhost:8080  → redirects to https://localhost:8443
  Envoy admin              http://127.0.0.1:9901/stats?filter=portcullis
  origin (mTLS only)       https://127.0.0.1:9443
  PostgreSQL               127.0.0.1:55432 (cargo xtask db psql)
  OpenAPI                  https://localhost:8443/openapi.json{worker_line}

  demo user: {DEMO_USER} / {password}

Try:

  # 1. plain HTTP is redirected (301, same path and query)
  curl -i 'http://localhost:8080/api/v1/videos?limit=5'

  # 2. log in, then list your videos with the token
  TOKEN=$(curl -s --cacert {ca} https://localhost:8443/api/v1/auth/login -H 'content-type: application/json' -d '{{"username":"{DEMO_USER}","password":"{password}"}}' | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
  curl -s --cacert {ca} https://localhost:8443/api/v1/videos -H "Authorization: Bearer $TOKEN"

  # 3. a burst on the login tier (5/minute): 401s, then 429s
  for i in $(seq 8); do curl -s --http1.1 -o /dev/null -w '%{{http_code}} ' --cacert {ca} https://localhost:8443/api/v1/auth/login -H 'content-type: application/json' -d '{{"username":"{DEMO_USER}","password":"wrong"}}'; done; echo

{fleet_text}
Ctrl-C stops everything this command started."#,
        fleet_text = if fleet { fleet_welcome(&ca) } else { String::new() },
        worker_line = if with_worker && !fleet {
            "\n  Worker (wrangler dev)    https://localhost:8787/api/v1/…   (self-signed: curl -k)\
             \n  Envoy for the Worker     https://localhost:8446   (trusts the Worker's X-Forwarded-For; the Worker's hop only)"
        } else if with_worker {
            "\n  Worker (wrangler dev)    https://localhost:8787/api/v1/…   (self-signed: curl -k)"
        } else {
            ""
        }
    );
    let _ = std::io::stdout().flush();
}

fn fleet_welcome(ca: &str) -> String {
    format!(
        r#"
The fleet: three Envoys count one limit in Redis through portcullis-ratelimit.

  Envoys                   https://localhost:8443, :8444, :8445   (admin :9901, :9902, :9903)
  portcullis-ratelimit     127.0.0.1:8089 (gRPC), metrics http://127.0.0.1:9089/metrics
  Redis                    127.0.0.1:56379 (redis-cli -p 56379 --scan)

  # 4. a login burst spread over the three Envoys: still 5 a minute in all (401s), then the
  #    fleet's 429s (a minute after #3, which spends the same quota)
  for i in $(seq 9); do port=$((8443 + i % 3)); curl -s --http1.1 -o /dev/null -w "$port:%{{http_code}} " --cacert {ca} https://localhost:$port/api/v1/auth/login -H 'content-type: application/json' -d "{{\"username\":\"guest-$i\",\"password\":\"wrong\"}}"; done; echo
"#
    )
}

/// Blocks until Ctrl-C/SIGTERM, restarting any process of the stack that exits on its own.
fn wait_for_stop(daemons: &mut [&mut Supervised], mut fleet: Option<&mut Fleet>) -> Result<()> {
    let (tx, rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("installing the Ctrl-C handler")?;
    loop {
        if rx.recv_timeout(Duration::from_millis(500)).is_ok() {
            return Ok(());
        }
        for daemon in daemons.iter_mut() {
            daemon.check()?;
        }
        if let Some(fleet) = fleet.as_deref_mut() {
            fleet.check()?;
        }
    }
}
