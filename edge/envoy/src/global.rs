//! `limiter.backend: "global"`: the fleet's rate-limit service over Envoy's gRPC call ABI.
//!
//! A limited request is paused while the service (`portcullis-ratelimit`, envoyproxy/ratelimit,
//! anything speaking RateLimitService v3) answers, then resumed or answered with the core's
//! decision for the service's verdict. When the service cannot answer, `on_unavailable` decides
//! (by default this Envoy's exact local limiter: at most N× across N Envoys, never unlimited).
//! A refusal the service gave is remembered until its `Retry-After` has passed, so a client
//! that keeps knocking costs no further calls.

use alloc::borrow::ToOwned;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec;
use core::time::Duration;

use portcullis_core::config::GlobalConfig;
use portcullis_core::{Acquire, LimitCheck, Policy, Verdict};
use portcullis_proxy_abi::{self as abi, BufferType, Status};
use portcullis_ratelimit::descriptor::{request_for, verdict_from};
use portcullis_ratelimit::proto::RateLimitResponse;
use prost::Message;

pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// Starts the call for `check`; its answer arrives in `on_grpc_call_response` with the token.
pub fn dispatch(policy: &Policy, global: &GlobalConfig, check: &LimitCheck) -> Result<u32, Status> {
    let message = request_for(policy, check, &global.domain).encode_to_vec();
    abi::grpc_call(&global.cluster, SERVICE, METHOD, &message, Duration::from_millis(u64::from(global.timeout_ms)))
}

/// A call that opens this worker's connection to the service before the first limited request
/// needs it (a cold HTTP/2 connection can take longer than the call's timeout). It names a tier
/// no policy has, which a rate-limit service answers OK without touching its store.
pub fn warm_up(global: &GlobalConfig) -> Result<u32, Status> {
    use portcullis_ratelimit::descriptor::TIER_KEY;
    use portcullis_ratelimit::proto::{Entry, RateLimitDescriptor, RateLimitRequest};
    let message = RateLimitRequest {
        domain: global.domain.clone(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry { key: TIER_KEY.to_owned(), value: WARM_UP_TIER.to_owned() }],
            limit: None,
        }],
        hits_addend: 0,
    }
    .encode_to_vec();
    abi::grpc_call(&global.cluster, SERVICE, METHOD, &message, Duration::from_secs(5))
}

/// Not a valid tier name (policy tiers are `[a-z0-9_-]`), so never a configured limit.
pub const WARM_UP_TIER: &str = "(warm-up)";

/// Reads a successful call's answer as a verdict. `None`: not usable (the fallback decides).
pub fn answer(check: &LimitCheck, size: usize) -> Result<Acquire, String> {
    let body = abi::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
        .map_err(|status| ["reading the answer: ", status.name()].concat())?
        .unwrap_or_default();
    let response =
        RateLimitResponse::decode(body.as_slice()).map_err(|_| "the answer is not a RateLimitResponse".to_owned())?;
    verdict_from(check, &response).map_err(|err| err.0)
}

/// The service's refusals, per (limited tier, client id), until their `Retry-After` passes.
/// Per VM (one per Envoy worker): a worker that has not seen a refusal asks once and learns it.
#[derive(Debug, Default)]
pub struct KnownDenials {
    /// → (Unix ns a request is allowed again, Unix ns the quota is full again). A B-tree, not
    /// a hash map: a hash map wants a random seed from the host (WASI `random_get`), and the
    /// keys are keyed hashes already, so an ordered map costs nothing in safety.
    until: BTreeMap<(u32, u128), (u64, u64)>,
}

/// Refusals remembered at most: past it, expired ones are dropped, then all (only costing calls).
const CAPACITY: usize = 8_192;

impl KnownDenials {
    /// A refusal still in force for `check`, as the service would give it now.
    pub fn known(&self, check: &LimitCheck, now: u64) -> Option<Acquire> {
        let (retry_at, reset_at) = *self.until.get(&(check.limited_tier(), check.client_id()))?;
        (now < retry_at).then(|| {
            Acquire::Denied(Verdict {
                allowed: false,
                remaining: 0,
                reset_after: reset_at.saturating_sub(now),
                retry_after: retry_at - now,
            })
        })
    }

    /// Remembers a refusal (an allowed answer forgets any earlier one).
    pub fn learn(&mut self, check: &LimitCheck, answer: &Acquire, now: u64) {
        let key = (check.limited_tier(), check.client_id());
        match answer {
            Acquire::Denied(verdict) => {
                if self.until.len() >= CAPACITY {
                    self.until.retain(|_, (retry_at, _)| *retry_at > now);
                    if self.until.len() >= CAPACITY {
                        self.until.clear();
                    }
                }
                let at = |after: u64| now.saturating_add(after);
                self.until.insert(key, (at(verdict.retry_after), at(verdict.reset_after)));
            }
            _ => {
                self.until.remove(&key);
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.until.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use portcullis_core::{Begin, Peer, Request, Scheme};
    use std::string::ToString;
    use std::vec::Vec;

    fn check(policy: &Policy, peer: &str) -> LimitCheck {
        let headers: Vec<(&str, &str)> = Vec::new();
        let request = Request {
            method: b"POST",
            scheme: Scheme::Https,
            authority: Some(b"localhost"),
            path: Some(b"/api/v1/auth/login"),
            peer: Peer::Socket(peer),
            headers: &headers,
        };
        match policy.begin(&request) {
            Begin::Check(check) => check,
            Begin::Decided(_) => panic!("login is limited"),
        }
    }

    #[test]
    fn a_refusal_is_known_until_its_retry_after_and_bounded() {
        let policy = Policy::from_json(b"{}").unwrap();
        let a = check(&policy, "192.0.2.1");
        let mut known = KnownDenials::default();
        let refused = Acquire::Denied(Verdict { allowed: false, remaining: 0, reset_after: 60, retry_after: 12 });
        known.learn(&a, &refused, 1_000);
        assert_eq!(
            known.known(&a, 1_005),
            Some(Acquire::Denied(Verdict { allowed: false, remaining: 0, reset_after: 55, retry_after: 7 }))
        );
        assert_eq!(known.known(&a, 1_012), None, "asks again once Retry-After has passed");
        assert_eq!(known.known(&check(&policy, "192.0.2.2"), 1_005), None, "per client");
        known.learn(&a, &Acquire::Allowed(Verdict { allowed: true, remaining: 1, reset_after: 1, retry_after: 0 }), 1);
        assert_eq!(known.len(), 0);
        for i in 0..(CAPACITY as u32 + 10) {
            let c = check(&policy, &std::net::Ipv4Addr::from(i).to_string());
            known.learn(&c, &refused, 1_000);
        }
        assert!(known.len() <= CAPACITY);
    }
}
