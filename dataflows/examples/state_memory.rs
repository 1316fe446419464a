//! Heap bytes that views hold: each view of the engine's dataflow, and the CLV views per
//! customer and the fraud views per card.
//!
//! Every allocation is counted (a counting allocator), so the bytes are exact and the
//! same in every run over the same file. Two ways to run it over a file of JSON events
//! (such as `tidemark generate` writes):
//!
//! - `state_memory FILE --parts P,Q,...` (or `--parts none`, `--parts all`): the records
//!   go raw through the engine's own dataflow
//!   ([`build_parts`](tidemark_dataflows::views::build_parts)) with only those parts
//!   and the parts they need: `sessions`, `funnel`, `kpis`, `rejected_by_reason`,
//!   `rejects`, `clv` (`customer_rfm`, `clv_model`, `customer_clv`), `fraud`
//!   (`fraud_features`, `fraud_scores`, `fraud_alerts`). Decoding, expiry and
//!   deduplication are always there. Every record is ingested at one time: the file's
//!   replay clock at its end, as `tidemark run --input` reaches it (the latest event time,
//!   on the 10 ms tick), with the default view settings (168 hours of retention). The
//!   views' trace handles are held, as a serving worker holds them. Prints one JSON line:
//!
//!   `{"parts":["sessions"],"records":N,"ingest_time":T,"empty_bytes":E,"live_bytes":L,"rows":{"sessions":R}}`
//!
//!   `empty_bytes`: heap in use once the dataflow is built, before the first record;
//!   `live_bytes`: once it has processed every record (the records themselves are
//!   freed by then, unless a view keeps them); `rows`: rows of every view built (with
//!   multiplicity). The difference in `live_bytes` between a run with a part and one
//!   without it (with the parts it needs in both) is that part's state;
//!   `scripts/load-memory` does that.
//!
//! - `state_memory FILE none|clv|fraud`: decodes the file, drops duplicate ids, and feeds
//!   the valid events at one time to a dataflow with no views (`none`), the CLV views
//!   only (`clv`) or the fraud views only (`fraud`). The difference between `clv` (or
//!   `fraud`) and `none` over the same file, divided by the customers (or cards), is the
//!   state per customer (or card): `scripts/bench-state-memory` does that. Prints one
//!   line: `mode <m> events <n> customers <c> cards <k> rows <r> live_bytes <b>` (rows:
//!   `customer_rfm` rows for `clv`, `fraud_features` rows for `fraud`).
//!
//! `state_memory --list-parts` prints every part, one a line: its name, its views and the
//! parts it needs (tab-separated, lists comma-separated).
//!
//! `cargo run --release -p tidemark-dataflows --example state_memory -- FILE --parts sessions,funnel`

use std::alloc::System;
use std::collections::HashSet;
use std::io::BufRead;
use std::sync::Arc;

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

use differential_dataflow::input::Input;
use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::trace::cursor::{cursor_list, Cursor};
use differential_dataflow::trace::implementations::ValSpine;
use differential_dataflow::trace::TraceReader;
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::ProbeHandle;
use timely::progress::Antichain;
use tidemark_dataflows::decode::{decode, peek_event_ts, DecodeConfig, RawRecord};
use tidemark_dataflows::event::{Event, EventType};
use tidemark_dataflows::time::{tick_ceil, Time};
use tidemark_dataflows::views::{build_parts, Part, ViewArrangement, ViewConfig};

// Every allocation is counted, so live heap bytes are exact (resident memory is not:
// the allocator reuses what decoding freed).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Heap bytes allocated and not yet freed.
fn live_bytes() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

const USAGE: &str = "usage: state_memory FILE none|clv|fraud, state_memory FILE --parts none|all|PART,PART,..., or state_memory --list-parts";

fn fail(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1..).unwrap_or_default() {
        [flag] if flag == "--list-parts" => {
            for part in Part::ALL {
                let needs: Vec<&str> = part.needs().iter().map(|p| p.name()).collect();
                println!("{}\t{}\t{}", part.name(), part.views().join(","), needs.join(","));
            }
        }
        [path, flag, list] if flag == "--parts" => {
            let parts: Vec<Part> = match list.as_str() {
                "none" => Vec::new(),
                "all" => Part::ALL.to_vec(),
                _ => list
                    .split(',')
                    .map(|name| {
                        Part::from_name(name.trim()).unwrap_or_else(|| {
                            let names: Vec<&str> = Part::ALL.iter().map(|p| p.name()).collect();
                            fail(&format!("{name:?} is not a part; the parts are {}", names.join(", ")))
                        })
                    })
                    .collect(),
            };
            measure_parts(path, parts);
        }
        [path, mode] if ["none", "clv", "fraud"].contains(&mode.as_str()) => measure_per_customer(path, mode),
        _ => fail(USAGE),
    }
    std::process::exit(0);
}

