//! `dedup`: of the deliveries of each `event_id`, which are kept and which are
//! duplicates, decided once, when each arrives; and, with the same per-id state, which
//! kept delivery each cancellation is bound to (see [`crate::operators::cancel`]).
//!
//! Deliveries arrive in the order of (ingestion time, position). A delivery is *kept* if
//! no kept delivery of its id is live when it arrives (a kept delivery is live from its
//! arrival until its expiry); otherwise it is a *duplicate*, and stays one. Identical
//! copies of one record at one time are one delivery kept and the rest duplicates.
//!
//! The second input announces every delivery whose event names `retracts = y` to the
//! worker of `y`, before its own fate is known. A canceller is bound to the kept delivery
//! of `y` that is live when it arrives, or, if none is, to the first one kept while the
//! canceller is live (at one time, the deliveries kept at that time first). Duplicate
//! cancellers are bound too: the resolver, which learns which cancellers were kept,
//! leaves their bindings out.
//!
//! Output, all at once when a time completes, in one message at that time:
//! - [`Decision::Kept`]: `+1` at its arrival, and `-1` at its expiry, for every kept
//!   delivery: the operator holds a capability for the earliest expiry of the deliveries
//!   it keeps, and emits each one's leaving when that time completes (the kept delivery
//!   is in its state until then anyway);
//! - [`Decision::Duplicate`]: `+1` at the arrival, `-1` one retention period later (given
//!   with the arrival, with its own time, for `hold_future` in [`crate::views`] to release
//!   when due), for every duplicate (a `duplicate` reject, its bytes the delivery's
//!   canonical JSON);
//! - [`Decision::Bound`]: `+1` at the time a canceller and its target meet.
//!
//! State: per id, its live kept delivery and the cancellers waiting for one (by the real
//! id: ids that share a hash are never merged), each forgotten once it has expired. A
//! kept delivery is found by its event's own id, which it holds: no copy of the id.
//!
//! ```
//! use std::sync::Arc;
//! use differential_dataflow::input::Input;
//! use timely::dataflow::operators::{Inspect, Probe};
//! use tidemark_dataflows::event::{Event, EventType};
//! use tidemark_dataflows::operators::cancel::Announcement;
//! use tidemark_dataflows::operators::dedup::{Decision, Dedup, Delivery};
//!
//! timely::execute_directly(|worker| {
//!     let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
//!         let (input, deliveries) = scope.new_collection::<Delivery, isize>();
//!         let (_, announced) = scope.new_collection::<Announcement, isize>();
//!         let kept = deliveries.inner.dedup(announced.inner, |t| t + 100).inspect(|(decision, time, diff)| {
//!             match decision {
//!                 Decision::Kept(d) => assert_eq!(d.position, 1, "the first delivery is kept ({time}, {diff})"),
//!                 Decision::Duplicate(reject) => assert_eq!(reject.position, 2, "the second is a duplicate"),
//!                 Decision::Bound(_) => panic!("nothing cancels"),
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

use foldhash::{HashMap, HashSet};
use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use super::cancel::{Announcement, Bind};
use crate::decode::{duplicate_reject, Reject};
use crate::event::{Event, Text};
use crate::rows::key_of;
use crate::time::Time;
use crate::views::{pop_ready_pair, Earliest, Pending};

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

/// A kept delivery in dedup's state, found by its event's id (equal and hashed as the
/// id alone, so that a set of them is a map from ids).
struct ById(Delivery);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.event.event_id() == other.0.event.event_id()
    }
}

impl Eq for ById {}

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.event.event_id().hash(state)
    }
}

impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        self.0.event.event_id()
    }
}

/// What dedup says of a delivery, or of a canceller and its target.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Decision {
    /// A kept delivery.
    Kept(Delivery),
    /// A duplicate.
    Duplicate(Reject),
    /// A canceller (kept or a duplicate) bound to its target.
    Bound(Bind),
}

type Updates<'scope, D> = Stream<'scope, Time, Vec<(D, Time, isize)>>;

/// See the [module docs](self).
pub trait Dedup<'scope> {
    /// Kept deliveries, duplicate rejects and bindings of the cancellers `announced` (each
    /// under its target's id, at its arrival); a duplicate arriving at `t` leaves the
    /// views at `reject_expiry(t)`.
    fn dedup(self, announced: Updates<'scope, Announcement>, reject_expiry: impl Fn(Time) -> Time + 'static) -> Updates<'scope, Decision>;
}

