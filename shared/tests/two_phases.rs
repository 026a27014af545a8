//! The two-phase decision (`begin`, the GCRA step where the state lives, `finish`), the global
//! backend's configuration and fallback, and what the core offers a rate-limit service.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_core::config::Unavailable;
use portcullis_core::rate::Rate;
use portcullis_core::{
    Acquire, Begin, BucketStore, Decision, Gcra, HashKey, LimitCheck, MemoryStore, Outcome, Peer, Policy,
    RateLimitHeaders, Request, Scheme, StoreError, Verdict,
};

const NOW: u64 = 1_700_000_000_000_000_000;

fn begin(policy: &Policy, scheme: Scheme, method: &str, authority: &str, path: &str, peer: &str) -> Begin {
    let headers: Vec<(&str, &str)> = Vec::new();
    let request = Request {
        method: method.as_bytes(),
        scheme,
        authority: Some(authority.as_bytes()),
        path: Some(path.as_bytes()),
        peer: Peer::Socket(peer),
        headers: &headers,
    };
    policy.begin(&request)
}

fn login(policy: &Policy, peer: &str) -> LimitCheck {
    match begin(policy, Scheme::Https, "POST", "localhost", "/api/v1/auth/login", peer) {
        Begin::Check(check) => check,
        Begin::Decided(decision) => panic!("login is limited: {decision:?}"),
    }
}

fn status(decision: &Decision) -> u16 {
    match decision {
        Decision::Respond(reply) => reply.status,
        Decision::Forward(_) => 200,
    }
}

