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
        BatchMerge { uppers, released: lower, pending: BTreeMap::new() }
    }

    /// Takes a part's batch; an error if it is not contiguous with the part's previous
    /// batch or holds an update outside its bounds.
    pub fn push(&mut self, part: usize, batch: SubscribeBatch) -> Result<(), String> {
        let expected = self.uppers.part(part);
        if batch.lower != expected || batch.upper <= batch.lower {
            return Err(format!("part {part} sent [{}, {}) after {expected}", batch.lower, batch.upper));
        }
        for update in batch.updates {
            if update.time < batch.lower || update.time >= batch.upper {
                return Err(format!("part {part} sent time {} in [{}, {})", update.time, batch.lower, batch.upper));
            }
            let row = update.row.unwrap_or_default();
            let entry = self.pending.entry((update.time, row.encode_to_vec())).or_insert((row, 0));
            entry.1 += update.diff;
        }
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
        let batch = SubscribeBatch { lower: self.released, upper, updates };
        self.released = upper;
        Some(batch)
    }

    /// Updates held back, waiting for a slower part.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
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
        }
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
