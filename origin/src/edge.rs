//! The same policy the edge enforces, applied natively: allowed hosts, HTTPS redirect on the
//! plain listener, security headers on every response (defence in depth for traffic that
//! reaches the origin without the edge). Only translates between axum and `portcullis-core`.
//!
//! Rate limits are counted in this process, or, with `PORTCULLIS_REDIS_URL`, in the fleet's
//! Redis through the same GCRA script as `portcullis-ratelimit` (same keys: an origin and the
//! Envoys in front of it share one count). While Redis is unreachable (not yet connected, an
//! error, no answer within `PORTCULLIS_REDIS_TIMEOUT_MS`) this origin's own limiter decides:
//! never unlimited, at most N× the limit across N origins.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use axum::middleware::Next;
use portcullis_core::{
    Acquire, Begin, Decision, HeaderSink, LimitCheck, LocalResponse, MemoryStore, Peer, Policy, Request as CoreRequest,
    RequestHeaders, Scheme,
};
use portcullis_ratelimit::descriptor::{DEFAULT_DOMAIN, limit_key};
use portcullis_ratelimit::store::{RedisStore, Target};

/// What the connection told us: each request carries it as `ConnectInfo<Connection>`.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// The compiled policy and the limiter state: this process's, and the fleet's when configured.
#[derive(Clone)]
pub struct Edge {
    pub policy: Arc<Policy>,
    pub store: Arc<MemoryStore>,
    pub shared: Option<SharedLimits>,
}

/// The fleet's Redis, connected in the background (see [`SharedLimits::connect`]).
#[derive(Clone)]
pub struct SharedLimits {
    target: Target,
    timeout: Duration,
    store: Arc<OnceLock<RedisStore>>,
    /// Limit checks decided by this process's limiter because Redis could not be used.
    fallbacks: Arc<AtomicU64>,
}

impl SharedLimits {
    pub fn new(target: Target, timeout: Duration) -> Self {
        Self { target, timeout, store: Arc::new(OnceLock::new()), fallbacks: Arc::new(AtomicU64::new(0)) }
    }

    /// Starts connecting (retrying until Redis answers); must run inside the runtime.
    pub fn connect(&self) {
        let (target, timeout, store) = (self.target.clone(), self.timeout, self.store.clone());
        tokio::spawn(async move {
            let _ = store.set(RedisStore::connect_until_up(&target, timeout).await);
        });
    }

    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// The shared verdict, or `None` when Redis cannot give one now.
    async fn acquire(&self, policy: &Policy, check: &LimitCheck) -> Option<Acquire> {
        let store = self.store.get()?;
        match store.step(&[limit_key(policy, check, DEFAULT_DOMAIN)]).await {
            Ok((verdicts, _)) => verdicts.first().copied().map(Acquire::from_verdict),
            Err(err) => {
                tracing::warn!(error = %err, "shared rate limits unavailable; this origin's limiter decides");
                None
            }
        }
    }
}

impl Edge {
    /// Decides a request: the first phase, then the limit check where its state is.
    async fn decide<H: RequestHeaders + ?Sized>(&self, request: &CoreRequest<'_, H>) -> Decision {
        let check = match self.policy.begin(request) {
            Begin::Decided(decision) => return decision,
            Begin::Check(check) => check,
        };
        let shared = match &self.shared {
            Some(shared) => shared.acquire(&self.policy, &check).await,
            None => None,
        };
        let answer = match shared {
            Some(answer) => answer,
            None => {
                if let Some(shared) = &self.shared {
                    shared.fallbacks.fetch_add(1, Ordering::Relaxed);
                }
                self.policy.acquire(&check, self.store.as_ref(), now_nanos())
            }
        };
        self.policy.finish(&check, answer)
    }
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
    let connection = request.extensions().get::<ConnectInfo<Connection>>().map(|info| info.0);
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
        edge.decide(&core_request).await
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
