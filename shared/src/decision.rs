//! Decisions as plain data: what the host must do with a request, and with its response.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec::Vec;

use alloc::sync::Arc;

use serde::Serialize;

use crate::headers::{HeaderSet, HeaderSink, ReplyKind};
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
    pub headers: ReplyHeaders,
    pub body: String,
    /// Running the response phase again over this reply (as Envoy does) changes nothing.
    pub plan: ResponsePlan,
    pub outcome: Outcome,
}

impl LocalResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

/// A local reply's headers, lowercase names, in order: the few made for this reply (its
/// `location`), then its header set's part, compiled with the policy and shared by every reply
/// of that set rather than copied into each, then its rate-limit headers. A refusal or redirect
/// is built on every request of a flood: this keeps it to a few allocations.
#[derive(Debug, Clone, Default)]
pub struct ReplyHeaders {
    own: Vec<(String, String)>,
    shared: Arc<[(String, String)]>,
    /// Which set's part `shared` is, when it is one.
    base: Option<ReplyBase>,
    rate: RateLimitHeaders,
}

/// The header set's part a reply's headers were built on ([`HeaderSet::reply_base_headers`]), for
/// hosts that serialise each part once rather than on every reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyBase {
    /// [`HeaderSet::index`].
    pub set: usize,
    /// The JSON reply's part (its `content-type` and `cache-control` first), not the redirect's.
    pub json: bool,
}

impl ReplyHeaders {
    pub(crate) fn new(own: Vec<(String, String)>, shared: Arc<[(String, String)]>, rate: RateLimitHeaders) -> Self {
        Self { own, shared, base: None, rate }
    }

    /// The headers made for this reply alone, sent first.
    pub fn own(&self) -> &[(String, String)] {
        &self.own
    }

    /// The header set's part, sent after [`ReplyHeaders::own`], if the reply was built on one
    /// (otherwise every header but the rate-limit ones is its own).
    pub fn base(&self) -> Option<ReplyBase> {
        self.base
    }

    /// The rate-limit headers, sent last.
    pub fn rate_limit_headers(&self) -> &RateLimitHeaders {
        &self.rate
    }

    /// Every header, in the order they are sent.
    pub fn iter(&self) -> ReplyHeadersIter<'_> {
        ReplyHeadersIter { own: self.own.iter(), shared: self.shared.iter(), rate: self.rate.iter() }
    }

    /// The value of `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.own.len() + self.shared.len() + self.rate.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of every name and value together, for hosts that size a buffer up front.
    pub fn text_len(&self) -> usize {
        self.iter().map(|(name, value)| name.len() + value.len()).sum()
    }

    /// The headers as owned pairs.
    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.iter().map(|(name, value)| (name.to_owned(), value.to_owned())).collect()
    }
}

impl<'a> IntoIterator for &'a ReplyHeaders {
    type Item = (&'a str, &'a str);
    type IntoIter = ReplyHeadersIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// [`ReplyHeaders::iter`].
pub struct ReplyHeadersIter<'a> {
    own: core::slice::Iter<'a, (String, String)>,
    shared: core::slice::Iter<'a, (String, String)>,
    rate: RateLimitHeadersIter<'a>,
}

impl<'a> Iterator for ReplyHeadersIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        match self.own.next().or_else(|| self.shared.next()) {
            Some((name, value)) => Some((name.as_str(), value.as_str())),
            None => self.rate.next(),
        }
    }
}

/// The same headers in the same order, however they are held.
impl PartialEq for ReplyHeaders {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for ReplyHeaders {}

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
    pub(crate) rate: RateLimitHeaders,
}

