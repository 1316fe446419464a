//! The views as the API shows them: columns, key, routing columns, and rows as
//! [`Row`]s of typed [`Value`]s.

use tidemark_dataflows::dictionary::Dim;
use tidemark_dataflows::clv::dataflow::Single;
use tidemark_dataflows::clv::{ClvModel, ClvRow, Real, RfmRow, DAY_MS};
use tidemark_dataflows::decode::Reject;
use tidemark_dataflows::fraud::{FraudFeatures, FraudScore};
use tidemark_dataflows::rows::{FunnelAgg, FunnelKey, KpiAgg, KpiKey, SessionRow};
use tidemark_dataflows::views::ViewRow;
use tidemark_dataflows::decode::RejectReason;
use tidemark_dataflows::rows::Dimension;
use tidemark_dataflows::time::Granularity;
use tidemark_proto::v1::value::Kind as value_kind;
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
    /// `customer_rfm`.
    pub const CUSTOMER_RFM: usize = 5;
    /// `clv_model`.
    pub const CLV_MODEL: usize = 6;
    /// `customer_clv`.
    pub const CUSTOMER_CLV: usize = 7;
    /// `fraud_features`.
    pub const FRAUD_FEATURES: usize = 8;
    /// `fraud_scores`.
    pub const FRAUD_SCORES: usize = 9;
    /// `fraud_alerts`.
    pub const FRAUD_ALERTS: usize = 10;
}

