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
    let failures = &replay.failures;
    assert!(failures.is_empty(), "{} failures:\n\n{}", failures.len(), failures.join("\n\n"));
    assert!(replay.replayed >= replay.total - 2, "too few cases replayed: {}", replay.replayed);
    println!(
        "{backend:?}: replayed {} cases; not applicable to Envoy: {}",
        replay.replayed,
        replay.not_applicable.join(", ")
    );
}
