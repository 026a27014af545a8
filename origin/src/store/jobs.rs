//! Jobs: queued by the API, claimed and finished by the executor (`crate::executor`).

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::Tx;
use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Transcription,
    Analysis,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transcription => "transcription",
            Self::Analysis => "analysis",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnalysisKind {
    Summary,
    Keywords,
    Sentiment,
}

/// A job as the API shows it. `result` is decrypted for its owner when the job succeeded.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Job {
    pub id: Uuid,
    /// `transcription` or `analysis`.
    pub kind: String,
    /// `queued`, `running`, `succeeded` or `failed`.
    pub status: String,
    pub video_id: Option<Uuid>,
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    pub result: Option<String>,
    pub error: Option<String>,
    pub run_at: DateTime<Utc>,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Queues a job of the owner's, due at `run_at` (now when `None`).
pub async fn insert(
    tx: &mut Tx,
    owner: Uuid,
    video: Option<Uuid>,
    kind: JobKind,
    params: serde_json::Value,
    run_at: Option<DateTime<Utc>>,
) -> Result<Job, ApiError> {
    let job: Job = sqlx::query_as(
        "INSERT INTO app.jobs (owner_id, video_id, kind, params, run_at) VALUES ($1, $2, $3, $4, coalesce($5, now())) \
         RETURNING id, kind, status, video_id, params, NULL::text AS result, error, run_at, attempts, created_at, updated_at",
    )
    .bind(owner)
    .bind(video)
    .bind(kind.as_str())
    .bind(params)
    .bind(run_at)
    .fetch_one(&mut **tx)
    .await?;
    Ok(job)
}

/// Queues an analysis of one of the owner's videos ([`ApiError::NotFound`] when it is not theirs).
pub async fn queue_analysis(
    tx: &mut Tx,
    owner: Uuid,
    video: Uuid,
    analysis: AnalysisKind,
    run_at: Option<DateTime<Utc>>,
) -> Result<Job, ApiError> {
    if !super::videos::exists(tx, video).await? {
        return Err(ApiError::NotFound);
    }
    insert(tx, owner, Some(video), JobKind::Analysis, serde_json::json!({ "analysis": analysis }), run_at).await
}

/// The transaction's user's job `id`, its result decrypted with `data_key`.
pub async fn find(tx: &mut Tx, id: Uuid, data_key: &SecretString) -> Result<Option<Job>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT id, kind, status, video_id, params, \
         CASE WHEN result_enc IS NULL THEN NULL ELSE crypto.pgp_sym_decrypt(result_enc, $2) END AS result, \
         error, run_at, attempts, created_at, updated_at FROM app.jobs WHERE id = $1",
    )
    .bind(id)
    .bind(data_key.expose_secret())
    .fetch_optional(&mut **tx)
    .await?)
}

/// Deletes the transaction's user's job `id`; whether there was one. A running job's executor
/// finds its row gone when it reports (its update touches nothing).
pub async fn delete(tx: &mut Tx, id: Uuid) -> Result<bool, ApiError> {
    let deleted = sqlx::query("DELETE FROM app.jobs WHERE id = $1").bind(id).execute(&mut **tx).await?;
    Ok(deleted.rows_affected() > 0)
}
