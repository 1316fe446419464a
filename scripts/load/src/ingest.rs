//! Ingestion at an offered rate over the public `Ingest` stream.
//!
//! Every tick the pacer works out how many events the schedule has made due since the
//! last tick and sends them, in requests of at most `max_batch` events, without waiting
//! for acknowledgements. Requests queue in a small bounded channel in front of the
//! stream: when the cluster does not keep up, sending waits, the schedule runs ahead,
//! and the next tick sends the backlog at once (the offered rate stays the target; the
//! acknowledged rate shows what the cluster took). A stream that fails (the coordinator
//! ends it after an error) is counted by status code and reopened at the next tick; the
//! events of its unacknowledged requests are lost and show as not acknowledged.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidemark_proto::v1::tidemark_client::TidemarkClient;
use tidemark_proto::v1::{IngestRequest, IngestResponse};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::pacing::{split, Schedule};
use crate::summary::Errors;

/// Requests queued in front of one Ingest stream.
const QUEUED_REQUESTS: usize = 8;

/// One request to send: its events, and whether the last one is a marker.
pub struct Request {
    /// JSON events.
    pub events: Vec<Vec<u8>>,
    /// Whether the last event is a marker (see [`crate::markers`]).
    pub marker: bool,
}

/// An acknowledged request.
pub struct Ack {
    /// Events in the request.
    pub events: usize,
    /// Whether its last event is a marker.
    pub marker: bool,
    /// The acknowledgement.
    pub response: IngestResponse,
    /// When it was received.
    pub at: Instant,
}

/// Counters of a paced ingestion, readable while it runs.
#[derive(Default)]
pub struct Counters {
    /// Events handed to the stream.
    pub sent: AtomicU64,
    /// Events in acknowledged requests.
    pub acked: AtomicU64,
    /// Events rejected by validation (named in acknowledgements).
    pub rejected: AtomicU64,
    /// Failed streams by status code.
    pub errors: Mutex<Errors>,
}

impl Counters {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Events acknowledged so far.
    pub fn acked(&self) -> u64 {
        Counters::get(&self.acked)
    }

    /// The failed streams so far.
    pub fn errors(&self) -> Errors {
        self.errors.lock().expect("no panics while counting").clone()
    }
}

/// How to pace.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Offered events per second.
    pub rate: u64,
    /// How often to send what has become due.
    pub tick: Duration,
    /// Most events in one request.
    pub max_batch: usize,
    /// When to stop sending.
    pub until: Instant,
}

/// One open Ingest stream. Every request sent carries a value of the caller's (`T`)
/// until its acknowledgement, which hands the value to the stream's `on_ack`; the values
/// of requests never acknowledged (the stream failed) can be taken back with
/// [`Stream::unacknowledged`], to resend them.
pub struct Stream<T> {
    requests: mpsc::Sender<IngestRequest>,
    /// (events, value) of each request sent and not yet acknowledged, in order.
    in_flight: Arc<Mutex<VecDeque<(usize, T)>>>,
    reader: tokio::task::JoinHandle<()>,
    /// Closed when the reader has stopped (its sender is dropped with the task).
    ended: watch::Receiver<()>,
    /// When the stream last made progress: opened, acknowledged a request, or was sent
    /// one while none was waiting.
    heard: Arc<Mutex<Instant>>,
}

/// Why a stream needs replacing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trouble {
    /// It ended (failed, or was closed by the coordinator).
    Ended,
    /// Requests are waiting and nothing was acknowledged for the given time.
    Stalled,
}

