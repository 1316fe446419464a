//! Mirrors chosen views into PostgreSQL tables, exactly.
//!
//! # What the tables hold
//!
//! Each mirrored view `v` is a table `<schema>.<v>` (schema `tidemark` by default) with
//! the view's columns in the view's order, typed `bigint` (Int64), `double precision`
//! (Double), `text` (String), `boolean` (Bool), `timestamptz` (TimestampMs, ms precision)
//! and `bytea` (Bytes), `NOT NULL` unless the column is nullable, and the view's key
//! columns as `PRIMARY KEY`. One row of the table is one row of the view.
//!
//! The progress table `<schema>.sink_progress (sink text primary key, frontier bigint not
//! null, committed_at timestamptz not null)` has one row per sink name (`tidemark` by
//! default). **A frontier `F` means: every mirrored table holds exactly its view as of
//! ingestion time `F - 1`**: every change at a time `< F` is applied, none at a later
//! time. The tables and the progress row change only together, in one transaction, so
//! a reader in one transaction sees every mirrored view as of the same time, and the
//! frontier never goes backwards.
//!
//! Missing schema and tables are created. An existing table must have the view's columns
//! (names, types, order), may not forbid nulls the view has, and must have the view's
//! key as primary key; otherwise the sink stops with an error naming the table and the
//! column, and the worker keeps running. Tables of views a sink no longer mirrors are
//! left as they are (and no longer follow the frontier).
//!
//! # How changes get there
//!
//! The worker hands changes to a [`SinkFeed`]: `push(updates, upper)` with every update
//! at a time `< upper`, `upper` never decreasing (per producer, see
//! [`PgSinkConfig::producers`]; the feed's upper is the least of the producers' uppers).
//! The feed consolidates them into one pending count per row, dropping rows whose count
//! reaches zero and rows of views not mirrored. `push` takes a mutex for the time of
//! the consolidation and never waits for PostgreSQL.
//!
//! **Memory bound.** A pending row is either in the tables (count `-1`, to delete) or in
//! the view (count `+1`, to insert), so the pending map holds at most the rows of the
//! mirrored views plus the rows of the tables, however long PostgreSQL is unreachable;
//! while the outcome of a commit is unknown its batch is kept besides, which at most
//! doubles that. After the sink stops, pushes are discarded.
//!
//! The sink's own thread commits:
//! - **The first commit after start** waits until the feed's upper is past the frontier
//!   found in the progress row (`0` without a row), so that the worker has rehydrated
//!   beyond what the tables show. It then deletes every row of every mirrored table,
//!   loads every pending row with binary `COPY`, and moves the progress row to the
//!   upper, in one transaction. Since the worker rehydrates from the beginning of its
//!   input, the pending rows are then the whole views; the tables are rewritten rather
//!   than patched, so a restart is exact whatever times the replay assigns.
//! - **Later commits**, at most every [`PgSinkConfig::commit_interval`] and only when the
//!   upper advanced, take the pending rows and the upper at once and, in one
//!   transaction, move the progress row from the last committed frontier to the upper,
//!   delete the rows whose count is `-1` by primary key, then insert the rows whose count
//!   is `+1` with binary `COPY`. (An update of a row is a delete of the old row and an
//!   insert of the new one under the same key.)
//! - The progress row moves only from where this sink left it (`UPDATE ... WHERE frontier
//!   = <last>`); a delete must find every row it deletes. A count other than `+1`/`-1`, a
//!   key added or removed twice in one commit, or a progress row moved by someone else
//!   is an inconsistency: the sink stops with an error rather than write a wrong table.
//!
//! # Failures
//!
//! Errors are temporary or permanent. Temporary: PostgreSQL unreachable or refusing
//! connections for now, the connection dropped, an IO error, `08xxx`, `57P01`-`57P03`
//! (shutdown, starting up), `53300` (too many connections), `40001`/`40P01`
//! (serialization failure, deadlock). The sink reconnects with exponential backoff (100
//! ms doubling to 10 s), logging when a failure starts, changes or ends. A commit whose
//! outcome is unknown (the connection dropped around `COMMIT`) is kept as it was; after
//! reconnecting, the progress row tells: at the batch's upper, it was committed and is
//! dropped; at its lower, it is retried as it is; anything else is an error. So a lost
//! acknowledgement neither applies a change twice nor loses one. Everything else
//! (permission denied, a table that does not match, a constraint violation, an
//! inconsistency above) is permanent: the sink stops, logs the error once, and shows it
//! in its [`PgSinkStatus`]; the worker keeps running. Unless the URL says otherwise, a
//! peer that goes silent is given up after 30 s (TCP user timeout and keepalives), and a
//! connection attempt after 10 s.
//!
//! One sink name is written by one sink at a time; a second sink with the same name is
//! detected by the progress row and stops with an error.
//!
//! # Use
//!
//! ```no_run
//! use tidemark_worker::sink::postgres::{self, PgSinkConfig};
//! # let changes = Vec::new();
//! // Two worker threads, each pushing the changes of its keys with its own frontier.
//! let sink = postgres::start(PgSinkConfig { producers: 2, ..PgSinkConfig::new("postgres://tidemark@db/shop") });
//! let feed = sink.feed();
//! feed.push_from(0, changes, 1_700_000_000_010); // changes: (ViewRow, diff) at times < upper
//! println!("{:?}", sink.status());
//! sink.stop();
//! ```

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use tidemark_dataflows::time::Time;
use tidemark_dataflows::views::ViewRow;
use tidemark_proto::v1::value::Kind;
use tidemark_proto::v1::{ColumnType, Row, Value};
use tidemark_proto::value;
use tokio::sync::{watch, Notify};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};

use crate::serve::schema::{self, Schema};

/// The default PostgreSQL schema of the mirrored tables.
pub const DEFAULT_SCHEMA: &str = "tidemark";
/// The default sink name (its row in the progress table).
pub const DEFAULT_NAME: &str = "tidemark";
/// The default time between commits.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(200);
/// The progress table, in the sink's schema.
pub const PROGRESS_TABLE: &str = "sink_progress";

/// First delay before reconnecting.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest delay between connection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long [`PgSink::stop`] lets the last commit take.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Connection timeout when the URL sets none.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP user timeout and keepalive idle time when the URL sets none.
const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// What a PostgreSQL sink mirrors, where, and how often it commits.
#[derive(Clone)]
pub struct PgSinkConfig {
    /// `postgres://user[:password]@host:port/db` or `host=... user=... dbname=...`.
    pub url: String,
    /// The PostgreSQL schema of the tables.
    pub schema: String,
    /// The sink's name: its row in the progress table.
    pub name: String,
    /// The mirrored views, as indexes of [`schema::schemas`].
    pub views: Vec<usize>,
    /// Shortest time between two commits.
    pub commit_interval: Duration,
    /// How many producers push into the feed, each with its own upper (e.g. one per
    /// worker thread, each pushing the changes of its share of the keys); the feed's
    /// upper is the least of them. Producers are numbered `0..producers`.
    pub producers: usize,
}

impl PgSinkConfig {
    /// Every view, into schema `tidemark`, as sink `tidemark`, committing every 200 ms,
    /// fed by one producer.
    pub fn new(url: impl Into<String>) -> Self {
        PgSinkConfig {
            url: url.into(),
            schema: DEFAULT_SCHEMA.to_owned(),
            name: DEFAULT_NAME.to_owned(),
            views: (0..schema::schemas().len()).collect(),
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            producers: 1,
        }
    }

    /// The effective configuration for a log line, with the password masked.
    pub fn describe(&self) -> String {
        let all = schema::schemas();
        let views: Vec<&str> = self.views.iter().map(|&v| all.get(v).map_or("?", |s| s.name)).collect();
        format!(
            "postgres sink {:?}: url {}, schema {:?}, views [{}], commit every {} ms, {} producer(s)",
            self.name,
            mask_url(&self.url),
            self.schema,
            views.join(", "),
            self.commit_interval.as_millis(),
            self.producers
        )
    }
}

impl fmt::Debug for PgSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSinkConfig")
            .field("url", &mask_url(&self.url))
            .field("schema", &self.schema)
            .field("name", &self.name)
            .field("views", &self.views)
            .field("commit_interval", &self.commit_interval)
            .field("producers", &self.producers)
            .finish()
    }
}

