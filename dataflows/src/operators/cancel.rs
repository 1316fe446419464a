//! Cancellations: which kept deliveries a `retracts` removes, chains of cancellations
//! included.
//!
//! A kept delivery `c` whose event names `retracts = y` *cancels* the kept delivery of
//! `y` that is live when `c` arrives, or, if none is, the first one to arrive while `c`
//! is live (a correction may come before what it corrects). That delivery is `c`'s
//! *target*; the pair is bound when both have arrived ([`Bind`]). A delivery is
//! *removed* while some canceller bound to it is not removed itself: a removed event has
//! no effect, so cancelling a cancellation restores its target. A cancellation stays in
//! force as long as its target matters (its target's expiry, or, for a target that
//! cancels in turn, as long as that one's cancellation is in force), even once the
//! canceller itself has expired. Where cancellations form a loop, the one that arrived
//! last (by ingestion time, then position) is void.
//!
//! Two operators do this:
//! - [`bind`], keyed by the target's id: it keeps each id's live kept delivery and the
//!   cancellers still waiting for a target, and emits a [`Bind`] when a pair meets;
//! - [`resolve`], on one worker: the graph of every bound pair, from which it computes
//!   which deliveries are removed, and emits *corrections*: for a delivery removed at
//!   `t`, `-1` at `t` and `+1` at its expiry (where its own `-1` lands); for one restored
//!   at `t`, the opposite. Added to the kept deliveries, the corrections leave exactly the
//!   visible ones.
//!
//! Statuses change only when a pair is bound: a removal lasts until the target no longer
//! matters, so nothing changes when a canceller expires. Cancellations are few; the
//! resolver holds only the deliveries that take part in one, until every delivery they
//! are bound with has expired.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;

use super::dedup::Delivery;
use crate::event::{Event, EventType, Text};
use crate::rows::key_of;
use crate::time::Time;
use crate::views::Pending;

/// A canceller and its target, bound at the later of their arrivals.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Bind {
    /// The delivery whose event names the other in `retracts`.
    pub canceller: Delivery,
    /// The kept delivery it cancels.
    pub target: Delivery,
}

/// A canceller announced to its target's id.
pub type Announcement = (Text, Delivery);

type Updates<'scope, D> = Stream<'scope, Time, Vec<(D, Time, isize)>>;

/// Binds cancellers to their targets: `kept` are the kept deliveries (at their arrival,
/// `+1` only), `announced` every kept canceller under its target's id (at its arrival).
pub fn bind<'scope>(kept: Updates<'scope, Delivery>, announced: Updates<'scope, Announcement>) -> Updates<'scope, Bind> {
    let by_id = Exchange::new(|(d, _, _): &(Delivery, Time, isize)| key_of(&d.event.event_id));
    let by_target = Exchange::new(|((target, _), _, _): &(Announcement, Time, isize)| key_of(target));
    kept.binary_frontier::<_, CapacityContainerBuilder<Vec<(Bind, Time, isize)>>, _, _, _, _>(announced, by_id, by_target, "Bind: cancellers to their targets", |_, _| {
        let mut deliveries: Pending<Delivery> = Pending::default();
        let mut announcements: Pending<Announcement> = Pending::default();
        // Per id: its live kept delivery, and cancellers waiting for one (until they expire).
        let mut live: foldhash::HashMap<Text, Delivery> = Default::default();
        let mut waiting: foldhash::HashMap<Text, Vec<Delivery>> = Default::default();
        let mut by_expiry: BTreeMap<Time, Vec<Text>> = BTreeMap::new();
        move |(kept, kept_frontier), (announced, announced_frontier), output| {
            kept.for_each(|cap, data| {
                for (d, t, r) in data.drain(..) {
                    if r > 0 {
                        deliveries.push(&cap, t, d);
                    }
                }
            });
            announced.for_each(|cap, data| {
                for (a, t, r) in data.drain(..) {
                    if r > 0 {
                        announcements.push(&cap, t, a);
                    }
                }
            });
            let complete = |t: &Time| !kept_frontier.less_equal(t) && !announced_frontier.less_equal(t);
            loop {
                // The earliest time either input has waiting, once both have passed it.
                let next = [deliveries.first_time(), announcements.first_time()].into_iter().flatten().min();
                let Some(time) = next.filter(complete) else { break };
                let (cap, mut arrived) = deliveries.pop_at(time);
                let (cap2, mut cancellers) = announcements.pop_at(time);
                let Some(cap) = cap.or(cap2) else { break };
                while let Some(entry) = by_expiry.first_entry() {
                    if *entry.key() > time {
                        break;
                    }
                    for id in entry.remove() {
                        if live.get(&id).is_some_and(|d| d.expiry <= time) {
                            live.remove(&id);
                        }
                        if let Some(w) = waiting.get_mut(&id) {
                            w.retain(|c| c.expiry > time);
                            if w.is_empty() {
                                waiting.remove(&id);
                            }
                        }
                    }
                }
                let mut binds = Vec::new();
                // Targets first: a canceller binds to a delivery that arrived at its time.
                arrived.sort();
                for d in arrived {
                    let id = d.event.event_id.clone();
                    if let Some(w) = waiting.remove(&id) {
                        binds.extend(w.into_iter().filter(|c| c.expiry > time).map(|canceller| Bind { canceller, target: d.clone() }));
                    }
                    by_expiry.entry(d.expiry).or_default().push(id.clone());
                    live.insert(id, d);
                }
                cancellers.sort_by(|(_, a), (_, b)| (a.ingest, a.position, &a.event).cmp(&(b.ingest, b.position, &b.event)));
                for (target, canceller) in cancellers {
                    match live.get(&target) {
                        Some(t) if t.expiry > time => binds.push(Bind { canceller, target: t.clone() }),
                        _ => {
                            by_expiry.entry(canceller.expiry).or_default().push(target.clone());
                            waiting.entry(target).or_default().push(canceller);
                        }
                    }
                }
                output.session(&cap).give_iterator(binds.into_iter().map(|b| (b, time, 1)));
            }
            deliveries.settle();
            announcements.settle();
        }
    })
}

