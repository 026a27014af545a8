-- Portcullis — database bootstrap. Run once per cluster, as the superuser, over the
-- Unix socket (pg_hba.conf allows the superuser nowhere else):
--
--   runuser -u postgres -- psql -X -h <socket dir> -p <port> -d postgres \
--       -v owner_password="$OWNER_PW" -v app_password="$APP_PW" -v db_name=portcullis \
--       -f migrations/bootstrap.sql
--
-- Passwords are psql variables, never literals in this file. `-v` puts them on the
-- psql command line (visible in `ps` to local users); when the variables are not given,
-- they are read from the environment instead (PORTCULLIS_OWNER_PASSWORD,
-- PORTCULLIS_APP_PASSWORD, PORTCULLIS_DB_NAME), which is the better choice for
-- scripts and the docker entrypoint.
--
-- Idempotent: every statement either checks for existence first (\gexec pattern,
-- IF NOT EXISTS) or converges an existing object to the wanted state (ALTER ...),
-- so running it again (e.g. to rotate passwords) is safe.
--
-- What it sets up:
--   portcullis_owner  LOGIN, no superuser/createdb/createrole/bypassrls. Owns schema
--                     `app`; the sqlx migrations run as this role.
--   portcullis_app    LOGIN, NOINHERIT, nothing else: CONNECT, USAGE on `app` and
--                     `crypto`, and whatever row privileges the migrations grant it.
--                     No CREATE anywhere, no TEMP, owns nothing.
--   the database      owned by the superuser (so neither role can grant itself
--                     database-level privileges), CONNECT only for the two roles,
--                     TEMPORARY revoked from PUBLIC.
--   schema public     stripped of all PUBLIC privileges (left empty).
--   schema crypto     pgcrypto lives here (owned by the superuser); USAGE for both roles.
--   schema pgaudit    the pgaudit extension's event-trigger functions; no privileges.

\set ON_ERROR_STOP on
\set QUIET on

-- ---------------------------------------------------------------------------
-- Inputs
-- ---------------------------------------------------------------------------
\if :{?db_name}
\else
  \getenv db_name PORTCULLIS_DB_NAME
  \if :{?db_name}
  \else
    \set db_name portcullis
  \endif
\endif
\if :{?owner_password}
\else
  \getenv owner_password PORTCULLIS_OWNER_PASSWORD
\endif
\if :{?app_password}
\else
  \getenv app_password PORTCULLIS_APP_PASSWORD
\endif
\if :{?owner_password}
\else
  DO $$ BEGIN RAISE EXCEPTION 'bootstrap.sql: owner password missing: pass -v owner_password=... or set PORTCULLIS_OWNER_PASSWORD'; END $$;
\endif
\if :{?app_password}
\else
  DO $$ BEGIN RAISE EXCEPTION 'bootstrap.sql: app password missing: pass -v app_password=... or set PORTCULLIS_APP_PASSWORD'; END $$;
\endif
-- Must be a superuser (creates roles, the database, extensions).
SELECT NOT rolsuper AS not_super FROM pg_roles WHERE rolname = current_user \gset
\if :not_super
  DO $$ BEGIN RAISE EXCEPTION 'bootstrap.sql must run as a superuser'; END $$;
\endif

-- Refuse empty or too-short passwords (the values themselves are never printed).
BEGIN;
SET LOCAL log_statement = 'none';   -- the next statement carries the passwords
SET LOCAL log_min_error_statement = 'panic';
SELECT length(:'owner_password') < 16 AS owner_pw_weak,
       length(:'app_password') < 16 AS app_pw_weak,
       :'owner_password' = :'app_password' AS pw_same \gset
COMMIT;
\if :owner_pw_weak
  DO $$ BEGIN RAISE EXCEPTION 'bootstrap.sql: owner password must be at least 16 characters'; END $$;
\endif
\if :app_pw_weak
  DO $$ BEGIN RAISE EXCEPTION 'bootstrap.sql: app password must be at least 16 characters'; END $$;
\endif
\if :pw_same
  DO $$ BEGIN RAISE EXCEPTION 'bootstrap.sql: owner and app passwords must differ'; END $$;
\endif

-- ---------------------------------------------------------------------------
-- Roles (cluster-wide)
-- ---------------------------------------------------------------------------
SELECT 'CREATE ROLE portcullis_owner'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'portcullis_owner') \gexec
SELECT 'CREATE ROLE portcullis_app'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'portcullis_app') \gexec

-- Converge the attributes every run (a re-run repairs a role someone loosened).
ALTER ROLE portcullis_owner WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE
    NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT 10;
ALTER ROLE portcullis_app WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE
    NOREPLICATION NOBYPASSRLS NOINHERIT CONNECTION LIMIT 100;

