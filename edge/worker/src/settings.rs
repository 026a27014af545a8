//! The Worker's settings, read from its bindings once per isolate (and again only if they change).
//!
//! Only the policy document goes to the core; Worker-only settings live in their own variables,
//! because the core rejects fields it does not know.

use std::cell::RefCell;
use std::rc::Rc;

use portcullis_core::rate::Rate;
use portcullis_core::{HashKey, Policy, config};
use worker::Env;

/// The policy document: a JSON string, or a JSON object (a `[vars]` table in wrangler.toml).
pub const POLICY_VAR: &str = "PORTCULLIS_POLICY";
/// Where allowed requests go: `https://origin.example.com` (a path prefix is kept).
pub const ORIGIN_VAR: &str = "ORIGIN_URL";
/// `durable_object` (default, exact) or `ratelimits` (the native binding, approximate).
pub const LIMITER_VAR: &str = "PORTCULLIS_LIMITER";
/// The limiter's secret hash key, 32 hex digits: a `wrangler secret`, unless the policy names
/// `limiter.hash_key`. Required: isolates come and go, so a random key of one isolate would
/// split every client's count, and a public one lets outsiders aim addresses at one bucket.
pub const HASH_KEY_VAR: &str = "PORTCULLIS_HASH_KEY";
/// The `mtls_certificates` binding whose client certificate the Worker presents to the origin
/// (an origin with `PORTCULLIS_CLIENT_CA` admits only certificates of its client CA). Optional:
/// without it the Worker fetches `ORIGIN_URL` without a client certificate, which such an
/// origin refuses (502), never bypasses.
pub const ORIGIN_MTLS_BINDING: &str = "ORIGIN_MTLS";
/// The Durable Object namespace holding rate-limit buckets.
pub const RATE_LIMITER_BINDING: &str = "RATE_LIMITER";

/// Where rate-limit state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimiterMode {
    /// One Durable Object per bucket of the core's table: exact across isolates and locations.
    DurableObject,
    /// Cloudflare's `ratelimits` binding, one per limited tier: per location, eventually
    /// consistent, and it reports neither remaining quota nor reset time.
    Ratelimits,
}

/// Everything a request needs, compiled once.
#[derive(Debug)]
pub struct Settings {
    pub policy: Policy,
    pub origin: OriginUrl,
    pub limiter: LimiterMode,
    /// Set in [`LimiterMode::Ratelimits`].
    pub ratelimits: Option<RatelimitsSettings>,
}

impl Settings {
    /// The policy that decides requests and edits responses: in `ratelimits` mode the one
    /// without rate-limit headers on forwarded responses.
    pub fn active_policy(&self) -> &Policy {
        self.ratelimits.as_ref().map_or(&self.policy, |r| &r.quiet)
    }
}

/// The `ratelimits` mode: one binding per limited tier, named `RATELIMIT_<TIER>`.
#[derive(Debug)]
pub struct RatelimitsSettings {
    /// The same policy without rate-limit headers on forwarded responses: the binding reports no
    /// remaining quota, so there is nothing true to put in them.
    pub quiet: Policy,
    /// Limited tiers in the core's order (`LimitCheck::limited_tier`): (binding name, rate).
    pub tiers: Vec<(String, Rate)>,
}

/// The `ratelimits` binding a limited tier needs.
pub fn ratelimit_binding(tier: &str) -> String {
    format!("RATELIMIT_{}", tier.to_ascii_uppercase().replace('-', "_"))
}

/// A setting that cannot be used: the variable and, inside a policy, the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    pub variable: &'static str,
    pub problem: String,
}

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.variable, self.problem)
    }
}

/// The raw texts the settings are compiled from; a change (new deployment) recompiles.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Raw {
    policy: Option<String>,
    origin: Option<String>,
    limiter: Option<String>,
    hash_key: Option<String>,
}

type Compiled = Rc<Result<Settings, SettingsError>>;

thread_local! {
    static CACHE: RefCell<Option<(Raw, Compiled)>> = const { RefCell::new(None) };
    static SEED: Option<Rc<Policy>> = Policy::from_json(b"{}").ok().map(Rc::new);
}

