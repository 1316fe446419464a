//! Row types of the views, and the aggregate types their sums are kept in.
//!
//! Every row is `Ord` and exchangeable, so it can live in a differential collection.
//! Ratios (conversion rates, average order value) are not stored: they are derived from
//! the exact integer counts when a row is shown ([`FunnelRow::rates`], [`KpiRow::rates`]),
//! so no floating-point sum ever depends on update order.
//!
//! Windowed aggregates are kept as *difference types*: each session or event contributes
//! a [`FunnelAgg`] or [`KpiAgg`] as the weight of its window key, and differential sums
//! weights as it consolidates. An update therefore costs a constant amount of work per
//! window, however many sessions the window holds.

use std::collections::BTreeSet;

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::dictionary::Dim;
use crate::event::{Event, EventType, Text};
use crate::time::{Granularity, Millis};

/// Sessions are split after this much inactivity when the shop sends no `session_id`.
pub const SESSION_GAP_MS: Millis = 30 * 60 * 1000;

/// The value used for a dimension that a session does not carry.
pub const NONE_VALUE: &str = "(none)";

/// The value of every session under [`Dimension::All`].
pub(crate) const ALL_TEXT: &str = "all";

/// [`ALL_TEXT`] and [`NONE_VALUE`] as dictionary codes.
fn fixed_values() -> (Dim, Dim) {
    static FIXED: std::sync::OnceLock<(Dim, Dim)> = std::sync::OnceLock::new();
    *FIXED.get_or_init(|| (Dim::new(ALL_TEXT), Dim::new(NONE_VALUE)))
}

/// One session of one user.
///
/// Key: `(user_id, session_id)`. A derived session (no `session_id` from the shop) is named
/// `derived:<start ms>`. Ordered by its fields in order (see [`Ord for SessionRow`](#impl-Ord-for-SessionRow)).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionRow {
    /// The user.
    pub user_id: Text,
    /// The shop's session id, or `derived:<start ms>` for a derived one.
    pub session_id: Text,
    /// Whether the session was derived (split by inactivity) rather than given by the
    /// shop: part of the key, so that no shop id can name a derived session.
    pub derived: bool,
    /// Event time of the first event.
    pub start_ts: Millis,
    /// Event time of the last event.
    pub end_ts: Millis,
    /// Number of events.
    pub events: u64,
    /// `page_view` events.
    pub page_views: u64,
    /// `product_view` events.
    pub product_views: u64,
    /// Distinct products with a `product_view`.
    pub products_viewed: u64,
    /// `add_to_cart` events.
    pub cart_adds: u64,
    /// `checkout` events.
    pub checkouts: u64,
    /// `purchase` events.
    pub purchases: u64,
    /// Distinct orders among the purchases (a purchase without `order_id` is its own order).
    pub orders: u64,
    /// Sum of purchase amounts (price × quantity), cents.
    pub revenue_cents: i64,
    /// Furthest ordered funnel step reached: 0 none, 1 view, 2 cart, 3 checkout, 4 purchase.
    pub funnel_step: u8,
    /// Country of the first event that has one.
    pub country: Option<Dim>,
    /// Device OS of the first event that has one.
    pub device: Option<Dim>,
    /// UTM source of the first event that has one.
    pub utm_source: Option<Dim>,
    /// Category of the first event that has one.
    pub category: Option<Dim>,
}

impl SessionRow {
    /// The fields after the two texts, in order.
    #[allow(clippy::type_complexity)]
    fn numbers(&self) -> ((bool, Millis, Millis, u64), (u64, u64, u64, u64, u64, u64, u64), (i64, u8), [Option<Dim>; 4]) {
        (
            (self.derived, self.start_ts, self.end_ts, self.events),
            (self.page_views, self.product_views, self.products_viewed, self.cart_adds, self.checkouts, self.purchases, self.orders),
            (self.revenue_cents, self.funnel_step),
            [self.country, self.device, self.utm_source, self.category],
        )
    }
}

