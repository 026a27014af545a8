//! Properties over generated inputs: nothing panics, canonical paths are fixed points, and the
//! limiter never hands out more than GCRA allows — with or without evictions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use portcullis_core::limiter::gcra::Gcra;
use portcullis_core::limiter::table::Bucket;
use portcullis_core::path::canonicalize;
use portcullis_core::rate::Rate;
use portcullis_core::{Decision, MemoryStore, Peer, Policy, Request, Scheme};
use proptest::prelude::*;

const SEC: u64 = 1_000_000_000;
const START: u64 = 1_700_000_000 * SEC;

/// Bytes that exercise the canonicaliser: separators, dots, escapes, hex digits, case.
fn path_bytes() -> impl Strategy<Value = Vec<u8>> {
    let alphabet = prop::sample::select(b"/./.%2fF5e;\\?#aAlL\x00\xff ".to_vec());
    prop::collection::vec(prop_oneof![3 => alphabet, 1 => any::<u8>()], 0..64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn canonicalisation_is_idempotent(raw in path_bytes()) {
        let once = canonicalize(&raw);
        prop_assert!(once.starts_with('/'));
        prop_assert_eq!(canonicalize(once.as_bytes()), once.clone());
    }

    #[test]
    fn no_request_makes_the_policy_panic(
        method in prop::collection::vec(any::<u8>(), 0..8),
        https in any::<bool>(),
        authority in prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
        path in prop::option::of(path_bytes()),
        peer in prop_oneof![
            Just(None),
            Just(Some("cloudflare".to_owned())),
            "[0-9a-f:.\\[\\]]{0,40}".prop_map(Some),
        ],
        headers in prop::collection::vec(
            (prop::sample::select(vec!["x-forwarded-for", "forwarded", "x-forwarded-proto", "cf-connecting-ip", "host"]),
             prop::collection::vec(any::<u8>(), 0..60)),
            0..6),
        trusted in any::<bool>(),
    ) {
        let config: &[u8] = if trusted {
            br#"{"allowed_hosts": ["*"], "client_ip": {"trusted_proxies": ["0.0.0.0/0", "::/0"], "trusted_hops": 3}}"#
        } else {
            br#"{"allowed_hosts": ["localhost", "*.example.com"], "client_ip": {"forwarded_header": "forwarded", "trusted_hops": 1}}"#
        };
        let policy = Policy::from_json(config).unwrap();
        let request = Request {
            method: &method,
            scheme: if https { Scheme::Https } else { Scheme::Http },
            authority: authority.as_deref(),
            path: path.as_deref(),
            peer: match peer.as_deref() {
                None => Peer::Unknown,
                Some("cloudflare") => Peer::Cloudflare,
                Some(addr) => Peer::Socket(addr),
            },
            headers: &headers,
        };
        let decision = policy.decide(&request, START, &MemoryStore::new());
        let mut out: Vec<(String, String)> = Vec::new();
        policy.response_edits(&decision.plan()).apply(&mut out);
        if let Decision::Respond(reply) = decision {
            for (name, value) in &reply.headers {
                prop_assert!(value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)), "{name}: {value:?}");
            }
        }
    }

    #[test]
    fn no_config_document_makes_the_compiler_panic(json in ".{0,200}") {
        let _ = Policy::from_json(json.as_bytes());
    }

    /// GCRA(T, τ) with burst B: in any span from one allowed request to another, at most
    /// B + ⌊span / T⌋ requests are allowed.
    #[test]
    fn a_key_never_exceeds_burst_plus_refill(gaps in prop::collection::vec(0u64..4_000, 1..200)) {
        let policy = Policy::from_json(b"{}").unwrap();
        let store = MemoryStore::new();
        let headers: Vec<(&str, &str)> = Vec::new();
        let request = Request {
            method: b"POST",
            scheme: Scheme::Https,
            authority: Some(b"localhost"),
            path: Some(b"/api/v1/auth/login"),
            peer: Peer::Socket("198.51.100.8"),
            headers: &headers,
        };
        let (burst, interval) = (5u64, 12 * SEC);
        let mut now = START;
        let mut allowed = Vec::new();
        for gap_ms in gaps {
            now += gap_ms * 1_000_000;
            if matches!(policy.decide(&request, now, &store), Decision::Forward(_)) {
                allowed.push(now);
            }
        }
        for (i, first) in allowed.iter().enumerate() {
            for (j, last) in allowed.iter().enumerate().skip(i) {
                let count = (j - i + 1) as u64;
                prop_assert!(count <= burst + (last - first) / interval, "{count} allowed within {} ns", last - first);
            }
        }
    }

    /// Making room never gives a key more than it would have had with unlimited memory.
    #[test]
    fn eviction_never_increases_a_keys_allowance(
        traffic in prop::collection::vec((1u64..=9, 0u64..3_000), 1..300),
        limit in 1u32..6,
    ) {
        let gcra = Gcra::new(Rate::new(limit, 60).unwrap());
        let mut bucket = Bucket::default();
        let mut unbounded: HashMap<u64, u64> = HashMap::new();
        let mut bounded_allowed: HashMap<u64, u32> = HashMap::new();
        let mut reference_allowed: HashMap<u64, u32> = HashMap::new();
        let mut now = START;
        for (key, gap_ms) in traffic {
            now += gap_ms * 1_000_000;
            if bucket.admit(key, &gcra, now).verdict.allowed {
                *bounded_allowed.entry(key).or_default() += 1;
            }
            let tat = unbounded.entry(key).or_default();
            let (verdict, next) = gcra.check(*tat, now);
            if let Some(next) = next {
                *tat = next;
            }
            if verdict.allowed {
                *reference_allowed.entry(key).or_default() += 1;
            }
            let bounded = bounded_allowed.get(&key).copied().unwrap_or(0);
            let reference = reference_allowed.get(&key).copied().unwrap_or(0);
            prop_assert!(bounded <= reference, "key {key}: {bounded} allowed in a full table, {reference} with unlimited memory");
        }
    }

    /// The same through the whole policy: a one-bucket table against a roomy one.
    #[test]
    fn a_tiny_table_is_never_more_lenient(
        traffic in prop::collection::vec((0u8..12, 0u64..2_000), 1..200),
    ) {
        let tiny = Policy::from_json(br#"{"limiter": {"capacity_per_tier": 4}}"#).unwrap();
        let roomy = Policy::from_json(br#"{"limiter": {"capacity_per_tier": 1000000}}"#).unwrap();
        let (tiny_store, roomy_store) = (MemoryStore::new(), MemoryStore::new());
        let headers: Vec<(&str, &str)> = Vec::new();
        let mut counts: HashMap<u8, (u32, u32)> = HashMap::new();
        let mut now = START;
        for (client, gap_ms) in traffic {
            now += gap_ms * 1_000_000;
            let peer = format!("198.51.100.{client}");
            let request = Request {
                method: b"POST",
                scheme: Scheme::Https,
                authority: Some(b"localhost"),
                path: Some(b"/api/v1/auth/login"),
                peer: Peer::Socket(&peer),
                headers: &headers,
            };
            let entry = counts.entry(client).or_default();
            entry.0 += u32::from(matches!(tiny.decide(&request, now, &tiny_store), Decision::Forward(_)));
            entry.1 += u32::from(matches!(roomy.decide(&request, now, &roomy_store), Decision::Forward(_)));
            prop_assert!(entry.0 <= entry.1, "client {client}: tiny {} > roomy {}", entry.0, entry.1);
        }
        prop_assert!(tiny_store.len() <= 1, "the tiny table holds one bucket");
    }
}
