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
//! - [`page`]: the page tokens of paged queries.
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

/// The version of the internal protocol; a worker refuses a coordinator that speaks
/// another, and the coordinator a worker.
pub const PROTOCOL_VERSION: u32 = 2;

/// Limits that every part of the cluster agrees on: sizes in bytes of what travels.
pub mod limits {
    /// The largest message either side of the internal protocol accepts. Everything the
    /// protocol sends is far smaller: answers are cut into [`PAGE_BYTES`] pages and
    /// [`CHUNK_BYTES`] chunks, and an `Ingest` command holds one public request of at most
    /// [`MAX_PUBLIC_MESSAGE_BYTES`].
    pub const INTERNAL_MAX_MESSAGE_BYTES: usize = 64 << 20;
    /// The largest request the public API may be configured to accept.
    pub const MAX_PUBLIC_MESSAGE_BYTES: usize = 32 << 20;
    /// About how many bytes of rows one page of a `Query` holds.
    pub const PAGE_BYTES: usize = 1 << 20;
    /// The most bytes of rows one answer holds (a limited `Query` is cut there): below the
    /// 4 MiB a gRPC client accepts by default.
    pub const MAX_RESPONSE_BYTES: usize = 3 << 20;
    /// The least a worker thread is asked to return per page.
    pub const MIN_THREAD_BUDGET_BYTES: usize = 32 << 10;
    /// About how many bytes of updates one subscription message holds.
    pub const CHUNK_BYTES: usize = 1 << 20;
    /// The most rows a `Query` with a `limit` returns.
    pub const MAX_LIMIT: u32 = 100_000;
    /// The most filters a `Query` or `Subscribe` may give.
    pub const MAX_FILTERS: usize = 64;
    /// The most events one `Ingest` request may hold.
    pub const MAX_INGEST_EVENTS: usize = 100_000;
    /// The longest reject detail an `Ingest` acknowledgement carries, in bytes.
    pub const MAX_REJECT_DETAIL_BYTES: usize = 200;
    /// The most bytes of reject details one acknowledgement carries in all; later rejects
    /// of the request have their reason but no detail.
    pub const MAX_ACK_DETAIL_BYTES: usize = 1 << 20;
}

pub mod auth;
pub mod codec;
pub mod merge;
pub mod page;
pub mod routing;
pub mod value;

/// The connections a gRPC server accepts on `listener`, with Nagle's algorithm off:
/// requests and responses are small, and waiting to coalesce them costs milliseconds.
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
