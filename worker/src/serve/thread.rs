//! The loop of one serving worker thread: advance the input with the wall clock, insert
//! ingested records, step the dataflow, then answer what has become answerable.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use differential_dataflow::input::Input;
use prometheus_client::metrics::counter::Counter;
use tidemark_dataflows::decode::{check, DecodeConfig, Format, RawRecord, Reject};
use tidemark_dataflows::generator::GeneratorConfig;
use tidemark_dataflows::rows::key_of;
use tidemark_dataflows::time::Time;
use tidemark_dataflows::views::{build, ViewArrangement, ViewConfig, ViewRow, WireRow};
use timely::dataflow::operators::{Exchange, Inspect, Probe};
use tidemark_proto::v1::value::Kind;
use tidemark_proto::limits::{CHUNK_BYTES, MAX_ACK_DETAIL_BYTES, MAX_REJECT_DETAIL_BYTES};
use tidemark_proto::v1::IngestReject;
use tidemark_proto::merge::chunks;
use tidemark_proto::v1::{SubscribeBatch, Update, Value};
use tokio::sync::mpsc::Sender;

use super::compute::{sort_rows, Goal, IngestOutcome, Mailbox, Placement, Scan, Served, ServedView, ThreadCommand, ThreadReply};
use crate::log::{Appender, Durable, Entry, Replay};
use super::filter::RowFilter;
use super::schema;
use crate::driver::{MAX_IN_FLIGHT, MAX_LAG_MS};
use crate::kafka::{DeadLetterWriter, KafkaConnect, KafkaCounters, KafkaFlags, KafkaSource};
use crate::sink::postgres::SinkFeed;
use crate::source::{now_ms, probe_frontier, GeneratorSource, InFlight, Source};

/// Bits of an Ingest event's position that hold its index in its request.
const INGEST_INDEX_BITS: u32 = 17;
const _: () = assert!(tidemark_proto::limits::MAX_INGEST_EVENTS <= 1 << INGEST_INDEX_BITS, "a request's indexes fit below its sequence");

/// The records of one Ingest request whose first event has position `first_position`.
fn ingest_records(first_position: u64, events: Vec<Vec<u8>>) -> impl Iterator<Item = RawRecord> {
    events.into_iter().enumerate().map(move |(i, bytes)| RawRecord { format: Format::Json, position: first_position + i as u64, bytes })
}

/// Most generated records inserted per loop iteration.
const GENERATED_PER_STEP: usize = 50_000;
/// Most Kafka records inserted per loop iteration.
const KAFKA_PER_STEP: usize = 50_000;

/// What leaves the cluster through its first worker thread: changes of the mirrored views
/// (to PostgreSQL) and rejected records (to the dead-letter topic). Every process builds
/// the same plan, so every thread builds the same dataflow; only the first thread of
/// process 0 has the feed and the writer's settings.
#[derive(Clone, Default)]
pub struct ExportPlan {
    /// Names of the views mirrored to PostgreSQL.
    pub mirrored: Vec<&'static str>,
    /// Whether rejects go to a dead-letter topic.
    pub dead_letter: bool,
    /// The PostgreSQL sink's feed (first thread of process 0).
    pub feed: Option<SinkFeed>,
    /// Brokers and dead-letter topic (first thread of process 0).
    pub dead_letter_topic: Option<(KafkaConnect, String)>,
}

impl ExportPlan {
    /// Whether anything is exported.
    pub fn any(&self) -> bool {
        !self.mirrored.is_empty() || self.dead_letter
    }
}

/// The first thread's end of the export: changes received, the time they are complete to.
///
/// The sink's feed gets a time's changes only once the dead-letter topic has acknowledged
/// every reject up to that time, so when the tables' frontier passes a time, the
/// dead-letter topic holds that time's rejects.
struct Exporter {
    received: Rc<RefCell<Vec<(Exported, Time, isize)>>>,
    probe: timely::dataflow::ProbeHandle<Time>,
    upper: Time,
    mirrored: HashSet<&'static str>,
    feed: Option<SinkFeed>,
    dead_letter: Option<DeadLetterWriter>,
    /// Changes for the feed, waiting for the dead-letter copies sent before them.
    held: std::collections::VecDeque<HeldBatch>,
}

