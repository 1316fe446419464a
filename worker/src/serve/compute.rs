//! The worker-thread half of serving: every thread holds its shard of every view's
//! arrangement, answers peeks at a time once its frontier has passed it, streams its
//! shard's changes to subscriptions, and inserts ingested records into its input.
//!
//! Reads are [`Scan`]s over a shard: they run a few milliseconds per turn of the thread's
//! loop (so a large read never holds the dataflow back for long), stop once they have
//! gathered a page of rows, and say where they stopped ([`ThreadCursor`]), so the next
//! page resumes there. A thread never blocks on a subscriber: subscription changes go to
//! the process's server through the thread's reply channel in chunks of bounded size,
//! and the server (not the thread) drops a subscriber that cannot keep up.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bincode::Options;
use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::trace::cursor::Cursor;
use differential_dataflow::trace::cursor::{cursor_list, Navigable};
use differential_dataflow::trace::implementations::ValSpine;
use differential_dataflow::trace::implementations::spine_fueled::SpineBatch;
use differential_dataflow::trace::TraceReader;
use prost::Message;
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::ProbeHandle;
use timely::progress::Antichain;
use tidemark_dataflows::time::Time;
use tidemark_dataflows::views::ViewArrangement;
use tidemark_proto::internal::v1::ThreadCursor;
use tidemark_proto::v1::{CountedRow, Row, SubscribeBatch, Update, Value};

use super::filter::RowFilter;

/// What a thread is asked to do.
#[derive(Debug)]
pub enum ThreadCommand {
    /// Read a view at a time.
    Peek {
        /// Peek id.
        id: u64,
        /// View index.
        view: usize,
        /// What to read.
        scan: Scan,
    },
    /// Stream a view's changes at times after `as_of`; compaction stays at `as_of` until
    /// [`ThreadCommand::Release`].
    Subscribe {
        /// Subscription id.
        id: u64,
        /// View index.
        view: usize,
        /// Which rows to stream.
        filter: RowFilter,
        /// Start time.
        as_of: Time,
    },
    /// Let compaction pass a subscription's start time.
    Release {
        /// Subscription id.
        id: u64,
    },
    /// End a subscription.
    Cancel {
        /// Subscription id.
        id: u64,
    },
    /// Report view sizes.
    Status {
        /// Request id.
        id: u64,
    },
    /// Insert records (JSON events) at the current input time, once they are durable.
    Ingest {
        /// Request id.
        id: u64,
        /// The events.
        events: Vec<Vec<u8>>,
        /// The coordinator's arrival order of the request: event `i` has position
        /// `sequence × 2^17 + i`.
        sequence: u64,
    },
}

/// The sending side of a worker thread's commands. A worker thread parks between
/// ticks when it has nothing to do; sending wakes it, so a command waits for the
/// thread's current step at most, not for its next tick.
#[derive(Clone)]
pub struct Inbox {
    commands: SyncSender<ThreadCommand>,
    thread: Arc<OnceLock<std::thread::Thread>>,
}

/// The receiving side, held by the worker thread.
pub struct Mailbox {
    commands: Receiver<ThreadCommand>,
    thread: Arc<OnceLock<std::thread::Thread>>,
}

/// A bounded command channel to one worker thread.
pub fn inbox(capacity: usize) -> (Inbox, Mailbox) {
    let (commands, receiver) = sync_channel(capacity);
    let thread = Arc::new(OnceLock::new());
    (Inbox { commands, thread: thread.clone() }, Mailbox { commands: receiver, thread })
}

impl Inbox {
    /// Queues `command` and wakes the thread; fails if the queue is full or the thread gone.
    pub fn send(&self, command: ThreadCommand) -> Result<(), &'static str> {
        self.commands.try_send(command).map_err(|e| match e {
            TrySendError::Full(_) => "its command queue is full",
            TrySendError::Disconnected(_) => "it has stopped",
        })?;
        self.wake();
        Ok(())
    }

    /// Wakes the thread if it is parked.
    pub fn wake(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }
}

