//! The MDN HTTP Observatory's scoring (`portcullis_core::observatory`) applied to the responses
//! the core makes: the `strict` preset must earn an A+, the `seed` preset must carry the seed's
//! exact values. The conformance vectors guarantee every host emits these same headers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_core::observatory::{header, scan};
use portcullis_core::{Decision, MemoryStore, Peer, Policy, Request, Scheme};

type Headers = Vec<(String, String)>;

/// The stack's answers under `preset`: a forwarded HTTPS API response and the plain-HTTP redirect.
fn responses(preset: &str) -> (Headers, (u16, Option<String>)) {
    let policy =
        Policy::from_json(format!(r#"{{"preset": "{preset}", "https_redirect": {{"https_port": 8443}}}}"#).as_bytes())
            .unwrap();
    let headers: Vec<(&str, &str)> = Vec::new();
    let request = |scheme, authority: &'static [u8]| Request {
        method: b"GET",
        scheme,
        authority: Some(authority),
        path: Some(b"/api/v1/videos"),
        peer: Peer::Socket("198.51.100.3:5000"),
        headers: &headers,
    };
    let store = MemoryStore::new();
    let Decision::Forward(forward) = policy.decide(&request(Scheme::Https, b"localhost:8443"), 1, &store) else {
        panic!("an HTTPS API call is forwarded")
    };
    let mut https =
        vec![("content-type".to_owned(), "application/json".to_owned()), ("server".to_owned(), "uvicorn".to_owned())];
    policy.response_edits(&forward.plan).apply(&mut https);
    let redirect = match policy.decide(&request(Scheme::Http, b"localhost:8080"), 1, &store) {
        Decision::Respond(reply) => (reply.status, reply.header("location").map(str::to_owned)),
        Decision::Forward(_) => (200, None),
    };
    (https, redirect)
}

#[test]
fn the_strict_preset_earns_an_a_plus() {
    let (https, (status, location)) = responses("strict");
    let result = scan(&https, (status, location.as_deref()), "localhost");
    let failures: Vec<_> = result.results.iter().filter(|(_, m)| *m < 0).collect();
    assert!(failures.is_empty(), "penalties: {failures:?}");
    assert_eq!(result.grade(), "A+", "score {}: {:?}", result.score(), result.results);
    assert_eq!(result.score(), 120);
}

#[test]
fn the_seed_preset_carries_the_seed_values_and_scores_as_the_seed_did() {
    let (https, (status, location)) = responses("seed");
    for (name, value) in [
        ("strict-transport-security", "max-age=31536000; includeSubDomains; preload"),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("x-xss-protection", "1; mode=block"),
        ("referrer-policy", "strict-origin-when-cross-origin"),
        ("permissions-policy", "geolocation=(), microphone=(), camera=(), payment=(), usb=(), magnetometer=()"),
        ("server", "Unknown"),
    ] {
        assert_eq!(header(&https, name), Some(value), "{name}");
    }
    // The seed's CSP allows inline scripts, which the Observatory penalises: that is why the
    // strict preset exists.
    let result = scan(&https, (status, location.as_deref()), "localhost");
    assert!(result.results.contains(&("csp-implemented-with-unsafe-inline", -20)));
    assert_eq!(result.grade(), "B+");
}

#[test]
fn the_scorer_fails_what_it_should() {
    let bare = vec![("content-type".to_owned(), "application/json".to_owned())];
    let result = scan(&bare, (200, None), "localhost");
    assert_eq!(result.score(), 100 - 25 - 20 - 20 - 5 - 20);
    assert_eq!(result.grade(), "F");
    let elsewhere = scan(&bare, (301, Some("https://localhost.evil/")), "localhost");
    assert!(elsewhere.results.contains(&("redirection-off-host-from-http", -5)));
    let same = scan(&bare, (308, Some("https://localhost:8443/x")), "localhost");
    assert!(same.results.contains(&("redirection-to-https", 0)));
}
