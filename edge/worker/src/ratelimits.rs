//! The alternative limiter: Cloudflare's `ratelimits` binding, one binding per limited tier.
//!
//! The binding counts per Cloudflare location and is eventually consistent, and it answers only
//! `success`: no remaining quota, no reset time. So in this mode forwarded responses carry no
//! rate-limit headers (the policy is compiled with `rate_limit_headers_on_success: false`), and
//! a refusal's `Retry-After`/`RateLimit` describe one emission interval (`period / limit`), the
//! earliest a smooth limiter would admit again, because the binding cannot say more.
//!
//! The core still makes every decision: the binding's verdict is fed to it as bucket state
//! (an empty bucket when the binding allows, a bucket whose floor is one full period ahead when
//! it refuses), so shadow mode, the 429 body and every header come from the core.

use std::hash::{DefaultHasher, Hash, Hasher};

use portcullis_core::{BUCKET_BYTES, BucketStore, Decision, Loaded, StoreError, Swap, Version};
use worker::{Env, console_error};

use crate::incoming::Incoming;
use crate::limiter::{Probe, Replay};
use crate::settings::{RatelimitsSettings, Settings};

/// A fixed instant for deriving a client's key: what the core writes into an empty bucket at
/// this instant identifies the (tier, client) pair (its fingerprint) and nothing else.
const KEY_INSTANT: u64 = 1_000_000_000_000_000_000;

pub async fn decide(env: &Env, settings: &Settings, incoming: &Incoming, index: u32, now: u64) -> Decision {
    let request = incoming.request(&incoming.headers);
    let Some(mode) = settings.ratelimits.as_ref() else {
        // Settings always carry the mode's data in this mode; fail as a store error if not.
        return settings.policy.decide(&request, now, &Replay::failed(index, "no ratelimits settings".into()));
    };
    let quiet = &mode.quiet;
    let verdict = match binding_and_key(mode, incoming, index) {
        Some((binding, key, period)) => match env.rate_limiter(binding) {
            Ok(limiter) => limiter.limit(key).await.map(|outcome| outcome.success.then_some(()).ok_or(period)),
            Err(err) => Err(err),
        }
        .map_err(|err| {
            console_error!("portcullis: ratelimits binding {binding}: {err}");
            err.to_string()
        }),
        None => Err(format!("bucket {index} maps to no limited tier")),
    };
    match verdict {
        Ok(Ok(())) => quiet.decide(&request, now, &Probe::default()),
        Ok(Err(period_ns)) => quiet.decide(&request, now, &Refused { index, floor: now.saturating_add(period_ns) }),
        Err(why) => quiet.decide(&request, now, &Replay::failed(index, why)),
    }
}

/// The binding for bucket `index`'s tier, the binding key of this (tier, client) pair and the
/// tier's period in nanoseconds.
fn binding_and_key<'m>(
    mode: &'m RatelimitsSettings,
    incoming: &Incoming,
    index: u32,
) -> Option<(&'m str, String, u64)> {
    let ordinal = index.checked_div(mode.buckets_per_tier)?;
    let (binding, rate) = mode.tiers.get(usize::try_from(ordinal).ok()?)?;
    let probe = Probe::default();
    mode.quiet.decide(&incoming.request(&incoming.headers), KEY_INSTANT, &probe);
    let mut hasher = DefaultHasher::new();
    probe.written()?.hash(&mut hasher);
    let key = format!("{index}:{:016x}", hasher.finish());
    Some((binding, key, u64::from(rate.period_secs()) * 1_000_000_000))
}

/// A bucket that refuses every newcomer: empty ways under a floor one period ahead
/// (the layout documented on `BUCKET_BYTES`: the floor, then the ways, little-endian).
struct Refused {
    index: u32,
    floor: u64,
}

impl BucketStore for Refused {
    fn load(&self, index: u32) -> Result<Loaded, StoreError> {
        if index != self.index {
            return Err(StoreError(format!("bucket {index} is not {}", self.index)));
        }
        let mut bytes = vec![0u8; BUCKET_BYTES];
        bytes[..8].copy_from_slice(&self.floor.to_le_bytes());
        Ok(Loaded { bytes: Some(bytes), version: Version(1) })
    }

