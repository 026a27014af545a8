//! The document's [`Value`] tree into the config types, with serde's words for the same
//! mistakes (`unknown field`, `missing field`, `invalid type: …, expected …`) at the same field
//! paths: the types keep `#[derive(Deserialize)]`, and the core's tests check this reader
//! against it over the same documents.
//!
//! Two spellings serde's derive also accepts are refused here: a struct written as a list of
//! its fields in order, and a unit variant written as `{"name": null}`. Neither appears in any
//! policy, and both would let a misshapen document mean something. Where serde_json says only
//! "expected value" (a `null` where a variant's name belongs), the reader says what it expected.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::{
    Backend, ClientIpConfig, ForwardedHeader, GlobalConfig, HeaderOverrides, LimitMode, LimiterConfig, PolicyConfig,
    PresetName, ProfileConfig, RedirectConfig, StoreErrorMode, TierConfig, Unavailable,
};
use crate::json::{Error, Path, Step, Value};

type Result<T> = core::result::Result<T, Error>;

pub(super) fn policy(value: &Value) -> Result<PolicyConfig> {
    let path = &mut Path::default();
    let mut config = PolicyConfig::default();
    let fields = &[
        "preset",
        "headers",
        "remove_headers",
        "profiles",
        "allowed_hosts",
        "https_redirect",
        "client_ip",
        "rate_limits",
        "rate_limit_mode",
        "rate_limit_headers_on_success",
        "limiter",
    ];
    members(value, path, "struct PolicyConfig", fields, &mut |field, value, path| {
        match field {
            "preset" => config.preset = preset(value, path)?,
            "headers" => config.headers = header_overrides(value, path)?,
            "remove_headers" => config.remove_headers = strings(value, path)?,
            "profiles" => config.profiles = list(value, path, profile)?,
            "allowed_hosts" => config.allowed_hosts = strings(value, path)?,
            "https_redirect" => config.https_redirect = redirect(value, path)?,
            "client_ip" => config.client_ip = client_ip(value, path)?,
            "rate_limits" => config.rate_limits = option(value, |value| list(value, path, tier))?,
            "rate_limit_mode" => config.rate_limit_mode = limit_mode(value, path)?,
            "rate_limit_headers_on_success" => config.rate_limit_headers_on_success = boolean(value, path)?,
            _ => config.limiter = limiter(value, path)?,
        }
        Ok(())
    })?;
    Ok(config)
}

fn profile(value: &Value, path: &mut Path) -> Result<ProfileConfig> {
    let (mut path_prefix, mut preset_name, mut headers) = (None, None, HeaderOverrides::new());
    members(value, path, "struct ProfileConfig", &["path_prefix", "preset", "headers"], &mut |field, value, path| {
        match field {
            "path_prefix" => path_prefix = Some(string(value, path)?),
            "preset" => preset_name = option(value, |value| preset(value, path))?,
            _ => headers = header_overrides(value, path)?,
        }
        Ok(())
    })?;
    Ok(ProfileConfig { path_prefix: required(path_prefix, path, "path_prefix")?, preset: preset_name, headers })
}

fn redirect(value: &Value, path: &mut Path) -> Result<RedirectConfig> {
    let mut config = RedirectConfig::default();
    let fields = &["enabled", "https_port", "exempt_prefixes"];
    members(value, path, "struct RedirectConfig", fields, &mut |field, value, path| {
        match field {
            "enabled" => config.enabled = boolean(value, path)?,
            "https_port" => config.https_port = unsigned(value, path, "u16")?,
            _ => config.exempt_prefixes = strings(value, path)?,
        }
        Ok(())
    })?;
    Ok(config)
}

fn client_ip(value: &Value, path: &mut Path) -> Result<ClientIpConfig> {
    let mut config = ClientIpConfig::default();
    let fields = &["trusted_proxies", "trusted_hops", "forwarded_header", "ipv6_prefix"];
    members(value, path, "struct ClientIpConfig", fields, &mut |field, value, path| {
        match field {
            "trusted_proxies" => config.trusted_proxies = strings(value, path)?,
            "trusted_hops" => config.trusted_hops = unsigned(value, path, "u8")?,
            "forwarded_header" => {
                let choice = [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded];
                config.forwarded_header =
                    variant(value, path, "enum ForwardedHeader", &["x-forwarded-for", "forwarded"], choice)?;
            }
            _ => config.ipv6_prefix = unsigned(value, path, "u8")?,
        }
        Ok(())
    })?;
    Ok(config)
}

