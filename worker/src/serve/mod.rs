//! `tidemark worker`: a long-running member of a serving cluster.
//!
//! One process runs N timely worker threads (all processes together form one timely
//! cluster) and a gRPC server speaking the internal protocol (`tidemark.internal.v1`) to
//! the coordinator. Input comes from the coordinator's `Ingest` and, with `--generate`,
//! from the built-in generator (every thread of the cluster makes its part of the
//! traffic); ingestion times are the wall clock on a tick, so every process advances time
//! alike.
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

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::Args;
use prometheus_client::metrics::counter::Counter;
use tidemark_coordinator::config::{AddressMap, InternalSecret};
pub use tidemark_coordinator::command::shutdown_signal;
use tidemark_proto::internal::v1::worker_server::WorkerServer;
use tidemark_proto::limits::INTERNAL_MAX_MESSAGE_BYTES;
use tonic::service::interceptor::InterceptedService;

use self::server::{Shape, WorkerService};
use crate::config::{check_view_flags, view_config, ClusterFlags, ClvFlags, FraudFlags, GeneratorFlags};
use crate::kafka::{KafkaCounters, KafkaFlags};
use crate::log::{IngestLog, LogFlags};
use crate::sink::postgres::PostgresFlags;
use tidemark_dataflows::views::ViewConfig;
use crate::source::now_ms;
use self::thread::{ExportPlan, ThreadContext};

/// Commands buffered per worker thread.
const THREAD_COMMANDS: usize = 1024;
/// Replies buffered from all threads to the server.
const THREAD_REPLIES: usize = 4096;

/// The view settings of a serving process (`tidemark worker` and `tidemark up`).
#[derive(Clone, Debug, Args)]
pub struct ServedViewFlags {
    /// Retention horizon in hours.
    #[arg(long, env = "TIDEMARK_RETENTION_HOURS", default_value_t = 168)]
    pub retention_hours: u64,
    /// Ingestion tick in milliseconds.
    #[arg(long, env = "TIDEMARK_TICK_MS", default_value_t = 10)]
    pub tick_ms: u64,
    /// How far behind the frontier (ms) queries and subscriptions may start.
    #[arg(long, env = "TIDEMARK_HISTORY_MS", default_value_t = 60_000)]
    pub history_ms: u64,
    /// Settings of the CLV views.
    #[command(flatten)]
    pub clv: ClvFlags,
    /// Settings of the fraud views.
    #[command(flatten)]
    pub fraud: FraudFlags,
}

impl ServedViewFlags {
    /// The dataflows' settings.
    pub fn view_config(&self) -> anyhow::Result<ViewConfig> {
        view_config(self.tick_ms, self.retention_hours, &self.clv, &self.fraud)
    }
}

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
    /// The timely address of process `{i}`, for every process below `--processes`
    /// (instead of `--peers`), e.g. `tidemark-worker-{i}.tidemark-worker:7100`.
    #[arg(long, env = "TIDEMARK_PEER_TEMPLATE", conflicts_with_all = ["peers", "hostfile"])]
    pub peer_template: Option<String>,
    /// Addresses used in place of others (the peers').
    #[command(flatten)]
    pub address_map: AddressMap,
    /// Address of the internal gRPC server the coordinator connects to.
    #[arg(long, env = "TIDEMARK_LISTEN", default_value = "127.0.0.1:6880")]
    pub listen: SocketAddr,
    /// Retention, tick and readable history.
    #[command(flatten)]
    pub views: ServedViewFlags,
    /// Feed the views from the built-in generator too (live, paced to the wall clock;
    /// every process of the cluster must be given the same generator flags).
    #[arg(long, env = "TIDEMARK_GENERATE")]
    pub generate: bool,
    /// The generator's traffic, with `--generate`.
    #[command(flatten)]
    pub generator: GeneratorFlags,
    /// Address of this process's Prometheus metrics endpoint (`GET /metrics`), if any.
    #[arg(long, env = "TIDEMARK_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// The secret a coordinator must present on the internal port.
    #[command(flatten)]
    pub secret: InternalSecret,
    /// Read the events from a Kafka topic (every process must get the same flags).
    #[command(flatten)]
    pub kafka: KafkaFlags,
    /// Mirror views into PostgreSQL (written by process 0; every process must get the
    /// same flags).
    #[command(flatten)]
    pub postgres: PostgresFlags,
    /// Where the ingest log is kept.
    #[command(flatten)]
    pub log: LogFlags,
}

