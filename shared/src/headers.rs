//! Security-header profiles: the presets as data, compiled per path prefix, and the response edits.

use alloc::borrow::ToOwned;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use crate::json::quoted;
use alloc::sync::Arc;

use crate::config::{ConfigError, HeaderOverrides, PresetName};

pub const HSTS: &str = "strict-transport-security";

const SEED_CSP: &str = "default-src 'self'; script-src 'self' 'unsafe-inline'; \
style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; base-uri 'self'; \
frame-ancestors 'none'; form-action 'self'";

const PERMISSIONS: &str = "geolocation=(), microphone=(), camera=(), payment=(), usb=(), magnetometer=()";

const HSTS_VALUE: &str = "max-age=31536000; includeSubDomains; preload";

/// The audited seed system's headers, exactly (`"preset": "seed"`).
pub const SEED_HEADERS: &[(&str, &str)] = &[
    (HSTS, HSTS_VALUE),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("x-xss-protection", "1; mode=block"),
    ("content-security-policy", SEED_CSP),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    ("permissions-policy", PERMISSIONS),
    ("server", "Unknown"),
];

/// Current OWASP/Helmet advice for a JSON API; meets every MDN HTTP Observatory rule
/// (`"preset": "strict"`).
pub const STRICT_HEADERS: &[(&str, &str)] = &[
    (HSTS, HSTS_VALUE),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("x-xss-protection", "0"),
    ("content-security-policy", "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("referrer-policy", "no-referrer"),
    ("permissions-policy", PERMISSIONS),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("server", "Unknown"),
];

fn preset(name: PresetName) -> &'static [(&'static str, &'static str)] {
    match name {
        PresetName::Seed => SEED_HEADERS,
        PresetName::Strict => STRICT_HEADERS,
    }
}

/// Headers the policy may never set or remove: framing and hop-by-hop fields belong to the host.
const UNMANAGEABLE: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The header set one path prefix gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeaderProfile {
    /// Lowercase names; never contains HSTS (kept apart: it is only sent over HTTPS).
    pub set: Vec<(String, String)>,
    pub hsts: Option<String>,
    pub remove: Vec<String>,
}

impl HeaderProfile {
    pub(crate) fn from_preset(name: PresetName, remove: &[String]) -> Self {
        let mut profile = Self { set: Vec::new(), hsts: None, remove: remove.to_vec() };
        for (header, value) in preset(name) {
            profile.put(header, Some((*value).to_owned()));
        }
        profile
    }

    /// Applies user overrides; `path` is the field path of the override map, for errors.
    pub(crate) fn apply_overrides(&mut self, overrides: &HeaderOverrides, path: &str) -> Result<(), ConfigError> {
        for (name, value) in overrides {
            let field = [path, ".", name].concat();
            let lower = validate_name(name).map_err(|reason| ConfigError::at(&field, reason))?;
            if let Some(value) = value {
                validate_value(value).map_err(|reason| ConfigError::at(&field, reason))?;
            }
            self.put(&lower, value.clone());
        }
        Ok(())
    }

    fn put(&mut self, lower_name: &str, value: Option<String>) {
        if lower_name == HSTS {
            self.hsts = value;
            return;
        }
        self.set.retain(|(name, _)| name != lower_name);
        if let Some(value) = value {
            self.set.push((lower_name.to_owned(), value));
            self.remove.retain(|name| name != lower_name);
        }
    }
}

/// The headers every JSON error reply (400, 429, 503) carries besides the header set's.
pub(crate) const JSON_REPLY_HEADERS: [(&str, &str); 2] =
    [("content-type", "application/json"), ("cache-control", "no-store")];

/// The kinds of local reply, by the headers they carry besides their own and the set's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplyKind {
    /// Nothing more: a redirect has only its `location`.
    Redirect,
    /// [`JSON_REPLY_HEADERS`].
    Json,
}

impl ReplyKind {
    pub(crate) fn extra_headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Redirect => &[],
            Self::Json => &JSON_REPLY_HEADERS,
        }
    }
}

/// What a profile does to a response over one scheme, compiled with the policy so that a
/// response only copies it: the headers to set (HSTS last, over HTTPS only), the ones to
/// remove, and every name an upstream value of must not survive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSet {
    index: usize,
    set: Arc<[(String, String)]>,
    /// What a JSON error reply of this set carries after its own headers:
    /// [`JSON_REPLY_HEADERS`] the set does not replace, then `set`.
    json_reply: Arc<[(String, String)]>,
    remove: Vec<String>,
    managed: ManagedNames,
    /// `managed` plus the rate-limit names an allowed request's response carries, for
    /// forwarded responses on a limited tier.
    managed_with_rate: ManagedNames,
    /// Exactly the names [`HeaderSet::removed`] and [`HeaderSet::headers`] hold.
    replaced: ManagedNames,
    /// Whether the profile itself sets a rate-limit header's name, which a response's own
    /// rate-limit header then replaces.
    sets_rate_names: bool,
}

