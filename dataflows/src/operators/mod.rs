//! Operators of the views that differential does not provide, one per file, each an
//! extension trait on collections at ingestion times.
//!
//! - [`accumulate`]: the running sum of each key, as `(key, sum)` rows;
//! - [`dedup`]: which deliveries of an `event_id` are kept and which are duplicates,
//!   decided when each arrives;
//! - [`cancel`]: which kept deliveries cancellations remove, chains included;
//! - [`sessions`]: each user's sessions, and the changes they make to the funnel's sums
//!   (distinct users included);
//! - [`keep_first`]: of the values arriving in each bucket, the first `k`, for as long as
//!   they last (the `rejects` view's bound per reason and hour).

pub mod accumulate;
pub mod cancel;
pub mod dedup;
pub mod keep_first;
pub mod sessions;

pub use keep_first::KeepFirst;
