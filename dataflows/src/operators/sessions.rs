//! `sessions`: each user's sessions, and the changes they make to the funnel's sums.
//!
//! Input: the valid events (insertions, expiries, corrections) at ingestion times.
//! Events are placed on the worker of their user ([`key_of`] the user id) and taken time
//! by time, in time order, once the frontier has passed a time. Per user the operator
//! keeps the user's live events in session order and the user's sessions; when a time
//! changes a user's events, it splits again the sessions the changes can have altered
//! (see `resessionize`; with [`sessionize`](crate::rows::sessionize), the function the
//! reference's sessions agree with) and emits what differs:
//!
//! - on one output, the `sessions` rows ([`SessionUpdates`]): the old rows retracted and
//!   the new ones inserted (a session that did not change emits nothing);
//! - on the other, the funnel's changes ([`FunnelChanges`]): for every funnel key
//!   ([`funnel_keys`]) of a changed session, the change of the key's [`FunnelAgg`] sums,
//!   with `unique_users` moving only when the number of the user's sessions under the key
//!   leaves or comes back to 0; summed over the time's users before it is emitted, and
//!   nothing when a session's change leaves its funnel keys and sums as they were (a page
//!   view added to it, say).
//!
//! Users are placed by the hash of their id and kept by the id itself: two ids that
//! share a hash are never merged. The output is on the user's worker, so the `sessions`
//! rows can be arranged by [`key_of`] the user id without another exchange.
//!
//! State: per user with live events, the events (a shared pointer and its sort key) and
//! the sessions; a user whose events have all left is forgotten.

use foldhash::HashMap;
use std::sync::Arc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::Stream;

use differential_dataflow::difference::{IsZero, Multiply, Semigroup};

use crate::event::{Event, Text};
use crate::dictionary::Dim;
use crate::rows::{funnel_keys, key_of, sessionize_reusing, Dimension, FunnelAgg, FunnelKey, SessionEvent, SessionRow, SESSION_GAP_MS};
use crate::time::{Granularity, Millis, Time};
use crate::views::{Earliest, Pending};

/// The `sessions` rows (key [`key_of`] the user id, the row shared with the operator's
/// own copy of the user's sessions) as differential updates.
pub type SessionUpdates<'scope> = Stream<'scope, Time, Vec<((u64, Arc<SessionRow>), Time, isize)>>;

/// The changes of the funnel's sums (each update's diff is the change).
pub type FunnelChanges<'scope> = Stream<'scope, Time, Vec<(FunnelKey, Time, FunnelAgg)>>;

/// See the [module docs](self).
pub trait Sessions<'scope> {
    /// The changes of the `sessions` rows, and of the funnel's sums.
    fn sessions(self) -> (SessionUpdates<'scope>, FunnelChanges<'scope>);
}

/// One user's live events (in session order, with their counts) and sessions.
#[derive(Default)]
struct User {
    events: Vec<(SessionEvent, isize)>,
    /// Sorted; each row shared with the `sessions` arrangement.
    sessions: Vec<Arc<SessionRow>>,
}

/// The sessions a time's changes can have changed, before (`old`, the positions of the
/// user's sessions) and after (`new`, split again from the events, which already hold
/// the changes): the shop sessions of every session id a changed event names, and every
/// derived session within [`SESSION_GAP_MS`] of a changed event without one, with the
/// derived sessions between them. A derived session farther from every change keeps
/// its events and the gaps around them, so it is the same before and after; a shop
/// session depends only on its own events. Both are in session order.
fn resessionize(user: &User, changed: &[(Arc<Event>, isize)]) -> (Vec<usize>, Vec<SessionRow>) {
    let ids: Vec<&str> = changed.iter().filter_map(|(e, _)| e.session_id()).collect();
    let loose: Vec<Millis> = changed.iter().filter(|(e, _)| e.session_id().is_none()).map(|(e, _)| e.event_ts).collect();
    let near = |s: &SessionRow| loose.iter().any(|t| s.start_ts - SESSION_GAP_MS <= *t && *t <= s.end_ts + SESSION_GAP_MS);
    // The span of event times whose derived sessions are split again.
    let span = loose.iter().map(|t| (*t, *t)).chain(user.sessions.iter().filter(|s| s.derived && near(s)).map(|s| (s.start_ts, s.end_ts))).reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)));
    let in_span = |s: &SessionRow| span.is_some_and(|(lo, hi)| s.start_ts <= hi && s.end_ts >= lo);
    let old: Vec<usize> = (0..user.sessions.len()).filter(|&i| {
        let s = &user.sessions[i];
        if s.derived { in_span(s) } else { ids.contains(&&*s.session_id) }
    }).collect();
    let subset: Vec<&SessionEvent> = user
        .events
        .iter()
        .filter(|(e, _)| match e.event.session_id() {
            Some(id) => ids.contains(&id),
            None => span.is_some_and(|(lo, hi)| lo <= e.event_ts && e.event_ts <= hi),
        })
        .flat_map(|(e, n)| std::iter::repeat_n(e, (*n).max(0) as usize))
        .collect();
    let earlier: Vec<&SessionRow> = old.iter().map(|&i| &*user.sessions[i]).collect();
    let mut new = sessionize_reusing(&subset, &earlier);
    new.sort();
    (old, new)
}

