//! `accumulate`: the running sum of each key, as a collection of `(key, sum)` rows.
//!
//! The input is a stream of `(key, time, delta)` updates whose deltas are a semigroup
//! (an aggregate such as [`crate::rows::FunnelAgg`] used as the difference type). The
//! output holds, at every time, one row `(key, sum)` per key whose deltas up to that time
//! sum to something other than zero: what differential's `count_total` gives, without an
//! arrangement of the input.
//!
//! Two steps:
//! 1. where the updates arise, each message's updates are summed by key and time (a
//!    window's thousands of events become one update per key);
//! 2. on the key's owner (worker `key.route() mod workers`, as [`crate::views`] places
//!    every view), the deltas of each time are added, time by time in time order once
//!    the frontier has passed it, to the key's sum, and the change is emitted as the old
//!    row retracted and the new one inserted.
//!
//! State: one sum per key with a non-zero sum. The output is already on its owner, so it
//! can be arranged without another exchange ([`crate::views::arrange_placed`]). Where the
//! deltas are sent to their owners, each sender remembers the placement of the keys it
//! has seen (`RouteCache`): a window's keys come back time after time, and a key's
//! placement hash is taken over its routing text, which is built anew each time.

use foldhash::HashMap;
use std::hash::Hash;

use differential_dataflow::difference::Semigroup;
use differential_dataflow::ExchangeData;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;

use crate::rows::Route;
use crate::time::Time;
use crate::views::Pending;

/// See the [module docs](self).
pub trait Accumulate<'scope, K, R> {
    /// The rows `(key, sum)` of every key with a non-zero sum, placed by `key.route()`.
    fn accumulate(self, name: &str) -> Stream<'scope, Time, Vec<((K, R), Time, isize)>>;

    /// Each message's updates summed by key and time, where they arise (step 1 of the
    /// [module docs](self); skip it where the updates are already summed).
    fn sum_each_message(self, name: &str) -> Stream<'scope, Time, Vec<(K, Time, R)>>;
}

impl<'scope, K, R> Accumulate<'scope, K, R> for Stream<'scope, Time, Vec<(K, Time, R)>>
where
    K: Route + ExchangeData + Hash,
    R: Semigroup + ExchangeData,
{
    fn sum_each_message(self, name: &str) -> Stream<'scope, Time, Vec<(K, Time, R)>> {
        self.unary::<CapacityContainerBuilder<Vec<(K, Time, R)>>, _, _, _>(Pipeline, name, |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let mut sums: HashMap<(K, Time), R> = HashMap::default();
                    for (k, t, r) in data.drain(..) {
                        add_into(&mut sums, (k, t), r);
                    }
                    output.session(&cap).give_iterator(sums.into_iter().filter(|(_, r)| !r.is_zero()).map(|((k, t), r)| (k, t, r)));
                });
            }
        })
    }

    fn accumulate(self, name: &str) -> Stream<'scope, Time, Vec<((K, R), Time, isize)>> {
        let mut routes = RouteCache::default();
        let pact = Exchange::new(move |(k, _, _): &(K, Time, R)| routes.route(k));
        self.unary_frontier::<CapacityContainerBuilder<Vec<((K, R), Time, isize)>>, _, _, _>(pact, name, |_, _| {
            let mut pending: Pending<(K, R)> = Pending::default();
            let mut sums: HashMap<K, R> = HashMap::default();
            // A time's deltas by key: emptied at every time, kept for its room.
            let mut deltas: HashMap<K, R> = HashMap::default();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    for (k, t, r) in data.drain(..) {
                        pending.push(&cap, t, (k, r));
                    }
                });
                // Every time ready now, in time order, its changes going out with the
                // others in one message at the earliest one's capability.
                let mut first = None;
                let mut changes = Vec::new();
                while let Some((cap, time, updates)) = pending.pop_ready(|t| !frontier.less_equal(t)) {
                    first.get_or_insert(cap);
                    for (k, r) in updates {
                        add_into(&mut deltas, k, r);
                    }
                    changes.reserve(2 * deltas.len());
                    for (key, delta) in deltas.drain() {
                        if delta.is_zero() {
                            continue;
                        }
                        match sums.get_mut(&key) {
                            Some(sum) => {
                                changes.push(((key.clone(), sum.clone()), time, -1));
                                sum.plus_equals(&delta);
                                if sum.is_zero() {
                                    sums.remove(&key);
                                } else {
                                    changes.push(((key, sum.clone()), time, 1));
                                }
                            }
                            None => {
                                changes.push(((key.clone(), delta.clone()), time, 1));
                                sums.insert(key, delta);
                            }
                        }
                    }
                }
                if let Some(cap) = first {
                    output.session(&cap).give_iterator(changes.into_iter());
                }
                pending.settle();
            }
        })
    }
}

/// The placements of the keys seen recently: [`Route::route`] of each, computed once.
/// Holds at most [`RouteCache::CAPACITY`] keys, and starts afresh when full.
pub(crate) struct RouteCache<K> {
    routes: HashMap<K, u64>,
}

