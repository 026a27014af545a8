//! Replays the conformance vector file through the core itself: in one phase over an
//! in-process bucket store, and in two phases over a store keyed by client (as the fleet's
//! Redis keeps it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use portcullis_core::conformance::{self, Action, Case, Harness, Observed, Requirement, Step};
use portcullis_core::{Acquire, Begin, Decision, MemoryStore, Peer, Policy, Request, Scheme};

/// The core has every capability: any peer, any clock, any request bytes, Cloudflare's view.
const EVERYTHING: [Requirement; 4] =
    [Requirement::Peer, Requirement::Clock, Requirement::Cloudflare, Requirement::RawRequest];

/// How the core is driven: in one phase over a bucket store, or in two phases with the GCRA
/// step run on one TAT per (tier, client id), the way the rate-limit service's script keeps it.
enum Phases {
    One(Box<MemoryStore>),
    Two { tats: HashMap<(u32, u128), u64>, checks: u32 },
}

struct Core {
    policy: Option<Policy>,
    phases: Phases,
}

impl Harness for Core {
    fn start(&mut self, case: &Case, policy_json: &[u8]) -> Result<(), String> {
        self.policy = Some(Policy::from_json(policy_json).map_err(|e| format!("config {}: {e}", case.config))?);
        match &mut self.phases {
            Phases::One(store) => **store = MemoryStore::new(),
            Phases::Two { tats, .. } => tats.clear(),
        }
        Ok(())
    }

    fn send(&mut self, step: &Step, now: u64) -> Result<Observed, String> {
        let policy = self.policy.as_ref().ok_or("not started")?;
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
        let decision = match &mut self.phases {
            Phases::One(store) => policy.decide(&request, now, &**store),
            Phases::Two { tats, checks } => match policy.begin(&request) {
                Begin::Decided(decision) => decision,
                Begin::Check(check) => {
                    *checks += 1;
                    let key = (check.limited_tier(), check.client_id());
                    let tat = tats.get(&key).copied().unwrap_or(0);
                    let (verdict, next) = check.gcra().check(tat, now);
                    if let Some(next) = next {
                        tats.insert(key, next);
                    }
                    policy.finish(&check, Acquire::from_verdict(verdict))
                }
            },
        };
        Ok(match decision {
            Decision::Respond(local) => Observed::local(local),
            Decision::Forward(forward) => {
                let mut headers = step.upstream.headers.clone();
                policy.response_edits(&forward.plan).apply(&mut headers);
                Observed::forwarded(&step.upstream, headers)
            }
        })
    }
}

#[test]
fn core_meets_every_conformance_vector() {
    let mut core = Core { policy: None, phases: Phases::One(Box::default()) };
    let replay = conformance::replay(&EVERYTHING, &mut core);
    println!("{}", replay.verdict(30).unwrap_or_else(|e| panic!("{e}")));
    assert!(replay.not_applicable.is_empty(), "the core replays every case");
}

#[test]
fn two_phases_over_a_store_keyed_by_client_meet_every_vector() {
    let mut core = Core { policy: None, phases: Phases::Two { tats: HashMap::new(), checks: 0 } };
    let replay = conformance::replay(&EVERYTHING, &mut core);
    println!("{}", replay.verdict(30).unwrap_or_else(|e| panic!("{e}")));
    let Phases::Two { checks, .. } = core.phases else { unreachable!() };
    assert!(checks > 50, "the vectors exercise limited tiers");
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
