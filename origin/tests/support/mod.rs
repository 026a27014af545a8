//! What several test binaries share: the dev certificates, the test cluster's description, and
//! the origin served in-process over TLS on an ephemeral port.

// Each test binary uses its own part of this module.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod media;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use portcullis_origin::auth::Passwords;
use portcullis_origin::configuration::Settings;
use portcullis_origin::domain::Username;
use portcullis_origin::executor::Engine;
use portcullis_origin::secrets::{self, Secrets};
use portcullis_origin::startup::Application;
use portcullis_origin::state::AppState;
use portcullis_origin::store::users;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::sync::watch;
use uuid::Uuid;

/// The JWT signing key every in-process server of these tests uses.
pub const JWT_KEY: [u8; 32] = [5; 32];

pub fn jwt_keys() -> String {
    format!("k1:{}", STANDARD.encode(JWT_KEY))
}

/// The dev certificates (issued on first use, as `cargo xtask setup` does).
pub fn certs() -> PathBuf {
    portcullis_devenv::certs::ensure().expect("the development certificates")
}

/// A hardened PostgreSQL for these tests: the cluster `cargo xtask test` started (its JSON
/// description at `PORTCULLIS_TEST_PG`), else one of this test process's own.
#[derive(Clone)]
pub struct TestDatabase {
    pub app_url: String,
    pub owner_url: String,
    /// The app role without TLS, which the server must refuse.
    pub plain_url: String,
    pub port: u16,
    pub log: PathBuf,
}

pub fn database() -> TestDatabase {
    static DATABASE: std::sync::OnceLock<TestDatabase> = std::sync::OnceLock::new();
    DATABASE
        .get_or_init(|| match std::env::var_os("PORTCULLIS_TEST_PG") {
            Some(path) => described(&path),
            None => {
                let own = portcullis_devenv::postgres::TestPostgres::start(std::path::Path::new(env!(
                    "CARGO_BIN_EXE_portcullis-origin"
                )))
                .unwrap_or_else(|e| panic!("starting this test process's PostgreSQL: {e:#}"));
                TestDatabase {
                    app_url: own.app_url,
                    owner_url: own.owner_url,
                    plain_url: own.plain_url,
                    port: own.port,
                    log: own.log,
                }
            }
        })
        .clone()
}

fn described(path: &std::ffi::OsStr) -> TestDatabase {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading PORTCULLIS_TEST_PG {path:?}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap();
    let s = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("{k} missing in {path:?}")).to_owned();
    let port = v["port"].as_u64().unwrap_or_else(|| panic!("port missing in {path:?}")) as u16;
    TestDatabase {
        app_url: s("app_url"),
        owner_url: s("owner_url"),
        plain_url: s("plain_url"),
        port,
        log: s("log").into(),
    }
}

