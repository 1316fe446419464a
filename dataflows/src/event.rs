//! The event model: what a shop emits, after validation.
//!
//! An [`Event`] is one validated record of the JSON schema in the README. Amounts are
//! integer cents and coordinates integer micro-degrees, so that every aggregate is
//! exact and independent of the order in which updates are summed.
//!
//! A *correction* is an event that names an earlier event in `retracts`: the earlier
//! event is removed from every view and the correction (unless its type is
//! [`EventType::Retraction`], a pure cancellation) takes its place.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::dictionary::Dim;
use crate::time::Millis;

/// Text in events and rows: shared, so that copies made by arrangements (on every
/// merge) and by views (rows repeat ids and dimension values) cost a reference count.
pub type Text = Arc<str>;

/// The kind of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A page was shown.
    PageView,
    /// A product detail page was shown.
    ProductView,
    /// A product was put into the cart.
    AddToCart,
    /// A product was taken out of the cart.
    RemoveFromCart,
    /// The checkout was started.
    Checkout,
    /// An order line was bought (`price` × `quantity`).
    Purchase,
    /// Money was given back for an order.
    Refund,
    /// A payment attempt with a card.
    Payment,
    /// Cancels the event named in `retracts`, and nothing else.
    Retraction,
}

impl EventType {
    /// Every event type, in schema order.
    pub const ALL: [EventType; 9] = [
        EventType::PageView,
        EventType::ProductView,
        EventType::AddToCart,
        EventType::RemoveFromCart,
        EventType::Checkout,
        EventType::Purchase,
        EventType::Refund,
        EventType::Payment,
        EventType::Retraction,
    ];

    /// The wire name (`page_view`, ...).
    pub fn name(self) -> &'static str {
        match self {
            EventType::PageView => "page_view",
            EventType::ProductView => "product_view",
            EventType::AddToCart => "add_to_cart",
            EventType::RemoveFromCart => "remove_from_cart",
            EventType::Checkout => "checkout",
            EventType::Purchase => "purchase",
            EventType::Refund => "refund",
            EventType::Payment => "payment",
            EventType::Retraction => "retraction",
        }
    }

    /// Parses a wire name.
    pub fn from_name(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Whether the type carries an amount that must be present (`price`).
    pub fn needs_amount(self) -> bool {
        matches!(self, EventType::Purchase | EventType::Refund | EventType::Payment)
    }

    /// Whether the type is about one product and so needs `product_id`.
    pub fn needs_product(self) -> bool {
        matches!(self, EventType::ProductView | EventType::AddToCart | EventType::RemoveFromCart)
    }

    /// Whether the event counts as a view (the first funnel step).
    pub fn is_view(self) -> bool {
        matches!(self, EventType::PageView | EventType::ProductView)
    }
}

/// The identifiers and free texts of an event, in the order [`Event`] packs them.
#[derive(Clone, Copy)]
enum Field {
    EventId,
    UserId,
    SessionId,
    ProductId,
    OrderId,
    Ip,
    DeviceId,
    CardId,
    Retracts,
}

/// How many texts an event packs.
const PACKED: usize = 9;

