//! Tidemark's wire.
//!
//! - [`v1`]: the public gRPC API (`tidemark.v1`): views, queries at a consistent time,
//!   subscriptions, ingest, status. Its `.proto` documents the meaning of every field.
//! - [`internal`]: the coordinator <-> worker-process protocol (`tidemark.internal.v1`),
//!   whose rules (frontiers never go backwards, one response per peek, contiguous
//!   consolidated batches) are listed in its `.proto` and checked by the coordinator.
//! - [`routing`]: which worker owns a key, computed alike by workers (which place their
//!   arrangements by it) and by the coordinator (which sends a key lookup only there).
//! - [`merge`]: frontiers and subscription batches of many parts merged into one.
//! - [`value`]: building and comparing [`v1::Value`]s.
//! - [`auth`]: bearer tokens for the public API and the internal port.
//!
//! This crate knows nothing of timely or differential: the coordinator depends on it,
//! never on the dataflows.
#![deny(missing_docs)]

/// The public API, generated from `proto/tidemark/v1/tidemark.proto`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("tidemark.v1");
}

/// The coordinator <-> worker protocol.
pub mod internal {
    /// Version 1, generated from `proto/tidemark/internal/v1/worker.proto`.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("tidemark.internal.v1");
    }
}

/// The encoded `FileDescriptorSet` of both packages, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tidemark_descriptor");

/// The version of the internal protocol; a worker refuses a coordinator that speaks another.
pub const PROTOCOL_VERSION: u32 = 1;

pub mod auth;
pub mod merge;
pub mod routing;
pub mod value;

/// The connections a gRPC server accepts on `listener`, with Nagle's algorithm off:
/// requests and responses are small, and waiting to coalesce them costs milliseconds.
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
