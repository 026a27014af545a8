//! The job executor and its speech-to-text engine: the engine against a test double of an
//! OpenAI/whisper-compatible service (every way that service can fail), the executor loop's
//! start and stop, and jobs run end to end through the API against the test PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Multipart, Path};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use portcullis_origin::executor::{ClaimedJob, Engine, Executor, ExecutorSettings, HttpSpeechToText};
use secrecy::SecretString;
use serde_json::{Value, json};
use support::{Jobs, Server};
use tokio::net::TcpListener;
use tokio::sync::watch;
use uuid::Uuid;

const MODEL: &str = "whisper-test";

/// Media the double serves: the bytes are the name, and the name tells the transcription
/// endpoint how to answer. `missing` is a 404.
async fn media(Path(name): Path<String>) -> Response {
    if name == "missing" { StatusCode::NOT_FOUND.into_response() } else { name.into_response() }
}

/// `POST /v1/audio/transcriptions` as OpenAI documents it: a multipart form with `file`, `model`
/// and an optional `language`; the answer is `{"text": …}`.
async fn transcriptions(mut form: Multipart) -> Response {
    let (mut file, mut model, mut language) = (None, None, None);
    while let Some(field) = form.next_field().await.unwrap() {
        let name = field.name().unwrap_or_default().to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let bytes = field.bytes().await.unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        match name.as_str() {
            "file" if file_name.is_some() => file = Some(text),
            "model" => model = Some(text),
            "language" => language = Some(text),
            _ => {}
        }
    }
    let (Some(file), Some(MODEL)) = (file.as_deref(), model.as_deref()) else {
        let error = json!({"error": {"message": "file and model are required", "type": "invalid_request_error"}});
        return (StatusCode::BAD_REQUEST, axum::Json(error)).into_response();
    };
    let said = |what: &str| axum::Json(json!({"text": what})).into_response();
    match file {
        "unavailable" => {
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"error": {"message": "overloaded"}}))).into_response()
        }
        "not-json" => ([("content-type", "text/html")], "<html>bad gateway</html>").into_response(),
        "no-text" => axum::Json(json!({"segments": []})).into_response(),
        _ => match language {
            Some(language) => said(&format!("{file} heard in {language}")),
            None => said(&format!("{file} heard")),
        },
    }
}

/// A speech-to-text test double on an ephemeral port (plain HTTP: it is the operator's service),
/// and the HTTPS media server it fetches from, as `https://media.example:PORT`.
async fn speech_to_text_double() -> (String, String) {
    let app = axum::Router::new().route("/v1/audio/transcriptions", post(transcriptions));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let media_server =
        support::media::serve_https(axum::Router::new().route("/media/{name}", get(media)), support::media::MEDIA_IP)
            .await;
    (format!("http://{addr}"), format!("https://media.example:{}", media_server.port()))
}

/// A local port with nothing listening on it.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

fn engine(base_url: String) -> HttpSpeechToText {
    HttpSpeechToText {
        base_url,
        model: MODEL.into(),
        client: HttpSpeechToText::client().unwrap(),
        media: support::media::fetcher(),
    }
}

fn job(kind: &str, params: Value) -> ClaimedJob {
    ClaimedJob { id: Uuid::new_v4(), kind: kind.into(), params }
}

fn transcription(source_url: String) -> ClaimedJob {
    job("transcription", json!({ "source_url": source_url }))
}

#[tokio::test]
async fn a_transcription_sends_the_media_the_model_and_the_language() {
    let (double, media) = speech_to_text_double().await;
    // A trailing slash on the base URL is not doubled.
    let stt = engine(format!("{double}/"));
    let with_language = job("transcription", json!({"source_url": format!("{media}/media/talk"), "language": "de"}));
    assert_eq!(stt.run(with_language).await, Ok("talk heard in de".to_owned()));
    assert_eq!(stt.run(transcription(format!("{media}/media/talk"))).await, Ok("talk heard".to_owned()));
}

