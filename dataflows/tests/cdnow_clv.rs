//! The CDNOW acceptance of the CLV views (`../shared/data/cdnow/reference.json`).
//!
//! The reference numbers were computed independently (scipy, and the `lifetimes`
//! package) from the same files; see the data README. Checked here:
//! - the models alone, fitted on the shipped per-customer summaries;
//! - the whole dataflow, from the raw transaction file with evaluation day 1997-09-30:
//!   every customer's `(x, t_x, T, zbar)` against the shipped summary, the fitted
//!   parameters and log-likelihood, and the ten reference customers' predictions.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use common::run_dataflow_until;
use serde_json::Value;
use tidemark_dataflows::clv::model::{BgNbd, GammaGamma, PurchaseObs, SpendObs};
use tidemark_dataflows::decode::{Format, RawRecord};
use tidemark_dataflows::reference::state_at;
use tidemark_dataflows::time::days_from_civil;
use tidemark_dataflows::views::{ViewConfig, ViewRow};

fn data(file: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cdnow").join(file);
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("skipping: {} is absent (the shared data directory sits beside the checkout)", path.display());
        None
    }
}

fn reference() -> Option<Value> {
    let text = std::fs::read_to_string(data("reference.json")?).expect("reference.json reads");
    Some(serde_json::from_str(&text).expect("reference.json parses"))
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_f64().unwrap_or_else(|| panic!("{path:?} is a number"))
}

fn assert_rel(actual: f64, expected: f64, rel: f64, what: &str) {
    let err = (actual - expected).abs() / expected.abs();
    assert!(err <= rel, "{what}: {actual} vs reference {expected} (relative error {err:.2e} > {rel:e})");
}

/// `ID -> (x, t_x, T, zbar)` from the shipped summary with transactions.
fn shipped_summary() -> Option<BTreeMap<u32, (u32, f64, f64, f64)>> {
    let text = std::fs::read_to_string(data("cdnow_customers_summary_with_transactions.csv")?).expect("summary reads");
    let mut out = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let id: u32 = f[0].parse().expect("ID");
        out.insert(id, (f[1].parse().expect("x"), f[2].parse().expect("t_x"), f[3].parse().expect("T"), f[4].parse().expect("zbar")));
    }
    Some(out)
}

#[test]
fn models_fitted_on_the_shipped_summary_match_the_paper() {
    let (Some(reference), Some(summary)) = (reference(), shipped_summary()) else { return };
    let mut triples: BTreeMap<(u32, u64, u64), u64> = BTreeMap::new();
    let mut spends: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    for &(x, t_x, t, zbar) in summary.values() {
        *triples.entry((x, t_x.to_bits(), t.to_bits())).or_insert(0) += 1;
        if x > 0 {
            *spends.entry((x, zbar.to_bits())).or_insert(0) += 1;
        }
    }
    let purchases: Vec<PurchaseObs> =
        triples.iter().map(|(&(x, t_x, t), &n)| PurchaseObs { x, t_x: f64::from_bits(t_x), t: f64::from_bits(t), n }).collect();
    let spend: Vec<SpendObs> = spends.iter().map(|(&(x, zbar), &n)| SpendObs { x, zbar: f64::from_bits(zbar), n }).collect();

    let started = Instant::now();
    let bg = BgNbd::fit(&purchases).expect("BG/NBD fits");
    eprintln!("BG/NBD fit on {} distinct triples of {} customers: {:?}", purchases.len(), bg.customers, started.elapsed());
    let fitted = &reference["bg_nbd"]["fitted"];
    assert_rel(bg.params.r, num(fitted, &["r"]), 1e-3, "r");
    assert_rel(bg.params.alpha, num(fitted, &["alpha"]), 1e-3, "alpha");
    assert_rel(bg.params.a, num(fitted, &["a"]), 1e-3, "a");
    assert_rel(bg.params.b, num(fitted, &["b"]), 1e-3, "b");
    let ll = num(&reference, &["bg_nbd", "loglik_total"]);
    assert!((bg.log_likelihood - ll).abs() <= 0.1, "log-likelihood {} vs {ll}", bg.log_likelihood);
    assert_eq!(bg.customers, 2357);

    let started = Instant::now();
    let gg = GammaGamma::fit(&spend).expect("Gamma-Gamma fits");
    eprintln!("Gamma-Gamma fit on {} customers: {:?}", gg.customers, started.elapsed());
    let fitted = &reference["gamma_gamma"]["fitted"];
    eprintln!("fitted {:?} and {:?}", bg.params, gg.params);
    assert_rel(gg.params.p, num(fitted, &["p"]), 1e-3, "p");
    assert_rel(gg.params.q, num(fitted, &["q"]), 1e-3, "q");
    assert_rel(gg.params.v, num(fitted, &["v"]), 1e-3, "v");
    assert_eq!(gg.customers, 946);
    let ll = num(&reference, &["gamma_gamma", "loglik_total"]);
    assert!((gg.log_likelihood - ll).abs() <= 0.1, "Gamma-Gamma log-likelihood {} vs {ll}", gg.log_likelihood);
}