pub(crate) const RATE_LIMIT_HEADERS: [&str; 6] =
    ["ratelimit-policy", "ratelimit", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after"];

impl<'p> ResponseEdits<'p> {
    pub(crate) fn new(set: &'p HeaderSet, rate: Option<(&TierHeaderText, RateReport)>) -> Self {
        Self {
            set,
            rate: rate.map_or_else(RateLimitHeaders::default, |(text, report)| RateLimitHeaders::new(text, report)),
        }
    }

    /// Writes every edit into `sink`: what [`ResponseEdits::rewrite`] leaves of a header list,
    /// for hosts that edit a map in place.
    pub fn apply<S: HeaderSink + ?Sized>(&self, sink: &mut S) {
        for name in self.set.removed() {
            sink.remove(name);
        }
        self.for_each_set(|name, value| sink.set(name, value));
    }

    /// The headers of a local reply of `kind` whose own headers are `own`: what
    /// [`ResponseEdits::apply`] leaves of `own` followed by `kind`'s extra headers, without
    /// copying the header set (a reply is built on every redirect and refusal).
    pub(crate) fn reply_headers(self, mut own: Vec<(String, String)>, kind: ReplyKind) -> ReplyHeaders {
        if self.set.sets_rate_names() && !self.rate.is_empty() {
            // A rate-limit header would replace the profile's header of the same name: the
            // rare policy that sets one gets the general path.
            own.extend(kind.extra_headers().iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())));
            self.apply(&mut own);
            return ReplyHeaders::new(own, Arc::default(), RateLimitHeaders::default());
        }
        // What `apply` replaces or removes of them: the set's names and the rate-limit headers'.
        own.retain(|(name, _)| {
            let name = name.as_bytes();
            !(self.set.replaces(name) || self.rate.names.iter().any(|rate| rate.as_bytes().eq_ignore_ascii_case(name)))
        });
        let base = ReplyBase { set: self.set.index(), json: kind == ReplyKind::Json };
        ReplyHeaders { base: Some(base), ..ReplyHeaders::new(own, self.set.reply_base(kind).clone(), self.rate) }
    }

    /// Every header these edits set, in order: [`ResponseEdits::header_set`]'s, then
    /// [`ResponseEdits::rate_limit_headers`].
    pub fn for_each_set<'s>(&'s self, mut set: impl FnMut(&'s str, &'s str)) {
        for (name, value) in self.set.headers() {
            set(name, value);
        }
        self.rate.for_each(set);
    }

    /// Whether these edits set or remove `name` (so an upstream value of it must not survive).
    pub fn touches(&self, name: &str) -> bool {
        self.set.manages(name.as_bytes(), !self.rate.is_empty())
            || (self.rate.is_refusal() && name.eq_ignore_ascii_case("retry-after"))
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
        // As `apply` would leave them: a rate-limit header replaces the set's of the same name.
        let replaced = |name: &str| self.rate.names.iter().any(|rate| rate.eq_ignore_ascii_case(name));
        for (name, value) in self.set.headers().iter().filter(|(name, _)| !replaced(name)) {
            headers.push((name.as_str(), value.as_bytes()));
        }
        for (name, value) in &self.rate {
            headers.push((name, value.as_bytes()));
        }
        headers
    }

    /// `RateLimit-Policy`, `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10), the legacy
    /// `X-RateLimit-*` trio and, on a refusal, `Retry-After`.
    pub fn rate_limit_headers(&self) -> &RateLimitHeaders {
        &self.rate
    }
}

/// The rate-limit headers of one response, their values written one after another into one
/// string: they go on every response of a limited tier, and a string per value would cost an
/// allocation and a free each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    names: &'static [&'static str],
    text: String,
    /// Where each value ends in `text`, in `names` order.
    ends: [usize; 6],
}

/// The rate-limit headers of an allowed request: an upstream's value of any of them would
/// contradict the edge's count, so a forwarded response on a limited tier keeps none. Not
/// `Retry-After`: an upstream's own 429 or 503 says with it when to come back (the origin's
/// per-account login throttle, its database outage), which the edge's count does not know.
pub(crate) const ALLOWED_NAMES: [&str; 5] =
    ["ratelimit-policy", "ratelimit", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"];
const REFUSED_NAMES: [&str; 6] =
    ["ratelimit-policy", "ratelimit", "x-ratelimit-limit", "x-ratelimit-remaining", "retry-after", "x-ratelimit-reset"];

/// The text of a tier's rate-limit headers that every response of the tier shares, written
/// when the policy is compiled: a response then formats only its own two numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TierHeaderText {
    /// `RateLimit-Policy`: `"login";q=5;w=60`.
    policy: String,
    /// How `RateLimit` starts: `"login";r=`.
    remaining_prefix: String,
    /// `X-RateLimit-Limit`: `5`.
    limit: String,
}

