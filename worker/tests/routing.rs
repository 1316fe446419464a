//! The dataflows place keyed state by the same rule the coordinator routes lookups by.

use tidemark_dataflows::decode::RejectReason;
use tidemark_dataflows::rows::{key_of, Dimension, FunnelKey, KpiKey, Route};
use tidemark_dataflows::time::Granularity;
use tidemark_proto::routing::{key_hash, routing_text};
use tidemark_proto::value;

#[test]
fn ids_hash_alike_on_both_sides() {
    for id in ["", "u", "user-42", "rees46:1234", "ünïcødé", "a\u{1f}b"] {
        assert_eq!(key_of(id), key_hash(id), "{id:?}");
    }
}

#[test]
fn multi_column_keys_route_by_their_text() {
    let funnel = FunnelKey { granularity: Granularity::Hour, window_start: 1_793_527_200_000, dimension: Dimension::UtmSource, value: "news".into() };
    let values = [value::string("hour"), value::timestamp_ms(1_793_527_200_000), value::string("utm_source"), value::string("news")];
    assert_eq!(funnel.route(), key_hash(&routing_text(&values).expect("routable")));

    let kpi = KpiKey { granularity: Granularity::Day, window_start: 1_793_491_200_000 };
    assert_eq!(kpi.route(), key_hash(&routing_text(&[value::string("day"), value::timestamp_ms(1_793_491_200_000)]).expect("routable")));

    assert_eq!(RejectReason::TooLate.route(), key_hash("too_late"));
}
