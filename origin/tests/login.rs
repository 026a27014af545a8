//! Logins under attack: guesses at one account from many addresses are throttled per account
//! (before any password is hashed) and the real user gets back in once the delay has passed;
//! a flood of concurrent logins is bounded (503 + Retry-After past the bound, never more
//! password checks at once than allowed); CORS compares origins exactly. Against the test
//! PostgreSQL, through real sockets from distinct loopback addresses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::IpAddr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use support::{Jobs, Server};

/// The edge's own per-address login limit is on (5/minute), so what stops the guesses below is
/// the per-account throttle, not the per-address one: each address sends one or two.
const POLICY: &str = r#"{"allowed_hosts": ["localhost"], "https_redirect": {"https_port": 9443},
    "rate_limits": [{"name": "login", "method": "POST", "path": "/api/v1/auth/login", "limit": "5/minute"}]}"#;

/// A client of `server` whose connections come from `source`.
fn client_from(server: &Server, source: &str) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(support::certs().join("ca.crt")).unwrap()).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .tls_built_in_root_certs(false)
        .resolve("localhost", server.addr)
        .local_address(source.parse::<IpAddr>().unwrap())
        .use_rustls_tls()
        .build()
        .unwrap()
}

async fn login(client: &reqwest::Client, server: &Server, username: &str, password: &str) -> reqwest::Response {
    client
        .post(server.url("/api/v1/auth/login"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn guesses_from_many_addresses_are_throttled_per_account_and_the_owner_gets_back_in() {
    let server = support::serve(
        &[
            ("PORTCULLIS_POLICY", POLICY),
            ("PORTCULLIS_LOGIN_FREE_FAILURES", "10"),
            ("PORTCULLIS_LOGIN_BASE_DELAY_SECS", "2"),
            ("PORTCULLIS_LOGIN_MAX_DELAY_SECS", "4"),
        ],
        Jobs::Off,
    )
    .await;
    let password = "correct horse battery";
    let victim = support::create_user(&server.pool, password).await;
    let passwords = &server.state.passwords;

    let mut statuses = Vec::new();
    for i in 0..12 {
        let attacker = client_from(&server, &format!("127.0.1.{}", 10 + i));
        statuses.push(login(&attacker, &server, &victim, &format!("guess {i}")).await.status());
    }
    // Ten free failures, the eleventh checked and starting the delay, the twelfth inside it.
    let mut expected = vec![StatusCode::UNAUTHORIZED; 11];
    expected.push(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(statuses, expected);

    let checks = passwords.verifications();
    let thirteenth = client_from(&server, "127.0.1.30");
    let refused = login(&thirteenth, &server, &victim, "guess 13").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS, "a thirteenth address changes nothing");
    let wait: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    let (_, body) = support::error_of(refused).await;
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(passwords.verifications(), checks, "refused before any password was hashed");

    // Even the right password waits: the throttle cannot tell who is typing.
    assert_eq!(login(&thirteenth, &server, &victim, password).await.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(passwords.verifications(), checks);

    // Once the delay has passed, the owner logs in; that clears the account's streak.
    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(200)).await;
    let owner = client_from(&server, "127.0.1.40");
    assert_eq!(login(&owner, &server, &victim, password).await.status(), StatusCode::OK);
    assert_eq!(login(&owner, &server, &victim, "a typo").await.status(), StatusCode::UNAUTHORIZED, "streak cleared");
    assert_eq!(login(&owner, &server, &victim, password).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_accounts_are_throttled_like_real_ones() {
    let server = support::serve(
        &[("PORTCULLIS_LOGIN_FREE_FAILURES", "2"), ("PORTCULLIS_LOGIN_BASE_DELAY_SECS", "30")],
        Jobs::Off,
    )
    .await;
    let real = support::create_user(&server.pool, "correct horse battery").await;
    let ghost = format!("ghost-{}", uuid::Uuid::new_v4().simple());
    for name in [&real, &ghost] {
        let statuses: Vec<StatusCode> = {
            let mut statuses = Vec::new();
            for _ in 0..4 {
                statuses.push(login(&server.client, &server, name, "wrong").await.status());
            }
            statuses
        };
        assert_eq!(
            statuses,
            [
                StatusCode::UNAUTHORIZED,
                StatusCode::UNAUTHORIZED,
                StatusCode::UNAUTHORIZED,
                StatusCode::TOO_MANY_REQUESTS
            ],
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_login_flood_is_bounded_and_answered_503_past_the_bound() {
    let server = support::serve(&[("PORTCULLIS_LOGIN_CONCURRENCY", "2")], Jobs::Off).await;
    // 64 distinct accounts, so no account's throttle is what answers.
    let logins = (0..64).map(|i| {
        let server = &server;
        async move {
            let response = login(&server.client, server, &format!("flood-{i}-{}", uuid::Uuid::new_v4()), "pw").await;
            let retry = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            (response.status(), retry)
        }
    });
    let answers = futures_util::future::join_all(logins).await;
    let busy = answers.iter().filter(|(status, _)| *status == StatusCode::SERVICE_UNAVAILABLE).count();
    let refused = answers.iter().filter(|(status, _)| *status == StatusCode::UNAUTHORIZED).count();
    assert_eq!(busy + refused, 64, "only 401 and 503: {answers:?}");
    assert!(busy > 0 && refused > 0, "{busy} busy, {refused} checked");
    assert!(
        answers.iter().filter(|(s, _)| *s == StatusCode::SERVICE_UNAVAILABLE).all(|(_, r)| r.as_deref() == Some("1")),
        "every 503 says when to retry"
    );
    let peak = server.state.passwords.peak_in_flight();
    assert!((1..=2).contains(&peak), "at most 2 password checks (≈19 MiB each) at once, saw {peak}");
}

#[tokio::test]
async fn cors_admits_exactly_the_configured_origins() {
    let server =
        support::serve(&[("PORTCULLIS_CORS_ORIGINS", "http://localhost:5173,https://app.example")], Jobs::Off).await;
    let preflight = |origin: &'static str| {
        let server = &server;
        async move {
            let response = server
                .client
                .request(reqwest::Method::OPTIONS, server.url("/api/v1/videos"))
                .header("origin", origin)
                .header("access-control-request-method", "GET")
                .send()
                .await
                .unwrap();
            response.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned())
        }
    };
    assert_eq!(preflight("http://localhost:5173").await.as_deref(), Some("http://localhost:5173"));
    assert_eq!(preflight("https://app.example").await.as_deref(), Some("https://app.example"));
    for foreign in
        ["http://localhost.evil.com", "http://localhost:5173.evil.com", "http://localhost", "https://app.example.evil"]
    {
        assert_eq!(preflight(foreign).await, None, "{foreign}");
    }
}
