//! Open-loop schedules: when each request or event is *meant* to go out, fixed in
//! advance by the offered rate and independent of how fast earlier ones were answered.
//!
//! Measuring latency from these intended times (not from the moment a request could
//! finally be sent) keeps a slow answer from hiding the requests that queued behind it
//! ("coordinated omission").

use std::time::Duration;

/// A fixed rate: item `i` (from 0) is due `i / per_sec` seconds after the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    per_sec: u64,
}

const NANOS: u128 = 1_000_000_000;

impl Schedule {
    /// A schedule of `per_sec` items per second.
    ///
    /// # Panics
    /// If `per_sec` is zero.
    pub fn new(per_sec: u64) -> Self {
        assert!(per_sec > 0, "a schedule needs a positive rate");
        Schedule { per_sec }
    }

    /// When item `i` is due, after the start (rounded down to the nanosecond).
    pub fn offset(&self, i: u64) -> Duration {
        let nanos = u128::from(i) * NANOS / u128::from(self.per_sec);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// How many items are due once `elapsed` has passed since the start: those with
    /// `offset(i) <= elapsed` (item 0 is due at once).
    pub fn due(&self, elapsed: Duration) -> u64 {
        // offset(i) <= e  <=>  i * 1e9 / r < e + 1  <=>  i < (e + 1) * r / 1e9.
        let bound = (elapsed.as_nanos() + 1) * u128::from(self.per_sec);
        u64::try_from(bound.div_ceil(NANOS)).unwrap_or(u64::MAX)
    }
}

/// Splits `n` items into requests of at most `max` items (the last one may be smaller).
pub fn split(n: u64, max: usize) -> impl Iterator<Item = usize> {
    let max = max.max(1) as u64;
    let full = n / max;
    let rest = n % max;
    (0..full).map(move |_| max as usize).chain((rest > 0).then_some(rest as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_the_rate() {
        let s = Schedule::new(10_000);
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(1), Duration::from_micros(100));
        assert_eq!(s.offset(10_000), Duration::from_secs(1));
        let s = Schedule::new(3);
        assert_eq!(s.offset(1), Duration::from_nanos(333_333_333));
        assert_eq!(s.offset(3), Duration::from_secs(1));
    }

    #[test]
    fn due_counts_exactly_the_items_whose_time_has_come() {
        // Rates below 1e9/s, so that every item has an offset of its own.
        for rate in [1, 3, 7, 1000, 10_000, 100_000, 999_999_937] {
            let s = Schedule::new(rate);
            assert_eq!(s.due(Duration::ZERO), 1, "item 0 is due at once (rate {rate})");
            for i in [0, 1, 2, 5, 99, 12_345, 1_000_003] {
                assert_eq!(s.due(s.offset(i)), i + 1, "at offset({i}), rate {rate}");
                let just_before = s.offset(i + 1) - Duration::from_nanos(1);
                assert_eq!(s.due(just_before), i + 1, "just before offset({}), rate {rate}", i + 1);
            }
        }
    }

    #[test]
    fn a_second_holds_the_rate() {
        for rate in [1, 10, 1000, 100_000] {
            let s = Schedule::new(rate);
            // Items 0..=rate are due at exactly one second: the rate plus item 0.
            assert_eq!(s.due(Duration::from_secs(1)), rate + 1);
            assert_eq!(s.due(Duration::from_secs(1) - Duration::from_nanos(1)), rate);
        }
    }

    #[test]
    fn split_covers_every_item_in_bounded_requests() {
        assert_eq!(split(0, 10).collect::<Vec<_>>(), Vec::<usize>::new());
        assert_eq!(split(10, 10).collect::<Vec<_>>(), [10]);
        assert_eq!(split(25, 10).collect::<Vec<_>>(), [10, 10, 5]);
        assert_eq!(split(3, 0).collect::<Vec<_>>(), [1, 1, 1], "a zero maximum means one per request");
    }
}
