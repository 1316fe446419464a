//! Prometheus metrics: the coordinator's counters and a small HTTP server that exposes a
//! registry at `/metrics` in the OpenMetrics text format (the worker process serves its
//! own registry with the same server).

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

fn latency_histogram() -> Histogram {
    // 50 µs to about 1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// What the coordinator counts.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    ingest_records: Family<Labels, Counter>,
    frontier: Gauge,
    lag: Gauge,
    subscriptions: Gauge,
    connected: Family<Labels, Gauge>,
    cluster: Arc<Cluster>,
}

impl Metrics {
    /// Metrics of a coordinator over `cluster`.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        let mut registry = Registry::with_prefix("tidemark");
        let requests = Family::<Labels, Counter>::default();
        registry.register("requests", "Public API calls by method and gRPC status code", requests.clone());
        let latency = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register("request_duration_seconds", "Time to answer unary calls, by method", latency.clone());
        let ingest_records = Family::<Labels, Counter>::default();
        registry.register("ingest_records", "Records received through Ingest, by outcome of validation", ingest_records.clone());
        let frontier = Gauge::default();
        registry.register("frontier_ms", "The cluster's frontier: every earlier time is complete (ms since the epoch)", frontier.clone());
        let lag = Gauge::default();
        registry.register("frontier_lag_ms", "Wall-clock now minus the frontier (ms)", lag.clone());
        let subscriptions = Gauge::default();
        registry.register("subscriptions", "Open subscriptions", subscriptions.clone());
        registry.register("subscribers_dropped", "Subscribers dropped because they did not keep up", cluster.dropped_subscribers());
        let connected = Family::<Labels, Gauge>::default();
        registry.register("worker_connected", "Whether the session to a worker process is up (1) or not (0)", connected.clone());
        Metrics { registry, requests, latency, ingest_records, frontier, lag, subscriptions, connected, cluster }
    }

    /// Counts a finished call: its status code and, for unary calls, its duration.
    pub fn observe(&self, method: &'static str, code: tonic::Code, elapsed: Option<Duration>) {
        self.requests.get_or_create(&vec![("method", method.to_owned()), ("code", format!("{code:?}"))]).inc();
        if let Some(elapsed) = elapsed {
            self.latency.get_or_create(&vec![("method", method.to_owned())]).observe(elapsed.as_secs_f64());
        }
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
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String does not fail");
        out
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
