//! `tidemark-load query`: point lookups (and optionally key-range scans) of `sessions`
//! at an offered rate while events are being ingested.
//!
//! Steps: ingest a population of generated events and wait until they are visible;
//! start ingesting more at the offered ingest rate; issue lookups of users from the
//! population, open loop: a pacing thread releases lookup `i` at its intended time
//! `start + i / qps` to at most `concurrency` requests in flight; each latency is
//! measured from the intended time, so lookups that wait for a free slot (or for a slow
//! answer ahead of them) count their wait. Lookups intended during the warm-up are
//! issued but not recorded.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use tidemark_dataflows::generator::{Generator, GeneratorConfig};
use tidemark_proto::v1::tidemark_client::TidemarkClient;
use tidemark_proto::v1::{IngestRequest, KeyRange, QueryRequest};
use tidemark_proto::value;
use tokio::sync::Semaphore;
use tonic::transport::Channel;

use crate::ingest::{self, Counters, Pace};
use crate::pacing::Schedule;
use crate::summary::{histogram, record, Errors, Json, Percentiles};
use crate::{connect, now_ms, pick, progress_every_second, Common};

/// Flags of `tidemark-load query`.
#[derive(Clone, Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub common: Common,
    /// Offered lookups per second (open loop).
    #[arg(long, env = "TIDEMARK_LOAD_QPS", default_value_t = 1000)]
    pub qps: u64,
    /// Most lookups in flight at once.
    #[arg(long, env = "TIDEMARK_LOAD_CONCURRENCY", default_value_t = 32)]
    pub concurrency: usize,
    /// Offered events per second ingested in the background while querying.
    #[arg(long, env = "TIDEMARK_LOAD_INGEST_RATE", default_value_t = 5000)]
    pub ingest_rate: u64,
    /// Fraction of lookups that are key-range scans instead (0..=1): the sessions of
    /// every user whose id starts with a known user's id (about a dozen users).
    #[arg(long, env = "TIDEMARK_LOAD_RANGE_FRACTION", default_value_t = 0.0)]
    pub range_fraction: f64,
    /// Events ingested (as fast as they are acknowledged) before the lookups start; the
    /// users looked up are those of these events.
    #[arg(long, env = "TIDEMARK_LOAD_POPULATION", default_value_t = 100_000)]
    pub population: u64,
    /// Client-side deadline of one lookup (ms).
    #[arg(long, env = "TIDEMARK_LOAD_TIMEOUT_MS", default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// The view looked up: by user (`sessions`, `customer_rfm`, `customer_clv`) or by card
    /// (`fraud_features`, `fraud_scores`, `fraud_alerts`: the cards of the population's
    /// payments).
    #[arg(long, env = "TIDEMARK_LOAD_VIEW", default_value = "sessions")]
    pub view: String,
}

/// The field of generated events a view is looked up by.
fn key_field(view: &str) -> anyhow::Result<&'static str> {
    match view {
        "sessions" | "customer_rfm" | "customer_clv" => Ok("user_id"),
        "fraud_features" | "fraud_scores" | "fraud_alerts" => Ok("card_id"),
        other => anyhow::bail!("--view {other:?}: lookups are by user (sessions, customer_rfm, customer_clv) or by card (fraud_features, fraud_scores, fraud_alerts)"),
    }
}

#[derive(Default)]
struct Recorded {
    lookups: Option<Histogram<u64>>,
    ranges: Option<Histogram<u64>>,
    /// Both kinds, since the last progress line.
    interval: Option<Histogram<u64>>,
    dispatched: u64,
    ok: u64,
    errors: Errors,
    /// Answers (ok or not) received inside the measured window.
    answered_in_window: u64,
}

struct Recorder {
    inner: Mutex<Recorded>,
    measure_from: Instant,
    measure_until: Instant,
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.inner.lock().expect("no panics while recording")
    }

    fn answered(&self, range: bool, intended: Instant, result: Result<(), tonic::Code>) {
        let now = Instant::now();
        let latency = now.saturating_duration_since(intended);
        let mut r = self.lock();
        if let Some(h) = r.interval.as_mut() {
            record(h, latency);
        }
        if now >= self.measure_from && now <= self.measure_until {
            r.answered_in_window += 1;
        }
        if intended < self.measure_from {
            return;
        }
        match result {
            Ok(()) => {
                r.ok += 1;
                let h = if range { r.ranges.as_mut() } else { r.lookups.as_mut() };
                record(h.expect("set at start"), latency);
            }
            Err(code) => r.errors.count(code),
        }
    }
}