fn open(path: &str) -> std::io::BufReader<std::fs::File> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| {
        eprintln!("cannot open {path}: {e}");
        std::process::exit(1)
    });
    std::io::BufReader::with_capacity(1 << 20, file)
}

/// The records of a file of JSON lines, numbered from 1 as `tidemark run --input`
/// numbers them (blank lines are skipped).
fn records(path: &str) -> impl Iterator<Item = RawRecord> + use<'_> {
    open(path).split(b'\n').enumerate().filter_map(move |(i, line)| {
        let mut bytes = line.unwrap_or_else(|e| {
            eprintln!("reading {path}: {e}");
            std::process::exit(1)
        });
        while matches!(bytes.last(), Some(b'\r')) {
            bytes.pop();
        }
        (!bytes.iter().all(u8::is_ascii_whitespace)).then(|| RawRecord::json(i as u64 + 1, bytes))
    })
}

/// Rows (with multiplicity) of an arranged view, at every time it holds.
fn rows<K, V>(trace: &mut TraceAgent<ValSpine<K, V, Time, isize>>) -> isize
where
    K: differential_dataflow::ExchangeData,
    V: differential_dataflow::ExchangeData,
{
    let mut upper = Antichain::new();
    trace.read_upper(&mut upper);
    let batches = trace.batches_through(upper.borrow()).expect("the trace's own upper is a clean cut");
    let (mut cursor, storage) = cursor_list(batches);
    let mut total = 0;
    while cursor.key_valid(&storage) {
        while cursor.val_valid(&storage) {
            cursor.map_times(&storage, |_, r| total += *r);
            cursor.step_val(&storage);
        }
        cursor.step_key(&storage);
    }
    total
}