/// Every served view, in [`index`] order.
pub fn schemas() -> Vec<Schema> {
    use ColumnType::{Bool, Bytes, Double, Int64, String as Text, TimestampMs};
    let sessions = [
        col("user_id", Text, false, "the user"),
        col("session_id", Text, false, "the shop's session id, or derived:<start ms>"),
        col("derived", Bool, false, "whether the session was derived by inactivity rather than given by the shop"),
        col("start_ts", TimestampMs, false, "event time of the first event"),
        col("end_ts", TimestampMs, false, "event time of the last event"),
    ]
    .into_iter()
    .chain(counters(&["events", "page_views", "product_views", "products_viewed", "cart_adds", "checkouts", "purchases", "orders", "revenue_cents", "funnel_step"]))
    .chain(["country", "device", "utm_source", "category"].map(|c| col(c, Text, true, "of the first event that has one")))
    .collect();
    let window = |name: &str| [col("granularity", Text, false, "minute, hour or day"), col("window_start", TimestampMs, false, name)];
    vec![
        Schema { name: "sessions", description: "one row per session of every user with a live event", columns: sessions, key_columns: 3, routing_columns: 1 },
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
            description: "rejected records: reason, detail, size, digest and first bytes; of each reason and hour, the first 50 to arrive (rejected_by_reason counts them all); identical copies repeat",
            columns: vec![
                col("reason", Text, false, ""),
                col("ingest_time", Int64, false, "ingestion time (ms)"),
                col("position", Int64, false, "position in its source"),
                col("detail", Text, false, ""),
                col("format", Text, false, "json, rees46 or cdnow"),
                col("raw", Bytes, false, "the first 1024 bytes of the record as received"),
                col("size", Int64, false, "bytes in the record"),
                col("sha256", Text, false, "SHA-256 of the record's bytes (hex)"),
            ],
            key_columns: 3,
            routing_columns: 1,
        },
        Schema {
            name: "customer_rfm",
            description: "per customer: transaction days (same-day orders merged, refunds netted), the CDNOW summary as of the evaluation day, and RFM quintile scores (5 = most recent, frequent, valuable)",
            columns: vec![
                col("user_id", Text, false, "the customer"),
                col("first_purchase", TimestampMs, false, "start of the first transaction day (UTC)"),
                col("last_purchase", TimestampMs, false, "start of the last transaction day"),
                col("evaluation_day", TimestampMs, false, "the day T is measured to"),
                col("x", Int64, false, "repeat transaction days"),
                col("t_x_weeks", Double, false, "weeks from the first to the last transaction"),
                col("t_weeks", Double, false, "weeks from the first transaction to the evaluation day"),
                col("recency_days", Int64, false, "days from the last transaction to the evaluation day"),
                col("spend_cents", Int64, false, "value of all transactions"),
                col("zbar", Double, false, "mean value of the repeat transactions (0 without repeats)"),
                col("r_score", Int64, false, "recency quintile, 1-5"),
                col("f_score", Int64, false, "frequency quintile, 1-5"),
                col("m_score", Int64, false, "monetary quintile (mean spend per day, whole units), 1-5"),
            ],
            key_columns: 1,
            routing_columns: 1,
        },
        Schema {
            name: "clv_model",
            description: "the current BG/NBD and Gamma-Gamma fit (one row; versions count fits)",
            columns: vec![
                col("version", Int64, false, "fits so far"),
                col("fitted_at", Int64, false, "ingestion time (ms) of the data fitted on"),
                col("customers", Int64, false, "customers in the BG/NBD fit"),
                col("r", Double, true, "BG/NBD"),
                col("alpha", Double, true, "BG/NBD"),
                col("a", Double, true, "BG/NBD"),
                col("b", Double, true, "BG/NBD"),
                col("bg_nbd_log_likelihood", Double, true, "at the fit"),
                col("spend_customers", Int64, false, "customers in the Gamma-Gamma fit"),
                col("p", Double, true, "Gamma-Gamma"),
                col("q", Double, true, "Gamma-Gamma"),
                col("v", Double, true, "Gamma-Gamma"),
                col("gamma_gamma_log_likelihood", Double, true, "at the fit"),
                col("error", Text, true, "why a fit failed"),
            ],
            key_columns: 1,
            // The row lives on worker 0 whatever its version: a lookup asks every process.
            routing_columns: 0,
        },
        Schema {
            name: "customer_clv",
            description: "per customer: predictions of the current clv_model",
            columns: vec![
                col("user_id", Text, false, "the customer"),
                col("x", Int64, false, "repeat transaction days"),
                col("t_x_weeks", Double, false, ""),
                col("t_weeks", Double, false, ""),
                col("zbar", Double, false, "mean repeat transaction value"),
                col("p_alive", Double, true, "probability the customer is still active"),
                col("expected_purchases", Double, true, "transactions expected over the prediction horizon"),
                col("expected_spend", Double, true, "expected value of a transaction"),
                col("clv", Double, true, "discounted value over the CLV horizon"),
                col("model_version", Int64, false, "clv_model version used"),
            ],
            key_columns: 1,
            routing_columns: 1,
        },
        Schema {
            name: "fraud_features",
            description: "per payment with a card: what the card did before it (by event time, never later payments)",
            columns: [
                col("card_id", Text, false, "the card"),
                col("event_ts", TimestampMs, false, "event time of the payment"),
                col("payment_id", Text, false, "the payment's event id"),
                col("user_id", Text, false, "the paying user"),
                col("amount_cents", Int64, false, ""),
            ]
            .into_iter()
            .chain(["1m", "10m", "1h", "24h"].map(|w| col(&format!("count_{w}"), Int64, false, "earlier payments of the card in the window")))
            .chain(["1m", "10m", "1h", "24h"].map(|w| col(&format!("sum_cents_{w}"), Int64, false, "their amounts")))
            .chain(["countries", "devices", "ips"].map(|d| col(&format!("distinct_{d}_24h"), Int64, false, "among the card's payments of the last 24 h, this one included")))
            .chain([
                col("prior_count", Int64, false, "earlier payments of the card within the retention horizon"),
                col("prior_mean_cents", Double, true, "their mean amount"),
                col("prior_std_cents", Double, true, "their standard deviation"),
                col("amount_z", Double, true, "(amount - mean) / deviation; needs two earlier payments"),
                col("amount_ratio", Double, true, "amount / earlier mean"),
                col("since_prev_ms", Int64, true, "time since the card's previous payment"),
                col("geo_velocity_kmh", Double, true, "distance from the previous payment's location over the time between (at least 1 s)"),
                col("new_device", Bool, false, "a device the card never used before"),
                col("new_country", Bool, false, "a country the card was never used in before"),
                col("country_mismatch", Bool, false, "billing country differs from the payment's country"),
            ])
            .collect(),
            key_columns: 3,
            routing_columns: 1,
        },
        Schema {
            name: "fraud_scores",
            description: "per payment with a card: the fraud model's score of its fraud_features row",
            columns: score_columns(),
            key_columns: 3,
            routing_columns: 1,
        },
        Schema {
            name: "fraud_alerts",
            description: "the fraud_scores rows at or above the model's alert threshold",
            columns: score_columns(),
            key_columns: 3,
            routing_columns: 1,
        },
    ]
}

