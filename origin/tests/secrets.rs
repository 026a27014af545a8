//! The secrets module against its real sources: environment variables, `_FILE` files, and
//! Vault — here a test double that speaks Vault's documented KV v2 and AppRole HTTP API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
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
}

async fn approle_login(State(vault): State<Arc<VaultDouble>>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    if body["role_id"] == vault.role_id.as_str() && body["secret_id"] == vault.secret_id.as_str() {
        let auth = json!({ "auth": { "client_token": vault.token, "lease_duration": 3600, "renewable": true, "policies": ["portcullis"] } });
        (StatusCode::OK, Json(auth))
    } else {
        (StatusCode::BAD_REQUEST, Json(json!({ "errors": ["invalid role or secret ID"] })))
    }
}

async fn kv2_read(
    State(vault): State<Arc<VaultDouble>>,
    Path((mount, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    if headers.get("x-vault-token").and_then(|v| v.to_str().ok()) != Some(vault.token.as_str()) {
        return (StatusCode::FORBIDDEN, Json(json!({ "errors": ["permission denied"] })));
    }
    if mount != vault.mount || path != vault.path {
        return (StatusCode::NOT_FOUND, Json(json!({ "errors": [] })));
    }
    let body = json!({
        "request_id": "00000000-0000-0000-0000-000000000000",
        "data": { "data": vault.data, "metadata": { "version": 3, "destroyed": false, "deletion_time": "" } }
    });
    (StatusCode::OK, Json(body))
}

async fn start_vault(data: Value) -> String {
    let vault = Arc::new(VaultDouble {
        token: "hvs.test-token".into(),
        role_id: "role-123".into(),
        secret_id: "secret-456".into(),
        mount: "kv".into(),
        path: "portcullis/origin".into(),
        data,
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