/// The connection string with its password replaced by `***` (URL user info, a
/// `password=` query parameter, or a `password=` key).
pub fn mask_url(url: &str) -> String {
    let mask_key = |text: &str, stop: &dyn Fn(char) -> bool| -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find("password=") {
            let (head, tail) = rest.split_at(at + "password=".len());
            out += head;
            out += "***";
            let end = if let Some(quoted) = tail.strip_prefix('\'') {
                // A quoted value ends at the first quote not escaped by a backslash.
                let mut escaped = false;
                let mut end = tail.len();
                for (i, c) in quoted.char_indices() {
                    if c == '\'' && !escaped {
                        end = i + 2;
                        break;
                    }
                    escaped = c == '\\' && !escaped;
                }
                end
            } else {
                tail.find(stop).unwrap_or(tail.len())
            };
            rest = &tail[end..];
        }
        out + rest
    };
    let scheme = ["postgres://", "postgresql://"].into_iter().find(|s| url.starts_with(s));
    let Some(scheme) = scheme else {
        return mask_key(url, &|c: char| c.is_whitespace());
    };
    let rest = &url[scheme.len()..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!("{}:***{}", &authority[..colon], &authority[at..]),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    format!("{scheme}{authority}{}", mask_key(tail, &|c: char| c == '&' || c == '#'))
}

/// The sink's flags of `tidemark worker`.
#[derive(Clone, Args)]
pub struct PostgresFlags {
    /// Mirror views into PostgreSQL at this URL (`postgres://user:password@host:port/db`
    /// or `host=... user=... dbname=...`); no sink without it.
    #[arg(long, env = "TIDEMARK_POSTGRES_URL")]
    pub postgres_url: Option<String>,
    /// The PostgreSQL schema of the mirrored tables.
    #[arg(long, env = "TIDEMARK_POSTGRES_SCHEMA", default_value = DEFAULT_SCHEMA)]
    pub postgres_schema: String,
    /// Comma-separated views to mirror (default: every view).
    #[arg(long, env = "TIDEMARK_POSTGRES_VIEWS", value_delimiter = ',')]
    pub postgres_views: Vec<String>,
    /// The sink's name in the progress table (one running sink per name).
    #[arg(long, env = "TIDEMARK_POSTGRES_SINK_NAME", default_value = DEFAULT_NAME)]
    pub postgres_sink_name: String,
    /// Shortest time between two commits (ms).
    #[arg(long, env = "TIDEMARK_POSTGRES_COMMIT_MS", default_value_t = 200)]
    pub postgres_commit_ms: u64,
}

impl fmt::Debug for PostgresFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresFlags")
            .field("postgres_url", &self.postgres_url.as_deref().map(mask_url))
            .field("postgres_schema", &self.postgres_schema)
            .field("postgres_views", &self.postgres_views)
            .field("postgres_sink_name", &self.postgres_sink_name)
            .field("postgres_commit_ms", &self.postgres_commit_ms)
            .finish()
    }
}

impl PostgresFlags {
    /// The sink's configuration (one producer), or `None` without a URL (an empty URL
    /// counts as none). Reports every invalid flag at once.
    pub fn config(&self) -> anyhow::Result<Option<PgSinkConfig>> {
        let Some(url) = self.postgres_url.as_deref().filter(|u| !u.trim().is_empty()) else {
            return Ok(None);
        };
        let mut problems = Vec::new();
        if let Err(e) = tokio_postgres::Config::from_str(url) {
            problems.push(format!("--postgres-url {}: {}", mask_url(url), describe(&e)));
        }
        if self.postgres_schema.trim().is_empty() {
            problems.push("--postgres-schema is empty".to_owned());
        }
        if self.postgres_sink_name.trim().is_empty() {
            problems.push("--postgres-sink-name is empty".to_owned());
        }
        let schemas = schema::schemas();
        let mut views = Vec::new();
        let names: Vec<&str> = self.postgres_views.iter().map(|v| v.trim()).filter(|v| !v.is_empty()).collect();
        if names.is_empty() {
            views.extend(0..schemas.len());
        }
        for name in names {
            match schemas.iter().position(|s| s.name == name) {
                Some(v) if !views.contains(&v) => views.push(v),
                Some(_) => {}
                None => {
                    let valid: Vec<&str> = schemas.iter().map(|s| s.name).collect();
                    problems.push(format!("--postgres-views: unknown view {name:?} (views: {})", valid.join(", ")));
                }
            }
        }
        if !problems.is_empty() {
            anyhow::bail!("invalid PostgreSQL sink configuration:\n  {}", problems.join("\n  "));
        }
        views.sort_unstable();
        Ok(Some(PgSinkConfig {
            url: url.to_owned(),
            schema: self.postgres_schema.trim().to_owned(),
            name: self.postgres_sink_name.trim().to_owned(),
            views,
            commit_interval: Duration::from_millis(self.postgres_commit_ms),
            producers: 1,
        }))
    }
}

/// A sink error, temporary (retried with backoff) or permanent (stops the sink).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkError {
    message: String,
    temporary: bool,
}

impl SinkError {
    fn permanent(message: impl Into<String>) -> Self {
        SinkError { message: message.into(), temporary: false }
    }

    /// A PostgreSQL error while doing `what`, classed.
    fn postgres(what: &str, e: &tokio_postgres::Error) -> Self {
        SinkError { message: format!("{what}: {}", describe(e)), temporary: is_temporary(e) }
    }

    /// Whether retrying later may succeed (PostgreSQL down, unreachable, restarting).
    pub fn is_temporary(&self) -> bool {
        self.temporary
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SinkError {}

/// A `tokio_postgres` error with its server message, code, detail and hint, or its chain
/// of causes.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{} ({})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            text += &format!("; {detail}");
        }
        if let Some(hint) = db.hint() {
            text += &format!("; hint: {hint}");
        }
        return text;
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text += &format!(": {c}");
        cause = c.source();
    }
    text
}

/// Temporary: connection-level failures, server shutdown or start-up, too many
/// connections, serialization failures and deadlocks.
fn is_temporary(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        let code = code.code();
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01");
    }
    let io = std::error::Error::source(e).is_some_and(|c| c.is::<std::io::Error>());
    e.is_closed() || io || e.to_string() == "timeout waiting for server"
}

/// One commit's figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitStats {
    /// The frontier it moved the tables to.
    pub frontier: Time,
    /// Whether it rewrote the tables (the first commit after start).
    pub rewrite: bool,
    /// Rows it inserted.
    pub rows_inserted: u64,
    /// Rows it deleted.
    pub rows_deleted: u64,
    /// From the start of the transaction to its acknowledged commit (zero for a commit
    /// whose acknowledgement was lost and which the progress row later confirmed).
    pub elapsed: Duration,
}

/// A snapshot of a sink's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PgSinkStatus {
    /// Connected to PostgreSQL now.
    pub connected: bool,
    /// The frontier in the progress row when the sink first connected (`None` before
    /// that, or when there was no row).
    pub resume_frontier: Option<Time>,
    /// The last frontier this sink committed (`None` before its first commit).
    pub committed_frontier: Option<Time>,
    /// The feed's upper: what the next commit would move the frontier to.
    pub feed_upper: Time,
    /// Rows waiting in the feed for the next commit.
    pub pending_rows: usize,
    /// Transactions committed.
    pub transactions: u64,
    /// Rows inserted, over all commits.
    pub rows_inserted: u64,
    /// Rows deleted, over all commits.
    pub rows_deleted: u64,
    /// Successful connections (the first one included).
    pub connects: u64,
    /// Temporary failures (failed connection attempts and interrupted sessions).
    pub retries: u64,
    /// The last commit's figures.
    pub last_commit: Option<CommitStats>,
    /// The last error, temporary or not.
    pub last_error: Option<String>,
    /// Why the sink stopped, once it has.
    pub stopped: Option<String>,
}

/// Locks, ignoring poisoning: the protected state stays consistent between statements.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Changes waiting for the sink.
struct Feed {
    /// Consolidated counts; never zero.
    changes: HashMap<ViewRow, i64>,
    /// Each producer's upper.
    uppers: Vec<Time>,
    /// The least of `uppers`.
    upper: Time,
    /// Set when the sink has stopped: pushes are discarded.
    closed: bool,
    /// A broken promise of a producer, for the sink to stop on.
    fault: Option<String>,
}

struct StatusCell {
    status: PgSinkStatus,
    /// Counts connections, so that the end of an old one does not mark a new one down.
    generation: u64,
}

