//! `tidemark-load replay`: a file of JSON lines through one `Ingest` stream, as fast as
//! the cluster acknowledges it (or at a given rate), until every event is visible.
//!
//! The file is read on a thread of its own into requests of at most `--batch` lines (and
//! at most `--max-request-bytes`, below the coordinator's message limit); blank lines are
//! skipped, and a line's end is not part of its event. At most `--in-flight` requests are
//! unacknowledged at once. Per request the tool records two latencies, both from the
//! moment it was handed to the stream (with `--rate`, from the moment the schedule meant
//! it to go out, so that waiting for a free slot counts: see [`crate::pacing`]):
//!
//! - **acknowledged**: until its acknowledgement arrives;
//! - **visible**: until the cluster's frontier (every process, every view) has passed the
//!   acknowledgement's `visible_at`, the point from which a `Query` reads the events. The
//!   tool observes the frontier on a connection of its own: a `Query` of the small
//!   `rejected_by_reason` view with `as_of` = the earliest `visible_at` not yet seen,
//!   which the coordinator answers as soon as that time is complete, then `ListViews`,
//!   which gives the frontier itself (all times below it are visible). So a visibility
//!   is noticed within about two round trips of loopback gRPC, never before its
//!   acknowledgement. (A `Subscribe` stream's progress would be pushed, but it is one
//!   view's progress, which may run ahead of the slowest view's.)
//!
//! A stream that fails is counted by status code and reopened, and its unacknowledged
//! requests are sent again, oldest first (safe: events count once per `event_id`); their
//! latencies still run from the first send. So is a stream that has requests waiting
//! and acknowledges nothing for `--ack-timeout` seconds (counted as `ACK_TIMEOUT`). After `MAX_FAILURES` failures in a row
//! without an acknowledgement in between, the tool gives up. Every queue is bounded: the
//! reader is at most `READ_AHEAD` requests ahead, and acknowledged requests waiting to
//! become visible hold one of `MAX_UNSEEN` slots, so a cluster whose views fall far
//! behind its acknowledgements eventually slows the sender down.
//!
//! Progress goes to stderr once a second; at the end, once every event sent is visible
//! (or `--drain` seconds after the last acknowledgement), a summary goes to stderr and one
//! JSON line to stdout. The exit status is 1 if not everything became visible.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use tidemark_proto::v1::tidemark_client::TidemarkClient;
use tidemark_proto::v1::{IngestResponse, ListViewsRequest, QueryRequest};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tonic::transport::Channel;

use crate::ingest::{Counters, Stream, Trouble};
use crate::pacing::Schedule;
use crate::summary::{code_name, histogram, record, Errors, Json, Percentiles};
use crate::{connect, progress_every_second};

/// Requests the file reader may be ahead of the sender.
const READ_AHEAD: usize = 4;
/// Acknowledged requests that may wait at once to become visible.
const MAX_UNSEEN: usize = 1 << 16;
/// Failures of the Ingest stream in a row, without an acknowledgement in between, before
/// giving up.
const MAX_FAILURES: u32 = 5;
/// What a request adds to its events' bytes per event, at most: the field's tag and the
/// event's length (protobuf framing).
const FRAMING: usize = 5;
/// The view whose `Query` at `as_of` waits for a time to become visible (a few rows).
const VISIBLE_VIEW: &str = "rejected_by_reason";
/// How long one such `Query` waits (ms) before it is asked again.
const WAIT_MS: u32 = 60_000;