impl<'scope> Sessions<'scope> for Stream<'scope, Time, Vec<(Arc<Event>, Time, isize)>> {
    fn sessions(self) -> (SessionUpdates<'scope>, FunnelChanges<'scope>) {
        let pact = Exchange::new(|(e, _, _): &(Arc<Event>, Time, isize)| key_of(e.user_id()));
        let mut builder = OperatorBuilder::new("Sessions: by user, with the funnel's changes".to_owned(), self.scope());
        let mut input = builder.new_input(self, pact);
        let (rows_output, rows) = builder.new_output::<Vec<((u64, Arc<SessionRow>), Time, isize)>>();
        let (funnel_output, funnel_changes_out) = builder.new_output::<Vec<(FunnelKey, Time, FunnelAgg)>>();
        let mut rows_output = OutputBuilder::<_, CapacityContainerBuilder<_>>::from(rows_output);
        let mut funnel_output = OutputBuilder::<_, CapacityContainerBuilder<_>>::from(funnel_output);
        builder.build(move |_| {
            // Stashed by time behind a capability for the rows' output; `funnel_held` holds
            // the same time for the funnel's output.
            let mut pending: Pending<(Arc<Event>, isize)> = Pending::default();
            let mut funnel_held = Earliest::default();
            let mut users: HashMap<Text, User> = HashMap::default();
            // Emptied at every time, kept for its room.
            let mut funnel = FunnelSums::default();
            move |frontiers| {
                let frontier = &frontiers[0];
                input.for_each(|cap, data| {
                    for (e, t, r) in data.drain(..) {
                        funnel_held.hold(t, || cap.delayed(&t, 1));
                        pending.push(&cap, t, (e, r));
                    }
                });
                // Every time ready now, in time order; what they change goes out in one
                // message per output at the earliest one's capability (each update carries
                // its time).
                let mut first = None;
                let mut out: Vec<((u64, Arc<SessionRow>), Time, isize)> = Vec::new();
                let mut funnel_out: Vec<(FunnelKey, Time, FunnelAgg)> = Vec::new();
                while let Some((cap, time, mut changes)) = pending.pop_ready(|t| !frontier.less_equal(t)) {
                    first.get_or_insert_with(|| (cap, funnel_held.at(&time)));
                    // The time's changes user by user: apply all of a user's, then sessionize
                    // the user (a count may dip below zero between two changes of one time;
                    // only the counts once all are applied matter).
                    changes.sort_by(|(a, _), (b, _)| a.user_id().cmp(b.user_id()));
                    for changed in changes.chunk_by(|(a, _), (b, _)| a.user_id() == b.user_id()) {
                        let user_id = changed[0].0.user_id();
                        let key = key_of(user_id);
                        // Looked up by the borrowed id: the id is copied only for a new user.
                        let user = match users.get_mut(user_id) {
                            Some(user) => user,
                            None => users.entry(Text::from(user_id)).or_default(),
                        };
                        for (e, r) in changed {
                            apply(&mut user.events, SessionEvent::from(e), *r);
                        }
                        let (old, new) = resessionize(user, changed);
                        let (removed, added) = difference(&user.sessions, &old, &new);
                        {
                            let removed: Vec<&SessionRow> = removed.iter().map(|&i| &*user.sessions[i]).collect();
                            let added: Vec<&SessionRow> = added.iter().map(|&j| &new[j]).collect();
                            funnel_changes(&user.sessions, &removed, &added, &mut funnel);
                        }
                        // The removed rows leave the user's sessions into the output, and
                        // the added ones join them in order, a copy going out.
                        for &i in removed.iter().rev() {
                            out.push(((key, user.sessions.remove(i)), time, -1));
                        }
                        let mut new: Vec<Option<Arc<SessionRow>>> = new.into_iter().map(|s| Some(Arc::new(s))).collect();
                        // Most users have one session: no room beyond what they hold.
                        user.sessions.reserve_exact(added.len());
                        for &j in &added {
                            let row = new[j].take().expect("each added row once");
                            out.push(((key, row.clone()), time, 1));
                            let at = user.sessions.binary_search(&row).unwrap_or_else(|at| at);
                            user.sessions.insert(at, row);
                        }
                        if user.events.is_empty() {
                            users.remove(user_id);
                        }
                    }
                    funnel_out.extend(funnel.drain_changes().map(|(k, a)| (k, time, a)));
                }
                if let Some((rows_cap, funnel_cap)) = first {
                    rows_output.activate().session(&rows_cap).give_iterator(out.into_iter());
                    funnel_output.activate().session(&funnel_cap).give_iterator(funnel_out.into_iter());
                }
                pending.settle();
                funnel_held.settle(pending.first_time());
            }
        });
        (rows, funnel_changes_out)
    }
}