impl HeaderSet {
    /// `allowed_rate_names` are the rate-limit headers a forwarded response gets, `rate_names`
    /// every one a local reply may get.
    pub(crate) fn compile(
        index: usize,
        profile: &HeaderProfile,
        https: bool,
        allowed_rate_names: &[&str],
        rate_names: &[&str],
    ) -> Self {
        let mut set = profile.set.clone();
        let mut remove = profile.remove.clone();
        match (&profile.hsts, https) {
            (Some(hsts), true) => set.push((HSTS.to_owned(), hsts.clone())),
            // HSTS over plain HTTP is ignored by browsers and misleads scanners (RFC 6797 §7.2).
            (_, false) => remove.push(HSTS.to_owned()),
            (None, true) => {}
        }
        let profile_names = || {
            core::iter::once(HSTS)
                .chain(profile.set.iter().map(|(name, _)| name.as_str()))
                .chain(profile.remove.iter().map(String::as_str))
        };
        let managed = ManagedNames::new(profile_names());
        let managed_with_rate = ManagedNames::new(profile_names().chain(allowed_rate_names.iter().copied()));
        let replaced = ManagedNames::new(remove.iter().chain(set.iter().map(|(name, _)| name)).map(String::as_str));
        let sets_rate_names = set.iter().any(|(name, _)| rate_names.contains(&name.as_str()));
        let json_reply = JSON_REPLY_HEADERS
            .iter()
            .filter(|(name, _)| !replaced.contains(name.as_bytes()))
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .chain(set.iter().cloned())
            .collect();
        let set = set.into();
        Self { index, set, json_reply, remove, managed, managed_with_rate, replaced, sets_rate_names }
    }

    /// The headers after a reply's own ones: for `kind`'s extra headers, then the set's.
    pub(crate) fn reply_base(&self, kind: ReplyKind) -> &Arc<[(String, String)]> {
        match kind {
            ReplyKind::Redirect => &self.set,
            ReplyKind::Json => &self.json_reply,
        }
    }

    /// The part every local reply of this set carries after its own headers
    /// ([`crate::ReplyBase`]): for a JSON reply its `content-type` and `cache-control` unless
    /// the set replaces them, then the set's headers; for a redirect the set's headers alone.
    pub fn reply_base_headers(&self, json: bool) -> &[(String, String)] {
        self.reply_base(if json { ReplyKind::Json } else { ReplyKind::Redirect })
    }

    /// This set's position in [`crate::Policy::header_sets`], for hosts that prepare each set
    /// in their own form once.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The headers to set, in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.set
    }

    pub(crate) fn removed(&self) -> &[String] {
        &self.remove
    }

    pub(crate) fn replaces(&self, name: &[u8]) -> bool {
        self.replaced.contains(name)
    }

    pub(crate) fn sets_rate_names(&self) -> bool {
        self.sets_rate_names
    }

    pub(crate) fn manages(&self, name: &[u8], with_rate: bool) -> bool {
        if with_rate { self.managed_with_rate.contains(name) } else { self.managed.contains(name) }
    }
}

/// Lowercase header names grouped by length: every upstream header is tested against them, and
/// most lengths hold no managed name at all, so a test is usually one bounds check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ManagedNames {
    by_len: Vec<Vec<Box<[u8]>>>,
}

impl ManagedNames {
    fn new<'a>(names: impl Iterator<Item = &'a str>) -> Self {
        let mut by_len: Vec<Vec<Box<[u8]>>> = Vec::new();
        for name in names {
            let lower = name.to_ascii_lowercase().into_bytes().into_boxed_slice();
            if by_len.len() <= lower.len() {
                by_len.resize_with(lower.len() + 1, Vec::new);
            }
            if let Some(same_len) = by_len.get_mut(lower.len())
                && !same_len.contains(&lower)
            {
                same_len.push(lower);
            }
        }
        Self { by_len }
    }

    fn contains(&self, name: &[u8]) -> bool {
        // Only the upstream byte needs folding (the stored names are lowercase), and only when it
        // differs, which a lowercase upstream name (the usual case) never does.
        let same = |lower: &[u8]| lower.iter().zip(name).all(|(&l, &b)| l == b || l == b.to_ascii_lowercase());
        self.by_len.get(name.len()).is_some_and(|same_len| same_len.iter().any(|n| same(n)))
    }
}

