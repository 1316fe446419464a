//! The embedded default: live generated traffic with a summary, and clear configuration
//! errors.

mod common;

use std::time::Duration;

use common::{tidemark_run, wait_with_timeout};

#[test]
fn live_default_ingests_and_prints_a_final_summary() {
    let child = tidemark_run(&["--duration", "3", "--rate", "2000", "--users", "1400000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tidemark starts");
    let output = wait_with_timeout(child, Duration::from_secs(60), "the live default");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().expect("a final line");
    let records: u64 = last
        .strip_prefix("throughput ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a throughput line, not {last:?}"));
    // Paced at 2,000 events/s for 3 s.
    assert!((4_000..=7_000).contains(&records), "{records} records in 3 s at 2,000/s");
    for section in ["live sessions", "KPIs (latest windows)", "Funnel, hour from", "Rejects (within retention)"] {
        assert!(stdout.contains(section), "the summary shows {section:?}:\n{stdout}");
    }
}

#[test]
fn every_configuration_problem_is_reported_at_once() {
    let output = tidemark_run(&["--workers", "0", "--tick-ms", "0", "--processes", "2", "--input", "/nonexistent/events.jsonl"])
        .output()
        .expect("tidemark runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for problem in ["--workers must be at least 1", "--tick-ms must be positive", "needs --peers or --hostfile", "is not a readable file"] {
        assert!(stderr.contains(problem), "stderr mentions {problem:?}:\n{stderr}");
    }
}
