//! The MDN HTTP Observatory's published scoring (baseline 100; penalties; bonuses only when the
//! score without them is at least 90; A+ from 100), for the tests that apply to a JSON API. The
//! core's tests score its presets with it and `cargo xtask test` scores a running stack's
//! responses: the scanner itself needs the internet, so this applies the same rules offline.

// std-only (the `conformance` feature): the whole of std's prelude.
use std::prelude::rust_2024::*;

pub struct Scan {
    /// (Observatory result id, modifier)
    pub results: Vec<(&'static str, i32)>,
}

impl Scan {
    /// The Observatory's score: 100 plus penalties, plus bonuses when that is at least 90.
    pub fn score(&self) -> i32 {
        let penalties: i32 = self.results.iter().map(|(_, m)| (*m).min(0)).sum();
        let base = 100 + penalties;
        let bonuses: i32 = self.results.iter().map(|(_, m)| (*m).max(0)).sum();
        (if base >= 90 { base + bonuses } else { base }).max(0)
    }

    pub fn grade(&self) -> &'static str {
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

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn directive<'a>(csp: &'a str, name: &str) -> Option<&'a str> {
    csp.split(';')
        .map(str::trim)
        .find_map(|d| d.strip_prefix(name).filter(|rest| rest.is_empty() || rest.starts_with(' ')))
}

/// The Observatory's tests that apply to a JSON API without cookies, scripts or CORS:
/// `https_response` is the headers of an HTTPS response from `host`, `http_redirect` the status
/// and `Location` of a plain-HTTP request to it.
pub fn scan(https_response: &[(String, String)], http_redirect: (u16, Option<&str>), host: &str) -> Scan {
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
        (301 | 302 | 307 | 308, Some(location))
            if location.strip_prefix("https://").is_some_and(|rest| {
                rest.strip_prefix(host).is_some_and(|after| after.is_empty() || after.starts_with([':', '/']))
            }) =>
        {
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