/// Texts compared as texts, but by pointer first: the rows of one user share its id, and
/// a session's rows share their session id.
fn text_cmp(a: &Text, b: &Text) -> std::cmp::Ordering {
    if Arc::ptr_eq(a, b) {
        std::cmp::Ordering::Equal
    } else {
        a.cmp(b)
    }
}

impl PartialEq for SessionRow {
    fn eq(&self, other: &Self) -> bool {
        text_cmp(&self.user_id, &other.user_id).is_eq() && text_cmp(&self.session_id, &other.session_id).is_eq() && self.numbers() == other.numbers()
    }
}

impl Eq for SessionRow {}

impl std::hash::Hash for SessionRow {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (&self.user_id, &self.session_id, self.numbers()).hash(state)
    }
}

impl Ord for SessionRow {
    /// By the fields in their declared order, as a derived order would be.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        text_cmp(&self.user_id, &other.user_id)
            .then_with(|| text_cmp(&self.session_id, &other.session_id))
            .then_with(|| self.numbers().cmp(&other.numbers()))
    }
}

impl PartialOrd for SessionRow {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The arrangement key of an id: its placement hash ([`tidemark_routing::key_hash`],
/// fixed and process-independent).
///
/// Arrangements are keyed by this hash rather than by the id itself, because comparing
/// integers is much cheaper than comparing strings. The ids stay in the values, and every
/// reduce groups by the real id, so two ids that share a hash share a key but are never
/// merged: results stay exact. Views keyed by an id are placed on worker
/// `key_of(id) mod workers`, the rule the coordinator routes lookups by
/// (`tidemark_proto::routing`).
pub fn key_of(id: &str) -> u64 {
    tidemark_routing::key_hash(id)
}

/// Separates the values of a multi-column key in its routing text.
pub const ROUTE_SEPARATOR: char = tidemark_routing::SEPARATOR;

/// The worker placement of a view's key: [`key_of`] its routing text (the routing
/// columns as text, joined by [`ROUTE_SEPARATOR`]).
pub trait Route {
    /// The placement hash.
    fn route(&self) -> u64;
}

impl Route for u64 {
    /// An id's hash ([`key_of`]) places itself.
    fn route(&self) -> u64 {
        *self
    }
}

impl Route for FunnelKey {
    fn route(&self) -> u64 {
        let s = ROUTE_SEPARATOR;
        key_of(&format!("{}{s}{}{s}{}{s}{}", self.granularity.name(), self.window_start, self.dimension.name(), self.value))
    }
}

impl Route for KpiKey {
    fn route(&self) -> u64 {
        key_of(&format!("{}{ROUTE_SEPARATOR}{}", self.granularity.name(), self.window_start))
    }
}

impl Route for crate::decode::RejectReason {
    fn route(&self) -> u64 {
        key_of(self.name())
    }
}

/// An event as sessions see it: ordered by (`event_ts`, `event_type`, then the event,
/// whose own order starts with its id), which is the order sessions walk events in. It
/// reads as the event it holds (`e.event_ts`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionEvent {
    /// The event (shared with the dedup stage).
    pub event: Arc<Event>,
}

impl std::ops::Deref for SessionEvent {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.event
    }
}

impl PartialOrd for SessionEvent {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SessionEvent {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.event_ts, self.event_type, &self.event).cmp(&(other.event_ts, other.event_type, &other.event))
    }
}

impl From<&Arc<Event>> for SessionEvent {
    fn from(e: &Arc<Event>) -> Self {
        SessionEvent { event: e.clone() }
    }
}

/// Splits the events under one arrangement key into sessions, user by user.
///
/// `events` must be sorted as differential presents reduce inputs (see [`sessionize`]).
pub fn sessionize_users(events: &[&SessionEvent]) -> Vec<SessionRow> {
    group_by_id(events.iter().copied(), |e| e.event.user_id()).into_iter().flat_map(|events| sessionize(&events)).collect()
}

