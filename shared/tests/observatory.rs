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

/// Each rule's outcomes, one header at a time on top of a response that passes everything else.
#[test]
fn each_rule_scores_as_published() {
    let good: Vec<(String, String)> = [
        ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
        ("referrer-policy", "no-referrer"),
        ("strict-transport-security", "max-age=31536000"),
        ("x-content-type-options", "nosniff"),
        ("cross-origin-resource-policy", "same-origin"),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
    .collect();
    let with = |name: &str, value: Option<&str>| {
        let mut headers: Vec<(String, String)> = good.iter().filter(|(n, _)| n != name).cloned().collect();
        if let Some(value) = value {
            headers.push((name.to_owned(), value.to_owned()));
        }
        scan(&headers, (301, Some("https://localhost/")), "localhost").results
    };
    let cases: [(&str, Option<&str>, (&str, i32)); 22] = [
        ("content-security-policy", None, ("csp-not-implemented", -25)),
        ("content-security-policy", Some("default-src http://a"), ("csp-implemented-with-insecure-scheme", -20)),
        (
            "content-security-policy",
            Some("script-src 'self' 'unsafe-inline'"),
            ("csp-implemented-with-unsafe-inline", -20),
        ),
        (
            "content-security-policy",
            Some("default-src 'self' 'unsafe-eval'"),
            ("csp-implemented-with-unsafe-eval", -10),
        ),
        (
            "content-security-policy",
            Some("default-src 'self'; style-src 'unsafe-inline'"),
            ("csp-implemented-with-unsafe-inline-in-style-src-only", 0),
        ),
        ("content-security-policy", Some("default-src 'self'"), ("csp-implemented-with-no-unsafe", 5)),
        ("referrer-policy", Some("strict-origin"), ("referrer-policy-private", 5)),
        ("referrer-policy", Some("no-referrer-when-downgrade"), ("referrer-policy-no-referrer-when-downgrade", 0)),
        ("referrer-policy", Some("unsafe-url"), ("referrer-policy-unsafe", -5)),
        ("referrer-policy", Some("sometimes"), ("referrer-policy-header-invalid", -5)),
        ("referrer-policy", None, ("referrer-policy-not-implemented", 0)),
        ("strict-transport-security", None, ("hsts-not-implemented", -20)),
        ("strict-transport-security", Some("max-age=300"), ("hsts-implemented-max-age-less-than-six-months", -10)),
        ("strict-transport-security", Some("max-age=soon"), ("hsts-header-invalid", -20)),
        ("x-content-type-options", Some("sniff"), ("x-content-type-options-header-invalid", -5)),
        ("x-content-type-options", None, ("x-content-type-options-not-implemented", -5)),
        (
            "cross-origin-resource-policy",
            Some("cross-origin"),
            ("cross-origin-resource-policy-implemented-with-cross-origin", 0),
        ),
        ("cross-origin-resource-policy", Some("anyone"), ("cross-origin-resource-policy-header-invalid", -5)),
        ("cross-origin-resource-policy", None, ("cross-origin-resource-policy-not-implemented", 0)),
        ("x-frame-options", Some("DENY"), ("x-frame-options-implemented-via-csp", 5)),
        ("x-frame-options", Some("SAMEORIGIN"), ("x-frame-options-implemented-via-csp", 5)),
        ("content-security-policy", Some("default-src 'none'"), ("x-frame-options-not-implemented", -20)),
    ];
    for (name, value, expected) in cases {
        let results = with(name, value);
        assert!(results.contains(&expected), "{name}: {value:?} → {results:?}, expected {expected:?}");
    }
    // Without frame-ancestors, X-Frame-Options decides.
    let no_ancestors = |xfo: &str| {
        let mut headers: Vec<(String, String)> =
            good.iter().filter(|(n, _)| n != "content-security-policy").cloned().collect();
        headers.push(("content-security-policy".into(), "default-src 'none'".into()));
        headers.push(("x-frame-options".into(), xfo.into()));
        scan(&headers, (301, Some("https://localhost/")), "localhost").results
    };
    assert!(no_ancestors("DENY").contains(&("x-frame-options-sameorigin-or-deny", 0)));
    assert!(no_ancestors("ALLOW-FROM x").contains(&("x-frame-options-header-invalid", -20)));
}

#[test]
fn grades_follow_the_published_bands() {
    use portcullis_core::observatory::Scan;
    let bands = [
        (0, "A+"),
        (-5, "A"),
        (-12, "A-"),
        (-17, "B+"),
        (-25, "B"),
        (-33, "B-"),
        (-38, "C+"),
        (-45, "C"),
        (-53, "C-"),
        (-57, "D+"),
        (-65, "D"),
        (-72, "D-"),
        (-80, "F"),
        (-200, "F"),
    ];
    for (penalty, grade) in bands {
        let scan = Scan { results: vec![("penalty", penalty)] };
        assert_eq!(scan.grade(), grade, "score {}", scan.score());
    }
    // Bonuses count only from 90 up.
    assert_eq!(Scan { results: vec![("p", -11), ("b", 10)] }.score(), 89);
    assert_eq!(Scan { results: vec![("p", -10), ("b", 10)] }.score(), 100);
}