/// The settings for this request: compiled on first use and whenever a variable changes.
pub fn load(env: &Env) -> Compiled {
    let raw = Raw {
        policy: policy_text(env),
        origin: env.var(ORIGIN_VAR).ok().map(|v| v.to_string()),
        limiter: env.var(LIMITER_VAR).ok().map(|v| v.to_string()),
        // A secret; a plain variable is read too (`wrangler dev --var`, local tests).
        hash_key: env.secret(HASH_KEY_VAR).or_else(|_| env.var(HASH_KEY_VAR)).ok().map(|v| v.to_string()),
    };
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some((cached_raw, compiled)) = cache.as_ref()
            && *cached_raw == raw
        {
            return compiled.clone();
        }
        let compiled = Rc::new(compile(&raw, &|name| env.rate_limiter(name).is_ok()));
        *cache = Some((raw, compiled.clone()));
        compiled
    })
}

/// The seed policy: its headers go on the 500 a broken configuration produces.
pub fn seed_policy() -> Option<Rc<Policy>> {
    SEED.with(Clone::clone)
}

fn policy_text(env: &Env) -> Option<String> {
    if let Ok(var) = env.var(POLICY_VAR) {
        return Some(var.to_string());
    }
    // A `[vars]` table arrives as a JSON object binding rather than a string.
    env.object_var::<serde_json::Value>(POLICY_VAR).ok().map(|value| value.to_string())
}

fn compile(raw: &Raw, has_binding: &dyn Fn(&str) -> bool) -> Result<Settings, SettingsError> {
    let document = match &raw.policy {
        // No variable at all is a deployment mistake, not a request for the seed policy: the
        // allowed hosts would be `localhost` only. Say so instead of guessing.
        None => {
            return Err(SettingsError {
                variable: POLICY_VAR,
                problem: "is not set (use \"{}\" for the seed policy)".into(),
            });
        }
        Some(text) => config::parse(text.as_bytes())
            .map_err(|err| SettingsError { variable: POLICY_VAR, problem: err.to_string() })?,
    };
    let policy =
        Policy::compile(&document).map_err(|err| SettingsError { variable: POLICY_VAR, problem: err.to_string() })?;
    let key = hash_key(raw.hash_key.as_deref(), policy.hash_key_configured())?;
    let keyed = |policy: Policy| match key {
        Some(key) => policy.with_hash_key(key),
        None => policy,
    };
    let policy = keyed(policy);
    let origin = parse_origin(raw.origin.as_deref())?;
    let limiter = match raw.limiter.as_deref().map(str::trim) {
        None | Some("") | Some("durable_object") => LimiterMode::DurableObject,
        Some("ratelimits") => LimiterMode::Ratelimits,
        Some(other) => {
            return Err(SettingsError {
                variable: LIMITER_VAR,
                problem: format!("{other:?} is not \"durable_object\" or \"ratelimits\""),
            });
        }
    };
    let ratelimits = match limiter {
        LimiterMode::DurableObject => None,
        LimiterMode::Ratelimits => {
            let mut ratelimits = ratelimits_settings(&document, has_binding)?;
            ratelimits.quiet = keyed(ratelimits.quiet);
            Some(ratelimits)
        }
    };
    Ok(Settings { policy, origin, limiter, ratelimits })
}

fn ratelimits_settings(
    document: &config::PolicyConfig,
    has_binding: &dyn Fn(&str) -> bool,
) -> Result<RatelimitsSettings, SettingsError> {
    let quiet = Policy::compile(&config::PolicyConfig { rate_limit_headers_on_success: false, ..document.clone() })
        .map_err(|err| SettingsError { variable: POLICY_VAR, problem: err.to_string() })?;
    let mut tiers = Vec::new();
    let configured = document.rate_limits.clone().unwrap_or_else(config::seed_tiers);
    for (i, tier) in configured.iter().enumerate() {
        if tier.limit.trim().eq_ignore_ascii_case("unlimited") {
            continue;
        }
        // The policy compiled, so the limit parses.
        let Ok(rate) = tier.limit.parse::<Rate>() else {
            continue;
        };
        let binding = ratelimit_binding(&tier.name);
        if !matches!(rate.period_secs(), 10 | 60) {
            return Err(SettingsError {
                variable: LIMITER_VAR,
                problem: format!(
                    "\"ratelimits\" cannot express rate_limits[{i}].limit {:?}: the binding's period is 10 or 60 seconds (use durable_object)",
                    tier.limit
                ),
            });
        }
        if !has_binding(&binding) {
            return Err(SettingsError {
                variable: LIMITER_VAR,
                problem: format!(
                    "\"ratelimits\" needs a ratelimits binding {binding} (limit = {}, period = {}) for tier {:?}",
                    rate.limit(),
                    rate.period_secs(),
                    tier.name
                ),
            });
        }
        tiers.push((binding, rate));
    }
    Ok(RatelimitsSettings { quiet, tiers })
}