    fn compare_and_swap(&self, _: u32, _: Version, _: &[u8]) -> Result<Swap, StoreError> {
        Ok(Swap::Written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::Outcome;

    const NOW: u64 = 1_700_000_000_000_000_000;

    fn mode(json: &str) -> RatelimitsSettings {
        let document = portcullis_core::config::parse(json.as_bytes()).unwrap();
        let policy = portcullis_core::Policy::compile(&document).unwrap();
        let quiet = portcullis_core::Policy::compile(&portcullis_core::PolicyConfig {
            rate_limit_headers_on_success: false,
            ..document
        })
        .unwrap();
        let tiers: Vec<(String, portcullis_core::rate::Rate)> = portcullis_core::config::seed_tiers()
            .iter()
            .filter(|t| t.limit != "unlimited")
            .map(|t| (crate::settings::ratelimit_binding(&t.name), t.limit.parse().unwrap()))
            .collect();
        RatelimitsSettings { buckets_per_tier: policy.bucket_count() / tiers.len() as u32, quiet, tiers }
    }

    fn incoming(method: &str, path: &str, ip: &str) -> Incoming {
        Incoming {
            method: method.into(),
            https: true,
            authority: Some("localhost".into()),
            target: path.into(),
            headers: vec![("cf-connecting-ip".into(), ip.into())],
        }
    }

    fn index(mode: &RatelimitsSettings, request: &Incoming) -> u32 {
        let probe = Probe::default();
        mode.quiet.decide(&request.request(&request.headers), NOW, &probe);
        probe.touched().unwrap()
    }

    #[test]
    fn every_seed_tier_maps_to_its_own_binding() {
        let mode = mode("{}");
        let cases = [
            ("POST", "/api/v1/auth/login", "RATELIMIT_LOGIN"),
            ("POST", "/api/v1/auth/refresh", "RATELIMIT_REFRESH"),
            ("POST", "/api/v1/transcribe", "RATELIMIT_TRANSCRIBE"),
            ("GET", "/api/v1/videos", "RATELIMIT_VIDEOS"),
            ("POST", "/api/v1/analyze", "RATELIMIT_ANALYZE"),
            ("GET", "/api/v1/jobs/7", "RATELIMIT_JOB_STATUS"),
            ("DELETE", "/api/v1/jobs/7", "RATELIMIT_JOB_DELETE"),
            ("POST", "/api/v1/schedule", "RATELIMIT_SCHEDULE"),
        ];
        for (method, path, binding) in cases {
            for ip in ["192.0.2.1", "198.51.100.200", "2001:db8::1"] {
                let request = incoming(method, path, ip);
                let (found, _, _) = binding_and_key(&mode, &request, index(&mode, &request)).unwrap();
                assert_eq!(found, binding, "{method} {path} from {ip}");
            }
        }
    }

    #[test]
    fn keys_separate_clients_and_not_spellings() {
        let mode = mode("{}");
        let key = |method: &str, path: &str, ip: &str| {
            let request = incoming(method, path, ip);
            binding_and_key(&mode, &request, index(&mode, &request)).unwrap().1
        };
        assert_eq!(key("GET", "/api/v1/jobs/1", "192.0.2.1"), key("HEAD", "/API/v1/jobs/2/", "192.0.2.1"));
        assert_ne!(key("GET", "/api/v1/jobs/1", "192.0.2.1"), key("GET", "/api/v1/jobs/1", "192.0.2.2"));
        assert_ne!(key("GET", "/api/v1/jobs/1", "192.0.2.1"), key("DELETE", "/api/v1/jobs/1", "192.0.2.1"));
    }

    #[test]
    fn a_refusal_is_the_cores_429_without_success_headers_on_allow() {
        let mode = mode("{}");
        let request = incoming("POST", "/api/v1/auth/login", "192.0.2.9");
        let index = index(&mode, &request);
        let refused =
            mode.quiet.decide(&request.request(&request.headers), NOW, &Refused { index, floor: NOW + 60_000_000_000 });
        let Decision::Respond(reply) = refused else { panic!("not refused") };
        assert_eq!(reply.status, 429);
        assert_eq!(reply.header("retry-after"), Some("12"));
        let allowed = mode.quiet.decide(&request.request(&request.headers), NOW, &Probe::default());
        assert_eq!(allowed.outcome(), Outcome::Forwarded);
        let edits = mode.quiet.response_edits(&allowed.plan());
        assert!(edits.rate_limit_headers().is_empty());
    }
}
