//! The policy document as users write it (JSON). [`crate::Policy::from_json`] compiles it.
//!
//! Every field has a default, so `{}` is the seed system's behaviour. Unknown fields are errors:
//! a misspelt option must never be silently ignored by a security layer.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use alloc::collections::BTreeMap;

use serde::Deserialize;

mod read;

/// Header values by name; `null` removes the header from the profile.
pub type HeaderOverrides = BTreeMap<String, Option<String>>;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Built-in header set the default profile starts from.
    pub preset: PresetName,
    /// Per-header overrides on top of the preset.
    pub headers: HeaderOverrides,
    /// Response headers always removed (e.g. `X-Powered-By`).
    pub remove_headers: Vec<String>,
    /// Path-prefix profiles; the longest matching prefix wins.
    pub profiles: Vec<ProfileConfig>,
    /// Hosts this deployment answers for: `example.com`, `*.example.com`, or `*` for any.
    pub allowed_hosts: Vec<String>,
    pub https_redirect: RedirectConfig,
    pub client_ip: ClientIpConfig,
    /// Endpoint tiers; omitted means the seed's nine tiers.
    pub rate_limits: Option<Vec<TierConfig>>,
    pub rate_limit_mode: LimitMode,
    /// Add `RateLimit`/`RateLimit-Policy` to forwarded responses of limited tiers, not only to 429s.
    pub rate_limit_headers_on_success: bool,
    pub limiter: LimiterConfig,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            preset: PresetName::Seed,
            headers: HeaderOverrides::new(),
            remove_headers: vec!["X-Powered-By".to_owned()],
            profiles: Vec::new(),
            allowed_hosts: vec!["localhost".to_owned()],
            https_redirect: RedirectConfig::default(),
            client_ip: ClientIpConfig::default(),
            rate_limits: None,
            rate_limit_mode: LimitMode::Enforce,
            rate_limit_headers_on_success: true,
            limiter: LimiterConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresetName {
    /// Exactly the headers of the audited seed system.
    Seed,
    /// Current OWASP/Helmet advice; scores A+ on the MDN HTTP Observatory.
    Strict,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// Canonical path prefix, matched on whole segments (`/docs` matches `/docs/x`, not `/docsx`).
    pub path_prefix: String,
    /// Start from this preset instead of the default profile.
    #[serde(default)]
    pub preset: Option<PresetName>,
    #[serde(default)]
    pub headers: HeaderOverrides,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedirectConfig {
    pub enabled: bool,
    /// Port of the HTTPS listener clients are sent to; 443 is left out of URLs.
    pub https_port: u16,
    /// Canonical path prefixes served over plain HTTP (ACME HTTP-01 challenges).
    pub exempt_prefixes: Vec<String>,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        Self { enabled: true, https_port: 443, exempt_prefixes: vec!["/.well-known/acme-challenge/".to_owned()] }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientIpConfig {
    /// Proxies (CIDRs) whose forwarding headers are believed.
    pub trusted_proxies: Vec<String>,
    /// The nearest N hops (the peer first) are trusted whatever their address.
    pub trusted_hops: u8,
    /// Which forwarding header carries the chain.
    pub forwarded_header: ForwardedHeader,
    /// IPv6 clients are keyed by this prefix length (one subscriber usually owns a /64).
    pub ipv6_prefix: u8,
}

impl Default for ClientIpConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            trusted_hops: 0,
            forwarded_header: ForwardedHeader::XForwardedFor,
            ipv6_prefix: 64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=…`.
    Forwarded,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Short identifier, `[a-z0-9_-]`; appears in `RateLimit-Policy`.
    pub name: String,
    /// HTTP method, or `*` for any. A `GET` tier also covers `HEAD`.
    pub method: String,
    /// Path template; `{name}` matches one segment.
    pub path: String,
    /// `N/second|minute|hour|day`, or `unlimited`.
    pub limit: String,
    /// Overrides `rate_limit_mode` for this tier.
    #[serde(default)]
    pub mode: Option<LimitMode>,
    /// Overrides `limiter.on_store_error` for this tier (e.g. `deny` for logins).
    #[serde(default)]
    pub on_store_error: Option<StoreErrorMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitMode {
    /// Over-limit requests get a 429.
    Enforce,
    /// Over-limit requests are forwarded and only reported.
    Shadow,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimiterConfig {
    /// Client keys tracked per tier before the table makes room (rounded up to whole buckets).
    pub capacity_per_tier: u32,
    /// Compare-and-swap attempts before a contended request is treated as over the limit.
    pub max_cas_retries: u8,
    /// What a limited request gets when the state store itself fails; a tier may override it.
    pub on_store_error: StoreErrorMode,
    /// 32 hex digits keying every hash of a client (bucket slots, client ids), so outsiders
    /// cannot aim addresses at one bucket. Without it each host makes a random key of its own
    /// (see [`crate::Policy::needs_hash_key`]); hosts that share a store must share the key.
    pub hash_key: Option<String>,
    /// Where limits are counted: in this host (`local`), or by a rate-limit service shared by
    /// a fleet (`global`, Envoy's filter only; other hosts count locally).
    pub backend: Backend,
    /// The rate-limit service, for `backend: "global"`.
    pub global: Option<GlobalConfig>,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        Self {
            capacity_per_tier: 16_384,
            max_cas_retries: 8,
            on_store_error: StoreErrorMode::Local,
            hash_key: None,
            backend: Backend::Local,
            global: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    #[default]
    Local,
    Global,
}

/// Envoy's rate-limit service API, as the filter calls it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalConfig {
    /// The Envoy cluster of the rate-limit service (HTTP/2).
    pub cluster: String,
    /// Longest wait for the service's answer.
    #[serde(default = "default_global_timeout")]
    pub timeout_ms: u32,
    /// The descriptor domain.
    #[serde(default = "default_domain")]
    pub domain: String,
    /// Who decides when the service cannot answer (timeout, error, undecodable answer).
    #[serde(default)]
    pub on_unavailable: Unavailable,
}

fn default_global_timeout() -> u32 {
    20
}

fn default_domain() -> String {
    "portcullis".to_owned()
}

/// What a limited request gets while the rate-limit service cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unavailable {
    /// This Envoy's own exact limiter: at most N× the limit across N Envoys, never unlimited.
    #[default]
    Local,
    /// Forward without limiting.
    Allow,
    /// Refuse with 503 and `Retry-After: 1`.
    Deny,
}

/// What a limited request gets when the limiter's state store fails (a Durable Object that
/// cannot answer, shared data that is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreErrorMode {
    /// A limiter inside this host (the Worker's isolate, the Envoy VM) counts instead: per
    /// host rather than exact, but never unlimited. Hosts count every such decision.
    #[default]
    Local,
    /// Forward without limiting (fails open: only for tiers where availability wins).
    Allow,
    /// Refuse with 503 and `Retry-After: 1`.
    Deny,
}

/// The seed's endpoint tiers (its audit in the README's "Rate limiting"), in the order its per-endpoint list gives them.
pub fn seed_tiers() -> Vec<TierConfig> {
    const SEED: [(&str, &str, &str, &str); 9] = [
        ("login", "POST", "/api/v1/auth/login", "5/minute"),
        ("refresh", "POST", "/api/v1/auth/refresh", "5/minute"),
        ("transcribe", "POST", "/api/v1/transcribe", "10/minute"),
        ("videos", "GET", "/api/v1/videos", "60/minute"),
        ("analyze", "POST", "/api/v1/analyze", "60/minute"),
        ("job-status", "GET", "/api/v1/jobs/{job_id}", "30/minute"),
        ("job-delete", "DELETE", "/api/v1/jobs/{job_id}", "30/minute"),
        ("schedule", "POST", "/api/v1/schedule", "10/minute"),
        ("health", "GET", "/api/v1/health", "unlimited"),
    ];
    SEED.iter()
        .map(|&(name, method, path, limit)| TierConfig {
            name: name.to_owned(),
            method: method.to_owned(),
            path: path.to_owned(),
            limit: limit.to_owned(),
            mode: None,
            on_store_error: None,
        })
        .collect()
}

/// A configuration problem: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Field path in the document, e.g. `rate_limits[3].limit`; `.` for the document itself.
    pub path: String,
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn at(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { path: path.into(), reason: reason.into() }
    }
}

/// The path of a list's element, or of a field in it: `element("rate_limits", 3, ".name")` is
/// `rate_limits[3].name`. Messages are joined, not formatted, so that the filter links no
/// `core::fmt`.
pub(crate) fn element(list: &str, index: usize, rest: &str) -> String {
    [list, "[", itoa::Buffer::new().format(index), "]", rest].concat()
}

/// Compiles each entry of the list at field path `list`; an error names the entry's path. (A
/// loop rather than `collect::<Result<…>>`, whose adapter the filter carried once per list.)
pub(crate) fn compile_each<T>(
    entries: &[String],
    list: &str,
    compile: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, ConfigError> {
    let mut compiled = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        compiled.push(compile(entry).map_err(|reason| ConfigError::at(element(list, index, ""), reason))?);
    }
    Ok(compiled)
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

impl core::error::Error for ConfigError {}

/// Parses the JSON document, naming the field of any error.
pub fn parse(json: &[u8]) -> Result<PolicyConfig, ConfigError> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Ok(PolicyConfig::default());
    }
    let tree = crate::json::parse(json).map_err(ConfigError::from)?;
    read::policy(&tree).map_err(ConfigError::from)
}

impl From<crate::json::Error> for ConfigError {
    fn from(err: crate::json::Error) -> Self {
        Self { path: err.path, reason: err.reason }
    }
}