-- Neither role may be a member of any other role (e.g. pg_read_all_data, or each other).
SELECT format('REVOKE %I FROM %I', g.rolname, m.rolname)
  FROM pg_auth_members am
  JOIN pg_roles g ON g.oid = am.roleid
  JOIN pg_roles m ON m.oid = am.member
 WHERE m.rolname IN ('portcullis_owner', 'portcullis_app') \gexec

-- Passwords: the server hashes them (SCRAM-SHA-256) because they arrive as plain
-- values; forced here too in case the server's password_encryption differs.
-- pgaudit audits these statements (class ROLE) with the password shown as <REDACTED>.
-- Core logging is not that careful: a failing statement is echoed whole under
-- "STATEMENT:", so error-statement logging is off for exactly these two statements.
BEGIN;
SET LOCAL password_encryption = 'scram-sha-256';
SET LOCAL log_min_error_statement = 'panic';
SET LOCAL log_statement = 'none';
ALTER ROLE portcullis_owner PASSWORD :'owner_password';
ALTER ROLE portcullis_app PASSWORD :'app_password';
COMMIT;

-- ---------------------------------------------------------------------------
-- Database
-- ---------------------------------------------------------------------------
SELECT format('CREATE DATABASE %I WITH TEMPLATE template0 ENCODING %L LOCALE %L',
              :'db_name', 'UTF8', 'C.UTF-8')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db_name') \gexec

-- Owned by the superuser: the roles get exactly the database privileges granted here.
ALTER DATABASE :"db_name" OWNER TO CURRENT_USER;
REVOKE ALL ON DATABASE :"db_name" FROM PUBLIC;            -- CONNECT and TEMPORARY
REVOKE ALL ON DATABASE :"db_name" FROM portcullis_owner, portcullis_app;
GRANT CONNECT ON DATABASE :"db_name" TO portcullis_owner, portcullis_app;
-- The maintenance databases are for the superuser only (PUBLIC has CONNECT and TEMP
-- there by default).
SELECT format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', datname)
  FROM pg_database WHERE datname IN ('postgres', 'template1') AND datname <> :'db_name' \gexec

-- Per-role settings inside this database.
--  search_path: the app's schema and pgcrypto's, never public; sqlx creates its
--  _sqlx_migrations bookkeeping table in the first schema, `app` (the app role gets
--  no privileges on it).
ALTER ROLE portcullis_owner IN DATABASE :"db_name" SET search_path = app, crypto;
ALTER ROLE portcullis_app IN DATABASE :"db_name" SET search_path = app, crypto;
--  Migrations may build indexes: more than the cluster-wide 30 s.
ALTER ROLE portcullis_owner IN DATABASE :"db_name" SET statement_timeout = '15min';

\connect :db_name
SET client_min_messages = warning;   -- quiet "already exists, skipping" on re-runs

-- ---------------------------------------------------------------------------
-- Schemas and extensions (inside the database)
-- ---------------------------------------------------------------------------
REVOKE ALL ON SCHEMA public FROM PUBLIC;

CREATE SCHEMA IF NOT EXISTS app AUTHORIZATION portcullis_owner;
ALTER SCHEMA app OWNER TO portcullis_owner;
REVOKE ALL ON SCHEMA app FROM PUBLIC;

CREATE SCHEMA IF NOT EXISTS crypto;
ALTER SCHEMA crypto OWNER TO CURRENT_USER;
REVOKE ALL ON SCHEMA crypto FROM PUBLIC;
GRANT USAGE ON SCHEMA crypto TO portcullis_owner, portcullis_app;

CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA crypto;
-- Installed earlier somewhere else (e.g. public)? Move it.
SELECT 'ALTER EXTENSION pgcrypto SET SCHEMA crypto'
  FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE e.extname = 'pgcrypto' AND n.nspname <> 'crypto' \gexec

-- pgaudit itself works from shared_preload_libraries; the extension adds the event
-- triggers that name the objects in DDL audit lines.
CREATE SCHEMA IF NOT EXISTS pgaudit;
ALTER SCHEMA pgaudit OWNER TO CURRENT_USER;
REVOKE ALL ON SCHEMA pgaudit FROM PUBLIC;
CREATE EXTENSION IF NOT EXISTS pgaudit WITH SCHEMA pgaudit;

-- Functions are EXECUTE-able by PUBLIC by default. Functions the owner creates (the
-- migrations' SECURITY DEFINER functions) start with no EXECUTE for anyone; the
-- migrations grant it to the app role one function at a time.
ALTER DEFAULT PRIVILEGES FOR ROLE portcullis_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

\echo bootstrap.sql: done
