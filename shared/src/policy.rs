//! The compiled policy and its one entry point per phase.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::json::quoted;
use percent_encoding::{AsciiSet, CONTROLS, percent_encode};

use crate::client::ClientIdentity;
use crate::config::{
    self, ConfigError, GlobalConfig, LimitMode, PolicyConfig, StoreErrorMode, TierConfig, Unavailable, compile_each,
    element,
};
use crate::decision::{
    ALLOWED_NAMES, Decision, Forward, LocalResponse, Outcome, RATE_LIMIT_HEADERS, RateReport, ResponseEdits,
    ResponsePlan, TierHeaderText,
};
use crate::headers::{HeaderProfile, HeaderSet, ReplyKind};
use crate::host::{HostPattern, parse_authority};
use crate::limiter::gcra::{Gcra, Verdict, ceil_secs};
use crate::limiter::store::BucketStore;
use crate::limiter::{Acquire, HashKey, Limiter, Slot};
use crate::path::{RouteTemplate, canonical, canonicalize, has_prefix};
use crate::rate::Rate;
use crate::request::{Peer, Request, RequestHeaders, Scheme};

/// A decision on a limited request, and whether `on_store_error` made it because the store
/// failed (a degraded decision: hosts count them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    pub decision: Decision,
    pub degraded: bool,
}

/// A policy compiled once from its JSON document; cheap to consult per request.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The default profile's header sets, over HTTP and over HTTPS.
    default_sets: [HeaderSet; 2],
    /// Longest prefix first.
    profiles: Vec<String>,
    /// Each of `profiles`' header sets, over HTTP and over HTTPS.
    profile_sets: Vec<[HeaderSet; 2]>,
    allowed_hosts: Vec<HostPattern>,
    redirect: Option<Redirect>,
    identity: ClientIdentity,
    tiers: Vec<Tier>,
    limiter: Limiter,
    headers_on_success: bool,
    /// By header set index: whether an error reply under that set carries every header of
    /// [`Policy::own_reply_headers`].
    complete_replies: Vec<bool>,
}

#[derive(Debug, Clone)]
struct Redirect {
    https_port: u16,
    exempt: Vec<String>,
}

#[derive(Debug, Clone)]
struct Tier {
    name: String,
    /// `None` matches every method.
    method: Option<String>,
    route: RouteTemplate,
    /// `None` for an unlimited tier; else the rate and the tier's ordinal among limited tiers.
    limit: Option<(Gcra, u32)>,
    /// A limited tier's rate-limit header text that is the same on every response.
    header_text: Option<TierHeaderText>,
    shadow: bool,
    on_store_error: StoreErrorMode,
}

impl Tier {
    fn matches(&self, method: &[u8], canonical: &[u8]) -> bool {
        // The route first: most tiers' routes are literal, and a literal of another length
        // rejects the request in one comparison.
        self.route.matches_canonical(canonical)
            && match &self.method {
                None => true,
                // HEAD is served by GET handlers, so it spends the GET tier's quota.
                Some(m) => {
                    method.eq_ignore_ascii_case(m.as_bytes()) || (m == "GET" && method.eq_ignore_ascii_case(b"HEAD"))
                }
            }
    }
}

/// The first phase of a decision: see [`Policy::begin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// No rate-limit state is involved: this is the decision.
    Decided(Decision),
    /// A limited tier: check this limit where the state lives, then [`Policy::finish`].
    Check(LimitCheck),
}

/// A pending rate-limit check: which limit, for which client, in which bucket. Plain data,
/// small and `Copy`, so a host can keep it across an asynchronous call and send its numbers to
/// wherever the state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitCheck {
    /// The tier's index among all tiers.
    tier: u16,
    /// The tier's ordinal among limited tiers.
    limited: u32,
    slot: Slot,
    client: u128,
    gcra: Gcra,
    shadow: bool,
    on_store_error: StoreErrorMode,
    plan: ResponsePlan,
}

impl LimitCheck {
    /// The bucket (index and fingerprint) this (tier, client) pair lives in, for bucket stores.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// The tier's rate, compiled.
    pub fn gcra(&self) -> Gcra {
        self.gcra
    }

