//! Decisions as plain data: what the host must do with a request, and with its response.

use serde::Serialize;

use crate::headers::{HeaderSet, HeaderSink};
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
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
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
#[derive(Debug, Clone)]
pub struct ResponseEdits<'p> {
    pub(crate) set: &'p HeaderSet,
    pub(crate) rate: Vec<(&'static str, String)>,
}

pub(crate) const RATE_LIMIT_HEADERS: [&str; 6] =
    ["ratelimit-policy", "ratelimit", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after"];

impl<'p> ResponseEdits<'p> {
    pub(crate) fn new(set: &'p HeaderSet, rate: Option<(&str, u32, u32, RateReport)>) -> Self {
        Self { set, rate: rate.map_or_else(Vec::new, rate_limit_headers) }
    }

    /// Writes every edit into `sink`.
    pub fn apply<S: HeaderSink + ?Sized>(&self, sink: &mut S) {
        for name in self.set.removed() {
            sink.remove(name);
        }
        self.for_each_set(|name, value| sink.set(name, value));
    }

    /// Every header these edits set, in order: [`ResponseEdits::header_set`]'s, then
    /// [`ResponseEdits::rate_limit_headers`].
    pub fn for_each_set<'s>(&'s self, mut set: impl FnMut(&'s str, &'s str)) {
        for (name, value) in self.set.headers() {
            set(name, value);
        }
        for (name, value) in &self.rate {
            set(name, value);
        }
    }

    /// The profile's part of these edits, the same for every response of its profile and scheme.
    pub fn header_set(&self) -> &'p HeaderSet {
        self.set
    }

    /// Whether these edits set or remove `name` (so an upstream value of it must not survive).
    pub fn touches(&self, name: &str) -> bool {
        self.touches_bytes(name.as_bytes())
    }

    /// [`ResponseEdits::touches`] for a name as the host holds it: bytes that are not UTF-8 are
    /// never a name the edits touch (theirs are ASCII tokens).
    pub fn touches_bytes(&self, name: &[u8]) -> bool {
        self.set.manages(name, !self.rate.is_empty())
    }

    /// The whole response header list after the edits: the upstream headers the edits leave
    /// alone, in their order, then every header the edits set. For hosts that replace a header
    /// map in one call rather than editing it field by field.
    pub fn rewrite<'s, V: AsRef<[u8]>>(&'s self, upstream: &'s [(String, V)]) -> Vec<(&'s str, &'s [u8])> {
        let mut headers = Vec::with_capacity(upstream.len() + self.set.headers().len() + self.rate.len());
        for (name, value) in upstream {
            if !self.touches(name) {
                headers.push((name.as_str(), value.as_ref()));
            }
        }
        self.for_each_set(|name, value| headers.push((name, value.as_bytes())));
        headers
    }

    /// `RateLimit-Policy`, `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10), the legacy
    /// `X-RateLimit-*` trio and, on a refusal, `Retry-After`.
    pub fn rate_limit_headers(&self) -> &[(&'static str, String)] {
        &self.rate
    }
}

fn rate_limit_headers((tier, limit, window, report): (&str, u32, u32, RateReport)) -> Vec<(&'static str, String)> {
    // Built by hand: these run on every response of a limited tier, and `format!` costs several
    // times more than the pushes below inside a Wasm VM.
    let mut numbers = itoa::Buffer::new();
    // On a refusal the reset points at the same instant as Retry-After (draft §4).
    let reset = ceil_secs(report.retry_after.unwrap_or(report.reset_after));
    let reset_text = numbers.format(reset).to_owned();
    let limit_text = numbers.format(limit).to_owned();
    let remaining_text = numbers.format(report.remaining).to_owned();
    let quoted = |extra: usize| {
        let mut s = String::with_capacity(tier.len() + 24 + extra);
        s.push('"');
        s.push_str(tier);
        s.push('"');
        s
    };
    let mut policy = quoted(0);
    policy.push_str(";q=");
    policy.push_str(&limit_text);
    policy.push_str(";w=");
    policy.push_str(numbers.format(window));
    let mut current = quoted(0);
    current.push_str(";r=");
    current.push_str(&remaining_text);
    current.push_str(";t=");
    current.push_str(&reset_text);
    let mut headers = Vec::with_capacity(6);
    headers.push(("ratelimit-policy", policy));
    headers.push(("ratelimit", current));
    headers.push(("x-ratelimit-limit", limit_text));
    headers.push(("x-ratelimit-remaining", remaining_text));
    if report.retry_after.is_some() {
        headers.push(("retry-after", reset_text.clone()));
    }
    headers.push(("x-ratelimit-reset", reset_text));
    headers
}
