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
//! 3. **Dedup** ([`crate::operators::dedup`], keyed by `event_id`): a delivery that
//!    arrives (by ingestion time, then position) while a kept delivery of its id is live
//!    is a `duplicate` reject for good; the others are kept.
//! 4. **Cancellations** ([`crate::operators::cancel`]): each kept event with `retracts`
//!    is bound to its target (by the dedup operator of the target's id, which holds the
//!    live kept delivery of every id), and a resolver on one worker decides which kept events are
//!    removed (chains and loops included), emitting corrections that, added to the kept
//!    events, leave the visible ones. `retraction` events only remove.
//! 5. **Views**: `sessions`, by user ([`crate::operators::sessions`], which also emits
//!    the changes of the funnel's sums, distinct users included); `funnel` and `kpis`,
//!    those changes and the events' sums by window kept as running sums per key
//!    ([`crate::operators::accumulate`], with [`FunnelAgg`] and [`KpiAgg`] as the
//!    sums); and `rejected_by_reason` over all rejects (`count_total`).
//! 6. **Customers and cards**: `customer_rfm`, `clv_model` and `customer_clv`
//!    ([`crate::clv`]), and `fraud_features`, `fraud_scores` and `fraud_alerts`
//!    ([`crate::fraud`]), over the same valid events.
//!
//! The rules these stages follow are docs/SEMANTICS.md; the scenario files
//! (`dataflows/tests/scenarios/`) and the oracle tests check them.
//!
//! [`build`] builds all of them, as the engine does; [`build_parts`] builds the same
//! operators for only some views ([`Part`]), to measure what each holds
//! (`dataflows/examples/state_memory.rs`).
//!
//! Every view below is a collection of rows at ingestion times ([`Time`], ms on a tick).
//! A diff of `+1` means the row is in the view from that time on, `-1` that it leaves;
//! the count of a row at time `t` is the sum of its diffs at times `<= t`, never
//! negative, and 1 for every row except identical copies of a rejected record, which are
//! counted as copies. Once an arrangement's frontier has passed `t`, no
//! update at a time `<= t` will ever arrive: reading it at `t` gives the final answer for
//! `t`, equal to [`crate::reference::views_at`] at `t`.

use differential_dataflow::operators::arrange::arrangement::arrange_core;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::operators::CountTotal;
use differential_dataflow::difference::Multiply;
use differential_dataflow::trace::implementations::{ValBatcher, ValSpine};
use differential_dataflow::{AsCollection, VecCollection};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::core::{Concat, OkErr};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::clv::dataflow::ClvViews;
use crate::clv::{ClvConfig, ClvModel, ClvRow, RfmRow};
use crate::fraud::{FraudFeatures, FraudModel, FraudScore, FraudViews};
use crate::decode::{decode, DecodeConfig, RawRecord, Reject, RejectReason};
use crate::operators::cancel::{resolve, Bind};
use crate::operators::dedup::{Decision, Dedup, Delivery};
use crate::operators::accumulate::Accumulate;
use crate::operators::sessions::Sessions;
use crate::operators::KeepFirst;
use crate::event::{Event, EventType};
use crate::rows::{Route, Dimension, FunnelAgg, FunnelKey, KpiAgg, KpiKey, OrderInWindow, SessionRow};
use crate::time::{tick_ceil, Granularity, Millis, Time};

/// Settings that change what the views contain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewConfig {
    /// Validation limits and the retention horizon.
    pub decode: DecodeConfig,
    /// Ingestion ticks (ms): expiry times are rounded up to a tick, like ingestion times.
    pub tick_ms: u64,
    /// Settings of the CLV views.
    pub clv: ClvConfig,
    /// The scoring model of `fraud_scores` and `fraud_alerts`.
    pub fraud: FraudModel,
    /// How many rejects of each reason ingested in one hour the `rejects` view keeps (the
    /// first to arrive); `rejected_by_reason` counts them all, and dead-letter files and
    /// topics get them all.
    #[serde(default = "default_rejects_per_hour")]
    pub rejects_per_hour: usize,
}

/// The `rejects` view's default bound: rejects kept per reason and hour of ingestion.
pub const REJECTS_PER_HOUR: usize = 50;

fn default_rejects_per_hour() -> usize {
    REJECTS_PER_HOUR
}

/// One hour, in ms: the buckets of the `rejects` view's bound.
pub const HOUR_MS: Time = 3_600_000;

