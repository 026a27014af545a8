//! Building the application and serving it over TLS (hyper + tokio-rustls), with graceful
//! shutdown: in-flight requests finish, the job executor stops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use portcullis_core::{MemoryStore, Policy};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

use crate::auth::{JwtKeys, Passwords};
use crate::configuration::Settings;
use crate::edge::{self, Connection, Edge, SharedLimits};
use crate::error::{ErrorBody, code_for};
use crate::executor::{Engine, Executor, HttpSpeechToText};
use crate::openapi::ApiDoc;
use crate::routes::{auth, health, jobs, videos};
use crate::secrets::Secrets;
use crate::state::{AppState, DataKey};

pub fn router(state: AppState, edge: Edge) -> Router {
    let settings = state.settings.clone();
    let api = Router::new()
        .route("/auth/login", post(auth::login))
        .route("/auth/refresh", post(auth::refresh))
        .route("/transcribe", post(videos::transcribe))
        .route("/videos", get(videos::list_videos))
        .route("/analyze", post(jobs::analyze))
        .route("/jobs/{job_id}", get(jobs::get_job).delete(jobs::delete_job))
        .route("/schedule", post(jobs::schedule))
        .route("/health", get(health::health));
    let openapi = ApiDoc::openapi();
    let mut app = Router::new()
        .nest("/api/v1", api)
        .route("/openapi.json", get(move || std::future::ready(axum::Json(openapi.clone()))))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(state)
        .layer(DefaultBodyLimit::max(settings.body_limit))
        .layer(middleware::from_fn(json_errors))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, settings.request_timeout));
    if !settings.cors_origins.is_empty() {
        let origins: Vec<HeaderValue> =
            settings.cors_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
        app = app.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
                .allow_credentials(true)
                .max_age(Duration::from_secs(600)),
        );
    }
    app.layer(middleware::from_fn_with_state(edge, edge::enforce))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
        }))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// Errors produced outside the handlers (routing, timeouts, body limits) get the API's JSON
