//! Any `Host`: refused, or redirected to a `Location` that carries only safe bytes.
#![no_main]

use portcullis_core::{Decision, MemoryStore, Outcome, Peer, Policy, Request, Scheme};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    thread_local! {
        static POLICY: Policy = Policy::from_json(br#"{"allowed_hosts": ["*"]}"#).expect("a valid policy");
    }
    POLICY.with(|policy| {
        let headers: Vec<(&str, &[u8])> = Vec::new();
        let request = Request {
            method: b"GET",
            scheme: Scheme::Http,
            authority: Some(data),
            path: Some(b"/x"),
            peer: Peer::Socket("192.0.2.1:1"),
            headers: &headers,
        };
        match policy.decide(&request, 1, &MemoryStore::new()) {
            Decision::Respond(reply) if reply.outcome == Outcome::Redirected => {
                let location = reply.header("location").expect("a redirect has a Location");
                assert!(location.starts_with("https://"));
                assert!(location.bytes().all(|b| b.is_ascii_graphic()), "{location:?}");
            }
            Decision::Respond(reply) => assert_eq!(reply.outcome, Outcome::BadHost),
            Decision::Forward(_) => panic!("plain HTTP is never forwarded here"),
        }
    });
});
