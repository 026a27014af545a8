-- Portcullis schema, version 1. Applied by sqlx (one transaction) as portcullis_owner,
-- over TLS, after migrations/bootstrap.sql has created the roles, schema `app` (owned
-- by portcullis_owner) and pgcrypto in schema `crypto`.
--
-- Row-level security model
-- ------------------------
-- * Every per-user table has ENABLE + FORCE ROW LEVEL SECURITY.
-- * portcullis_app sees and writes only rows of the user named by the per-transaction
--   setting app.user_id (the origin runs `SELECT set_config('app.user_id', $1, true)`
--   at the start of each transaction, i.e. SET LOCAL). Unset or empty -> no rows:
--   nullif(..., '') matters because a custom setting that was once SET LOCAL in a
--   pooled session reads back as '' afterwards, and ''::uuid would be an error.
-- * FORCE makes the table owner subject to RLS too. The owner is the migration role
--   and the owner of the SECURITY DEFINER functions below, both of which must see all
--   users' rows (a data migration under FORCE without a policy silently touches zero
--   rows; claim_due_jobs must see every owner's due jobs). The owner therefore gets
--   an explicit, named policy `*_owner_role` (TO portcullis_owner USING (true)).
--   Alternatives rejected: BYPASSRLS (only a superuser can grant it and it is
--   all-or-nothing for every table); `SET row_security = off` on the functions (that
--   does not bypass anything: a query that RLS would filter then fails with an error);
--   a "bypass" custom setting checked by the policies (the app role can set any
--   custom setting itself). With FORCE + an explicit owner policy, the owner's access
--   is visible in pg_policies, and any other role that is ever granted table
--   privileges sees no rows until it is given a policy of its own.
-- * portcullis_app cannot become portcullis_owner (no membership), so it reaches the
--   cross-user view only through the SECURITY DEFINER functions, each a fixed SQL
--   statement over fixed columns (no dynamic SQL), with search_path pinned and
--   EXECUTE granted to portcullis_app alone.
-- * Foreign-key checks bypass RLS, so a job's video is tied to the job's owner by a
--   composite foreign key (video_id, owner_id): a user cannot attach another user's
--   video to their job, nor probe other users' video ids through FK errors.
--
-- Encryption: users.email_enc and jobs.result_enc hold crypto.pgp_sym_encrypt(value,
-- key) output; the key and the plaintext are always bind parameters ($n), never
-- literals, so pgaudit (log_parameter = off) records them as <not logged>.
-- users.email_digest is HMAC-SHA-256(key, normalised email) computed by the app (or
-- crypto.hmac($1, $2, 'sha256') with both as parameters) for lookup/uniqueness.

-- Refuse to run as a superuser (the SECURITY DEFINER functions would run as one) or
-- before bootstrap.sql.
DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'run the migrations as portcullis_owner, not as superuser %', current_user;
    END IF;
    IF current_user <> 'portcullis_owner' THEN
        RAISE EXCEPTION 'run the migrations as portcullis_owner (connected as %)', current_user;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_namespace
                    WHERE nspname = 'app' AND nspowner = 'portcullis_owner'::regrole) THEN
        RAISE EXCEPTION 'schema app owned by portcullis_owner is missing: run migrations/bootstrap.sql first';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'pgcrypto') THEN
        RAISE EXCEPTION 'pgcrypto is missing: run migrations/bootstrap.sql first';
    END IF;
END
$$;

-- ---------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------

CREATE TABLE app.users (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Normalised (e.g. lower-cased, NFC) by the app before it gets here.
    username      text        NOT NULL UNIQUE
                              CHECK (char_length(username) BETWEEN 1 AND 128),
    email_enc     bytea,      -- crypto.pgp_sym_encrypt(email, $key)
    email_digest  bytea       UNIQUE
                              CHECK (octet_length(email_digest) = 32),  -- HMAC-SHA-256
    -- argon2id PHC string: $argon2id$v=19$m=...,t=...,p=...$salt$hash
    password_hash text        NOT NULL
                              CHECK (starts_with(password_hash, '$argon2id$')
                                     AND char_length(password_hash) <= 512),
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_email_both_or_neither CHECK ((email_enc IS NULL) = (email_digest IS NULL))
);