/// Checks a header name is an RFC 9110 token the policy may manage; returns it lowercased.
pub(crate) fn validate_name(name: &str) -> Result<String, String> {
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err([&quoted(name), " is not a valid header name"].concat());
    }
    let lower = name.to_ascii_lowercase();
    if UNMANAGEABLE.contains(&lower.as_str()) {
        return Err([&quoted(name), " is a connection header the host manages"].concat());
    }
    Ok(lower)
}

/// Visible ASCII, spaces and tabs only: nothing that could split or smuggle a header.
pub(crate) fn validate_value(value: &str) -> Result<(), String> {
    let ok = value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
    if !ok {
        return Err([&quoted(value), " contains control or non-ASCII characters"].concat());
    }
    if value.trim() != value {
        return Err([&quoted(value), " has leading or trailing whitespace"].concat());
    }
    Ok(())
}

/// Where a host writes response headers. Names are lowercase; `set` replaces every existing value.
pub trait HeaderSink {
    fn set(&mut self, name: &str, value: &str);
    fn remove(&mut self, name: &str);
}

/// A plain list of header pairs (text or byte values), as hosts that buffer a whole map use it.
impl<V: for<'a> From<&'a str>> HeaderSink for Vec<(String, V)> {
    fn set(&mut self, name: &str, value: &str) {
        self.retain(|(existing, _)| !existing.eq_ignore_ascii_case(name));
        self.push((name.to_owned(), V::from(value)));
    }

    fn remove(&mut self, name: &str) {
        self.retain(|(existing, _)| !existing.eq_ignore_ascii_case(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_preset_is_the_audited_header_table() {
        let profile = HeaderProfile::from_preset(PresetName::Seed, &[]);
        assert_eq!(profile.hsts.as_deref(), Some("max-age=31536000; includeSubDomains; preload"));
        let get = |name: &str| profile.set.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("x-frame-options"), Some("DENY"));
        assert_eq!(get("x-content-type-options"), Some("nosniff"));
        assert_eq!(get("x-xss-protection"), Some("1; mode=block"));
        assert_eq!(get("referrer-policy"), Some("strict-origin-when-cross-origin"));
        assert_eq!(get("server"), Some("Unknown"));
        assert!(
            get("content-security-policy")
                .unwrap()
                .starts_with("default-src 'self'; script-src 'self' 'unsafe-inline'; ")
        );
        assert_eq!(profile.set.len(), 7);
    }

    #[test]
    fn overrides_replace_remove_and_route_hsts() {
        let mut profile = HeaderProfile::from_preset(PresetName::Seed, &["x-powered-by".into()]);
        let overrides = HeaderOverrides::from([
            ("X-XSS-Protection".to_owned(), Some("0".to_owned())),
            ("Permissions-Policy".to_owned(), None),
            ("Strict-Transport-Security".to_owned(), Some("max-age=600".to_owned())),
            ("X-Powered-By".to_owned(), Some("Portcullis".to_owned())),
        ]);
        profile.apply_overrides(&overrides, "headers").unwrap();
        assert_eq!(profile.hsts.as_deref(), Some("max-age=600"));
        assert!(profile.set.contains(&("x-xss-protection".into(), "0".into())));
        assert!(!profile.set.iter().any(|(n, _)| n == "permissions-policy"));
        assert!(profile.remove.is_empty(), "a header set explicitly is not also removed");
    }

    #[test]
    fn bad_names_and_values_name_the_field() {
        let mut profile = HeaderProfile::from_preset(PresetName::Seed, &[]);
        let bad_value = HeaderOverrides::from([("X-A".into(), Some("a\r\nSet-Cookie: x".into()))]);
        let err = profile.apply_overrides(&bad_value, "profiles[0].headers").unwrap_err();
        assert_eq!(err.path, "profiles[0].headers.X-A");
        let bad_name = HeaderOverrides::from([("Bad Name".into(), Some("x".into()))]);
        assert!(profile.apply_overrides(&bad_name, "headers").is_err());
        let framing = HeaderOverrides::from([("Content-Length".into(), Some("1".into()))]);
        assert!(profile.apply_overrides(&framing, "headers").is_err());
    }

    #[test]
    fn vec_sink_replaces_case_insensitively() {
        let mut headers = vec![("Server".to_owned(), "nginx".to_owned())];
        headers.set("server", "Unknown");
        HeaderSink::remove(&mut headers, "SERVER");
        assert!(headers.is_empty());
    }
}
