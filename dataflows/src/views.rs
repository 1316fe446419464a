//! The views, as one differential dataflow over raw records.
//!
//! Input: a collection of [`RawRecord`]s whose differential time is the ingestion time
//! (ms, on a tick). Output: the arranged views of [`Views`]. For every view, and every
//! time `t` the output frontier has passed, the contents at `t` equal
//! [`crate::reference::views_at`] over the records ingested at times `<= t`: that is the
//! property the oracle tests check.
//!
//! Stages, each a named operator:
//! 1. **Decode** (pipelined, on the worker that read the record): [`decode`] splits
//!    records into events and rejects, both as data.
//! 2. **Expire** (the temporal-filter idiom): every accepted event is inserted at its
//!    ingestion time and retracted at [`ViewConfig::expiry`] of its event time; every
//!    reject is retracted one retention period after its ingestion. State therefore holds
//!    only what the retention horizon needs, and compaction reclaims the rest.
//! 3. **Dedup** (a reduce keyed by `event_id`): of all live deliveries of an id, the
//!    first by (ingestion time, position, content) is kept, the others become
//!    `duplicate` rejects. An event named in the `retracts` field of a live event is
//!    removed, whichever arrived first. `retraction` events only remove.
//! 4. **Views**: `sessions` (reduce by user), then `funnel` and `kpis`, whose sums are
//!    kept as difference types ([`FunnelAgg`], [`KpiAgg`]) and read out with
//!    `count_total`, and `rejected_by_reason` over all rejects.

use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::operators::CountTotal;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::Stream;

use crate::decode::{decode, DecodeConfig, Format, RawRecord, Reject, RejectReason};
use crate::event::{Event, EventType};
use crate::rows::{
    funnel_keys, sessionize, Dimension, FunnelAgg, FunnelKey, KpiAgg, KpiKey, OrderInWindow, SessionEvent, SessionRow,
};
use crate::time::{tick_ceil, Granularity, Millis, Time};

/// Settings that change what the views contain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewConfig {
    /// Validation limits and the retention horizon.
    pub decode: DecodeConfig,
    /// Ingestion ticks (ms): expiry times are rounded up to a tick, like ingestion times.
    pub tick_ms: u64,
}

impl Default for ViewConfig {
    fn default() -> Self {
        ViewConfig { decode: DecodeConfig::default(), tick_ms: 10 }
    }
}

impl ViewConfig {
    /// The ingestion time at which an accepted event with this event time leaves the views.
    pub fn expiry(&self, event_ts: Millis) -> Time {
        tick_ceil(self.decode.expiry(event_ts), self.tick_ms)
    }

    /// The ingestion time at which a reject ingested at `ingest` leaves the views.
    pub fn reject_expiry(&self, ingest: Time) -> Time {
        tick_ceil(ingest.saturating_add(self.decode.retention_ms), self.tick_ms)
    }
}

/// An accepted event with the facts that decide which delivery of an id is kept.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Arrival {
    /// Ingestion time of this delivery.
    pub ingest: Time,
    /// Position of the record in its source.
    pub position: u64,
    /// The event.
    pub event: Event,
}

/// What the dedup reduce sees under one `event_id`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Entry {
    /// A live event (with this id) retracts the keyed event.
    Cancel(String),
    /// A delivery of the keyed event.
    Delivery(Arrival),
}

/// What the dedup reduce says about one `event_id`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Outcome {
    /// The event is valid: it flows into the views.
    Keep(Event),
    /// A delivery that repeats an id already kept.
    Duplicate(Arrival),
}

/// A row of any view, tagged with its view: what tests and output files compare.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "view", rename_all = "snake_case")]
pub enum ViewRow {
    /// A `sessions` row.
    Sessions(SessionRow),
    /// A `funnel` row.
    Funnel {
        /// Key.
        key: FunnelKey,
        /// Sums.
        agg: FunnelAgg,
    },
    /// A `kpis` row.
    Kpis {
        /// Key.
        key: KpiKey,
        /// Sums.
        agg: KpiAgg,
    },
    /// A `rejected_by_reason` row.
    RejectedByReason {
        /// Reason.
        reason: RejectReason,
        /// Rejects of that reason within the retention horizon.
        count: i64,
    },
    /// A `rejects` row (the dead-letter view).
    Rejects(Reject),
}

impl ViewRow {
    /// The name of the view the row belongs to.
    pub fn view(&self) -> &'static str {
        match self {
            ViewRow::Sessions(_) => "sessions",
            ViewRow::Funnel { .. } => "funnel",
            ViewRow::Kpis { .. } => "kpis",
            ViewRow::RejectedByReason { .. } => "rejected_by_reason",
            ViewRow::Rejects(_) => "rejects",
        }
    }
}

