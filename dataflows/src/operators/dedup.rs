//! `dedup`: of the deliveries of each `event_id`, which are kept and which are
//! duplicates, decided once, when each arrives.
//!
//! Deliveries arrive in the order of (ingestion time, position). A delivery is *kept* if
//! no kept delivery of its id is live when it arrives (a kept delivery is live from its
//! arrival until its expiry); otherwise it is a *duplicate*, and stays one. Identical
//! copies of one record at one time are one delivery kept and the rest duplicates.
//!
//! Output, all at once when a time completes, in one message at that time (the future
//! updates too, with their own times, for `hold_future` in [`crate::views`] to release
//! when due):
//! - `Ok(delivery)`: `+1` at its arrival, `-1` at its expiry, for every kept delivery;
//! - `Err(reject)`: `+1` at the arrival, `-1` one retention period later, for every
//!   duplicate (a `duplicate` reject, its bytes the delivery's canonical JSON).
//!
//! State: per id, the expiry of its live kept delivery (by the real id: ids that share a
//! hash are never merged), forgotten once it has passed.
//!
//! ```
//! use std::sync::Arc;
//! use differential_dataflow::input::Input;
//! use timely::dataflow::operators::{Inspect, Probe};
//! use tidemark_dataflows::event::{Event, EventType};
//! use tidemark_dataflows::operators::dedup::{Dedup, Delivery};
//!
//! timely::execute_directly(|worker| {
//!     let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
//!         let (input, deliveries) = scope.new_collection::<Delivery, isize>();
//!         let kept = deliveries.inner.dedup(|t| t + 100).inspect(|(outcome, time, diff)| {
//!             match outcome {
//!                 Ok(d) => assert_eq!(d.position, 1, "the first delivery is kept ({time}, {diff})"),
//!                 Err(reject) => assert_eq!(reject.position, 2, "the second is a duplicate"),
//!             }
//!         });
//!         (input, kept.probe().0)
//!     });
//!     let event = Arc::new(Event::new("x", EventType::PageView, 0, "u"));
//!     input.insert(Delivery { ingest: 0, position: 1, expiry: 50, event: event.clone() });
//!     input.insert(Delivery { ingest: 0, position: 2, expiry: 50, event });
//!     input.advance_to(1);
//!     input.flush();
//!     worker.step_while(|| probe.less_than(input.time()));
//! });
//! ```

use std::collections::BTreeMap;

use foldhash::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;

use crate::decode::{duplicate_reject, Reject};
use crate::event::{Event, Text};
use crate::rows::key_of;
use crate::time::Time;
use crate::views::Pending;

/// An accepted event as it arrived: when, where in its source, and when it leaves.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Delivery {
    /// Its ingestion time.
    pub ingest: Time,
    /// Its position in its source: deliveries of one time arrive in position order.
    pub position: u64,
    /// The ingestion time at which it leaves the views (its event time plus retention).
    pub expiry: Time,
    /// The event (shared: deliveries are copied into several places).
    pub event: Arc<Event>,
}

/// What dedup says of a delivery, with its time and diff.
pub type Outcome = (Result<Delivery, Reject>, Time, isize);

/// See the [module docs](self).
pub trait Dedup<'scope> {
    /// Kept deliveries and duplicate rejects; a duplicate arriving at `t` leaves the
    /// views at `reject_expiry(t)`.
    fn dedup(self, reject_expiry: impl Fn(Time) -> Time + 'static) -> Stream<'scope, Time, Vec<Outcome>>;
}

impl<'scope> Dedup<'scope> for Stream<'scope, Time, Vec<(Delivery, Time, isize)>> {
    fn dedup(self, reject_expiry: impl Fn(Time) -> Time + 'static) -> Stream<'scope, Time, Vec<Outcome>> {
        let pact = Exchange::new(|(d, _, _): &(Delivery, Time, isize)| key_of(&d.event.event_id));
        self.unary_frontier::<CapacityContainerBuilder<Vec<Outcome>>, _, _, _>(pact, "Dedup: deliveries by event_id, at arrival", move |_, _| {
            let mut pending: Pending<(Delivery, isize)> = Pending::default();
            // The live kept delivery's expiry per id, and the ids by expiry.
            let mut kept: HashMap<Text, Time> = HashMap::default();
            let mut by_expiry: BTreeMap<Time, Vec<Text>> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    for (d, t, r) in data.drain(..) {
                        pending.push(&cap, t, (d, r));
                    }
                });
                while let Some((cap, time, mut deliveries)) = pending.pop_ready(|t| !frontier.less_equal(t)) {
                    // Forget kept deliveries that have expired by now.
                    while let Some(entry) = by_expiry.first_entry() {
                        if *entry.key() > time {
                            break;
                        }
                        for id in entry.remove() {
                            if kept.get(&id).is_some_and(|e| *e <= time) {
                                kept.remove(&id);
                            }
                        }
                    }
                    // Arrival order within one time: position, then content.
                    deliveries.sort_by(|(a, _), (b, _)| (a.position, &a.event).cmp(&(b.position, &b.event)));
                    differential_dataflow::consolidation::consolidate(&mut deliveries);
                    // Arrivals at `time`, and each one's leaving at its own later time: all
                    // given now, for `hold_future` downstream to release when due.
                    let mut out: Vec<Outcome> = Vec::new();
                    for (d, copies) in deliveries {
                        debug_assert!(copies > 0, "deliveries only arrive");
                        if copies <= 0 {
                            continue;
                        }
                        let id = &d.event.event_id;
                        let mut duplicates = copies;
                        if kept.get(id).is_none_or(|expiry| *expiry <= time) {
                            kept.insert(id.clone(), d.expiry);
                            by_expiry.entry(d.expiry).or_default().push(id.clone());
                            out.push((Ok(d.clone()), d.expiry, -1));
                            out.push((Ok(d.clone()), time, 1));
                            duplicates -= 1;
                        }
                        if duplicates > 0 {
                            let reject = duplicate_reject(d.ingest, d.position, &d.event);
                            let leaves = reject_expiry(time).max(time + 1);
                            out.push((Err(reject.clone()), leaves, -duplicates));
                            out.push((Err(reject), time, duplicates));
                        }
                    }
                    output.session(&cap).give_iterator(out.into_iter());
                }
                pending.settle();
            }
        })
    }
}
