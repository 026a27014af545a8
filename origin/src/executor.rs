//! The job executor. Each origin runs one; several origins share the queue in PostgreSQL.
//!
//! - A job is claimed with `FOR UPDATE SKIP LOCKED` (`app.claim_due_jobs`) under a lease held by
//!   this executor's id; the executor renews its leases while the jobs run.
//! - An executor that dies stops renewing: once its leases run out, any executor re-queues the
//!   jobs (`app.reap_expired_jobs`), up to `max_attempts` tries, after which a job fails with a
//!   reason. A job is never left `running` for longer than one lease after its executor is gone.
//! - Each job has a time limit; up to `concurrency` jobs run at once.
//! - Every write names the executor, so one that lost a lease (its job re-queued and claimed by
//!   another) cannot overwrite the other's outcome, and learns at its next renewal to stop.
//! - On shutdown the running jobs are handed back to the queue without counting the attempt.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};
use uuid::Uuid;

use crate::media::MediaFetcher;

/// A claimed job, as the engine sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: Uuid,
    pub kind: String,
    pub params: serde_json::Value,
}

/// Does the work of a job; returns the result text or why it failed (shown to the job's owner).
pub trait Engine: Send + Sync {
    fn run(&self, job: ClaimedJob) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>>;
}

/// Transcription by an OpenAI/whisper-compatible `POST /v1/audio/transcriptions` endpoint. The
/// media is fetched by [`MediaFetcher`] (user-supplied URLs); the speech-to-text service is the
/// operator's and is reached by `client`.
pub struct HttpSpeechToText {
    pub base_url: String,
    pub model: String,
    pub client: reqwest::Client,
    pub media: MediaFetcher,
}

impl HttpSpeechToText {
    /// The engine `PORTCULLIS_STT_URL` configures, if any.
    pub fn from_settings(settings: &crate::configuration::Settings) -> Result<Option<Arc<dyn Engine>>, String> {
        let Some(base_url) = settings.stt_url.clone() else { return Ok(None) };
        let media = MediaFetcher::new(settings.media.clone())?;
        Ok(Some(Arc::new(Self { base_url, model: settings.stt_model.clone(), client: Self::client()?, media })))
    }

    /// A client for the operator's speech-to-text service, with bounded connect and read time.
    pub fn client() -> Result<reqwest::Client, String> {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| format!("speech-to-text client: {e}"))
    }
}

impl Engine for HttpSpeechToText {
    fn run(&self, job: ClaimedJob) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>> {
        Box::pin(async move {
            if job.kind != "transcription" {
                return Err(format!("no engine for {} jobs is configured", job.kind));
            }
            let source = job.params["source_url"].as_str().ok_or("the job has no source_url")?.to_owned();
            let media = self.media.fetch(&source, &job.id.to_string()).await.map_err(|e| e.to_string())?;
            let mut form = reqwest::multipart::Form::new()
                .text("model", self.model.clone())
                .part("file", reqwest::multipart::Part::bytes(media).file_name("media"));
            if let Some(language) = job.params["language"].as_str() {
                form = form.text("language", language.to_owned());
            }
            let url = format!("{}/v1/audio/transcriptions", self.base_url.trim_end_matches('/'));
            let response =
                self.client.post(&url).multipart(form).send().await.map_err(|e| format!("speech-to-text: {e}"))?;
            if !response.status().is_success() {
                return Err(format!("speech-to-text answered {}", response.status()));
            }
            let body: serde_json::Value = response.json().await.map_err(|e| format!("speech-to-text answer: {e}"))?;
            body["text"].as_str().map(str::to_owned).ok_or_else(|| "speech-to-text answer has no text".to_owned())
        })
    }
}

/// How the executor runs jobs.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    /// How often to look for due jobs when idle.
    pub poll: Duration,
    /// Jobs run at once by this executor.
    pub concurrency: usize,
    /// How long a claim lasts without renewal; renewed every third of it.
    pub lease: Duration,
    /// Tries before an interrupted job fails.
    pub max_attempts: u32,
    /// The longest one job may run.
    pub job_timeout: Duration,
}

impl Default for ExecutorSettings {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(1),
            concurrency: 4,
            lease: Duration::from_secs(30),
            max_attempts: 3,
            job_timeout: Duration::from_secs(600),
        }
    }
}

/// One executor: its id names its leases.
pub struct Executor {
    pub id: Uuid,
    pub pool: PgPool,
    pub engine: Option<Arc<dyn Engine>>,
    pub data_key: SecretString,
    pub settings: ExecutorSettings,
}

type Outcome = (Uuid, Result<String, String>);

impl Executor {
    pub fn new(
        pool: PgPool,
        engine: Option<Arc<dyn Engine>>,
        data_key: SecretString,
        settings: ExecutorSettings,
    ) -> Self {
        Self { id: Uuid::new_v4(), pool, engine, data_key, settings }
    }

