//! `tidemark up`: the whole system in one command on the embedded default. One worker
//! process (several timely threads, fed by the built-in generator and by `Ingest`) and
//! the coordinator serving the public API, its health and reflection services and its
//! metrics. The two talk over the same internal gRPC protocol as in a cluster, on a
//! loopback port of their own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tidemark_coordinator::cluster::Cluster;
use tidemark_coordinator::config::{InternalSecret, ServeArgs};
use tidemark_dataflows::time::format_timestamp;

use crate::config::GeneratorFlags;
use crate::serve::{self, shutdown_signal, ServedViewFlags, WorkerArgs};

/// `tidemark up`'s generated events/s.
const UP_RATE: &str = "500";
/// Its user population (about 700 per event/s, as for `tidemark worker`).
const UP_USERS: &str = "350000";
/// Its retention horizon (hours).
const UP_RETENTION_HOURS: &str = "1";

/// `tidemark up`.
///
/// Its defaults differ from `tidemark worker`'s so that it runs for as long as it is left
/// running: every event is held until it leaves the retention horizon, about 2 GB per
/// million events, so the generator's rate and the retention bound its memory.
#[derive(Clone, Debug, Args)]
#[command(
    mut_arg("rate", |a| a.default_value(UP_RATE)),
    mut_arg("users", |a| a.default_value(UP_USERS)),
    mut_arg("retention_hours", |a| a.default_value(UP_RETENTION_HOURS))
)]
pub struct UpArgs {
    /// Worker threads.
    #[arg(long, short = 'w', env = "TIDEMARK_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// Do not run the generator: views are fed by `Ingest` only.
    #[arg(long, env = "TIDEMARK_NO_GENERATE")]
    pub no_generate: bool,
    /// The generator's traffic.
    #[command(flatten)]
    pub generator: GeneratorFlags,
    /// Retention, tick and readable history.
    #[command(flatten)]
    pub views: ServedViewFlags,
    /// The public server.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Stop after this many seconds (default: run until SIGTERM or Ctrl-C).
    #[arg(long, env = "TIDEMARK_DURATION")]
    pub duration: Option<u64>,
    /// Read the events from a Kafka topic instead of generating them.
    #[command(flatten)]
    pub kafka: crate::kafka::KafkaFlags,
    /// Mirror views into PostgreSQL.
    #[command(flatten)]
    pub postgres: crate::sink::postgres::PostgresFlags,
    /// No status line every few seconds.
    #[arg(long, short = 'q', env = "TIDEMARK_QUIET")]
    pub quiet: bool,
    /// Where the ingest log is kept.
    #[command(flatten)]
    pub log: crate::log::LogFlags,
}

impl UpArgs {
    fn worker(&self, internal: SocketAddr, secret: &str) -> WorkerArgs {
        WorkerArgs {
            workers: self.workers,
            processes: 1,
            process: Some(0),
            peers: Vec::new(),
            hostfile: None,
            peer_template: None,
            address_map: Default::default(),
            listen: internal,
            views: self.views.clone(),
            generate: !self.no_generate && !self.kafka.enabled(),
            generator: self.generator.clone(),
            metrics_listen: None,
            secret: InternalSecret { internal_secret_file: None, internal_secret: Some(secret.to_owned()) },
            kafka: self.kafka.clone(),
            postgres: self.postgres.clone(),
            log: self.log.clone(),
        }
    }
}

/// Runs until SIGTERM, Ctrl-C or `--duration`.
pub fn run(args: UpArgs) -> anyhow::Result<()> {
    let options = args.serve.options()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        // The worker's internal port is on loopback, and takes only this process's
        // coordinator: it presents a secret made anew at every start.
        let internal = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let internal_address = internal.local_addr()?;
        let secret = random_secret()?;
        let worker_args = args.worker(internal_address, &secret);
        if let Err(problems) = worker_args.validate() {
            anyhow::bail!("invalid configuration:\n  {}", problems.join("\n  "));
        }
        let public = tokio::net::TcpListener::bind(args.serve.listen).await.with_context(|| format!("binding {}", args.serve.listen))?;
        let metrics = tokio::net::TcpListener::bind(args.serve.metrics_listen).await.with_context(|| format!("binding {}", args.serve.metrics_listen))?;
        let (public_address, metrics_address) = (public.local_addr()?, metrics.local_addr()?);

        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut worker_stopped = stopped.clone();
        let worker = tokio::spawn(serve::serve(worker_args.clone(), internal, async move {
            let _ = worker_stopped.wait_for(|s| *s).await;
        }));
        let cluster = Cluster::connect(vec![internal_address.to_string()], Duration::from_secs(30), Some(secret)).await?;
        eprintln!("{}", worker_args.describe());
        banner(public_address, metrics_address, options.tls.is_some(), &ServeArgs::describe_security(&options));

        if !args.quiet {
            tokio::spawn(report(cluster.clone(), stopped.clone()));
        }
        let duration = args.duration;
        let shutdown = async move {
            match duration {
                Some(s) => tokio::select! {
                    _ = shutdown_signal() => {}
                    _ = tokio::time::sleep(Duration::from_secs(s)) => tidemark_coordinator::command::exit_after_grace(),
                },
                None => shutdown_signal().await,
            }
        };
        let served = tidemark_coordinator::run(public, Some(metrics), cluster, options, shutdown).await;
        let _ = stop.send(true);
        worker.await??;
        served?;
        eprintln!("stopped");
        Ok(())
    })?;
    runtime.shutdown_background();
    Ok(())
}

/// 32 random bytes from the operating system, in hex.
fn random_secret() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).context("reading /dev/urandom for the internal secret")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn banner(public: SocketAddr, metrics: SocketAddr, tls: bool, security: &str) {
    let scheme = if tls { "https" } else { "http" };
    let plaintext = if tls { "" } else { "-plaintext " };
    eprintln!(
        "\nTidemark is up: public gRPC on {scheme}://{public} ({security}), metrics on http://{metrics}/metrics
Try, from another terminal (the binary is target/debug/tidemark, or `cargo run -p tidemark-worker --`):
  tidemark views
  tidemark query kpis --where granularity=minute
  tidemark query funnel --where granularity=hour --where dimension=country
  tidemark query sessions --limit 5
  tidemark subscribe kpis --where granularity=minute --progress
  tidemark status
  grpcurl {plaintext}{public} list
  grpcurl {plaintext}-d '{{\"view\": \"kpis\", \"limit\": 3}}' {public} tidemark.v1.Tidemark/Query
Stop with Ctrl-C.\n"
    );
}

/// A status line every few seconds: completeness, ingestion rate and view sizes.
async fn report(cluster: Arc<Cluster>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut last: Option<(u64, std::time::Instant)> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let (frontier, _) = cluster.frontier_and_since();
        let Ok(sizes) = cluster.sizes().await else { continue };
        let now = std::time::Instant::now();
        let rate = last.map(|(n, at)| (sizes.ingested - n) as f64 / now.duration_since(at).as_secs_f64()).unwrap_or(0.0);
        last = Some((sizes.ingested, now));
        let views: Vec<String> = sizes.views.iter().map(|v| format!("{} {}", v.name, v.rows)).collect();
        eprintln!(
            "complete through {} (lag {} ms) | {} records ({rate:.0}/s) | rows: {}",
            format_timestamp(frontier as i64 - 1),
            tidemark_coordinator::now_ms() as i64 - frontier as i64,
            sizes.ingested,
            views.join(", ")
        );
    }
}
