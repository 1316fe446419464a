//! The coordinator's view of the worker processes: one internal session per process,
//! kept up by a task that reconnects when it is lost, and the merging of their answers
//! (a frontier is the minimum over processes; a peek completes when every asked process
//! has answered; a subscription releases time `t` once every process has passed it).
//!
//! Failure rules:
//! - A request waiting on a process whose session is lost fails at once with
//!   UNAVAILABLE; a request for a process that is not connected fails at once too.
//! - Every subscription ends (UNAVAILABLE) when any process's session is lost: it spans
//!   every process. Clients resume from the last `upper` they saw.
//! - The session is re-established as soon as the process answers again. A restarted
//!   process rebuilds its views from its log; the cluster's frontier never goes back, and
//!   a read at a time the restarted process has not rebuilt yet waits for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tidemark_proto::auth::BearerToken;
use tidemark_proto::internal::v1 as wire;
use tidemark_proto::internal::v1::command::Command as Cmd;
use tidemark_proto::internal::v1::response::Response as Resp;
use tidemark_proto::limits::INTERNAL_MAX_MESSAGE_BYTES;
use tidemark_proto::v1::{CountedRow, SubscribeBatch, ViewInfo, ViewStatus};
use tidemark_proto::PROTOCOL_VERSION;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::Status;

/// Commands buffered per process.
const COMMANDS: usize = 1024;
/// Worker messages buffered per subscription before it is dropped as too slow.
pub const SUBSCRIPTION_EVENTS: usize = 1024;
/// The longest wait between two attempts to reach a lost process.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Ingest sequences are milliseconds since the epoch with this many bits below them, and
/// one more than the last: increasing across restarts of the coordinator, as long as its
/// clock does not go back and it takes fewer than 16 requests a millisecond on average.
const SEQUENCE_BITS: u32 = 4;

/// The one place where a worker's failure becomes the status a client sees.
pub fn worker_error(kind: i32, message: String) -> Status {
    match wire::ErrorKind::try_from(kind).unwrap_or(wire::ErrorKind::Unspecified) {
        wire::ErrorKind::Invalid => Status::invalid_argument(message),
        wire::ErrorKind::Compacted => Status::out_of_range(message),
        wire::ErrorKind::Unavailable => Status::unavailable(message),
        wire::ErrorKind::Exhausted => Status::resource_exhausted(message),
        wire::ErrorKind::Internal | wire::ErrorKind::Unspecified => Status::internal(message),
    }
}

/// A peek's merged answer.
pub struct PeekAnswer {
    /// Rows of every asked process.
    pub rows: Vec<CountedRow>,
    /// Whether some process cut its rows at the limit.
    pub truncated: bool,
    /// Every asked process's thread cursors, by process.
    pub cursors: HashMap<usize, Vec<wire::ThreadCursor>>,
}

struct PeekWait {
    waiting: Vec<usize>,
    answer: PeekAnswer,
    error: Option<Status>,
    done: oneshot::Sender<Result<PeekAnswer, Status>>,
}

/// What a subscription's task hears from the workers.
#[derive(Debug)]
pub enum SubscriptionEvent {
    /// One message of a process's batch.
    Batch(usize, SubscribeBatch),
    /// A process ended the subscription (with an error unless it was cancelled).
    Ended(Status),
}

struct StatusWait {
    waiting: Vec<usize>,
    merged: ClusterSizes,
    done: oneshot::Sender<ClusterSizes>,
}

/// View sizes and ingestion counts summed over the worker processes that answered.
#[derive(Clone, Debug, Default)]
pub struct ClusterSizes {
    /// Per view: rows at each process's latest complete time, and arranged updates.
    pub views: Vec<ViewStatus>,
    /// Records the processes have inserted.
    pub ingested: u64,
}

/// One worker process as the coordinator sees it.
#[derive(Clone, Debug)]
pub struct ProcessStatus {
    /// Its internal gRPC address.
    pub address: String,
    /// Whether its session is up.
    pub connected: bool,
    /// Its last frontier.
    pub frontier: u64,
}

/// A process's session, as far as the rest of the coordinator needs it.
#[derive(Default)]
struct Part {
    /// Where commands go while the session is up.
    commands: Option<mpsc::Sender<wire::Command>>,
    /// Bumped on every new session, so that a late end of an old one changes nothing.
    session: u64,
    frontier: u64,
    since: u64,
}

