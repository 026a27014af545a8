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

pub mod incoming;
pub mod limiter;
pub mod ratelimits;
pub mod respond;
pub mod settings;

use portcullis_core::Decision;
use worker::{Context, Env, Request, Response, Result, console_error, event};

use crate::incoming::{Incoming, Recorded};
use crate::limiter::Probe;
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
    let https = req.url().map(|u| u.scheme() == "https").unwrap_or(true);
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
    match handle(&req, &env, settings).await {
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

async fn handle(req: &Request, env: &Env, settings: &Settings) -> Result<Response> {
    let incoming = Incoming::from_worker(req)?;
    let policy = settings.active_policy();
    let now = now_nanos();
    let recorded = Recorded::new(&incoming.headers);
    let probe = Probe::default();
    let decision = policy.decide(&incoming.request(&recorded), now, &probe);
    let decision = match probe.touched() {
        // No rate-limit state involved: the probe's decision is the decision.
        None => decision,
        Some(index) => match settings.limiter {
            LimiterMode::DurableObject => {
                let asked = limiter::ask(env, index, &incoming, &recorded).await;
                let decision =
                    policy.decide(&incoming.request(&incoming.headers), asked.now.unwrap_or(now), &asked.replay);
                limiter::check_replay(index, asked.outcome.as_deref(), decision.outcome());
                decision
            }
            LimiterMode::Ratelimits => ratelimits::decide(env, settings, &incoming, index, now).await,
        },
    };
    match decision {
        Decision::Respond(reply) => respond::local(&reply),
        Decision::Forward(forward) => respond::forward(req, &incoming, &settings.origin, policy, forward.plan).await,
    }
}
