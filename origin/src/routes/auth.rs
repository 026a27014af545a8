//! `POST /auth/login` and `POST /auth/refresh`.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{hash_refresh_token, login_account_key, new_refresh_token, successor_refresh_token};
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
///
/// Failed logins slow the account down whatever address they come from: after a few failures
/// each attempt must wait a doubling delay (capped), answered 429 with `Retry-After` before the
/// password is looked at; a success clears it. At most one password check per core runs at
/// once; past that, 503 with `Retry-After`.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "Authenticated", body = TokenResponse),
        (status = 401, description = "Wrong credentials (no detail given)", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid request", body = ErrorBody),
        (status = 429, description = "Over the endpoint's rate limit (at the edge), or the account's failed-login delay; see Retry-After", body = ErrorBody),
        (status = 503, description = "The database is unreachable, or too many logins at once; see Retry-After", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    ValidJson(request): ValidJson<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let permit = state.passwords.permit()?;
    let throttle = &state.settings.login;
    let account = login_account_key(&request.username);
    let wait: f64 = sqlx::query_scalar("SELECT app.login_attempt($1, $2, $3, $4)")
        .bind(&account)
        .bind(i32::try_from(throttle.free_failures).unwrap_or(i32::MAX))
        .bind(throttle.base_delay.as_secs_f64())
        .bind(throttle.max_delay.as_secs_f64())
        .fetch_one(&state.pool)
        .await?;
    if wait > 0.0 {
        return Err(ApiError::Throttled(wait.ceil().max(1.0) as u64));
    }
    let row: Option<(Uuid, String)> = sqlx::query_as("SELECT id, password_hash FROM app.find_login($1)")
        .bind(&request.username)
        .fetch_optional(&state.pool)
        .await?;
    let (user, hash) = match row {
        Some((user, hash)) => (Some(user), Some(hash)),
        None => (None, None),
    };
    let valid = state.passwords.verify(permit, SecretString::from(request.password), hash).await?;
    match (valid, user) {
        (true, Some(user)) => {
            sqlx::query("SELECT app.login_succeeded($1)").bind(&account).execute(&state.pool).await?;
            Ok(Json(issue_pair(&state, user).await?))
        }
        _ => Err(ApiError::Unauthorized),
    }
}

/// Rotate a refresh token: the old one stops working, a new pair is issued. Presenting a
/// rotated token again revokes its whole family (it was stolen or replayed), except within a
/// short grace window, where it gets the same successor as the first presentation (two tabs,
/// a retry): both holders then share one token, and whichever rotates it second after the
/// window is a detected reuse.
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
    let (token, new_hash) = successor_refresh_token(&state.data_key, &request.refresh_token)?;
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
        (outcome, Some(user)) if outcome == "rotated" || outcome == "replayed" => {
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