fn tier(value: &Value, path: &mut Path) -> Result<TierConfig> {
    let (mut name, mut method, mut template, mut limit) = (None, None, None, None);
    let (mut mode, mut on_error) = (None, None);
    let fields = &["name", "method", "path", "limit", "mode", "on_store_error"];
    members(value, path, "struct TierConfig", fields, &mut |field, value, path| {
        match field {
            "name" => name = Some(string(value, path)?),
            "method" => method = Some(string(value, path)?),
            "path" => template = Some(string(value, path)?),
            "limit" => limit = Some(string(value, path)?),
            "mode" => mode = option(value, |value| limit_mode(value, path))?,
            _ => on_error = option(value, |value| store_error_mode(value, path))?,
        }
        Ok(())
    })?;
    Ok(TierConfig {
        name: required(name, path, "name")?,
        method: required(method, path, "method")?,
        path: required(template, path, "path")?,
        limit: required(limit, path, "limit")?,
        mode,
        on_store_error: on_error,
    })
}

fn limiter(value: &Value, path: &mut Path) -> Result<LimiterConfig> {
    let mut config = LimiterConfig::default();
    let fields = &["capacity_per_tier", "max_cas_retries", "on_store_error", "hash_key", "backend", "global"];
    members(value, path, "struct LimiterConfig", fields, &mut |field, value, path| {
        match field {
            "capacity_per_tier" => config.capacity_per_tier = unsigned(value, path, "u32")?,
            "max_cas_retries" => config.max_cas_retries = unsigned(value, path, "u8")?,
            "on_store_error" => config.on_store_error = store_error_mode(value, path)?,
            "hash_key" => config.hash_key = option(value, |value| string(value, path))?,
            "backend" => {
                let choice = [Backend::Local, Backend::Global];
                config.backend = variant(value, path, "enum Backend", &["local", "global"], choice)?;
            }
            _ => config.global = option(value, |value| global(value, path))?,
        }
        Ok(())
    })?;
    Ok(config)
}

fn global(value: &Value, path: &mut Path) -> Result<GlobalConfig> {
    let mut cluster = None;
    let mut config = GlobalConfig {
        cluster: String::new(),
        timeout_ms: super::default_global_timeout(),
        domain: super::default_domain(),
        on_unavailable: Unavailable::default(),
    };
    let fields = &["cluster", "timeout_ms", "domain", "on_unavailable"];
    members(value, path, "struct GlobalConfig", fields, &mut |field, value, path| {
        match field {
            "cluster" => cluster = Some(string(value, path)?),
            "timeout_ms" => config.timeout_ms = unsigned(value, path, "u32")?,
            "domain" => config.domain = string(value, path)?,
            _ => {
                let choice = [Unavailable::Local, Unavailable::Allow, Unavailable::Deny];
                config.on_unavailable = variant(value, path, "enum Unavailable", &["local", "allow", "deny"], choice)?;
            }
        }
        Ok(())
    })?;
    config.cluster = required(cluster, path, "cluster")?;
    Ok(config)
}

fn preset(value: &Value, path: &Path) -> Result<PresetName> {
    variant(value, path, "enum PresetName", &["seed", "strict"], [PresetName::Seed, PresetName::Strict])
}

fn limit_mode(value: &Value, path: &Path) -> Result<LimitMode> {
    variant(value, path, "enum LimitMode", &["enforce", "shadow"], [LimitMode::Enforce, LimitMode::Shadow])
}

fn store_error_mode(value: &Value, path: &Path) -> Result<StoreErrorMode> {
    let choice = [StoreErrorMode::Local, StoreErrorMode::Allow, StoreErrorMode::Deny];
    variant(value, path, "enum StoreErrorMode", &["local", "allow", "deny"], choice)
}

fn invalid_type(value: &Value, path: &Path, expected: &str) -> Error {
    path.error(["invalid type: ", &value.kind(), ", expected ", expected].concat())
}

/// serde's list of the names it expected: "`a`", "`a` or `b`", "one of `a`, `b`, `c`".
fn one_of(names: &[&str]) -> String {
    let ticked = |name: &&str| ["`", name, "`"].concat();
    match names {
        [] => "nothing".to_owned(),
        [one] => ticked(one),
        [a, b] => [ticked(a), ticked(b)].join(" or "),
        _ => ["one of ", &names.iter().map(ticked).collect::<Vec<_>>().join(", ")].concat(),
    }
}

