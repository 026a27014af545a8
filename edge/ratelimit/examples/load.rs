//! Drives a running `portcullis-ratelimit` as hard as it goes, for `cargo xtask bench fleet`:
//! `load URL SECONDS CONCURRENCY`. Each call is one descriptor of a 1,000,000/second override
//! for one of 10,000 clients (never refused, so every call runs the Redis step). Prints
//! `decisions=N seconds=S errors=E`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use portcullis_ratelimit::proto::{Entry, RateLimitDescriptor, RateLimitOverride, RateLimitRequest, Unit};
use portcullis_ratelimit::rls::rate_limit_service_client::RateLimitServiceClient;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).cloned().unwrap_or_else(|| "http://127.0.0.1:8089".into());
    let seconds: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let concurrency: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(32);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    runtime.block_on(async move {
        let channel = tonic::transport::Channel::from_shared(url).unwrap().connect().await.unwrap();
        let decisions = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let until = started + Duration::from_secs(seconds);
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..concurrency {
            let mut client = RateLimitServiceClient::new(channel.clone());
            let (decisions, errors) = (decisions.clone(), errors.clone());
            tasks.spawn(async move {
                let mut n = task;
                while Instant::now() < until {
                    n = (n + concurrency) % 10_000;
                    let request = RateLimitRequest {
                        domain: "bench".into(),
                        descriptors: vec![RateLimitDescriptor {
                            entries: vec![
                                Entry { key: "tier".into(), value: "bench".into() },
                                Entry { key: "client".into(), value: format!("client-{n}") },
                            ],
                            limit: Some(RateLimitOverride { requests_per_unit: 1_000_000, unit: Unit::Second as i32 }),
                        }],
                        hits_addend: 0,
                    };
                    match client.should_rate_limit(request).await {
                        Ok(_) => decisions.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        tasks.join_all().await;
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "decisions={} seconds={elapsed:.3} errors={}",
            decisions.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed)
        );
    });
}
