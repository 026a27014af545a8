//! The alternative limiter: Cloudflare's `ratelimits` binding, one binding per limited tier.
//!
//! The binding counts per Cloudflare location and is eventually consistent, and it answers only
//! `success`: no remaining quota, no reset time. So in this mode forwarded responses carry no
//! rate-limit headers (the policy is compiled with `rate_limit_headers_on_success: false`), and
//! a refusal's `Retry-After`/`RateLimit` describe one emission interval (`period / limit`), the
//! earliest a smooth limiter would admit again, because the binding cannot say more.
//!
//! The core still makes every decision: the pending [`LimitCheck`] names the tier (so the
//! binding) and the keyed client id (so the binding's key), and the binding's answer is handed
//! to [`Policy::finish`](portcullis_core::Policy::finish) as a verdict.

use portcullis_core::{Acquire, LimitCheck, StoreError, Verdict};
use worker::{Env, console_error};

use crate::settings::RatelimitsSettings;

pub async fn ask(env: &Env, mode: &RatelimitsSettings, check: &LimitCheck) -> Acquire {
    let Some(binding) = binding(mode, check) else {
        return Acquire::StoreFailed(StoreError(format!("limited tier {} has no binding", check.limited_tier())));
    };
    let outcome = match env.rate_limiter(binding) {
        Ok(limiter) => limiter.limit(binding_key(check)).await,
        Err(err) => Err(err),
    };
    match outcome {
        Ok(outcome) => verdict(check, outcome.success),
        Err(err) => {
            console_error!("portcullis: ratelimits binding {binding}: {err}");
            Acquire::StoreFailed(StoreError(format!("binding {binding}: {err}")))
        }
    }
}

/// The binding of `check`'s tier.
fn binding<'m>(mode: &'m RatelimitsSettings, check: &LimitCheck) -> Option<&'m str> {
    let (binding, _) = mode.tiers.get(usize::try_from(check.limited_tier()).ok()?)?;
    Some(binding)
}

/// The binding's key for this (tier, client): the keyed client id, never the address.
fn binding_key(check: &LimitCheck) -> String {
    format!("{}:{:032x}", check.limited_tier(), check.client_id())
}

/// The binding's yes or no as a verdict: a refusal waits one emission interval and is reset
/// after one period (the binding's window), the most it can be said to know.
fn verdict(check: &LimitCheck, success: bool) -> Acquire {
    let gcra = check.gcra();
    Acquire::from_verdict(if success {
        Verdict { allowed: true, remaining: 0, reset_after: 0, retry_after: 0 }
    } else {
        Verdict {
            allowed: false,
            remaining: 0,
            reset_after: u64::from(gcra.period_secs()) * 1_000_000_000,
            retry_after: gcra.emission(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incoming::Incoming;
    use portcullis_core::{Begin, Decision, Outcome, Policy};

    fn mode(json: &str) -> RatelimitsSettings {
        let document = portcullis_core::config::parse(json.as_bytes()).unwrap();
        let quiet =
            Policy::compile(&portcullis_core::PolicyConfig { rate_limit_headers_on_success: false, ..document })
                .unwrap();
        let tiers: Vec<(String, portcullis_core::rate::Rate)> = portcullis_core::config::seed_tiers()
            .iter()
            .filter(|t| t.limit != "unlimited")
            .map(|t| (crate::settings::ratelimit_binding(&t.name), t.limit.parse().unwrap()))
            .collect();
        RatelimitsSettings { quiet, tiers }
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

    fn check(mode: &RatelimitsSettings, request: &Incoming) -> LimitCheck {
        match mode.quiet.begin(&request.request()) {
            Begin::Check(check) => check,
            Begin::Decided(decision) => panic!("not limited: {decision:?}"),
        }
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
        for (method, path, expected) in cases {
            for ip in ["192.0.2.1", "198.51.100.200", "2001:db8::1"] {
                let check = check(&mode, &incoming(method, path, ip));
                assert_eq!(binding(&mode, &check), Some(expected), "{method} {path} from {ip}");
            }
        }
    }

    #[test]
    fn keys_separate_clients_and_tiers_not_spellings() {
        let mode = mode("{}");
        let key = |method: &str, path: &str, ip: &str| binding_key(&check(&mode, &incoming(method, path, ip)));
        assert_eq!(key("GET", "/api/v1/jobs/1", "192.0.2.1"), key("HEAD", "/API/v1/jobs/2/", "192.0.2.1"));
        assert_ne!(key("GET", "/api/v1/jobs/1", "192.0.2.1"), key("GET", "/api/v1/jobs/1", "192.0.2.2"));
        assert_ne!(key("GET", "/api/v1/jobs/1", "192.0.2.1"), key("DELETE", "/api/v1/jobs/1", "192.0.2.1"));
        assert!(!key("GET", "/api/v1/jobs/1", "192.0.2.1").contains("192"), "no address in the key");
    }

    #[test]
    fn a_refusal_is_the_cores_429_without_success_headers_on_allow() {
        let mode = mode("{}");
        let check = check(&mode, &incoming("POST", "/api/v1/auth/login", "192.0.2.9"));
        let Decision::Respond(reply) = mode.quiet.finish(&check, verdict(&check, false)) else { panic!("not refused") };
        assert_eq!(reply.status, 429);
        assert_eq!(reply.header("retry-after"), Some("12"));
        let allowed = mode.quiet.finish(&check, verdict(&check, true));
        assert_eq!(allowed.outcome(), Outcome::Forwarded);
        assert!(mode.quiet.response_edits(&allowed.plan()).rate_limit_headers().is_empty());
    }
}
