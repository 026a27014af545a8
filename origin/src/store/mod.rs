//! The SQL the handlers (and `user add`, and the tests) share: one function per statement,
//! typed in and out. Row-level security does the ownership checks: a transaction from
//! [`as_user`] sees its user's rows only.

pub mod jobs;
pub mod sessions;
pub mod users;
pub mod videos;

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::error::ApiError;

/// A transaction of the application role's.
pub type Tx = Transaction<'static, Postgres>;

/// A transaction in which row-level security sees `user`'s rows only.
pub async fn as_user(pool: &PgPool, user: Uuid) -> Result<Tx, ApiError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('app.user_id', $1, true)").bind(user.to_string()).execute(&mut *tx).await?;
    Ok(tx)
}
