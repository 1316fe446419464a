//! The customer-base models behind `customer_clv`, and their maximum-likelihood fits.
//!
//! - **BG/NBD** (Fader, Hardie & Lee 2005, "Counting Your Customers the Easy Way",
//!   Marketing Science 24(2)): while alive, a customer buys as a Poisson process whose
//!   rate is Gamma(r, α) distributed over customers; after every purchase the customer
//!   dies with a probability that is Beta(a, b) distributed. The likelihood of a customer
//!   depends only on `(x, t_x, T)`: repeat purchases, time of the last one, and time
//!   observed, all counted from the first purchase.
//! - **Gamma-Gamma** (Fader, Hardie & Lee 2005, "RFM and CLV: Using Iso-Value Curves",
//!   JMR 42(4)): the spend of a customer's transactions is Gamma(p, ν) with ν Gamma(q, v)
//!   over customers; fitted on the mean `zbar` of the `x` repeat transactions.
//!
//! Times are in weeks, as in the papers. Fits minimise the negative log-likelihood over
//! log-parameters (so that every parameter stays positive) with argmin's Nelder-Mead,
//! restarted from the best point until it stops improving; `ln Γ` and `ln B` come from
//! statrs. The likelihoods take observations with multiplicities, because the dataflow
//! keeps the multiset of distinct `(x, t_x, T)` triples, not one row per customer.

use argmin::core::{CostFunction, Error as ArgminError, Executor, State};
use argmin::solver::neldermead::NelderMead;
use serde::{Deserialize, Serialize};
use statrs::function::beta::checked_ln_beta;
use statrs::function::gamma::ln_gamma;

/// Why a model could not be fitted.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FitError {
    /// No observation carries information for the model.
    #[error("no customers to fit the {0} model on")]
    NoData(&'static str),
    /// Nobody bought twice: the BG/NBD likelihood then has no maximum (it grows without
    /// bound towards the edge of the parameter space).
    #[error("no customer has a repeat purchase, so BG/NBD cannot be fitted")]
    NoRepeatPurchases,
    /// The optimiser failed or ended at a non-finite likelihood.
    #[error("the {model} fit failed: {detail}")]
    Optimiser {
        /// Which model.
        model: &'static str,
        /// What went wrong.
        detail: String,
    },
}

/// `n` customers with `x` repeat purchases, the last at `t_x`, observed for `t` (weeks).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PurchaseObs {
    /// Repeat purchases (purchase days after the first).
    pub x: u32,
    /// Time of the last purchase, weeks after the first.
    pub t_x: f64,
    /// Time observed, weeks after the first purchase.
    pub t: f64,
    /// Number of customers with exactly these values.
    pub n: u64,
}

/// `n` customers with `x >= 1` repeat transactions of mean value `zbar`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpendObs {
    /// Repeat transactions.
    pub x: u32,
    /// Their mean value (currency units).
    pub zbar: f64,
    /// Number of customers with exactly these values.
    pub n: u64,
}

/// A fitted model with the evidence for it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fitted<M> {
    /// The maximum-likelihood parameters.
    pub params: M,
    /// The total log-likelihood at them (natural log, all constants included).
    pub log_likelihood: f64,
    /// Customers the fit saw.
    pub customers: u64,
}

/// BG/NBD parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BgNbd {
    /// Shape of the purchase-rate Gamma.
    pub r: f64,
    /// Scale (rate) of the purchase-rate Gamma, in weeks.
    pub alpha: f64,
    /// Beta parameter `a` of the dropout probability.
    pub a: f64,
    /// Beta parameter `b` of the dropout probability.
    pub b: f64,
}

