//! One public subscription: its snapshot read in pages, then the workers' batches merged
//! and passed on in chunks of bounded size.
//!
//! Every process streams the view's changes at times after `as_of` and holds compaction
//! at `as_of` until the snapshot (the contents at `as_of`) has been read, page by page,
//! at the pace the client takes it. Meanwhile the processes' batches are merged and held
//! back; once the snapshot is out they follow. The client gets:
//! 1. the columns;
//! 2. the snapshot as messages of the first batch (`lower` = `as_of`, `more` set, rows at
//!    time `as_of` with their counts);
//! 3. the merged batches, each cut into messages of about
//!    [`CHUNK_BYTES`](tidemark_proto::limits::CHUNK_BYTES) (all but a batch's last with
//!    `more` set and `upper` 0).
//!
//! A subscriber that falls behind is dropped with RESOURCE_EXHAUSTED: changes go into its
//! buffer (`--subscriber-buffer` messages) at once or not at all; the worker messages
//! waiting for this task are bounded
//! ([`SUBSCRIPTION_EVENTS`](crate::cluster::SUBSCRIPTION_EVENTS)), so are the updates held
//! back while the snapshot goes out ([`MAX_HELD_UPDATES`]), and a page of the snapshot
//! waits for room at most [`SEND_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use tidemark_proto::limits::CHUNK_BYTES;
use tidemark_proto::merge::{chunks, BatchMerge};
use tidemark_proto::v1::{SubscribeBatch, SubscribeResponse, Update, ViewInfo};
use tokio::sync::mpsc;
use tonic::Status;

use crate::cluster::{Cluster, SubscriptionEvent};
use crate::read::{read_page, start_cursors, Selection};

/// The most updates held back (while the snapshot goes out, or waiting for a slow
/// process) before the subscriber is dropped.
pub const MAX_HELD_UPDATES: usize = 1_000_000;
/// How long a message may wait for room in the client's buffer.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a page of the snapshot may take.
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the subscription reads.
pub struct Plan {
    /// The view.
    pub view: ViewInfo,
    /// Its filters.
    pub selection: Selection,
    /// The start time.
    pub as_of: u64,
    /// Whether to send the contents at `as_of` first.
    pub snapshot: bool,
}

type Client = mpsc::Sender<Result<SubscribeResponse, Status>>;

/// Why a subscription ended early.
enum End {
    /// The client is gone: nothing more to say.
    Gone,
    /// Tell the client this, then stop.
    Failed(Status),
}

fn message(batch: SubscribeBatch) -> Result<SubscribeResponse, Status> {
    Ok(SubscribeResponse { columns: Vec::new(), batch: Some(batch) })
}

/// Sends a page of the snapshot, waiting (up to [`SEND_TIMEOUT`]) for room: pages are
/// read at the pace the client takes them.
async fn send_page(client: &Client, batch: SubscribeBatch) -> Result<(), End> {
    match tokio::time::timeout(SEND_TIMEOUT, client.send(message(batch))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Gone),
        Err(_) => Err(End::Failed(Status::resource_exhausted(format!(
            "the subscriber did not read the snapshot for {SEND_TIMEOUT:?}; subscribe again"
        )))),
    }
}

/// Sends changes at once: a subscriber whose buffer is full has fallen behind, and the
/// cluster does not wait for it.
fn send_now(client: &Client, batch: SubscribeBatch) -> Result<(), End> {
    client.try_send(message(batch)).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => End::Failed(Status::resource_exhausted(format!(
            "the subscriber did not keep up: its buffer of {} messages is full; resubscribe from the last upper seen",
            client.max_capacity()
        ))),
        mpsc::error::TrySendError::Closed(_) => End::Gone,
    })
}

/// Folds a worker message into the merge; an error ends the subscription.
fn fold(merge: &mut BatchMerge, event: Option<SubscriptionEvent>) -> Result<(), End> {
    match event {
        Some(SubscriptionEvent::Batch(process, batch)) => {
            merge.push(process, batch).map_err(|e| End::Failed(Status::internal(format!("broken subscription protocol: {e}"))))?;
            if merge.pending() > MAX_HELD_UPDATES {
                return Err(End::Failed(Status::resource_exhausted(format!(
                    "more than {MAX_HELD_UPDATES} updates are held back for this subscriber; resubscribe from the last upper seen"
                ))));
            }
            Ok(())
        }
        Some(SubscriptionEvent::Ended(status)) => Err(End::Failed(status)),
        None => Err(End::Failed(Status::unavailable("the subscription ended"))),
    }
}

/// Runs subscription `id` until its client leaves or it fails.
pub async fn run(cluster: Arc<Cluster>, id: u64, plan: Plan, mut events: mpsc::Receiver<SubscriptionEvent>, client: Client) {
    let ended = stream(&cluster, &plan, &mut events, &client, id).await;
    cluster.unsubscribe(id);
    if let Err(End::Failed(status)) = ended {
        if status.code() == tonic::Code::ResourceExhausted {
            cluster.dropped_subscribers().inc();
        }
        // The client reads what is buffered first; the status then ends the stream.
        let _ = tokio::time::timeout(SEND_TIMEOUT, client.send(Err(status))).await;
    }
}

async fn stream(cluster: &Cluster, plan: &Plan, events: &mut mpsc::Receiver<SubscriptionEvent>, client: &Client, id: u64) -> Result<(), End> {
    let (processes, _) = cluster.shape();
    let mut merge = BatchMerge::new(processes, plan.as_of);
    if plan.snapshot {
        let (_, threads) = cluster.shape();
        let mut cursors = start_cursors(&plan.view, &[], processes, threads);
        while cursors.iter().any(|c| !c.done) {
            while let Ok(event) = events.try_recv() {
                fold(&mut merge, Some(event))?;
            }
            let read = read_page(cluster, &plan.view, &plan.selection, plan.as_of, 0, &mut cursors, PAGE_TIMEOUT);
            let (rows, _) = tokio::select! {
                page = read => page.map_err(End::Failed)?,
                _ = client.closed() => return Err(End::Gone),
            };
            if rows.is_empty() {
                continue;
            }
            let updates = rows.into_iter().map(|r| Update { row: r.row, time: plan.as_of, diff: r.count }).collect();
            for mut part in chunks(SubscribeBatch { lower: plan.as_of, upper: 0, updates, more: true }, CHUNK_BYTES) {
                part.more = true;
                part.upper = 0;
                send_page(client, part).await?;
            }
        }
    }
    cluster.release(id);
    loop {
        while let Some(batch) = merge.take() {
            for mut part in chunks(batch, CHUNK_BYTES) {
                if part.more {
                    part.upper = 0;
                }
                send_now(client, part)?;
            }
        }
        tokio::select! {
            event = events.recv() => fold(&mut merge, event)?,
            _ = client.closed() => return Err(End::Gone),
        }
    }
}
