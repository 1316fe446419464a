//! The PostgreSQL sink against a real PostgreSQL 15: the tables equal the naive reference
//! at every committed frontier, across a restart of the sink and a restart of PostgreSQL;
//! a mismatching table and missing privileges stop the sink with a clear error.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::postgres::Postgres;
use common::Scratch;
use rand::{Rng, SeedableRng};
use tidemark_dataflows::generator::{Generator, GeneratorConfig};
use tidemark_dataflows::reference::Reference;
use tidemark_dataflows::rows::{Dimension, FunnelAgg, FunnelKey};
use tidemark_dataflows::time::{tick_ceil, Granularity, Time};
use tidemark_dataflows::views::{ViewConfig, ViewRow};
use tidemark_proto::v1::Row;
use tidemark_proto::value;
use tidemark_worker::serve::schema::{self, view_row, Schema};
use tidemark_worker::sink::postgres::{self as pg_sink, PgSink, PgSinkConfig, PgSinkStatus};

type State = BTreeMap<ViewRow, i64>;

/// A client of the test server, with a runtime of its own.
struct Db {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Db {
    fn connect(url: &str) -> Db {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime");
        let client = runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("the test server accepts connections");
            tokio::spawn(connection);
            client
        });
        Db { runtime, client }
    }

    fn execute(&self, sql: &str) {
        self.runtime.block_on(self.client.batch_execute(sql)).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    fn table(&self, schema: &Schema) -> Vec<Row> {
        self.runtime.block_on(pg_sink::read_table(&self.client, "tidemark", schema)).unwrap_or_else(|e| panic!("reading {}: {e}", schema.name))
    }

    fn frontier(&self, sink: &str) -> Option<Time> {
        self.runtime.block_on(pg_sink::read_frontier(&self.client, "tidemark", sink)).expect("the progress table reads")
    }
}

/// Generated traffic with faults, fraud and a short retention (so rows also leave the
/// views), and the reference views at `steps` increasing random times.
struct Sequence {
    times: Vec<Time>,
    states: Vec<State>,
}

impl Sequence {
    fn new(seed: u64, records: usize, steps: usize) -> Sequence {
        let retention_ms = 20 * 60_000;
        let generator = GeneratorConfig {
            seed,
            events_per_sec: 2,
            users: 300,
            retention_ms,
            late_max_ms: 5 * 60_000,
            fraud_rate: 0.03,
            malformed_rate: 0.02,
            duplicate_rate: 0.02,
            correction_rate: 0.02,
            ..GeneratorConfig::default()
        };
        let mut config = ViewConfig::default();
        config.decode.retention_ms = retention_ms;
        let records: Vec<_> =
            Generator::new(generator, 0, 1).take(records).map(|g| (g.record, tick_ceil(g.ingest_ms, config.tick_ms))).collect();
        let (first, last) = (records[0].1, records.last().expect("records").1);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let mut times: Vec<Time> = (0..steps - 1).map(|_| rng.random_range(first..last)).chain([last]).collect();
        times.sort_unstable();
        times.dedup();
        let reference = Reference::new(&records, &config);
        let states = times.iter().map(|&t| reference.views_at(t)).collect();
        Sequence { times, states }
    }

    /// The changes from step `i - 1` (nothing before step 0) to step `i`.
    fn changes(&self, i: usize) -> Vec<(ViewRow, isize)> {
        let empty = State::new();
        let before = if i == 0 { &empty } else { &self.states[i - 1] };
        let after = &self.states[i];
        let mut changes = Vec::new();
        for (row, count) in before {
            let now = after.get(row).copied().unwrap_or(0);
            if now != *count {
                changes.push((row.clone(), (now - count) as isize));
            }
        }
        for (row, count) in after {
            if !before.contains_key(row) {
                changes.push((row.clone(), *count as isize));
            }
        }
        changes
    }

    /// The upper of step `i`: its changes are at times `<= times[i]`.
    fn upper(&self, i: usize) -> Time {
        self.times[i] + 1
    }

    /// Pushes step `i`.
    fn push(&self, sink: &PgSink, i: usize) {
        sink.feed().push(self.changes(i), self.upper(i));
    }
}

fn seed() -> u64 {
    let seed = std::env::var("TIDEMARK_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_nanos() as u64 % 1_000_000
    });
    eprintln!("seed {seed} (rerun with TIDEMARK_TEST_SEED={seed})");
    seed
}

fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort_by(|a, b| value::compare_all(&a.values, &b.values));
    rows
}

/// Every table equals its view in `state`.
fn assert_tables(db: &Db, state: &State, at: &str) {
    let schemas = schema::schemas();
    let mut expected: Vec<Vec<Row>> = vec![Vec::new(); schemas.len()];
    for (row, count) in state {
        assert_eq!(*count, 1, "{at}: the reference holds a row {count} times: {row:?}");
        let (view, values) = view_row(row);
        expected[view].push(values);
    }
    for (schema, expected) in schemas.iter().zip(expected) {
        let expected = sorted(expected);
        let actual = sorted(db.table(schema));
        if actual != expected {
            let missing = expected.iter().find(|r| !actual.contains(r));
            let extra = actual.iter().find(|r| !expected.contains(r));
            panic!(
                "{at}: table {} has {} rows, the view {}; a missing row: {missing:?}; an extra row: {extra:?}",
                schema.name,
                actual.len(),
                expected.len()
            );
        }
    }
}

fn wait_for(sink: &PgSink, what: &str, limit: Duration, done: impl Fn(&PgSinkStatus) -> bool) -> PgSinkStatus {
    let start = Instant::now();
    loop {
        let status = sink.status();
        if done(&status) {
            return status;
        }
        assert!(status.stopped.is_none(), "the sink stopped while waiting for {what}: {status:#?}");
        assert!(start.elapsed() < limit, "no {what} within {limit:?}: {status:#?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_committed(sink: &PgSink, frontier: Time) -> PgSinkStatus {
    wait_for(sink, &format!("commit of frontier {frontier}"), Duration::from_secs(20), |s| s.committed_frontier >= Some(frontier))
}

fn wait_stopped(sink: &PgSink) -> PgSinkStatus {
    let start = Instant::now();
    loop {
        let status = sink.status();
        if status.stopped.is_some() {
            return status;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the sink did not stop: {status:#?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn config(url: String, name: &str, commit_ms: u64) -> PgSinkConfig {
    PgSinkConfig { name: name.to_owned(), commit_interval: Duration::from_millis(commit_ms), ..PgSinkConfig::new(url) }
}

#[test]
fn tables_equal_the_views_at_every_frontier() {
    let scratch = Scratch::new("sink-oracle");
    let server = Postgres::start(&scratch.path("postgres"));
    let db = Db::connect(&server.url());
    let sequence = Sequence::new(seed(), 3000, 12);
    let sink = pg_sink::start(config(server.url(), "oracle", 100));

    sequence.push(&sink, 0);
    let first = wait_committed(&sink, sequence.upper(0));
    let load = first.last_commit.expect("a commit");
    assert!(load.rewrite && first.transactions == 1, "the first commit rewrites the tables: {first:#?}");
    eprintln!(
        "first commit: {} rows in {:?} ({:.0} rows/s)",
        load.rows_inserted,
        load.elapsed,
        load.rows_inserted as f64 / load.elapsed.as_secs_f64()
    );
    assert_eq!(db.frontier("oracle"), Some(sequence.upper(0)));
    assert_tables(&db, &sequence.states[0], "step 0");

    let mut i = 1;
    while i < sequence.times.len() {
        // Every third step follows the previous one at once, faster than commits happen.
        sequence.push(&sink, i);
        if i % 3 == 1 && i + 1 < sequence.times.len() {
            i += 1;
            sequence.push(&sink, i);
        }
        let status = wait_committed(&sink, sequence.upper(i));
        assert_eq!(status.committed_frontier, Some(sequence.upper(i)), "the frontier is the last upper");
        assert_eq!(db.frontier("oracle"), Some(sequence.upper(i)));
        assert!(!status.last_commit.expect("a commit").rewrite, "only the first commit rewrites");
        assert_tables(&db, &sequence.states[i], &format!("step {i}"));
        i += 1;
    }
    let last = sequence.states.last().expect("steps");
    let views: std::collections::BTreeSet<&str> = last.keys().map(ViewRow::view).collect();
    assert!(views.len() >= 9, "the traffic fills most views: {views:?}");
    let status = sink.stop();
    assert!(status.rows_deleted > 0, "rows left or changed in the views: {status:#?}");
    assert_eq!(status.stopped.as_deref(), Some("stopped on request"));
}

#[test]
fn a_restarted_sink_neither_loses_nor_repeats_changes() {
    let scratch = Scratch::new("sink-restart");
    let server = Postgres::start(&scratch.path("postgres"));
    let db = Db::connect(&server.url());
    let sequence = Sequence::new(seed(), 2500, 10);
    let n = sequence.times.len();

    let first = pg_sink::start(config(server.url(), "restart", 50));
    for i in 0..n / 2 {
        sequence.push(&first, i);
        wait_committed(&first, sequence.upper(i));
    }
    // The next step, and the sink goes away at once, perhaps in the middle of a commit.
    sequence.push(&first, n / 2);
    drop(first);
    let before = db.frontier("restart").expect("a progress row");
    let at = sequence.times.iter().position(|&t| t + 1 == before).expect("the frontier is the upper of a step");
    assert!(at + 1 >= n / 2, "nothing committed is lost");
    assert_tables(&db, &sequence.states[at], "after the first sink");

    // A new sink over a worker that rehydrates: the same changes from the start.
    let second = pg_sink::start(config(server.url(), "restart", 50));
    for i in 0..=at {
        sequence.push(&second, i);
    }
    std::thread::sleep(Duration::from_millis(400));
    let waiting = second.status();
    assert_eq!(waiting.resume_frontier, Some(before), "{waiting:#?}");
    assert_eq!(waiting.committed_frontier, None, "no commit before the feed passes the tables' frontier: {waiting:#?}");
    assert_eq!(db.frontier("restart"), Some(before), "the frontier does not go back");

    sequence.push(&second, at + 1);
    let resumed = wait_committed(&second, sequence.upper(at + 1));
    assert_eq!(resumed.transactions, 1);
    assert_eq!(resumed.committed_frontier, Some(sequence.upper(at + 1)));
    assert!(resumed.last_commit.expect("a commit").rewrite, "the first commit after start rewrites the tables");
    assert!(sequence.upper(at + 1) > before);
    assert_tables(&db, &sequence.states[at + 1], "after the rewrite");
    for i in at + 2..n {
        sequence.push(&second, i);
    }
    wait_committed(&second, sequence.upper(n - 1));
    assert_tables(&db, &sequence.states[n - 1], "at the end");
    assert_eq!(db.frontier("restart"), Some(sequence.upper(n - 1)));
}

#[test]
fn the_sink_catches_up_after_postgres_restarts() {
    let scratch = Scratch::new("sink-pg-restart");
    let mut server = Postgres::start(&scratch.path("postgres"));
    let sequence = Sequence::new(seed(), 2500, 9);
    let n = sequence.times.len();
    let sink = pg_sink::start(config(server.url(), "pg-restart", 50));
    for i in 0..3 {
        sequence.push(&sink, i);
        wait_committed(&sink, sequence.upper(i));
    }
    assert!(sink.status().connected);

    server.stop();
    for i in 3..n {
        sequence.push(&sink, i);
        std::thread::sleep(Duration::from_millis(100));
    }
    let down = wait_for(&sink, "a failed attempt", Duration::from_secs(10), |s| s.retries >= 1 && !s.connected);
    assert!(down.committed_frontier <= Some(sequence.upper(2)), "nothing commits while the server is down: {down:#?}");
    std::thread::sleep(Duration::from_millis(300));
    server.restart();

    let caught_up = wait_committed(&sink, sequence.upper(n - 1));
    assert!(caught_up.connects >= 2 && caught_up.retries >= 1, "{caught_up:#?}");
    assert!(caught_up.last_error.is_some(), "the failure is shown: {caught_up:#?}");
    let db = Db::connect(&server.url());
    assert_eq!(db.frontier("pg-restart"), Some(sequence.upper(n - 1)));
    assert_tables(&db, &sequence.states[n - 1], "after the restart");
    eprintln!("after the restart: {caught_up:#?}");
}

/// Where a [`Proxy`] cuts the next connection that commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    Never,
    /// Before `COMMIT` reaches the server: the transaction rolls back.
    BeforeCommit,
    /// After `COMMIT` reached the server, before its answer reaches the client: the
    /// transaction is committed, but the client cannot know.
    AfterCommit,
}

/// A TCP proxy in front of PostgreSQL that can cut a connection around a `COMMIT`.
struct Proxy {
    port: u16,
    cut: Arc<Mutex<Cut>>,
    cuts: Arc<AtomicUsize>,
}

/// The simple-protocol `COMMIT` message.
const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";

impl Proxy {
    fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("loopback bind");
        let port = listener.local_addr().expect("bound").port();
        let cut = Arc::new(Mutex::new(Cut::Never));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (accept_cut, accept_cuts) = (cut.clone(), cuts.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                let mute = Arc::new(AtomicBool::new(false));
                let (up_from, up_to) = (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                let (cut, cuts, up_mute) = (accept_cut.clone(), accept_cuts.clone(), mute.clone());
                std::thread::spawn(move || pump_up(up_from, up_to, &cut, &cuts, &up_mute));
                std::thread::spawn(move || pump_down(server, client, &mute));
            }
        });
        Proxy { port, cut, cuts }
    }

    fn cut_next_commit(&self, cut: Cut) {
        *self.cut.lock().expect("cut lock") = cut;
    }
}

/// Client to server, watching for `COMMIT`.
fn pump_up(mut from: TcpStream, mut to: TcpStream, cut: &Mutex<Cut>, cuts: &AtomicUsize, mute: &AtomicBool) {
    let mut buf = vec![0u8; 1 << 16];
    let mut tail: Vec<u8> = Vec::new();
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        let mut window = std::mem::take(&mut tail);
        window.extend_from_slice(chunk);
        let commits = window.windows(COMMIT.len()).any(|w| w == COMMIT);
        let mode = if commits { std::mem::replace(&mut *cut.lock().expect("cut lock"), Cut::Never) } else { Cut::Never };
        if mode != Cut::Never {
            cuts.fetch_add(1, Ordering::SeqCst);
            if mode == Cut::AfterCommit {
                mute.store(true, Ordering::SeqCst);
                let _ = to.write_all(chunk);
                // Let the server commit before the connection goes.
                std::thread::sleep(Duration::from_millis(300));
            }
            break;
        }
        if to.write_all(chunk).is_err() {
            break;
        }
        tail = window[window.len().saturating_sub(COMMIT.len() - 1)..].to_vec();
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Server to client; silent once muted.
fn pump_down(mut from: TcpStream, mut to: TcpStream, mute: &AtomicBool) {
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || mute.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[test]
fn a_lost_commit_acknowledgement_neither_repeats_nor_loses_changes() {
    let scratch = Scratch::new("sink-lost-ack");
    let server = Postgres::start(&scratch.path("postgres"));
    let db = Db::connect(&server.url());
    let proxy = Proxy::start(server.port());
    let sequence = Sequence::new(seed(), 2500, 8);
    let n = sequence.times.len();
    let sink = pg_sink::start(config(format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port), "lost-ack", 50));
    for i in 0..2 {
        sequence.push(&sink, i);
        wait_committed(&sink, sequence.upper(i));
    }

    // PostgreSQL commits step 2, the sink never hears of it.
    proxy.cut_next_commit(Cut::AfterCommit);
    sequence.push(&sink, 2);
    let settled = wait_committed(&sink, sequence.upper(2));
    assert_eq!(proxy.cuts.load(Ordering::SeqCst), 1);
    assert!(settled.retries >= 1 && settled.connects >= 2, "{settled:#?}");
    let confirmed = settled.last_commit.expect("a commit");
    assert_eq!(confirmed.elapsed, Duration::ZERO, "settled by the progress row, not committed again: {settled:#?}");
    assert_eq!(db.frontier("lost-ack"), Some(sequence.upper(2)));
    assert_tables(&db, &sequence.states[2], "after the lost acknowledgement");

    // The connection goes before PostgreSQL sees COMMIT: the same batch again.
    proxy.cut_next_commit(Cut::BeforeCommit);
    sequence.push(&sink, 3);
    let retried = wait_committed(&sink, sequence.upper(3));
    assert_eq!(proxy.cuts.load(Ordering::SeqCst), 2);
    assert!(retried.retries >= 2 && retried.connects >= 3, "{retried:#?}");
    assert!(retried.last_commit.expect("a commit").elapsed > Duration::ZERO, "committed on the new connection");
    assert_tables(&db, &sequence.states[3], "after the rolled-back commit");

    for i in 4..n {
        sequence.push(&sink, i);
    }
    wait_committed(&sink, sequence.upper(n - 1));
    assert_tables(&db, &sequence.states[n - 1], "at the end");
    assert_eq!(sink.stop().stopped.as_deref(), Some("stopped on request"));
}

#[test]
fn a_mismatching_table_stops_only_the_sink() {
    let scratch = Scratch::new("sink-mismatch");
    let server = Postgres::start(&scratch.path("postgres"));
    let db = Db::connect(&server.url());
    db.execute(
        "CREATE SCHEMA tidemark; \
         CREATE TABLE tidemark.kpis (granularity text NOT NULL, window_start timestamptz NOT NULL, sessionz bigint NOT NULL, \
         PRIMARY KEY (granularity, window_start))",
    );
    let sink = pg_sink::start(config(server.url(), "mismatch", 50));
    let sequence = Sequence::new(seed(), 500, 2);
    sequence.push(&sink, 0);
    let status = wait_stopped(&sink);
    let error = status.stopped.as_deref().expect("a reason");
    eprintln!("the sink stopped: {error}");
    assert!(error.contains("\"tidemark\".\"kpis\"") && error.contains("sessionz"), "{error}");
    assert_eq!(status.last_error.as_deref(), Some(error));
    assert_eq!((status.transactions, status.committed_frontier), (0, None));
    // The worker goes on pushing; the feed discards.
    let feed = sink.feed();
    sequence.push(&sink, 1);
    assert!(feed.is_closed() && sink.status().pending_rows == 0);
    assert_eq!(db.frontier("mismatch"), None, "nothing was committed");
    drop(sink);
}

#[test]
fn missing_privileges_stop_the_sink_with_a_clear_error() {
    let scratch = Scratch::new("sink-privileges");
    let server = Postgres::start(&scratch.path("postgres"));
    let db = Db::connect(&server.url());
    db.execute("CREATE ROLE analyst LOGIN; CREATE SCHEMA tidemark");
    let sink = pg_sink::start(config(server.url_as("analyst"), "privileges", 50));
    sink.feed().push([], 10);
    let status = wait_stopped(&sink);
    let error = status.stopped.as_deref().expect("a reason");
    eprintln!("the sink stopped: {error}");
    assert!(error.contains("permission denied") && error.contains("42501") && error.contains("tidemark"), "{error}");
    assert_eq!(status.transactions, 0);
    assert!(status.connects <= 1 && status.retries == 0, "a permanent error is not retried: {status:#?}");
}

/// How fast the binary COPY path loads rows, and how fast a commit of updates applies.
#[test]
fn load_speed() {
    let scratch = Scratch::new("sink-speed");
    let server = Postgres::start(&scratch.path("postgres"));
    let db = Db::connect(&server.url());
    let mut sink_config = config(server.url(), "speed", 10);
    sink_config.views = vec![schema::index::FUNNEL];
    let sink = pg_sink::start(sink_config);
    let row = |i: u64, sessions: i64| ViewRow::Funnel {
        key: FunnelKey { granularity: Granularity::Minute, window_start: (i / 50 * 60_000) as i64, dimension: Dimension::Country, value: format!("country {i}").into() },
        agg: FunnelAgg { sessions, reached_view: sessions / 2, orders: 3, revenue_cents: sessions * 1000, ..FunnelAgg::default() },
    };
    let n = 100_000;
    let mut state: State = (0..n).map(|i| (row(i, i as i64), 1)).collect();
    sink.feed().push(state.keys().map(|r| (r.clone(), 1)), 10);
    let loaded = wait_committed(&sink, 10).last_commit.expect("a commit");
    assert_eq!(loaded.rows_inserted, n);
    eprintln!("COPY load: {n} funnel rows in {:?}: {:.0} rows/s", loaded.elapsed, n as f64 / loaded.elapsed.as_secs_f64());

    // Every tenth row changes: a delete by key and an insert each.
    let changes: Vec<(ViewRow, isize)> = (0..n).step_by(10).flat_map(|i| [(row(i, i as i64), -1), (row(i, i as i64 + 7), 1)]).collect();
    for (r, d) in &changes {
        if *d < 0 {
            state.remove(r);
        } else {
            state.insert(r.clone(), 1);
        }
    }
    sink.feed().push(changes, 20);
    let updated = wait_committed(&sink, 20).last_commit.expect("a commit");
    assert_eq!((updated.rows_deleted, updated.rows_inserted), (n / 10, n / 10));
    eprintln!(
        "update commit: {} rows replaced in {:?}: {:.0} rows/s",
        n / 10,
        updated.elapsed,
        (n / 10) as f64 / updated.elapsed.as_secs_f64()
    );
    let expected = sorted(state.keys().map(|r| view_row(r).1).collect());
    let actual = db.table(&schema::schemas()[schema::index::FUNNEL]);
    assert_eq!(actual.len(), expected.len());
    assert!(actual == expected, "the table reads back in key order and equals the view");
}