impl BgNbd {
    /// `ln L(r, α, a, b | x, t_x, T)`, FHL 2005 equation 6.
    pub fn log_likelihood(&self, x: u32, t_x: f64, t: f64) -> f64 {
        let BgNbd { r, alpha, a, b } = *self;
        let x = f64::from(x);
        let common = ln_gamma(r + x) - ln_gamma(r) + r * alpha.ln();
        let ln_b_ab = ln_beta(a, b);
        let alive = ln_beta(a, b + x) - ln_b_ab - (r + x) * (alpha + t).ln();
        if x == 0.0 {
            return common + alive;
        }
        let died = ln_beta(a + 1.0, b + x - 1.0) - ln_b_ab - (r + x) * (alpha + t_x).ln();
        common + log_add_exp(alive, died)
    }

    /// The sum of [`BgNbd::log_likelihood`] over observations with multiplicities.
    pub fn total_log_likelihood(&self, data: &[PurchaseObs]) -> f64 {
        data.iter().map(|o| o.n as f64 * self.log_likelihood(o.x, o.t_x, o.t)).sum()
    }

    /// The maximum-likelihood fit.
    pub fn fit(data: &[PurchaseObs]) -> Result<Fitted<BgNbd>, FitError> {
        let customers: u64 = data.iter().map(|o| o.n).sum();
        if customers == 0 {
            return Err(FitError::NoData("BG/NBD"));
        }
        if data.iter().all(|o| o.x == 0 || o.n == 0) {
            return Err(FitError::NoRepeatPurchases);
        }
        let cost = |p: &[f64]| {
            let m = BgNbd { r: p[0].exp(), alpha: p[1].exp(), a: p[2].exp(), b: p[3].exp() };
            -m.total_log_likelihood(data) / customers as f64
        };
        let best = minimise("BG/NBD", cost, vec![0.0; 4])?;
        let params = BgNbd { r: best[0].exp(), alpha: best[1].exp(), a: best[2].exp(), b: best[3].exp() };
        usable("BG/NBD", &[params.r, params.alpha, params.a, params.b])?;
        Ok(Fitted { params, log_likelihood: params.total_log_likelihood(data), customers })
    }

    /// `1 / (1 + 1{x>0} · a/(b+x-1) · ((α+T)/(α+t_x))^(r+x))`: the odds part of eq. 10.
    fn dead_odds(&self, x: u32, t_x: f64, t: f64) -> f64 {
        if x == 0 {
            return 0.0;
        }
        let xf = f64::from(x);
        self.a / (self.b + xf - 1.0) * ((self.alpha + t) / (self.alpha + t_x)).powf(self.r + xf)
    }

    /// The probability that a customer with this history is still alive at `T`.
    pub fn p_alive(&self, x: u32, t_x: f64, t: f64) -> f64 {
        1.0 / (1.0 + self.dead_odds(x, t_x, t))
    }

    /// Expected purchases in the next `horizon` weeks after `T`, given the history
    /// (FHL 2005 equation 10).
    pub fn expected_purchases(&self, horizon: f64, x: u32, t_x: f64, t: f64) -> f64 {
        if horizon <= 0.0 {
            return 0.0;
        }
        let BgNbd { r, alpha, a, b } = *self;
        let xf = f64::from(x);
        let z = horizon / (alpha + t + horizon);
        // ((α+T)/(α+T+h))^(r+x) · 2F1(r+x, b+x; a+b+x-1; z), with the power folded into
        // Euler's transformation so that neither factor overflows for large x.
        let tail = (1.0 - z).powf(a - 1.0) * hyp2f1_series(a + b - 1.0 - r, a - 1.0, a + b + xf - 1.0, z);
        (a + b + xf - 1.0) / (a - 1.0) * (1.0 - tail) / (1.0 + self.dead_odds(x, t_x, t))
    }
}

/// Gamma-Gamma parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GammaGamma {
    /// Shape of a transaction's value.
    pub p: f64,
    /// Shape of the Gamma over customers' scale.
    pub q: f64,
    /// Scale of the Gamma over customers' scale.
    pub v: f64,
}

impl GammaGamma {
    /// The log density of a customer's mean repeat spend `zbar` over `x` transactions.
    pub fn log_likelihood(&self, x: u32, zbar: f64) -> f64 {
        let GammaGamma { p, q, v } = *self;
        let px = p * f64::from(x);
        ln_gamma(px + q) - ln_gamma(px) - ln_gamma(q) + q * v.ln() + (px - 1.0) * zbar.ln() + px * f64::from(x).ln()
            - (px + q) * (v + f64::from(x) * zbar).ln()
    }

