//! `funnel_sums`: the funnel's sums by key, from the changes of the `sessions` view.
//!
//! A session counts under each of its keys ([`funnel_keys`]) with its sums
//! ([`FunnelAgg::of_session`]); a user counts once under a key when any of the user's
//! sessions does. This operator keeps, per user, how many of the user's live sessions
//! count under each key, so that `unique_users` moves only when that number leaves or
//! comes back to 0, and nets every change of one time by key before emitting it: a
//! session replaced by one with the same sums (a page view added, say) emits nothing.
//! The output's diffs are [`FunnelAgg`]s, for `count_total` to sum into the view.
//!
//! Changes are taken time by time, in time order, once the input frontier has passed a
//! time. Users are placed by the hash of their id and counted by the id itself: two ids
//! that share a hash are never merged.
//!
//! State: per user with live sessions, one count per key (a few dozen bytes per key),
//! where an arrangement of every user's contribution would hold whole rows.

use std::collections::HashMap;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;

use differential_dataflow::difference::Multiply;

use crate::event::Text;
use crate::rows::{funnel_keys, key_of, FunnelAgg, FunnelKey, SessionRow};
use crate::time::Time;
use crate::views::Pending;

/// See the [module docs](self).
pub trait FunnelSums<'scope> {
    /// The changes of the funnel's sums, by key, with the sums as the diff.
    fn funnel_sums(self) -> Stream<'scope, Time, Vec<(FunnelKey, Time, FunnelAgg)>>;
}