impl Default for ViewConfig {
    fn default() -> Self {
        ViewConfig { decode: DecodeConfig::default(), tick_ms: 10, clv: ClvConfig::default(), fraud: FraudModel::default(), rejects_per_hour: REJECTS_PER_HOUR }
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
    /// A `customer_rfm` row.
    CustomerRfm(RfmRow),
    /// The `clv_model` row.
    ClvModel(ClvModel),
    /// A `customer_clv` row.
    CustomerClv(ClvRow),
    /// A `fraud_features` row.
    FraudFeatures(FraudFeatures),
    /// A `fraud_scores` row.
    FraudScores(FraudScore),
    /// A `fraud_alerts` row.
    FraudAlerts(FraudScore),
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
            ViewRow::CustomerRfm(_) => "customer_rfm",
            ViewRow::ClvModel(_) => "clv_model",
            ViewRow::CustomerClv(_) => "customer_clv",
            ViewRow::FraudFeatures(_) => "fraud_features",
            ViewRow::FraudScores(_) => "fraud_scores",
            ViewRow::FraudAlerts(_) => "fraud_alerts",
        }
    }
}

/// A [`ViewRow`] as it travels between workers. The JSON form's `view` tag needs a
/// self-describing format; timely's wire format is not, so rows travel externally tagged.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WireRow(#[serde(with = "wire")] pub ViewRow);

mod wire {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::*;

