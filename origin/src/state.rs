//! What the handlers can reach. Each handler and extractor takes only the parts it needs
//! (`State<PgPool>`, `State<Arc<JwtKeys>>`, …, through `FromRef`), so none depends on the rest.

use std::sync::Arc;

use axum::extract::FromRef;
use secrecy::SecretString;
use sqlx::PgPool;

use crate::auth::{JwtKeys, Passwords};
use crate::configuration::Settings;

#[derive(Clone, FromRef)]
pub struct AppState {
    pub pool: PgPool,
    pub jwt: Arc<JwtKeys>,
    pub passwords: Passwords,
    pub settings: Arc<Settings>,
    pub data_key: DataKey,
}

/// The key job results are encrypted with in the database (pgcrypto), and refresh-token
/// successors derived with.
#[derive(Clone)]
pub struct DataKey(pub SecretString);
