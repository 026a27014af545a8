//! Decisions as plain data: what the host must do with a request, and with its response.

use serde::Serialize;

use crate::headers::{HSTS, HeaderProfile, HeaderSink};
use crate::limiter::gcra::ceil_secs;

/// What the host does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer now, without contacting the upstream.
    Respond(LocalResponse),
    /// Send the request upstream; keep the plan for the response phase.
    Forward(Forward),
}

impl Decision {
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Respond(local) => local.outcome,
            Self::Forward(forward) => forward.outcome,
        }
    }

    /// What the response phase needs, whichever way the request went.
    pub fn plan(&self) -> ResponsePlan {
        match self {
            Self::Respond(local) => local.plan,
            Self::Forward(forward) => forward.plan,
        }
    }
}

/// Why the request ended the way it did: for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Forwarded,
    /// Over the limit in shadow mode: forwarded, reported.
    ShadowLimited,
    Redirected,
    BadHost,
    RateLimited,
    /// The limiter's store failed and `on_store_error` let the request through.
    StoreErrorAllowed,
    /// The limiter's store failed and `on_store_error` refused the request.
    StoreErrorDenied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::ShadowLimited => "shadow_limited",
            Self::Redirected => "redirected",
            Self::BadHost => "bad_host",
            Self::RateLimited => "rate_limited",
            Self::StoreErrorAllowed => "store_error_allowed",
            Self::StoreErrorDenied => "store_error_denied",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub plan: ResponsePlan,
    pub outcome: Outcome,
}

/// A complete response the host sends as is: security headers already included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    /// Lowercase names.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Running the response phase again over this reply (as Envoy does) changes nothing.
    pub plan: ResponsePlan,
    pub outcome: Outcome,
}

impl LocalResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Everything the response phase needs, small enough to copy into a host's request context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponsePlan {
    pub(crate) profile: u16,
    pub(crate) https: bool,
    pub(crate) rate: Option<RateReport>,
}

impl ResponsePlan {
    pub fn is_https(&self) -> bool {
        self.https
    }
}

/// The limiter's state for this client after this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateReport {
    pub tier: u16,
    pub remaining: u32,
    pub reset_after: u64,
    /// Set on a refusal: nanoseconds until a request would be allowed.
    pub retry_after: Option<u64>,
}

/// The header edits for one response.
#[derive(Debug, Clone, Copy)]
pub struct ResponseEdits<'p> {
    pub(crate) profile: &'p HeaderProfile,
    pub(crate) https: bool,
    pub(crate) rate: Option<(&'p str, u32, u32, RateReport)>,
}

impl ResponseEdits<'_> {
    /// Writes every edit into `sink`.
    pub fn apply<S: HeaderSink + ?Sized>(&self, sink: &mut S) {
        for name in &self.profile.remove {
            sink.remove(name);
        }
        for (name, value) in &self.profile.set {
            sink.set(name, value);
        }
        match (&self.profile.hsts, self.https) {
            (Some(hsts), true) => sink.set(HSTS, hsts),
            // HSTS over plain HTTP is ignored by browsers and misleads scanners (RFC 6797 §7.2).
            _ => sink.remove(HSTS),
        }
        for (name, value) in self.rate_limit_headers() {
            sink.set(name, &value);
        }
    }

    /// `RateLimit-Policy`, `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10), the legacy
    /// `X-RateLimit-*` trio and, on a refusal, `Retry-After`.
    pub fn rate_limit_headers(&self) -> Vec<(&'static str, String)> {
        let Some((tier, limit, window, report)) = self.rate else {
            return Vec::new();
        };
        // On a refusal the reset points at the same instant as Retry-After (draft §4).
        let reset = ceil_secs(report.retry_after.unwrap_or(report.reset_after));
        let mut headers = vec![
            (
                "ratelimit-policy",
                format!("\"{tier}\";q={limit};w={window}"),
            ),
            (
                "ratelimit",
                format!("\"{tier}\";r={};t={reset}", report.remaining),
            ),
            ("x-ratelimit-limit", limit.to_string()),
            ("x-ratelimit-remaining", report.remaining.to_string()),
            ("x-ratelimit-reset", reset.to_string()),
        ];
        if report.retry_after.is_some() {
            headers.push(("retry-after", reset.max(1).to_string()));
        }
        headers
    }
}
