//! The service against a real `redis-server`: exact limits under concurrency, the answer's
//! fields and headers, what Redis holds, malformed requests, Redis frozen, killed and back,
//! a three-node Redis Cluster, metrics and settings errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use portcullis_ratelimit::proto::{Code, RateLimitOverride, RateLimitResponse, Unit};
use support::{Cluster, Redis, Service, request};

async fn codes(service: &Service, tier: &str, client: &str, n: usize) -> Vec<Result<RateLimitResponse, tonic::Status>> {
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..n {
        let mut client_stub = service.client().await;
        let request = request(tier, client);
        calls.spawn(async move { client_stub.should_rate_limit(request).await.map(tonic::Response::into_inner) });
    }
    calls.join_all().await
}

fn count(answers: &[Result<RateLimitResponse, tonic::Status>], code: Code) -> usize {
    answers.iter().filter(|a| a.as_ref().is_ok_and(|r| r.overall_code == code as i32)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_burst_passes_under_concurrency_and_the_answer_is_complete() {
    let redis = Redis::start();
    let service = Service::start(&redis.url(), &[]).await;

    let answers = codes(&service, "login", "client-a", 60).await;
    let failed: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(failed.is_empty(), "every call is answered: {failed:?}");
    assert_eq!(count(&answers, Code::Ok), 5, "{answers:?}");
    assert_eq!(count(&answers, Code::OverLimit), 55);

    let refused = answers.iter().flatten().find(|r| r.overall_code == Code::OverLimit as i32).unwrap();
    let status = &refused.statuses[0];
    let limit = status.current_limit.as_ref().unwrap();
    assert_eq!((limit.requests_per_unit, limit.unit, limit.name.as_str()), (5, Unit::Minute as i32, "login"));
    assert_eq!(status.limit_remaining, 0);
    let wait = status.duration_until_reset.unwrap().as_nanos();
    assert!((11_000_000_000..=12_000_000_000).contains(&wait), "one emission interval, got {wait} ns");
    let headers: Vec<(&str, &str)> =
        refused.response_headers_to_add.iter().map(|h| (h.key.as_str(), h.value.as_str())).collect();
    assert_eq!(headers[0], ("ratelimit-policy", "\"login\";q=5;w=60"));
    assert_eq!(headers[1].0, "ratelimit");
    assert!(headers.iter().any(|(k, v)| *k == "retry-after" && *v == "12"), "{headers:?}");

    // Another client and another tier have their own quota.
    assert_eq!(count(&codes(&service, "login", "client-b", 6).await, Code::Ok), 5);
    assert_eq!(count(&codes(&service, "refresh", "client-a", 6).await, Code::Ok), 5);

    // Redis holds keyed hashes with a TTL of at most the window, never the client's name.
    let keys = redis.cli(&["--scan"]);
    assert_eq!(keys.lines().count(), 3, "{keys}");
    assert!(!keys.contains("client-"), "{keys}");
    for key in keys.lines() {
        assert!(key.starts_with("portcullis:{"), "{key}");
        let ttl: i64 = redis.cli(&["PTTL", key]).trim().parse().unwrap();
        assert!((1..=60_000).contains(&ttl), "{key}: PTTL {ttl}");
    }

    let metrics = service.metrics().await;
    assert!(metrics.contains("portcullis_ratelimit_decisions_total{code=\"over_limit\"} 57"), "{metrics}");
    assert!(metrics.contains("portcullis_ratelimit_over_limit_total{tier=\"login\"} 56"), "{metrics}");
    assert!(metrics.contains("portcullis_ratelimit_redis_latency_seconds_count"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_unknown_tiers_and_malformed_requests() {
    let redis = Redis::start();
    let service = Service::start(&redis.url(), &[]).await;
    let mut client = service.client().await;

    let mut overridden = request("no-such-tier", "c");
    overridden.descriptors[0].limit = Some(RateLimitOverride { requests_per_unit: 2, unit: Unit::Hour as i32 });
    let mut allowed = 0;
    for _ in 0..4 {
        let answer = client.should_rate_limit(overridden.clone()).await.unwrap().into_inner();
        allowed += usize::from(answer.overall_code == Code::Ok as i32);
        assert_eq!(answer.statuses[0].current_limit.as_ref().unwrap().unit, Unit::Hour as i32);
    }
    assert_eq!(allowed, 2, "the standard override applies");

    // No rule and no override: unlimited, and Redis is not asked.
    let before = redis.cli(&["--scan"]).lines().count();
    let free = client.should_rate_limit(request("no-such-tier", "c")).await.unwrap().into_inner();
    assert_eq!(free.overall_code, Code::Ok as i32);
    assert_eq!(free.statuses[0].current_limit, None);
    assert_eq!(redis.cli(&["--scan"]).lines().count(), before);

    let mut cases = Vec::new();
    let mut empty_domain = request("login", "c");
    empty_domain.domain.clear();
    cases.push((empty_domain, "domain"));
    let mut no_descriptors = request("login", "c");
    no_descriptors.descriptors.clear();
    cases.push((no_descriptors, "descriptors"));
    let mut empty_key = request("login", "c");
    empty_key.descriptors[0].entries[1].key.clear();
    cases.push((empty_key, "descriptors[0].entries[1].key"));
    let mut bad_unit = request("login", "c");
    bad_unit.descriptors[0].limit = Some(RateLimitOverride { requests_per_unit: 1, unit: 42 });
    cases.push((bad_unit, "descriptors[0].limit.unit"));
    let mut zero = request("login", "c");
    zero.descriptors[0].limit = Some(RateLimitOverride { requests_per_unit: 0, unit: Unit::Second as i32 });
    cases.push((zero, "descriptors[0].limit.requests_per_unit"));
    for (bad, field) in cases {
        let status = client.should_rate_limit(bad).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{field}");
        assert!(status.message().starts_with(field), "{field}: {}", status.message());
    }
    assert!(service.metrics().await.contains("portcullis_ratelimit_invalid_requests_total 5"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_costs_the_timeout_and_a_restarted_one_is_used_again() {
    let redis = Redis::start();
    let port = redis.port;
    let service = Service::start(&redis.url(), &["--redis-timeout-ms", "50"]).await;
    let mut client = service.client().await;
    assert_eq!(count(&codes(&service, "login", "frozen", 2).await, Code::Ok), 2);

    redis.signal("STOP");
    let started = Instant::now();
    let status = client.should_rate_limit(request("login", "frozen")).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(took < Duration::from_millis(500), "answered in {took:?}");
    redis.signal("CONT");

    // Killed, then started again on the same port with nothing in it: the service reconnects
    // by itself and counts from zero.
    redis.kill();
    let status = client.should_rate_limit(request("login", "frozen")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let _again = Redis::start_with(port, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.should_rate_limit(request("login", "after")).await {
            Ok(answer) => {
                assert_eq!(answer.into_inner().overall_code, Code::Ok as i32);
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable);
                assert!(Instant::now() < deadline, "never reconnected:\n{}", service.log_text());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(count(&codes(&service, "login", "after", 6).await, Code::Ok), 4, "exact again");
    assert!(!service.metrics().await.contains("portcullis_ratelimit_redis_errors_total 0\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_redis_cluster_is_exact() {
    let cluster = Cluster::start();
    let service = Service::start(&cluster.urls(), &[]).await;
    for i in 0..12 {
        let client = format!("cluster-client-{i}");
        assert_eq!(count(&codes(&service, "login", &client, 8).await, Code::Ok), 5, "{client}");
    }
    let held: usize = cluster.nodes.iter().map(|n| n.cli(&["DBSIZE"]).trim().parse::<usize>().unwrap()).sum();
    assert_eq!(held, 12);
    assert!(cluster.nodes.iter().filter(|n| n.cli(&["DBSIZE"]).trim() != "0").count() >= 2, "keys spread over nodes");
}

#[test]
fn settings_errors_name_the_flag() {
    let run = |args: &[&str]| {
        let output =
            std::process::Command::new(env!("CARGO_BIN_EXE_portcullis-ratelimit")).args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    assert!(run(&["--redis-url", "http://x"]).contains("--redis-url: \"http://x\" is not a redis://"));
    assert!(run(&["--redis-url", "redis://x", "--redis-timeout-ms", "0"]).contains("--redis-timeout-ms"));
    let dir = std::env::temp_dir().join(format!("portcullis-ratelimit-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"rate_limits": [{"name": "x", "method": "GET", "path": "/x", "limit": "5/fortnight"}]}"#,
    )
    .unwrap();
    let stderr = run(&["--redis-url", "redis://x", "--policy", &policy.to_string_lossy()]);
    assert!(stderr.contains("--policy: rate_limits[0].limit"), "{stderr}");
    assert!(run(&["--redis-url", "redis://x", "--policy", "/nonexistent"]).contains("--policy: cannot read"));

    // The fleet's hash key: the policy's, or a mounted file; never one of the service's own.
    let stderr = run(&["--redis-url", "redis://x"]);
    assert!(stderr.contains("--hash-key-file: is required unless the --policy names limiter.hash_key"), "{stderr}");
    let key = dir.join("hash_key");
    std::fs::write(&key, "not hex\n").unwrap();
    let stderr = run(&["--redis-url", "redis://x", "--hash-key-file", &key.to_string_lossy()]);
    assert!(stderr.contains("--hash-key-file:") && stderr.contains("does not hold 32 hexadecimal digits"), "{stderr}");
    let keyed = dir.join("keyed.json");
    std::fs::write(&keyed, support::POLICY).unwrap();
    let both =
        ["--redis-url", "redis://x", "--policy", &keyed.to_string_lossy(), "--hash-key-file", &key.to_string_lossy()];
    assert!(run(&both).contains("--hash-key-file: the --policy names limiter.hash_key too"));
}

/// A Portcullis host's two phases through the service give the decisions, statuses and
/// headers of its local one-phase limiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_in_two_phases_through_the_service_matches_its_local_limiter() {
    use portcullis_core::{Begin, Decision, MemoryStore, Peer, Policy, Request, Scheme};
    use portcullis_ratelimit::descriptor::{DEFAULT_DOMAIN, request_for, verdict_from};

    let redis = Redis::start();
    let service = Service::start(&redis.url(), &[]).await;
    let mut client = service.client().await;
    let policy = Policy::from_json(support::POLICY.as_bytes()).unwrap();
    let local = MemoryStore::new();
    let headers: Vec<(&str, &str)> = Vec::new();
    let request = Request {
        method: b"POST",
        scheme: Scheme::Https,
        authority: Some(b"localhost"),
        path: Some(b"/api/v1/auth/login"),
        peer: Peer::Socket("198.51.100.20:4000"),
        headers: &headers,
    };
    let render = |decision: Decision| match decision {
        Decision::Respond(reply) => (reply.status, reply.headers.to_vec(), reply.body),
        Decision::Forward(forward) => {
            let mut edited: Vec<(String, String)> = Vec::new();
            policy.response_edits(&forward.plan).apply(&mut edited);
            (200, edited, String::new())
        }
    };
    for attempt in 0..7 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        let expected = render(policy.decide(&request, now, &local));
        let Begin::Check(check) = policy.begin(&request) else { panic!("login is limited") };
        let rls = request_for(&policy, &check, DEFAULT_DOMAIN);
        assert!(!format!("{rls:?}").contains("198.51.100"), "no address leaves the host");
        let answer = client.should_rate_limit(rls).await.unwrap().into_inner();
        let global = render(policy.finish(&check, verdict_from(&check, &answer).unwrap()));
        assert_eq!(global, expected, "attempt {attempt}");
        // An origin with a Redis URL counts under the very key the service used.
        let key = portcullis_ratelimit::descriptor::limit_key(&policy, &check, DEFAULT_DOMAIN);
        assert_eq!(redis.cli(&["--scan"]).trim(), key.key());
    }
}
