//! `tidemark-coordinator`: parses the configuration, connects to the worker processes,
//! and serves the public API until SIGTERM or Ctrl-C.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tidemark_coordinator::cluster::Cluster;
use tidemark_coordinator::config::{InternalSecret, ServeArgs};

/// The Tidemark coordinator: the public gRPC API over a cluster of worker processes.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
    /// Comma-separated internal gRPC addresses of every worker process, in process order.
    #[arg(long, env = "TIDEMARK_WORKER_ADDRESSES", value_delimiter = ',', required = true)]
    workers: Vec<String>,
    /// How long to wait for the worker processes at start (seconds).
    #[arg(long, env = "TIDEMARK_CONNECT_TIMEOUT", default_value_t = 60)]
    connect_timeout: u64,
    #[command(flatten)]
    secret: InternalSecret,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TIDEMARK_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let options = args.serve.options()?;
    eprintln!(
        "tidemark coordinator: public gRPC on {} ({}); metrics on http://{}/metrics; worker processes {}",
        args.serve.listen,
        ServeArgs::describe_security(&options),
        args.serve.metrics_listen,
        args.workers.join(", ")
    );
    let listener = tokio::net::TcpListener::bind(args.serve.listen).await.with_context(|| format!("binding {}", args.serve.listen))?;
    let metrics = tokio::net::TcpListener::bind(args.serve.metrics_listen).await.with_context(|| format!("binding {}", args.serve.metrics_listen))?;
    eprintln!("listening on {} (metrics {})", listener.local_addr()?, metrics.local_addr()?);
    let cluster = Cluster::connect(args.workers, Duration::from_secs(args.connect_timeout), args.secret.load()?).await?;
    eprintln!("connected to every worker process");
    tidemark_coordinator::run(listener, Some(metrics), cluster, options, shutdown()).await?;
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