/// Copies sent to the dead-letter topic before the batch, the batch's upper, and its
/// changes of the mirrored views.
type HeldBatch = (u64, Time, Vec<(ViewRow, isize)>);

/// What the first thread receives to export.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
enum Exported {
    /// A change of a mirrored view.
    View(WireRow),
    /// A reject with all its bytes, for the dead-letter topic.
    DeadLetter(Reject),
}

impl Exporter {
    /// Hands the changes at times the export's frontier has passed to the dead-letter
    /// writer and then to the sink.
    fn export(&mut self) -> anyhow::Result<()> {
        let frontier = probe_frontier(&self.probe);
        if frontier > self.upper {
            let mut ready: Vec<(Exported, Time, isize)> = Vec::new();
            {
                let mut received = self.received.borrow_mut();
                let (done, later): (Vec<_>, Vec<_>) = received.drain(..).partition(|(_, t, _)| *t < frontier);
                *received = later;
                ready.extend(done);
            }
            differential_dataflow::consolidation::consolidate_updates(&mut ready);
            let mut sent = 0;
            if let Some(writer) = &mut self.dead_letter {
                for (exported, _, diff) in &ready {
                    if let (Exported::DeadLetter(reject), true) = (exported, *diff > 0) {
                        writer.write(reject)?;
                    }
                }
                sent = writer.sent();
            }
            if self.feed.is_some() {
                let mirrored = &self.mirrored;
                let changes = ready
                    .into_iter()
                    .filter_map(|(exported, _, diff)| match exported {
                        Exported::View(WireRow(row)) if mirrored.contains(row.view()) => Some((row, diff)),
                        _ => None,
                    })
                    .collect();
                self.held.push_back((sent, frontier, changes));
            }
            self.upper = frontier;
        }
        let acknowledged = match &self.dead_letter {
            Some(writer) => writer.acknowledged()?,
            None => u64::MAX,
        };
        if let Some(feed) = &self.feed {
            while self.held.front().is_some_and(|(sent, _, _)| *sent <= acknowledged) {
                let (_, upper, changes) = self.held.pop_front().expect("a front batch");
                feed.push(changes, upper);
            }
        }
        Ok(())
    }
}

/// What a serving thread needs from its process.
pub struct ThreadContext {
    /// View settings.
    pub config: ViewConfig,
    /// How far (ms) behind the frontier reads may still go.
    pub history_ms: u64,
    /// Worker threads per process.
    pub threads: usize,
    /// Commands for this thread.
    pub commands: Mailbox,
    /// Answers to the process's server.
    pub replies: Sender<ThreadReply>,
    /// Set when the process shuts down.
    pub stop: Arc<AtomicBool>,
    /// The built-in generator's traffic (all processes together), if it runs.
    pub generator: Option<GeneratorConfig>,
    /// Records this process has inserted, counted by every thread.
    pub ingested: Counter,
    /// The Kafka source's settings, if the views read a topic.
    pub kafka: Option<KafkaFlags>,
    /// The Kafka source's counters (all threads of the process).
    pub kafka_counters: Arc<KafkaCounters>,
    /// What leaves the cluster through its first thread.
    pub export: ExportPlan,
    /// The process's ingest log, if `Ingest` is made durable.
    pub log: Option<Appender>,
    /// What the ingest log held at start, to replay before anything else.
    pub replay: Option<Arc<Replay>>,
}

/// An `Ingest` request whose events wait for the log to make them durable; the thread's
/// input stays at its time meanwhile.
struct PendingIngest {
    id: u64,
    token: u64,
    accepted: u32,
    rejects: Vec<IngestReject>,
}

