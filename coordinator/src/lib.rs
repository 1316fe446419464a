//! The Tidemark coordinator: the public gRPC server (`tidemark.v1`) over a cluster of
//! worker processes, with the standard health service and server reflection (v1 and
//! v1alpha), so `grpcurl` and `buf curl` work without `.proto` files.
//!
//! It never depends on the dataflows: everything it knows about views comes from the
//! workers (`HelloResponse`) and the wire crate.
#![forbid(missing_docs)]

pub mod cluster;
pub mod service;

use std::future::Future;
use std::sync::Arc;

use tidemark_proto::v1::tidemark_server::TidemarkServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::cluster::Cluster;
use crate::service::TidemarkService;

/// Serves the public API on `listener` until `shutdown` resolves.
pub async fn run(listener: TcpListener, cluster: Arc<Cluster>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<TidemarkServer<TidemarkService>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tidemark_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection().build_v1()?;
    let v1alpha = reflection().build_v1alpha()?;
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(TidemarkServer::new(TidemarkService::new(cluster.clone())))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            shutdown.await;
            cluster.end_subscriptions(tonic::Status::unavailable("the coordinator is shutting down"));
        })
        .await?;
    Ok(())
}
