//! The conformance vectors replayed through a plugin, once for every test that replays them
//! (local mode in `conformance.rs`, global mode in `global.rs`).

use portcullis_core::conformance::{Action, Case, EPOCH_MS, Observed, Requirement, Step, Vectors};
use wasm_tests::{Host, HttpRequest, Plugin, Response};

/// What a replay found.
pub struct Replay {
    pub replayed: usize,
    pub total: usize,
    /// Cases whose requirements the host lacks, with the first one missing.
    pub not_applicable: Vec<String>,
    pub failures: Vec<String>,
    /// gRPC calls the plugins made.
    pub grpc_calls: usize,
}

/// Replays every case `supported` allows through the plugin `start` gives for it (from the
/// case's policy JSON); `after_case` checks the host once the case's steps are done.
pub fn replay(
    supported: &[Requirement],
    mut start: impl FnMut(&Case, &str) -> (Host, Plugin),
    mut after_case: impl FnMut(&Case, &Host),
) -> Replay {
    let vectors = Vectors::load().unwrap_or_else(|e| panic!("the vector file: {e}"));
    let mut replay = Replay {
        replayed: 0,
        total: vectors.cases.len(),
        not_applicable: Vec::new(),
        failures: Vec::new(),
        grpc_calls: 0,
    };
    for case in &vectors.cases {
        if let Some(missing) = case.requires.iter().find(|r| !supported.contains(r)) {
            replay.not_applicable.push(format!("{} (needs {missing:?})", case.name));
            continue;
        }
        replay.replayed += 1;
        let config = String::from_utf8_lossy(&vectors.config_json(case)).into_owned();
        let (host, mut plugin) = start(case, &config);
        for (index, step) in case.steps.iter().enumerate() {
            host.set_time_nanos((EPOCH_MS + step.at_ms) * 1_000_000);
            let request = request_of(step);
            for attempt in 0..step.repeat {
                let exchange = plugin.send(&request).unwrap_or_else(|e| panic!("{} trapped: {e:?}", case.name));
                replay.grpc_calls += exchange.grpc_calls.len();
                let observed = Observed {
                    action: if exchange.local { Action::Respond } else { Action::Forward },
                    status: exchange.response.status,
                    headers: exchange.response.text_headers(),
                    body: String::from_utf8_lossy(&exchange.response.body).into_owned(),
                };
                if let Err(problems) = step.expect.check(&observed) {
                    replay.failures.push(format!("{} / step {index} / attempt {attempt}:\n{problems}", case.name));
                }
            }
        }
        after_case(case, &host);
    }
    replay
}

/// A step's request as this host sends it, with the upstream's answer.
fn request_of(step: &Step) -> HttpRequest {
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
    request
}
