//! The process half of serving: the internal gRPC service the coordinator talks to. It
//! fans each command out to the worker threads that hold the data and merges their
//! answers, so the coordinator sees one answer per process.
//!
//! Flow control: commands reach threads through bounded channels (a full one answers
//! "busy"); thread replies and the responses to the coordinator go through bounded
//! channels too, so a coordinator that stops reading slows this process down instead of
//! growing its memory. The coordinator reads continuously and drops slow clients itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tidemark_proto::internal::v1 as wire;
use tidemark_proto::internal::v1::ErrorKind;
use tidemark_proto::internal::v1::command::Command as Cmd;
use tidemark_proto::internal::v1::response::Response as Resp;
use tidemark_proto::internal::v1::ThreadCursor;
use tidemark_proto::limits::{CHUNK_BYTES, MAX_INGEST_EVENTS, MAX_RESPONSE_BYTES, MIN_THREAD_BUDGET_BYTES};
use tidemark_proto::merge::{chunks, cut_to_bytes, sort_by_key, BatchMerge, FrontierMerge};
use tidemark_proto::routing::{key_hash, owner, routing_text};
use tidemark_proto::v1::{CountedRow, ViewStatus};
use tidemark_proto::PROTOCOL_VERSION;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::compute::{Goal, Inbox, Scan, ThreadCommand, ThreadReply};
use super::filter::RowFilter;
use super::schema::Schema;

/// Responses buffered towards the coordinator.
const OUTBOUND: usize = 1024;
/// Request ids inside the process carry the session they belong to above these bits, so
/// that a late answer to a session that has ended never reaches the next one.
const SESSION_SHIFT: u32 = 40;

/// The process-wide key of request `id` of session `session`.
fn scoped(session: u64, id: u64) -> u64 {
    (session << SESSION_SHIFT) | (id & ((1 << SESSION_SHIFT) - 1))
}

/// The session and the coordinator's id of a key.
fn unscoped(key: u64) -> (u64, u64) {
    (key >> SESSION_SHIFT, key & ((1 << SESSION_SHIFT) - 1))
}

fn peek_failed(id: u64, kind: ErrorKind, error: String) -> Resp {
    Resp::Peek(wire::PeekResponse { id, error, error_kind: kind as i32, ..Default::default() })
}

fn ingest_failed(id: u64, kind: ErrorKind, error: String) -> Resp {
    Resp::Ingest(wire::IngestAck { id, error, error_kind: kind as i32, ..Default::default() })
}

/// The one response to a peek once every asked thread has answered: rows sorted by key
/// (cut at the limit, and at the response budget), and every thread's cursor.
fn finish_peek(id: u64, mut merge: PeekMerge) -> Resp {
    if let Some((kind, error)) = merge.error {
        return peek_failed(id, kind, error);
    }
    sort_by_key(&mut merge.rows, merge.key_columns);
    let mut truncated = merge.limit > 0 && merge.rows.len() > merge.limit;
    if merge.limit > 0 {
        merge.rows.truncate(merge.limit);
        truncated |= cut_to_bytes(&mut merge.rows, MAX_RESPONSE_BYTES);
    }
    let cursors = if merge.limit > 0 { Vec::new() } else { merge.cursors };
    Resp::Peek(wire::PeekResponse { id, rows: merge.rows, truncated, cursors, ..Default::default() })
}

fn ended(id: u64, kind: ErrorKind, error: String) -> Resp {
    Resp::Ended(wire::SubscriptionEnded { id, error, error_kind: kind as i32 })
}

/// The cluster's shape as this process sees it.
#[derive(Clone, Debug)]
pub struct Shape {
    /// This process's index.
    pub process: usize,
    /// Processes in the cluster.
    pub processes: usize,
    /// Worker threads per process.
    pub threads: usize,
}

struct PeekMerge {
    remaining: usize,
    rows: Vec<CountedRow>,
    /// Every thread's cursor, in thread order (paged reads).
    cursors: Vec<ThreadCursor>,
    error: Option<(ErrorKind, String)>,
    key_columns: usize,
    limit: usize,
}

struct StatusMerge {
    remaining: usize,
    views: Vec<(i64, i64)>,
}

