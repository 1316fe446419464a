//! `tidemark-coordinator`: parses the configuration, connects to the worker processes,
//! and serves the public API until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tidemark_coordinator::cluster::Cluster;

/// The Tidemark coordinator: the public gRPC API over a cluster of worker processes.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address of the public gRPC server.
    #[arg(long, env = "TIDEMARK_COORDINATOR_LISTEN", default_value = "127.0.0.1:6875")]
    listen: SocketAddr,
    /// Comma-separated internal gRPC addresses of every worker process, in process order.
    #[arg(long, env = "TIDEMARK_WORKER_ADDRESSES", value_delimiter = ',', required = true)]
    workers: Vec<String>,
    /// How long to wait for the worker processes at start (seconds).
    #[arg(long, env = "TIDEMARK_CONNECT_TIMEOUT", default_value_t = 60)]
    connect_timeout: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TIDEMARK_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    eprintln!("tidemark coordinator: public gRPC on {}; worker processes {}", args.listen, args.workers.join(", "));
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    eprintln!("listening on {}", listener.local_addr()?);
    let cluster = Cluster::connect(args.workers, Duration::from_secs(args.connect_timeout)).await?;
    eprintln!("connected to every worker process");
    tidemark_coordinator::run(listener, cluster, shutdown()).await?;
    eprintln!("stopped");
    Ok(())
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
