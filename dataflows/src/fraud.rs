//! `fraud_features`: per payment, what its card had done before it.
//!
//! Every payment with a `card_id` gets one row of [`FraudFeatures`], computed from the
//! card's payments that come before it in event time (ties broken by `event_id`), never
//! from later ones. A late payment is inserted into its card's history where its event
//! time puts it, so the features of every later payment of the card are corrected (the
//! old rows retracted, new ones inserted). Payments leave with the retention horizon like
//! every event, so "so far" means "within the retention horizon".
//!
//! Rows hold exact integers (counts, sums in cents, sums of squares, coordinates in
//! micro-degrees, times in ms); the floating-point features (mean, deviation, z-score,
//! geo-velocity) are derived from them by methods, so equal histories give equal rows
//! whatever the order updates arrived in.
//!
//! The dataflow: payments arranged by card, and one reduce per card that walks the
//! card's payments in event-time order. Its output, keyed by the card, is the view.
//! [`score`] maps every row to its `fraud_scores` row and keeps the alerts.

pub mod score;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::dictionary::Dim;
use crate::event::{Event, EventType, Text};
use crate::rows::{group_by_id, key_of};
use crate::time::{Millis, Time};
use crate::views::{arrange_routed, push_keyed, ViewArrangement};
pub use score::{FraudModel, FraudScore};

/// The look-back windows of the count and amount features, in ms: 1 min, 10 min, 1 h, 24 h.
pub const WINDOWS_MS: [Millis; 4] = [60_000, 600_000, 3_600_000, 86_400_000];

/// The window of the distinct-value features (24 h).
pub const DISTINCT_WINDOW_MS: Millis = 86_400_000;

/// A payment as the card's history keeps it. Fields are ordered so that a card's
/// payments sort by event time, then id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Payment {
    /// Event time.
    pub event_ts: Millis,
    /// The payment's event id.
    pub event_id: Text,
    /// The card.
    pub card_id: Text,
    /// The paying user.
    pub user_id: Text,
    /// Amount in cents.
    pub amount_cents: i64,
    /// Device id (or, without one, the operating system).
    pub device: Option<Text>,
    /// Country of the payment's location.
    pub country: Option<Dim>,
    /// Client IP address.
    pub ip: Option<Text>,
    /// Latitude and longitude in micro-degrees.
    pub location: Option<(i32, i32)>,
    /// Country the card is billed to.
    pub billing_country: Option<Dim>,
}

impl Payment {
    /// The payment part of an event: payments with a card.
    pub fn of(e: &Event) -> Option<Payment> {
        if e.event_type != EventType::Payment {
            return None;
        }
        let device = e.device_id().or(e.device_os.as_deref()).map(Text::from);
        Some(Payment {
            event_ts: e.event_ts,
            event_id: Text::from(e.event_id()),
            card_id: Text::from(e.card_id()?),
            user_id: Text::from(e.user_id()),
            amount_cents: e.amount_cents(),
            device,
            country: e.country,
            ip: e.ip().map(Text::from),
            location: e.lat_e6.zip(e.lon_e6),
            billing_country: e.billing_country,
        })
    }
}

/// The features of one payment, from its card's earlier payments.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FraudFeatures {
    /// The card.
    pub card_id: Text,
    /// Event time of the payment.
    pub event_ts: Millis,
    /// The payment's event id.
    pub payment_id: Text,
    /// The paying user.
    pub user_id: Text,
    /// Amount in cents.
    pub amount_cents: i64,
    /// Earlier payments of the card within each of [`WINDOWS_MS`] before this one.
    pub counts: [u32; 4],
    /// Their amounts, cents.
    pub sums_cents: [i64; 4],
    /// Distinct countries, devices and IPs among the card's payments of the last 24 h,
    /// this one included.
    pub distinct_24h: [u32; 3],
    /// Earlier payments of the card (within the retention horizon).
    pub prior_count: u64,
    /// Their amounts, cents.
    pub prior_sum_cents: i64,
    /// Their squared amounts, cents² (as decimal text in serialized rows: JSON readers
    /// and tagged enums do not all take 128-bit integers).
    #[serde(with = "i128_text")]
    pub prior_sum_sq: i128,
    /// Time since the card's previous payment, ms.
    pub since_prev_ms: Option<Millis>,
    /// Locations of the previous payment and of this one (micro-degrees), when both are
    /// known.
    pub travel: Option<((i32, i32), (i32, i32))>,
    /// The device was never used by the card before (and the card has paid before).
    pub new_device: bool,
    /// The country was never seen on the card before (and the card has paid before).
    pub new_country: bool,
    /// The billing country differs from the payment's country (both known).
    pub country_mismatch: bool,
}