#[derive(Default)]
struct State {
    /// The current session (0: none) and where its responses go.
    session: u64,
    out: Option<mpsc::Sender<Result<wire::Response, Status>>>,
    /// Whether the current session's hello has been answered: until then nothing else
    /// goes out on it (the coordinator reads the answer to its hello first).
    greeted: bool,
    peeks: HashMap<u64, PeekMerge>,
    subscriptions: HashMap<u64, BatchMerge>,
    /// Ingest requests at a thread, waiting for its acknowledgement.
    ingests: HashMap<u64, ()>,
    statuses: HashMap<u64, StatusMerge>,
    frontier: Option<FrontierMerge>,
    sinces: Vec<u64>,
    sent: (u64, u64),
}

impl ProcessMetrics {
    fn new(ingested: &Counter) -> Self {
        let mut registry = Registry::with_prefix("tidemark_worker");
        registry.register("ingested_records", "Records inserted into this process's views (Ingest and built-in sources)", ingested.clone());
        let (frontier, since, subscriptions) = (Gauge::default(), Gauge::default(), Gauge::default());
        registry.register("frontier_ms", "Every earlier time is complete in this process (ms since the epoch)", frontier.clone());
        registry.register("since_ms", "Earlier times are compacted in this process (ms since the epoch)", since.clone());
        registry.register("subscriptions", "Subscriptions this process serves", subscriptions.clone());
        ProcessMetrics { registry, frontier, since, subscriptions }
    }
}

/// The internal service of one worker process.
#[derive(Clone)]
pub struct WorkerService {
    shape: Shape,
    schemas: Arc<Vec<Schema>>,
    threads: Arc<Vec<Inbox>>,
    state: Arc<Mutex<State>>,
    ingested: Counter,
    metrics: Arc<ProcessMetrics>,
}

/// What a worker process shows Prometheus.
struct ProcessMetrics {
    registry: Registry,
    frontier: Gauge,
    since: Gauge,
    subscriptions: Gauge,
}

impl WorkerService {
    /// A service over the given thread channels; `replies` is the receiving end of the
    /// threads' reply channel, drained by a task this starts.
    pub fn new(
        shape: Shape,
        schemas: Vec<Schema>,
        threads: Vec<Inbox>,
        ingested: Counter,
        mut replies: mpsc::Receiver<ThreadReply>,
    ) -> Self {
        let state = State { frontier: Some(FrontierMerge::new(shape.threads)), sinces: vec![0; shape.threads], ..State::default() };
        let service = WorkerService {
            shape,
            schemas: Arc::new(schemas),
            threads: Arc::new(threads),
            state: Arc::new(Mutex::new(state)),
            metrics: Arc::new(ProcessMetrics::new(&ingested)),
            ingested,
        };
        let router = service.clone();
        tokio::spawn(async move {
            while let Some(reply) = replies.recv().await {
                let responses = router.on_reply(reply);
                router.send(responses).await;
            }
        });
        service
    }

    /// Ends the coordinator's session (on shutdown: an open stream would hold a graceful
    /// shutdown open forever).
    pub fn end_session(&self) {
        let (session, out) = {
            let mut state = self.lock();
            (state.session, state.out.take())
        };
        if let Some(out) = out {
            let _ = out.try_send(Err(Status::unavailable("the worker process is shutting down")));
        }
        self.end(session);
    }