/// error shape too.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
        return response;
    }
    let body = ErrorBody {
        error: code_for(status),
        message: status.canonical_reason().unwrap_or("Error").to_owned() + ".",
        details: Vec::new(),
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut rebuilt = (status, axum::Json(body)).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE {
            rebuilt.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rebuilt
}

/// The origin, wired once: `main`'s `serve` and the tests build it the same way.
pub struct Application {
    listener: TcpListener,
    plain_listener: Option<TcpListener>,
    router: Router,
    tls: Arc<rustls::ServerConfig>,
    edge: Edge,
    state: AppState,
    /// The job executor `serve` runs beside the server; `None`: this process runs no jobs.
    executor: Option<Executor>,
}

impl Application {
    /// State, listeners, TLS and the job executor (on the engine `PORTCULLIS_STT_URL`
    /// configures) from settings and secrets; every problem is an error naming its setting.
    pub async fn build(settings: Settings, secrets: &Secrets) -> Result<Self, String> {
        use crate::secrets::{DATA_KEY, DATABASE_URL, JWT_KEYS, TLS_KEY};
        use secrecy::ExposeSecret;
        let missing = |name: &str| format!("{name} was not loaded");
        let jwt = JwtKeys::parse(
            secrets.get(JWT_KEYS).ok_or_else(|| missing(JWT_KEYS.name))?,
            &settings.jwt_issuer,
            &settings.jwt_audience,
        )
        .map_err(|e| format!("{}: {e}", JWT_KEYS.name))?;
        let tls = crate::tls::server_config(
            &settings.tls_cert,
            secrets.get(TLS_KEY).ok_or_else(|| missing(TLS_KEY.name))?,
            settings.client_ca.as_deref(),
        )?;
        let data_key = secrets.get(DATA_KEY).ok_or_else(|| missing(DATA_KEY.name))?.clone();
        if data_key.expose_secret().len() < 16 {
            return Err(format!("{}: at least 16 characters", DATA_KEY.name));
        }
        let url = secrets.get(DATABASE_URL).ok_or_else(|| missing(DATABASE_URL.name))?;
        let pool = crate::db::lazy_pool(url.expose_secret(), settings.db_max_connections)
            .map_err(|e| format!("{}: {e}", DATABASE_URL.name))?;
        let engine = HttpSpeechToText::from_settings(&settings)?;
        let edge = Self::edge(&settings)?;
        if let Some(shared) = &edge.shared {
            shared.connect();
        }
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|e| format!("PORTCULLIS_LISTEN {}: {e}", settings.listen))?;
        let plain_listener = match settings.plain_listen {
            Some(addr) => {
                Some(TcpListener::bind(addr).await.map_err(|e| format!("PORTCULLIS_PLAIN_LISTEN {addr}: {e}"))?)
            }
            None => None,
        };
        let executor = Executor::new(pool.clone(), engine, data_key.clone(), settings.executor.clone());
        let state = AppState {
            pool,
            jwt: Arc::new(jwt),
            passwords: Passwords::new(settings.login.max_concurrent_verifications).await.map_err(|e| e.to_string())?,
            settings: Arc::new(settings),
            data_key: DataKey(data_key),
        };
        let router = router(state.clone(), edge.clone());
        Ok(Self { listener, plain_listener, router, tls, edge, state, executor: Some(executor) })
    }

    /// The compiled policy and limiter state the server and the plain listener enforce.
    pub fn edge(settings: &Settings) -> Result<Edge, String> {
        let policy =
            Policy::from_json(settings.policy_json.as_bytes()).map_err(|e| format!("PORTCULLIS_POLICY: {e}"))?;
        if settings.redis.is_some() && !policy.hash_key_configured() {
            // Counts in Redis are keyed by the hashed client: every host sharing them must
            // hash alike, so a key of this process's own would split every client's count.
            return Err("PORTCULLIS_POLICY: limiter.hash_key is required with PORTCULLIS_REDIS_URL (the \
                        fleet's hosts must hash clients alike; generate one: openssl rand -hex 16)"
                .to_owned());
        }
        // Without a configured key, a random one of this process: nobody outside can aim
        // addresses at one bucket.
        let policy = policy.with_hash_key(portcullis_core::HashKey::from_bytes(rand::random()));
        let shared = settings.redis.clone().map(|target| SharedLimits::new(target, settings.redis_timeout));
        Ok(Edge { policy: Arc::new(policy), store: Arc::new(MemoryStore::new()), shared })
    }

    /// Jobs run on `engine` (`None`: each due job fails, saying no engine is configured) instead
    /// of the configured one: the tests' speech-to-text double.
    pub fn with_engine(mut self, engine: Option<Arc<dyn Engine>>) -> Self {
        if let Some(executor) = &mut self.executor {
            executor.engine = engine;
        }
        self
    }

    /// This process runs no jobs (another one sharing the database does).
    pub fn without_jobs(mut self) -> Self {
        self.executor = None;
        self
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn plain_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.plain_listener.as_ref().map(TcpListener::local_addr)
    }

    /// Serves (and runs jobs) until `shutdown` flips, then lets in-flight requests finish (up
    /// to 30 s) and running jobs stop, and closes the database pool.
    pub async fn serve(self, shutdown: watch::Receiver<bool>) {
        let jobs = self.executor.map(|executor| tokio::spawn(executor.run(shutdown.clone())));
        let plain = self.plain_listener.map(|listener| {
            let edge = self.edge.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(serve_plain(listener, edge, shutdown))
        });
        serve_tls(self.listener, self.router, TlsAcceptor::from(self.tls), shutdown).await;
        if let Some(plain) = plain {
            let _ = plain.await;
        }
        if let Some(jobs) = jobs {
            let _ = jobs.await;
        }
        self.state.pool.close().await;
    }
}

/// Each connection's [`Connection`] reaches handlers and middleware as axum's
/// `ConnectInfo<Connection>`, as `into_make_service_with_connect_info` provides it.
impl Connected<Connection> for Connection {
    fn connect_info(connection: Connection) -> Self {
        connection
    }
}

/// `router` as hyper's service for one connection, with its [`Connection`] as `ConnectInfo`.
async fn connection_service(
    router: Router,
    connection: Connection,
) -> TowerToHyperService<
    impl tower::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static,
> {
    let Ok(service) = router.into_make_service_with_connect_info::<Connection>().oneshot(connection).await;
    TowerToHyperService::new(service)
}

async fn serve_tls(listener: TcpListener, router: Router, acceptor: TlsAcceptor, mut shutdown: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // A client that never finishes the handshake must not hold a task forever.
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = connection_service(router, Connection { peer, tls: true }).await;
            let connection = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .into_owned();
            if let Err(err) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(30)) => tracing::warn!("in-flight requests did not finish within 30 s"),
    }
}

/// The plain listener: every request gets the core's answer for plain HTTP (a redirect, or
/// 400 for a host off the allow-list); nothing is served over it.
async fn serve_plain(listener: TcpListener, edge: Edge, mut shutdown: watch::Receiver<bool>) {
    let redirect_only = Router::new()
        .fallback(|| async { StatusCode::MISDIRECTED_REQUEST })
        .layer(middleware::from_fn_with_state(edge, edge::enforce));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
            _ = shutdown.changed() => break,
        };
        let router = redirect_only.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let service = connection_service(router, Connection { peer, tls: false }).await;
            let connection =
                auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).into_owned();
            let _ = watcher.watch(connection).await;
        });
    }
    graceful.shutdown().await;
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
