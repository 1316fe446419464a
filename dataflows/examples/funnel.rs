//! The `funnel` view: sessions reaching each step per window and dimension value, and
//! a correction (retraction by `event_id`) that takes a purchase back.
//!
//! Run with `cargo run -p tidemark-dataflows --example funnel`.

mod common;

use tidemark_dataflows::rows::Dimension;
use tidemark_dataflows::time::Granularity;
use tidemark_dataflows::views::ViewRow;

fn main() {
    common::show(
        &[
            (common::AT_10_30 + 1_000, r#"{"event_id":"a1","event_type":"product_view","event_ts":"2026-11-01T10:00:00Z","user_id":"ada","product_id":"p1","geo":{"country":"FR"}}"#),
            (common::AT_10_30 + 1_000, r#"{"event_id":"a2","event_type":"add_to_cart","event_ts":"2026-11-01T10:01:00Z","user_id":"ada","product_id":"p1","price":20.0,"quantity":1}"#),
            (common::AT_10_30 + 1_000, r#"{"event_id":"a3","event_type":"checkout","event_ts":"2026-11-01T10:02:00Z","user_id":"ada"}"#),
            (common::AT_10_30 + 1_000, r#"{"event_id":"a4","event_type":"purchase","event_ts":"2026-11-01T10:03:00Z","user_id":"ada","product_id":"p1","order_id":"o1","price":20.0,"quantity":1}"#),
            (common::AT_10_30 + 1_000, r#"{"event_id":"b1","event_type":"product_view","event_ts":"2026-11-01T10:10:00Z","user_id":"bob","product_id":"p2","geo":{"country":"DE"}}"#),
            // The shop corrects the purchase: it never happened.
            (common::AT_10_30 + 2_000, r#"{"event_id":"a5","event_type":"retraction","event_ts":"2026-11-01T10:20:00Z","user_id":"ada","retracts":"a4"}"#),
        ],
        |views| {
            views.funnel.clone().flat_map_ref(|k, a| {
                (k.granularity == Granularity::Hour && k.dimension != Dimension::All).then(|| ViewRow::Funnel { key: *k, agg: *a })
            })
        },
    );
}