    /// The sum of [`GammaGamma::log_likelihood`] over observations with multiplicities.
    pub fn total_log_likelihood(&self, data: &[SpendObs]) -> f64 {
        data.iter().map(|o| o.n as f64 * self.log_likelihood(o.x, o.zbar)).sum()
    }

    /// The maximum-likelihood fit, over customers with `x >= 1` and `zbar > 0` (the model
    /// has no density for a zero mean; other observations are ignored).
    pub fn fit(data: &[SpendObs]) -> Result<Fitted<GammaGamma>, FitError> {
        let data: Vec<SpendObs> = data.iter().copied().filter(|o| o.x >= 1 && o.zbar > 0.0 && o.zbar.is_finite()).collect();
        let customers: u64 = data.iter().map(|o| o.n).sum();
        if customers == 0 {
            return Err(FitError::NoData("Gamma-Gamma"));
        }
        let cost = |p: &[f64]| {
            let m = GammaGamma { p: p[0].exp(), q: p[1].exp(), v: p[2].exp() };
            -m.total_log_likelihood(&data) / customers as f64
        };
        let best = minimise("Gamma-Gamma", cost, vec![0.0; 3])?;
        let params = GammaGamma { p: best[0].exp(), q: best[1].exp(), v: best[2].exp() };
        usable("Gamma-Gamma", &[params.p, params.q, params.v])?;
        Ok(Fitted { params, log_likelihood: params.total_log_likelihood(&data), customers })
    }

    /// Expected value of a transaction of a customer with `x` repeat transactions of mean
    /// `zbar`: a weighted mean of the population mean `p v / (q - 1)` and `zbar`. With
    /// `x = 0` it is the population mean.
    pub fn expected_spend(&self, x: u32, zbar: f64) -> f64 {
        let GammaGamma { p, q, v } = *self;
        let px = p * f64::from(x);
        (q - 1.0) / (px + q - 1.0) * (p * v / (q - 1.0)) + px / (px + q - 1.0) * zbar
    }
}

/// How customer lifetime value is summed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClvSettings {
    /// Months summed.
    pub months: u32,
    /// Weeks in a month (4.345 = 365.25 / 12 / 7, rounded as in the `lifetimes` package).
    pub weeks_per_month: f64,
    /// Discount per month: month `i` is divided by `(1 + rate)^i`.
    pub monthly_discount_rate: f64,
}

impl Default for ClvSettings {
    fn default() -> Self {
        ClvSettings { months: 12, weeks_per_month: 4.345, monthly_discount_rate: 0.01 }
    }
}

/// Discounted customer lifetime value: for each month `i` of the horizon, the expected
/// purchases in that month times the expected spend, divided by `(1 + rate)^i`.
pub fn clv(bg: &BgNbd, gg: &GammaGamma, settings: &ClvSettings, x: u32, t_x: f64, t: f64, zbar: f64) -> f64 {
    let spend = gg.expected_spend(x, zbar);
    let mut total = 0.0;
    let mut before = 0.0;
    for i in 1..=settings.months {
        let until = bg.expected_purchases(settings.weeks_per_month * f64::from(i), x, t_x, t);
        total += spend * (until - before) / (1.0 + settings.monthly_discount_rate).powi(i as i32);
        before = until;
    }
    total
}

