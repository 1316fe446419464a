//! The Tidemark worker process and the `tidemark` command: sources, the view dataflows
//! on timely worker threads, serving them to the coordinator, the engine-only run with a
//! live terminal summary, `tidemark up` (worker and coordinator in one process), and the
//! command-line client of the public API, `tidemark generate` (traffic to a file),
//! the Kafka source, dead-letter writer and producer, and the PostgreSQL sink.
#![forbid(missing_docs)]

pub mod cli;
pub mod config;
pub mod driver;
pub mod generate;
pub mod ingest;
pub mod kafka;
pub mod log;
pub mod output;
pub mod produce;
pub mod profile;
pub mod serve;
pub mod sink;
pub mod source;
pub mod summary;
pub mod up;