impl WorkerArgs {
    /// This process's index: the flag, else the host name's ordinal, else 0.
    pub fn process_index(&self) -> usize {
        self.process.or_else(|| ordinal(&std::env::var("HOSTNAME").unwrap_or_default())).unwrap_or(0)
    }

    /// The cluster shape these flags give.
    pub fn cluster(&self) -> ClusterFlags<'_> {
        ClusterFlags {
            workers: self.workers,
            processes: self.processes,
            process: self.process_index(),
            peers: &self.peers,
            hostfile: self.hostfile.as_deref(),
            peer_template: self.peer_template.as_deref(),
            address_map: Some(&self.address_map),
        }
    }

    /// Every problem with the configuration, or nothing.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        self.cluster().check(&mut problems);
        check_view_flags(self.views.tick_ms, self.views.retention_hours, &mut problems);
        self.views.clv.check(&mut problems);
        self.views.fraud.check(&mut problems);
        if self.generate {
            self.generator.check(&mut problems);
        }
        if self.kafka.enabled() {
            self.kafka.connect.check(&mut problems);
            if self.generate {
                problems.push("--generate feeds the views directly, and a restart would not replay it: with --kafka-brokers, write the traffic into the topic (tidemark produce)".to_owned());
            }
        }
        if let Err(e) = self.postgres.config() {
            problems.push(format!("{e:#}"));
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    /// A one-line description of the effective configuration.
    pub fn describe(&self) -> String {
        let source = if self.kafka.enabled() {
            format!("Kafka topic {} at {} and Ingest", self.kafka.connect.kafka_topic, self.kafka.connect.kafka_brokers.as_deref().unwrap_or_default())
        } else if self.generate {
            format!("generator at {} events/s (seed {}) and Ingest", self.generator.rate, self.generator.seed)
        } else {
            "Ingest only".to_owned()
        };
        let source = match &self.postgres.postgres_url {
            Some(_) if self.process_index() == 0 => format!("{source}; views mirrored to PostgreSQL"),
            _ => source,
        };
        format!(
            "tidemark worker: process {}/{} with {} threads; {source}; internal gRPC on {}; retention {} h, tick {} ms, history {} ms",
            self.process_index(),
            self.processes,
            self.workers,
            self.listen,
            self.views.retention_hours,
            self.views.tick_ms,
            self.views.history_ms
        )
    }
}

/// The trailing `-<n>` of a host name.
pub fn ordinal(hostname: &str) -> Option<usize> {
    hostname.rsplit_once('-').and_then(|(_, n)| n.parse().ok())
}

/// Runs the process until SIGTERM or Ctrl-C.
///
/// A cluster is one failure domain: a panic anywhere in the process (timely's network
/// threads panic when a peer process goes away) ends the process with exit code 70, so
/// that whatever supervises the pool restarts it, and every process rehydrates.
pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // A peer process gone is the expected way for this process to end: said in one
        // line and at once (the default hook may first resolve a backtrace, which takes
        // seconds in a large binary, and the process would go on serving meanwhile).
        let message = info.payload().downcast_ref::<String>().map(String::as_str).or_else(|| info.payload().downcast_ref::<&str>().copied());
        match message {
            Some(m) if m.starts_with("timely communication error") => eprintln!("error: the connection to a peer process was lost ({m})"),
            _ => default_hook(info),
        }
        eprintln!("error: a thread of this worker process panicked; exiting so that the cluster restarts");
        std::process::exit(70);
    }));
    eprintln!("{}", args.describe());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(args.listen)).with_context(|| format!("binding {}", args.listen))?;
    eprintln!("listening on {}", listener.local_addr()?);
    runtime.block_on(serve(args, listener, shutdown_signal()))?;
    runtime.shutdown_background();
    Ok(())
}

