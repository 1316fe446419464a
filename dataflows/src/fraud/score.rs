//! `fraud_scores` and `fraud_alerts`: a logistic model over [`FraudFeatures`].
//!
//! The score of a payment is `1 / (1 + exp(-(bias + Σ wᵢ·xᵢ)))`, where the `xᵢ` are the
//! model inputs of [`inputs`], each a fixed function of one payment's features (named in
//! [`INPUT_NAMES`]), and the weights come from a [`FraudModel`] file. The weights are not
//! in the code: `config/fraud-model.json` holds the ones trained by `scripts/train-fraud`
//! (logistic regression on labelled generated traffic), and `--fraud-model` loads another
//! file. A payment whose score reaches the model's threshold is also a `fraud_alerts` row.
//!
//! Every row names the inputs that pushed its score up most ([`FraudScore::reasons`]),
//! so an analyst can see why a payment was flagged without reading the weights.
//!
//! Both views are a `map` (and a `filter`) of `fraud_features`: a late payment that
//! corrects a later payment's features corrects its score and alert the same way.

use serde::{Deserialize, Serialize};

use super::FraudFeatures;
use crate::clv::Real;
use crate::event::Text;
use crate::time::Millis;

/// The model inputs, in order; see [`inputs`] for each definition.
pub const INPUT_NAMES: [&str; 19] = [
    "log_amount",
    "amount_under_10",
    "first_payment",
    "log_count_1m",
    "log_count_10m",
    "log_count_1h",
    "log_count_24h",
    "log_sum_1h",
    "log_countries_24h",
    "log_devices_24h",
    "log_ips_24h",
    "log_amount_ratio",
    "amount_z",
    "log_geo_velocity",
    "impossible_travel",
    "log_minutes_since_prev",
    "new_device",
    "new_country",
    "country_mismatch",
];

/// How many inputs the model has.
pub const INPUTS: usize = INPUT_NAMES.len();

/// The speed above which travel between two payments counts as impossible (km/h): faster
/// than an airliner's cruise, door to door.
pub const IMPOSSIBLE_KMH: f64 = 900.0;

/// The model inputs of one payment, in the order of [`INPUT_NAMES`]. Amounts are in
/// dollars (cents / 100); "log" is `ln(1 + v)` unless said otherwise; an input that
/// needs an earlier payment the card does not have is 0.
pub fn inputs(f: &FraudFeatures) -> [f64; INPUTS] {
    let dollars = |cents: i64| cents.max(0) as f64 / 100.0;
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let log_count = |n: u32| f64::from(n).ln_1p();
    // The distinct counts include the payment itself: ln(n) is 0 for one value.
    let log_distinct = |n: u32| f64::from(n.max(1)).ln();
    let velocity = f.geo_velocity_kmh();
    [
        dollars(f.amount_cents).ln_1p(),
        flag(f.amount_cents < 1000),
        flag(f.prior_count == 0),
        log_count(f.counts[0]),
        log_count(f.counts[1]),
        log_count(f.counts[2]),
        log_count(f.counts[3]),
        dollars(f.sums_cents[2]).ln_1p(),
        log_distinct(f.distinct_24h[0]),
        log_distinct(f.distinct_24h[1]),
        log_distinct(f.distinct_24h[2]),
        // ln(amount / earlier mean), within ±5.
        f.amount_ratio().filter(|r| *r > 0.0).map_or(0.0, |r| r.ln().clamp(-5.0, 5.0)),
        f.amount_z().map_or(0.0, |z| z.clamp(-10.0, 10.0)),
        velocity.map_or(0.0, f64::ln_1p),
        flag(velocity.is_some_and(|v| v > IMPOSSIBLE_KMH)),
        f.since_prev_ms.map_or(0.0, |ms| (ms.max(0) as f64 / 60_000.0).ln_1p()),
        flag(f.new_device),
        flag(f.new_country),
        flag(f.country_mismatch),
    ]
}

/// A logistic scoring model: its weights, by input name, and the alert threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FraudModel {
    /// A name for the weights, shown in every score row (for example the training run).
    pub version: String,
    /// The intercept.
    pub bias: f64,
    /// One weight per input of [`INPUT_NAMES`], in that order.
    pub inputs: Vec<String>,
    /// The weights, aligned with `inputs`.
    pub weights: Vec<f64>,
    /// Scores at or above this are alerts.
    pub threshold: f64,
    /// What the file says about how the weights were made (kept, not interpreted).
    #[serde(default)]
    pub training: serde_json::Value,
}