/// The values under one arrangement key (a [`key_of`] hash), grouped by the real id each
/// belongs to, in id order; a group keeps the values' order. Ids that share a hash share
/// a key but never a group.
pub fn group_by_id<'a, T: ?Sized>(values: impl IntoIterator<Item = &'a T>, id: impl for<'b> Fn(&'b T) -> &'b str) -> Vec<Vec<&'a T>> {
    let mut groups: std::collections::BTreeMap<&'a str, Vec<&'a T>> = std::collections::BTreeMap::new();
    for v in values {
        groups.entry(id(v)).or_default().push(v);
    }
    groups.into_values().collect()
}

/// Splits one user's events into sessions.
///
/// `events` must be sorted by (`event_ts`, `event_type`, `event_id`), as differential
/// presents reduce inputs. Events with a `session_id` group by it; the others split where
/// consecutive events lie more than [`SESSION_GAP_MS`] apart.
pub fn sessionize(events: &[&SessionEvent]) -> Vec<SessionRow> {
    sessionize_reusing(events, &[])
}

/// [`sessionize`], taking the texts of a row from `earlier` (the user's sessions before
/// a change) where one holds them: the user id, a shop session's id, and the name of a
/// derived session that starts where one of `earlier` started (`derived:<start ms>`).
/// Events pack their ids, so a row's texts are otherwise made anew.
pub fn sessionize_reusing(events: &[&SessionEvent], earlier: &[&SessionRow]) -> Vec<SessionRow> {
    let Some(first) = events.first() else { return Vec::new() };
    let user = match earlier.first() {
        Some(s) if *s.user_id == *first.event.user_id() => s.user_id.clone(),
        _ => Text::from(first.event.user_id()),
    };
    let mut given: Vec<(&str, Vec<&SessionEvent>)> = Vec::new();
    let mut derived: Vec<Vec<&SessionEvent>> = Vec::new();
    for &e in events {
        match e.event.session_id() {
            Some(id) => match given.iter_mut().find(|(g, _)| *g == id) {
                Some((_, group)) => group.push(e),
                None => given.push((id, vec![e])),
            },
            None => match derived.last_mut() {
                Some(group) if e.event_ts - group.last().expect("groups are never empty").event_ts <= SESSION_GAP_MS => group.push(e),
                _ => derived.push(vec![e]),
            },
        }
    }
    let given_id = |id: &str| match earlier.iter().find(|s| !s.derived && *s.session_id == *id) {
        Some(s) => s.session_id.clone(),
        None => Text::from(id),
    };
    let mut rows: Vec<SessionRow> = given.into_iter().map(|(id, group)| summarize(&user, given_id(id), false, &group)).collect();
    let name = |start: Millis| match earlier.iter().find(|s| s.derived && s.start_ts == start) {
        Some(s) => s.session_id.clone(),
        None => Text::from(format!("derived:{start}")),
    };
    rows.extend(derived.into_iter().map(|group| summarize(&user, name(group[0].event_ts), true, &group)));
    rows
}

fn summarize(user_id: &Text, session_id: Text, derived: bool, events: &[&SessionEvent]) -> SessionRow {
    let first = |f: fn(&Event) -> Option<Dim>| events.iter().find_map(|e| f(&e.event));
    let mut row = SessionRow {
        user_id: user_id.clone(),
        session_id,
        derived,
        start_ts: events[0].event_ts,
        end_ts: events[events.len() - 1].event_ts,
        events: events.len() as u64,
        page_views: 0,
        product_views: 0,
        products_viewed: 0,
        cart_adds: 0,
        checkouts: 0,
        purchases: 0,
        orders: 0,
        revenue_cents: 0,
        funnel_step: 0,
        country: first(|e| e.country),
        device: first(|e| e.device_os),
        utm_source: first(|e| e.utm_source),
        category: first(|e| e.category),
    };
    let mut products = BTreeSet::new();
    let mut orders = BTreeSet::new();
    for e in events {
        match e.event_type {
            EventType::PageView => row.page_views += 1,
            EventType::ProductView => {
                row.product_views += 1;
                products.extend(e.event.product_id());
            }
            EventType::AddToCart => row.cart_adds += 1,
            EventType::Checkout => row.checkouts += 1,
            EventType::Purchase => {
                row.purchases += 1;
                row.revenue_cents += e.event.amount_cents();
                orders.insert(e.event.order_key());
            }
            _ => {}
        }
        row.funnel_step = next_step(row.funnel_step, e.event_type);
    }
    row.products_viewed = products.len() as u64;
    row.orders = orders.len() as u64;
    row
}

