//! The origin API end to end: the real server on a random port over TLS, against the hardened
//! test PostgreSQL that `cargo xtask test` starts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis_origin::configuration::Settings;
use portcullis_origin::executor::{Engine, HttpSpeechToText};
use portcullis_origin::secrets::{self, Secrets};
use portcullis_origin::startup::Application;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use uuid::Uuid;

const KEY_CURRENT: [u8; 32] = [7; 32];
const KEY_PREVIOUS: [u8; 32] = [9; 32];

/// A TCP forwarder between the origin and PostgreSQL that a test can cut, to play a database
/// outage without stopping the shared test cluster.
struct Link {
    port: u16,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Link {
    async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = watch::channel(0u64);
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut_rx = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Self { port, up, cut }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

struct TestApp {
    addr: SocketAddr,
    client: reqwest::Client,
    link: Link,
    pool: sqlx::PgPool,
    _stop: watch::Sender<bool>,
}

/// Whether this app runs a job executor. Executors claim due jobs across owners (as several
/// origin processes sharing a database do), so only one test at a time may run one.
enum Jobs {
    Off,
    NoEngine,
    Engine(Arc<dyn Engine>),
}

async fn spawn_with(extra: &[(&str, &str)], jobs: Jobs) -> TestApp {
    let certs = support::certs();
    let database = support::database();
    let (db_url, db_port) = (database.app_url, database.port);
    let link = Link::start(db_port).await;
    let linked_url = db_url.replace(&format!(":{db_port}/"), &format!(":{}/", link.port));
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let keys = format!("k2:{},k1:{}", STANDARD.encode(KEY_CURRENT), STANDARD.encode(KEY_PREVIOUS));
    for (k, v) in [
        ("PORTCULLIS_LISTEN", "127.0.0.1:0".to_owned()),
        ("PORTCULLIS_TLS_CERT", certs.join("origin.crt").display().to_string()),
        ("PORTCULLIS_TLS_KEY_FILE", certs.join("origin.key").display().to_string()),
        ("PORTCULLIS_DATABASE_URL", linked_url),
        ("PORTCULLIS_JWT_KEYS", keys),
        ("PORTCULLIS_DATA_KEY", format!("data-key-{}", Uuid::new_v4())),
        ("PORTCULLIS_JOB_POLL_MILLIS", "50".to_owned()),
        ("PORTCULLIS_BODY_LIMIT_BYTES", "4096".to_owned()),
    ] {
        env.insert(k.into(), v);
    }
    for (k, v) in extra {
        env.insert((*k).into(), (*v).into());
    }
    let settings = Settings::from_env(&env).unwrap();
    let secrets = Secrets::load(&secrets::SERVE, &env).await.unwrap();
    let app = Application::build(settings, &secrets).await.unwrap();
    let app = match jobs {
        Jobs::Off => app.without_jobs(),
        Jobs::NoEngine => app.with_engine(None),
        Jobs::Engine(engine) => app.with_engine(Some(engine)),
    };
    let pool = app.state().pool.clone();
    let addr = app.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(app.serve(stopped));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.crt")).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .tls_built_in_root_certs(false)
        .resolve("localhost", addr)
        .use_rustls_tls()
        .build()
        .unwrap();
    TestApp { addr, client, link, pool, _stop: stop }
}

async fn spawn() -> TestApp {
    spawn_with(&[], Jobs::Off).await
}

impl TestApp {
    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    async fn create_user(&self, password: &str) -> String {
        support::create_user(&self.pool, password).await
    }

    async fn login(&self, username: &str, password: &str) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/auth/login"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap()
    }

    /// A fresh user's token pair.
    async fn session(&self) -> (String, String) {
        let name = self.create_user("correct horse battery").await;
        let body: Value = self.login(&name, "correct horse battery").await.json().await.unwrap();
        (body["access_token"].as_str().unwrap().to_owned(), body["refresh_token"].as_str().unwrap().to_owned())
    }

    async fn post_anonymous(&self, path: &str, body: Value) -> reqwest::Response {
        self.client.post(self.url(path)).json(&body).send().await.unwrap()
    }

    async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.client.get(self.url(path)).bearer_auth(token).send().await.unwrap()
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> reqwest::Response {
        self.client.post(self.url(path)).bearer_auth(token).json(&body).send().await.unwrap()
    }
}

fn assert_security_headers(response: &reqwest::Response) {
    let h = response.headers();
    assert_eq!(h["x-frame-options"], "DENY", "{}", response.url());
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["strict-transport-security"], "max-age=31536000; includeSubDomains; preload");
    assert_eq!(h["server"], "Unknown");
    assert!(h.contains_key("content-security-policy"));
    assert!(h.contains_key("x-request-id"));
}