struct Shared {
    name: String,
    /// By view index.
    mirrored: Vec<bool>,
    feed: Mutex<Feed>,
    /// Wakes the sink when the upper advances or a producer misbehaves.
    wake: Notify,
    status: Mutex<StatusCell>,
}

impl Shared {
    fn new(name: &str, mirrored: Vec<bool>, producers: usize) -> Self {
        let feed = Feed { changes: HashMap::new(), uppers: vec![0; producers.max(1)], upper: 0, closed: false, fault: None };
        let status = StatusCell { status: PgSinkStatus::default(), generation: 0 };
        Shared { name: name.to_owned(), mirrored, feed: Mutex::new(feed), wake: Notify::new(), status: Mutex::new(status) }
    }

    fn update(&self, f: impl FnOnce(&mut PgSinkStatus)) {
        f(&mut lock(&self.status).status);
    }

    fn snapshot(&self) -> PgSinkStatus {
        let mut status = lock(&self.status).status.clone();
        let feed = lock(&self.feed);
        status.pending_rows = feed.changes.len();
        status.feed_upper = feed.upper;
        status
    }
}

/// Where the worker hands its view changes to a sink: cheap to clone, usable from any
/// thread, never waits for PostgreSQL.
#[derive(Clone)]
pub struct SinkFeed {
    shared: Arc<Shared>,
}

impl SinkFeed {
    /// Adds changes of the only producer: see [`SinkFeed::push_from`].
    pub fn push(&self, updates: impl IntoIterator<Item = (ViewRow, isize)>, upper: Time) {
        self.push_from(0, updates, upper);
    }

    /// Adds `updates` of `producer`, all at times `< upper`, and records that the
    /// producer will push nothing more below `upper`. A producer's `upper` never
    /// decreases; a push that breaks this (or names an unknown producer) stops the sink
    /// with an error instead of mirroring a wrong state. Rows of views not mirrored are
    /// skipped; after the sink stopped, everything is.
    pub fn push_from(&self, producer: usize, updates: impl IntoIterator<Item = (ViewRow, isize)>, upper: Time) {
        let shared = &*self.shared;
        let mut guard = lock(&shared.feed);
        let feed = &mut *guard;
        if feed.closed {
            return;
        }
        let fault = match feed.uppers.get(producer) {
            None => Some(format!("producer {producer} pushed changes, but the sink has {} producer(s)", feed.uppers.len())),
            Some(&previous) if upper < previous => Some(format!("producer {producer}'s upper went back from {previous} to {upper}")),
            Some(_) => None,
        };
        if let Some(fault) = fault {
            feed.fault = Some(format!("the sink's input broke its contract: {fault}"));
            feed.closed = true;
            feed.changes = HashMap::new();
            drop(guard);
            shared.wake.notify_one();
            return;
        }
        for (row, diff) in updates {
            if diff == 0 || !shared.mirrored[schema::view_index(&row)] {
                continue;
            }
            match feed.changes.entry(row) {
                Entry::Occupied(mut e) => {
                    *e.get_mut() += diff as i64;
                    if *e.get() == 0 {
                        e.remove();
                    }
                }
                Entry::Vacant(e) => {
                    e.insert(diff as i64);
                }
            }
        }
        feed.uppers[producer] = upper;
        let least = *feed.uppers.iter().min().expect("a feed has at least one producer");
        if least > feed.upper {
            feed.upper = least;
            drop(guard);
            shared.wake.notify_one();
        }
    }

    /// The feed's upper: the least upper of its producers.
    pub fn upper(&self) -> Time {
        lock(&self.shared.feed).upper
    }

    /// Whether the sink has stopped (pushes are then discarded).
    pub fn is_closed(&self) -> bool {
        lock(&self.shared.feed).closed
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Run,
    /// Commit what is committable (within [`FLUSH_TIMEOUT`]), then stop.
    Flush,
    /// Stop now, abandoning any commit under way.
    Abandon,
}

/// A running PostgreSQL sink: its thread, feed and status.
///
/// [`PgSink::stop`] commits what is committable and stops; dropping the sink stops it
/// at once, abandoning a commit under way (which PostgreSQL then rolls back or has
/// completed; the progress row says which, and the next start rewrites the tables
/// anyway).
pub struct PgSink {
    shared: Arc<Shared>,
    stop: watch::Sender<Stop>,
    thread: Option<JoinHandle<()>>,
}

/// Starts a sink on its own thread. It connects, creates or checks its tables and
/// commits in the background; problems show in [`PgSink::status`] and the log.
pub fn start(config: PgSinkConfig) -> PgSink {
    let schemas = schema::schemas();
    let mut mirrored = vec![false; schemas.len()];
    for &view in &config.views {
        if let Some(m) = mirrored.get_mut(view) {
            *m = true;
        }
    }
    let shared = Arc::new(Shared::new(&config.name, mirrored, config.producers));
    let (stop, stop_rx) = watch::channel(Stop::Run);
    let thread_shared = shared.clone();
    let spawned = std::thread::Builder::new().name("tidemark-pgsink".to_owned()).spawn(move || run_thread(thread_shared, config, schemas, stop_rx));
    let thread = match spawned {
        Ok(thread) => Some(thread),
        Err(e) => {
            finish(&shared, Err(SinkError::permanent(format!("cannot start the sink's thread: {e}"))));
            None
        }
    };
    PgSink { shared, stop, thread }
}

impl PgSink {
    /// The feed to push view changes into.
    pub fn feed(&self) -> SinkFeed {
        SinkFeed { shared: self.shared.clone() }
    }

    /// The sink's state now.
    pub fn status(&self) -> PgSinkStatus {
        self.shared.snapshot()
    }

    /// A reader of the sink's status for other threads (the metrics endpoint).
    pub fn status_handle(&self) -> impl Fn() -> PgSinkStatus + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || shared.snapshot()
    }

    /// Commits what is committable (giving up after a few seconds, or at once when
    /// PostgreSQL is unreachable), stops the thread, and returns the final status.
    pub fn stop(mut self) -> PgSinkStatus {
        self.finish(Stop::Flush);
        self.status()
    }

    fn finish(&mut self, how: Stop) {
        let _ = self.stop.send(how);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                finish(&self.shared, Err(SinkError::permanent("the sink's thread panicked")));
            }
        }
    }
}

impl Drop for PgSink {
    fn drop(&mut self) {
        self.finish(Stop::Abandon);
    }
}

/// Closes the feed and records why the sink stopped.
fn finish(shared: &Shared, outcome: Result<(), SinkError>) {
    {
        let mut feed = lock(&shared.feed);
        feed.closed = true;
        feed.changes = HashMap::new();
    }
    let mut cell = lock(&shared.status);
    let status = &mut cell.status;
    status.connected = false;
    if status.stopped.is_some() {
        return;
    }
    match outcome {
        Ok(()) => {
            tracing::info!(sink = %shared.name, committed = ?status.committed_frontier, "PostgreSQL sink stopped");
            status.stopped = Some("stopped on request".to_owned());
        }
        Err(e) => {
            tracing::error!(sink = %shared.name, error = %e, "PostgreSQL sink stopped; the worker goes on without it");
            status.last_error = Some(e.to_string());
            status.stopped = Some(e.to_string());
        }
    }
}

fn run_thread(shared: Arc<Shared>, config: PgSinkConfig, schemas: Vec<Schema>, stop: watch::Receiver<Stop>) {
    let outcome = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(async {
            let mut sink = Sink::new(shared.clone(), &config, &schemas, stop)?;
            sink.run().await
        }),
        Err(e) => Err(SinkError::permanent(format!("cannot start the sink's runtime: {e}"))),
    };
    finish(&shared, outcome);
}

/// Double-quotes an SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A column type's PostgreSQL type: its name as `format_type` prints it, and its
/// `tokio_postgres` type.
fn pg_type(t: ColumnType) -> Option<(&'static str, Type)> {
    Some(match t {
        ColumnType::Int64 => ("bigint", Type::INT8),
        ColumnType::Double => ("double precision", Type::FLOAT8),
        ColumnType::String => ("text", Type::TEXT),
        ColumnType::Bool => ("boolean", Type::BOOL),
        ColumnType::TimestampMs => ("timestamp with time zone", Type::TIMESTAMPTZ),
        ColumnType::Bytes => ("bytea", Type::BYTEA),
        ColumnType::Unspecified => return None,
    })
}

