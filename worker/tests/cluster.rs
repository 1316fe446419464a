//! The views across two timely processes of two worker threads each, on loopback, equal
//! the naive reference at many times.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{free_ports, tidemark_run, wait_with_timeout, Scratch};
use tidemark_dataflows::generator::{Generator, GeneratorConfig};
use tidemark_dataflows::reference::{difference, state_at, Reference};
use tidemark_dataflows::time::Time;
use tidemark_dataflows::views::{ViewConfig, ViewRow};
use tidemark_worker::config::InputFormat;
use tidemark_worker::source::{FileSource, Source};

#[derive(serde::Deserialize)]
struct Change {
    time: Time,
    diff: isize,
    row: ViewRow,
}

#[test]
fn two_processes_equal_the_reference() {
    let scratch = Scratch::new("cluster");
    // About 100 minutes of traffic with late events, duplicates, corrections and
    // malformed records; a one-hour retention makes expiry happen inside the run.
    let mut config = GeneratorConfig { seed: 7, events_per_sec: 1, users: 1500, ..GeneratorConfig::default() };
    config.retention_ms = 3_600_000;
    config.malformed_rate = 0.02;
    config.duplicate_rate = 0.03;
    config.correction_rate = 0.03;
    let input = scratch.path("events.jsonl");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&input).expect("input file"));
        for generated in Generator::new(config, 0, 1).take(6000) {
            file.write_all(&generated.record.bytes).expect("write");
            file.write_all(b"\n").expect("write");
        }
    }

    let ports = free_ports(2);
    let peers = format!("127.0.0.1:{},127.0.0.1:{}", ports[0], ports[1]);
    let children: Vec<_> = (0..2)
        .map(|process| {
            let changes = scratch.path(&format!("changes.{process}.jsonl"));
            tidemark_run(&["--input", input.to_str().expect("utf-8"), "--processes", "2", "-w", "2", "--retention-hours", "1", "-q"])
                .args(["--process", &process.to_string(), "--peers", &peers, "--changes-out", changes.to_str().expect("utf-8")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("tidemark starts")
        })
        .collect();
    for (process, child) in children.into_iter().enumerate() {
        let output = wait_with_timeout(child, Duration::from_secs(180), &format!("process {process}"));
        assert!(output.status.success(), "process {process} failed: {}", String::from_utf8_lossy(&output.stderr));
    }

    let mut updates = Vec::new();
    for process in 0..2 {
        let text = std::fs::read_to_string(scratch.path(&format!("changes.{process}.jsonl"))).expect("changes file");
        let before = updates.len();
        for line in text.lines() {
            let change: Change = serde_json::from_str(line).expect("a change line");
            updates.push((change.row, change.time, change.diff));
        }
        assert!(updates.len() > before, "process {process} holds a share of the views");
    }

    // The records and replay times as every worker saw them.
    let mut view_config = ViewConfig::default();
    view_config.decode.retention_ms = 3_600_000;
    let mut source = FileSource::open(&input, InputFormat::Auto, 10, view_config.decode.clone(), 0, 1, None).expect("input reopens");
    let mut records = Vec::new();
    let mut batch = Vec::new();
    while let Some(time) = source.next_batch(&mut batch, 1024).expect("input reads") {
        records.extend(batch.drain(..).map(|r| (r, time)));
    }
    let last = records.last().expect("records").1;

    let mut times: Vec<Time> = updates.iter().map(|u| u.1).filter(|t| *t <= last).collect();
    times.sort_unstable();
    times.dedup();
    let step = (times.len() / 25).max(1);
    let checkpoints: Vec<Time> = times.iter().copied().step_by(step).chain([last]).collect();
    assert!(checkpoints.len() >= 20, "enough distinct times to check");
    let mut expired = false;
    let reference = Reference::new(&records, &view_config);
    for t in checkpoints {
        let expected = reference.views_at(t);
        let actual = state_at(&updates, t);
        let diff = difference(&actual, &expected);
        assert!(diff.is_empty(), "time {t}: views differ:\n{diff}");
        expired |= updates.iter().any(|(row, time, diff)| *time <= t && *diff < 0 && matches!(row, ViewRow::Sessions(_)));
    }
    assert!(expired, "the run is long enough for sessions to change or expire");
    let state = state_at(&updates, last);
    for view in ["sessions", "funnel", "kpis", "rejected_by_reason", "rejects", "customer_rfm", "clv_model", "customer_clv", "fraud_features", "fraud_scores"] {
        assert!(state.keys().any(|row| row.view() == view), "{view} is not empty at the end");
    }
}
