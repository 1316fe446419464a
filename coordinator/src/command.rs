//! The coordinator as a command: `tidemark-coordinator`, and `tidemark coordinator` (the
//! same flags; one binary for a container image).

use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::cluster::Cluster;
use crate::config::{InternalSecret, ServeArgs, WorkerAddresses};

/// The coordinator's flags.
#[derive(Clone, Debug, Args)]
pub struct CoordinatorArgs {
    /// The public server.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// The worker processes.
    #[command(flatten)]
    pub workers: WorkerAddresses,
    /// How long to wait for the worker processes at start (seconds).
    #[arg(long, env = "TIDEMARK_CONNECT_TIMEOUT", default_value_t = 60)]
    pub connect_timeout: u64,
    /// The internal port's shared secret.
    #[command(flatten)]
    pub secret: InternalSecret,
}

/// Connects to every worker process and serves the public API until SIGTERM or Ctrl-C.
/// The ports are bound first, so a port in use fails at once; the public port answers
/// (health included) only once every worker process has said hello.
pub async fn run(args: CoordinatorArgs) -> anyhow::Result<()> {
    let options = args.serve.options()?;
    let workers = args.workers.resolve()?;
    eprintln!(
        "tidemark coordinator: public gRPC on {} ({}); metrics on http://{}/metrics; worker processes {}",
        args.serve.listen,
        ServeArgs::describe_security(&options),
        args.serve.metrics_listen,
        workers.join(", ")
    );
    let listener = tokio::net::TcpListener::bind(args.serve.listen).await.with_context(|| format!("binding {}", args.serve.listen))?;
    let metrics = tokio::net::TcpListener::bind(args.serve.metrics_listen).await.with_context(|| format!("binding {}", args.serve.metrics_listen))?;
    eprintln!("listening on {} (metrics {})", listener.local_addr()?, metrics.local_addr()?);
    let cluster = Cluster::connect(workers, Duration::from_secs(args.connect_timeout), args.secret.load()?).await?;
    eprintln!("connected to every worker process");
    crate::run(listener, Some(metrics), cluster, options, shutdown_signal()).await?;
    eprintln!("stopped");
    Ok(())
}

/// How long a process takes to stop gracefully after SIGTERM before it simply exits.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Resolves on SIGTERM or Ctrl-C, and from then on makes sure the process ends: it exits
/// on its own after [`STOP_GRACE`] if the graceful stop has not finished (a peer that
/// stays connected, or timely waiting for a peer process, must not keep it alive), or at
/// once on a second signal. Nothing acknowledged is lost by that: acknowledged events are
/// already durable.
pub async fn shutdown_signal() {
    signal().await;
    exit_after_grace();
}

/// From now on, the process ends within [`STOP_GRACE`], or at once on a signal.
pub fn exit_after_grace() {
    std::thread::Builder::new()
        .name("stop-deadline".into())
        .spawn(|| {
            std::thread::sleep(STOP_GRACE);
            eprintln!("did not stop within {STOP_GRACE:?}; exiting");
            std::process::exit(0);
        })
        .expect("starting a thread");
    tokio::spawn(async {
        signal().await;
        eprintln!("a second signal: exiting now");
        std::process::exit(0);
    });
}

/// Resolves on SIGTERM or Ctrl-C.
async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