impl FraudFeatures {
    /// Mean of the earlier amounts, cents.
    pub fn prior_mean_cents(&self) -> Option<f64> {
        (self.prior_count > 0).then(|| self.prior_sum_cents as f64 / self.prior_count as f64)
    }

    /// Population standard deviation of the earlier amounts, cents.
    pub fn prior_std_cents(&self) -> Option<f64> {
        let n = self.prior_count as f64;
        let mean = self.prior_mean_cents()?;
        Some((self.prior_sum_sq as f64 / n - mean * mean).max(0.0).sqrt())
    }

    /// How many deviations the amount lies above the earlier mean (needs two earlier
    /// payments with different amounts).
    pub fn amount_z(&self) -> Option<f64> {
        let std = self.prior_std_cents().filter(|s| *s > 0.0 && self.prior_count >= 2)?;
        Some((self.amount_cents as f64 - self.prior_mean_cents()?) / std)
    }

    /// The amount over the earlier mean.
    pub fn amount_ratio(&self) -> Option<f64> {
        self.prior_mean_cents().filter(|m| *m > 0.0).map(|m| self.amount_cents as f64 / m)
    }

    /// Speed (km/h) needed to get from the previous payment's location to this one's, with
    /// the time between them taken as at least one second.
    pub fn geo_velocity_kmh(&self) -> Option<f64> {
        let (from, to) = self.travel?;
        let hours = (self.since_prev_ms?.max(1000) as f64) / 3_600_000.0;
        Some(haversine_km(from, to) / hours)
    }
}

