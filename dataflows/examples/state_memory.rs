//! Memory that the CLV views hold per customer, and the fraud views per card.
//!
//! Reads a file of JSON events (such as `tidemark generate --clean` writes), decodes
//! them, drops duplicate ids, and feeds the valid events at one time to a dataflow with
//! only the views asked for: `none` (the input alone), `clv` (`customer_rfm`,
//! `clv_model`, `customer_clv`) or `fraud` (`fraud_features`, `fraud_scores`,
//! `fraud_alerts`). Once the dataflow has processed everything, it prints the heap bytes
//! in use (a counting allocator). The difference between `clv` (or
//! `fraud`) and `none` over the same file, divided by the customers (or cards), is the
//! state per customer (or card): `scripts/bench-state-memory` does that.
//!
//! `cargo run --release -p tidemark-dataflows --example state_memory -- FILE none|clv|fraud`
//!
//! Prints one line: `mode <m> events <n> customers <c> cards <k> rows <r> live_bytes <b>`
//! (rows: `customer_rfm` rows for `clv`, `fraud_features` rows for `fraud`).

use std::collections::HashSet;
use std::io::BufRead;
use std::alloc::System;
use std::sync::Arc;

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

use differential_dataflow::input::Input;
use timely::dataflow::operators::{Inspect, Probe};
use tidemark_dataflows::decode::{decode, DecodeConfig, RawRecord};
use tidemark_dataflows::event::{Event, EventType};
use tidemark_dataflows::time::Time;

// Every allocation is counted, so live heap bytes are exact (resident memory is not:
// the allocator reuses what decoding freed).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Heap bytes allocated and not yet freed.
fn live_bytes() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(mode)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: state_memory FILE none|clv|fraud");
        std::process::exit(2);
    };
    if !["none", "clv", "fraud"].contains(&mode.as_str()) {
        eprintln!("mode {mode:?} is not none, clv or fraud");
        std::process::exit(2);
    }
    let file = std::fs::File::open(path).unwrap_or_else(|e| {
        eprintln!("cannot open {path}: {e}");
        std::process::exit(1)
    });
    // Every event is valid whatever its age: this measures state, not retention.
    let config = DecodeConfig { retention_ms: 100 * 365 * 86_400_000, ..DecodeConfig::default() };
    let mut seen = HashSet::new();
    let mut events: Vec<Arc<Event>> = Vec::new();
    for (i, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let Ok(bytes) = line else { break };
        let now: Time = 4_000_000_000_000;
        if let Ok(e) = decode(&RawRecord::json(i as u64, bytes), now, &config) {
            if e.retracts.is_none() && e.event_type != EventType::Retraction && seen.insert(e.event_id.clone()) {
                events.push(Arc::new(e));
            }
        }
    }
    drop(seen);
    let customers = events.iter().filter(|e| e.event_type == EventType::Purchase).map(|e| e.user_id.clone()).collect::<HashSet<_>>().len();
    let cards = events.iter().filter(|e| e.event_type == EventType::Payment).filter_map(|e| e.card_id.clone()).collect::<HashSet<_>>().len();
    let n = events.len();
    let mode = mode.clone();
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
    std::process::exit(0);
}
