//! Counters in Envoy's stats (`/stats` shows them as `wasmcustom.portcullis.*`).
//!
//! Requests are counted in the VM and flushed to Envoy once a second: two host calls per
//! request would cost more than the rest of the filter's bookkeeping together.

use core::cell::Cell;
use core::time::Duration;

use portcullis_core::Outcome;
use portcullis_proxy_abi::{self as abi, MetricType};

#[derive(Debug, Clone, Copy)]
pub enum Counter {
    Requests,
    Forwarded,
    Redirected,
    BadHost,
    RateLimited,
    ShadowLimited,
    StoreErrors,
    /// Calls to the fleet's rate-limit service.
    GlobalCalls,
    /// Limited requests the service could not decide (timeout, error, unknown cluster,
    /// undecodable answer), decided by `on_unavailable` instead.
    GlobalFallbacks,
    /// Refusals answered without a call: the service's last refusal had not expired yet.
    GlobalKnownDenials,
    /// Limited requests decided by `on_store_error` because shared data failed.
    Degraded,
}

const ALL: [(Counter, &str); 11] = [
    (Counter::Requests, "portcullis.requests"),
    (Counter::Forwarded, "portcullis.forwarded"),
    (Counter::Redirected, "portcullis.redirected"),
    (Counter::BadHost, "portcullis.bad_host"),
    (Counter::RateLimited, "portcullis.rate_limited"),
    (Counter::ShadowLimited, "portcullis.shadow_limited"),
    (Counter::StoreErrors, "portcullis.store_errors"),
    (Counter::GlobalCalls, "portcullis.global_calls"),
    (Counter::GlobalFallbacks, "portcullis.global_fallbacks"),
    (Counter::GlobalKnownDenials, "portcullis.global_known_denials"),
    (Counter::Degraded, "portcullis.degraded"),
];

impl From<Outcome> for Counter {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Forwarded => Self::Forwarded,
            Outcome::ShadowLimited => Self::ShadowLimited,
            Outcome::Redirected => Self::Redirected,
            Outcome::BadHost => Self::BadHost,
            Outcome::RateLimited => Self::RateLimited,
            Outcome::StoreErrorAllowed | Outcome::StoreErrorDenied => Self::StoreErrors,
        }
    }
}

/// How often counts reach Envoy's stats.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Metric ids, defined once per VM (Envoy returns the same stat for the same name), and the
/// counts not yet flushed.
pub struct Metrics {
    ids: [Option<u32>; ALL.len()],
    pending: [Cell<i64>; ALL.len()],
}

impl Metrics {
    pub fn define() -> Self {
        let mut ids = [None; ALL.len()];
        for (slot, (_, name)) in ids.iter_mut().zip(ALL) {
            *slot = abi::define_metric(MetricType::Counter, name).ok();
        }
        Self { ids, pending: Default::default() }
    }

    /// Whether nothing was counted in `counter` since the last flush.
    pub fn first_since_flush(&self, counter: Counter) -> bool {
        self.pending[counter as usize].get() == 0
    }

    pub fn add(&self, counter: Counter) {
        let pending = &self.pending[counter as usize];
        pending.set(pending.get() + 1);
    }

    pub fn flush(&self) {
        for (id, pending) in self.ids.iter().zip(&self.pending) {
            let count = pending.take();
            if let (Some(id), true) = (id, count > 0) {
                // A lost increment is better than a failed request.
                let _ = abi::increment_metric(*id, count);
            }
        }
    }
}
