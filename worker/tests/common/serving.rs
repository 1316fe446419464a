//! Serving clusters for tests: worker processes on loopback that can be killed and
//! restarted, a coordinator in this process or as a process of its own, and reading the
//! public API (pages, subscription batches) into comparable maps.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message;
use tidemark_coordinator::cluster::Cluster;
use tidemark_coordinator::config::ServeOptions;
use tidemark_dataflows::clv::dataflow::Single;
use tidemark_dataflows::decode::RawRecord;
use tidemark_dataflows::reference::Reference;
use tidemark_dataflows::time::{format_timestamp, Time};
use tidemark_dataflows::views::{ViewConfig, ViewRow};
use tidemark_proto::v1::tidemark_client::TidemarkClient;
use tidemark_proto::v1::{QueryRequest, Row, SubscribeBatch, SubscribeResponse};
use tidemark_worker::serve::schema;
use tonic::transport::Channel;

use super::free_ports;

/// Worker processes of one cluster on loopback, each with its own data directory under
/// `data`, that can be killed and started again on the same ports and data.
pub struct Pool {
    /// Internal gRPC ports, by process.
    pub grpc: Vec<u16>,
    timely: Vec<u16>,
    threads: usize,
    data: PathBuf,
    args: Vec<String>,
    /// The running processes (`None` once killed).
    pub children: Vec<Option<Child>>,
    logs: Vec<PathBuf>,
    starts: usize,
}

impl Pool {
    /// Starts `processes` worker processes of `threads` threads, with `args` added.
    pub fn start(processes: usize, threads: usize, data: &Path, args: &[&str]) -> Pool {
        let ports = free_ports(2 * processes);
        let mut pool = Pool {
            grpc: ports[..processes].to_vec(),
            timely: ports[processes..].to_vec(),
            threads,
            data: data.to_owned(),
            args: args.iter().map(|s| s.to_string()).collect(),
            children: (0..processes).map(|_| None).collect(),
            logs: Vec::new(),
            starts: 0,
        };
        for i in 0..processes {
            pool.spawn(i);
        }
        pool
    }

    /// The coordinator's list of worker addresses.
    pub fn addresses(&self) -> Vec<String> {
        self.grpc.iter().map(|p| format!("127.0.0.1:{p}")).collect()
    }