/// The ordered funnel: the step after `step` if `event_type` is the next step's event.
pub fn next_step(step: u8, event_type: EventType) -> u8 {
    match (step, event_type) {
        (0, t) if t.is_view() => 1,
        (1, EventType::AddToCart) => 2,
        (2, EventType::Checkout) => 3,
        (3, EventType::Purchase) => 4,
        _ => step,
    }
}

/// A funnel dimension.
///
/// Variants are declared in the order of their names, so that funnel keys sort as the
/// API's text columns do ([`FunnelKey`]'s order is the `funnel` view's key order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// Every session (value `all`).
    All,
    /// The session's category (of its first event with one).
    Category,
    /// The session's country.
    Country,
    /// The session's device OS.
    Device,
    /// The session's UTM source.
    UtmSource,
}

impl Dimension {
    /// All dimensions the funnel is kept for.
    pub const ALL: [Dimension; 5] = [Dimension::All, Dimension::Country, Dimension::Device, Dimension::UtmSource, Dimension::Category];

    /// The dimension of a name.
    pub fn from_name(name: &str) -> Option<Dimension> {
        Dimension::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The snake_case name used in views and files.
    pub fn name(self) -> &'static str {
        match self {
            Dimension::All => "all",
            Dimension::Country => "country",
            Dimension::Device => "device",
            Dimension::UtmSource => "utm_source",
            Dimension::Category => "category",
        }
    }

    /// The session's field this dimension reads (`None` for [`Dimension::All`]).
    pub(crate) fn field(self, s: &SessionRow) -> Option<&Option<Dim>> {
        match self {
            Dimension::All => None,
            Dimension::Country => Some(&s.country),
            Dimension::Device => Some(&s.device),
            Dimension::UtmSource => Some(&s.utm_source),
            Dimension::Category => Some(&s.category),
        }
    }

    /// The dimension's value for a session.
    pub fn value_of(self, s: &SessionRow) -> Dim {
        let (all, none) = fixed_values();
        match self.field(s) {
            None => all,
            Some(v) => v.unwrap_or(none),
        }
    }
}

/// Key of the `funnel` view, ordered by its fields in order (the values as text).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FunnelKey {
    /// Window size.
    pub granularity: Granularity,
    /// Window start (event time, ms).
    pub window_start: Millis,
    /// Dimension.
    pub dimension: Dimension,
    /// Dimension value (`all` for [`Dimension::All`], `(none)` when absent).
    pub value: Dim,
}

/// Every funnel key a session counts under: one per granularity and dimension, in the
/// window that contains the session's start.
pub fn funnel_keys(s: &SessionRow) -> impl Iterator<Item = FunnelKey> + '_ {
    Granularity::ALL.into_iter().flat_map(move |g| {
        Dimension::ALL.into_iter().map(move |d| FunnelKey {
            granularity: g,
            window_start: g.window_start(s.start_ts),
            dimension: d,
            value: d.value_of(s),
        })
    })
}