    #[derive(Serialize)]
    enum Ref<'a> {
        Sessions(&'a SessionRow),
        Funnel(&'a FunnelKey, &'a FunnelAgg),
        Kpis(&'a KpiKey, &'a KpiAgg),
        RejectedByReason(&'a RejectReason, i64),
        Rejects(&'a Reject),
        CustomerRfm(&'a RfmRow),
        ClvModel(&'a ClvModel),
        CustomerClv(&'a ClvRow),
        FraudFeatures(&'a FraudFeatures),
        FraudScores(&'a FraudScore),
        FraudAlerts(&'a FraudScore),
    }

    #[derive(Deserialize)]
    enum Owned {
        Sessions(SessionRow),
        Funnel(FunnelKey, FunnelAgg),
        Kpis(KpiKey, KpiAgg),
        RejectedByReason(RejectReason, i64),
        Rejects(Reject),
        CustomerRfm(RfmRow),
        ClvModel(ClvModel),
        CustomerClv(ClvRow),
        FraudFeatures(FraudFeatures),
        FraudScores(FraudScore),
        FraudAlerts(FraudScore),
    }

    pub fn serialize<S: Serializer>(row: &ViewRow, serializer: S) -> Result<S::Ok, S::Error> {
        match row {
            ViewRow::Sessions(r) => Ref::Sessions(r),
            ViewRow::Funnel { key, agg } => Ref::Funnel(key, agg),
            ViewRow::Kpis { key, agg } => Ref::Kpis(key, agg),
            ViewRow::RejectedByReason { reason, count } => Ref::RejectedByReason(reason, *count),
            ViewRow::Rejects(r) => Ref::Rejects(r),
            ViewRow::CustomerRfm(r) => Ref::CustomerRfm(r),
            ViewRow::ClvModel(r) => Ref::ClvModel(r),
            ViewRow::CustomerClv(r) => Ref::CustomerClv(r),
            ViewRow::FraudFeatures(r) => Ref::FraudFeatures(r),
            ViewRow::FraudScores(r) => Ref::FraudScores(r),
            ViewRow::FraudAlerts(r) => Ref::FraudAlerts(r),
        }
        .serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ViewRow, D::Error> {
        Ok(match Owned::deserialize(deserializer)? {
            Owned::Sessions(r) => ViewRow::Sessions(r),
            Owned::Funnel(key, agg) => ViewRow::Funnel { key, agg },
            Owned::Kpis(key, agg) => ViewRow::Kpis { key, agg },
            Owned::RejectedByReason(reason, count) => ViewRow::RejectedByReason { reason, count },
            Owned::Rejects(r) => ViewRow::Rejects(r),
            Owned::CustomerRfm(r) => ViewRow::CustomerRfm(r),
            Owned::ClvModel(r) => ViewRow::ClvModel(r),
            Owned::CustomerClv(r) => ViewRow::CustomerClv(r),
            Owned::FraudFeatures(r) => ViewRow::FraudFeatures(r),
            Owned::FraudScores(r) => ViewRow::FraudScores(r),
            Owned::FraudAlerts(r) => ViewRow::FraudAlerts(r),
        })
    }
}

/// An arrangement of a view by its key.
pub type ViewArrangement<'scope, K, V> = Arranged<'scope, TraceAgent<ValSpine<K, V, Time, isize>>>;

/// The views of one dataflow, each arranged by its key.
pub struct Views<'scope> {
    /// Valid (deduplicated, not retracted, not expired) events, for later views.
    pub events: VecCollection<'scope, Time, Arc<Event>>,
    /// `sessions`: key [`key_of`](crate::rows::key_of) the user id, row a shared [`SessionRow`] (which carries the
    /// user id), one row per session of every user with a live event. A late event that
    /// joins or splits sessions retracts the old rows and inserts the new ones.
    pub sessions: ViewArrangement<'scope, u64, Arc<SessionRow>>,
    /// `funnel`: key [`FunnelKey`] (granularity, window start, dimension, value), row the
    /// key's [`FunnelAgg`] sums; one row per key with at least one session. A change of a
    /// window's numbers is the old row retracted and the new one inserted.
    pub funnel: ViewArrangement<'scope, FunnelKey, FunnelAgg>,
    /// `kpis`: key [`KpiKey`] (granularity, window start), row the window's [`KpiAgg`];
    /// one row per window with a live event.
    pub kpis: ViewArrangement<'scope, KpiKey, KpiAgg>,
    /// `rejected_by_reason`: key the [`RejectReason`], row the number of rejects of that
    /// reason ingested within the retention horizon (no row for a count of 0).
    pub rejected_by_reason: ViewArrangement<'scope, RejectReason, i64>,
    /// `rejects`: key the [`RejectReason`], row a [`Reject::sample`] of the rejected
    /// record (its detail, size, digest and first bytes), for as long as the retention
    /// horizon keeps it; of each reason and hour of ingestion, only the first
    /// [`ViewConfig::rejects_per_hour`] to arrive.
    pub rejects: ViewArrangement<'scope, RejectReason, Reject>,
    /// Every reject once, with all its bytes, at the time it arose (never retracted):
    /// what dead-letter files and topics write.
    pub dead_letter: VecCollection<'scope, Time, Reject>,
    /// `customer_rfm`, `clv_model` and `customer_clv` (see [`crate::clv`]).
    pub clv: ClvViews<'scope>,
    /// `fraud_features`, `fraud_scores` and `fraud_alerts`, keyed by [`key_of`](crate::rows::key_of) the card
    /// id (see [`crate::fraud`]).
    pub fraud: FraudViews<'scope>,
}

impl<'scope> Views<'scope> {
    /// Every view's rows as one collection of tagged [`ViewRow`]s.
    pub fn rows(&self) -> VecCollection<'scope, Time, ViewRow> {
        let sessions = self.sessions.clone().as_collection(|_, s| ViewRow::Sessions((**s).clone()));
        let rfm = self.clv.customer_rfm.clone().as_collection(|_, r| ViewRow::CustomerRfm(r.clone()));
        let clv = self.clv.customer_clv.clone().as_collection(|_, c| ViewRow::CustomerClv(c.clone()));
        let features = self.fraud.features.clone().as_collection(|_, f| ViewRow::FraudFeatures(f.clone()));
        let scores = self.fraud.scores.clone().as_collection(|_, s| ViewRow::FraudScores(s.clone()));
        let alerts = self.fraud.alerts.clone().as_collection(|_, s| ViewRow::FraudAlerts(s.clone()));
        sessions.concatenate([self.summary_rows(&Dimension::ALL, true), rfm, clv, features, scores, alerts])
    }

    /// The rows a live summary shows: KPIs, funnel rows of the given dimensions, reject
    /// counts, the CLV model, and (if `with_rejects`) rejected records. Cheaper than [`Views::rows`].
    pub fn summary_rows(&self, dimensions: &'static [Dimension], with_rejects: bool) -> VecCollection<'scope, Time, ViewRow> {
        let funnel = self
            .funnel
            .clone()
            .flat_map_ref(move |k, a| dimensions.contains(&k.dimension).then(|| ViewRow::Funnel { key: *k, agg: *a }));
        let kpis = self.kpis.clone().as_collection(|k, a| ViewRow::Kpis { key: *k, agg: *a });
        let counts = self.rejected_by_reason.clone().as_collection(|r, c| ViewRow::RejectedByReason { reason: *r, count: *c });
        let rejects = self.rejects.clone().flat_map_ref(move |_, r| with_rejects.then(|| ViewRow::Rejects(r.clone())));
        let model = self.clv.clv_model.clone().as_collection(|_, m| ViewRow::ClvModel(m.clone()));
        funnel.concatenate([kpis, counts, rejects, model])
    }

    /// One `()` per session: its diffs sum to the number of sessions.
    pub fn session_count(&self) -> VecCollection<'scope, Time, ()> {
        self.sessions.clone().as_collection(|_, _| ())
    }
}

/// Builds every view over `records`.
pub fn build<'scope>(records: VecCollection<'scope, Time, RawRecord>, config: &ViewConfig) -> Views<'scope> {
    let v = build_parts(records, config, &Part::ALL);
    let built = "every part is built";
    Views {
        events: v.events,
        sessions: v.sessions.expect(built),
        funnel: v.funnel.expect(built),
        kpis: v.kpis.expect(built),
        rejected_by_reason: v.rejected_by_reason.expect(built),
        rejects: v.rejects.expect(built),
        dead_letter: v.dead_letter,
        clv: v.clv.expect(built),
        fraud: v.fraud.expect(built),
    }
}

/// A part of the dataflow that [`build_parts`] can build or leave out: one view, or a
/// group of views built together (for measuring what each holds; the engine builds all).
/// Decoding, expiry and deduplication, which produce the valid events and the rejects,
/// are always built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// `sessions` (with the events arranged by user).
    Sessions,
    /// `funnel` (needs `sessions`).
    Funnel,
    /// `kpis` (needs `sessions`, for the session counts of the funnel's changes).
    Kpis,
    /// `rejected_by_reason`.
    RejectedByReason,
    /// `rejects`.
    Rejects,
    /// `customer_rfm`, `clv_model` and `customer_clv`.
    Clv,
    /// `fraud_features`, `fraud_scores` and `fraud_alerts`.
    Fraud,
}

impl Part {
    /// Every part, in the order they are built.
    pub const ALL: [Part; 7] = [Part::Sessions, Part::Funnel, Part::Kpis, Part::RejectedByReason, Part::Rejects, Part::Clv, Part::Fraud];

    /// The part's name: its view's name, or `clv` and `fraud` for the groups.
    pub fn name(self) -> &'static str {
        match self {
            Part::Sessions => "sessions",
            Part::Funnel => "funnel",
            Part::Kpis => "kpis",
            Part::RejectedByReason => "rejected_by_reason",
            Part::Rejects => "rejects",
            Part::Clv => "clv",
            Part::Fraud => "fraud",
        }
    }

    /// The part named `name` (see [`Part::name`]).
    pub fn from_name(name: &str) -> Option<Part> {
        Part::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The views the part maintains.
    pub fn views(self) -> &'static [&'static str] {
        match self {
            Part::Sessions => &["sessions"],
            Part::Funnel => &["funnel"],
            Part::Kpis => &["kpis"],
            Part::RejectedByReason => &["rejected_by_reason"],
            Part::Rejects => &["rejects"],
            Part::Clv => &["customer_rfm", "clv_model", "customer_clv"],
            Part::Fraud => &["fraud_features", "fraud_scores", "fraud_alerts"],
        }
    }

    /// The other parts this one is computed from, which [`build_parts`] builds with it.
    pub fn needs(self) -> &'static [Part] {
        match self {
            Part::Funnel => &[Part::Sessions],
            Part::Kpis => &[Part::Sessions],
            _ => &[],
        }
    }
}

/// What [`build_parts`] built: the valid events and the rejects, and the views of the
/// parts asked for (with the parts they need); the others are `None`.
pub struct PartViews<'scope> {
    /// Valid (deduplicated, not retracted, not expired) events.
    pub events: VecCollection<'scope, Time, Arc<Event>>,
    /// Every reject, duplicates included, until it expires.
    pub all_rejects: VecCollection<'scope, Time, Reject>,
    /// See [`Views::dead_letter`].
    pub dead_letter: VecCollection<'scope, Time, Reject>,
    /// See [`Views::sessions`].
    pub sessions: Option<ViewArrangement<'scope, u64, Arc<SessionRow>>>,
    /// See [`Views::funnel`].
    pub funnel: Option<ViewArrangement<'scope, FunnelKey, FunnelAgg>>,
    /// See [`Views::kpis`].
    pub kpis: Option<ViewArrangement<'scope, KpiKey, KpiAgg>>,
    /// See [`Views::rejected_by_reason`].
    pub rejected_by_reason: Option<ViewArrangement<'scope, RejectReason, i64>>,
    /// See [`Views::rejects`].
    pub rejects: Option<ViewArrangement<'scope, RejectReason, Reject>>,
    /// See [`Views::clv`].
    pub clv: Option<ClvViews<'scope>>,
    /// See [`Views::fraud`].
    pub fraud: Option<FraudViews<'scope>>,
}

impl<'scope> PartViews<'scope> {
    /// The rows of every view built, as one collection of tagged [`ViewRow`]s.
    pub fn rows(&self) -> VecCollection<'scope, Time, ViewRow> {
        let mut rows = Vec::new();
        if let Some(v) = &self.sessions {
            rows.push(v.clone().as_collection(|_, s| ViewRow::Sessions((**s).clone())));
        }
        if let Some(v) = &self.funnel {
            rows.push(v.clone().as_collection(|k, a| ViewRow::Funnel { key: *k, agg: *a }));
        }
        if let Some(v) = &self.kpis {
            rows.push(v.clone().as_collection(|k, a| ViewRow::Kpis { key: *k, agg: *a }));
        }
        if let Some(v) = &self.rejected_by_reason {
            rows.push(v.clone().as_collection(|r, c| ViewRow::RejectedByReason { reason: *r, count: *c }));
        }
        if let Some(v) = &self.rejects {
            rows.push(v.clone().as_collection(|_, r| ViewRow::Rejects(r.clone())));
        }
        if let Some(v) = &self.clv {
            rows.push(v.customer_rfm.clone().as_collection(|_, r| ViewRow::CustomerRfm(r.clone())));
            rows.push(v.clv_model.clone().as_collection(|_, m| ViewRow::ClvModel(m.clone())));
            rows.push(v.customer_clv.clone().as_collection(|_, c| ViewRow::CustomerClv(c.clone())));
        }
        if let Some(v) = &self.fraud {
            rows.push(v.features.clone().as_collection(|_, f| ViewRow::FraudFeatures(f.clone())));
            rows.push(v.scores.clone().as_collection(|_, s| ViewRow::FraudScores(s.clone())));
            rows.push(v.alerts.clone().as_collection(|_, s| ViewRow::FraudAlerts(s.clone())));
        }
        differential_dataflow::collection::concatenate(self.events.scope(), rows)
    }
}