    /// Starts process `i` (again).
    pub fn spawn(&mut self, i: usize) {
        let peers: Vec<String> = self.timely.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        self.starts += 1;
        let log = self.data.join(format!("worker-{i}-{}.log", self.starts));
        let file = std::fs::File::create(&log).expect("a worker log");
        self.logs.push(log);
        let child = Command::new(env!("CARGO_BIN_EXE_tidemark"))
            .args(["worker", "-w", &self.threads.to_string(), "--processes", &self.grpc.len().to_string(), "--process", &i.to_string()])
            .args(["--peers", &peers.join(","), "--listen", &format!("127.0.0.1:{}", self.grpc[i]), "--history-ms", "600000"])
            .arg("--data-dir")
            .arg(&self.data)
            .args(&self.args)
            .env("TIDEMARK_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("the tidemark binary starts");
        self.children[i] = Some(child);
    }

    /// Kills process `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until process `i` exits on its own; its exit code.
    pub fn wait_exit(&mut self, i: usize, limit: Duration) -> Option<i32> {
        match self.exited_within(i, limit) {
            Some(code) => code,
            None => panic!("worker {i} did not exit within {limit:?}:\n{}", self.logs()),
        }
    }

    /// Waits up to `limit` for process `i` to exit on its own: `Some(exit code)`, or
    /// `None` if it is still running.
    pub fn exited_within(&mut self, i: usize, limit: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + limit;
        let child = self.children[i].as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("polling a worker") {
                self.children[i] = None;
                return Some(status.code());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log of the latest start of process `i`.
    pub fn log_of(&self, i: usize) -> String {
        let prefix = format!("worker-{i}-");
        let latest = self.logs.iter().rev().find(|l| l.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix)));
        latest.map(|l| std::fs::read_to_string(l).unwrap_or_default()).unwrap_or_default()
    }

    /// Every worker log so far, for failure messages.
    pub fn logs(&self) -> String {
        self.logs.iter().map(|l| format!("== {}\n{}", l.display(), std::fs::read_to_string(l).unwrap_or_default())).collect()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

/// A coordinator serving on a free port of this process until `stop` is sent.
pub struct InProcess {
    /// Its public address.
    pub address: std::net::SocketAddr,
    /// Its cluster (for what the public API does not show).
    pub cluster: std::sync::Arc<Cluster>,
    /// Send to stop it.
    pub stop: tokio::sync::oneshot::Sender<()>,
    /// The server task.
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// A coordinator over `addresses`.
    pub async fn start(addresses: Vec<String>, options: ServeOptions, secret: Option<String>) -> InProcess {
        Self::start_with_metrics(addresses, options, secret, None).await
    }

    /// A coordinator over `addresses`, serving metrics on `metrics` if given.
    pub async fn start_with_metrics(addresses: Vec<String>, options: ServeOptions, secret: Option<String>, metrics: Option<u16>) -> InProcess {
        let cluster = Cluster::connect(addresses, Duration::from_secs(60), secret).await.expect("the workers answer");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let address = listener.local_addr().expect("bound");
        let metrics = match metrics {
            Some(port) => Some(tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("the metrics port")),
            None => None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(tidemark_coordinator::run(listener, metrics, cluster.clone(), options, async move { drop(stopped.await) }));
        InProcess { address, cluster, stop, server }
    }

    /// A client of it.
    pub async fn client(&self) -> TidemarkClient<Channel> {
        TidemarkClient::connect(format!("http://{}", self.address)).await.expect("the coordinator answers")
    }
}

/// One event as JSON.
pub fn event(id: &str, ty: &str, ts: i64, user: &str, extra: &str) -> Vec<u8> {
    format!(r#"{{"event_id":"{id}","event_type":"{ty}","event_ts":"{}","user_id":"{user}"{extra}}}"#, format_timestamp(ts)).into_bytes()
}

/// Rows with counts, keyed by their encoding (zero counts dropped).
pub fn encoded(rows: impl IntoIterator<Item = (Row, i64)>) -> BTreeMap<Vec<u8>, i64> {
    let mut out = BTreeMap::new();
    for (row, count) in rows {
        *out.entry(row.encode_to_vec()).or_insert(0) += count;
    }
    out.retain(|_, c| *c != 0);
    out
}

/// The reference contents of a served view at `at`, as API rows.
pub fn reference_rows(reference: &Reference, at: Time, view: &str) -> BTreeMap<Vec<u8>, i64> {
    let rows = reference.views_at(at).into_iter().filter_map(|(row, count)| {
        let api = match &row {
            ViewRow::Sessions(s) if view == "sessions" => schema::session_row(s),
            ViewRow::Funnel { key, agg } if view == "funnel" => schema::funnel_row(key, agg),
            ViewRow::Kpis { key, agg } if view == "kpis" => schema::kpi_row(key, agg),
            ViewRow::RejectedByReason { reason, count } if view == "rejected_by_reason" => schema::rejected_row(reason, count),
            ViewRow::Rejects(r) if view == "rejects" => schema::reject_row(&r.reason, r),
            ViewRow::CustomerRfm(r) if view == "customer_rfm" => schema::rfm_row(&0, r),
            ViewRow::ClvModel(m) if view == "clv_model" => schema::clv_model_row(&Single, m),
            ViewRow::CustomerClv(c) if view == "customer_clv" => schema::clv_row(&0, c),
            ViewRow::FraudFeatures(f) if view == "fraud_features" => schema::fraud_row(&0, f),
            ViewRow::FraudScores(s) if view == "fraud_scores" => schema::score_row(&0, s),
            ViewRow::FraudAlerts(s) if view == "fraud_alerts" => schema::score_row(&0, s),
            _ => return None,
        };
        Some((api, count))
    });
    encoded(rows)
}

/// The reference of `records` at their ingestion times, with the default settings.
pub fn reference(records: &[(RawRecord, Time)]) -> Reference {
    Reference::new(records, &ViewConfig::default())
}

/// Every row of a view at `as_of`, reading every page; also how many pages there were.
pub async fn query_pages(client: &mut TidemarkClient<Channel>, request: QueryRequest) -> (BTreeMap<Vec<u8>, i64>, usize) {
    let mut rows = Vec::new();
    let mut request = request;
    let mut pages = 0;
    loop {
        let answer = client.query(request.clone()).await.unwrap_or_else(|e| panic!("Query {} page {pages}: {e}", request.view)).into_inner();
        pages += 1;
        if let Some(as_of) = request.as_of {
            assert_eq!(answer.as_of, as_of, "every page reads at the time asked for");
        }
        rows.extend(answer.rows.into_iter().map(|r| (r.row.expect("rows are set"), r.count)));
        if answer.next_page_token.is_empty() {
            return (encoded(rows), pages);
        }
        request.as_of = Some(answer.as_of);
        request.page_token = answer.next_page_token;
    }
}

/// Every row of a view at `as_of`.
pub async fn query_rows(client: &mut TidemarkClient<Channel>, view: &str, as_of: Time) -> BTreeMap<Vec<u8>, i64> {
    query_pages(client, QueryRequest { view: view.into(), as_of: Some(as_of), ..Default::default() }).await.0
}

/// Reads a subscription until a batch passes `through`; returns its batches, each whole
/// (the messages of a batch sent in several, with `more`, joined).
pub async fn read_batches(stream: &mut tonic::Streaming<SubscribeResponse>, mut lower: Time, through: Time) -> Vec<SubscribeBatch> {
    let mut batches = Vec::new();
    let mut partial: Vec<tidemark_proto::v1::Update> = Vec::new();
    loop {
        let message = stream.message().await.expect("a subscription message").expect("the subscription stays open");
        let Some(batch) = message.batch else { continue };
        assert_eq!(batch.lower, lower, "batches are contiguous");
        if batch.more {
            assert_eq!(batch.upper, 0, "a batch's upper comes with its last message");
            partial.extend(batch.updates);
            continue;
        }
        assert!(batch.upper > batch.lower, "batches are not empty intervals");
        lower = batch.upper;
        let done = batch.upper > through;
        let mut updates = std::mem::take(&mut partial);
        updates.extend(batch.updates);
        batches.push(SubscribeBatch { updates, ..batch });
        if done {
            return batches;
        }
    }
}

/// Reads a subscription to its end, which must be an error status.
pub async fn ending_status(stream: &mut tonic::Streaming<SubscribeResponse>) -> tonic::Status {
    loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => return status,
        }
    }
}

/// The state a subscription's batches give at time `at` (every update at times <= at).
pub fn replay(batches: &[SubscribeBatch], at: Time) -> BTreeMap<Vec<u8>, i64> {
    let mut seen = BTreeMap::new();
    for batch in batches {
        for u in &batch.updates {
            assert!(u.time >= batch.lower && u.time < batch.upper, "update inside its batch");
            assert_ne!(u.diff, 0, "consolidated: no zero diffs");
            let row = u.row.clone().expect("rows are set").encode_to_vec();
            assert!(seen.insert((row, u.time), u.diff).is_none(), "consolidated: each (row, time) once");
        }
    }
    encoded(seen.into_iter().filter(|((_, t), _)| *t <= at).map(|((row, _), d)| (Row::decode(row.as_slice()).expect("encoded above"), d)))
}

/// `GET /metrics` from `port`.
pub async fn scrape(port: u16) -> String {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the metrics port answers");
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("request sent");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("a response");
        response
    })
    .await
    .expect("joined")
}

/// Waits until `check` holds, polling every 100 ms, failing with `what` after `limit`.
pub async fn eventually<F: std::future::Future<Output = bool>>(limit: Duration, what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
