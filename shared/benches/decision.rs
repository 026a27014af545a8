//! Nanoseconds per decision: a forwarded request on a limited tier, a refused one, a redirect,
//! and the response-phase edits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_core::{Decision, MemoryStore, Peer, Policy, Request, Scheme};

const NOW: u64 = 1_700_000_000_000_000_000;

fn decisions(c: &mut Criterion) {
    let policy = Policy::from_json(br#"{"https_redirect": {"https_port": 8443}}"#).unwrap();
    let headers: Vec<(&str, &str)> = vec![("user-agent", "bench"), ("accept", "application/json")];
    let request = |method: &'static [u8], scheme, path: &'static [u8], peer: &'static str| Request {
        method,
        scheme,
        authority: Some(b"localhost:8443"),
        path: Some(path),
        peer: Peer::Socket(peer),
        headers: &headers,
    };

    // 60/minute with a clock that advances a second per request: always forwarded.
    let forwarded = request(b"GET", Scheme::Https, b"/api/v1/videos?limit=20", "203.0.113.1:5000");
    let store = MemoryStore::new();
    let mut now = NOW;
    c.bench_function("decide/forwarded (limited tier)", |b| {
        b.iter(|| {
            now += 1_000_000_000;
            let decision = policy.decide(black_box(&forwarded), now, &store);
            assert!(matches!(decision, Decision::Forward(_)));
            decision
        })
    });

    let limited = request(b"POST", Scheme::Https, b"/api/v1/auth/login", "203.0.113.2:5000");
    let store = MemoryStore::new();
    for _ in 0..5 {
        policy.decide(&limited, NOW, &store);
    }
    c.bench_function("decide/rate limited (429)", |b| {
        b.iter(|| {
            let decision = policy.decide(black_box(&limited), NOW, &store);
            assert!(matches!(&decision, Decision::Respond(r) if r.status == 429));
            decision
        })
    });

    let untiered = request(b"GET", Scheme::Https, b"/static/app.js", "203.0.113.3:5000");
    c.bench_function("decide/forwarded (no tier)", |b| b.iter(|| policy.decide(black_box(&untiered), NOW, &store)));

    let plain = request(b"GET", Scheme::Http, b"/api/v1/videos", "203.0.113.4:5000");
    c.bench_function("decide/redirect (301)", |b| b.iter(|| policy.decide(black_box(&plain), NOW, &store)));

    let Decision::Forward(forward) = policy.decide(&forwarded, NOW + 3_600_000_000_000, &MemoryStore::new()) else {
        unreachable!("a fresh client is forwarded")
    };
    c.bench_function("response edits", |b| {
        b.iter(|| {
            let mut upstream = vec![
                ("content-type".to_owned(), "application/json".to_owned()),
                ("server".to_owned(), "uvicorn".to_owned()),
            ];
            policy.response_edits(black_box(&forward.plan)).apply(&mut upstream);
            upstream
        })
    });
}

criterion_group!(benches, decisions);
criterion_main!(benches);