/// Builds the views of `parts` (and of the parts they need) over `records`, exactly as
/// [`build`] builds them, and no others.
pub fn build_parts<'scope>(records: VecCollection<'scope, Time, RawRecord>, config: &ViewConfig, parts: &[Part]) -> PartViews<'scope> {
    let with = |part: Part| parts.iter().any(|p| *p == part || p.needs().contains(&part));
    let (deliveries, rejects) = decode_and_expire(records, config);

    // Dedup decides each delivery's fate at its arrival; cancellations bind to their
    // targets by id, and one resolver works out which kept deliveries they remove.
    let cfg = config.clone();
    // Every canceller is announced to its target's id before its own fate is known.
    let announced = deliveries.clone().flat_map(|(d, t, r)| d.event.retracts().is_some().then_some((d, t, r)));
    let (kept, others): (Updates<'scope, Delivery>, Updates<'scope, Result<Reject, Bind>>) =
        deliveries.dedup(announced, move |t| cfg.reject_expiry(t)).ok_err(|(decision, time, diff)| match decision {
            Decision::Kept(d) => Ok((d, time, diff)),
            Decision::Duplicate(r) => Err((Ok(r), time, diff)),
            Decision::Bound(b) => Err((Err(b), time, diff)),
        });
    let (duplicates, binds): (Updates<'scope, Reject>, Updates<'scope, Bind>) = others.ok_err(|(other, time, diff)| match other {
        Ok(r) => Ok((r, time, diff)),
        Err(b) => Err((b, time, diff)),
    });
    let kept_cancellers = kept.clone().flat_map(|(d, t, r)| (r > 0 && d.event.retracts().is_some()).then_some((d, t, r)));
    let corrections = resolve(binds, kept_cancellers);
    // Dedup emits each kept event's leaving when due; the resolver's corrections carry
    // their future updates, held until due.
    let corrections = hold_future(corrections, "Expire: corrections after retention");
    let events = kept.flat_map(|(d, t, r)| (d.event.event_type != EventType::Retraction).then(|| (d.event, t, r))).concat(corrections).as_collection();
    let duplicates = hold_future(duplicates, "Expire: duplicates after retention").as_collection();

    // Sessions by user, with the changes they make to the funnel's sums
    // (operators::sessions); the funnel and the kpis sum those changes by key.
    let changes = with(Part::Sessions).then(|| events.inner.clone().sessions());
    let sessions = changes.as_ref().map(|(rows, _)| arrange_placed(rows.clone().as_collection(), "Arrange: sessions"));
    let funnel_changes = changes.map(|(_, funnel)| funnel);
    let funnel = with(Part::Funnel).then(|| {
        let sums = funnel_changes.clone().expect("the funnel needs the sessions").accumulate("Funnel: sums by key");
        arrange_placed(sums.as_collection(), "Arrange: funnel")
    });
    let kpis = with(Part::Kpis).then(|| kpis(events.clone(), funnel_changes.clone().expect("the kpis need the sessions")));

    let all_rejects = rejects.concat(duplicates);
    let rejected_by_reason = with(Part::RejectedByReason).then(|| {
        let counts = all_rejects.clone().map(|r| r.reason).count_total().map(|(reason, count)| (reason, count as i64));
        arrange_routed(counts, "Arrange: rejected_by_reason")
    });
    let dead_letter = all_rejects.clone().inner.flat_map(|(r, t, diff)| (diff > 0).then_some((r, t, diff))).as_collection();
    let rejects = with(Part::Rejects).then(|| {
        let bucket = |r: &Reject| ((r.reason, r.ingest_time / HOUR_MS), (r.ingest_time / HOUR_MS + 1) * HOUR_MS);
        let kept = all_rejects.clone().map(|r| r.sample()).keep_first("Sample: rejects kept per reason and hour", config.rejects_per_hour, bucket);
        arrange_routed(kept.map(|r| (r.reason, r)), "Arrange: rejects by reason")
    });

    let clv = with(Part::Clv).then(|| crate::clv::dataflow::build(events.clone(), &config.clv));
    let fraud = with(Part::Fraud).then(|| crate::fraud::build(events.clone(), &config.fraud));
    PartViews {
        clv,
        fraud,
        sessions,
        funnel,
        kpis,
        rejected_by_reason,
        rejects,
        events,
        all_rejects,
        dead_letter,
    }
}

