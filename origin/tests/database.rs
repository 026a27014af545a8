//! The hardened database, tested against a real cluster (the one `cargo xtask test` starts, or this process's own) (TLS
//! only, pgaudit, bootstrap roles, the origin's migrations): what the roles may not do, what
//! row-level security hides, what the audit log records and what it must never contain.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use portcullis_origin::db;
use sqlx::{Connection, Executor, PgConnection, PgPool, Row};
use support::{TestDatabase, database};
use uuid::Uuid;

mod support;

async fn app_pool(db: &TestDatabase) -> PgPool {
    db::connect(&db.app_url, 4).await.expect("the app role connects over TLS")
}

/// Runs `sql` as the app role and returns the database error's SQLSTATE.
async fn refused(conn: &mut PgConnection, sql: &str) -> String {
    match conn.execute(sql).await {
        Ok(_) => panic!("the app role was allowed to run: {sql}"),
        Err(sqlx::Error::Database(err)) => err.code().map(|c| c.into_owned()).unwrap_or_default(),
        Err(other) => panic!("{sql}: unexpected error {other}"),
    }
}

#[tokio::test]
async fn plain_connections_are_refused() {
    let db = database();
    let err = PgConnection::connect(&db.plain_url).await.expect_err("a connection without TLS must fail");
    let text = err.to_string();
    assert!(text.contains("no encryption") || text.contains("pg_hba.conf rejects"), "{text}");
}

#[tokio::test]
async fn the_app_role_can_only_touch_rows() {
    let db = database();
    let mut conn = PgConnection::connect(&db.app_url).await.unwrap();
    // 42501 insufficient_privilege, 42P01/3F000 when a schema is out of reach entirely.
    let denied = ["42501"];
    for sql in [
        "CREATE TABLE app.evil (x int)",
        "CREATE TABLE public.evil (x int)",
        "CREATE TEMP TABLE evil (x int)",
        "DROP TABLE app.jobs",
        "TRUNCATE app.jobs",
        "ALTER TABLE app.jobs ADD COLUMN evil int",
        "ALTER TABLE app.jobs DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE app.jobs NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY jobs_self ON app.jobs",
        "CREATE SCHEMA evil",
        "SET ROLE portcullis_owner",
        // The login throttle is reached through its functions only: no reading who is being
        // guessed at, no clearing a delay by hand.
        "SELECT * FROM app.login_throttle",
        "DELETE FROM app.login_throttle",
    ] {
        let code = refused(&mut conn, sql).await;
        assert!(denied.contains(&code.as_str()), "{sql}: SQLSTATE {code}");
    }
    // Turning row security off for the session is refused instead of silently bypassing.
    conn.execute("SET row_security = off").await.unwrap();
    let code = refused(&mut conn, "SELECT * FROM app.jobs").await;
    assert_eq!(code, "42501", "row_security=off must make RLS-protected reads fail");
}

async fn create_user(pool: &PgPool, name: &str) -> Uuid {
    let id = Uuid::new_v4();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.user_id', $1, true)").bind(id.to_string()).execute(&mut *tx).await.unwrap();
    sqlx::query("INSERT INTO app.users (id, username, password_hash) VALUES ($1, $2, '$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA')")
        .bind(id)
        .bind(format!("{name}-{id}"))
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    id
}

async fn as_user(pool: &PgPool, user: Uuid) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.user_id', $1, true)").bind(user.to_string()).execute(&mut *tx).await.unwrap();
    tx
}

#[tokio::test]
async fn row_level_security_keeps_owners_apart() {
    let db = database();
    let pool = app_pool(&db).await;
    let (alice, bob) = (create_user(&pool, "alice").await, create_user(&pool, "bob").await);

    let mut tx = as_user(&pool, alice).await;
    let video: Uuid = sqlx::query(
        "INSERT INTO app.videos (owner_id, source_url) VALUES ($1, 'https://example.com/a.mp4') RETURNING id",
    )
    .bind(alice)
    .fetch_one(&mut *tx)
    .await
    .unwrap()
    .get(0);
    tx.commit().await.unwrap();

    let mut tx = as_user(&pool, bob).await;
    let seen: i64 = sqlx::query("SELECT count(*) FROM app.videos WHERE id = $1")
        .bind(video)
        .fetch_one(&mut *tx)
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "bob cannot see alice's video");
    let updated =
        sqlx::query("UPDATE app.videos SET title = 'mine' WHERE id = $1").bind(video).execute(&mut *tx).await.unwrap();
    assert_eq!(updated.rows_affected(), 0, "bob cannot update it");
    let deleted = sqlx::query("DELETE FROM app.videos WHERE id = $1").bind(video).execute(&mut *tx).await.unwrap();
    assert_eq!(deleted.rows_affected(), 0, "bob cannot delete it");
    let forged = sqlx::query("INSERT INTO app.videos (owner_id, source_url) VALUES ($1, 'https://example.com/b.mp4')")
        .bind(alice)
        .execute(&mut *tx)
        .await;
    assert!(forged.is_err(), "bob cannot write a row owned by alice");
    tx.rollback().await.unwrap();

    // No user set: nothing visible at all.
    let mut conn = pool.acquire().await.unwrap();
    let visible: i64 = sqlx::query("SELECT count(*) FROM app.videos").fetch_one(&mut *conn).await.unwrap().get(0);
    assert_eq!(visible, 0);

    let mut tx = as_user(&pool, alice).await;
    let own: i64 = sqlx::query("SELECT count(*) FROM app.videos WHERE id = $1")
        .bind(video)
        .fetch_one(&mut *tx)
        .await
        .unwrap()
        .get(0);
    assert_eq!(own, 1, "alice sees her own video");
}

