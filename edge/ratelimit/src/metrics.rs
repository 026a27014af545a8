//! Prometheus metrics, served as text on `GET /metrics`.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// `ok` or `over_limit`.
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabel {
    pub tier: String,
}

/// Every metric the service keeps.
pub struct Metrics {
    registry: Registry,
    /// Answered requests, by overall code.
    pub decisions: Family<CodeLabel, Counter>,
    /// Descriptors over their limit, by tier.
    pub over_limit: Family<TierLabel, Counter>,
    /// Requests refused as malformed (INVALID_ARGUMENT).
    pub invalid: Counter,
    /// Redis calls that failed or timed out (the call was answered UNAVAILABLE).
    pub redis_errors: Counter,
    /// Time per Redis step, seconds.
    pub redis_latency: Histogram,
    /// 1 while Redis answers its health ping, else 0.
    pub redis_up: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("portcullis_ratelimit");
        let decisions = Family::<CodeLabel, Counter>::default();
        let over_limit = Family::<TierLabel, Counter>::default();
        let invalid = Counter::default();
        let redis_errors = Counter::default();
        // 50 µs .. ~0.4 s.
        let redis_latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 14));
        registry.register("decisions", "Rate-limit requests answered, by overall code", decisions.clone());
        registry.register("over_limit", "Descriptors over their limit, by tier", over_limit.clone());
        registry.register("invalid_requests", "Requests refused as malformed", invalid.clone());
        registry.register("redis_errors", "Redis steps that failed or timed out", redis_errors.clone());
        registry.register("redis_latency_seconds", "Time per Redis step", redis_latency.clone());
        let redis_up = Gauge::default();
        registry.register("redis_up", "1 while Redis answers its health ping", redis_up.clone());
        Self { registry, decisions, over_limit, invalid, redis_errors, redis_latency, redis_up }
    }
}

impl Metrics {
    pub fn observe_redis(&self, latency: Duration) {
        self.redis_latency.observe(latency.as_secs_f64());
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

/// Serves `GET /metrics` on `addr` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&request, &metrics)) }
            });
            // A client that goes away mid-request is no concern of the service.
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn answer(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, body) = if request.uri().path() == "/metrics" {
        (StatusCode::OK, metrics.render())
    } else {
        (StatusCode::NOT_FOUND, "only /metrics is here\n".to_owned())
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