/// The secret's key for a policy that names none (`None`: the policy's own; the secret may
/// then not be set, so that two keys never disagree).
fn hash_key(secret: Option<&str>, configured: bool) -> Result<Option<HashKey>, SettingsError> {
    let error = |problem: String| SettingsError { variable: HASH_KEY_VAR, problem };
    match (secret.map(str::trim), configured) {
        (None, true) => Ok(None),
        (Some(_), true) => Err(error("is set and the policy names limiter.hash_key too; keep one of them".into())),
        (None, false) => Err(error(
            "is not set: the Worker hashes clients with a secret key of 32 hex digits \
             (openssl rand -hex 16 | wrangler secret put PORTCULLIS_HASH_KEY)"
                .into(),
        )),
        (Some(hex), false) => {
            let key = HashKey::parse_hex(hex);
            key.map(Some).ok_or_else(|| error(format!("is not 32 hexadecimal digits ({} characters)", hex.len())))
        }
    }
}

/// `ORIGIN_URL`, checked: `http(s)://host[:port][/prefix]`, kept without a trailing `/` so
/// that a request's target (which starts with one) follows it directly.
///
/// Parsed with `http::Uri` rather than the `url` crate: `url` brings IDNA's Unicode tables into
/// the Worker's module (a seventh of its gzipped size) for one check at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginUrl(String);

