//! The conformance vectors replayed through a plugin, once for every test that replays them
//! (local mode in `conformance.rs`, global mode in `global.rs`).

use portcullis_core::conformance::{self, Action, Case, Harness, Observed, Requirement, Step};
use wasm_tests::{Host, HttpRequest, Plugin, Response};

/// What a replay found: the core's account, and the gRPC calls the plugins made.
pub struct Replay {
    pub found: conformance::Replay,
    pub grpc_calls: usize,
}

/// The filter in a proxy-wasm host, as the core's replay drives it.
struct Filter<Start, After> {
    start: Start,
    after_case: After,
    running: Option<(Host, Plugin)>,
    grpc_calls: usize,
}

impl<Start, After> Harness for Filter<Start, After>
where
    Start: FnMut(&Case, &str) -> (Host, Plugin),
    After: FnMut(&Case, &Host),
{
    fn start(&mut self, case: &Case, policy_json: &[u8]) -> Result<(), String> {
        self.running = Some((self.start)(case, &String::from_utf8_lossy(policy_json)));
        Ok(())
    }

    fn send(&mut self, step: &Step, now_nanos: u64) -> Result<Observed, String> {
        let (host, plugin) = self.running.as_mut().ok_or("not started")?;
        host.set_time_nanos(now_nanos);
        let exchange = plugin.send(&request_of(step)).map_err(|e| format!("the filter trapped: {e:?}"))?;
        self.grpc_calls += exchange.grpc_calls.len();
        Ok(Observed {
            action: if exchange.local { Action::Respond } else { Action::Forward },
            status: exchange.response.status,
            headers: exchange.response.text_headers(),
            body: String::from_utf8_lossy(&exchange.response.body).into_owned(),
        })
    }

    fn finish(&mut self, case: &Case) -> Result<(), String> {
        if let Some((host, _)) = &self.running {
            (self.after_case)(case, host);
        }
        Ok(())
    }
}

/// Replays every case `supported` allows through the plugin `start` gives for it (from the
/// case's policy JSON); `after_case` checks the host once the case's steps are done.
pub fn replay(
    supported: &[Requirement],
    start: impl FnMut(&Case, &str) -> (Host, Plugin),
    after_case: impl FnMut(&Case, &Host),
) -> Replay {
    let mut filter = Filter { start, after_case, running: None, grpc_calls: 0 };
    let found = conformance::replay(supported, &mut filter);
    Replay { found, grpc_calls: filter.grpc_calls }
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