/// The raw file through every view, in one batch and in monthly batches: the summary of
/// every customer equals the shipped one, and the model and ten customers' predictions
/// equal the reference.
#[test]
fn raw_transactions_through_the_dataflow_reproduce_the_reference() {
    let (Some(reference), Some(summary), Some(raw)) = (reference(), shipped_summary(), data("CDNOW_sample.txt")) else { return };
    let text = std::fs::read_to_string(raw).expect("CDNOW_sample.txt reads");
    // Sample id -> master id (the user id is `cdnow:<master id>`).
    let mut master: BTreeMap<String, u32> = BTreeMap::new();
    let end_ms = days_from_civil(1998, 7, 1) * 86_400_000;
    let mut config = ViewConfig::default();
    config.decode.retention_ms = 800 * 86_400_000;
    config.clv.evaluation_day = Some(days_from_civil(1997, 9, 30));
    config.clv.prediction_weeks = 39;
    // Each batch changes well over 1% of the summaries; refit on every one of them.
    config.clv.refit.changed_per_mille = 0;

    for batch_days in [None, Some(30)] {
        let mut records = Vec::new();
        for (position, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.split_whitespace().collect();
            master.insert(format!("cdnow:{}", f[0]), f[1].parse().expect("sample id"));
            let ingest = match batch_days {
                // Everything at once, after the last day.
                None => end_ms,
                // Monthly-ish batches by transaction date (the file is sorted by customer,
                // so records are put in ingestion order first).
                Some(days) => {
                    let day = days_from_civil(f[2][0..4].parse().unwrap(), f[2][4..6].parse().unwrap(), f[2][6..8].parse().unwrap());
                    ((day / days + 1) * days * 86_400_000).min(end_ms)
                }
            } as u64;
            records.push((RawRecord { format: Format::Cdnow, position: position as u64, bytes: line.as_bytes().to_vec() }, ingest));
        }
        records.sort_by_key(|(_, t)| *t);
        let label = format!("batches of {batch_days:?} days");
        let started = Instant::now();
        let updates = run_dataflow_until(&records, 2, &config, Some(end_ms as u64));
        eprintln!("{label}: {} updates in {:?}", updates.len(), started.elapsed());
        let state = state_at(&updates, end_ms as u64);

        let rejected: Vec<&ViewRow> = state.keys().filter(|r| matches!(r, ViewRow::RejectedByReason { .. })).collect();
        assert!(rejected.is_empty(), "{label}: every CDNOW row is accepted: {rejected:?}");
        let mut seen = 0;
        for row in state.keys() {
            let ViewRow::CustomerRfm(r) = row else { continue };
            let id = master[&*r.summary.user_id];
            let (x, t_x, t, zbar) = summary[&id];
            let (rx, rtx, rt) = r.triple_days();
            assert_eq!(rx, x, "{label}: customer {id}: x");
            assert!((rtx as f64 / 7.0 - t_x).abs() <= 0.0051, "{label}: customer {id}: t_x {rtx} days vs {t_x} weeks");
            assert!((rt as f64 / 7.0 - t).abs() <= 0.0051, "{label}: customer {id}: T {rt} days vs {t} weeks");
            assert!((r.zbar() - zbar).abs() <= 0.0051, "{label}: customer {id}: zbar {} vs {zbar}", r.zbar());
            seen += 1;
        }
        assert_eq!(seen, summary.len(), "{label}: one customer_rfm row per customer");

        let models: Vec<_> = state.keys().filter_map(|r| if let ViewRow::ClvModel(m) = r { Some(m) } else { None }).collect();
        assert_eq!(models.len(), 1, "{label}: one current model");
        let model = models[0];
        let bg = model.bg().expect("BG/NBD fitted");
        let fitted = &reference["bg_nbd"]["fitted"];
        for (name, value) in [("r", bg.r), ("alpha", bg.alpha), ("a", bg.a), ("b", bg.b)] {
            assert_rel(value, num(fitted, &[name]), 1e-3, &format!("{label}: {name}"));
        }
        let ll = model.bg_nbd_log_likelihood.expect("log-likelihood").0;
        let expected_ll = num(&reference, &["bg_nbd", "loglik_total"]);
        assert!((ll - expected_ll).abs() <= 0.1, "{label}: log-likelihood {ll} vs {expected_ll}");
        let gg = model.gg().expect("Gamma-Gamma fitted");
        let fitted = &reference["gamma_gamma"]["fitted"];
        for (name, value) in [("p", gg.p), ("q", gg.q), ("v", gg.v)] {
            assert_rel(value, num(fitted, &[name]), 1e-3, &format!("{label}: {name}"));
        }

        let clv: BTreeMap<u32, _> = state
            .keys()
            .filter_map(|r| if let ViewRow::CustomerClv(c) = r { Some((master[&*c.user_id], c)) } else { None })
            .collect();
        assert_eq!(clv.len(), summary.len(), "{label}: one customer_clv row per customer");
        let customers = reference["customers"].as_array().expect("customers");
        assert_eq!(customers.len(), 10);
        for c in customers {
            let id = c["ID"].as_u64().expect("ID") as u32;
            let row = clv[&id];
            assert_eq!(row.model_version, model.version);
            let who = format!("{label}: customer {id}");
            assert_rel(row.expected_purchases.expect("fitted").0, num(c, &["expected_purchases_next_39_weeks"]), 1e-3, &format!("{who}: expected purchases"));
            assert_rel(row.p_alive.expect("fitted").0, num(c, &["p_alive"]), 1e-3, &format!("{who}: P(alive)"));
            assert_rel(row.expected_spend.expect("fitted").0, num(c, &["expected_average_profit"]), 1e-3, &format!("{who}: expected spend"));
            assert_rel(row.clv.expect("fitted").0, num(c, &["clv_12_months"]), 1e-3, &format!("{who}: 12-month CLV"));
        }
    }
}
