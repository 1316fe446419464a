//! Reading a view from the cluster a page at a time: what `Query` and the snapshot of a
//! `Subscribe` share.
//!
//! A read keeps one [`ThreadCursor`] per worker thread of the cluster (process by
//! process). A page asks every process that has a thread not yet done, with the cursors
//! of its threads, and takes back where each thread stopped; the read is over once every
//! cursor is done. A lookup by key asks only the thread that owns the key.

use std::time::Duration;

use tidemark_proto::internal::v1 as wire;
use tidemark_proto::internal::v1::ThreadCursor;
use tidemark_proto::limits::{MIN_THREAD_BUDGET_BYTES, PAGE_BYTES};
use tidemark_proto::routing::{key_hash, owner, routing_text};
use tidemark_proto::v1::{CountedRow, Filter, KeyRange, Value, ViewInfo};
use tonic::Status;

use crate::cluster::Cluster;

/// What a read selects.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Values of the first key columns (a lookup if they cover the routing columns).
    pub key: Vec<Value>,
    /// A key range.
    pub range: Option<KeyRange>,
    /// Conditions on columns.
    pub filters: Vec<Filter>,
}

/// The cursors a read starts with: every thread at its start, except that a lookup by
/// a key that gives every routing column leaves only the key's owner to ask.
pub fn start_cursors(view: &ViewInfo, key: &[Value], processes: usize, threads: usize) -> Vec<ThreadCursor> {
    let total = processes * threads;
    let mut cursors = vec![ThreadCursor::default(); total];
    let routing = view.routing_columns as usize;
    if let Some(text) = (routing > 0 && key.len() >= routing).then(|| routing_text(&key[..routing])).flatten() {
        let owner = owner(key_hash(&text), total);
        for (t, cursor) in cursors.iter_mut().enumerate() {
            cursor.done = t != owner;
        }
    }
    cursors
}

/// Reads one page at `as_of`: every process with a thread not done is asked to go on from
/// `cursors`, which are moved to where the threads stopped. With `limit`, the page is the
/// whole answer (the first `limit` rows in key order) and the cursors are all set done.
/// Returns the page's rows and whether a limit cut them.
pub async fn read_page(
    cluster: &Cluster,
    view: &ViewInfo,
    selection: &Selection,
    as_of: u64,
    limit: u32,
    cursors: &mut [ThreadCursor],
    timeout: Duration,
) -> Result<(Vec<CountedRow>, bool), Status> {
    let (processes, threads) = cluster.shape();
    if cursors.len() != processes * threads {
        return Err(Status::internal(format!("{} cursors for {} worker threads", cursors.len(), processes * threads)));
    }
    let budget = (PAGE_BYTES / cursors.len().max(1)).max(MIN_THREAD_BUDGET_BYTES) as u32;
    let peeks: Vec<(usize, wire::Peek)> = (0..processes)
        .filter(|p| cursors[p * threads..(p + 1) * threads].iter().any(|c| !c.done))
        .map(|p| {
            let peek = wire::Peek {
                id: 0,
                view: view.name.clone(),
                key: selection.key.clone(),
                range: selection.range.clone(),
                filters: selection.filters.clone(),
                as_of,
                limit,
                cursors: cursors[p * threads..(p + 1) * threads].to_vec(),
                thread_budget_bytes: budget,
            };
            (p, peek)
        })
        .collect();
    if peeks.is_empty() {
        return Ok((Vec::new(), false));
    }
    let answer = cluster.peek(peeks, timeout).await?;
    if limit > 0 {
        cursors.iter_mut().for_each(|c| c.done = true);
    } else {
        for (p, returned) in answer.cursors {
            if returned.len() != threads {
                return Err(Status::internal(format!("worker process {p} returned {} cursors for {threads} threads", returned.len())));
            }
            cursors[p * threads..(p + 1) * threads].clone_from_slice(&returned);
        }
    }
    Ok((answer.rows, answer.truncated))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_proto::value;

    #[test]
    fn a_lookup_asks_only_the_owner() {
        let view = ViewInfo { name: "sessions".into(), routing_columns: 1, key_columns: vec!["user_id".into(), "session_id".into()], ..Default::default() };
        for (processes, threads) in [(1, 1), (2, 2), (3, 4), (4, 4)] {
            let all = start_cursors(&view, &[], processes, threads);
            assert_eq!(all.len(), processes * threads);
            assert!(all.iter().all(|c| !c.done));
            let key = [value::string("u42")];
            let one = start_cursors(&view, &key, processes, threads);
            let asked: Vec<usize> = (0..one.len()).filter(|t| !one[*t].done).collect();
            assert_eq!(asked, [owner(key_hash("u42"), processes * threads)], "{processes}x{threads}");
        }
        let unrouted = ViewInfo { name: "clv_model".into(), routing_columns: 0, ..Default::default() };
        assert!(start_cursors(&unrouted, &[], 4, 4).iter().all(|c| !c.done), "a view without routing columns is read everywhere");
    }
}