/// Arranges by key, placing each key on worker `key.route() mod workers` (see [`Route`]),
/// so that the owner of a key can be computed outside the dataflow.
pub(crate) fn arrange_routed<'scope, K, V>(collection: VecCollection<'scope, Time, (K, V)>, name: &str) -> ViewArrangement<'scope, K, V>
where
    K: Route + differential_dataflow::ExchangeData + differential_dataflow::Hashable,
    V: differential_dataflow::ExchangeData,
{
    let pact = Exchange::new(|update: &((K, V), Time, isize)| (update.0).0.route());
    arrange_core::<_, _, ValBatcher<K, V, Time, isize>, ValSpine<K, V, Time, isize>>(collection.inner, pact, name, ValBatcher::new)
}

/// Arranges by key a collection that is already on its key's owner (worker
/// `key.route() mod workers`, as [`arrange_routed`] places it): the output of an
/// operator that exchanged its input by the same rule.
pub(crate) fn arrange_placed<'scope, K, V>(collection: VecCollection<'scope, Time, (K, V)>, name: &str) -> ViewArrangement<'scope, K, V>
where
    K: differential_dataflow::ExchangeData + differential_dataflow::Hashable,
    V: differential_dataflow::ExchangeData,
{
    arrange_core::<_, _, ValBatcher<K, V, Time, isize>, ValSpine<K, V, Time, isize>>(collection.inner, Pipeline, name, ValBatcher::new)
}

