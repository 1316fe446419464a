//! The coordinator's view of the worker processes: one internal session per process,
//! and the merging of their answers (a frontier is the minimum over processes; a peek
//! completes when every asked process has answered; a subscription releases time `t`
//! once every process has passed it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidemark_proto::internal::v1 as wire;
use tidemark_proto::internal::v1::command::Command as Cmd;
use tidemark_proto::internal::v1::response::Response as Resp;
use prometheus_client::metrics::counter::Counter;
use tidemark_proto::auth::BearerToken;
use tidemark_proto::merge::{BatchMerge, FrontierMerge};
use tidemark_proto::v1::{CountedRow, SubscribeResponse, ViewInfo, ViewStatus};
use tidemark_proto::PROTOCOL_VERSION;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::Status;

/// Commands buffered per process.
const COMMANDS: usize = 1024;

/// The one place where a worker's failure becomes the status a client sees.
fn worker_error(kind: i32, message: String) -> Status {
    match wire::ErrorKind::try_from(kind).unwrap_or(wire::ErrorKind::Unspecified) {
        wire::ErrorKind::Invalid => Status::invalid_argument(message),
        wire::ErrorKind::Compacted => Status::out_of_range(message),
        wire::ErrorKind::Unavailable => Status::unavailable(message),
        wire::ErrorKind::Internal | wire::ErrorKind::Unspecified => Status::internal(message),
    }
}

/// A peek's merged answer.
pub struct PeekAnswer {
    /// Rows of every asked process.
    pub rows: Vec<CountedRow>,
    /// Whether some process cut its rows at the limit.
    pub truncated: bool,
}

struct PeekWait {
    remaining: usize,
    rows: Vec<CountedRow>,
    truncated: bool,
    error: Option<Status>,
    done: oneshot::Sender<Result<PeekAnswer, Status>>,
}

struct Subscription {
    merge: BatchMerge,
    client: mpsc::Sender<Result<SubscribeResponse, Status>>,
}

#[derive(Default)]
struct State {
    views: Vec<ViewInfo>,
    shape: (usize, usize),
    frontiers: Option<FrontierMerge>,
    sinces: Vec<u64>,
    connected: Vec<bool>,
    peeks: HashMap<u64, PeekWait>,
    subscriptions: HashMap<u64, Subscription>,
    ingests: HashMap<u64, oneshot::Sender<wire::IngestAck>>,
    statuses: HashMap<u64, StatusWait>,
}

struct StatusWait {
    remaining: usize,
    merged: ClusterSizes,
    done: oneshot::Sender<ClusterSizes>,
}

/// View sizes and ingestion counts summed over the worker processes.
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

/// The cluster of worker processes.
pub struct Cluster {
    addresses: Vec<String>,
    commands: Vec<mpsc::Sender<wire::Command>>,
    state: Mutex<State>,
    frontier: watch::Sender<u64>,
    /// How many processes have said hello (described their views).
    greeted: watch::Sender<usize>,
    next_id: AtomicU64,
    dropped: Counter,
    /// Whether every process's session is still up (false once one is lost: the
    /// coordinator then reports NOT_SERVING until it is restarted and reconnects).
    whole: watch::Sender<bool>,
}

