//! The policy reader (`config::parse`) against serde's derive on the same types: the same
//! documents give the same values, or errors with the same words at the same field paths.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_core::config::{self, PolicyConfig};
use portcullis_core::conformance::Vectors;
use proptest::prelude::*;
use serde_json::{Map, Value};

/// What serde's derive makes of `document`, in the reader's terms.
fn by_serde(document: &str) -> Result<String, (String, String)> {
    let mut de = serde_json::Deserializer::from_str(document);
    match serde_path_to_error::deserialize::<_, PolicyConfig>(&mut de) {
        Ok(config) => Ok(format!("{config:?}")),
        Err(err) => {
            let path = Some(err.path().to_string()).filter(|p| !p.is_empty()).unwrap_or_else(|| ".".to_owned());
            let mut reason = err.into_inner().to_string();
            if let Some(cut) = reason.rfind(" at line ") {
                reason.truncate(cut);
            }
            Err((path, reason))
        }
    }
}

fn by_reader(document: &str) -> Result<String, (String, String)> {
    config::parse(document.as_bytes()).map(|config| format!("{config:?}")).map_err(|err| (err.path, err.reason))
}

#[test]
fn every_conformance_config_reads_as_serde_reads_it() {
    let vectors = Vectors::load().unwrap();
    for (name, config) in &vectors.configs {
        let document = serde_json::to_string_pretty(config).unwrap();
        assert_eq!(by_reader(&document), by_serde(&document), "config {name}");
        assert!(by_reader(&document).is_ok(), "config {name}");
    }
}

#[test]
fn every_field_set_reads_as_serde_reads_it() {
    let document = r#"{
        "preset": "strict",
        "headers": {"X-A": "1", "X-B": null, "X-A": "2"},
        "remove_headers": ["Server", "X-Powered-By"],
        "profiles": [{"path_prefix": "/docs", "preset": "seed", "headers": {"X-C": "3"}}, {"path_prefix": "/b"}],
        "allowed_hosts": ["*.example.com", "example.com"],
        "https_redirect": {"enabled": false, "https_port": 8443, "exempt_prefixes": []},
        "client_ip": {"trusted_proxies": ["10.0.0.0/8"], "trusted_hops": 2, "forwarded_header": "forwarded",
                      "ipv6_prefix": 48},
        "rate_limits": [{"name": "a", "method": "GET", "path": "/a/{id}", "limit": "3/second", "mode": "shadow",
                         "on_store_error": "deny"},
                        {"name": "b", "method": "*", "path": "/b", "limit": "unlimited", "mode": null}],
        "rate_limit_mode": "shadow",
        "rate_limit_headers_on_success": false,
        "limiter": {"capacity_per_tier": 99, "max_cas_retries": 3, "on_store_error": "allow",
                    "hash_key": "00112233445566778899aabbccddeeff", "backend": "global",
                    "global": {"cluster": "rls", "timeout_ms": 7, "domain": "d", "on_unavailable": "deny"}}
    }"#;
    assert!(by_reader(document).is_ok());
    assert_eq!(by_reader(document), by_serde(document));
    let defaults = r#"{"limiter": {"global": {"cluster": "rls"}}, "rate_limits": null, "client_ip": {}}"#;
    assert_eq!(by_reader(defaults), by_serde(defaults));
    assert_eq!(by_reader("-0"), by_serde("-0"));
}

#[test]
fn a_variant_of_the_wrong_kind_is_named_with_what_was_expected() {
    let document = r#"{"limiter": {"backend": null}}"#;
    let expected = ("limiter.backend".to_owned(), "invalid type: null, expected enum Backend".to_owned());
    assert_eq!(by_reader(document), Err(expected));
    assert_eq!(by_serde(document).unwrap_err().0, "limiter.backend");
}

#[test]
fn repeated_and_missing_fields_are_named_as_serde_names_them() {
    for document in [
        r#"{"preset": "seed", "preset": "strict"}"#,
        r#"{"rate_limits": [{"name": "a", "name": "b"}]}"#,
        r#"{"profiles": [{}]}"#,
        r#"{"limiter": {"global": {}}}"#,
        r#"{"client_ip": {"trusted_hops": -0}}"#,
        r#"{"client_ip": {"trusted_hops": 18446744073709551615}}"#,
    ] {
        assert_eq!(by_reader(document), by_serde(document), "{document}");
    }
}

/// Where a value of the wrong kind goes: serde's derive also reads a struct from a list of its
/// fields and a unit variant from `{"name": null}`, which the reader refuses on purpose.
#[derive(Clone, Copy)]
enum Slot {
    Struct,
    Enum,
    Other,
}

fn wrong(slot: Slot) -> BoxedStrategy<Value> {
    let mut choices: Vec<Value> = ["true", "0", "-1", "1", "300", "70000", "4294967296", "1.5", "\"x\"", "\"seed\""]
        .iter()
        .map(|text| serde_json::from_str(text).unwrap())
        .collect();
    if !matches!(slot, Slot::Enum) {
        choices.push(Value::Object(Map::new()));
    }
    if !matches!(slot, Slot::Struct) {
        choices.push(Value::Array(vec![Value::from(1)]));
        choices.push(Value::Array(Vec::new()));
    }
    proptest::sample::select(choices).boxed()
}