#[derive(Default)]
struct State {
    views: Vec<ViewInfo>,
    shape: Option<(usize, usize)>,
    parts: Vec<Part>,
    /// The cluster's frontier as published: the meet of the parts', never lowered.
    published: u64,
    peeks: HashMap<u64, PeekWait>,
    subscriptions: HashMap<u64, mpsc::Sender<SubscriptionEvent>>,
    ingests: HashMap<u64, (usize, oneshot::Sender<Result<wire::IngestAck, Status>>)>,
    statuses: HashMap<u64, StatusWait>,
    /// The last Ingest sequence given.
    sequence: u64,
}

/// The cluster of worker processes.
pub struct Cluster {
    addresses: Vec<String>,
    token: BearerToken,
    state: Mutex<State>,
    frontier: watch::Sender<u64>,
    /// Whether every process's session is up.
    whole: watch::Sender<bool>,
    next_id: AtomicU64,
    dropped: Counter,
}

/// Why a process's hello is refused.
fn check_hello(hello: &wire::HelloResponse, process: usize, processes: usize, shape: Option<(usize, usize)>) -> Result<(), String> {
    if hello.version != PROTOCOL_VERSION {
        return Err(format!("it speaks protocol version {}, the coordinator {PROTOCOL_VERSION}", hello.version));
    }
    if hello.process as usize != process || hello.processes as usize != processes {
        return Err(format!(
            "it is process {} of {}, but the coordinator lists it as process {process} of {processes} (is the worker list in process order?)",
            hello.process, hello.processes
        ));
    }
    if let Some((_, threads)) = shape {
        if hello.threads_per_process as usize != threads {
            return Err(format!("it runs {} threads, the other processes {threads}", hello.threads_per_process));
        }
    }
    if hello.threads_per_process == 0 {
        return Err("it runs no threads".to_owned());
    }
    Ok(())
}

