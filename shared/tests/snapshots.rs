//! The full response header set of both presets, over HTTP and HTTPS, for a forwarded response
//! and for each kind of local reply.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_core::{Decision, MemoryStore, Peer, Policy, Request, Scheme};

const NOW: u64 = 1_700_000_000_000_000_000;

fn render(status: u16, headers: &[(String, String)], body: &str) -> String {
    let mut lines: Vec<String> = headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
    lines.sort();
    format!("{status}\n{}\n\n{body}", lines.join("\n"))
}

/// Sends `requests` identical requests and renders the last response, forwarded ones answered
/// by an upstream that leaks its stack.
fn last_response(preset: &str, scheme: Scheme, method: &str, authority: &str, path: &str, requests: usize) -> String {
    let policy =
        Policy::from_json(format!(r#"{{"preset": "{preset}", "https_redirect": {{"https_port": 8443}}}}"#).as_bytes())
            .unwrap();
    let store = MemoryStore::new();
    let headers: Vec<(&str, &str)> = Vec::new();
    let request = Request {
        method: method.as_bytes(),
        scheme,
        authority: Some(authority.as_bytes()),
        path: Some(path.as_bytes()),
        peer: Peer::Socket("203.0.113.5:40000"),
        headers: &headers,
    };
    let mut rendered = String::new();
    for _ in 0..requests {
        rendered = match policy.decide(&request, NOW, &store) {
            Decision::Respond(reply) => render(reply.status, &reply.headers.to_vec(), &reply.body),
            Decision::Forward(forward) => {
                let mut upstream = vec![
                    ("content-type".to_owned(), "application/json".to_owned()),
                    ("server".to_owned(), "uvicorn".to_owned()),
                    ("x-powered-by".to_owned(), "FastAPI".to_owned()),
                ];
                policy.response_edits(&forward.plan).apply(&mut upstream);
                render(200, &upstream, "(upstream body)")
            }
        };
    }
    rendered
}

#[test]
fn seed_preset_over_https() {
    insta::assert_snapshot!(last_response("seed", Scheme::Https, "GET", "localhost:8443", "/api/v1/videos", 1));
}

#[test]
fn seed_preset_over_http_acme() {
    insta::assert_snapshot!(last_response(
        "seed",
        Scheme::Http,
        "GET",
        "localhost:8080",
        "/.well-known/acme-challenge/t",
        1
    ));
}

#[test]
fn strict_preset_over_https() {
    insta::assert_snapshot!(last_response("strict", Scheme::Https, "GET", "localhost:8443", "/api/v1/videos", 1));
}

#[test]
fn strict_preset_over_http_acme() {
    insta::assert_snapshot!(last_response(
        "strict",
        Scheme::Http,
        "GET",
        "localhost:8080",
        "/.well-known/acme-challenge/t",
        1
    ));
}

#[test]
fn seed_redirect_308() {
    insta::assert_snapshot!(last_response("seed", Scheme::Http, "POST", "localhost:8080", "/api/v1/auth/login?x=1", 1));
}

#[test]
fn strict_redirect_301() {
    insta::assert_snapshot!(last_response("strict", Scheme::Http, "GET", "localhost:8080", "/api/v1/videos", 1));
}

#[test]
fn seed_rate_limited_429() {
    insta::assert_snapshot!(last_response("seed", Scheme::Https, "POST", "localhost:8443", "/api/v1/auth/login", 6));
}

#[test]
fn strict_bad_host_400() {
    insta::assert_snapshot!(last_response("strict", Scheme::Https, "GET", "attacker.example:8443", "/", 1));
}
