//! The secrets module against its real sources: environment variables, `_FILE` files, and
//! Vault — here a test double that speaks Vault's documented KV v2 and AppRole HTTP API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use portcullis_origin::secrets::{self, Secrets, Source};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[tokio::test]
async fn environment_variables_are_read() {
    let env = env(&[("PORTCULLIS_DATA_KEY", "k3y")]);
    let loaded = Secrets::load(&[secrets::DATA_KEY], &env).await.unwrap();
    assert_eq!(loaded.get(secrets::DATA_KEY).unwrap().expose_secret(), "k3y");
    assert_eq!(loaded.source(secrets::DATA_KEY), Some(Source::Environment));
}

#[tokio::test]
async fn a_file_wins_over_the_variable_and_loses_its_trailing_newline() {
    let dir = std::env::temp_dir().join(format!("portcullis-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("data_key");
    std::fs::write(&file, "from-file\n").unwrap();
    let env = env(&[("PORTCULLIS_DATA_KEY", "from-env"), ("PORTCULLIS_DATA_KEY_FILE", file.to_str().unwrap())]);
    let loaded = Secrets::load(&[secrets::DATA_KEY], &env).await.unwrap();
    assert_eq!(loaded.get(secrets::DATA_KEY).unwrap().expose_secret(), "from-file");
    assert_eq!(loaded.source(secrets::DATA_KEY), Some(Source::File));

    let missing = env_with_file("/nonexistent/secret");
    let err = Secrets::load(&[secrets::DATA_KEY], &missing).await.unwrap_err().to_string();
    assert!(err.contains("PORTCULLIS_DATA_KEY_FILE names /nonexistent/secret"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn env_with_file(path: &str) -> BTreeMap<String, String> {
    env(&[("PORTCULLIS_DATA_KEY_FILE", path)])
}

#[tokio::test]
async fn every_missing_secret_is_named_with_how_to_provide_it() {
    let err = Secrets::load(&secrets::SERVE, &env(&[("PORTCULLIS_JWT_KEYS", "")])).await.unwrap_err().to_string();
    for name in ["PORTCULLIS_DATABASE_URL", "PORTCULLIS_DATA_KEY", "PORTCULLIS_TLS_KEY"] {
        assert!(err.contains(&format!("{name} (")), "{name} not named in:\n{err}");
        assert!(err.contains(&format!("{name}_FILE")), "no _FILE hint for {name}:\n{err}");
    }
    assert!(err.contains("PORTCULLIS_JWT_KEYS is empty"), "{err}");
    assert_eq!(err.lines().count(), 4, "one line per problem:\n{err}");
}

#[tokio::test]
async fn debug_output_never_shows_a_value() {
    let env = env(&[("PORTCULLIS_DATA_KEY", "super-secret-value")]);
    let loaded = Secrets::load(&[secrets::DATA_KEY], &env).await.unwrap();
    let shown = format!("{loaded:?} {:?}", loaded.get(secrets::DATA_KEY));
    assert!(!shown.contains("super-secret-value"), "{shown}");
    assert!(shown.contains("REDACTED"), "{shown}");
}

/// A Vault test double: the documented AppRole login and KV v2 read endpoints, nothing else.
struct VaultDouble {
    token: String,
    role_id: String,
    secret_id: String,
    mount: String,
    path: String,
    data: Value,
    /// The Vault Enterprise namespace every request must name (`X-Vault-Namespace`), if any.
    namespace: Option<String>,
    fault: Option<Fault>,
}

/// Ways a real Vault misbehaves.
#[derive(Clone, Copy)]
enum Fault {
    /// Every endpoint answers 503, as a sealed Vault does.
    Sealed,
    /// Reads answer 500.
    Internal,
    /// Reads answer 200 with an HTML page (a proxy in the way).
    NotJson,
    /// Reads answer a KV v1 shape: `data` holds the keys directly, no `data.data`.
    KvVersion1,
    /// AppRole login answers 200 without `auth.client_token`.
    LoginWithoutToken,
}

fn sealed() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "errors": ["Vault is sealed"] }))).into_response()
}

fn wrong_namespace(vault: &VaultDouble, headers: &HeaderMap) -> bool {
    vault
        .namespace
        .as_deref()
        .is_some_and(|ns| headers.get("x-vault-namespace").and_then(|v| v.to_str().ok()) != Some(ns))
}

