//! Counters in Envoy's stats (`/stats` shows them as `wasmcustom.portcullis.*`).

use portcullis_core::Outcome;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

#[derive(Debug, Clone, Copy)]
pub enum Counter {
    Requests,
    Forwarded,
    Redirected,
    BadHost,
    RateLimited,
    ShadowLimited,
    StoreErrors,
}

const ALL: [(Counter, &str); 7] = [
    (Counter::Requests, "portcullis.requests"),
    (Counter::Forwarded, "portcullis.forwarded"),
    (Counter::Redirected, "portcullis.redirected"),
    (Counter::BadHost, "portcullis.bad_host"),
    (Counter::RateLimited, "portcullis.rate_limited"),
    (Counter::ShadowLimited, "portcullis.shadow_limited"),
    (Counter::StoreErrors, "portcullis.store_errors"),
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

/// Metric ids, defined once per VM (Envoy returns the same stat for the same name).
pub struct Metrics {
    ids: [Option<u32>; ALL.len()],
}

impl Metrics {
    pub fn define() -> Self {
        let mut ids = [None; ALL.len()];
        for (slot, (_, name)) in ids.iter_mut().zip(ALL) {
            *slot = hostcalls::define_metric(MetricType::Counter, name).ok();
        }
        Self { ids }
    }

    pub fn increment(&self, counter: Counter) {
        if let Some(id) = self.ids[counter as usize] {
            // A lost increment is better than a failed request.
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
}