/// Validates a request's events as the dataflow will at `time`: the acknowledgement's
/// rejects, with details cut to the acknowledgement's budget.
fn validate(events: &[Vec<u8>], time: Time, config: &DecodeConfig) -> (u32, Vec<IngestReject>) {
    let mut rejects = Vec::new();
    let mut budget = MAX_ACK_DETAIL_BYTES;
    for (index, bytes) in events.iter().enumerate() {
        if let Err((reason, detail)) = check(Format::Json, bytes, index as u64, time, config) {
            let detail = tidemark_dataflows::decode::truncate_at_char(&detail, MAX_REJECT_DETAIL_BYTES.min(budget)).to_owned();
            budget -= detail.len();
            rejects.push(IngestReject { index: index as u32, reason: reason.name().to_owned(), detail });
        }
    }
    ((events.len() - rejects.len()) as u32, rejects)
}

/// A peek in progress on this thread.
struct PeekRun {
    id: u64,
    view: usize,
    scan: Scan,
}

/// A subscription on this thread.
struct Subscription {
    view: usize,
    filter: RowFilter,
    as_of: Time,
    /// Compaction stays at `as_of` until released.
    hold: bool,
    phase: Phase,
}

/// Where a subscription is.
enum Phase {
    /// Waiting for the view's trace to pass `as_of`.
    Waiting,
    /// Reading the updates in `(as_of, until)` from the trace, a little per turn; changes
    /// at `until` and later are buffered meanwhile.
    Starting { scan: Scan, until: Time, buffer: Vec<Update> },
    /// Streaming: the next batch starts at `lower`.
    Live { lower: Time, buffer: Vec<Update> },
}

/// How long the reads (peeks and subscription starts) may run per turn of the loop, in
/// all: a large read is spread over many turns instead of holding the dataflow back.
const READ_SLICE: Duration = Duration::from_millis(2);
/// Steps of the dataflow per turn while reads are waiting: updates pass several
/// operators (and exchanges) on their way into the views, so one step between two slices
/// of reads would let a long read slow every update down.
const STEPS_BETWEEN_READS: usize = 4;

/// The arrangement key under which a user's (or customer's, or card's) rows live.
fn seek_user(values: &[Value]) -> Option<u64> {
    match values.first()?.kind.as_ref()? {
        Kind::String(user) => Some(key_of(user)),
        _ => None,
    }
}