async fn error_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    assert_eq!(response.headers()["content-type"], "application/json", "errors are JSON");
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn health_answers_with_the_security_headers() {
    let app = spawn().await;
    let response = app.client.get(app.url("/api/v1/health")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_security_headers(&response);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"status": "ok", "database": "ok"}));
}

#[tokio::test]
async fn login_succeeds_and_failures_say_nothing_specific() {
    let app = spawn().await;
    let name = app.create_user("correct horse battery").await;
    let ok = app.login(&name, "correct horse battery").await;
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    assert!(body["access_token"].as_str().unwrap().split('.').count() == 3);

    // Found by schemathesis: a NUL in the username reached PostgreSQL and made a 500.
    let (status, body) = error_of(app.login("nul\u{0}byte", "x").await).await;
    assert_eq!((status, body["details"][0]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("username")));
    let (status, _) =
        error_of(app.post_anonymous("/api/v1/auth/refresh", json!({"refresh_token": "a\u{0}b"})).await).await;
    assert!(status.is_client_error(), "a NUL anywhere is a client error, never a 500: {status}");

    let wrong_password = error_of(app.login(&name, "wrong").await).await;
    let unknown_user = error_of(app.login("nobody-at-all", "wrong").await).await;
    assert_eq!(wrong_password.0, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_password, unknown_user, "the two failures are indistinguishable");
}

fn forge(header: Header, claims: Value, key: &[u8]) -> String {
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(key)).unwrap()
}