/// The columns of `fraud_scores` and `fraud_alerts`.
fn score_columns() -> Vec<Column> {
    use ColumnType::{Bool, Double, Int64, String as Text, TimestampMs};
    vec![
        col("card_id", Text, false, "the card"),
        col("event_ts", TimestampMs, false, "event time of the payment"),
        col("payment_id", Text, false, "the payment's event id"),
        col("user_id", Text, false, "the paying user"),
        col("amount_cents", Int64, false, ""),
        col("score", Double, false, "probability of fraud under the model"),
        col("alert", Bool, false, "the score reaches the alert threshold"),
        col("reasons", Text, false, "model inputs that raised the score most, comma-separated"),
        col("model_version", Text, false, "the scoring model's version"),
    ]
}

/// A `fraud_scores` or `fraud_alerts` row.
pub fn score_row(_: &u64, s: &FraudScore) -> Row {
    let reasons: Vec<&str> = s.reasons.iter().map(|r| &**r).collect();
    Row {
        values: vec![
            value::string(&s.card_id),
            value::timestamp_ms(s.event_ts),
            value::string(&s.payment_id),
            value::string(&s.user_id),
            value::int64(s.amount_cents),
            value::double(s.score.0),
            value::boolean(s.alert),
            value::string(&reasons.join(",")),
            value::string(&s.model_version),
        ],
    }
}

/// A `fraud_features` row.
pub fn fraud_row(_: &u64, f: &FraudFeatures) -> Row {
    let double = |v: Option<f64>| v.map_or_else(value::null, value::double);
    let mut values = vec![
        value::string(&f.card_id),
        value::timestamp_ms(f.event_ts),
        value::string(&f.payment_id),
        value::string(&f.user_id),
        value::int64(f.amount_cents),
    ];
    values.extend(f.counts.map(|c| value::int64(i64::from(c))));
    values.extend(f.sums_cents.map(value::int64));
    values.extend(f.distinct_24h.map(|c| value::int64(i64::from(c))));
    values.extend([
        value::int64(f.prior_count as i64),
        double(f.prior_mean_cents()),
        double(f.prior_std_cents()),
        double(f.amount_z()),
        double(f.amount_ratio()),
        f.since_prev_ms.map_or_else(value::null, value::int64),
        double(f.geo_velocity_kmh()),
        value::boolean(f.new_device),
        value::boolean(f.new_country),
        value::boolean(f.country_mismatch),
    ]);
    Row { values }
}

fn real_or_null(v: Option<Real>) -> Value {
    v.map_or_else(value::null, |r| value::double(r.0))
}

/// A `customer_rfm` row.
pub fn rfm_row(_: &u64, r: &RfmRow) -> Row {
    let s = &r.summary;
    let (x, t_x, t) = r.triple_days();
    let scores = r.scores.map(|v| value::int64(i64::from(v)));
    let mut values = vec![
        value::string(&s.user_id),
        value::timestamp_ms(s.first_day * DAY_MS),
        value::timestamp_ms(s.last_day * DAY_MS),
        value::timestamp_ms(r.evaluation_day * DAY_MS),
        value::int64(i64::from(x)),
        value::double(t_x as f64 / 7.0),
        value::double(t as f64 / 7.0),
        value::int64(r.evaluation_day - s.last_day),
        value::int64(s.first_cents + s.repeat_cents),
        value::double(r.zbar()),
    ];
    values.extend(scores);
    Row { values }
}

