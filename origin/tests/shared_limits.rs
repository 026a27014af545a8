//! `PORTCULLIS_REDIS_URL`: two origins count one limit in a real `redis-server`, and fall back to
//! their own limiters (never unlimited) while Redis is gone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use portcullis_origin::configuration::Settings;
use portcullis_origin::edge::{self, Connection, Edge};
use portcullis_origin::startup::Application;
use portcullis_ratelimit::testing::Redis;
use tower::ServiceExt;

const POLICY: &str = r#"{"allowed_hosts": ["localhost"], "https_redirect": {"enabled": false},
  "limiter": {"hash_key": "0f0e0d0c0b0a09080706050403020100"},
  "rate_limits": [{"name": "login", "method": "POST", "path": "/api/v1/auth/login", "limit": "5/minute"}]}"#;

/// An origin's edge layer over a handler that always answers 200, as the server mounts it.
fn origin(redis_port: u16) -> (Router, Edge) {
    let env = std::collections::BTreeMap::from([
        ("PORTCULLIS_POLICY".to_owned(), POLICY.to_owned()),
        ("PORTCULLIS_REDIS_URL".to_owned(), format!("redis://127.0.0.1:{redis_port}")),
    ]);
    let settings = Settings::from_env(&env).unwrap();
    let edge = Application::edge(&settings).unwrap();
    edge.shared.as_ref().unwrap().connect();
    let router = Router::new()
        .fallback(|| async { "ok" })
        .layer(axum::middleware::from_fn_with_state(edge.clone(), edge::enforce));
    (router, edge)
}

async fn login(router: &Router, client: &str) -> StatusCode {
    let mut request =
        Request::post("https://localhost/api/v1/auth/login").header("host", "localhost").body(Body::empty()).unwrap();
    let peer: SocketAddr = format!("{client}:40000").parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(Connection { peer, tls: true }));
    router.clone().oneshot(request).await.unwrap().status()
}

async fn wait_connected(router: &Router, edge: &Edge) {
    let deadline = Instant::now() + Duration::from_secs(10);
    // A request from a throwaway client until one is counted in Redis rather than locally.
    let mut i = 0;
    loop {
        let before = edge.shared.as_ref().unwrap().fallbacks();
        login(router, &format!("192.0.2.{}", 100 + i)).await;
        if edge.shared.as_ref().unwrap().fallbacks() == before {
            return;
        }
        i += 1;
        assert!(Instant::now() < deadline, "never connected to Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_origins_share_one_limit_and_fall_back_to_their_own() {
    let redis = Redis::start();
    let (a, edge_a) = origin(redis.port);
    let (b, edge_b) = origin(redis.port);
    wait_connected(&a, &edge_a).await;
    wait_connected(&b, &edge_b).await;

    let mut allowed = 0;
    for i in 0..12 {
        let router = if i % 2 == 0 { &a } else { &b };
        allowed += usize::from(login(router, "203.0.113.50").await == StatusCode::OK);
    }
    assert_eq!(allowed, 5, "one limit across both origins");

    // Redis gone: each origin's own limiter decides, so a fresh client gets at most the limit
    // from each (never unlimited), and the fallbacks are counted.
    drop(redis);
    let mut allowed = 0;
    for i in 0..20 {
        let router = if i % 2 == 0 { &a } else { &b };
        allowed += usize::from(login(router, "203.0.113.51").await == StatusCode::OK);
    }
    assert_eq!(allowed, 10, "five per origin while Redis is down");
    assert!(edge_a.shared.as_ref().unwrap().fallbacks() >= 10 && edge_b.shared.as_ref().unwrap().fallbacks() >= 10);
}

/// The origin's hash key: the policy's, else a random one of this process; a Redis shared with
/// the fleet needs the configured one (no Redis server is needed to see that).
#[test]
fn an_origin_hashes_with_its_own_random_key_unless_it_shares_redis() {
    let edge_for = |policy: &str, redis: bool| {
        let mut env = std::collections::BTreeMap::from([("PORTCULLIS_POLICY".to_owned(), policy.to_owned())]);
        if redis {
            env.insert("PORTCULLIS_REDIS_URL".to_owned(), "redis://127.0.0.1:1".to_owned());
        }
        Application::edge(&Settings::from_env(&env).unwrap())
    };
    let unkeyed = POLICY.replace(r#""limiter": {"hash_key": "0f0e0d0c0b0a09080706050403020100"},"#, "");
    let error = edge_for(&unkeyed, true).err().unwrap();
    assert!(error.starts_with("PORTCULLIS_POLICY: limiter.hash_key is required with PORTCULLIS_REDIS_URL"), "{error}");

    let client_id = |edge: &Edge| {
        let headers: Vec<(&str, &str)> = Vec::new();
        let request = portcullis_core::Request {
            method: b"POST",
            scheme: portcullis_core::Scheme::Https,
            authority: Some(b"localhost"),
            path: Some(b"/api/v1/auth/login"),
            peer: portcullis_core::Peer::Socket("203.0.113.7"),
            headers: &headers,
        };
        match edge.policy.begin(&request) {
            portcullis_core::Begin::Check(check) => check.client_id(),
            portcullis_core::Begin::Decided(decision) => panic!("a limit check expected: {decision:?}"),
        }
    };
    let (one, two) = (edge_for(&unkeyed, false).unwrap(), edge_for(&unkeyed, false).unwrap());
    assert!(!one.policy.needs_hash_key());
    assert_ne!(client_id(&one), client_id(&two), "each process its own random key");
    let (a, b) = (edge_for(POLICY, false).unwrap(), edge_for(POLICY, false).unwrap());
    assert_eq!(client_id(&a), client_id(&b), "a configured key is everyone's");
}