/// Decodes records where they were read: every accepted event as a [`Delivery`] that
/// carries its expiry (dedup emits its retraction then), and every reject with its
/// expiry as a future retraction.
fn decode_and_expire<'scope>(records: VecCollection<'scope, Time, RawRecord>, config: &ViewConfig) -> (Updates<'scope, Delivery>, VecCollection<'scope, Time, Reject>) {
    let cfg = config.clone();
    let (deliveries, errs): (Updates<'scope, Delivery>, Updates<'scope, Reject>) =
        records.inner.ok_err(move |(record, time, diff)| match decode(&record, time, &cfg.decode) {
            Ok(event) => {
                let expiry = cfg.expiry(event.event_ts).max(time + 1);
                Ok((Delivery { ingest: time, position: record.position, expiry, event: Arc::new(event) }, time, diff))
            }
            Err(reject) => Err((reject, time, diff)),
        });
    let cfg = config.clone();
    let rejects = errs.flat_map(move |(r, time, diff)| {
        let expiry = cfg.reject_expiry(time);
        [(r.clone(), time, diff), (r, expiry, -diff)]
    });
    (deliveries, hold_future(rejects, "Expire: rejects after retention").as_collection())
}

/// A stream of differential updates at ingestion times.
type Updates<'scope, D> = Stream<'scope, Time, Vec<(D, Time, isize)>>;