impl Mailbox {
    /// Records the calling thread as the one to wake; call it on the worker thread.
    pub fn register(&self) {
        let _ = self.thread.set(std::thread::current());
    }

    /// The next queued command, if any.
    pub fn try_recv(&self) -> Option<ThreadCommand> {
        self.commands.try_recv().ok()
    }
}

/// What a thread answers.
#[derive(Debug)]
pub enum ThreadReply {
    /// A peek's rows from this thread and where it stopped, or why it failed.
    Peek {
        /// Peek id.
        id: u64,
        /// Thread index within the process.
        thread: usize,
        /// Rows with counts (sorted by key for a limited read), and the cursor.
        result: Result<(Vec<CountedRow>, ThreadCursor), String>,
    },
    /// One message of a subscription batch from this thread.
    Batch {
        /// Subscription id.
        id: u64,
        /// Thread index within the process.
        thread: usize,
        /// The batch, or part of it (`more`).
        batch: SubscribeBatch,
    },
    /// A subscription could not start here.
    Failed {
        /// Subscription id.
        id: u64,
        /// Why.
        error: String,
    },
    /// Records were inserted, or could not be.
    Ingest {
        /// Request id.
        id: u64,
        /// Their ingestion time and validation, or why they were not taken (nothing of
        /// them applied).
        result: Result<IngestOutcome, String>,
    },
    /// This thread's shard sizes, per view: rows (with multiplicity) at the latest
    /// complete time, and updates held in the arrangement.
    Status {
        /// Request id.
        id: u64,
        /// `(rows, arranged updates)` per view, in view order.
        views: Vec<(i64, i64)>,
    },
    /// This thread's frontier (minimum over its views) and compaction.
    Frontier {
        /// Thread index within the process.
        thread: usize,
        /// Every time below is complete.
        upper: Time,
        /// Times below are compacted.
        since: Time,
    },
}

/// What became of an `Ingest` request's events.
#[derive(Debug)]
pub struct IngestOutcome {
    /// Their ingestion time.
    pub time: Time,
    /// Events that passed validation.
    pub accepted: u32,
    /// The others, with their reasons.
    pub rejects: Vec<tidemark_proto::v1::IngestReject>,
}

/// What a read gathers.
#[derive(Debug)]
pub enum Goal {
    /// The rows at `as_of`, until about `budget` bytes of them.
    Rows {
        /// Bytes of rows to gather before stopping.
        budget: usize,
    },
    /// The first `limit` rows at `as_of` in key order.
    Limit {
        /// How many.
        limit: usize,
    },
    /// Every update at times in `(as_of, until)`, in chunks of about `chunk` bytes.
    Changes {
        /// The end of the times read.
        until: Time,
        /// Bytes of updates to gather before handing them on.
        chunk: usize,
    },
}

/// A read of one view shard, run a little at a time.
#[derive(Debug)]
pub struct Scan {
    /// The time read at.
    pub as_of: Time,
    /// Which rows.
    pub filter: RowFilter,
    /// Routing-column values of a lookup (empty: not a lookup).
    pub seek: Vec<Value>,
    /// What to gather.
    pub goal: Goal,
    /// Where to resume (from the previous page's cursor; `None`: at the start).
    pub position: Option<Vec<u8>>,
    /// Set once every row has been read.
    pub done: bool,
    /// Rows gathered (`Rows`, `Limit`).
    pub rows: Vec<CountedRow>,
    /// Updates gathered (`Changes`).
    pub updates: Vec<Update>,
    /// Encoded size of what is gathered.
    pub bytes: usize,
    /// Set when the scan cannot go on (a cursor that does not decode).
    pub error: Option<String>,
}

impl Scan {
    /// A read of `goal` at `as_of`, resuming at `position`.
    pub fn new(as_of: Time, filter: RowFilter, seek: Vec<Value>, goal: Goal, position: Option<Vec<u8>>) -> Self {
        Scan { as_of, filter, seek, goal, position, done: false, rows: Vec::new(), updates: Vec::new(), bytes: 0, error: None }
    }

