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

/// Marketing attribution.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Utm {
    /// `utm_source`, e.g. `google`.
    pub source: Option<Text>,
    /// `utm_medium`, e.g. `cpc`.
    pub medium: Option<Text>,
    /// `utm_campaign`.
    pub campaign: Option<Text>,
}

/// The device an event came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Device {
    /// Operating system, e.g. `ios`.
    pub os: Option<Text>,
    /// Whether the device is a phone or tablet.
    pub mobile: Option<bool>,
    /// A stable device identifier.
    pub device_id: Option<Text>,
}

/// Where an event came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Geo {
    /// ISO 3166-1 alpha-2 country code.
    pub country: Option<Text>,
    /// City name.
    pub city: Option<Text>,
    /// Latitude in micro-degrees.
    pub lat_e6: Option<i32>,
    /// Longitude in micro-degrees.
    pub lon_e6: Option<i32>,
}

/// One validated event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Event {
    /// Event time, milliseconds since the epoch.
    pub event_ts: Millis,
    /// Unique id: deliveries with the same id count once.
    pub event_id: Text,
    /// What happened.
    pub event_type: EventType,
    /// Who did it.
    pub user_id: Text,
    /// The shop's session id, when it sends one; otherwise sessions are derived.
    pub session_id: Option<Text>,
    /// Product concerned.
    pub product_id: Option<Text>,
    /// Product category.
    pub category: Option<Text>,
    /// Unit price in cents (the amount, for payments and refunds).
    pub price_cents: Option<i64>,
    /// Number of units (1 when absent).
    pub quantity: u32,
    /// ISO 4217 currency code.
    pub currency: Option<Text>,
    /// Order the event belongs to.
    pub order_id: Option<Text>,
    /// Marketing attribution.
    pub utm: Option<Utm>,
    /// Device.
    pub device: Option<Device>,
    /// Location.
    pub geo: Option<Geo>,
    /// Client IP address.
    pub ip: Option<Text>,
    /// Hashed payment instrument.
    pub card_id: Option<Text>,
    /// The country the card is billed to (ISO 3166-1 alpha-2), for payments.
    pub billing_country: Option<Text>,
    /// The id of an earlier event this one corrects or cancels.
    pub retracts: Option<Text>,
}

impl Event {
    /// A minimal event of the given type; the other fields are empty.
    pub fn new(event_id: &str, event_type: EventType, event_ts: Millis, user_id: &str) -> Self {
        Event {
            event_ts,
            event_id: Text::from(event_id),
            event_type,
            user_id: Text::from(user_id),
            session_id: None,
            product_id: None,
            category: None,
            price_cents: None,
            quantity: 1,
            currency: None,
            order_id: None,
            utm: None,
            device: None,
            geo: None,
            ip: None,
            card_id: None,
            billing_country: None,
            retracts: None,
        }
    }

    /// Price × quantity in cents (0 without a price).
    pub fn amount_cents(&self) -> i64 {
        self.price_cents.unwrap_or(0).saturating_mul(i64::from(self.quantity))
    }

    /// The country, if known.
    pub fn country(&self) -> Option<&str> {
        self.geo.as_ref()?.country.as_deref()
    }

    /// The device's operating system, if known.
    pub fn device_os(&self) -> Option<&str> {
        self.device.as_ref()?.os.as_deref()
    }

    /// The UTM source, if known.
    pub fn utm_source(&self) -> Option<&str> {
        self.utm.as_ref()?.source.as_deref()
    }

    /// The order this purchase counts as: its `order_id`, or its own id without one.
    pub fn order_key(&self) -> &str {
        self.order_id.as_deref().unwrap_or(&self.event_id)
    }

    /// The canonical JSON form (the schema of the README), as the decoder accepts it.
    pub fn to_json(&self) -> String {
        let mut obj = serde_json::Map::new();
        let s = |v: &str| serde_json::Value::String(v.to_owned());
        obj.insert("event_id".into(), s(&self.event_id));
        obj.insert("event_type".into(), s(self.event_type.name()));
        obj.insert("event_ts".into(), s(&crate::time::format_timestamp(self.event_ts)));
        obj.insert("user_id".into(), s(&self.user_id));
        let mut opt = |k: &str, v: &Option<Text>| {
            if let Some(v) = v {
                obj.insert(k.into(), s(v));
            }
        };
        opt("session_id", &self.session_id);
        opt("product_id", &self.product_id);
        opt("category", &self.category);
        opt("currency", &self.currency);
        opt("order_id", &self.order_id);
        opt("ip", &self.ip);
        opt("card_id", &self.card_id);
        opt("billing_country", &self.billing_country);
        opt("retracts", &self.retracts);
        if let Some(p) = self.price_cents {
            obj.insert("price".into(), serde_json::json!(p as f64 / 100.0));
        }
        if self.quantity != 1 {
            obj.insert("quantity".into(), serde_json::json!(self.quantity));
        }
        if let Some(u) = &self.utm {
            obj.insert("utm".into(), serde_json::json!({"source": u.source, "medium": u.medium, "campaign": u.campaign}));
        }
        if let Some(d) = &self.device {
            obj.insert("device".into(), serde_json::json!({"os": d.os, "mobile": d.mobile, "device_id": d.device_id}));
        }
        if let Some(g) = &self.geo {
            obj.insert(
                "geo".into(),
                serde_json::json!({
                    "country": g.country, "city": g.city,
                    "lat": g.lat_e6.map(|v| f64::from(v) / 1e6),
                    "lon": g.lon_e6.map(|v| f64::from(v) / 1e6),
                }),
            );
        }
        serde_json::Value::Object(obj).to_string()
    }
}
