//! The server's listeners and layers over real connections — the plain-HTTP redirect listener,
//! mTLS, CORS, the native rate limit behind a trusted proxy, JSON errors for routing failures —
//! and the request rules of every endpoint, against the test PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Jobs, Server, error_of, fields};

#[tokio::test]
async fn the_plain_listener_only_redirects_to_https() {
    let server = support::serve(&[("PORTCULLIS_PLAIN_LISTEN", "127.0.0.1:0")], Jobs::Off).await;
    let plain = server.plain.expect("a plain listener");
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let url = |path: &str| format!("http://{plain}{path}");

    let get = client.get(url("/api/v1/videos?limit=2")).header("host", "localhost").send().await.unwrap();
    assert_eq!(get.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(get.headers()["location"], "https://localhost:9443/api/v1/videos?limit=2");
    assert_eq!(get.headers()["x-frame-options"], "DENY", "the core's headers on its own replies");
    assert!(!get.headers().contains_key("strict-transport-security"), "never over plain HTTP");
    let post = client.post(url("/api/v1/auth/login")).header("host", "localhost").send().await.unwrap();
    assert_eq!(post.status(), StatusCode::PERMANENT_REDIRECT, "a redirect that keeps the method and body");

    let foreign = client.get(url("/api/v1/health")).header("host", "evil.example").send().await.unwrap();
    assert_eq!(foreign.status(), StatusCode::BAD_REQUEST, "never a redirect to someone else's host");
    assert!(foreign.headers().get("location").is_none());

    // ACME challenges are exempt from the redirect, yet nothing is served over plain HTTP.
    let acme = client.get(url("/.well-known/acme-challenge/token")).header("host", "localhost").send().await.unwrap();
    assert_eq!(acme.status(), StatusCode::MISDIRECTED_REQUEST);
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_its_certificate_get_in() {
    let ca = support::certs().join("ca.crt").display().to_string();
    let server = support::serve(&[("PORTCULLIS_CLIENT_CA", &ca)], Jobs::Off).await;
    let anonymous = server.client.get(server.url("/openapi.json")).send().await;
    assert!(anonymous.is_err(), "a client without a certificate is refused in the handshake: {anonymous:?}");
    let envoy = support::client(server.addr, Some(support::envoy_identity()));
    let response = envoy.get(server.url("/api/v1/health")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn cors_admits_the_configured_origins_only() {
    let server =
        support::serve(&[("PORTCULLIS_CORS_ORIGINS", "https://app.example, http://localhost:3000")], Jobs::Off).await;
    let preflight = |origin: &'static str| {
        server
            .client
            .request(reqwest::Method::OPTIONS, server.url("/api/v1/videos"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let allowed = preflight("https://app.example").await.unwrap();
    assert_eq!(allowed.status(), 200);
    let h = allowed.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "600");
    assert!(h["access-control-allow-methods"].to_str().unwrap().contains("DELETE"));
    let local = preflight("http://localhost:3000").await.unwrap();
    assert_eq!(local.headers()["access-control-allow-origin"], "http://localhost:3000");
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none(), "an unlisted origin gets no grant");
}

#[tokio::test]
async fn the_native_rate_limit_keys_clients_behind_a_trusted_proxy() {
    let policy = json!({
        "allowed_hosts": ["localhost"],
        "client_ip": {"trusted_hops": 1},
        "rate_limits": [{"name": "health", "method": "GET", "path": "/api/v1/health", "limit": "2/minute"}]
    })
    .to_string();
    let server = support::serve(&[("PORTCULLIS_POLICY", &policy)], Jobs::Off).await;
    let health = |client_ip: &'static str| {
        server.client.get(server.url("/api/v1/health")).header("x-forwarded-for", client_ip).send()
    };
    assert_eq!(health("198.51.100.7").await.unwrap().status(), 200);
    assert_eq!(health("198.51.100.7").await.unwrap().status(), 200);
    let limited = health("198.51.100.7").await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(health("203.0.113.9").await.unwrap().status(), 200, "another client behind the proxy has its own quota");
}

#[tokio::test]
async fn the_policy_can_come_from_a_file() {
    let dir = std::env::temp_dir().join(format!("portcullis-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.json");
    std::fs::write(&file, r#"{"allowed_hosts": ["api.example"], "rate_limits": []}"#).unwrap();
    let server = support::serve(&[("PORTCULLIS_POLICY_FILE", file.to_str().unwrap())], Jobs::Off).await;
    let localhost = server.client.get(server.url("/openapi.json")).send().await.unwrap();
    assert_eq!(localhost.status(), StatusCode::BAD_REQUEST, "localhost is not on the file's allow-list");
    let listed = server.client.get(server.url("/openapi.json")).header("host", "api.example").send().await.unwrap();
    assert_eq!(listed.status(), 200);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn routing_failures_are_json_errors_that_keep_their_headers() {
    let server = support::serve(&[], Jobs::Off).await;
    let response = server.client.put(server.url("/api/v1/health")).send().await.unwrap();
    assert_eq!(response.headers()["allow"], "GET,HEAD");
    let (status, body) = error_of(response).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed")));
    assert_eq!(body["message"], "Method Not Allowed.");
}

#[tokio::test]
async fn every_request_rule_is_a_422_naming_its_field() {
    let server = support::serve(&[], Jobs::Off).await;
    let token = server.session().await;
    let anonymous = |path: &'static str, body: Value| server.client.post(server.url(path)).json(&body).send();

    let (status, body) =
        error_of(anonymous("/api/v1/auth/login", json!({"username": "u".repeat(129), "password": ""})).await.unwrap())
            .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&body), ["username", "password"]);
    let (_, body) =
        error_of(anonymous("/api/v1/auth/refresh", json!({"refresh_token": "t".repeat(257)})).await.unwrap()).await;
    assert_eq!(fields(&body), ["refresh_token"]);

    let transcribe = |body: Value| server.post("/api/v1/transcribe", &token, body);
    // For malformed URLs only the field is pinned: the URL rule's wording may be refined.
    let cases = [
        (
            json!({"source_url": format!("https://a.example/{}", "x".repeat(2048))}),
            "source_url",
            Some("must be at most 2048 characters"),
        ),
        (json!({"source_url": "https://a.example/with space"}), "source_url", None),
        (json!({"source_url": "https://"}), "source_url", None),
        (
            json!({"source_url": "https://a.example/x", "title": "t".repeat(513)}),
            "title",
            Some("must be at most 512 characters"),
        ),
        (
            json!({"source_url": "https://a.example/x", "title": "bell\u{7}"}),
            "title",
            Some("must not contain control characters"),
        ),
    ];
    for (request, field, message) in cases {
        let (status, body) = error_of(transcribe(request.clone()).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{request}");
        assert_eq!(fields(&body), [field], "{request}");
        if let Some(message) = message {
            assert_eq!(body["details"][0]["message"], message, "{request}");
        }
    }

    let (status, body) = error_of(server.get("/api/v1/videos?limit=many", &token).await).await;
    assert_eq!((status, fields(&body)), (StatusCode::UNPROCESSABLE_ENTITY, vec!["limit".to_owned()]));
    let (_, body) = error_of(server.get("/api/v1/videos?color=red", &token).await).await;
    assert_eq!(fields(&body), ["color"], "an unknown parameter is refused");
    let (_, body) = error_of(server.get("/api/v1/videos?limit=1&limit=2", &token).await).await;
    assert_eq!(fields(&body), ["query"], "a repeated parameter");
}

/// The fields a refused `POST /schedule` names.
async fn schedule_error(server: &Server, token: &str, body: Value) -> Vec<String> {
    let (status, body) = error_of(server.post("/api/v1/schedule", token, body).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    fields(&body)
}

#[tokio::test]
async fn analyses_are_queued_for_the_callers_own_videos_only() {
    let server = support::serve(&[], Jobs::Off).await;
    let alice = server.session().await;
    let bob = server.session().await;
    let queued: Value = server
        .post(
            "/api/v1/transcribe",
            &alice,
            json!({"source_url": "https://media.example/analyse-me.mp4", "title": "Talk"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let video = queued["video_id"].as_str().unwrap().to_owned();

    let analysis = server.post("/api/v1/analyze", &alice, json!({"video_id": video, "analysis": "summary"})).await;
    assert_eq!(analysis.status(), StatusCode::ACCEPTED);
    let job: Value = analysis.json().await.unwrap();
    assert_eq!((job["kind"].as_str(), job["status"].as_str()), (Some("analysis"), Some("queued")));
    assert_eq!((job["video_id"].as_str(), job["params"]["analysis"].as_str()), (Some(video.as_str()), Some("summary")));
    let fetched: Value =
        server.get(&format!("/api/v1/jobs/{}", job["id"].as_str().unwrap()), &alice).await.json().await.unwrap();
    assert_eq!(fetched["id"], job["id"]);

    let (status, _) =
        error_of(server.post("/api/v1/analyze", &bob, json!({"video_id": video, "analysis": "summary"})).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another user's video is not found");

    let later = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let scheduled = server
        .post(
            "/api/v1/schedule",
            &alice,
            json!({"kind": "analysis", "run_at": later, "video_id": video, "analysis": "sentiment"}),
        )
        .await;
    assert_eq!(scheduled.status(), StatusCode::ACCEPTED);
    let scheduled: Value = scheduled.json().await.unwrap();
    assert_eq!(
        (scheduled["kind"].as_str(), scheduled["params"]["analysis"].as_str()),
        (Some("analysis"), Some("sentiment"))
    );
    let run_at = chrono::DateTime::parse_from_rfc3339(scheduled["run_at"].as_str().unwrap()).unwrap();
    assert!(run_at > chrono::Utc::now() + chrono::Duration::minutes(90), "{scheduled}");

    // Each kind takes its own fields only, and a missing one is named.
    let mut misplaced = json!({"kind": "analysis", "run_at": later, "video_id": video, "analysis": "summary"});
    misplaced["source_url"] = json!("https://a.example/x");
    assert_eq!(schedule_error(&server, &alice, misplaced).await, ["source_url"]);
    let incomplete = json!({"kind": "analysis", "run_at": later, "video_id": video});
    assert_eq!(schedule_error(&server, &alice, incomplete).await, ["analysis"]);
    let misplaced =
        json!({"kind": "transcription", "run_at": later, "source_url": "https://a.example/x", "video_id": video});
    assert_eq!(schedule_error(&server, &alice, misplaced).await, ["video_id"]);
    let (status, _) = error_of(
        server
            .post(
                "/api/v1/schedule",
                &bob,
                json!({"kind": "analysis", "run_at": later, "video_id": video, "analysis": "summary"}),
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nor can another user schedule one");
}
