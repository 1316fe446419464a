//! `tidemark-coordinator`: the public gRPC API over a cluster of worker processes
//! (`tidemark coordinator` is the same command inside the `tidemark` binary).

use clap::Parser;
use tidemark_coordinator::command::CoordinatorArgs;

/// The Tidemark coordinator: the public gRPC API over a cluster of worker processes.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    args: CoordinatorArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TIDEMARK_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    tidemark_coordinator::command::run(Cli::parse().args).await
}