/// The `clv_model` row.
pub fn clv_model_row(_: &Single, m: &ClvModel) -> Row {
    let bg = m.bg_nbd.map_or([None; 4], |p| p.map(Some));
    let gg = m.gamma_gamma.map_or([None; 3], |p| p.map(Some));
    let mut values = vec![value::int64(m.version as i64), value::int64(m.fitted_at as i64), value::int64(m.customers as i64)];
    values.extend(bg.map(real_or_null));
    values.push(real_or_null(m.bg_nbd_log_likelihood));
    values.push(value::int64(m.spend_customers as i64));
    values.extend(gg.map(real_or_null));
    values.push(real_or_null(m.gamma_gamma_log_likelihood));
    values.push(m.error.as_deref().map_or_else(value::null, value::string));
    Row { values }
}

/// A `customer_clv` row.
pub fn clv_row(_: &u64, c: &ClvRow) -> Row {
    let mut values = vec![value::string(&c.user_id), value::int64(i64::from(c.x)), value::double(c.t_x.0), value::double(c.t.0), value::double(c.zbar.0)];
    values.extend([c.p_alive, c.expected_purchases, c.expected_spend, c.clv].map(real_or_null));
    values.push(value::int64(c.model_version as i64));
    Row { values }
}

fn text_or_null(v: &Option<Dim>) -> Value {
    v.as_deref().map(value::string).unwrap_or_else(value::null)
}