impl std::fmt::Display for OriginUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn parse_origin(text: Option<&str>) -> Result<OriginUrl, SettingsError> {
    let error = |problem: String| SettingsError { variable: ORIGIN_VAR, problem };
    let text = text.ok_or_else(|| error("is not set".into()))?;
    let uri: http::Uri = text.trim().parse().map_err(|e| error(format!("{text:?} is not a URL: {e}")))?;
    let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https") {
        return Err(error(format!("{text:?} is not an http(s) URL")));
    }
    let host = uri.host().unwrap_or_default();
    let userinfo = uri.authority().is_some_and(|a| a.as_str().contains('@'));
    if host.is_empty() || userinfo || uri.query().is_some() || text.contains('#') {
        return Err(error(format!("{text:?} must be scheme://host[:port][/prefix] without query or fragment")));
    }
    let authority = uri.authority().map_or("", |a| a.as_str()).to_ascii_lowercase();
    let prefix = uri.path().trim_end_matches('/');
    Ok(OriginUrl(format!("{scheme}://{authority}{prefix}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff";

    fn raw(policy: Option<&str>, origin: Option<&str>, limiter: Option<&str>) -> Raw {
        Raw {
            policy: policy.map(Into::into),
            origin: origin.map(Into::into),
            limiter: limiter.map(Into::into),
            hash_key: Some(KEY.into()),
        }
    }

    fn compile(raw: &Raw) -> Result<Settings, SettingsError> {
        super::compile(raw, &|_| true)
    }

    fn error(raw: &Raw) -> SettingsError {
        match compile(raw) {
            Ok(_) => panic!("{raw:?} compiled"),
            Err(err) => err,
        }
    }

    #[test]
    fn errors_name_the_variable_and_the_field() {
        let bad = error(&raw(
            Some(r#"{"rate_limits":[{"name":"x","method":"GET","path":"/a","limit":"5/minit"}]}"#),
            Some("https://origin.example"),
            None,
        ));
        assert_eq!(bad.variable, POLICY_VAR);
        assert!(bad.to_string().contains("rate_limits[0].limit"), "{bad}");
        assert_eq!(error(&raw(None, Some("https://o.example"), None)).variable, POLICY_VAR);
        assert_eq!(error(&raw(Some("{}"), None, None)).variable, ORIGIN_VAR);
        assert_eq!(error(&raw(Some("{}"), Some("ftp://x"), None)).variable, ORIGIN_VAR);
        assert_eq!(error(&raw(Some("{}"), Some("https://o/?q"), None)).variable, ORIGIN_VAR);
        for bad in ["not a url", "https://o/#f", "https://user@o/", "https:///x", "/relative"] {
            assert_eq!(error(&raw(Some("{}"), Some(bad), None)).variable, ORIGIN_VAR, "{bad}");
        }
        let origin = |text: &str| compile(&raw(Some("{}"), Some(text), None)).unwrap().origin.to_string();
        assert_eq!(origin("https://Origin.Example:9443/"), "https://origin.example:9443");
        assert_eq!(origin(" http://127.0.0.1:9000/api/ "), "http://127.0.0.1:9000/api");
        assert_eq!(origin("https://[::1]:9443"), "https://[::1]:9443");
        assert_eq!(error(&raw(Some("{}"), Some("https://o"), Some("kv"))).variable, LIMITER_VAR);
    }

    #[test]
    fn the_hash_key_is_required_from_the_secret_or_the_policy() {
        let unkeyed = Raw { hash_key: None, ..raw(Some("{}"), Some("https://o"), None) };
        let err = error(&unkeyed);
        assert_eq!(err.variable, HASH_KEY_VAR);
        assert!(err.problem.contains("wrangler secret put PORTCULLIS_HASH_KEY"), "{err}");
        let bad = Raw { hash_key: Some("xyz".into()), ..unkeyed.clone() };
        assert!(error(&bad).to_string().starts_with("PORTCULLIS_HASH_KEY: is not 32 hexadecimal digits"));
        let in_policy = format!(r#"{{"limiter": {{"hash_key": "{KEY}"}}}}"#);
        let policy_only = Raw { hash_key: None, ..raw(Some(&in_policy), Some("https://o"), None) };
        let from_policy = compile(&policy_only).map_err(|e| e.to_string()).unwrap();
        let both = Raw { hash_key: Some(KEY.into()), ..policy_only.clone() };
        assert!(error(&both).problem.contains("keep one of them"));
        let from_secret = compile(&raw(Some("{}"), Some("https://o"), None)).map_err(|e| e.to_string()).unwrap();
        assert!(!from_secret.policy.needs_hash_key());
        assert_eq!(
            from_secret.policy.keyed_id(b"client"),
            from_policy.policy.keyed_id(b"client"),
            "the secret and the policy field name one key"
        );
        let ratelimits = compile(&raw(Some("{}"), Some("https://o"), Some("ratelimits"))).map_err(|e| e.to_string());
        let quiet = &ratelimits.unwrap().ratelimits.unwrap().quiet;
        assert_eq!(quiet.keyed_id(b"client"), from_secret.policy.keyed_id(b"client"), "both policies keyed");
    }

    #[test]
    fn good_settings_compile() {
        let settings = compile(&raw(Some("{}"), Some("http://127.0.0.1:9/base"), None));
        let settings = settings.map_err(|e| e.to_string());
        assert!(matches!(settings, Ok(Settings { limiter: LimiterMode::DurableObject, .. })));
        let ratelimits = compile(&raw(Some("{}"), Some("https://o"), Some("ratelimits")));
        let Ok(Settings { limiter: LimiterMode::Ratelimits, ratelimits: Some(ratelimits), .. }) = ratelimits else {
            panic!("ratelimits mode did not compile");
        };
        assert_eq!(ratelimits.tiers.len(), 8, "the seed's limited tiers");
        assert_eq!(ratelimits.tiers[0].0, "RATELIMIT_LOGIN");
        assert_eq!(ratelimits.tiers[5].0, "RATELIMIT_JOB_STATUS");
    }

    #[test]
    fn ratelimits_mode_names_what_it_cannot_do() {
        let hourly = r#"{"rate_limits":[{"name":"a","method":"GET","path":"/a","limit":"5/hour"}]}"#;
        let err = error(&raw(Some(hourly), Some("https://o"), Some("ratelimits")));
        assert!(err.to_string().contains("rate_limits[0].limit"), "{err}");
        let missing = super::compile(&raw(Some("{}"), Some("https://o"), Some("ratelimits")), &|name| {
            name != "RATELIMIT_SCHEDULE"
        });
        let Err(err) = missing else {
            panic!("compiled without a binding");
        };
        assert!(err.to_string().contains("RATELIMIT_SCHEDULE"), "{err}");
    }
}