/// Flags of `tidemark-load replay`.
#[derive(Clone, Debug, Args)]
pub struct ReplayArgs {
    /// The file of JSON events, one per line, as `Ingest` takes them (blank lines are
    /// skipped).
    #[arg(long, short = 'i')]
    pub input: PathBuf,
    /// Most lines in one Ingest request.
    #[arg(long, env = "TIDEMARK_LOAD_BATCH", default_value_t = 1000)]
    pub batch: usize,
    /// Most requests sent and not yet acknowledged.
    #[arg(long, env = "TIDEMARK_LOAD_IN_FLIGHT", default_value_t = 16)]
    pub in_flight: usize,
    /// Events per second to send (0: as fast as acknowledgements allow).
    #[arg(long, env = "TIDEMARK_LOAD_RATE", default_value_t = 0)]
    pub rate: u64,
    /// Most bytes of events in one request (each event counted with 5 bytes of framing);
    /// a longer line goes alone. The coordinator refuses messages over its
    /// `--max-message-bytes` (4 MiB by default).
    #[arg(long, default_value_t = 4_000_000)]
    pub max_request_bytes: usize,
    /// How long to wait, after the last acknowledgement, for everything to become
    /// visible (s); also how long sending may wait for acknowledged requests to become
    /// visible.
    #[arg(long, env = "TIDEMARK_LOAD_DRAIN", default_value_t = 600)]
    pub drain: u64,
    /// A stream with requests waiting and no acknowledgement for this long (s) is
    /// abandoned, and its requests are sent again on a new one.
    #[arg(long, default_value_t = 60)]
    pub ack_timeout: u64,
    /// The coordinator's public API.
    #[arg(long, env = "TIDEMARK_LOAD_TARGET", default_value = "http://127.0.0.1:6875")]
    pub target: String,
}

/// A file's lines in requests: at most `lines` lines each and, unless a single line is
/// larger, at most `bytes` bytes counting [`FRAMING`] per line. Lines of nothing but white
/// space are skipped; the line end (`\n` or `\r\n`) is not part of the event.
pub struct Batches<R> {
    reader: R,
    lines: usize,
    bytes: usize,
    /// A line read that did not fit the previous request.
    carried: Option<Vec<u8>>,
}

impl<R: BufRead> Batches<R> {
    /// Requests of at most `lines` lines (at least 1) and `bytes` bytes from `reader`.
    pub fn new(reader: R, lines: usize, bytes: usize) -> Self {
        Batches { reader, lines: lines.max(1), bytes, carried: None }
    }

    /// The next non-blank line, without its end.
    fn line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            let mut line = Vec::new();
            if self.reader.read_until(b'\n', &mut line)? == 0 {
                return Ok(None);
            }
            if line.last() == Some(&b'\n') {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Ok(Some(line));
            }
        }
    }
}

impl<R: BufRead> Iterator for Batches<R> {
    type Item = io::Result<Vec<Vec<u8>>>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut batch: Vec<Vec<u8>> = Vec::new();
        let mut size = 0;
        if let Some(line) = self.carried.take() {
            size += line.len() + FRAMING;
            batch.push(line);
        }
        while batch.len() < self.lines {
            let line = match self.line() {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) => return Some(Err(e)),
            };
            if !batch.is_empty() && size + line.len() + FRAMING > self.bytes {
                self.carried = Some(line);
                break;
            }
            size += line.len() + FRAMING;
            batch.push(line);
        }
        (!batch.is_empty()).then_some(Ok(batch))
    }
}

/// Reads `path` into requests on a thread of its own, at most [`READ_AHEAD`] ahead.
fn read_ahead(path: &Path, lines: usize, bytes: usize) -> anyhow::Result<mpsc::Receiver<io::Result<Vec<Vec<u8>>>>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    std::thread::Builder::new().name("replay-reader".into()).spawn(move || {
        for batch in Batches::new(BufReader::with_capacity(1 << 20, file), lines, bytes) {
            let failed = batch.is_err();
            if tx.blocking_send(batch).is_err() || failed {
                break;
            }
        }
    })?;
    Ok(rx)
}

/// A request became visible: its events and its send -> visible latency, and what it held.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen<P> {
    /// Events in the request.
    pub events: usize,
    /// From its send to the moment its visibility was noticed.
    pub latency: Duration,
    /// What the request held while it waited.
    pub held: P,
}

