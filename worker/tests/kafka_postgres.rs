//! End to end, with real servers: generated traffic (with malformed, duplicate, late and
//! corrected records) → a tansu broker (4 partitions) → a cluster of 2 worker processes
//! of 2 threads → PostgreSQL tables of every view, which must equal the reference
//! implementation over the records the topic holds, and a dead-letter topic that must
//! hold exactly the rejected records, once each. Then the same with a worker process
//! killed (`kill -9`) mid-stream and the cluster restarted, with the broker restarted,
//! and with PostgreSQL restarted.

mod broker;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use broker::Broker;
use common::postgres::Postgres;
use common::{free_ports, Scratch};
use tidemark_dataflows::decode::{Format, RawRecord};
use tidemark_dataflows::reference::Reference;
use tidemark_dataflows::time::Time;
use tidemark_dataflows::views::ViewConfig;
use tidemark_worker::kafka::{kafka_origin, kafka_position, read_topic, replay_times, KafkaConnect};
use tidemark_worker::serve::schema;
use tidemark_worker::sink::postgres::{read_frontier, read_table};

const TOPIC: &str = "events";
const DEAD_LETTER: &str = "events-dead-letter";
const TICK_MS: u64 = 10;

/// The scenarios share two cores: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    KillWorker,
    RestartBroker,
    RestartPostgres,
}

struct Cluster {
    children: Vec<Child>,
    logs: Vec<std::path::PathBuf>,
}

impl Cluster {
    fn start(scratch: &Scratch, broker: &Broker, postgres_url: &str, generation: usize) -> Cluster {
        let timely = free_ports(2);
        let grpc = free_ports(2);
        let peers: Vec<String> = timely.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut logs = Vec::new();
        let children = (0..2)
            .map(|i| {
                let log = scratch.path(&format!("worker-{generation}-{i}.log"));
                let file = std::fs::File::create(&log).expect("worker log");
                logs.push(log);
                Command::new(env!("CARGO_BIN_EXE_tidemark"))
                    .args(["worker", "-w", "2", "--processes", "2", "--process", &i.to_string(), "--peers", &peers.join(",")])
                    .args(["--listen", &format!("127.0.0.1:{}", grpc[i]), "--tick-ms", &TICK_MS.to_string()])
                    .args(["--kafka-brokers", &broker.address(), "--kafka-topic", TOPIC, "--kafka-idle-ms", "500"])
                    .args(["--postgres-url", postgres_url])
                    .arg("--data-dir")
                    .arg(scratch.path("data"))
                    .env("TIDEMARK_LOG", "info")
                    .stdout(Stdio::null())
                    .stderr(Stdio::from(file))
                    .spawn()
                    .expect("the tidemark binary starts")
            })
            .collect();
        Cluster { children, logs }
    }

    fn logs(&self) -> String {
        self.logs.iter().map(|l| format!("== {}\n{}", l.display(), std::fs::read_to_string(l).unwrap_or_default())).collect()
    }