impl TierHeaderText {
    pub(crate) fn new(tier: &str, limit: u32, window_secs: u32) -> Self {
        let limit = itoa::Buffer::new().format(limit).to_owned();
        let window = itoa::Buffer::new().format(window_secs).to_owned();
        let tier = sf_string(tier);
        Self {
            policy: [&tier, ";q=", &limit, ";w=", &window].concat(),
            remaining_prefix: [&tier, ";r="].concat(),
            limit,
        }
    }
}

/// `name` as a Structured Field string (RFC 8941 §3.3.3): quoted, with `"` and `\` escaped and
/// any character an sf-string cannot hold (outside printable ASCII) written as `?`. A policy's
/// tier names never need either; a descriptor's value given to the rate-limit service may come
/// from a request header, and must not break the header's structure (nor end the header).
fn sf_string(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

impl RateLimitHeaders {
    /// The headers a response gets for `verdict` on tier `tier` of `limit` requests per
    /// `period_secs`: for a host that has a verdict without a decision (the fleet's rate-limit
    /// service answers Envoy's own ratelimit filter with them).
    pub fn for_verdict(tier: &str, limit: u32, period_secs: u32, verdict: &crate::Verdict) -> Self {
        let report = RateReport {
            tier: 0,
            remaining: verdict.remaining,
            reset_after: verdict.reset_after,
            retry_after: (!verdict.allowed).then_some(verdict.retry_after),
        };
        Self::new(&TierHeaderText::new(tier, limit, period_secs), report)
    }

    fn new(tier: &TierHeaderText, report: RateReport) -> Self {
        // On a refusal the reset points at the same instant as Retry-After (draft §4).
        let reset = ceil_secs(report.retry_after.unwrap_or(report.reset_after));
        let names: &'static [&'static str] = if report.retry_after.is_some() { &REFUSED_NAMES } else { &ALLOWED_NAMES };
        let (mut remaining_buf, mut reset_buf) = (itoa::Buffer::new(), itoa::Buffer::new());
        let remaining = remaining_buf.format(report.remaining);
        let reset = reset_buf.format(reset);

        let mut text = String::with_capacity(
            tier.policy.len()
                + tier.remaining_prefix.len()
                + tier.limit.len()
                + 2 * remaining.len()
                + 3 * reset.len()
                + 3,
        );
        let mut ends = [0; 6];
        let mut values = 0;
        let mut value = |text: &mut String, parts: &[&str]| {
            for part in parts {
                text.push_str(part);
            }
            if let Some(end) = ends.get_mut(values) {
                *end = text.len();
            }
            values += 1;
        };
        value(&mut text, &[&tier.policy]);
        value(&mut text, &[&tier.remaining_prefix, remaining, ";t=", reset]);
        value(&mut text, &[&tier.limit]);
        value(&mut text, &[remaining]);
        if report.retry_after.is_some() {
            value(&mut text, &[reset]);
        }
        value(&mut text, &[reset]);
        Self { names, text, ends }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Whether these are a refusal's headers, `Retry-After` among them.
    fn is_refusal(&self) -> bool {
        self.names.len() == REFUSED_NAMES.len()
    }

    /// The bytes of every name and value together.
    pub fn text_len(&self) -> usize {
        self.names.iter().map(|name| name.len()).sum::<usize>() + self.text.len()
    }

    /// Each header's lowercase name and value, in the order they are set: what [`Self::iter`]
    /// gives, each value split from the rest of the text once instead of cut by its two ends
    /// (this runs on every response of a limited tier).
    pub fn for_each<'a>(&'a self, mut visit: impl FnMut(&'a str, &'a str)) {
        let (mut rest, mut start) = (self.text.as_str(), 0);
        for (name, &end) in self.names.iter().zip(&self.ends) {
            let Some((value, tail)) = rest.split_at_checked(end.saturating_sub(start)) else {
                return;
            };
            visit(name, value);
            (rest, start) = (tail, end);
        }
    }

    /// Each header's lowercase name and value, in the order they are set.
    pub fn iter(&self) -> RateLimitHeadersIter<'_> {
        RateLimitHeadersIter { headers: self, next: 0, start: 0 }
    }
}

impl<'a> IntoIterator for &'a RateLimitHeaders {
    type Item = (&'static str, &'a str);
    type IntoIter = RateLimitHeadersIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

pub struct RateLimitHeadersIter<'a> {
    headers: &'a RateLimitHeaders,
    next: usize,
    /// Where the next value starts.
    start: usize,
}

