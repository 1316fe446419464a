//! Oracle tests: the incremental views equal the naive reference at every time, for
//! random inputs with duplicates, retractions, late, too-late and malformed records,
//! under several batchings and arrival orders, at 1 and 4 worker threads.

mod common;

use common::*;
use tidemark_dataflows::reference::{difference, state_at, views_at};
use tidemark_dataflows::views::ViewRow;

fn check_against_reference(records: &[(tidemark_dataflows::decode::RawRecord, u64)], workers: usize, label: &str) -> Vec<Update> {
    let config = test_config();
    let updates = run_dataflow(records, workers, &config);
    let times = checkpoints(records, &updates);
    assert!(times.len() > 10, "{label}: too few times to be a meaningful check");
    for t in times {
        let expected = views_at(records, t, &config);
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
        assert_eq!(views_present(&updates).len(), 5, "seed {seed}: {:?}", views_present(&updates));
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