    fn kill(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `events` generated records (seed `seed`) at `rate` per second; returns the
/// producer process.
fn produce(broker: &Broker, seed: u64, events: u64, rate: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["produce", "--kafka-brokers", &broker.address(), "--kafka-topic", TOPIC, "-q"])
        .args(["--events", &events.to_string(), "--rate", &rate.to_string(), "--seed", &seed.to_string(), "--users", "400"])
        // The default faults: 0.5% malformed, 1% duplicates, late records, corrections.
        .args(["--fraud-rate", "0.01"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tidemark produce starts")
}

fn finish(child: Child, what: &str) {
    let output = common::wait_with_timeout(child, Duration::from_secs(180), what);
    assert!(output.status.success(), "{what} failed: {}", String::from_utf8_lossy(&output.stderr));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

async fn frontier(url: &str) -> Option<Time> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.ok()?;
    tokio::spawn(connection);
    read_frontier(&client, "tidemark", "tidemark").await.ok().flatten()
}

/// Waits until the sink's frontier passes `time`.
fn wait_for_frontier(url: &str, time: Time, cluster: &Cluster, limit: Duration) -> Time {
    let rt = runtime();
    let start = Instant::now();
    loop {
        if let Some(f) = rt.block_on(frontier(url)) {
            if f > time {
                return f;
            }
        }
        assert!(start.elapsed() < limit, "the sink's frontier did not pass {time} within {limit:?}; logs:\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every mirrored table as sorted printable rows, by view name, with the frontier.
fn tables(url: &str) -> (Time, BTreeMap<&'static str, Vec<String>>) {
    runtime().block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("PostgreSQL answers");
        tokio::spawn(connection);
        let frontier = read_frontier(&client, "tidemark", "tidemark").await.expect("progress").expect("a progress row");
        let mut out = BTreeMap::new();
        for s in schema::schemas() {
            let mut rows: Vec<String> = read_table(&client, "tidemark", &s).await.expect("a table").iter().map(|r| format!("{:?}", r.values)).collect();
            rows.sort();
            out.insert(s.name, rows);
        }
        (frontier, out)
    })
}

/// The reference views at `t` over the records the topic holds, as the tables print them.
fn expected(records: &[(RawRecord, Time)], t: Time) -> BTreeMap<&'static str, Vec<String>> {
    let reference = Reference::new(records, &ViewConfig { tick_ms: TICK_MS, ..ViewConfig::default() });
    let mut out: BTreeMap<&'static str, Vec<String>> = schema::schemas().iter().map(|s| (s.name, Vec::new())).collect();
    for (row, count) in reference.views_at(t) {
        assert_eq!(count, 1, "a view row with multiplicity {count}: {row:?}");
        let (index, values) = schema::view_row(&row);
        out.get_mut(schema::schemas()[index].name).expect("a view").push(format!("{:?}", values.values));
    }
    for rows in out.values_mut() {
        rows.sort();
    }
    out
}

fn scenario(fault: Fault) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new(&format!("kafka-pg-{fault:?}"));
    let mut broker = Broker::start(&scratch.path("broker"));
    broker.create_topic(TOPIC, 4);
    // The dead-letter and times topics are created by the workers.
    let mut postgres = Postgres::start(&scratch.path("postgres"));
    let url = postgres.url();

    // A first part of the traffic, read by the cluster as it arrives.
    let mut cluster = Cluster::start(&scratch, &broker, &url, 0);
    finish(produce(&broker, 11, 3000, 1500), "the first producer");
    let second = produce(&broker, 12, 3000, 1000);
    std::thread::sleep(Duration::from_millis(1000));
    match fault {
        Fault::None => {}
        Fault::KillWorker => {
            // Process 0 holds the sink and the dead-letter writer.
            wait_for_frontier(&url, 0, &cluster, Duration::from_secs(60));
            let _ = cluster.children[0].kill();
            let _ = cluster.children[0].wait();
            // The other process loses its peer and exits by itself.
            let start = Instant::now();
            let status = loop {
                if let Some(status) = cluster.children[1].try_wait().expect("pollable") {
                    break status;
                }
                assert!(start.elapsed() < Duration::from_secs(30), "process 1 did not exit after losing its peer; logs:\n{}", cluster.logs());
                std::thread::sleep(Duration::from_millis(50));
            };
            assert!(!status.success(), "process 1 exits with an error when its peer is gone");
            cluster = Cluster::start(&scratch, &broker, &url, 1);
        }
        Fault::RestartBroker => {
            broker.stop();
            std::thread::sleep(Duration::from_secs(2));
            broker.restart();
        }
        Fault::RestartPostgres => {
            postgres.stop();
            std::thread::sleep(Duration::from_secs(3));
            postgres.restart();
        }
    }
    finish(second, "the second producer");

    let connect = KafkaConnect { kafka_brokers: Some(broker.address()), kafka_topic: TOPIC.to_owned(), kafka_options: Vec::new() };
    let messages = read_topic(&connect, TOPIC).expect("the topic reads back");
    assert!(messages.len() >= 6000, "every record is in the topic ({} read)", messages.len());
    // Records that reached the log after their partition had gone idle have their times
    // in the times topic.
    let recorded = read_topic(&connect, &format!("{TOPIC}-ingest-times")).expect("the times topic reads back");
    let times = replay_times(&messages, &recorded, TICK_MS);
    let records: Vec<(RawRecord, Time)> = messages
        .iter()
        .zip(&times)
        .map(|(m, t)| (RawRecord { format: Format::Json, position: kafka_position(m.partition, m.offset), bytes: m.payload.clone() }, *t))
        .collect();
    let last = times.iter().copied().max().expect("records");
    wait_for_frontier(&url, last, &cluster, Duration::from_secs(120));
    cluster.kill();
    if !recorded.is_empty() {
        eprintln!("{fault:?}: {} records were ingested above their own timestamps (recorded)", recorded.len());
    }

    let (frontier, actual) = tables(&url);
    let expected = expected(&records, frontier - 1);
    for (view, rows) in &expected {
        let got = &actual[view];
        if got != rows {
            let missing: Vec<_> = rows.iter().filter(|r| !got.contains(r)).take(3).collect();
            let extra: Vec<_> = got.iter().filter(|r| !rows.contains(r)).take(3).collect();
            panic!("{fault:?}: table {view} has {} rows, the reference {}; missing {missing:?}; extra {extra:?}", got.len(), rows.len());
        }
    }
    for view in ["sessions", "funnel", "kpis", "rejected_by_reason", "rejects", "customer_rfm", "fraud_features", "fraud_scores"] {
        assert!(!expected[view].is_empty(), "{view} has rows to compare");
    }

    // The dead-letter topic: every reject once, with its reason.
    let reference = Reference::new(&records, &ViewConfig { tick_ms: TICK_MS, ..ViewConfig::default() });
    let rejects: BTreeSet<(String, String)> = reference
        .rejects_arisen(frontier - 1)
        .into_iter()
        .map(|r| {
            let (p, o) = kafka_origin(r.position).expect("rejects come from Kafka");
            (format!("{p}:{o}"), r.reason.name().to_owned())
        })
        .collect();
    assert!(rejects.iter().any(|(_, reason)| reason == "malformed"), "malformed records were mixed in");
    let dead = read_topic(&connect, DEAD_LETTER).expect("the dead-letter topic reads back");
    let copied: Vec<(String, String)> = dead
        .iter()
        .map(|m| {
            let key = String::from_utf8_lossy(m.key.as_deref().expect("a key")).into_owned();
            let reason = m.headers.iter().find(|(k, _)| k == "tidemark-reason").map(|(_, v)| v.clone()).expect("a reason header");
            (key, reason)
        })
        .collect();
    let unique: BTreeSet<(String, String)> = copied.iter().cloned().collect();
    assert_eq!(unique.len(), copied.len(), "{fault:?}: the dead-letter topic holds a record twice");
    assert_eq!(unique, rejects, "{fault:?}: the dead-letter topic holds exactly the rejected records");
    for m in &dead {
        let key = String::from_utf8_lossy(m.key.as_deref().expect("a key")).into_owned();
        let (p, o) = key.split_once(':').map(|(p, o)| (p.parse::<i32>().expect("partition"), o.parse::<i64>().expect("offset"))).expect("p:o");
        let source = messages.iter().find(|s| s.partition == p && s.offset == o).expect("the rejected record is in the topic");
        if m.headers.iter().any(|(k, v)| k == "tidemark-reason" && v == "malformed") {
            assert_eq!(m.payload, source.payload, "a malformed record is copied byte for byte");
        }
    }
}

#[test]
fn kafka_to_postgres_equals_the_reference() {
    scenario(Fault::None);
}

#[test]
fn a_killed_worker_process_and_a_restarted_cluster_change_nothing() {
    scenario(Fault::KillWorker);
}

#[test]
fn a_restarted_broker_changes_nothing() {
    scenario(Fault::RestartBroker);
}

#[test]
fn a_restarted_postgres_changes_nothing() {
    scenario(Fault::RestartPostgres);
}