CREATE TABLE app.refresh_tokens (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid        NOT NULL REFERENCES app.users (id) ON DELETE CASCADE,
    -- Digest of the opaque token (e.g. SHA-256); the token itself is never stored.
    token_hash  bytea       NOT NULL UNIQUE
                            CHECK (octet_length(token_hash) BETWEEN 32 AND 64),
    -- All tokens descending from one login share a family; reuse of a rotated token
    -- revokes the whole family (see app.rotate_refresh_token).
    family_id   uuid        NOT NULL,
    parent_id   uuid        REFERENCES app.refresh_tokens (id) ON DELETE SET NULL,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    rotated_at  timestamptz,          -- set when exchanged for its child
    revoked_at  timestamptz,          -- logout, or family revoked after reuse
    CONSTRAINT refresh_tokens_expiry_after_issue CHECK (expires_at > issued_at)
);
CREATE INDEX refresh_tokens_user_idx    ON app.refresh_tokens (user_id);
CREATE INDEX refresh_tokens_family_idx  ON app.refresh_tokens (family_id);
CREATE INDEX refresh_tokens_parent_idx  ON app.refresh_tokens (parent_id);
CREATE INDEX refresh_tokens_expires_idx ON app.refresh_tokens (expires_at);

CREATE TABLE app.videos (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id    uuid        NOT NULL REFERENCES app.users (id) ON DELETE CASCADE,
    source_url  text        NOT NULL
                            CHECK (source_url LIKE 'https://%' AND char_length(source_url) <= 2048),
    title       text        CHECK (char_length(title) <= 512),
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT videos_owner_url_key UNIQUE (owner_id, source_url),
    CONSTRAINT videos_id_owner_key  UNIQUE (id, owner_id)   -- target of jobs' composite FK
);
CREATE INDEX videos_owner_created_idx ON app.videos (owner_id, created_at DESC);

CREATE TABLE app.jobs (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id    uuid        NOT NULL REFERENCES app.users (id) ON DELETE CASCADE,
    video_id    uuid,
    kind        text        NOT NULL CHECK (kind IN ('transcription', 'analysis')),
    status      text        NOT NULL DEFAULT 'queued'
                            CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    params      jsonb       NOT NULL DEFAULT '{}'::jsonb
                            CHECK (jsonb_typeof(params) = 'object'),
    result_enc  bytea,      -- crypto.pgp_sym_encrypt(result, $key)
    error       text,
    run_at      timestamptz NOT NULL DEFAULT now(),   -- not before (scheduled jobs)
    attempts    integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    locked_at   timestamptz,                          -- claimed by an executor at
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- The video, if any, must belong to the job's owner. Deleting the video keeps
    -- the job and clears only video_id (PostgreSQL 15+ column list).
    CONSTRAINT jobs_video_same_owner_fkey FOREIGN KEY (video_id, owner_id)
        REFERENCES app.videos (id, owner_id) ON DELETE SET NULL (video_id)
);
CREATE INDEX jobs_owner_created_idx ON app.jobs (owner_id, created_at DESC);
CREATE INDEX jobs_video_idx         ON app.jobs (video_id) WHERE video_id IS NOT NULL;
-- The executor's queue: only queued rows, in due order (status is constant in the
-- partial index, so it is not repeated as a key column).
CREATE INDEX jobs_due_idx           ON app.jobs (run_at) WHERE status = 'queued';

CREATE FUNCTION app.touch_updated_at() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
CREATE TRIGGER jobs_touch_updated_at BEFORE UPDATE ON app.jobs
    FOR EACH ROW EXECUTE FUNCTION app.touch_updated_at();

-- ---------------------------------------------------------------------------
-- Row-level security
-- ---------------------------------------------------------------------------

