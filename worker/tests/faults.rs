//! The serving path under faults and bad input: each test reproduces one way it used to
//! break (a message over 4 MiB ending a worker session, a request just under the limit
//! wedging the service, calls hanging after a lost session, acknowledged events lost on
//! `kill -9`, an internal port anyone could take over, a process that ignored SIGTERM)
//! and checks what happens now.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message;
use tidemark_coordinator::config::ServeOptions;
use tidemark_proto::auth::BearerToken;
use tidemark_proto::internal::v1 as wire;
use tidemark_proto::v1::tidemark_client::TidemarkClient;
use tidemark_proto::v1::value::Kind;
use tidemark_proto::v1::{IngestRequest, QueryRequest, StatusRequest, SubscribeRequest};
use tidemark_proto::value;
use tidemark_worker::source::now_ms;
use tonic::transport::Channel;

use common::serving::{event, eventually, query_pages, InProcess, Pool};
use common::{free_ports, Children, Scratch};

/// Sends one Ingest request on its own stream; its acknowledgement.
async fn ingest(client: &mut TidemarkClient<Channel>, events: Vec<Vec<u8>>) -> Result<tidemark_proto::v1::IngestResponse, tonic::Status> {
    let mut acks = client.ingest(tokio_stream::iter(vec![IngestRequest { events }])).await?.into_inner();
    acks.message().await?.ok_or_else(|| tonic::Status::internal("no acknowledgement"))
}

/// The user ids in a `sessions` answer.
fn users(rows: &std::collections::BTreeMap<Vec<u8>, i64>) -> BTreeSet<String> {
    rows.keys()
        .map(|bytes| match tidemark_proto::v1::Row::decode(bytes.as_slice()).expect("a row").values[0].kind.clone() {
            Some(Kind::String(user)) => user,
            other => panic!("a user id: {other:?}"),
        })
        .collect()
}

