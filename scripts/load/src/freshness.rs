//! `tidemark-load freshness`: how long after an Ingest acknowledgement the change it
//! causes reaches a subscriber, while events arrive at an offered rate.
//!
//! The test subscribes to `sessions` filtered to a probe user of its own (without the
//! snapshot), then ingests generated events at the offered rate; after the warm-up,
//! every request carries one marker event of the probe user (see [`crate::markers`] for
//! why each marker is matched unambiguously). Freshness is the time from receiving a
//! request's acknowledgement to receiving the subscription update at its `visible_at`.
//!
//! The cluster kept up when acknowledgements came at no less than 95% of the offered
//! rate and, after ingestion stopped, the last markers' changes arrived within a second.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use tidemark_dataflows::generator::{Generator, GeneratorConfig};
use tidemark_dataflows::time::format_timestamp;
use tidemark_proto::v1::filter::Op;
use tidemark_proto::v1::{Filter, SubscribeRequest};
use tidemark_proto::value;

use crate::ingest::{self, Ack, Counters, Pace};
use crate::markers::{Markers, Outcome};
use crate::summary::{histogram, record, Errors, Json, Percentiles};
use crate::{connect, now_ms, progress_every_second, Common};

/// Flags of `tidemark-load freshness`.
#[derive(Clone, Debug, Args)]
pub struct FreshnessArgs {
    #[command(flatten)]
    pub common: Common,
    /// Offered events per second.
    #[arg(long, env = "TIDEMARK_LOAD_RATE", default_value_t = 10_000)]
    pub rate: u64,
    /// After ingestion stops, how long to wait for the last markers' changes (s).
    #[arg(long, env = "TIDEMARK_LOAD_DRAIN", default_value_t = 30)]
    pub drain: u64,
}

/// A marker event of `probe`: a page view in the probe's one session, at `ts_ms`.
pub fn marker_event(probe: &str, n: u64, ts_ms: u64) -> Vec<u8> {
    format!(
        r#"{{"event_id":"{probe}-{n}","event_type":"page_view","event_ts":"{}","user_id":"{probe}","session_id":"{probe}","product_id":"{probe}"}}"#,
        format_timestamp(ts_ms as i64)
    )
    .into_bytes()
}

struct Recorded {
    markers: Markers,
    all: Histogram<u64>,
    interval: Histogram<u64>,
    missed: u64,
    rejected_markers: u64,
}

impl Recorded {
    fn outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Delivered(d) => {
                record(&mut self.all, d);
                record(&mut self.interval, d);
            }
            Outcome::Missed => self.missed += 1,
        }
    }
}