impl<'scope> Dedup<'scope> for Updates<'scope, Delivery> {
    fn dedup(self, announced: Updates<'scope, Announcement>, reject_expiry: impl Fn(Time) -> Time + 'static) -> Updates<'scope, Decision> {
        let by_id = Exchange::new(|(d, _, _): &(Delivery, Time, isize)| key_of(d.event.event_id()));
        let by_target = Exchange::new(|(canceller, _, _): &(Announcement, Time, isize)| key_of(canceller.event.retracts().unwrap_or_default()));
        let name = "Dedup: deliveries by event_id, at arrival, and cancellers bound";
        self.binary_frontier::<_, CapacityContainerBuilder<Vec<(Decision, Time, isize)>>, _, _, _, _>(announced, by_id, by_target, name, move |_, _| {
            let mut deliveries: Pending<(Delivery, isize)> = Pending::default();
            let mut announcements: Pending<Announcement> = Pending::default();
            // Per id: its live kept delivery, and cancellers waiting for one; the kept
            // events and the waited-for ids by the expiry of each.
            let mut kept: HashSet<ById> = HashSet::default();
            let mut waiting: HashMap<Text, Vec<Delivery>> = HashMap::default();
            let mut kept_by_expiry: BTreeMap<Time, Vec<Arc<Event>>> = BTreeMap::new();
            let mut waiting_by_expiry: BTreeMap<Time, Vec<Text>> = BTreeMap::new();
            // A capability at the earliest time in `kept_by_expiry`, to emit each kept
            // delivery's leaving at its expiry.
            let mut expiring = Earliest::default();
            move |(input, frontier), (announced, announced_frontier), output| {
                input.for_each(|cap, data| {
                    for (d, t, r) in data.drain(..) {
                        deliveries.push(&cap, t, (d, r));
                    }
                });
                announced.for_each(|cap, data| {
                    for (a, t, r) in data.drain(..) {
                        if r > 0 {
                            announcements.push(&cap, t, a);
                        }
                    }
                });
                let complete = |t: &Time| !frontier.less_equal(t) && !announced_frontier.less_equal(t);
                // Every time ready now, in time order (the times of arrivals and of kept
                // deliveries' expiries); the decisions go out in one message at the earliest
                // one's capability (each carries its time).
                let mut first: Option<Capability<Time>> = None;
                let mut out: Vec<(Decision, Time, isize)> = Vec::new();
                loop {
                    let next_expiry = kept_by_expiry.first_key_value().map(|(t, _)| *t);
                    let next_arrival = [deliveries.first_time(), announcements.first_time()].into_iter().flatten().min();
                    let Some(time) = [next_expiry, next_arrival].into_iter().flatten().min().filter(|t| complete(t)) else { break };
                    let (cap, mut arrived, mut cancellers) = if next_arrival == Some(time) {
                        let (cap, _, arrived, cancellers) = pop_ready_pair(&mut deliveries, &mut announcements, complete).expect("arrivals at a complete time");
                        (cap, arrived, cancellers)
                    } else {
                        (expiring.at(&time), Vec::new(), Vec::new())
                    };
                    if first.is_none() {
                        first = Some(cap.clone());
                    }
                    // Kept deliveries that expire now leave (emitted now, at their expiry),
                    // and waiting cancellers that have expired are forgotten.
                    if next_expiry == Some(time) {
                        for event in kept_by_expiry.remove(&time).expect("the first expiry") {
                            if kept.get(event.event_id()).is_some_and(|k| Arc::ptr_eq(&k.0.event, &event)) {
                                let gone = kept.take(event.event_id()).expect("found just now");
                                out.push((Decision::Kept(gone.0), time, -1));
                            }
                        }
                    }
                    while let Some(entry) = waiting_by_expiry.first_entry() {
                        if *entry.key() > time {
                            break;
                        }
                        for id in entry.remove() {
                            if let Some(w) = waiting.get_mut(&id) {
                                w.retain(|c| c.expiry > time);
                                if w.is_empty() {
                                    waiting.remove(&id);
                                }
                            }
                        }
                    }
                    // Arrival order within one time: position, then content.
                    arrived.sort_by(|(a, _), (b, _)| (a.position, &a.event).cmp(&(b.position, &b.event)));
                    differential_dataflow::consolidation::consolidate(&mut arrived);
                    // Arrivals at `time`, and each one's leaving at its own later time: all
                    // given now, for `hold_future` downstream to release when due.
                    for (d, copies) in arrived {
                        debug_assert!(copies > 0, "deliveries only arrive");
                        if copies <= 0 {
                            continue;
                        }
                        let id = d.event.event_id();
                        let mut duplicates = copies;
                        if kept.get(id).is_none_or(|k| k.0.expiry <= time) {
                            // Kept: cancellers waiting for it are bound to it now.
                            if let Some(w) = waiting.remove(id) {
                                out.extend(w.into_iter().filter(|c| c.expiry > time).map(|canceller| (Decision::Bound(Bind { canceller, target: d.clone() }), time, 1)));
                            }
                            kept_by_expiry.entry(d.expiry).or_default().push(d.event.clone());
                            expiring.hold(d.expiry, || cap.delayed(&d.expiry));
                            out.push((Decision::Kept(d.clone()), time, 1));
                            duplicates -= 1;
                            kept.replace(ById(d.clone()));
                        }
                        if duplicates > 0 {
                            let reject = duplicate_reject(d.ingest, d.position, &d.event);
                            let leaves = reject_expiry(time).max(time + 1);
                            out.push((Decision::Duplicate(reject.clone()), leaves, -duplicates));
                            out.push((Decision::Duplicate(reject), time, duplicates));
                        }
                    }
                    // Then the cancellers of this time, in arrival order.
                    cancellers.sort_by(|a, b| (a.ingest, a.position, &a.event).cmp(&(b.ingest, b.position, &b.event)));
                    for canceller in cancellers {
                        let target = canceller.event.retracts().unwrap_or_default();
                        match kept.get(target) {
                            Some(t) if t.0.expiry > time => out.push((Decision::Bound(Bind { canceller, target: t.0.clone() }), time, 1)),
                            _ => {
                                let target = Text::from(target);
                                waiting_by_expiry.entry(canceller.expiry).or_default().push(target.clone());
                                waiting.entry(target).or_default().push(canceller);
                            }
                        }
                    }
                }
                if let Some(cap) = first {
                    output.session(&cap).give_iterator(out.into_iter());
                }
                deliveries.settle();
                announcements.settle();
                expiring.settle(kept_by_expiry.first_key_value().map(|(t, _)| *t));
            }
        })
    }
}
