//! `tidemark up` (worker and coordinator on the embedded default, fed by the generator)
//! answered by the command-line client, and stopped gracefully by SIGTERM.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{free_ports, wait_with_timeout, Children};

fn client(args: &[&str], target: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidemark")).args(args).args(["--target", target]).output().expect("the client runs")
}

/// The `buf` CLI: `$TIDEMARK_BUF`, or where scripts/test installs it.
fn buf() -> Option<std::path::PathBuf> {
    let installed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/node_modules/.bin/buf");
    std::env::var_os("TIDEMARK_BUF").map(Into::into).or(Some(installed)).filter(|p: &std::path::PathBuf| p.is_file())
}

fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

#[test]
fn up_serves_the_generated_views_to_the_cli() {
    let ports = free_ports(2);
    let target = format!("http://127.0.0.1:{}", ports[0]);
    let data = common::Scratch::new("up");
    // Killed if the test ends before stopping it (a failed assertion).
    let mut up = Children(vec![Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["up", "-q", "--rate", "500", "--users", "400000", "--listen", &format!("127.0.0.1:{}", ports[0])])
        .arg("--data-dir")
        .arg(&data.0)
        .args(["--metrics-listen", &format!("127.0.0.1:{}", ports[1])])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tidemark binary starts")]);

    // Wait until events have flowed into the views.
    let start = Instant::now();
    let status = loop {
        let output = client(&["status", "--json"], &target);
        if output.status.success() {
            let status: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
            if status["ingested"].as_u64().unwrap_or(0) > 500 {
                break status;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no events within a minute: {}", String::from_utf8_lossy(&output.stderr));
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["workers"][0]["threads"], 2);
    assert!(status["views"].as_array().expect("views").iter().any(|v| v["name"] == "sessions" && v["rows"].as_i64() > Some(0)), "{status}");

    let views = json_lines(&client(&["views", "--json"], &target));
    assert_eq!(views.iter().map(|v| v["name"].as_str().expect("a name")).collect::<Vec<_>>(), ["sessions", "funnel", "kpis", "rejected_by_reason", "rejects", "customer_rfm", "clv_model", "customer_clv", "fraud_features", "fraud_scores", "fraud_alerts"]);

    let minute = json_lines(&client(&["query", "kpis", "--where", "granularity=minute", "--format", "json"], &target));
    assert!(!minute.is_empty() && minute.iter().all(|r| r["granularity"] == "minute" && r["events"].as_i64() > Some(0)), "{minute:?}");

    // A lookup by a user the sessions view holds.
    let some = json_lines(&client(&["query", "sessions", "--limit", "1", "--format", "json"], &target));
    let user = some[0]["user_id"].as_str().expect("a user id").to_owned();
    let theirs = json_lines(&client(&["query", "sessions", "--key", &user, "--format", "json"], &target));
    assert!(!theirs.is_empty() && theirs.iter().all(|r| r["user_id"] == user.as_str()));

    // A subscription: the snapshot, then changes and progress.
    let lines = json_lines(&client(&["subscribe", "kpis", "--batches", "4", "--progress", "--format", "json"], &target));
    let progress: Vec<u64> = lines.iter().filter_map(|l| l["progress"].as_u64()).collect();
    assert_eq!(progress.len(), 4);
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "progress goes forward: {progress:?}");
    assert!(lines.iter().any(|l| l["diff"] == 1 && l["row"]["granularity"] == "day"), "the snapshot has the day's row");

    // Reflection (v1 and v1alpha) lets `buf curl` call the API without .proto files.
    match buf() {
        Some(buf) => {
            let curl = |args: &[&str]| {
                let output = Command::new(&buf).args(["curl", "--protocol", "grpc", "--http2-prior-knowledge"]).args(args).output().expect("buf runs");
                assert!(output.status.success(), "buf curl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
                String::from_utf8_lossy(&output.stdout).into_owned()
            };
            let services = curl(&["--list-services", &target]);
            assert!(services.contains("tidemark.v1.Tidemark") && services.contains("grpc.health.v1.Health"), "{services}");
            assert!(!services.contains("internal"), "the coordinator does not show the internal protocol: {services}");
            for reflect in ["grpc-v1", "grpc-v1alpha"] {
                let answer = curl(&["--reflect-protocol", reflect, "-d", r#"{"view": "kpis", "limit": 1}"#, &format!("{target}/tidemark.v1.Tidemark/Query")]);
                let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
                assert_eq!(answer["rows"].as_array().map(Vec::len), Some(1), "{answer}");
                let health = curl(&["--reflect-protocol", reflect, "-d", r#"{"service": "tidemark.v1.Tidemark"}"#, &format!("{target}/grpc.health.v1.Health/Check")]);
                assert!(health.contains("SERVING"), "{health}");
            }
        }
        None if std::env::var_os("TIDEMARK_REQUIRE_BUF").is_some() => panic!("buf is required (scripts/test installs it) but was not found"),
        None => eprintln!("buf not found (scripts/test installs it into target/tools): reflection not checked with buf curl"),
    }

    // Bad input gets a clear error, not a panic.
    let output = client(&["query", "kpis", "--where", "events>=many"], &target);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a int64"), "{}", String::from_utf8_lossy(&output.stderr));

    // SIGTERM stops it gracefully.
    let child = up.0.pop().expect("still running");
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
    assert!(killed.success());
    let output = wait_with_timeout(child, Duration::from_secs(20), "tidemark up after SIGTERM");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Tidemark is up") && stderr.trim_end().ends_with("stopped"), "{stderr}");
}