/// Great-circle distance between two points in micro-degrees (mean Earth radius 6371 km).
pub fn haversine_km(a: (i32, i32), b: (i32, i32)) -> f64 {
    let rad = |v: i32| f64::from(v) / 1e6 * std::f64::consts::PI / 180.0;
    let (lat1, lon1, lat2, lon2) = (rad(a.0), rad(a.1), rad(b.0), rad(b.1));
    let h = ((lat2 - lat1) / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().min(1.0).asin()
}

/// The features of every payment of one card; `payments` sorted by (event time, id).
pub fn card_features(payments: &[&Payment]) -> Vec<FraudFeatures> {
    let mut out = Vec::with_capacity(payments.len());
    // Window starts (indices of the oldest payment inside each window).
    let mut starts = [0usize; 4];
    let mut sums = [0i64; 4];
    let mut distinct_start = 0usize;
    let mut distinct: [BTreeMap<&str, u32>; 3] = Default::default();
    let mut seen_devices: BTreeSet<&str> = BTreeSet::new();
    let mut seen_countries: BTreeSet<&str> = BTreeSet::new();
    let (mut prior_sum, mut prior_sq) = (0i64, 0i128);
    for (i, p) in payments.iter().enumerate() {
        // Earlier payments within each window: indices in [start, i) with ts > p.ts - w.
        let mut counts = [0u32; 4];
        for w in 0..4 {
            while starts[w] < i && payments[starts[w]].event_ts <= p.event_ts - WINDOWS_MS[w] {
                sums[w] -= payments[starts[w]].amount_cents;
                starts[w] += 1;
            }
            counts[w] = (i - starts[w]) as u32;
        }
        // Distinct values over the last 24 h, this payment included.
        for (set, v) in distinct.iter_mut().zip(values(p)) {
            if let Some(v) = v {
                *set.entry(v).or_insert(0) += 1;
            }
        }
        while payments[distinct_start].event_ts <= p.event_ts - DISTINCT_WINDOW_MS {
            for (set, v) in distinct.iter_mut().zip(values(payments[distinct_start])) {
                if let Some(v) = v {
                    let n = set.get_mut(v).expect("counted when it entered");
                    *n -= 1;
                    if *n == 0 {
                        set.remove(v);
                    }
                }
            }
            distinct_start += 1;
        }
        let previous = i.checked_sub(1).map(|j| payments[j]);
        out.push(FraudFeatures {
            card_id: p.card_id.clone(),
            event_ts: p.event_ts,
            payment_id: p.event_id.clone(),
            user_id: p.user_id.clone(),
            amount_cents: p.amount_cents,
            counts,
            sums_cents: sums,
            distinct_24h: [0, 1, 2].map(|k| distinct[k].len() as u32),
            prior_count: i as u64,
            prior_sum_cents: prior_sum,
            prior_sum_sq: prior_sq,
            since_prev_ms: previous.map(|q| p.event_ts - q.event_ts),
            travel: previous.and_then(|q| Some((q.location?, p.location?))),
            new_device: i > 0 && p.device.as_deref().is_some_and(|d| !seen_devices.contains(d)),
            new_country: i > 0 && p.country.as_deref().is_some_and(|c| !seen_countries.contains(c)),
            country_mismatch: matches!((&p.billing_country, &p.country), (Some(b), Some(c)) if b != c),
        });
        for sum in &mut sums {
            *sum += p.amount_cents;
        }
        prior_sum += p.amount_cents;
        prior_sq += i128::from(p.amount_cents) * i128::from(p.amount_cents);
        seen_devices.extend(p.device.as_deref());
        seen_countries.extend(p.country.as_deref());
    }
    out
}

/// The values counted by the distinct features: country, device, IP.
fn values(q: &Payment) -> [Option<&str>; 3] {
    [q.country.as_deref(), q.device.as_deref(), q.ip.as_deref()]
}

/// The features of the payments under one arrangement key, card by card.
fn features_by_card(payments: &[&Payment]) -> Vec<FraudFeatures> {
    group_by_id(payments.iter().copied(), |p| &p.card_id).into_iter().flat_map(|p| card_features(&p)).collect()
}

/// The fraud views, each keyed by [`key_of`] the card id.
pub struct FraudViews<'scope> {
    /// `fraud_features`: one [`FraudFeatures`] row per live payment with a card.
    pub features: ViewArrangement<'scope, u64, FraudFeatures>,
    /// `fraud_scores`: one [`FraudScore`] row per `fraud_features` row.
    pub scores: ViewArrangement<'scope, u64, FraudScore>,
    /// `fraud_alerts`: the `fraud_scores` rows at or above the model's threshold.
    pub alerts: ViewArrangement<'scope, u64, FraudScore>,
}

/// Builds `fraud_features`, `fraud_scores` and `fraud_alerts` over the valid events.
pub fn build<'scope>(events: VecCollection<'scope, Time, Arc<Event>>, model: &FraudModel) -> FraudViews<'scope> {
    let features = features(events);
    let model = model.clone();
    let scores = features.clone().as_collection(move |card, f| (*card, model.row(f)));
    let alerts = scores.clone().filter(|(_, s)| s.alert);
    FraudViews {
        scores: arrange_routed(scores, "Arrange: fraud_scores"),
        alerts: arrange_routed(alerts, "Arrange: fraud_alerts"),
        features,
    }
}

/// `fraud_features`: key [`key_of`] the card id, row [`FraudFeatures`], one row per live
/// payment with a card.
fn features<'scope>(events: VecCollection<'scope, Time, Arc<Event>>) -> ViewArrangement<'scope, u64, FraudFeatures> {
    let payments = arrange_routed(events.flat_map(|e| Payment::of(&e).map(|p| (key_of(&p.card_id), p))), "Arrange: payments by card");
    payments.reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<u64, FraudFeatures, Time, isize>, _, _>(
        "Reduce: fraud features by card",
        |_key, input, output| {
            // Inputs arrive sorted by payment, that is by (event time, id); a payment
            // delivered twice was already removed by the dedup stage.
            let payments: Vec<&Payment> = input.iter().filter(|(_, n)| *n > 0).map(|(p, _)| *p).collect();
            output.extend(features_by_card(&payments).into_iter().map(|f| (f, 1)))
        },
        push_keyed,
    )
}

/// Serializes an `i128` as its decimal text.
mod i128_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &i128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i128, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}