/// Everything `serve` needs, for the test cluster, listening on an ephemeral port.
pub fn serve_env(db: &TestDatabase) -> BTreeMap<String, String> {
    let certs = certs();
    [
        ("PORTCULLIS_LISTEN", "127.0.0.1:0".to_owned()),
        ("PORTCULLIS_TLS_CERT", certs.join("origin.crt").display().to_string()),
        ("PORTCULLIS_TLS_KEY_FILE", certs.join("origin.key").display().to_string()),
        ("PORTCULLIS_DATABASE_URL", db.app_url.clone()),
        ("PORTCULLIS_JWT_KEYS", jwt_keys()),
        ("PORTCULLIS_DATA_KEY", format!("data-key-{}", Uuid::new_v4())),
        ("PORTCULLIS_JOB_POLL_MILLIS", "50".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// An HTTPS client that trusts the dev CA only and reaches `localhost` at `addr`.
pub fn client(addr: SocketAddr, identity: Option<reqwest::Identity>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs().join("ca.crt")).unwrap()).unwrap();
    let mut builder = reqwest::Client::builder()
        .add_root_certificate(ca)
        .tls_built_in_root_certs(false)
        .resolve("localhost", addr)
        .use_rustls_tls();
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    builder.build().unwrap()
}

/// Envoy's client certificate, the one the origin admits under mTLS.
pub fn envoy_identity() -> reqwest::Identity {
    let certs = certs();
    let mut pem = std::fs::read(certs.join("envoy-client.crt")).unwrap();
    pem.extend(std::fs::read(certs.join("envoy-client.key")).unwrap());
    reqwest::Identity::from_pem(&pem).unwrap()
}

/// The origin served in-process.
pub struct Server {
    pub addr: SocketAddr,
    pub plain: Option<SocketAddr>,
    pub client: reqwest::Client,
    pub pool: sqlx::PgPool,
    pub data_key: String,
    pub state: AppState,
    stop: watch::Sender<bool>,
}

/// Whether the server runs a job executor, and on which engine. Executors claim every owner's
/// due jobs (as several origins sharing one database do), so a test binary runs one at a time.
pub enum Jobs {
    Off,
    On(Option<Arc<dyn Engine>>),
}

pub async fn serve(extra: &[(&str, &str)], jobs: Jobs) -> Server {
    let mut env = serve_env(&database());
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    let data_key = env["PORTCULLIS_DATA_KEY"].clone();
    let settings = Settings::from_env(&env).unwrap();
    let loaded = Secrets::load(&secrets::SERVE, &env).await.unwrap();
    let app = Application::build(settings, &loaded).await.unwrap();
    let app = match jobs {
        Jobs::Off => app.without_jobs(),
        Jobs::On(engine) => app.with_engine(engine),
    };
    let state = app.state().clone();
    let addr = app.local_addr().unwrap();
    let plain = app.plain_addr().map(Result::unwrap);
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(app.serve(stopped));
    Server { addr, plain, client: client(addr, None), pool: state.pool.clone(), data_key, state, stop }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// A new user's access token.
    pub async fn session(&self) -> String {
        let password = "correct horse battery";
        let name = create_user(&self.pool, password).await;
        let response = self
            .client
            .post(self.url("/api/v1/auth/login"))
            .json(&json!({"username": name, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "login of a fresh user");
        response.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.client.get(self.url(path)).bearer_auth(token).send().await.unwrap()
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> reqwest::Response {
        self.client.post(self.url(path)).bearer_auth(token).json(&body).send().await.unwrap()
    }

    /// Polls a job until it leaves `queued`/`running` (10 s at most) and returns it.
    pub async fn finished_job(&self, id: &str, token: &str) -> Value {
        let mut last = Value::Null;
        for _ in 0..200 {
            last = self.get(&format!("/api/v1/jobs/{id}"), token).await.json().await.unwrap();
            if last["status"] != "queued" && last["status"] != "running" {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("job {id} did not finish: {last}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The user id (`sub`) of an access token.
pub fn token_subject(token: &str) -> Uuid {
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    Uuid::parse_str(claims["sub"].as_str().unwrap()).unwrap()
}

/// An API error's status and JSON body, checking the shape every error shares.
pub async fn error_of(response: reqwest::Response) -> (reqwest::StatusCode, Value) {
    let status = response.status();
    assert_eq!(response.headers()["content-type"], "application/json", "errors are JSON ({status})");
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].is_string() && body["message"].is_string(), "{body}");
    (status, body)
}

/// The `field`s of a 422's details, in order.
pub fn fields(body: &Value) -> Vec<String> {
    body["details"].as_array().unwrap().iter().map(|d| d["field"].as_str().unwrap().to_owned()).collect()
}

/// A fresh user with `password`, inserted the way `user add` does; its username.
pub async fn create_user(pool: &sqlx::PgPool, password: &str) -> String {
    insert_user(pool, password).await.1
}

/// A fresh user with `password`: its id and username.
pub async fn insert_user(pool: &sqlx::PgPool, password: &str) -> (Uuid, String) {
    let name = format!("user-{}", Uuid::new_v4().simple());
    let hash = Passwords::hash(SecretString::from(password.to_owned())).await.unwrap();
    let id = users::create(pool, &Username::parse(name.clone()).unwrap(), &hash).await.unwrap().expect("a new name");
    (id, name)
}