/// An arrangement of a view by its key.
pub type ViewArrangement<'scope, K, V> = Arranged<'scope, TraceAgent<ValSpine<K, V, Time, isize>>>;

/// The views of one dataflow, each arranged by its key.
pub struct Views<'scope> {
    /// Valid (deduplicated, not retracted, not expired) events, for later views.
    pub events: VecCollection<'scope, Time, Event>,
    /// `sessions`, keyed by user id.
    pub sessions: ViewArrangement<'scope, String, SessionRow>,
    /// `funnel`, keyed by (granularity, window, dimension, value).
    pub funnel: ViewArrangement<'scope, FunnelKey, FunnelAgg>,
    /// `kpis`, keyed by (granularity, window).
    pub kpis: ViewArrangement<'scope, KpiKey, KpiAgg>,
    /// `rejected_by_reason`: reject counts within the retention horizon.
    pub rejected_by_reason: ViewArrangement<'scope, RejectReason, i64>,
    /// `rejects`: rejected records with their bytes, keyed by reason.
    pub rejects: ViewArrangement<'scope, RejectReason, Reject>,
}

impl<'scope> Views<'scope> {
    /// Every view's rows as one collection of tagged [`ViewRow`]s.
    pub fn rows(&self) -> VecCollection<'scope, Time, ViewRow> {
        let sessions = self.sessions.clone().as_collection(|_, s| ViewRow::Sessions(s.clone()));
        let funnel = self.funnel.clone().as_collection(|k, a| ViewRow::Funnel { key: k.clone(), agg: *a });
        let kpis = self.kpis.clone().as_collection(|k, a| ViewRow::Kpis { key: *k, agg: *a });
        let counts = self.rejected_by_reason.clone().as_collection(|r, c| ViewRow::RejectedByReason { reason: *r, count: *c });
        let rejects = self.rejects.clone().as_collection(|_, r| ViewRow::Rejects(r.clone()));
        sessions.concatenate([funnel, kpis, counts, rejects])
    }
}

/// Builds every view over `records`.
pub fn build<'scope>(records: VecCollection<'scope, Time, RawRecord>, config: &ViewConfig) -> Views<'scope> {
    let (arrivals, rejects) = decode_and_expire(records, config);

    let outcomes = arrivals
        .flat_map(|a: Arrival| {
            let cancel = a.event.retracts.clone().map(|target| (target, Entry::Cancel(a.event.event_id.clone())));
            cancel.into_iter().chain(Some((a.event.event_id.clone(), Entry::Delivery(a))))
        })
        .reduce_named("Reduce: dedup and retract by event_id", dedup);
    let events = outcomes.clone().flat_map(|(_, o)| match o {
        Outcome::Keep(e) => Some(e),
        Outcome::Duplicate(_) => None,
    });
    let duplicates = outcomes.flat_map(|(id, o)| match o {
        Outcome::Duplicate(a) => Some(Reject {
            reason: RejectReason::Duplicate,
            detail: format!("event_id {id:?} was already delivered"),
            ingest_time: a.ingest,
            format: Format::Json,
            position: a.position,
            raw: a.event.to_json().into_bytes(),
        }),
        Outcome::Keep(_) => None,
    });

    let sessions = events
        .clone()
        .map(|e| (e.user_id.clone(), SessionEvent::from(&e)))
        .arrange_by_key_named("Arrange: events by user")
        .reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<String, SessionRow, Time, isize>, _, _>(
            "Reduce: sessions by user",
            |user, input, output| {
                let mut events = Vec::with_capacity(input.len());
                for (e, count) in input {
                    events.extend(std::iter::repeat_n(*e, (*count).max(0) as usize));
                }
                output.extend(sessionize(user, &events).into_iter().map(|s| (s, 1)));
            },
            |buffer, user, updates| {
                buffer.clear();
                buffer.extend(updates.drain(..).map(|(s, t, r)| ((user.clone(), s), t, r)));
            },
        );

    let funnel = funnel(sessions.clone().as_collection(|_, s| s.clone()));
    let kpis = kpis(events.clone(), funnel.clone());

    let rejects = rejects.concat(duplicates);
    let rejected_by_reason = rejects
        .clone()
        .map(|r| r.reason)
        .count_total()
        .map(|(reason, count)| (reason, count as i64))
        .arrange_by_key_named("Arrange: rejected_by_reason");
    let rejects = rejects.map(|r| (r.reason, r)).arrange_by_key_named("Arrange: rejects by reason");

    Views {
        events,
        sessions,
        funnel: funnel.arrange_by_key_named("Arrange: funnel"),
        kpis: kpis.arrange_by_key_named("Arrange: kpis"),
        rejected_by_reason,
        rejects,
    }
}