    /// The tier's ordinal among the policy's limited tiers, `0..` in configuration order.
    pub fn limited_tier(&self) -> u32 {
        self.limited
    }

    /// A keyed hash of the client alone (`limiter.hash_key`), for stores keyed by client: the
    /// same on every host with the same key, and no address can be read back from it.
    pub fn client_id(&self) -> u128 {
        self.client
    }

    /// What the response phase needs for this request before its limit is known.
    pub fn plan(&self) -> ResponsePlan {
        self.plan
    }

    /// Whether the tier only reports (shadow mode) rather than refuses.
    pub fn is_shadow(&self) -> bool {
        self.shadow
    }

    /// What the check gets if its store fails: the tier's `on_store_error`, else the limiter's.
    pub fn on_store_error(&self) -> StoreErrorMode {
        self.on_store_error
    }
}

/// Bytes escaped when a request target is copied into `Location`: controls, space, non-ASCII
/// (always) and the characters RFC 3986 never allows raw. CR/LF can therefore never get through.
const LOCATION_ESCAPE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}')
    .add(b'#');

impl Policy {
    /// Parses and compiles a JSON policy document. An empty document is the seed policy.
    pub fn from_json(json: &[u8]) -> Result<Self, ConfigError> {
        Self::compile(&config::parse(json)?)
    }

    pub fn compile(config: &PolicyConfig) -> Result<Self, ConfigError> {
        let remove = compile_each(&config.remove_headers, "remove_headers", crate::headers::validate_name)?;
        let mut default_profile = HeaderProfile::from_preset(config.preset, &remove);
        default_profile.apply_overrides(&config.headers, "headers")?;

        let mut profiles = Vec::new();
        for (i, profile) in config.profiles.iter().enumerate() {
            if !profile.path_prefix.starts_with('/') {
                return Err(ConfigError::at(
                    element("profiles", i, ".path_prefix"),
                    [&quoted(&profile.path_prefix), " must start with /"].concat(),
                ));
            }
            let mut compiled = match profile.preset {
                Some(preset) => HeaderProfile::from_preset(preset, &remove),
                None => default_profile.clone(),
            };
            compiled.apply_overrides(&profile.headers, &element("profiles", i, ".headers"))?;
            // Longest prefix first, equal lengths in document order: inserted in place rather
            // than sorted after, since std's sort is 5 KiB of the filter for a handful of profiles.
            let prefix = canonicalize(profile.path_prefix.as_bytes()).into_owned();
            let at = profiles.partition_point(|(earlier, _): &(String, _)| earlier.len() >= prefix.len());
            profiles.insert(at, (prefix, compiled));
        }
        if profiles.len() >= usize::from(u16::MAX) {
            return Err(ConfigError::at("profiles", "too many profiles"));
        }

        let allowed_hosts = compile_each(&config.allowed_hosts, "allowed_hosts", HostPattern::parse)?;
        if allowed_hosts.is_empty() {
            return Err(ConfigError::at("allowed_hosts", "must list at least one host (use \"*\" to allow any)"));
        }

        let redirect = config.https_redirect.enabled.then(|| Redirect {
            https_port: config.https_redirect.https_port,
            exempt: config
                .https_redirect
                .exempt_prefixes
                .iter()
                .map(|p| canonicalize(p.as_bytes()).into_owned())
                .collect(),
        });
        if redirect.as_ref().is_some_and(|r| r.https_port == 0) {
            return Err(ConfigError::at("https_redirect.https_port", "must be between 1 and 65535"));
        }

        let tier_configs = config.rate_limits.clone().unwrap_or_else(config::seed_tiers);
        let tiers = compile_tiers(&tier_configs, config.rate_limit_mode, config.limiter.on_store_error)?;
        let limited = tiers.iter().filter(|t| t.limit.is_some()).count() as u32;

        let sets = |slot: usize, profile: &HeaderProfile| {
            [false, true].map(|https| {
                HeaderSet::compile(slot * 2 + usize::from(https), profile, https, &ALLOWED_NAMES, &RATE_LIMIT_HEADERS)
            })
        };
        let profile_sets = profiles.iter().enumerate().map(|(i, (_, profile))| sets(i + 1, profile)).collect();
        let mut policy = Self {
            default_sets: sets(0, &default_profile),
            profiles: profiles.into_iter().map(|(prefix, _)| prefix).collect(),
            profile_sets,
            allowed_hosts,
            redirect,
            identity: ClientIdentity::compile(&config.client_ip)?,
            tiers,
            limiter: Limiter::compile(&config.limiter, limited)?,
            headers_on_success: config.rate_limit_headers_on_success,
            complete_replies: Vec::new(),
        };
        policy.complete_replies = policy.find_complete_replies();
        Ok(policy)
    }

