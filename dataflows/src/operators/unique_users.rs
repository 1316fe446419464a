//! `unique_users`: the funnel's distinct users, from the changes of the `sessions` view.
//!
//! A funnel row counts a user once when any of the user's sessions counts under its key
//! ([`funnel_keys`]). This operator keeps, per user, how many of the user's live sessions
//! count under each key, and emits `+key` when that number leaves 0 and `-key` when it
//! comes back to 0: the `unique_users` part of the funnel, as updates of keys.
//!
//! Session changes are taken time by time, in time order, once the input frontier has
//! passed a time; all changes of one time are netted before anything is emitted, so a
//! session replaced by another with the same keys emits nothing. Users are placed by the
//! hash of their id, and counted by the id itself: two ids that share a hash are never
//! merged.
//!
//! State: per user with live sessions, one count per key (a few dozen bytes per key),
//! instead of an arrangement of every user's whole contribution.

use std::collections::HashMap;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;

use crate::event::Text;
use crate::rows::{funnel_keys, key_of, FunnelKey, SessionRow};
use crate::time::Time;
use crate::views::Pending;

/// See the [module docs](self).
pub trait UniqueUsers<'scope> {
    /// The keys under which a user starts (`+1`) or stops (`-1`) being counted.
    fn unique_users(self) -> Stream<'scope, Time, Vec<(FunnelKey, Time, isize)>>;
}

impl<'scope> UniqueUsers<'scope> for Stream<'scope, Time, Vec<(SessionRow, Time, isize)>> {
    fn unique_users(self) -> Stream<'scope, Time, Vec<(FunnelKey, Time, isize)>> {
        let pact = Exchange::new(|(s, _, _): &(SessionRow, Time, isize)| key_of(&s.user_id));
        self.unary_frontier::<CapacityContainerBuilder<Vec<(FunnelKey, Time, isize)>>, _, _, _>(pact, "Funnel: unique users by key", |_, _| {
            let mut pending: Pending<(SessionRow, isize)> = Pending::default();
            // Per user: how many live sessions count under each key.
            let mut counts: HashMap<Text, Vec<(FunnelKey, isize)>> = HashMap::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    for (s, t, r) in data.drain(..) {
                        pending.push(&cap, t, (s, r));
                    }
                });
                while let Some((cap, time, changes)) = pending.pop_ready(|t| !frontier.less_equal(t)) {
                    // Net change per (user, key) at this time.
                    let mut net: HashMap<(Text, FunnelKey), isize> = HashMap::new();
                    for (s, r) in &changes {
                        for key in funnel_keys(s) {
                            *net.entry((s.user_id.clone(), key)).or_insert(0) += r;
                        }
                    }
                    let mut session = output.session(&cap);
                    for ((user, key), change) in net {
                        if change == 0 {
                            continue;
                        }
                        let keys = counts.entry(user.clone()).or_default();
                        let slot = match keys.iter().position(|(k, _)| *k == key) {
                            Some(i) => i,
                            None => {
                                keys.push((key.clone(), 0));
                                keys.len() - 1
                            }
                        };
                        let before = keys[slot].1;
                        let after = before + change;
                        debug_assert!(after >= 0, "a user's sessions under a key never go negative");
                        if before <= 0 && after > 0 {
                            session.give((key, time, 1));
                        } else if before > 0 && after <= 0 {
                            session.give((key, time, -1));
                        }
                        if after == 0 {
                            keys.swap_remove(slot);
                            if keys.is_empty() {
                                counts.remove(&user);
                            }
                        } else {
                            keys[slot].1 = after;
                        }
                    }
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
    use crate::rows::{Dimension, SessionRow};
    use crate::time::Granularity;

    fn session(user: &str, id: &str, start: i64, country: Option<&str>) -> SessionRow {
        SessionRow {
            user_id: Text::from(user),
            session_id: Text::from(id),
            derived: false,
            start_ts: start,
            end_ts: start,
            events: 1,
            page_views: 1,
            product_views: 0,
            products_viewed: 0,
            cart_adds: 0,
            checkouts: 0,
            purchases: 0,
            orders: 0,
            revenue_cents: 0,
            funnel_step: 0,
            country: country.map(Text::from),
            device: None,
            utm_source: None,
            category: None,
        }
    }

    /// Runs the operator over `(time, session, diff)` changes on two workers; the users
    /// counted under the `all` day key and under `country = DE` (day), as of each time.
    fn run(changes: Vec<(Time, SessionRow, isize)>) -> Vec<(Time, i64, i64)> {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let last = changes.iter().map(|(t, _, _)| *t).max().unwrap_or(0);
        timely::execute(timely::Config::process(2), move |worker| {
            let sink = sink.clone();
            let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
                let (input, sessions) = scope.new_collection::<SessionRow, isize>();
                let probe = sessions
                    .inner
                    .unique_users()
                    .inspect(move |(k, t, d)| {
                        if k.granularity == Granularity::Day {
                            sink.lock().expect("no panics").push((k.dimension, k.value.to_string(), *t, *d));
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
                let count = |dim: Dimension, value: &str| updates.iter().filter(|(d, v, at, _)| *d == dim && v == value && *at <= t).map(|(_, _, _, d)| *d as i64).sum();
                (t, count(Dimension::All, "all"), count(Dimension::Country, "DE"))
            })
            .collect()
    }

    #[test]
    fn counts_each_user_once_per_key_while_any_session_counts() {
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
        assert_eq!(seen, vec![(0, 0, 0), (1, 2, 2), (2, 2, 2), (3, 2, 2), (4, 2, 1), (5, 0, 0)]);
    }
}
