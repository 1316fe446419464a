//! The Tidemark coordinator: the public gRPC server (`tidemark.v1`) over a cluster of
//! worker processes, with the standard health service and server reflection (v1 and
//! v1alpha), so `grpcurl` and `buf curl` work without `.proto` files, and Prometheus
//! metrics on an HTTP port.
//!
//! It never depends on the dataflows: everything it knows about views comes from the
//! workers (`HelloResponse`) and the wire crate.
#![forbid(missing_docs)]

pub mod calls;
pub mod cluster;
pub mod command;
pub mod config;
pub mod metrics;
pub mod read;
pub mod service;
pub mod subscription;

use std::future::Future;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tidemark_proto::v1::tidemark_server::TidemarkServer;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;

use crate::cluster::Cluster;
use crate::config::ServeOptions;
use crate::metrics::Metrics;
use crate::service::TidemarkService;

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The descriptors reflection shows: the public package only (the coordinator does not
/// serve the internal one).
fn public_descriptors() -> prost_types::FileDescriptorSet {
    use prost::Message;
    let mut set = prost_types::FileDescriptorSet::decode(tidemark_proto::FILE_DESCRIPTOR_SET).expect("the build wrote a valid descriptor set");
    set.file.retain(|f| f.package() == "tidemark.v1");
    set
}

/// Serves the public API on `listener` and, if given, metrics on `metrics_listener`,
/// until `shutdown` resolves. Open subscriptions then end with UNAVAILABLE, so the
/// graceful shutdown completes.
pub async fn run(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    cluster: Arc<Cluster>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new(cluster.clone()));
    let metrics_server = metrics_listener.map(|listener| {
        let render = metrics.clone();
        metrics::spawn(listener, move || render.render())
    });

    // `tidemark.v1.Tidemark` is SERVING while every worker process is connected, and
    // NOT_SERVING while one is not (the coordinator reconnects to it meanwhile), so
    // readiness takes the coordinator out of its Service until the pool is whole again.
    let (reporter, health) = tonic_health::server::health_reporter();
    let mut whole = cluster.whole();
    let health_task = tokio::spawn(async move {
        loop {
            if *whole.borrow_and_update() {
                reporter.set_serving::<TidemarkServer<TidemarkService>>().await;
            } else {
                reporter.set_not_serving::<TidemarkServer<TidemarkService>>().await;
            }
            if whole.changed().await.is_err() {
                return;
            }
        }
    });
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_file_descriptor_set(public_descriptors())
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection().build_v1()?;
    let v1alpha = reflection().build_v1alpha()?;
    let service = TidemarkService::new(cluster.clone(), metrics.clone(), options.subscriber_buffer);
    let refresh = tokio::spawn(metrics::refresh(metrics.clone(), Arc::new(service.clone())));
    let api = TidemarkServer::new(service).max_decoding_message_size(options.max_message_bytes);
    let mut builder = tonic::transport::Server::builder();
    if let Some(identity) = options.tls {
        builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    let served = builder
        .layer(calls::CallsLayer::new(metrics))
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(InterceptedService::new(api, options.tokens))
        .serve_with_incoming_shutdown(tidemark_proto::incoming(listener), async move {
            shutdown.await;
            cluster.end_subscriptions(tonic::Status::unavailable("the coordinator is shutting down"));
        })
        .await;
    health_task.abort();
    refresh.abort();
    if let Some(server) = metrics_server {
        server.stop().await?;
    }
    served?;
    Ok(())
}
