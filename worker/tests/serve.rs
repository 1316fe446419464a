//! A serving cluster end to end: two `tidemark worker` processes with two threads each
//! form one timely cluster; a coordinator connects to both; events (with duplicates,
//! late and too-late events, corrections, cancellations and malformed records) go in
//! through `Ingest`, and `Query` and `Subscribe` answers are compared with the naive
//! reference at the times the acknowledgements name. Bad requests get clear statuses
//! while the servers keep serving.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidemark_coordinator::config::ServeOptions;
use tidemark_dataflows::decode::{Format, RawRecord};
use tidemark_dataflows::time::Time;
use tidemark_proto::v1::{filter::Op, Filter, IngestRequest, QueryRequest, Row, StatusRequest, SubscribeRequest};
use tidemark_proto::value;
use tidemark_worker::source::now_ms;

use common::serving::{self, encoded, ending_status, query_rows, read_batches, reference, reference_rows, replay, InProcess, Pool};
use common::Scratch;

async fn start_coordinator(pool: &Pool, options: ServeOptions, secret: Option<String>) -> InProcess {
    InProcess::start(pool.addresses(), options, secret).await
}

/// One event of user `u<user>` as JSON.
fn event(id: &str, ty: &str, ts: i64, user: u32, extra: &str) -> Vec<u8> {
    serving::event(id, ty, ts, &format!("u{user}"), extra)
}

