//! A fleet on loopback: Redis, `portcullis-ratelimit` and three Envoys in global mode in front
//! of one origin, on the fixed local ports the README lists. Used by `cargo xtask up --fleet`, by the
//! fleet tests and by `cargo xtask bench fleet`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::envoy::{self, Daemon};
use crate::stage::{cmd, exec, target_dir};
use crate::tools::state_dir;

pub const REDIS_PORT: u16 = 56379;
pub const SERVICE_PORT: u16 = 8089;
/// The service's Prometheus metrics (`GET /metrics`).
pub const SERVICE_METRICS_PORT: u16 = 9089;

/// One Envoy of the fleet: HTTPS, plain HTTP and admin ports.
#[derive(Debug, Clone, Copy)]
pub struct EnvoyPorts {
    pub https: u16,
    pub http: u16,
    pub admin: u16,
}

pub const ENVOYS: [EnvoyPorts; 3] = [
    EnvoyPorts { https: 8443, http: 8080, admin: 9901 },
    EnvoyPorts { https: 8444, http: 8081, admin: 9902 },
    EnvoyPorts { https: 8445, http: 8082, admin: 9903 },
];

/// Envoy `--base-id`s of the fleet (each Envoy needs its own).
const BASE_IDS: [u32; 3] = [71, 72, 73];

/// Every fixed port the fleet takes besides the origin's.
pub fn ports() -> Vec<(u16, &'static str)> {
    let mut ports = vec![
        (REDIS_PORT, "fleet Redis"),
        (SERVICE_PORT, "portcullis-ratelimit"),
        (SERVICE_METRICS_PORT, "portcullis-ratelimit metrics"),
    ];
    for envoy in ENVOYS {
        ports.extend([(envoy.https, "Envoy HTTPS"), (envoy.http, "Envoy HTTP"), (envoy.admin, "Envoy admin")]);
    }
    ports
}

fn dir() -> PathBuf {
    state_dir().join("fleet")
}

/// `redis-server`'s arguments for the fleet's Redis: loopback, no persistence, its files under
/// `.portcullis/fleet/redis`.
pub fn redis_args() -> Result<Vec<String>> {
    redis_args_for(REDIS_PORT, &dir().join("redis"))
}

/// `redis-server`'s arguments for a Redis on 127.0.0.1:`port` with no persistence, its files in
/// `data` (made if missing).
pub fn redis_args_for(port: u16, data: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(data)?;
    Ok([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &data.to_string_lossy(),
    ]
    .map(String::from)
    .to_vec())
}

pub fn start_redis() -> Result<Daemon> {
    let mut redis = Daemon::spawn("fleet-redis", Command::new("redis-server").args(redis_args()?))
        .context("starting redis-server (`cargo xtask setup` installs it)")?;
    redis.wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", REDIS_PORT)).is_ok())?;
    Ok(redis)
}

/// Builds the service (`release` for benchmarks) and returns its binary.
pub fn build_service(release: bool) -> Result<PathBuf> {
    let mut args = vec!["build", "--quiet", "-p", "portcullis-ratelimit", "--bin", "portcullis-ratelimit"];
    if release {
        args.push("--release");
    }
    exec(&mut cmd("cargo", &args))?;
    Ok(target_dir()?.join(if release { "release" } else { "debug" }).join("portcullis-ratelimit"))
}

/// Starts the service on :8089 over `redis_urls` with `policy` (the filter's, as JSON), and
/// waits for its listener.
pub fn start_service(bin: &Path, redis_urls: &str, policy: &serde_json::Value) -> Result<Daemon> {
    std::fs::create_dir_all(dir())?;
    let policy_path = dir().join("policy.json");
    std::fs::write(&policy_path, serde_json::to_string_pretty(policy)?)?;
    let mut service = Daemon::spawn(
        "fleet-ratelimit",
        Command::new(bin)
            .args(["--listen", &format!("127.0.0.1:{SERVICE_PORT}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{SERVICE_METRICS_PORT}")])
            .args(["--redis-url", redis_urls])
            .arg("--policy")
            .arg(&policy_path),
    )?;
    service.wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", SERVICE_PORT)).is_ok()
            && envoy::local_http_get(SERVICE_METRICS_PORT, "/metrics").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    })?;
    Ok(service)
}

