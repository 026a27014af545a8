//! The connection pool and the migrations.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

/// The schema migrations in `migrations/` (run as the owner role).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Connection options for `url` (which carries `sslmode` and `sslrootcert`). Statements are
/// audited by pgaudit on the server; the client logs none of them.
fn options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(url.parse::<PgConnectOptions>()?.disable_statement_logging())
}

/// A pool that has connected once (for commands that need the database now).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options(url)?)
        .await
}

/// A pool that connects on first use: the server starts, and answers /health with 503, while
/// the database is down.
pub fn lazy_pool(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy_with(options(url)?))
}