/// One validated event.
///
/// Compact, because the views keep every retained event: the identifiers and free texts
/// (ids, IP address, device id, the event a correction retracts), which seldom repeat,
/// are packed into one allocation and read through methods (`event_id()`, ...); the
/// dimension values (country, category, UTM tags, ...), which repeat across events, are
/// 4-byte codes of the process's dictionary ([`Dim`]); numbers are fields. An absent text and an
/// empty one are the same (decoding reads an empty string as absent). Build one with
/// [`Event::new`] and [`NewEvent`].
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Event {
    /// Event time, milliseconds since the epoch.
    pub event_ts: Millis,
    /// Unit price in cents (the amount, for payments and refunds).
    pub price_cents: Option<i64>,
    /// Number of units (1 when absent).
    pub quantity: u32,
    /// What happened.
    pub event_type: EventType,
    /// Whether the device is a phone or tablet.
    pub mobile: Option<bool>,
    /// Latitude in micro-degrees.
    pub lat_e6: Option<i32>,
    /// Longitude in micro-degrees.
    pub lon_e6: Option<i32>,
    /// Product category.
    pub category: Option<Dim>,
    /// ISO 4217 currency code.
    pub currency: Option<Dim>,
    /// `utm_source`, e.g. `google`.
    pub utm_source: Option<Dim>,
    /// `utm_medium`, e.g. `cpc`.
    pub utm_medium: Option<Dim>,
    /// `utm_campaign`.
    pub utm_campaign: Option<Dim>,
    /// The device's operating system, e.g. `ios`.
    pub device_os: Option<Dim>,
    /// ISO 3166-1 alpha-2 country code.
    pub country: Option<Dim>,
    /// City name.
    pub city: Option<Dim>,
    /// The country the card is billed to (ISO 3166-1 alpha-2), for payments.
    pub billing_country: Option<Dim>,
    /// The packed texts, one after the other, in [`Field`] order.
    texts: Box<str>,
    /// Where each packed text ends in `texts`.
    ends: [u32; PACKED],
}

/// The texts of an event to build: what [`NewEvent::build`] packs. The dimension values
/// and numbers are set on the [`Event`] itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewEvent<'a> {
    /// Unique id: deliveries with the same id count once.
    pub event_id: &'a str,
    /// Who did it.
    pub user_id: &'a str,
    /// The shop's session id, when it sends one; otherwise sessions are derived.
    pub session_id: Option<&'a str>,
    /// Product concerned.
    pub product_id: Option<&'a str>,
    /// Order the event belongs to.
    pub order_id: Option<&'a str>,
    /// Client IP address.
    pub ip: Option<&'a str>,
    /// A stable device identifier.
    pub device_id: Option<&'a str>,
    /// Hashed payment instrument.
    pub card_id: Option<&'a str>,
    /// The id of an earlier event this one corrects or cancels.
    pub retracts: Option<&'a str>,
}

impl<'a> NewEvent<'a> {
    /// The texts in [`Field`] order.
    fn texts(&self) -> [&'a str; PACKED] {
        let o = |t: Option<&'a str>| t.unwrap_or("");
        [self.event_id, self.user_id, o(self.session_id), o(self.product_id), o(self.order_id), o(self.ip), o(self.device_id), o(self.card_id), o(self.retracts)]
    }

    /// An event of the given type and time with these texts; no dimension value, price
    /// or place, and one unit.
    pub fn build(&self, event_type: EventType, event_ts: Millis) -> Event {
        let texts = self.texts();
        let mut packed = String::with_capacity(texts.iter().map(|t| t.len()).sum());
        let mut ends = [0u32; PACKED];
        for (end, text) in ends.iter_mut().zip(texts) {
            packed.push_str(text);
            // A record longer than 4 GiB is rejected as oversized long before this.
            *end = u32::try_from(packed.len()).unwrap_or(u32::MAX);
        }
        Event {
            event_ts,
            price_cents: None,
            quantity: 1,
            event_type,
            mobile: None,
            lat_e6: None,
            lon_e6: None,
            category: None,
            currency: None,
            utm_source: None,
            utm_medium: None,
            utm_campaign: None,
            device_os: None,
            country: None,
            city: None,
            billing_country: None,
            texts: packed.into_boxed_str(),
            ends,
        }
    }
}

impl Event {
    /// A minimal event of the given type; the other fields are empty.
    pub fn new(event_id: &str, event_type: EventType, event_ts: Millis, user_id: &str) -> Self {
        NewEvent { event_id, user_id, ..NewEvent::default() }.build(event_type, event_ts)
    }