/// The user of a generated event (`"user_id":"u123"`), if it has one.
#[cfg(test)]
pub fn user_of(event: &[u8]) -> Option<&str> {
    text_field(event, "user_id")
}

/// A top-level text field of a generated event (`"<name>":"<text>"`), if present and
/// not empty.
fn text_field<'a>(event: &'a [u8], name: &str) -> Option<&'a str> {
    let field = format!("\"{name}\":\"");
    let field = field.as_bytes();
    let start = event.windows(field.len()).position(|w| w == field)? + field.len();
    let len = event[start..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&event[start..start + len]).ok().filter(|u| !u.is_empty())
}

/// The key a view is looked up by in a generated event: its user, or a payment's card.
fn key_of_event<'a>(event: &'a [u8], field: &str) -> Option<&'a str> {
    if field == "card_id" && text_field(event, "event_type") != Some("payment") {
        return None;
    }
    text_field(event, field)
}

/// Ingests `n` events from `generator` as fast as they are acknowledged, waits until
/// they are visible, and returns their users.
async fn populate(client: &mut TidemarkClient<Channel>, generator: &mut Generator, n: u64, batch: usize, field: &str) -> anyhow::Result<Vec<String>> {
    let started = Instant::now();
    let mut users = HashSet::new();
    let mut requests = Vec::new();
    for size in crate::pacing::split(n, batch) {
        let events: Vec<Vec<u8>> = (0..size).map(|_| generator.next_record().record.bytes).collect();
        users.extend(events.iter().filter_map(|e| key_of_event(e, field)).map(str::to_owned));
        requests.push(IngestRequest { events });
    }
    let count = requests.len();
    let mut acks = client.ingest(tokio_stream::iter(requests)).await.context("opening the population's Ingest stream")?.into_inner();
    let mut visible = 0;
    for _ in 0..count {
        let ack = acks.message().await.context("ingesting the population")?.context("the Ingest stream ended early")?;
        visible = visible.max(ack.visible_at);
    }
    // Visible once a read at the last acknowledged time is answered.
    let mut probe = tonic::Request::new(QueryRequest { view: "kpis".into(), as_of: Some(visible), limit: 1, timeout_ms: 300_000, ..Default::default() });
    probe.set_timeout(Duration::from_secs(300));
    client.query(probe).await.context("waiting for the population to become visible")?;
    let mut users: Vec<String> = users.into_iter().collect();
    users.sort();
    eprintln!("[query] population: {n} events, {} distinct {field} values, ingested and visible in {:.1} s", users.len(), started.elapsed().as_secs_f64());
    Ok(users)
}