/// The Gauss hypergeometric function `2F1(a, b; c; z)` for `0 <= z < 1` and `c > 0`.
///
/// Computed as `(1-z)^(c-a-b) · 2F1(c-a, c-b; c; z)` (Euler's transformation) where that
/// series has the faster-decaying terms, else directly. Returns `None` outside that
/// domain or if the series has not converged after 1,000,000 terms. Why not a library:
/// the Rust implementations we found either need GSL (a C library) or switch to a
/// Gamma-function connection formula for `z > 0.5` that loses all precision when `c-a-b`
/// is near an integer, which BG/NBD parameters can be.
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> Option<f64> {
    if !(0.0..1.0).contains(&z) || c <= 0.0 || !(a.is_finite() && b.is_finite() && c.is_finite()) {
        return None;
    }
    let value = if c - a - b < 0.0 {
        (1.0 - z).powf(c - a - b) * hyp2f1_series(c - a, c - b, c, z)
    } else {
        hyp2f1_series(a, b, c, z)
    };
    value.is_finite().then_some(value)
}

/// `Σ_k (a)_k (b)_k / ((c)_k k!) z^k`, summed until a term no longer changes the sum
/// (NaN if it does not converge within 1,000,000 terms).
fn hyp2f1_series(a: f64, b: f64, c: f64, z: f64) -> f64 {
    let mut term = 1.0;
    let mut sum = 1.0;
    for k in 0..1_000_000u32 {
        let k = f64::from(k);
        term *= (a + k) * (b + k) / ((c + k) * (k + 1.0)) * z;
        let next = sum + term;
        if next == sum || term == 0.0 {
            return next;
        }
        sum = next;
    }
    f64::NAN
}

/// `ln B(a, b)`, NaN where it is undefined (a parameter that underflowed to 0).
fn ln_beta(a: f64, b: f64) -> f64 {
    checked_ln_beta(a, b).unwrap_or(f64::NAN)
}

/// Whether fitted parameters can be used: all finite and positive.
fn usable(model: &'static str, params: &[f64]) -> Result<(), FitError> {
    if params.iter().all(|p| p.is_finite() && *p > 0.0) {
        Ok(())
    } else {
        Err(FitError::Optimiser { model, detail: format!("parameters {params:?} are not all finite and positive") })
    }
}

/// `ln(e^x + e^y)` without overflow.
fn log_add_exp(x: f64, y: f64) -> f64 {
    let m = x.max(y);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + ((x - m).exp() + (y - m).exp()).ln()
}

/// A cost over log-parameters, for argmin (borrowed, so that every restart can take one).
#[derive(Clone, Copy)]
struct Objective<'a>(&'a dyn Fn(&[f64]) -> f64);

impl CostFunction for Objective<'_> {
    type Param = Vec<f64>;
    type Output = f64;

    fn cost(&self, p: &Self::Param) -> Result<f64, ArgminError> {
        let c = (self.0)(p);
        // Nelder-Mead only compares costs: a point where the likelihood is undefined is
        // simply a bad point.
        Ok(if c.is_finite() { c } else { f64::MAX })
    }
}

