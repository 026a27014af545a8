//! The job executor: claims due jobs with `FOR UPDATE SKIP LOCKED` (through
//! `app.claim_due_jobs`), so several origin processes can share one database, runs them on an
//! [`Engine`] and stores results encrypted. Without an engine a job fails with a clear reason.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

/// A claimed job, as the engine sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: Uuid,
    pub kind: String,
    pub params: serde_json::Value,
}

/// Does the work of a job; returns the result text or why it failed.
pub trait Engine: Send + Sync {
    fn run(
        &self,
        job: ClaimedJob,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + '_>>;
}

/// Transcription by an OpenAI/whisper-compatible `POST /v1/audio/transcriptions` endpoint.
pub struct HttpSpeechToText {
    pub base_url: String,
    pub model: String,
    pub client: reqwest::Client,
}

impl Engine for HttpSpeechToText {
    fn run(
        &self,
        job: ClaimedJob,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + '_>> {
        Box::pin(async move {
            if job.kind != "transcription" {
                return Err(format!("no engine for {} jobs is configured", job.kind));
            }
            let source = job.params["source_url"].as_str().ok_or("the job has no source_url")?.to_owned();
            let media = self.client.get(&source).send().await.map_err(|e| format!("fetching the media: {e}"))?;
            if !media.status().is_success() {
                return Err(format!("fetching the media answered {}", media.status()));
            }
            let bytes = media.bytes().await.map_err(|e| format!("reading the media: {e}"))?;
            let mut form = reqwest::multipart::Form::new()
                .text("model", self.model.clone())
                .part("file", reqwest::multipart::Part::bytes(bytes.to_vec()).file_name("media"));
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

/// Runs until `shutdown` flips, claiming up to `batch` due jobs every `poll`.
pub async fn run(
    pool: PgPool,
    engine: Option<Arc<dyn Engine>>,
    data_key: SecretString,
    poll: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        match claim_and_run(&pool, engine.as_deref(), &data_key).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "jobs finished"),
            Err(err) => tracing::warn!(error = %err, "job executor: database unavailable"),
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn claim_and_run(
    pool: &PgPool,
    engine: Option<&dyn Engine>,
    data_key: &SecretString,
) -> Result<usize, sqlx::Error> {
    let jobs: Vec<ClaimedJob> =
        sqlx::query_as("SELECT id, kind, params FROM app.claim_due_jobs(8)").fetch_all(pool).await?;
    let count = jobs.len();
    for job in jobs {
        let id = job.id;
        let outcome = match engine {
            Some(engine) => engine.run(job).await,
            None => Err(format!(
                "no {} engine is configured: set PORTCULLIS_STT_URL to an OpenAI/whisper-compatible endpoint",
                job.kind
            )),
        };
        match outcome {
            Ok(result) => {
                sqlx::query("SELECT app.finish_job($1, 'succeeded', crypto.pgp_sym_encrypt($2, $3), NULL)")
                    .bind(id)
                    .bind(result)
                    .bind(data_key.expose_secret())
                    .execute(pool)
                    .await?;
            }
            Err(reason) => {
                sqlx::query("SELECT app.finish_job($1, 'failed', NULL, $2)")
                    .bind(id)
                    .bind(reason)
                    .execute(pool)
                    .await?;
            }
        }
    }
    Ok(count)
}
