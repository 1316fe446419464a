//! Customer lifetime value: `customer_rfm`, `clv_model` and `customer_clv`.
//!
//! Everything here is kept from purchases and refunds, at day resolution (UTC days), in
//! the CDNOW conventions of Fader & Hardie: all of a customer's orders on one day merge
//! into one transaction; `x` is the number of transaction days after the first; `t_x`
//! is the time from the first to the last, and `T` from the first to the evaluation
//! day, both in weeks (days / 7); `zbar` is the mean value of the `x` repeat
//! transactions.
//!
//! - [`summarize`] turns a customer's purchase and refund events into a
//!   [`CustomerSummary`]. An order's value is its purchase lines less its refunds; a
//!   fully refunded order is not a transaction. Corrections and duplicates never get
//!   here (the dedup stage removed them).
//! - The **evaluation day** is fixed by [`ClvConfig::evaluation_day`] (orders after it
//!   are left out, as in a calibration period) or, by default, the latest transaction
//!   day of any customer: the day the data has reached.
//! - [`Context`] holds the evaluation day and the RFM quintile cut points, computed from
//!   the histograms of all customers' recency, frequency and monetary values.
//! - [`ClvModel`]: BG/NBD and Gamma-Gamma fitted on the multiset of distinct
//!   `(x, t_x, T)` and `(x, repeat spend)` values, refitted by [`RefitPolicy`], versioned.
//! - [`ClvRow`]: per customer, expected purchases, P(alive), expected spend and
//!   discounted CLV from the current model.

pub mod dataflow;
pub mod model;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventType, Text};
use crate::rows::group_by_id;
use crate::time::{Millis, Time};
use model::{BgNbd, ClvSettings, GammaGamma, PurchaseObs, SpendObs};

/// Milliseconds in a day.
pub const DAY_MS: Millis = 86_400_000;

/// The UTC day (days since 1970-01-01) of an event time.
pub fn day_of(ts: Millis) -> i64 {
    ts.div_euclid(DAY_MS)
}

/// An `f64` that can live in a differential collection: equality, order and hash are
/// those of its bits (`total_cmp`). Every value is computed deterministically from exact
/// inputs, so equal inputs give equal bits.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Real(pub f64);

impl PartialEq for Real {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for Real {}
impl PartialOrd for Real {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Real {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}
impl std::hash::Hash for Real {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state)
    }
}

/// When `clv_model` is fitted again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefitPolicy {
    /// Refit once the model inputs have changed this many times (per mille of all
    /// customers) since the last fit. A customer whose summary changes counts about 2
    /// to 4 changes (old and new `(x, t_x, T)`, old and new spend).
    pub changed_per_mille: u64,
    /// Or once this much ingestion time (ms) has passed since the last fit, if anything
    /// changed at all.
    pub interval_ms: u64,
}

impl Default for RefitPolicy {
    fn default() -> Self {
        RefitPolicy { changed_per_mille: 10, interval_ms: 60_000 }
    }
}

impl RefitPolicy {
    /// Whether to refit at a time when `changed` summary updates have accumulated since
    /// the fit at `last_fit` (none yet: `None`), with `customers` in the population.
    pub fn due(&self, now: Time, last_fit: Option<Time>, changed: u64, customers: u64) -> bool {
        match last_fit {
            None => true,
            Some(last) => {
                changed > 0
                    && (changed.saturating_mul(1000) >= self.changed_per_mille.saturating_mul(customers)
                        || now >= last.saturating_add(self.interval_ms))
            }
        }
    }
}

/// Settings of the CLV views.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClvConfig {
    /// A fixed evaluation day (UTC days since the epoch); orders after it are left out.
    /// `None`: the latest transaction day of any customer.
    pub evaluation_day: Option<i64>,
    /// Horizon of `expected_purchases`, in weeks.
    pub prediction_weeks: u32,
    /// How CLV is summed.
    pub clv: ClvSettings,
    /// When the model is refitted.
    pub refit: RefitPolicy,
}

impl Default for ClvConfig {
    fn default() -> Self {
        ClvConfig { evaluation_day: None, prediction_weeks: 52, clv: ClvSettings::default(), refit: RefitPolicy::default() }
    }
}