async fn approle_login(State(vault): State<Arc<VaultDouble>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    match vault.fault {
        Some(Fault::Sealed) => return sealed(),
        Some(Fault::LoginWithoutToken) => {
            return Json(json!({ "auth": null, "warnings": ["no token"] })).into_response();
        }
        _ => {}
    }
    if wrong_namespace(&vault, &headers) {
        return (StatusCode::FORBIDDEN, Json(json!({ "errors": ["permission denied"] }))).into_response();
    }
    if body["role_id"] == vault.role_id.as_str() && body["secret_id"] == vault.secret_id.as_str() {
        let auth = json!({ "auth": { "client_token": vault.token, "lease_duration": 3600, "renewable": true, "policies": ["portcullis"] } });
        (StatusCode::OK, Json(auth)).into_response()
    } else {
        (StatusCode::BAD_REQUEST, Json(json!({ "errors": ["invalid role or secret ID"] }))).into_response()
    }
}

async fn kv2_read(
    State(vault): State<Arc<VaultDouble>>,
    Path((mount, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    match vault.fault {
        Some(Fault::Sealed) => return sealed(),
        Some(Fault::Internal) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({ "errors": ["internal error"] }))).into_response();
        }
        _ => {}
    }
    if headers.get("x-vault-token").and_then(|v| v.to_str().ok()) != Some(vault.token.as_str())
        || wrong_namespace(&vault, &headers)
    {
        return (StatusCode::FORBIDDEN, Json(json!({ "errors": ["permission denied"] }))).into_response();
    }
    if mount != vault.mount || path != vault.path {
        return (StatusCode::NOT_FOUND, Json(json!({ "errors": [] }))).into_response();
    }
    match vault.fault {
        Some(Fault::NotJson) => {
            return ([("content-type", "text/html")], "<html>502 Bad Gateway</html>").into_response();
        }
        Some(Fault::KvVersion1) => return Json(json!({ "data": vault.data, "lease_duration": 0 })).into_response(),
        _ => {}
    }
    let body = json!({
        "request_id": "00000000-0000-0000-0000-000000000000",
        "data": { "data": vault.data, "metadata": { "version": 3, "destroyed": false, "deletion_time": "" } }
    });
    Json(body).into_response()
}

async fn start_vault(data: Value) -> String {
    start_vault_with(data, None, None).await
}