impl<K> Default for RouteCache<K> {
    fn default() -> Self {
        RouteCache { routes: HashMap::default() }
    }
}

impl<K: Route + Hash + Eq + Clone> RouteCache<K> {
    /// The most keys kept.
    pub(crate) const CAPACITY: usize = 1 << 16;

    /// `key.route()`.
    pub(crate) fn route(&mut self, key: &K) -> u64 {
        if let Some(route) = self.routes.get(key) {
            return *route;
        }
        if self.routes.len() >= Self::CAPACITY {
            self.routes.clear();
        }
        let route = key.route();
        self.routes.insert(key.clone(), route);
        route
    }
}

/// Adds `delta` to the sum of `key` in `sums` (a first delta is the sum).
fn add_into<K: Hash + Eq, R: Semigroup>(sums: &mut HashMap<K, R>, key: K, delta: R) {
    match sums.entry(key) {
        std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().plus_equals(&delta),
        std::collections::hash_map::Entry::Vacant(e) => {
            e.insert(delta);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use differential_dataflow::input::Input;
    use differential_dataflow::operators::CountTotal;
    use proptest::prelude::*;
    use timely::dataflow::operators::{Inspect, Probe};

    use differential_dataflow::consolidation::consolidate_updates;

    use super::*;

    /// Runs `accumulate` and `count_total` side by side over the same `(time, key,
    /// diff)` updates on `workers` workers, each worker inserting every `workers`-th
    /// update; every (row, time, diff) each emitted, consolidated.
    fn both(updates: Vec<(Time, u64, isize)>, workers: usize) -> (Vec<((u64, isize), Time, isize)>, Vec<((u64, isize), Time, isize)>) {
        let mut updates = updates;
        updates.sort_by_key(|(t, _, _)| *t);
        let ours = Arc::new(Mutex::new(Vec::new()));
        let theirs = Arc::new(Mutex::new(Vec::new()));
        let (o, t) = (ours.clone(), theirs.clone());
        let last = updates.iter().map(|(t, _, _)| *t).max().unwrap_or(0);
        timely::execute(timely::Config::process(workers), move |worker| {
            let (o, t) = (o.clone(), t.clone());
            let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
                let (input, keys) = scope.new_collection::<u64, isize>();
                let probe = keys
                    .inner
                    .clone()
                    .sum_each_message("Sum each message")
                    .accumulate("Sum")
                    .inspect(move |u| o.lock().expect("no panics").push(*u))
                    .probe()
                    .0;
                keys.count_total().inner.inspect(move |u| t.lock().expect("no panics").push(*u)).probe_with(&probe);
                (input, probe)
            });
            for (i, (time, key, diff)) in updates.iter().enumerate() {
                if i % worker.peers() == worker.index() {
                    input.advance_to(*time);
                    input.update(*key, *diff);
                }
            }
            input.advance_to(last + 1);
            input.flush();
            worker.step_while(|| probe.less_than(&(last + 1)));
        })
        .expect("timely runs");
        let mut ours = ours.lock().expect("done").clone();
        let mut theirs = theirs.lock().expect("done").clone();
        consolidate_updates(&mut ours);
        consolidate_updates(&mut theirs);
        (ours, theirs)
    }

    #[test]
    fn a_key_whose_sum_returns_to_zero_has_no_row() {
        let (ours, theirs) = both(vec![(0, 7, 2), (1, 7, -2), (1, 8, 1), (2, 7, 1)], 1);
        assert_eq!(ours, theirs);
        assert_eq!(ours, vec![((7, 1), 2, 1), ((7, 2), 0, 1), ((7, 2), 1, -1), ((8, 1), 1, 1)]);
    }

    /// A cached placement is the key's own, before and after the cache fills and starts
    /// afresh.
    #[test]
    fn the_route_cache_gives_each_keys_route() {
        use crate::rows::{Dimension, FunnelKey};
        use crate::time::Granularity;
        let mut cache = RouteCache::default();
        let keys: Vec<FunnelKey> = (0..RouteCache::<FunnelKey>::CAPACITY as i64 + 10)
            .map(|i| FunnelKey { granularity: Granularity::Hour, window_start: i * 3_600_000, dimension: Dimension::Country, value: format!("c{}", i % 7).into() })
            .collect();
        for round in 0..2 {
            for key in keys.iter().step_by(1 + round * 997) {
                assert_eq!(cache.route(key), key.route(), "{key:?}");
            }
        }
        assert!(cache.routes.len() <= RouteCache::<FunnelKey>::CAPACITY);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// The same rows at the same times as `count_total`, times arriving out of order
        /// across workers, with retractions and keys that come and go.
        #[test]
        fn equals_count_total(updates in prop::collection::vec((0u64..12, 0u64..6, -2isize..=3), 0..80), workers in 1usize..=3) {
            let (ours, theirs) = both(updates, workers);
            prop_assert_eq!(ours, theirs);
        }
    }
}
