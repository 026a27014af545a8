//! The MDN HTTP Observatory's published scoring (baseline 100; penalties; bonuses only when the
//! score without them is at least 90; A+ from 100) applied to the responses the core makes: the
//! `strict` preset must earn an A+, the `seed` preset must carry the seed's exact values. The
//! conformance vectors guarantee every host emits these same headers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_core::{Decision, MemoryStore, Peer, Policy, Request, Scheme};

struct Scan {
    /// (Observatory result id, modifier)
    results: Vec<(&'static str, i32)>,
}

impl Scan {
    fn score(&self) -> i32 {
        let penalties: i32 = self.results.iter().map(|(_, m)| (*m).min(0)).sum();
        let base = 100 + penalties;
        let bonuses: i32 = self.results.iter().map(|(_, m)| (*m).max(0)).sum();
        (if base >= 90 { base + bonuses } else { base }).max(0)
    }

    fn grade(&self) -> &'static str {
        match self.score() {
            100.. => "A+",
            90..=99 => "A",
            85..=89 => "A-",
            80..=84 => "B+",
            70..=79 => "B",
            65..=69 => "B-",
            60..=64 => "C+",
            50..=59 => "C",
            45..=49 => "C-",
            40..=44 => "D+",
            30..=39 => "D",
            25..=29 => "D-",
            _ => "F",
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn directive<'a>(csp: &'a str, name: &str) -> Option<&'a str> {
    csp.split(';')
        .map(str::trim)
        .find_map(|d| d.strip_prefix(name).filter(|rest| rest.is_empty() || rest.starts_with(' ')))
}

/// The Observatory's tests that apply to a JSON API without cookies, scripts or CORS.
fn scan(https_response: &[(String, String)], http_redirect: (u16, Option<&str>)) -> Scan {
    let mut results = vec![
        ("cookies-not-found", 0),
        ("cross-origin-resource-sharing-not-implemented", 0),
        ("sri-not-implemented-response-not-html", 0),
    ];
    results.push(match header(https_response, "content-security-policy") {
        None => ("csp-not-implemented", -25),
        Some(csp) => {
            let script = directive(csp, "script-src").or_else(|| directive(csp, "default-src")).unwrap_or("");
            let style = directive(csp, "style-src").unwrap_or("");
            if csp.contains("http:") {
                ("csp-implemented-with-insecure-scheme", -20)
            } else if script.contains("'unsafe-inline'") {
                ("csp-implemented-with-unsafe-inline", -20)
            } else if csp.contains("'unsafe-eval'") {
                ("csp-implemented-with-unsafe-eval", -10)
            } else if style.contains("'unsafe-inline'") {
                ("csp-implemented-with-unsafe-inline-in-style-src-only", 0)
            } else if directive(csp, "default-src") == Some(" 'none'") {
                ("csp-implemented-with-no-unsafe-default-src-none", 10)
            } else {
                ("csp-implemented-with-no-unsafe", 5)
            }
        }
    });
    results.push(match http_redirect {
        (301 | 302 | 307 | 308, Some(location)) if location.starts_with("https://localhost") => {
            ("redirection-to-https", 0)
        }
        (301 | 302 | 307 | 308, Some(location)) if location.starts_with("https://") => {
            ("redirection-off-host-from-http", -5)
        }
        _ => ("redirection-missing", -20),
    });
    results.push(match header(https_response, "referrer-policy") {
        Some("no-referrer" | "same-origin" | "strict-origin" | "strict-origin-when-cross-origin") => {
            ("referrer-policy-private", 5)
        }
        Some("no-referrer-when-downgrade") => ("referrer-policy-no-referrer-when-downgrade", 0),
        Some("origin" | "origin-when-cross-origin" | "unsafe-url") => ("referrer-policy-unsafe", -5),
        Some(_) => ("referrer-policy-header-invalid", -5),
        None => ("referrer-policy-not-implemented", 0),
    });
    results.push(match header(https_response, "strict-transport-security") {
        None => ("hsts-not-implemented", -20),
        Some(hsts) => {
            match hsts.split(';').find_map(|p| p.trim().strip_prefix("max-age=")).and_then(|v| v.parse::<u64>().ok()) {
                Some(age) if age >= 15_768_000 => ("hsts-implemented-max-age-at-least-six-months", 0),
                Some(_) => ("hsts-implemented-max-age-less-than-six-months", -10),
                None => ("hsts-header-invalid", -20),
            }
        }
    });
    results.push(match header(https_response, "x-content-type-options") {
        Some(v) if v.eq_ignore_ascii_case("nosniff") => ("x-content-type-options-nosniff", 0),
        Some(_) => ("x-content-type-options-header-invalid", -5),
        None => ("x-content-type-options-not-implemented", -5),
    });
    let frame_ancestors =
        header(https_response, "content-security-policy").and_then(|csp| directive(csp, "frame-ancestors"));
    results.push(match (frame_ancestors, header(https_response, "x-frame-options")) {
        (Some(_), _) => ("x-frame-options-implemented-via-csp", 5),
        (None, Some(v)) if v.eq_ignore_ascii_case("deny") || v.eq_ignore_ascii_case("sameorigin") => {
            ("x-frame-options-sameorigin-or-deny", 0)
        }
        (None, Some(_)) => ("x-frame-options-header-invalid", -20),
        (None, None) => ("x-frame-options-not-implemented", -20),
    });
    results.push(match header(https_response, "cross-origin-resource-policy") {
        Some("same-origin" | "same-site") => ("cross-origin-resource-policy-implemented-with-same-origin", 0),
        Some("cross-origin") => ("cross-origin-resource-policy-implemented-with-cross-origin", 0),
        Some(_) => ("cross-origin-resource-policy-header-invalid", -5),
        None => ("cross-origin-resource-policy-not-implemented", 0),
    });
    Scan { results }
}

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
    let result = scan(&https, (status, location.as_deref()));
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
    let result = scan(&https, (status, location.as_deref()));
    assert!(result.results.contains(&("csp-implemented-with-unsafe-inline", -20)));
    assert_eq!(result.grade(), "B+");
}

#[test]
fn the_scorer_fails_what_it_should() {
    let bare = vec![("content-type".to_owned(), "application/json".to_owned())];
    let result = scan(&bare, (200, None));
    assert_eq!(result.score(), 100 - 25 - 20 - 20 - 5 - 20);
    assert_eq!(result.grade(), "F");
}
