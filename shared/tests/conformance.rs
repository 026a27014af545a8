//! Replays the conformance vector file through the core itself: in one phase over an
//! in-process bucket store, and in two phases over a store keyed by client (as the fleet's
//! Redis keeps it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::HashMap;

use portcullis_core::conformance::{Action, EPOCH_MS, Observed, Vectors};
use portcullis_core::{Acquire, Begin, Decision, MemoryStore, Peer, Policy, Request, Scheme};

#[test]
fn core_meets_every_conformance_vector() {
    let store = RefCell::new(MemoryStore::new());
    replay_vectors(
        || *store.borrow_mut() = MemoryStore::new(),
        |policy, request, now| policy.decide(request, now, &*store.borrow()),
    );
}

/// The two-phase path with the GCRA step run on one TAT per (tier, client id), the way the
/// rate-limit service's script keeps it: the same decisions, headers and bodies.
#[test]
fn two_phases_over_a_store_keyed_by_client_meet_every_vector() {
    let tats: RefCell<HashMap<(u32, u128), u64>> = RefCell::new(HashMap::new());
    let checks = RefCell::new(0u32);
    replay_vectors(
        || tats.borrow_mut().clear(),
        |policy, request, now| match policy.begin(request) {
            Begin::Decided(decision) => decision,
            Begin::Check(check) => {
                *checks.borrow_mut() += 1;
                let key = (check.limited_tier(), check.client_id());
                let mut tats = tats.borrow_mut();
                let tat = tats.get(&key).copied().unwrap_or(0);
                let (verdict, next) = check.gcra().check(tat, now);
                if let Some(next) = next {
                    tats.insert(key, next);
                }
                policy.finish(&check, Acquire::from_verdict(verdict))
            }
        },
    );
    assert!(*checks.borrow() > 50, "the vectors exercise limited tiers");
}

fn replay_vectors(reset: impl Fn(), decide: impl Fn(&Policy, &Request<'_, Vec<(String, String)>>, u64) -> Decision) {
    let vectors = Vectors::load().expect("the vector file parses");
    assert!(vectors.cases.len() >= 30, "the vector file lost cases");
    let mut failures = Vec::new();
    let mut requests = 0;

    for case in &vectors.cases {
        let policy = Policy::from_json(&vectors.config_json(case))
            .unwrap_or_else(|e| panic!("config {} of {:?}: {e}", case.config, case.name));
        reset();
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
                let observed = match decide(&policy, &request, now) {
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
