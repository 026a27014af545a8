//! Jobs: `POST /analyze`, `POST /schedule`, `GET /jobs/{job_id}`, `DELETE /jobs/{job_id}`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::domain::{Problems, SourceUrl};
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::extract::{FromBody, PathId, ValidJson};
use crate::state::DataKey;
use crate::store::jobs::{self, AnalysisKind, Job, JobKind};
use crate::store::{as_user, videos};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalyzeRequest {
    /// One of the caller's videos.
    pub video_id: Uuid,
    pub analysis: AnalysisKind,
}

impl FromBody for AnalyzeRequest {
    type Body = Self;

    fn from_body(body: Self) -> Result<Self, Vec<FieldError>> {
        Ok(body)
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
    State(pool): State<PgPool>,
    AuthUser(user): AuthUser,
    ValidJson(request): ValidJson<AnalyzeRequest>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let mut tx = as_user(&pool, user).await?;
    let job = jobs::queue_analysis(&mut tx, user, request.video_id, request.analysis, None).await?;
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
        #[schema(value_type = SourceUrl, inline)]
        source_url: String,
    },
    /// Analyse one of the caller's videos.
    Analysis { run_at: DateTime<Utc>, video_id: Uuid, analysis: AnalysisKind },
}

/// A scheduled job, parsed.
pub enum Scheduled {
    Transcription { run_at: DateTime<Utc>, source_url: SourceUrl },
    Analysis { run_at: DateTime<Utc>, video_id: Uuid, analysis: AnalysisKind },
}

impl FromBody for Scheduled {
    type Body = ScheduleRequest;

    fn from_body(body: ScheduleRequest) -> Result<Self, Vec<FieldError>> {
        match body {
            ScheduleRequest::Transcription { run_at, source_url } => {
                let mut problems = Problems::default();
                let source_url = problems.field("source_url", SourceUrl::parse(source_url));
                source_url
                    .map(|source_url| Self::Transcription { run_at, source_url })
                    .ok_or_else(|| problems.into_errors())
            }
            ScheduleRequest::Analysis { run_at, video_id, analysis } => {
                Ok(Self::Analysis { run_at, video_id, analysis })
            }
        }
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
    State(pool): State<PgPool>,
    AuthUser(user): AuthUser,
    ValidJson(request): ValidJson<Scheduled>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let mut tx = as_user(&pool, user).await?;
    // Clamped so a past time means "now" (and PostgreSQL never sees a date before its range).
    let job = match request {
        Scheduled::Transcription { run_at, source_url } => {
            let video = videos::upsert(&mut tx, user, &source_url, None).await?;
            let params = serde_json::json!({ "source_url": source_url.as_str() });
            jobs::insert(&mut tx, user, Some(video), JobKind::Transcription, params, Some(run_at.max(Utc::now())))
                .await?
        }
        Scheduled::Analysis { run_at, video_id, analysis } => {
            jobs::queue_analysis(&mut tx, user, video_id, analysis, Some(run_at.max(Utc::now()))).await?
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
    State(pool): State<PgPool>,
    State(DataKey(data_key)): State<DataKey>,
    AuthUser(user): AuthUser,
    PathId(job): PathId,
) -> Result<Json<Job>, ApiError> {
    let mut tx = as_user(&pool, user).await?;
    let found = jobs::find(&mut tx, job, &data_key).await?;
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
    State(pool): State<PgPool>,
    AuthUser(user): AuthUser,
    PathId(job): PathId,
) -> Result<StatusCode, ApiError> {
    let mut tx = as_user(&pool, user).await?;
    let deleted = jobs::delete(&mut tx, job).await?;
    tx.commit().await?;
    if deleted { Ok(StatusCode::NO_CONTENT) } else { Err(ApiError::NotFound) }
}
