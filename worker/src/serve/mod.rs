//! `tidemark worker`: a long-running member of a serving cluster.
//!
//! One process runs N timely worker threads (all processes together form one timely
//! cluster) and a gRPC server speaking the internal protocol (`tidemark.internal.v1`) to
//! the coordinator. Input comes from the coordinator's `Ingest`; ingestion times are the
//! wall clock on a tick, so every process advances time alike.
//!
//! - [`schema`]: the views' columns, keys and rows as the API shows them.
//! - [`filter`]: which rows a peek or subscription selects.
//! - [`compute`]: what a worker thread holds and answers.
//! - [`thread`]: a worker thread's loop.
//! - [`server`]: the process's gRPC service, merging its threads' answers.

pub mod compute;
pub mod filter;
pub mod schema;
pub mod server;
pub mod thread;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::Args;
use tidemark_proto::internal::v1::worker_server::WorkerServer;

use self::server::{Shape, WorkerService};
use crate::config::{check_view_flags, view_config, ClusterFlags};
use self::thread::ThreadContext;

/// Commands buffered per worker thread.
const THREAD_COMMANDS: usize = 1024;
/// Replies buffered from all threads to the server.
const THREAD_REPLIES: usize = 4096;

/// `tidemark worker`: one process of a serving cluster.
#[derive(Clone, Debug, Args)]
pub struct WorkerArgs {
    /// Worker threads in this process.
    #[arg(long, short = 'w', env = "TIDEMARK_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// Number of worker processes in the cluster.
    #[arg(long, env = "TIDEMARK_PROCESSES", default_value_t = 1)]
    pub processes: usize,
    /// Index of this process (0-based). Without it, taken from the host name's trailing
    /// `-<n>` (a StatefulSet pod `tidemark-worker-3` is process 3), else 0.
    #[arg(long, env = "TIDEMARK_PROCESS")]
    pub process: Option<usize>,
    /// Comma-separated `host:port` timely addresses of every process, in process order.
    #[arg(long, env = "TIDEMARK_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// File with one `host:port` per line, in process order (instead of `--peers`).
    #[arg(long, env = "TIDEMARK_HOSTFILE")]
    pub hostfile: Option<PathBuf>,
    /// Address of the internal gRPC server the coordinator connects to.
    #[arg(long, env = "TIDEMARK_LISTEN", default_value = "127.0.0.1:6880")]
    pub listen: SocketAddr,
    /// Retention horizon in hours.
    #[arg(long, env = "TIDEMARK_RETENTION_HOURS", default_value_t = 168)]
    pub retention_hours: u64,
    /// Ingestion tick in milliseconds.
    #[arg(long, env = "TIDEMARK_TICK_MS", default_value_t = 10)]
    pub tick_ms: u64,
    /// How far behind the frontier (ms) queries and subscriptions may start.
    #[arg(long, env = "TIDEMARK_HISTORY_MS", default_value_t = 60_000)]
    pub history_ms: u64,
}

impl WorkerArgs {
    /// This process's index: the flag, else the host name's ordinal, else 0.
    pub fn process_index(&self) -> usize {
        self.process.or_else(|| ordinal(&std::env::var("HOSTNAME").unwrap_or_default())).unwrap_or(0)
    }

    /// The cluster shape these flags give.
    pub fn cluster(&self) -> ClusterFlags<'_> {
        ClusterFlags { workers: self.workers, processes: self.processes, process: self.process_index(), peers: &self.peers, hostfile: self.hostfile.as_deref() }
    }

    /// Every problem with the configuration, or nothing.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        self.cluster().check(&mut problems);
        check_view_flags(self.tick_ms, self.retention_hours, &mut problems);
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }
}

/// The trailing `-<n>` of a host name.
pub fn ordinal(hostname: &str) -> Option<usize> {
    hostname.rsplit_once('-').and_then(|(_, n)| n.parse().ok())
}

/// Runs the process until SIGTERM or Ctrl-C.
pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    if let Err(problems) = args.validate() {
        anyhow::bail!("invalid configuration:\n  {}", problems.join("\n  "));
    }
    let process = args.process_index();
    eprintln!(
        "tidemark worker: process {process}/{} with {} threads; internal gRPC on {}; retention {} h, tick {} ms, history {} ms",
        args.processes, args.workers, args.listen, args.retention_hours, args.tick_ms, args.history_ms
    );
    let communication = args.cluster().communication()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (reply_tx, reply_rx) = tokio::sync::mpsc::channel(THREAD_REPLIES);
    let (command_txs, command_rxs): (Vec<_>, Vec<_>) = (0..args.workers).map(|_| sync_channel(THREAD_COMMANDS)).unzip();
    let command_rxs: Arc<Mutex<Vec<Option<_>>>> = Arc::new(Mutex::new(command_rxs.into_iter().map(Some).collect()));

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(args.listen)).with_context(|| format!("binding {}", args.listen))?;
    eprintln!("listening on {}", listener.local_addr()?);

    let cluster = {
        let (stop, config, threads, history_ms) = (stop.clone(), view_config(args.tick_ms, args.retention_hours), args.workers, args.history_ms);
        let timely_config = timely::Config { communication, worker: timely::WorkerConfig::default() };
        std::thread::Builder::new().name("timely".into()).spawn(move || {
            timely::execute(timely_config, move |worker| {
                let local = worker.index() % threads;
                let commands = command_rxs.lock().expect("no panics while taking a receiver")[local].take().expect("each thread takes its own receiver");
                let ctx = ThreadContext { config: config.clone(), history_ms, threads, commands, replies: reply_tx.clone(), stop: stop.clone() };
                thread::run(worker, ctx);
            })
            .map(|guards| drop(guards.join()))
            .map_err(|e| anyhow::anyhow!("starting timely: {e}"))
        })?
    };

    let shape = Shape { process, processes: args.processes, threads: args.workers };
    let decode = view_config(args.tick_ms, args.retention_hours).decode;
    let stop_server = stop.clone();
    runtime.block_on(async move {
        let service = WorkerService::new(shape, schema::schemas(), command_txs, decode, reply_rx);
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tonic::transport::Server::builder()
            .add_service(WorkerServer::new(service))
            .serve_with_incoming_shutdown(incoming, shutdown_signal())
            .await
    })?;
    stop_server.store(true, Ordering::SeqCst);
    runtime.shutdown_background();
    cluster.join().map_err(|_| anyhow::anyhow!("a worker thread panicked"))??;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
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

#[cfg(test)]
mod tests {
    use super::ordinal;

    #[test]
    fn statefulset_ordinals() {
        assert_eq!(ordinal("tidemark-worker-3"), Some(3));
        assert_eq!(ordinal("tidemark-worker"), None);
        assert_eq!(ordinal(""), None);
    }
}
