//! Behaviour of the compiled policy that the conformance vectors cannot express: configuration
//! errors, hostile request bytes, store failures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_core::config::StoreErrorMode;
use portcullis_core::{
    Begin, BucketStore, Decision, Loaded, MemoryStore, Outcome, Peer, Policy, Request, Scheme, StoreError, Swap,
    Version,
};

const NOW: u64 = 1_700_000_000_000_000_000;

fn decide(policy: &Policy, scheme: Scheme, method: &str, authority: Option<&[u8]>, path: &[u8]) -> Decision {
    let headers: Vec<(&str, &str)> = Vec::new();
    let request = Request {
        method: method.as_bytes(),
        scheme,
        authority,
        path: Some(path),
        peer: Peer::Socket("198.51.100.1:1234"),
        headers: &headers,
    };
    policy.decide(&request, NOW, &MemoryStore::new())
}

fn config_error(json: &str) -> String {
    Policy::from_json(json.as_bytes()).unwrap_err().to_string()
}

#[test]
fn config_errors_name_the_field_and_the_reason() {
    let tiers = r#"{"rate_limits": [
        {"name": "a", "method": "GET", "path": "/a", "limit": "1/minute"},
        {"name": "b", "method": "GET", "path": "/b", "limit": "1/minute"},
        {"name": "c", "method": "GET", "path": "/c", "limit": "1/minute"},
        {"name": "d", "method": "GET", "path": "/d", "limit": "5/minit"}]}"#;
    assert_eq!(config_error(tiers), r#"rate_limits[3].limit: "5/minit" is not N/second|minute|hour|day"#);
    assert!(config_error(r#"{"presett": "seed"}"#).starts_with("presett: unknown field `presett`, expected one of"));
    assert!(config_error(r#"{"preset": "lax"}"#).starts_with("preset: unknown variant `lax`"));
    assert!(config_error(r#"{"https_redirect": {"https_port": 70000}}"#).starts_with("https_redirect.https_port:"));
    assert!(config_error(r#"{"https_redirect": {"https_port": 0}}"#).starts_with("https_redirect.https_port:"));
    assert!(config_error(r#"{"allowed_hosts": ["ok.com", "bad host"]}"#).starts_with("allowed_hosts[1]:"));
    assert!(config_error(r#"{"allowed_hosts": []}"#).starts_with("allowed_hosts:"));
    assert_eq!(
        config_error(r#"{"remove_headers": ["server", "bad name"]}"#),
        r#"remove_headers[1]: "bad name" is not a valid header name"#
    );
    assert_eq!(
        config_error(r#"{"client_ip": {"trusted_proxies": ["10.0.0.0/8", "nope"]}}"#),
        r#"client_ip.trusted_proxies[1]: "nope" is not an IP address or CIDR"#
    );
    assert!(config_error(r#"{"headers": {"X-Evil": "a\nb"}}"#).starts_with("headers.X-Evil:"));
    assert!(config_error(r#"{"profiles": [{"path_prefix": "docs"}]}"#).starts_with("profiles[0].path_prefix:"));
    assert!(
        config_error(r#"{"client_ip": {"trusted_proxies": ["nope"]}}"#).starts_with("client_ip.trusted_proxies[0]:")
    );
    assert!(config_error(r#"{"client_ip": {"ipv6_prefix": 0}}"#).starts_with("client_ip.ipv6_prefix:"));
    assert!(config_error(r#"{"limiter": {"capacity_per_tier": 0}}"#).starts_with("limiter.capacity_per_tier:"));
    assert!(
        config_error(r#"{"rate_limits": [{"name": "A!", "method": "GET", "path": "/", "limit": "1/second"}]}"#)
            .starts_with("rate_limits[0].name:")
    );
    assert!(
        config_error(r#"{"rate_limits": [{"name": "a", "method": "G T", "path": "/", "limit": "1/second"}]}"#)
            .starts_with("rate_limits[0].method:")
    );
    assert!(
        config_error(r#"{"rate_limits": [{"name": "a", "method": "GET", "path": "/a/{x", "limit": "1/second"}]}"#)
            .starts_with("rate_limits[0].path:")
    );
    assert_eq!(
        config_error(r#"{"rate_limits": [{"name": "a", "method": "GET", "path": "/a"}]}"#),
        "rate_limits[0]: missing field `limit`"
    );
    assert!(config_error("{} {}").contains("trailing"));
    // Found by the config fuzz target: an empty key used to give an empty field path.
    assert!(config_error(r#"{"": 1}"#).starts_with(".: unknown field ``"), "{}", config_error(r#"{"": 1}"#));
    assert_eq!(config_error("["), ".: EOF while parsing a list");
}

/// The policy reader's error paths must be the paths `serde_path_to_error` finds by tracking
/// serde's deserializer over the same document (`config_reader.rs` checks many more).
#[test]
fn config_error_paths_are_the_paths_serde_tracks() {
    let documents = [
        r#"{"presett": "seed"}"#,
        r#"{"preset": 1}"#,
        r#"{"headers": {"X-A": 5}}"#,
        r#"{"headers": {"X-A": "ok", "X-B": []}}"#,
        r#"{"remove_headers": ["a", 2]}"#,
        r#"{"profiles": [{"path_prefix": "/a"}, {"path_prefix": "/b", "preset": "lax"}]}"#,
        r#"{"profiles": [{"path_prefix": "/a", "extra": 1}]}"#,
        r#"{"profiles": [{"headers": {}}]}"#,
        r#"{"allowed_hosts": ["a", {"b": 1}]}"#,
        r#"{"https_redirect": {"enabled": "yes"}}"#,
        r#"{"https_redirect": {"https_port": 70000}}"#,
        r#"{"client_ip": {"trusted_hops": -1}}"#,
        r#"{"client_ip": {"trusted_proxies": ["10.0.0.0/8", 7]}}"#,
        r#"{"rate_limits": [{"name": "a", "method": "GET", "path": "/a", "limit": "1/minute", "mode": "loud"}]}"#,
        r#"{"rate_limits": [{"name": "a", "method": "GET", "path": "/a", "limit": "1/minute"}, {"name": "b"}]}"#,
        r#"{"rate_limits": [{"name": 1}]}"#,
        r#"{"rate_limit_mode": "both"}"#,
        r#"{"rate_limit_headers_on_success": "true"}"#,
        r#"{"limiter": {"capacity_per_tier": "many"}}"#,
        r#"{"limiter": {"backend": "global", "global": {"cluster": 5}}}"#,
        r#"{"limiter": {"global": {"timeout_ms": 10, "nonsense": true}}}"#,
        "{\n  \"limiter\": {\n    \"hash_key\": 12\n  }\n}",
        r#"{"headers": {"k"}": 1}}"#,
        r#"{"": 1}"#,
    ];
    for document in documents {
        let ours = Policy::from_json(document.as_bytes()).unwrap_err();
        let mut de = serde_json::Deserializer::from_str(document);
        let tracked = serde_path_to_error::deserialize::<_, portcullis_core::PolicyConfig>(&mut de).unwrap_err();
        let expected = Some(tracked.path().to_string()).filter(|p| !p.is_empty()).unwrap_or_else(|| ".".to_owned());
        assert_eq!(ours.path, expected, "{document}: {ours}");
    }
    // Broken JSON: where the tracker can only say `?`, the reader still names the field.
    for (document, path) in [
        ("[", "."),
        (r#"{"preset": "seed""#, "preset"),
        (r#"{"rate_limits": [{"name": "a",}]}"#, "rate_limits[0]"),
        (r#"{"limiter": {"capacity_per_tier": 1"#, "limiter.capacity_per_tier"),
    ] {
        assert_eq!(Policy::from_json(document.as_bytes()).unwrap_err().path, path, "{document}");
    }
}

#[test]
fn an_empty_document_is_the_seed_policy() {
    let policy = Policy::from_json(b"").unwrap();
    let Decision::Respond(reply) = decide(&policy, Scheme::Http, "GET", Some(b"localhost"), b"/x") else {
        panic!("redirect expected");
    };
    assert_eq!(reply.header("location"), Some("https://localhost/x"));
    assert_eq!(policy.bucket_count(), 8 * 4096, "eight limited seed tiers of 16384 keys");
}

#[test]
fn nothing_a_client_sends_reaches_location_unescaped() {
    let policy = Policy::from_json(br#"{"https_redirect": {"https_port": 8443}}"#).unwrap();
    let hostile: &[&[u8]] = &[
        b"/x\r\nSet-Cookie: a=b",
        b"/\x00\x7f\xff\xfe",
        b"/a b\"<script>`{|}^\\",
        b"/x#frag",
        b"//evil.example/",
        b"no-leading-slash",
    ];
    for path in hostile {
        let Decision::Respond(reply) = decide(&policy, Scheme::Http, "GET", Some(b"localhost:8080"), path) else {
            panic!("redirect expected for {path:?}");
        };
        let location = reply.header("location").unwrap();
        assert!(location.starts_with("https://localhost:8443/"), "{location}");
        assert!(
            location.bytes().all(|b| b.is_ascii_graphic() && !b"\"<>\\^`{|}#".contains(&b)),
            "{path:?} gave {location:?}"
        );
    }
}

#[test]
fn hostile_hosts_are_refused_not_redirected() {
    let policy = Policy::from_json(br#"{"allowed_hosts": ["*"]}"#).unwrap();
    for authority in [&b"evil.com\r\nx: y"[..], b"a@evil.com", b"evil.com/x", b"\xff", b"", b"[::1"] {
        let decision = decide(&policy, Scheme::Http, "GET", Some(authority), b"/");
        assert_eq!(decision.outcome(), Outcome::BadHost, "{authority:?}");
    }
    assert_eq!(decide(&policy, Scheme::Https, "GET", None, b"/").outcome(), Outcome::BadHost);
}

#[test]
fn redirects_can_be_switched_off() {
    let policy = Policy::from_json(br#"{"https_redirect": {"enabled": false}}"#).unwrap();
    let decision = decide(&policy, Scheme::Http, "GET", Some(b"localhost"), b"/");
    let Decision::Forward(forward) = decision else { panic!("forward expected") };
    let mut headers: Vec<(String, String)> = Vec::new();
    policy.response_edits(&forward.plan).apply(&mut headers);
    assert!(!headers.iter().any(|(n, _)| n == "strict-transport-security"));
}

/// A store whose host calls fail.
struct Down;

impl BucketStore for Down {
    fn load(&self, _: u32) -> Result<Loaded, StoreError> {
        Err(StoreError("shared data unavailable".into()))
    }
    fn compare_and_swap(&self, _: u32, _: Version, _: &[u8]) -> Result<Swap, StoreError> {
        Err(StoreError("shared data unavailable".into()))
    }
}

#[test]
fn store_failure_follows_on_store_error() {
    let headers: Vec<(&str, &str)> = Vec::new();
    let request = |path: &'static [u8]| Request {
        method: b"POST",
        scheme: Scheme::Https,
        authority: Some(b"localhost"),
        path: Some(path),
        peer: Peer::Socket("198.51.100.1"),
        headers: &headers,
    };
    let login = request(b"/api/v1/auth/login");
    let check = |policy: &Policy, request: &Request<'_, _>| match policy.begin(request) {
        Begin::Check(check) => check,
        Begin::Decided(decision) => panic!("a limit check expected, got {decision:?}"),
    };

    // The default, `local`: the host's own limiter decides, and stays a limit (5 logins).
    let local = Policy::from_json(b"{}").unwrap();
    let login_check = check(&local, &login);
    assert_eq!(login_check.on_store_error(), StoreErrorMode::Local);
    let isolate = MemoryStore::new();
    let outcomes: Vec<Outcome> = (0..7).map(|i| local.degrade(&login_check, &isolate, NOW + i).outcome()).collect();
    assert_eq!(outcomes[..5], [Outcome::Forwarded; 5]);
    assert_eq!(outcomes[5..], [Outcome::RateLimited; 2]);
    // A host that finishes a store failure without its own limiter refuses: never unlimited.
    let Decision::Respond(reply) = local.decide(&login, NOW, &Down) else { panic!("refusal expected") };
    assert_eq!((reply.status, reply.outcome), (503, Outcome::StoreErrorDenied));

    let allow = Policy::from_json(br#"{"limiter": {"on_store_error": "allow"}}"#).unwrap();
    assert_eq!(allow.decide(&login, NOW, &Down).outcome(), Outcome::StoreErrorAllowed);
    assert_eq!(allow.degrade(&check(&allow, &login), &isolate, NOW).outcome(), Outcome::StoreErrorAllowed);

    let deny = Policy::from_json(br#"{"limiter": {"on_store_error": "deny"}}"#).unwrap();
    let Decision::Respond(reply) = deny.decide(&login, NOW, &Down) else { panic!("refusal expected") };
    assert_eq!((reply.status, reply.outcome), (503, Outcome::StoreErrorDenied));
    assert_eq!(reply.header("x-frame-options"), Some("DENY"));
    assert_eq!(deny.degrade(&check(&deny, &login), &isolate, NOW).outcome(), Outcome::StoreErrorDenied);

    // A tier overrides the limiter's choice.
    let per_tier = Policy::from_json(
        br#"{"limiter": {"on_store_error": "allow"}, "rate_limits": [
            {"name": "login", "method": "POST", "path": "/api/v1/auth/login", "limit": "5/minute", "on_store_error": "deny"},
            {"name": "other", "method": "POST", "path": "/api/v1/other", "limit": "5/minute"}]}"#,
    )
    .unwrap();
    assert_eq!(check(&per_tier, &login).on_store_error(), StoreErrorMode::Deny);
    assert_eq!(check(&per_tier, &request(b"/api/v1/other")).on_store_error(), StoreErrorMode::Allow);
    let error = Policy::from_json(br#"{"rate_limits": [{"name": "a", "method": "GET", "path": "/", "limit": "1/second", "on_store_error": "maybe"}]}"#)
        .unwrap_err();
    assert!(error.path.starts_with("rate_limits"), "{error}");
}

#[test]
fn local_replies_are_stable_under_a_second_response_phase() {
    // Envoy runs a filter's own local reply through its response phase again.
    let policy = Policy::from_json(b"{}").unwrap();
    let Decision::Respond(reply) = decide(&policy, Scheme::Https, "GET", Some(b"evil"), b"/") else { panic!() };
    let mut again = reply.headers.to_vec();
    policy.response_edits(&reply.plan).apply(&mut again);
    let sorted = |mut v: Vec<(String, String)>| {
        v.sort();
        v
    };
    assert_eq!(sorted(again), sorted(reply.headers.to_vec()));
}

#[test]
fn the_fallback_plan_covers_host_generated_responses() {
    let policy = Policy::from_json(b"{}").unwrap();
    let mut headers = vec![("server".to_owned(), "envoy".to_owned())];
    policy.response_edits(&policy.fallback_plan(true)).apply(&mut headers);
    assert!(headers.contains(&("server".to_owned(), "Unknown".to_owned())));
    assert!(headers.iter().any(|(n, _)| n == "strict-transport-security"));
}

#[test]
fn response_edits_rewrite_a_whole_header_list() {
    let policy = Policy::from_json(b"{}").unwrap();
    let store = MemoryStore::new();
    let headers: Vec<(&str, &str)> = Vec::new();
    let request = Request {
        method: b"GET",
        scheme: Scheme::Https,
        authority: Some(b"localhost"),
        path: Some(b"/api/v1/videos"),
        peer: Peer::Socket("198.51.100.40"),
        headers: &headers,
    };
    let decision = policy.decide(&request, NOW, &store);
    assert_eq!(decision.outcome(), Outcome::Forwarded);
    assert!(decision.plan().is_https());
    let edits = policy.response_edits(&decision.plan());
    let upstream = vec![
        (":status".to_owned(), b"200".to_vec()),
        ("server".to_owned(), b"nginx".to_vec()),
        ("Server".to_owned(), b"again".to_vec()),
        ("x-powered-by".to_owned(), b"PHP".to_vec()),
        ("x-custom".to_owned(), b"kept".to_vec()),
        ("ratelimit".to_owned(), b"forged".to_vec()),
    ];
    let rewritten = edits.rewrite(&upstream);
    let get = |name: &str| {
        rewritten.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v).collect::<Vec<_>>()
    };
    assert_eq!(rewritten[0], (":status", &b"200"[..]), "pseudo-headers keep their place");
    assert_eq!(get("server"), [&b"Unknown"[..]]);
    assert_eq!(get("x-custom"), [&b"kept"[..]]);
    assert!(get("x-powered-by").is_empty());
    assert_eq!(get("ratelimit"), [&br#""videos";r=59;t=1"#[..]], "the upstream cannot forge rate-limit headers");
    assert!(edits.touches("STRICT-TRANSPORT-SECURITY") && !edits.touches("x-custom"));
    assert_eq!(edits.rate_limit_headers().len(), 5);
}

/// Editing in place (`apply`, as the Envoy filter does) leaves what rewriting the whole list
/// (`rewrite`, as the Worker does) leaves, whatever the upstream sent.
#[test]
fn editing_in_place_leaves_what_a_rewrite_leaves() {
    let upstream: Vec<(String, String)> = [
        ("server", "nginx"),
        ("Server", "again"),
        ("x-powered-by", "PHP"),
        ("x-custom", "kept"),
        ("ratelimit", "forged"),
        ("Retry-After", "7"),
        ("x-ratelimit-reset", "99"),
        ("strict-transport-security", "max-age=1"),
        ("RateLimit", "mine"),
    ]
    .map(|(n, v)| (n.to_owned(), v.to_owned()))
    .into();
    let headers: Vec<(&str, &str)> = Vec::new();
    for document in [
        &br#"{}"#[..],
        br#"{"headers": {"RateLimit": "mine", "Retry-After": "3"}, "remove_headers": ["x-custom"]}"#,
        br#"{"preset": "strict", "rate_limit_headers_on_success": false}"#,
    ] {
        let policy = Policy::from_json(document).unwrap();
        let store = MemoryStore::new();
        for (scheme, path) in
            [(Scheme::Https, "/api/v1/videos"), (Scheme::Http, "/x"), (Scheme::Https, "/api/v1/auth/login")]
        {
            for _ in 0..7 {
                let request = Request {
                    method: if path.ends_with("login") { b"POST" } else { b"GET" },
                    scheme,
                    authority: Some(b"localhost"),
                    path: Some(path.as_bytes()),
                    peer: Peer::Socket("198.51.100.40"),
                    headers: &headers,
                };
                let plan = policy.decide(&request, NOW, &store).plan();
                let edits = policy.response_edits(&plan);
                let lower = |list: Vec<(String, String)>| {
                    let mut list: Vec<_> = list.into_iter().map(|(n, v)| (n.to_ascii_lowercase(), v)).collect();
                    list.sort();
                    list
                };
                let mut in_place = upstream.clone();
                edits.apply(&mut in_place);
                let rewritten: Vec<(String, String)> = edits
                    .rewrite(&upstream)
                    .into_iter()
                    .map(|(n, v)| (n.to_owned(), String::from_utf8(v.to_vec()).unwrap()))
                    .collect();
                assert_eq!(lower(in_place), lower(rewritten), "{}: {plan:?}", String::from_utf8_lossy(document));
            }
        }
    }
}

#[test]
fn outcomes_have_stable_names() {
    use Outcome::*;
    let names: Vec<&str> =
        [Forwarded, ShadowLimited, Redirected, BadHost, RateLimited, StoreErrorAllowed, StoreErrorDenied]
            .iter()
            .map(|o| o.as_str())
            .collect();
    assert_eq!(
        names,
        [
            "forwarded",
            "shadow_limited",
            "redirected",
            "bad_host",
            "rate_limited",
            "store_error_allowed",
            "store_error_denied"
        ]
    );
}

#[test]
fn the_memory_store_counts_buckets_and_detects_races() {
    let store = MemoryStore::new();
    assert!(store.is_empty());
    let loaded = store.load(3).unwrap();
    assert_eq!((loaded.bytes, loaded.version), (None, Version(0)));
    assert_eq!(store.compare_and_swap(3, Version(0), b"a").unwrap(), Swap::Written);
    assert_eq!(store.compare_and_swap(3, Version(0), b"b").unwrap(), Swap::Conflict, "a stale version loses");
    let loaded = store.load(3).unwrap();
    assert_eq!(loaded.bytes.as_deref(), Some(&b"a"[..]));
    assert_eq!(store.compare_and_swap(3, loaded.version, b"c").unwrap(), Swap::Written);
    assert_eq!(store.len(), 1);
    assert_eq!(StoreError("x".into()).to_string(), "rate-limit store: x");
}

#[test]
fn shadow_mode_reports_contention_too() {
    /// Every write loses a race.
    struct AlwaysRacing(MemoryStore);
    impl BucketStore for AlwaysRacing {
        fn load(&self, index: u32) -> Result<Loaded, StoreError> {
            self.0.load(index)
        }
        fn compare_and_swap(&self, _: u32, _: Version, _: &[u8]) -> Result<Swap, StoreError> {
            Ok(Swap::Conflict)
        }
    }
    let headers: Vec<(&str, &str)> = Vec::new();
    let request = Request {
        method: b"POST",
        scheme: Scheme::Https,
        authority: Some(b"localhost"),
        path: Some(b"/api/v1/auth/login"),
        peer: Peer::Socket("198.51.100.41"),
        headers: &headers,
    };
    let enforce = Policy::from_json(b"{}").unwrap();
    let Decision::Respond(reply) = enforce.decide(&request, NOW, &AlwaysRacing(MemoryStore::new())) else { panic!() };
    assert_eq!((reply.status, reply.header("retry-after")), (429, Some("12")));
    let shadow = Policy::from_json(br#"{"rate_limit_mode": "shadow"}"#).unwrap();
    assert_eq!(shadow.decide(&request, NOW, &AlwaysRacing(MemoryStore::new())).outcome(), Outcome::ShadowLimited);
}

#[test]
fn error_replies_are_complete_unless_their_profile_drops_an_own_reply_header() {
    let policy = Policy::from_json(
        br#"{"profiles": [{"path_prefix": "/docs", "headers": {"x-frame-options": null}},
                          {"path_prefix": "/api", "headers": {"x-frame-options": "SAMEORIGIN"}}]}"#,
    )
    .unwrap();
    let own: Vec<String> = policy.own_reply_headers(true).into_iter().map(|(name, _)| name).collect();
    assert!(own.contains(&"x-frame-options".to_owned()) && own.contains(&"cache-control".to_owned()), "{own:?}");
    for (path, complete) in [("/", true), ("/api/x", true), ("/docs/x", false)] {
        let Decision::Respond(reply) = decide(&policy, Scheme::Https, "GET", Some(b"evil.example"), path.as_bytes())
        else {
            panic!("a foreign host is refused");
        };
        assert_eq!(policy.reply_is_complete(&reply.plan), complete, "{path}");
        // The flag says exactly whether the reply carries every header Envoy would add.
        assert_eq!(own.iter().all(|name| reply.header(name).is_some()), complete, "{path}");
    }
}

/// Counts how often the core asks for the peer.
struct CountingPeer {
    asked: std::sync::atomic::AtomicU32,
}

impl portcullis_core::PeerSource for CountingPeer {
    fn with_peer(&self, with: &mut dyn FnMut(Peer<'_>)) {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        with(Peer::Socket("198.51.100.1:1234"));
    }
}

#[test]
fn a_deferred_peer_is_fetched_once_and_only_when_the_decision_needs_it() {
    let asked = |policy: &Policy, scheme: Scheme, path: &[u8], headers: &[(&str, &str)]| {
        let source = CountingPeer { asked: 0.into() };
        let request = Request {
            method: b"POST",
            scheme,
            authority: Some(b"localhost"),
            path: Some(path),
            peer: Peer::Deferred(&source),
            headers,
        };
        let deferred = policy.decide(&request, NOW, &MemoryStore::new());
        let direct =
            policy.decide(&Request { peer: Peer::Socket("198.51.100.1:1234"), ..request }, NOW, &MemoryStore::new());
        assert_eq!(format!("{deferred:?}"), format!("{direct:?}"), "the same decision either way");
        source.asked.into_inner()
    };
    let seed = Policy::from_json(br#"{"allowed_hosts": ["localhost"]}"#).unwrap();
    assert_eq!(asked(&seed, Scheme::Https, b"/static/app.js", &[]), 0, "untiered");
    assert_eq!(asked(&seed, Scheme::Http, b"/static/app.js", &[]), 0, "redirected: no proxy is trusted");
    assert_eq!(asked(&seed, Scheme::Https, b"/api/v1/auth/login", &[]), 1, "a limited tier's key");
    let behind_proxy =
        Policy::from_json(br#"{"allowed_hosts": ["localhost"], "client_ip": {"trusted_hops": 1}}"#).unwrap();
    let forwarded = [("x-forwarded-proto", "https"), ("x-forwarded-for", "203.0.113.5")];
    assert_eq!(asked(&behind_proxy, Scheme::Http, b"/static/app.js", &forwarded), 1, "a forwarded scheme to judge");
    assert_eq!(asked(&behind_proxy, Scheme::Http, b"/api/v1/auth/login", &forwarded), 1, "judged once, keyed too");
}
