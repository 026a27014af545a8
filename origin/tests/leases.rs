//! Jobs always finish: an origin killed mid-job (a real process, SIGKILL) leaves its job to
//! another origin once the lease runs out; interrupted jobs fail after their last attempt;
//! a job over its time limit fails; two executors share one queue and run each job once, each
//! within its concurrency; a stopping executor hands its jobs back. Against the test PostgreSQL.
//!
//! Executors claim every owner's due jobs (as origins sharing a database do), so this binary
//! runs its scenarios one after another in one test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use portcullis_origin::executor::{ClaimedJob, Engine, Executor, ExecutorSettings, HttpSpeechToText};
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use uuid::Uuid;

async fn pool() -> PgPool {
    portcullis_origin::db::connect(&support::database().app_url, 4).await.unwrap()
}

/// A user of its own for each scenario; its id.
async fn user(pool: &PgPool) -> Uuid {
    support::insert_user(pool, "not used").await.0
}

async fn queue(pool: &PgPool, owner: Uuid, params: Value) -> Uuid {
    let mut tx = portcullis_origin::store::as_user(pool, owner).await.unwrap();
    let (id,): (Uuid,) =
        sqlx::query_as("INSERT INTO app.jobs (owner_id, kind, params) VALUES ($1, 'transcription', $2) RETURNING id")
            .bind(owner)
            .bind(params)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    tx.commit().await.unwrap();
    id
}

/// (status, attempts, error) of a job, read as its owner.
async fn state(pool: &PgPool, owner: Uuid, job: Uuid) -> (String, i32, Option<String>) {
    let mut tx = portcullis_origin::store::as_user(pool, owner).await.unwrap();
    let row = sqlx::query_as("SELECT status, attempts, error FROM app.jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    row
}

async fn wait_for(
    pool: &PgPool,
    owner: Uuid,
    job: Uuid,
    status: &str,
    within: Duration,
) -> (String, i32, Option<String>) {
    let deadline = Instant::now() + within;
    loop {
        let now = state(pool, owner, job).await;
        if now.0 == status || Instant::now() > deadline {
            assert_eq!(now.0, status, "job {job} within {within:?}: {now:?}");
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn quick(lease_secs: u64) -> ExecutorSettings {
    ExecutorSettings {
        poll: Duration::from_millis(50),
        concurrency: 4,
        lease: Duration::from_secs(lease_secs),
        max_attempts: 3,
        job_timeout: Duration::from_secs(30),
    }
}

fn start(
    pool: &PgPool,
    engine: Arc<dyn Engine>,
    settings: ExecutorSettings,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = watch::channel(false);
    let executor = Executor::new(pool.clone(), Some(engine), SecretString::from("lease-test-data-key"), settings);
    (stop, tokio::spawn(executor.run(stopped)))
}

type Run<'a> = Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;

/// Never finishes.
struct Hang;
impl Engine for Hang {
    fn run(&self, _job: ClaimedJob) -> Run<'_> {
        Box::pin(std::future::pending())
    }
}

/// Records each run and how many ran at once; takes `work` per job.
#[derive(Default)]
struct Counting {
    runs: Mutex<Vec<Uuid>>,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    work: Duration,
}
impl Engine for Counting {
    fn run(&self, job: ClaimedJob) -> Run<'_> {
        Box::pin(async move {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.work).await;
            self.runs.lock().unwrap().push(job.id);
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(format!("done {}", job.id))
        })
    }
}

/// The media server for the killed-origin scenario: the first fetch trickles forever (the job
/// is stuck mid-fetch when its origin dies), every later one answers at once. Its URL names
/// [`support::media::MEDIA_IP`] itself, which the system resolver needs no help with.
async fn once_slow_media() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let router = Router::new().route(
        "/talk.mp3",
        get(move || {
            let first = seen.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    let stream = futures_util::stream::unfold((), |()| async {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Some((Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"x")), ()))
                    });
                    Body::from_stream(stream).into_response()
                } else {
                    "audio".into_response()
                }
            }
        }),
    );
    let addr = support::media::serve_https(router, support::media::MEDIA_IP).await;
    (format!("https://{}/talk.mp3", addr), hits)
}

