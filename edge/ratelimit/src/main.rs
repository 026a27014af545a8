//! `portcullis-ratelimit`: see the crate documentation and `--help`.

use anyhow::Context;
use clap::Parser;
use portcullis_ratelimit::server;
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
    let grpc = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", settings.listen))?;
    let metrics = tokio::net::TcpListener::bind(settings.metrics_listen)
        .await
        .with_context(|| format!("--metrics-listen {}: cannot bind", settings.metrics_listen))?;
    tracing::info!(grpc = %settings.listen, metrics = %settings.metrics_listen, "portcullis-ratelimit listening");
    server::serve(settings, grpc, metrics, shutdown()).await.context("gRPC server")?;
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
