//! Shared test support: a random record mix and a single-process dataflow runner.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tidemark_dataflows::decode::RawRecord;
use tidemark_dataflows::time::{format_timestamp, tick_ceil, Time};
use tidemark_dataflows::views::{build, build_parts, Part, ViewConfig, ViewRow};

/// One update of a view: row, time, diff.
pub type Update = (ViewRow, Time, isize);

/// 2026-11-01T00:00:00Z
pub const BASE_MS: i64 = 1_793_491_200_000;

/// A test configuration with a short retention, so expiry happens inside a test.
pub fn test_config() -> ViewConfig {
    let mut config = ViewConfig::default();
    config.decode.retention_ms = 2 * 3_600_000;
    config.decode.max_future_ms = 3_600_000;
    config
}

/// [`test_config`] with its retention and future limit multiplied by `scale`.
pub fn scaled_config(scale: u64) -> ViewConfig {
    let mut config = test_config();
    config.decode.retention_ms *= scale;
    config.decode.max_future_ms *= scale;
    config
}

/// A random mix of records over a few users: views, carts, checkouts, purchases with
/// shared orders, payments and refunds; given and derived sessions; duplicates (same
/// bytes re-delivered), corrections and cancellations (also of unknown or later ids),
/// late, too-late and future events, and malformed records. Ingestion times are
/// non-decreasing and on 10 ms ticks.
pub fn random_records(seed: u64, n: usize) -> Vec<(RawRecord, Time)> {
    random_records_scaled(seed, n, 1)
}

