//! Replays the core's conformance vectors through the filter: the built `.wasm` under wasmtime,
//! and the filter crate linked natively.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod vectors;

use portcullis_core::conformance::Requirement;
use wasm_tests::{Backend, Host};

/// What this host can do: choose peers, move the clock and send requests without a Host.
/// Cloudflare's `CF-Connecting-IP` is the Worker's identity, never the Envoy filter's.
const SUPPORTED: [Requirement; 3] = [Requirement::Peer, Requirement::Clock, Requirement::RawRequest];

wasm_tests::on_each_backend!(filter_meets_every_conformance_vector);

fn filter_meets_every_conformance_vector(backend: Backend) {
    let replay = vectors::replay(
        &SUPPORTED,
        |case, config| {
            let host = Host::new();
            let plugin = host.start(backend, config).unwrap_or_else(|e| panic!("{}: {e:?}", case.name));
            (host, plugin)
        },
        |_, _| {},
    );
    let summary = replay.found.verdict(replay.found.total - 2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(replay.grpc_calls, 0, "a local-mode policy never calls the rate-limit service");
    println!("{backend:?}: {summary}");
}
