//! `POST /auth/login` and `POST /auth/refresh`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{JwtKeys, Passwords};
use crate::auth::{hash_refresh_token, login_account_key, new_refresh_token, successor_refresh_token};
use crate::configuration::Settings;
use crate::domain::{Password, Problems, RefreshToken, Username};
use crate::error::{ApiError, ErrorBody, FieldError};
use crate::extract::{FromBody, ValidJson};
use crate::state::DataKey;
use crate::store::sessions::{self, Rotation};
use crate::store::users;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(value_type = Username, inline)]
    pub username: String,
    #[schema(value_type = Password, inline)]
    pub password: String,
}

/// A login's parsed credentials.
pub struct Credentials {
    pub username: Username,
    pub password: SecretString,
}

impl FromBody for Credentials {
    type Body = LoginRequest;

    fn from_body(body: LoginRequest) -> Result<Self, Vec<FieldError>> {
        let mut problems = Problems::default();
        let username = problems.field("username", Username::parse(body.username));
        let password = problems.field("password", Password::parse(body.password));
        match (username, password) {
            (Some(username), Some(password)) => Ok(Self { username, password }),
            _ => Err(problems.into_errors()),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[schema(value_type = RefreshToken, inline)]
    pub refresh_token: String,
}

impl FromBody for RefreshToken {
    type Body = RefreshRequest;

    fn from_body(body: RefreshRequest) -> Result<Self, Vec<FieldError>> {
        let mut problems = Problems::default();
        problems.field("refresh_token", RefreshToken::parse(body.refresh_token)).ok_or_else(|| problems.into_errors())
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

fn token_response(
    jwt: &JwtKeys,
    settings: &Settings,
    user: Uuid,
    refresh_token: String,
) -> Result<TokenResponse, ApiError> {
    let access_token = jwt.issue(user, settings.access_ttl, &settings.jwt_issuer, &settings.jwt_audience)?;
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
    State(pool): State<PgPool>,
    State(jwt): State<Arc<JwtKeys>>,
    State(passwords): State<Passwords>,
    State(settings): State<Arc<Settings>>,
    ValidJson(credentials): ValidJson<Credentials>,
) -> Result<Json<TokenResponse>, ApiError> {
    let permit = passwords.permit()?;
    let account = login_account_key(credentials.username.as_str());
    let wait = sessions::login_attempt(&pool, &account, &settings.login).await?;
    if wait > 0.0 {
        return Err(ApiError::Throttled(wait.ceil().max(1.0) as u64));
    }
    let (user, hash) = users::find_login(&pool, &credentials.username).await?.unzip();
    let valid = passwords.verify(permit, credentials.password, hash).await?;
    match (valid, user) {
        (true, Some(user)) => {
            sessions::login_succeeded(&pool, &account).await?;
            let (refresh_token, hash) = new_refresh_token();
            sessions::insert_refresh_token(&pool, user, hash, settings.refresh_ttl).await?;
            Ok(Json(token_response(&jwt, &settings, user, refresh_token)?))
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
    State(pool): State<PgPool>,
    State(jwt): State<Arc<JwtKeys>>,
    State(settings): State<Arc<Settings>>,
    State(DataKey(data_key)): State<DataKey>,
    ValidJson(presented): ValidJson<RefreshToken>,
) -> Result<Json<TokenResponse>, ApiError> {
    let (successor, successor_hash) = successor_refresh_token(&data_key, presented.as_str())?;
    let presented_hash = hash_refresh_token(presented.as_str());
    let rotation = sessions::rotate_refresh_token(
        &pool,
        presented_hash,
        successor_hash,
        settings.refresh_ttl,
        settings.refresh_grace,
    )
    .await?;
    match rotation {
        Rotation::Rotated { user } => Ok(Json(token_response(&jwt, &settings, user, successor)?)),
        Rotation::Reused => {
            tracing::warn!("refresh token reuse: family revoked");
            Err(ApiError::Unauthorized)
        }
        Rotation::Refused => Err(ApiError::Unauthorized),
    }
}
