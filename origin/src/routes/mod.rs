//! The API under `/api/v1`.

pub mod auth;
pub mod health;
pub mod jobs;
pub mod videos;

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::error::ApiError;

/// A transaction in which row-level security sees `user`'s rows only.
pub async fn as_user(pool: &PgPool, user: Uuid) -> Result<Transaction<'static, Postgres>, ApiError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('app.user_id', $1, true)").bind(user.to_string()).execute(&mut *tx).await?;
    Ok(tx)
}
