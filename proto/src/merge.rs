//! Merging the parts of a cluster's answers: worker threads into a process's answer (in a
//! worker process), processes into the cluster's answer (in the coordinator).
//!
//! - [`FrontierMerge`]: the frontier of a whole is the minimum over its parts, and it
//!   never goes backwards.
//! - [`BatchMerge`]: a subscription's batches from every part, released as one contiguous,
//!   consolidated sequence: time `t` is released once every part has passed it.

use std::collections::BTreeMap;

use prost::Message;

use crate::v1::{CountedRow, Row, SubscribeBatch, Update};
use crate::value::compare_all;

/// The minimum of the parts' frontiers.
#[derive(Clone, Debug)]
pub struct FrontierMerge {
    parts: Vec<u64>,
}

impl FrontierMerge {
    /// `parts` parts, each at frontier 0.
    pub fn new(parts: usize) -> Self {
        FrontierMerge { parts: vec![0; parts] }
    }

    /// Records a part's frontier; an error if it went backwards.
    pub fn update(&mut self, part: usize, frontier: u64) -> Result<(), String> {
        let slot = self.parts.get_mut(part).ok_or_else(|| format!("no part {part}"))?;
        if frontier < *slot {
            return Err(format!("part {part}'s frontier went back from {} to {frontier}", *slot));
        }
        *slot = frontier;
        Ok(())
    }

    /// The whole's frontier.
    pub fn frontier(&self) -> u64 {
        self.parts.iter().copied().min().unwrap_or(0)
    }

    /// A part's last frontier.
    pub fn part(&self, part: usize) -> u64 {
        self.parts.get(part).copied().unwrap_or(0)
    }
}

/// Merges one subscription's batches from several parts.
#[derive(Debug)]
pub struct BatchMerge {
    uppers: FrontierMerge,
    /// Per part: the upper of a batch whose first messages (`more` set) have arrived.
    open: Vec<Option<u64>>,
    released: u64,
    /// Pending updates by (time, encoded row): the row and the summed diff.
    pending: BTreeMap<(u64, Vec<u8>), (Row, i64)>,
}

impl BatchMerge {
    /// A merge of `parts` parts that all start at `lower` (the subscription's `as_of`).
    pub fn new(parts: usize, lower: u64) -> Self {
        let mut uppers = FrontierMerge::new(parts);
        for part in 0..parts {
            uppers.update(part, lower).expect("frontiers start at zero");
        }
        BatchMerge { uppers, open: vec![None; parts], released: lower, pending: BTreeMap::new() }
    }

    /// Takes one message of a part's batch (all but a batch's last have `more` set); an
    /// error if it is not contiguous with the part's previous batch, changes the bounds
    /// of a batch in progress, or holds an update outside its bounds.
    pub fn push(&mut self, part: usize, batch: SubscribeBatch) -> Result<(), String> {
        let expected = self.uppers.part(part);
        if batch.lower != expected || batch.upper <= batch.lower {
            return Err(format!("part {part} sent [{}, {}) after {expected}", batch.lower, batch.upper));
        }
        let open = self.open.get_mut(part).ok_or_else(|| format!("no part {part}"))?;
        if open.is_some_and(|upper| upper != batch.upper) {
            return Err(format!("part {part} changed the upper of its batch from {:?} to {}", open, batch.upper));
        }
        for update in batch.updates {
            if update.time < batch.lower || update.time >= batch.upper {
                return Err(format!("part {part} sent time {} in [{}, {})", update.time, batch.lower, batch.upper));
            }
            let row = update.row.unwrap_or_default();
            let entry = self.pending.entry((update.time, row.encode_to_vec())).or_insert((row, 0));
            entry.1 += update.diff;
        }
        if batch.more {
            *open = Some(batch.upper);
            return Ok(());
        }
        *open = None;
        self.uppers.update(part, batch.upper)
    }

    /// The batch of every time all parts have passed and that has not been released yet.
    pub fn take(&mut self) -> Option<SubscribeBatch> {
        let upper = self.uppers.frontier();
        if upper <= self.released {
            return None;
        }
        let rest = self.pending.split_off(&(upper, Vec::new()));
        let ready = std::mem::replace(&mut self.pending, rest);
        let updates = ready
            .into_iter()
            .filter(|(_, (_, diff))| *diff != 0)
            .map(|((time, _), (row, diff))| Update { row: Some(row), time, diff })
            .collect();
        let batch = SubscribeBatch { lower: self.released, upper, updates, more: false };
        self.released = upper;
        Some(batch)
    }

    /// Updates held back, waiting for a slower part.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Every time below this has been released.
    pub fn released(&self) -> u64 {
        self.released
    }
}

/// Cuts a batch into messages of about `max_bytes` of updates each (at least one
/// message): all but the last have `more` set; every message keeps the batch's bounds.
pub fn chunks(batch: SubscribeBatch, max_bytes: usize) -> Vec<SubscribeBatch> {
    let SubscribeBatch { lower, upper, updates, .. } = batch;
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for update in updates {
        bytes += update.encoded_len() + 4;
        current.push(update);
        if bytes >= max_bytes {
            out.push(SubscribeBatch { lower, upper, updates: std::mem::take(&mut current), more: true });
            bytes = 0;
        }
    }
    out.push(SubscribeBatch { lower, upper, updates: current, more: false });
    if out.len() > 1 && out.last().is_some_and(|last| last.updates.is_empty()) {
        // The last full chunk ends the batch.
        out.pop();
        out.last_mut().expect("more than one").more = false;
    }
    out
}

