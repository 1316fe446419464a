//! `tidemark-load`: load tests of a running Tidemark cluster, through the public API only.
//!
//! - `query`: point lookups of `sessions` at an offered rate while ingesting; latency
//!   from each lookup's intended send time (open loop).
//! - `freshness`: time from an Ingest acknowledgement to the change it causes arriving
//!   on a subscription, while ingesting at an offered rate.
//! - `replay`: a file of JSON lines through one Ingest stream as fast as it is
//!   acknowledged (or at a rate), until all of it is visible: events/s, and per request
//!   the latency to its acknowledgement and to its visibility.
//!
//! All three print progress to stderr once a second and, at the end, a summary to stderr and
//! one JSON line to stdout (what `scripts/load-query`, `scripts/load-freshness` and
//! `scripts/load-throughput` parse). `wait` waits for a coordinator to answer `ListViews`.
//! `wait-visible` waits until a consistent query sees every record of a known set (a
//! rehydrating worker's topic) and prints when.

mod freshness;
mod ingest;
mod markers;
mod pacing;
mod query;
mod replay;
mod summary;
mod visible;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tidemark_proto::v1::tidemark_client::TidemarkClient;
use tidemark_proto::v1::ListViewsRequest;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Parser)]
#[command(name = "tidemark-load", about = "Load tests of a running Tidemark cluster over its public API")]
struct Cli {
    #[command(subcommand)]
    test: Test,
}

#[derive(Debug, Subcommand)]
enum Test {
    /// Point lookups (and optionally key-range scans) at an offered rate while ingesting.
    Query(query::QueryArgs),
    /// Time from an Ingest acknowledgement to the change arriving on a subscription.
    Freshness(freshness::FreshnessArgs),
    /// A file of JSON lines through one Ingest stream, until all of it is visible.
    Replay(replay::ReplayArgs),
    /// Waits until a consistent query sees every record of a known set; prints when.
    WaitVisible(visible::VisibleArgs),
    /// Waits until the coordinator answers ListViews with views; prints their names.
    Wait {
        /// The coordinator's public API.
        #[arg(long, env = "TIDEMARK_LOAD_TARGET", default_value = "http://127.0.0.1:6875")]
        target: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

/// Flags both tests take.
#[derive(Clone, Debug, Args)]
pub struct Common {
    /// The coordinator's public API.
    #[arg(long, env = "TIDEMARK_LOAD_TARGET", default_value = "http://127.0.0.1:6875")]
    pub target: String,
    /// Seconds measured, after the warm-up.
    #[arg(long, env = "TIDEMARK_LOAD_DURATION", default_value_t = 30)]
    pub duration: u64,
    /// Seconds of load before measuring starts.
    #[arg(long, env = "TIDEMARK_LOAD_WARMUP", default_value_t = 5)]
    pub warmup: u64,
    /// How often ingestion sends what has become due (ms).
    #[arg(long, env = "TIDEMARK_LOAD_TICK_MS", default_value_t = 10)]
    pub tick_ms: u64,
    /// Most events in one Ingest request.
    #[arg(long, env = "TIDEMARK_LOAD_MAX_BATCH", default_value_t = 2000)]
    pub max_batch: usize,
    /// Users of the event generator.
    #[arg(long, env = "TIDEMARK_LOAD_USERS", default_value_t = 100_000)]
    pub users: u64,
    /// Seed of the event generator and of the lookup choices.
    #[arg(long, env = "TIDEMARK_LOAD_SEED", default_value_t = 42)]
    pub seed: u64,
}

/// Wall-clock now, ms since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A well-mixed 64-bit hash of `(seed, i)` (SplitMix64), for reproducible choices.
pub fn pick(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A client of the coordinator at `target`.
async fn connect(target: &str) -> anyhow::Result<TidemarkClient<Channel>> {
    let channel = Endpoint::from_shared(target.to_owned())
        .with_context(|| format!("{target:?} is not a URL"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {target}"))?;
    Ok(TidemarkClient::new(channel).max_decoding_message_size(64 << 20))
}

/// Retries ListViews until it lists views or `timeout` passes.
async fn wait(target: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = match connect(target).await {
            Ok(mut client) => client.list_views(ListViewsRequest {}).await.map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        match answer {
            Ok(r) if !r.get_ref().views.is_empty() => {
                let names: Vec<&str> = r.get_ref().views.iter().map(|v| v.name.as_str()).collect();
                println!("{}", names.join(" "));
                return Ok(());
            }
            Ok(_) if Instant::now() >= deadline => anyhow::bail!("{target} lists no views after {timeout:?}"),
            Err(e) if Instant::now() >= deadline => return Err(e.context(format!("{target} did not answer ListViews within {timeout:?}"))),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Calls `report(seconds since start)` once a second until `until`.
fn progress_every_second(start: Instant, until: Instant, mut report: impl FnMut(u64) + Send + 'static) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut second = 1;
        loop {
            let at = start + Duration::from_secs(second);
            if at > until {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
            report(second);
            second += 1;
        }
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.test {
            Test::Query(args) => query::run(args).await,
            Test::Freshness(args) => freshness::run(args).await,
            Test::Replay(args) => replay::run(args).await,
            Test::WaitVisible(args) => visible::run(args).await,
            Test::Wait { target, timeout } => wait(&target, Duration::from_secs(timeout)).await,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::pick;

    #[test]
    fn picks_are_reproducible_and_spread() {
        assert_eq!(pick(42, 7), pick(42, 7));
        assert_ne!(pick(42, 7), pick(42, 8));
        assert_ne!(pick(42, 7), pick(43, 7));
        let mut buckets = [0u32; 10];
        for i in 0..10_000 {
            buckets[(pick(1, i) % 10) as usize] += 1;
        }
        assert!(buckets.iter().all(|&b| (900..1100).contains(&b)), "{buckets:?}");
    }
}