impl<'a> Iterator for RateLimitHeadersIter<'a> {
    type Item = (&'static str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let name = self.headers.names.get(self.next)?;
        let end = *self.headers.ends.get(self.next)?;
        let value = self.headers.text.get(self.start..end).unwrap_or_default();
        self.next += 1;
        self.start = end;
        Some((name, value))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Policy;

    #[test]
    fn a_tier_name_is_written_as_a_structured_field_string() {
        let text = TierHeaderText::new("a\"b\\c\r\n\u{e9} d", 5, 60);
        assert_eq!(text.policy, r#""a\"b\\c??? d";q=5;w=60"#);
        assert_eq!(text.remaining_prefix, r#""a\"b\\c??? d";r="#);
        assert_eq!(TierHeaderText::new("login", 5, 60).policy, r#""login";q=5;w=60"#);
    }

    #[test]
    fn a_refusal_names_the_whole_family_and_an_allowed_request_all_but_retry_after() {
        let sorted = |names: &[&'static str]| {
            let mut names = names.to_vec();
            names.sort_unstable();
            names
        };
        assert_eq!(sorted(&REFUSED_NAMES), sorted(&RATE_LIMIT_HEADERS));
        let mut allowed = ALLOWED_NAMES.to_vec();
        allowed.push("retry-after");
        assert_eq!(sorted(&allowed), sorted(&RATE_LIMIT_HEADERS));
    }

    #[test]
    fn for_each_visits_what_iter_gives() {
        let text = TierHeaderText::new("login", 5, 60);
        for retry_after in [None, Some(11_500_000_000)] {
            let report = RateReport { tier: 0, remaining: 3, reset_after: 12_000_000_000, retry_after };
            let headers = RateLimitHeaders::new(&text, report);
            let mut visited = Vec::new();
            headers.for_each(|name, value| visited.push((name, value)));
            assert_eq!(visited, headers.iter().collect::<Vec<_>>());
            assert_eq!(visited.len(), if retry_after.is_some() { 6 } else { 5 });
        }
    }

    #[test]
    fn a_reply_built_on_the_shared_set_is_applying_header_by_header() {
        let documents = [
            &br#"{}"#[..],
            br#"{"remove_headers": ["Cache-Control", "retry-after"], "headers": {"Strict-Transport-Security": null}}"#,
            br#"{"headers": {"RateLimit": "mine", "Location": "elsewhere", "X-Extra": "1"}}"#,
            br#"{"preset": "strict", "profiles": [{"path_prefix": "/docs", "headers": {"content-type": "text/x"}}]}"#,
        ];
        let reports = [
            None,
            Some(RateReport { tier: 0, remaining: 3, reset_after: 1_500_000_000, retry_after: None }),
            Some(RateReport { tier: 0, remaining: 0, reset_after: 0, retry_after: Some(2_000_000_000) }),
        ];
        for document in documents {
            let policy = Policy::from_json(document).unwrap();
            for (profile, https, rate) in [0, 1].into_iter().flat_map(|profile| {
                [false, true].into_iter().flat_map(move |https| reports.map(move |rate| (profile, https, rate)))
            }) {
                let edits = policy.response_edits(&ResponsePlan { profile, https, rate });
                assert_eq!(edits.rate_limit_headers().is_empty(), rate.is_none());
                let own: Vec<(String, String)> = [
                    ("Location", "https://x/"),
                    ("retry-after", "1"),
                    ("ratelimit", "forged"),
                    ("STRICT-TRANSPORT-SECURITY", "max-age=1"),
                    ("x-own", "kept"),
                ]
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .into();
                for kind in [ReplyKind::Redirect, ReplyKind::Json] {
                    let mut by_header = own.clone();
                    by_header.extend(kind.extra_headers().iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())));
                    edits.apply(&mut by_header);
                    let reply = edits.clone().reply_headers(own.clone(), kind);
                    assert_eq!(reply.len(), by_header.len());
                    assert_eq!(
                        reply.to_vec(),
                        by_header,
                        "{} profile {profile} https {https} {rate:?} {kind:?}",
                        String::from_utf8_lossy(document)
                    );
                }
            }
        }
    }
}