    /// Whether this turn's work is over: done, failed, or a page or chunk is full.
    pub fn full(&self) -> bool {
        self.done
            || self.error.is_some()
            || match self.goal {
                Goal::Rows { budget } => self.bytes >= budget,
                Goal::Changes { chunk, .. } => self.bytes >= chunk,
                Goal::Limit { .. } => false,
            }
    }

    /// The cursor to report: done, or where the next page resumes.
    pub fn cursor(&self) -> ThreadCursor {
        ThreadCursor { done: self.done, position: self.position.clone().unwrap_or_default() }
    }

    /// Keeps a row the filter selected.
    fn keep(&mut self, row: Row, count: i64, key_columns: usize) {
        let row = CountedRow { row: Some(row), count };
        self.bytes += row.encoded_len() + 4;
        self.rows.push(row);
        if let Goal::Limit { limit } = self.goal {
            if self.rows.len() >= limit.saturating_mul(2).max(64) {
                sort_rows(&mut self.rows, key_columns);
                self.rows.truncate(limit);
                self.bytes = self.rows.iter().map(|r| r.encoded_len() + 4).sum();
            }
        }
    }
}

/// Sorts rows by their first `key_columns` values.
pub fn sort_rows(rows: &mut [CountedRow], key_columns: usize) {
    tidemark_proto::merge::sort_by_key(rows, key_columns);
}

/// How many val visits a scan makes between two looks at the clock.
const CLOCK_EVERY: usize = 64;

/// The encoding of cursor positions: bounded, so that a forged one cannot make a thread
/// allocate without limit.
fn position_codec() -> impl bincode::Options {
    bincode::DefaultOptions::new().with_fixint_encoding().with_limit(1 << 20)
}

/// One view's shard, served.
pub trait ServedView {
    /// Every time below this is complete in this shard.
    fn upper(&self) -> Time;
    /// Every time below this is in this shard's trace (it may run ahead of [`Self::upper`]).
    fn trace_upper(&mut self) -> Time;
    /// Runs `scan` until it is [`Scan::full`], done, or `deadline` has passed.
    fn scan(&mut self, scan: &mut Scan, deadline: Instant);
    /// Updates that arrived since the last call, if tapping.
    fn drain(&mut self, out: &mut Vec<Update>);
    /// Turns collecting new batches for subscriptions on or off.
    fn set_tapping(&mut self, on: bool);
    /// Allows compaction of times below `since` and merging of every batch the shard has;
    /// call it on every turn (it does nothing when neither moved).
    fn compact(&mut self, since: Time);
    /// Updates held in this shard's arrangement.
    fn arranged_updates(&mut self) -> usize;
    /// Rows (with multiplicity) in this shard at its latest complete time.
    fn count(&self) -> i64;
}

type Batch<K, V> = <ValSpine<K, V, Time, isize> as TraceReader>::Batch;

/// How a view's keys are laid out in its arrangement, which decides what a read can seek.
pub enum Placement<K> {
    /// Keys are hashes of the routing columns: a lookup seeks the one arrangement key its
    /// routing values give; any other read goes through every key.
    Hashed(fn(&[Value]) -> Option<K>),
    /// The arrangement's order is the view's key order: a lookup or a range seeks the
    /// least key its lower bound allows and stops past its end.
    Ordered(fn(&[Value]) -> Option<K>),
}

/// A view's arrangement with a probe, a tap on its batches, and its row count.
pub struct Served<K: differential_dataflow::ExchangeData, V: differential_dataflow::ExchangeData> {
    trace: TraceAgent<ValSpine<K, V, Time, isize>>,
    probe: ProbeHandle<Time>,
    tap: Rc<RefCell<Vec<Batch<K, V>>>>,
    tapping: Rc<Cell<bool>>,
    rows: Rc<Cell<i64>>,
    to_row: fn(&K, &V) -> Row,
    placement: Placement<K>,
    key_columns: usize,
    /// The logical and physical compaction last set.
    compacted: (Time, Time),
}