fn log_text(db: &TestDatabase) -> String {
    std::fs::read_to_string(&db.log).unwrap_or_else(|e| panic!("reading the server log {}: {e}", db.log.display()))
}

/// pgaudit writes as the statement runs; give the log a moment to reach the file.
async fn wait_for_log(db: &TestDatabase, needle: &str) -> bool {
    for _ in 0..50 {
        if log_text(db).contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn writes_and_ddl_are_audited() {
    let db = database();
    let pool = app_pool(&db).await;
    let user = create_user(&pool, "audited").await;
    let marker = format!("audit-{}", Uuid::new_v4().simple());

    let mut tx = as_user(&pool, user).await;
    let video: Uuid = sqlx::query("INSERT INTO app.videos (owner_id, source_url, title) VALUES ($1, 'https://example.com/v.mp4', $2) RETURNING id")
        .bind(user)
        .bind(&marker)
        .fetch_one(&mut *tx)
        .await
        .unwrap()
        .get(0);
    sqlx::query("UPDATE app.videos SET title = $2 WHERE id = $1")
        .bind(video)
        .bind(&marker)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("DELETE FROM app.videos WHERE id = $1").bind(video).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();

    for verb in ["INSERT", "UPDATE", "DELETE"] {
        let needle = format!("WRITE,{verb},TABLE,app.videos");
        assert!(wait_for_log(&db, &needle).await, "no AUDIT line for {verb} on app.videos");
    }
    assert!(log_text(&db).lines().any(|l| l.contains("AUDIT: SESSION,") && l.contains("WRITE,INSERT")));

    let mut owner = PgConnection::connect(&db.owner_url).await.unwrap();
    let table = format!("app.probe_{}", Uuid::new_v4().simple());
    owner.execute(format!("CREATE TABLE {table} (x int)").as_str()).await.unwrap();
    owner.execute(format!("DROP TABLE {table}").as_str()).await.unwrap();
    assert!(wait_for_log(&db, &format!("DDL,CREATE TABLE,TABLE,{table}")).await, "no AUDIT line for CREATE TABLE");
    assert!(wait_for_log(&db, &format!("DDL,DROP TABLE,TABLE,{table}")).await, "no AUDIT line for DROP TABLE");
}

#[tokio::test]
async fn encrypted_columns_round_trip_and_never_reach_the_log() {
    let db = database();
    let pool = app_pool(&db).await;
    let user = create_user(&pool, "crypto").await;
    let key = format!("key-{}", Uuid::new_v4().simple());
    let plaintext = format!("transcript {} the quick brown fox", Uuid::new_v4().simple());

    let mut tx = as_user(&pool, user).await;
    let job: Uuid = sqlx::query(
        "INSERT INTO app.jobs (owner_id, kind, result_enc) VALUES ($1, 'transcription', crypto.pgp_sym_encrypt($2, $3)) RETURNING id",
    )
    .bind(user)
    .bind(&plaintext)
    .bind(&key)
    .fetch_one(&mut *tx)
    .await
    .unwrap()
    .get(0);
    let stored: Vec<u8> = sqlx::query("SELECT result_enc FROM app.jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&mut *tx)
        .await
        .unwrap()
        .get(0);
    assert!(!String::from_utf8_lossy(&stored).contains(&plaintext), "the column holds ciphertext");
    let decrypted: String = sqlx::query("SELECT crypto.pgp_sym_decrypt(result_enc, $2) FROM app.jobs WHERE id = $1")
        .bind(job)
        .bind(&key)
        .fetch_one(&mut *tx)
        .await
        .unwrap()
        .get(0);
    assert_eq!(decrypted, plaintext);
    // A failing statement with the key bound must not echo it either.
    let failed = sqlx::query("SELECT crypto.pgp_sym_decrypt(result_enc, $2 || 'wrong') FROM app.jobs WHERE id = $1")
        .bind(job)
        .bind(&key)
        .fetch_one(&mut *tx)
        .await;
    assert!(failed.is_err(), "decrypting with a wrong key fails");
    tx.rollback().await.unwrap();

    let mut tx = as_user(&pool, user).await;
    sqlx::query(
        "INSERT INTO app.jobs (owner_id, kind, result_enc) VALUES ($1, 'analysis', crypto.pgp_sym_encrypt($2, $3))",
    )
    .bind(user)
    .bind(&plaintext)
    .bind(&key)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    assert!(wait_for_log(&db, "WRITE,INSERT,TABLE,app.jobs").await, "the insert was audited");
    let log = log_text(&db);
    assert!(!log.contains(&key), "the key reached the server log");
    assert!(!log.contains(&plaintext), "the plaintext reached the server log");
}