    /// An error reply of every header set (all error replies are [`Policy::local_json`]'s),
    /// checked against the own 400's names once, at configuration.
    fn find_complete_replies(&self) -> Vec<bool> {
        let mut complete = vec![false; self.header_sets().count()];
        let own = [self.own_reply_headers(false), self.own_reply_headers(true)];
        for profile in 0..=self.profile_sets.len() {
            for https in [false, true] {
                let plan = ResponsePlan { profile: profile as u16, https, rate: None };
                let own = &own[usize::from(https)];
                let Decision::Respond(reply) = self.local_json(400, plan, Outcome::BadHost, "", "", Vec::new()) else {
                    continue;
                };
                if let Some(slot) = complete.get_mut(self.header_set(&plan).index()) {
                    *slot = own.iter().all(|(name, _)| reply.header(name).is_some());
                }
            }
        }
        complete
    }

    /// Whether the policy's own error reply under `plan` already carries every header of
    /// [`Policy::own_reply_headers`], so that a host which adds those to its error replies
    /// when absent (Envoy's `local_reply_config`) leaves it exactly as the policy made it.
    pub fn reply_is_complete(&self, plan: &ResponsePlan) -> bool {
        self.complete_replies.get(self.header_set(plan).index()).copied().unwrap_or(false)
    }

    /// The most buckets the rate-limit store will ever hold (its memory bound).
    pub fn bucket_count(&self) -> u32 {
        self.limiter.bucket_count()
    }