/// The cast of a key column's array parameter.
fn array_type(t: ColumnType) -> &'static str {
    match t {
        ColumnType::Int64 | ColumnType::Unspecified => "bigint[]",
        ColumnType::Double => "float8[]",
        ColumnType::String => "text[]",
        ColumnType::Bool => "boolean[]",
        ColumnType::TimestampMs => "timestamptz[]",
        ColumnType::Bytes => "bytea[]",
    }
}

fn column_types(schema: &Schema) -> Result<Vec<ColumnType>, SinkError> {
    schema
        .columns
        .iter()
        .map(|c| match ColumnType::try_from(c.r#type) {
            Ok(t) if pg_type(t).is_some() => Ok(t),
            _ => Err(SinkError::permanent(format!("view {}: column {} has no PostgreSQL type", schema.name, c.name))),
        })
        .collect()
}

fn ms_to_time(ms: i64) -> Option<SystemTime> {
    if ms >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_millis(ms as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_millis(ms.unsigned_abs()))
    }
}

fn time_to_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

fn frontier_sql(t: Time) -> Result<i64, SinkError> {
    i64::try_from(t).map_err(|_| SinkError::permanent(format!("frontier {t} does not fit a bigint")))
}

/// A table the sink owns: its name, columns and key.
struct TableSpec {
    /// What it mirrors, for messages: `view kpis`.
    what: String,
    table: String,
    /// Name, PostgreSQL type name, nullable.
    columns: Vec<(String, &'static str, bool)>,
    key_columns: usize,
}

impl TableSpec {
    fn create_sql(&self, schema_name: &str) -> String {
        let columns: Vec<String> =
            self.columns.iter().map(|(name, t, nullable)| format!("{} {t}{}", ident(name), if *nullable { "" } else { " NOT NULL" })).collect();
        let key: Vec<String> = self.columns[..self.key_columns].iter().map(|c| ident(&c.0)).collect();
        format!("CREATE TABLE IF NOT EXISTS {}.{} ({}, PRIMARY KEY ({}))", ident(schema_name), ident(&self.table), columns.join(", "), key.join(", "))
    }

    /// Why an existing table's columns and key (`found`: name, type, NOT NULL) do not fit.
    fn mismatch(&self, schema_name: &str, found: &[(String, String, bool)], key: &[String]) -> Option<String> {
        let table = format!("{}.{}", ident(schema_name), ident(&self.table));
        let problem = (|| {
            for (i, expected) in self.columns.iter().enumerate() {
                let (name, t, nullable) = expected;
                let Some((found_name, found_type, not_null)) = found.get(i) else {
                    return Some(format!("it lacks column {name} {t} (column {})", i + 1));
                };
                if found_name != name || found_type != t {
                    return Some(format!("column {} is {found_name} {found_type}, expected {name} {t}", i + 1));
                }
                if *nullable && *not_null {
                    return Some(format!("column {name} is NOT NULL, but the view has nulls there"));
                }
            }
            if let Some((name, t, _)) = found.get(self.columns.len()) {
                return Some(format!("it has an extra column {name} {t} (column {})", self.columns.len() + 1));
            }
            let expected: Vec<&str> = self.columns[..self.key_columns].iter().map(|c| c.0.as_str()).collect();
            (key != expected.as_slice()).then(|| format!("its primary key is ({}), expected ({})", key.join(", "), expected.join(", ")))
        })();
        problem.map(|p| format!("table {table} does not match {}: {p}", self.what))
    }
}

/// A mirrored view's table.
struct Table {
    schema: Schema,
    spec: TableSpec,
    kinds: Vec<ColumnType>,
    types: Vec<Type>,
    qualified: String,
}

impl Table {
    fn new(schema: &Schema, schema_name: &str) -> Result<Table, SinkError> {
        if schema.key_columns == 0 || schema.key_columns > schema.columns.len() {
            return Err(SinkError::permanent(format!("view {} has no usable key ({} key columns)", schema.name, schema.key_columns)));
        }
        let kinds = column_types(schema)?;
        let pg: Vec<(&'static str, Type)> = kinds.iter().map(|&k| pg_type(k).expect("checked by column_types")).collect();
        let columns = schema.columns.iter().zip(&pg).map(|(c, (t, _))| (c.name.clone(), *t, c.nullable)).collect();
        let spec = TableSpec { what: format!("view {}", schema.name), table: schema.name.to_owned(), columns, key_columns: schema.key_columns };
        let qualified = format!("{}.{}", ident(schema_name), ident(schema.name));
        Ok(Table { schema: schema.clone(), spec, kinds, types: pg.into_iter().map(|(_, t)| t).collect(), qualified })
    }

    fn columns_sql(&self) -> String {
        self.schema.columns.iter().map(|c| ident(&c.name)).collect::<Vec<_>>().join(", ")
    }

    fn copy_sql(&self) -> String {
        format!("COPY {} ({}) FROM STDIN (FORMAT binary)", self.qualified, self.columns_sql())
    }

    fn delete_keys_sql(&self) -> String {
        let k = self.schema.key_columns;
        let keys: Vec<String> = self.schema.columns[..k].iter().map(|c| ident(&c.name)).collect();
        let arrays: Vec<String> = self.kinds[..k].iter().enumerate().map(|(i, kind)| format!("${}::{}", i + 1, array_type(*kind))).collect();
        format!("DELETE FROM {} WHERE ({}) IN (SELECT * FROM unnest({}))", self.qualified, keys.join(", "), arrays.join(", "))
    }
}

/// One value ready for `COPY`.
enum Cell {
    Int64(Option<i64>),
    Double(Option<f64>),
    Text(Option<String>),
    Bool(Option<bool>),
    Time(Option<SystemTime>),
    Bytes(Option<Vec<u8>>),
}

impl Cell {
    /// The value as a cell of a column of type `t`, if it fits.
    fn new(v: Value, t: ColumnType) -> Option<Cell> {
        Some(match (v.kind, t) {
            (None, ColumnType::Int64) => Cell::Int64(None),
            (None, ColumnType::Double) => Cell::Double(None),
            (None, ColumnType::String) => Cell::Text(None),
            (None, ColumnType::Bool) => Cell::Bool(None),
            (None, ColumnType::TimestampMs) => Cell::Time(None),
            (None, ColumnType::Bytes) => Cell::Bytes(None),
            (Some(Kind::Int64(x)), ColumnType::Int64) => Cell::Int64(Some(x)),
            (Some(Kind::Double(x)), ColumnType::Double) => Cell::Double(Some(x)),
            (Some(Kind::String(x)), ColumnType::String) => Cell::Text(Some(x)),
            (Some(Kind::Bool(x)), ColumnType::Bool) => Cell::Bool(Some(x)),
            (Some(Kind::TimestampMs(x)), ColumnType::TimestampMs) => Cell::Time(Some(ms_to_time(x)?)),
            (Some(Kind::Bytes(x)), ColumnType::Bytes) => Cell::Bytes(Some(x)),
            _ => return None,
        })
    }

    fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Cell::Int64(v) => v,
            Cell::Double(v) => v,
            Cell::Text(v) => v,
            Cell::Bool(v) => v,
            Cell::Time(v) => v,
            Cell::Bytes(v) => v,
        }
    }
}

/// The values of one key column of the rows to delete: one typed array parameter.
enum KeyArray {
    Int64(Vec<i64>),
    Double(Vec<f64>),
    Text(Vec<String>),
    Bool(Vec<bool>),
    Time(Vec<SystemTime>),
    Bytes(Vec<Vec<u8>>),
}

impl KeyArray {
    fn new(t: ColumnType) -> KeyArray {
        match t {
            ColumnType::Int64 | ColumnType::Unspecified => KeyArray::Int64(Vec::new()),
            ColumnType::Double => KeyArray::Double(Vec::new()),
            ColumnType::String => KeyArray::Text(Vec::new()),
            ColumnType::Bool => KeyArray::Bool(Vec::new()),
            ColumnType::TimestampMs => KeyArray::Time(Vec::new()),
            ColumnType::Bytes => KeyArray::Bytes(Vec::new()),
        }
    }

    /// Appends a value; `false` if it does not fit (null included: keys are not null).
    fn push(&mut self, v: Value) -> bool {
        match (self, v.kind) {
            (KeyArray::Int64(a), Some(Kind::Int64(x))) => a.push(x),
            (KeyArray::Double(a), Some(Kind::Double(x))) => a.push(x),
            (KeyArray::Text(a), Some(Kind::String(x))) => a.push(x),
            (KeyArray::Bool(a), Some(Kind::Bool(x))) => a.push(x),
            (KeyArray::Time(a), Some(Kind::TimestampMs(x))) => match ms_to_time(x) {
                Some(t) => a.push(t),
                None => return false,
            },
            (KeyArray::Bytes(a), Some(Kind::Bytes(x))) => a.push(x),
            _ => return false,
        }
        true
    }

    fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            KeyArray::Int64(a) => a,
            KeyArray::Double(a) => a,
            KeyArray::Text(a) => a,
            KeyArray::Bool(a) => a,
            KeyArray::Time(a) => a,
            KeyArray::Bytes(a) => a,
        }
    }
}

/// One table's share of a commit.
#[derive(Default)]
struct TableChanges {
    /// One array per key column.
    deletes: Vec<KeyArray>,
    delete_count: usize,
    inserts: Vec<Vec<Cell>>,
}

/// The changes of one commit, kept until its outcome is known.
struct Batch {
    /// Delete everything first (the first commit after start).
    rewrite: bool,
    /// The progress row before (`None`: no row).
    lower: Option<Time>,
    upper: Time,
    /// By position in the sink's tables.
    tables: Vec<TableChanges>,
    inserts: u64,
    deletes: u64,
}

fn key_text(values: &[Value]) -> String {
    values.iter().map(value::display).collect::<Vec<_>>().join(", ")
}

/// Turns consolidated changes into a batch, refusing what cannot be a change of a view:
/// counts other than +1 (and -1 outside a rewrite), a key twice among the inserts or
/// among the deletes, a value that does not fit its column.
fn prepare(
    tables: &[Table],
    table_of: &[Option<usize>],
    changes: HashMap<ViewRow, i64>,
    rewrite: bool,
    lower: Option<Time>,
    upper: Time,
) -> Result<Batch, SinkError> {
    let mut inserts: Vec<Vec<Row>> = tables.iter().map(|_| Vec::new()).collect();
    let mut deletes: Vec<Vec<Row>> = tables.iter().map(|_| Vec::new()).collect();
    for (row, count) in changes {
        let (view, values) = schema::view_row(&row);
        let Some(t) = table_of.get(view).copied().flatten() else { continue };
        match count {
            1 => inserts[t].push(values),
            -1 if !rewrite => deletes[t].push(values),
            _ => {
                let key = key_text(&values.values[..tables[t].schema.key_columns]);
                return Err(SinkError::permanent(format!(
                    "view {}: the row with key ({key}) has count {count} as of time {}; a view holds each row once (bug in the sink's input)",
                    tables[t].schema.name,
                    upper.saturating_sub(1)
                )));
            }
        }
    }
    let mut batch = Batch { rewrite, lower, upper, tables: Vec::with_capacity(tables.len()), inserts: 0, deletes: 0 };
    for (t, table) in tables.iter().enumerate() {
        let k = table.schema.key_columns;
        let name = table.schema.name;
        let mut changes = TableChanges::default();
        for (rows, what) in [(&mut deletes[t], "removed"), (&mut inserts[t], "added")] {
            rows.sort_by(|a, b| value::compare_all(&a.values[..k], &b.values[..k]));
            if let Some(pair) = rows.windows(2).find(|p| value::compare_all(&p[0].values[..k], &p[1].values[..k]).is_eq()) {
                return Err(SinkError::permanent(format!(
                    "view {name}: key ({}) is {what} twice as of time {}; a key identifies one row (bug in the sink's input)",
                    key_text(&pair[0].values[..k]),
                    upper.saturating_sub(1)
                )));
            }
        }
        let unfit = |values: &[Value]| SinkError::permanent(format!("view {name}: row with key ({}) does not fit its columns", key_text(&values[..k])));
        changes.deletes = table.kinds[..k].iter().map(|&t| KeyArray::new(t)).collect();
        for row in std::mem::take(&mut deletes[t]) {
            let key = row.values[..k].to_vec();
            for (array, v) in changes.deletes.iter_mut().zip(row.values.into_iter().take(k)) {
                if !array.push(v) {
                    return Err(unfit(&key));
                }
            }
            changes.delete_count += 1;
        }
        for row in std::mem::take(&mut inserts[t]) {
            if row.values.len() != table.kinds.len() {
                return Err(unfit(&row.values));
            }
            let cells: Option<Vec<Cell>> = row.values.iter().cloned().zip(&table.kinds).map(|(v, &kind)| Cell::new(v, kind)).collect();
            changes.inserts.push(cells.ok_or_else(|| unfit(&row.values))?);
        }
        batch.deletes += changes.delete_count as u64;
        batch.inserts += changes.inserts.len() as u64;
        batch.tables.push(changes);
    }
    Ok(batch)
}

/// Statements prepared on one connection.
struct Statements {
    advance: Statement,
    insert_progress: Statement,
    /// By position in the sink's tables.
    delete_keys: Vec<Statement>,
    copy: Vec<Statement>,
}

struct Backoff {
    next: Duration,
}

impl Backoff {
    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }
}

/// The sink thread's state.
struct Sink {
    shared: Arc<Shared>,
    name: String,
    schema_name: String,
    pg: tokio_postgres::Config,
    commit_interval: Duration,
    tables: Vec<Table>,
    /// By view index: position in `tables`.
    table_of: Vec<Option<usize>>,
    progress: TableSpec,
    stop: watch::Receiver<Stop>,
    /// The progress row found on the first connection (`Some(None)`: no row).
    resume: Option<Option<Time>>,
    /// The last frontier this sink committed.
    committed: Option<Time>,
    /// A batch whose commit has not been acknowledged yet.
    in_flight: Option<Batch>,
    last_commit: Option<Instant>,
}