/// Implements differential's difference traits for a struct of `i64` counters.
macro_rules! counter_struct {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name { $($(#[$fmeta])* pub $field: i64),* }

        impl $name {
            /// The field names, in declaration order.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];

            /// The field values, in the order of [`Self::FIELDS`].
            pub fn values(&self) -> Vec<i64> {
                vec![$(self.$field),*]
            }
        }

        impl IsZero for $name {
            fn is_zero(&self) -> bool { $(self.$field == 0)&&* }
        }
        impl Semigroup for $name {
            fn plus_equals(&mut self, rhs: &Self) { $(self.$field += rhs.$field;)* }
        }
        impl Monoid for $name {
            fn zero() -> Self { Self::default() }
        }
        impl Abelian for $name {
            fn negate(&mut self) { $(self.$field = -self.$field;)* }
        }
        impl Multiply<isize> for $name {
            type Output = Self;
            fn multiply(self, rhs: &isize) -> Self {
                let k = *rhs as i64;
                Self { $($field: self.$field * k),* }
            }
        }
    };
}

counter_struct! {
    /// The sums behind one funnel row.
    FunnelAgg {
        /// Sessions that started in the window.
        sessions,
        /// Sessions that reached the view step.
        reached_view,
        /// Sessions that reached the cart step (after a view).
        reached_cart,
        /// Sessions that reached checkout (after a cart add).
        reached_checkout,
        /// Sessions that reached purchase (after checkout).
        reached_purchase,
        /// Sessions with at least one purchase, in funnel order or not.
        purchasing_sessions,
        /// Orders of those sessions.
        orders,
        /// Revenue of those sessions, cents.
        revenue_cents,
        /// Distinct users among those sessions.
        unique_users,
    }
}

impl FunnelAgg {
    /// The contribution of one session (everything but `unique_users`).
    pub fn of_session(s: &SessionRow) -> Self {
        Self::session(s.funnel_step, s.purchases > 0, s.orders as i64, s.revenue_cents)
    }

    /// The contribution of a session that reached `step`, bought or not, with `orders`
    /// orders worth `revenue_cents` (everything but `unique_users`).
    pub fn session(step: u8, purchased: bool, orders: i64, revenue_cents: i64) -> Self {
        FunnelAgg {
            sessions: 1,
            reached_view: i64::from(step >= 1),
            reached_cart: i64::from(step >= 2),
            reached_checkout: i64::from(step >= 3),
            reached_purchase: i64::from(step >= 4),
            purchasing_sessions: i64::from(purchased),
            orders,
            revenue_cents,
            unique_users: 0,
        }
    }
}

/// One row of the `funnel` view.
pub type FunnelRow = (FunnelKey, FunnelAgg);

/// Derived ratios of a funnel or KPI row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rates {
    /// reached_cart / reached_view.
    pub view_to_cart: Option<f64>,
    /// reached_checkout / reached_cart.
    pub cart_to_checkout: Option<f64>,
    /// reached_purchase / reached_checkout.
    pub checkout_to_purchase: Option<f64>,
    /// purchasing sessions / sessions.
    pub conversion: Option<f64>,
    /// Average order value in currency units: revenue / orders.
    pub aov: Option<f64>,
}

fn ratio(num: i64, den: i64) -> Option<f64> {
    (den != 0).then(|| num as f64 / den as f64)
}

impl FunnelAgg {
    /// Step conversion rates, conversion and AOV (None where the denominator is 0).
    pub fn rates(&self) -> Rates {
        Rates {
            view_to_cart: ratio(self.reached_cart, self.reached_view),
            cart_to_checkout: ratio(self.reached_checkout, self.reached_cart),
            checkout_to_purchase: ratio(self.reached_purchase, self.reached_checkout),
            conversion: ratio(self.purchasing_sessions, self.sessions),
            aov: ratio(self.revenue_cents, self.orders).map(|c| c / 100.0),
        }
    }
}

/// Key of the `kpis` view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KpiKey {
    /// Window size.
    pub granularity: Granularity,
    /// Window start (event time, ms).
    pub window_start: Millis,
}

counter_struct! {
    /// The headline numbers of one window.
    ///
    /// Event counts, orders and revenue are by *event time* of each event; sessions,
    /// purchasing sessions and unique users by the window of each session's start (as in
    /// the funnel's `all` row).
    KpiAgg {
        /// Valid events in the window.
        events,
        /// `page_view` events.
        page_views,
        /// `product_view` events.
        product_views,
        /// `add_to_cart` events.
        cart_adds,
        /// `remove_from_cart` events.
        cart_removes,
        /// `checkout` events.
        checkouts,
        /// `purchase` events.
        purchases,
        /// Distinct orders among the window's purchases.
        orders,
        /// Purchase revenue, cents.
        revenue_cents,
        /// `refund` events.
        refunds,
        /// Refunded amount, cents.
        refund_cents,
        /// `payment` events.
        payments,
        /// Paid amount, cents.
        payment_cents,
        /// Sessions that started in the window.
        sessions,
        /// Of those, sessions with a purchase.
        purchasing_sessions,
        /// Distinct users among those sessions.
        unique_users,
    }
}