/// Decodes records where they were read, and gives every accepted event and every reject
/// its expiry as a future retraction.
fn decode_and_expire<'scope>(
    records: VecCollection<'scope, Time, RawRecord>,
    config: &ViewConfig,
) -> (VecCollection<'scope, Time, Arrival>, VecCollection<'scope, Time, Reject>) {
    let decode_config = config.decode.clone();
    let (oks, errs): (Stream<'scope, Time, Vec<(Arrival, Time, isize)>>, Stream<'scope, Time, Vec<(Reject, Time, isize)>>) =
        records.inner.ok_err(move |(record, time, diff)| match decode(&record, time, &decode_config) {
            Ok(event) => Ok((Arrival { ingest: time, position: record.position, event }, time, diff)),
            Err(reject) => Err((reject, time, diff)),
        });
    let cfg = config.clone();
    let arrivals = oks
        .flat_map(move |(a, time, diff)| {
            let expiry = cfg.expiry(a.event.event_ts).max(time);
            [(a.clone(), time, diff), (a, expiry, -diff)]
        })
        .as_collection();
    let cfg = config.clone();
    let rejects = errs
        .flat_map(move |(r, time, diff)| {
            let expiry = cfg.reject_expiry(time);
            [(r.clone(), time, diff), (r, expiry, -diff)]
        })
        .as_collection();
    (arrivals, rejects)
}

/// The dedup reduce: keep the first live delivery unless a live event cancels it.
fn dedup(_id: &String, input: &[(&Entry, isize)], output: &mut Vec<(Outcome, isize)>) {
    // Entries sort with cancels first, then deliveries by (ingest, position, event).
    let cancelled = input.iter().any(|(e, count)| matches!(e, Entry::Cancel(_)) && *count > 0);
    let mut deliveries = input.iter().filter_map(|(e, count)| match e {
        Entry::Delivery(a) if *count > 0 => Some((a, *count)),
        _ => None,
    });
    if let Some((first, count)) = deliveries.next() {
        if !cancelled && first.event.event_type != EventType::Retraction {
            output.push((Outcome::Keep(first.event.clone()), 1));
        }
        if count > 1 {
            output.push((Outcome::Duplicate(first.clone()), count - 1));
        }
        output.extend(deliveries.map(|(a, count)| (Outcome::Duplicate(a.clone()), count)));
    }
}

/// `funnel`: per-window sums of session contributions plus distinct users.
fn funnel<'scope>(sessions: VecCollection<'scope, Time, SessionRow>) -> VecCollection<'scope, Time, (FunnelKey, FunnelAgg)> {
    let contributions = sessions.clone().explode(|s| {
        let agg = FunnelAgg::of_session(&s);
        funnel_keys(&s).map(|k| (k, agg)).collect::<Vec<_>>()
    });
    let users = sessions
        .flat_map(|s| funnel_keys(&s).map(|k| (k, s.user_id.clone())).collect::<Vec<_>>())
        .distinct()
        .explode(|(k, _user)| Some((k, FunnelAgg { unique_users: 1, ..FunnelAgg::default() })));
    contributions.concat(users).count_total()
}

/// `kpis`: event sums by event-time window, distinct orders, and the funnel's `all` rows.
fn kpis<'scope>(
    events: VecCollection<'scope, Time, Event>,
    funnel: VecCollection<'scope, Time, (FunnelKey, FunnelAgg)>,
) -> VecCollection<'scope, Time, (KpiKey, KpiAgg)> {
    let key = |granularity: Granularity, ts: Millis| KpiKey { granularity, window_start: granularity.window_start(ts) };
    let by_event = events.clone().explode(move |e| {
        let agg = KpiAgg::of_event(&e);
        Granularity::ALL.map(|g| (key(g, e.event_ts), agg))
    });
    let orders = events
        .filter(|e| e.event_type == EventType::Purchase)
        .flat_map(|e| Granularity::ALL.map(|g| -> OrderInWindow { (g, g.window_start(e.event_ts), e.order_key().to_owned()) }))
        .distinct()
        .explode(|(granularity, window_start, _order)| Some((KpiKey { granularity, window_start }, KpiAgg { orders: 1, ..KpiAgg::default() })));
    let sessions = funnel
        .filter(|(k, _)| k.dimension == Dimension::All)
        .explode(|(k, a)| Some((KpiKey { granularity: k.granularity, window_start: k.window_start }, KpiAgg::of_funnel(&a))));
    by_event.concatenate([orders, sessions]).count_total()
}