async fn start_vault_with(data: Value, namespace: Option<&str>, fault: Option<Fault>) -> String {
    let vault = Arc::new(VaultDouble {
        token: "hvs.test-token".into(),
        role_id: "role-123".into(),
        secret_id: "secret-456".into(),
        mount: "kv".into(),
        path: "portcullis/origin".into(),
        data,
        namespace: namespace.map(str::to_owned),
        fault,
    });
    let app = Router::new()
        .route("/v1/auth/approle/login", post(approle_login))
        .route("/v1/{mount}/data/{*path}", get(kv2_read))
        .with_state(vault);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn vault_kv2_with_a_token_comes_first() {
    let addr = start_vault(json!({ "PORTCULLIS_DATA_KEY": "from-vault" })).await;
    let env = env(&[
        ("VAULT_ADDR", &addr),
        ("VAULT_TOKEN", "hvs.test-token"),
        ("VAULT_KV_MOUNT", "kv"),
        ("VAULT_KV_PATH", "portcullis/origin"),
        ("PORTCULLIS_DATA_KEY", "from-env"),
        ("PORTCULLIS_JWT_KEYS", "k1:AAAA"),
    ]);
    let loaded = Secrets::load(&[secrets::DATA_KEY, secrets::JWT_KEYS], &env).await.unwrap();
    assert_eq!(loaded.get(secrets::DATA_KEY).unwrap().expose_secret(), "from-vault");
    assert_eq!(loaded.source(secrets::DATA_KEY), Some(Source::Vault));
    assert_eq!(loaded.source(secrets::JWT_KEYS), Some(Source::Environment), "falls back per secret");
}

#[tokio::test]
async fn vault_approle_login_then_read() {
    let addr = start_vault(json!({ "PORTCULLIS_DATA_KEY": "via-approle" })).await;
    let good = env(&[
        ("VAULT_ADDR", &addr),
        ("VAULT_ROLE_ID", "role-123"),
        ("VAULT_SECRET_ID", "secret-456"),
        ("VAULT_KV_MOUNT", "kv"),
        ("VAULT_KV_PATH", "portcullis/origin"),
    ]);
    let loaded = Secrets::load(&[secrets::DATA_KEY], &good).await.unwrap();
    assert_eq!(loaded.get(secrets::DATA_KEY).unwrap().expose_secret(), "via-approle");

    let mut wrong = good.clone();
    wrong.insert("VAULT_SECRET_ID".into(), "guess".into());
    let err = Secrets::load(&[secrets::DATA_KEY], &wrong).await.unwrap_err().to_string();
    assert!(err.contains("AppRole login") && err.contains("400"), "{err}");
}

#[tokio::test]
async fn vault_refusals_and_missing_keys_are_explained() {
    let addr = start_vault(json!({})).await;
    let bad_token = env(&[
        ("VAULT_ADDR", &addr),
        ("VAULT_TOKEN", "wrong"),
        ("VAULT_KV_MOUNT", "kv"),
        ("VAULT_KV_PATH", "portcullis/origin"),
    ]);
    let err = Secrets::load(&[secrets::DATA_KEY], &bad_token).await.unwrap_err().to_string();
    assert!(err.contains("403"), "{err}");

    let no_key = env(&[
        ("VAULT_ADDR", &addr),
        ("VAULT_TOKEN", "hvs.test-token"),
        ("VAULT_KV_MOUNT", "kv"),
        ("VAULT_KV_PATH", "portcullis/origin"),
    ]);
    let err = Secrets::load(&[secrets::DATA_KEY], &no_key).await.unwrap_err().to_string();
    assert!(err.contains("add key PORTCULLIS_DATA_KEY at Vault kv/portcullis/origin"), "{err}");

    let no_credentials = env(&[("VAULT_ADDR", &addr)]);
    let err = Secrets::load(&[secrets::DATA_KEY], &no_credentials).await.unwrap_err().to_string();
    assert!(err.contains("VAULT_TOKEN") && err.contains("VAULT_ROLE_ID"), "{err}");
}

#[tokio::test]
async fn an_empty_secret_file_is_refused_and_crlf_endings_are_dropped() {
    let dir = std::env::temp_dir().join(format!("portcullis-secret-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let err = Secrets::load(&[secrets::DATA_KEY], &env_with_file(empty.to_str().unwrap())).await.unwrap_err();
    assert_eq!(err.to_string(), "- PORTCULLIS_DATA_KEY is empty (from PORTCULLIS_DATA_KEY_FILE)");
    let crlf = dir.join("crlf");
    std::fs::write(&crlf, "windows-value\r\n").unwrap();
    let loaded = Secrets::load(&[secrets::DATA_KEY], &env_with_file(crlf.to_str().unwrap())).await.unwrap();
    assert_eq!(loaded.get(secrets::DATA_KEY).unwrap().expose_secret(), "windows-value");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Token authentication at the double's location, at `addr`.
fn token_env(addr: &str) -> BTreeMap<String, String> {
    env(&[
        ("VAULT_ADDR", addr),
        ("VAULT_TOKEN", "hvs.test-token"),
        ("VAULT_KV_MOUNT", "kv"),
        ("VAULT_KV_PATH", "portcullis/origin"),
    ])
}

/// AppRole authentication at the double's location, at `addr`.
fn approle_env(addr: &str) -> BTreeMap<String, String> {
    env(&[
        ("VAULT_ADDR", addr),
        ("VAULT_ROLE_ID", "role-123"),
        ("VAULT_SECRET_ID", "secret-456"),
        ("VAULT_KV_MOUNT", "kv"),
        ("VAULT_KV_PATH", "portcullis/origin"),
    ])
}

async fn vault_error(env: &BTreeMap<String, String>) -> String {
    match Secrets::load(&[secrets::DATA_KEY], env).await {
        Err(err @ secrets::SecretsError::Vault(_)) => err.to_string(),
        Err(other) => panic!("not a Vault error: {other}"),
        Ok(loaded) => panic!("loaded despite the fault: {loaded:?}"),
    }
}

#[tokio::test]
async fn a_sealed_or_failing_vault_stops_start_up_with_its_status() {
    let addr = start_vault_with(json!({ "PORTCULLIS_DATA_KEY": "v" }), None, Some(Fault::Sealed)).await;
    assert_eq!(
        vault_error(&token_env(&addr)).await,
        format!("Vault: reading {addr}/v1/kv/data/portcullis/origin answered 503 Service Unavailable")
    );
    assert_eq!(
        vault_error(&approle_env(&addr)).await,
        format!("Vault: AppRole login at {addr}/v1/auth/approle/login answered 503 Service Unavailable")
    );
    let addr = start_vault_with(json!({ "PORTCULLIS_DATA_KEY": "v" }), None, Some(Fault::Internal)).await;
    assert_eq!(
        vault_error(&token_env(&addr)).await,
        format!("Vault: reading {addr}/v1/kv/data/portcullis/origin answered 500 Internal Server Error")
    );
    // A refusal is not taken as "no secrets here": the environment's value is not used instead.
    let mut with_fallback = token_env(&addr);
    with_fallback.insert("PORTCULLIS_DATA_KEY".into(), "from-env".into());
    assert!(Secrets::load(&[secrets::DATA_KEY], &with_fallback).await.is_err());
}

#[tokio::test]
async fn answers_that_are_not_kv_v2_are_refused() {
    let addr = start_vault_with(json!({ "PORTCULLIS_DATA_KEY": "v" }), None, Some(Fault::NotJson)).await;
    let err = vault_error(&token_env(&addr)).await;
    assert!(
        err.starts_with(&format!("Vault: reading {addr}/v1/kv/data/portcullis/origin: not a KV v2 answer: ")),
        "{err}"
    );

    let addr = start_vault_with(json!({ "PORTCULLIS_DATA_KEY": "v" }), None, Some(Fault::KvVersion1)).await;
    let err = vault_error(&token_env(&addr)).await;
    assert!(
        err.starts_with(&format!("Vault: reading {addr}/v1/kv/data/portcullis/origin: not a KV v2 answer: ")),
        "{err}"
    );

    let addr = start_vault_with(json!({}), None, Some(Fault::LoginWithoutToken)).await;
    let err = vault_error(&approle_env(&addr)).await;
    assert!(
        err.starts_with(&format!("Vault: AppRole login at {addr}/v1/auth/approle/login: unexpected answer: ")),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_vault_is_named_with_its_address() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = vault_error(&token_env(&addr)).await;
    assert!(err.starts_with(&format!("Vault: reading {addr}/v1/kv/data/portcullis/origin: ")), "{err}");
    let err = vault_error(&approle_env(&addr)).await;
    assert!(err.starts_with(&format!("Vault: AppRole login at {addr}/v1/auth/approle/login: ")), "{err}");
}

#[tokio::test]
async fn a_path_vault_does_not_have_leaves_every_secret_missing_there() {
    let addr = start_vault(json!({ "PORTCULLIS_DATA_KEY": "v" })).await;
    let mut elsewhere = token_env(&addr);
    elsewhere.insert("VAULT_KV_PATH".into(), "elsewhere".into());
    let err = Secrets::load(&[secrets::DATA_KEY], &elsewhere).await.unwrap_err().to_string();
    assert!(err.ends_with("or add key PORTCULLIS_DATA_KEY at Vault kv/elsewhere"), "{err}");

    // Without VAULT_KV_MOUNT and VAULT_KV_PATH: secret/portcullis.
    let defaults = env(&[("VAULT_ADDR", &addr), ("VAULT_TOKEN", "hvs.test-token")]);
    let err = Secrets::load(&[secrets::DATA_KEY], &defaults).await.unwrap_err().to_string();
    assert!(err.ends_with("at Vault secret/portcullis"), "{err}");
}

#[tokio::test]
async fn vault_credentials_from_files_a_namespace_and_only_string_values() {
    let addr = start_vault_with(
        json!({ "PORTCULLIS_DATA_KEY": "namespaced", "PORTCULLIS_JWT_KEYS": 42 }),
        Some("team-a"),
        None,
    )
    .await;
    let dir = std::env::temp_dir().join(format!("portcullis-vault-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let token_file = write("token", "hvs.test-token\n");
    let role_file = write("role", "role-123\n");
    let secret_file = write("secret", "secret-456\r\n");

    let mut by_token_file = env(&[
        // A trailing slash on the address is not doubled.
        ("VAULT_ADDR", &format!("{addr}/")),
        ("VAULT_TOKEN_FILE", &token_file),
        ("VAULT_NAMESPACE", "team-a"),
        ("VAULT_KV_MOUNT", "kv"),
        ("VAULT_KV_PATH", "portcullis/origin"),
    ]);
    let loaded = Secrets::load(&[secrets::DATA_KEY], &by_token_file).await.unwrap();
    assert_eq!(loaded.get(secrets::DATA_KEY).unwrap().expose_secret(), "namespaced");
    assert_eq!(loaded.source(secrets::DATA_KEY), Some(Source::Vault));
    // A non-string value in Vault is not a secret: the key counts as missing there.
    let err = Secrets::load(&[secrets::JWT_KEYS], &by_token_file).await.unwrap_err().to_string();
    assert!(err.contains("PORTCULLIS_JWT_KEYS (") && err.contains("at Vault kv/portcullis/origin"), "{err}");

    let mut by_approle_files = by_token_file.clone();
    by_approle_files.remove("VAULT_TOKEN_FILE");
    by_approle_files.insert("VAULT_ROLE_ID_FILE".into(), role_file);
    by_approle_files.insert("VAULT_SECRET_ID_FILE".into(), secret_file);
    let loaded = Secrets::load(&[secrets::DATA_KEY], &by_approle_files).await.unwrap();
    assert_eq!(loaded.get(secrets::DATA_KEY).unwrap().expose_secret(), "namespaced");

    let mut other_namespace = by_approle_files.clone();
    other_namespace.insert("VAULT_NAMESPACE".into(), "team-b".into());
    assert!(vault_error(&other_namespace).await.ends_with("answered 403 Forbidden"));

    by_token_file.insert("VAULT_TOKEN_FILE".into(), "/nonexistent/vault-token".into());
    let err = vault_error(&by_token_file).await;
    assert!(err.starts_with("Vault: VAULT_TOKEN_FILE (/nonexistent/vault-token): "), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