ALTER TABLE app.users          ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.users          FORCE  ROW LEVEL SECURITY;
ALTER TABLE app.refresh_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.refresh_tokens FORCE  ROW LEVEL SECURITY;
ALTER TABLE app.videos         ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.videos         FORCE  ROW LEVEL SECURITY;
ALTER TABLE app.jobs           ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.jobs           FORCE  ROW LEVEL SECURITY;

-- The app role: the current user's rows only, for reading and for writing (WITH
-- CHECK stops inserting a row for, or moving a row to, another user).
CREATE POLICY users_self ON app.users TO portcullis_app
    USING      (id = nullif(current_setting('app.user_id', true), '')::uuid)
    WITH CHECK (id = nullif(current_setting('app.user_id', true), '')::uuid);
CREATE POLICY refresh_tokens_self ON app.refresh_tokens TO portcullis_app
    USING      (user_id = nullif(current_setting('app.user_id', true), '')::uuid)
    WITH CHECK (user_id = nullif(current_setting('app.user_id', true), '')::uuid);
CREATE POLICY videos_self ON app.videos TO portcullis_app
    USING      (owner_id = nullif(current_setting('app.user_id', true), '')::uuid)
    WITH CHECK (owner_id = nullif(current_setting('app.user_id', true), '')::uuid);
CREATE POLICY jobs_self ON app.jobs TO portcullis_app
    USING      (owner_id = nullif(current_setting('app.user_id', true), '')::uuid)
    WITH CHECK (owner_id = nullif(current_setting('app.user_id', true), '')::uuid);

-- The owner role (migrations, and the SECURITY DEFINER functions below): all rows.
CREATE POLICY users_owner_role          ON app.users          TO portcullis_owner USING (true) WITH CHECK (true);
CREATE POLICY refresh_tokens_owner_role ON app.refresh_tokens TO portcullis_owner USING (true) WITH CHECK (true);
CREATE POLICY videos_owner_role         ON app.videos         TO portcullis_owner USING (true) WITH CHECK (true);
CREATE POLICY jobs_owner_role           ON app.jobs           TO portcullis_owner USING (true) WITH CHECK (true);

-- ---------------------------------------------------------------------------
-- SECURITY DEFINER functions: the only cross-user paths open to the app role
-- ---------------------------------------------------------------------------

-- Login: the user id is not known before the password is checked. Returns only what
-- verification needs. (Verify a dummy argon2id hash when no row comes back, so the
-- response time does not reveal whether the user exists.)
CREATE FUNCTION app.find_login(p_username text)
    RETURNS TABLE (id uuid, password_hash text)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT u.id, u.password_hash FROM app.users u WHERE u.username = p_username;
$$;

-- Refresh: the presented token identifies the user, so the lookup cannot be keyed on
-- app.user_id. Rotation is atomic: the presented token is locked, checked, marked
-- rotated and replaced by a child in the same family. Presenting an already-rotated
-- token again is treated as theft: the whole family is revoked (the caller must
-- COMMIT in that case too, or the revocation is lost).
-- outcome: 'rotated' | 'reused' | 'revoked' | 'expired' | 'unknown';
-- user_id/family_id are NULL unless 'rotated'.
CREATE FUNCTION app.rotate_refresh_token(p_token_hash bytea,
                                         p_new_token_hash bytea,
                                         p_new_expires_at timestamptz)
    RETURNS TABLE (outcome text, user_id uuid, family_id uuid)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t app.refresh_tokens%ROWTYPE;
BEGIN
    SELECT * INTO t FROM app.refresh_tokens r WHERE r.token_hash = p_token_hash FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown'::text, NULL::uuid, NULL::uuid;
        RETURN;
    END IF;
    IF t.revoked_at IS NOT NULL THEN
        RETURN QUERY SELECT 'revoked'::text, NULL::uuid, NULL::uuid;
        RETURN;
    END IF;
    IF t.rotated_at IS NOT NULL THEN
        UPDATE app.refresh_tokens r SET revoked_at = now()
         WHERE r.family_id = t.family_id AND r.revoked_at IS NULL;
        RETURN QUERY SELECT 'reused'::text, NULL::uuid, NULL::uuid;
        RETURN;
    END IF;
    IF t.expires_at <= now() THEN
        RETURN QUERY SELECT 'expired'::text, NULL::uuid, NULL::uuid;
        RETURN;
    END IF;
    UPDATE app.refresh_tokens r SET rotated_at = now() WHERE r.id = t.id;
    INSERT INTO app.refresh_tokens (user_id, token_hash, family_id, parent_id, expires_at)
    VALUES (t.user_id, p_new_token_hash, t.family_id, t.id, p_new_expires_at);
    RETURN QUERY SELECT 'rotated'::text, t.user_id, t.family_id;