/// Acknowledged requests waiting to become visible, matched with the frontier: a
/// request acknowledged with `visible_at = t` is visible once the frontier is above `t`.
/// Never earlier than its acknowledgement.
#[derive(Debug)]
pub struct Visibility<P> {
    /// (visible_at, sequence number) -> (sent, acknowledged, events, held).
    unseen: BTreeMap<(u64, u64), (Instant, Instant, usize, P)>,
    /// The largest frontier seen.
    frontier: u64,
}

impl<P> Default for Visibility<P> {
    fn default() -> Self {
        Visibility { unseen: BTreeMap::new(), frontier: 0 }
    }
}

impl<P> Visibility<P> {
    /// Request `seq` of `events` events, sent at `sent`, was acknowledged at `at` as
    /// visible from `visible_at`. Already visible if the frontier seen has passed it.
    pub fn acknowledged(&mut self, seq: u64, visible_at: u64, sent: Instant, at: Instant, events: usize, held: P) -> Option<Seen<P>> {
        if visible_at < self.frontier {
            return Some(Seen { events, latency: at.saturating_duration_since(sent), held });
        }
        self.unseen.insert((visible_at, seq), (sent, at, events, held));
        None
    }

    /// The frontier is at least `frontier` at `at`: the requests that are now visible.
    pub fn advance(&mut self, frontier: u64, at: Instant) -> Vec<Seen<P>> {
        if frontier <= self.frontier {
            return Vec::new();
        }
        self.frontier = frontier;
        let later = self.unseen.split_off(&(frontier, 0));
        let now_visible = std::mem::replace(&mut self.unseen, later);
        now_visible.into_values().map(|(sent, acked, events, held)| Seen { events, latency: at.max(acked).saturating_duration_since(sent), held }).collect()
    }

    /// The earliest `visible_at` still waited for.
    pub fn first(&self) -> Option<u64> {
        self.unseen.keys().next().map(|&(t, _)| t)
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.unseen.len()
    }
}

/// A request on its way: its events (kept to send them again if its stream fails), when
/// it was (meant to be) sent first, and the slots it holds.
struct Outstanding {
    seq: u64,
    events: Vec<Vec<u8>>,
    sent: Instant,
    /// One of `--in-flight`: given back at the acknowledgement.
    _slot: OwnedSemaphorePermit,
    /// One of [`MAX_UNSEEN`]: given back once the request is visible.
    unseen: OwnedSemaphorePermit,
}

struct Recorded {
    visibility: Visibility<OwnedSemaphorePermit>,
    ack: Histogram<u64>,
    visible: Histogram<u64>,
    ack_second: Histogram<u64>,
    visible_second: Histogram<u64>,
    visible_events: u64,
    last_ack: Option<Instant>,
    last_visible: Option<Instant>,
}

impl Recorded {
    fn new() -> Self {
        Recorded {
            visibility: Visibility::default(),
            ack: histogram(),
            visible: histogram(),
            ack_second: histogram(),
            visible_second: histogram(),
            visible_events: 0,
            last_ack: None,
            last_visible: None,
        }
    }

    fn seen(&mut self, seen: Vec<Seen<OwnedSemaphorePermit>>, at: Instant) {
        if seen.is_empty() {
            return;
        }
        for s in seen {
            record(&mut self.visible, s.latency);
            record(&mut self.visible_second, s.latency);
            self.visible_events += s.events as u64;
        }
        self.last_visible = Some(self.last_visible.map_or(at, |t| t.max(at)));
    }

    fn acknowledged(&mut self, o: Outstanding, events: usize, response: &IngestResponse, at: Instant) {
        let latency = at.saturating_duration_since(o.sent);
        record(&mut self.ack, latency);
        record(&mut self.ack_second, latency);
        self.last_ack = Some(at);
        let Outstanding { seq, sent, unseen, .. } = o;
        if let Some(seen) = self.visibility.acknowledged(seq, response.visible_at, sent, at, events, unseen) {
            self.seen(vec![seen], at);
        }
    }

