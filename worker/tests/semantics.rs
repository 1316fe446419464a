//! The semantics of docs/SEMANTICS.md through the two ways records reach a running
//! engine: a file replay (`tidemark run --input`) and gRPC `Ingest` on a served cluster.
//! The records of every scenario file (`dataflows/tests/scenarios/`) go through both,
//! and the views must equal the naive reference over the same records at the ingestion
//! times those paths give them: the replay clock of the spec, and the acknowledged
//! times in acknowledgement order. Then the decisions that depend on the path itself:
//! the first delivery to be acknowledged is the one kept, acknowledged times never go
//! back, and rejected records do not move a replay's clock.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tidemark_coordinator::config::ServeOptions;
use tidemark_dataflows::decode::{check, peek_event_ts, Format, RawRecord};
use tidemark_dataflows::reference::Reference;
use tidemark_dataflows::scenario::Scenario;
use tidemark_dataflows::time::{tick_ceil, Time};
use tidemark_dataflows::views::ViewConfig;
use tidemark_proto::v1::{IngestRequest, QueryRequest};
use tidemark_worker::output::row_json;
use tidemark_worker::source::now_ms;

use common::serving::{event, query_pages, query_rows, reference_rows, InProcess, Pool};
use common::{tidemark_run, wait_with_timeout, Scratch};

/// The views compared: those whose rows depend only on the events (the CLV and fraud
/// views have their own oracle tests, with their own settings).
const VIEWS: [&str; 5] = ["sessions", "funnel", "kpis", "rejected_by_reason", "rejects"];

/// A worker's view settings with `hours` of retention (the others at their defaults).
fn config(hours: u64) -> ViewConfig {
    let mut config = ViewConfig::default();
    config.decode.retention_ms = hours * 3_600_000;
    config
}

/// The replay clock of docs/SEMANTICS.md ("Ingestion time"), written from the spec: the
/// ingestion time of every line of a file (`None` for a blank line, which is no record).
/// The clock starts at the first accepted record's event time; a record moves it on to
/// its own event time (on the tick) only if it is accepted at that time and lies at most
/// one retention ahead; every record is ingested at the clock as it stands after it.
fn replay_clock(lines: &[Vec<u8>], config: &ViewConfig) -> Vec<Option<Time>> {
    let own = |n: usize, line: &[u8]| -> Option<Time> {
        let record = RawRecord { format: Format::Json, position: n as u64 + 1, bytes: line.to_vec() };
        let own = tick_ceil(peek_event_ts(&record)?.max(0) as u64, config.tick_ms);
        check(Format::Json, line, record.position, own, &config.decode).is_ok().then_some(own)
    };
    let blank = |line: &[u8]| line.iter().all(u8::is_ascii_whitespace);
    let mut clock = lines.iter().enumerate().filter(|(_, l)| !blank(l)).find_map(|(n, l)| own(n, l)).unwrap_or(0);
    lines
        .iter()
        .enumerate()
        .map(|(n, line)| {
            if blank(line) {
                return None;
            }
            if let Some(t) = own(n, line) {
                if t > clock && t <= clock + config.decode.retention_ms {
                    clock = t;
                }
            }
            Some(clock)
        })
        .collect()
}

/// Replays `lines` (one record each) on `threads` worker threads; the views as of the
/// end, as JSON rows by view, and that time.
fn replay(scratch: &Scratch, name: &str, lines: &[Vec<u8>], prefix: &[u8], threads: usize, hours: u64) -> (BTreeMap<String, Vec<String>>, Time) {
    let input = scratch.path(&format!("{name}.jsonl"));
    let mut file = std::fs::File::create(&input).expect("a file");
    file.write_all(prefix).expect("written");
    for line in lines {
        file.write_all(line).expect("written");
        file.write_all(b"\n").expect("written");
    }
    drop(file);
    let out = scratch.path(&format!("{name}-{threads}.json"));
    let (input, out_arg) = (input.to_str().expect("utf-8"), out.to_str().expect("utf-8"));
    let child = tidemark_run(&["--input", input, "-w", &threads.to_string(), "--retention-hours", &hours.to_string(), "-q", "--views-out", out_arg])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tidemark run starts");
    let output = wait_with_timeout(child, Duration::from_secs(120), name);
    assert!(output.status.success(), "{name}: {}", String::from_utf8_lossy(&output.stderr));
    let doc: Value = serde_json::from_slice(&std::fs::read(&out).expect("views written")).expect("JSON");
    let views = VIEWS
        .iter()
        .map(|v| {
            let mut rows: Vec<String> = doc["views"][*v].as_array().expect("rows").iter().map(Value::to_string).collect();
            rows.sort();
            (v.to_string(), rows)
        })
        .collect();
    (views, doc["as_of"].as_u64().expect("as_of"))
}