END
$$;

-- Executor: claim up to max_jobs due jobs of any owner. SKIP LOCKED lets several
-- executors claim concurrently without waiting on or double-claiming a row.
CREATE FUNCTION app.claim_due_jobs(max_jobs integer)
    RETURNS SETOF app.jobs
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE app.jobs j
       SET status = 'running', locked_at = now(), attempts = j.attempts + 1
      FROM (SELECT q.id
              FROM app.jobs q
             WHERE q.status = 'queued' AND q.run_at <= now()
             ORDER BY q.run_at
             LIMIT greatest(least(max_jobs, 1000), 0)
               FOR UPDATE SKIP LOCKED) due
     WHERE j.id = due.id
    RETURNING j.*;
$$;

-- Executor: finish a running job. p_status is 'succeeded' or 'failed'; a failed job
-- with p_retry_at goes back to the queue at that time. Returns false if the job is
-- not running any more (e.g. the user cancelled it meanwhile).
-- p_result_enc is already encrypted by the caller's expression:
--   SELECT app.finish_job($1, 'succeeded', crypto.pgp_sym_encrypt($2, $3), NULL)
CREATE FUNCTION app.finish_job(p_job_id uuid,
                               p_status text,
                               p_result_enc bytea,
                               p_error text,
                               p_retry_at timestamptz DEFAULT NULL)
    RETURNS boolean
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_status IS NULL OR p_status NOT IN ('succeeded', 'failed') THEN
        RAISE EXCEPTION 'finish_job: status must be succeeded or failed'
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_retry_at IS NOT NULL AND p_status <> 'failed' THEN
        RAISE EXCEPTION 'finish_job: only a failed job can be retried'
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE app.jobs j
       SET status     = CASE WHEN p_retry_at IS NULL THEN p_status ELSE 'queued' END,
           run_at     = coalesce(p_retry_at, j.run_at),
           result_enc = p_result_enc,
           error      = p_error,
           locked_at  = NULL
     WHERE j.id = p_job_id AND j.status = 'running';
    RETURN FOUND;
END
$$;

-- ---------------------------------------------------------------------------
-- Privileges: rows only, for the app role
-- ---------------------------------------------------------------------------

REVOKE ALL ON SCHEMA app FROM PUBLIC;
GRANT USAGE ON SCHEMA app TO portcullis_app;

REVOKE ALL ON app.users, app.refresh_tokens, app.videos, app.jobs FROM PUBLIC, portcullis_app;
-- No TRUNCATE, REFERENCES or TRIGGER; DDL is impossible anyway (not the owner, no
-- CREATE on any schema).
GRANT SELECT, INSERT, UPDATE, DELETE
   ON app.users, app.refresh_tokens, app.videos, app.jobs TO portcullis_app;

-- bootstrap.sql's default privileges already keep EXECUTE from PUBLIC; be explicit.
REVOKE ALL ON FUNCTION app.touch_updated_at() FROM PUBLIC;
REVOKE ALL ON FUNCTION app.find_login(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION app.rotate_refresh_token(bytea, bytea, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION app.claim_due_jobs(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION app.finish_job(uuid, text, bytea, text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.find_login(text) TO portcullis_app;
GRANT EXECUTE ON FUNCTION app.rotate_refresh_token(bytea, bytea, timestamptz) TO portcullis_app;
GRANT EXECUTE ON FUNCTION app.claim_due_jobs(integer) TO portcullis_app;
GRANT EXECUTE ON FUNCTION app.finish_job(uuid, text, bytea, text, timestamptz) TO portcullis_app;