async fn speech_to_text() -> String {
    let app = Router::new().route("/v1/audio/transcriptions", post(|| async { axum::Json(json!({"text": "heard"})) }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// `portcullis-origin serve` as a child process, with its executor on the test database.
fn origin_process(stt: &str, ca_file: &std::path::Path) -> Child {
    let env = support::serve_env(&support::database());
    Command::new(env!("CARGO_BIN_EXE_portcullis-origin"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env)
        .env("PORTCULLIS_STT_URL", stt)
        .env("PORTCULLIS_JOB_LEASE_SECS", "2")
        .env("PORTCULLIS_MEDIA_ALLOW_NETWORKS", format!("{}/32", support::media::MEDIA_IP))
        .env("PORTCULLIS_MEDIA_CA_FILE", ca_file)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn jobs_always_finish() {
    let pool = pool().await;
    an_origin_killed_mid_job_leaves_the_job_to_another_origin(&pool).await;
    interrupted_jobs_fail_after_their_last_attempt(&pool).await;
    a_job_over_its_time_limit_fails(&pool).await;
    two_executors_share_the_queue_and_run_each_job_once(&pool).await;
    a_stopping_executor_hands_its_jobs_back(&pool).await;
}

async fn an_origin_killed_mid_job_leaves_the_job_to_another_origin(pool: &PgPool) {
    let owner = user(pool).await;
    let (url, hits) = once_slow_media().await;
    let stt = speech_to_text().await;
    let ca_file = std::env::temp_dir().join(format!("portcullis-media-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, &support::media::ca().ca_pem).unwrap();

    let mut first = origin_process(&stt, &ca_file);
    let job = queue(pool, owner, json!({ "source_url": url })).await;
    let (status, attempts, _) = wait_for(pool, owner, job, "running", Duration::from_secs(20)).await;
    assert_eq!((status.as_str(), attempts), ("running", 1));
    let deadline = Instant::now() + Duration::from_secs(10);
    while hits.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the first origin is fetching the media");
    first.kill().unwrap();
    first.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state(pool, owner, job).await.0, "running", "a dead origin's claim lasts until its lease runs out");

    // A second origin (in-process here) takes the job over once the lease has run out.
    let engine = HttpSpeechToText {
        base_url: stt,
        model: "whisper-1".into(),
        client: HttpSpeechToText::client().unwrap(),
        media: support::media::fetcher(),
    };
    let (stop, second) = start(pool, Arc::new(engine), quick(2));
    let (_, attempts, error) = wait_for(pool, owner, job, "succeeded", Duration::from_secs(15)).await;
    assert_eq!((attempts, error), (2, None), "run again, once");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    stop.send(true).unwrap();
    second.await.unwrap();
    let _ = std::fs::remove_file(&ca_file);
}

async fn interrupted_jobs_fail_after_their_last_attempt(pool: &PgPool) {
    let owner = user(pool).await;
    let job = queue(pool, owner, json!({"source_url": "https://media.example/x"})).await;
    // Two executors that die mid-job, one after the other (aborted: no renewal, no hand-back).
    for attempt in 1..=2 {
        let settings = ExecutorSettings { max_attempts: 2, ..quick(1) };
        let (_stop, crashed) = start(pool, Arc::new(Hang), settings);
        let deadline = Instant::now() + Duration::from_secs(10);
        while state(pool, owner, job).await != ("running".to_owned(), attempt, None) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        crashed.abort();
        let _ = crashed.await;
        assert_eq!(state(pool, owner, job).await.1, attempt);
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    // Whoever looks next (any executor) finds the lease expired on the last attempt.
    let reaped: i32 = sqlx::query_scalar("SELECT app.reap_expired_jobs(2)").fetch_one(pool).await.unwrap();
    assert!(reaped >= 1);
    let (status, attempts, error) = state(pool, owner, job).await;
    assert_eq!((status.as_str(), attempts), ("failed", 2));
    assert_eq!(error.as_deref(), Some("the job was interrupted 2 times before it could finish"));
}

async fn a_job_over_its_time_limit_fails(pool: &PgPool) {
    let owner = user(pool).await;
    let job = queue(pool, owner, json!({"source_url": "https://media.example/x"})).await;
    let settings = ExecutorSettings { job_timeout: Duration::from_secs(1), ..quick(5) };
    let (stop, executor) = start(pool, Arc::new(Hang), settings);
    let (_, attempts, error) = wait_for(pool, owner, job, "failed", Duration::from_secs(10)).await;
    assert_eq!((attempts, error.as_deref()), (1, Some("the job did not finish within 1 s")));
    stop.send(true).unwrap();
    executor.await.unwrap();
}

async fn two_executors_share_the_queue_and_run_each_job_once(pool: &PgPool) {
    let owner = user(pool).await;
    let mut jobs = Vec::new();
    for i in 0..24 {
        jobs.push(queue(pool, owner, json!({"source_url": format!("https://media.example/{i}")})).await);
    }
    let engines: Vec<Arc<Counting>> =
        (0..2).map(|_| Arc::new(Counting { work: Duration::from_millis(100), ..Counting::default() })).collect();
    let running: Vec<_> = engines
        .iter()
        .map(|engine| start(pool, engine.clone(), ExecutorSettings { concurrency: 3, ..quick(5) }))
        .collect();
    for job in &jobs {
        wait_for(pool, owner, *job, "succeeded", Duration::from_secs(30)).await;
    }
    let mut runs: HashMap<Uuid, usize> = HashMap::new();
    for engine in &engines {
        for id in engine.runs.lock().unwrap().iter() {
            *runs.entry(*id).or_default() += 1;
        }
        assert!(engine.peak.load(Ordering::SeqCst) <= 3, "each executor within its concurrency");
    }
    for job in &jobs {
        assert_eq!(runs.get(job), Some(&1), "job {job} ran exactly once");
    }
    let peak: usize = engines.iter().map(|e| e.peak.load(Ordering::SeqCst)).max().unwrap();
    assert!(peak > 1, "jobs ran concurrently (peak {peak})");
    for (stop, handle) in running {
        stop.send(true).unwrap();
        handle.await.unwrap();
    }
}

async fn a_stopping_executor_hands_its_jobs_back(pool: &PgPool) {
    let owner = user(pool).await;
    let job = queue(pool, owner, json!({"source_url": "https://media.example/x"})).await;
    let (stop, executor) = start(pool, Arc::new(Hang), quick(30));
    wait_for(pool, owner, job, "running", Duration::from_secs(10)).await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), executor).await.unwrap().unwrap();
    let (status, attempts, _) = state(pool, owner, job).await;
    assert_eq!((status.as_str(), attempts), ("queued", 0), "back in the queue, the attempt not counted");
    // Nobody else should run it after this test binary: remove it.
    let mut tx = portcullis_origin::store::as_user(pool, owner).await.unwrap();
    sqlx::query("DELETE FROM app.jobs WHERE id = $1").bind(job).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}
