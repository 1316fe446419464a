//! The `rejected_by_reason` view: bad records are counted by reason, and kept with their
//! bytes in `rejects`.
//!
//! Run with `cargo run -p tidemark-dataflows --example rejected_by_reason`.

mod common;

use differential_dataflow::VecCollection;
use tidemark_dataflows::time::Time;
use tidemark_dataflows::views::{ViewRow, Views};

fn counts_and_records<'a>(views: &Views<'a>) -> VecCollection<'a, Time, ViewRow> {
    let counts = views.rejected_by_reason.clone().as_collection(|r, c| ViewRow::RejectedByReason { reason: *r, count: *c });
    counts.concat(views.rejects.clone().as_collection(|_, r| ViewRow::Rejects(r.clone())))
}

fn main() {
    common::show(
        &[
            (common::AT_10_30 + 1_000, r#"{"event_id":"ok","event_type":"page_view","event_ts":"2026-11-01T10:00:00Z","user_id":"ada"}"#),
            (common::AT_10_30 + 1_000, r#"{"event_id":"cut","event_type":"#),
            (common::AT_10_30 + 1_000, r#"{"event_id":"neg","event_type":"purchase","event_ts":"2026-11-01T10:00:00Z","user_id":"ada","price":-3}"#),
            (common::AT_10_30 + 2_000, r#"{"event_id":"warp","event_type":"teleport","event_ts":"2026-11-01T10:00:00Z","user_id":"ada"}"#),
            (common::AT_10_30 + 2_000, r#"{"event_id":"ok","event_type":"page_view","event_ts":"2026-11-01T10:00:00Z","user_id":"ada"}"#),
        ],
        counts_and_records,
    );
}