impl<K, V> Served<K, V>
where
    K: differential_dataflow::ExchangeData + differential_dataflow::Hashable,
    V: differential_dataflow::ExchangeData,
{
    /// Serves `arranged` (inside the dataflow that built it): `to_row` makes API rows of
    /// `key_columns` key columns, `placement` says how keys are laid out.
    pub fn new(arranged: ViewArrangement<'_, K, V>, to_row: fn(&K, &V) -> Row, placement: Placement<K>, key_columns: usize) -> Self {
        let tap: Rc<RefCell<Vec<Batch<K, V>>>> = Rc::default();
        let tapping = Rc::new(Cell::new(false));
        let rows = Rc::new(Cell::new(0));
        let probe = ProbeHandle::new();
        let (sink, on, counted) = (tap.clone(), tapping.clone(), rows.clone());
        arranged
            .stream
            .inspect(move |span| {
                if let Some(batch) = &span.inner {
                    // Every update of a batch is at a time below its upper: the sum of all
                    // diffs seen is the shard's row count at the latest complete time.
                    let mut cursor = batch.cursor();
                    let mut total = 0isize;
                    while cursor.key_valid(batch) {
                        while cursor.val_valid(batch) {
                            cursor.map_times(batch, |_, r| total += *r);
                            cursor.step_val(batch);
                        }
                        cursor.step_key(batch);
                    }
                    counted.set(counted.get() + total as i64);
                    if on.get() {
                        sink.borrow_mut().push(batch.clone());
                    }
                }
            })
            .probe_with(&probe);
        Served { trace: arranged.trace, probe, tap, tapping, rows, to_row, placement, key_columns, compacted: (0, 0) }
    }
}

impl<K, V> Served<K, V>
where
    K: differential_dataflow::ExchangeData,
    V: differential_dataflow::ExchangeData,
{
    /// Every batch of the trace, through its own upper.
    fn batches(&mut self) -> Vec<Batch<K, V>> {
        let mut upper = Antichain::new();
        self.trace.read_upper(&mut upper);
        self.trace.batches_through(upper.borrow()).expect("the trace's own upper is a clean cut")
    }

    /// Where a scan starts: the key to seek and the val to resume after, and the one key
    /// a hashed lookup reads (`Err` if the position does not decode).
    fn start(&self, scan: &Scan) -> Result<(Option<K>, Option<(V, bool)>, Option<K>), String> {
        let only = match &self.placement {
            Placement::Hashed(seek) if !scan.seek.is_empty() => seek(&scan.seek),
            _ => None,
        };
        if let Some(bytes) = &scan.position {
            let (key, after, again): (K, Option<V>, bool) =
                // Its dimension values came from this process's rows: one that is not
                // in the dictionary is a made-up token, not a value to add.
                tidemark_dataflows::dictionary::known_only(|| position_codec().deserialize(bytes))
                    .map_err(|e| format!("the page token's cursor does not decode: {e}"))?;
            return Ok((Some(key), after.map(|v| (v, again)), only));
        }
        let start = match &self.placement {
            Placement::Hashed(_) => only.clone(),
            Placement::Ordered(lower) => lower(scan.filter.start_bound()),
        };
        Ok((start, None, only))
    }
}

