//! The Tidemark worker process and the `tidemark` command: sources, the view dataflows
//! on timely worker threads, serving them to the coordinator, the engine-only run with a
//! live terminal summary, `tidemark up` (worker and coordinator in one process), and the
//! command-line client of the public API, and `tidemark generate` (traffic to a file).
#![forbid(missing_docs)]

pub mod cli;
pub mod config;
pub mod driver;
pub mod generate;
pub mod output;
pub mod serve;
pub mod source;
pub mod summary;
pub mod up;