/// Runs the timely threads and serves the internal protocol on `listener` until
/// `shutdown` resolves; then stops the threads. Call it inside a Tokio runtime.
pub async fn serve(args: WorkerArgs, listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if let Err(problems) = args.validate() {
        anyhow::bail!("invalid configuration:\n  {}", problems.join("\n  "));
    }
    let communication = args.cluster().communication()?;
    if let timely::CommunicationConfig::Cluster { addresses, process, .. } = &communication {
        // Timely listens on this process's own address: under a StatefulSet that is a DNS
        // name, which may resolve only moments after the pod starts.
        wait_until_resolvable(&addresses[*process], OWN_ADDRESS_WAIT).await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let ingested = Counter::default();
    let check = args.secret.check()?;
    let metrics_listener = match args.metrics_listen {
        Some(address) => Some(tokio::net::TcpListener::bind(address).await.with_context(|| format!("binding the metrics port {address}"))?),
        None => None,
    };
    let (reply_tx, reply_rx) = tokio::sync::mpsc::channel(THREAD_REPLIES);
    let (command_txs, command_rxs): (Vec<_>, Vec<_>) = (0..args.workers).map(|_| compute::inbox(THREAD_COMMANDS)).unzip();
    let command_rxs: Arc<Mutex<Vec<Option<_>>>> = Arc::new(Mutex::new(command_rxs.into_iter().map(Some).collect()));
    let generator = args.generate.then(|| args.generator.config(args.views.retention_hours, now_ms() as i64));

    let config = args.views.view_config()?;
    let kafka_counters = Arc::new(KafkaCounters::default());
    let kafka = args.kafka.enabled().then(|| args.kafka.clone());
    let sink_config = args.postgres.config()?;
    let process = args.process_index();
    let dead_letter_topic = if args.kafka.enabled() { args.kafka.dead_letter_topic() } else { None };
    let sink = match &sink_config {
        Some(config) if process == 0 => Some(crate::sink::postgres::start(config.clone())),
        _ => None,
    };
    let export = ExportPlan {
        mirrored: sink_config.as_ref().map(|c| c.views.iter().map(|v| schema::schemas()[*v].name).collect()).unwrap_or_default(),
        dead_letter: dead_letter_topic.is_some(),
        feed: sink.as_ref().map(|s| s.feed()),
        dead_letter_topic: dead_letter_topic.map(|topic| (args.kafka.connect.clone(), topic)),
    };
    // The ingest log: opened (and checked) before timely starts, so that every thread
    // replays what it held before taking anything new.
    let log = match args.log.dir(process) {
        Some(dir) => {
            let keep_ms = config.decode.retention_ms + config.decode.max_future_ms + 2 * config.tick_ms;
            let log = IngestLog::open(&dir, args.log.ingest_log_repair, keep_ms).with_context(|| format!("opening the ingest log in {}", dir.display()))?;
            eprintln!("ingest log in {}{}", dir.display(), if log.replay.is_empty() { "" } else { " (replaying it)" });
            Some(log)
        }
        None => None,
    };
    let appender = log.as_ref().map(IngestLog::appender);
    let replay = log.as_ref().map(|l| Arc::new(l.replay.clone()));
    let io_metrics = IoMetrics::new(&kafka_counters, log.as_ref().map(|l| l.counters.clone()));
    // Health on the internal port: the server itself (service "") is SERVING while the
    // process runs (liveness); `tidemark.internal.v1.Worker` turns SERVING once every
    // thread of this process runs in the formed timely cluster (readiness).
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_not_serving::<WorkerServer<WorkerService>>().await;
    let started = Arc::new(tokio::sync::watch::Sender::new(0usize));
    let (mut threads_started, threads) = (started.subscribe(), args.workers);
    let readiness = tokio::spawn(async move {
        if threads_started.wait_for(|n| *n == threads).await.is_ok() {
            reporter.set_serving::<WorkerServer<WorkerService>>().await;
        }
    });
    let cluster = {
        let (stop, ingested, threads, history_ms) = (stop.clone(), ingested.clone(), args.workers, args.views.history_ms);
        let (appender, replay) = (appender.clone(), replay.clone());
        let timely_config = timely::Config { communication, worker: timely::WorkerConfig::default() };
        std::thread::Builder::new().name("timely".into()).spawn(move || {
            timely::execute(timely_config, move |worker| {
                // timely::execute returns only once the processes are connected.
                started.send_modify(|n| *n += 1);
                let local = worker.index() % threads;
                if local == 0 {
                    tracing::info!(processes = worker.peers() / threads, "connected to every process of the cluster");
                }
                let commands = command_rxs.lock().expect("no panics while taking a receiver")[local].take().expect("each thread takes its own receiver");
                let ctx = ThreadContext {
                    config: config.clone(),
                    history_ms,
                    threads,
                    commands,
                    replies: reply_tx.clone(),
                    stop: stop.clone(),
                    generator: generator.clone(),
                    ingested: ingested.clone(),
                    kafka: kafka.clone(),
                    kafka_counters: kafka_counters.clone(),
                    // Only the cluster's first thread writes out what is exported.
                    export: if worker.index() == 0 { export.clone() } else { ExportPlan { feed: None, dead_letter_topic: None, ..export.clone() } },
                    log: appender.clone(),
                    replay: replay.clone(),
                };
                if let Err(e) = thread::run(worker, ctx) {
                    // The cluster cannot go on without this thread's share of the views.
                    eprintln!("error: worker thread {}: {e:#}", worker.index());
                    std::process::exit(1);
                }
            })
            .map(|guards| drop(guards.join()))
            .map_err(|e| -> anyhow::Error {
                // Without its timely threads the process would serve but never become
                // ready: end it, so that whatever supervises the pool restarts it.
                eprintln!("error: starting timely: {e}");
                std::process::exit(70);
            })
        })?
    };

    let shape = Shape { process: args.process_index(), processes: args.processes, threads: args.workers };
    let service = WorkerService::new(shape, schema::schemas(), command_txs, ingested, reply_rx);
    let sink_status = sink.as_ref().map(|s| s.status_handle());
    let metrics_server = metrics_listener.map(|listener| {
        let service = service.clone();
        tidemark_coordinator::metrics::spawn(listener, move || {
            // One exposition: the service's metrics, then the source's and the sink's.
            let mut out = service.render_metrics();
            if out.ends_with("# EOF\n") {
                out.truncate(out.len() - "# EOF\n".len());
            }
            out.push_str(&io_metrics.render(sink_status.as_ref().map(|s| s())));
            out
        })
    });
    let served = tonic::transport::Server::builder()
        // A coordinator that vanished without closing its connection is noticed within
        // seconds, so that the next one can open its session.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(health)
        .add_service(InterceptedService::new(
            WorkerServer::new(service.clone())
                .max_decoding_message_size(INTERNAL_MAX_MESSAGE_BYTES)
                .max_encoding_message_size(INTERNAL_MAX_MESSAGE_BYTES),
            check,
        ))
        .serve_with_incoming_shutdown(tidemark_proto::incoming(listener), async move {
            shutdown.await;
            service.end_session();
        })
        .await;
    stop.store(true, Ordering::SeqCst);
    readiness.abort();
    if let Some(server) = metrics_server {
        server.stop().await?;
    }
    let joined = tokio::task::spawn_blocking(move || cluster.join()).await?;
    drop(appender);
    if let Some(log) = log {
        tokio::task::spawn_blocking(move || log.close()).await?;
    }
    if let Some(sink) = sink {
        tokio::task::spawn_blocking(move || sink.stop()).await?;
    }
    served?;
    joined.map_err(|_| anyhow::anyhow!("a worker thread panicked"))??;
    Ok(())
}

/// How long a worker process waits for its own timely address to resolve.
const OWN_ADDRESS_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Resolves `address` (`host:port`), retrying every second until `limit`.
async fn wait_until_resolvable(address: &str, limit: std::time::Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::net::lookup_host(address).await.map(|mut found| found.next().is_some()) {
            Ok(true) => return Ok(()),
            Ok(false) => tracing::info!("{address} resolves to nothing yet"),
            Err(e) => tracing::info!("waiting for {address} to resolve: {e}"),
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "this process's timely address {address} did not resolve within {limit:?}");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// What a worker process shows Prometheus of its Kafka source, PostgreSQL sink, ingest
/// log and memory.
struct IoMetrics {
    registry: prometheus_client::registry::Registry,
    /// The sink's frontier, pending rows and whether it stopped.
    sink_gauges: [prometheus_client::metrics::gauge::Gauge; 3],
    /// The sink's transactions, rows inserted and deleted, retries: counters, moved on by
    /// how far the sink's own totals moved since the last scrape.
    sink_counters: [(prometheus_client::metrics::counter::Counter, std::sync::atomic::AtomicU64); 4],
    log: Option<(Arc<crate::log::LogCounters>, [prometheus_client::metrics::counter::Counter; 4], prometheus_client::metrics::gauge::Gauge)>,
    resident: prometheus_client::metrics::gauge::Gauge,
}

impl IoMetrics {
    fn new(kafka: &KafkaCounters, log: Option<Arc<crate::log::LogCounters>>) -> Self {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::gauge::Gauge;
        let mut registry = prometheus_client::registry::Registry::with_prefix("tidemark_worker");
        registry.register("kafka_records", "Records read from Kafka by this process", kafka.records.clone());
        registry.register(
            "kafka_records_raised",
            "Records that reached the log after their idle partition's clock passed them (ingested at the clock, time recorded)",
            kafka.raised.clone(),
        );
        registry.register("kafka_records_redelivered", "Messages delivered again at an offset already read (skipped)", kafka.redelivered.clone());
        let sink_gauges: [Gauge; 3] = Default::default();
        let gauges = [
            ("sink_frontier_ms", "The PostgreSQL tables hold the views as of this time minus one (ms since the epoch)"),
            ("sink_pending_rows", "Rows changed since the last commit to PostgreSQL"),
            ("sink_stopped", "1 once the PostgreSQL sink stopped on an error"),
        ];
        for ((name, help), gauge) in gauges.iter().zip(&sink_gauges) {
            registry.register(*name, *help, gauge.clone());
        }
        let sink_counters: [(Counter, std::sync::atomic::AtomicU64); 4] = Default::default();
        let counters = [
            ("sink_transactions", "Transactions the PostgreSQL sink committed"),
            ("sink_rows_inserted", "Rows the PostgreSQL sink inserted"),
            ("sink_rows_deleted", "Rows the PostgreSQL sink deleted"),
            ("sink_retries", "Temporary PostgreSQL failures the sink retried"),
        ];
        for ((name, help), (counter, _)) in counters.iter().zip(&sink_counters) {
            registry.register(*name, *help, counter.clone());
        }
        let log = log.map(|counters| {
            let log_counters: [Counter; 4] = Default::default();
            let names = [
                ("ingest_log_records", "Ingest requests appended to the ingest log"),
                ("ingest_log_syncs", "Syncs of the ingest log to disk (group commits)"),
                ("ingest_log_bytes", "Bytes appended to the ingest log"),
                ("ingest_log_deleted_segments", "Ingest log segments deleted after retention"),
            ];
            for ((name, help), counter) in names.iter().zip(&log_counters) {
                registry.register(*name, *help, counter.clone());
            }
            let failed = Gauge::default();
            registry.register("ingest_log_failed", "1 once a write to the ingest log failed (Ingest is refused from then on)", failed.clone());
            (counters, log_counters, failed)
        });
        let resident = Gauge::default();
        registry.register("process_resident_memory_bytes", "Resident memory of this worker process", resident.clone());
        IoMetrics { registry, sink_gauges, sink_counters, log, resident }
    }

    fn render(&self, sink: Option<crate::sink::postgres::PgSinkStatus>) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(s) = sink {
            let gauges = [s.committed_frontier.unwrap_or(0) as i64, s.pending_rows as i64, i64::from(s.stopped.is_some())];
            for (gauge, value) in self.sink_gauges.iter().zip(gauges) {
                gauge.set(value);
            }
            let totals = [s.transactions, s.rows_inserted, s.rows_deleted, s.retries];
            for ((counter, last), total) in self.sink_counters.iter().zip(totals) {
                let total = total as u64;
                let before = last.swap(total, Relaxed);
                counter.inc_by(total.saturating_sub(before));
            }
        }
        if let Some((counters, log_counters, failed)) = &self.log {
            let totals = [&counters.records, &counters.syncs, &counters.bytes, &counters.deleted_segments];
            for (counter, total) in log_counters.iter().zip(totals) {
                let total = total.load(Relaxed);
                counter.inc_by(total.saturating_sub(counter.get()));
            }
            failed.set(i64::from(counters.failed.load(Relaxed)));
        }
        self.resident.set(tidemark_coordinator::metrics::resident_bytes());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String does not fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::{ordinal, wait_until_resolvable};
    use std::time::Duration;

    #[tokio::test]
    async fn own_address_must_resolve() {
        wait_until_resolvable("127.0.0.1:7100", Duration::ZERO).await.expect("an IP address resolves");
        wait_until_resolvable("localhost:7100", Duration::ZERO).await.expect("localhost resolves");
        let err = wait_until_resolvable("tidemark-worker-0.no-such-service.invalid:7100", Duration::ZERO).await.expect_err("an .invalid name");
        assert!(err.to_string().contains("did not resolve"), "{err}");
    }

    #[test]
    fn statefulset_ordinals() {
        assert_eq!(ordinal("tidemark-worker-3"), Some(3));
        assert_eq!(ordinal("tidemark-worker"), None);
        assert_eq!(ordinal(""), None);
    }
}