impl<K, V> ServedView for Served<K, V>
where
    K: differential_dataflow::ExchangeData + differential_dataflow::Hashable,
    V: differential_dataflow::ExchangeData,
{
    fn upper(&self) -> Time {
        crate::source::probe_frontier(&self.probe)
    }

    fn trace_upper(&mut self) -> Time {
        let mut upper = Antichain::new();
        self.trace.read_upper(&mut upper);
        upper.first().copied().unwrap_or(Time::MAX)
    }

    fn scan(&mut self, scan: &mut Scan, deadline: Instant) {
        if scan.done || scan.error.is_some() {
            return;
        }
        let (start, mut after, only) = match self.start(scan) {
            Ok(start) => start,
            Err(e) => {
                scan.error = Some(e);
                return;
            }
        };
        let ordered = matches!(self.placement, Placement::Ordered(_));
        let (mut cursor, storage) = cursor_list(self.batches());
        if let Some(key) = &start {
            cursor.seek_key(&storage, key);
        }
        let as_of = scan.as_of;
        let mut visits = 0usize;
        // A position is (key, val, whether that val is read again): the next turn seeks
        // the key, then the val, and skips it if it was read already.
        let stop_at = |scan: &mut Scan, k: &K, v: &V, again: bool| {
            scan.position = Some(position_codec().serialize(&(k, Some(v), again)).expect("view keys and rows serialize"));
        };
        while let Some(k) = cursor.get_key(&storage) {
            if only.as_ref().is_some_and(|wanted| wanted != k) {
                break;
            }
            if let Some((v, again)) = after.take() {
                if start.as_ref() == Some(k) {
                    // Resume at the val the previous turn stopped at. (Not with `seek_val`:
                    // on a list of cursors it also moves the cursors that sit on a later
                    // key, which would then skip vals of that key.)
                    while let Some(current) = cursor.get_val(&storage) {
                        if current < &v || (!again && current == &v) {
                            cursor.step_val(&storage);
                        } else {
                            break;
                        }
                    }
                }
            }
            while let Some(v) = cursor.get_val(&storage) {
                visits += 1;
                if visits % CLOCK_EVERY == 0 && Instant::now() >= deadline {
                    // Stop before this val; the next turn reads it.
                    stop_at(scan, k, v, true);
                    return;
                }
                let row = (self.to_row)(k, v);
                if ordered && scan.filter.beyond(&row) {
                    scan.done = true;
                    scan.position = None;
                    return;
                }
                if scan.filter.keeps(&row) {
                    match scan.goal {
                        Goal::Changes { until, .. } => {
                            let mut later: BTreeMap<Time, isize> = BTreeMap::new();
                            cursor.map_times(&storage, |t, r| {
                                if *t > as_of && *t < until {
                                    *later.entry(*t).or_default() += *r;
                                }
                            });
                            for (time, diff) in later.into_iter().filter(|(_, d)| *d != 0) {
                                let update = Update { row: Some(row.clone()), time, diff: diff as i64 };
                                scan.bytes += update.encoded_len() + 4;
                                scan.updates.push(update);
                            }
                        }
                        Goal::Rows { .. } | Goal::Limit { .. } => {
                            let mut count = 0isize;
                            cursor.map_times(&storage, |t, r| {
                                if *t <= as_of {
                                    count += *r;
                                }
                            });
                            if count != 0 {
                                scan.keep(row, count as i64, self.key_columns);
                                if ordered && matches!(scan.goal, Goal::Limit { limit } if scan.rows.len() >= limit) {
                                    scan.done = true;
                                    scan.position = None;
                                    return;
                                }
                            }
                        }
                    }
                    if scan.full() {
                        stop_at(scan, k, v, false);
                        return;
                    }
                }
                cursor.step_val(&storage);
            }
            cursor.step_key(&storage);
        }
        scan.done = true;
        scan.position = None;
    }

    fn drain(&mut self, out: &mut Vec<Update>) {
        for batch in self.tap.borrow_mut().drain(..) {
            let mut cursor = batch.cursor();
            while let Some(k) = cursor.get_key(&batch) {
                while let Some(v) = cursor.get_val(&batch) {
                    let row = (self.to_row)(k, v);
                    cursor.map_times(&batch, |t, r| out.push(Update { row: Some(row.clone()), time: *t, diff: *r as i64 }));
                    cursor.step_val(&batch);
                }
                cursor.step_key(&batch);
            }
        }
    }

    fn set_tapping(&mut self, on: bool) {
        self.tapping.set(on);
        if !on {
            self.tap.borrow_mut().clear();
        }
    }

    fn compact(&mut self, since: Time) {
        use timely::progress::frontier::AntichainRef;
        // Logical compaction keeps every time from `since` on readable. Physical compaction
        // follows the trace's upper: reads never need batch boundaries inside the history,
        // and the spine only merges a batch once the physical frontier has passed it, so a
        // physical frontier held back at `since` would leave every batch of the history
        // (one per tick) unmerged, and every peek would seek in each.
        let physical = self.trace_upper();
        if (since, physical) == self.compacted {
            return;
        }
        self.compacted = (since, physical);
        self.trace.set_logical_compaction(AntichainRef::new(&[since]));
        self.trace.set_physical_compaction(AntichainRef::new(&[physical]));
    }

    fn arranged_updates(&mut self) -> usize {
        self.batches().iter().map(|b| b.len()).sum()
    }

    fn count(&self) -> i64 {
        self.rows.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::input::Input;
    use tidemark_dataflows::views::ViewArrangement;
    use tidemark_proto::value;

    fn row(k: &u64, v: &String) -> Row {
        Row { values: vec![value::int64(*k as i64), value::string(v)] }
    }

    /// Reads the whole of a served shard with the given goal in as many turns and pages as
    /// budgets and deadlines make: every row exactly once, whatever the cut.
    #[test]
    fn scans_resume_where_they_stopped() {
        timely::execute_directly(|worker| {
            let (mut input, mut served) = worker.dataflow::<Time, _, _>(|scope| {
                let (input, pairs) = scope.new_collection::<(u64, String), isize>();
                let arranged: ViewArrangement<'_, u64, String> = pairs.arrange_by_key();
                (input, Served::new(arranged, row, Placement::Hashed(|_| None), 1))
            });
            // 300 keys with 1 to 7 values, some inserted at a later time, some retracted.
            for k in 0..300u64 {
                for j in 0..(k % 7 + 1) {
                    input.insert((k * 7919 % 1000, format!("v{j:03}-{}", "x".repeat((k % 5) as usize * 40))));
                }
            }
            // Several batches, whose cursors sit on different keys during a read.
            for b in 1..5u64 {
                input.advance_to(b);
                for k in (b * 100..b * 100 + 50).step_by(7) {
                    input.insert((k, format!("w{b}")));
                }
                input.flush();
                worker.step();
            }
            input.advance_to(10);
            for k in (0..300u64).step_by(3) {
                input.remove((k * 7919 % 1000, format!("v000-{}", "x".repeat((k % 5) as usize * 40))));
            }
            input.advance_to(20);
            input.flush();
            while served.upper() < 20 {
                worker.step();
            }
            let whole = |served: &mut Served<u64, String>, as_of: Time| {
                let mut scan = Scan::new(as_of, RowFilter::default(), Vec::new(), Goal::Rows { budget: usize::MAX }, None);
                served.scan(&mut scan, Instant::now() + std::time::Duration::from_secs(60));
                assert!(scan.done);
                let mut rows: Vec<Vec<u8>> = scan.rows.iter().map(|r| r.encode_to_vec()).collect();
                rows.sort();
                rows
            };
            for as_of in [5, 15] {
                let all = whole(&mut served, as_of);
                assert!(all.len() > 500, "{}", all.len());
                for budget in [1, 100, 1000, 5000] {
                    for deadline_now in [false, true] {
                        let mut got = Vec::new();
                        let mut position = None;
                        let mut pages = 0;
                        loop {
                            pages += 1;
                            assert!(pages < 100_000, "no progress");
                            let mut scan = Scan::new(as_of, RowFilter::default(), Vec::new(), Goal::Rows { budget }, position.take());
                            // A deadline in the past stops a turn after a few visits.
                            loop {
                                let deadline = if deadline_now { Instant::now() } else { Instant::now() + std::time::Duration::from_secs(60) };
                                served.scan(&mut scan, deadline);
                                if scan.full() {
                                    break;
                                }
                            }
                            got.extend(scan.rows.iter().map(|r| r.encode_to_vec()));
                            if scan.done {
                                break;
                            }
                            position = scan.position.clone();
                        }
                        got.sort();
                        assert_eq!(got, all, "as of {as_of}, budget {budget}, deadline now {deadline_now}: {pages} pages");
                    }
                }
            }
        });
    }
}
