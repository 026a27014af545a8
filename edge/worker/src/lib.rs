//! Portcullis as a Cloudflare Worker.
//!
//! This crate only translates between workers-rs and `portcullis-core`; every decision is made
//! by the core. Per request: read the settings ([`settings`]), turn the request into the core's
//! view ([`incoming`]), decide — with the rate-limit state in a Durable Object or the
//! `ratelimits` binding ([`limiter`], [`ratelimits`]) — then send the core's local reply or
//! forward to `ORIGIN_URL` and apply the core's header edits to the answer ([`respond`]).
//!
//! A broken configuration answers every request with a 500 and logs the variable and field;
//! it never passes traffic through unprotected.

#[cfg(test)]
mod conformance;
pub mod incoming;
pub mod limiter;
pub mod ratelimits;
pub mod respond;
pub mod settings;

use std::cell::Cell;

use portcullis_core::{Acquire, Begin, Decision, LimitCheck, MemoryStore, Policy, StoreError};
use worker::{Context, Env, Request, Response, Result, console_error, console_warn, event};

use crate::incoming::Incoming;
use crate::settings::{LimiterMode, Settings};

pub use limiter::RateLimiter;

/// Unix time in nanoseconds (the runtime's clock has millisecond resolution).
pub fn now_nanos() -> u64 {
    worker::Date::now().as_millis().saturating_mul(1_000_000)
}

#[event(start)]
fn start() {
    // worker-build's shim re-initialises the module after a panic; this names the cause.
    std::panic::set_hook(Box::new(|info| {
        console_error!("portcullis: panic: {info}");
    }));
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let settings = settings::load(&env);
    // Read once: the error replies below need its scheme too.
    let incoming = Incoming::from_worker(&req);
    let https = incoming.https;
    let settings = match settings.as_ref() {
        Ok(settings) => settings,
        Err(err) => {
            console_error!("portcullis: configuration error: {err}");
            let seed = settings::seed_policy();
            let plan = seed.as_ref().map(|p| p.fallback_plan(https));
            return respond::json_error(
                seed.as_deref(),
                plan,
                500,
                "misconfigured",
                "This service is misconfigured; the operator has been told why.",
            );
        }
    };
    match handle(&req, &incoming, &env, settings).await {
        Ok(response) => Ok(response),
        Err(err) => {
            console_error!("portcullis: internal error: {err}");
            let plan = settings.active_policy().fallback_plan(https);
            respond::json_error(
                Some(settings.active_policy()),
                Some(plan),
                500,
                "internal_error",
                "The edge could not handle this request.",
            )
        }
    }
}

async fn handle(req: &Request, incoming: &Incoming, env: &Env, settings: &Settings) -> Result<Response> {
    let policy = settings.active_policy();
    // Decided once: the first phase needs no state; a limited tier's check runs where its
    // state lives and the second phase turns the verdict into the decision.
    let decision = match policy.begin(&incoming.request()) {
        Begin::Decided(decision) => decision,
        Begin::Check(check) => {
            let answer = match (&settings.limiter, &settings.ratelimits) {
                (LimiterMode::DurableObject, _) => limiter::ask(env, &check).await,
                (LimiterMode::Ratelimits, Some(mode)) => ratelimits::ask(env, mode, &check).await,
                // Settings always carry the mode's data in this mode; fail as a store error if not.
                (LimiterMode::Ratelimits, None) => Acquire::StoreFailed(StoreError("no ratelimits settings".into())),
            };
            match answer {
                Acquire::StoreFailed(StoreError(why)) => degrade(policy, &check, &why),
                answer => policy.finish(&check, answer),
            }
        }
    };
    match decision {
        Decision::Respond(reply) => respond::local(&reply),
        Decision::Forward(forward) => {
            // The mTLS certificate binding, when the deployment declares one.
            let mtls = env.service(settings::ORIGIN_MTLS_BINDING).ok();
            respond::forward(req, incoming, &settings.origin, mtls.as_ref(), policy, forward.plan).await
        }
    }
}

thread_local! {
    /// Buckets of this isolate alone, where limits are counted while the state store fails
    /// (`on_store_error: "local"`): per isolate rather than exact, never unlimited.
    static ISOLATE: MemoryStore = MemoryStore::new();
    /// Degraded decisions in this isolate, and the second the last was logged.
    static DEGRADED: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// The state store failed `check`: `on_store_error` decides, over this isolate's own buckets
/// for `local`. Every such decision is counted; the count is logged at most once a second, so
/// a flood against a failing object does not flood the log too.
fn degrade(policy: &Policy, check: &LimitCheck, why: &str) -> Decision {
    let now = now_nanos();
    let decision = ISOLATE.with(|own| policy.degrade(check, own, now));
    let second = now / 1_000_000_000;
    let (count, logged) = DEGRADED.get();
    let count = count + 1;
    if second != logged {
        console_warn!(
            "portcullis: degraded decision ({count} in this isolate): the rate-limit store failed ({why}); \
             on_store_error {:?} decided tier {:?}: {}",
            check.on_store_error(),
            policy.tier_name(check),
            decision.outcome().as_str()
        );
    }
    DEGRADED.set((count, if second != logged { second } else { logged }));
    decision
}