/// The reference's rows as a replay writes them.
fn reference_json(reference: &Reference, at: Time) -> BTreeMap<String, Vec<String>> {
    let mut views: BTreeMap<String, Vec<String>> = VIEWS.iter().map(|v| (v.to_string(), Vec::new())).collect();
    for (row, count) in reference.views_at(at) {
        if let Some(rows) = views.get_mut(row.view()) {
            let json = row_json(&row).to_string();
            rows.extend((0..count).map(|_| json.clone()));
        }
    }
    views.values_mut().for_each(|rows| rows.sort());
    views
}

/// The scenario's retention in whole hours (a worker takes hours).
fn hours_of(scenario: &Scenario) -> u64 {
    scenario.config.decode.retention_ms.div_ceil(3_600_000)
}

#[test]
fn replays_of_every_scenario_equal_the_reference_at_the_replay_clock() {
    let scratch = Scratch::new("semantics-replay");
    let files = Scenario::files();
    assert!(files.len() >= 10, "the scenarios are missing");
    for path in files {
        let scenario = Scenario::parse(&path);
        let hours = hours_of(&scenario);
        let config = config(hours);
        let lines: Vec<Vec<u8>> = scenario.records.iter().map(|(r, _)| r.bytes.clone()).collect();
        let times = replay_clock(&lines, &config);
        let records: Vec<(RawRecord, Time)> = lines
            .iter()
            .zip(&times)
            .enumerate()
            .filter_map(|(n, (bytes, t))| t.map(|t| (RawRecord::json(n as u64 + 1, bytes.clone()), t)))
            .collect();
        let reference = Reference::new(&records, &config);
        for threads in [1, 2] {
            let (views, as_of) = replay(&scratch, &scenario.name, &lines, b"", threads, hours);
            let last = times.iter().flatten().max().copied().expect("records");
            assert_eq!(as_of, last, "{}: the replay ends at its clock's last time", scenario.name);
            let expected = reference_json(&reference, as_of);
            for view in VIEWS {
                assert_eq!(views[view], expected[view], "{} at {threads} threads: {view} differs from the reference", scenario.name);
            }
        }
    }
}