/// Holds updates whose time lies in the future and releases each once the frontier has
/// reached its time, behind a single capability at the earliest pending time.
///
/// Differential would accept future updates directly, but its batchers would then
/// re-examine every pending one each time the frontier moves; held here, an update is
/// touched once when it arrives and once when it is due.
fn hold_future<'scope, D: Clone + 'static>(
    stream: Stream<'scope, Time, Vec<(D, Time, isize)>>,
    name: &str,
) -> Stream<'scope, Time, Vec<(D, Time, isize)>> {
    stream.unary_frontier::<CapacityContainerBuilder<Vec<(D, Time, isize)>>, _, _, _>(Pipeline, name, |_, _| {
        let mut pending = Pending::default();
        move |(input, frontier), output| {
            input.for_each(|cap, data| {
                let Some(now) = cap.least().copied() else { return };
                let mut due = Vec::new();
                for (d, t, r) in data.drain(..) {
                    if t <= now {
                        due.push((d, t, r));
                    } else {
                        pending.push(&cap, t, (d, t, r));
                    }
                }
                if !due.is_empty() {
                    output.session(&cap.delayed(&now, 0)).give_iterator(due.into_iter());
                }
            });
            // Due once the frontier has reached their time.
            while let Some((cap, _, updates)) = pending.pop_ready(|time| !frontier.less_than(time)) {
                output.session(&cap).give_iterator(updates.into_iter());
            }
            pending.settle();
        }
    })
}

/// Updates stashed by time, behind one capability at the earliest stashed time: what an
/// operator needs to emit at a time it has already seen once the frontier allows.
pub(crate) struct Pending<D> {
    by_time: BTreeMap<Time, Vec<D>>,
    held: Earliest,
}

impl<D> Default for Pending<D> {
    fn default() -> Self {
        Pending { by_time: BTreeMap::new(), held: Earliest::default() }
    }
}

/// One capability, held at the earliest of the times an operator still has to emit at.
#[derive(Default)]
pub(crate) struct Earliest(Option<Capability<Time>>);

impl Earliest {
    /// Holds `time` too: `mint` (a capability at `time`) is called only if no capability
    /// is held or the held one is later.
    pub(crate) fn hold(&mut self, time: Time, mint: impl FnOnce() -> Capability<Time>) {
        if self.0.as_ref().is_none_or(|held| *held.time() > time) {
            self.0 = Some(mint());
        }
    }

    /// A capability at `time` (not before the held one's).
    pub(crate) fn at(&self, time: &Time) -> Capability<Time> {
        self.0.as_ref().expect("a capability is held while there is something to emit").delayed(time)
    }

    /// Moves the held capability to `next`, the earliest time still to emit at, or drops
    /// it if there is none.
    pub(crate) fn settle(&mut self, next: Option<Time>) {
        match (next, &mut self.0) {
            (Some(next), Some(held)) => held.downgrade(&next),
            _ => self.0 = None,
        }
    }
}

impl<D> Pending<D> {
    /// Stashes `update` at `time` (not before `cap`'s time), holding a capability for it.
    pub(crate) fn push(&mut self, cap: &timely::dataflow::operators::InputCapability<Time>, time: Time, update: D) {
        // Earlier stashed times are covered by `held`; an earlier time than those came
        // with this message, so `cap` may be delayed to it.
        self.held.hold(time, || cap.delayed(&time, 0));
        self.by_time.entry(time).or_default().push(update);
    }

