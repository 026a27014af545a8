//! The service's command line: every flag also reads an environment variable, and every
//! problem names the flag.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use portcullis_core::{HashKey, Policy};

use crate::store::Target;

/// Envoy's rate-limit service API (gRPC) over Redis: one limit across a fleet.
#[derive(Debug, Clone, Parser)]
#[command(name = "portcullis-ratelimit", version)]
pub struct Cli {
    /// gRPC address (RateLimitService v3 and grpc.health.v1).
    #[arg(long, env = "PORTCULLIS_RATELIMIT_LISTEN", default_value = "127.0.0.1:8089")]
    pub listen: SocketAddr,
    /// Prometheus metrics address (`GET /metrics`).
    #[arg(long, env = "PORTCULLIS_RATELIMIT_METRICS_LISTEN", default_value = "127.0.0.1:9089")]
    pub metrics_listen: SocketAddr,
    /// Redis URL; several (repeated or comma-separated) are the seed nodes of a Redis Cluster.
    #[arg(long = "redis-url", env = "PORTCULLIS_REDIS_URL", value_delimiter = ',', required = true)]
    pub redis_urls: Vec<String>,
    /// Treat a single --redis-url as a Redis Cluster seed.
    #[arg(long, env = "PORTCULLIS_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Longest wait for one Redis answer, in milliseconds; past it the call fails UNAVAILABLE
    /// (and the caller's fallback decides).
    #[arg(long, env = "PORTCULLIS_REDIS_TIMEOUT_MS", default_value_t = 50)]
    pub redis_timeout_ms: u64,
    /// The policy JSON the filter uses (its tiers and `limiter.hash_key`); the seed policy
    /// when absent.
    #[arg(long, env = "PORTCULLIS_RATELIMIT_POLICY")]
    pub policy: Option<PathBuf>,
    /// A file holding the fleet's `limiter.hash_key` (32 hex digits), for a policy that names
    /// none: a mounted secret rather than a key inside the policy document. One of the two is
    /// required: every replica, Envoy and origin sharing Redis must hash clients alike.
    #[arg(long, env = "PORTCULLIS_HASH_KEY_FILE")]
    pub hash_key_file: Option<PathBuf>,
}

/// What the service runs with, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub redis: Target,
    pub redis_timeout: Duration,
    pub policy: Policy,
}

/// A setting that cannot be used, named by its flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    pub flag: &'static str,
    pub problem: String,
}

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.flag, self.problem)
    }
}

impl std::error::Error for SettingsError {}

impl Cli {
    pub fn settings(&self) -> Result<Settings, SettingsError> {
        let redis = Target::from_urls(&self.redis_urls, self.redis_cluster)
            .map_err(|problem| SettingsError { flag: "--redis-url", problem })?;
        if !(1..=10_000).contains(&self.redis_timeout_ms) {
            return Err(SettingsError {
                flag: "--redis-timeout-ms",
                problem: format!("{} is not between 1 and 10000", self.redis_timeout_ms),
            });
        }
        let policy = match &self.policy {
            None => Policy::from_json(b"{}"),
            Some(path) => {
                let json = std::fs::read(path).map_err(|err| SettingsError {
                    flag: "--policy",
                    problem: format!("cannot read {}: {err}", path.display()),
                })?;
                Policy::from_json(&json)
            }
        }
        .map_err(|err| SettingsError { flag: "--policy", problem: err.to_string() })?;
        let policy = match (&self.hash_key_file, policy.hash_key_configured()) {
            (None, true) => policy,
            (None, false) => {
                return Err(SettingsError {
                    flag: "--hash-key-file",
                    problem: "is required unless the --policy names limiter.hash_key: the fleet's hosts must \
                              hash clients alike (generate one: openssl rand -hex 16)"
                        .to_owned(),
                });
            }
            (Some(_), true) => {
                return Err(SettingsError {
                    flag: "--hash-key-file",
                    problem: "the --policy names limiter.hash_key too; keep one of them".to_owned(),
                });
            }
            (Some(path), false) => {
                let problem = |problem: String| SettingsError { flag: "--hash-key-file", problem };
                let text = std::fs::read_to_string(path)
                    .map_err(|err| problem(format!("cannot read {}: {err}", path.display())))?;
                let key = HashKey::parse_hex(text.trim())
                    .ok_or_else(|| problem(format!("{} does not hold 32 hexadecimal digits", path.display())))?;
                policy.with_hash_key(key)
            }
        };
        Ok(Settings {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            redis,
            redis_timeout: Duration::from_millis(self.redis_timeout_ms),
            policy,
        })
    }
}
