//! `cargo xtask`: one entry point for setting up a machine, testing and benchmarking Portcullis.

mod api_fuzz;
mod bench;
mod bench_envoy;
mod bench_fleet;
mod bench_origin;
mod compose;
mod compose_test;
mod coverage;
mod db;
mod e2e;
mod envoy;
mod fleet;
mod fuzz;
mod load;
mod observatory;
mod setup;
mod stage;
mod test;
#[cfg(test)]
mod tidy;
mod tools;
mod up;
mod worker;

use clap::{Parser, Subcommand};
use portcullis_devenv::certs;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Set up, test and benchmark Portcullis")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the tests need (idempotent; quiet when everything is present).
    Setup,
    /// Run the whole stack locally: PostgreSQL, the origin, Envoy (Ctrl-C stops it).
    Up {
        /// Also run the Cloudflare Worker under `wrangler dev` on https://127.0.0.1:8787.
        #[arg(long)]
        worker: bool,
        /// Run Envoy's filter with this policy (a JSON file) instead of the one in envoy.yaml.
        #[arg(long, value_name = "FILE")]
        policy: Option<std::path::PathBuf>,
        /// A fleet: three Envoys (:8443/:8444/:8445) counting one limit in Redis (:56379)
        /// through portcullis-ratelimit (:8089), in front of the one origin.
        #[arg(long)]
        fleet: bool,
    },
    /// Write the secret files docker-compose.yml mounts (made once, reused) and build the filter.
    ComposeSecrets,
    /// Run every test of the project.
    Test {
        /// Leave out the `docker compose up` stage (it needs a Docker engine; `compose-test` runs it alone).
        #[arg(long)]
        skip_compose: bool,
    },
    /// `docker compose up --build` on a real Docker engine (started if none runs), checked through
    /// its published ports, then `docker compose down -v`.
    ComposeTest,
    /// Line coverage of the core, the filter (natively) and the origin (cargo-llvm-cov), with their bars.
    Coverage,
    /// schemathesis (all checks) against the API through Envoy, on a stack started for the run.
    ApiFuzz,
    /// Fuzz the core's input surfaces (libFuzzer), each target for the given seconds.
    Fuzz {
        #[arg(long, default_value_t = 300)]
        seconds: u32,
    },
    /// Formatting and clippy, as CI runs them.
    Lint,
    /// The hardened dev PostgreSQL on 127.0.0.1:55432: start, stop, reset or psql.
    Db {
        #[arg(value_parser = ["start", "stop", "reset", "psql"])]
        action: String,
    },
    /// Run benchmarks and print their results as a table.
    Bench {
        /// Which benchmarks: `core`, `envoy`, `worker`, `origin`, `fleet`, `coverage`, or `all`.
        #[arg(default_value = "all")]
        suite: bench::Suite,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Up { worker, policy, fleet } => up::run(up::Options { worker, policy, fleet }),
        Command::ComposeSecrets => setup::stack(setup::Stack::default()).and_then(|()| compose::secrets()),
        Command::Test { skip_compose } => setup::run().and_then(|()| test::run(skip_compose)),
        Command::ComposeTest => setup::run().and_then(|()| compose_test::run()),
        Command::Lint => test::lint(),
        Command::Coverage => setup::run().and_then(|()| coverage::run()).map(|rows| {
            for (name, value) in rows {
                println!("| {name} | {value} |");
            }
        }),
        Command::ApiFuzz => setup::run().and_then(|()| api_fuzz::run()),
        Command::Fuzz { seconds } => setup::run().and_then(|()| fuzz::run(seconds)),
        Command::Db { action } => setup::stack(setup::Stack::default()).and_then(|()| db::command(&action)),
        Command::Bench { suite } => setup::run().and_then(|()| bench::run(suite)),
    };
    if let Err(err) = result {
        eprintln!("\nxtask failed: {err:#}");
        std::process::exit(1);
    }
}
