//! Oracle tests: the incremental views equal the naive reference at every time, for
//! random inputs with duplicates, retractions, late, too-late and malformed records,
//! under several batchings and arrival orders, at 1 and 4 worker threads.

mod common;

use common::*;
use tidemark_dataflows::reference::{difference, state_at, Reference};
use tidemark_dataflows::time::Time;
use tidemark_dataflows::views::{Part, ViewRow};

fn check_against_reference(records: &[(tidemark_dataflows::decode::RawRecord, u64)], workers: usize, label: &str) -> Vec<Update> {
    check_with_config(records, workers, label, &test_config())
}

fn check_with_config(records: &[(tidemark_dataflows::decode::RawRecord, u64)], workers: usize, label: &str, config: &tidemark_dataflows::views::ViewConfig) -> Vec<Update> {
    let config = config.clone();
    let updates = run_dataflow(records, workers, &config);
    let times = checkpoints(records, &updates);
    assert!(times.len() > 10, "{label}: too few times to be a meaningful check");
    let reference = Reference::new(records, &config);
    for t in times {
        let expected = reference.views_at(t);
        let actual = state_at(&updates, t);
        let diff = difference(&actual, &expected);
        assert!(diff.is_empty(), "{label}, workers={workers}, time {t}: views differ:\n{diff}");
    }
    updates
}

fn views_present(updates: &[Update]) -> std::collections::BTreeSet<&'static str> {
    updates.iter().map(|(row, _, _)| row.view()).collect()
}

