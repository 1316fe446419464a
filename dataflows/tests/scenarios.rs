//! Every scenario file (`tests/scenarios/*.scenario`, the format of
//! [`tidemark_dataflows::scenario`]) holds in the dataflow at 1 and 2 worker threads and
//! in the naive reference, and the dataflow equals the reference at every time.

mod common;

use common::{checkpoints, run_dataflow, Update};
use tidemark_dataflows::reference::{difference, state_at, Reference};
use tidemark_dataflows::scenario::Scenario;

fn run(scenario: &Scenario) {
    let reference = Reference::new(&scenario.records, &scenario.config);
    let runs: Vec<(usize, Vec<Update>)> = [1, 2]
        .into_iter()
        .map(|w| (w, run_dataflow(&scenario.records, w, &scenario.config)))
        .collect();
    let name = &scenario.name;
    for (time, line, expect) in &scenario.expects {
        let expected = reference.views_at(*time);
        if let Err(e) = expect.check(&expected) {
            panic!("{name}.scenario line {line}, the reference: {e}");
        }
        for (workers, updates) in &runs {
            if let Err(e) = expect.check(&state_at(updates, *time)) {
                panic!("{name}.scenario line {line}, the dataflow at {workers} threads: {e}");
            }
        }
    }
    for (workers, updates) in &runs {
        for t in checkpoints(&scenario.records, updates) {
            let diff = difference(&state_at(updates, t), &reference.views_at(t));
            assert!(diff.is_empty(), "{name}.scenario, the dataflow at {workers} threads and the reference differ at {t}:\n{diff}");
        }
    }
}

#[test]
fn every_scenario_holds_in_the_dataflow_and_the_reference() {
    let files = Scenario::files();
    assert!(files.len() >= 10, "the scenarios are missing: {files:?}");
    let only = std::env::var("SCENARIO").ok();
    for path in files.iter().filter(|p| {
        only.as_deref()
            .is_none_or(|o| p.to_string_lossy().contains(o))
    }) {
        run(&Scenario::parse(path));
    }
}

/// The runner itself can fail: a wrong expectation is caught on every side.
#[test]
fn a_wrong_expectation_fails() {
    let dir = std::env::temp_dir().join(format!("tidemark-scenario-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let path = dir.join("wrong.scenario");
    std::fs::write(
        &path,
        "at 2026-11-01T10:00:00Z\n> {\"event_id\":\"a\",\"event_type\":\"page_view\",\"event_ts\":\"2026-11-01T10:00:00Z\",\"user_id\":\"u\"}\n\
         expect 2026-11-01T10:00:00Z\nsessions user_id=u : events=2\n",
    )
    .expect("written");
    let outcome = std::panic::catch_unwind(|| run(&Scenario::parse(&path)));
    let message = outcome.expect_err("two events were expected where there is one");
    let text = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(text.contains("events is 1, not 2"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}