/// A purchase line or refund of one customer, as the summary reduce sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Txn {
    /// The customer.
    pub user_id: Text,
    /// The order (the event id when the event names none).
    pub order: Text,
    /// Event time.
    pub event_ts: Millis,
    /// Amount in cents: positive for a purchase line, negative for a refund.
    pub amount_cents: i64,
}

impl Txn {
    /// The transaction part of an event, if it is a purchase or a refund.
    pub fn of(e: &Event) -> Option<Txn> {
        let sign = match e.event_type {
            EventType::Purchase => 1,
            EventType::Refund => -1,
            _ => return None,
        };
        Some(Txn {
            user_id: Text::from(e.user_id()),
            order: Text::from(e.order_key()),
            event_ts: e.event_ts,
            amount_cents: sign * e.amount_cents(),
        })
    }
}

/// One customer's transactions, reduced to what RFM and the models need.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CustomerSummary {
    /// The customer.
    pub user_id: Text,
    /// Day of the first transaction.
    pub first_day: i64,
    /// Day of the last transaction.
    pub last_day: i64,
    /// Days with a transaction (`x + 1`).
    pub days: u32,
    /// Value of the first day's transaction, cents.
    pub first_cents: i64,
    /// Value of all later days' transactions, cents.
    pub repeat_cents: i64,
}

impl CustomerSummary {
    /// Repeat transaction days.
    pub fn x(&self) -> u32 {
        self.days - 1
    }

    /// Mean value of a transaction day, whole currency units (the monetary measure of RFM).
    pub fn monetary_units(&self) -> i64 {
        (self.first_cents + self.repeat_cents).div_euclid(100 * i64::from(self.days))
    }
}

/// Summarizes one customer's transactions: orders net of refunds, dated by their first
/// purchase line, fully refunded orders dropped, orders after `until` (a day) left out,
/// then merged by day. `None` if no transaction remains.
pub fn summarize<'a>(txns: impl IntoIterator<Item = &'a Txn>, until: Option<i64>) -> Option<CustomerSummary> {
    // order -> (first purchase time, purchase cents, refund cents)
    let mut orders: BTreeMap<&str, (Option<Millis>, i64, i64)> = BTreeMap::new();
    let mut user: Option<&Text> = None;
    for t in txns {
        user = Some(&t.user_id);
        let o = orders.entry(&t.order).or_insert((None, 0, 0));
        if t.amount_cents >= 0 {
            o.0 = Some(o.0.map_or(t.event_ts, |first| first.min(t.event_ts)));
            o.1 += t.amount_cents;
        } else {
            o.2 -= t.amount_cents;
        }
    }
    let mut by_day: BTreeMap<i64, i64> = BTreeMap::new();
    for (first, bought, refunded) in orders.into_values() {
        let Some(first) = first else { continue };
        let day = day_of(first);
        if (refunded > 0 && bought <= refunded) || until.is_some_and(|u| day > u) {
            continue;
        }
        *by_day.entry(day).or_insert(0) += bought - refunded;
    }
    let (&first_day, &first_cents) = by_day.first_key_value()?;
    let (&last_day, _) = by_day.last_key_value()?;
    Some(CustomerSummary {
        user_id: user?.clone(),
        first_day,
        last_day,
        days: by_day.len() as u32,
        first_cents,
        repeat_cents: by_day.values().skip(1).sum(),
    })
}

/// Summaries of every customer among `txns` (which may mix customers that share an
/// arrangement key), in customer order.
pub fn summarize_users<'a>(txns: impl IntoIterator<Item = &'a Txn>, until: Option<i64>) -> Vec<CustomerSummary> {
    group_by_id(txns, |t| &t.user_id).into_iter().filter_map(|t| summarize(t, until)).collect()
}

/// A value in one of the RFM histograms (and the evaluation day's source).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Measure {
    /// Last transaction day (recency: later is better).
    Recency(i64),
    /// Transaction days (frequency).
    Frequency(u32),
    /// Mean spend per transaction day, whole units (monetary).
    Monetary(i64),
}