/// [`random_records`] with every gap between records and every lateness multiplied by
/// `scale` (with [`scaled_config`] of the same scale, records span days or weeks: what
/// customer histories need).
pub fn random_records_scaled(seed: u64, n: usize, scale: i64) -> Vec<(RawRecord, Time)> {
    let mut rng = SmallRng::seed_from_u64(seed);
    // Payment details come from their own stream, so that the rest of the mix is the
    // same as without them.
    let mut pay = SmallRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut out: Vec<(RawRecord, Time)> = Vec::with_capacity(n);
    let mut clock = BASE_MS + 600_000;
    let mut next_id = 0u64;
    let mut last_payment: Option<i64> = None;
    let types = ["page_view", "product_view", "product_view", "add_to_cart", "remove_from_cart", "checkout", "purchase", "purchase", "refund", "payment"];
    for position in 0..n as u64 {
        clock += scale * rng.random_range(0..120_000);
        let ingest = tick_ceil(clock as u64, 10);
        let roll: f64 = rng.random();
        let bytes: Vec<u8> = if roll < 0.10 && !out.is_empty() {
            // A duplicate delivery: the same bytes again.
            out[rng.random_range(0..out.len())].0.bytes.clone()
        } else if roll < 0.15 {
            match rng.random_range(0..5) {
                0 => b"{\"event_id\": \"x\", \"event_type\": ".to_vec(),
                1 => vec![0xff, 0x00, 0x13],
                2 => format!(r#"{{"event_id":"m{position}","event_type":"page_view","event_ts":"{}"}}"#, format_timestamp(clock)).into_bytes(),
                3 => format!(r#"{{"event_id":"m{position}","event_type":"warp","event_ts":"{}","user_id":"u1"}}"#, format_timestamp(clock)).into_bytes(),
                _ => format!(r#"{{"event_id":"m{position}","event_type":"purchase","event_ts":"{}","user_id":"u1","price":-3}}"#, format_timestamp(clock)).into_bytes(),
            }
        } else {
            let lag: i64 = match rng.random_range(0..100) {
                0..80 => rng.random_range(0..300_000),
                80..93 => rng.random_range(300_000..5_400_000),
                93..97 => rng.random_range(7_200_000..10_800_000),
                _ => -rng.random_range(0..7_200_000),
            };
            let mut ts = clock - scale * lag;
            next_id += 1;
            let user = rng.random_range(0..6);
            let kind = if roll < 0.20 { "retraction" } else { types[rng.random_range(0..types.len())] };
            if kind == "payment" {
                // A card charged again seconds after its last payment (a burst), at times
                // before or after the payments already delivered.
                if let Some(last) = last_payment.filter(|_| pay.random_bool(0.4)) {
                    ts = last + pay.random_range(-20_000..40_000);
                }
                last_payment = Some(ts);
            }
            let mut fields = vec![
                format!(r#""event_id":"e{next_id}""#),
                format!(r#""event_ts":"{}""#, format_timestamp(ts)),
                format!(r#""user_id":"u{user}""#),
            ];
            fields.push(format!(r#""event_type":"{kind}""#));
            if kind == "retraction" || roll < 0.25 {
                fields.push(format!(r#""retracts":"e{}""#, rng.random_range(1..next_id + 3)));
            }
            if rng.random_bool(0.4) {
                fields.push(format!(r#""session_id":"s{}""#, rng.random_range(0..4)));
            }
            fields.push(format!(r#""product_id":"p{}""#, rng.random_range(0..5)));
            if rng.random_bool(0.7) {
                fields.push(format!(r#""category":"c{}""#, rng.random_range(0..3)));
            }
            fields.push(format!(r#""price":{}.{:02}"#, rng.random_range(0..100), rng.random_range(0..100)));
            fields.push(format!(r#""quantity":{}"#, rng.random_range(1..4)));
            if rng.random_bool(0.7) {
                fields.push(format!(r#""order_id":"o{}""#, rng.random_range(0..6)));
            }
            if rng.random_bool(0.6) {
                let country = ["DE", "FR", "PL"][rng.random_range(0..3)];
                // Payments move about (for geo-velocity); other events stay put.
                let (lat, lon) = if kind == "payment" { (pay.random_range(-60.0..60.0), pay.random_range(-170.0..170.0)) } else { (48.1, 11.5) };
                fields.push(format!(r#""geo":{{"country":"{country}","lat":{lat:.4},"lon":{lon:.4}}}"#));
            }
            if kind == "payment" {
                if pay.random_bool(0.9) {
                    fields.push(format!(r#""card_id":"k{}""#, pay.random_range(0..3)));
                }
                if pay.random_bool(0.8) {
                    fields.push(format!(r#""billing_country":"{}""#, ["DE", "FR"][pay.random_range(0..2)]));
                }
                if pay.random_bool(0.8) {
                    fields.push(format!(r#""ip":"10.0.0.{}""#, pay.random_range(0..4)));
                }
            }
            if rng.random_bool(0.6) {
                let os = ["ios", "android"][rng.random_range(0..2)];
                if kind == "payment" && pay.random_bool(0.7) {
                    fields.push(format!(r#""device":{{"os":"{os}","mobile":true,"device_id":"d{}"}}"#, pay.random_range(0..4)));
                } else {
                    fields.push(format!(r#""device":{{"os":"{os}","mobile":true}}"#));
                }
            }
            if rng.random_bool(0.5) {
                fields.push(format!(r#""utm":{{"source":"{}"}}"#, ["google", "mail"][rng.random_range(0..2)]));
            }
            fields.shuffle(&mut rng);
            format!("{{{}}}", fields.join(",")).into_bytes()
        };
        out.push((RawRecord::json(position, bytes), ingest));
    }
    out
}

/// The same records with ingestion times coarsened to `tick` ms (a different batching).
pub fn rebatch(records: &[(RawRecord, Time)], tick: u64) -> Vec<(RawRecord, Time)> {
    records.iter().map(|(r, t)| (r.clone(), tick_ceil(*t, tick))).collect()
}

/// Shuffles records that share an ingestion time (a different arrival order).
pub fn shuffle_within_times(records: &mut [(RawRecord, Time)], seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut start = 0;
    while start < records.len() {
        let end = start + records[start..].iter().take_while(|(_, t)| *t == records[start].1).count();
        records[start..end].shuffle(&mut rng);
        start = end;
    }
}

/// Runs the views over `records` (sorted by time) on `workers` threads of one process,
/// stepping to completion at every few ingestion times (so that updates arrive in many
/// small batches), and returns every view update.
pub fn run_dataflow(records: &[(RawRecord, Time)], workers: usize, config: &ViewConfig) -> Vec<Update> {
    run_dataflow_until(records, workers, config, None)
}

/// [`run_dataflow`], but with `until`, the run stops once every view is complete through
/// that time, instead of closing the input (which releases every future expiry).
pub fn run_dataflow_until(records: &[(RawRecord, Time)], workers: usize, config: &ViewConfig, until: Option<Time>) -> Vec<Update> {
    run_views(records, workers, config, until, None)
}

/// [`run_dataflow`] with only the views of `parts` built ([`build_parts`]).
pub fn run_parts(records: &[(RawRecord, Time)], workers: usize, config: &ViewConfig, parts: &[Part]) -> Vec<Update> {
    run_views(records, workers, config, None, Some(parts))
}

/// Runs [`build`], or with `parts` [`build_parts`], as [`run_dataflow_until`] says.
fn run_views(records: &[(RawRecord, Time)], workers: usize, config: &ViewConfig, until: Option<Time>, parts: Option<&[Part]>) -> Vec<Update> {
    let parts = parts.map(<[Part]>::to_vec);
    let records = Arc::new(records.to_vec());
    let updates = Arc::new(Mutex::new(Vec::new()));
    let sink = updates.clone();
    let config = config.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        let sink = sink.clone();
        let config = config.clone();
        let dataflow = worker.next_dataflow_index();
        let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
            let (input, records) = scope.new_collection::<RawRecord, isize>();
            let rows = match &parts {
                None => build(records, &config).rows(),
                Some(parts) => build_parts(records, &config, parts).rows(),
            };
            let (probe, _) = rows
                .inspect(move |(row, t, d)| sink.lock().expect("no panics while holding the lock").push((row.clone(), *t, *d)))
                .probe();
            (input, probe)
        });
        let (index, peers) = (worker.index(), worker.peers());
        let mut advances = 0usize;
        for (i, (record, time)) in records.iter().enumerate() {
            if *time > *input.time() {
                input.advance_to(*time);
                input.flush();
                advances += 1;
                if advances.is_multiple_of(2 * peers) {
                    worker.step_while(|| probe.less_than(input.time()));
                } else {
                    worker.step();
                }
            }
            if i % peers == index {
                input.insert(record.clone());
            }
        }
        match until {
            Some(until) => {
                input.advance_to(until + 1);
                input.flush();
                worker.step_while(|| probe.less_than(&(until + 1)));
                drop(input);
                worker.drop_dataflow(dataflow);
            }
            None => {
                drop(input);
                worker.step_while(|| !probe.done());
            }
        }
    })
    .expect("timely runs");
    let updates = std::mem::take(&mut *updates.lock().expect("workers are done"));
    updates
}

/// Times worth checking: every ingestion and update time, and one after the last.
pub fn checkpoints(records: &[(RawRecord, Time)], updates: &[Update]) -> Vec<Time> {
    let mut times: Vec<Time> = records.iter().map(|(_, t)| *t).chain(updates.iter().map(|(_, t, _)| *t)).collect();
    times.sort_unstable();
    times.dedup();
    if let Some(last) = times.last().copied() {
        times.push(last + 1);
    }
    times
}
