//! `keep_first`: a collection cut down to the first `k` values that arrive in each
//! bucket.
//!
//! A value *arrives* at the first time it has a positive count. Values arrive in the
//! order of (time, value); of those a bucket receives, the first `k` are kept: each is in
//! the output with its count for as long as it is in the input, the others never are. A
//! kept value that leaves does not free its place, so what is kept never depends on
//! when values leave, and the output is a sub-collection of the input at every time.
//!
//! Every bucket says when it closes (the time from which no value arrives in it any
//! more), so that its count can be forgotten.
//!
//! ```
//! use differential_dataflow::input::Input;
//! use tidemark_dataflows::operators::KeepFirst;
//! use timely::dataflow::operators::probe::Handle;
//!
//! timely::execute_directly(|worker| {
//!     let mut probe = Handle::new();
//!     let mut input = worker.dataflow::<u64, _, _>(|scope| {
//!         let (input, values) = scope.new_collection::<u32, isize>();
//!         // Two values per bucket of ten; buckets close at the next ten.
//!         values
//!             .keep_first("first two per ten", 2, |v: &u32| (v / 10, u64::from(v / 10 + 1) * 10))
//!             .inspect(|(v, t, d)| assert!(v % 10 < 2, "{v} at {t}, {d}"))
//!             .probe_with(&mut probe);
//!         input
//!     });
//!     for v in [0, 1, 2, 3, 10, 11, 12] {
//!         input.insert(v);
//!     }
//!     input.advance_to(1);
//!     input.flush();
//!     worker.step_while(|| probe.less_than(input.time()));
//! });
//! ```

use std::collections::HashMap;
use std::hash::Hash;

use differential_dataflow::{AsCollection, ExchangeData, Hashable, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;

use crate::time::Time;
use crate::views::Pending;

/// See the [module docs](self).
pub trait KeepFirst<'scope, D> {
    /// Keeps the first `k` values that arrive in each bucket; `bucket` gives a value's
    /// bucket and the time the bucket closes.
    fn keep_first<B, F>(self, name: &str, k: usize, bucket: F) -> VecCollection<'scope, Time, D>
    where
        B: Hash + Eq + Hashable<Output = u64> + 'static,
        F: Fn(&D) -> (B, Time) + 'static;
}

impl<'scope, D> KeepFirst<'scope, D> for VecCollection<'scope, Time, D>
where
    D: ExchangeData + Hash + Ord,
{
    fn keep_first<B, F>(self, name: &str, k: usize, bucket: F) -> VecCollection<'scope, Time, D>
    where
        B: Hash + Eq + Hashable<Output = u64> + 'static,
        F: Fn(&D) -> (B, Time) + 'static,
    {
        let bucket = std::rc::Rc::new(bucket);
        let route = bucket.clone();
        // All values of a bucket meet on one worker.
        let pact = Exchange::new(move |(d, _, _): &(D, Time, isize)| route(d).0.hashed());
        self.inner
            .unary_frontier::<CapacityContainerBuilder<Vec<(D, Time, isize)>>, _, _, _>(pact, name, move |_, _| {
                let mut pending: Pending<(D, isize)> = Pending::default();
                // Per open bucket: values kept so far, and when it closes.
                let mut counts: HashMap<B, (usize, Time)> = HashMap::new();
                // Kept values with their current counts.
                let mut kept: HashMap<D, isize> = HashMap::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        for (d, t, r) in data.drain(..) {
                            pending.push(&cap, t, (d, r));
                        }
                    });
                    // A time is decided once every update at it is here.
                    while let Some((cap, time, mut updates)) = pending.pop_ready(|t| !frontier.less_equal(t)) {
                        differential_dataflow::consolidation::consolidate(&mut updates);
                        let mut session = output.session(&cap);
                        for (d, r) in updates {
                            if let Some(count) = kept.get_mut(&d) {
                                *count += r;
                                if *count == 0 {
                                    kept.remove(&d);
                                }
                                session.give((d, time, r));
                                continue;
                            }
                            if r <= 0 {
                                // A value that was never kept leaves, or never arrived.
                                continue;
                            }
                            let (b, closes) = bucket(&d);
                            let slot = counts.entry(b).or_insert((0, closes));
                            if slot.0 < k {
                                slot.0 += 1;
                                kept.insert(d.clone(), r);
                                session.give((d, time, r));
                            }
                        }
                        counts.retain(|_, (_, closes)| *closes > time);
                    }
                    pending.settle();
                }
            })
            .as_collection()
    }
}
