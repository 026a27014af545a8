//! Runs the hot path many times, for profilers (`valgrind --tool=callgrind`).

use portcullis_core::{Decision, MemoryStore, Peer, Policy, Request, Scheme};

fn main() {
    let policy = Policy::from_json(b"{}").unwrap_or_else(|e| panic!("{e}"));
    let store = MemoryStore::new();
    let headers: Vec<(&str, &str)> = Vec::new();
    let mut kept = 0usize;
    for i in 0..10_000u64 {
        let path: &[u8] = if i % 2 == 0 { b"/api/v1/videos?limit=20" } else { b"/static/app.js" };
        let request = Request {
            method: b"GET",
            scheme: Scheme::Https,
            authority: Some(b"localhost:8443"),
            path: Some(path),
            peer: Peer::Socket("203.0.113.9:41000"),
            headers: &headers,
        };
        let decision = policy.decide(&request, 1_700_000_000_000_000_000 + i * 1_000_000_000, &store);
        if let Decision::Forward(forward) = decision {
            let mut response = vec![("content-type".to_owned(), "application/json".to_owned())];
            policy.response_edits(&forward.plan).apply(&mut response);
            kept += response.len();
        }
    }
    println!("{kept}");
}