    /// The earliest stashed time with its updates and a capability for it, if `ready`
    /// says its time has come.
    pub(crate) fn pop_ready(&mut self, ready: impl Fn(&Time) -> bool) -> Option<(Capability<Time>, Time, Vec<D>)> {
        let (&time, _) = self.by_time.first_key_value()?;
        if !ready(&time) {
            return None;
        }
        let updates = self.by_time.remove(&time).expect("the first key exists");
        let cap = self.held.at(&time);
        Some((cap, time, updates))
    }

    /// The earliest stashed time, if any.
    pub(crate) fn first_time(&self) -> Option<Time> {
        self.by_time.keys().next().copied()
    }

    /// The updates stashed at exactly `time`, with a capability for it (none stashed: no
    /// capability and nothing).
    pub(crate) fn pop_at(&mut self, time: Time) -> (Option<Capability<Time>>, Vec<D>) {
        match self.by_time.remove(&time) {
            Some(updates) => (Some(self.held.at(&time)), updates),
            None => (None, Vec::new()),
        }
    }

    /// Moves the held capability to the earliest stashed time, or drops it (call after
    /// popping).
    pub(crate) fn settle(&mut self) {
        self.held.settle(self.first_time());
    }
}

/// For an operator with two inputs stashed by time: the earliest time either has stashed,
/// once `complete` says both inputs have passed it, with a capability for it and the
/// updates of each at that time (call [`Pending::settle`] on both after popping).
pub(crate) fn pop_ready_pair<A, B>(a: &mut Pending<A>, b: &mut Pending<B>, complete: impl Fn(&Time) -> bool) -> Option<(Capability<Time>, Time, Vec<A>, Vec<B>)> {
    let time = [a.first_time(), b.first_time()].into_iter().flatten().min().filter(|t| complete(t))?;
    let (cap_a, from_a) = a.pop_at(time);
    let (cap_b, from_b) = b.pop_at(time);
    Some((cap_a.or(cap_b)?, time, from_a, from_b))
}

/// A reduce's input values with multiplicities expanded (a value of count `n` appears `n`
/// times), in reduce order.
pub(crate) fn expanded<'a, T>(input: &'a [(&'a T, isize)]) -> impl Iterator<Item = &'a T> + 'a {
    input.iter().flat_map(|(v, n)| std::iter::repeat_n(*v, (*n).max(0) as usize))
}

/// Keys a reduce's output values (the `push` half of `reduce_abelian`).
pub(crate) fn push_keyed<V>(buffer: &mut Vec<((u64, V), Time, isize)>, key: &u64, updates: &mut Vec<(V, Time, isize)>) {
    buffer.clear();
    buffer.extend(updates.drain(..).map(|(v, t, r)| ((*key, v), t, r)));
}

/// `kpis`: event sums by event-time window, distinct orders, and the sessions part of
/// the funnel's `all` changes, summed by window.
fn kpis<'scope>(events: VecCollection<'scope, Time, Arc<Event>>, funnel: Stream<'scope, Time, Vec<(FunnelKey, Time, FunnelAgg)>>) -> ViewArrangement<'scope, KpiKey, KpiAgg> {
    let key = |granularity: Granularity, ts: Millis| KpiKey { granularity, window_start: granularity.window_start(ts) };
    let by_event = events.inner.clone().flat_map(move |(e, t, r)| {
        let agg = KpiAgg::of_event(&e).multiply(&r);
        Granularity::ALL.map(|g| (key(g, e.event_ts), t, agg))
    });
    let orders = events
        .filter(|e| e.event_type == EventType::Purchase)
        .flat_map(|e| Granularity::ALL.map(|g| -> OrderInWindow { (g, g.window_start(e.event_ts), e.order_key().to_owned()) }))
        .distinct()
        .inner
        .map(|((granularity, window_start, _order), t, r)| (KpiKey { granularity, window_start }, t, KpiAgg { orders: 1, ..KpiAgg::default() }.multiply(&r)));
    let sessions = funnel.flat_map(|(k, t, a)| {
        (k.dimension == Dimension::All).then(|| (KpiKey { granularity: k.granularity, window_start: k.window_start }, t, KpiAgg::of_funnel(&a)))
    });
    let sums = by_event.concat(orders).concat(sessions).sum_each_message("Kpis: sums of each message").accumulate("Kpis: sums by window");
    arrange_placed(sums.as_collection(), "Arrange: kpis")
}