/// Calls `member` for each member of an object in document order, with the field's name from
/// `fields` and the path down to it; an unknown or repeated field is an error.
/// `member` is a `dyn` callback: generic, every struct's reader was inlined into one
/// 17 KiB function of the filter (5.4 KB more in all).
fn members<'v>(
    value: &'v Value,
    path: &mut Path,
    expected: &str,
    fields: &[&'static str],
    member: &mut dyn FnMut(&'static str, &'v Value, &mut Path) -> Result<()>,
) -> Result<()> {
    let Value::Object(entries) = value else { return Err(invalid_type(value, path, expected)) };
    let mut seen = vec![false; fields.len()];
    for (key, value) in entries {
        let Some(index) = fields.iter().position(|field| field == key) else {
            path.push(Step::Key(key.clone()));
            let escaped: String = key.escape_default().collect();
            let reason = ["unknown field `", &escaped, "`, expected ", &one_of(fields)].concat();
            return Err(path.error(reason));
        };
        if core::mem::replace(&mut seen[index], true) {
            return Err(path.error(["duplicate field `", key, "`"].concat()));
        }
        path.push(Step::Key(key.clone()));
        member(fields[index], value, path)?;
        path.pop();
    }
    Ok(())
}

fn required<T>(value: Option<T>, path: &Path, field: &str) -> Result<T> {
    value.ok_or_else(|| path.error(["missing field `", field, "`"].concat()))
}

fn option<T>(value: &Value, read: impl FnOnce(&Value) -> Result<T>) -> Result<Option<T>> {
    match value {
        Value::Null => Ok(None),
        value => read(value).map(Some),
    }
}

fn string(value: &Value, path: &Path) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        value => Err(invalid_type(value, path, "a string")),
    }
}

fn boolean(value: &Value, path: &Path) -> Result<bool> {
    match value {
        Value::Bool(b) => Ok(*b),
        value => Err(invalid_type(value, path, "a boolean")),
    }
}

/// An unsigned integer of type `T` (named `ty`, as serde names it).
fn unsigned<T: TryFrom<u64>>(value: &Value, path: &Path, ty: &str) -> Result<T> {
    let Value::Number(text) = value else { return Err(invalid_type(value, path, ty)) };
    if text == "-0" || text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
        return Err(invalid_type(value, path, ty));
    }
    text.parse::<u64>()
        .ok()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| path.error(["invalid value: integer `", text, "`, expected ", ty].concat()))
}

fn variant<T: Copy, const N: usize>(
    value: &Value,
    path: &Path,
    expected: &str,
    names: &[&str; N],
    variants: [T; N],
) -> Result<T> {
    let Value::String(name) = value else { return Err(invalid_type(value, path, expected)) };
    match names.iter().position(|candidate| candidate == name) {
        Some(index) => Ok(variants[index]),
        None => {
            let escaped: String = name.escape_default().collect();
            Err(path.error(["unknown variant `", &escaped, "`, expected ", &one_of(names)].concat()))
        }
    }
}

fn list<T>(value: &Value, path: &mut Path, read: fn(&Value, &mut Path) -> Result<T>) -> Result<Vec<T>> {
    let Value::Array(elements) = value else { return Err(invalid_type(value, path, "a sequence")) };
    let mut out = Vec::with_capacity(elements.len());
    for (index, element) in elements.iter().enumerate() {
        path.push(Step::Index(index));
        out.push(read(element, path)?);
        path.pop();
    }
    Ok(out)
}

fn strings(value: &Value, path: &mut Path) -> Result<Vec<String>> {
    list(value, path, |value, path| string(value, path))
}

/// Header values by name; a repeated name keeps its last value, as serde's map does.
fn header_overrides(value: &Value, path: &mut Path) -> Result<HeaderOverrides> {
    let Value::Object(entries) = value else { return Err(invalid_type(value, path, "a map")) };
    let mut out = HeaderOverrides::new();
    for (name, value) in entries {
        path.push(Step::Key(name.clone()));
        let header = option(value, |value| string(value, path))?;
        path.pop();
        out.insert(name.clone(), header);
    }
    Ok(out)
}