impl KpiAgg {
    /// The contribution of one event (its counts and amounts).
    pub fn of_event(e: &Event) -> Self {
        Self::event(e.event_type, e.amount_cents())
    }

    /// The contribution of one event of type `event_type` with this amount.
    pub fn event(event_type: EventType, amount: i64) -> Self {
        let mut k = KpiAgg { events: 1, ..KpiAgg::default() };
        match event_type {
            EventType::PageView => k.page_views = 1,
            EventType::ProductView => k.product_views = 1,
            EventType::AddToCart => k.cart_adds = 1,
            EventType::RemoveFromCart => k.cart_removes = 1,
            EventType::Checkout => k.checkouts = 1,
            EventType::Purchase => {
                k.purchases = 1;
                k.revenue_cents = amount;
            }
            EventType::Refund => {
                k.refunds = 1;
                k.refund_cents = amount;
            }
            EventType::Payment => {
                k.payments = 1;
                k.payment_cents = amount;
            }
            EventType::Retraction => {}
        }
        k
    }

    /// The session-based part of a funnel `all` row.
    pub fn of_funnel(f: &FunnelAgg) -> Self {
        KpiAgg {
            sessions: f.sessions,
            purchasing_sessions: f.purchasing_sessions,
            unique_users: f.unique_users,
            ..KpiAgg::default()
        }
    }

    /// Conversion (purchasing sessions / sessions) and AOV; step rates are not defined here.
    pub fn rates(&self) -> Rates {
        Rates {
            view_to_cart: None,
            cart_to_checkout: None,
            checkout_to_purchase: None,
            conversion: ratio(self.purchasing_sessions, self.sessions),
            aov: ratio(self.revenue_cents, self.orders).map(|c| c / 100.0),
        }
    }
}

/// One row of the `kpis` view.
pub type KpiRow = (KpiKey, KpiAgg);

/// Key of a windowed distinct-order count: (granularity, window start, order key).
pub type OrderInWindow = (Granularity, Millis, String);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::NewEvent;

    fn ev(user: &str, id: &str, ts: Millis, t: EventType, session: Option<&str>) -> SessionEvent {
        let e = NewEvent { event_id: id, user_id: user, session_id: session, ..NewEvent::default() }.build(t, ts);
        SessionEvent::from(&Arc::new(e))
    }

    /// Users that share an arrangement key are sessionized separately.
    #[test]
    fn users_sharing_a_key_stay_apart() {
        let mut events = [
            ev("a", "1", 0, EventType::ProductView, None),
            ev("b", "2", 60_000, EventType::ProductView, None),
            ev("a", "3", 120_000, EventType::AddToCart, None),
            ev("b", "4", 40 * 60_000, EventType::PageView, None),
            ev("a", "5", 10_000, EventType::PageView, Some("s")),
        ];
        events.sort();
        let refs: Vec<&SessionEvent> = events.iter().collect();
        let mut together = sessionize_users(&refs);
        let mut apart: Vec<SessionRow> = ["a", "b"]
            .iter()
            .flat_map(|u| sessionize(&refs.iter().copied().filter(|e| e.event.user_id() == *u).collect::<Vec<_>>()))
            .collect();
        together.sort();
        apart.sort();
        assert_eq!(together, apart);
        // a: derived session (view, cart) and shop session "s"; b: two sessions 39 min apart.
        assert_eq!(together.len(), 4);
        let a_derived = together.iter().find(|s| &*s.user_id == "a" && s.session_id.starts_with("derived")).expect("a's session");
        assert_eq!((a_derived.events, a_derived.funnel_step), (2, 2));
    }
}