/// Adds `r` copies of `event` to a user's events, kept sorted and without zero counts.
/// The room grows by half at a time (most users hold a few events): amortized constant,
/// with less slack than doubling.
fn apply(events: &mut Vec<(SessionEvent, isize)>, event: SessionEvent, r: isize) {
    match events.binary_search_by(|(e, _)| e.cmp(&event)) {
        Ok(i) => {
            events[i].1 += r;
            if events[i].1 == 0 {
                events.remove(i);
            }
        }
        Err(i) => {
            if events.len() == events.capacity() {
                events.reserve_exact((events.len() / 2).max(1));
            }
            events.insert(i, (event, r))
        }
    }
}

/// Of the user's sessions at positions `old` and the rows `new` (both in session
/// order): the positions of those not in `new`, and the indices of the rows of `new`
/// not among them, each ascending.
fn difference(sessions: &[Arc<SessionRow>], old: &[usize], new: &[SessionRow]) -> (Vec<usize>, Vec<usize>) {
    let (mut removed, mut added) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i).map(|&at| &*sessions[at]), new.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                removed.push(old[i]);
                i += 1;
            }
            (Some(_), None) => {
                removed.push(old[i]);
                i += 1;
            }
            (_, Some(_)) => {
                added.push(j);
                j += 1;
            }
            (None, None) => unreachable!("the loop runs while one side has rows"),
        }
    }
    (removed, added)
}

/// What of a session the funnel sees: its windows, sums and dimension values.
fn funnel_part(s: &SessionRow) -> ([Millis; 3], FunnelAgg, [Option<Dim>; 4]) {
    (Granularity::ALL.map(|g| g.window_start(s.start_ts)), FunnelAgg::of_session(s), [s.country, s.device, s.utm_source, s.category])
}

/// Whether a session counts under a funnel key.
fn counts(key: &FunnelKey, s: &SessionRow) -> bool {
    key.granularity.window_start(s.start_ts) == key.window_start && (key.dimension == Dimension::All || key.dimension.value_of(s) == key.value)
}

/// The changes of one time's funnel sums, by key: hashed by the value's code, which is
/// the value within the process.
#[derive(Default)]
struct FunnelSums {
    /// Per (granularity, dimension, window start, code of the value): the value and the
    /// change.
    by_code: HashMap<(Granularity, Dimension, Millis, u32), (Dim, FunnelAgg)>,
}

impl FunnelSums {
    fn add(&mut self, key: &FunnelKey, delta: &FunnelAgg) {
        match self.by_code.entry((key.granularity, key.dimension, key.window_start, key.value.code())) {
            std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().1.plus_equals(delta),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert((key.value, *delta));
            }
        }
    }

    /// The non-zero changes, leaving none.
    fn drain_changes(&mut self) -> impl Iterator<Item = (FunnelKey, FunnelAgg)> + '_ {
        self.by_code
            .drain()
            .filter(|(_, (_, delta))| !delta.is_zero())
            .map(|((granularity, dimension, window_start, _), (value, delta))| (FunnelKey { granularity, window_start, dimension, value }, delta))
    }
}

