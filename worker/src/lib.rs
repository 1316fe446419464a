//! The Tidemark worker process: sources, the view dataflows on timely worker threads,
//! and the embedded default (generator or file replay with a live terminal summary).
#![forbid(missing_docs)]

pub mod config;
pub mod driver;
pub mod output;
pub mod serve;
pub mod source;
pub mod summary;
