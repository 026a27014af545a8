//! The built `portcullis-ratelimit` binary as a real process for the tests (Redis comes from
//! `portcullis_ratelimit::testing`), on free loopback ports, killed when dropped.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_ratelimit::proto::{Entry, RateLimitDescriptor, RateLimitRequest};
use portcullis_ratelimit::rls::rate_limit_service_client::RateLimitServiceClient;
use tonic::transport::Channel;

pub use portcullis_ratelimit::testing::{Cluster, Redis, free_port, scratch};

/// The built service binary.
pub struct Service {
    pub port: u16,
    pub metrics_port: u16,
    child: Child,
    pub log: PathBuf,
}

pub const POLICY: &str = r#"{"limiter": {"hash_key": "000102030405060708090a0b0c0d0e0f"}}"#;

impl Service {
    pub async fn start(redis_url: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let metrics_port = free_port();
        let dir = scratch(&format!("service-{port}"));
        let policy = dir.join("policy.json");
        std::fs::write(&policy, POLICY).unwrap();
        let log = dir.join("service.log");
        // The production default (50 ms) is for a quiet Redis next to the service; these tests
        // share two cores with the rest of the workspace's tests, and a test that checks
        // exactness must not count a slow answer as a refusal. Tests of the timeout pass their own.
        let timeout: &[&str] =
            if extra.contains(&"--redis-timeout-ms") { &[] } else { &["--redis-timeout-ms", "2000"] };
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis-ratelimit"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(["--redis-url", redis_url])
            .args(["--policy", &policy.to_string_lossy()])
            .args(timeout)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let service = Self { port, metrics_port, child, log };
        service.wait_serving().await;
        service
    }

    async fn wait_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(channel) = Channel::from_shared(self.url()).unwrap().connect().await {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
                if let Ok(answer) = health.check(request).await
                    && answer.into_inner().status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the service never became SERVING:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn client(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::new(Channel::from_shared(self.url()).unwrap().connect().await.unwrap())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port)).await.unwrap().text().await.unwrap()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request for `tier` from `client`, as a Portcullis host sends it.
pub fn request(tier: &str, client: &str) -> RateLimitRequest {
    RateLimitRequest {
        domain: "portcullis".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![
                Entry { key: "tier".into(), value: tier.into() },
                Entry { key: "client".into(), value: client.into() },
            ],
            limit: None,
        }],
        hits_addend: 0,
    }
}