/// Events of a few users over the last hour: every type, with duplicates, malformed
/// records, events older than the retention horizon, corrections (`retracts` with a new
/// price) and cancellations (`retraction`) of earlier events.
fn events(seed: u64, n: usize, now: u64) -> Vec<Vec<u8>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let types = ["page_view", "product_view", "add_to_cart", "checkout", "purchase", "payment", "refund"];
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut ids: Vec<(String, u32, i64)> = Vec::new();
    for i in 0..n {
        let roll: f64 = rng.random();
        let user = rng.random_range(0..20);
        let ts = now as i64 - rng.random_range(0..3_600_000);
        let id = format!("s{seed}-{i}");
        if roll < 0.05 {
            out.push(b"{\"event_id\": \"broken".to_vec());
        } else if roll < 0.10 && !out.is_empty() {
            let again = out[rng.random_range(0..out.len())].clone();
            out.push(again);
        } else if roll < 0.12 {
            // Older than the 168 h retention: rejected as too_late.
            out.push(event(&id, "page_view", now as i64 - 200 * 3_600_000, user, ""));
        } else if roll < 0.16 && !ids.is_empty() {
            let (old, user, ts) = ids[rng.random_range(0..ids.len())].clone();
            let price = rng.random_range(1..90);
            out.push(event(&id, "purchase", ts, user, &format!(r#","retracts":"{old}","product_id":"p1","price":{price}.25,"order_id":"o{id}""#)));
        } else if roll < 0.19 && !ids.is_empty() {
            let (old, user, _) = ids[rng.random_range(0..ids.len())].clone();
            out.push(event(&id, "retraction", now as i64, user, &format!(r#","retracts":"{old}""#)));
        } else {
            let ty = types[rng.random_range(0..types.len())];
            let country = ["FR", "DE", "PL"][rng.random_range(0..3)];
            let extra = format!(
                r#","product_id":"p{}","price":{}.5,"quantity":1,"order_id":"o{id}","card_id":"c{user}","geo":{{"country":"{country}"}}"#,
                rng.random_range(0..5),
                rng.random_range(1..90)
            );
            out.push(event(&id, ty, ts, user, &extra));
            ids.push((id, user, ts));
        }
    }
    out
}

#[test]
fn two_processes_serve_consistent_queries_and_subscriptions() {
    let data = Scratch::new("serve");
    let pool = Pool::start(2, 2, &data.0, &[]);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let coordinator = start_coordinator(&pool, ServeOptions::default(), None).await;
        let mut client = coordinator.client().await;

        let views = client.list_views(tidemark_proto::v1::ListViewsRequest {}).await.expect("ListViews").into_inner().views;
        let names: Vec<&str> = views.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["sessions", "funnel", "kpis", "rejected_by_reason", "rejects", "customer_rfm", "clv_model", "customer_clv", "fraud_features", "fraud_scores", "fraud_alerts"]);

        // Subscriptions from before any event: kpis and funnel.
        let start = client.query(QueryRequest { view: "kpis".into(), ..Default::default() }).await.expect("Query").into_inner().as_of;
        let mut kpis = client.subscribe(SubscribeRequest { view: "kpis".into(), as_of: Some(start), ..Default::default() }).await.expect("Subscribe").into_inner();
        let mut funnel = client.subscribe(SubscribeRequest { view: "funnel".into(), as_of: Some(start), ..Default::default() }).await.expect("Subscribe").into_inner();

        // Ingest in several requests on one stream, spread over time; remember each
        // request's visibility time.
        let now = now_ms();
        let mut records: Vec<(RawRecord, Time)> = Vec::new();
        let requests: Vec<IngestRequest> = (0..6).map(|seed| IngestRequest { events: events(seed, 80, now) }).collect();
        let sent = requests.clone();
        let paced = tokio_stream::StreamExt::throttle(tokio_stream::iter(requests), Duration::from_millis(40));
        let mut acks = client.ingest(paced).await.expect("Ingest").into_inner();
        let mut ack_times = Vec::new();
        let mut reasons = std::collections::BTreeSet::new();
        for request in sent {
            let ack = acks.message().await.expect("an ack").expect("one ack per request");
            assert!(ack.visible_at >= ack_times.last().copied().unwrap_or(0), "visibility times do not go back");
            ack_times.push(ack.visible_at);
            reasons.extend(ack.rejects.iter().map(|r| r.reason.clone()));
            assert_eq!(ack.accepted as usize + ack.rejects.len(), request.events.len());
            for bytes in request.events {
                records.push((RawRecord { format: Format::Json, position: records.len() as u64, bytes }, ack.visible_at));
            }
        }
        assert!(reasons.contains("malformed") && reasons.contains("too_late"), "validation rejects come back with reasons: {reasons:?}");
        let last = *ack_times.last().expect("acks");
        let reference = reference(&records);

        // Every view, read at every acknowledged time, equals the reference.
        for &t in &ack_times {
            for view in ["sessions", "funnel", "kpis", "rejected_by_reason", "customer_rfm", "clv_model", "customer_clv", "fraud_features", "fraud_scores", "fraud_alerts"] {
                let want = reference_rows(&reference, t, view);
                // Alerts are rare in this traffic (the oracle tests exercise them).
                assert!(!want.is_empty() || view == "fraud_alerts", "{view} has rows at {t}");
                assert_eq!(query_rows(&mut client, view, t).await, want, "{view} at {t}");
            }
        }
        let rejected = reference_rows(&reference, last, "rejected_by_reason");
        let reasons_in_view: Vec<String> = rejected.keys().map(|r| value::display(&Row::decode(r.as_slice()).expect("a row").values[0])).collect();
        assert!(reasons_in_view.contains(&"duplicate".to_owned()), "{reasons_in_view:?}");

        // A lookup by user reads that user's sessions only.
        let answer = client
            .query(QueryRequest { view: "sessions".into(), key: vec![value::string("u3")], as_of: Some(last), ..Default::default() })
            .await
            .expect("Query by key")
            .into_inner();
        let want: BTreeMap<Vec<u8>, i64> = reference_rows(&reference, last, "sessions")
            .into_iter()
            .filter(|(bytes, _)| Row::decode(bytes.as_slice()).expect("encoded above").values[0] == value::string("u3"))
            .collect();
        assert!(!want.is_empty(), "u3 has sessions");
        assert_eq!(encoded(answer.rows.into_iter().map(|r| (r.row.expect("rows are set"), r.count))), want);

        // The subscriptions, replayed to each acknowledged time and to times between,
        // equal a Query at that time.
        for (name, stream) in [("kpis", &mut kpis), ("funnel", &mut funnel)] {
            let batches = read_batches(stream, start, last).await;
            let mut times: Vec<Time> = ack_times.clone();
            times.extend(batches.iter().filter(|b| !b.updates.is_empty()).map(|b| b.upper - 1).filter(|t| *t <= last));
            times.sort_unstable();
            times.dedup();
            for t in times {
                assert_eq!(replay(&batches, t), query_rows(&mut client, name, t).await, "{name} subscription replayed to {t}");
            }
        }

        // Resume after a reconnect: a subscription from a time seen earlier, without the
        // snapshot, continues the earlier state exactly.
        let seen = ack_times[2];
        let mut resumed = client
            .subscribe(SubscribeRequest { view: "kpis".into(), as_of: Some(seen), without_snapshot: true, ..Default::default() })
            .await
            .expect("Subscribe from a seen time")
            .into_inner();
        let mut state = query_rows(&mut client, "kpis", seen).await;
        for batch in read_batches(&mut resumed, seen, last).await {
            if batch.lower == seen {
                assert!(batch.updates.is_empty(), "no snapshot was asked for");
            }
            for u in batch.updates {
                *state.entry(u.row.expect("rows are set").encode_to_vec()).or_insert(0) += u.diff;
            }
        }
        state.retain(|_, c| *c != 0);
        assert_eq!(state, reference_rows(&reference, last, "kpis"), "resumed subscription at {last}");

        // Status: every worker, frontiers, sizes that match the views, every record counted.
        let status = client.status(StatusRequest {}).await.expect("Status").into_inner();
        assert_eq!(status.workers.len(), 2);
        assert!(status.workers.iter().all(|w| w.connected && w.threads == 2 && w.frontier > last));
        assert_eq!(status.ingested as usize, records.len());
        let kpi_rows = status.views.iter().find(|v| v.name == "kpis").expect("kpis in status");
        assert_eq!(kpi_rows.rows, reference_rows(&reference, last, "kpis").values().sum::<i64>());
        assert!(kpi_rows.arranged_updates >= kpi_rows.rows);
        let status_rejects: i64 = status.rejects.iter().map(|r| r.count).sum();
        let view_rejects: i64 = rejected
            .keys()
            .map(|row| match Row::decode(row.as_slice()).expect("a row").values[1].kind {
                Some(tidemark_proto::v1::value::Kind::Int64(n)) => n,
                ref other => panic!("a count: {other:?}"),
            })
            .sum();
        assert_eq!(status_rejects, view_rejects);

        // Shutdown ends the open subscription with a clear status.
        drop(acks);
        let _ = coordinator.stop.send(());
        let ended = ending_status(&mut kpis).await;
        assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended}");
        coordinator.server.await.expect("the server task ends").expect("the server stops cleanly");
    });
}

#[test]
fn bad_requests_get_clear_statuses_and_the_servers_keep_serving() {
    let data = Scratch::new("serve-bad");
    let pool = Pool::start(1, 2, &data.0, &[]);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let options = ServeOptions { subscriber_buffer: 4, max_message_bytes: 256 << 10, ..ServeOptions::default() };
        let coordinator = start_coordinator(&pool, options, None).await;
        let mut client = coordinator.client().await;
        let code = |r: Result<tonic::Response<tidemark_proto::v1::QueryResponse>, tonic::Status>| r.expect_err("refused").code();

        let query = |view: &str| QueryRequest { view: view.into(), ..Default::default() };
        assert_eq!(code(client.query(query("nope")).await), tonic::Code::NotFound);
        let bad_filter = Filter { column: "no_such_column".into(), op: Op::Eq as i32, value: Some(value::int64(1)) };
        assert_eq!(code(client.query(QueryRequest { filters: vec![bad_filter], ..query("kpis") }).await), tonic::Code::InvalidArgument);
        let mistyped = Filter { column: "orders".into(), op: Op::Eq as i32, value: Some(value::string("many")) };
        assert_eq!(code(client.query(QueryRequest { filters: vec![mistyped], ..query("kpis") }).await), tonic::Code::InvalidArgument);
        let long_key = vec![value::string("a"); 9];
        assert_eq!(code(client.query(QueryRequest { key: long_key, ..query("kpis") }).await), tonic::Code::InvalidArgument);
        assert_eq!(code(client.query(QueryRequest { as_of: Some(1), ..query("kpis") }).await), tonic::Code::OutOfRange);
        let err = client.subscribe(SubscribeRequest { view: "kpis".into(), as_of: Some(1), ..Default::default() }).await.expect_err("compacted");
        assert_eq!(err.code(), tonic::Code::OutOfRange);
        let err = client.subscribe(SubscribeRequest { view: "kpis".into(), filters: vec![Filter { column: "x".into(), ..Default::default() }], ..Default::default() }).await;
        let err = match err {
            Ok(stream) => ending_status(&mut stream.into_inner()).await,
            Err(status) => status,
        };
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        let future = now_ms() + 3_600_000;
        assert_eq!(code(client.query(QueryRequest { as_of: Some(future), timeout_ms: 200, ..query("kpis") }).await), tonic::Code::DeadlineExceeded);

        // An oversized Ingest request.
        let huge = IngestRequest { events: vec![vec![b' '; 512 << 10]] };
        let mut acks = client.ingest(tokio_stream::iter(vec![huge])).await.expect("the stream opens").into_inner();
        let err = acks.message().await.expect_err("too large");
        assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");

        // A subscriber that stops reading is dropped with RESOURCE_EXHAUSTED; the
        // dataflow does not wait for it. Rows of about 2 KB fill the HTTP/2 window fast.
        let mut stalled = client.subscribe(SubscribeRequest { view: "sessions".into(), ..Default::default() }).await.expect("Subscribe").into_inner();
        let category = "c".repeat(2000);
        let now = now_ms() as i64;
        let mut visible = 0;
        for round in 0..20 {
            let events = (0..50).map(|i| event(&format!("big-{round}-{i}"), "product_view", now, round * 50 + i, &format!(r#","product_id":"p","category":"{category}""#))).collect();
            let mut acks = client.ingest(tokio_stream::iter(vec![IngestRequest { events }])).await.expect("Ingest").into_inner();
            visible = acks.message().await.expect("an ack").expect("one ack").visible_at;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ended = ending_status(&mut stalled).await;
        assert_eq!(ended.code(), tonic::Code::ResourceExhausted, "{ended}");

        // Still serving: the sessions at the last acknowledged time include the big events' users.
        let answer = client.query(QueryRequest { key: vec![value::string("u999")], as_of: Some(visible), ..query("sessions") }).await.expect("Query").into_inner();
        assert_eq!(answer.rows.len(), 1);
        let _ = coordinator.stop.send(());
        coordinator.server.await.expect("the server task ends").expect("the server stops cleanly");
    });
}