/// A delivery's identity: its id, arrival and position.
type NodeKey = (Text, Time, u64);

fn node_key(d: &Delivery) -> NodeKey {
    (d.event.event_id.clone(), d.ingest, d.position)
}

/// A delivery in the resolver's graph.
struct Node {
    delivery: Delivery,
    /// The delivery this one cancels, if bound.
    target: Option<NodeKey>,
    /// Whether this one's cancellation is void (it closed a loop, arriving last).
    void: bool,
    /// The deliveries bound to this one as its cancellers.
    cancellers: Vec<NodeKey>,
    /// Whether it is removed, as last computed.
    removed: bool,
}

/// The graph of bound cancellations, and what it says.
#[derive(Default)]
struct Graph {
    nodes: HashMap<NodeKey, Node>,
    by_expiry: BTreeMap<Time, Vec<NodeKey>>,
}

impl Graph {
    fn ensure(&mut self, d: &Delivery) -> NodeKey {
        let key = node_key(d);
        if !self.nodes.contains_key(&key) {
            self.by_expiry.entry(d.expiry).or_default().push(key.clone());
            self.nodes.insert(key.clone(), Node { delivery: d.clone(), target: None, void: false, cancellers: Vec::new(), removed: false });
        }
        key
    }

    /// Adds a bound pair; returns the key of the canceller.
    fn add(&mut self, bind: &Bind) -> NodeKey {
        let c = self.ensure(&bind.canceller);
        let t = self.ensure(&bind.target);
        if self.nodes[&c].target.is_some() {
            // A canceller binds once; a second bind is a repeat.
            return c;
        }
        self.nodes.get_mut(&c).expect("ensured").target = Some(t.clone());
        self.nodes.get_mut(&t).expect("ensured").cancellers.push(c.clone());
        // A loop: following targets from `t` comes back to `c`. Its latest member's
        // cancellation is void.
        let mut cycle = vec![c.clone()];
        let mut at = Some(t);
        while let Some(k) = at {
            if k == c {
                let latest = cycle.iter().max_by_key(|k| (self.nodes[*k].delivery.ingest, self.nodes[*k].delivery.position, k.0.clone())).expect("not empty").clone();
                self.nodes.get_mut(&latest).expect("in the graph").void = true;
                break;
            }
            let node = &self.nodes[&k];
            if node.void || cycle.len() > self.nodes.len() {
                break;
            }
            cycle.push(k.clone());
            at = node.target.clone();
        }
        c
    }

    /// Every node connected to `start`.
    fn component(&self, start: &NodeKey) -> Vec<NodeKey> {
        let mut seen: BTreeSet<NodeKey> = BTreeSet::new();
        let mut stack = vec![start.clone()];
        while let Some(k) = stack.pop() {
            if !seen.insert(k.clone()) {
                continue;
            }
            let Some(node) = self.nodes.get(&k) else { continue };
            stack.extend(node.target.iter().cloned());
            stack.extend(node.cancellers.iter().cloned());
        }
        seen.into_iter().collect()
    }