    /// Runs until `shutdown` flips, then hands its running jobs back to the queue.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut running: JoinSet<Outcome> = JoinSet::new();
        let mut handles: HashMap<Uuid, AbortHandle> = HashMap::new();
        let mut renew = tokio::time::interval(self.settings.lease / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow() {
                break;
            }
            if let Err(err) = self.claim(&mut running, &mut handles).await {
                tracing::warn!(error = %err, "job executor: database unavailable");
            }
            tokio::select! {
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok((id, outcome)) = done {
                        handles.remove(&id);
                        self.finish(id, outcome).await;
                    }
                }
                _ = renew.tick() => {
                    self.renew(&mut handles).await;
                    self.reap().await;
                }
                _ = tokio::time::sleep(self.settings.poll) => {}
                _ = shutdown.changed() => break,
            }
        }
        running.abort_all();
        for id in handles.keys() {
            let released = sqlx::query("SELECT app.finish_job($1, $2, 'queued', NULL, NULL)")
                .bind(id)
                .bind(self.id)
                .execute(&self.pool)
                .await;
            if let Err(err) = released {
                tracing::warn!(job = %id, error = %err, "could not hand the job back; its lease will run out");
            }
        }
    }

    /// Puts the jobs whose executor stopped renewing back in the queue (or fails them). Leases
    /// run out on the lease's clock, so this runs with the renewals, not on every poll.
    async fn reap(&self) {
        let reaped: Result<i32, _> = sqlx::query_scalar("SELECT app.reap_expired_jobs($1)")
            .bind(i32::try_from(self.settings.max_attempts).unwrap_or(i32::MAX))
            .fetch_one(&self.pool)
            .await;
        match reaped {
            Ok(0) => {}
            Ok(jobs) => {
                tracing::warn!(jobs, "jobs whose executor stopped renewing went back to the queue (or failed)");
            }
            Err(err) => tracing::warn!(error = %err, "could not re-queue expired job leases"),
        }
    }

    /// Claims as many due jobs as there is room for.
    async fn claim(
        &self,
        running: &mut JoinSet<Outcome>,
        handles: &mut HashMap<Uuid, AbortHandle>,
    ) -> Result<(), sqlx::Error> {
        let room = self.settings.concurrency.saturating_sub(running.len());
        if room == 0 {
            return Ok(());
        }
        let jobs: Vec<ClaimedJob> =
            sqlx::query_as("SELECT id, kind, params FROM app.claim_due_jobs($1, $2, make_interval(secs => $3))")
                .bind(i32::try_from(room).unwrap_or(i32::MAX))
                .bind(self.id)
                .bind(self.settings.lease.as_secs_f64())
                .fetch_all(&self.pool)
                .await?;
        for job in jobs {
            let id = job.id;
            let engine = self.engine.clone();
            let limit = self.settings.job_timeout;
            let handle = running.spawn(async move {
                let work = async {
                    match &engine {
                        Some(engine) => engine.run(job).await,
                        None => Err(format!(
                            "no {} engine is configured: set PORTCULLIS_STT_URL to an OpenAI/whisper-compatible endpoint",
                            job.kind
                        )),
                    }
                };
                let outcome = tokio::time::timeout(limit, work)
                    .await
                    .unwrap_or_else(|_| Err(format!("the job did not finish within {} s", limit.as_secs())));
                (id, outcome)
            });
            handles.insert(id, handle);
        }
        Ok(())
    }

    /// Extends the leases of the running jobs; stops the ones this executor no longer holds.
    async fn renew(&self, handles: &mut HashMap<Uuid, AbortHandle>) {
        if handles.is_empty() {
            return;
        }
        let ids: Vec<Uuid> = handles.keys().copied().collect();
        let held: Result<Vec<Uuid>, _> =
            sqlx::query_scalar("SELECT app.renew_job_leases($1, $2, make_interval(secs => $3))")
                .bind(self.id)
                .bind(&ids)
                .bind(self.settings.lease.as_secs_f64())
                .fetch_all(&self.pool)
                .await;
        match held {
            Ok(held) => {
                for id in ids.iter().filter(|id| !held.contains(id)) {
                    tracing::warn!(job = %id, "lease lost (job deleted or taken over): stopping it");
                    if let Some(handle) = handles.remove(id) {
                        handle.abort();
                    }
                }
            }
            // The jobs keep running; if the outage outlasts the lease another executor may
            // start them again, and only the holder's outcome is stored.
            Err(err) => tracing::warn!(error = %err, "could not renew job leases"),
        }
    }

    async fn finish(&self, id: Uuid, outcome: Result<String, String>) {
        let stored = match outcome {
            Ok(result) => {
                sqlx::query_scalar::<_, bool>(
                    "SELECT app.finish_job($1, $2, 'succeeded', crypto.pgp_sym_encrypt($3, $4), NULL)",
                )
                .bind(id)
                .bind(self.id)
                .bind(result)
                .bind(self.data_key.expose_secret())
                .fetch_one(&self.pool)
                .await
            }
            Err(reason) => {
                sqlx::query_scalar::<_, bool>("SELECT app.finish_job($1, $2, 'failed', NULL, $3)")
                    .bind(id)
                    .bind(self.id)
                    .bind(reason)
                    .fetch_one(&self.pool)
                    .await
            }
        };
        match stored {
            Ok(true) => tracing::info!(job = %id, "job finished"),
            Ok(false) => tracing::info!(job = %id, "job finished, but it was deleted or taken over meanwhile"),
            Err(err) => tracing::warn!(job = %id, error = %err, "could not store the job's outcome; it will run again"),
        }
    }
}