impl Sink {
    fn new(shared: Arc<Shared>, config: &PgSinkConfig, schemas: &[Schema], stop: watch::Receiver<Stop>) -> Result<Sink, SinkError> {
        let mut pg = tokio_postgres::Config::from_str(&config.url)
            .map_err(|e| SinkError::permanent(format!("invalid PostgreSQL URL {}: {}", mask_url(&config.url), describe(&e))))?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }
        // A peer that goes silent (no answer, no reset) must not hang a commit forever.
        if pg.get_tcp_user_timeout().is_none() {
            pg.tcp_user_timeout(DEAD_PEER_TIMEOUT);
        }
        if pg.get_keepalives_interval().is_none() {
            pg.keepalives_idle(DEAD_PEER_TIMEOUT).keepalives_interval(Duration::from_secs(10)).keepalives_retries(3);
        }
        if pg.get_application_name().is_none() {
            pg.application_name(format!("tidemark sink {}", config.name));
        }
        let mut views = config.views.clone();
        views.sort_unstable();
        views.dedup();
        let mut tables = Vec::new();
        let mut table_of = vec![None; schemas.len()];
        for view in views {
            let schema = schemas.get(view).ok_or_else(|| SinkError::permanent(format!("no view has index {view}")))?;
            table_of[view] = Some(tables.len());
            tables.push(Table::new(schema, &config.schema)?);
        }
        let progress = TableSpec {
            what: "the sink progress table".to_owned(),
            table: PROGRESS_TABLE.to_owned(),
            columns: vec![("sink".to_owned(), "text", false), ("frontier".to_owned(), "bigint", false), ("committed_at".to_owned(), "timestamp with time zone", false)],
            key_columns: 1,
        };
        let commit_interval = config.commit_interval;
        let (name, schema_name) = (config.name.clone(), config.schema.clone());
        Ok(Sink { shared, name, schema_name, pg, commit_interval, tables, table_of, progress, stop, resume: None, committed: None, in_flight: None, last_commit: None })
    }

    /// Runs until stopped or a permanent error; a flush that outlives [`FLUSH_TIMEOUT`]
    /// and an abandon cut it short.
    async fn run(&mut self) -> Result<(), SinkError> {
        let mut stop = self.stop.clone();
        tokio::select! {
            biased;
            () = cut_short(&mut stop) => Ok(()),
            outcome = self.run_sessions() => outcome,
        }
    }

    /// Connects, commits, and reconnects after temporary failures.
    async fn run_sessions(&mut self) -> Result<(), SinkError> {
        let mut backoff = Backoff { next: BACKOFF_MIN };
        // The message of the failure under way, if any: logged when it starts or changes.
        let mut failing: Option<String> = None;
        loop {
            match self.session(&mut backoff, &mut failing).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_temporary() => {
                    let delay = backoff.next_delay();
                    self.shared.update(|s| {
                        s.connected = false;
                        s.retries += 1;
                        s.last_error = Some(e.to_string());
                    });
                    if failing.as_deref() != Some(e.message()) {
                        tracing::warn!(sink = %self.name, error = %e, retry_in_ms = delay.as_millis() as u64, "PostgreSQL sink: temporary failure, retrying with backoff");
                    }
                    failing = Some(e.message);
                    if *self.stop.borrow() != Stop::Run {
                        // Stopping while PostgreSQL is unreachable: nothing more can be committed.
                        return Ok(());
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = self.stop.changed() => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One connection: set up, reconcile with the progress row, then commit until
    /// stopped or an error.
    async fn session(&mut self, backoff: &mut Backoff, failing: &mut Option<String>) -> Result<(), SinkError> {
        let mut client = self.connect().await?;
        self.ensure_tables(&client).await?;
        let statements = self.prepare_statements(&client).await?;
        let found = read_frontier(&client, &self.schema_name, &self.name).await?;
        self.reconcile(found)?;
        self.shared.update(|s| s.connects += 1);
        if let Some(previous) = failing.take() {
            tracing::info!(sink = %self.name, previous_error = %previous, "PostgreSQL sink reconnected");
        }
        backoff.reset();
        loop {
            if self.in_flight.is_none() {
                match self.next_batch().await? {
                    Some(batch) => self.in_flight = Some(batch),
                    None => return Ok(()),
                }
            }
            let batch = self.in_flight.as_ref().expect("a batch to commit");
            let stats = self.commit(&mut client, &statements, batch).await?;
            self.confirm(stats);
        }
    }

    async fn connect(&mut self) -> Result<Client, SinkError> {
        let (client, connection) = self.pg.connect(NoTls).await.map_err(|e| SinkError::postgres("connecting to PostgreSQL", &e))?;
        let generation = {
            let mut cell = lock(&self.shared.status);
            cell.generation += 1;
            cell.status.connected = true;
            cell.generation
        };
        let shared = self.shared.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(sink = %shared.name, error = %describe(&e), "PostgreSQL connection ended");
            }
            let mut cell = lock(&shared.status);
            if cell.generation == generation {
                cell.status.connected = false;
            }
        });
        Ok(client)
    }

    /// Creates the schema and missing tables, and checks existing ones.
    async fn ensure_tables(&self, client: &Client) -> Result<(), SinkError> {
        let schema_name = &self.schema_name;
        let exists: bool = client
            .query_one("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)", &[schema_name])
            .await
            .map_err(|e| SinkError::postgres("looking up the schema", &e))?
            .get(0);
        if !exists {
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", ident(schema_name)))
                .await
                .map_err(|e| SinkError::postgres(&format!("creating schema {}", ident(schema_name)), &e))?;
        }
        for spec in std::iter::once(&self.progress).chain(self.tables.iter().map(|t| &t.spec)) {
            let mut found = table_columns(client, schema_name, &spec.table).await?;
            if found.0.is_empty() {
                client
                    .batch_execute(&spec.create_sql(schema_name))
                    .await
                    .map_err(|e| SinkError::postgres(&format!("creating table {}.{}", ident(schema_name), ident(&spec.table)), &e))?;
                found = table_columns(client, schema_name, &spec.table).await?;
            }
            if let Some(problem) = spec.mismatch(schema_name, &found.0, &found.1) {
                return Err(SinkError::permanent(problem));
            }
        }
        Ok(())
    }

    async fn prepare_statements(&self, client: &Client) -> Result<Statements, SinkError> {
        let progress = format!("{}.{}", ident(&self.schema_name), ident(PROGRESS_TABLE));
        let prepare = |sql: String| async move { client.prepare(&sql).await.map_err(|e| SinkError::postgres(&format!("preparing {sql}"), &e)) };
        let advance = prepare(format!("UPDATE {progress} SET frontier = $2, committed_at = now() WHERE sink = $1 AND frontier = $3")).await?;
        let insert_progress =
            prepare(format!("INSERT INTO {progress} (sink, frontier, committed_at) VALUES ($1, $2, now()) ON CONFLICT (sink) DO NOTHING")).await?;
        let mut delete_keys = Vec::new();
        let mut copy = Vec::new();
        for table in &self.tables {
            delete_keys.push(prepare(table.delete_keys_sql()).await?);
            copy.push(prepare(table.copy_sql()).await?);
        }
        Ok(Statements { advance, insert_progress, delete_keys, copy })
    }

    /// Checks the progress row found on (re)connecting against what this sink knows, and
    /// settles a commit whose outcome was unknown.
    fn reconcile(&mut self, found: Option<Time>) -> Result<(), SinkError> {
        let Some(resume) = self.resume else {
            self.resume = Some(found);
            self.shared.update(|s| s.resume_frontier = found);
            if let Some(f) = found {
                tracing::info!(sink = %self.name, frontier = f, "PostgreSQL sink resumes: the tables hold the views as of {}", f.saturating_sub(1));
            }
            return Ok(());
        };
        let expected = match &self.in_flight {
            Some(batch) if found == Some(batch.upper) => {
                // The connection dropped after PostgreSQL committed: count the commit.
                tracing::info!(sink = %self.name, frontier = batch.upper, "PostgreSQL sink: the interrupted commit had succeeded");
                let stats =
                    CommitStats { frontier: batch.upper, rewrite: batch.rewrite, rows_inserted: batch.inserts, rows_deleted: batch.deletes, elapsed: Duration::ZERO };
                self.confirm(stats);
                return Ok(());
            }
            // Not committed: it is retried as it is.
            Some(batch) => batch.lower,
            None => self.committed.map_or(resume, Some),
        };
        if found == expected {
            return Ok(());
        }
        let unfinished = self.in_flight.as_ref().map_or(String::new(), |b| format!(" (or {} after the unfinished commit)", b.upper));
        Err(SinkError::permanent(format!(
            "the progress of sink {:?} in {}.{} is {found:?}, but this sink left it at {expected:?}{unfinished}: is another sink with this name writing?",
            self.name,
            ident(&self.schema_name),
            ident(PROGRESS_TABLE),
        )))
    }

    /// Waits for the next commit's changes; `None` when stopping with nothing left to
    /// commit.
    async fn next_batch(&mut self) -> Result<Option<Batch>, SinkError> {
        loop {
            let stop = *self.stop.borrow_and_update();
            if stop == Stop::Abandon {
                return Ok(None);
            }
            let (rewrite, lower) = match self.committed {
                Some(c) => (false, Some(c)),
                None => (true, self.resume.expect("the progress row is read before committing")),
            };
            let due = {
                let mut feed = lock(&self.shared.feed);
                if let Some(fault) = feed.fault.take() {
                    return Err(SinkError::permanent(fault));
                }
                if feed.upper > lower.unwrap_or(0) {
                    let due = self.last_commit.map(|t| t + self.commit_interval);
                    if stop == Stop::Flush || due.is_none_or(|d| Instant::now() >= d) {
                        let changes = std::mem::take(&mut feed.changes);
                        let upper = feed.upper;
                        drop(feed);
                        return prepare(&self.tables, &self.table_of, changes, rewrite, lower, upper).map(Some);
                    }
                    due
                } else if stop == Stop::Flush {
                    return Ok(None);
                } else {
                    None
                }
            };
            match due {
                Some(due) => tokio::select! {
                    () = tokio::time::sleep_until(due.into()) => {}
                    _ = self.stop.changed() => {}
                },
                None => tokio::select! {
                    () = self.shared.wake.notified() => {}
                    _ = self.stop.changed() => {}
                },
            }
        }
    }

    /// Applies a batch in one transaction.
    async fn commit(&self, client: &mut Client, statements: &Statements, batch: &Batch) -> Result<CommitStats, SinkError> {
        let started = Instant::now();
        let pg = |what: &str| {
            let what = what.to_owned();
            move |e: tokio_postgres::Error| SinkError::postgres(&what, &e)
        };
        let tx = client.transaction().await.map_err(pg("starting a transaction"))?;
        // The progress row first: this locks it, and it moves only from where this sink
        // left it.
        let upper = frontier_sql(batch.upper)?;
        let moved = match batch.lower {
            Some(lower) => tx.execute(&statements.advance, &[&self.name, &upper, &frontier_sql(lower)?]).await,
            None => tx.execute(&statements.insert_progress, &[&self.name, &upper]).await,
        }
        .map_err(pg("moving the progress row"))?;
        if moved != 1 {
            return Err(SinkError::permanent(format!(
                "the progress row of sink {:?} is no longer at {:?}: is another sink with this name writing?",
                self.name, batch.lower
            )));
        }
        let mut deleted = 0;
        for ((table, changes), statement) in self.tables.iter().zip(&batch.tables).zip(&statements.delete_keys) {
            if batch.rewrite {
                deleted += tx
                    .execute(&format!("DELETE FROM {}", table.qualified), &[])
                    .await
                    .map_err(pg(&format!("emptying {}", table.qualified)))?;
            } else if changes.delete_count > 0 {
                let n = tx
                    .execute_raw(statement, changes.deletes.iter().map(KeyArray::sql))
                    .await
                    .map_err(pg(&format!("deleting removed rows from {}", table.qualified)))?;
                if n != changes.delete_count as u64 {
                    return Err(SinkError::permanent(format!(
                        "{}: {} rows to delete by key, {n} found: the table was changed by something else than this sink",
                        table.qualified, changes.delete_count
                    )));
                }
                deleted += n;
            }
        }
        let mut inserted = 0;
        for ((table, changes), statement) in self.tables.iter().zip(&batch.tables).zip(&statements.copy) {
            if changes.inserts.is_empty() {
                continue;
            }
            let context = format!("copying added rows into {}", table.qualified);
            let sink = tx.copy_in(statement).await.map_err(pg(&context))?;
            let writer = BinaryCopyInWriter::new(sink, &table.types);
            let mut writer = std::pin::pin!(writer);
            for row in &changes.inserts {
                writer.as_mut().write_raw(row.iter().map(Cell::sql)).await.map_err(pg(&context))?;
            }
            inserted += writer.finish().await.map_err(pg(&context))?;
        }
        tx.commit().await.map_err(pg("committing"))?;
        Ok(CommitStats { frontier: batch.upper, rewrite: batch.rewrite, rows_inserted: inserted, rows_deleted: deleted, elapsed: started.elapsed() })
    }

    /// Records a commit of the batch in flight.
    fn confirm(&mut self, stats: CommitStats) {
        self.in_flight = None;
        self.committed = Some(stats.frontier);
        self.last_commit = Some(Instant::now());
        if stats.rewrite {
            let secs = stats.elapsed.as_secs_f64();
            let rows_per_sec = if secs > 0.0 { (stats.rows_inserted as f64 / secs) as u64 } else { 0 };
            tracing::info!(
                sink = %self.name,
                frontier = stats.frontier,
                rows = stats.rows_inserted,
                replaced = stats.rows_deleted,
                ms = stats.elapsed.as_millis() as u64,
                rows_per_sec,
                "PostgreSQL sink loaded the views"
            );
        }
        self.shared.update(|s| {
            s.committed_frontier = Some(stats.frontier);
            s.transactions += 1;
            s.rows_inserted += stats.rows_inserted;
            s.rows_deleted += stats.rows_deleted;
            s.last_commit = Some(stats);
        });
    }
}

