//! Naive reference implementations of every view, for oracle tests.
//!
//! [`views_at`] recomputes all views from scratch at one ingestion time `t`, from the full
//! list of records and their ingestion times, with plain loops over sorted vectors. It
//! shares the row types and the decoder with the dataflow, and nothing else: sessions,
//! funnel steps, windows and sums are written again here, deliberately simply.

use std::collections::{BTreeMap, BTreeSet};

use crate::clv::{ClvConfig, ClvModel, ClvRow, CustomerSummary, ModelInput, RfmRow};
use crate::decode::{decode, duplicate_reject, RawRecord, Reject, RejectReason};
use crate::fraud::FraudFeatures;
use crate::dictionary::Dim;
use crate::event::{Event, EventType, Text};
use crate::rows::{Dimension, FunnelAgg, FunnelKey, KpiAgg, KpiKey, SessionRow};
use crate::time::{Granularity, Time};
use crate::views::{ViewConfig, ViewRow};

/// The contents of every view at time `t`, as a multiset of rows.
///
/// `records` pairs each record with its ingestion time, in any order. Checking many times
/// over the same records is faster with one [`Reference`].
pub fn views_at(records: &[(RawRecord, Time)], t: Time, config: &ViewConfig) -> BTreeMap<ViewRow, i64> {
    Reference::new(records, config).views_at(t)
}

/// The records of a test, decoded once, for [`Reference::views_at`] at many times.
pub struct Reference {
    /// Accepted events with their ingestion time and position, sorted.
    arrivals: Vec<(Time, u64, Event)>,
    /// Rejected records.
    rejects: Vec<Reject>,
    config: ViewConfig,
    /// `clv_model` after each time it changed, computed on first use.
    models: std::sync::OnceLock<Vec<(Time, Option<ClvModel>)>>,
}

impl Reference {
    /// Decodes the records.
    pub fn new(records: &[(RawRecord, Time)], config: &ViewConfig) -> Reference {
        let mut arrivals = Vec::new();
        let mut rejects = Vec::new();
        for (record, ingest) in records {
            match decode(record, *ingest, &config.decode) {
                Ok(event) => arrivals.push((*ingest, record.position, event)),
                Err(reject) => rejects.push(reject),
            }
        }
        arrivals.sort();
        Reference { arrivals, rejects, config: config.clone(), models: std::sync::OnceLock::new() }
    }

    /// Every delivery ingested by `t`, in arrival order, with its fate: kept (with its
    /// expiry) or a duplicate. A delivery is a duplicate if a kept delivery of its id is
    /// live when it arrives; its fate never changes.
    fn fates(&self, t: Time) -> Vec<(&(Time, u64, Event), Option<Time>)> {
        let mut live: BTreeMap<&str, Time> = BTreeMap::new();
        let mut out = Vec::new();
        for arrival in self.arrivals.iter().take_while(|(ingest, _, _)| *ingest <= t) {
            let (ingest, _, event) = arrival;
            if live.get(event.event_id()).is_some_and(|expiry| ingest < expiry) {
                out.push((arrival, None));
            } else {
                let expiry = self.config.expiry(event.event_ts).max(ingest + 1);
                live.insert(event.event_id(), expiry);
                out.push((arrival, Some(expiry)));
            }
        }
        out
    }

    /// The valid events at `t` (kept, live, not removed by a cancellation, not a
    /// retraction), and the rejects live at `t` (duplicates included).
    fn valid_at(&self, t: Time) -> (Vec<&Event>, Vec<Reject>) {
        let config = &self.config;
        let fates = self.fates(t);
        let mut rejects: Vec<Reject> =
            self.rejects.iter().filter(|r| r.ingest_time <= t && t < config.reject_expiry(r.ingest_time)).cloned().collect();
        for ((ingest, position, event), fate) in &fates {
            if fate.is_none() && t < config.reject_expiry(*ingest) {
                rejects.push(duplicate_reject(*ingest, *position, event));
            }
        }
        // Kept deliveries: (ingest, position, event, expiry).
        let kept: Vec<(Time, u64, &Event, Time)> = fates.iter().filter_map(|((i, p, e), f)| f.map(|x| (*i, *p, e, x))).collect();
        let removed = removed_by_cancellations(&kept);
        let valid = kept
            .iter()
            .enumerate()
            .filter(|(n, (ingest, _, event, expiry))| *ingest <= t && t < *expiry && !removed[*n] && event.event_type != EventType::Retraction)
            .map(|(_, (_, _, event, _))| *event)
            .collect();
        (valid, rejects)
    }