    /// This process's metrics in the OpenMetrics text format.
    pub fn render_metrics(&self) -> String {
        let state = self.lock();
        self.metrics.frontier.set(state.sent.0 as i64);
        self.metrics.since.set(state.sent.1 as i64);
        self.metrics.subscriptions.set(state.subscriptions.len() as i64);
        drop(state);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.metrics.registry).expect("writing to a String does not fail");
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("no panics while holding the state lock")
    }

    async fn send(&self, responses: Vec<Resp>) {
        // Before the hello is answered only frontiers can be waiting here, and the
        // answer carries the latest frontier.
        let out = {
            let state = self.lock();
            if state.greeted { state.out.clone() } else { None }
        };
        if let Some(out) = out {
            for response in responses {
                if out.send(Ok(wire::Response { response: Some(response) })).await.is_err() {
                    break;
                }
            }
        }
    }

    fn to_threads(&self, threads: &[usize], command: impl Fn() -> ThreadCommand) -> Result<(), String> {
        for &t in threads {
            self.threads[t].send(command()).map_err(|e| format!("worker thread {t} cannot take commands: {e}"))?;
        }
        Ok(())
    }

    fn all_threads(&self) -> Vec<usize> {
        (0..self.shape.threads).collect()
    }

    /// Merges a thread's reply; returns what to tell the coordinator.
    fn on_reply(&self, reply: ThreadReply) -> Vec<Resp> {
        let mut state = self.lock();
        let current = state.session;
        let of_this_session = |key: u64| {
            let (session, id) = unscoped(key);
            (session == current).then_some(id)
        };
        match reply {
            ThreadReply::Peek { id: key, thread, result } => {
                let Some(id) = of_this_session(key) else { return Vec::new() };
                let Some(merge) = state.peeks.get_mut(&key) else { return Vec::new() };
                match result {
                    Ok((rows, cursor)) => {
                        merge.rows.extend(rows);
                        if let Some(slot) = merge.cursors.get_mut(thread) {
                            *slot = cursor;
                        }
                    }
                    Err(e) => merge.error = Some((ErrorKind::Compacted, e)),
                }
                merge.remaining -= 1;
                if merge.remaining > 0 {
                    return Vec::new();
                }
                let merge = state.peeks.remove(&key).expect("present above");
                vec![finish_peek(id, merge)]
            }
            ThreadReply::Batch { id: key, thread, batch } => {
                let Some(id) = of_this_session(key) else { return Vec::new() };
                let Some(merge) = state.subscriptions.get_mut(&key) else { return Vec::new() };
                if let Err(e) = merge.push(thread, batch) {
                    state.subscriptions.remove(&key);
                    let _ = self.to_threads(&self.all_threads(), || ThreadCommand::Cancel { id: key });
                    return vec![ended(id, ErrorKind::Internal, format!("broken subscription protocol: {e}"))];
                }
                let mut out = Vec::new();
                while let Some(batch) = merge.take() {
                    out.extend(chunks(batch, CHUNK_BYTES).into_iter().map(|part| Resp::Batch(wire::SubscriptionBatch { id, batch: Some(part) })));
                }
                out
            }
            ThreadReply::Failed { id: key, error } => {
                let Some(id) = of_this_session(key) else { return Vec::new() };
                if state.subscriptions.remove(&key).is_none() {
                    return Vec::new();
                }
                let _ = self.to_threads(&self.all_threads(), || ThreadCommand::Cancel { id: key });
                vec![ended(id, ErrorKind::Compacted, error)]
            }
            ThreadReply::Ingest { id: key, result } => {
                let Some(id) = of_this_session(key) else { return Vec::new() };
                if state.ingests.remove(&key).is_none() {
                    return Vec::new();
                }
                vec![match result {
                    Ok(o) => Resp::Ingest(wire::IngestAck { id, accepted: o.accepted, rejects: o.rejects, time: o.time, ..Default::default() }),
                    Err(error) => ingest_failed(id, ErrorKind::Unavailable, error),
                }]
            }
            ThreadReply::Status { id: key, views } => {
                let Some(id) = of_this_session(key) else { return Vec::new() };
                let Some(merge) = state.statuses.get_mut(&key) else { return Vec::new() };
                for (total, part) in merge.views.iter_mut().zip(views) {
                    total.0 += part.0;
                    total.1 += part.1;
                }
                merge.remaining -= 1;
                if merge.remaining > 0 {
                    return Vec::new();
                }
                let merge = state.statuses.remove(&key).expect("present above");
                let views = self
                    .schemas
                    .iter()
                    .zip(merge.views)
                    .map(|(schema, (rows, arranged_updates))| ViewStatus { name: schema.name.to_owned(), rows, arranged_updates })
                    .collect();
                let ingested = self.ingested.get();
                vec![Resp::Status(wire::StatusResponse { id, upper: state.sent.0, views, ingested })]
            }
            ThreadReply::Frontier { thread, upper, since } => {
                let frontier = state.frontier.as_mut().expect("set at start");
                if let Err(e) = frontier.update(thread, upper) {
                    tracing::error!("{e}");
                }
                let upper = frontier.frontier();
                state.sinces[thread] = since;
                let since = state.sinces.iter().copied().max().unwrap_or(0);
                if (upper, since) == state.sent {
                    return Vec::new();
                }
                state.sent = (upper, since);
                vec![Resp::Frontier(wire::Frontier { upper, since })]
            }
        }
    }

    /// Handles one command of session `session`; returns what to answer right away.
    fn on_command(&self, session: u64, command: Cmd) -> Vec<Resp> {
        match command {
            Cmd::Hello(hello) => self.handle_hello(hello),
            Cmd::Peek(peek) => self.handle_peek(session, peek),
            Cmd::Subscribe(s) => self.handle_subscribe(session, s),
            Cmd::Cancel(c) => self.handle_cancel(session, c),
            Cmd::Ingest(i) => self.handle_ingest(session, i),
            Cmd::Status(s) => self.handle_status(session, s),
            Cmd::Release(r) => self.handle_release(session, r),
        }
    }

    fn handle_hello(&self, hello: wire::Hello) -> Vec<Resp> {
        if hello.version != PROTOCOL_VERSION {
            tracing::warn!(coordinator = hello.version, worker = PROTOCOL_VERSION, "protocol versions differ");
        }
        let mut state = self.lock();
        let (upper, since) = state.sent;
        let answer = [
            Resp::Hello(wire::HelloResponse {
                version: PROTOCOL_VERSION,
                process: self.shape.process as u32,
                processes: self.shape.processes as u32,
                threads_per_process: self.shape.threads as u32,
                views: self.schemas.iter().map(|s| s.info(upper, since)).collect(),
            }),
            Resp::Frontier(wire::Frontier { upper, since }),
        ];
        if state.greeted {
            return answer.into();
        }
        // The first hello of the session: its answer goes onto the stream (empty so far)
        // under the lock that marks the session greeted, so that no frontier an earlier
        // reply computed can overtake it.
        state.greeted = true;
        match state.out.clone() {
            Some(out) => {
                for response in answer {
                    if out.try_send(Ok(wire::Response { response: Some(response) })).is_err() {
                        break;
                    }
                }
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    fn view(&self, name: &str) -> Result<(usize, &Schema), String> {
        self.schemas.iter().enumerate().find(|(_, s)| s.name == name).ok_or_else(|| format!("no view {name:?}"))
    }

    fn handle_peek(&self, session: u64, peek: wire::Peek) -> Vec<Resp> {
        let id = peek.id;
        let key = scoped(session, id);
        let fail = |kind, error: String| vec![peek_failed(id, kind, error)];
        let (view, schema) = match self.view(&peek.view) {
            Ok(v) => v,
            Err(e) => return fail(ErrorKind::Invalid, e),
        };
        let (lower, upper) = peek.range.as_ref().map(|r| (r.lower.as_slice(), r.upper.as_slice())).unwrap_or_default();
        let filter = match RowFilter::new(schema, &peek.key, lower, upper, &peek.filters) {
            Ok(f) => f,
            Err(e) => return fail(ErrorKind::Invalid, e),
        };
        let threads = self.shape.threads;
        let mut cursors = if peek.cursors.is_empty() { vec![ThreadCursor::default(); threads] } else { peek.cursors };
        if cursors.len() != threads {
            return fail(ErrorKind::Invalid, format!("{} cursors for a process of {threads} threads", cursors.len()));
        }
        // A key with every routing column lives on one thread of one process: the others
        // have nothing to add.
        let routing = schema.routing_columns;
        let mut seek = Vec::new();
        if let Some(text) = (routing > 0 && peek.key.len() >= routing).then(|| routing_text(&peek.key[..routing])).flatten() {
            let global = owner(key_hash(&text), self.shape.processes * threads);
            let first = self.shape.process * threads;
            if !(first..first + threads).contains(&global) {
                let owner = global / threads;
                return fail(ErrorKind::Invalid, format!("the key is owned by process {owner}, not by process {}", self.shape.process));
            }
            for (t, cursor) in cursors.iter_mut().enumerate() {
                if t != global - first {
                    cursor.done = true;
                }
            }
            seek = peek.key[..routing].to_vec();
        }
        let limit = peek.limit as usize;
        if limit > 0 {
            // A limited read is one answer: every thread reads from its start.
            cursors.iter_mut().for_each(|c| c.position.clear());
        }
        let asked: Vec<usize> = (0..threads).filter(|t| !cursors[*t].done).collect();
        let merge = PeekMerge { remaining: asked.len(), rows: Vec::new(), cursors: cursors.clone(), error: None, key_columns: schema.key_columns, limit };
        if asked.is_empty() {
            return vec![finish_peek(id, merge)];
        }
        self.lock().peeks.insert(key, merge);
        let budget = (peek.thread_budget_bytes as usize).max(MIN_THREAD_BUDGET_BYTES);
        let scan = |t: usize| {
            let goal = if limit > 0 { Goal::Limit { limit } } else { Goal::Rows { budget } };
            let position = Some(cursors[t].position.clone()).filter(|p| !p.is_empty());
            Scan::new(peek.as_of, filter.clone(), seek.clone(), goal, position)
        };
        for &t in &asked {
            if let Err(e) = self.threads[t].send(ThreadCommand::Peek { id: key, view, scan: scan(t) }) {
                self.lock().peeks.remove(&key);
                return fail(ErrorKind::Unavailable, format!("worker thread {t} cannot take commands: {e}"));
            }
        }
        Vec::new()
    }

    fn handle_subscribe(&self, session: u64, s: wire::Subscribe) -> Vec<Resp> {
        let (id, key) = (s.id, scoped(session, s.id));
        let fail = |kind, error: String| vec![ended(id, kind, error)];
        let (view, schema) = match self.view(&s.view) {
            Ok(v) => v,
            Err(e) => return fail(ErrorKind::Invalid, e),
        };
        let filter = match RowFilter::new(schema, &[], &[], &[], &s.filters) {
            Ok(f) => f,
            Err(e) => return fail(ErrorKind::Invalid, e),
        };
        self.lock().subscriptions.insert(key, BatchMerge::new(self.shape.threads, s.as_of));
        let as_of = s.as_of;
        if let Err(e) = self.to_threads(&self.all_threads(), || ThreadCommand::Subscribe { id: key, view, filter: filter.clone(), as_of }) {
            self.lock().subscriptions.remove(&key);
            let _ = self.to_threads(&self.all_threads(), || ThreadCommand::Cancel { id: key });
            return fail(ErrorKind::Unavailable, e);
        }
        Vec::new()
    }

    fn handle_release(&self, session: u64, r: wire::Release) -> Vec<Resp> {
        let key = scoped(session, r.id);
        if self.lock().subscriptions.contains_key(&key) {
            // A thread that misses it keeps compaction held until the subscription ends.
            let _ = self.to_threads(&self.all_threads(), || ThreadCommand::Release { id: key });
        }
        Vec::new()
    }

    fn handle_cancel(&self, session: u64, c: wire::Cancel) -> Vec<Resp> {
        let (id, key) = (c.id, scoped(session, c.id));
        if self.lock().subscriptions.remove(&key).is_some() {
            let _ = self.to_threads(&self.all_threads(), || ThreadCommand::Cancel { id: key });
            return vec![Resp::Ended(wire::SubscriptionEnded { id, ..Default::default() })];
        }
        Vec::new()
    }

    fn handle_ingest(&self, session: u64, ingest: wire::Ingest) -> Vec<Resp> {
        let (id, key) = (ingest.id, scoped(session, ingest.id));
        if ingest.events.len() > MAX_INGEST_EVENTS {
            return vec![ingest_failed(id, ErrorKind::Exhausted, format!("{} events in one request; at most {MAX_INGEST_EVENTS}", ingest.events.len()))];
        }
        // One thread takes every request, in the coordinator's order.
        let thread = 0;
        self.lock().ingests.insert(key, ());
        if let Err(e) = self.threads[thread].send(ThreadCommand::Ingest { id: key, events: ingest.events, sequence: ingest.sequence }) {
            self.lock().ingests.remove(&key);
            tracing::warn!("ingest {id} refused: {e}");
            return vec![ingest_failed(id, ErrorKind::Unavailable, format!("the worker process is busy ({e}); retry"))];
        }
        Vec::new()
    }

    fn handle_status(&self, session: u64, s: wire::StatusRequest) -> Vec<Resp> {
        let (id, key) = (s.id, scoped(session, s.id));
        let merge = StatusMerge { remaining: self.shape.threads, views: vec![(0, 0); self.schemas.len()] };
        self.lock().statuses.insert(key, merge);
        if let Err(e) = self.to_threads(&self.all_threads(), || ThreadCommand::Status { id: key }) {
            // Answer without sizes rather than not at all: one response per request.
            tracing::warn!("status {id}: {e}");
            let mut state = self.lock();
            state.statuses.remove(&key);
            let ingested = self.ingested.get();
            return vec![Resp::Status(wire::StatusResponse { id, upper: state.sent.0, views: Vec::new(), ingested })];
        }
        Vec::new()
    }

    /// Starts session `session` unless another one is live: one coordinator at a time,
    /// and a second one cannot take over while the first is connected.
    fn begin_session(&self, out: mpsc::Sender<Result<wire::Response, Status>>) -> Result<u64, Status> {
        let mut state = self.lock();
        if state.out.as_ref().is_some_and(|o| !o.is_closed()) {
            return Err(Status::failed_precondition("another coordinator's session is open on this worker process"));
        }
        state.session += 1;
        state.out = Some(out);
        state.greeted = false;
        Ok(state.session)
    }

    /// Ends session `session` if it is still the current one: what it asked for is
    /// forgotten and its subscriptions end at every thread.
    fn end(&self, session: u64) {
        let mut state = self.lock();
        if state.session != session {
            return;
        }
        state.out = None;
        state.peeks.clear();
        state.statuses.clear();
        state.ingests.clear();
        let old: Vec<u64> = state.subscriptions.drain().map(|(key, _)| key).collect();
        drop(state);
        for key in old {
            let _ = self.to_threads(&self.all_threads(), || ThreadCommand::Cancel { id: key });
        }
    }
}

#[tonic::async_trait]
impl wire::worker_server::Worker for WorkerService {
    type SessionStream = ReceiverStream<Result<wire::Response, Status>>;

    async fn session(&self, request: Request<Streaming<wire::Command>>) -> Result<Response<Self::SessionStream>, Status> {
        let mut commands = request.into_inner();
        let (tx, rx) = mpsc::channel(OUTBOUND);
        let session = self.begin_session(tx)?;
        let service = self.clone();
        tokio::spawn(async move {
            while let Some(command) = commands.next().await {
                match command {
                    Ok(wire::Command { command: Some(command) }) => {
                        let responses = service.on_command(session, command);
                        service.send(responses).await;
                    }
                    Ok(wire::Command { command: None }) => {}
                    Err(status) => {
                        tracing::info!("coordinator session ended: {status}");
                        break;
                    }
                }
            }
            service.end(session);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A frontier that a thread reports while a session is open but its hello not yet
    /// answered does not go out before the answer: the coordinator reads the answer to
    /// its hello first, and refuses the worker otherwise.
    #[tokio::test]
    async fn the_answer_to_hello_comes_first() {
        let (replies_tx, replies) = mpsc::channel(8);
        let shape = Shape { process: 0, processes: 1, threads: 1 };
        let service = WorkerService::new(shape, Vec::new(), Vec::new(), Counter::default(), replies);
        let (out, mut stream) = mpsc::channel(OUTBOUND);
        let session = service.begin_session(out).expect("no other session");
        replies_tx.send(ThreadReply::Frontier { thread: 0, upper: 7, since: 3 }).await.expect("the router runs");
        // The router has taken the frontier once the state shows it; give its send time to
        // land on the stream, if it would.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while service.lock().sent != (7, 3) {
            assert!(std::time::Instant::now() < deadline, "the router did not take the frontier");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let responses = service.on_command(session, Cmd::Hello(wire::Hello { version: PROTOCOL_VERSION, ..Default::default() }));
        service.send(responses).await;
        let first = stream.recv().await.expect("an answer").expect("not an error").response;
        assert!(matches!(first, Some(Resp::Hello(_))), "the first response is {first:?}");
        let second = stream.recv().await.expect("a frontier").expect("not an error").response;
        assert!(matches!(second, Some(Resp::Frontier(wire::Frontier { upper: 7, since: 3 }))), "then {second:?}");
        replies_tx.send(ThreadReply::Frontier { thread: 0, upper: 9, since: 3 }).await.expect("the router runs");
        let third = stream.recv().await.expect("a frontier").expect("not an error").response;
        assert!(matches!(third, Some(Resp::Frontier(wire::Frontier { upper: 9, .. }))), "and later ones as they come: {third:?}");
    }
}