impl Cluster {
    /// Connects to every process (retrying until `timeout`), checks each one's hello, and
    /// keeps every session up from then on. With `secret`, every call presents it (the
    /// workers' internal port checks it).
    pub async fn connect(addresses: Vec<String>, timeout: Duration, secret: Option<String>) -> anyhow::Result<Arc<Cluster>> {
        let token = BearerToken::new(secret.as_deref()).map_err(|e| anyhow::anyhow!("the internal secret: {e}"))?;
        anyhow::ensure!(!addresses.is_empty(), "no worker addresses given");
        let n = addresses.len();
        let state = State { parts: (0..n).map(|_| Part::default()).collect(), ..State::default() };
        let cluster = Arc::new(Cluster {
            addresses,
            token,
            state: Mutex::new(state),
            frontier: watch::Sender::new(0),
            whole: watch::Sender::new(false),
            next_id: AtomicU64::new(1),
            dropped: Counter::default(),
        });
        // The first session of every process, with its errors reported to the caller.
        let deadline = tokio::time::Instant::now() + timeout;
        for process in 0..n {
            let (session, responses) = loop {
                match cluster.open(process).await {
                    Ok(opened) => break opened,
                    Err(Refusal::Fatal(e)) => anyhow::bail!("worker {} refused: {e}", cluster.addresses[process]),
                    Err(Refusal::Retry(e)) if tokio::time::Instant::now() < deadline => {
                        tracing::info!("waiting for worker {}: {e}", cluster.addresses[process]);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(Refusal::Retry(e)) => anyhow::bail!("worker {} did not answer within {timeout:?}: {e}", cluster.addresses[process]),
                }
            };
            tokio::spawn(cluster.clone().keep_up(process, session, responses));
        }
        cluster.update_whole();
        Ok(cluster)
    }

    /// Opens a session to `process` and waits for its hello; on success the session is
    /// installed and its responses are returned for reading.
    async fn open(&self, process: usize) -> Result<(u64, tonic::Streaming<wire::Response>), Refusal> {
        let address = &self.addresses[process];
        let url = if address.contains("://") { address.clone() } else { format!("http://{address}") };
        let endpoint = tonic::transport::Endpoint::from_shared(url)
            .map_err(|e| Refusal::Fatal(format!("{address} is not an address: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(10))
            .tcp_nodelay(true);
        let channel = endpoint.connect().await.map_err(|e| Refusal::Retry(e.to_string()))?;
        let (tx, rx) = mpsc::channel(COMMANDS);
        tx.send(wire::Command { command: Some(Cmd::Hello(wire::Hello { version: PROTOCOL_VERSION })) }).await.map_err(|e| Refusal::Retry(e.to_string()))?;
        let mut client = wire::worker_client::WorkerClient::with_interceptor(channel, self.token.clone())
            .max_decoding_message_size(INTERNAL_MAX_MESSAGE_BYTES)
            .max_encoding_message_size(INTERNAL_MAX_MESSAGE_BYTES);
        let mut responses = client.session(ReceiverStream::new(rx)).await.map_err(|s| match s.code() {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => Refusal::Fatal(format!("{:?}: {}", s.code(), s.message())),
            _ => Refusal::Retry(format!("{:?}: {}", s.code(), s.message())),
        })?
        .into_inner();
        let hello = match tokio::time::timeout(Duration::from_secs(10), responses.next()).await {
            Ok(Some(Ok(wire::Response { response: Some(Resp::Hello(hello)) }))) => hello,
            Ok(Some(Ok(other))) => return Err(Refusal::Fatal(format!("it answered hello with {other:?}"))),
            Ok(Some(Err(s))) => return Err(Refusal::Retry(format!("{:?}: {}", s.code(), s.message()))),
            Ok(None) => return Err(Refusal::Retry("it closed the session".to_owned())),
            Err(_) => return Err(Refusal::Retry("no hello within 10 s".to_owned())),
        };
        let mut state = self.lock();
        check_hello(&hello, process, self.addresses.len(), state.shape).map_err(Refusal::Fatal)?;
        state.shape = Some((hello.processes as usize, hello.threads_per_process as usize));
        if state.views.is_empty() {
            state.views = hello.views;
        }
        let part = &mut state.parts[process];
        part.session += 1;
        part.commands = Some(tx);
        Ok((part.session, responses))
    }

    /// Reads a process's responses; when its session ends, fails what waits on it and
    /// reconnects, for as long as the coordinator runs.
    async fn keep_up(self: Arc<Self>, process: usize, mut session: u64, mut responses: tonic::Streaming<wire::Response>) {
        loop {
            self.update_whole();
            loop {
                match responses.next().await {
                    Some(Ok(wire::Response { response: Some(r) })) => self.on_response(process, r),
                    Some(Ok(_)) => {}
                    Some(Err(status)) => {
                        tracing::error!("worker process {process}: the session failed: {status}");
                        break;
                    }
                    None => {
                        tracing::error!("worker process {process} ended the session");
                        break;
                    }
                }
            }
            self.lost(process, session);
            let mut backoff = Duration::from_millis(100);
            loop {
                tokio::time::sleep(backoff).await;
                match self.open(process).await {
                    Ok((s, r)) => {
                        tracing::info!("worker process {process} is back");
                        (session, responses) = (s, r);
                        break;
                    }
                    Err(Refusal::Fatal(e) | Refusal::Retry(e)) => tracing::warn!("worker process {process} ({}): {e}", self.addresses[process]),
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// A process's session `session` ended: every request waiting on it fails
    /// (UNAVAILABLE) rather than hang, and every subscription ends.
    fn lost(&self, process: usize, session: u64) {
        let ended = {
            let mut state = self.lock();
            if state.parts[process].session != session {
                return;
            }
            state.parts[process].commands = None;
            let gone = || Status::unavailable(format!("worker process {process} went away; it is being reconnected"));
            let failed: Vec<u64> = state.peeks.iter().filter(|(_, w)| w.waiting.contains(&process)).map(|(id, _)| *id).collect();
            for id in failed {
                let wait = state.peeks.remove(&id).expect("listed above");
                let _ = wait.done.send(Err(gone()));
            }
            let failed: Vec<u64> = state.ingests.iter().filter(|(_, (p, _))| *p == process).map(|(id, _)| *id).collect();
            for id in failed {
                let (_, done) = state.ingests.remove(&id).expect("listed above");
                let status = Status::unavailable(format!(
                    "worker process {process} went away before acknowledging; the events may or may not be applied (resending is safe: events count once by event_id)"
                ));
                let _ = done.send(Err(status));
            }
            // A status request answers with the processes that did.
            let waiting: Vec<u64> = state.statuses.iter().filter(|(_, w)| w.waiting.contains(&process)).map(|(id, _)| *id).collect();
            for id in waiting {
                let wait = state.statuses.get_mut(&id).expect("listed above");
                wait.waiting.retain(|p| *p != process);
                if wait.waiting.is_empty() {
                    let wait = state.statuses.remove(&id).expect("listed above");
                    let _ = wait.done.send(wait.merged);
                }
            }
            state.subscriptions.drain().collect::<Vec<_>>()
        };
        self.update_whole();
        for (id, events) in ended {
            self.cancel(id);
            let _ = events.try_send(SubscriptionEvent::Ended(Status::unavailable(format!("worker process {process} went away; resubscribe from the last upper seen"))));
        }
    }

    fn update_whole(&self) {
        let whole = self.lock().parts.iter().all(|p| p.commands.is_some());
        self.whole.send_if_modified(|w| std::mem::replace(w, whole) != whole);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("no panics while holding the cluster lock")
    }

    fn on_response(&self, process: usize, response: Resp) {
        let mut state = self.lock();
        match response {
            Resp::Hello(_) => tracing::warn!(process, "a second hello on one session"),
            Resp::Frontier(f) => {
                let part = &mut state.parts[process];
                if f.upper < part.frontier {
                    // A restarted process rebuilds from its log, from the start.
                    tracing::info!(process, from = part.frontier, to = f.upper, "the process's frontier starts over");
                }
                part.frontier = f.upper;
                part.since = f.since;
                let meet = state.parts.iter().map(|p| p.frontier).min().unwrap_or(0);
                if meet > state.published {
                    state.published = meet;
                    self.frontier.send_replace(meet);
                }
            }
            Resp::Peek(p) => {
                let Some(wait) = state.peeks.get_mut(&p.id) else { return };
                if !wait.waiting.contains(&process) {
                    tracing::error!(process, id = p.id, "protocol violation: a second response to one peek");
                    return;
                }
                wait.waiting.retain(|w| *w != process);
                if p.error.is_empty() {
                    wait.answer.rows.extend(p.rows);
                    wait.answer.truncated |= p.truncated;
                    wait.answer.cursors.insert(process, p.cursors);
                } else {
                    wait.error = Some(worker_error(p.error_kind, p.error));
                }
                if wait.waiting.is_empty() {
                    let wait = state.peeks.remove(&p.id).expect("present above");
                    let _ = wait.done.send(match wait.error {
                        Some(e) => Err(e),
                        None => Ok(wait.answer),
                    });
                }
            }
            Resp::Batch(b) => {
                let Some(events) = state.subscriptions.get(&b.id) else { return };
                if events.try_send(SubscriptionEvent::Batch(process, b.batch.unwrap_or_default())).is_err() {
                    // Its task has fallen behind (or ended): the dataflow never waits for it.
                    let events = state.subscriptions.remove(&b.id).expect("present above");
                    drop(state);
                    self.dropped.inc();
                    self.cancel(b.id);
                    let status = Status::resource_exhausted("the subscriber did not keep up: its buffer is full; resubscribe from the last upper seen");
                    tokio::spawn(async move {
                        let _ = events.send(SubscriptionEvent::Ended(status)).await;
                    });
                }
            }
            Resp::Ended(e) => {
                if let Some(events) = state.subscriptions.remove(&e.id) {
                    drop(state);
                    self.cancel(e.id);
                    let status = if e.error.is_empty() { Status::cancelled("the subscription was cancelled") } else { worker_error(e.error_kind, e.error) };
                    tokio::spawn(async move {
                        let _ = events.send(SubscriptionEvent::Ended(status)).await;
                    });
                }
            }
            Resp::Ingest(ack) => {
                if let Some((_, done)) = state.ingests.remove(&ack.id) {
                    let result = if ack.error.is_empty() { Ok(ack) } else { Err(worker_error(ack.error_kind, ack.error)) };
                    let _ = done.send(result);
                }
            }
            Resp::Status(status) => {
                let Some(wait) = state.statuses.get_mut(&status.id) else { return };
                wait.merged.ingested += status.ingested;
                for view in status.views {
                    match wait.merged.views.iter_mut().find(|v| v.name == view.name) {
                        Some(total) => {
                            total.rows += view.rows;
                            total.arranged_updates += view.arranged_updates;
                        }
                        None => wait.merged.views.push(view),
                    }
                }
                wait.waiting.retain(|p| *p != process);
                if wait.waiting.is_empty() {
                    let wait = state.statuses.remove(&status.id).expect("present above");
                    let _ = wait.done.send(wait.merged);
                }
            }
        }
    }

    fn send(&self, process: usize, command: Cmd) -> Result<(), Status> {
        let commands = self.lock().parts[process].commands.clone();
        let commands = commands.ok_or_else(|| Status::unavailable(format!("worker process {process} is not connected; it is being reconnected")))?;
        commands
            .try_send(wire::Command { command: Some(command) })
            .map_err(|e| Status::unavailable(format!("worker process {process} cannot take commands: {e}")))
    }

    /// Ends a subscription at every process (those that are gone have ended it already).
    pub fn cancel(&self, id: u64) {
        for p in 0..self.addresses.len() {
            let _ = self.send(p, Cmd::Cancel(wire::Cancel { id }));
        }
    }

    /// Lets every process compact past a subscription's start.
    pub fn release(&self, id: u64) {
        for p in 0..self.addresses.len() {
            let _ = self.send(p, Cmd::Release(wire::Release { id }));
        }
    }

    /// Ends every subscription with `status` (on shutdown: long-lived streams would
    /// otherwise hold a graceful shutdown open).
    pub fn end_subscriptions(&self, status: Status) {
        let ended: Vec<(u64, mpsc::Sender<SubscriptionEvent>)> = self.lock().subscriptions.drain().collect();
        for (id, events) in ended {
            self.cancel(id);
            let _ = events.try_send(SubscriptionEvent::Ended(status.clone()));
        }
    }

    /// A receiver of whether every process's session is up.
    pub fn whole(&self) -> watch::Receiver<bool> {
        self.whole.subscribe()
    }

    /// Subscribers dropped so far because they did not keep up.
    pub fn dropped_subscribers(&self) -> Counter {
        self.dropped.clone()
    }

    /// Subscriptions open now.
    pub fn subscription_count(&self) -> usize {
        self.lock().subscriptions.len()
    }

    /// A fresh request id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The views (as the first process described them), with the cluster's frontier and
    /// compaction.
    pub fn views(&self) -> Vec<ViewInfo> {
        let (frontier, since) = self.frontier_and_since();
        let mut views = self.lock().views.clone();
        for v in &mut views {
            v.frontier = frontier;
            v.since = since;
        }
        views
    }

    /// (processes, threads per process).
    pub fn shape(&self) -> (usize, usize) {
        self.lock().shape.unwrap_or((self.addresses.len(), 1))
    }

    /// The cluster's frontier (never lowered), and the largest compaction frontier of the
    /// connected processes.
    pub fn frontier_and_since(&self) -> (u64, u64) {
        let state = self.lock();
        (state.published, state.parts.iter().filter(|p| p.commands.is_some()).map(|p| p.since).max().unwrap_or(0))
    }

    /// Every process's status.
    pub fn processes(&self) -> Vec<ProcessStatus> {
        let state = self.lock();
        self.addresses
            .iter()
            .zip(&state.parts)
            .map(|(a, p)| ProcessStatus { address: a.clone(), connected: p.commands.is_some(), frontier: p.frontier })
            .collect()
    }

    /// Waits until the frontier has passed `time` (every process is complete through it).
    pub async fn wait_past(&self, time: u64, timeout: Duration) -> Result<(), Status> {
        let mut rx = self.frontier.subscribe();
        let waited = tokio::time::timeout(timeout, async { rx.wait_for(|f| *f > time).await.map(|_| ()) }).await;
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Status::unavailable("the cluster is gone")),
            Err(_) => Err(Status::deadline_exceeded(format!("time {time} did not complete within {timeout:?} (frontier {})", *self.frontier.borrow()))),
        }
    }

    /// Sends each process its peek (`id` is set here) and merges the answers; fails with
    /// DEADLINE_EXCEEDED after `timeout`.
    pub async fn peek(&self, peeks: Vec<(usize, wire::Peek)>, timeout: Duration) -> Result<PeekAnswer, Status> {
        let id = self.next_id();
        let (done, answer) = oneshot::channel();
        let waiting = peeks.iter().map(|(p, _)| *p).collect();
        let empty = PeekAnswer { rows: Vec::new(), truncated: false, cursors: HashMap::new() };
        self.lock().peeks.insert(id, PeekWait { waiting, answer: empty, error: None, done });
        for (p, mut peek) in peeks {
            peek.id = id;
            if let Err(e) = self.send(p, Cmd::Peek(peek)) {
                self.lock().peeks.remove(&id);
                return Err(e);
            }
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Status::unavailable("a worker process went away during the peek")),
            Err(_) => {
                self.lock().peeks.remove(&id);
                Err(Status::deadline_exceeded(format!("the worker processes did not answer within {timeout:?}")))
            }
        }
    }

    /// Starts a subscription at every process; its workers' messages go to `events`.
    pub fn subscribe(&self, mut subscribe: wire::Subscribe, events: mpsc::Sender<SubscriptionEvent>) -> Result<u64, Status> {
        let id = self.next_id();
        subscribe.id = id;
        self.lock().subscriptions.insert(id, events);
        for p in 0..self.addresses.len() {
            if let Err(e) = self.send(p, Cmd::Subscribe(subscribe.clone())) {
                self.lock().subscriptions.remove(&id);
                self.cancel(id);
                return Err(e);
            }
        }
        Ok(id)
    }

    /// Forgets a subscription whose client is gone, and ends it at every process.
    pub fn unsubscribe(&self, id: u64) {
        if self.lock().subscriptions.remove(&id).is_some() {
            self.cancel(id);
        }
    }

    /// Sends events to process 0 (which takes every Ingest, in the order of the sequence
    /// given here); resolves with its acknowledgement.
    pub async fn ingest(&self, events: Vec<Vec<u8>>) -> Result<wire::IngestAck, Status> {
        let id = self.next_id();
        let (done, ack) = oneshot::channel();
        {
            // The sequence is taken and the command queued under one lock, so that
            // requests reach the process in sequence order.
            let mut state = self.lock();
            let sequence = (crate::now_ms() << SEQUENCE_BITS).max(state.sequence + 1);
            state.sequence = sequence;
            let commands = state.parts[0].commands.clone().ok_or_else(|| Status::unavailable("worker process 0 is not connected; it is being reconnected"))?;
            commands
                .try_send(wire::Command { command: Some(Cmd::Ingest(wire::Ingest { id, events, sequence })) })
                .map_err(|e| Status::unavailable(format!("worker process 0 cannot take commands: {e}")))?;
            state.ingests.insert(id, (0, done));
        }
        ack.await.map_err(|_| Status::unavailable("a worker process went away during ingest"))?
    }

    /// View sizes and ingestion counts from every connected process.
    pub async fn sizes(&self) -> Result<ClusterSizes, Status> {
        let id = self.next_id();
        let (done, answer) = oneshot::channel();
        let processes: Vec<usize> = {
            let state = self.lock();
            (0..state.parts.len()).filter(|p| state.parts[*p].commands.is_some()).collect()
        };
        if processes.is_empty() {
            return Err(Status::unavailable("no worker process is connected"));
        }
        self.lock().statuses.insert(id, StatusWait { waiting: processes.clone(), merged: ClusterSizes::default(), done });
        for p in processes {
            if self.send(p, Cmd::Status(wire::StatusRequest { id })).is_err() {
                let mut state = self.lock();
                if let Some(wait) = state.statuses.get_mut(&id) {
                    wait.waiting.retain(|w| *w != p);
                    if wait.waiting.is_empty() {
                        let wait = state.statuses.remove(&id).expect("present above");
                        let _ = wait.done.send(wait.merged);
                    }
                }
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), answer).await {
            Ok(Ok(sizes)) => Ok(sizes),
            Ok(Err(_)) => Err(Status::unavailable("the worker processes went away during the status request")),
            Err(_) => {
                self.lock().statuses.remove(&id);
                Err(Status::deadline_exceeded("the worker processes did not report their sizes within 10 s"))
            }
        }
    }
}

/// Why a session could not be opened.
enum Refusal {
    /// Try again later: the process is not up (yet).
    Retry(String),
    /// The process is up but is not the one expected, or refuses the coordinator.
    Fatal(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(process: u32, processes: u32, threads: u32) -> wire::HelloResponse {
        wire::HelloResponse { version: PROTOCOL_VERSION, process, processes, threads_per_process: threads, views: Vec::new() }
    }

    #[test]
    fn hellos_must_match_the_worker_list_and_each_other() {
        assert!(check_hello(&hello(1, 2, 4), 1, 2, None).is_ok());
        assert!(check_hello(&hello(1, 2, 4), 0, 2, None).unwrap_err().contains("process order"));
        assert!(check_hello(&hello(0, 3, 4), 0, 2, None).unwrap_err().contains("of 3"));
        assert!(check_hello(&hello(1, 2, 2), 1, 2, Some((2, 4))).unwrap_err().contains("threads"));
        let old = wire::HelloResponse { version: PROTOCOL_VERSION - 1, ..hello(0, 1, 1) };
        assert!(check_hello(&old, 0, 1, None).unwrap_err().contains("version"));
    }
}