    fn frontier(&mut self, frontier: u64, at: Instant) {
        let seen = self.visibility.advance(frontier, at);
        self.seen(seen, at);
    }
}

type Shared = Arc<Mutex<Recorded>>;

fn lock(recorded: &Shared) -> std::sync::MutexGuard<'_, Recorded> {
    recorded.lock().expect("no panics while recording")
}

/// Watches the cluster's frontier for the earliest `visible_at` still waited for (see the
/// module's documentation); failed calls are counted in `errors` under `QUERY_...` and
/// `LIST_VIEWS_...`.
async fn watch_frontier(mut client: TidemarkClient<Channel>, recorded: Shared, wake: Arc<Notify>, errors: Arc<Mutex<Errors>>) {
    let count = |what: &str, status: &tonic::Status| {
        let mut e = errors.lock().expect("no panics while counting");
        *e.0.entry(format!("{what}_{}", code_name(status.code()))).or_insert(0) += 1;
    };
    loop {
        let Some(time) = lock(&recorded).visibility.first() else {
            wake.notified().await;
            continue;
        };
        let query = QueryRequest { view: VISIBLE_VIEW.into(), as_of: Some(time), limit: 1, timeout_ms: WAIT_MS, ..Default::default() };
        match client.query(query).await {
            Ok(_) => lock(&recorded).frontier(time + 1, Instant::now()),
            // Below the compaction frontier: visible long ago; ListViews says how far.
            Err(status) if status.code() == tonic::Code::OutOfRange => {}
            Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
                count("QUERY", &status);
                continue;
            }
            Err(status) => {
                count("QUERY", &status);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        match client.list_views(ListViewsRequest {}).await {
            Ok(answer) => {
                if let Some(frontier) = answer.get_ref().views.iter().map(|v| v.frontier).min() {
                    lock(&recorded).frontier(frontier, Instant::now());
                }
            }
            Err(status) => {
                count("LIST_VIEWS", &status);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Resolves when the stream, if there is one, needs replacing.
async fn trouble<T: Send + 'static>(stream: &Option<Stream<T>>, timeout: Duration) -> Trouble {
    match stream {
        Some(s) => s.trouble(timeout).await,
        None => std::future::pending().await,
    }
}

/// Counts of the sending side.
#[derive(Default)]
struct Sent {
    /// Events read from the file and sent (once each).
    events: u64,
    /// Requests made of them.
    requests: u64,
    /// Requests sent again after their stream failed.
    resent: u64,
    /// Whether the whole file was read.
    read_all: bool,
}

/// Sends the file's requests; returns why it stopped early, if it did.
#[allow(clippy::too_many_arguments)]
async fn send_all(
    args: &ReplayArgs,
    mut client: TidemarkClient<Channel>,
    mut batches: mpsc::Receiver<io::Result<Vec<Vec<u8>>>>,
    counters: &Arc<Counters>,
    recorded: &Shared,
    wake: &Arc<Notify>,
    slots: &Arc<Semaphore>,
    sent: &Arc<Mutex<Sent>>,
    start: Instant,
) -> anyhow::Result<()> {
    let schedule = (args.rate > 0).then(|| Schedule::new(args.rate));
    let unseen_slots = Arc::new(Semaphore::new(MAX_UNSEEN));
    let patience = Duration::from_secs(args.drain);
    let ack_timeout = Duration::from_secs(args.ack_timeout);
    let mut stream: Option<Stream<Outstanding>> = None;
    // Set when the stream stalled (its requests are then taken back from it).
    let mut stalled = false;
    let mut retry: VecDeque<Outstanding> = VecDeque::new();
    let mut failures = 0u32;
    let mut acked_at_open = 0u64;
    let mut seq = 0u64;
    let result = loop {
        // A stream that ended or stalled: its unacknowledged requests go first, to be
        // sent again.
        if stream.as_ref().is_some_and(|s| stalled || s.has_ended()) {
            let old = stream.take().expect("checked above");
            failures = if counters.acked() > acked_at_open { 1 } else { failures + 1 };
            let mut back: VecDeque<Outstanding> = if stalled {
                stalled = false;
                *counters.errors.lock().expect("no panics while counting").0.entry("ACK_TIMEOUT".to_owned()).or_insert(0) += 1;
                eprintln!("[replay] no acknowledgement for {} s: the Ingest stream is abandoned", args.ack_timeout);
                old.abandon().await.into()
            } else {
                old.unacknowledged().into()
            };
            back.extend(retry.drain(..));
            retry = back;
        }
        if failures >= MAX_FAILURES {
            break Err(anyhow::anyhow!("the Ingest stream failed {failures} times in a row without an acknowledgement"));
        }
        // The next request: one to send again, else the file's next.
        let next = if let Some(o) = retry.pop_front() {
            lock_sent(sent).resent += 1;
            Some(o)
        } else if lock_sent(sent).read_all {
            None
        } else {
            // Slots first, while watching the stream: if it ends or stalls, its requests
            // come back.
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot.context("the slots are never closed")?,
                t = trouble(&stream, ack_timeout) => {
                    stalled = t == Trouble::Stalled;
                    continue;
                }
            };
            let unseen = tokio::select! {
                unseen = tokio::time::timeout(patience, unseen_slots.clone().acquire_owned()) => match unseen {
                    Ok(unseen) => unseen.context("the slots are never closed")?,
                    Err(_) => break Err(anyhow::anyhow!("{MAX_UNSEEN} acknowledged requests were not visible for {} s", args.drain)),
                },
                t = trouble(&stream, ack_timeout) => {
                    stalled = t == Trouble::Stalled;
                    continue;
                }
            };
            match batches.recv().await {
                Some(Ok(events)) => {
                    let first = {
                        let mut s = lock_sent(sent);
                        s.requests += 1;
                        let first = s.events;
                        s.events += events.len() as u64;
                        first
                    };
                    let sent_at = match &schedule {
                        Some(schedule) => {
                            let due = start + schedule.offset(first + events.len() as u64 - 1);
                            tokio::time::sleep_until(due.into()).await;
                            due
                        }
                        None => Instant::now(),
                    };
                    seq += 1;
                    Some(Outstanding { seq, events, sent: sent_at, _slot: slot, unseen })
                }
                Some(Err(e)) => break Err(anyhow::Error::from(e).context(format!("reading {}", args.input.display()))),
                None => {
                    lock_sent(sent).read_all = true;
                    None
                }
            }
        };
        let Some(request) = next else {
            // Everything read is sent: wait for the last acknowledgements (or trouble with
            // the stream, whose unacknowledged requests are then sent again).
            let Some(s) = &stream else { break Ok(()) };
            if s.waiting() == 0 {
                break Ok(());
            }
            let every_slot = u32::try_from(args.in_flight).unwrap_or(u32::MAX);
            tokio::select! {
                free = slots.acquire_many(every_slot) => drop(free),
                t = s.trouble(ack_timeout) => stalled = t == Trouble::Stalled,
            }
            continue;
        };
        if stream.is_none() {
            if failures > 0 {
                tokio::time::sleep(Duration::from_millis(100 << failures.min(4))).await;
            }
            acked_at_open = counters.acked();
            let on_ack = {
                let (recorded, wake) = (recorded.clone(), wake.clone());
                move |o: Outstanding, events: usize, response: IngestResponse, at: Instant| {
                    lock(&recorded).acknowledged(o, events, &response, at);
                    wake.notify_one();
                }
            };
            match Stream::open(&mut client, counters, on_ack).await {
                Ok(s) => stream = Some(s),
                Err(status) => {
                    counters.errors.lock().expect("no panics while counting").count(status.code());
                    eprintln!("[replay] cannot open an Ingest stream: {status}");
                    failures += 1;
                    retry.push_front(request);
                    continue;
                }
            }
        }
        let s = stream.as_ref().expect("opened above");
        let n = request.events.len();
        // A request whose send is cut short stays with the stream's unacknowledged ones
        // (polled first, the send has queued it with the stream before anything else).
        tokio::select! {
            biased;
            ok = s.send(request.events.clone(), request) => {
                if ok {
                    Counters::add(&counters.sent, n);
                }
            }
            t = s.trouble(ack_timeout) => stalled = t == Trouble::Stalled,
        }
    };
    if let Some(s) = stream {
        s.close(Duration::from_secs(1)).await;
    }
    result
}

fn lock_sent(sent: &Arc<Mutex<Sent>>) -> std::sync::MutexGuard<'_, Sent> {
    sent.lock().expect("no panics while counting")
}

/// Runs the replay; prints the summary (JSON on stdout).
pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch > 0, "--batch must be positive");
    anyhow::ensure!(args.in_flight > 0, "--in-flight must be positive");
    eprintln!(
        "[replay] target {} input {} batch {} lines in flight {} requests rate {}",
        args.target,
        args.input.display(),
        args.batch,
        args.in_flight,
        if args.rate == 0 { "as fast as acknowledged".to_owned() } else { format!("{} events/s", args.rate) }
    );
    let mut client = connect(&args.target).await?;
    let views = client.list_views(ListViewsRequest {}).await.context("ListViews")?.into_inner().views;
    anyhow::ensure!(views.iter().any(|v| v.name == VISIBLE_VIEW), "{} has no view {VISIBLE_VIEW} (views: {})", args.target, views.len());
    // The frontier is watched on a connection of its own, not behind large Ingest requests.
    let watcher_client = connect(&args.target).await?;
    let batches = read_ahead(&args.input, args.batch, args.max_request_bytes)?;

    let counters = Arc::new(Counters::default());
    let recorded: Shared = Arc::new(Mutex::new(Recorded::new()));
    let wake = Arc::new(Notify::new());
    let watch_errors: Arc<Mutex<Errors>> = Arc::default();
    let slots = Arc::new(Semaphore::new(args.in_flight));
    let sent: Arc<Mutex<Sent>> = Arc::default();
    let watcher = tokio::spawn(watch_frontier(watcher_client, recorded.clone(), wake.clone(), watch_errors.clone()));

    let start = Instant::now();
    let progress = {
        let (recorded, counters, sent) = (recorded.clone(), counters.clone(), sent.clone());
        progress_every_second(start, start + Duration::from_secs(365 * 86_400), move |elapsed| {
            let s = lock_sent(&sent);
            let mut r = lock(&recorded);
            let (ack, visible) = (Percentiles::of(&r.ack_second), Percentiles::of(&r.visible_second));
            r.ack_second.reset();
            r.visible_second.reset();
            eprintln!(
                "[replay] {elapsed:>3} s: sent {} acked {} visible {} events | {} requests not acknowledged, {} acknowledged not visible | last second: ack p50 {} us p99 {} us, visible p50 {} us p99 {} us",
                s.events,
                counters.acked(),
                r.visible_events,
                s.requests - r.ack.len(),
                r.visibility.len(),
                ack.p50,
                ack.p99,
                visible.p50,
                visible.p99,
            );
        })
    };

    let sending = send_all(&args, client, batches, &counters, &recorded, &wake, &slots, &sent, start).await;
    if let Err(e) = &sending {
        eprintln!("[replay] sending stopped: {e:#}");
    }
    // Until everything acknowledged is visible, at most --drain after the last ack (5 s
    // when sending failed: the summary says what became visible).
    let deadline = match &sending {
        Ok(()) => lock(&recorded).last_ack.unwrap_or_else(Instant::now) + Duration::from_secs(args.drain),
        Err(_) => Instant::now() + Duration::from_secs(5),
    };
    loop {
        let waiting = lock(&recorded).visibility.len();
        if waiting == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    watcher.abort();
    progress.abort();

    // Locks in the progress reporter's order.
    let s = lock_sent(&sent);
    let r = lock(&recorded);
    let acked = counters.acked();
    let complete = sending.is_ok() && s.read_all && acked == s.events && r.visible_events == s.events;
    let secs = |at: Option<Instant>| at.map_or(0.0, |t| t.saturating_duration_since(start).as_secs_f64());
    let (visible_secs, ack_secs) = (if complete { secs(r.last_visible) } else { start.elapsed().as_secs_f64() }, secs(r.last_ack));
    let (acked_rate, visible_rate) = (acked as f64 / ack_secs, r.visible_events as f64 / visible_secs);
    let mut errors = counters.errors();
    for (k, v) in &watch_errors.lock().expect("no panics while counting").0 {
        *errors.0.entry(k.clone()).or_insert(0) += v;
    }
    let (ack, visible) = (Percentiles::of(&r.ack), Percentiles::of(&r.visible));
    let rejected = Counters::get(&counters.rejected);
    eprintln!("[replay] acknowledgement latency (send -> ack): {ack}");
    eprintln!("[replay] ingest -> visible latency (send -> frontier past visible_at): {visible}");
    eprintln!(
        "[replay] ingest: {} events in {} requests ({} sent again), {rejected} rejected by validation; acknowledged in {ack_secs:.3} s = {acked_rate:.0} events/s; {} after {visible_secs:.3} s = {visible_rate:.0} events/s; errors: {errors}",
        s.events,
        s.requests,
        s.resent,
        if complete { "all visible".to_owned() } else { format!("INCOMPLETE: {} of {} events visible", r.visible_events, s.events) },
    );
    let mut fields = vec![
        ("test".to_owned(), Json::Str("replay".into())),
        ("input".to_owned(), Json::Str(args.input.display().to_string())),
        ("batch".to_owned(), Json::Int(args.batch as u64)),
        ("in_flight".to_owned(), Json::Int(args.in_flight as u64)),
        ("rate".to_owned(), Json::Int(args.rate)),
        ("events".to_owned(), Json::Int(s.events)),
        ("requests".to_owned(), Json::Int(s.requests)),
        ("resent_requests".to_owned(), Json::Int(s.resent)),
        ("rejected".to_owned(), Json::Int(rejected)),
        ("acked_events".to_owned(), Json::Int(acked)),
        ("visible_events".to_owned(), Json::Int(r.visible_events)),
        ("complete".to_owned(), Json::Bool(complete)),
        ("seconds".to_owned(), Json::Float(visible_secs)),
        ("visible_ms".to_owned(), Json::Int((visible_secs * 1000.0).round() as u64)),
        ("ack_ms".to_owned(), Json::Int((ack_secs * 1000.0).round() as u64)),
        ("acked_rate".to_owned(), Json::Float(acked_rate)),
        ("visible_rate".to_owned(), Json::Float(visible_rate)),
        ("errors".to_owned(), errors.json()),
        ("error_count".to_owned(), Json::Int(errors.total())),
    ];
    fields.extend(ack.fields("ack_"));
    fields.extend(visible.fields("visible_"));
    println!("{}", Json::Object(fields));
    sending?;
    anyhow::ensure!(complete, "{} of {} events became visible within {} s of the last acknowledgement", r.visible_events, s.events, args.drain);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batches(text: &str, lines: usize, bytes: usize) -> Vec<Vec<String>> {
        Batches::new(text.as_bytes(), lines, bytes)
            .map(|b| b.expect("reading from memory").into_iter().map(|l| String::from_utf8(l).expect("utf-8")).collect())
            .collect()
    }

    #[test]
    fn lines_go_in_requests_of_at_most_the_batch() {
        let text = "a\nb\nc\nd\ne\n";
        assert_eq!(batches(text, 2, usize::MAX), [vec!["a", "b"], vec!["c", "d"], vec!["e"]]);
        assert_eq!(batches(text, 5, usize::MAX), [vec!["a", "b", "c", "d", "e"]]);
        assert_eq!(batches(text, 0, usize::MAX).len(), 5, "a zero batch means one line per request");
        assert!(batches("", 3, usize::MAX).is_empty());
    }

    #[test]
    fn blank_lines_and_line_ends_are_not_events() {
        let text = "\n{\"a\":1}\r\n   \n\t\r\n{\"b\":2}\n\n{\"c\":3}";
        assert_eq!(batches(text, 10, usize::MAX), [vec![r#"{"a":1}"#, r#"{"b":2}"#, r#"{"c":3}"#]]);
        assert_eq!(batches(text, 2, usize::MAX), [vec![r#"{"a":1}"#, r#"{"b":2}"#], vec![r#"{"c":3}"#]]);
        assert!(batches("\n \n\r\n", 10, usize::MAX).is_empty(), "only blank lines: no request");
        assert_eq!(batches(" x \n", 10, usize::MAX), [vec![" x "]], "white space inside a line stays");
    }

    #[test]
    fn requests_stay_under_the_byte_limit_and_a_long_line_goes_alone() {
        // Each line costs its length plus FRAMING.
        let limit = 2 * (3 + FRAMING);
        let text = "aaa\nbbb\nccc\nlong-line-here\nddd\n";
        assert_eq!(batches(text, 10, limit), [vec!["aaa", "bbb"], vec!["ccc"], vec!["long-line-here"], vec!["ddd"]]);
        // Every line is in exactly one request, in order.
        let all: Vec<String> = batches(text, 10, limit).into_iter().flatten().collect();
        assert_eq!(all, ["aaa", "bbb", "ccc", "long-line-here", "ddd"]);
    }

    #[test]
    fn a_request_is_visible_once_the_frontier_passes_its_time_and_not_before_its_ack() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut v: Visibility<u8> = Visibility::default();
        assert_eq!(v.acknowledged(1, 100, t0, t0 + ms(2), 10, 1), None);
        assert_eq!(v.acknowledged(2, 110, t0 + ms(1), t0 + ms(3), 20, 2), None);
        assert_eq!(v.acknowledged(3, 100, t0 + ms(1), t0 + ms(4), 30, 3), None, "two requests at one time");
        assert_eq!((v.first(), v.len()), (Some(100), 3));
        assert_eq!(v.advance(100, t0 + ms(5)), [], "frontier 100: time 100 is not complete yet");
        assert_eq!(
            v.advance(101, t0 + ms(6)),
            [Seen { events: 10, latency: ms(6), held: 1 }, Seen { events: 30, latency: ms(5), held: 3 }]
        );
        assert_eq!((v.first(), v.len()), (Some(110), 1));
        assert_eq!(v.advance(50, t0 + ms(7)), [], "the frontier never goes back");
        // Acknowledged after the frontier passed its time: visible at its ack.
        assert_eq!(v.acknowledged(4, 100, t0 + ms(2), t0 + ms(8), 40, 4), Some(Seen { events: 40, latency: ms(6), held: 4 }));
        // Noticed before the ack was recorded (a race between the two tasks): the ack counts.
        let mut w: Visibility<()> = Visibility::default();
        w.acknowledged(1, 200, t0, t0 + ms(9), 1, ());
        assert_eq!(w.advance(300, t0 + ms(3)), [Seen { events: 1, latency: ms(9), held: () }]);
        assert_eq!(v.advance(u64::MAX, t0 + ms(10)), [Seen { events: 20, latency: ms(9), held: 2 }]);
        assert_eq!((v.first(), v.len()), (None, 0));
    }
}
