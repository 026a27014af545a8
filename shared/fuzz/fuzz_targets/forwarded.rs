//! Arbitrary `X-Forwarded-For` / `Forwarded` chains behind a trusted proxy: no panic, and the
//! limiter state stays within its bound however many spellings arrive.
#![no_main]

use portcullis_core::{MemoryStore, Peer, Policy, Request, Scheme};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    thread_local! {
        static POLICIES: [Policy; 2] = [
            Policy::from_json(br#"{"client_ip": {"trusted_proxies": ["10.0.0.0/8", "::1"], "trusted_hops": 2}, "limiter": {"capacity_per_tier": 8}}"#).expect("valid"),
            Policy::from_json(br#"{"client_ip": {"trusted_proxies": ["10.0.0.0/8"], "forwarded_header": "forwarded"}, "limiter": {"capacity_per_tier": 8}}"#).expect("valid"),
        ];
    }
    POLICIES.with(|policies| {
        for (policy, name) in policies.iter().zip(["x-forwarded-for", "forwarded"]) {
            let store = MemoryStore::new();
            for chunk in data.split(|&b| b == b'\n').take(16) {
                let headers = [(name, chunk), ("x-forwarded-proto", chunk)];
                let request = Request {
                    method: b"POST",
                    scheme: Scheme::Https,
                    authority: Some(b"localhost"),
                    path: Some(b"/api/v1/auth/login"),
                    peer: Peer::Socket("10.1.2.3:4000"),
                    headers: &headers[..],
                };
                policy.decide(&request, 1_700_000_000_000_000_000, &store);
            }
            assert!(store.len() as u32 <= policy.bucket_count());
        }
    });
});