/// Cuts `rows` after the last row that fits in `max_bytes`; whether any was cut.
pub fn cut_to_bytes(rows: &mut Vec<CountedRow>, max_bytes: usize) -> bool {
    let mut bytes = 0;
    let fits = rows.iter().take_while(|r| {
        bytes += r.encoded_len() + 4;
        bytes <= max_bytes
    });
    let keep = fits.count();
    let cut = keep < rows.len();
    rows.truncate(keep);
    cut
}

/// Cuts rows into groups of about `max_bytes` each (at least one group, maybe empty).
pub fn row_chunks(rows: Vec<CountedRow>, max_bytes: usize) -> Vec<Vec<CountedRow>> {
    let mut out = vec![Vec::new()];
    let mut bytes = 0;
    for row in rows {
        let size = row.encoded_len() + 4;
        if bytes + size > max_bytes && !out.last().expect("one group").is_empty() {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        out.last_mut().expect("one group").push(row);
    }
    out
}

/// Sorts the rows of several parts into key order (the first `key_columns` values), as
/// a limit needs them.
pub fn sort_by_key(rows: &mut [CountedRow], key_columns: usize) {
    fn key(r: &CountedRow, key_columns: usize) -> &[crate::v1::Value] {
        match &r.row {
            Some(row) => &row.values[..key_columns.min(row.values.len())],
            None => &[],
        }
    }
    rows.sort_by(|a, b| compare_all(key(a, key_columns), key(b, key_columns)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value;

    fn row(s: &str) -> Row {
        Row { values: vec![value::string(s)] }
    }

    fn batch(lower: u64, upper: u64, updates: &[(&str, u64, i64)]) -> SubscribeBatch {
        SubscribeBatch {
            lower,
            upper,
            updates: updates.iter().map(|(r, t, d)| Update { row: Some(row(r)), time: *t, diff: *d }).collect(),
            more: false,
        }
    }

    #[test]
    fn a_batch_in_several_messages_releases_once_complete() {
        let mut merge = BatchMerge::new(2, 10);
        merge.push(1, batch(10, 30, &[])).unwrap();
        merge.push(0, SubscribeBatch { more: true, ..batch(10, 20, &[("a", 12, 1)]) }).unwrap();
        assert!(merge.take().is_none(), "part 0's batch is not complete");
        assert!(merge.push(0, SubscribeBatch { more: true, ..batch(10, 25, &[]) }).is_err(), "a batch keeps its bounds");
        merge.push(0, batch(10, 20, &[("b", 15, 1)])).unwrap();
        let released = merge.take().expect("both parts passed 20");
        assert_eq!((released.lower, released.upper, released.updates.len()), (10, 20, 2));
    }

    #[test]
    fn chunks_keep_every_update_and_the_bounds() {
        let updates: Vec<(String, u64, i64)> = (0..1000).map(|i| (format!("row-{i}"), 11 + i % 5, 1)).collect();
        let refs: Vec<(&str, u64, i64)> = updates.iter().map(|(r, t, d)| (r.as_str(), *t, *d)).collect();
        let parts = chunks(batch(10, 20, &refs), 1000);
        assert!(parts.len() > 5);
        assert!(parts.iter().all(|p| (p.lower, p.upper) == (10, 20)));
        assert!(parts[..parts.len() - 1].iter().all(|p| p.more) && !parts.last().unwrap().more);
        assert!(parts.iter().all(|p| p.encoded_len() < 1200));
        assert_eq!(parts.iter().map(|p| p.updates.len()).sum::<usize>(), 1000);
        let one = chunks(batch(10, 20, &[]), 1000);
        assert_eq!(one.len(), 1);
        assert!(!one[0].more);
        let groups = row_chunks((0..100).map(|i| CountedRow { row: Some(row(&format!("r{i}"))), count: 1 }).collect(), 100);
        assert!(groups.len() > 5 && groups.iter().all(|g| !g.is_empty()));
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 100);
    }

    #[test]
    fn releases_what_every_part_has_passed_consolidated() {
        let mut merge = BatchMerge::new(2, 10);
        merge.push(0, batch(10, 20, &[("a", 12, 1), ("b", 15, 1)])).unwrap();
        assert!(merge.take().is_none(), "part 1 has not passed 10 yet");
        merge.push(1, batch(10, 13, &[("a", 12, 1), ("b", 11, 1)])).unwrap();
        let first = merge.take().expect("both parts passed 13");
        assert_eq!((first.lower, first.upper), (10, 13));
        assert_eq!(first.updates.len(), 2);
        assert_eq!(first.updates[0].time, 11);
        assert_eq!((first.updates[1].time, first.updates[1].diff), (12, 2));
        merge.push(1, batch(13, 30, &[("b", 15, -1)])).unwrap();
        let second = merge.take().expect("both parts passed 20");
        assert_eq!((second.lower, second.upper), (13, 20));
        assert!(second.updates.is_empty(), "b +1 and b -1 at 15 cancel");
    }

    #[test]
    fn rejects_gaps_and_stray_times() {
        let mut merge = BatchMerge::new(1, 10);
        assert!(merge.push(0, batch(11, 20, &[])).is_err());
        assert!(merge.push(0, batch(10, 20, &[("a", 25, 1)])).is_err());
    }

    #[test]
    fn frontiers_never_go_back() {
        let mut f = FrontierMerge::new(2);
        f.update(0, 5).unwrap();
        f.update(1, 7).unwrap();
        assert_eq!(f.frontier(), 5);
        assert!(f.update(1, 6).is_err());
    }
}