/// Adds to `funnel` the changes of the funnel's sums when `removed` leave a user's
/// sessions `old` and `added` join them.
fn funnel_changes(old: &[Arc<SessionRow>], removed: &[&SessionRow], added: &[&SessionRow], funnel: &mut FunnelSums) {
    // The common case of a session that grew without changing what the funnel sees.
    if removed.len() == added.len() {
        let mut a: Vec<_> = removed.iter().map(|s| funnel_part(s)).collect();
        let mut b: Vec<_> = added.iter().map(|s| funnel_part(s)).collect();
        a.sort();
        b.sort();
        if a == b {
            return;
        }
        // One session that changed under the same keys: every key moves by the sums'
        // change, and no key gains or loses the user.
        if let ([(windows_a, agg_a, dims_a)], [(windows_b, agg_b, dims_b)]) = (&a[..], &b[..]) {
            if windows_a == windows_b && dims_a == dims_b {
                let mut change = *agg_b;
                change.plus_equals(&agg_a.multiply(&-1));
                for key in funnel_keys(added[0]) {
                    funnel.add(&key, &change);
                }
                return;
            }
        }
    }
    // Per key of a changed session: the sums' change, and the change in the number of
    // the user's sessions under it (a session's keys are distinct).
    let mut deltas: Vec<(FunnelKey, FunnelAgg, isize)> = Vec::with_capacity(15 * (removed.len() + added.len()));
    for (sessions, sign) in [(removed, -1isize), (added, 1)] {
        for s in sessions {
            let agg = FunnelAgg::of_session(s).multiply(&sign);
            deltas.extend(funnel_keys(s).map(|key| (key, agg, sign)));
        }
    }
    if removed.len() + added.len() > 1 {
        // Several sessions may share keys: sum each key's changes.
        deltas.sort_unstable_by_key(|d| d.0);
        deltas.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1.plus_equals(&later.1);
                kept.2 += later.2;
            }
            same
        });
    }
    for (key, mut sum, count) in deltas {
        if count != 0 {
            let before = old.iter().filter(|s| counts(&key, s)).count() as isize;
            let after = before + count;
            sum.unique_users = i64::from(after > 0) - i64::from(before > 0);
        }
        if !sum.is_zero() {
            funnel.add(&key, &sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use differential_dataflow::consolidation::consolidate;
    use differential_dataflow::input::Input;
    use proptest::prelude::*;
    use timely::dataflow::operators::{Inspect, Probe};

    use super::*;
    use crate::event::{EventType, NewEvent};
    use crate::rows::sessionize_users;

    /// An event of the random histories: few users, ids, times and dimension values, so
    /// that sessions merge, split, share keys and come back.
    fn event(n: u8, user: u8, ts: i64, kind: u8, session: Option<u8>, country: Option<u8>) -> Arc<Event> {
        let types = [EventType::PageView, EventType::ProductView, EventType::AddToCart, EventType::Checkout, EventType::Purchase];
        let (id, user, session) = (format!("e{n}"), format!("u{user}"), session.map(|s| format!("s{s}")));
        let mut e = NewEvent { event_id: &id, user_id: &user, session_id: session.as_deref(), ..NewEvent::default() }.build(types[kind as usize % types.len()], ts);
        e.country = country.map(|c| Dim::new(["DE", "FR"][c as usize % 2]));
        e.price_cents = (e.event_type == EventType::Purchase).then_some(1000 + i64::from(n));
        Arc::new(e)
    }

    /// The naive answer at one time: the sessions of the live events, user by user, and
    /// the funnel's sums with every user counted once per key.
    fn naive(live: &[(Arc<Event>, isize)]) -> (Vec<SessionRow>, BTreeMap<FunnelKey, FunnelAgg>) {
        let events: Vec<SessionEvent> = live.iter().flat_map(|(e, n)| std::iter::repeat_n(SessionEvent::from(e), (*n).max(0) as usize)).collect();
        let mut sorted: Vec<&SessionEvent> = events.iter().collect();
        sorted.sort();
        let mut sessions = sessionize_users(&sorted);
        sessions.sort();
        let mut funnel: BTreeMap<FunnelKey, FunnelAgg> = BTreeMap::new();
        let mut users: BTreeMap<FunnelKey, std::collections::BTreeSet<Text>> = BTreeMap::new();
        for s in &sessions {
            for key in funnel_keys(s) {
                funnel.entry(key).or_default().plus_equals(&FunnelAgg::of_session(s));
                users.entry(key).or_default().insert(s.user_id.clone());
            }
        }
        for (key, agg) in funnel.iter_mut() {
            agg.unique_users = users[key].len() as i64;
        }
        (sessions, funnel)
    }

    type Output = (Vec<(SessionRow, Time, isize)>, Vec<(FunnelKey, Time, FunnelAgg)>);

    /// Runs the operator on `workers` workers, worker `i` inserting the updates `i mod
    /// workers` (so times arrive out of order between workers).
    fn run(updates: Vec<(Time, Arc<Event>, isize)>, workers: usize) -> Output {
        let out: Arc<Mutex<Output>> = Arc::default();
        let sink = out.clone();
        let last = updates.iter().map(|(t, _, _)| *t).max().unwrap_or(0);
        let updates = Arc::new(updates);
        timely::execute(timely::Config::process(workers), move |worker| {
            let (sink, updates) = (sink.clone(), updates.clone());
            let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
                let (input, events) = scope.new_collection::<Arc<Event>, isize>();
                let (rows, funnel) = events.inner.sessions();
                let rows_sink = sink.clone();
                let rows = rows.inspect(move |((_, s), t, r)| rows_sink.lock().expect("no panics").0.push(((**s).clone(), *t, *r)));
                let funnel = funnel.inspect(move |(k, t, a)| sink.lock().expect("no panics").1.push((*k, *t, *a)));
                let probe = timely::dataflow::ProbeHandle::new();
                rows.probe_with(&probe);
                funnel.probe_with(&probe);
                (input, probe)
            });
            for (i, (t, e, r)) in updates.iter().enumerate() {
                if i % worker.peers() == worker.index() {
                    input.advance_to(*t);
                    input.update(e.clone(), *r);
                }
            }
            input.advance_to(last + 1);
            input.flush();
            worker.step_while(|| probe.less_than(&(last + 1)));
        })
        .expect("timely runs");
        let out = out.lock().expect("done");
        (out.0.clone(), out.1.clone())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// At every time, the sessions emitted so far are the naive sessions of the live
        /// events, and the funnel changes emitted so far sum to the naive funnel: with
        /// events inserted at one time and retracted at a later one (expiry, corrections),
        /// shop sessions and derived ones, and several workers.
        #[test]
        fn equals_the_naive_sessions_and_funnel(
            specs in prop::collection::vec((0u8..4, 0i64..8, 0u8..5, prop::option::of(0u8..2), prop::option::of(0u8..2), 0u64..6, prop::option::of(1u64..5)), 1..40),
            workers in 1usize..=3,
        ) {
            let mut updates = Vec::new();
            for (n, (user, slot, kind, session, country, at, stays)) in specs.into_iter().enumerate() {
                // Event times 20 minutes apart: derived sessions join and split (30 min gap).
                let e = event(n as u8, user, slot * 20 * 60 * 1000, kind, session, country);
                updates.push((at, e.clone(), 1));
                if let Some(stays) = stays {
                    updates.push((at + stays, e, -1));
                }
            }
            updates.sort_by_key(|(t, _, _)| *t);
            let (sessions, funnel) = run(updates.clone(), workers);
            let last = updates.iter().map(|(t, _, _)| *t).max().unwrap_or(0);
            for t in 0..=last {
                let mut live: Vec<(Arc<Event>, isize)> = updates.iter().filter(|(at, _, _)| *at <= t).map(|(_, e, r)| (e.clone(), *r)).collect();
                consolidate(&mut live);
                let (want_sessions, want_funnel) = naive(&live);
                let mut got: Vec<(SessionRow, isize)> = sessions.iter().filter(|(_, at, _)| *at <= t).map(|(s, _, r)| (s.clone(), *r)).collect();
                consolidate(&mut got);
                prop_assert!(got.iter().all(|(_, r)| *r == 1), "time {}: a session counted other than once: {:?}", t, got);
                let got: Vec<SessionRow> = got.into_iter().map(|(s, _)| s).collect();
                prop_assert_eq!(&got, &want_sessions, "sessions at time {}", t);
                let mut sums: BTreeMap<FunnelKey, FunnelAgg> = BTreeMap::new();
                for (k, _, a) in funnel.iter().filter(|(_, at, _)| *at <= t) {
                    sums.entry(*k).or_default().plus_equals(a);
                }
                sums.retain(|_, a| !a.is_zero());
                prop_assert_eq!(&sums, &want_funnel, "funnel at time {}", t);
            }
        }
    }
}
