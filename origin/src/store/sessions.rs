//! Login throttling and refresh tokens (the tokens themselves are never stored, only hashes).

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::configuration::LoginSettings;
use crate::error::ApiError;

/// Records a login attempt on `account`; the seconds it must still wait (0: go ahead).
pub async fn login_attempt(pool: &PgPool, account: &[u8], throttle: &LoginSettings) -> Result<f64, ApiError> {
    Ok(sqlx::query_scalar("SELECT app.login_attempt($1, $2, $3, $4)")
        .bind(account)
        .bind(i32::try_from(throttle.free_failures).unwrap_or(i32::MAX))
        .bind(throttle.base_delay.as_secs_f64())
        .bind(throttle.max_delay.as_secs_f64())
        .fetch_one(pool)
        .await?)
}

/// Clears `account`'s failed attempts.
pub async fn login_succeeded(pool: &PgPool, account: &[u8]) -> Result<(), ApiError> {
    sqlx::query("SELECT app.login_succeeded($1)").bind(account).execute(pool).await?;
    Ok(())
}

/// Stores the first refresh token (its hash) of a new family.
pub async fn insert_refresh_token(pool: &PgPool, user: Uuid, hash: Vec<u8>, ttl: Duration) -> Result<(), ApiError> {
    let mut tx = super::as_user(pool, user).await?;
    sqlx::query(
        "INSERT INTO app.refresh_tokens (user_id, token_hash, family_id, expires_at) \
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(user)
    .bind(hash)
    .bind(Uuid::new_v4())
    .bind(ttl.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// Rotated (or replayed inside the grace window): the successor now stands for `user`.
    Rotated { user: Uuid },
    /// Presented again after its rotation: the whole family is revoked.
    Reused,
    /// Unknown, expired or revoked.
    Refused,
}

/// Rotates `presented` (a hash) to `successor` (a hash). The outcome is committed whatever it
/// is: a reuse revokes the family and that must stick.
pub async fn rotate_refresh_token(
    pool: &PgPool,
    presented: Vec<u8>,
    successor: Vec<u8>,
    ttl: Duration,
    grace: Duration,
) -> Result<Rotation, ApiError> {
    let mut tx = pool.begin().await?;
    let (outcome, user): (String, Option<Uuid>) = sqlx::query_as(
        "SELECT outcome, user_id FROM app.rotate_refresh_token($1, $2, now() + make_interval(secs => $3), make_interval(secs => $4))",
    )
    .bind(presented)
    .bind(successor)
    .bind(ttl.as_secs_f64())
    .bind(grace.as_secs_f64())
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(match (outcome.as_str(), user) {
        ("rotated" | "replayed", Some(user)) => Rotation::Rotated { user },
        ("reused", _) => Rotation::Reused,
        _ => Rotation::Refused,
    })
}