/// Minimises `cost` from `start` with Nelder-Mead, restarting from the best vertex (with
/// a fresh simplex) until a restart improves the cost by less than 1e-13.
fn minimise(model: &'static str, cost: impl Fn(&[f64]) -> f64, start: Vec<f64>) -> Result<Vec<f64>, FitError> {
    let fail = |detail: String| FitError::Optimiser { model, detail };
    let mut best = start;
    let mut best_cost = f64::INFINITY;
    let mut step = 0.5;
    for _ in 0..4 {
        let mut simplex = vec![best.clone()];
        for i in 0..best.len() {
            let mut vertex = best.clone();
            vertex[i] += step;
            simplex.push(vertex);
        }
        let solver = NelderMead::new(simplex).with_sd_tolerance(1e-13).map_err(|e| fail(e.to_string()))?;
        let result = Executor::new(Objective(&cost), solver)
            .configure(|state| state.max_iters(2_000))
            .run()
            .map_err(|e| fail(e.to_string()))?;
        let state = result.state();
        let (Some(param), cost) = (state.get_best_param(), state.get_best_cost()) else {
            return Err(fail("no best point".into()));
        };
        let improved = best_cost - cost;
        if cost <= best_cost {
            best = param.clone();
            best_cost = cost;
        }
        if improved.abs() < 1e-13 {
            break;
        }
        step = 0.1;
    }
    if !best_cost.is_finite() || best_cost == f64::MAX || best.iter().any(|p| !p.is_finite()) {
        return Err(fail(format!("ended at cost {best_cost}")));
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn hyp2f1_matches_closed_forms() {
        for z in [0.0f64, 0.1, 0.5, 0.75, 0.9, 0.99] {
            // 2F1(1, 1; 2; z) = -ln(1 - z) / z
            let expected = if z == 0.0 { 1.0 } else { -(1.0 - z).ln() / z };
            assert!(close(hyp2f1(1.0, 1.0, 2.0, z).unwrap(), expected, 1e-12), "z = {z}");
            // 2F1(a, b; b; z) = (1 - z)^-a
            assert!(close(hyp2f1(0.7, 3.2, 3.2, z).unwrap(), (1.0 - z).powf(-0.7), 1e-12), "z = {z}");
            // 2F1(1/2, 1; 3/2; z^2) = atanh(z) / z
            let s = z.sqrt();
            let expected = if z == 0.0 { 1.0 } else { s.atanh() / s };
            assert!(close(hyp2f1(0.5, 1.0, 1.5, z).unwrap(), expected, 1e-12), "z = {z}");
        }
        assert_eq!(hyp2f1(1.0, 1.0, 2.0, 1.0), None);
        assert_eq!(hyp2f1(1.0, 1.0, 2.0, -0.5), None);
        assert_eq!(hyp2f1(1.0, 1.0, 0.0, 0.5), None);
    }

    /// The folded form used by `expected_purchases` equals the plain product for
    /// moderate `x`, where the plain product does not overflow.
    #[test]
    fn folded_tail_equals_the_plain_product() {
        let m = BgNbd { r: 0.2426, alpha: 4.4135, a: 0.7929, b: 2.4258 };
        for (x, t, h) in [(0u32, 38.86, 39.0), (2, 38.86, 39.0), (26, 31.0, 39.0), (5, 3.0, 52.0)] {
            let xf = f64::from(x);
            let z = h / (m.alpha + t + h);
            let plain = (1.0 - z).powf(m.r + xf) * hyp2f1(m.r + xf, m.b + xf, m.a + m.b + xf - 1.0, z).unwrap();
            let folded = (1.0 - z).powf(m.a - 1.0) * hyp2f1_series(m.a + m.b - 1.0 - m.r, m.a - 1.0, m.a + m.b + xf - 1.0, z);
            assert!(close(folded, plain, 1e-10), "x = {x}: {folded} vs {plain}");
        }
        // Very frequent buyers stay finite.
        let e = m.expected_purchases(52.0, 400, 50.0, 50.0);
        assert!(e.is_finite() && e > 100.0, "{e}");
    }

    /// A fit recovers parameters near the ones it is evaluated against: the likelihood at
    /// the fit is at least as high as at a perturbed point.
    #[test]
    fn fits_are_local_maxima() {
        let data = [
            PurchaseObs { x: 0, t_x: 0.0, t: 30.0, n: 50 },
            PurchaseObs { x: 1, t_x: 5.0, t: 30.0, n: 20 },
            PurchaseObs { x: 3, t_x: 20.0, t: 35.0, n: 10 },
            PurchaseObs { x: 7, t_x: 33.0, t: 36.0, n: 4 },
        ];
        let fit = BgNbd::fit(&data).unwrap();
        for (i, factor) in [(0, 1.01), (1, 0.99), (2, 1.01), (3, 0.99)] {
            let mut p = fit.params;
            match i {
                0 => p.r *= factor,
                1 => p.alpha *= factor,
                2 => p.a *= factor,
                _ => p.b *= factor,
            }
            assert!(p.total_log_likelihood(&data) <= fit.log_likelihood + 1e-9);
        }
        assert_eq!(BgNbd::fit(&[]), Err(FitError::NoData("BG/NBD")));
        assert_eq!(GammaGamma::fit(&[SpendObs { x: 2, zbar: 0.0, n: 3 }]), Err(FitError::NoData("Gamma-Gamma")));
    }
}