/// Mostly a value of the field's type, sometimes one of the wrong kind.
fn field(typed: BoxedStrategy<Value>, slot: Slot) -> BoxedStrategy<Value> {
    prop_oneof![6 => typed, 1 => wrong(slot)].boxed()
}

fn text() -> BoxedStrategy<Value> {
    let choices = ["", "x", "a", "/a", "/a/{id}", "GET", "*", "1/minute", "rls", "10.0.0.0/8"];
    field(proptest::sample::select(choices.to_vec()).prop_map(Value::from).boxed(), Slot::Other)
}

fn number() -> BoxedStrategy<Value> {
    field(
        proptest::sample::select(vec![0u64, 1, 7, 64, 255, 256, 65_535, 65_536, 1 << 32]).prop_map(Value::from).boxed(),
        Slot::Other,
    )
}

fn boolean() -> BoxedStrategy<Value> {
    field(any::<bool>().prop_map(Value::from).boxed(), Slot::Other)
}

fn variant(names: &'static [&'static str]) -> BoxedStrategy<Value> {
    let mut choices = names.to_vec();
    choices.push("lax");
    field(proptest::sample::select(choices).prop_map(Value::from).boxed(), Slot::Enum)
}

fn optional(inner: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop_oneof![1 => Just(Value::Null), 4 => inner].boxed()
}

fn list(element: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    field(proptest::collection::vec(element, 0..3).prop_map(Value::Array).boxed(), Slot::Other)
}

fn headers() -> BoxedStrategy<Value> {
    let entry = (proptest::sample::select(vec!["X-A", "x-b", ""]), optional(text()));
    let map = proptest::collection::vec(entry, 0..3)
        .prop_map(|entries| Value::Object(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()));
    field(map.boxed(), Slot::Other)
}

/// An object with some of `fields` (and now and then one that is not a field).
fn object(fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
    let count = fields.len();
    let values: Vec<_> = fields.into_iter().map(|(name, value)| value.prop_map(move |v| (name, v))).collect();
    let members = (values, proptest::sample::subsequence((0..count).collect::<Vec<_>>(), 0..=count), any::<u8>());
    let map = members.prop_map(|(values, chosen, extra)| {
        let mut map: Map<String, Value> =
            chosen.iter().map(|&i| (values[i].0.to_owned(), values[i].1.clone())).collect();
        if extra % 8 == 0 {
            map.insert("extra".to_owned(), Value::from(1));
        }
        Value::Object(map)
    });
    field(map.boxed(), Slot::Struct)
}

fn policy_document() -> BoxedStrategy<Value> {
    let profile = object(vec![
        ("path_prefix", text()),
        ("preset", optional(variant(&["seed", "strict"]))),
        ("headers", headers()),
    ]);
    let tier = object(vec![
        ("name", text()),
        ("method", text()),
        ("path", text()),
        ("limit", text()),
        ("mode", optional(variant(&["enforce", "shadow"]))),
        ("on_store_error", optional(variant(&["local", "allow", "deny"]))),
    ]);
    let global = object(vec![
        ("cluster", text()),
        ("timeout_ms", number()),
        ("domain", text()),
        ("on_unavailable", variant(&["local", "allow", "deny"])),
    ]);
    object(vec![
        ("preset", variant(&["seed", "strict"])),
        ("headers", headers()),
        ("remove_headers", list(text())),
        ("profiles", list(profile)),
        ("allowed_hosts", list(text())),
        (
            "https_redirect",
            object(vec![("enabled", boolean()), ("https_port", number()), ("exempt_prefixes", list(text()))]),
        ),
        (
            "client_ip",
            object(vec![
                ("trusted_proxies", list(text())),
                ("trusted_hops", number()),
                ("forwarded_header", variant(&["x-forwarded-for", "forwarded"])),
                ("ipv6_prefix", number()),
            ]),
        ),
        ("rate_limits", optional(list(tier))),
        ("rate_limit_mode", variant(&["enforce", "shadow"])),
        ("rate_limit_headers_on_success", boolean()),
        (
            "limiter",
            object(vec![
                ("capacity_per_tier", number()),
                ("max_cas_retries", number()),
                ("on_store_error", variant(&["local", "allow", "deny"])),
                ("hash_key", optional(text())),
                ("backend", variant(&["local", "global"])),
                ("global", optional(global)),
            ]),
        ),
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn policy_shaped_documents_read_as_serde_reads_them(document in policy_document()) {
        let document = serde_json::to_string(&document).unwrap();
        let (ours, serdes) = (by_reader(&document), by_serde(&document));
        match (&ours, &serdes) {
            // For anything but a name where a variant belongs serde_json says only "expected
            // value"; the reader says what it found and what it expected, at the same path.
            (Err((path, reason)), Err((serde_path, serde_reason))) if serde_reason == "expected value" => {
                prop_assert_eq!(path, serde_path, "{}", document);
                prop_assert!(reason.starts_with("invalid type: ") && reason.contains(", expected enum "), "{}", reason);
            }
            _ => prop_assert_eq!(ours, serdes, "{}", document),
        }
    }
}