impl Measure {
    /// A summary's three measures.
    pub fn of(s: &CustomerSummary) -> [Measure; 3] {
        [Measure::Recency(s.last_day), Measure::Frequency(s.days), Measure::Monetary(s.monetary_units())]
    }
}

/// The evaluation day and the RFM quintile cut points: what every customer's row needs
/// from the whole population.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Context {
    /// The day `T` is measured to.
    pub evaluation_day: i64,
    /// Cut points of recency (last day), frequency and monetary: a value above `k` of a
    /// measure's four cut points scores `k + 1`.
    pub cuts: [[i64; 4]; 3],
}

impl Context {
    /// The context of a population, from its histograms (`(measure, customers)`, in
    /// [`Measure`] order), or `None` for an empty population.
    pub fn of(histogram: &[(Measure, i64)], fixed_day: Option<i64>) -> Option<Context> {
        let mut values: [Vec<(i64, i64)>; 3] = Default::default();
        for &(m, n) in histogram {
            if n <= 0 {
                continue;
            }
            match m {
                Measure::Recency(v) => values[0].push((v, n)),
                Measure::Frequency(v) => values[1].push((i64::from(v), n)),
                Measure::Monetary(v) => values[2].push((v, n)),
            }
        }
        let latest = values[0].last()?.0;
        let mut cuts = [[0; 4]; 3];
        for (cut, hist) in cuts.iter_mut().zip(&values) {
            *cut = quintile_cuts(hist);
        }
        Some(Context { evaluation_day: fixed_day.unwrap_or(latest), cuts })
    }

    /// The 1-5 scores of a summary: recency, frequency, monetary.
    pub fn scores(&self, s: &CustomerSummary) -> [u8; 3] {
        let values = [s.last_day, i64::from(s.days), s.monetary_units()];
        let mut scores = [1u8; 3];
        for ((score, cut), v) in scores.iter_mut().zip(&self.cuts).zip(values) {
            *score += cut.iter().filter(|&&c| v > c).count() as u8;
        }
        scores
    }
}

/// The four quintile cut points of a sorted histogram: the `k`-th is the smallest value
/// with at least `k/5` of the population at or below it.
fn quintile_cuts(hist: &[(i64, i64)]) -> [i64; 4] {
    let total: i64 = hist.iter().map(|(_, n)| n).sum();
    let mut cuts = [0; 4];
    for (k, cut) in cuts.iter_mut().enumerate() {
        // smallest v with 5 * (count <= v) >= (k + 1) * total
        let need = (k as i64 + 1) * total;
        let mut seen = 0;
        for &(v, n) in hist {
            seen += n;
            if 5 * seen >= need {
                *cut = v;
                break;
            }
        }
    }
    cuts
}

/// A `customer_rfm` row: the summary as of the evaluation day, with RFM scores.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RfmRow {
    /// The customer's transactions.
    pub summary: CustomerSummary,
    /// The day `T` is measured to.
    pub evaluation_day: i64,
    /// Recency, frequency and monetary scores, 1 (lowest fifth) to 5 (highest).
    pub scores: [u8; 3],
}

impl RfmRow {
    /// The row of a summary in a context.
    pub fn new(summary: &CustomerSummary, context: &Context) -> RfmRow {
        RfmRow { summary: summary.clone(), evaluation_day: context.evaluation_day, scores: context.scores(summary) }
    }

    /// `(x, t_x, T)` in days: what the BG/NBD likelihood needs.
    pub fn triple_days(&self) -> (u32, i64, i64) {
        let s = &self.summary;
        (s.x(), s.last_day - s.first_day, self.evaluation_day - s.first_day)
    }

    /// The mean repeat spend in currency units (0 without repeats).
    pub fn zbar(&self) -> f64 {
        let x = self.summary.x();
        if x == 0 {
            0.0
        } else {
            self.summary.repeat_cents as f64 / 100.0 / f64::from(x)
        }
    }
}

/// What the model fit sees of one customer (a multiset of these is all it keeps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ModelInput {
    /// `(x, t_x, T)` in days.
    Purchases(u32, i64, i64),
    /// `(x, repeat spend in cents)`, for customers with `x >= 1`.
    Spend(u32, i64),
}