impl Cluster {
    /// Connects to every process (retrying until `timeout`), says hello, and starts
    /// reading their responses.
    /// With `secret`, every call presents it (the workers' internal port checks it).
    pub async fn connect(addresses: Vec<String>, timeout: Duration, secret: Option<String>) -> anyhow::Result<Arc<Cluster>> {
        let token = BearerToken::new(secret.as_deref()).map_err(|e| anyhow::anyhow!("the internal secret: {e}"))?;
        anyhow::ensure!(!addresses.is_empty(), "no worker addresses given");
        let n = addresses.len();
        let (frontier, _) = watch::channel(0);
        let (greeted, _) = watch::channel(0);
        let mut streams = Vec::new();
        let mut commands = Vec::new();
        for address in &addresses {
            let url = if address.contains("://") { address.clone() } else { format!("http://{address}") };
            let deadline = tokio::time::Instant::now() + timeout;
            let channel = loop {
                match tonic::transport::Endpoint::from_shared(url.clone())?.connect().await {
                    Ok(channel) => break channel,
                    Err(e) if tokio::time::Instant::now() < deadline => {
                        tracing::info!("waiting for worker {address}: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => anyhow::bail!("worker {address} did not answer within {timeout:?}: {e}"),
                }
            };
            let (tx, rx) = mpsc::channel(COMMANDS);
            tx.send(wire::Command { command: Some(Cmd::Hello(wire::Hello { version: PROTOCOL_VERSION })) }).await?;
            let mut client = wire::worker_client::WorkerClient::with_interceptor(channel, token.clone());
            let responses = client
                .session(ReceiverStream::new(rx))
                .await
                .map_err(|s| anyhow::anyhow!("worker {address} refused the session: {:?}: {}", s.code(), s.message()))?
                .into_inner();
            streams.push(responses);
            commands.push(tx);
        }
        let state = State { frontiers: Some(FrontierMerge::new(n)), sinces: vec![0; n], connected: vec![true; n], ..State::default() };
        let cluster = Arc::new(Cluster { addresses, commands, state: Mutex::new(state), frontier, greeted, next_id: AtomicU64::new(1), dropped: Counter::default(), whole: watch::Sender::new(true) });
        for (process, mut stream) in streams.into_iter().enumerate() {
            let cluster = cluster.clone();
            tokio::spawn(async move {
                while let Some(response) = stream.next().await {
                    match response {
                        Ok(wire::Response { response: Some(r) }) => cluster.on_response(process, r),
                        Ok(_) => {}
                        Err(status) => {
                            tracing::error!("worker process {process} failed: {status}");
                            break;
                        }
                    }
                }
                cluster.lost(process);
            });
        }
        // Serve only once every process has described its views.
        let mut greeted = cluster.greeted.subscribe();
        match tokio::time::timeout(timeout, greeted.wait_for(|g| *g == n)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => anyhow::bail!("the cluster went away before every worker process said hello"),
            Err(_) => anyhow::bail!("not every worker process said hello within {timeout:?}"),
        }
        Ok(cluster)
    }

    /// A process's session ended: its timely peers cannot go on without it, so every
    /// waiting request fails (UNAVAILABLE) rather than hang, and subscriptions end.
    fn lost(&self, process: usize) {
        tracing::error!("lost worker process {process}");
        {
            let mut state = self.lock();
            state.connected[process] = false;
            // Dropping the senders wakes every waiter with an error.
            state.peeks.clear();
            state.statuses.clear();
            state.ingests.clear();
        }
        self.whole.send_replace(false);
        self.end_subscriptions(Status::unavailable(format!("worker process {process} is gone")));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("no panics while holding the cluster lock")
    }

    fn on_response(&self, process: usize, response: Resp) {
        let mut state = self.lock();
        match response {
            Resp::Hello(hello) => {
                if hello.version != PROTOCOL_VERSION {
                    tracing::error!(process, worker = hello.version, coordinator = PROTOCOL_VERSION, "protocol versions differ");
                }
                if state.views.is_empty() {
                    state.views = hello.views;
                }
                state.shape = (hello.processes as usize, hello.threads_per_process as usize);
                self.greeted.send_modify(|g| *g += 1);
            }
            Resp::Frontier(f) => {
                let merge = state.frontiers.as_mut().expect("set at start");
                if let Err(e) = merge.update(process, f.upper) {
                    tracing::error!("protocol violation: {e}");
                }
                let upper = merge.frontier();
                state.sinces[process] = f.since;
                self.frontier.send_if_modified(|f| std::mem::replace(f, upper) != upper);
            }
            Resp::Peek(p) => {
                let Some(wait) = state.peeks.get_mut(&p.id) else { return };
                if p.error.is_empty() {
                    wait.rows.extend(p.rows);
                    wait.truncated |= p.truncated;
                } else {
                    wait.error = Some(worker_error(p.error_kind, p.error));
                }
                wait.remaining -= 1;
                if wait.remaining == 0 {
                    let wait = state.peeks.remove(&p.id).expect("present above");
                    let answer = match wait.error {
                        Some(e) => Err(e),
                        None => Ok(PeekAnswer { rows: wait.rows, truncated: wait.truncated }),
                    };
                    let _ = wait.done.send(answer);
                }
            }
            Resp::Batch(b) => {
                let id = b.id;
                let Some(sub) = state.subscriptions.get_mut(&id) else { return };
                let pushed = sub.merge.push(process, b.batch.unwrap_or_default());
                let mut ended = pushed.err().map(|e| Status::internal(format!("broken subscription protocol: {e}")));
                while ended.is_none() {
                    let Some(batch) = sub.merge.take() else { break };
                    match sub.client.try_send(Ok(SubscribeResponse { columns: Vec::new(), batch: Some(batch) })) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            self.dropped.inc();
                            ended = Some(Status::resource_exhausted("the subscriber did not keep up: its buffer is full; resubscribe from the last upper seen"));
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => ended = Some(Status::cancelled("the subscriber left")),
                    }
                }
                if let Some(status) = ended {
                    let sub = state.subscriptions.remove(&id).expect("present above");
                    drop(state);
                    self.cancel(id);
                    tokio::spawn(async move {
                        let _ = sub.client.send(Err(status)).await;
                    });
                }
            }
            Resp::Ended(e) => {
                if let Some(sub) = state.subscriptions.remove(&e.id) {
                    drop(state);
                    self.cancel(e.id);
                    if !e.error.is_empty() {
                        let status = worker_error(e.error_kind, e.error);
                        tokio::spawn(async move {
                            let _ = sub.client.send(Err(status)).await;
                        });
                    }
                }
            }
            Resp::Ingest(ack) => {
                if let Some(done) = state.ingests.remove(&ack.id) {
                    let _ = done.send(ack);
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
                wait.remaining -= 1;
                if wait.remaining == 0 {
                    let wait = state.statuses.remove(&status.id).expect("present above");
                    let _ = wait.done.send(wait.merged);
                }
            }
        }
    }

    fn send(&self, process: usize, command: Cmd) -> Result<(), Status> {
        self.commands[process]
            .try_send(wire::Command { command: Some(command) })
            .map_err(|e| Status::unavailable(format!("worker process {process} cannot take commands: {e}")))
    }

    fn cancel(&self, id: u64) {
        for p in 0..self.commands.len() {
            let _ = self.send(p, Cmd::Cancel(wire::Cancel { id }));
        }
    }

    /// Ends every subscription with `status` (on shutdown: long-lived streams would
    /// otherwise hold a graceful shutdown open).
    pub fn end_subscriptions(&self, status: Status) {
        let ended: Vec<(u64, Subscription)> = self.lock().subscriptions.drain().collect();
        for (id, sub) in ended {
            self.cancel(id);
            let status = status.clone();
            tokio::spawn(async move {
                let _ = sub.client.send(Err(status)).await;
            });
        }
    }

    /// Resolves once a worker process's session is lost (at once if one already was).
    pub async fn lost_a_process(&self) {
        let mut whole = self.whole.subscribe();
        let _ = whole.wait_for(|w| !*w).await;
    }

    /// Subscribers dropped so far because their buffer was full.
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
        self.lock().shape
    }

    /// The meet of every process's frontier, and the largest compaction frontier.
    pub fn frontier_and_since(&self) -> (u64, u64) {
        let state = self.lock();
        (state.frontiers.as_ref().map(FrontierMerge::frontier).unwrap_or(0), state.sinces.iter().copied().max().unwrap_or(0))
    }

    /// Every process's status.
    pub fn processes(&self) -> Vec<ProcessStatus> {
        let state = self.lock();
        let merge = state.frontiers.as_ref().expect("set at start");
        self.addresses
            .iter()
            .enumerate()
            .map(|(p, a)| ProcessStatus { address: a.clone(), connected: state.connected[p], frontier: merge.part(p) })
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

    /// Reads a view at `as_of` from the given processes.
    pub async fn peek(&self, processes: &[usize], mut peek: wire::Peek) -> Result<PeekAnswer, Status> {
        let id = self.next_id();
        peek.id = id;
        let (done, answer) = oneshot::channel();
        self.lock().peeks.insert(id, PeekWait { remaining: processes.len(), rows: Vec::new(), truncated: false, error: None, done });
        for &p in processes {
            if let Err(e) = self.send(p, Cmd::Peek(peek.clone())) {
                self.lock().peeks.remove(&id);
                return Err(e);
            }
        }
        match answer.await {
            Ok(answer) => answer,
            Err(_) => Err(Status::unavailable("a worker process went away during the peek")),
        }
    }

    /// Starts a subscription whose merged batches go to `client`.
    pub fn subscribe(&self, mut subscribe: wire::Subscribe, client: mpsc::Sender<Result<SubscribeResponse, Status>>) -> Result<u64, Status> {
        let id = self.next_id();
        subscribe.id = id;
        let processes = self.commands.len();
        self.lock().subscriptions.insert(id, Subscription { merge: BatchMerge::new(processes, subscribe.as_of), client });
        for p in 0..processes {
            if let Err(e) = self.send(p, Cmd::Subscribe(subscribe.clone())) {
                self.lock().subscriptions.remove(&id);
                self.cancel(id);
                return Err(e);
            }
        }
        Ok(id)
    }

    /// Sends events to a process; resolves with its acknowledgement.
    pub async fn ingest(&self, events: Vec<Vec<u8>>) -> Result<wire::IngestAck, Status> {
        let id = self.next_id();
        let process = (id as usize) % self.commands.len();
        let (done, ack) = oneshot::channel();
        self.lock().ingests.insert(id, done);
        if let Err(e) = self.send(process, Cmd::Ingest(wire::Ingest { id, events })) {
            self.lock().ingests.remove(&id);
            return Err(e);
        }
        ack.await.map_err(|_| Status::unavailable("a worker process went away during ingest"))
    }

    /// View sizes and ingestion counts from every connected process.
    pub async fn sizes(&self) -> Result<ClusterSizes, Status> {
        let id = self.next_id();
        let (done, answer) = oneshot::channel();
        let processes: Vec<usize> = {
            let state = self.lock();
            (0..self.commands.len()).filter(|&p| state.connected[p]).collect()
        };
        if processes.is_empty() {
            return Err(Status::unavailable("no worker process is connected"));
        }
        self.lock().statuses.insert(id, StatusWait { remaining: processes.len(), merged: ClusterSizes::default(), done });
        for p in processes {
            if let Err(e) = self.send(p, Cmd::Status(wire::StatusRequest { id })) {
                self.lock().statuses.remove(&id);
                return Err(e);
            }
        }
        answer.await.map_err(|_| Status::unavailable("a worker process went away during the status request"))
    }
}