/// Named row counters of the views built, run once the heap has been measured.
type RowCounters = Vec<(&'static str, Box<dyn FnMut() -> isize>)>;

/// Probes `view` and keeps its trace handle (without a reader, an arrangement may
/// discard its contents), to count its rows later.
fn hold<K, V>(name: &'static str, view: ViewArrangement<'_, K, V>, probe: &ProbeHandle<Time>, counters: &mut RowCounters)
where
    K: differential_dataflow::ExchangeData,
    V: differential_dataflow::ExchangeData,
{
    view.stream.clone().probe_with(probe);
    let mut trace = view.trace;
    counters.push((name, Box::new(move || rows(&mut trace))));
}

/// `--parts`: the live heap of the engine's dataflow with only `parts` built.
fn measure_parts(path: &str, parts: Vec<Part>) {
    let config = ViewConfig::default();
    // The replay clock at the end of the file: every record is ingested then.
    let mut latest = None;
    let mut count = 0u64;
    for record in records(path) {
        count += 1;
        if let Some(ts) = peek_event_ts(&record) {
            latest = latest.max(Some(ts));
        }
    }
    let Some(latest) = latest else { fail(&format!("{path} has no record with an event time")) };
    let time: Time = tick_ceil(latest.max(0) as u64, config.tick_ms);
    let path = path.to_owned();
    timely::execute_directly(move |worker| {
        let probe = ProbeHandle::new();
        let (mut input, mut counters) = worker.dataflow::<Time, _, _>(|scope| {
            let (input, records) = scope.new_collection::<RawRecord, isize>();
            let v = build_parts(records, &config, &parts);
            v.events.inner.probe_with(&probe);
            v.all_rejects.inner.probe_with(&probe);
            let mut counters = RowCounters::new();
            if let Some(view) = v.sessions {
                hold("sessions", view, &probe, &mut counters);
            }
            if let Some(view) = v.funnel {
                hold("funnel", view, &probe, &mut counters);
            }
            if let Some(view) = v.kpis {
                hold("kpis", view, &probe, &mut counters);
            }
            if let Some(view) = v.rejected_by_reason {
                hold("rejected_by_reason", view, &probe, &mut counters);
            }
            if let Some(view) = v.rejects {
                hold("rejects", view, &probe, &mut counters);
            }
            if let Some(clv) = v.clv {
                hold("customer_rfm", clv.customer_rfm, &probe, &mut counters);
                hold("clv_model", clv.clv_model, &probe, &mut counters);
                hold("customer_clv", clv.customer_clv, &probe, &mut counters);
            }
            if let Some(fraud) = v.fraud {
                hold("fraud_features", fraud.features, &probe, &mut counters);
                hold("fraud_scores", fraud.scores, &probe, &mut counters);
                hold("fraud_alerts", fraud.alerts, &probe, &mut counters);
            }
            (input, counters)
        });
        input.advance_to(time);
        let empty = live_bytes();
        for (i, record) in records(&path).enumerate() {
            input.insert(record);
            // Process as it goes, so that the records waiting do not pile up.
            if i % 65_536 == 65_535 {
                input.flush();
                worker.step();
            }
        }
        input.advance_to(time + 1);
        input.flush();
        while probe.less_than(&(time + 1)) {
            worker.step();
        }
        // Settle: let compaction and merging run.
        for _ in 0..100 {
            worker.step();
        }
        let live = live_bytes();
        let rows: Vec<String> = counters.iter_mut().map(|(name, count)| format!("\"{name}\":{}", count())).collect();
        let names: Vec<String> = parts.iter().map(|p| format!("\"{}\"", p.name())).collect();
        println!(
            "{{\"parts\":[{}],\"records\":{count},\"ingest_time\":{time},\"empty_bytes\":{empty},\"live_bytes\":{live},\"rows\":{{{}}}}}",
            names.join(","),
            rows.join(",")
        );
        // Keep the input (and so the dataflow, whose expiries are still pending) alive
        // until measured; then stop without draining.
        drop(input);
    });
}

/// `none|clv|fraud`: the CLV or fraud views over the file's valid events.
fn measure_per_customer(path: &str, mode: &str) {
    // Every event is valid whatever its age: this measures state, not retention.
    let config = DecodeConfig { retention_ms: 100 * 365 * 86_400_000, ..DecodeConfig::default() };
    let mut seen = HashSet::new();
    let mut events: Vec<Arc<Event>> = Vec::new();
    for (i, line) in open(path).split(b'\n').enumerate() {
        let Ok(bytes) = line else { break };
        let now: Time = 4_000_000_000_000;
        if let Ok(e) = decode(&RawRecord::json(i as u64, bytes), now, &config) {
            if e.retracts().is_none() && e.event_type != EventType::Retraction && seen.insert(e.event_id().to_owned()) {
                events.push(Arc::new(e));
            }
        }
    }
    drop(seen);
    let customers = events.iter().filter(|e| e.event_type == EventType::Purchase).map(|e| e.user_id().to_owned()).collect::<HashSet<_>>().len();
    let cards = events.iter().filter(|e| e.event_type == EventType::Payment).filter_map(|e| e.card_id().map(str::to_owned)).collect::<HashSet<_>>().len();
    let n = events.len();
    let mode = mode.to_owned();
    timely::execute_directly(move |worker| {
        // The views' trace handles are kept (`_traces`): without a reader, an arrangement
        // may discard its contents.
        let rows = std::rc::Rc::new(std::cell::Cell::new(0isize));
        let (mut input, probe, _traces) = worker.dataflow::<Time, _, _>(|scope| {
            let (input, events) = scope.new_collection::<Arc<Event>, isize>();
            let (probe, traces): (_, Box<dyn std::any::Any>) = match mode.as_str() {
                "clv" => {
                    let v = tidemark_dataflows::clv::dataflow::build(events, &Default::default());
                    let rows = rows.clone();
                    v.customer_rfm.clone().as_collection(|_, _| ()).inner.inspect(move |(_, _, d)| rows.set(rows.get() + *d));
                    let traces = (v.customer_rfm.trace.clone(), v.clv_model.trace.clone(), v.customer_clv.trace.clone());
                    (v.customer_clv.stream.probe().0, Box::new(traces))
                }
                "fraud" => {
                    let v = tidemark_dataflows::fraud::build(events, &Default::default());
                    let rows = rows.clone();
                    v.features.clone().as_collection(|_, _| ()).inner.inspect(move |(_, _, d)| rows.set(rows.get() + *d));
                    let traces = (v.features.trace.clone(), v.scores.trace.clone(), v.alerts.trace.clone());
                    (v.alerts.stream.probe().0, Box::new(traces))
                }
                _ => (events.inner.probe().0, Box::new(())),
            };
            (input, probe, traces)
        });
        // The events stay alive until the measurement, so that the views cannot reuse their
        // memory and hide their own in it; strings the rows share with the events (ids)
        // are counted with the events, as they are in the engine, which keeps them too.
        let held = events.clone();
        input.advance_to(0);
        for e in events {
            input.insert(e);
        }
        input.advance_to(1);
        input.flush();
        while probe.less_than(&1) {
            worker.step();
        }
        // Settle: let compaction and merging run.
        for _ in 0..100 {
            worker.step();
        }
        let live = live_bytes();
        println!("mode {mode} events {n} customers {customers} cards {cards} rows {} live_bytes {live}", rows.get());
        // Keep the input (and so the dataflow) alive until measured; then stop without
        // draining.
        drop(input);
        drop(held);
    });
}