impl ModelInput {
    /// A row's inputs.
    pub fn of(row: &RfmRow) -> impl Iterator<Item = ModelInput> {
        let (x, t_x, t) = row.triple_days();
        let spend = (x > 0).then_some(ModelInput::Spend(x, row.summary.repeat_cents));
        std::iter::once(ModelInput::Purchases(x, t_x, t)).chain(spend)
    }
}

/// A fitted pair of models, versioned.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClvModel {
    /// Counts the fits that changed the model, from 1 (a failed fit after a failed fit
    /// keeps the version).
    pub version: u64,
    /// The ingestion time of the data it was fitted on.
    pub fitted_at: Time,
    /// Customers in the BG/NBD fit.
    pub customers: u64,
    /// BG/NBD `[r, alpha, a, b]`, or none if the fit failed.
    pub bg_nbd: Option<[Real; 4]>,
    /// BG/NBD log-likelihood at the fit.
    pub bg_nbd_log_likelihood: Option<Real>,
    /// Customers in the Gamma-Gamma fit (`x >= 1`, positive repeat spend).
    pub spend_customers: u64,
    /// Gamma-Gamma `[p, q, v]`, or none if the fit failed (for example no repeat buyers).
    pub gamma_gamma: Option<[Real; 3]>,
    /// Gamma-Gamma log-likelihood at the fit.
    pub gamma_gamma_log_likelihood: Option<Real>,
    /// Why a fit failed, if one did.
    pub error: Option<String>,
}

impl ClvModel {
    /// Fits both models on a multiset of inputs (counts per input).
    pub fn fit(inputs: &BTreeMap<ModelInput, i64>, version: u64, fitted_at: Time) -> ClvModel {
        let mut purchases = Vec::new();
        let mut spend = Vec::new();
        for (input, &n) in inputs {
            if n <= 0 {
                continue;
            }
            match *input {
                ModelInput::Purchases(x, t_x, t) => {
                    purchases.push(PurchaseObs { x, t_x: t_x as f64 / 7.0, t: t as f64 / 7.0, n: n as u64 })
                }
                ModelInput::Spend(x, cents) => spend.push(SpendObs { x, zbar: cents as f64 / 100.0 / f64::from(x), n: n as u64 }),
            }
        }
        let bg = BgNbd::fit(&purchases);
        let gg = GammaGamma::fit(&spend);
        let error = [bg.as_ref().err(), gg.as_ref().err()].into_iter().flatten().map(|e| e.to_string()).collect::<Vec<_>>();
        let bg = bg.ok();
        let gg = gg.ok();
        ClvModel {
            version,
            fitted_at,
            customers: purchases.iter().map(|o| o.n).sum(),
            bg_nbd: bg.map(|f| [Real(f.params.r), Real(f.params.alpha), Real(f.params.a), Real(f.params.b)]),
            bg_nbd_log_likelihood: bg.map(|f| Real(f.log_likelihood)),
            spend_customers: gg.map_or(0, |f| f.customers),
            gamma_gamma: gg.map(|f| [Real(f.params.p), Real(f.params.q), Real(f.params.v)]),
            gamma_gamma_log_likelihood: gg.map(|f| Real(f.log_likelihood)),
            error: (!error.is_empty()).then(|| error.join("; ")),
        }
    }

    /// Whether neither model could be fitted.
    pub fn unfitted(&self) -> bool {
        self.bg_nbd.is_none() && self.gamma_gamma.is_none()
    }

    /// The BG/NBD parameters, if fitted.
    pub fn bg(&self) -> Option<BgNbd> {
        self.bg_nbd.map(|[r, alpha, a, b]| BgNbd { r: r.0, alpha: alpha.0, a: a.0, b: b.0 })
    }

    /// The Gamma-Gamma parameters, if fitted.
    pub fn gg(&self) -> Option<GammaGamma> {
        self.gamma_gamma.map(|[p, q, v]| GammaGamma { p: p.0, q: q.0, v: v.0 })
    }
}

