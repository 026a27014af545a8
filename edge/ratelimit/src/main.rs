//! `portcullis-ratelimit`: see the crate documentation and `--help`.

use std::sync::{Arc, OnceLock};

use anyhow::Context;
use clap::Parser;
use portcullis_ratelimit::metrics::{self, Metrics};
use portcullis_ratelimit::rls::rate_limit_service_server::RateLimitServiceServer;
use portcullis_ratelimit::service::{self, RateLimiter};
use portcullis_ratelimit::settings::Cli;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = Cli::parse();
    let settings = match cli.settings() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("portcullis-ratelimit: {err}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("portcullis-ratelimit: cannot start the runtime: {err}");
            std::process::exit(1);
        }
    };
    if let Err(err) = runtime.block_on(run(settings)) {
        eprintln!("portcullis-ratelimit: {err:#}");
        std::process::exit(1);
    }
}

async fn run(settings: portcullis_ratelimit::settings::Settings) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let store = Arc::new(OnceLock::new());
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_not_serving::<RateLimitServiceServer<RateLimiter>>().await;

    let grpc = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", settings.listen))?;
    let metrics_listener = metrics::bind(settings.metrics_listen)
        .await
        .with_context(|| format!("--metrics-listen {}: cannot bind", settings.metrics_listen))?;
    tracing::info!(grpc = %settings.listen, metrics = %settings.metrics_listen, "portcullis-ratelimit listening");

    let limiter = RateLimiter::new(settings.policy.clone(), store.clone(), metrics.clone());
    tokio::spawn(service::keep_store(settings, store, health));
    tokio::spawn(metrics::serve(metrics_listener, metrics));

    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(RateLimitServiceServer::new(limiter))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(grpc), shutdown())
        .await
        .context("gRPC server")?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGINT or SIGTERM.
async fn shutdown() {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
