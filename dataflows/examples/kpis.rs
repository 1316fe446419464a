//! The `kpis` view: headline numbers per window, with a duplicate delivery counted once
//! and a late event correcting the window it belongs to.
//!
//! Run with `cargo run -p tidemark-dataflows --example kpis`.

mod common;

use tidemark_dataflows::time::Granularity;
use tidemark_dataflows::views::ViewRow;

fn main() {
    let purchase = r#"{"event_id":"p1","event_type":"purchase","event_ts":"2026-11-01T10:05:00Z","user_id":"ada","product_id":"sku9","order_id":"o1","price":12.5,"quantity":2}"#;
    common::show(
        &[
            (common::AT_10_30 + 1_000, r#"{"event_id":"v1","event_type":"page_view","event_ts":"2026-11-01T10:00:00Z","user_id":"ada"}"#),
            (common::AT_10_30 + 1_000, purchase),
            // The same purchase delivered again: a duplicate, not a second order.
            (common::AT_10_30 + 2_000, purchase),
            // A page view from 09:59 arrives late and lands in the 09:00 hour.
            (common::AT_10_30 + 3_000, r#"{"event_id":"v2","event_type":"page_view","event_ts":"2026-11-01T09:59:00Z","user_id":"bob"}"#),
        ],
        |views| views.kpis.clone().flat_map_ref(|k, a| (k.granularity == Granularity::Hour).then_some(ViewRow::Kpis { key: *k, agg: *a })),
    );
}