/// `policy` counting its limits in the fleet: the service on the `ratelimit` cluster,
/// `timeout_ms` to answer, this Envoy's own limiter while it cannot; and, unless it names one,
/// a fresh random `limiter.hash_key`, which every member given this policy (Envoys and the
/// service) then shares.
pub fn global_policy(mut policy: serde_json::Value, timeout_ms: u32) -> Result<serde_json::Value> {
    let key = crate::tools::random_hex(16)?;
    if let Some(object) = policy.as_object_mut() {
        let limiter = object.entry("limiter").or_insert_with(|| serde_json::json!({}));
        limiter["backend"] = serde_json::json!("global");
        limiter["global"] =
            serde_json::json!({"cluster": "ratelimit", "timeout_ms": timeout_ms, "on_unavailable": "local"});
        if let Some(limiter) = limiter.as_object_mut() {
            limiter.entry("hash_key").or_insert(serde_json::json!(key));
        }
    }
    Ok(policy)
}

/// `envoy.yaml` for fleet member `index`: its ports, `policy` as the filter's policy.
pub fn envoy_config(index: usize, policy: &serde_json::Value) -> Result<PathBuf> {
    let ports = ENVOYS[index];
    let base = envoy::config_with_policy(&policy.to_string())?;
    let text = std::fs::read_to_string(&base)?
        .replace("port_value: 8443", &format!("port_value: {}", ports.https))
        .replace("port_value: 8080", &format!("port_value: {}", ports.http))
        .replace("port_value: 9901", &format!("port_value: {}", ports.admin))
        .replace("\"https_port\": 8443", &format!("\"https_port\": {}", ports.https));
    let path = dir().join(format!("envoy-{}.yaml", index + 1));
    std::fs::create_dir_all(dir())?;
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Starts the three Envoys with `policy` (two workers each) and waits for their admins.
pub fn start_envoys(envoy_bin: &Path, policy: &serde_json::Value) -> Result<Vec<Daemon>> {
    let mut envoys = Vec::new();
    for (index, ports) in ENVOYS.iter().enumerate() {
        let config = envoy_config(index, policy)?;
        envoy::validate(envoy_bin, &config)?;
        let mut daemon =
            envoy::spawn_envoy(envoy_bin, &config, &format!("fleet-envoy-{}", index + 1), BASE_IDS[index], 2, "warn")?;
        daemon.wait_until(Duration::from_secs(30), || envoy::admin_ready(ports.admin))?;
        envoys.push(daemon);
    }
    Ok(envoys)
}

/// A three-master Redis Cluster on loopback (for the fleet tests): its nodes and their URLs.
pub fn start_redis_cluster() -> Result<(Vec<Daemon>, String)> {
    let mut nodes = Vec::new();
    let mut addresses = Vec::new();
    for i in 0..3u16 {
        // Client ports below the fleet's Redis; bus ports set explicitly (client + 10000 would
        // pass 65535).
        let (port, bus) = (REDIS_PORT - 10 + i, REDIS_PORT - 20 + i);
        let data = dir().join(format!("cluster-{port}"));
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data)?;
        let mut node = Daemon::spawn(
            &format!("fleet-redis-cluster-{port}"),
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes", "--cluster-port", &bus.to_string(), "--dir"])
                .arg(&data),
        )?;
        node.wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())?;
        nodes.push(node);
        addresses.push(format!("127.0.0.1:{port}"));
    }
    let mut create = Command::new("redis-cli");
    create.args(["--cluster", "create"]).args(&addresses).args(["--cluster-replicas", "0", "--cluster-yes"]);
    exec(create.stdout(std::process::Stdio::null()))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for address in &addresses {
        let port = address.rsplit(':').next().unwrap_or_default();
        loop {
            let info = Command::new("redis-cli").args(["-p", port, "CLUSTER", "INFO"]).output()?;
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!("the Redis Cluster never reached cluster_state:ok");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let urls = addresses.iter().map(|a| format!("redis://{a}")).collect::<Vec<_>>().join(",");
    Ok((nodes, urls))
}
