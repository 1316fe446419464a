//! Tidemark's dataflow core: the event model, decoding and validation, the views as
//! differential dataflows, and naive reference implementations of every view.
//!
//! The crate does no I/O and starts no runtime. Callers (the worker binary, tests,
//! benchmarks) hand it raw records with ingestion times and read view changes back.
//!
//! The pipeline, in order:
//! 1. [`decode`] turns a [`decode::RawRecord`] (JSON line, REES46 CSV row, CDNOW row) at an
//!    ingestion time into an [`event::Event`] or a [`decode::Reject`] with a reason.
//! 2. [`views`] dedups by `event_id`, applies retractions, expires events that fall out of
//!    the retention horizon, and maintains `sessions`, `funnel`, `kpis`, `rejects` and
//!    `rejected_by_reason`; [`clv`] adds `customer_rfm`, `clv_model` (BG/NBD and
//!    Gamma-Gamma fits) and `customer_clv`; [`fraud`] adds `fraud_features`.
//! 3. [`reference`] computes the same views from scratch, for oracle tests.
#![forbid(missing_docs)]

pub mod clv;
pub mod decode;
pub mod dictionary;
pub mod event;
pub mod fraud;
pub mod generator;
pub mod operators;
pub mod reference;
pub mod rows;
pub mod scenario;
pub mod time;
pub mod views;