/// A view of many megabytes reads whole, in pages of less than a client's default 4 MiB,
/// with `Query` and with a `Subscribe` snapshot; an acknowledgement of thousands of
/// rejects and two 3 MB records in `rejects` break nothing either.
#[test]
fn answers_larger_than_a_message_come_in_pages_and_chunks() {
    let data = Scratch::new("faults-large");
    let pool = Pool::start(1, 2, &data.0, &[]);
    tokio::runtime::Runtime::new().expect("a runtime").block_on(async {
        let coordinator = InProcess::start(pool.addresses(), ServeOptions::default(), None).await;
        let mut client = coordinator.client().await;
        // 24,000 users with one session each, rows of about 400 bytes: 10 MB of sessions.
        let now = now_ms() as i64;
        let category = "c".repeat(300);
        let mut last = 0;
        for chunk in 0..8 {
            let events = (0..3000)
                .map(|i| {
                    let n = chunk * 3000 + i;
                    event(&format!("e{n}"), "product_view", now - 1000, &format!("user-{n:06}"), &format!(r#","product_id":"p","category":"{category}""#))
                })
                .collect();
            last = ingest(&mut client, events).await.expect("acknowledged").visible_at;
        }
        let (rows, pages) = query_pages(&mut client, QueryRequest { view: "sessions".into(), as_of: Some(last), ..Default::default() }).await;
        assert_eq!(rows.len(), 24_000, "every session, once");
        assert!(pages >= 4, "10 MB of rows in pages of about 1 MiB: {pages} pages");
        let expected: BTreeSet<String> = (0..24_000).map(|n| format!("user-{n:06}")).collect();
        assert_eq!(users(&rows), expected);

        // The same view as a subscription's snapshot.
        let mut stream = client.subscribe(SubscribeRequest { view: "sessions".into(), as_of: Some(last), ..Default::default() }).await.expect("Subscribe").into_inner();
        let mut snapshot = Vec::new();
        let mut messages = 0;
        loop {
            let message = stream.message().await.expect("a message").expect("open");
            let Some(batch) = message.batch else { continue };
            messages += 1;
            assert_eq!(batch.lower, last, "the snapshot is the first batch");
            assert!(batch.encoded_len() < 4 << 20);
            snapshot.extend(batch.updates.into_iter().filter(|u| u.time == last).map(|u| (u.row.expect("a row"), u.diff)));
            if !batch.more {
                break;
            }
        }
        assert!(messages > 4, "the snapshot came in {messages} messages");
        assert_eq!(common::serving::encoded(snapshot), rows, "the snapshot equals the query");
        drop(stream);

        // 13,000 purchases with an impossible price, in one request of 1.4 MB.
        let events: Vec<Vec<u8>> =
            (0..13_000).map(|i| event(&format!("bad{i}"), "purchase", now - 1000, &format!("u{i}"), r#","price":1e300,"product_id":"p""#)).collect();
        assert!(events.iter().map(Vec::len).sum::<usize>() > 1_300_000);
        let ack = ingest(&mut client, events).await.expect("acknowledged");
        assert_eq!(ack.rejects.len(), 13_000);
        assert!(ack.rejects.iter().all(|r| r.reason == "bad_amount"), "{:?}", ack.rejects.first());
        assert!(ack.encoded_len() < 4 << 20, "the acknowledgement is {} bytes", ack.encoded_len());

        // Two records of 3 MB each: rejected as oversized, kept in `rejects` as a
        // sample with their size and digest.
        let mut size = 0;
        for i in 0..2 {
            let big = format!(r#"{{"event_id":"big{i}","padding":"{}"}}"#, "x".repeat(3_000_000)).into_bytes();
            size = big.len() as i64;
            let ack = ingest(&mut client, vec![big.clone()]).await.expect("acknowledged");
            assert_eq!(ack.rejects[0].reason, "oversized");
            last = ack.visible_at;
        }
        let (rejects, _) = query_pages(&mut client, QueryRequest { view: "rejects".into(), key: vec![value::string("oversized")], as_of: Some(last), ..Default::default() }).await;
        assert_eq!(rejects.len(), 2);
        for bytes in rejects.keys() {
            let row = tidemark_proto::v1::Row::decode(bytes.as_slice()).expect("a row");
            let raw = match &row.values[5].kind {
                Some(Kind::Bytes(b)) => b.clone(),
                other => panic!("bytes: {other:?}"),
            };
            assert_eq!(raw.len(), 1024, "only the first bytes are kept");
            assert_eq!(row.values[6], value::int64(size), "the size of the whole record");
        }
        let status = client.status(StatusRequest {}).await.expect("Status after all this").into_inner();
        assert!(status.workers.iter().all(|w| w.connected));
        let _ = coordinator.stop.send(());
    });
}

/// A request just under the public limit goes through (its internal message is larger
/// than 4 MiB); one over it gets OUT_OF_RANGE; the service answers after both.
#[test]
fn a_request_at_the_limit_goes_through_and_one_over_it_is_refused() {
    let data = Scratch::new("faults-limit");
    let pool = Pool::start(1, 2, &data.0, &[]);
    tokio::runtime::Runtime::new().expect("a runtime").block_on(async {
        let coordinator = InProcess::start(pool.addresses(), ServeOptions::default(), None).await;
        let mut client = coordinator.client().await.max_encoding_message_size(64 << 20);
        let now = now_ms() as i64;
        let padding = "p".repeat(60_000);
        // 69 events of 60 kB: just under 4 MiB.
        let events: Vec<Vec<u8>> = (0..69).map(|i| event(&format!("x{i}"), "page_view", now - 1000, &format!("u{i}"), &format!(r#","category":"{padding}""#))).collect();
        let size = IngestRequest { events: events.clone() }.encoded_len();
        assert!(size > (4 << 20) - (64 << 10) && size < 4 << 20, "{size}");
        let ack = ingest(&mut client, events).await.expect("a request under the limit is taken");
        assert_eq!(ack.accepted, 69);
        let over: Vec<Vec<u8>> = (0..80).map(|i| event(&format!("y{i}"), "page_view", now - 1000, "u", &format!(r#","category":"{padding}""#))).collect();
        let err = ingest(&mut client, over).await.expect_err("over the limit");
        assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
        // Everything else still answers.
        let ack = ingest(&mut client, vec![event("z", "page_view", now - 1000, "u-after", "")]).await.expect("Ingest after");
        let answer = client.query(QueryRequest { view: "sessions".into(), key: vec![value::string("u-after")], as_of: Some(ack.visible_at), ..Default::default() }).await.expect("Query after");
        assert_eq!(answer.into_inner().rows.len(), 1);
        client.status(StatusRequest {}).await.expect("Status after");
        let _ = coordinator.stop.send(());
    });
}

/// With its only worker process killed, calls fail at once with UNAVAILABLE and health
/// says NOT_SERVING; the coordinator reconnects by itself once the process is back, and
/// the events it had acknowledged are in the views again.
#[test]
fn a_lost_worker_fails_calls_fast_and_is_served_again_once_back() {
    let data = Scratch::new("faults-reconnect");
    let mut pool = Pool::start(1, 2, &data.0, &[]);
    tokio::runtime::Runtime::new().expect("a runtime").block_on(async {
        let coordinator = InProcess::start(pool.addresses(), ServeOptions::default(), None).await;
        let mut client = coordinator.client().await;
        let now = now_ms() as i64;
        let events = (0..50).map(|i| event(&format!("r{i}"), "page_view", now - 1000, &format!("ru{i}"), "")).collect();
        let before = ingest(&mut client, events).await.expect("acknowledged").visible_at;
        let health = |c: Channel| async move {
            tonic_health::pb::health_client::HealthClient::new(c)
                .check(tonic_health::pb::HealthCheckRequest { service: "tidemark.v1.Tidemark".into() })
                .await
                .map(|r| r.into_inner().status)
                .unwrap_or(-1)
        };
        let channel = Channel::from_shared(format!("http://{}", coordinator.address)).unwrap().connect().await.unwrap();

        pool.kill(0);
        eventually(Duration::from_secs(10), "NOT_SERVING after losing the worker", || {
            let c = channel.clone();
            async move { health(c).await == 2 }
        })
        .await;
        let started = Instant::now();
        let err = client.query(QueryRequest { view: "kpis".into(), ..Default::default() }).await.expect_err("no worker");
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
        assert!(started.elapsed() < Duration::from_secs(2), "failed fast: {:?}", started.elapsed());
        let err = ingest(&mut client, vec![event("lost", "page_view", now, "u", "")]).await.expect_err("no worker");
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
        assert!(client.status(StatusRequest {}).await.expect("status still answers").into_inner().workers.iter().all(|w| !w.connected));

        pool.spawn(0);
        eventually(Duration::from_secs(60), "SERVING once the worker is back", || {
            let c = channel.clone();
            async move { health(c).await == 1 }
        })
        .await;
        let (rows, _) = query_pages(&mut client, QueryRequest { view: "sessions".into(), as_of: Some(before), ..Default::default() }).await;
        let expected: BTreeSet<String> = (0..50).map(|i| format!("ru{i}")).collect();
        assert_eq!(rows.len(), 50);
        assert_eq!(users(&rows), expected, "the acknowledged events came back from the log");
        let _ = coordinator.stop.send(());
    });
}

/// A subscription whose client goes away is forgotten at once (the gauge does not leak).
#[test]
fn subscriptions_end_when_their_clients_leave() {
    let data = Scratch::new("faults-gauge");
    let pool = Pool::start(1, 2, &data.0, &[]);
    tokio::runtime::Runtime::new().expect("a runtime").block_on(async {
        let coordinator = InProcess::start(pool.addresses(), ServeOptions::default(), None).await;
        let mut streams = Vec::new();
        for _ in 0..5 {
            let mut client = coordinator.client().await;
            let mut stream = client.subscribe(SubscribeRequest { view: "kpis".into(), ..Default::default() }).await.expect("Subscribe").into_inner();
            stream.message().await.expect("columns").expect("open");
            streams.push((client, stream));
        }
        assert_eq!(coordinator.cluster.subscription_count(), 5);
        drop(streams);
        let cluster = coordinator.cluster.clone();
        eventually(Duration::from_secs(5), "no subscriptions left", || {
            let n = cluster.subscription_count();
            async move { n == 0 }
        })
        .await;
        let _ = coordinator.stop.send(());
    });
}

/// `tidemark status` gives up at its deadline when the cluster does not answer (here a
/// worker process stopped with SIGSTOP, whose connection stays open).
#[test]
fn the_cli_gives_up_at_its_deadline() {
    let data = Scratch::new("faults-deadline");
    let pool = Pool::start(1, 2, &data.0, &[]);
    tokio::runtime::Runtime::new().expect("a runtime").block_on(async {
        let coordinator = InProcess::start(pool.addresses(), ServeOptions::default(), None).await;
        let pid = pool.children[0].as_ref().expect("running").id().to_string();
        assert!(Command::new("kill").args(["-STOP", &pid]).status().expect("kill runs").success());
        let started = Instant::now();
        let out = tokio::task::spawn_blocking({
            let target = format!("http://{}", coordinator.address);
            move || Command::new(env!("CARGO_BIN_EXE_tidemark")).args(["query", "kpis", "--timeout", "2", "--target", &target]).output().expect("the CLI runs")
        })
        .await
        .expect("joined");
        assert!(!out.status.success(), "the query cannot succeed");
        assert!(started.elapsed() < Duration::from_secs(10), "gave up after {:?}", started.elapsed());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("DeadlineExceeded") || stderr.contains("Cancelled") || stderr.contains("deadline"), "{stderr}");
        assert!(Command::new("kill").args(["-CONT", &pid]).status().expect("kill runs").success());
        let _ = coordinator.stop.send(());
    });
}

/// Acknowledged events survive `kill -9` of a worker process of a two-process cluster:
/// its peer exits (one failure domain), both start again and replay their logs, the
/// coordinator reconnects, and every acknowledged event is in the views exactly once;
/// of the requests that were not acknowledged, none is half applied.
#[test]
fn acknowledged_events_survive_kill_9() {
    let data = Scratch::new("faults-durable");
    let mut pool = Pool::start(2, 2, &data.0, &[]);
    tokio::runtime::Runtime::new().expect("a runtime").block_on(async {
        let coordinator = InProcess::start(pool.addresses(), ServeOptions::default(), None).await;
        let mut client = coordinator.client().await;
        let now = now_ms() as i64;
        // Requests of 25 events, one session per event, each sent once the one before it
        // is acknowledged; the kill lands after the 150th acknowledgement, and requests go
        // on until the cluster refuses one (the peer may take a while to notice the loss,
        // and what it acknowledges meanwhile must survive as well).
        let request = |r: usize| IngestRequest { events: (0..25).map(|i| event(&format!("d{r}-{i}"), "page_view", now - 1000, &format!("d{r}-{i}"), "")).collect() };
        let (requests, queued) = tokio::sync::mpsc::channel(1);
        requests.send(request(0)).await.expect("the first request is queued");
        let mut acks = client.ingest(tokio_stream::wrappers::ReceiverStream::new(queued)).await.expect("Ingest").into_inner();
        let mut acknowledged = 0;
        let mut sent = 1;
        let mut last = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match acks.message().await {
                Ok(Some(ack)) => {
                    assert_eq!(ack.accepted, 25);
                    acknowledged += 1;
                    last = last.max(ack.visible_at);
                    if acknowledged == 150 {
                        pool.kill(1);
                    }
                    assert!(Instant::now() < deadline, "{acknowledged} requests acknowledged, none refused, a minute after the kill");
                    // A send fails only once the call has ended; its error comes next.
                    if requests.send(request(sent)).await.is_ok() {
                        sent += 1;
                    }
                }
                Ok(None) => panic!("the stream ended without an error after {acknowledged} acknowledgements"),
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
                    break;
                }
            }
        }
        assert!(acknowledged >= 150, "{acknowledged} acknowledged");
        assert_eq!(pool.wait_exit(0, Duration::from_secs(30)), Some(70), "the peer exits with the cluster-lost code");
        pool.spawn(0);
        pool.spawn(1);
        let (rows, _) = {
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                match client.query(QueryRequest { view: "sessions".into(), limit: 1, as_of: Some(last), timeout_ms: 5000, ..Default::default() }).await {
                    Ok(_) => break query_pages(&mut client, QueryRequest { view: "sessions".into(), as_of: Some(last), ..Default::default() }).await,
                    Err(e) => assert!(Instant::now() < deadline, "the cluster did not come back: {e}\n{}", pool.logs()),
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        };
        let present = users(&rows);
        for r in 0..acknowledged {
            for i in 0..25 {
                assert!(present.contains(&format!("d{r}-{i}")), "acknowledged event d{r}-{i} is missing after the restart");
            }
        }
        // Each request is in the log whole or not at all.
        for r in acknowledged..sent {
            let there = (0..25).filter(|i| present.contains(&format!("d{r}-{i}"))).count();
            assert!(there == 0 || there == 25, "request {r} is half applied: {there} of 25 events");
        }
        assert!(rows.values().all(|c| *c == 1), "every session once");
        let (reasons, _) = query_pages(&mut client, QueryRequest { view: "rejected_by_reason".into(), as_of: Some(last), ..Default::default() }).await;
        assert!(reasons.is_empty(), "no duplicates from the replay: {reasons:?}");
        let _ = coordinator.stop.send(());
    });
}

/// `tidemark up` keeps what it acknowledged across `kill -9` and a restart on the same
/// data directory.
#[test]
fn up_keeps_acknowledged_events_across_kill_9() {
    let data = Scratch::new("faults-up");
    let ports = free_ports(2);
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_tidemark"))
            .args(["up", "-q", "--no-generate", "--listen", &format!("127.0.0.1:{}", ports[0]), "--metrics-listen", &format!("127.0.0.1:{}", ports[1])])
            .arg("--data-dir")
            .arg(&data.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tidemark up starts")
    };
    let target = format!("http://127.0.0.1:{}", ports[0]);
    let mut up = Children(vec![start()]);
    tokio::runtime::Runtime::new().expect("a runtime").block_on(async {
        let connect = || async {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(c) = TidemarkClient::connect(target.clone()).await {
                    if c.clone().list_views(tidemark_proto::v1::ListViewsRequest {}).await.is_ok() {
                        return c;
                    }
                }
                assert!(Instant::now() < deadline, "tidemark up did not answer");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let mut client = connect().await;
        let now = now_ms() as i64;
        let events = (0..100).map(|i| event(&format!("up{i}"), "page_view", now - 1000, &format!("up{i}"), "")).collect();
        let visible = ingest(&mut client, events).await.expect("acknowledged").visible_at;
        up.0[0].kill().expect("kill -9");
        let _ = up.0[0].wait();
        up.0[0] = start();
        let mut client = connect().await;
        let (rows, _) = query_pages(&mut client, QueryRequest { view: "sessions".into(), as_of: Some(visible), timeout_ms: 30_000, ..Default::default() }).await;
        let expected: BTreeSet<String> = (0..100).map(|i| format!("up{i}")).collect();
        assert_eq!(users(&rows), expected);
    });
}

/// The internal port of `tidemark up` takes only its own coordinator: a session without
/// its per-start secret is refused.
#[test]
fn the_internal_port_of_up_needs_its_secret() {
    let data = Scratch::new("faults-secret");
    let ports = free_ports(2);
    let mut up = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["up", "--no-generate", "--listen", &format!("127.0.0.1:{}", ports[0]), "--metrics-listen", &format!("127.0.0.1:{}", ports[1])])
        .arg("--data-dir")
        .arg(&data.0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tidemark up starts");
    // The worker's line names its internal port.
    let stderr = up.stderr.take().expect("piped");
    let mut children = Children(vec![up]);
    let internal = {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stderr).lines();
        let internal = loop {
            let line = lines.next().expect("a line before the banner").expect("text");
            if let Some(at) = line.find("internal gRPC on ") {
                break line[at + "internal gRPC on ".len()..].split(';').next().expect("an address").trim().to_owned();
            }
        };
        // Keep reading what it writes, so that it never writes to a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        internal
    };
    assert!(internal.starts_with("127.0.0.1:"), "{internal}");
    tokio::runtime::Runtime::new().expect("a runtime").block_on(async {
        let channel = Channel::from_shared(format!("http://{internal}")).unwrap().connect().await.expect("the port is open");
        let mut worker = wire::worker_client::WorkerClient::with_interceptor(channel, BearerToken::new(None).unwrap());
        let hello = wire::Command { command: Some(wire::command::Command::Hello(wire::Hello { version: tidemark_proto::PROTOCOL_VERSION })) };
        let err = worker.session(tokio_stream::iter(vec![hello])).await.expect_err("no secret, no session");
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
        let mut client = TidemarkClient::connect(format!("http://127.0.0.1:{}", ports[0])).await.expect("the public port");
        client.list_views(tidemark_proto::v1::ListViewsRequest {}).await.expect("the coordinator still serves");
    });
    children.0[0].kill().ok();
}

/// A second coordinator cannot take over a worker process while the first is connected.
#[test]
fn a_second_session_does_not_evict_the_first() {
    let data = Scratch::new("faults-second");
    let pool = Pool::start(1, 2, &data.0, &[]);
    tokio::runtime::Runtime::new().expect("a runtime").block_on(async {
        let coordinator = InProcess::start(pool.addresses(), ServeOptions::default(), None).await;
        let mut client = coordinator.client().await;
        let channel = Channel::from_shared(format!("http://{}", pool.addresses()[0])).unwrap().connect().await.expect("the internal port");
        let mut second = wire::worker_client::WorkerClient::new(channel);
        let hello = wire::Command { command: Some(wire::command::Command::Hello(wire::Hello { version: tidemark_proto::PROTOCOL_VERSION })) };
        let err = second.session(tokio_stream::iter(vec![hello])).await.expect_err("one session at a time");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
        client.query(QueryRequest { view: "kpis".into(), ..Default::default() }).await.expect("the first coordinator still serves");
        let _ = coordinator.stop.send(());
    });
}

/// Every process stops within seconds of SIGTERM, whatever its peers do: a worker whose
/// coordinator stays connected, the other worker once its peer is gone, the coordinator.
#[test]
fn every_process_stops_soon_after_sigterm() {
    let data = Scratch::new("faults-sigterm");
    let mut pool = Pool::start(2, 2, &data.0, &[]);
    let ports = free_ports(2);
    let mut coordinator = Children(vec![Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["coordinator", "--workers", &pool.addresses().join(","), "--listen", &format!("127.0.0.1:{}", ports[0])])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", ports[1])])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the coordinator starts")]);
    tokio::runtime::Runtime::new().expect("a runtime").block_on(async {
        let target = format!("http://127.0.0.1:{}", ports[0]);
        eventually(Duration::from_secs(60), "the coordinator serves", || {
            let target = target.clone();
            async move {
                match TidemarkClient::connect(target).await {
                    Ok(mut c) => c.list_views(tidemark_proto::v1::ListViewsRequest {}).await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
    });
    let term = |pid: u32| assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill runs").success());
    term(pool.children[0].as_ref().expect("running").id());
    pool.wait_exit(0, Duration::from_secs(10));
    // Its peer gone, the other worker exits by itself (one failure domain) or on SIGTERM.
    let _ = Command::new("kill").args(["-TERM", &pool.children[1].as_ref().expect("running").id().to_string()]).status();
    pool.wait_exit(1, Duration::from_secs(10));
    let started = Instant::now();
    term(coordinator.0[0].id());
    loop {
        if coordinator.0[0].try_wait().expect("polling").is_some() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the coordinator is still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A file whose 250,000 records share one timestamp (a daily export) replays to the
/// end: the replay clock moves a tick on every 65,536 records, so no bound waits on one
/// time that cannot complete.
#[test]
fn a_replay_of_records_with_one_timestamp_finishes() {
    let data = Scratch::new("faults-one-time");
    let input = data.path("one-time.jsonl");
    {
        use std::io::Write;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&input).expect("a file"));
        for i in 0..250_000 {
            writeln!(file, r#"{{"event_id":"o{i}","event_type":"page_view","event_ts":"2026-11-02T08:00:00Z","user_id":"u{}"}}"#, i % 100).expect("write");
        }
    }
    let views = data.path("views.json");
    let child = common::tidemark_run(&["--input", input.to_str().expect("utf-8"), "-q", "--views-out", views.to_str().expect("utf-8")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tidemark run starts");
    let output = common::wait_with_timeout(child, Duration::from_secs(300), "a replay of one timestamp");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&views).expect("views written")).expect("JSON");
    let page_views: i64 = doc["views"]["kpis"]
        .as_array()
        .expect("kpis rows")
        .iter()
        .filter(|row| row["granularity"] == "day")
        .map(|row| row["page_views"].as_i64().expect("a count"))
        .sum();
    assert_eq!(page_views, 250_000, "every record reached the views");
}

/// A gRPC codec that sends any bytes as the request message.
#[derive(Clone, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = bytes::Buf::chunk(buf).to_vec();
        bytes::Buf::advance(buf, bytes.len());
        Ok(Some(bytes))
    }
}

/// Bytes that are not a request get INVALID_ARGUMENT; refused, oversized and ingest calls
/// are counted (Ingest by requests), and the metrics show view sizes, rejects by reason
/// and memory.
#[test]
fn errors_are_classed_and_counted() {
    let data = Scratch::new("faults-metrics");
    let pool = Pool::start(1, 2, &data.0, &[]);
    let metrics_port = free_ports(1)[0];
    tokio::runtime::Runtime::new().expect("a runtime").block_on(async {
        let options = ServeOptions { max_message_bytes: 64 << 10, ..ServeOptions::default() };
        let coordinator = InProcess::start_with_metrics(pool.addresses(), options, None, Some(metrics_port)).await;
        let channel = Channel::from_shared(format!("http://{}", coordinator.address)).unwrap().connect().await.unwrap();
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.expect("ready");
        let path = http::uri::PathAndQuery::from_static("/tidemark.v1.Tidemark/Query");
        let err = grpc.unary(tonic::Request::new(vec![0xff, 0xff, 0xff, 0x01]), path, Raw).await.expect_err("not a QueryRequest");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

        let mut client = TidemarkClient::new(channel);
        let huge = QueryRequest { view: "kpis".into(), key: vec![value::string(&"k".repeat(100 << 10))], ..Default::default() };
        let err = client.query(huge).await.expect_err("over the limit");
        assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");

        let now = now_ms() as i64;
        let requests: Vec<IngestRequest> =
            (0..3).map(|r| IngestRequest { events: vec![event(&format!("m{r}"), "page_view", now - 1000, &format!("mu{r}"), ""), b"{broken".to_vec()] }).collect();
        let mut acks = client.ingest(tokio_stream::iter(requests)).await.expect("Ingest").into_inner();
        while acks.message().await.expect("acks").is_some() {}

        let deadline = Instant::now() + Duration::from_secs(30);
        let text = loop {
            let text = common::serving::scrape(metrics_port).await;
            if text.contains("tidemark_view_rows{view=\"sessions\"} 3") || Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        for line in [
            "tidemark_requests_total{method=\"Query\",code=\"InvalidArgument\"} 1",
            "tidemark_requests_total{method=\"Query\",code=\"OutOfRange\"} 1",
            "tidemark_requests_total{method=\"Ingest\",code=\"Ok\"} 1",
            "tidemark_ingest_requests_total 3",
            "tidemark_ingest_records_total{outcome=\"accepted\"} 3",
            "tidemark_ingest_records_total{outcome=\"rejected\"} 3",
            "tidemark_view_rows{view=\"sessions\"} 3",
            "tidemark_rejects{reason=\"malformed\"} 3",
        ] {
            assert!(text.contains(line), "the metrics have {line:?}:\n{text}");
        }
        assert!(text.contains("# TYPE tidemark_requests counter"), "{text}");
        let _ = coordinator.stop.send(());
    });
}
