//! Naive reference implementations of every view, for oracle tests.
//!
//! [`views_at`] recomputes all views from scratch at one ingestion time `t`, from the full
//! list of records and their ingestion times, with plain loops over sorted vectors. It
//! shares the row types and the decoder with the dataflow, and nothing else: sessions,
//! funnel steps, windows and sums are written again here, deliberately simply.

use std::collections::{BTreeMap, BTreeSet};

use crate::decode::{decode, Format, RawRecord, Reject, RejectReason};
use crate::event::{Event, EventType, Text};
use crate::rows::{Dimension, FunnelAgg, FunnelKey, KpiAgg, KpiKey, SessionRow};
use crate::time::{Granularity, Time};
use crate::views::{ViewConfig, ViewRow};

/// The contents of every view at time `t`, as a multiset of rows.
///
/// `records` pairs each record with its ingestion time, in any order.
pub fn views_at(records: &[(RawRecord, Time)], t: Time, config: &ViewConfig) -> BTreeMap<ViewRow, i64> {
    let mut rows = BTreeMap::new();
    let mut add = |row: ViewRow| *rows.entry(row).or_insert(0) += 1;

    // Decode, keeping what is live at `t`.
    let mut arrivals: Vec<(Time, u64, Event)> = Vec::new();
    let mut rejects: Vec<Reject> = Vec::new();
    for (record, ingest) in records {
        if *ingest > t {
            continue;
        }
        match decode(record, *ingest, &config.decode) {
            Ok(event) => {
                if t < config.expiry(event.event_ts) {
                    arrivals.push((*ingest, record.position, event));
                }
            }
            Err(reject) => {
                if t < config.reject_expiry(*ingest) {
                    rejects.push(reject);
                }
            }
        }
    }

    // Dedup and retractions.
    arrivals.sort();
    let cancelled: BTreeSet<&str> = arrivals.iter().filter_map(|(_, _, e)| e.retracts.as_deref()).collect();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut valid: Vec<&Event> = Vec::new();
    for (ingest, position, event) in &arrivals {
        if seen.insert(&event.event_id) {
            if !cancelled.contains(&*event.event_id) && event.event_type != EventType::Retraction {
                valid.push(event);
            }
        } else {
            rejects.push(Reject {
                reason: RejectReason::Duplicate,
                detail: format!("event_id {:?} was already delivered", event.event_id),
                ingest_time: *ingest,
                format: Format::Json,
                position: *position,
                raw: event.to_json().into_bytes(),
            });
        }
    }

    let mut reason_counts: BTreeMap<RejectReason, i64> = BTreeMap::new();
    for r in rejects {
        *reason_counts.entry(r.reason).or_insert(0) += 1;
        add(ViewRow::Rejects(r));
    }
    for (reason, count) in reason_counts {
        add(ViewRow::RejectedByReason { reason, count });
    }

    let sessions = sessions(&valid);
    let mut funnel: BTreeMap<FunnelKey, (FunnelAgg, BTreeSet<&str>)> = BTreeMap::new();
    for s in &sessions {
        for g in Granularity::ALL {
            for d in Dimension::ALL {
                let value = match d {
                    Dimension::All => Some(Text::from("all")),
                    Dimension::Country => s.country.clone(),
                    Dimension::Device => s.device.clone(),
                    Dimension::UtmSource => s.utm_source.clone(),
                    Dimension::Category => s.category.clone(),
                };
                let key = FunnelKey {
                    granularity: g,
                    window_start: s.start_ts - s.start_ts.rem_euclid(g.millis()),
                    dimension: d,
                    value: value.unwrap_or_else(|| Text::from("(none)")),
                };
                let (agg, users) = funnel.entry(key).or_default();
                agg.sessions += 1;
                agg.reached_view += i64::from(s.funnel_step >= 1);
                agg.reached_cart += i64::from(s.funnel_step >= 2);
                agg.reached_checkout += i64::from(s.funnel_step >= 3);
                agg.reached_purchase += i64::from(s.funnel_step >= 4);
                agg.purchasing_sessions += i64::from(s.purchases > 0);
                agg.orders += s.orders as i64;
                agg.revenue_cents += s.revenue_cents;
                users.insert(&s.user_id);
            }
        }
    }

    let mut kpis: BTreeMap<KpiKey, (KpiAgg, BTreeSet<&str>)> = BTreeMap::new();
    for e in &valid {
        for g in Granularity::ALL {
            let key = KpiKey { granularity: g, window_start: e.event_ts - e.event_ts.rem_euclid(g.millis()) };
            let (k, orders) = kpis.entry(key).or_default();
            let amount = e.price_cents.unwrap_or(0) * i64::from(e.quantity);
            k.events += 1;
            match e.event_type {
                EventType::PageView => k.page_views += 1,
                EventType::ProductView => k.product_views += 1,
                EventType::AddToCart => k.cart_adds += 1,
                EventType::RemoveFromCart => k.cart_removes += 1,
                EventType::Checkout => k.checkouts += 1,
                EventType::Purchase => {
                    k.purchases += 1;
                    k.revenue_cents += amount;
                    orders.insert(e.order_id.as_deref().unwrap_or(&e.event_id));
                }
                EventType::Refund => {
                    k.refunds += 1;
                    k.refund_cents += amount;
                }
                EventType::Payment => {
                    k.payments += 1;
                    k.payment_cents += amount;
                }
                EventType::Retraction => unreachable!("retractions never count as valid events"),
            }
        }
    }
    for (key, (mut agg, users)) in funnel {
        agg.unique_users = users.len() as i64;
        if key.dimension == Dimension::All {
            let (k, _) = kpis.entry(KpiKey { granularity: key.granularity, window_start: key.window_start }).or_default();
            k.sessions += agg.sessions;
            k.purchasing_sessions += agg.purchasing_sessions;
            k.unique_users += agg.unique_users;
        }
        add(ViewRow::Funnel { key, agg });
    }
    for (key, (mut agg, orders)) in kpis {
        agg.orders = orders.len() as i64;
        add(ViewRow::Kpis { key, agg });
    }
    for s in sessions {
        add(ViewRow::Sessions(s));
    }
    rows
}

