//! A serving cluster end to end: two `tidemark worker` processes with two threads each
//! form one timely cluster; a coordinator connects to both; events go in through
//! `Ingest`, and `Query` and `Subscribe` answers are compared with the naive reference
//! at the times the acknowledgements name.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidemark_coordinator::cluster::Cluster;
use tidemark_dataflows::decode::{Format, RawRecord};
use tidemark_dataflows::reference::views_at;
use tidemark_dataflows::time::{format_timestamp, Time};
use tidemark_dataflows::views::{ViewConfig, ViewRow};
use tidemark_proto::v1::tidemark_client::TidemarkClient;
use tidemark_proto::v1::{IngestRequest, QueryRequest, Row, SubscribeRequest};
use tidemark_proto::value;
use tidemark_worker::serve::schema;
use tidemark_worker::source::now_ms;

use common::free_ports;

struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_workers(grpc: &[u16], timely: &[u16]) -> Workers {
    let peers: Vec<String> = timely.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    Workers(
        (0..grpc.len())
            .map(|i| {
                Command::new(env!("CARGO_BIN_EXE_tidemark"))
                    .args(["worker", "-w", "2", "--processes", &grpc.len().to_string(), "--process", &i.to_string()])
                    .args(["--peers", &peers.join(","), "--listen", &format!("127.0.0.1:{}", grpc[i]), "--history-ms", "600000"])
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("the tidemark binary starts")
            })
            .collect(),
    )
}

/// Events of a few users over the last hour: every type, some duplicates, bad records.
fn events(seed: u64, n: usize, now: u64) -> Vec<Vec<u8>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let types = ["page_view", "product_view", "add_to_cart", "checkout", "purchase", "payment", "refund"];
    let mut out: Vec<Vec<u8>> = Vec::new();
    for i in 0..n {
        let roll: f64 = rng.random();
        if roll < 0.05 {
            out.push(b"{\"event_id\": \"broken".to_vec());
            continue;
        }
        if roll < 0.10 && !out.is_empty() {
            let again = out[rng.random_range(0..out.len())].clone();
            out.push(again);
            continue;
        }
        let ts = now as i64 - rng.random_range(0..3_600_000);
        let ty = types[rng.random_range(0..types.len())];
        let user = rng.random_range(0..20);
        let country = ["FR", "DE", "PL"][rng.random_range(0..3)];
        out.push(
            format!(
                r#"{{"event_id":"s{seed}-{i}","event_type":"{ty}","event_ts":"{}","user_id":"u{user}","product_id":"p{}","price":{}.5,"quantity":1,"order_id":"o{i}","card_id":"c{user}","geo":{{"country":"{country}"}}}}"#,
                format_timestamp(ts),
                rng.random_range(0..5),
                rng.random_range(1..90)
            )
            .into_bytes(),
        );
    }
    out
}

fn encoded(rows: impl IntoIterator<Item = (Row, i64)>) -> BTreeMap<Vec<u8>, i64> {
    let mut out = BTreeMap::new();
    for (row, count) in rows {
        *out.entry(row.encode_to_vec()).or_insert(0) += count;
    }
    out.retain(|_, c| *c != 0);
    out
}

/// The reference contents of a served view, as API rows.
fn reference_rows(records: &[(RawRecord, Time)], at: Time, view: &str) -> BTreeMap<Vec<u8>, i64> {
    let rows = views_at(records, at, &ViewConfig::default()).into_iter().filter_map(|(row, count)| {
        let api = match &row {
            ViewRow::Sessions(s) if view == "sessions" => schema::session_row(s),
            ViewRow::Funnel { key, agg } if view == "funnel" => schema::funnel_row(key, agg),
            ViewRow::Kpis { key, agg } if view == "kpis" => schema::kpi_row(key, agg),
            ViewRow::RejectedByReason { reason, count } if view == "rejected_by_reason" => schema::rejected_row(reason, count),
            _ => return None,
        };
        Some((api, count))
    });
    encoded(rows)
}