/// Resolves on an abandon, or [`FLUSH_TIMEOUT`] after a flush was asked for.
async fn cut_short(stop: &mut watch::Receiver<Stop>) {
    loop {
        let now = *stop.borrow_and_update();
        match now {
            Stop::Abandon => return,
            Stop::Flush => {
                tokio::time::sleep(FLUSH_TIMEOUT).await;
                return;
            }
            Stop::Run => {
                if stop.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// An existing table's columns (name, type, NOT NULL; empty when there is no table) and
/// primary key, from the catalog (which shows them whatever the privileges).
async fn table_columns(client: &Client, schema_name: &str, table: &str) -> Result<(Vec<(String, String, bool)>, Vec<String>), SinkError> {
    let what = format!("reading the columns of {}.{}", ident(schema_name), ident(table));
    let rows = client
        .query(
            "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&schema_name, &table],
        )
        .await
        .map_err(|e| SinkError::postgres(&what, &e))?;
    let columns = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    let key = client
        .query(
            "SELECT a.attname::text \
             FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_class c ON c.oid = i.indrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey) \
             WHERE n.nspname = $1 AND c.relname = $2 AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&schema_name, &table],
        )
        .await
        .map_err(|e| SinkError::postgres(&what, &e))?;
    Ok((columns, key.iter().map(|r| r.get(0)).collect()))
}

/// The frontier of sink `sink` in the progress table of `schema_name` (`None` without a
/// row). The progress table must exist.
pub async fn read_frontier(client: &Client, schema_name: &str, sink: &str) -> Result<Option<Time>, SinkError> {
    let sql = format!("SELECT frontier FROM {}.{} WHERE sink = $1", ident(schema_name), ident(PROGRESS_TABLE));
    let row = client.query_opt(&sql, &[&sink]).await.map_err(|e| SinkError::postgres("reading the sink's progress", &e))?;
    match row.map(|r| r.get::<_, i64>(0)) {
        None => Ok(None),
        Some(f) => Time::try_from(f).map(Some).map_err(|_| SinkError::permanent(format!("the progress of sink {sink:?} is negative: {f}"))),
    }
}

/// Reads a mirrored table back as rows of its view, ordered by key (strings by bytes, as
/// [`value::compare_all`] orders them).
pub async fn read_table(client: &Client, schema_name: &str, schema: &Schema) -> Result<Vec<Row>, SinkError> {
    let kinds = column_types(schema)?;
    let columns: Vec<String> = schema.columns.iter().map(|c| ident(&c.name)).collect();
    let order: Vec<String> = columns[..schema.key_columns]
        .iter()
        .zip(&kinds)
        .map(|(c, k)| if *k == ColumnType::String { format!("{c} COLLATE \"C\"") } else { c.clone() })
        .collect();
    let mut sql = format!("SELECT {} FROM {}.{}", columns.join(", "), ident(schema_name), ident(schema.name));
    if !order.is_empty() {
        sql += &format!(" ORDER BY {}", order.join(", "));
    }
    let what = format!("reading {}.{}", ident(schema_name), ident(schema.name));
    let rows = client.query(&sql, &[]).await.map_err(|e| SinkError::postgres(&what, &e))?;
    let read = |r: &tokio_postgres::Row, i: usize, kind: ColumnType| -> Result<Value, tokio_postgres::Error> {
        Ok(match kind {
            ColumnType::Int64 => r.try_get::<_, Option<i64>>(i)?.map_or_else(value::null, value::int64),
            ColumnType::Double => r.try_get::<_, Option<f64>>(i)?.map_or_else(value::null, value::double),
            ColumnType::String => r.try_get::<_, Option<&str>>(i)?.map_or_else(value::null, value::string),
            ColumnType::Bool => r.try_get::<_, Option<bool>>(i)?.map_or_else(value::null, value::boolean),
            ColumnType::TimestampMs => r.try_get::<_, Option<SystemTime>>(i)?.map_or_else(value::null, |t| value::timestamp_ms(time_to_ms(t))),
            ColumnType::Bytes | ColumnType::Unspecified => r.try_get::<_, Option<&[u8]>>(i)?.map_or_else(value::null, value::bytes),
        })
    };
    rows.iter()
        .map(|r| {
            let values = kinds.iter().enumerate().map(|(i, &k)| read(r, i, k)).collect::<Result<Vec<_>, _>>();
            values.map(|values| Row { values }).map_err(|e| SinkError::postgres(&what, &e))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use tidemark_dataflows::decode::RejectReason;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        flags: PostgresFlags,
    }

    fn flags(args: &[&str]) -> PostgresFlags {
        Cli::try_parse_from(std::iter::once("tidemark").chain(args.iter().copied())).expect("flags parse").flags
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(mask_url("postgres://app:s3cr3t@db:5432/shop"), "postgres://app:***@db:5432/shop");
        assert_eq!(mask_url("postgresql://app@db/shop?password=x&sslmode=disable"), "postgresql://app@db/shop?password=***&sslmode=disable");
        assert_eq!(mask_url("host=db user=app password=s3cr3t dbname=shop"), "host=db user=app password=*** dbname=shop");
        assert_eq!(mask_url("host=db password='a \\' b' dbname=shop"), "host=db password=*** dbname=shop");
        assert_eq!(mask_url("postgres://app@db/shop"), "postgres://app@db/shop");
        let config = PgSinkConfig::new("postgres://app:s3cr3t@db/shop");
        assert!(!format!("{config:?}").contains("s3cr3t") && !config.describe().contains("s3cr3t"));
    }

    #[test]
    fn flags_make_a_config() {
        assert!(flags(&[]).config().expect("valid").is_none(), "no URL, no sink");
        let all = flags(&["--postgres-url", "postgres://u@localhost/db"]).config().expect("valid").expect("a sink");
        assert_eq!(all.views, (0..schema::schemas().len()).collect::<Vec<_>>());
        assert_eq!((all.schema.as_str(), all.name.as_str(), all.commit_interval), ("tidemark", "tidemark", Duration::from_millis(200)));
        let some = flags(&["--postgres-url", "host=localhost user=u", "--postgres-views", "kpis,sessions", "--postgres-commit-ms", "50"])
            .config()
            .expect("valid")
            .expect("a sink");
        assert_eq!(some.views, vec![schema::index::SESSIONS, schema::index::KPIS]);
        assert_eq!(some.commit_interval, Duration::from_millis(50));
        let error = flags(&["--postgres-url", "postgres://u@h/db", "--postgres-views", "kpis,nope", "--postgres-sink-name", " "])
            .config()
            .expect_err("invalid")
            .to_string();
        assert!(error.contains("unknown view \"nope\"") && error.contains("fraud_alerts") && error.contains("--postgres-sink-name"), "{error}");
    }

    fn reason_row(reason: RejectReason, count: i64) -> ViewRow {
        ViewRow::RejectedByReason { reason, count }
    }

    fn test_feed(views: &[usize], producers: usize) -> SinkFeed {
        let mut mirrored = vec![false; schema::schemas().len()];
        for &v in views {
            mirrored[v] = true;
        }
        SinkFeed { shared: Arc::new(Shared::new("test", mirrored, producers)) }
    }

    #[test]
    fn the_feed_consolidates_and_tracks_the_least_upper() {
        let feed = test_feed(&[schema::index::REJECTED_BY_REASON], 2);
        let a = reason_row(RejectReason::Malformed, 1);
        let b = reason_row(RejectReason::Malformed, 2);
        feed.push_from(0, [(a.clone(), 1), (b.clone(), 1), (b.clone(), -1)], 10);
        assert_eq!(feed.upper(), 0, "producer 1 is still at 0");
        // Kpis are not mirrored: skipped.
        let key = tidemark_dataflows::rows::KpiKey { granularity: tidemark_dataflows::time::Granularity::Day, window_start: 0 };
        let kpi = ViewRow::Kpis { key, agg: Default::default() };
        feed.push_from(1, [(a.clone(), -1), (b.clone(), 1), (kpi, 1)], 5);
        assert_eq!(feed.upper(), 5);
        let changes = lock(&feed.shared.feed).changes.clone();
        assert_eq!(changes, HashMap::from([(b, 1)]), "a cancelled, b once, kpis skipped");
        feed.push_from(1, [], 20);
        assert_eq!(feed.upper(), 10);
        assert!(!feed.is_closed());
        feed.push_from(0, [(a.clone(), 1)], 9);
        assert!(feed.is_closed(), "an upper going back stops the sink");
        assert!(lock(&feed.shared.feed).fault.as_deref().is_some_and(|f| f.contains("went back from 10 to 9")));
        feed.push_from(0, [(a, 1)], 30);
        assert!(lock(&feed.shared.feed).changes.is_empty(), "discarded once closed");
    }

    #[test]
    fn batches_refuse_what_no_view_can_hold() {
        let schemas = schema::schemas();
        let view = schema::index::REJECTED_BY_REASON;
        let tables = vec![Table::new(&schemas[view], "tidemark").expect("a table")];
        let mut table_of = vec![None; schemas.len()];
        table_of[view] = Some(0);
        let changes = |rows: &[(ViewRow, i64)]| rows.iter().cloned().collect::<HashMap<_, _>>();

        let batch = prepare(
            &tables,
            &table_of,
            changes(&[(reason_row(RejectReason::Malformed, 1), -1), (reason_row(RejectReason::Malformed, 2), 1), (reason_row(RejectReason::Duplicate, 4), 1)]),
            false,
            Some(10),
            20,
        )
        .expect("an update and an insert");
        assert_eq!((batch.deletes, batch.inserts), (1, 2));

        let twice = prepare(&tables, &table_of, changes(&[(reason_row(RejectReason::Malformed, 1), 2)]), false, Some(10), 20);
        let error = twice.err().expect("count 2 refused").to_string();
        assert!(error.contains("rejected_by_reason") && error.contains("(malformed)") && error.contains("count 2"), "{error}");

        let same_key = changes(&[(reason_row(RejectReason::Malformed, 1), 1), (reason_row(RejectReason::Malformed, 2), 1)]);
        let error = prepare(&tables, &table_of, same_key, false, Some(10), 20).err().expect("key twice refused").to_string();
        assert!(error.contains("key (malformed) is added twice"), "{error}");

        let removal = changes(&[(reason_row(RejectReason::Malformed, 1), -1)]);
        assert!(prepare(&tables, &table_of, removal, true, None, 20).is_err(), "a rewrite holds no removals");
    }

    #[test]
    fn tables_are_checked_column_by_column() {
        let schemas = schema::schemas();
        let table = Table::new(&schemas[schema::index::KPIS], "tidemark").expect("a table");
        let spec = &table.spec;
        let good: Vec<(String, String, bool)> = spec.columns.iter().map(|(n, t, nullable)| (n.clone(), t.to_string(), !nullable)).collect();
        let key = vec!["granularity".to_owned(), "window_start".to_owned()];
        assert_eq!(spec.mismatch("tidemark", &good, &key), None);
        let mut wrong = good.clone();
        wrong[3] = ("page_views".to_owned(), "integer".to_owned(), true);
        let problem = spec.mismatch("tidemark", &wrong, &key).expect("a mismatch");
        assert!(problem.contains("\"tidemark\".\"kpis\"") && problem.contains("page_views integer"), "{problem}");
        assert!(spec.mismatch("tidemark", &good[..5], &key).expect("short").contains("lacks column"));
        assert!(spec.mismatch("tidemark", &good, &key[..1]).expect("key").contains("primary key"));
        assert!(spec.create_sql("tidemark").starts_with("CREATE TABLE IF NOT EXISTS \"tidemark\".\"kpis\" (\"granularity\" text NOT NULL"));
        assert_eq!(
            table.delete_keys_sql(),
            "DELETE FROM \"tidemark\".\"kpis\" WHERE (\"granularity\", \"window_start\") IN (SELECT * FROM unnest($1::text[], $2::timestamptz[]))"
        );
    }

    /// After a reconnection, the progress row decides a commit whose outcome was unknown.
    #[test]
    fn the_progress_row_settles_an_unknown_commit() {
        let (_stop, stop_rx) = watch::channel(Stop::Run);
        let shared = Arc::new(Shared::new("settle", vec![true; schema::schemas().len()], 1));
        let config = PgSinkConfig::new("postgres://u@localhost/db");
        let mut sink = Sink::new(shared.clone(), &config, &schema::schemas(), stop_rx).expect("a sink");
        let batch = |sink: &Sink, lower, upper| prepare(&sink.tables, &sink.table_of, HashMap::new(), false, Some(lower), upper).expect("a batch");
        sink.reconcile(Some(100)).expect("the first connection reads the resume frontier");
        assert_eq!(sink.resume, Some(Some(100)));
        sink.committed = Some(200);
        sink.in_flight = Some(batch(&sink, 200, 300));
        sink.reconcile(Some(300)).expect("committed before the connection dropped");
        assert!(sink.in_flight.is_none() && sink.committed == Some(300));
        assert_eq!(shared.snapshot().transactions, 1);
        sink.in_flight = Some(batch(&sink, 300, 400));
        sink.reconcile(Some(300)).expect("not committed: retried");
        assert!(sink.in_flight.is_some() && sink.committed == Some(300));
        let error = sink.reconcile(Some(250)).expect_err("someone else moved the row");
        assert!(!error.is_temporary() && error.message().contains("another sink"), "{error}");
        sink.in_flight = None;
        assert!(sink.reconcile(Some(300)).is_ok());
        assert!(sink.reconcile(Some(400)).is_err(), "ahead of what this sink committed");
    }

    #[test]
    fn timestamps_convert_both_ways() {
        for ms in [0, 1, -1, 1_700_000_000_123, -86_400_000 * 365 * 100 - 7] {
            assert_eq!(time_to_ms(ms_to_time(ms).expect("in range")), ms);
        }
    }
}
