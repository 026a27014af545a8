//! `POST /transcribe` (register a video, queue its transcription) and `GET /videos`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};

use crate::auth::AuthUser;
use crate::domain::{Cursor, Language, Problems, SourceUrl, Title};
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::extract::{FromBody, ValidJson, ValidQuery};
use crate::store::as_user;
use crate::store::jobs::{self, Job, JobKind};
use crate::store::videos::{self, Video};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TranscribeRequest {
    /// An `https://` URL of the media.
    #[schema(value_type = SourceUrl, inline)]
    pub source_url: String,
    #[serde(default)]
    #[schema(value_type = Option<Title>, inline)]
    pub title: Option<String>,
    /// Spoken language as a BCP 47 tag (e.g. `en`, `pt-BR`), if known.
    #[serde(default)]
    #[schema(value_type = Option<Language>, inline)]
    pub language: Option<String>,
}

/// A video to transcribe, parsed.
pub struct Transcription {
    pub source_url: SourceUrl,
    pub title: Option<Title>,
    pub language: Option<Language>,
}

impl FromBody for Transcription {
    type Body = TranscribeRequest;

    fn from_body(body: TranscribeRequest) -> Result<Self, Vec<FieldError>> {
        let mut problems = Problems::default();
        let source_url = problems.field("source_url", SourceUrl::parse(body.source_url));
        let title = problems.optional("title", body.title.map(Title::parse));
        let language = problems.optional("language", body.language.map(Language::parse));
        match (source_url, title, language) {
            (Some(source_url), Some(title), Some(language)) => Ok(Self { source_url, title, language }),
            _ => Err(problems.into_errors()),
        }
    }
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
    State(pool): State<PgPool>,
    AuthUser(user): AuthUser,
    ValidJson(request): ValidJson<Transcription>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let mut tx = as_user(&pool, user).await?;
    let video = videos::upsert(&mut tx, user, &request.source_url, request.title.as_ref()).await?;
    let params = serde_json::json!({
        "source_url": request.source_url.as_str(),
        "language": request.language.as_ref().map(Language::as_str),
    });
    let job = jobs::insert(&mut tx, user, Some(video), JobKind::Transcription, params, None).await?;
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
    #[param(value_type = Option<Cursor>, inline)]
    pub cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct VideoPage {
    pub items: Vec<Video>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

const MAX_PAGE: u32 = 100;

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
    State(pool): State<PgPool>,
    AuthUser(user): AuthUser,
    ValidQuery(query): ValidQuery<VideosQuery>,
) -> Result<Json<VideoPage>, ApiError> {
    let limit = query.limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::field("limit", format!("must be between 1 and {MAX_PAGE}")));
    }
    let after = query.cursor.as_deref().map(Cursor::parse).transpose().map_err(|e| ApiError::field("cursor", e))?;
    let mut tx = as_user(&pool, user).await?;
    // One more than asked: whether it comes says whether there is a next page.
    let mut items = videos::page(&mut tx, after, i64::from(limit) + 1).await?;
    tx.commit().await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|video| video.cursor().to_string())
    } else {
        None
    };
    Ok(Json(VideoPage { items, next_cursor }))
}