#[test]
fn the_first_phase_decides_everything_that_needs_no_state() {
    let policy = Policy::from_json(br#"{"https_redirect": {"https_port": 8443}}"#).unwrap();
    let decided = |scheme, method, authority, path| match begin(&policy, scheme, method, authority, path, "192.0.2.1") {
        Begin::Decided(decision) => decision.outcome(),
        Begin::Check(_) => panic!("{method} {path} needs no state"),
    };
    assert_eq!(decided(Scheme::Http, "POST", "localhost", "/api/v1/auth/login"), Outcome::Redirected);
    assert_eq!(decided(Scheme::Https, "POST", "evil.example", "/api/v1/auth/login"), Outcome::BadHost);
    assert_eq!(decided(Scheme::Https, "GET", "localhost", "/api/v1/health"), Outcome::Forwarded, "unlimited");
    assert_eq!(decided(Scheme::Https, "GET", "localhost", "/elsewhere"), Outcome::Forwarded, "untiered");
}

#[test]
fn a_check_is_plain_data_naming_its_tier_rate_bucket_and_client() {
    let policy = Policy::from_json(b"{}").unwrap();
    let check = login(&policy, "192.0.2.1:5000");
    assert_eq!(policy.tier_name(&check), "login");
    assert_eq!((check.gcra().limit(), check.gcra().period_secs()), (5, 60));
    assert_eq!(check.limited_tier(), 0);
    assert!(!check.is_shadow());
    assert!(check.plan().is_https());
    assert!(check.slot().index < policy.bucket_count() && check.slot().fingerprint != 0);
    assert_eq!(check, login(&policy, "192.0.2.1:6000"), "the port is not the client");
    assert_ne!(check.client_id(), login(&policy, "192.0.2.2:5000").client_id());
    let keyed = Policy::from_json(br#"{"limiter": {"hash_key": "00112233445566778899aabbccddeeff"}}"#).unwrap();
    assert_ne!(check.client_id(), login(&keyed, "192.0.2.1:5000").client_id(), "the id is keyed");
    let refresh = match begin(&policy, Scheme::Https, "POST", "localhost", "/api/v1/auth/refresh", "192.0.2.1") {
        Begin::Check(check) => check,
        Begin::Decided(_) => panic!("refresh is limited"),
    };
    assert_eq!(refresh.limited_tier(), 1);
    assert_eq!(refresh.client_id(), check.client_id(), "one id per client, whatever the tier");
}

#[test]
fn finishing_gives_the_one_phase_decision_for_every_answer() {
    let policy = Policy::from_json(b"{}").unwrap();
    let check = login(&policy, "198.51.100.9");
    let (one_phase, two_phases) = (MemoryStore::new(), MemoryStore::new());
    let headers: Vec<(&str, &str)> = Vec::new();
    let request = Request {
        method: b"POST",
        scheme: Scheme::Https,
        authority: Some(b"localhost"),
        path: Some(b"/api/v1/auth/login"),
        peer: Peer::Socket("198.51.100.9"),
        headers: &headers,
    };
    let mut statuses = Vec::new();
    for i in 0..7 {
        let now = NOW + i * 1_000_000_000;
        let one = policy.decide(&request, now, &one_phase);
        let two = policy.finish(&check, policy.acquire(&check, &two_phases, now));
        assert_eq!(one, two, "request {i}: status, headers and body alike");
        statuses.push(status(&one));
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    let allowed = Verdict { allowed: true, remaining: 3, reset_after: 24_000_000_000, retry_after: 0 };
    let denied = Verdict { allowed: false, remaining: 0, reset_after: 60_000_000_000, retry_after: 12_000_000_000 };
    assert_eq!(policy.finish(&check, Acquire::from_verdict(allowed)).outcome(), Outcome::Forwarded);
    let refused = policy.finish(&check, Acquire::from_verdict(denied));
    let Decision::Respond(reply) = &refused else { panic!("refused") };
    assert_eq!((reply.status, reply.header("retry-after")), (429, Some("12")));
    let Decision::Respond(contended) = policy.finish(&check, Acquire::Contended) else { panic!("contended") };
    assert_eq!(contended.header("retry-after"), Some("12"), "one emission interval");
    assert_eq!(
        policy.finish(&check, Acquire::StoreFailed(StoreError("down".into()))).outcome(),
        Outcome::StoreErrorDenied,
        "`local` needs the host's limiter (degrade); finish alone refuses"
    );

    let shadow = Policy::from_json(br#"{"rate_limit_mode": "shadow"}"#).unwrap();
    let shadow_check = login(&shadow, "198.51.100.9");
    assert!(shadow_check.is_shadow());
    assert_eq!(shadow.finish(&shadow_check, Acquire::from_verdict(denied)).outcome(), Outcome::ShadowLimited);
    assert_eq!(shadow.finish(&shadow_check, Acquire::Contended).outcome(), Outcome::ShadowLimited);

    // A check from a policy with more tiers than this one is refused, never forwarded unlimited.
    let many = Policy::from_json(
        br#"{"rate_limits": [{"name": "a", "method": "GET", "path": "/a", "limit": "1/minute"},
        {"name": "b", "method": "GET", "path": "/b", "limit": "1/minute"}]}"#,
    )
    .unwrap();
    let foreign = match begin(&many, Scheme::Https, "GET", "localhost", "/b", "192.0.2.1") {
        Begin::Check(check) => check,
        Begin::Decided(_) => panic!("b is limited"),
    };
    let few = Policy::from_json(br#"{"rate_limits": []}"#).unwrap();
    assert_eq!(status(&few.finish(&foreign, Acquire::from_verdict(allowed))), 503);
    assert_eq!(few.tier_name(&foreign), "");
}

#[test]
fn the_global_backend_is_configured_field_by_field() {
    let error = |json: &str| Policy::from_json(json.as_bytes()).unwrap_err().to_string();
    assert!(error(r#"{"limiter": {"backend": "global"}}"#).starts_with("limiter.global: is required"));
    assert!(
        error(r#"{"limiter": {"backend": "global", "hash_key": "00112233445566778899aabbccddeeff", "global": {"cluster": ""}}}"#).starts_with("limiter.global.cluster")
    );
    assert!(
        error(r#"{"limiter": {"backend": "global", "hash_key": "00112233445566778899aabbccddeeff", "global": {"cluster": "rl", "timeout_ms": 0}}}"#)
            .starts_with("limiter.global.timeout_ms: 0 is not between 1 and 10000")
    );
    assert!(
        error(r#"{"limiter": {"backend": "global", "hash_key": "00112233445566778899aabbccddeeff", "global": {"cluster": "rl", "domain": ""}}}"#)
            .starts_with("limiter.global.domain")
    );
    assert!(error(r#"{"limiter": {"backend": "fleet"}}"#).starts_with("limiter.backend: unknown variant"));
    assert!(
        error(r#"{"limiter": {"backend": "global", "global": {"cluster": "rl"}}}"#)
            .starts_with("limiter.hash_key: is required with \"backend\": \"global\""),
        "hosts sharing a service must share the key"
    );

    let local = Policy::from_json(br#"{"limiter": {"global": {"cluster": "rl"}}}"#).unwrap();
    assert!(local.global_limiter().is_none(), "a global section alone does not switch the backend");
    let global = Policy::from_json(br#"{"limiter": {"backend": "global", "hash_key": "00112233445566778899aabbccddeeff", "global": {"cluster": "rl"}}}"#).unwrap();
    let config = global.global_limiter().unwrap();
    assert_eq!((config.cluster.as_str(), config.timeout_ms, config.domain.as_str()), ("rl", 20, "portcullis"));
    assert_eq!(config.on_unavailable, Unavailable::Local);
}

#[test]
fn an_unavailable_service_is_decided_by_on_unavailable_never_unlimited_by_default() {
    let with = |mode: &str| {
        Policy::from_json(
            format!(
                r#"{{"limiter": {{"backend": "global", "hash_key": "00112233445566778899aabbccddeeff", "global": {{"cluster": "rl", "on_unavailable": "{mode}"}}}}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    };
    let local = with("local");
    let store = MemoryStore::new();
    let own = MemoryStore::new();
    let check = login(&local, "203.0.113.5");
    let decide = |policy: &Policy, check: &LimitCheck, store: &dyn BucketStore| {
        let limited = policy.unavailable(check, store, &own, NOW);
        (status(&limited.decision), limited.degraded)
    };
    let statuses: Vec<(u16, bool)> = (0..7).map(|_| decide(&local, &check, &store)).collect();
    let fresh = [(200, false); 5];
    assert_eq!(statuses[..5], fresh, "this host's own exact limiter");
    assert_eq!(statuses[5..], [(429, false); 2]);
    // Its store failing too, the host's last resort still limits, and says it did.
    let other = login(&local, "203.0.113.9");
    let statuses: Vec<(u16, bool)> = (0..7).map(|_| decide(&local, &other, &Down)).collect();
    assert_eq!(statuses[..5], [(200, true); 5]);
    assert_eq!(statuses[5..], [(429, true); 2]);

    let allow = with("allow");
    let decision = allow.unavailable(&login(&allow, "203.0.113.5"), &store, &own, NOW).decision;
    assert_eq!(decision.outcome(), Outcome::StoreErrorAllowed);
    assert!(allow.response_edits(&decision.plan()).rate_limit_headers().is_empty());

    let deny = with("deny");
    let Decision::Respond(reply) = deny.unavailable(&login(&deny, "203.0.113.5"), &store, &own, NOW).decision else {
        panic!()
    };
    assert_eq!((reply.status, reply.header("retry-after")), (503, Some("1")));

    let plain = Policy::from_json(b"{}").unwrap();
    assert_eq!(decide(&plain, &login(&plain, "203.0.113.6"), &MemoryStore::new()), (200, false));
}

/// A store whose every call fails.
struct Down;

impl BucketStore for Down {
    fn load(&self, _: u32) -> Result<portcullis_core::Loaded, StoreError> {
        Err(StoreError("down".into()))
    }
    fn compare_and_swap(
        &self,
        _: u32,
        _: portcullis_core::Version,
        _: &[u8],
    ) -> Result<portcullis_core::Swap, StoreError> {
        Err(StoreError("down".into()))
    }
}

#[test]
fn a_rate_limit_service_finds_rates_by_tier_name_and_hashes_with_the_policys_key() {
    let policy = Policy::from_json(b"{}").unwrap();
    let login = policy.tier_limit("login").unwrap();
    assert_eq!((login.rate(), login.window()), (Rate::new(5, 60).unwrap(), 60_000_000_000));
    assert_eq!(login, Gcra::new(Rate::new(5, 60).unwrap()));
    assert_eq!(policy.tier_limit("health"), None, "unlimited");
    assert_eq!(policy.tier_limit("nope"), None);

    let keyed = Policy::from_json(br#"{"limiter": {"hash_key": "00112233445566778899aabbccddeeff"}}"#).unwrap();
    assert_eq!(policy.keyed_id(b"client"), policy.keyed_id(b"client"));
    assert_ne!(policy.keyed_id(b"client"), policy.keyed_id(b"client2"));
    assert_ne!(policy.keyed_id(b"client"), keyed.keyed_id(b"client"));

    let allowed = Verdict { allowed: true, remaining: 4, reset_after: 12_000_000_000, retry_after: 0 };
    let rendered = RateLimitHeaders::for_verdict("login", 5, 60, &allowed);
    let headers: Vec<(&str, &str)> = rendered.iter().collect();
    assert_eq!(headers[0], ("ratelimit-policy", "\"login\";q=5;w=60"));
    assert_eq!(headers[1], ("ratelimit", "\"login\";r=4;t=12"));
    assert!(!headers.iter().any(|(n, _)| *n == "retry-after"));
    let refused = Verdict { allowed: false, remaining: 0, reset_after: 60_000_000_000, retry_after: 11_500_000_000 };
    let rendered = RateLimitHeaders::for_verdict("login", 5, 60, &refused);
    let headers: Vec<(&str, &str)> = rendered.iter().collect();
    assert!(headers.contains(&("retry-after", "12")), "{headers:?}");
}

#[test]
fn a_policy_without_a_configured_key_takes_the_hosts_and_keeps_a_configured_one() {
    let unkeyed = Policy::from_json(b"{}").unwrap();
    assert!(unkeyed.needs_hash_key() && !unkeyed.hash_key_configured());
    let key = |byte: u8| HashKey::from_bytes([byte; 16]);
    let one = unkeyed.clone().with_hash_key(key(1));
    let two = unkeyed.clone().with_hash_key(key(2));
    assert!(!one.needs_hash_key() && !one.hash_key_configured());
    let id = |policy: &Policy| login(policy, "203.0.113.5").client_id();
    assert_ne!(id(&one), id(&two), "a host's own key moves every client");
    assert_ne!(id(&one), id(&unkeyed));
    assert_eq!(id(&one), id(&unkeyed.clone().with_hash_key(key(1))), "the same key, the same ids");

    let configured = Policy::from_json(br#"{"limiter": {"hash_key": "00112233445566778899aabbccddeeff"}}"#).unwrap();
    assert!(!configured.needs_hash_key() && configured.hash_key_configured());
    assert_eq!(id(&configured.clone().with_hash_key(key(1))), id(&configured), "configured wins");

    let parsed = HashKey::parse_hex("00112233445566778899aabbccddeeff").unwrap();
    assert_eq!(HashKey::from_bytes(parsed.to_bytes()), parsed);
    assert_eq!(parsed.to_bytes()[..3], [0x00, 0x11, 0x22]);
    assert_eq!(id(&unkeyed.with_hash_key(parsed)), id(&configured), "bytes and hex name one key");
    assert!(HashKey::parse_hex("0011").is_none() && HashKey::parse_hex(&"g".repeat(32)).is_none());
    assert_eq!(format!("{parsed:?}"), "HashKey(..)", "a key is never logged");
}
