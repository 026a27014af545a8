//! Videos: registered by their source URL, one per owner and URL.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Tx;
use crate::domain::{Cursor, SourceUrl, Title};
use crate::error::ApiError;

#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct Video {
    pub id: Uuid,
    pub source_url: String,
    pub title: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl Video {
    /// Where a page that ends with this video resumes.
    pub fn cursor(&self) -> Cursor {
        Cursor { created_at: self.created_at, id: self.id }
    }
}

/// Finds or registers the owner's video for `source_url` (a new title replaces the old one).
pub async fn upsert(tx: &mut Tx, owner: Uuid, source_url: &SourceUrl, title: Option<&Title>) -> Result<Uuid, ApiError> {
    let (id,): (Uuid,) = sqlx::query_as(
        "INSERT INTO app.videos (owner_id, source_url, title) VALUES ($1, $2, $3) \
         ON CONFLICT (owner_id, source_url) DO UPDATE SET title = coalesce(EXCLUDED.title, app.videos.title) \
         RETURNING id",
    )
    .bind(owner)
    .bind(source_url.as_str())
    .bind(title.map(Title::as_str))
    .fetch_one(&mut **tx)
    .await?;
    Ok(id)
}

/// Whether the transaction's user has the video `id`.
pub async fn exists(tx: &mut Tx, id: Uuid) -> Result<bool, ApiError> {
    let found: Option<(Uuid,)> =
        sqlx::query_as("SELECT id FROM app.videos WHERE id = $1").bind(id).fetch_optional(&mut **tx).await?;
    Ok(found.is_some())
}

/// Up to `limit` of the user's videos, newest first, after `after`.
pub async fn page(tx: &mut Tx, after: Option<Cursor>, limit: i64) -> Result<Vec<Video>, ApiError> {
    let videos =
        match after {
            None => sqlx::query_as(
                "SELECT id, source_url, title, created_at FROM app.videos ORDER BY created_at DESC, id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(&mut **tx)
            .await?,
            Some(after) => {
                sqlx::query_as(
                    "SELECT id, source_url, title, created_at FROM app.videos WHERE (created_at, id) < ($1, $2) \
                 ORDER BY created_at DESC, id DESC LIMIT $3",
                )
                .bind(after.created_at)
                .bind(after.id)
                .bind(limit)
                .fetch_all(&mut **tx)
                .await?
            }
        };
    Ok(videos)
}