/// Sessions of the valid events: by `session_id` where given, else by a 30-minute gap.
fn sessions(valid: &[&Event]) -> Vec<SessionRow> {
    // (user, Some(session_id)) groups shop sessions; (user, None) collects the rest.
    let mut groups: BTreeMap<(&str, Option<&str>), Vec<&Event>> = BTreeMap::new();
    for e in valid {
        groups.entry((&e.user_id, e.session_id.as_deref())).or_default().push(e);
    }
    let mut out = Vec::new();
    for ((user, session_id), mut events) in groups {
        events.sort_by(|a, b| (a.event_ts, a.event_type, &a.event_id).cmp(&(b.event_ts, b.event_type, &b.event_id)));
        match session_id {
            Some(id) => out.push(session_row(user, id.to_owned(), &events)),
            None => {
                let mut start = 0;
                for i in 1..=events.len() {
                    if i == events.len() || events[i].event_ts - events[i - 1].event_ts > 30 * 60 * 1000 {
                        let name = format!("derived:{}", events[start].event_ts);
                        out.push(session_row(user, name, &events[start..i]));
                        start = i;
                    }
                }
            }
        }
    }
    out
}

fn session_row(user: &str, session_id: String, events: &[&Event]) -> SessionRow {
    let count = |t: EventType| events.iter().filter(|e| e.event_type == t).count() as u64;
    let purchases: Vec<&&Event> = events.iter().filter(|e| e.event_type == EventType::Purchase).collect();
    let first_of = |f: &dyn Fn(&Event) -> Option<Text>| events.iter().find_map(|e| f(e));
    // The ordered funnel: the position of each step must follow the previous one.
    let steps = [
        |e: &Event| matches!(e.event_type, EventType::PageView | EventType::ProductView),
        |e: &Event| e.event_type == EventType::AddToCart,
        |e: &Event| e.event_type == EventType::Checkout,
        |e: &Event| e.event_type == EventType::Purchase,
    ];
    let mut reached = 0u8;
    let mut from = 0usize;
    for step in steps {
        match events[from..].iter().position(|e| step(e)) {
            Some(offset) => {
                reached += 1;
                from += offset + 1;
            }
            None => break,
        }
    }
    SessionRow {
        user_id: Text::from(user),
        session_id: Text::from(session_id),
        start_ts: events.iter().map(|e| e.event_ts).min().expect("sessions have events"),
        end_ts: events.iter().map(|e| e.event_ts).max().expect("sessions have events"),
        events: events.len() as u64,
        page_views: count(EventType::PageView),
        product_views: count(EventType::ProductView),
        products_viewed: events
            .iter()
            .filter(|e| e.event_type == EventType::ProductView)
            .filter_map(|e| e.product_id.as_deref())
            .collect::<BTreeSet<_>>()
            .len() as u64,
        cart_adds: count(EventType::AddToCart),
        checkouts: count(EventType::Checkout),
        purchases: purchases.len() as u64,
        orders: purchases.iter().map(|e| e.order_id.as_deref().unwrap_or(&e.event_id)).collect::<BTreeSet<_>>().len() as u64,
        revenue_cents: purchases.iter().map(|e| e.price_cents.unwrap_or(0) * i64::from(e.quantity)).sum(),
        funnel_step: reached,
        country: first_of(&|e| e.geo.as_ref().and_then(|g| g.country.clone())),
        device: first_of(&|e| e.device.as_ref().and_then(|d| d.os.clone())),
        utm_source: first_of(&|e| e.utm.as_ref().and_then(|u| u.source.clone())),
        category: first_of(&|e| e.category.clone()),
    }
}

/// The contents at `t` of a list of view changes `(row, time, diff)`.
pub fn state_at<'a>(updates: impl IntoIterator<Item = &'a (ViewRow, Time, isize)>, t: Time) -> BTreeMap<ViewRow, i64> {
    let mut state = BTreeMap::new();
    for (row, time, diff) in updates {
        if *time <= t {
            *state.entry(row.clone()).or_insert(0) += *diff as i64;
        }
    }
    state.retain(|_, count| *count != 0);
    state
}

/// Describes how two view states differ, row by row (empty when they are equal).
pub fn difference(actual: &BTreeMap<ViewRow, i64>, expected: &BTreeMap<ViewRow, i64>) -> String {
    let mut out = String::new();
    for (row, count) in actual {
        if expected.get(row) != Some(count) {
            out += &format!("  dataflow has {count} x {row:?} (reference: {:?})\n", expected.get(row));
        }
    }
    for (row, count) in expected {
        if !actual.contains_key(row) {
            out += &format!("  reference has {count} x {row:?}, dataflow none\n");
        }
    }
    out
}