impl<T: Send + 'static> Stream<T> {
    /// Opens a stream. `on_ack(value, events, response, received at)` runs on the
    /// stream's reader task for every acknowledgement, in request order; it must not block.
    /// Acknowledged and rejected events and a failed stream's status are counted in
    /// `counters`.
    pub async fn open(
        client: &mut TidemarkClient<Channel>,
        counters: &Arc<Counters>,
        mut on_ack: impl FnMut(T, usize, IngestResponse, Instant) + Send + 'static,
    ) -> Result<Self, tonic::Status> {
        let (requests, rx) = mpsc::channel(QUEUED_REQUESTS);
        let mut responses = client.ingest(ReceiverStream::new(rx)).await?.into_inner();
        let in_flight: Arc<Mutex<VecDeque<(usize, T)>>> = Arc::default();
        let heard = Arc::new(Mutex::new(Instant::now()));
        let (pending, counters, last) = (in_flight.clone(), counters.clone(), heard.clone());
        let (alive, ended) = watch::channel(());
        let reader = tokio::spawn(async move {
            let _alive = alive;
            loop {
                match responses.message().await {
                    Ok(Some(response)) => {
                        let at = Instant::now();
                        let (events, value) = pending.lock().expect("no panics while queueing").pop_front().expect("one acknowledgement per request sent");
                        *last.lock().expect("no panics while timing") = at;
                        Counters::add(&counters.acked, events);
                        Counters::add(&counters.rejected, response.rejects.len());
                        on_ack(value, events, response, at);
                    }
                    Ok(None) => break,
                    Err(status) => {
                        counters.errors.lock().expect("no panics while counting").count(status.code());
                        eprintln!("[ingest] the Ingest stream failed: {status}");
                        break;
                    }
                }
            }
        });
        Ok(Stream { requests, in_flight, reader, ended, heard })
    }

    /// Sends a request of `events` carrying `value` (waiting while the stream's small
    /// queue is full). False when the stream has closed: the request then stays
    /// unacknowledged.
    pub async fn send(&self, events: Vec<Vec<u8>>, value: T) -> bool {
        {
            let mut in_flight = self.in_flight.lock().expect("no panics while queueing");
            if in_flight.is_empty() {
                *self.heard.lock().expect("no panics while timing") = Instant::now();
            }
            in_flight.push_back((events.len(), value));
        }
        self.requests.send(IngestRequest { events }).await.is_ok()
    }

    /// Whether the stream has ended (failed, or closed by the coordinator).
    pub fn has_ended(&self) -> bool {
        self.reader.is_finished()
    }

    /// Resolves once the stream has ended.
    pub async fn ended(&self) {
        let mut ended = self.ended.clone();
        while ended.changed().await.is_ok() {}
    }

    /// Resolves once requests are waiting and none was acknowledged for `timeout`.
    pub async fn stalled(&self, timeout: Duration) {
        loop {
            let waiting = !self.in_flight.lock().expect("no panics while queueing").is_empty();
            let due = *self.heard.lock().expect("no panics while timing") + timeout;
            let now = Instant::now();
            if waiting && now >= due {
                return;
            }
            // Nothing waiting: look again shortly (a send restarts the clock).
            tokio::time::sleep_until(if waiting { due } else { now + Duration::from_millis(100) }.into()).await;
        }
    }

    /// Resolves when the stream needs replacing (see [`Trouble`]).
    pub async fn trouble(&self, timeout: Duration) -> Trouble {
        tokio::select! {
            () = self.ended() => Trouble::Ended,
            () = self.stalled(timeout) => Trouble::Stalled,
        }
    }

    /// Gives up on the stream (no acknowledgement is taken from it any more); returns the
    /// values of the requests it did not acknowledge, oldest first.
    pub async fn abandon(self) -> Vec<T> {
        self.reader.abort();
        let Stream { in_flight, reader, .. } = self;
        let _ = reader.await;
        let mut in_flight = in_flight.lock().expect("no panics while queueing");
        in_flight.drain(..).map(|(_, value)| value).collect()
    }

    /// Requests sent and not acknowledged: their values, oldest first (taken out).
    pub fn unacknowledged(&self) -> Vec<T> {
        self.in_flight.lock().expect("no panics while queueing").drain(..).map(|(_, value)| value).collect()
    }

    /// Requests sent and not yet acknowledged.
    pub fn waiting(&self) -> usize {
        self.in_flight.lock().expect("no panics while queueing").len()
    }

    /// Ends the sending side and waits, at most `drain`, for the outstanding
    /// acknowledgements.
    pub async fn close(self, drain: Duration) {
        let Stream { requests, reader, .. } = self;
        drop(requests);
        let _ = tokio::time::timeout(drain, reader).await;
    }
}

/// Ingests `make(n)` requests at the pace until `pace.until`, then waits (at most
/// `drain`) for the outstanding acknowledgements. Acknowledgements also go to `acks`.
pub async fn run(
    mut client: TidemarkClient<Channel>,
    pace: Pace,
    mut make: impl FnMut(usize) -> Request,
    counters: Arc<Counters>,
    acks: Option<mpsc::UnboundedSender<Ack>>,
    drain: Duration,
) {
    let schedule = Schedule::new(pace.rate);
    let start = Instant::now();
    let mut ticks = tokio::time::interval(pace.tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut done: u64 = 0;
    let mut stream: Option<Stream<bool>> = None;
    loop {
        ticks.tick().await;
        let now = Instant::now();
        if now >= pace.until {
            break;
        }
        let due = schedule.due(now - start);
        if stream.as_ref().is_some_and(Stream::has_ended) {
            stream = None;
        }
        if stream.is_none() {
            let acks = acks.clone();
            let on_ack = move |marker, events, response, at| {
                if let Some(acks) = &acks {
                    let _ = acks.send(Ack { events, marker, response, at });
                }
            };
            match Stream::open(&mut client, &counters, on_ack).await {
                Ok(s) => stream = Some(s),
                Err(status) => {
                    counters.errors.lock().expect("no panics while counting").count(status.code());
                    eprintln!("[ingest] cannot open an Ingest stream: {status}");
                    continue;
                }
            }
        }
        let s = stream.as_ref().expect("opened above");
        for n in split(due - done, pace.max_batch) {
            let request = make(n);
            let size = request.events.len();
            if !s.send(request.events, request.marker).await {
                break;
            }
            Counters::add(&counters.sent, size);
        }
        // Due events of a failed stream are dropped, not resent: the offered rate holds.
        done = due;
    }
    if let Some(stream) = stream {
        stream.close(drain).await;
    }
}
