//! `portcullis-origin`: the API server and its administrative commands.

use clap::{Parser, Subcommand};
use portcullis_origin::secrets::{self, ProcessEnvironment, Secrets};
use secrecy::ExposeSecret;

#[derive(Parser)]
#[command(name = "portcullis-origin", version, about = "The Portcullis origin API server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the database migrations as the owner role (PORTCULLIS_MIGRATION_DATABASE_URL).
    Migrate,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Migrate => migrate().await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("portcullis-origin: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn migrate() -> anyhow::Result<()> {
    let secrets = Secrets::load(&secrets::MIGRATE, &ProcessEnvironment).await?;
    let url = secrets
        .get(secrets::MIGRATION_DATABASE_URL)
        .ok_or_else(|| anyhow::anyhow!("{} was not loaded", secrets::MIGRATION_DATABASE_URL.name))?;
    let pool = portcullis_origin::db::connect(url.expose_secret(), 1).await?;
    portcullis_origin::db::MIGRATOR.run(&pool).await?;
    println!("migrations applied");
    Ok(())
}
