//! Authentication: HS256 access tokens with `kid` rotation, argon2id passwords (hashed off the
//! async runtime, equal work for unknown users), opaque rotating refresh tokens.

use std::sync::Arc;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiError;

/// Signing keys: the first signs, every one verifies (so rotating keys logs nobody out).
pub struct JwtKeys {
    keys: Vec<(String, EncodingKey, DecodingKey)>,
    validation: Validation,
}

/// The only algorithm accepted: an explicit list, so `alg: none` and RS/HS confusion fail.
const ALGORITHM: Algorithm = Algorithm::HS256;
/// HS256 keys shorter than the hash output are brute-forceable.
const MIN_KEY_BYTES: usize = 32;

impl JwtKeys {
    /// Parses `kid:base64key[,kid:base64key…]`.
    pub fn parse(spec: &SecretString, issuer: &str, audience: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (i, entry) in spec.expose_secret().split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
            let (kid, encoded) = entry.split_once(':').ok_or_else(|| format!("key {i} is not kid:base64"))?;
            if kid.is_empty() || !kid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(format!("key {i}: kid must be [A-Za-z0-9_-]+"));
            }
            let secret = STANDARD.decode(encoded).map_err(|_| format!("key {kid}: not base64"))?;
            if secret.len() < MIN_KEY_BYTES {
                return Err(format!("key {kid}: {} bytes, at least {MIN_KEY_BYTES} needed", secret.len()));
            }
            if keys.iter().any(|(k, _, _)| k == kid) {
                return Err(format!("key {kid}: kid used twice"));
            }
            keys.push((kid.to_owned(), EncodingKey::from_secret(&secret), DecodingKey::from_secret(&secret)));
        }
        if keys.is_empty() {
            return Err("no keys".into());
        }
        let mut validation = Validation::new(ALGORITHM);
        validation.algorithms = vec![ALGORITHM];
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        Ok(Self { keys, validation })
    }

    pub fn issue(&self, user: Uuid, ttl: Duration, issuer: &str, audience: &str) -> Result<String, ApiError> {
        let (kid, key, _) = self.keys.first().ok_or_else(|| ApiError::Internal("no signing key".into()))?;
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user.to_string(),
            iss: issuer.to_owned(),
            aud: audience.to_owned(),
            iat: now,
            nbf: now,
            exp: now + ttl.as_secs() as i64,
            jti: Uuid::new_v4().to_string(),
        };
        let mut header = Header::new(ALGORITHM);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, &claims, key).map_err(|e| ApiError::Internal(format!("signing: {e}")))
    }

    /// The user a token speaks for; any defect is the same 401.
    pub fn verify(&self, token: &str) -> Result<Uuid, ApiError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| ApiError::Unauthorized)?;
        let kid = header.kid.ok_or(ApiError::Unauthorized)?;
        let (_, _, key) = self.keys.iter().find(|(k, _, _)| *k == kid).ok_or(ApiError::Unauthorized)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|_| ApiError::Unauthorized)?;
        Uuid::parse_str(&data.claims.sub).map_err(|_| ApiError::Unauthorized)
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
}

/// Password hashing with argon2id, on the blocking pool.
#[derive(Clone)]
pub struct Passwords {
    /// Verified against when the user does not exist, so both paths cost the same.
    dummy_hash: Arc<String>,
}

impl Passwords {
    pub async fn new() -> Result<Self, ApiError> {
        let dummy = Self::hash(SecretString::from(Uuid::new_v4().to_string())).await?;
        Ok(Self { dummy_hash: Arc::new(dummy) })
    }

    pub async fn hash(password: SecretString) -> Result<String, ApiError> {
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(password.expose_secret().as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| ApiError::Internal(format!("hashing: {e}")))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("hashing task: {e}")))?
    }

    /// Verifies `password` against `stored`, or against the dummy hash when there is no user.
    pub async fn verify(&self, password: SecretString, stored: Option<String>) -> Result<bool, ApiError> {
        let exists = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy_hash.as_ref().clone());
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| Argon2::default().verify_password(password.expose_secret().as_bytes(), &parsed).is_ok())
                .unwrap_or(false)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("verifying task: {e}")))?;
        Ok(ok && exists)
    }
}

/// A new opaque refresh token and the hash that is stored (the token itself never is).
pub fn new_refresh_token() -> (String, Vec<u8>) {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_refresh_token(&token);
    (token, hash)
}

pub fn hash_refresh_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The authenticated caller, from `Authorization: Bearer …`.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser(pub Uuid);

impl FromRequestParts<crate::startup::AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &crate::startup::AppState) -> Result<Self, ApiError> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).ok_or(ApiError::Unauthorized)?;
        let text = header.to_str().map_err(|_| ApiError::Unauthorized)?;
        let token =
            text.strip_prefix("Bearer ").or_else(|| text.strip_prefix("bearer ")).ok_or(ApiError::Unauthorized)?;
        state.jwt.verify(token.trim()).map(AuthUser)
    }
}