#[test]
fn views_equal_reference_at_every_time_one_worker() {
    for seed in 0..6 {
        let records = random_records(seed, 300);
        let updates = check_against_reference(&records, 1, &format!("seed {seed}"));
        // The mix must exercise every view, or the comparison proves little.
        assert_eq!(views_present(&updates).len(), 11, "seed {seed}: {:?}", views_present(&updates));
        let reasons: std::collections::BTreeSet<_> = updates
            .iter()
            .filter_map(|(row, _, _)| match row {
                ViewRow::RejectedByReason { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect();
        assert!(reasons.len() >= 6, "seed {seed}: too few reject reasons exercised: {reasons:?}");
    }
}

#[test]
fn views_equal_reference_at_every_time_four_workers() {
    for seed in 10..14 {
        let records = random_records(seed, 300);
        check_against_reference(&records, 4, &format!("seed {seed}"));
    }
}

#[test]
fn batchings_and_orders_agree_with_reference() {
    for seed in 20..23 {
        let records = random_records(seed, 250);
        for (tick, workers) in [(10, 2), (60_000, 1), (600_000, 4)] {
            let mut batched = rebatch(&records, tick);
            shuffle_within_times(&mut batched, seed * 31 + tick);
            check_against_reference(&batched, workers, &format!("seed {seed}, tick {tick}"));
        }
    }
}

/// With one batch and no expiry, arrival order cannot change any view but the
/// positions recorded on duplicate rejects.
#[test]
fn arrival_order_does_not_change_views() {
    let mut config = test_config();
    config.decode.retention_ms = 365 * 86_400_000;
    config.decode.max_future_ms = 365 * 86_400_000;
    let records = rebatch(&random_records(40, 300), 86_400_000);
    let at = records.last().expect("records").1;
    let strip = |state: std::collections::BTreeMap<ViewRow, i64>| -> Vec<(ViewRow, i64)> {
        state.into_iter().filter(|(row, _)| !matches!(row, ViewRow::Rejects(_))).collect()
    };
    let baseline = strip(state_at(&run_dataflow(&records, 2, &config), at));
    assert!(baseline.iter().any(|(row, _)| matches!(row, ViewRow::Sessions(_))));
    for seed in 0..3 {
        let mut shuffled = records.clone();
        shuffle_within_times(&mut shuffled, seed);
        assert_eq!(strip(state_at(&run_dataflow(&shuffled, 2, &config), at)), baseline, "order seed {seed}");
    }
}

/// Customer histories need days: records spread over about two months (a 25-day
/// retention, so early purchases expire), with repeat purchases, refunds, corrections,
/// duplicates and late records, under several batchings and worker counts. Every
/// `customer_rfm`, `clv_model` and `customer_clv` row equals the reference at every time.
#[test]
fn clv_views_equal_reference_over_weeks() {
    let scale = 300;
    let mut config = scaled_config(scale as u64);
    // Refit once the inputs changed as often as there are customers, or after two days.
    config.clv.refit.changed_per_mille = 1000;
    config.clv.refit.interval_ms = 2 * 86_400_000;
    for seed in 50..52 {
        let records = random_records_scaled(seed, 250, scale);
        for (tick, workers) in [(10, 1), (3_600_000, 4), (86_400_000, 2)] {
            let mut batched = rebatch(&records, tick);
            shuffle_within_times(&mut batched, seed * 7 + tick);
            let label = format!("seed {seed}, tick {tick}");
            let updates = check_with_config(&batched, workers, &label, &config);
            let repeat_buyers = updates.iter().any(|(row, _, d)| *d > 0 && matches!(row, ViewRow::CustomerRfm(r) if r.summary.days > 2));
            assert!(repeat_buyers, "{label}: some customer buys on three days or more");
            let fitted = updates.iter().filter(|(row, _, d)| *d > 0 && matches!(row, ViewRow::ClvModel(m) if m.gamma_gamma.is_some())).count();
            assert!(fitted >= 2, "{label}: both models were fitted, and refitted ({fitted} fits)");
            let expired = updates.iter().any(|(row, _, d)| *d < 0 && matches!(row, ViewRow::CustomerRfm(_)));
            assert!(expired, "{label}: customer rows change or expire");
        }
    }
}

/// Payments spread over days, with late ones that precede earlier-delivered ones: every
/// `fraud_features` row equals the reference at every time, at 1 and 4 threads, and the
/// mix exercises every feature.
#[test]
fn fraud_features_equal_reference_with_late_payments() {
    // Gaps of up to 5 minutes: windows from one minute to a day all fill.
    let scale = 3;
    let config = scaled_config(scale as u64);
    for (seed, workers) in [(60, 1), (61, 4)] {
        let records = random_records_scaled(seed, 300, scale);
        let label = format!("seed {seed}");
        let updates = check_with_config(&records, workers, &label, &config);
        let rows: Vec<&tidemark_dataflows::fraud::FraudFeatures> =
            updates.iter().filter_map(|(row, _, d)| if let ViewRow::FraudFeatures(f) = row { (*d > 0).then_some(f) } else { None }).collect();
        assert!(rows.iter().any(|f| f.counts[0] > 0), "{label}: a payment within a minute of another");
        assert!(rows.iter().any(|f| f.counts[3] > f.counts[1]), "{label}: the 24 h window holds more than the 10 min one");
        assert!(rows.iter().any(|f| f.amount_z().is_some()), "{label}: amount z-scores");
        assert!(rows.iter().any(|f| f.geo_velocity_kmh().is_some_and(|v| v > 0.0)), "{label}: geo-velocity");
        assert!(rows.iter().any(|f| f.new_device) && rows.iter().any(|f| f.new_country), "{label}: new device and country flags");
        assert!(rows.iter().any(|f| f.country_mismatch), "{label}: billing country mismatches");
        assert!(rows.iter().any(|f| f.distinct_24h.iter().all(|n| *n >= 2)), "{label}: distinct countries, devices and IPs");
        // A late payment corrected the features of later ones: some row was retracted
        // while its payment stayed.
        let corrected = updates.iter().any(|(row, t, d)| {
            *d < 0 && matches!(row, ViewRow::FraudFeatures(f) if updates.iter().any(|(r2, t2, d2)| t2 == t && *d2 > 0 && matches!(r2, ViewRow::FraudFeatures(g) if g.payment_id == f.payment_id)))
        });
        assert!(corrected, "{label}: a late payment corrected a later payment's features");
        // Scores follow: some payments raise an alert and some do not.
        let scores = |alert: bool| {
            updates.iter().filter(|(row, _, d)| *d > 0 && matches!(row, ViewRow::FraudScores(s) if s.alert == alert)).count()
        };
        assert!(scores(true) > 0 && scores(false) > 0, "{label}: alerts and quiet payments");
        // An alert row retracted at a time its payment's features were rewritten (not
        // expired): the correction reached the alert.
        let corrected_alert = updates.iter().any(|(row, t, d)| {
            *d < 0 && matches!(row, ViewRow::FraudAlerts(a) if updates.iter().any(|(r2, t2, d2)| t2 == t && *d2 > 0 && matches!(r2, ViewRow::FraudFeatures(g) if g.payment_id == a.payment_id)))
        });
        assert!(corrected_alert, "{label}: a late payment changed an alert");
    }
}

/// The updates of `updates` summed per row and time, without those that cancel out.
fn consolidated(updates: &[Update]) -> std::collections::BTreeMap<(ViewRow, Time), isize> {
    let mut sums = std::collections::BTreeMap::new();
    for (row, time, diff) in updates {
        *sums.entry((row.clone(), *time)).or_insert(0) += diff;
    }
    sums.retain(|_, diff| *diff != 0);
    sums
}

/// Each part built alone, with the parts it needs, makes exactly the updates its views
/// make in the whole dataflow (which the tests above check against the reference).
#[test]
fn parts_built_alone_equal_the_whole_dataflow() {
    let config = test_config();
    for seed in [50, 51] {
        let records = random_records(seed, 300);
        let whole = consolidated(&run_dataflow(&records, 2, &config));
        for part in Part::ALL {
            let alone = consolidated(&run_parts(&records, 2, &config, &[part]));
            let views: std::collections::BTreeSet<&str> = part.needs().iter().chain([&part]).flat_map(|p| p.views().iter().copied()).collect();
            let expected: std::collections::BTreeMap<_, _> = whole.iter().filter(|((row, _), _)| views.contains(row.view())).map(|(k, d)| (k.clone(), *d)).collect();
            assert!(!expected.is_empty(), "seed {seed}: no {} updates to compare", part.name());
            assert!(alone == expected, "seed {seed}, part {}: {} updates alone, {} in the whole dataflow", part.name(), alone.len(), expected.len());
        }
    }
}

/// The `rejects` view's bound: with two kept per reason and hour, the view holds the
/// first two rejects of each reason and hour to arrive (while they last), and
/// `rejected_by_reason` still counts them all; the same under every batching and worker
/// count.
#[test]
fn rejects_keep_the_first_per_reason_and_hour() {
    let mut config = test_config();
    config.rejects_per_hour = 2;
    for seed in 60..63 {
        let records = random_records(seed, 300);
        for (tick, workers) in [(10, 1), (60_000, 2), (600_000, 4)] {
            let mut batched = rebatch(&records, tick);
            shuffle_within_times(&mut batched, seed * 13 + tick);
            let label = format!("seed {seed}, tick {tick}");
            let updates = check_with_config(&batched, workers, &label, &config);
            let at = batched.iter().map(|(_, t)| *t).max().expect("records");
            let state = state_at(&updates, at);
            let kept: i64 = state.iter().filter(|(row, _)| matches!(row, ViewRow::Rejects(_))).map(|(_, c)| c).sum();
            let counted: i64 = state.iter().filter_map(|(row, _)| match row {
                ViewRow::RejectedByReason { count, .. } => Some(*count),
                _ => None,
            }).sum();
            assert!(kept < counted, "{label}: the bound leaves rejects out of the view ({kept} kept of {counted})");
            let mut per_bucket = std::collections::BTreeMap::new();
            for (row, count) in &state {
                if let ViewRow::Rejects(r) = row {
                    *per_bucket.entry((r.reason, r.ingest_time / tidemark_dataflows::views::HOUR_MS)).or_insert(0) += count;
                }
            }
            assert!(per_bucket.values().all(|n| *n <= 2 * 2), "{label}: at most two distinct rejects (copies count twice): {per_bucket:?}");
        }
    }
}