/// Serves view `index` of [`schema::schemas`] from its arrangement.
fn served<K, V>(arranged: ViewArrangement<'_, K, V>, index: usize, to_row: fn(&K, &V) -> tidemark_proto::v1::Row, placement: Placement<K>) -> Box<dyn ServedView>
where
    K: differential_dataflow::ExchangeData + differential_dataflow::Hashable,
    V: differential_dataflow::ExchangeData,
{
    Box::new(Served::new(arranged, to_row, placement, schema::schemas()[index].key_columns))
}

/// Runs one serving thread until the process stops.
pub fn run(worker: &mut timely::worker::Worker, ctx: ThreadContext) -> anyhow::Result<()> {
    use schema::index;
    let local = worker.index() % ctx.threads;
    ctx.commands.register();
    let tick = ctx.config.tick_ms.max(1);
    let dataflow = worker.next_dataflow_index();
    let first = worker.index() == 0;
    let received = Rc::new(RefCell::new(Vec::new()));
    let (mut input, mut views, export_probe) = worker.dataflow::<Time, _, _>(|scope| {
        let (input, records) = scope.new_collection::<RawRecord, isize>();
        let v = build(records, &ctx.config);
        // Exported changes go to the first thread, which writes them out in time order.
        let export_probe = ctx.export.any().then(|| {
            let mirrored: HashSet<&'static str> = ctx.export.mirrored.iter().copied().collect();
            let dead_letter = ctx.export.dead_letter;
            let received = received.clone();
            let rows = v.rows().flat_map(move |row| mirrored.contains(row.view()).then_some(Exported::View(WireRow(row))));
            let letters = v.dead_letter.clone().flat_map(move |reject| dead_letter.then_some(Exported::DeadLetter(reject)));
            rows.concat(letters)
                .inner
                .exchange(|_| 0)
                .inspect_core(move |event| {
                    if let (true, Ok((_, batch))) = (first, event) {
                        received.borrow_mut().extend(batch.iter().cloned());
                    }
                })
                .probe()
                .0
        });
        // In the order of `schema::index`.
        let served: Vec<Box<dyn ServedView>> = vec![
            served(v.sessions, index::SESSIONS, |_, s| schema::session_row(s), Placement::Hashed(seek_user)),
            served(v.funnel, index::FUNNEL, schema::funnel_row, Placement::Ordered(schema::funnel_lower)),
            served(v.kpis, index::KPIS, schema::kpi_row, Placement::Ordered(schema::kpi_lower)),
            served(v.rejected_by_reason, index::REJECTED_BY_REASON, schema::rejected_row, Placement::Ordered(schema::reason_lower)),
            served(v.rejects, index::REJECTS, schema::reject_row, Placement::Ordered(schema::reason_lower)),
            served(v.clv.customer_rfm, index::CUSTOMER_RFM, schema::rfm_row, Placement::Hashed(seek_user)),
            served(v.clv.clv_model, index::CLV_MODEL, schema::clv_model_row, Placement::Ordered(|_| None)),
            served(v.clv.customer_clv, index::CUSTOMER_CLV, schema::clv_row, Placement::Hashed(seek_user)),
            served(v.fraud.features, index::FRAUD_FEATURES, schema::fraud_row, Placement::Hashed(seek_user)),
            served(v.fraud.scores, index::FRAUD_SCORES, schema::score_row, Placement::Hashed(seek_user)),
            served(v.fraud.alerts, index::FRAUD_ALERTS, schema::score_row, Placement::Hashed(seek_user)),
        ];
        (input, served, export_probe)
    });
    let mut exporter = match (first, export_probe) {
        (true, Some(probe)) => {
            let dead_letter = match &ctx.export.dead_letter_topic {
                Some((connect, topic)) => Some(DeadLetterWriter::open(connect, topic)?),
                None => None,
            };
            Some(Exporter {
                received,
                probe,
                upper: 0,
                mirrored: ctx.export.mirrored.iter().copied().collect(),
                feed: ctx.export.feed.clone(),
                dead_letter,
                held: Default::default(),
            })
        }
        _ => None,
    };
    let mut kafka = match &ctx.kafka {
        Some(flags) => Some(KafkaSource::open(flags, tick, worker.index(), worker.peers(), false, ctx.kafka_counters.clone())?),
        None => None,
    };
    let mut kafka_batch = Vec::new();
    let mut in_flight = InFlight::default();
    let mut frontier: Time = 0;
    let mut peeks: Vec<PeekRun> = Vec::new();
    let mut subscriptions: HashMap<u64, Subscription> = HashMap::new();
    let (mut since, mut reported) = (0, (0, 0));
    // Thread `i` of the cluster generates part `i` of the traffic, paced to the wall clock.
    let mut generator = ctx.generator.clone().map(|config| GeneratorSource::new(config, worker.index(), worker.peers(), tick, true, None));
    let mut generated = Vec::new();
    let reply = |r: ThreadReply| {
        // The server is gone only when the process is stopping.
        let _ = ctx.replies.blocking_send(r);
    };
    let (durable_tx, durable) = std::sync::mpsc::channel::<Durable>();
    let mut pending: VecDeque<PendingIngest> = VecDeque::new();
    let mut next_token = 0u64;

    // First the log: every request this thread (or, in a process of another shape, a
    // thread of the same index) took before, at its time.
    if let Some(replay) = &ctx.replay {
        let started = Instant::now();
        let mut replayed = 0usize;
        replay.entries(local, ctx.threads, |entry| {
            if entry.time > *input.time() {
                input.advance_to(entry.time);
            }
            let n = entry.events.len();
            ingest_records(entry.first_position, entry.events).for_each(|r| input.insert(r));
            ctx.ingested.inc_by(n as u64);
            in_flight.push(*input.time(), n);
            replayed += n;
            let upper = || views.iter().map(|v| v.upper()).min().unwrap_or(Time::MAX);
            let open = *input.time();
            if in_flight.waiting(upper(), open) > MAX_IN_FLIGHT {
                input.flush();
                while in_flight.waiting(upper(), open) > MAX_IN_FLIGHT {
                    worker.step();
                }
            }
        })?;
        input.flush();
        if replayed > 0 {
            tracing::info!(thread = local, events = replayed, seconds = started.elapsed().as_secs_f64(), "replayed the ingest log");
        }
    }

    while !ctx.stop.load(Ordering::Relaxed) {
        let now = now_ms() / tick * tick;
        let mut inserted = 0;
        // Requests the log has made durable go in at their time, in order.
        while let Ok(Durable { token, entry, result }) = durable.try_recv() {
            let waiting = pending.pop_front().expect("the log reports only what was appended");
            assert_eq!(waiting.token, token, "the log reports appends in order");
            match result {
                Ok(()) => {
                    debug_assert_eq!(entry.time, *input.time(), "the input waits at a pending request's time");
                    let n = entry.events.len();
                    ingest_records(entry.first_position, entry.events).for_each(|r| input.insert(r));
                    ctx.ingested.inc_by(n as u64);
                    input.flush();
                    inserted += n;
                    let outcome = IngestOutcome { time: entry.time, accepted: waiting.accepted, rejects: waiting.rejects };
                    reply(ThreadReply::Ingest { id: waiting.id, result: Ok(outcome) });
                }
                Err(error) => reply(ThreadReply::Ingest { id: waiting.id, result: Err(error) }),
            }
        }
        match &mut kafka {
            // Without Kafka, time is the wall clock on the tick (held while requests wait
            // for the log).
            None if now > *input.time() && pending.is_empty() => {
                input.advance_to(now);
                input.flush();
            }
            None => {}
            // With Kafka, time follows the partitions' clocks; reading pauses while the
            // views are too far behind, and while requests wait for the log (their time
            // is the input's now).
            Some(_) if !pending.is_empty() => {}
            Some(source) => {
                let behind = |time: Time| time.saturating_sub(frontier) > MAX_LAG_MS;
                while inserted < KAFKA_PER_STEP && in_flight.waiting(frontier, *input.time()) < MAX_IN_FLIGHT && !behind(*input.time()) {
                    kafka_batch.clear();
                    let Some(time) = source.next_batch(&mut kafka_batch, KAFKA_PER_STEP - inserted)? else { break };
                    if time > *input.time() {
                        input.advance_to(time);
                    }
                    let n = kafka_batch.len();
                    if n == 0 {
                        break;
                    }
                    ctx.ingested.inc_by(n as u64);
                    for record in kafka_batch.drain(..) {
                        input.insert(record);
                    }
                    in_flight.push(time, n);
                    inserted += n;
                }
                input.flush();
                source.commit(frontier);
            }
        }
        if let Some(source) = &mut generator {
            // A live generator never ends; it releases what the wall clock has reached.
            let _ = source.next_batch(&mut generated, GENERATED_PER_STEP);
            ctx.ingested.inc_by(generated.len() as u64);
            for record in generated.drain(..) {
                input.insert(record);
            }
        }
        while let Some(command) = ctx.commands.try_recv() {
            match command {
                ThreadCommand::Peek { id, view, scan } => peeks.push(PeekRun { id, view, scan }),
                ThreadCommand::Subscribe { id, view, filter, as_of } => {
                    subscriptions.insert(id, Subscription { view, filter, as_of, hold: true, phase: Phase::Waiting });
                }
                ThreadCommand::Release { id } => {
                    if let Some(s) = subscriptions.get_mut(&id) {
                        s.hold = false;
                    }
                }
                ThreadCommand::Cancel { id } => {
                    subscriptions.remove(&id);
                }
                ThreadCommand::Status { id } => {
                    let sizes = views.iter_mut().map(|v| (v.count(), v.arranged_updates() as i64)).collect();
                    reply(ThreadReply::Status { id, views: sizes });
                }
                ThreadCommand::Ingest { id, events, sequence } => {
                    let time = *input.time();
                    let (accepted, rejects) = validate(&events, time, &ctx.config.decode);
                    let first_position = sequence << INGEST_INDEX_BITS;
                    match &ctx.log {
                        Some(log) => {
                            let token = next_token;
                            next_token += 1;
                            let entry = Entry { thread: local as u32, time, first_position, events };
                            match log.append(entry, token, durable_tx.clone(), Some(std::thread::current())) {
                                Ok(()) => pending.push_back(PendingIngest { id, token, accepted, rejects }),
                                Err(e) => reply(ThreadReply::Ingest { id, result: Err(format!("{e}; retry")) }),
                            }
                        }
                        None => {
                            ctx.ingested.inc_by(events.len() as u64);
                            ingest_records(first_position, events).for_each(|r| input.insert(r));
                            input.flush();
                            reply(ThreadReply::Ingest { id, result: Ok(IngestOutcome { time, accepted, rejects }) });
                        }
                    }
                }
            }
        }
        let busy = inserted > 0 || !peeks.is_empty() || !pending.is_empty() || subscriptions.values().any(|s| matches!(s.phase, Phase::Starting { .. }));
        let reading = !peeks.is_empty() || subscriptions.values().any(|s| matches!(s.phase, Phase::Starting { .. }));
        if busy {
            for _ in 0..if reading { STEPS_BETWEEN_READS } else { 1 } {
                worker.step();
            }
        } else {
            // Park until the next tick at most; a command wakes the thread earlier.
            worker.step_or_park(Some(Duration::from_millis((now + tick).saturating_sub(now_ms()).max(1))));
        }
        if let Some(exporter) = &mut exporter {
            exporter.export()?;
        }

        // Reads share a slice of time per turn: a lookup by key (one arrangement key)
        // runs whole; the other reads take turns in order, starting with a different one
        // each turn, each with its share of the slice, so that a long scan neither holds
        // the views back nor keeps lookups waiting.
        let started = Instant::now();
        let deadline = started + READ_SLICE;
        let scans = peeks.iter().filter(|p| p.scan.seek.is_empty()).count();
        let share = (READ_SLICE / scans.max(1) as u32).max(Duration::from_micros(500));
        if scans > 1 {
            peeks.rotate_left(1);
        }
        peeks.retain_mut(|p| {
            if p.scan.as_of < since {
                reply(ThreadReply::Peek { id: p.id, thread: local, result: Err(format!("as_of {} is below the compaction frontier {since}", p.scan.as_of)) });
                return false;
            }
            let view = &mut views[p.view];
            if view.upper() <= p.scan.as_of {
                return true;
            }
            let now = Instant::now();
            if !p.scan.seek.is_empty() {
                view.scan(&mut p.scan, now + READ_SLICE);
            } else if now < deadline {
                view.scan(&mut p.scan, (now + share).min(deadline));
            }
            if let Some(error) = p.scan.error.take() {
                reply(ThreadReply::Peek { id: p.id, thread: local, result: Err(error) });
                return false;
            }
            if !p.scan.full() {
                return true;
            }
            let mut rows = std::mem::take(&mut p.scan.rows);
            if let Goal::Limit { limit } = p.scan.goal {
                sort_rows(&mut rows, schema::schemas()[p.view].key_columns);
                rows.truncate(limit);
            }
            reply(ThreadReply::Peek { id: p.id, thread: local, result: Ok((rows, p.scan.cursor())) });
            false
        });

        // Subscriptions: new changes first, then start the ones whose time has come.
        let mut changes: HashMap<usize, Vec<Update>> = HashMap::new();
        let uppers: Vec<Time> = views.iter().map(|v| v.upper()).collect();
        for (v, view) in views.iter_mut().enumerate() {
            let mut out = Vec::new();
            view.drain(&mut out);
            changes.insert(v, out);
        }
        let mut failed = Vec::new();
        for (id, s) in subscriptions.iter_mut() {
            let batch = |lower: Time, upper: Time, updates: Vec<Update>, more: bool| ThreadReply::Batch { id: *id, thread: local, batch: SubscribeBatch { lower, upper, updates, more } };
            let keep = |u: &&Update, from: Time| u.time >= from && s.filter.keeps(u.row.as_ref().expect("rows are set"));
            match &mut s.phase {
                Phase::Live { lower, buffer } => {
                    buffer.extend(changes[&s.view].iter().filter(|u| keep(u, *lower)).cloned());
                    let upper = uppers[s.view];
                    if upper > *lower {
                        let (ready, later): (Vec<Update>, Vec<Update>) = buffer.drain(..).partition(|u| u.time < upper);
                        *buffer = later;
                        for part in chunks(SubscribeBatch { lower: *lower, upper, updates: ready, more: false }, CHUNK_BYTES) {
                            reply(ThreadReply::Batch { id: *id, thread: local, batch: part });
                        }
                        *lower = upper;
                    }
                }
                Phase::Starting { scan, until, buffer } => {
                    buffer.extend(changes[&s.view].iter().filter(|u| keep(u, *until)).cloned());
                    if Instant::now() < deadline {
                        views[s.view].scan(scan, deadline);
                    }
                    if let Some(error) = scan.error.take() {
                        failed.push((*id, error));
                    } else if scan.done {
                        reply(batch(s.as_of + 1, *until, std::mem::take(&mut scan.updates), false));
                        s.phase = Phase::Live { lower: *until, buffer: std::mem::take(buffer) };
                    } else if scan.full() {
                        scan.bytes = 0;
                        reply(batch(s.as_of + 1, *until, std::mem::take(&mut scan.updates), true));
                    }
                }
                Phase::Waiting if s.as_of < since => failed.push((*id, format!("as_of {} is below the compaction frontier {since}", s.as_of))),
                Phase::Waiting => {
                    let until = views[s.view].trace_upper();
                    if until <= s.as_of {
                        continue;
                    }
                    // The first batch holds no updates: the contents at `as_of` are read
                    // with peeks. Then the updates the trace already holds after `as_of`.
                    reply(batch(s.as_of, s.as_of + 1, Vec::new(), false));
                    s.phase = if until > s.as_of + 1 {
                        let goal = Goal::Changes { until, chunk: CHUNK_BYTES };
                        Phase::Starting { scan: Scan::new(s.as_of, s.filter.clone(), Vec::new(), goal, None), until, buffer: Vec::new() }
                    } else {
                        Phase::Live { lower: until, buffer: Vec::new() }
                    };
                }
            }
        }
        for (id, error) in failed {
            subscriptions.remove(&id);
            reply(ThreadReply::Failed { id, error });
        }
        for (v, view) in views.iter_mut().enumerate() {
            view.set_tapping(subscriptions.values().any(|s| s.view == v));
        }

        // Frontier and compaction: keep `history_ms` readable, and whatever is waited for.
        let upper = uppers.iter().copied().min().unwrap_or(Time::MAX);
        frontier = upper;
        let held = peeks
            .iter()
            .map(|p| p.scan.as_of)
            .chain(subscriptions.values().filter(|s| s.hold || !matches!(s.phase, Phase::Live { .. })).map(|s| s.as_of))
            .min();
        let target = upper.saturating_sub(ctx.history_ms).min(held.unwrap_or(Time::MAX));
        since = since.max(target);
        for view in views.iter_mut() {
            view.compact(since);
        }
        if (upper, since) != reported {
            reported = (upper, since);
            reply(ThreadReply::Frontier { thread: local, upper, since });
        }
    }
    // Closing the input would let the dataflow run on to completion: every future expiry
    // released and processed, minutes of work after a long run. Nothing reads the views
    // any more, so the dataflow is dropped instead.
    drop(input);
    worker.drop_dataflow(dataflow);
    if let Some(writer) = exporter.and_then(|e| e.dead_letter) {
        writer.flush(Duration::from_secs(10))?;
    }
    Ok(())
}
