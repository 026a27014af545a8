//! Authentication: HS256 access tokens with `kid` rotation, argon2id passwords (hashed off the
//! async runtime, equal work for unknown users), opaque rotating refresh tokens.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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

/// Password hashing with argon2id, on the blocking pool, at most `max_concurrent` at once: each
/// check holds ≈19 MiB and a core, so more at once only queue up memory. A check that finds no
/// room is refused ([`ApiError::Busy`]) instead of waiting.
#[derive(Clone)]
pub struct Passwords {
    /// Verified against when the user does not exist, so both paths cost the same.
    dummy_hash: Arc<String>,
    permits: Arc<Semaphore>,
    counters: Arc<VerifyCounters>,
}

/// What the password checks have done, for tests and metrics.
#[derive(Default)]
struct VerifyCounters {
    verifications: AtomicU64,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
}

/// Room for one password check, taken before anything else of the login happens.
pub struct VerifyPermit(#[allow(dead_code)] OwnedSemaphorePermit);

impl Passwords {
    pub async fn new(max_concurrent: usize) -> Result<Self, ApiError> {
        let dummy = Self::hash(SecretString::from(Uuid::new_v4().to_string())).await?;
        Ok(Self {
            dummy_hash: Arc::new(dummy),
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            counters: Arc::default(),
        })
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

    /// Room for one check now, or [`ApiError::Busy`].
    pub fn permit(&self) -> Result<VerifyPermit, ApiError> {
        self.permits.clone().try_acquire_owned().map(VerifyPermit).map_err(|_| ApiError::Busy)
    }

    /// Verifies `password` against `stored`, or against the dummy hash when there is no user.
    pub async fn verify(
        &self,
        permit: VerifyPermit,
        password: SecretString,
        stored: Option<String>,
    ) -> Result<bool, ApiError> {
        let exists = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy_hash.as_ref().clone());
        let counters = self.counters.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let now = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            counters.peak_in_flight.fetch_max(now, Ordering::SeqCst);
            counters.verifications.fetch_add(1, Ordering::SeqCst);
            let ok = PasswordHash::new(&hash)
                .map(|parsed| Argon2::default().verify_password(password.expose_secret().as_bytes(), &parsed).is_ok())
                .unwrap_or(false);
            counters.in_flight.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
            ok
        })
        .await
        .map_err(|e| ApiError::Internal(format!("verifying task: {e}")))?;
        Ok(ok && exists)
    }

    /// Password checks run so far.
    pub fn verifications(&self) -> u64 {
        self.counters.verifications.load(Ordering::SeqCst)
    }

    /// The most checks that ever ran at once.
    pub fn peak_in_flight(&self) -> usize {
        self.counters.peak_in_flight.load(Ordering::SeqCst)
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

/// The successor of a refresh token: HMAC-SHA-256 under `key`, so the same token always names
/// the same successor (a second presentation inside the grace window gets the same answer) and
/// nobody without the key can compute it.
pub fn successor_refresh_token(key: &SecretString, token: &str) -> Result<(String, Vec<u8>), ApiError> {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.expose_secret().as_bytes())
        .map_err(|e| ApiError::Internal(format!("refresh successor key: {e}")))?;
    mac.update(b"portcullis refresh successor\0");
    mac.update(token.as_bytes());
    let successor = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    let hash = hash_refresh_token(&successor);
    Ok((successor, hash))
}

/// The login throttle's key for a username: its SHA-256 (the text itself is never stored).
pub fn login_account_key(username: &str) -> Vec<u8> {
    Sha256::digest(username.as_bytes()).to_vec()
}

/// The authenticated caller, from `Authorization: Bearer …`.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for AuthUser
where
    Arc<JwtKeys>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).ok_or(ApiError::Unauthorized)?;
        let text = header.to_str().map_err(|_| ApiError::Unauthorized)?;
        let token =
            text.strip_prefix("Bearer ").or_else(|| text.strip_prefix("bearer ")).ok_or(ApiError::Unauthorized)?;
        Arc::<JwtKeys>::from_ref(state).verify(token.trim()).map(AuthUser)
    }
}
