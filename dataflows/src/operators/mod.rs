//! Operators of the views that differential does not provide, one per file, each an
//! extension trait on collections at ingestion times.
//!
//! - [`dedup`]: which deliveries of an `event_id` are kept and which are duplicates,
//!   decided when each arrives;
//! - [`cancel`]: which kept deliveries cancellations remove, chains included;
//! - [`funnel`]: the funnel's sums by key (distinct users included), from the changes
//!   of `sessions`;
//! - [`keep_first`]: of the values arriving in each bucket, the first `k`, for as long as
//!   they last (the `rejects` view's bound per reason and hour).

pub mod cancel;
pub mod dedup;
pub mod funnel;
pub mod keep_first;

pub use keep_first::KeepFirst;
