//! What every example shares: feed a few records into the views on one worker thread,
//! print one view's contents at chosen times, and print its changes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use differential_dataflow::VecCollection;
use tidemark_dataflows::decode::{Format, RawRecord};
use tidemark_dataflows::time::Time;
use tidemark_dataflows::views::{build, ViewConfig, ViewRow, Views};

/// 2026-11-01T10:30:00Z as an ingestion time (ms): the examples' events happen shortly before.
pub const AT_10_30: Time = 1_793_529_000_000;

/// Feeds `(ingestion time, JSON line)` pairs to the views, in order, and prints the rows
/// that `view` selects as of each ingestion time, then every change with its time and diff.
pub fn show(records: &[(Time, &str)], view: for<'s> fn(&Views<'s>) -> VecCollection<'s, Time, ViewRow>) {
    let updates: Arc<Mutex<Vec<(ViewRow, Time, isize)>>> = Arc::default();
    let sink = updates.clone();
    let records: Vec<(Time, RawRecord)> = records
        .iter()
        .enumerate()
        .map(|(i, (t, json))| (*t, RawRecord { format: Format::Json, position: i as u64, bytes: json.as_bytes().to_vec() }))
        .collect();
    let times: Vec<Time> = records.iter().map(|(t, _)| *t).collect();
    timely::execute_directly(move |worker| {
        let mut input = worker.dataflow::<Time, _, _>(|scope| {
            let (input, collection) = scope.new_collection::<RawRecord, isize>();
            let views = build(collection, &ViewConfig::default());
            view(&views).inspect(move |(row, t, d)| sink.lock().expect("one thread").push((row.clone(), *t, *d)));
            input
        });
        for (time, record) in records {
            input.advance_to(time);
            input.insert(record);
        }
    });
    let mut updates = std::mem::take(&mut *updates.lock().expect("the dataflow has finished"));
    updates.sort_by_key(|(_, t, _)| *t);
    let mut distinct_times = times;
    distinct_times.dedup();
    let last = *distinct_times.last().expect("examples feed records");
    for at in distinct_times {
        let mut contents: BTreeMap<String, isize> = BTreeMap::new();
        for (row, _, d) in updates.iter().filter(|(_, t, _)| *t <= at) {
            *contents.entry(display(row)).or_default() += d;
        }
        println!("as of ingestion time {at}:");
        for (row, count) in contents.into_iter().filter(|(_, c)| *c != 0) {
            println!("  {count:+} {row}");
        }
    }
    println!("changes (time, diff, row):");
    for (row, t, d) in updates.iter().filter(|(_, t, _)| *t <= last) {
        println!("  {t} {d:+} {}", display(row));
    }
    let expiring = updates.iter().filter(|(_, t, _)| *t > last).count();
    println!("and {expiring} later changes as the rows leave the retention horizon (7 days after their event time)");
}

/// A row as JSON, except that a rejected record shows its bytes as text.
fn display(row: &ViewRow) -> String {
    match row {
        ViewRow::Rejects(r) => format!("rejects[{:?}] position {}: {}: {}", r.reason, r.position, r.detail, String::from_utf8_lossy(&r.raw)),
        _ => serde_json::to_string(row).expect("rows serialize"),
    }
}
