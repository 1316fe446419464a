//! Prometheus metrics: the coordinator's counters and gauges, and a small HTTP server
//! that exposes a registry at `/metrics` in the OpenMetrics text format (the worker
//! process serves its own registry with the same server).
//!
//! Calls are counted by [`crate::calls`] where they enter and leave the server, so that
//! refused calls count too; view sizes and rejects by reason are refreshed from the
//! cluster every few seconds by [`refresh`].

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::cluster::Cluster;

/// Labels: pairs of name and value.
type Labels = Vec<(&'static str, String)>;

/// How often view sizes and rejects are read from the cluster.
pub const REFRESH: Duration = Duration::from_secs(5);

fn latency_histogram() -> Histogram {
    // 50 µs to about 105 s: a call may wait for its time for as long as its timeout.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 22))
}

/// The resident memory of this process in bytes, from `/proc/self/status` (0 where
/// there is none).
pub fn resident_bytes() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<i64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// What the coordinator counts.
pub struct Metrics {
    registry: Registry,
    calls: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    ingest_requests: Counter,
    ingest_records: Family<Labels, Counter>,
    frontier: Gauge,
    lag: Gauge,
    subscriptions: Gauge,
    connected: Family<Labels, Gauge>,
    view_rows: Family<Labels, Gauge>,
    view_updates: Family<Labels, Gauge>,
    rejects: Family<Labels, Gauge>,
    resident: Gauge,
    cluster: Arc<Cluster>,
}

impl Metrics {
    /// Metrics of a coordinator over `cluster`.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        let mut registry = Registry::with_prefix("tidemark");
        let calls = Family::<Labels, Counter>::default();
        registry.register("requests", "Public API calls by method and gRPC status code (refused ones included)", calls.clone());
        let latency = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register("request_duration_seconds", "Time from a call's arrival to its response (for streams: to the stream's opening), by method", latency.clone());
        let ingest_requests = Counter::default();
        registry.register("ingest_requests", "Ingest request messages received (each holds many events)", ingest_requests.clone());
        let ingest_records = Family::<Labels, Counter>::default();
        registry.register("ingest_records", "Events acknowledged through Ingest, by outcome of validation", ingest_records.clone());
        let frontier = Gauge::default();
        registry.register("frontier_ms", "The cluster's frontier: every earlier time is complete (ms since the epoch)", frontier.clone());
        let lag = Gauge::default();
        registry.register("frontier_lag_ms", "Wall-clock now minus the frontier (ms)", lag.clone());
        let subscriptions = Gauge::default();
        registry.register("subscriptions", "Open subscriptions", subscriptions.clone());
        registry.register("subscribers_dropped", "Subscribers dropped because they did not keep up", cluster.dropped_subscribers());
        let connected = Family::<Labels, Gauge>::default();
        registry.register("worker_connected", "Whether the session to a worker process is up (1) or not (0)", connected.clone());
        let view_rows = Family::<Labels, Gauge>::default();
        registry.register("view_rows", "Rows of each view at the connected processes' latest complete times", view_rows.clone());
        let view_updates = Family::<Labels, Gauge>::default();
        registry.register("view_arranged_updates", "Updates held in each view's arrangements", view_updates.clone());
        let rejects = Family::<Labels, Gauge>::default();
        registry.register("rejects", "Rejected records within the retention horizon, by reason (the rejected_by_reason view)", rejects.clone());
        let resident = Gauge::default();
        registry.register("process_resident_memory_bytes", "Resident memory of the coordinator's process", resident.clone());
        Metrics {
            registry,
            calls,
            latency,
            ingest_requests,
            ingest_records,
            frontier,
            lag,
            subscriptions,
            connected,
            view_rows,
            view_updates,
            rejects,
            resident,
            cluster,
        }
    }

    /// A call of `method` got its response (or its stream opened) after `elapsed`.
    pub fn answered(&self, method: &'static str, elapsed: Duration) {
        self.latency.get_or_create(&vec![("method", method.to_owned())]).observe(elapsed.as_secs_f64());
    }

    /// A call of `method` ended with `code`.
    pub fn finished(&self, method: &'static str, code: tonic::Code) {
        self.calls.get_or_create(&vec![("method", method.to_owned()), ("code", format!("{code:?}"))]).inc();
    }

    /// Counts one Ingest request message.
    pub fn ingest_request(&self) {
        self.ingest_requests.inc();
    }

    /// Counts validated ingest records.
    pub fn ingested(&self, accepted: u64, rejected: u64) {
        self.ingest_records.get_or_create(&vec![("outcome", "accepted".to_owned())]).inc_by(accepted);
        self.ingest_records.get_or_create(&vec![("outcome", "rejected".to_owned())]).inc_by(rejected);
    }

    /// The registry in the OpenMetrics text format, with the cluster's gauges read now.
    pub fn render(&self) -> String {
        let (frontier, _) = self.cluster.frontier_and_since();
        self.frontier.set(frontier as i64);
        self.lag.set(crate::now_ms() as i64 - frontier as i64);
        self.subscriptions.set(self.cluster.subscription_count() as i64);
        for (p, process) in self.cluster.processes().into_iter().enumerate() {
            self.connected.get_or_create(&vec![("process", p.to_string())]).set(i64::from(process.connected));
        }
        self.resident.set(resident_bytes());
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String does not fail");
        out
    }
}

/// Reads view sizes and rejects by reason from the cluster every [`REFRESH`], while it
/// is whole, into `metrics`.
pub async fn refresh(metrics: Arc<Metrics>, service: Arc<crate::service::TidemarkService>) {
    loop {
        tokio::time::sleep(REFRESH).await;
        if !*metrics.cluster.whole().borrow() {
            continue;
        }
        let Ok(status) = service.status_now().await else { continue };
        for view in status.views {
            metrics.view_rows.get_or_create(&vec![("view", view.name.clone())]).set(view.rows);
            metrics.view_updates.get_or_create(&vec![("view", view.name)]).set(view.arranged_updates);
        }
        for reject in status.rejects {
            metrics.rejects.get_or_create(&vec![("reason", reject.reason)]).set(reject.count);
        }
    }
}

/// A metrics endpoint running on its own task.
pub struct MetricsServer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Serves `render()` at `GET /metrics` on `listener` until [`MetricsServer::stop`].
pub fn spawn(listener: TcpListener, render: impl Fn() -> String + Send + Sync + 'static) -> MetricsServer {
    let render = Arc::new(render);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = render.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], render()) }
        }),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    MetricsServer { stop, task }
}

impl MetricsServer {
    /// Stops serving (gracefully) and waits until the server has ended.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}