/// A rejected record does not move the replay clock: not one dated 2099 (later records
/// stay on time, not `too_late`), nor one dated 2150 (the views are not emptied at the
/// end); a BOM is no part of the first record, and records before the first accepted one
/// are ingested at its time (their rejects are still there at the end).
#[test]
fn rejected_records_do_not_move_the_replay_clock() {
    let scratch = Scratch::new("semantics-clock");
    let line = |id: &str, ts: &str| format!(r#"{{"event_id":"{id}","event_type":"page_view","event_ts":"{ts}","user_id":"u{id}"}}"#).into_bytes();
    let lines = vec![
        b"not json".to_vec(),
        line("a", "2026-11-01T10:00:00Z"),
        b"   ".to_vec(),
        line("far", "2099-01-01T00:00:00Z"),
        line("b", "2026-11-01T10:05:00Z"),
        line("never", "2150-01-01T00:00:00Z"),
        b"".to_vec(),
        line("c", "2026-11-01T10:10:00Z"),
    ];
    let end = tidemark_dataflows::time::parse_timestamp("2026-11-01T10:10:00Z").expect("a time") as Time;
    // As it is, and without the leading malformed line (the BOM then precedes an event).
    for (variant, lines) in [("leading-malformed", &lines[..]), ("bom-event", &lines[1..])] {
        for threads in [1, 2] {
            let (views, as_of) = replay(&scratch, variant, lines, b"\xEF\xBB\xBF", threads, 24);
            assert_eq!(as_of, end, "{variant}: the clock ends at the last accepted record");
            let sessions = &views["sessions"];
            for user in ["ua", "ub", "uc"] {
                let n = sessions.iter().filter(|r| r.contains(&format!(r#""user_id":"{user}""#))).count();
                assert_eq!(n, 1, "{variant}, {user} at {threads} threads: {sessions:?}");
            }
            let reasons: BTreeMap<String, i64> = views["rejected_by_reason"]
                .iter()
                .map(|r| {
                    let v: Value = serde_json::from_str(r).expect("JSON");
                    (v["reason"].as_str().expect("a reason").to_owned(), v["count"].as_i64().expect("a count"))
                })
                .collect();
            let mut expected = BTreeMap::from([("timestamp_out_of_range".to_owned(), 2)]);
            if variant == "leading-malformed" {
                expected.insert("malformed".to_owned(), 1);
            }
            assert_eq!(reasons, expected, "{variant} at {threads} threads");
        }
    }
}

/// Every scenario's records over gRPC `Ingest`, one request per ingestion time of the
/// file, sent one after another to a cluster of 1 process of 1 thread and of 2 processes
/// of 2 threads: the views equal the reference over the records at their acknowledged
/// times, in acknowledgement order. Then twelve ids delivered twice, in two requests,
/// keep the first delivery acknowledged.
#[test]
fn ingest_of_every_scenario_equals_the_reference_in_acknowledgement_order() {
    // Long enough that the scenarios' days (November 2026) are inside the horizon.
    let hours = (now_ms() as i64 - 1_793_491_200_000).max(0) as u64 / 3_600_000 + 24 * 14;
    let config = config(hours);
    let mut requests: Vec<Vec<Vec<u8>>> = Vec::new();
    for path in Scenario::files() {
        let scenario = Scenario::parse(&path);
        let mut at = None;
        for (record, time) in &scenario.records {
            if at != Some(*time) {
                requests.push(Vec::new());
                at = Some(*time);
            }
            requests.last_mut().expect("a request").push(record.bytes.clone());
        }
    }
    for (processes, threads) in [(1, 1), (2, 2)] {
        let scratch = Scratch::new(&format!("semantics-ingest-{processes}x{threads}"));
        let pool = Pool::start(processes, threads, &scratch.0, &["--retention-hours", &hours.to_string()]);
        tokio::runtime::Runtime::new().expect("a runtime").block_on(async {
            let coordinator = InProcess::start(pool.addresses(), ServeOptions::default(), None).await;
            let mut client = coordinator.client().await;
            let mut records: Vec<(RawRecord, Time)> = Vec::new();
            let mut last: Time = 0;
            for (k, events) in requests.iter().enumerate() {
                let ack = ingest_retrying(&mut client, events.clone()).await;
                assert!(ack.visible_at >= last, "acknowledged times never go back: {} after {last}", ack.visible_at);
                last = ack.visible_at;
                // Positions in acknowledgement order; only their order matters.
                records.extend(events.iter().enumerate().map(|(i, bytes)| (RawRecord::json(((k as u64) << 17) | i as u64, bytes.clone()), ack.visible_at)));
            }
            let reference = Reference::new(&records, &config);
            for view in ["sessions", "funnel", "kpis", "rejected_by_reason"] {
                let served = query_rows(&mut client, view, last).await;
                assert_eq!(served, reference_rows(&reference, last, view), "{processes}x{threads}: {view} differs from the reference");
            }

            // The first delivery acknowledged is kept, whichever thread or tick the two
            // deliveries meet in; the second is a duplicate and changes nothing.
            let now = now_ms() as i64;
            for n in 0..12 {
                let (first, second) = if n % 2 == 0 { ("page_view", "checkout") } else { ("checkout", "page_view") };
                let user = format!("twice{n}");
                let a = ingest_retrying(&mut client, vec![event(&format!("t{n}"), first, now, &user, "")]).await;
                let b = ingest_retrying(&mut client, vec![event(&format!("t{n}"), second, now, &user, "")]).await;
                assert!(b.visible_at >= a.visible_at);
                last = b.visible_at;
            }
            let (kpis, _) = query_pages(&mut client, QueryRequest { view: "sessions".into(), as_of: Some(last), ..Default::default() }).await;
            let mut kept = BTreeMap::new();
            for bytes in kpis.keys() {
                let row = <tidemark_proto::v1::Row as prost::Message>::decode(bytes.as_slice()).expect("a row");
                let text = format!("{row:?}");
                for n in 0..12 {
                    if text.contains(&format!("\"twice{n}\"")) {
                        // sessions columns: user, session, derived, start, end, events, page_views, ...
                        let page_views = match &row.values[6].kind {
                            Some(tidemark_proto::v1::value::Kind::Int64(v)) => *v,
                            other => panic!("page_views: {other:?}"),
                        };
                        kept.insert(n, page_views);
                    }
                }
            }
            let expected: BTreeMap<i32, i64> = (0..12).map(|n| (n, i64::from(n % 2 == 0))).collect();
            assert_eq!(kept, expected, "{processes}x{threads}: page_views by pair (1 where the page view came first)");
            let _ = coordinator.stop.send(());
        });
    }
}

/// One request on its own stream, retried while the cluster is still starting.
async fn ingest_retrying(client: &mut tidemark_proto::v1::tidemark_client::TidemarkClient<tonic::transport::Channel>, events: Vec<Vec<u8>>) -> tidemark_proto::v1::IngestResponse {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let sent = async {
            let mut acks = client.ingest(tokio_stream::iter(vec![IngestRequest { events: events.clone() }])).await?.into_inner();
            acks.message().await?.ok_or_else(|| tonic::Status::internal("no acknowledgement"))
        };
        match sent.await {
            Ok(ack) => return ack,
            Err(status) if status.code() == tonic::Code::Unavailable && std::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(status) => panic!("Ingest: {status}"),
        }
    }
}
