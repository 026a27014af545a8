//! The same policy the edge enforces, applied natively: allowed hosts, HTTPS redirect on the
//! plain listener, security headers on every response (defence in depth for traffic that
//! reaches the origin without the edge). Only translates between axum and `portcullis-core`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use axum::middleware::Next;
use portcullis_core::{
    Decision, HeaderSink, LocalResponse, MemoryStore, Peer, Policy, Request as CoreRequest, RequestHeaders, Scheme,
};

/// What the connection told us, attached to each request by the server loop.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// The compiled policy and the limiter state of this process.
#[derive(Clone)]
pub struct Edge {
    pub policy: Arc<Policy>,
    pub store: Arc<MemoryStore>,
}

struct Headers<'a>(&'a HeaderMap);

impl RequestHeaders for Headers<'_> {
    fn for_each_value(&self, name: &str, visit: &mut dyn FnMut(&[u8])) {
        for value in self.0.get_all(name) {
            visit(value.as_bytes());
        }
    }
}

struct Sink<'a>(&'a mut HeaderMap);

impl HeaderSink for Sink<'_> {
    fn set(&mut self, name: &str, value: &str) {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            self.0.insert(name, value);
        }
    }

    fn remove(&mut self, name: &str) {
        self.0.remove(name);
    }
}

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

pub fn local_response(reply: LocalResponse) -> Response<Body> {
    let mut response = Response::new(Body::from(reply.body));
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut sink = Sink(response.headers_mut());
    for (name, value) in &reply.headers {
        sink.set(name, value);
    }
    response
}

pub async fn enforce(edge: axum::extract::State<Edge>, request: Request, next: Next) -> Response<Body> {
    let connection = request.extensions().get::<Connection>().copied();
    let peer = connection.map(|c| c.peer.to_string());
    let tls = connection.is_some_and(|c| c.tls);
    // HTTP/1.1 carries the host in `Host`, HTTP/2 in the URI authority.
    let authority = request
        .uri()
        .authority()
        .map(|a| a.as_str().as_bytes().to_vec())
        .or_else(|| request.headers().get(axum::http::header::HOST).map(|h| h.as_bytes().to_vec()));
    let target = request.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
    let decision = {
        let core_request = CoreRequest {
            method: request.method().as_str().as_bytes(),
            scheme: if tls { Scheme::Https } else { Scheme::Http },
            authority: authority.as_deref(),
            path: Some(target.as_bytes()),
            peer: peer.as_deref().map_or(Peer::Unknown, Peer::Socket),
            headers: &Headers(request.headers()),
        };
        edge.policy.decide(&core_request, now_nanos(), edge.store.as_ref())
    };
    match decision {
        Decision::Respond(reply) => local_response(reply),
        Decision::Forward(forward) => {
            let mut response = next.run(request).await;
            edge.policy.response_edits(&forward.plan).apply(&mut Sink(response.headers_mut()));
            response
        }
    }
}
