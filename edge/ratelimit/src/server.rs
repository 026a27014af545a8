//! The whole service on given listeners: gRPC (RateLimitService and health) and metrics.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use tokio::net::TcpListener;

use crate::metrics::{self, Metrics};
use crate::rls::rate_limit_service_server::RateLimitServiceServer;
use crate::service::{self, RateLimiter};
use crate::settings::Settings;

/// Serves until `shutdown` completes. Redis is connected in the background: until it answers,
/// calls get UNAVAILABLE and health says NOT_SERVING.
pub async fn serve(
    settings: Settings,
    grpc: TcpListener,
    metrics_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let metrics = Arc::new(Metrics::default());
    let store = Arc::new(OnceLock::new());
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_not_serving::<RateLimitServiceServer<RateLimiter>>().await;
    let limiter = RateLimiter::new(settings.policy.clone(), store.clone(), metrics.clone());
    let keeper = tokio::spawn(service::keep_store(settings, store, health, metrics.clone()));
    let exporter = tokio::spawn(metrics::serve(metrics_listener, metrics));
    let served = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(RateLimitServiceServer::new(limiter))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(grpc), shutdown)
        .await;
    keeper.abort();
    exporter.abort();
    served
}
