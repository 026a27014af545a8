//! `portcullis-origin`: the API server and its administrative commands.

use std::io::BufRead;

use clap::{Parser, Subcommand};
use portcullis_origin::auth::Passwords;
use portcullis_origin::configuration::Settings;
use portcullis_origin::domain::{Password, Username};
use portcullis_origin::secrets::{self, ProcessEnvironment, Secrets};
use portcullis_origin::startup::{self, Application};
use portcullis_origin::store::users;
use portcullis_origin::{db, telemetry};
use secrecy::ExposeSecret;

#[derive(Parser)]
#[command(name = "portcullis-origin", version, about = "The Portcullis origin API server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API over TLS until SIGTERM or Ctrl-C.
    Serve,
    /// Apply the database migrations as the owner role (PORTCULLIS_MIGRATION_DATABASE_URL).
    Migrate,
    /// Manage users.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Validate settings and secrets, naming every problem; exits non-zero if any.
    CheckConfig,
}

#[derive(Subcommand)]
enum UserAction {
    /// Create a user; the password is read from standard input (one line).
    Add {
        #[arg(long)]
        username: String,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve => serve().await,
        Command::Migrate => migrate().await,
        Command::User { action: UserAction::Add { username } } => add_user(username).await,
        Command::CheckConfig => check_config().await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("portcullis-origin: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn settings() -> anyhow::Result<Settings> {
    Settings::from_env(&ProcessEnvironment).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| format!("- {e}")).collect();
        anyhow::anyhow!("invalid settings:\n{}", lines.join("\n"))
    })
}

async fn serve() -> anyhow::Result<()> {
    telemetry::init();
    let settings = settings()?;
    let secrets =
        Secrets::load(&secrets::SERVE, &ProcessEnvironment).await.map_err(|e| anyhow::anyhow!("secrets:\n{e}"))?;
    let app = Application::build(settings, &secrets).await.map_err(|e| anyhow::anyhow!(e))?;
    tracing::info!(address = %app.local_addr()?, "serving");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(app.serve(stopped));
    startup::shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = stop.send(true);
    let _ = server.await;
    Ok(())
}

async fn migrate() -> anyhow::Result<()> {
    let secrets =
        Secrets::load(&secrets::MIGRATE, &ProcessEnvironment).await.map_err(|e| anyhow::anyhow!("secrets:\n{e}"))?;
    let url = secrets
        .get(secrets::MIGRATION_DATABASE_URL)
        .ok_or_else(|| anyhow::anyhow!("{} was not loaded", secrets::MIGRATION_DATABASE_URL.name))?;
    let pool = db::connect(url.expose_secret(), 1).await?;
    db::MIGRATOR.run(&pool).await?;
    println!("migrations applied");
    Ok(())
}

async fn add_user(username: String) -> anyhow::Result<()> {
    let username = Username::parse(username).map_err(|e| anyhow::anyhow!("--username {e}"))?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let password = Password::parse_new(line.trim_end_matches(['\r', '\n']).to_owned())
        .map_err(|e| anyhow::anyhow!("the password (read from standard input) {e}"))?;
    let secrets = Secrets::load(&[secrets::DATABASE_URL], &ProcessEnvironment)
        .await
        .map_err(|e| anyhow::anyhow!("secrets:\n{e}"))?;
    let url = secrets.get(secrets::DATABASE_URL).ok_or_else(|| anyhow::anyhow!("database URL not loaded"))?;
    let hash = Passwords::hash(password).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let pool = db::connect(url.expose_secret(), 1).await?;
    match users::create(&pool, &username, &hash).await.map_err(|e| anyhow::anyhow!("{e}"))? {
        Some(id) => println!("created user {} ({id})", username.as_str()),
        None => anyhow::bail!("a user named {:?} already exists", username.as_str()),
    }
    Ok(())
}

async fn check_config() -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let settings = match Settings::from_env(&ProcessEnvironment) {
        Ok(settings) => Some(settings),
        Err(errors) => {
            problems.extend(errors.iter().map(ToString::to_string));
            None
        }
    };
    let secrets = match Secrets::load(&secrets::SERVE, &ProcessEnvironment).await {
        Ok(secrets) => Some(secrets),
        Err(err) => {
            problems.extend(err.to_string().lines().map(|l| l.trim_start_matches("- ").to_owned()));
            None
        }
    };
    if let Some(settings) = &settings {
        if let Err(err) = Application::edge(settings) {
            problems.push(err);
        }
        if let Some(secrets) = &secrets {
            if let Some(key) = secrets.get(secrets::TLS_KEY)
                && let Err(err) =
                    portcullis_origin::tls::server_config(&settings.tls_cert, key, settings.client_ca.as_deref())
            {
                problems.push(format!("TLS: {err}"));
            }
            if let Some(keys) = secrets.get(secrets::JWT_KEYS)
                && let Err(err) =
                    portcullis_origin::auth::JwtKeys::parse(keys, &settings.jwt_issuer, &settings.jwt_audience)
            {
                problems.push(format!("{}: {err}", secrets::JWT_KEYS.name));
            }
        }
    }
    if problems.is_empty() {
        println!("configuration OK");
        Ok(())
    } else {
        anyhow::bail!(
            "{} problem(s):\n{}",
            problems.len(),
            problems.iter().map(|p| format!("- {p}")).collect::<Vec<_>>().join("\n")
        )
    }
}