    /// Every reject that arose at times `<= t`, with all its bytes, once: what a
    /// dead-letter file or topic holds. A decoding reject arises with its record, a
    /// duplicate with its delivery.
    pub fn rejects_arisen(&self, t: Time) -> Vec<Reject> {
        let mut arisen: Vec<Reject> = self.rejects.iter().filter(|r| r.ingest_time <= t).cloned().collect();
        for ((ingest, position, event), fate) in self.fates(t) {
            if fate.is_none() {
                arisen.push(duplicate_reject(*ingest, *position, event));
            }
        }
        arisen
    }

    /// The samples of the rejects that the `rejects` view keeps by time `t`: of the
    /// rejects that arose in each reason and hour of ingestion by then
    /// ([`Reference::rejects_arisen`]), the first [`ViewConfig::rejects_per_hour`] by
    /// (ingestion time, sample).
    fn kept_rejects(&self, t: Time) -> BTreeSet<Reject> {
        let mut buckets: BTreeMap<(RejectReason, Time), BTreeSet<(Time, Reject)>> = BTreeMap::new();
        for r in self.rejects_arisen(t) {
            let r = r.sample();
            buckets.entry((r.reason, r.ingest_time / crate::views::HOUR_MS)).or_default().insert((r.ingest_time, r));
        }
        buckets.into_values().flat_map(|b| b.into_iter().take(self.config.rejects_per_hour).map(|(_, r)| r)).collect()
    }