/// Runs the freshness test; prints the summary (JSON on stdout).
pub async fn run(args: FreshnessArgs) -> anyhow::Result<()> {
    let c = &args.common;
    anyhow::ensure!(args.rate > 0, "--rate must be positive");
    eprintln!(
        "[freshness] target {} rate {} events/s warmup {} s duration {} s tick {} ms max batch {} users {} seed {}",
        c.target, args.rate, c.warmup, c.duration, c.tick_ms, c.max_batch, c.users, c.seed
    );
    let mut client = connect(&c.target).await?;
    let probe = format!("probe-{}-{}", std::process::id(), now_ms());

    // The probe's changes, from now on.
    let filter = Filter { column: "user_id".into(), op: Op::Eq as i32, value: Some(value::string(&probe)) };
    let request = SubscribeRequest { view: "sessions".into(), filters: vec![filter], without_snapshot: true, ..Default::default() };
    let mut changes = client.subscribe(request).await.context("subscribing to sessions")?.into_inner();
    let first = changes.message().await.context("the subscription's first message")?.context("the subscription ended at once")?;
    anyhow::ensure!(!first.columns.is_empty(), "the subscription's first message has no columns");

    let recorded = Arc::new(Mutex::new(Recorded { markers: Markers::new(), all: histogram(), interval: histogram(), missed: 0, rejected_markers: 0 }));
    let subscription_error: Arc<Mutex<Option<tonic::Status>>> = Arc::default();
    let reader = {
        let (recorded, subscription_error) = (recorded.clone(), subscription_error.clone());
        tokio::spawn(async move {
            loop {
                match changes.message().await {
                    Ok(Some(message)) => {
                        let Some(batch) = message.batch else { continue };
                        let at = Instant::now();
                        let mut r = recorded.lock().expect("no panics while recording");
                        let mut times: Vec<u64> = batch.updates.iter().map(|u| u.time).collect();
                        times.sort_unstable();
                        times.dedup();
                        for time in times {
                            for outcome in r.markers.on_change(time, at) {
                                r.outcome(outcome);
                            }
                        }
                        for outcome in r.markers.on_progress(batch.upper) {
                            r.outcome(outcome);
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        eprintln!("[freshness] the subscription failed: {status}");
                        *subscription_error.lock().expect("no panics while recording") = Some(status);
                        break;
                    }
                }
            }
        })
    };

    // Ingestion with one marker per request once the warm-up is over.
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(c.warmup);
    let until = measure_from + Duration::from_secs(c.duration);
    let config = GeneratorConfig { seed: c.seed, start_ms: now_ms() as i64, events_per_sec: args.rate, users: c.users, ..GeneratorConfig::clean() };
    let mut generator = Generator::new(config, 0, 1);
    let mut markers_sent = 0u64;
    let make = {
        let probe = probe.clone();
        move |n: usize| {
            let mut events: Vec<Vec<u8>> = (0..n).map(|_| generator.next_record().record.bytes).collect();
            let marker = Instant::now() >= measure_from;
            if marker {
                events.push(marker_event(&probe, markers_sent, now_ms()));
                markers_sent += 1;
            }
            ingest::Request { events, marker }
        }
    };
    let counters = Arc::new(Counters::default());
    let (ack_tx, mut acks) = tokio::sync::mpsc::unbounded_channel::<Ack>();
    let pace = Pace { rate: args.rate, tick: Duration::from_millis(c.tick_ms), max_batch: c.max_batch, until };
    let ingesting = tokio::spawn(ingest::run(client.clone(), pace, make, counters.clone(), Some(ack_tx), Duration::from_secs(args.drain)));
    let acknowledging = {
        let recorded = recorded.clone();
        tokio::spawn(async move {
            let mut markers = 0u64;
            while let Some(ack) = acks.recv().await {
                if !ack.marker {
                    continue;
                }
                markers += 1;
                let mut r = recorded.lock().expect("no panics while recording");
                let index = (ack.events - 1) as u32;
                if ack.response.rejects.iter().any(|reject| reject.index == index) {
                    r.rejected_markers += 1;
                    continue;
                }
                if let Some(outcome) = r.markers.on_ack(ack.response.visible_at, ack.at) {
                    r.outcome(outcome);
                }
            }
            markers
        })
    };

    let progress = {
        let (recorded, counters, rate) = (recorded.clone(), counters.clone(), args.rate);
        progress_every_second(start, until, move |elapsed| {
            let mut r = recorded.lock().expect("no panics while recording");
            let interval = Percentiles::of(&r.interval);
            r.interval.reset();
            let phase = if Instant::now() < measure_from { "warmup" } else { "measure" };
            eprintln!(
                "[freshness] {elapsed:>3} s {phase}: offered {} sent {} acked {} events | markers measured {} waiting {} missed {} | last second p50 {} us p99 {} us",
                rate * elapsed,
                Counters::get(&counters.sent),
                Counters::get(&counters.acked),
                r.all.len(),
                r.markers.waiting(),
                r.missed,
                interval.p50,
                interval.p99,
            );
        })
    };

    tokio::time::sleep_until(measure_from.into()).await;
    let acked_before = counters.acked();
    tokio::time::sleep_until(until.into()).await;
    let acked = counters.acked() - acked_before;
    let offered = args.rate * c.duration;
    ingesting.await.context("the ingest task failed")?;
    let markers_acked = acknowledging.await.context("the acknowledgement task failed")?;
    progress.abort();
    // After the last acknowledgement: how long until every marker's change is in.
    let drained_at = Instant::now();
    let drain_deadline = drained_at + Duration::from_secs(args.drain);
    let drain = loop {
        let waiting = recorded.lock().expect("no panics while recording").markers.waiting();
        if waiting == 0 || Instant::now() >= drain_deadline || reader.is_finished() {
            break until.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    reader.abort();

    let r = recorded.lock().expect("no panics while recording");
    let fresh = Percentiles::of(&r.all);
    let achieved = acked as f64 / c.duration.max(1) as f64;
    let waiting = r.markers.waiting() as u64;
    let mut ingest_errors = counters.errors();
    if let Some(status) = subscription_error.lock().expect("no panics while recording").as_ref() {
        ingest_errors.0.insert(format!("SUBSCRIBE_{}", crate::summary::code_name(status.code())), 1);
    }
    let behind = (acked as f64) < 0.95 * offered as f64;
    let lagging = waiting > 0 || drain > Duration::from_secs(1);
    let standing = match (behind, lagging) {
        (false, false) => "kept up".to_owned(),
        (true, _) => format!("saturated: acknowledged {:.0}% of the offered events", 100.0 * acked as f64 / offered.max(1) as f64),
        (false, true) => format!("saturated: the last changes arrived {} ms after ingestion stopped ({waiting} markers never arrived)", drain.as_millis()),
    };
    eprintln!("[freshness] ack -> change on the subscription: {fresh}");
    eprintln!(
        "[freshness] markers: {markers_acked} acknowledged, {} measured, {} missed, {} rejected, {waiting} still waiting, {} changes before their ack",
        fresh.count, r.missed, r.rejected_markers, r.markers.early_changes
    );
    eprintln!("[freshness] offered {} events/s, acknowledged {achieved:.1} events/s: {standing}; errors: {ingest_errors}", args.rate);
    let mut fields = vec![
        ("test".to_owned(), Json::Str("freshness".into())),
        ("offered_rate".to_owned(), Json::Int(args.rate)),
        ("achieved_rate".to_owned(), Json::Float(achieved)),
        ("saturated".to_owned(), Json::Bool(behind || lagging)),
        ("standing".to_owned(), Json::Str(standing)),
        ("duration_s".to_owned(), Json::Int(c.duration)),
        ("drain_ms".to_owned(), Json::Int(drain.as_millis() as u64)),
        ("markers".to_owned(), Json::Int(markers_acked)),
        ("missed".to_owned(), Json::Int(r.missed)),
        ("waiting".to_owned(), Json::Int(waiting)),
        ("errors".to_owned(), ingest_errors.json()),
        ("error_count".to_owned(), Json::Int(Errors::total(&ingest_errors))),
    ];
    fields.extend(fresh.fields("freshness_"));
    println!("{}", Json::Object(fields));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::marker_event;

    #[test]
    fn markers_are_valid_events_of_the_probe() {
        let e = String::from_utf8(marker_event("probe-1-2", 7, 1_793_491_200_250)).expect("utf-8");
        assert_eq!(
            e,
            r#"{"event_id":"probe-1-2-7","event_type":"page_view","event_ts":"2026-11-01T00:00:00.250Z","user_id":"probe-1-2","session_id":"probe-1-2","product_id":"probe-1-2"}"#
        );
        assert_eq!(crate::query::user_of(e.as_bytes()), Some("probe-1-2"));
    }
}