    /// Decides a request in one phase, for hosts whose rate-limit state is in process: `now`
    /// is Unix time in nanoseconds; `store` holds the buckets. The same as [`Policy::begin`],
    /// then [`Policy::acquire`] over `store`, then [`Policy::finish`].
    pub fn decide<H, S>(&self, request: &Request<'_, H>, now: u64, store: &S) -> Decision
    where
        H: RequestHeaders + ?Sized,
        S: BucketStore + ?Sized,
    {
        match self.begin(request) {
            Begin::Decided(decision) => decision,
            Begin::Check(check) => self.finish(&check, self.acquire(&check, store, now)),
        }
    }

    /// The first phase of a decision; no state and no clock. Either the decision is made
    /// (redirect, bad host, an untiered or unlimited path), or a [`LimitCheck`] of plain data
    /// says which limit to check for which client. The host runs that check where the state
    /// lives ([`Policy::acquire`] over a bucket store, the same GCRA step in a Durable Object
    /// or Redis) and hands the answer to [`Policy::finish`].
    pub fn begin<H>(&self, request: &Request<'_, H>) -> Begin
    where
        H: RequestHeaders + ?Sized,
    {
        let raw_target = request.path.filter(|p| !p.is_empty()).unwrap_or(b"/");
        let path = canonical(raw_target);
        // The peer is fetched, parsed and judged at most once, and only when needed: to believe a
        // forwarded scheme (if any peer can be a trusted proxy) and for a limited tier's key.
        let mut peer = None;
        let https = request.scheme == Scheme::Https
            || (self.identity.trusts_any_peer()
                && peer.get_or_insert_with(|| self.identity.peer(&request.peer)).is_trusted_proxy()
                && forwarded_proto_is_https(request.headers));
        let plan = ResponsePlan { profile: self.profile_for(&path), https, rate: None };

        let host =
            request.authority.and_then(parse_authority).filter(|h| self.allowed_hosts.iter().any(|p| p.matches(h)));
        let Some(host) = host else {
            return Begin::Decided(self.local_json(
                400,
                plan,
                Outcome::BadHost,
                "bad_host",
                "The Host header names no host this service answers for.",
                Vec::new(),
            ));
        };

        if let Some(redirect) = &self.redirect
            && !https
            && !redirect.exempt.iter().any(|prefix| has_prefix(&path, prefix))
        {
            return Begin::Decided(self.redirect(redirect, request.method, &host.url_form(), raw_target, plan));
        }

        let forward = Begin::Decided(Decision::Forward(Forward { plan, outcome: Outcome::Forwarded }));
        let Some((ordinal, tier)) = self.tiers.iter().enumerate().find(|(_, t)| t.matches(request.method, &path))
        else {
            return forward;
        };
        let Some((gcra, limited)) = &tier.limit else {
            return forward;
        };
        let peer = peer.unwrap_or_else(|| self.identity.peer(&request.peer));
        let client_id = self.limiter.client_id(&self.identity.identify(peer, request.headers));
        Begin::Check(LimitCheck {
            tier: ordinal as u16,
            limited: *limited,
            slot: self.limiter.slot(*limited, client_id),
            client: client_id,
            gcra: *gcra,
            shadow: tier.shadow,
            on_store_error: tier.on_store_error,
            plan,
        })
    }

    /// Runs `check` over a bucket store: the compare-and-swap loop around the pure GCRA step
    /// ([`crate::limiter::table::Bucket::admit`]).
    pub fn acquire<S: BucketStore + ?Sized>(&self, check: &LimitCheck, store: &S, now: u64) -> Acquire {
        self.limiter.acquire(store, check.slot, &check.gcra, now)
    }

    /// The second phase: the decision `check` leads to given the limiter's answer, with the
    /// same status, headers and body as a one-phase [`Policy::decide`].
    pub fn finish(&self, check: &LimitCheck, answer: Acquire) -> Decision {
        let plan = check.plan;
        let Some(tier) = self.tiers.get(usize::from(check.tier)) else {
            // A check from another policy: nothing to limit it by, and nothing to forward it
            // unprotected with either.
            return self.store_failed(plan);
        };
        let report = |verdict: Verdict, refused: bool| RateReport {
            tier: check.tier,
            remaining: verdict.remaining,
            reset_after: verdict.reset_after,
            retry_after: refused.then_some(verdict.retry_after),
        };
        let forward = |rate, outcome| Decision::Forward(Forward { plan: ResponsePlan { rate, ..plan }, outcome });

        match answer {
            Acquire::Allowed(verdict) => forward(Some(report(verdict, false)), Outcome::Forwarded),
            Acquire::Denied(verdict) if check.shadow => forward(Some(report(verdict, false)), Outcome::ShadowLimited),
            Acquire::Denied(verdict) => self.too_many(tier, plan, report(verdict, true)),
            Acquire::Contended => {
                // Every race for this bucket was lost, which only happens under a flood on it:
                // count the request as over the limit and ask for one emission interval.
                let wait = check.gcra.emission();
                let refusal = RateReport { tier: check.tier, remaining: 0, reset_after: wait, retry_after: Some(wait) };
                if check.shadow { forward(None, Outcome::ShadowLimited) } else { self.too_many(tier, plan, refusal) }
            }
            Acquire::StoreFailed(_) => match check.on_store_error {
                StoreErrorMode::Allow => forward(None, Outcome::StoreErrorAllowed),
                // `local` needs the host's own limiter, which only the host has
                // ([`Policy::degrade`]); without it the request is refused, not let through.
                StoreErrorMode::Local | StoreErrorMode::Deny => self.store_failed(plan),
            },
        }
    }

    /// The decision for `check` after its store failed, as `on_store_error` says: `local` runs
    /// the check over `local` (the host's own store: the isolate's or the VM's, never the one
    /// that failed), `allow` forwards unlimited, `deny` refuses with 503. A host counts every
    /// call as a degraded decision.
    pub fn degrade<S: BucketStore + ?Sized>(&self, check: &LimitCheck, local: &S, now: u64) -> Decision {
        match check.on_store_error {
            StoreErrorMode::Local => self.finish(check, self.acquire(check, local, now)),
            StoreErrorMode::Allow => {
                Decision::Forward(Forward { plan: check.plan, outcome: Outcome::StoreErrorAllowed })
            }
            StoreErrorMode::Deny => self.store_failed(check.plan),
        }
    }

    /// Whether the host must give this policy a hash key ([`Policy::with_hash_key`]): the
    /// configuration names none, and no host has given one yet.
    pub fn needs_hash_key(&self) -> bool {
        self.limiter.key.is_none()
    }

    /// Whether `limiter.hash_key` came from the configuration.
    pub fn hash_key_configured(&self) -> bool {
        self.limiter.key_configured
    }

    /// This policy hashing clients with `key` (the host's random one), unless the configuration
    /// names its own. Until a policy has a key it hashes with a fixed one that anyone can read,
    /// so every host gives it one before it serves.
    pub fn with_hash_key(mut self, key: HashKey) -> Self {
        self.limiter.set_host_key(key);
        self
    }

    /// The rate of the limited tier named `name`: for a rate-limit service that is sent tier
    /// names and keeps the policy's rates.
    pub fn tier_limit(&self, name: &str) -> Option<Gcra> {
        self.tiers.iter().find(|tier| tier.name == name).and_then(|tier| tier.limit.map(|(gcra, _)| gcra))
    }

    /// A keyed hash (`limiter.hash_key`) of `bytes`: how a rate-limit store names a client
    /// it is told about, so that no address is kept where the key is not.
    pub fn keyed_id(&self, bytes: &[u8]) -> u128 {
        self.limiter.keyed_id(bytes)
    }

    /// The fleet's rate-limit service, when `limiter.backend` is `global`.
    pub fn global_limiter(&self) -> Option<&GlobalConfig> {
        self.limiter.global.as_ref()
    }

    /// The decision for `check` when the rate-limit service cannot answer, as
    /// `limiter.global.on_unavailable` says: this host's own limiter over `store`, forward
    /// unlimited, or refuse. Without a global backend, the local limiter.
    ///
    /// `store` is this host's bucket store and `own` its last resort should that fail too, as
    /// in [`Policy::limit_locally`].
    pub fn unavailable<S, O>(&self, check: &LimitCheck, store: &S, own: &O, now: u64) -> Limited
    where
        S: BucketStore + ?Sized,
        O: BucketStore + ?Sized,
    {
        let decided = |decision| Limited { decision, degraded: false };
        match self.limiter.global.as_ref().map_or(Unavailable::Local, |g| g.on_unavailable) {
            Unavailable::Local => self.limit_locally(check, store, own, now),
            Unavailable::Allow => {
                decided(Decision::Forward(Forward { plan: check.plan, outcome: Outcome::StoreErrorAllowed }))
            }
            Unavailable::Deny => decided(self.store_failed(check.plan)),
        }
    }

    /// Both phases over this host's bucket `store`; should the store fail, `on_store_error`
    /// decides over `own` ([`Policy::degrade`]), and the answer says so.
    pub fn limit_locally<S, O>(&self, check: &LimitCheck, store: &S, own: &O, now: u64) -> Limited
    where
        S: BucketStore + ?Sized,
        O: BucketStore + ?Sized,
    {
        match self.acquire(check, store, now) {
            Acquire::StoreFailed(_) => Limited { decision: self.degrade(check, own, now), degraded: true },
            answer => Limited { decision: self.finish(check, answer), degraded: false },
        }
    }

    /// The name of the tier `check` limits.
    pub fn tier_name(&self, check: &LimitCheck) -> &str {
        self.tiers.get(usize::from(check.tier)).map_or("", |tier| tier.name.as_str())
    }

    fn store_failed(&self, plan: ResponsePlan) -> Decision {
        self.local_json(
            503,
            plan,
            Outcome::StoreErrorDenied,
            "limiter_unavailable",
            "Rate limiting is unavailable; try again shortly.",
            vec![("retry-after".to_owned(), "1".to_owned())],
        )
    }

    /// Header edits for a response produced under `plan`.
    pub fn response_edits(&self, plan: &ResponsePlan) -> ResponseEdits<'_> {
        let rate = plan.rate.filter(|r| r.retry_after.is_some() || self.headers_on_success).and_then(|report| {
            let text = self.tiers.get(usize::from(report.tier))?.header_text.as_ref()?;
            Some((text, report))
        });
        ResponseEdits::new(self.header_set(plan), rate)
    }

    /// The header set a response under `plan` gets.
    fn header_set(&self, plan: &ResponsePlan) -> &HeaderSet {
        let sets = match plan.profile {
            0 => &self.default_sets,
            n => self.profile_sets.get(usize::from(n) - 1).unwrap_or(&self.default_sets),
        };
        let [http, https] = sets;
        if plan.https { https } else { http }
    }

    /// Every header set a response can get, in [`HeaderSet::index`] order: hosts that prepare
    /// them in their own form do it once, here.
    pub fn header_sets(&self) -> impl Iterator<Item = &HeaderSet> {
        core::iter::once(&self.default_sets).chain(&self.profile_sets).flatten()
    }

    /// The headers the policy puts on a reply it makes itself (its 400 for a foreign `Host`),
    /// over HTTPS or HTTP, less `content-type`: what a host's own error replies (Envoy's
    /// `local_reply_config`) must carry too, and so what such a host adds to the policy's replies
    /// that lack any of them.
    pub fn own_reply_headers(&self, https: bool) -> Vec<(String, String)> {
        let headers: [(&str, &[u8]); 0] = [];
        let request = Request {
            method: b"GET",
            scheme: if https { Scheme::Https } else { Scheme::Http },
            authority: Some(b"\0"),
            path: Some(b"/"),
            peer: Peer::Unknown,
            headers: &headers[..],
        };
        match self.begin(&request) {
            Begin::Decided(Decision::Respond(reply)) => {
                let own = reply.headers.iter().filter(|(name, _)| !name.eq_ignore_ascii_case("content-type"));
                own.map(|(name, value)| (name.to_owned(), value.to_owned())).collect()
            }
            _ => Vec::new(),
        }
    }

    /// A plan for responses the host produces without a request decision (e.g. a codec error).
    pub fn fallback_plan(&self, https: bool) -> ResponsePlan {
        ResponsePlan { profile: 0, https, rate: None }
    }

    fn profile_for(&self, canonical: &[u8]) -> u16 {
        self.profiles.iter().position(|prefix| has_prefix(canonical, prefix)).map_or(0, |i| (i + 1) as u16)
    }

    fn redirect(&self, redirect: &Redirect, method: &[u8], host: &str, target: &[u8], plan: ResponsePlan) -> Decision {
        let status =
            if method.eq_ignore_ascii_case(b"GET") || method.eq_ignore_ascii_case(b"HEAD") { 301 } else { 308 };
        let mut location = String::with_capacity(16 + host.len() + target.len());
        location.push_str("https://");
        location.push_str(host);
        if redirect.https_port != 443 {
            location.push(':');
            location.push_str(itoa::Buffer::new().format(redirect.https_port));
        }
        if !target.starts_with(b"/") {
            location.push('/');
        }
        location.extend(percent_encode(target, LOCATION_ESCAPE));
        let headers =
            self.response_edits(&plan).reply_headers(vec![("location".to_owned(), location)], ReplyKind::Redirect);
        Decision::Respond(LocalResponse { status, headers, body: String::new(), plan, outcome: Outcome::Redirected })
    }

    fn too_many(&self, tier: &Tier, plan: ResponsePlan, report: RateReport) -> Decision {
        let plan = ResponsePlan { rate: Some(report), ..plan };
        let wait = ceil_secs(report.retry_after.unwrap_or(0)).max(1);
        // Tier names are [a-z0-9_-] (checked at configuration), so this is JSON as it stands,
        // and cheaper than serialising a message made by `format!` on every refusal.
        let mut digits = itoa::Buffer::new();
        let wait = digits.format(wait);
        let mut body = String::with_capacity(REFUSAL_BODY.iter().map(|part| part.len()).sum::<usize>() + 32);
        for part in [REFUSAL_BODY[0], &tier.name, REFUSAL_BODY[1], wait, REFUSAL_BODY[2]] {
            body.push_str(part);
        }
        let headers = self.response_edits(&plan).reply_headers(Vec::new(), ReplyKind::Json);
        Decision::Respond(LocalResponse { status: 429, headers, body, plan, outcome: Outcome::RateLimited })
    }

    fn local_json(
        &self,
        status: u16,
        plan: ResponsePlan,
        outcome: Outcome,
        error: &str,
        message: &str,
        own: Vec<(String, String)>,
    ) -> Decision {
        // `{"error":…,"message":…}`: the bytes serde_json writes for `json!` (its map sorts
        // the keys), without linking a serializer into the filter for two strings.
        let mut body = String::with_capacity(32 + error.len() + message.len());
        body.push_str("{\"error\":");
        crate::json::write_string(&mut body, error);
        body.push_str(",\"message\":");
        crate::json::write_string(&mut body, message);
        body.push('}');
        let headers = self.response_edits(&plan).reply_headers(own, ReplyKind::Json);
        Decision::Respond(LocalResponse { status, headers, body, plan, outcome })
    }
}

/// A 429's body around its tier's name and its wait in seconds: what [`Policy::local_json`]
/// would write for error `rate_limited` and message "Too many requests to {tier}; retry after
/// {wait} s.".
const REFUSAL_BODY: [&str; 3] =
    [r#"{"error":"rate_limited","message":"Too many requests to "#, "; retry after ", r#" s."}"#];

/// `X-Forwarded-Proto` as the nearest proxy wrote it (the rightmost value).
fn forwarded_proto_is_https<H: RequestHeaders + ?Sized>(headers: &H) -> bool {
    let mut last = None;
    headers.for_each_value("x-forwarded-proto", &mut |value| {
        last = value.rsplit(|&b| b == b',').next().map(|v| v.trim_ascii().eq_ignore_ascii_case(b"https"));
    });
    last.unwrap_or(false)
}

fn compile_tiers(
    configs: &[TierConfig],
    mode: LimitMode,
    on_store_error: StoreErrorMode,
) -> Result<Vec<Tier>, ConfigError> {
    let mut tiers: Vec<Tier> = Vec::with_capacity(configs.len());
    let mut limited = 0u32;
    for (i, tier) in configs.iter().enumerate() {
        let at = |field: &str| element("rate_limits", i, &[".", field].concat());
        let name_ok = !tier.name.is_empty()
            && tier.name.len() <= 64
            && tier.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(ConfigError::at(
                at("name"),
                [&quoted(&tier.name), " is not 1-64 characters of [a-z0-9_-]"].concat(),
            ));
        }
        if tiers.iter().any(|t| t.name == tier.name) {
            return Err(ConfigError::at(at("name"), [&quoted(&tier.name), " is used by an earlier tier"].concat()));
        }
        let method = match tier.method.as_str() {
            "*" => None,
            m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) => Some(m.to_ascii_uppercase()),
            m => {
                return Err(ConfigError::at(at("method"), [&quoted(m), " is not an HTTP method or *"].concat()));
            }
        };
        let route = RouteTemplate::parse(&tier.path).map_err(|r| ConfigError::at(at("path"), r))?;
        let limit = if tier.limit.trim().eq_ignore_ascii_case("unlimited") {
            None
        } else {
            let rate: Rate =
                tier.limit.parse().map_err(|e: crate::rate::RateParseError| ConfigError::at(at("limit"), e.0))?;
            limited += 1;
            Some((Gcra::new(rate), limited - 1))
        };
        let shadow = tier.mode.unwrap_or(mode) == LimitMode::Shadow;
        let on_store_error = tier.on_store_error.unwrap_or(on_store_error);
        let header_text = limit.map(|(gcra, _)| TierHeaderText::new(&tier.name, gcra.limit(), gcra.period_secs()));
        tiers.push(Tier { name: tier.name.clone(), method, route, limit, header_text, shadow, on_store_error });
    }
    if tiers.len() >= usize::from(u16::MAX) {
        return Err(ConfigError::at("rate_limits", "too many tiers"));
    }
    Ok(tiers)
}