impl<'scope> FunnelSums<'scope> for Stream<'scope, Time, Vec<(SessionRow, Time, isize)>> {
    fn funnel_sums(self) -> Stream<'scope, Time, Vec<(FunnelKey, Time, FunnelAgg)>> {
        let pact = Exchange::new(|(s, _, _): &(SessionRow, Time, isize)| key_of(&s.user_id));
        self.unary_frontier::<CapacityContainerBuilder<Vec<(FunnelKey, Time, FunnelAgg)>>, _, _, _>(pact, "Funnel: sums by key", |_, _| {
            let mut pending: Pending<(SessionRow, isize)> = Pending::default();
            // Per user: how many live sessions count under each key.
            let mut counts: HashMap<Text, Vec<(FunnelKey, isize)>> = HashMap::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    for (s, t, r) in data.drain(..) {
                        pending.push(&cap, t, (s, r));
                    }
                });
                while let Some((cap, time, mut changes)) = pending.pop_ready(|t| !frontier.less_equal(t)) {
                    // Insertions first: a session replaced by another under the same keys
                    // then never takes its user's count through 0.
                    changes.sort_by_key(|(_, r)| std::cmp::Reverse(*r));
                    let mut sums: Vec<(FunnelKey, FunnelAgg)> = Vec::with_capacity(changes.len() * 15);
                    for (s, r) in changes {
                        let agg = FunnelAgg::of_session(&s).multiply(&r);
                        let keys = counts.entry(s.user_id.clone()).or_default();
                        for key in funnel_keys(&s) {
                            let mut delta = agg;
                            let slot = match keys.iter().position(|(k, _)| *k == key) {
                                Some(i) => i,
                                None => {
                                    keys.push((key.clone(), 0));
                                    keys.len() - 1
                                }
                            };
                            let before = keys[slot].1;
                            let after = before + r;
                            debug_assert!(after >= 0, "a user's sessions under a key never go negative");
                            delta.unique_users = i64::from(after > 0) - i64::from(before > 0);
                            if after == 0 {
                                keys.swap_remove(slot);
                            } else {
                                keys[slot].1 = after;
                            }
                            sums.push((key, delta));
                        }
                        if keys.is_empty() {
                            counts.remove(&s.user_id);
                        }
                    }
                    differential_dataflow::consolidation::consolidate(&mut sums);
                    output.session(&cap).give_iterator(sums.into_iter().map(|(key, agg)| (key, time, agg)));
                }
                pending.settle();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use differential_dataflow::input::Input;
    use timely::dataflow::operators::{Inspect, Probe};

    use super::*;
    use crate::event::{Event, EventType, Geo};
    use crate::rows::{sessionize, Dimension, SessionEvent, SessionRow};
    use crate::time::Granularity;

    /// The session of one page view of `user` in shop session `id`.
    fn session(user: &str, id: &str, start: i64, country: Option<&str>) -> SessionRow {
        let mut event = Event::new(&format!("{user}-{id}-{start}"), EventType::PageView, start, user);
        event.session_id = Some(Text::from(id));
        event.geo = country.map(|c| Geo { country: Some(Text::from(c)), city: None, lat_e6: None, lon_e6: None });
        let event = SessionEvent::from(&Arc::new(event));
        sessionize(&[&event]).remove(0)
    }

    /// Runs the operator over `(time, session, diff)` changes on two workers; the users
    /// counted under the `all` day key and under `country = DE` (day), as of each time,
    /// and how many updates each time emitted.
    fn run(changes: Vec<(Time, SessionRow, isize)>) -> Vec<(Time, i64, i64, usize)> {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let last = changes.iter().map(|(t, _, _)| *t).max().unwrap_or(0);
        timely::execute(timely::Config::process(2), move |worker| {
            let sink = sink.clone();
            let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
                let (input, sessions) = scope.new_collection::<SessionRow, isize>();
                let probe = sessions
                    .inner
                    .funnel_sums()
                    .inspect(move |(k, t, agg)| {
                        if k.granularity == Granularity::Day {
                            sink.lock().expect("no panics").push((k.dimension, k.value.to_string(), *t, agg.unique_users));
                        }
                    })
                    .probe()
                    .0;
                (input, probe)
            });
            if worker.index() == 0 {
                for (t, s, d) in &changes {
                    input.advance_to(*t);
                    input.update(s.clone(), *d);
                }
            }
            input.advance_to(last + 1);
            input.flush();
            worker.step_while(|| probe.less_than(&(last + 1)));
        })
        .expect("timely runs");
        let updates = out.lock().expect("done").clone();
        (0..=last)
            .map(|t| {
                let count = |dim: Dimension, value: &str| updates.iter().filter(|(d, v, at, _)| *d == dim && v == value && *at <= t).map(|(_, _, _, d)| *d).sum();
                (t, count(Dimension::All, "all"), count(Dimension::Country, "DE"), updates.iter().filter(|(_, _, at, _)| *at == t).count())
            })
            .collect()
    }

    #[test]
    fn counts_each_user_once_per_key_and_nets_each_time() {
        let day = 0;
        let changes = vec![
            // Two users with equal sessions count twice.
            (1, session("a", "s1", day, Some("DE")), 1),
            (1, session("b", "s1", day, Some("DE")), 1),
            // a's second session under the same keys adds no user.
            (2, session("a", "s2", day + 1, Some("FR")), 1),
            // A session replaced at one time by one with the same keys changes nothing.
            (3, session("b", "s1", day, Some("DE")), -1),
            (3, session("b", "s1", day + 5, Some("DE")), 1),
            // a's DE session ends: a still counts under all (s2), no longer under DE.
            (4, session("a", "s1", day, Some("DE")), -1),
            // Every session gone.
            (5, session("a", "s2", day + 1, Some("FR")), -1),
            (5, session("b", "s1", day + 5, Some("DE")), -1),
        ];
        let seen = run(changes);
        let users: Vec<(Time, i64, i64)> = seen.iter().map(|(t, all, de, _)| (*t, *all, *de)).collect();
        assert_eq!(users, vec![(0, 0, 0), (1, 2, 2), (2, 2, 2), (3, 2, 2), (4, 2, 1), (5, 0, 0)]);
        // The replaced session of time 3 has the same keys and sums: nothing is emitted.
        assert_eq!(seen[3].3, 0, "{seen:?}");
    }
}