/// Why a model file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Not JSON of the expected shape (the parser's message is the source).
    #[error("not a fraud model")]
    Format(#[from] serde_json::Error),
    /// The inputs are not this engine's inputs.
    #[error("the model's inputs {found:?} are not the engine's {expected:?}")]
    Inputs {
        /// What the file lists.
        found: Vec<String>,
        /// What the engine computes.
        expected: Vec<String>,
    },
    /// Weights and inputs do not line up, or a number is not finite.
    #[error("{0}")]
    Invalid(String),
}

/// The model shipped with the engine (`config/fraud-model.json`).
const DEFAULT_MODEL: &str = include_str!("../../../config/fraud-model.json");

impl FraudModel {
    /// Reads and checks a model file's contents.
    pub fn from_json(text: &str) -> Result<FraudModel, ModelError> {
        let model: FraudModel = serde_json::from_str(text)?;
        if model.inputs.iter().map(String::as_str).ne(INPUT_NAMES) {
            return Err(ModelError::Inputs { found: model.inputs, expected: INPUT_NAMES.iter().map(|s| s.to_string()).collect() });
        }
        if model.weights.len() != INPUTS {
            return Err(ModelError::Invalid(format!("{} weights for {INPUTS} inputs", model.weights.len())));
        }
        if !model.bias.is_finite() || model.weights.iter().any(|w| !w.is_finite()) {
            return Err(ModelError::Invalid("a weight or the bias is not a finite number".into()));
        }
        if !(0.0..=1.0).contains(&model.threshold) {
            return Err(ModelError::Invalid(format!("threshold {} is not within 0..=1", model.threshold)));
        }
        Ok(model)
    }

    /// The score of a payment, and its inputs' contributions `wᵢ·xᵢ`.
    pub fn score(&self, f: &FraudFeatures) -> (f64, [f64; INPUTS]) {
        let x = inputs(f);
        let mut contributions = [0.0; INPUTS];
        for ((c, w), x) in contributions.iter_mut().zip(&self.weights).zip(x) {
            *c = w * x;
        }
        // Summed in input order, so every worker gets the same bits.
        let z = contributions.iter().fold(self.bias, |z, c| z + c);
        (1.0 / (1.0 + (-z).exp()), contributions)
    }

    /// The `fraud_scores` row of a payment.
    pub fn row(&self, f: &FraudFeatures) -> FraudScore {
        let (score, contributions) = self.score(f);
        let mut order: Vec<usize> = (0..INPUTS).filter(|&i| contributions[i] > 0.0).collect();
        order.sort_by(|&a, &b| contributions[b].total_cmp(&contributions[a]).then(a.cmp(&b)));
        FraudScore {
            card_id: f.card_id.clone(),
            event_ts: f.event_ts,
            payment_id: f.payment_id.clone(),
            user_id: f.user_id.clone(),
            amount_cents: f.amount_cents,
            score: Real(score),
            alert: score >= self.threshold,
            reasons: order.into_iter().take(REASONS).map(|i| INPUT_NAMES[i].into()).collect(),
            model_version: self.version.as_str().into(),
        }
    }
}

impl Default for FraudModel {
    /// The shipped model (parsed once; the unit tests check that it loads).
    fn default() -> Self {
        static SHIPPED: std::sync::OnceLock<FraudModel> = std::sync::OnceLock::new();
        SHIPPED.get_or_init(|| FraudModel::from_json(DEFAULT_MODEL).expect("config/fraud-model.json is a valid model")).clone()
    }
}

/// How many reasons a score row names.
pub const REASONS: usize = 3;