#[tokio::test]
async fn every_defective_token_is_a_plain_401() {
    let app = spawn().await;
    let (token, _) = app.session().await;
    assert_eq!(app.get("/api/v1/videos", &token).await.status(), 200);
    let sub = {
        let payload = token.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        claims["sub"].as_str().unwrap().to_owned()
    };
    let now = chrono::Utc::now().timestamp();
    let claims = |over: Value| {
        let mut c = json!({"sub": sub, "iss": "portcullis", "aud": "portcullis-api", "iat": now, "nbf": now, "exp": now + 600, "jti": "x"});
        for (k, v) in over.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let header = |kid: &str| {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.into());
        h
    };
    // The previous key still verifies: rotation logs nobody out.
    let previous = forge(header("k1"), claims(json!({})), &KEY_PREVIOUS);
    assert_eq!(app.get("/api/v1/videos", &previous).await.status(), 200);

    let alg_none = {
        let head = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT","kid":"k2"}"#);
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims(json!({})).to_string());
        format!("{head}.{body}.")
    };
    let mut hs384 = Header::new(Algorithm::HS384);
    hs384.kid = Some("k2".into());
    let bad = [
        (
            "expired",
            forge(header("k2"), claims(json!({"exp": now - 60, "iat": now - 700, "nbf": now - 700})), &KEY_CURRENT),
        ),
        ("not yet valid", forge(header("k2"), claims(json!({"nbf": now + 300})), &KEY_CURRENT)),
        ("wrong audience", forge(header("k2"), claims(json!({"aud": "someone-else"})), &KEY_CURRENT)),
        ("wrong issuer", forge(header("k2"), claims(json!({"iss": "evil"})), &KEY_CURRENT)),
        ("bad signature", forge(header("k2"), claims(json!({})), &[1u8; 32])),
        ("unknown kid", forge(header("k9"), claims(json!({})), &KEY_CURRENT)),
        ("no kid", forge(Header::new(Algorithm::HS256), claims(json!({})), &KEY_CURRENT)),
        ("other HMAC algorithm", forge(hs384, claims(json!({})), &KEY_CURRENT)),
        ("alg none", alg_none),
        ("garbage", "not.a.token".to_owned()),
    ];
    let mut bodies = Vec::new();
    for (what, token) in bad {
        let response = app.get("/api/v1/videos", &token).await;
        assert_eq!(response.status(), 401, "{what}");
        assert_security_headers(&response);
        bodies.push(response.json::<Value>().await.unwrap());
    }
    // RS256 with the HMAC secret as "public key" (algorithm confusion) cannot even be produced by
    // a correct library; the header alone must be refused.
    let rs_header =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT","kid":"k2"}"#);
    let confused = format!("{rs_header}.{}", previous.split_once('.').unwrap().1);
    assert_eq!(app.get("/api/v1/videos", &confused).await.status(), 401, "RS/HS confusion");
    let no_header = app.client.get(app.url("/api/v1/videos")).send().await.unwrap();
    assert_eq!(no_header.status(), 401);
    bodies.dedup();
    assert_eq!(bodies.len(), 1, "every 401 says the same: {bodies:?}");
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let app = spawn_with(&[("PORTCULLIS_REFRESH_GRACE_SECS", "0")], Jobs::Off).await;
    let (_, first) = app.session().await;
    let refresh = |token: String| {
        let app = &app;
        async move {
            app.client
                .post(app.url("/api/v1/auth/refresh"))
                .json(&json!({"refresh_token": token}))
                .send()
                .await
                .unwrap()
        }
    };
    let rotated = refresh(first.clone()).await;
    assert_eq!(rotated.status(), 200);
    let second = rotated.json::<Value>().await.unwrap()["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(refresh(first).await.status(), 401, "a rotated token is spent");
    assert_eq!(refresh(second).await.status(), 401, "its reuse revoked the whole family");
    assert_eq!(refresh("never-issued".into()).await.status(), 401);
}

/// Two holders of one refresh token (a thief and its owner), in both orders: inside the grace
/// window the second presentation gets the same successor, so the chain does not fork; after the
/// window, the holder left behind presenting a rotated token is a detected reuse that revokes the
/// family, and so the other holder's chain too.
#[tokio::test]
async fn inside_the_grace_window_a_second_presentation_gets_the_same_successor() {
    let app = spawn_with(&[("PORTCULLIS_REFRESH_GRACE_SECS", "2")], Jobs::Off).await;
    let refresh = |token: String| {
        let app = &app;
        async move {
            let response =
                app.client.post(app.url("/api/v1/auth/refresh")).json(&json!({"refresh_token": token})).send().await;
            let response = response.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body["refresh_token"].as_str().map(str::to_owned))
        }
    };
    for first_presenter in ["thief", "owner"] {
        let (_, shared) = app.session().await;
        let (status, successor) = refresh(shared.clone()).await;
        assert_eq!(status, 200, "{first_presenter} rotates first");
        let (status, again) = refresh(shared.clone()).await;
        assert_eq!(status, 200, "the other holder, inside the window, is not refused");
        assert_eq!(again, successor, "and gets the same successor: the chain does not fork");
        // The first presenter rotates the shared successor; the other one comes back later.
        let successor = successor.unwrap();
        let (status, next) = refresh(successor.clone()).await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(2200)).await;
        assert_eq!(refresh(successor).await.0, 401, "a rotated token after the window is a reuse");
        assert_eq!(refresh(next.unwrap()).await.0, 401, "which revoked the whole family ({first_presenter} first)");
    }

    // A thief who rotates twice at once cannot make the owner's presentation a harmless 401:
    // the owner's token, inside the window, names a successor that is already spent, which is a
    // reuse, and the thief's chain dies with it.
    let (_, shared) = app.session().await;
    let (_, child) = refresh(shared.clone()).await;
    let (status, grandchild) = refresh(child.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(refresh(shared).await.0, 401, "the owner is refused");
    assert_eq!(refresh(grandchild.unwrap()).await.0, 401, "and so is the thief from now on");
}

