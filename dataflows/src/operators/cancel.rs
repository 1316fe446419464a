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
//! - [`crate::operators::dedup`], keyed by the target's id: with each id's live kept
//!   delivery (which it keeps to tell duplicates) and the cancellers still waiting for a
//!   target, it emits a [`Bind`] when a pair meets, for kept and duplicate cancellers
//!   alike (a canceller's own fate is decided on its own id's worker);
//! - [`resolve`], on one worker: told which cancellers were kept, it leaves the other
//!   bindings out, and from the graph of every bound pair computes which deliveries are
//!   removed, emitting *corrections*: for a delivery removed at `t`, `-1` at `t` and `+1`
//!   at its expiry (where its own `-1` lands); for one restored at `t`, the opposite.
//!   Added to the kept deliveries, the corrections leave exactly the visible ones.
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
use crate::time::Time;
use crate::views::{pop_ready_pair, Pending};

/// A canceller and its target, bound at the later of their arrivals.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Bind {
    /// The delivery whose event names the other in `retracts`.
    pub canceller: Delivery,
    /// The kept delivery it cancels.
    pub target: Delivery,
}

/// A canceller, announced to the worker of its target's id (its event's `retracts`).
pub type Announcement = Delivery;

type Updates<'scope, D> = Stream<'scope, Time, Vec<(D, Time, isize)>>;

/// A delivery's identity: its id, arrival and position.
type NodeKey = (Text, Time, u64);

fn node_key(d: &Delivery) -> NodeKey {
    (Text::from(d.event.event_id()), d.ingest, d.position)
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

/// Corrections of the kept deliveries, from every [`Bind`] whose canceller is among the
/// `kept` cancellers (each at its arrival), on one worker: see the [module docs](self).
pub fn resolve<'scope>(binds: Updates<'scope, Bind>, kept: Updates<'scope, Delivery>) -> Updates<'scope, Arc<Event>> {
    let name = "Resolve: cancellations";
    binds.binary_frontier::<_, CapacityContainerBuilder<Vec<(Arc<Event>, Time, isize)>>, _, _, _, _>(kept, Exchange::new(|_| 0), Exchange::new(|_| 0), name, |_, _| {
        let mut pending: Pending<Bind> = Pending::default();
        let mut arrivals: Pending<Delivery> = Pending::default();
        // The kept cancellers, until they expire (a canceller binds only while live).
        let mut cancellers: HashMap<NodeKey, Time> = HashMap::new();
        let mut cancellers_by_expiry: BTreeMap<Time, Vec<NodeKey>> = BTreeMap::new();
        let mut graph = Graph::default();
        move |(input, frontier), (kept, kept_frontier), output| {
            input.for_each(|cap, data| {
                for (b, t, r) in data.drain(..) {
                    if r > 0 {
                        pending.push(&cap, t, b);
                    }
                }
            });
            kept.for_each(|cap, data| {
                for (d, t, r) in data.drain(..) {
                    if r > 0 {
                        arrivals.push(&cap, t, d);
                    }
                }
            });
            let complete = |t: &Time| !frontier.less_equal(t) && !kept_frontier.less_equal(t);
            while let Some((cap, time, mut binds, arrived)) = pop_ready_pair(&mut pending, &mut arrivals, complete) {
                while let Some(entry) = cancellers_by_expiry.first_entry() {
                    if *entry.key() > time {
                        break;
                    }
                    for key in entry.remove() {
                        cancellers.remove(&key);
                    }
                }
                for d in arrived {
                    let key = node_key(&d);
                    cancellers_by_expiry.entry(d.expiry).or_default().push(key.clone());
                    cancellers.insert(key, d.expiry);
                }
                // A duplicate canceller's binding is left out.
                binds.retain(|b| cancellers.contains_key(&node_key(&b.canceller)));
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
            arrivals.settle();
        }
    })
}
