//! `POST /auth/login` and `POST /auth/refresh`.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{hash_refresh_token, new_refresh_token};
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::extract::{ValidJson, Validate};
use crate::startup::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(min_length = 1, max_length = 128, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$")]
    pub username: String,
    #[schema(format = Password, min_length = 1, max_length = 1024)]
    pub password: String,
}

impl Validate for LoginRequest {
    fn validate(&self, _now: DateTime<Utc>) -> Vec<FieldError> {
        let mut problems = Vec::new();
        if !(1..=128).contains(&self.username.chars().count()) {
            problems.push(FieldError::new("username", "must be 1 to 128 characters"));
        } else if crate::extract::has_control_chars(&self.username) {
            problems.push(FieldError::new("username", "must not contain control characters"));
        }
        if !(1..=1024).contains(&self.password.chars().count()) {
            problems.push(FieldError::new("password", "must be 1 to 1024 characters"));
        }
        problems
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[schema(min_length = 1, max_length = 256)]
    pub refresh_token: String,
}

impl Validate for RefreshRequest {
    fn validate(&self, _now: DateTime<Utc>) -> Vec<FieldError> {
        if (1..=256).contains(&self.refresh_token.chars().count()) {
            Vec::new()
        } else {
            vec![FieldError::new("refresh_token", "must be 1 to 256 characters")]
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Single use: exchange it at `/auth/refresh` for a new pair.
    pub refresh_token: String,
}

/// A new access token and the first refresh token of a new family.
async fn issue_pair(state: &AppState, user: Uuid) -> Result<TokenResponse, ApiError> {
    let settings = &state.settings;
    let access_token = state.jwt.issue(user, settings.access_ttl, &settings.jwt_issuer, &settings.jwt_audience)?;
    let (refresh_token, hash) = new_refresh_token();
    let mut tx = crate::routes::as_user(&state.pool, user).await?;
    sqlx::query(
        "INSERT INTO app.refresh_tokens (user_id, token_hash, family_id, expires_at) \
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(user)
    .bind(hash)
    .bind(Uuid::new_v4())
    .bind(settings.refresh_ttl.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(TokenResponse { access_token, token_type: "bearer", expires_in: settings.access_ttl.as_secs(), refresh_token })
}

/// Exchange credentials for an access token and a refresh token.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "Authenticated", body = TokenResponse),
        (status = 401, description = "Wrong credentials (no detail given)", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid request", body = ErrorBody),
        (status = 429, description = "Over the endpoint's rate limit (at the edge)", body = ErrorBody),
        (status = 503, description = "The database is unreachable; see Retry-After", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    ValidJson(request): ValidJson<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let row: Option<(Uuid, String)> = sqlx::query_as("SELECT id, password_hash FROM app.find_login($1)")
        .bind(&request.username)
        .fetch_optional(&state.pool)
        .await?;
    let (user, hash) = match row {
        Some((user, hash)) => (Some(user), Some(hash)),
        None => (None, None),
    };
    let valid = state.passwords.verify(SecretString::from(request.password), hash).await?;
    match (valid, user) {
        (true, Some(user)) => Ok(Json(issue_pair(&state, user).await?)),
        _ => Err(ApiError::Unauthorized),
    }
}

/// Rotate a refresh token: the old one stops working, a new pair is issued. Presenting a
/// rotated token again revokes its whole family (it was stolen or replayed), except within a
/// short grace window that tolerates two concurrent refreshes.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, description = "Rotated", body = TokenResponse),
        (status = 401, description = "Unknown, expired, revoked or reused token", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid request", body = ErrorBody),
        (status = 429, description = "Over the endpoint's rate limit (at the edge)", body = ErrorBody),
        (status = 503, description = "The database is unreachable; see Retry-After", body = ErrorBody),
    ))]
pub async fn refresh(
    State(state): State<AppState>,
    ValidJson(request): ValidJson<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let settings = &state.settings;
    let (token, new_hash) = new_refresh_token();
    let mut tx = state.pool.begin().await?;
    let row: (String, Option<Uuid>) = sqlx::query_as(
        "SELECT outcome, user_id FROM app.rotate_refresh_token($1, $2, now() + make_interval(secs => $3), make_interval(secs => $4))",
    )
    .bind(hash_refresh_token(&request.refresh_token))
    .bind(new_hash)
    .bind(settings.refresh_ttl.as_secs_f64())
    .bind(settings.refresh_grace.as_secs_f64())
    .fetch_one(&mut *tx)
    .await?;
    // Commit whatever happened: a reuse revokes the family and that must stick.
    tx.commit().await?;
    match row {
        (outcome, Some(user)) if outcome == "rotated" => {
            let access_token =
                state.jwt.issue(user, settings.access_ttl, &settings.jwt_issuer, &settings.jwt_audience)?;
            Ok(Json(TokenResponse {
                access_token,
                token_type: "bearer",
                expires_in: settings.access_ttl.as_secs(),
                refresh_token: token,
            }))
        }
        (outcome, _) => {
            if outcome == "reused" {
                tracing::warn!("refresh token reuse: family revoked");
            }
            Err(ApiError::Unauthorized)
        }
    }
}
