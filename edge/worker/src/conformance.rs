//! The core's conformance vectors through this adapter, natively: each step becomes the
//! [`Incoming`] a Workers request would give (the vector's peer as `CF-Connecting-IP`, which
//! Cloudflare vouches for), the limited tiers run their GCRA step in the Durable Object's code
//! ([`crate::limiter::step_here`], with the object's in-memory buckets), and the origin's answer
//! gets the header rewrite [`crate::respond`] applies. workerd replays the same file against the
//! built Worker (`test/conformance.test.mjs`); this replay adds the clock, which workerd's real
//! time cannot move.

use std::cell::RefCell;
use std::collections::HashMap;

use portcullis_core::conformance::{self, Case, Harness, Observed, Requirement, Step};
use portcullis_core::{Begin, Decision, Policy};

use crate::incoming::Incoming;
use crate::limiter::{Ask, step_here};

/// Peers (as `CF-Connecting-IP`), Cloudflare's own view and a movable clock; a Workers request
/// always has a URL, so never a request without a host.
const SUPPORTED: [Requirement; 3] = [Requirement::Peer, Requirement::Cloudflare, Requirement::Clock];

struct Worker {
    policy: Option<Policy>,
    /// The Durable Objects' buckets, by index.
    buckets: RefCell<HashMap<u32, Option<Vec<u8>>>>,
}

/// A vector's peer (`ip`, `ip:port`, `[v6]:port`) as Cloudflare writes `CF-Connecting-IP`.
fn connecting_ip(peer: &str) -> String {
    if let Some(rest) = peer.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_owned();
    }
    match peer.rsplit_once(':') {
        Some((ip, port)) if ip.contains('.') && port.bytes().all(|b| b.is_ascii_digit()) => ip.to_owned(),
        _ => peer.to_owned(),
    }
}

impl Harness for Worker {
    fn cannot_replay(&self, case: &Case, policy: &serde_json::Value) -> Option<String> {
        let trusts = |field: &str| {
            policy["client_ip"][field].as_array().is_some_and(|a| !a.is_empty())
                || policy["client_ip"][field].as_u64().is_some_and(|n| n > 0)
        };
        (case.requires.contains(&Requirement::Peer) && (trusts("trusted_proxies") || trusts("trusted_hops")))
            .then(|| "trusts a proxy's forwarding headers: on Cloudflare CF-Connecting-IP is authoritative".to_owned())
    }

    fn start(&mut self, _case: &Case, policy_json: &[u8]) -> Result<(), String> {
        self.policy = Some(Policy::from_json(policy_json).map_err(|e| e.to_string())?);
        self.buckets.borrow_mut().clear();
        Ok(())
    }

    fn send(&mut self, step: &Step, now: u64) -> Result<Observed, String> {
        let policy = self.policy.as_ref().ok_or("not started")?;
        let r = &step.request;
        let mut headers: Vec<(String, String)> =
            r.headers.iter().map(|(name, value)| (name.to_ascii_lowercase(), value.clone())).collect();
        if let Some(peer) = r.peer.as_deref().filter(|p| *p != "cloudflare") {
            headers.retain(|(name, _)| name != "cf-connecting-ip");
            headers.push(("cf-connecting-ip".into(), connecting_ip(peer)));
        }
        let incoming = Incoming {
            method: r.method.clone(),
            https: r.scheme == "https",
            authority: r.authority.clone(),
            target: r.path.clone().unwrap_or_else(|| "/".into()),
            headers,
        };
        let decision = match policy.begin(&incoming.request()) {
            Begin::Decided(decision) => decision,
            Begin::Check(check) => {
                let ask = Ask::for_check(&check);
                // The object loads its bucket on first use (empty here: every case starts afresh).
                self.buckets.borrow_mut().entry(ask.index).or_insert(None);
                let (answer, _) = step_here(&self.buckets, ask, now);
                policy.finish(&check, answer.acquire())
            }
        };
        Ok(match decision {
            Decision::Respond(reply) => Observed::local(reply),
            Decision::Forward(forward) => {
                let edits = policy.response_edits(&forward.plan);
                let headers = edits
                    .rewrite(&step.upstream.headers)
                    .into_iter()
                    .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value).into_owned()))
                    .collect();
                Observed::forwarded(&step.upstream, headers)
            }
        })
    }
}

#[test]
fn the_adapter_meets_every_conformance_vector_it_can_replay() {
    let mut worker = Worker { policy: None, buckets: RefCell::new(HashMap::new()) };
    let replay = conformance::replay(&SUPPORTED, &mut worker);
    match replay.verdict(25) {
        Ok(summary) => println!("the Worker's adapter: {summary}"),
        Err(problems) => panic!("{problems}"),
    }
}
