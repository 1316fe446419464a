//! `tidemark`: the command-line entry point.

use clap::{Parser, Subcommand};
use tidemark_worker::config::RunArgs;

/// Tidemark: incremental e-commerce analytics on differential dataflow.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a worker process: generated traffic (the default) or a file replay, every view
    /// maintained incrementally, with a live summary.
    Run(RunArgs),
    /// Run one process of a serving cluster: views fed by the coordinator's Ingest,
    /// served to it over the internal gRPC protocol.
    Worker(tidemark_worker::serve::WorkerArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TIDEMARK_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run(args) => {
            tidemark_worker::driver::run(args)?;
            // Workers are parked waiting for this; future expiries need no draining.
            std::process::exit(0)
        }
        Command::Worker(args) => {
            tidemark_worker::serve::run(args)?;
            std::process::exit(0)
        }
    }
}