/// A `fraud_scores` row (and, when `alert`, a `fraud_alerts` row).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FraudScore {
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
    /// Probability of fraud under the model, in `[0, 1]`.
    pub score: Real,
    /// The score reaches the model's threshold.
    pub alert: bool,
    /// The inputs with the largest positive contributions, largest first (at most
    /// [`REASONS`]).
    pub reasons: Vec<Text>,
    /// The model's `version`.
    pub model_version: Text,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fraud::{card_features, Payment};

    fn payment(ts: Millis, id: &str, cents: i64, country: &str, device: &str, location: (i32, i32)) -> Payment {
        Payment {
            event_ts: ts,
            event_id: id.into(),
            card_id: "c1".into(),
            user_id: "u1".into(),
            amount_cents: cents,
            device: Some(device.into()),
            country: Some(country.into()),
            ip: Some("1.2.3.4".into()),
            location: Some(location),
            billing_country: Some("DE".into()),
        }
    }

    fn model(weights: [f64; INPUTS], bias: f64) -> FraudModel {
        FraudModel {
            version: "test".into(),
            bias,
            inputs: INPUT_NAMES.iter().map(|s| s.to_string()).collect(),
            weights: weights.to_vec(),
            threshold: 0.5,
            training: serde_json::Value::Null,
        }
    }

    #[test]
    fn inputs_follow_their_definitions() {
        let berlin = (52_520_008, 13_404_954);
        let sydney = (-33_868_820, 151_209_296);
        let a = payment(0, "e1", 5_000, "DE", "d1", berlin);
        let b = payment(600_000, "e2", 900, "AU", "d2", sydney);
        let rows = card_features(&[&a, &b]);
        let x = inputs(&rows[1]);
        let get = |name: &str| x[INPUT_NAMES.iter().position(|n| *n == name).unwrap()];
        assert_eq!(get("log_amount"), 9.0f64.ln_1p());
        assert_eq!(get("amount_under_10"), 1.0);
        assert_eq!(get("first_payment"), 0.0);
        assert_eq!(get("log_count_1m"), 0.0);
        assert_eq!(get("log_count_1h"), 1.0f64.ln_1p());
        assert_eq!(get("log_sum_1h"), 50.0f64.ln_1p());
        assert_eq!(get("log_countries_24h"), 2.0f64.ln());
        assert_eq!(get("log_ips_24h"), 0.0);
        assert!((get("log_amount_ratio") - (900.0f64 / 5000.0).ln()).abs() < 1e-12);
        assert_eq!(get("amount_z"), 0.0, "one earlier payment has no deviation");
        // Berlin to Sydney is about 16,000 km, in 10 minutes.
        assert!(get("log_geo_velocity") > 90_000.0f64.ln());
        assert_eq!(get("impossible_travel"), 1.0);
        assert_eq!(get("log_minutes_since_prev"), 10.0f64.ln_1p());
        assert_eq!([get("new_device"), get("new_country"), get("country_mismatch")], [1.0, 1.0, 1.0]);
        let first = inputs(&rows[0]);
        assert_eq!(first[2], 1.0);
        assert_eq!(first[13..16], [0.0, 0.0, 0.0], "no previous payment: no travel, no gap");
    }

    #[test]
    fn score_is_the_logistic_of_the_weighted_inputs_and_names_its_reasons() {
        let berlin = (52_520_008, 13_404_954);
        let a = payment(0, "e1", 5_000, "DE", "d1", berlin);
        let b = payment(30_000, "e2", 500, "FR", "d2", berlin);
        let rows = card_features(&[&a, &b]);
        let mut w = [0.0; INPUTS];
        w[1] = 2.0; // amount_under_10
        w[16] = 1.0; // new_device
        w[18] = 0.5; // country_mismatch
        w[0] = -0.1; // log_amount: a negative contribution is never a reason
        let m = model(w, -1.0);
        let z = -1.0 + 2.0 + 1.0 + 0.5 - 0.1 * 5.0f64.ln_1p();
        let row = m.row(&rows[1]);
        assert!((row.score.0 - 1.0 / (1.0 + (-z).exp())).abs() < 1e-15);
        assert!(row.alert);
        assert_eq!(row.reasons, vec![Text::from("amount_under_10"), "new_device".into(), "country_mismatch".into()]);
        let first = m.row(&rows[0]);
        assert!(!first.alert && first.score.0 < 0.5);
    }

    #[test]
    fn model_files_are_checked() {
        let good = serde_json::to_string(&model([0.0; INPUTS], 0.0)).unwrap();
        assert!(FraudModel::from_json(&good).is_ok());
        let swapped = good.replacen("\"log_amount\",\"amount_under_10\"", "\"amount_under_10\",\"log_amount\"", 1);
        assert!(matches!(FraudModel::from_json(&swapped), Err(ModelError::Inputs { .. })));
        let short = good.replacen("[0.0,", "[", 1);
        assert!(matches!(FraudModel::from_json(&short), Err(ModelError::Invalid(_))), "{short}");
        let high = good.replace("\"threshold\":0.5", "\"threshold\":1.5");
        assert!(matches!(FraudModel::from_json(&high), Err(ModelError::Invalid(_))));
        assert!(matches!(FraudModel::from_json("{}"), Err(ModelError::Format(_))));
        // The shipped model loads.
        assert_eq!(FraudModel::default().inputs.len(), INPUTS);
    }
}
