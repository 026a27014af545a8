//! The core's conformance vectors through the origin's edge layer (`edge::enforce` as the server
//! mounts it, the client's address as `ConnectInfo`), over a handler that answers each step's
//! upstream response: the origin enforces the policy exactly as the edge does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, HeaderValue, Request, StatusCode};
use axum::response::Response;
use portcullis_core::conformance::{self, Action, Case, Harness, Observed, Requirement, Step, Upstream};
use portcullis_origin::configuration::Settings;
use portcullis_origin::edge::{self, Connection};
use portcullis_origin::startup::Application;
use tower::ServiceExt;

/// The origin chooses each request's peer and sends requests without a Host; its clock is the
/// real one, and it is not Cloudflare.
const SUPPORTED: [Requirement; 2] = [Requirement::Peer, Requirement::RawRequest];

/// The marker the stand-in upstream adds, so a forwarded request is told from a local answer.
const REACHED: &str = "x-conformance-upstream";

struct Origin {
    /// One runtime for every request of the replay.
    runtime: tokio::runtime::Runtime,
    router: Option<Router>,
    /// What the upstream handler answers for the step being sent.
    upstream: Arc<Mutex<Upstream>>,
}

impl Harness for Origin {
    fn cannot_replay(&self, case: &Case, _policy: &serde_json::Value) -> Option<String> {
        case.steps
            .iter()
            .any(|s| s.request.path.is_none())
            .then(|| "a request without a target: HTTP always carries one to the origin".to_owned())
    }

    fn start(&mut self, _case: &Case, policy_json: &[u8]) -> Result<(), String> {
        let env = BTreeMap::from([("PORTCULLIS_POLICY".to_owned(), String::from_utf8_lossy(policy_json).into_owned())]);
        let settings = Settings::from_env(&env).map_err(|e| format!("{e:?}"))?;
        // A new edge per case: fresh limiter state.
        let edge = Application::edge(&settings)?;
        let upstream = self.upstream.clone();
        let answer = move || {
            let upstream = upstream.lock().unwrap().clone();
            async move { upstream_response(&upstream) }
        };
        self.router =
            Some(Router::new().fallback(answer).layer(axum::middleware::from_fn_with_state(edge, edge::enforce)));
        Ok(())
    }

    fn send(&mut self, step: &Step, _now: u64) -> Result<Observed, String> {
        let router = self.router.clone().ok_or("not started")?;
        *self.upstream.lock().unwrap() = step.upstream.clone();
        let r = &step.request;
        let mut request = Request::builder().method(r.method.as_str()).uri(r.path.as_deref().unwrap_or("/"));
        if let Some(authority) = &r.authority {
            request = request.header("host", authority);
        }
        for (name, value) in &r.headers {
            request = request.header(name, value);
        }
        let mut request = request.body(Body::empty()).map_err(|e| format!("building the request: {e}"))?;
        let peer = socket_addr(r.peer.as_deref().unwrap_or("192.0.2.1:50000"))?;
        request.extensions_mut().insert(ConnectInfo(Connection { peer, tls: r.scheme == "https" }));
        let response = self.runtime.block_on(async move {
            let response = router.oneshot(request).await.map_err(|e| e.to_string())?;
            let (parts, body) = response.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((parts, body))
        })?;
        let (parts, body) = response;
        let action = if parts.headers.contains_key(REACHED) { Action::Forward } else { Action::Respond };
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| name.as_str() != REACHED)
            .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        Ok(Observed {
            action,
            status: parts.status.as_u16(),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

fn upstream_response(upstream: &Upstream) -> Response {
    let mut response = Response::new(Body::from(upstream.body.clone()));
    *response.status_mut() = StatusCode::from_u16(upstream.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in &upstream.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
            response.headers_mut().append(name, value);
        }
    }
    response.headers_mut().insert(REACHED, HeaderValue::from_static("1"));
    response
}

/// A vector's peer (`ip:port`, `[v6]:port` or a bare address) as the socket address a
/// connection would have.
fn socket_addr(peer: &str) -> Result<SocketAddr, String> {
    peer.parse::<SocketAddr>()
        .or_else(|_| peer.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 40000)))
        .map_err(|_| format!("peer {peer:?} is not an address"))
}

#[test]
fn the_origin_meets_every_conformance_vector_it_can_replay() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut origin = Origin { runtime, router: None, upstream: Arc::new(Mutex::new(Upstream::default())) };
    let replay = conformance::replay(&SUPPORTED, &mut origin);
    let verdict = replay.verdict(20).unwrap_or_else(|e| panic!("{e}"));
    println!("the origin: {verdict}");
}