#[tokio::test]
async fn every_upstream_failure_is_a_reason_never_a_result() {
    let (double, media_base) = speech_to_text_double().await;
    let stt = engine(double.clone());
    let media = |name: &str| transcription(format!("{media_base}/media/{name}"));
    let closed = closed_port().await;

    let reason = |outcome: Result<String, String>| outcome.expect_err("a failure, not a result");
    assert_eq!(reason(stt.run(media("unavailable")).await), "speech-to-text answered 503 Service Unavailable");
    let not_json = reason(stt.run(media("not-json")).await);
    assert!(not_json.starts_with("speech-to-text answer: "), "{not_json}");
    assert_eq!(reason(stt.run(media("no-text")).await), "speech-to-text answer has no text");
    assert_eq!(
        reason(stt.run(media("missing")).await),
        "the media could not be fetched: the media server answered 404"
    );
    let unreachable_media = reason(stt.run(transcription(format!("https://media.example:{closed}/a.mp3"))).await);
    assert_eq!(unreachable_media, "the media could not be fetched: its host could not be reached");
    let internal = reason(stt.run(transcription(format!("https://127.0.0.1:{closed}/a.mp3"))).await);
    assert_eq!(internal, "the media could not be fetched: its host resolves to an address that is not public");

    let wrong_model = HttpSpeechToText { model: "whisper-unknown".into(), ..engine(double.clone()) };
    assert_eq!(reason(wrong_model.run(media("talk")).await), "speech-to-text answered 400 Bad Request");
    let unreachable_stt = engine(format!("http://127.0.0.1:{closed}"));
    let refused = reason(unreachable_stt.run(media("talk")).await);
    assert!(refused.starts_with("speech-to-text: "), "{refused}");

    assert_eq!(reason(stt.run(job("transcription", json!({}))).await), "the job has no source_url");
    assert_eq!(
        reason(stt.run(job("analysis", json!({"analysis": "summary"}))).await),
        "no engine for analysis jobs is configured"
    );
}

/// A pool whose database is out of reach, failing each attempt quickly.
async fn unreachable_pool() -> sqlx::PgPool {
    let url = format!("postgres://nobody:nothing@127.0.0.1:{}/portcullis?sslmode=disable", closed_port().await);
    sqlx::postgres::PgPoolOptions::new().acquire_timeout(Duration::from_millis(200)).connect_lazy(&url).unwrap()
}

#[tokio::test]
async fn the_executor_returns_at_once_when_stopped_before_it_starts() {
    let (_stop, stopped) = watch::channel(true);
    let settings = ExecutorSettings { poll: Duration::from_secs(60), ..ExecutorSettings::default() };
    let run = Executor::new(unreachable_pool().await, None, SecretString::from("k"), settings).run(stopped);
    tokio::time::timeout(Duration::from_secs(2), run).await.expect("a stopped executor does not poll");
}

#[tokio::test]
async fn the_executor_outlives_an_unreachable_database_and_stops_when_told() {
    let (stop, stopped) = watch::channel(false);
    let settings = ExecutorSettings { poll: Duration::from_millis(10), ..ExecutorSettings::default() };
    let run =
        tokio::spawn(Executor::new(unreachable_pool().await, None, SecretString::from("k"), settings).run(stopped));
    // Long enough for several polls to fail.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!run.is_finished(), "a database outage does not end the executor");
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), run).await.expect("it stops when told").unwrap();
}

async fn transcribe(server: &Server, token: &str, body: Value) -> Value {
    let response = server.post("/api/v1/transcribe", token, body).await;
    assert_eq!(response.status(), 202);
    response.json().await.unwrap()
}

