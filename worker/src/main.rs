//! `tidemark`: the command-line entry point, a thin shell over the crates.

use clap::{Parser, Subcommand};
use tidemark_worker::cli;
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
    /// Start the whole system on the embedded default: a worker process (several threads,
    /// the built-in generator) and the coordinator serving the public gRPC API.
    Up(tidemark_worker::up::UpArgs),
    /// Run the engine alone over generated traffic or a file replay, with a live summary
    /// (no server): for benchmarks, replays and exports.
    Run(RunArgs),
    /// Write generated traffic to a file of JSON lines (and its fraud labels to a CSV).
    Generate(tidemark_worker::generate::GenerateArgs),
    /// Write generated traffic or a file's lines into a Kafka topic at a given rate.
    Produce(tidemark_worker::produce::ProduceArgs),
    /// Run one process of a serving cluster: views fed by the coordinator's Ingest (and
    /// optionally the generator), served to it over the internal gRPC protocol.
    Worker(tidemark_worker::serve::WorkerArgs),
    /// Run the coordinator: the public gRPC API over the worker processes (the same
    /// command as `tidemark-coordinator`).
    Coordinator(tidemark_coordinator::command::CoordinatorArgs),
    /// List the views, their columns and keys.
    Views(cli::InfoArgs),
    /// Read a view at one consistent time.
    Query(cli::QueryArgs),
    /// Stream a view's contents and then every change.
    Subscribe(cli::SubscribeArgs),
    /// Workers, frontiers, lag, view sizes and rejects.
    Status(cli::InfoArgs),
    /// Send a file of JSON events (or standard input) to a running server over Ingest.
    Ingest(tidemark_worker::ingest::IngestArgs),
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    // Timely workers may be parked waiting for this; nothing is left to drain.
    std::process::exit(0)
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TIDEMARK_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Up(args) => tidemark_worker::up::run(args),
        Command::Run(args) => tidemark_worker::driver::run(args),
        Command::Worker(args) => tidemark_worker::serve::run(args),
        Command::Coordinator(args) => tokio::runtime::Runtime::new()?.block_on(tidemark_coordinator::command::run(args)),
        Command::Generate(args) => tidemark_worker::generate::run(args),
        Command::Produce(args) => tidemark_worker::produce::run(args),
        Command::Views(args) => client_runtime()?.block_on(cli::views(args)),
        Command::Query(args) => client_runtime()?.block_on(cli::query(args)),
        Command::Subscribe(args) => client_runtime()?.block_on(cli::subscribe(args)),
        Command::Status(args) => client_runtime()?.block_on(cli::status(args)),
        Command::Ingest(args) => client_runtime()?.block_on(tidemark_worker::ingest::run(args)),
    }
}