#[test]
fn two_processes_serve_consistent_queries_and_subscriptions() {
    let ports = free_ports(4);
    let _workers = start_workers(&ports[..2], &ports[2..]);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let addresses = ports[..2].iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let cluster = Cluster::connect(addresses, Duration::from_secs(60)).await.expect("the workers answer");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let address = listener.local_addr().expect("bound");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(tidemark_coordinator::run(listener, cluster, async move { drop(stopped.await) }));
        let mut client = TidemarkClient::connect(format!("http://{address}")).await.expect("the coordinator answers");

        let views = client.list_views(tidemark_proto::v1::ListViewsRequest {}).await.expect("ListViews").into_inner().views;
        let names: Vec<&str> = views.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["sessions", "funnel", "kpis", "rejected_by_reason", "rejects"]);

        // A subscription from before any event.
        let start = client.query(QueryRequest { view: "kpis".into(), ..Default::default() }).await.expect("Query").into_inner().as_of;
        let mut changes = client
            .subscribe(SubscribeRequest { view: "kpis".into(), as_of: Some(start), ..Default::default() })
            .await
            .expect("Subscribe")
            .into_inner();

        // Ingest in several requests; remember each request's visibility time.
        let now = now_ms();
        let mut records: Vec<(RawRecord, Time)> = Vec::new();
        let mut requests = Vec::new();
        for seed in 0..6 {
            requests.push(IngestRequest { events: events(seed, 60, now) });
        }
        let sent = requests.clone();
        let mut acks = client.ingest(tokio_stream::iter(requests)).await.expect("Ingest").into_inner();
        let mut last = 0;
        let mut rejected = 0;
        for request in sent {
            let ack = acks.message().await.expect("an ack").expect("one ack per request");
            assert!(ack.visible_at >= last, "visibility times do not go back");
            last = ack.visible_at;
            rejected += ack.rejects.len();
            assert!(ack.rejects.iter().all(|r| r.reason == "malformed"), "{:?}", ack.rejects);
            for bytes in request.events {
                records.push((RawRecord { format: Format::Json, position: records.len() as u64, bytes }, ack.visible_at));
            }
        }
        assert!(rejected > 0, "the mix has malformed records");

        // Every view, read at the last acknowledged time, equals the reference.
        for view in ["sessions", "funnel", "kpis", "rejected_by_reason"] {
            let answer = client.query(QueryRequest { view: view.into(), as_of: Some(last), ..Default::default() }).await.expect("Query").into_inner();
            assert_eq!(answer.as_of, last);
            let got = encoded(answer.rows.into_iter().map(|r| (r.row.expect("rows are set"), r.count)));
            let want = reference_rows(&records, last, view);
            assert!(!want.is_empty(), "{view} has rows");
            assert_eq!(got, want, "{view} at {last}");
        }

        // A lookup by user reads that user's sessions only.
        let answer = client
            .query(QueryRequest { view: "sessions".into(), key: vec![value::string("u3")], as_of: Some(last), ..Default::default() })
            .await
            .expect("Query by key")
            .into_inner();
        let want: BTreeMap<Vec<u8>, i64> = reference_rows(&records, last, "sessions")
            .into_iter()
            .filter(|(bytes, _)| Row::decode(bytes.as_slice()).expect("encoded above").values[0] == value::string("u3"))
            .collect();
        assert!(!want.is_empty(), "u3 has sessions");
        assert_eq!(encoded(answer.rows.into_iter().map(|r| (r.row.expect("rows are set"), r.count))), want);

        // The subscription rebuilds the same kpis.
        let mut state: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
        let mut expected_lower = start;
        loop {
            let message = changes.message().await.expect("a subscription message").expect("the subscription stays open");
            let Some(batch) = message.batch else { continue };
            assert_eq!(batch.lower, expected_lower, "batches are contiguous");
            expected_lower = batch.upper;
            for u in batch.updates {
                assert!(u.time >= batch.lower && u.time < batch.upper);
                *state.entry(u.row.expect("rows are set").encode_to_vec()).or_insert(0) += u.diff;
            }
            if batch.upper > last {
                break;
            }
        }
        state.retain(|_, c| *c != 0);
        assert_eq!(state, reference_rows(&records, last, "kpis"), "subscription state at {last}");

        // Compacted times are refused clearly.
        let err = client.query(QueryRequest { view: "kpis".into(), as_of: Some(1), ..Default::default() }).await.expect_err("as_of 1 is compacted");
        assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
        let err = client.query(QueryRequest { view: "nope".into(), ..Default::default() }).await.expect_err("no such view");
        assert_eq!(err.code(), tonic::Code::NotFound);

        // Shutdown ends the open subscription with a clear status.
        drop(acks);
        let _ = stop.send(());
        let ended = loop {
            match changes.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the subscription ended without a status"),
                Err(status) => break status,
            }
        };
        assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended}");
        server.await.expect("the server task ends").expect("the server stops cleanly");
    });
}