/// Runs the query test; prints the summary (JSON on stdout).
pub async fn run(args: QueryArgs) -> anyhow::Result<()> {
    let c = &args.common;
    anyhow::ensure!(args.qps > 0 && args.concurrency > 0, "--qps and --concurrency must be positive");
    anyhow::ensure!((0.0..=1.0).contains(&args.range_fraction), "--range-fraction must be within 0..=1");
    anyhow::ensure!(args.population > 0, "--population must be positive: the lookups need users");
    eprintln!(
        "[query] target {} qps {} concurrency {} warmup {} s duration {} s ingest {} events/s range fraction {} population {} users {} seed {}",
        c.target, args.qps, args.concurrency, c.warmup, c.duration, args.ingest_rate, args.range_fraction, args.population, c.users, c.seed
    );
    let mut client = connect(&c.target).await?;

    // The population's clock ends about now, at the ingest rate: it looks like the last
    // stretch of live traffic, and the background ingestion continues it.
    let rate = args.ingest_rate.max(1);
    let span_ms = (args.population.saturating_mul(1000) / rate) as i64;
    let config = GeneratorConfig { seed: c.seed, start_ms: now_ms() as i64 - span_ms, events_per_sec: rate, users: c.users, ..GeneratorConfig::clean() };
    let mut generator = Generator::new(config, 0, 1);
    let field = key_field(&args.view)?;
    anyhow::ensure!(args.range_fraction == 0.0 || args.view == "sessions", "--range-fraction is for sessions only");
    let users = Arc::new(populate(&mut client, &mut generator, args.population, c.max_batch, field).await?);
    anyhow::ensure!(
        !users.is_empty(),
        "the population has no {field} values to look up (payments come minutes into a session: a population of {} events at {} events/s spans {} s of simulated time; raise --population or lower --ingest-rate)",
        args.population,
        rate,
        span_ms / 1000
    );

    let start = Instant::now();
    let measure_from = start + Duration::from_secs(c.warmup);
    let until = measure_from + Duration::from_secs(c.duration);
    let recorder = Arc::new(Recorder {
        inner: Mutex::new(Recorded { lookups: Some(histogram()), ranges: Some(histogram()), interval: Some(histogram()), ..Recorded::default() }),
        measure_from,
        measure_until: until,
    });

    // Background ingestion.
    let counters = Arc::new(Counters::default());
    let ingesting = (args.ingest_rate > 0).then(|| {
        let pace = Pace { rate: args.ingest_rate, tick: Duration::from_millis(c.tick_ms), max_batch: c.max_batch, until };
        let make = move |n: usize| ingest::Request { events: (0..n).map(|_| generator.next_record().record.bytes).collect(), marker: false };
        tokio::spawn(ingest::run(client.clone(), pace, make, counters.clone(), None, Duration::from_secs(10)))
    });

    // Ingestion counted over the measured window only.
    let window = {
        let counters = counters.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            let acked = counters.acked();
            tokio::time::sleep_until(until.into()).await;
            counters.acked() - acked
        })
    };

    // The frontier's lag (wall clock minus the cluster's frontier, as ListViews reports
    // it) every 20 ms of the measured window: whether the queries hold the dataflow back.
    let lag = {
        let mut client = client.clone();
        tokio::spawn(async move {
            let mut lags = histogram();
            tokio::time::sleep_until(measure_from.into()).await;
            while Instant::now() < until {
                if let Ok(views) = client.list_views(tidemark_proto::v1::ListViewsRequest {}).await {
                    if let Some(frontier) = views.into_inner().views.first().map(|v| v.frontier) {
                        let lag_ms = now_ms().saturating_sub(frontier);
                        let _ = lags.record(lag_ms.max(1));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            lags
        })
    };

    // Progress, once a second.
    let progress = {
        let (recorder, counters, rate) = (recorder.clone(), counters.clone(), args.ingest_rate);
        progress_every_second(start, until, move |elapsed| {
            let mut r = recorder.lock();
            let interval = r.interval.replace(histogram()).map(|h| Percentiles::of(&h)).unwrap_or_default();
            let phase = if Instant::now() < measure_from { "warmup" } else { "measure" };
            eprintln!(
                "[query] {elapsed:>3} s {phase}: dispatched {} ok {} errors {} | last second p99 {} us max {} us | ingest acked {} of {} offered events",
                r.dispatched,
                r.ok,
                r.errors.total(),
                interval.p99,
                interval.max,
                Counters::get(&counters.acked),
                rate * elapsed,
            );
        })
    };

    // The pacing thread: releases lookup i at start + i / qps (sleeps of ~0.1 ms
    // precision, unlike tokio's 1 ms timer wheel).
    let (release, mut released) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let schedule = Schedule::new(args.qps);
    let total = until - start;
    let pacer = std::thread::Builder::new().name("pacer".into()).spawn(move || {
        let mut next = 0u64;
        while schedule.offset(next) < total {
            let elapsed = start.elapsed();
            while next < schedule.due(elapsed) && schedule.offset(next) < total {
                if release.send((next, start + schedule.offset(next))).is_err() {
                    return;
                }
                next += 1;
            }
            let wake = start + schedule.offset(next);
            let now = Instant::now();
            if wake > now {
                std::thread::sleep(wake - now);
            }
        }
    })?;

    let slots = Arc::new(Semaphore::new(args.concurrency));
    let timeout = Duration::from_millis(args.timeout_ms);
    let range_per_million = (args.range_fraction * 1e6).round() as u64;
    while let Some((i, intended)) = released.recv().await {
        let slot = slots.clone().acquire_owned().await.expect("the semaphore stays open");
        recorder.lock().dispatched += 1;
        let (mut client, recorder, users, view) = (client.clone(), recorder.clone(), users.clone(), args.view.clone());
        let seed = c.seed;
        tokio::spawn(async move {
            let user = &users[(pick(seed, i) % users.len() as u64) as usize];
            let range = pick(seed ^ 0x5ca7, i) % 1_000_000 < range_per_million;
            let query = if range {
                let range = KeyRange { lower: vec![value::string(user)], upper: vec![value::string(&format!("{user}~"))] };
                QueryRequest { view: "sessions".into(), range: Some(range), limit: 1000, ..Default::default() }
            } else {
                QueryRequest { view, key: vec![value::string(user)], ..Default::default() }
            };
            let mut request = tonic::Request::new(query);
            request.set_timeout(timeout);
            let result = client.query(request).await.map(drop).map_err(|s| s.code());
            recorder.answered(range, intended, result);
            drop(slot);
        });
    }
    pacer.join().map_err(|_| anyhow::anyhow!("the pacing thread panicked"))?;
    // Every lookup in flight ends (answer or deadline) before the summary.
    let _all = slots.acquire_many(args.concurrency as u32).await.expect("the semaphore stays open");
    let acked_ingest = window.await.context("the window task failed")?;
    let offered_ingest = args.ingest_rate * c.duration;
    if let Some(task) = ingesting {
        task.await.context("the ingest task failed")?;
    }
    progress.abort();
    let lag = lag.await.context("the lag sampler failed")?;

    // Summary.
    let r = recorder.lock();
    let lookups = Percentiles::of(r.lookups.as_ref().expect("set at start"));
    let ranges = Percentiles::of(r.ranges.as_ref().expect("set at start"));
    let seconds = c.duration as f64;
    let achieved_qps = r.answered_in_window as f64 / seconds;
    let achieved_ingest = acked_ingest as f64 / seconds;
    let ingest_saturated = args.ingest_rate > 0 && (acked_ingest as f64) < 0.95 * offered_ingest as f64;
    let ingest_errors = counters.errors();
    eprintln!("[query] lookups (point, {} by {}): {lookups}", args.view, key_field(&args.view).unwrap_or("key"));
    if args.range_fraction > 0.0 {
        eprintln!("[query] range scans: {ranges}");
    }
    eprintln!("[query] offered {} qps, achieved {achieved_qps:.1} answers/s over {} s; ok {}; errors: {}", args.qps, c.duration, r.ok, r.errors);
    eprintln!("[query] frontier lag while querying: p50 {} ms, p99 {} ms, max {} ms ({} samples)", lag.value_at_quantile(0.5), lag.value_at_quantile(0.99), lag.max(), lag.len());
    eprintln!(
        "[query] ingest: offered {} events/s, acknowledged {achieved_ingest:.1} events/s{}; stream errors: {ingest_errors}",
        args.ingest_rate,
        if ingest_saturated { " (saturated: acknowledgements below 95% of the offered rate)" } else { "" }
    );
    let mut fields = vec![
        ("test".to_owned(), Json::Str("query".into())),
        ("view".to_owned(), Json::Str(args.view.clone())),
        ("qps".to_owned(), Json::Int(args.qps)),
        ("concurrency".to_owned(), Json::Int(args.concurrency as u64)),
        ("duration_s".to_owned(), Json::Int(c.duration)),
        ("achieved_qps".to_owned(), Json::Float(achieved_qps)),
        ("ok".to_owned(), Json::Int(r.ok)),
        ("errors".to_owned(), r.errors.json()),
        ("error_count".to_owned(), Json::Int(r.errors.total())),
    ];
    fields.extend(lookups.fields("lookup_"));
    if args.range_fraction > 0.0 {
        fields.extend(ranges.fields("range_"));
    }
    fields.extend([
        ("ingest_offered".to_owned(), Json::Int(args.ingest_rate)),
        ("ingest_achieved".to_owned(), Json::Float(achieved_ingest)),
        ("ingest_saturated".to_owned(), Json::Bool(ingest_saturated)),
        ("ingest_errors".to_owned(), ingest_errors.json()),
        ("lag_p50_ms".to_owned(), Json::Int(lag.value_at_quantile(0.5))),
        ("lag_p99_ms".to_owned(), Json::Int(lag.value_at_quantile(0.99))),
        ("lag_max_ms".to_owned(), Json::Int(lag.max())),
    ]);
    println!("{}", Json::Object(fields));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::user_of;

    #[test]
    fn users_of_generated_events() {
        assert_eq!(user_of(br#"{"event_id":"e1","user_id":"u123","x":1}"#), Some("u123"));
        assert_eq!(user_of(br#"{"event_id":"e1","user_id":""}"#), None);
        assert_eq!(user_of(br#"{"event_id":"e1","user_id":{"id":4}}"#), None);
        assert_eq!(user_of(br#"{"event_id":"e1"}"#), None);
        let payment = br#"{"event_id":"e1","event_type":"payment","user_id":"u1","card_id":"c9"}"#;
        assert_eq!(super::key_of_event(payment, "card_id"), Some("c9"));
        let refund = br#"{"event_id":"e2","event_type":"refund","user_id":"u1","card_id":"c9"}"#;
        assert_eq!(super::key_of_event(refund, "card_id"), None, "cards are looked up by their payments");
        assert_eq!(super::key_of_event(refund, "user_id"), Some("u1"));
        assert!(super::key_field("fraud_features").is_ok() && super::key_field("kpis").is_err());
    }
}