#[tokio::test]
async fn jobs_belong_to_their_owner_only() {
    let app = spawn().await;
    let (alice, _) = app.session().await;
    let (bob, _) = app.session().await;
    let created = app
        .post("/api/v1/transcribe", &alice, json!({"source_url": "https://media.example/talk.mp4", "title": "Talk"}))
        .await;
    assert_eq!(created.status(), 202);
    let job: Value = created.json().await.unwrap();
    let path = format!("/api/v1/jobs/{}", job["id"].as_str().unwrap());
    assert_eq!(app.get(&path, &alice).await.status(), 200);
    let (status, body) = error_of(app.get(&path, &bob).await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found")),
        "another user's job is a 404"
    );
    let delete = app.client.delete(app.url(&path)).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(delete.status(), 404);
    let videos: Value = app.get("/api/v1/videos", &bob).await.json().await.unwrap();
    assert_eq!(videos["items"], json!([]), "bob sees none of alice's videos");
}

/// A speech-to-text test double speaking the OpenAI `POST /v1/audio/transcriptions` API.
async fn speech_to_text_double() -> String {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/v1/audio/transcriptions",
        post(|mut form: axum::extract::Multipart| async move {
            let mut fields = Vec::new();
            while let Ok(Some(field)) = form.next_field().await {
                fields.push(field.name().unwrap_or_default().to_owned());
            }
            if fields.contains(&"file".to_owned()) && fields.contains(&"model".to_owned()) {
                (StatusCode::OK, axum::Json(json!({"text": "hello from the recording"})))
            } else {
                (StatusCode::BAD_REQUEST, axum::Json(json!({"error": {"message": "file and model are required"}})))
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn jobs_run_on_the_engine_or_fail_with_a_reason() {
    // One test, so that no other executor of this binary races for the same queued jobs.
    a_job_without_an_engine_fails_with_a_reason_and_can_be_deleted().await;
    a_transcription_runs_on_the_engine_and_its_result_is_stored_encrypted().await;
}

async fn a_job_without_an_engine_fails_with_a_reason_and_can_be_deleted() {
    let app = spawn_with(&[], Jobs::NoEngine).await;
    let (token, _) = app.session().await;
    let job: Value = app
        .post("/api/v1/transcribe", &token, json!({"source_url": "https://media.example/a.mp4"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "queued");
    let path = format!("/api/v1/jobs/{}", job["id"].as_str().unwrap());
    let mut last = Value::Null;
    for _ in 0..100 {
        last = app.get(&path, &token).await.json().await.unwrap();
        if last["status"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last["status"], "failed", "never a fake success: {last}");
    assert!(last["error"].as_str().unwrap().contains("PORTCULLIS_STT_URL"), "{last}");
    let deleted = app.client.delete(app.url(&path)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(app.get(&path, &token).await.status(), 404);
}

async fn a_transcription_runs_on_the_engine_and_its_result_is_stored_encrypted() {
    let stt = speech_to_text_double().await;
    let media = support::media::serve_https(
        axum::Router::new().route("/b.mp3", axum::routing::get(|| async { vec![0u8; 64] })),
        support::media::MEDIA_IP,
    )
    .await;
    let engine = HttpSpeechToText {
        base_url: stt,
        model: "whisper-1".into(),
        client: HttpSpeechToText::client().unwrap(),
        media: support::media::fetcher(),
    };
    let app = spawn_with(&[], Jobs::Engine(Arc::new(engine))).await;
    let (token, _) = app.session().await;
    let source_url = format!("https://media.example:{}/b.mp3", media.port());
    let job: Value = app
        .post("/api/v1/transcribe", &token, json!({"source_url": source_url, "language": "en"}))
        .await
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/jobs/{id}");
    let mut last = Value::Null;
    for _ in 0..100 {
        last = app.get(&path, &token).await.json().await.unwrap();
        if last["status"] == "succeeded" || last["status"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last["status"], "succeeded", "{last}");
    assert_eq!(last["result"], "hello from the recording");
    // The raw column, read as the job's owner: ciphertext only.
    let stored: (Vec<u8>,) = {
        let sub = token_subject(&token);
        let mut tx = app.pool.begin().await.unwrap();
        sqlx::query("SELECT set_config('app.user_id', $1, true)")
            .bind(sub.to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
        let row = sqlx::query_as("SELECT result_enc FROM app.jobs WHERE id = $1")
            .bind(Uuid::parse_str(&id).unwrap())
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        row
    };
    assert!(!String::from_utf8_lossy(&stored.0).contains("hello from the recording"), "the result is stored encrypted");
}

fn token_subject(token: &str) -> Uuid {
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    Uuid::parse_str(claims["sub"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn validation_errors_are_422_with_every_field() {
    let app = spawn().await;
    let (token, _) = app.session().await;
    let (status, body) = error_of(
        app.post(
            "/api/v1/transcribe",
            &token,
            json!({"source_url": "http://insecure.example/x", "language": "not a tag!"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = body["details"].as_array().unwrap().iter().map(|d| d["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["source_url", "language"]);

    let (_, body) =
        error_of(app.post("/api/v1/transcribe", &token, json!({"source_url": "https://a.example/x", "evil": 1})).await)
            .await;
    assert_eq!(body["details"][0]["field"], "evil");

    let past = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let (status, body) =
        error_of(app.post("/api/v1/schedule", &token, json!({"kind": "transcription", "run_at": past})).await).await;
    assert_eq!((status, body["details"][0]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("source_url")));
    let (_, body) = error_of(
        app.post(
            "/api/v1/schedule",
            &token,
            json!({"kind": "analysis", "run_at": past, "source_url": "https://a.example/s"}),
        )
        .await,
    )
    .await;
    assert_eq!(body["details"][0]["field"], "source_url", "an analysis takes no source_url: {body}");

    // The executor fetches source_url: no IP literals, no user info, no plain HTTP.
    for url in ["https://169.254.169.254/latest/meta-data", "https://10.0.0.1/a", "https://u@a.example/x"] {
        let (status, body) = error_of(app.post("/api/v1/transcribe", &token, json!({"source_url": url})).await).await;
        assert_eq!(
            (status, body["details"][0]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("source_url"))
        );
    }

    let (_, body) =
        error_of(app.post("/api/v1/analyze", &token, json!({"video_id": Uuid::new_v4(), "analysis": "vibes"})).await)
            .await;
    assert_eq!(body["details"][0]["field"], "analysis");

    let (status, body) = error_of(app.get("/api/v1/jobs/not-a-uuid", &token).await).await;
    assert_eq!((status, body["details"][0]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("job_id")));

    let (status, body) = error_of(app.get("/api/v1/videos?limit=1000", &token).await).await;
    assert_eq!((status, body["details"][0]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("limit")));

    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let scheduled = app
        .post(
            "/api/v1/schedule",
            &token,
            json!({"kind": "transcription", "run_at": future, "source_url": "https://a.example/s"}),
        )
        .await;
    assert_eq!(scheduled.status(), 202);
    assert_eq!(scheduled.json::<Value>().await.unwrap()["status"], "queued");

    // A time already past runs the job at once: it is queued for now, not refused.
    let before = chrono::Utc::now();
    let scheduled = app
        .post(
            "/api/v1/schedule",
            &token,
            json!({"kind": "transcription", "run_at": "1999-12-31T23:59:59Z", "source_url": "https://a.example/p"}),
        )
        .await;
    assert_eq!(scheduled.status(), 202);
    let job: Value = scheduled.json().await.unwrap();
    let run_at: chrono::DateTime<chrono::Utc> = job["run_at"].as_str().unwrap().parse().unwrap();
    assert!(run_at >= before - chrono::Duration::seconds(1), "{job}");
}

#[tokio::test]
async fn a_deleted_job_is_gone() {
    let app = spawn().await;
    let (token, _) = app.session().await;
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let job: Value = app
        .post(
            "/api/v1/schedule",
            &token,
            json!({"kind": "transcription", "run_at": future, "source_url": "https://a.example/d"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/api/v1/jobs/{}", job["id"].as_str().unwrap());
    let deleted = app.client.delete(app.url(&path)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(app.get(&path, &token).await.status(), 404);
    let again = app.client.delete(app.url(&path)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(again.status(), 404);
}

#[tokio::test]
async fn wrong_media_type_and_oversized_bodies() {
    let app = spawn().await;
    let (token, _) = app.session().await;
    let text = app
        .client
        .post(app.url("/api/v1/transcribe"))
        .bearer_auth(&token)
        .body("source_url=x")
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(text).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("unsupported_media_type")));

    let huge = json!({"source_url": format!("https://a.example/{}", "x".repeat(10_000))});
    let response = app.post("/api/v1/transcribe", &token, huge).await;
    assert_security_headers(&response);
    let (status, _) = error_of(response).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let unknown = app.client.get(app.url("/nothing/here")).send().await.unwrap();
    assert_security_headers(&unknown);
    let (status, body) = error_of(unknown).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
}

#[tokio::test]
async fn videos_paginate_with_a_cursor() {
    let app = spawn().await;
    let (token, _) = app.session().await;
    for i in 0..5 {
        app.post("/api/v1/transcribe", &token, json!({"source_url": format!("https://media.example/{i}.mp4")})).await;
    }
    let first: Value = app.get("/api/v1/videos?limit=3", &token).await.json().await.unwrap();
    assert_eq!(first["items"].as_array().unwrap().len(), 3);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = app.get(&format!("/api/v1/videos?limit=3&cursor={cursor}"), &token).await.json().await.unwrap();
    assert_eq!(second["items"].as_array().unwrap().len(), 2);
    assert!(second["next_cursor"].is_null());
    let (status, _) = error_of(app.get("/api/v1/videos?cursor=forged", &token).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn the_database_going_away_is_503_then_recovers_without_restart() {
    let app = spawn().await;
    let (token, _) = app.session().await;
    assert_eq!(app.get("/api/v1/videos", &token).await.status(), 200);
    app.link.down();
    let health = app.client.get(app.url("/api/v1/health")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    assert_eq!(health.headers()["retry-after"], "5");
    let (status, body) = error_of(app.get("/api/v1/videos", &token).await).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("service_unavailable")));
    app.link.restore();
    let mut recovered = false;
    for _ in 0..50 {
        if app.get("/api/v1/videos", &token).await.status() == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the API recovers once the database is back");
    assert_eq!(app.client.get(app.url("/api/v1/health")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn hosts_off_the_allow_list_are_refused() {
    let app = spawn().await;
    let response = app.client.get(app.url("/api/v1/health")).header("host", "evil.example").send().await.unwrap();
    let (status, body) = error_of(response).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_host")));
}

#[tokio::test]
async fn the_openapi_document_describes_every_endpoint() {
    let app = spawn().await;
    let doc: Value = app.client.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    for path in [
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
        "/api/v1/transcribe",
        "/api/v1/videos",
        "/api/v1/analyze",
        "/api/v1/jobs/{job_id}",
        "/api/v1/schedule",
        "/api/v1/health",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing from /openapi.json");
    }
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
}

#[tokio::test]
async fn tls_1_1_is_refused() {
    let app = spawn().await;
    let openssl = |version: &'static str| {
        let addr = app.addr.to_string();
        // Blocking: off the runtime thread, which must keep serving the handshake.
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("openssl")
                .args(["s_client", "-connect", &addr, version, "-servername", "localhost", "-brief"])
                .stdin(std::process::Stdio::null())
                .output()
                .expect("openssl is installed")
        })
    };
    let out = openssl("-tls1_1").await.unwrap();
    assert!(!out.status.success(), "a TLS 1.1 handshake must fail");
    let ok = openssl("-tls1_2").await.unwrap();
    assert!(
        String::from_utf8_lossy(&ok.stderr).contains("TLSv1.2"),
        "TLS 1.2 works: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
}