    /// The event's texts.
    pub fn texts(&self) -> NewEvent<'_> {
        NewEvent {
            event_id: self.event_id(),
            user_id: self.user_id(),
            session_id: self.session_id(),
            product_id: self.product_id(),
            order_id: self.order_id(),
            ip: self.ip(),
            device_id: self.device_id(),
            card_id: self.card_id(),
            retracts: self.retracts(),
        }
    }

    /// A packed text (`""` if absent).
    fn text(&self, field: Field) -> &str {
        let i = field as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        // Read leniently: an event read back from a peer cannot make a read panic.
        self.texts.get(start..self.ends[i] as usize).unwrap_or("")
    }

    /// A packed optional text.
    fn optional(&self, field: Field) -> Option<&str> {
        Some(self.text(field)).filter(|t| !t.is_empty())
    }

    /// Unique id: deliveries with the same id count once.
    pub fn event_id(&self) -> &str {
        self.text(Field::EventId)
    }

    /// Who did it.
    pub fn user_id(&self) -> &str {
        self.text(Field::UserId)
    }

    /// The shop's session id, when it sends one; otherwise sessions are derived.
    pub fn session_id(&self) -> Option<&str> {
        self.optional(Field::SessionId)
    }

    /// Product concerned.
    pub fn product_id(&self) -> Option<&str> {
        self.optional(Field::ProductId)
    }

    /// Order the event belongs to.
    pub fn order_id(&self) -> Option<&str> {
        self.optional(Field::OrderId)
    }

    /// Client IP address.
    pub fn ip(&self) -> Option<&str> {
        self.optional(Field::Ip)
    }

    /// A stable device identifier.
    pub fn device_id(&self) -> Option<&str> {
        self.optional(Field::DeviceId)
    }

    /// Hashed payment instrument.
    pub fn card_id(&self) -> Option<&str> {
        self.optional(Field::CardId)
    }

    /// The id of an earlier event this one corrects or cancels.
    pub fn retracts(&self) -> Option<&str> {
        self.optional(Field::Retracts)
    }

    /// The fields in the order events sort by: time, id, type, user, then the rest.
    #[allow(clippy::type_complexity)]
    fn sort_key(&self) -> impl Ord + '_ {
        (
            (self.event_ts, self.event_id(), self.event_type, self.user_id(), self.session_id(), self.product_id(), self.category.as_deref(), self.price_cents, self.quantity),
            (self.currency.as_deref(), self.order_id(), (self.utm_source.as_deref(), self.utm_medium.as_deref(), self.utm_campaign.as_deref())),
            (self.device_os.as_deref(), self.mobile, self.device_id(), self.country.as_deref(), self.city.as_deref(), self.lat_e6, self.lon_e6),
            (self.ip(), self.card_id(), self.billing_country.as_deref(), self.retracts()),
        )
    }

    /// Price × quantity in cents (0 without a price).
    pub fn amount_cents(&self) -> i64 {
        self.price_cents.unwrap_or(0).saturating_mul(i64::from(self.quantity))
    }

    /// The order this purchase counts as: its `order_id`, or its own id without one.
    pub fn order_key(&self) -> &str {
        self.order_id().unwrap_or(self.event_id())
    }

    /// The canonical JSON form (the schema of the README), as the decoder accepts it.
    pub fn to_json(&self) -> String {
        let mut obj = serde_json::Map::new();
        let s = |v: &str| serde_json::Value::String(v.to_owned());
        obj.insert("event_id".into(), s(self.event_id()));
        obj.insert("event_type".into(), s(self.event_type.name()));
        obj.insert("event_ts".into(), s(&crate::time::format_timestamp(self.event_ts)));
        obj.insert("user_id".into(), s(self.user_id()));
        let dims = [
            ("category", self.category.as_deref()),
            ("currency", self.currency.as_deref()),
            ("billing_country", self.billing_country.as_deref()),
        ];
        let texts = [
            ("session_id", self.session_id()),
            ("product_id", self.product_id()),
            ("order_id", self.order_id()),
            ("ip", self.ip()),
            ("card_id", self.card_id()),
            ("retracts", self.retracts()),
        ];
        for (k, v) in texts.into_iter().chain(dims) {
            if let Some(v) = v {
                obj.insert(k.into(), s(v));
            }
        }
        if let Some(p) = self.price_cents {
            obj.insert("price".into(), serde_json::json!(p as f64 / 100.0));
        }
        if self.quantity != 1 {
            obj.insert("quantity".into(), serde_json::json!(self.quantity));
        }
        // A nested object, with all its fields, when one of them is known.
        let mut nested = |key: &str, fields: &[(&str, serde_json::Value)]| {
            if fields.iter().any(|(_, v)| !v.is_null()) {
                obj.insert(key.into(), serde_json::Value::Object(fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()));
            }
        };
        nested("utm", &[("source", serde_json::json!(self.utm_source)), ("medium", serde_json::json!(self.utm_medium)), ("campaign", serde_json::json!(self.utm_campaign))]);
        nested("device", &[("os", serde_json::json!(self.device_os)), ("mobile", serde_json::json!(self.mobile)), ("device_id", serde_json::json!(self.device_id()))]);
        nested(
            "geo",
            &[
                ("country", serde_json::json!(self.country)),
                ("city", serde_json::json!(self.city)),
                ("lat", serde_json::json!(self.lat_e6.map(|v| f64::from(v) / 1e6))),
                ("lon", serde_json::json!(self.lon_e6.map(|v| f64::from(v) / 1e6))),
            ],
        );
        serde_json::Value::Object(obj).to_string()
    }
}

impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Event {
    /// By time, id, type and user, then every other field: equal exactly when `==`.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.sort_key().cmp(&other.sort_key())
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("event_ts", &self.event_ts)
            .field("event_type", &self.event_type)
            .field("texts", &self.texts())
            .field("price_cents", &self.price_cents)
            .field("quantity", &self.quantity)
            .field("category", &self.category)
            .field("currency", &self.currency)
            .field("utm", &(&self.utm_source, &self.utm_medium, &self.utm_campaign))
            .field("device", &(&self.device_os, self.mobile))
            .field("geo", &(&self.country, &self.city, self.lat_e6, self.lon_e6))
            .field("billing_country", &self.billing_country)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_texts_read_back_as_built() {
        let texts = NewEvent {
            event_id: "e1",
            user_id: "u1",
            session_id: None,
            product_id: Some("p9"),
            order_id: Some("o1"),
            ip: None,
            device_id: Some("d1"),
            card_id: None,
            retracts: Some("e0"),
        };
        let e = texts.build(EventType::Purchase, 5);
        assert_eq!(e.texts(), texts);
        assert_eq!((e.event_id(), e.user_id(), e.session_id(), e.product_id(), e.retracts()), ("e1", "u1", None, Some("p9"), Some("e0")));
        assert_eq!((e.order_id(), e.device_id(), e.event_ts, e.event_type), (Some("o1"), Some("d1"), 5, EventType::Purchase));
    }

    #[test]
    fn events_order_by_time_then_id_and_equal_only_when_equal() {
        let a = Event::new("b", EventType::PageView, 1, "u");
        let b = Event::new("a", EventType::PageView, 2, "u");
        let c = Event::new("c", EventType::PageView, 1, "u");
        assert!(a < b && a < c && c < b);
        let mut d = a.clone();
        assert_eq!(a.cmp(&d), std::cmp::Ordering::Equal);
        d.country = Some(Dim::new("DE"));
        assert!(a != d && a.cmp(&d) != std::cmp::Ordering::Equal);
        // Texts that concatenate alike are still told apart.
        let e = NewEvent { event_id: "ab", user_id: "c", ..NewEvent::default() }.build(EventType::PageView, 1);
        let f = NewEvent { event_id: "a", user_id: "bc", ..NewEvent::default() }.build(EventType::PageView, 1);
        assert!(e != f && e.cmp(&f) != std::cmp::Ordering::Equal);
    }
}
