//! Users: created by `portcullis-origin user add` (and the tests), found at login.

use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::Username;
use crate::error::ApiError;

/// Inserts a user with an argon2 `password_hash`; `None` when the name is taken.
pub async fn create(pool: &PgPool, username: &Username, password_hash: &str) -> Result<Option<Uuid>, ApiError> {
    let id = Uuid::new_v4();
    // Row-level security admits the insert only as the new user.
    let mut tx = super::as_user(pool, id).await?;
    let inserted = sqlx::query(
        "INSERT INTO app.users (id, username, password_hash) VALUES ($1, $2, $3) ON CONFLICT (username) DO NOTHING",
    )
    .bind(id)
    .bind(username.as_str())
    .bind(password_hash)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((inserted.rows_affected() == 1).then_some(id))
}

/// The id and password hash of the user named `username`, through the definer function that
/// is the application role's only way to read another user's row.
pub async fn find_login(pool: &PgPool, username: &Username) -> Result<Option<(Uuid, String)>, ApiError> {
    Ok(sqlx::query_as("SELECT id, password_hash FROM app.find_login($1)")
        .bind(username.as_str())
        .fetch_optional(pool)
        .await?)
}
