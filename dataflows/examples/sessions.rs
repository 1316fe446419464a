//! The `sessions` view: a late event that bridges two sessions of a user merges them.
//!
//! Run with `cargo run -p tidemark-dataflows --example sessions`.

mod common;

use tidemark_dataflows::views::ViewRow;

fn main() {
    common::show(
        &[
            (common::AT_10_30 + 1_000, r#"{"event_id":"e1","event_type":"page_view","event_ts":"2026-11-01T10:00:00Z","user_id":"ada"}"#),
            (common::AT_10_30 + 1_000, r#"{"event_id":"e2","event_type":"add_to_cart","event_ts":"2026-11-01T10:50:00Z","user_id":"ada","product_id":"p1","price":20.0,"quantity":1}"#),
            // 25 minutes after e1 and before e2: the gaps shrink below 30 minutes.
            (common::AT_10_30 + 2_000, r#"{"event_id":"e3","event_type":"product_view","event_ts":"2026-11-01T10:25:00Z","user_id":"ada","product_id":"p1"}"#),
        ],
        |views| views.sessions.clone().as_collection(|_, s| ViewRow::Sessions((**s).clone())),
    );
}