    /// Whether `key` is removed: some canceller whose cancellation is not void is not
    /// removed itself. (With the void cancellations left out, the graph has no loops.)
    /// Worked out from the cancellers up, without recursion: chains may be long.
    fn removed(&self, key: &NodeKey, memo: &mut HashMap<NodeKey, bool>) -> bool {
        let mut stack: Vec<(NodeKey, bool)> = vec![(key.clone(), false)];
        while let Some((k, expanded)) = stack.pop() {
            if memo.contains_key(&k) {
                continue;
            }
            let node = &self.nodes[&k];
            let live: Vec<&NodeKey> = node.cancellers.iter().filter(|c| !self.nodes[*c].void).collect();
            if expanded {
                let removed = live.iter().any(|c| !memo[*c]);
                memo.insert(k, removed);
            } else {
                stack.push((k.clone(), true));
                stack.extend(live.into_iter().filter(|c| !memo.contains_key(*c)).map(|c| (c.clone(), false)));
            }
        }
        memo[key]
    }
}

/// Corrections of the kept deliveries, from every [`Bind`] (on one worker): see the
/// [module docs](self).
pub fn resolve<'scope>(binds: Updates<'scope, Bind>) -> Updates<'scope, Arc<Event>> {
    binds.unary_frontier::<CapacityContainerBuilder<Vec<(Arc<Event>, Time, isize)>>, _, _, _>(Exchange::new(|_| 0), "Resolve: cancellations", |_, _| {
        let mut pending: Pending<Bind> = Pending::default();
        let mut graph = Graph::default();
        move |(input, frontier), output| {
            input.for_each(|cap, data| {
                for (b, t, r) in data.drain(..) {
                    if r > 0 {
                        pending.push(&cap, t, b);
                    }
                }
            });
            while let Some((cap, time, mut binds)) = pending.pop_ready(|t| !frontier.less_equal(t)) {
                binds.sort();
                let touched: Vec<NodeKey> = binds.iter().map(|b| graph.add(b)).collect();
                let mut memo = HashMap::new();
                let mut changed: Vec<NodeKey> = Vec::new();
                let mut done: BTreeSet<NodeKey> = BTreeSet::new();
                for start in touched {
                    for key in graph.component(&start) {
                        if !done.insert(key.clone()) {
                            continue;
                        }
                        let removed = graph.removed(&key, &mut memo);
                        let node = graph.nodes.get_mut(&key).expect("in the graph");
                        if node.removed != removed {
                            node.removed = removed;
                            changed.push(key);
                        }
                    }
                }
                // The correction now and its undoing at the delivery's expiry, both given
                // now (`hold_future` downstream releases the later one when due).
                let mut out: Vec<(Arc<Event>, Time, isize)> = Vec::new();
                for key in changed {
                    let node = &graph.nodes[&key];
                    let d = &node.delivery;
                    if d.event.event_type == EventType::Retraction || d.expiry <= time {
                        continue;
                    }
                    let sign = if node.removed { -1 } else { 1 };
                    out.push((d.event.clone(), time, sign));
                    out.push((d.event.clone(), d.expiry, -sign));
                }
                output.session(&cap).give_iterator(out.into_iter());
                // Forget what no longer matters: components whose every delivery expired.
                let expired: Vec<NodeKey> = {
                    let mut keys = Vec::new();
                    while let Some(entry) = graph.by_expiry.first_entry() {
                        if *entry.key() > time {
                            break;
                        }
                        keys.extend(entry.remove());
                    }
                    keys
                };
                for key in expired {
                    if !graph.nodes.contains_key(&key) {
                        continue;
                    }
                    let component = graph.component(&key);
                    if component.iter().all(|k| graph.nodes.get(k).is_none_or(|n| n.delivery.expiry <= time)) {
                        for k in component {
                            graph.nodes.remove(&k);
                        }
                    } else {
                        // Looked at again once the last of its deliveries has expired.
                        let last = component.iter().filter_map(|k| graph.nodes.get(k)).map(|n| n.delivery.expiry).max().expect("not empty");
                        graph.by_expiry.entry(last).or_default().push(key);
                    }
                }
            }
            pending.settle();
        }
    })
}