    /// The contents of every view at time `t`.
    pub fn views_at(&self, t: Time) -> BTreeMap<ViewRow, i64> {
        let mut rows = BTreeMap::new();
        let mut add = |row: ViewRow| *rows.entry(row).or_insert(0) += 1;
        let (valid, rejects) = self.valid_at(t);

        let rfm = rfm_rows(&valid, &self.config.clv);
        let model = self.model_at(t);
        for row in &rfm {
            if let Some(model) = &model {
                add(ViewRow::CustomerClv(ClvRow::new(row, model, &self.config.clv)));
            }
        }
        if let Some(model) = model {
            add(ViewRow::ClvModel(model));
        }
        for row in rfm {
            add(ViewRow::CustomerRfm(row));
        }
        for row in fraud_features(&valid) {
            let score = self.config.fraud.row(&row);
            if score.alert {
                add(ViewRow::FraudAlerts(score.clone()));
            }
            add(ViewRow::FraudScores(score));
            add(ViewRow::FraudFeatures(row));
        }

        let mut reason_counts: BTreeMap<RejectReason, i64> = BTreeMap::new();
        let kept = self.kept_rejects(t);
        for r in rejects {
            *reason_counts.entry(r.reason).or_insert(0) += 1;
            let sample = r.sample();
            if kept.contains(&sample) {
                add(ViewRow::Rejects(sample));
            }
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
                        Dimension::All => Some(Dim::new("all")),
                        Dimension::Country => s.country,
                        Dimension::Device => s.device,
                        Dimension::UtmSource => s.utm_source,
                        Dimension::Category => s.category,
                    };
                    let key = FunnelKey {
                        granularity: g,
                        window_start: s.start_ts - s.start_ts.rem_euclid(g.millis()),
                        dimension: d,
                        value: value.unwrap_or_else(|| Dim::new("(none)")),
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
                        orders.insert(e.order_id().unwrap_or(e.event_id()));
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
}

impl Reference {
    /// `clv_model` at `t`: the refit policy replayed over every time at which the model
    /// inputs may have changed (ingestion and expiry times), in order.
    fn model_at(&self, t: Time) -> Option<ClvModel> {
        let history = self.models.get_or_init(|| {
            let mut times: Vec<Time> =
                self.arrivals.iter().flat_map(|(ingest, _, e)| [*ingest, self.config.expiry(e.event_ts).max(*ingest)]).collect();
            times.sort_unstable();
            times.dedup();
            let policy = self.config.clv.refit;
            let mut history = Vec::new();
            let mut before: BTreeMap<ModelInput, i64> = BTreeMap::new();
            let (mut changed, mut last_fit, mut fits) = (0u64, None::<Time>, 0u64);
            let mut current: Option<ClvModel> = None;
            for time in times {
                let (valid, _) = self.valid_at(time);
                let mut inputs: BTreeMap<ModelInput, i64> = BTreeMap::new();
                for row in rfm_rows(&valid, &self.config.clv) {
                    for input in ModelInput::of(&row) {
                        *inputs.entry(input).or_insert(0) += 1;
                    }
                }
                let keys: BTreeSet<&ModelInput> = inputs.keys().chain(before.keys()).collect();
                let delta: u64 = keys.iter().map(|k| (inputs.get(k).unwrap_or(&0) - before.get(k).unwrap_or(&0)).unsigned_abs()).sum();
                if delta == 0 {
                    continue;
                }
                changed += delta;
                let customers: i64 = inputs.iter().filter(|(k, _)| matches!(k, ModelInput::Purchases(..))).map(|(_, n)| n).sum();
                if customers == 0 {
                    (changed, last_fit) = (0, None);
                    if current.take().is_some() {
                        history.push((time, None));
                    }
                } else if policy.due(time, last_fit, changed, customers as u64) {
                    let model = ClvModel::fit(&inputs, fits + 1, time);
                    (changed, last_fit) = (0, Some(time));
                    // A failed fit after a failed fit keeps the current version.
                    if !(model.unfitted() && current.as_ref().is_some_and(ClvModel::unfitted)) {
                        fits += 1;
                        current = Some(model.clone());
                        history.push((time, Some(model)));
                    }
                }
                before = inputs;
            }
            history
        });
        history.iter().take_while(|(time, _)| *time <= t).last().and_then(|(_, m)| m.clone())
    }
}

/// Which kept deliveries (`(ingest, position, event, expiry)`, in arrival order) the
/// cancellations among them remove, written out plainly: each canceller's target is the
/// kept delivery of the id it names that is live when it arrives, else the first to
/// arrive while it is live; in each loop of cancellations the one that arrived last is
/// void; a delivery is removed when a canceller bound to it (and not void) is not
/// removed itself.
fn removed_by_cancellations(kept: &[(Time, u64, &Event, Time)]) -> Vec<bool> {
    let n = kept.len();
    let mut target: Vec<Option<usize>> = vec![None; n];
    for (c, (ingest, _, event, expiry)) in kept.iter().enumerate() {
        let Some(y) = event.retracts() else { continue };
        let of_y = || kept.iter().enumerate().filter(|(_, (_, _, e, _))| e.event_id() == y);
        let live = of_y().find(|(_, (i, _, _, x))| i <= ingest && ingest < x).map(|(k, _)| k);
        let later = || of_y().filter(|(_, (i, _, _, _))| ingest < i && i < expiry).min_by_key(|(_, (i, p, _, _))| (*i, *p)).map(|(k, _)| k);
        target[c] = live.or_else(later);
    }
    // Loops: following targets from a delivery comes back to it.
    let mut void = vec![false; n];
    for start in 0..n {
        let mut path = vec![start];
        let mut at = target[start];
        while let Some(k) = at {
            if k == start {
                let latest = *path.iter().max_by_key(|m| (kept[**m].0, kept[**m].1, kept[**m].2.event_id())).expect("not empty");
                void[latest] = true;
                break;
            }
            if path.contains(&k) || path.len() > n {
                break;
            }
            path.push(k);
            at = target[k];
        }
    }
    let mut cancellers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (c, t) in target.iter().enumerate() {
        if let (Some(t), false) = (t, void[c]) {
            cancellers[*t].push(c);
        }
    }
    fn removed(k: usize, cancellers: &[Vec<usize>], memo: &mut [Option<bool>]) -> bool {
        if let Some(r) = memo[k] {
            return r;
        }
        let r = cancellers[k].iter().any(|c| !removed(*c, cancellers, memo));
        memo[k] = Some(r);
        r
    }
    let mut memo = vec![None; n];
    (0..n).map(|k| removed(k, &cancellers, &mut memo)).collect()
}

/// `customer_rfm` rows of the valid events, written out plainly: orders net of refunds,
/// dated by their first purchase line; fully refunded orders and (with a fixed evaluation
/// day) later orders dropped; one transaction per customer and day; quintile cut points by
/// sorting every customer's values.
fn rfm_rows(valid: &[&Event], config: &ClvConfig) -> Vec<RfmRow> {
    // (customer, order) -> (first purchase time, purchased, refunded)
    let mut orders: BTreeMap<(&str, &str), (Option<i64>, i64, i64)> = BTreeMap::new();
    for e in valid {
        let order = e.order_id().unwrap_or(e.event_id());
        let amount = e.price_cents.unwrap_or(0) * i64::from(e.quantity);
        match e.event_type {
            EventType::Purchase => {
                let o = orders.entry((e.user_id(), order)).or_insert((None, 0, 0));
                o.0 = Some(o.0.map_or(e.event_ts, |t: i64| t.min(e.event_ts)));
                o.1 += amount;
            }
            EventType::Refund => orders.entry((e.user_id(), order)).or_insert((None, 0, 0)).2 += amount,
            _ => {}
        }
    }
    let mut days: BTreeMap<&str, BTreeMap<i64, i64>> = BTreeMap::new();
    for ((user, _), (first, bought, refunded)) in orders {
        let Some(first) = first else { continue };
        let day = first.div_euclid(86_400_000);
        let fully_refunded = refunded > 0 && refunded >= bought;
        if fully_refunded || config.evaluation_day.is_some_and(|e| day > e) {
            continue;
        }
        *days.entry(user).or_default().entry(day).or_insert(0) += bought - refunded;
    }
    let summaries: Vec<CustomerSummary> = days
        .into_iter()
        .map(|(user, by_day)| {
            let spend: Vec<i64> = by_day.values().copied().collect();
            CustomerSummary {
                user_id: Text::from(user),
                first_day: *by_day.keys().next().expect("customers have a day"),
                last_day: *by_day.keys().last().expect("customers have a day"),
                days: by_day.len() as u32,
                first_cents: spend[0],
                repeat_cents: spend[1..].iter().sum(),
            }
        })
        .collect();
    let Some(latest) = summaries.iter().map(|s| s.last_day).max() else { return Vec::new() };
    let evaluation_day = config.evaluation_day.unwrap_or(latest);
    let measures = |s: &CustomerSummary| [s.last_day, i64::from(s.days), (s.first_cents + s.repeat_cents).div_euclid(100 * i64::from(s.days))];
    // The k-th cut point of a measure: the value of the customer at (1-based) rank
    // ceil(k n / 5) in ascending order.
    let mut cuts = [[0i64; 4]; 3];
    for (m, cut) in cuts.iter_mut().enumerate() {
        let mut values: Vec<i64> = summaries.iter().map(|s| measures(s)[m]).collect();
        values.sort_unstable();
        let n = values.len();
        for (k, c) in cut.iter_mut().enumerate() {
            *c = values[((k + 1) * n).div_ceil(5) - 1];
        }
    }
    summaries
        .into_iter()
        .map(|s| {
            let values = measures(&s);
            let scores = [0, 1, 2].map(|m| 1 + cuts[m].iter().filter(|&&c| values[m] > c).count() as u8);
            RfmRow { summary: s, evaluation_day, scores }
        })
        .collect()
}

/// `fraud_features` of the valid events, each payment compared with every other payment
/// of its card.
fn fraud_features(valid: &[&Event]) -> Vec<FraudFeatures> {
    let payments: Vec<&Event> = valid.iter().copied().filter(|e| e.event_type == EventType::Payment && e.card_id().is_some()).collect();
    let device = |e: &Event| e.device_id().or(e.device_os.as_deref()).map(Text::from);
    let location = |e: &Event| e.lat_e6.zip(e.lon_e6);
    let amount = |e: &Event| e.price_cents.unwrap_or(0) * i64::from(e.quantity);
    let mut out = Vec::new();
    for p in &payments {
        let before = |q: &&&Event| q.card_id() == p.card_id() && (q.event_ts, q.event_id()) < (p.event_ts, p.event_id());
        let earlier: Vec<&Event> = payments.iter().filter(before).copied().collect();
        let within = |w: i64| earlier.iter().filter(move |q| q.event_ts > p.event_ts - w);
        let day: Vec<&Event> = earlier.iter().copied().chain([*p]).filter(|q| q.event_ts > p.event_ts - 86_400_000).collect();
        let distinct = |f: &dyn Fn(&Event) -> Option<Text>| day.iter().filter_map(|q| f(q)).collect::<BTreeSet<_>>().len() as u32;
        let previous = earlier.iter().max_by(|a, b| (a.event_ts, a.event_id()).cmp(&(b.event_ts, b.event_id())));
        out.push(FraudFeatures {
            card_id: p.card_id().map(Text::from).expect("payments with cards"),
            event_ts: p.event_ts,
            payment_id: Text::from(p.event_id()),
            user_id: Text::from(p.user_id()),
            amount_cents: amount(p),
            counts: [60_000, 600_000, 3_600_000, 86_400_000].map(|w| within(w).count() as u32),
            sums_cents: [60_000, 600_000, 3_600_000, 86_400_000].map(|w| within(w).map(|q| amount(q)).sum()),
            distinct_24h: [
                distinct(&|q| q.country.map(|c| Text::from(&*c))),
                distinct(&|q| device(q)),
                distinct(&|q| q.ip().map(Text::from)),
            ],
            prior_count: earlier.len() as u64,
            prior_sum_cents: earlier.iter().map(|q| amount(q)).sum(),
            prior_sum_sq: earlier.iter().map(|q| i128::from(amount(q)).pow(2)).sum(),
            since_prev_ms: previous.map(|q| p.event_ts - q.event_ts),
            travel: previous.and_then(|q| Some((location(q)?, location(p)?))),
            new_device: !earlier.is_empty() && device(p).is_some_and(|d| earlier.iter().all(|q| device(q) != Some(d.clone()))),
            new_country: !earlier.is_empty() && p.country.as_deref().is_some_and(|c| earlier.iter().all(|q| q.country.as_deref() != Some(c))),
            country_mismatch: matches!((p.billing_country.as_deref(), p.country.as_deref()), (Some(b), Some(c)) if b != c),
        });
    }
    out
}

/// Sessions of the valid events: by `session_id` where given, else by a 30-minute gap.
fn sessions(valid: &[&Event]) -> Vec<SessionRow> {
    // (user, Some(session_id)) groups shop sessions; (user, None) collects the rest.
    let mut groups: BTreeMap<(&str, Option<&str>), Vec<&Event>> = BTreeMap::new();
    for e in valid {
        groups.entry((e.user_id(), e.session_id())).or_default().push(e);
    }
    let mut out = Vec::new();
    for ((user, session_id), mut events) in groups {
        events.sort_by(|a, b| (a.event_ts, a.event_type, a.event_id()).cmp(&(b.event_ts, b.event_type, b.event_id())));
        match session_id {
            Some(id) => out.push(session_row(user, id.to_owned(), false, &events)),
            None => {
                let mut start = 0;
                for i in 1..=events.len() {
                    if i == events.len() || events[i].event_ts - events[i - 1].event_ts > 30 * 60 * 1000 {
                        let name = format!("derived:{}", events[start].event_ts);
                        out.push(session_row(user, name, true, &events[start..i]));
                        start = i;
                    }
                }
            }
        }
    }
    out
}

fn session_row(user: &str, session_id: String, derived: bool, events: &[&Event]) -> SessionRow {
    let count = |t: EventType| events.iter().filter(|e| e.event_type == t).count() as u64;
    let purchases: Vec<&&Event> = events.iter().filter(|e| e.event_type == EventType::Purchase).collect();
    let first_of = |f: &dyn Fn(&Event) -> Option<Dim>| events.iter().find_map(|e| f(e));
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
        derived,
        start_ts: events.iter().map(|e| e.event_ts).min().expect("sessions have events"),
        end_ts: events.iter().map(|e| e.event_ts).max().expect("sessions have events"),
        events: events.len() as u64,
        page_views: count(EventType::PageView),
        product_views: count(EventType::ProductView),
        products_viewed: events
            .iter()
            .filter(|e| e.event_type == EventType::ProductView)
            .filter_map(|e| e.product_id())
            .collect::<BTreeSet<_>>()
            .len() as u64,
        cart_adds: count(EventType::AddToCart),
        checkouts: count(EventType::Checkout),
        purchases: purchases.len() as u64,
        orders: purchases.iter().map(|e| e.order_id().unwrap_or(e.event_id())).collect::<BTreeSet<_>>().len() as u64,
        revenue_cents: purchases.iter().map(|e| e.price_cents.unwrap_or(0) * i64::from(e.quantity)).sum(),
        funnel_step: reached,
        country: first_of(&|e| e.country),
        device: first_of(&|e| e.device_os),
        utm_source: first_of(&|e| e.utm_source),
        category: first_of(&|e| e.category),
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
