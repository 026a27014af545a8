//! The `portcullis-origin` binary as an operator runs it: `check-config`, `serve`, `migrate` and
//! `user add`, with their exit codes and messages. The database commands run against the test
//! PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

/// The binary with exactly `env` as its configuration: whatever `PORTCULLIS_*` or `VAULT_*`
/// the test process has is not passed on.
fn origin(args: &[&str], env: &BTreeMap<String, String>) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis-origin"));
    for (name, _) in std::env::vars() {
        if name.starts_with("PORTCULLIS_") || name.starts_with("VAULT_") {
            command.env_remove(name);
        }
    }
    command.args(args).envs(env).stdin(Stdio::null());
    command
}

fn run(args: &[&str], env: &BTreeMap<String, String>) -> Output {
    origin(args, env).output().unwrap()
}

fn run_with_stdin(args: &[&str], env: &BTreeMap<String, String>, stdin: &str) -> Output {
    let mut child =
        origin(args, env).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn assert_fails(output: &Output) -> String {
    let err = stderr(output);
    assert!(!output.status.success(), "expected a failure; stdout:\n{}\nstderr:\n{err}", stdout(output));
    assert!(err.starts_with("portcullis-origin: "), "{err}");
    err
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// A complete configuration for `serve` and `check-config`. The database is never contacted by
/// `check-config`, and `serve` connects lazily.
fn offline_env() -> BTreeMap<String, String> {
    let certs = support::certs();
    env(&[
        ("PORTCULLIS_LISTEN", "127.0.0.1:0"),
        ("PORTCULLIS_TLS_CERT", &certs.join("origin.crt").display().to_string()),
        ("PORTCULLIS_TLS_KEY_FILE", &certs.join("origin.key").display().to_string()),
        ("PORTCULLIS_DATABASE_URL", "postgres://portcullis_app:unused@127.0.0.1:1/portcullis?sslmode=disable"),
        ("PORTCULLIS_JWT_KEYS", &support::jwt_keys()),
        ("PORTCULLIS_DATA_KEY", "a-data-key-of-enough-length"),
    ])
}

#[test]
fn check_config_accepts_a_complete_configuration() {
    let output = run(&["check-config"], &offline_env());
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "configuration OK\n");

    let mut mtls = offline_env();
    mtls.insert("PORTCULLIS_CLIENT_CA".into(), support::certs().join("ca.crt").display().to_string());
    let output = run(&["check-config"], &mtls);
    assert!(output.status.success(), "a client CA is checked too: {}", stderr(&output));
}

#[test]
fn check_config_names_every_problem_with_settings_and_secrets() {
    let bad = env(&[
        ("PORTCULLIS_LISTEN", "nowhere"),
        ("PORTCULLIS_ACCESS_TTL_SECS", "0"),
        ("PORTCULLIS_CORS_ORIGINS", "*"),
        ("PORTCULLIS_JWT_KEYS", ""),
    ]);
    let err = assert_fails(&run(&["check-config"], &bad));
    for expected in [
        "7 problem(s):",
        "- PORTCULLIS_ACCESS_TTL_SECS: \"0\" is not a whole number ≥ 1",
        "- PORTCULLIS_LISTEN: \"nowhere\" is not host:port (an IP address)",
        "- PORTCULLIS_CORS_ORIGINS: \"*\" is a wildcard",
        "- PORTCULLIS_DATABASE_URL (PostgreSQL URL of the app role) is missing",
        "- PORTCULLIS_JWT_KEYS is empty (from PORTCULLIS_JWT_KEYS)",
        "- PORTCULLIS_DATA_KEY (",
        "- PORTCULLIS_TLS_KEY (",
    ] {
        assert!(err.contains(expected), "{expected:?} not in:\n{err}");
    }
}

#[test]
fn check_config_checks_the_policy_the_tls_key_and_the_jwt_keys() {
    let mut bad = offline_env();
    bad.remove("PORTCULLIS_TLS_KEY_FILE");
    bad.insert("PORTCULLIS_TLS_KEY".into(), "not a PEM key".into());
    bad.insert("PORTCULLIS_JWT_KEYS".into(), "k1:c2hvcnQ=".into());
    bad.insert(
        "PORTCULLIS_POLICY".into(),
        r#"{"allowed_hosts": ["localhost"], "rate_limit_mode": "sometimes"}"#.into(),
    );
    let err = assert_fails(&run(&["check-config"], &bad));
    assert!(err.contains("3 problem(s):"), "{err}");
    assert!(err.contains("- PORTCULLIS_POLICY: rate_limit_mode"), "{err}");
    assert!(err.contains("- TLS: PORTCULLIS_TLS_KEY: no PEM private key found"), "{err}");
    assert!(err.contains("- PORTCULLIS_JWT_KEYS: key k1: 5 bytes, at least 32 needed"), "{err}");
    assert!(!err.contains("not a PEM key"), "a secret's value is never echoed:\n{err}");
}

#[test]
fn serve_refuses_to_start_on_bad_settings_secrets_or_addresses() {
    let mut bad_listen = offline_env();
    bad_listen.insert("PORTCULLIS_LISTEN".into(), "localhost".into());
    let err = assert_fails(&run(&["serve"], &bad_listen));
    assert!(err.contains("invalid settings:\n- PORTCULLIS_LISTEN: \"localhost\" is not host:port"), "{err}");

    let mut no_secrets = offline_env();
    no_secrets.remove("PORTCULLIS_DATA_KEY");
    no_secrets.remove("PORTCULLIS_DATABASE_URL");
    let err = assert_fails(&run(&["serve"], &no_secrets));
    assert!(err.contains("secrets:\n- PORTCULLIS_DATABASE_URL ("), "{err}");
    assert!(err.contains("- PORTCULLIS_DATA_KEY ("), "{err}");

    let mut short_key = offline_env();
    short_key.insert("PORTCULLIS_DATA_KEY".into(), "too-short".into());
    let err = assert_fails(&run(&["serve"], &short_key));
    assert!(err.contains("PORTCULLIS_DATA_KEY: at least 16 characters"), "{err}");
    assert!(!err.contains("too-short"), "{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let mut busy = offline_env();
    busy.insert("PORTCULLIS_PLAIN_LISTEN".into(), taken.clone());
    let err = assert_fails(&run(&["serve"], &busy));
    assert!(err.contains(&format!("PORTCULLIS_PLAIN_LISTEN {taken}: ")), "{err}");
}

#[test]
fn commands_and_arguments_are_checked_before_anything_runs() {
    let output = run(&["launch"], &BTreeMap::new());
    assert_eq!(output.status.code(), Some(2), "clap's usage error");
    assert!(stderr(&output).contains("unrecognized subcommand 'launch'"), "{}", stderr(&output));
    let output = run(&["user", "add"], &BTreeMap::new());
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--username <USERNAME>"), "{}", stderr(&output));
}

#[test]
fn user_add_checks_its_input_before_touching_the_database() {
    let none = BTreeMap::new();
    let err = assert_fails(&run_with_stdin(&["user", "add", "--username", ""], &none, "a long enough password\n"));
    assert!(err.contains("--username must be 1 to 128 characters"), "{err}");
    let long = "n".repeat(129);
    let err = assert_fails(&run_with_stdin(&["user", "add", "--username", &long], &none, "a long enough password\n"));
    assert!(err.contains("--username must be 1 to 128 characters"), "{err}");
    let err = assert_fails(&run_with_stdin(&["user", "add", "--username", "shorty"], &none, "short\n"));
    assert!(err.contains("the password (read from standard input) must be 12 to 1024 characters"), "{err}");
    let err = assert_fails(&run_with_stdin(&["user", "add", "--username", "nodb"], &none, "a long enough password\n"));
    assert!(err.contains("secrets:\n- PORTCULLIS_DATABASE_URL ("), "{err}");
}

#[test]
fn migrate_applies_the_migrations_as_the_owner() {
    let err = assert_fails(&run(&["migrate"], &BTreeMap::new()));
    assert!(err.contains("PORTCULLIS_MIGRATION_DATABASE_URL (PostgreSQL URL of the owner role"), "{err}");

    let db = support::database();
    let output = run(&["migrate"], &env(&[("PORTCULLIS_MIGRATION_DATABASE_URL", &db.owner_url)]));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "migrations applied\n", "already applied: running again is harmless");

    // The app role may not run DDL, so it cannot migrate.
    let err = assert_fails(&run(&["migrate"], &env(&[("PORTCULLIS_MIGRATION_DATABASE_URL", &db.app_url)])));
    assert!(err.contains("permission denied") || err.contains("must be owner"), "{err}");
}

/// `serve` started in the background; its JSON log lines arrive on `lines`.
struct Served {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Served {
    fn start(env: &BTreeMap<String, String>) -> Self {
        let mut child = origin(&["serve"], env).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, lines }
    }

    /// The first log line whose message is `message`.
    fn log(&self, message: &str) -> Value {
        loop {
            let line = self.lines.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|e| {
                panic!("no {message:?} log line from serve ({e})");
            });
            let parsed: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            if parsed["fields"]["message"] == message {
                return parsed;
            }
        }
    }

    /// SIGTERM, then the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -TERM");
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!("serve did not stop within 30 s of SIGTERM");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test]
async fn a_user_added_on_the_command_line_logs_in_to_the_served_api_until_sigterm() {
    let db = support::database();
    let username = format!("cli-{}", Uuid::new_v4().simple());
    let password = "a passphrase typed on stdin";
    let db_only = env(&[("PORTCULLIS_DATABASE_URL", &db.app_url)]);
    let added = run_with_stdin(&["user", "add", "--username", &username], &db_only, &format!("{password}\r\n"));
    assert!(added.status.success(), "{}", stderr(&added));
    assert!(stdout(&added).starts_with(&format!("created user {username} (")), "{}", stdout(&added));
    let again = run_with_stdin(&["user", "add", "--username", &username], &db_only, &format!("{password}\n"));
    assert!(assert_fails(&again).contains(&format!("a user named {username:?} already exists")));

    let mut env = support::serve_env(&db);
    env.insert("PORTCULLIS_LOG".into(), "info".into());
    // The engine is configured, so a job fails fetching its media (`.invalid` never resolves)
    // rather than for want of an engine.
    env.insert("PORTCULLIS_STT_URL".into(), "http://127.0.0.1:9".into());
    let served = Served::start(&env);
    let address: std::net::SocketAddr = served.log("serving")["fields"]["address"].as_str().unwrap().parse().unwrap();
    let client = support::client(address, None);
    let url = |path: &str| format!("https://localhost:{}{path}", address.port());

    let login =
        client.post(url("/api/v1/auth/login")).json(&json!({"username": username, "password": password})).send();
    let login = login.await.unwrap();
    assert_eq!(login.status(), 200, "the password read from stdin, without its line ending");
    let token = login.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    let health = client.get(url("/api/v1/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let job: Value = client
        .post(url("/api/v1/transcribe"))
        .bearer_auth(&token)
        .json(&json!({"source_url": "https://media.invalid/unreachable.mp3"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let path = url(&format!("/api/v1/jobs/{}", job["id"].as_str().unwrap()));
    let mut last = Value::Null;
    for _ in 0..200 {
        last = client.get(&path).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        if last["status"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last["status"], "failed", "{last}");
    // The owner reads the class of the failure, never the URL or the resolver's words.
    assert_eq!(last["error"], "the media could not be fetched: its host could not be reached", "{last}");

    drop(client);
    let mut served = served;
    let status = served.terminate();
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
    served.log("shutting down: finishing in-flight requests");
}
