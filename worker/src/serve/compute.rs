//! The worker-thread half of serving: every thread holds its shard of every view's
//! arrangement, answers peeks at a time once its frontier has passed it, streams its
//! shard's changes to subscriptions, and inserts ingested records into its input.
//!
//! A thread never blocks on a subscriber: subscription changes go to the process's
//! server through the thread's reply channel, and the server (not the thread) drops a
//! subscriber that cannot keep up.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};

use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::trace::cursor::Cursor;
use differential_dataflow::trace::implementations::ValSpine;
use differential_dataflow::trace::cursor::{cursor_list, Navigable};
use differential_dataflow::trace::implementations::spine_fueled::SpineBatch;
use differential_dataflow::trace::TraceReader;
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::ProbeHandle;
use timely::progress::Antichain;
use tidemark_dataflows::time::Time;
use tidemark_dataflows::views::ViewArrangement;
use tidemark_proto::v1::{CountedRow, Row, SubscribeBatch, Update, Value};

use super::filter::RowFilter;

/// What a thread is asked to do.
#[derive(Debug)]
pub enum ThreadCommand {
    /// Read a view at `as_of`.
    Peek {
        /// Peek id.
        id: u64,
        /// View index.
        view: usize,
        /// Routing-column values of the key to seek (empty: scan every key).
        seek: Vec<Value>,
        /// Which rows to return.
        filter: RowFilter,
        /// The time to read at.
        as_of: Time,
    },
    /// Stream a view's changes from `as_of`.
    Subscribe {
        /// Subscription id.
        id: u64,
        /// View index.
        view: usize,
        /// Which rows to stream.
        filter: RowFilter,
        /// Start time.
        as_of: Time,
        /// Send the contents at `as_of` first.
        snapshot: bool,
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
    /// Insert records (JSON events) at the current input time.
    Ingest {
        /// Request id.
        id: u64,
        /// The events.
        events: Vec<Vec<u8>>,
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
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
        Ok(())
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
    /// A peek's rows from this thread, or why it failed.
    Peek {
        /// Peek id.
        id: u64,
        /// Rows with counts.
        result: Result<Vec<CountedRow>, String>,
    },
    /// A subscription batch from this thread.
    Batch {
        /// Subscription id.
        id: u64,
        /// Thread index within the process.
        thread: usize,
        /// The batch.
        batch: SubscribeBatch,
    },
    /// A subscription could not start here.
    Failed {
        /// Subscription id.
        id: u64,
        /// Why.
        error: String,
    },
    /// Records were inserted.
    Ingest {
        /// Request id.
        id: u64,
        /// Their ingestion time.
        time: Time,
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

/// One view's shard, served.
pub trait ServedView {
    /// Every time below this is complete in this shard.
    fn upper(&self) -> Time;
    /// Every time below this is in this shard's trace (it may run ahead of [`Self::upper`]).
    fn trace_upper(&mut self) -> Time;
    /// The rows at `as_of` (with counts) and, if `until` is given, every update at times in
    /// `(as_of, until)`; only under the arrangement key of `seek` if it is not empty.
    fn read(&mut self, as_of: Time, until: Option<Time>, seek: &[Value], filter: &RowFilter) -> (Vec<CountedRow>, Vec<Update>);
    /// Updates that arrived since the last call, if tapping.
    fn drain(&mut self, out: &mut Vec<Update>);
    /// Turns collecting new batches for subscriptions on or off.
    fn set_tapping(&mut self, on: bool);
    /// Allows compaction of times below `since` and merging of every batch the shard has;
    /// call it on every turn (it does nothing when neither moved).
    fn compact(&mut self, since: Time);
    /// Updates held in this shard's arrangement.
    fn arranged_updates(&mut self) -> usize;
    /// Rows (with multiplicity) at `as_of`.
    fn count(&mut self, as_of: Time) -> i64;
}

type Batch<K, V> = <ValSpine<K, V, Time, isize> as TraceReader>::Batch;

/// A view's arrangement with a probe and a tap on its batches.
pub struct Served<K: differential_dataflow::ExchangeData, V: differential_dataflow::ExchangeData> {
    trace: TraceAgent<ValSpine<K, V, Time, isize>>,
    probe: ProbeHandle<Time>,
    tap: Rc<RefCell<Vec<Batch<K, V>>>>,
    tapping: Rc<Cell<bool>>,
    to_row: fn(&K, &V) -> Row,
    seek: fn(&[Value]) -> Option<K>,
    /// The logical and physical compaction last set.
    compacted: (Time, Time),
}

impl<K, V> Served<K, V>
where
    K: differential_dataflow::ExchangeData + differential_dataflow::Hashable,
    V: differential_dataflow::ExchangeData,
{
    /// Serves `arranged` (inside the dataflow that built it): `to_row` makes API rows,
    /// `seek` turns routing-column values into the arrangement key they live under.
    pub fn new(arranged: ViewArrangement<'_, K, V>, to_row: fn(&K, &V) -> Row, seek: fn(&[Value]) -> Option<K>) -> Self {
        let tap: Rc<RefCell<Vec<Batch<K, V>>>> = Rc::default();
        let tapping = Rc::new(Cell::new(false));
        let probe = ProbeHandle::new();
        let (sink, on) = (tap.clone(), tapping.clone());
        arranged
            .stream
            .inspect(move |span| {
                if on.get() {
                    if let Some(batch) = &span.inner {
                        sink.borrow_mut().push(batch.clone());
                    }
                }
            })
            .probe_with(&probe);
        Served { trace: arranged.trace, probe, tap, tapping, to_row, seek, compacted: (0, 0) }
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

    fn read(&mut self, as_of: Time, until: Option<Time>, seek: &[Value], filter: &RowFilter) -> (Vec<CountedRow>, Vec<Update>) {
        let (mut cursor, storage) = cursor_list(self.batches());
        let key = if seek.is_empty() { None } else { (self.seek)(seek) };
        if let Some(key) = &key {
            cursor.seek_key(&storage, key);
        }
        let (mut rows, mut updates) = (Vec::new(), Vec::new());
        while let Some(k) = cursor.get_key(&storage) {
            if key.as_ref().is_some_and(|wanted| wanted != k) {
                break;
            }
            while let Some(v) = cursor.get_val(&storage) {
                let row = (self.to_row)(k, v);
                if filter.keeps(&row) {
                    let mut count = 0isize;
                    let mut later: BTreeMap<Time, isize> = BTreeMap::new();
                    cursor.map_times(&storage, |t, r| {
                        if *t <= as_of {
                            count += *r;
                        } else if until.is_some_and(|u| *t < u) {
                            *later.entry(*t).or_default() += *r;
                        }
                    });
                    for (time, diff) in later.into_iter().filter(|(_, d)| *d != 0) {
                        updates.push(Update { row: Some(row.clone()), time, diff: diff as i64 });
                    }
                    if count != 0 {
                        rows.push(CountedRow { row: Some(row), count: count as i64 });
                    }
                }
                cursor.step_val(&storage);
            }
            cursor.step_key(&storage);
        }
        (rows, updates)
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

    fn count(&mut self, as_of: Time) -> i64 {
        let (mut cursor, storage) = cursor_list(self.batches());
        let mut total = 0isize;
        while cursor.key_valid(&storage) {
            while cursor.val_valid(&storage) {
                cursor.map_times(&storage, |t, r| {
                    if *t <= as_of {
                        total += *r;
                    }
                });
                cursor.step_val(&storage);
            }
            cursor.step_key(&storage);
        }
        total as i64
    }
}
