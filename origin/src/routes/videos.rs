//! `POST /transcribe` (register a video, queue its transcription) and `GET /videos`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::extract::{ValidJson, ValidQuery, Validate};
use crate::patterns;
use crate::routes::as_user;
use crate::routes::jobs::{Job, JobKind, insert_job};
use crate::startup::AppState;

#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct Video {
    pub id: Uuid,
    pub source_url: String,
    pub title: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TranscribeRequest {
    /// An `https://` URL of the media.
    #[schema(
        max_length = 2048,
        pattern = r"^https://([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?([/?#][^\s\x00-\x1F\x7F-\x9F]*)?$"
    )]
    pub source_url: String,
    #[serde(default)]
    #[schema(max_length = 512, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$")]
    pub title: Option<String>,
    /// Spoken language as a BCP 47 tag (e.g. `en`, `pt-BR`), if known.
    #[serde(default)]
    #[schema(min_length = 2, max_length = 16, pattern = r"^[A-Za-z0-9]{1,8}(-[A-Za-z0-9]{1,8})*$")]
    pub language: Option<String>,
}

/// Checks `source_url` against [`patterns::SOURCE_URL`], as the schema states it.
pub fn check_source_url(field: &str, url: &str, problems: &mut Vec<FieldError>) {
    if url.chars().count() > 2048 {
        problems.push(FieldError::new(field, "must be at most 2048 characters"));
    } else if !patterns::SOURCE_URL.matches(url) {
        problems.push(FieldError::new(
            field,
            "must be an https:// URL of a host name (no IP address, user or port 0), without spaces or control characters",
        ));
    }
}

fn valid_language(tag: &str) -> bool {
    (2..=16).contains(&tag.len()) && patterns::LANGUAGE.matches(tag)
}

impl Validate for TranscribeRequest {
    fn validate(&self, _now: DateTime<Utc>) -> Vec<FieldError> {
        let mut problems = Vec::new();
        check_source_url("source_url", &self.source_url, &mut problems);
        if self.title.as_ref().is_some_and(|t| t.chars().count() > 512) {
            problems.push(FieldError::new("title", "must be at most 512 characters"));
        } else if self.title.as_deref().is_some_and(crate::extract::has_control_chars) {
            problems.push(FieldError::new("title", "must not contain control characters"));
        }
        if self.language.as_ref().is_some_and(|l| !valid_language(l)) {
            problems.push(FieldError::new("language", "must be a BCP 47 language tag such as en or pt-BR"));
        }
        problems
    }
}

/// Finds or registers the caller's video for `source_url`.
pub async fn upsert_video(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    owner: Uuid,
    source_url: &str,
    title: Option<&str>,
) -> Result<Uuid, ApiError> {
    let id: (Uuid,) = sqlx::query_as(
        "INSERT INTO app.videos (owner_id, source_url, title) VALUES ($1, $2, $3) \
         ON CONFLICT (owner_id, source_url) DO UPDATE SET title = coalesce(EXCLUDED.title, app.videos.title) \
         RETURNING id",
    )
    .bind(owner)
    .bind(source_url)
    .bind(title)
    .fetch_one(&mut **tx)
    .await?;
    Ok(id.0)
}

/// Register a video by its source URL (if new) and queue its transcription.
#[utoipa::path(post, path = "/api/v1/transcribe", tag = "jobs", request_body = TranscribeRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Queued", body = Job),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid request", body = ErrorBody),
        (status = 429, description = "Over the endpoint's rate limit (at the edge)", body = ErrorBody),
        (status = 503, description = "The database is unreachable; see Retry-After", body = ErrorBody),
    ))]
pub async fn transcribe(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ValidJson(request): ValidJson<TranscribeRequest>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let mut tx = as_user(&state.pool, user).await?;
    let video = upsert_video(&mut tx, user, &request.source_url, request.title.as_deref()).await?;
    let params = serde_json::json!({ "source_url": request.source_url, "language": request.language });
    let job = insert_job(&mut tx, user, Some(video), JobKind::Transcription, params, None).await?;
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VideosQuery {
    /// Page size (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9]{1,16}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    pub cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct VideoPage {
    pub items: Vec<Video>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

const MAX_PAGE: u32 = 100;

/// A cursor is the last item's position, `{created_at in µs}_{id}` ([`patterns::CURSOR`]).
fn encode_cursor(video: &Video) -> String {
    format!("{}_{}", video.created_at.timestamp_micros(), video.id)
}

fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, Uuid)> {
    if !patterns::CURSOR.matches(cursor) {
        return None;
    }
    let (micros, id) = cursor.split_once('_')?;
    Some((DateTime::from_timestamp_micros(micros.parse().ok()?)?, Uuid::try_parse(id).ok()?))
}

/// The caller's videos, newest first, a page at a time.
#[utoipa::path(get, path = "/api/v1/videos", tag = "videos", params(VideosQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of videos", body = VideoPage),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 422, description = "Invalid query", body = ErrorBody),
        (status = 429, description = "Over the endpoint's rate limit (at the edge)", body = ErrorBody),
        (status = 503, description = "The database is unreachable; see Retry-After", body = ErrorBody),
    ))]
pub async fn list_videos(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ValidQuery(query): ValidQuery<VideosQuery>,
) -> Result<Json<VideoPage>, ApiError> {
    let limit = query.limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::field("limit", format!("must be between 1 and {MAX_PAGE}")));
    }
    let after = match query.cursor.as_deref() {
        None => None,
        Some(cursor) => {
            Some(decode_cursor(cursor).ok_or_else(|| ApiError::field("cursor", "is not a cursor this API issued"))?)
        }
    };
    let mut tx = as_user(&state.pool, user).await?;
    let mut items: Vec<Video> =
        match after {
            None => sqlx::query_as(
                "SELECT id, source_url, title, created_at FROM app.videos ORDER BY created_at DESC, id DESC LIMIT $1",
            )
            .bind(i64::from(limit) + 1)
            .fetch_all(&mut *tx)
            .await?,
            Some((created, id)) => {
                sqlx::query_as(
                    "SELECT id, source_url, title, created_at FROM app.videos WHERE (created_at, id) < ($1, $2) \
             ORDER BY created_at DESC, id DESC LIMIT $3",
                )
                .bind(created)
                .bind(id)
                .bind(i64::from(limit) + 1)
                .fetch_all(&mut *tx)
                .await?
            }
        };
    tx.commit().await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(encode_cursor)
    } else {
        None
    };
    Ok(Json(VideoPage { items, next_cursor }))
}

#[cfg(test)]
mod tests {
    use super::decode_cursor;

    #[test]
    fn cursors_are_taken_only_in_their_canonical_spelling() {
        let id = "0195a4b2-7c1d-7e3f-8a9b-0c1d2e3f4a5b";
        let (at, parsed) = decode_cursor(&format!("1764352345123456_{id}")).expect("canonical");
        assert_eq!((at.timestamp_micros(), parsed.to_string().as_str()), (1_764_352_345_123_456, id));
        for forged in [
            format!("_{id}"),
            format!("12345678901234567_{id}"),
            format!("-5_{id}"),
            format!("+5_{id}"),
            format!("5_{}", id.to_uppercase()),
            format!("5_{{{id}}}"),
            format!("5_{}", id.replace('-', "")),
            "5_".into(),
            "forged".into(),
        ] {
            assert_eq!(decode_cursor(&forged), None, "{forged}");
        }
    }
}
