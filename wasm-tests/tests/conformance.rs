//! Replays the core's conformance vectors through the filter: the built `.wasm` under wasmtime,
//! and the filter crate linked natively.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_core::conformance::{Action, EPOCH_MS, Observed, Requirement, Vectors};
use wasm_tests::{Backend, Host, HttpRequest, Response};

/// What this host can do: choose peers, move the clock and send requests without a Host.
/// Cloudflare's `CF-Connecting-IP` is the Worker's identity, never the Envoy filter's.
const SUPPORTED: [Requirement; 3] = [Requirement::Peer, Requirement::Clock, Requirement::RawRequest];

wasm_tests::on_each_backend!(filter_meets_every_conformance_vector);

fn filter_meets_every_conformance_vector(backend: Backend) {
    let vectors = Vectors::load().unwrap();
    let mut failures = Vec::new();
    let mut not_applicable = Vec::new();
    let mut replayed = 0;

    for case in &vectors.cases {
        if let Some(missing) = case.requires.iter().find(|r| !SUPPORTED.contains(r)) {
            not_applicable.push(format!("{} (needs {missing:?})", case.name));
            continue;
        }
        replayed += 1;
        let host = Host::new();
        let config = String::from_utf8(vectors.config_json(case)).unwrap();
        let mut plugin = host.start(backend, &config).unwrap_or_else(|e| panic!("{}: {e:?}", case.name));
        for (index, step) in case.steps.iter().enumerate() {
            host.set_time_nanos((EPOCH_MS + step.at_ms) * 1_000_000);
            let r = &step.request;
            let mut request = HttpRequest::new(&r.method, r.path.as_deref().unwrap_or("/"));
            request = match r.authority.as_deref() {
                Some(authority) if r.scheme == "http" => request.plain(authority),
                Some(authority) => request.authority(authority),
                None => request.without(":authority"),
            };
            if r.path.is_none() {
                request = request.without(":path");
            }
            request = request.peer(r.peer.as_deref().unwrap_or("192.0.2.1:50000"));
            for (name, value) in &r.headers {
                request = request.header(name, value);
            }
            request.upstream = Response {
                status: step.upstream.status,
                headers: step.upstream.headers.iter().map(|(n, v)| (n.clone(), v.clone().into_bytes())).collect(),
                body: step.upstream.body.clone().into_bytes(),
            };
            for attempt in 0..step.repeat {
                let exchange = plugin.send(&request).unwrap_or_else(|e| panic!("{} trapped: {e:?}", case.name));
                let observed = Observed {
                    action: if exchange.local { Action::Respond } else { Action::Forward },
                    status: exchange.response.status,
                    headers: exchange.response.text_headers(),
                    body: String::from_utf8_lossy(&exchange.response.body).into_owned(),
                };
                if let Err(problems) = step.expect.check(&observed) {
                    failures.push(format!("{} / step {index} / attempt {attempt}:\n{problems}", case.name));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n\n{}", failures.len(), failures.join("\n\n"));
    assert!(replayed >= vectors.cases.len() - 2, "too few cases replayed: {replayed}");
    println!("{backend:?}: replayed {replayed} cases; not applicable to Envoy: {}", not_applicable.join(", "));
}
