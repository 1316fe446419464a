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
use tokio::sync::mpsc;
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
    fn add(counter: &AtomicU64, n: usize) {
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

/// One open Ingest stream.
struct Stream {
    requests: mpsc::Sender<IngestRequest>,
    /// (events, marker) of each request sent and not yet acknowledged, in order.
    in_flight: Arc<Mutex<VecDeque<(usize, bool)>>>,
    reader: tokio::task::JoinHandle<()>,
}

async fn open(client: &mut TidemarkClient<Channel>, counters: &Arc<Counters>, acks: &Option<mpsc::UnboundedSender<Ack>>) -> Result<Stream, tonic::Status> {
    let (requests, rx) = mpsc::channel(QUEUED_REQUESTS);
    let mut responses = client.ingest(ReceiverStream::new(rx)).await?.into_inner();
    let in_flight: Arc<Mutex<VecDeque<(usize, bool)>>> = Arc::default();
    let (pending, counters, acks) = (in_flight.clone(), counters.clone(), acks.clone());
    let reader = tokio::spawn(async move {
        loop {
            match responses.message().await {
                Ok(Some(response)) => {
                    let at = Instant::now();
                    let (events, marker) = pending.lock().expect("no panics while queueing").pop_front().expect("one acknowledgement per request sent");
                    Counters::add(&counters.acked, events);
                    Counters::add(&counters.rejected, response.rejects.len());
                    if let Some(acks) = &acks {
                        let _ = acks.send(Ack { events, marker, response, at });
                    }
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
    Ok(Stream { requests, in_flight, reader })
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
    let mut stream: Option<Stream> = None;
    loop {
        ticks.tick().await;
        let now = Instant::now();
        if now >= pace.until {
            break;
        }
        let due = schedule.due(now - start);
        if stream.as_ref().is_some_and(|s| s.reader.is_finished()) {
            stream = None;
        }
        if stream.is_none() {
            match open(&mut client, &counters, &acks).await {
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
            s.in_flight.lock().expect("no panics while queueing").push_back((size, request.marker));
            if s.requests.send(IngestRequest { events: request.events }).await.is_err() {
                break;
            }
            Counters::add(&counters.sent, size);
        }
        // Due events of a failed stream are dropped, not resent: the offered rate holds.
        done = due;
    }
    if let Some(Stream { requests, reader, .. }) = stream {
        drop(requests);
        let _ = tokio::time::timeout(drain, reader).await;
    }
}