/// A `customer_clv` row: a customer's predictions under one model version.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClvRow {
    /// The customer.
    pub user_id: Text,
    /// Repeat transaction days.
    pub x: u32,
    /// Weeks from the first to the last transaction.
    pub t_x: Real,
    /// Weeks from the first transaction to the evaluation day.
    pub t: Real,
    /// Mean repeat transaction value.
    pub zbar: Real,
    /// Probability that the customer is still active (BG/NBD).
    pub p_alive: Option<Real>,
    /// Expected transactions over the prediction horizon (BG/NBD).
    pub expected_purchases: Option<Real>,
    /// Expected value of a transaction (Gamma-Gamma).
    pub expected_spend: Option<Real>,
    /// Discounted value over the CLV horizon (both models).
    pub clv: Option<Real>,
    /// The model version the predictions come from.
    pub model_version: u64,
}

impl ClvRow {
    /// A customer's predictions.
    pub fn new(row: &RfmRow, model: &ClvModel, config: &ClvConfig) -> ClvRow {
        let (x, t_x, t) = row.triple_days();
        let (t_x, t) = (t_x as f64 / 7.0, t as f64 / 7.0);
        let zbar = row.zbar();
        let bg = model.bg();
        let gg = model.gg();
        ClvRow {
            user_id: row.summary.user_id.clone(),
            x,
            t_x: Real(t_x),
            t: Real(t),
            zbar: Real(zbar),
            p_alive: bg.map(|m| Real(m.p_alive(x, t_x, t))),
            expected_purchases: bg.map(|m| Real(m.expected_purchases(f64::from(config.prediction_weeks), x, t_x, t))),
            expected_spend: gg.map(|m| Real(m.expected_spend(x, zbar))),
            clv: bg.zip(gg).map(|(b, g)| Real(model::clv(&b, &g, &config.clv, x, t_x, t, zbar))),
            model_version: model.version,
        }
    }
}

/// Replays the refit policy over the model inputs' changes, time by time: the state the
/// `clv_model` operator keeps, shared with the reference implementation.
#[derive(Debug, Default)]
pub struct ModelState {
    /// Count per distinct input.
    pub inputs: BTreeMap<ModelInput, i64>,
    /// Customers (count of `Purchases` inputs).
    pub customers: i64,
    /// Changes since the last fit.
    pub changed: u64,
    /// Time of the last fit.
    pub last_fit: Option<Time>,
    /// The current model.
    pub current: Option<ClvModel>,
    /// Versions given so far (they never repeat, even after the population was empty).
    pub fits: u64,
}

impl ModelState {
    /// Applies the consolidated changes of one time, in time order, and returns the model
    /// change it causes: `(old, new)`.
    pub fn advance(
        &mut self,
        time: Time,
        changes: &[(ModelInput, i64)],
        policy: &RefitPolicy,
    ) -> Option<(Option<ClvModel>, Option<ClvModel>)> {
        // A time whose changes cancel out is no time at all: whether the operator sees
        // one depends on batching, so it must not decide anything.
        if changes.iter().all(|(_, diff)| *diff == 0) {
            return None;
        }
        for (input, diff) in changes {
            if *diff == 0 {
                continue;
            }
            let n = self.inputs.entry(*input).or_insert(0);
            *n += diff;
            if *n == 0 {
                self.inputs.remove(input);
            }
            if let ModelInput::Purchases(..) = input {
                self.customers += diff;
            }
            self.changed += diff.unsigned_abs();
        }
        if self.customers <= 0 {
            self.changed = 0;
            self.last_fit = None;
            return self.current.take().map(|old| (Some(old), None));
        }
        if !policy.due(time, self.last_fit, self.changed, self.customers as u64) {
            return None;
        }
        let new = ClvModel::fit(&self.inputs, self.fits + 1, time);
        self.changed = 0;
        self.last_fit = Some(time);
        if self.current.as_ref().is_some_and(|old| old.unfitted() && new.unfitted()) {
            // Another failed fit changes no prediction: keep the current version, so that
            // `customer_clv` is not rewritten for nothing.
            return None;
        }
        self.fits += 1;
        let old = self.current.replace(new.clone());
        Some((old, Some(new)))
    }
}
