//! The whole decision on arbitrary requests, then the response phase: never a panic, and every
//! header the core produces is a valid field value.
#![no_main]

use portcullis_core::{Decision, MemoryStore, Peer, Policy, Request, Scheme};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    thread_local! {
        static POLICY: Policy = Policy::from_json(br#"{"allowed_hosts": ["localhost", "*.example.com"], "https_redirect": {"https_port": 8443}, "client_ip": {"trusted_hops": 1}}"#).expect("valid");
        static STORE: MemoryStore = MemoryStore::new();
    }
    let mut fields = data.split(|&b| b == 0);
    let mut next = || fields.next().unwrap_or_default();
    let (method, authority, path, peer, xff, xfp) = (next(), next(), next(), next(), next(), next());
    let https = data.first().is_some_and(|b| b & 1 == 1);
    let peer = std::str::from_utf8(peer).unwrap_or("");
    let headers = [("x-forwarded-for", xff), ("x-forwarded-proto", xfp)];
    POLICY.with(|policy| {
        STORE.with(|store| {
            let request = Request {
                method,
                scheme: if https { Scheme::Https } else { Scheme::Http },
                authority: Some(authority),
                path: Some(path),
                peer: Peer::Socket(peer),
                headers: &headers[..],
            };
            let decision = policy.decide(&request, 1_700_000_000_000_000_000, store);
            let mut response: Vec<(String, String)> = Vec::new();
            policy.response_edits(&decision.plan()).apply(&mut response);
            let reply_headers = match &decision {
                Decision::Respond(reply) => reply.headers.to_vec(),
                Decision::Forward(_) => Vec::new(),
            };
            for (name, value) in response.iter().chain(&reply_headers) {
                assert!(value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)), "{name}: {value:?}");
            }
        });
    });
});
