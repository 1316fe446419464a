//! Attributing subscription changes to the marker events that caused them.
//!
//! Every Ingest request of the freshness test carries one marker: an event of a probe
//! user that no other event touches, so the probe's `sessions` row changes at exactly the
//! times at which markers were ingested, and only then. The acknowledgement of a request
//! names that time (`visible_at`), and a view's change caused by events ingested at `t`
//! carries time `t`. So a marker acknowledged with `visible_at = t` is delivered by the
//! first subscription update at time `t`: unambiguously, even when several markers share
//! a time (each is then delivered by the same update).
//!
//! Properties (tested below): every marker is either delivered once, or still waiting,
//! or missed; it is missed only when progress has passed its time without a change at
//! that time; a change that arrives before its acknowledgement counts as zero latency.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What happened to one marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its change arrived this long after its acknowledgement (zero if before).
    Delivered(Duration),
    /// Progress passed its time and no change at that time arrived.
    Missed,
}

/// Markers acknowledged and changes seen, matched by time.
#[derive(Debug, Default)]
pub struct Markers {
    /// Acknowledged markers without a change yet: time -> when each was acknowledged.
    waiting: BTreeMap<u64, Vec<Instant>>,
    /// Changes seen: time -> first arrival (kept for acknowledgements still to come).
    changed: BTreeMap<u64, Instant>,
    /// Every time below this is complete on the subscription.
    upper: u64,
    /// Changes that arrived before their acknowledgement.
    pub early_changes: u64,
}

impl Markers {
    /// No markers, nothing seen.
    pub fn new() -> Self {
        Markers::default()
    }

    /// A marker was acknowledged at `at` as visible from `time`.
    pub fn on_ack(&mut self, time: u64, at: Instant) -> Option<Outcome> {
        if let Some(&arrived) = self.changed.get(&time) {
            self.early_changes += 1;
            return Some(Outcome::Delivered(arrived.saturating_duration_since(at)));
        }
        if time < self.upper {
            return Some(Outcome::Missed);
        }
        self.waiting.entry(time).or_default().push(at);
        None
    }

    /// The subscription delivered a change of the probe's row at `time`, at `at`.
    pub fn on_change(&mut self, time: u64, at: Instant) -> Vec<Outcome> {
        self.changed.entry(time).or_insert(at);
        let acks = self.waiting.remove(&time).unwrap_or_default();
        acks.into_iter().map(|ack| Outcome::Delivered(at.saturating_duration_since(ack))).collect()
    }

    /// The subscription is complete below `upper` (call after the batch's changes).
    pub fn on_progress(&mut self, upper: u64) -> Vec<Outcome> {
        self.upper = self.upper.max(upper);
        let still = self.waiting.split_off(&self.upper);
        let missed = std::mem::replace(&mut self.waiting, still);
        missed.into_values().flatten().map(|_| Outcome::Missed).collect()
    }

    /// Acknowledged markers whose change has not arrived.
    pub fn waiting(&self) -> usize {
        self.waiting.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn a_change_delivers_the_markers_acknowledged_at_its_time() {
        let t0 = Instant::now();
        let mut m = Markers::new();
        assert_eq!(m.on_ack(100, t0), None);
        assert_eq!(m.on_ack(110, t0 + ms(2)), None);
        assert_eq!(m.on_ack(110, t0 + ms(4)), None, "two markers at one time");
        assert_eq!(m.waiting(), 3);
        assert_eq!(m.on_change(100, t0 + ms(15)), [Outcome::Delivered(ms(15))]);
        assert_eq!(m.on_progress(101), []);
        assert_eq!(m.on_change(110, t0 + ms(20)), [Outcome::Delivered(ms(18)), Outcome::Delivered(ms(16))]);
        assert_eq!(m.on_progress(120), []);
        assert_eq!(m.waiting(), 0);
        assert_eq!(m.on_change(110, t0 + ms(30)), [], "a second change at a delivered time delivers nothing");
    }

    #[test]
    fn progress_past_a_time_without_its_change_misses_the_marker() {
        let t0 = Instant::now();
        let mut m = Markers::new();
        m.on_ack(100, t0);
        m.on_ack(200, t0);
        assert_eq!(m.on_progress(150), [Outcome::Missed]);
        assert_eq!(m.waiting(), 1, "the marker at 200 still waits");
        assert_eq!(m.on_ack(120, t0), Some(Outcome::Missed), "acknowledged after progress passed its time");
        assert_eq!(m.on_progress(150), [], "progress is idempotent");
    }

    #[test]
    fn a_change_before_its_acknowledgement_counts_as_zero() {
        let t0 = Instant::now();
        let mut m = Markers::new();
        assert_eq!(m.on_change(300, t0), []);
        assert_eq!(m.on_progress(301), []);
        assert_eq!(m.on_ack(300, t0 + ms(1)), Some(Outcome::Delivered(Duration::ZERO)));
        assert_eq!(m.early_changes, 1);
        assert_eq!(m.waiting(), 0);
    }

    #[test]
    fn a_marker_acknowledged_after_the_change_at_its_time_was_delivered_counts_as_zero() {
        // Two requests land in one tick; the change arrives between their acks.
        let t0 = Instant::now();
        let mut m = Markers::new();
        m.on_ack(700, t0);
        assert_eq!(m.on_change(700, t0 + ms(5)), [Outcome::Delivered(ms(5))]);
        assert_eq!(m.on_progress(710), []);
        assert_eq!(m.on_ack(700, t0 + ms(6)), Some(Outcome::Delivered(Duration::ZERO)));
        assert_eq!(m.early_changes, 1);
    }

    #[test]
    fn the_update_at_the_time_of_the_ack_is_the_one_that_counts() {
        // Changes at other times (a later marker's, say) never deliver a marker.
        let t0 = Instant::now();
        let mut m = Markers::new();
        m.on_ack(500, t0);
        assert_eq!(m.on_change(490, t0 + ms(1)), []);
        assert_eq!(m.on_change(510, t0 + ms(2)), []);
        assert_eq!(m.waiting(), 1);
        assert_eq!(m.on_change(500, t0 + ms(3)), [Outcome::Delivered(ms(3))]);
    }
}