/// The raw `result_enc` column of one of `token`'s jobs, and that column decrypted with `key`.
async fn stored_result(server: &Server, token: &str, job: &str, key: &str) -> (Vec<u8>, Result<String, String>) {
    let owner = support::token_subject(token);
    let id = Uuid::parse_str(job).unwrap();
    let mut tx = portcullis_origin::store::as_user(&server.pool, owner).await.unwrap();
    let (raw,): (Vec<u8>,) =
        sqlx::query_as("SELECT result_enc FROM app.jobs WHERE id = $1").bind(id).fetch_one(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    let mut tx = portcullis_origin::store::as_user(&server.pool, owner).await.unwrap();
    let decrypted =
        sqlx::query_as::<_, (String,)>("SELECT crypto.pgp_sym_decrypt(result_enc, $2) FROM app.jobs WHERE id = $1")
            .bind(id)
            .bind(key)
            .fetch_one(&mut *tx)
            .await
            .map(|(text,)| text)
            .map_err(|e| e.to_string());
    tx.rollback().await.unwrap();
    (raw, decrypted)
}

#[tokio::test]
async fn jobs_run_through_the_api_store_results_encrypted_and_failures_with_their_reason() {
    let (double, media) = speech_to_text_double().await;
    let server = support::serve(&[], Jobs::On(Some(Arc::new(engine(double))))).await;
    let token = server.session().await;

    let ok =
        transcribe(&server, &token, json!({"source_url": format!("{media}/media/lecture"), "language": "fr"})).await;
    let unavailable = transcribe(&server, &token, json!({"source_url": format!("{media}/media/unavailable")})).await;
    let no_text = transcribe(&server, &token, json!({"source_url": format!("{media}/media/no-text")})).await;
    // The API takes any public-looking host name; this one resolves to nothing here. The owner
    // reads a reason class, never the library's error or the URL.
    let nowhere = transcribe(&server, &token, json!({"source_url": "https://nowhere.example/a.mp3"})).await;

    let done = server.finished_job(ok["id"].as_str().unwrap(), &token).await;
    assert_eq!((done["status"].as_str(), done["result"].as_str()), (Some("succeeded"), Some("lecture heard in fr")));
    assert!(done["error"].is_null(), "{done}");
    let (raw, decrypted) = stored_result(&server, &token, ok["id"].as_str().unwrap(), &server.data_key).await;
    assert!(!raw.is_empty() && !String::from_utf8_lossy(&raw).contains("lecture heard"), "stored encrypted");
    assert_eq!(decrypted, Ok("lecture heard in fr".to_owned()), "the data key decrypts it");
    let (_, wrong_key) = stored_result(&server, &token, ok["id"].as_str().unwrap(), "some-other-key-0000").await;
    assert!(wrong_key.is_err(), "another key does not: {wrong_key:?}");

    let failed = server.finished_job(unavailable["id"].as_str().unwrap(), &token).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"], "speech-to-text answered 503 Service Unavailable");
    assert!(failed["result"].is_null(), "never a fake success: {failed}");
    let failed = server.finished_job(no_text["id"].as_str().unwrap(), &token).await;
    assert_eq!(
        (failed["status"].as_str(), failed["error"].as_str()),
        (Some("failed"), Some("speech-to-text answer has no text"))
    );

    let failed = server.finished_job(nowhere["id"].as_str().unwrap(), &token).await;
    assert_eq!(failed["error"], "the media could not be fetched: its host could not be reached");

    // An analysis has no engine here: it fails saying so.
    let analysis =
        server.post("/api/v1/analyze", &token, json!({"video_id": ok["video_id"], "analysis": "keywords"})).await;
    assert_eq!(analysis.status(), 202);
    let analysis: Value = analysis.json().await.unwrap();
    assert_eq!(
        (analysis["kind"].as_str(), analysis["params"]["analysis"].as_str()),
        (Some("analysis"), Some("keywords"))
    );
    let failed = server.finished_job(analysis["id"].as_str().unwrap(), &token).await;
    assert_eq!(failed["error"], "no engine for analysis jobs is configured");
}