/// A `sessions` row.
pub fn session_row(s: &SessionRow) -> Row {
    let mut values = vec![value::string(&s.user_id), value::string(&s.session_id), value::boolean(s.derived), value::timestamp_ms(s.start_ts), value::timestamp_ms(s.end_ts)];
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
pub fn rejected_row(reason: &RejectReason, count: &i64) -> Row {
    Row { values: vec![value::string(reason.name()), value::int64(*count)] }
}

/// A `rejects` row.
pub fn reject_row(_: &RejectReason, r: &Reject) -> Row {
    Row {
        values: vec![
            value::string(r.reason.name()),
            value::int64(r.ingest_time as i64),
            value::int64(r.position as i64),
            value::string(&r.detail),
            value::string(r.format.name()),
            value::bytes(&r.raw),
            value::int64(r.size as i64),
            value::string(&r.sha256),
        ],
    }
}

fn text_value(v: &Value) -> Option<&str> {
    match v.kind.as_ref()? {
        value_kind::String(s) => Some(s),
        _ => None,
    }
}

fn timestamp_value(v: &Value) -> Option<i64> {
    match v.kind.as_ref()? {
        value_kind::TimestampMs(ms) => Some(*ms),
        _ => None,
    }
}

/// The least `funnel` key at or after the key values `values` (a prefix), if they read
/// as one: where a lookup or range seeks in the arrangement, whose order is the view's
/// key order.
pub fn funnel_lower(values: &[Value]) -> Option<FunnelKey> {
    let granularity = Granularity::from_name(text_value(values.first()?)?)?;
    let window_start = match values.get(1) {
        Some(v) => timestamp_value(v)?,
        None => i64::MIN,
    };
    let dimension = match values.get(2) {
        Some(v) => Dimension::from_name(text_value(v)?)?,
        None => *Dimension::ALL.iter().min().expect("dimensions exist"),
    };
    // A value no row holds is not added to the dictionary: the least value (`""`) is a
    // lower bound too, and the scan's filter skips what lies before the asked one.
    let value = match values.get(3) {
        Some(v) => Dim::existing(text_value(v)?),
        None => None,
    };
    Some(FunnelKey { granularity, window_start, dimension, value: value.unwrap_or_else(|| Dim::new("")) })
}

/// The least `kpis` key at or after the key values `values` (see [`funnel_lower`]).
pub fn kpi_lower(values: &[Value]) -> Option<KpiKey> {
    let granularity = Granularity::from_name(text_value(values.first()?)?)?;
    let window_start = match values.get(1) {
        Some(v) => timestamp_value(v)?,
        None => i64::MIN,
    };
    Some(KpiKey { granularity, window_start })
}

/// The reject reason at the start of `values` (see [`funnel_lower`]).
pub fn reason_lower(values: &[Value]) -> Option<RejectReason> {
    RejectReason::from_name(text_value(values.first()?)?)
}

/// The [`index`] of the view a row belongs to.
pub fn view_index(row: &ViewRow) -> usize {
    match row {
        ViewRow::Sessions(_) => index::SESSIONS,
        ViewRow::Funnel { .. } => index::FUNNEL,
        ViewRow::Kpis { .. } => index::KPIS,
        ViewRow::RejectedByReason { .. } => index::REJECTED_BY_REASON,
        ViewRow::Rejects(_) => index::REJECTS,
        ViewRow::CustomerRfm(_) => index::CUSTOMER_RFM,
        ViewRow::ClvModel(_) => index::CLV_MODEL,
        ViewRow::CustomerClv(_) => index::CUSTOMER_CLV,
        ViewRow::FraudFeatures(_) => index::FRAUD_FEATURES,
        ViewRow::FraudScores(_) => index::FRAUD_SCORES,
        ViewRow::FraudAlerts(_) => index::FRAUD_ALERTS,
    }
}

/// A row of any view as the API shows it, with the [`index`] of its view: the same
/// [`Row`] the view's own function above builds. (The arrangement keys those functions
/// take besides the row are not part of the row, so any value serves.)
pub fn view_row(row: &ViewRow) -> (usize, Row) {
    let values = match row {
        ViewRow::Sessions(s) => session_row(s),
        ViewRow::Funnel { key, agg } => funnel_row(key, agg),
        ViewRow::Kpis { key, agg } => kpi_row(key, agg),
        ViewRow::RejectedByReason { reason, count } => rejected_row(reason, count),
        ViewRow::Rejects(r) => reject_row(&r.reason, r),
        ViewRow::CustomerRfm(r) => rfm_row(&0, r),
        ViewRow::ClvModel(m) => clv_model_row(&Single, m),
        ViewRow::CustomerClv(c) => clv_row(&0, c),
        ViewRow::FraudFeatures(f) => fraud_row(&0, f),
        ViewRow::FraudScores(s) | ViewRow::FraudAlerts(s) => score_row(&0, s),
    };
    (view_index(row), values)
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
        let summary = tidemark_dataflows::clv::CustomerSummary { user_id: "u".into(), first_day: 1, last_day: 3, days: 2, first_cents: 100, repeat_cents: 50 };
        let rfm = RfmRow { summary, evaluation_day: 10, scores: [1, 2, 3] };
        assert_eq!(rfm_row(&0, &rfm).values.len(), schemas[index::CUSTOMER_RFM].columns.len());
        let model = ClvModel::fit(&Default::default(), 1, 0);
        assert_eq!(clv_model_row(&Single, &model).values.len(), schemas[index::CLV_MODEL].columns.len());
        let clv = ClvRow::new(&rfm, &model, &Default::default());
        assert_eq!(clv_row(&0, &clv).values.len(), schemas[index::CUSTOMER_CLV].columns.len());
        let payment = tidemark_dataflows::fraud::Payment {
            event_ts: 0,
            event_id: "p".into(),
            card_id: "c".into(),
            user_id: "u".into(),
            amount_cents: 1,
            device: None,
            country: None,
            ip: None,
            location: None,
            billing_country: None,
        };
        let features = tidemark_dataflows::fraud::card_features(&[&payment]);
        assert_eq!(fraud_row(&0, &features[0]).values.len(), schemas[index::FRAUD_FEATURES].columns.len());
        let score = tidemark_dataflows::fraud::FraudModel::default().row(&features[0]);
        assert_eq!(score_row(&0, &score).values.len(), schemas[index::FRAUD_SCORES].columns.len());
        assert_eq!(score_row(&0, &score).values.len(), schemas[index::FRAUD_ALERTS].columns.len());
        for (i, s) in schemas.iter().enumerate() {
            assert!(s.routing_columns <= s.key_columns && s.key_columns <= s.columns.len(), "view {i}");
        }
    }

    /// [`view_row`] maps every kind of row to its own view, with one value of the right
    /// type per column; key columns are never null.
    #[test]
    fn every_view_row_fits_its_schema() {
        use tidemark_dataflows::generator::{Generator, GeneratorConfig};
        use tidemark_dataflows::reference::Reference;
        use tidemark_dataflows::views::ViewConfig;
        let schemas = schemas();
        // Traffic with faults and fraud, enough for a row of every view.
        let generator = GeneratorConfig { seed: 3, events_per_sec: 5, users: 200, fraud_rate: 0.05, malformed_rate: 0.05, ..GeneratorConfig::default() };
        let records: Vec<_> = Generator::new(generator, 0, 1).take(3000).map(|g| (g.record, g.ingest_ms)).collect();
        let last = records.last().expect("records").1;
        let state = Reference::new(&records, &ViewConfig::default()).views_at(last);
        let mut seen = vec![false; schemas.len()];
        for row in state.keys() {
            let (view, values) = view_row(row);
            let schema = &schemas[view];
            assert_eq!(schema.name, row.view(), "{row:?}");
            assert_eq!(values.values.len(), schema.columns.len(), "{row:?}");
            for (column, value) in schema.columns.iter().zip(&values.values) {
                let kind = ColumnType::try_from(column.r#type).expect("a known column type");
                assert!(value::fits(value, kind), "{}.{}: {value:?}", schema.name, column.name);
                assert!(column.nullable || value.kind.is_some(), "{}.{} is null", schema.name, column.name);
            }
            seen[view] = true;
        }
        let missing: Vec<&str> = schemas.iter().zip(&seen).filter(|(_, seen)| !**seen).map(|(s, _)| s.name).collect();
        assert!(missing.is_empty(), "no rows of {missing:?}");
        for s in &schemas {
            assert!(s.columns[..s.key_columns].iter().all(|c| !c.nullable), "{}: a nullable key column", s.name);
        }
    }

    /// The views served as [`Placement::Ordered`](crate::serve::compute::Placement) keep
    /// their arrangement in the view's key order, and the lower bounds seek exactly: rows
    /// sorted by arrangement key are sorted by key values, and the least arrangement key
    /// at or after a row's key values is that row's own.
    #[test]
    fn ordered_views_are_arranged_in_key_order() {
        use tidemark_dataflows::generator::{Generator, GeneratorConfig};
        use tidemark_dataflows::reference::Reference;
        use tidemark_dataflows::views::ViewConfig;
        use tidemark_proto::value::compare_all;
        let generator = GeneratorConfig { seed: 5, events_per_sec: 5, users: 300, malformed_rate: 0.05, ..GeneratorConfig::default() };
        let records: Vec<_> = Generator::new(generator, 0, 1).take(3000).map(|g| (g.record, g.ingest_ms)).collect();
        let last = records.last().expect("records").1;
        let state = Reference::new(&records, &ViewConfig::default()).views_at(last);
        let mut funnel: Vec<(FunnelKey, Row)> = Vec::new();
        let mut kpis: Vec<(KpiKey, Row)> = Vec::new();
        let mut reasons: Vec<(RejectReason, Row)> = Vec::new();
        for row in state.keys() {
            match row {
                ViewRow::Funnel { key, agg } => funnel.push((*key, funnel_row(key, agg))),
                ViewRow::Kpis { key, agg } => kpis.push((*key, kpi_row(key, agg))),
                ViewRow::Rejects(r) => reasons.push((r.reason, reject_row(&r.reason, r))),
                _ => {}
            }
        }
        assert!(funnel.len() > 100 && kpis.len() > 10 && reasons.len() > 10);
        fn check<K: Ord + std::fmt::Debug>(mut rows: Vec<(K, Row)>, key_columns: usize, lower: fn(&[Value]) -> Option<K>) {
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            for pair in rows.windows(2) {
                let order = compare_all(&pair[0].1.values[..key_columns], &pair[1].1.values[..key_columns]);
                assert_ne!(order, std::cmp::Ordering::Greater, "{:?} before {:?}", pair[0].0, pair[1].0);
            }
            for (key, row) in &rows {
                assert_eq!(lower(&row.values[..key_columns]).as_ref(), Some(key), "the lower bound of a row's own key");
            }
        }
        check(funnel, 4, funnel_lower);
        check(kpis, 2, kpi_lower);
        check(reasons, 3, reason_lower);
        assert_eq!(funnel_lower(&[value::string("hour")]).map(|k| (k.granularity, k.window_start)), Some((Granularity::Hour, i64::MIN)));
        assert_eq!(kpi_lower(&[value::string("fortnight")]), None, "no such granularity: no seek");
    }
}
