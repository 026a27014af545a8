//! Replays the conformance vector file through the core itself, with an in-process store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_core::conformance::{Action, EPOCH_MS, Observed, Vectors};
use portcullis_core::{Decision, MemoryStore, Peer, Policy, Request, Scheme};

#[test]
fn core_meets_every_conformance_vector() {
    let vectors = Vectors::load().expect("the vector file parses");
    assert!(vectors.cases.len() >= 30, "the vector file lost cases");
    let mut failures = Vec::new();
    let mut requests = 0;

    for case in &vectors.cases {
        let policy = Policy::from_json(&vectors.config_json(case))
            .unwrap_or_else(|e| panic!("config {} of {:?}: {e}", case.config, case.name));
        let store = MemoryStore::new();
        for (index, step) in case.steps.iter().enumerate() {
            let r = &step.request;
            let peer = match r.peer.as_deref() {
                Some("cloudflare") => Peer::Cloudflare,
                Some(addr) => Peer::Socket(addr),
                None => Peer::Socket("192.0.2.1:50000"),
            };
            let request = Request {
                method: r.method.as_bytes(),
                scheme: if r.scheme == "https" { Scheme::Https } else { Scheme::Http },
                authority: r.authority.as_deref().map(str::as_bytes),
                path: r.path.as_deref().map(str::as_bytes),
                peer,
                headers: &r.headers,
            };
            let now = (EPOCH_MS + step.at_ms) * 1_000_000;
            for attempt in 0..step.repeat {
                requests += 1;
                let observed = match policy.decide(&request, now, &store) {
                    Decision::Respond(local) => Observed {
                        action: Action::Respond,
                        status: local.status,
                        headers: local.headers,
                        body: local.body,
                    },
                    Decision::Forward(forward) => {
                        let mut headers = step.upstream.headers.clone();
                        policy.response_edits(&forward.plan).apply(&mut headers);
                        Observed {
                            action: Action::Forward,
                            status: step.upstream.status,
                            headers,
                            body: step.upstream.body.clone(),
                        }
                    }
                };
                if let Err(problems) = step.expect.check(&observed) {
                    failures.push(format!("{} / step {index} / attempt {attempt}:\n{problems}", case.name));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n\n{}", failures.len(), failures.join("\n\n"));
    println!("{} cases, {requests} requests, all met", vectors.cases.len());
}

#[test]
fn the_checker_reports_every_mismatch() {
    use portcullis_core::conformance::Expectation;
    let expectation: Expectation = serde_json::from_str(
        r#"{"action": "respond", "status": 429, "headers": {"retry-after": "12", "x-a": "1"}, "absent": ["server"], "body_json": {"error": "rate_limited"}}"#,
    )
    .unwrap();
    let observed = Observed {
        action: Action::Forward,
        status: 200,
        headers: vec![("Retry-After".into(), "13".into()), ("server".into(), "nginx".into())],
        body: "not json".into(),
    };
    let problems = expectation.check(&observed).unwrap_err();
    for needle in ["action", "status", "retry-after", "x-a: missing", "server: expected absent", "body is not JSON"] {
        assert!(problems.contains(needle), "{needle} not reported:\n{problems}");
    }
    let wrong_field = Observed { body: r#"{"error": "other"}"#.into(), ..observed };
    assert!(expectation.check(&wrong_field).unwrap_err().contains("body.error"));
}
