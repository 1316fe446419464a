//! The views as the API shows them: columns, key, routing columns, and rows as
//! [`Row`]s of typed [`Value`]s.

use tidemark_dataflows::decode::Reject;
use tidemark_dataflows::rows::{FunnelAgg, FunnelKey, KpiAgg, KpiKey, SessionRow};
use tidemark_proto::v1::{Column, ColumnType, Row, Value, ViewInfo};
use tidemark_proto::value;

/// One served view's shape.
#[derive(Clone, Debug)]
pub struct Schema {
    /// View name.
    pub name: &'static str,
    /// What a row is.
    pub description: &'static str,
    /// Columns, in row order.
    pub columns: Vec<Column>,
    /// How many leading columns form the key.
    pub key_columns: usize,
    /// How many leading key columns decide the owning worker.
    pub routing_columns: usize,
}

impl Schema {
    /// The view's [`ViewInfo`] at the given frontier and compaction.
    pub fn info(&self, frontier: u64, since: u64) -> ViewInfo {
        ViewInfo {
            name: self.name.to_owned(),
            description: self.description.to_owned(),
            columns: self.columns.clone(),
            key_columns: self.columns[..self.key_columns].iter().map(|c| c.name.clone()).collect(),
            frontier,
            since,
            routing_columns: self.routing_columns as u32,
        }
    }

    /// The index of a column by name.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

fn col(name: &str, kind: ColumnType, nullable: bool, description: &str) -> Column {
    Column { name: name.to_owned(), r#type: kind as i32, nullable, description: description.to_owned() }
}

fn counters<'a>(fields: &'a [&'a str]) -> impl Iterator<Item = Column> + 'a {
    fields.iter().map(|f| col(f, ColumnType::Int64, false, ""))
}

/// Index of each served view in [`schemas`] (and in every worker's list of served views).
pub mod index {
    /// `sessions`.
    pub const SESSIONS: usize = 0;
    /// `funnel`.
    pub const FUNNEL: usize = 1;
    /// `kpis`.
    pub const KPIS: usize = 2;
    /// `rejected_by_reason`.
    pub const REJECTED_BY_REASON: usize = 3;
    /// `rejects`.
    pub const REJECTS: usize = 4;
}

/// Every served view, in [`index`] order.
pub fn schemas() -> Vec<Schema> {
    use ColumnType::{Bytes, Int64, String as Text, TimestampMs};
    let sessions = [
        col("user_id", Text, false, "the user"),
        col("session_id", Text, false, "the shop's session id, or derived:<start ms>"),
        col("start_ts", TimestampMs, false, "event time of the first event"),
        col("end_ts", TimestampMs, false, "event time of the last event"),
    ]
    .into_iter()
    .chain(counters(&["events", "page_views", "product_views", "products_viewed", "cart_adds", "checkouts", "purchases", "orders", "revenue_cents", "funnel_step"]))
    .chain(["country", "device", "utm_source", "category"].map(|c| col(c, Text, true, "of the first event that has one")))
    .collect();
    let window = |name: &str| [col("granularity", Text, false, "minute, hour or day"), col("window_start", TimestampMs, false, name)];
    vec![
        Schema { name: "sessions", description: "one row per session of every user with a live event", columns: sessions, key_columns: 2, routing_columns: 1 },
        Schema {
            name: "funnel",
            description: "sessions reaching each ordered step, orders, revenue and unique users per window and dimension value",
            columns: window("start of the event-time window")
                .into_iter()
                .chain([col("dimension", Text, false, "all, country, device, utm_source or category"), col("value", Text, false, "the dimension's value")])
                .chain(counters(FunnelAgg::FIELDS))
                .collect(),
            key_columns: 4,
            routing_columns: 4,
        },
        Schema {
            name: "kpis",
            description: "headline numbers per window",
            columns: window("start of the event-time window").into_iter().chain(counters(KpiAgg::FIELDS)).collect(),
            key_columns: 2,
            routing_columns: 2,
        },
        Schema {
            name: "rejected_by_reason",
            description: "rejects of each reason ingested within the retention horizon",
            columns: vec![col("reason", Text, false, ""), col("count", Int64, false, "")],
            key_columns: 1,
            routing_columns: 1,
        },
        Schema {
            name: "rejects",
            description: "rejected records with their bytes; identical copies repeat",
            columns: vec![
                col("reason", Text, false, ""),
                col("ingest_time", Int64, false, "ingestion time (ms)"),
                col("position", Int64, false, "position in its source"),
                col("detail", Text, false, ""),
                col("format", Text, false, "json, rees46 or cdnow"),
                col("raw", Bytes, false, "the record as received"),
            ],
            key_columns: 3,
            routing_columns: 1,
        },
    ]
}

fn text_or_null(v: &Option<std::sync::Arc<str>>) -> Value {
    v.as_deref().map(value::string).unwrap_or_else(value::null)
}

/// A `sessions` row.
pub fn session_row(s: &SessionRow) -> Row {
    let mut values = vec![value::string(&s.user_id), value::string(&s.session_id), value::timestamp_ms(s.start_ts), value::timestamp_ms(s.end_ts)];
    let counts = [s.events, s.page_views, s.product_views, s.products_viewed, s.cart_adds, s.checkouts, s.purchases, s.orders];
    values.extend(counts.iter().map(|c| value::int64(*c as i64)));
    values.push(value::int64(s.revenue_cents));
    values.push(value::int64(i64::from(s.funnel_step)));
    values.extend([&s.country, &s.device, &s.utm_source, &s.category].map(text_or_null));
    Row { values }
}

/// A `funnel` row.
pub fn funnel_row(k: &FunnelKey, a: &FunnelAgg) -> Row {
    let mut values = vec![value::string(k.granularity.name()), value::timestamp_ms(k.window_start), value::string(k.dimension.name()), value::string(&k.value)];
    values.extend(a.values().into_iter().map(value::int64));
    Row { values }
}

/// A `kpis` row.
pub fn kpi_row(k: &KpiKey, a: &KpiAgg) -> Row {
    let mut values = vec![value::string(k.granularity.name()), value::timestamp_ms(k.window_start)];
    values.extend(a.values().into_iter().map(value::int64));
    Row { values }
}

/// A `rejected_by_reason` row.
pub fn rejected_row(reason: &tidemark_dataflows::decode::RejectReason, count: &i64) -> Row {
    Row { values: vec![value::string(reason.name()), value::int64(*count)] }
}

/// A `rejects` row.
pub fn reject_row(_: &tidemark_dataflows::decode::RejectReason, r: &Reject) -> Row {
    Row {
        values: vec![
            value::string(r.reason.name()),
            value::int64(r.ingest_time as i64),
            value::int64(r.position as i64),
            value::string(&r.detail),
            value::string(r.format.name()),
            value::bytes(&r.raw),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row has one value per column, of the column's type.
    #[test]
    fn rows_match_their_columns() {
        use tidemark_dataflows::time::Granularity;
        let schemas = schemas();
        let key = FunnelKey { granularity: Granularity::Hour, window_start: 0, dimension: tidemark_dataflows::rows::Dimension::All, value: "all".into() };
        assert_eq!(funnel_row(&key, &FunnelAgg::default()).values.len(), schemas[index::FUNNEL].columns.len());
        let kpi = KpiKey { granularity: Granularity::Day, window_start: 0 };
        assert_eq!(kpi_row(&kpi, &KpiAgg::default()).values.len(), schemas[index::KPIS].columns.len());
        for (i, s) in schemas.iter().enumerate() {
            assert!(s.routing_columns <= s.key_columns && s.key_columns <= s.columns.len(), "view {i}");
        }
    }
}
