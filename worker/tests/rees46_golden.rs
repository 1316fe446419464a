//! Golden numbers on the real REES46 sample, through the real reader and binary.
//!
//! The expected figures were derived independently of this code base by
//! `scripts/golden/rees46_golden.py`: DuckDB 2.0.0 SQL over the raw text lines of
//! `shared/data/rees46/2019-Oct_head_17435rows.csv` (sha256 3f27c30d…cec6d8), with the
//! ordered funnel step computed in SQL, and cross-checked by a plain-Python `csv`
//! implementation in the same script (all sections agree). Its output is kept in
//! `scripts/golden/rees46_golden.json`.

mod common;

use std::time::Duration;

use common::{shared_data, tidemark_run, wait_with_timeout, Scratch};
use serde_json::Value;

fn rows<'a>(views: &'a Value, view: &str) -> &'a Vec<Value> {
    views["views"][view].as_array().unwrap_or_else(|| panic!("view {view} is in the output"))
}

fn int(row: &Value, field: &str) -> i64 {
    row[field].as_i64().unwrap_or_else(|| panic!("{field} is an integer in {row}"))
}

#[test]
fn rees46_sample_matches_golden_numbers() {
    let Some(csv) = shared_data("rees46/2019-Oct_head_17435rows.csv") else {
        eprintln!("skipping: ../shared/data/rees46 is not beside this checkout");
        return;
    };
    let scratch = Scratch::new("rees46");
    let out = scratch.path("views.json");
    let dead = scratch.path("dead.jsonl");
    let child = tidemark_run(&["--input", csv.to_str().expect("utf-8 path"), "-w", "2", "-q"])
        .args(["--views-out", out.to_str().expect("utf-8 path"), "--dead-letter", dead.to_str().expect("utf-8 path")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tidemark starts");
    let output = wait_with_timeout(child, Duration::from_secs(120), "the REES46 replay");
    assert!(output.status.success(), "replay failed: {}", String::from_utf8_lossy(&output.stderr));
    let views: Value = serde_json::from_slice(&std::fs::read(&out).expect("views file")).expect("views JSON");

    // Totals: 17,434 valid events, 1 malformed (the cut-off last line).
    let sessions = rows(&views, "sessions");
    assert_eq!(sessions.len(), 5067);
    assert_eq!(sessions.iter().map(|s| int(s, "events")).sum::<i64>(), 17434);
    assert_eq!(sessions.iter().filter(|s| int(s, "purchases") > 0).count(), 200);
    assert_eq!(sessions.iter().filter(|s| int(s, "funnel_step") == 1).count(), 4949);
    assert_eq!(sessions.iter().filter(|s| int(s, "funnel_step") == 2).count(), 118);
    assert_eq!(sessions.iter().map(|s| int(s, "revenue_cents")).sum::<i64>(), 5_944_263);
    assert_eq!(sessions.iter().map(|s| int(s, "orders")).sum::<i64>(), 214);

    let rejected = rows(&views, "rejected_by_reason");
    assert_eq!(rejected.len(), 1);
    assert_eq!((rejected[0]["reason"].as_str(), int(&rejected[0], "count")), (Some("malformed"), 1));
    let dead_letter = std::fs::read_to_string(&dead).expect("dead letter file");
    let lines: Vec<Value> = dead_letter.lines().map(|l| serde_json::from_str(l).expect("dead-letter JSON")).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(int(&lines[0], "position"), 17436);
    assert!(lines[0]["raw"].as_str().is_some_and(|r| r.ends_with(",25.71,52040330")));

    // Funnel per hour, dimension all:
    // (window, sessions, step>=1, step>=2, step>=3, step>=4, purchasing, orders, revenue, users)
    let expected_hours = [
        ("2019-10-01T00:00:00.000Z", [425, 425, 3, 0, 0, 9, 10, 238_784, 383]),
        ("2019-10-01T01:00:00.000Z", [101, 101, 0, 0, 0, 0, 0, 0, 100]),
        ("2019-10-01T02:00:00.000Z", [4541, 4541, 115, 0, 0, 191, 204, 5_705_479, 4034]),
    ];
    let funnel = rows(&views, "funnel");
    let hours: Vec<&Value> = funnel.iter().filter(|r| r["granularity"] == "hour" && r["dimension"] == "all").collect();
    assert_eq!(hours.len(), 3);
    for (window, numbers) in expected_hours {
        let row = hours.iter().find(|r| r["window"] == window).unwrap_or_else(|| panic!("hour {window}"));
        let fields = ["sessions", "reached_view", "reached_cart", "reached_checkout", "reached_purchase", "purchasing_sessions", "orders", "revenue_cents", "unique_users"];
        let actual: Vec<i64> = fields.iter().map(|f| int(row, f)).collect();
        assert_eq!(actual, numbers, "funnel hour {window}");
    }

    // Funnel per hour by category: 177 rows; the first hour's largest categories.
    let by_category: Vec<&Value> = funnel.iter().filter(|r| r["granularity"] == "hour" && r["dimension"] == "category").collect();
    assert_eq!(by_category.len(), 177);
    for (category, sessions, purchasing, revenue, users) in [
        ("electronics.smartphone", 126, 4, 191_441, 118),
        ("appliances.kitchen.refrigerators", 16, 0, 0, 15),
        ("appliances.environment.air_heater", 15, 1, 2803, 15),
        ("electronics.audio.headphone", 13, 2, 36_147, 13),
        ("(none)", 134, 1, 2951, 122),
    ] {
        let row = by_category
            .iter()
            .find(|r| r["window"] == "2019-10-01T00:00:00.000Z" && r["value"] == category)
            .unwrap_or_else(|| panic!("category {category}"));
        let actual = [int(row, "sessions"), int(row, "purchasing_sessions"), int(row, "revenue_cents"), int(row, "unique_users")];
        assert_eq!(actual, [sessions, purchasing, revenue, users], "category {category}");
    }

    // KPIs per hour by event time: (events, product views, carts, purchases, revenue, orders).
    let kpis = rows(&views, "kpis");
    for (window, numbers) in [
        ("2019-10-01T00:00:00.000Z", [1083, 1070, 3, 10, 238_784, 10]),
        ("2019-10-01T01:00:00.000Z", [121, 121, 0, 0, 0, 0]),
        ("2019-10-01T02:00:00.000Z", [16230, 15864, 162, 204, 5_705_479, 204]),
    ] {
        let row = kpis.iter().find(|r| r["granularity"] == "hour" && r["window"] == window).unwrap_or_else(|| panic!("kpi {window}"));
        let fields = ["events", "product_views", "cart_adds", "purchases", "revenue_cents", "orders"];
        assert_eq!(fields.map(|f| int(row, f)), numbers, "kpis hour {window}");
    }

    // Sessions per minute of start: 141 minutes have starts; the first three.
    let minutes: Vec<&Value> = funnel.iter().filter(|r| r["granularity"] == "minute" && r["dimension"] == "all").collect();
    assert_eq!(minutes.len(), 141);
    for (window, sessions) in [("2019-10-01T00:00:00.000Z", 54), ("2019-10-01T00:01:00.000Z", 33), ("2019-10-01T00:02:00.000Z", 25)] {
        let row = minutes.iter().find(|r| r["window"] == window).unwrap_or_else(|| panic!("minute {window}"));
        assert_eq!(int(row, "sessions"), sessions, "minute {window}");
    }
}
