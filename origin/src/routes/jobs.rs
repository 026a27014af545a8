//! Jobs: `POST /analyze`, `POST /schedule`, `GET /jobs/{job_id}`, `DELETE /jobs/{job_id}`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
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
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    pub kind: JobKind,
    /// When to run; must be in the future (at most a year ahead).
    pub run_at: DateTime<Utc>,
    /// For a transcription: the media's `https://` URL.
    #[serde(default)]
    #[schema(max_length = 2048, pattern = "^https://[^/?#\\s]+")]
    pub source_url: Option<String>,
    /// For an analysis: one of the caller's videos.
    #[serde(default)]
    pub video_id: Option<Uuid>,
    /// For an analysis: what to compute.
    #[serde(default)]
    pub analysis: Option<AnalysisKind>,
}

impl Validate for ScheduleRequest {
    fn validate(&self, now: DateTime<Utc>) -> Vec<FieldError> {
        let mut problems = Vec::new();
        if self.run_at <= now {
            problems.push(FieldError::new("run_at", "must be in the future"));
        } else if self.run_at > now + chrono::Duration::days(366) {
            problems.push(FieldError::new("run_at", "must be at most a year ahead"));
        }
        match self.kind {
            JobKind::Transcription => {
                match &self.source_url {
                    Some(url) => check_source_url("source_url", url, &mut problems),
                    None => problems.push(FieldError::new("source_url", "is required for a transcription")),
                }
                if self.video_id.is_some() || self.analysis.is_some() {
                    problems.push(FieldError::new("kind", "a transcription takes source_url only"));
                }
            }
            JobKind::Analysis => {
                if self.video_id.is_none() {
                    problems.push(FieldError::new("video_id", "is required for an analysis"));
                }
                if self.analysis.is_none() {
                    problems.push(FieldError::new("analysis", "is required for an analysis"));
                }
                if self.source_url.is_some() {
                    problems.push(FieldError::new("source_url", "an analysis takes video_id, not source_url"));
                }
            }
        }
        problems
    }
}

/// Queue a job to run at a future time.
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
    let job = match (request.kind, request.source_url, request.video_id, request.analysis) {
        (JobKind::Transcription, Some(url), _, _) => {
            let video = upsert_video(&mut tx, user, &url, None).await?;
            let params = serde_json::json!({ "source_url": url });
            insert_job(&mut tx, user, Some(video), JobKind::Transcription, params, Some(request.run_at)).await?
        }
        (JobKind::Analysis, _, Some(video), Some(analysis)) => {
            queue_analysis(&mut tx, user, video, analysis, Some(request.run_at)).await?
        }
        _ => return Err(ApiError::field("kind", "incomplete job description")),
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

/// Cancel a queued or running job (200 with the job), or delete a finished one (204).
#[utoipa::path(delete, path = "/api/v1/jobs/{job_id}", tag = "jobs",
    params(("job_id" = Uuid, Path, description = "The job's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Cancelled", body = Job),
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
) -> Result<Response, ApiError> {
    let mut tx = as_user(&state.pool, user).await?;
    let cancelled: Option<Job> = sqlx::query_as(&format!(
        "UPDATE app.jobs SET status = 'cancelled', locked_at = NULL WHERE id = $1 AND status IN ('queued', 'running') \
         RETURNING {JOB_COLUMNS}"
    ))
    .bind(job)
    .bind(state.data_key.expose_secret())
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(job) = cancelled {
        tx.commit().await?;
        return Ok(Json(job).into_response());
    }
    let deleted = sqlx::query("DELETE FROM app.jobs WHERE id = $1").bind(job).execute(&mut *tx).await?;
    tx.commit().await?;
    if deleted.rows_affected() == 0 { Err(ApiError::NotFound) } else { Ok(StatusCode::NO_CONTENT.into_response()) }
}
