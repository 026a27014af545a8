//! Jobs: `POST /analyze`, `POST /schedule`, `GET /jobs/{job_id}`, `DELETE /jobs/{job_id}`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::extract::{PathId, ValidJson, Validate};
use crate::routes::as_user;
use crate::routes::videos::{check_source_url, upsert_video};
use crate::startup::AppState;

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

/// The job columns, with the result decrypted by the key in `$2`.
const JOB_COLUMNS: &str = "id, kind, status, video_id, params, \
     CASE WHEN result_enc IS NULL THEN NULL ELSE crypto.pgp_sym_decrypt(result_enc, $2) END AS result, \
     error, run_at, attempts, created_at, updated_at";

pub async fn insert_job(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
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

/// Queues an analysis of one of the caller's videos (404 when the video is not theirs).
async fn queue_analysis(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    owner: Uuid,
    video: Uuid,
    analysis: AnalysisKind,
    run_at: Option<DateTime<Utc>>,
) -> Result<Job, ApiError> {
    let found: Option<(Uuid,)> =
        sqlx::query_as("SELECT id FROM app.videos WHERE id = $1").bind(video).fetch_optional(&mut **tx).await?;
    if found.is_none() {
        return Err(ApiError::NotFound);
    }
    let params = serde_json::json!({ "analysis": analysis });
    insert_job(tx, owner, Some(video), JobKind::Analysis, params, run_at).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalyzeRequest {
    /// One of the caller's videos.
    pub video_id: Uuid,
    pub analysis: AnalysisKind,
}

impl Validate for AnalyzeRequest {
    fn validate(&self, _now: DateTime<Utc>) -> Vec<FieldError> {
        Vec::new()
    }
}

/// Queue an analysis of one of the caller's videos.
#[utoipa::path(post, path = "/api/v1/analyze", tag = "jobs", request_body = AnalyzeRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Queued", body = Job),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such video", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid request", body = ErrorBody),
        (status = 429, description = "Over the endpoint's rate limit (at the edge)", body = ErrorBody),
        (status = 503, description = "The database is unreachable; see Retry-After", body = ErrorBody),
    ))]
pub async fn analyze(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ValidJson(request): ValidJson<AnalyzeRequest>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let mut tx = as_user(&state.pool, user).await?;
    let job = queue_analysis(&mut tx, user, request.video_id, request.analysis, None).await?;
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// A job to run at `run_at`. A time already past runs the job at once: a deadline that slips by
/// while the request travels is not the caller's error.
#[derive(Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleRequest {
    /// Transcribe the media at `source_url`.
    Transcription {
        run_at: DateTime<Utc>,
        /// The media's `https://` URL, as for `POST /transcribe`.
        #[schema(
            max_length = 2048,
            pattern = r"^https://([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?([/?#][^\s\x00-\x1F\x7F-\x9F]*)?$"
        )]
        source_url: String,
    },
    /// Analyse one of the caller's videos.
    Analysis { run_at: DateTime<Utc>, video_id: Uuid, analysis: AnalysisKind },
}

impl Validate for ScheduleRequest {
    fn validate(&self, _now: DateTime<Utc>) -> Vec<FieldError> {
        let mut problems = Vec::new();
        if let Self::Transcription { source_url, .. } = self {
            check_source_url("source_url", source_url, &mut problems);
        }
        problems
    }
}

/// Queue a job to run at a given time.
#[utoipa::path(post, path = "/api/v1/schedule", tag = "jobs", request_body = ScheduleRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Scheduled", body = Job),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such video", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid request", body = ErrorBody),
        (status = 429, description = "Over the endpoint's rate limit (at the edge)", body = ErrorBody),
        (status = 503, description = "The database is unreachable; see Retry-After", body = ErrorBody),
    ))]
pub async fn schedule(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ValidJson(request): ValidJson<ScheduleRequest>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let mut tx = as_user(&state.pool, user).await?;
    // Clamped so a past time means "now" (and PostgreSQL never sees a date before its range).
    let job = match request {
        ScheduleRequest::Transcription { run_at, source_url } => {
            let video = upsert_video(&mut tx, user, &source_url, None).await?;
            let params = serde_json::json!({ "source_url": source_url });
            insert_job(&mut tx, user, Some(video), JobKind::Transcription, params, Some(run_at.max(Utc::now()))).await?
        }
        ScheduleRequest::Analysis { run_at, video_id, analysis } => {
            queue_analysis(&mut tx, user, video_id, analysis, Some(run_at.max(Utc::now()))).await?
        }
    };
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// A job's status and, once it succeeded, its result. Another user's job is a 404.
#[utoipa::path(get, path = "/api/v1/jobs/{job_id}", tag = "jobs",
    params(("job_id" = Uuid, Path, description = "The job's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such job of the caller's", body = ErrorBody),
        (status = 422, description = "job_id is not a UUID", body = ErrorBody),
        (status = 429, description = "Over the endpoint's rate limit (at the edge)", body = ErrorBody),
        (status = 503, description = "The database is unreachable; see Retry-After", body = ErrorBody),
    ))]
pub async fn get_job(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    PathId(job): PathId,
) -> Result<Json<Job>, ApiError> {
    let mut tx = as_user(&state.pool, user).await?;
    let found: Option<Job> = sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM app.jobs WHERE id = $1"))
        .bind(job)
        .bind(state.data_key.expose_secret())
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    found.map(Json).ok_or(ApiError::NotFound)
}

/// Delete a job: a queued one never runs, a running one's result is discarded, a finished one's
/// result is gone. Afterwards the job is a 404.
#[utoipa::path(delete, path = "/api/v1/jobs/{job_id}", tag = "jobs",
    params(("job_id" = Uuid, Path, description = "The job's id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such job of the caller's", body = ErrorBody),
        (status = 422, description = "job_id is not a UUID", body = ErrorBody),
        (status = 429, description = "Over the endpoint's rate limit (at the edge)", body = ErrorBody),
        (status = 503, description = "The database is unreachable; see Retry-After", body = ErrorBody),
    ))]
pub async fn delete_job(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    PathId(job): PathId,
) -> Result<StatusCode, ApiError> {
    let mut tx = as_user(&state.pool, user).await?;
    // A running job's executor finds its row gone when it reports (finish_job updates nothing).
    let deleted = sqlx::query("DELETE FROM app.jobs WHERE id = $1").bind(job).execute(&mut *tx).await?;
    tx.commit().await?;
    if deleted.rows_affected() == 0 { Err(ApiError::NotFound) } else { Ok(StatusCode::NO_CONTENT) }
}
