//! Synthetic shop traffic: a deterministic, fast generator of JSON event records.
//!
//! The generator simulates a web shop on a *simulated clock*. The `k`-th record of a part
//! is delivered at `start_ms + k * 1000 * parts / events_per_sec` (exact integer
//! arithmetic), so the rate is fixed and the stream is reproducible. What is delivered at
//! each step is decided by a small discrete-event simulation: a priority queue of active
//! user sessions, each due for its next event at some clock time, and a second queue of
//! pending deliveries (late events, re-deliveries, corrections, refunds). At every step the
//! generator delivers the earliest due delivery, else advances the earliest due session,
//! else starts a new session for a user who is free to come back (or has never been
//! seen). Sessions therefore interleave by the thousand, like real shop traffic, and the
//! number of concurrent sessions settles where the start rate fills the steps that no
//! running session needs.
//!
//! A session walks the funnel: a landing `page_view`, a few `page_view`/`product_view`
//! events, then (about 40% of sessions) `add_to_cart` of viewed products, sometimes a
//! `remove_from_cart`, then (half of those) `checkout`, then (60% of those) one `purchase`
//! line per cart line sharing an `order_id`, and a `payment` of the order total with
//! card, IP, device and coordinates; 5% of orders get a back-office `refund` (no session,
//! no device) 35 minutes to 6 hours later. Gaps inside a session are seconds to minutes
//! (never more than [`MAX_SESSION_GAP_MS`]); a user comes back at least [`MIN_RETURN_GAP_MS`]
//! after the end of their previous session, so sessions derived by a 30-minute inactivity
//! rule split where the generated ones do. Users, products and their attributes
//! (country, city, devices, cards, prices, categories) are pure functions of the seed,
//! so every part agrees on them.
//!
//! On top of the clean traffic the generator injects the faults the engine must handle,
//! each at a configured rate (see [`GeneratorConfig`] for what each rate is a fraction of):
//! late deliveries, records too old for the retention horizon, byte-identical
//! re-deliveries, corrections and cancellations of earlier events, and malformed or
//! invalid records. Every [`Generated`] record says what the engine should do with it
//! ([`Expected`]), so tests can check decoding and the views against intent.
//!
//! Fraud: after a configured fraction of sessions (`fraud_rate`; see there for impossible
//! travel) the user's card falls into a fraudster's hands, and the generator delivers that incident's payments later,
//! each labelled with its [`FraudPattern`] in [`Generated::fraud`] (see the variants for
//! what each pattern does). Fraudulent payments are bare `payment` events, as from a
//! payment API, with the victim's user id and card. Honest traffic has look-alikes on
//! purpose: users spend a fraction of days (`travel_rate`) abroad with their phone, so
//! a billing country that differs from the payment's, or a new country, is not proof;
//! users switch between their two devices and cards, and carts vary tenfold in value.
//!
//! The user population is partitioned between parts (`user % parts == part`), each part has
//! its own random stream derived from `(seed, part)`, and event, session and order ids
//! carry the part, so parts can run on different workers and still form one consistent
//! stream. Records are written straight into byte buffers; the module does no I/O.
//!
//! Feasibility: a user who must pause 30 minutes between sessions makes only a few events
//! per hour, so a population of `users` can sustain about `users / 700` events per second
//! with every pause honoured (a session has about five events, and a user's cycle of a
//! session and a pause lasts about an hour). With fewer users (the defaults are such a
//! case) the generator keeps the rate and many concurrent sessions (half the users of the
//! part, or 25 seconds of traffic if that is fewer) by bringing back the user whose pause
//! ends soonest, even before it is over, and by moving session events forward;
//! [`GeneratorStats::early_returns`] counts such returns.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};

use crate::decode::{DecodeConfig, RawRecord, RejectReason};
use crate::event::EventType;
use crate::time::{civil_from_days, Millis};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// 2026-11-01T00:00:00Z, the default start of the simulated clock.
pub const DEFAULT_START_MS: Millis = 1_793_491_200_000;

/// The shortest pause between two sessions of one user (when the population allows it):
/// longer than the engine's 30-minute session gap.
pub const MIN_RETURN_GAP_MS: Millis = 31 * MINUTE_MS;

/// The longest pause between two consecutive events of one session.
pub const MAX_SESSION_GAP_MS: Millis = 20 * MINUTE_MS;

/// Mean of the random extra pause between sessions, on top of [`MIN_RETURN_GAP_MS`].
const RETURN_EXTRA_MEAN_MS: f64 = 30.0 * 60_000.0;

/// Products in the catalog.
const PRODUCTS: u32 = 20_000;
/// Most lines in one cart.
const MAX_LINES: usize = 5;
/// Share of sessions that put something in the cart (before attribution factors).
const CART_RATE: f64 = 0.40;
/// Share of carting sessions that start a checkout.
const CHECKOUT_RATE: f64 = 0.50;
/// Share of checkouts that end in a purchase.
const PURCHASE_RATE: f64 = 0.60;
/// Share of carting sessions that take something out of the cart.
const REMOVE_RATE: f64 = 0.20;
/// Share of non-carting sessions that leave after the landing page.
const BOUNCE_RATE: f64 = 0.30;
/// Share of orders refunded later.
const REFUND_RATE: f64 = 0.05;
/// Share of corrections of priced events that change the price (the rest cancel).
const REPRICE_RATE: f64 = 0.60;
/// How many events of one step may be deferred as late before one is delivered on time.
const MAX_DEFERRALS: u32 = 16;

/// What a generator simulates; see the module documentation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeneratorConfig {
    /// Seed of every random choice; users, products and prices depend on it alone.
    pub seed: u64,
    /// Simulated clock at the first record (ms since the epoch).
    pub start_ms: Millis,
    /// Simulated rate of the whole stream (all parts together), records per second.
    pub events_per_sec: u64,
    /// Size of the user population (all parts together).
    pub users: u64,
    /// Fraction of session events delivered late: they happen at the clock but arrive
    /// `U(1 ms, late_max_ms)` later, so that `event_ts = clock - delay` on arrival (order
    /// within the session is kept in event time, not in delivery).
    pub late_rate: f64,
    /// Longest delay of a late delivery (ms); at most half of `retention_ms` is used.
    pub late_max_ms: u64,
    /// Fraction of records whose `event_ts` is older than `retention_ms` (rejected as
    /// `too_late`): stray product views and purchases of random users, from a client
    /// that held them back for `retention_ms + U(1 ms, 1 day)`. They belong to no session.
    pub too_late_rate: f64,
    /// The retention horizon (ms); must match the decoder's [`DecodeConfig::retention_ms`].
    pub retention_ms: u64,
    /// Fraction of accepted first deliveries (of any event, on time or late) that are
    /// re-delivered with identical bytes 50 ms to 2 min later (at most `retention_ms / 8`).
    pub duplicate_rate: f64,
    /// Fraction of original events (session events and refunds, not corrections) that
    /// are corrected or cancelled 1 s to 10 min (at most `retention_ms / 8`) after their
    /// first delivery. An event with a price is corrected in 60% of the cases: the same
    /// event with a new `event_id`, `retracts` = the old id, the same `event_ts` and a
    /// price scaled by `U(0.5, 1.5)`. Otherwise it is cancelled: a bare `retraction` of
    /// the same user naming the old id, dated when it is delivered.
    pub correction_rate: f64,
    /// Fraction of records that are malformed or invalid, stray events of random users
    /// spoiled as follows: 25% truncated JSON and 15% non-JSON garbage or two records
    /// glued together (`malformed`), 15% `user_id` absent or empty (`missing_field`), 15%
    /// an unknown `event_type`, 15% a negative price (`bad_amount`), 15% a wrongly typed
    /// field: price or quantity as a string, `event_ts` as a number, `user_id` as an
    /// object, `device.mobile` as a string (`bad_type`).
    pub malformed_rate: f64,
    /// Fraction of sessions whose events carry a `session_id` (the engine derives the
    /// others).
    pub session_id_rate: f64,
    /// Fraction of sessions after which a fraud incident hits the user's card: card
    /// testing, account takeover or an amount spike, each as likely; and, as well, twice
    /// this fraction of the sessions that pay is followed by impossible travel (see
    /// [`FraudPattern`]).
    pub fraud_rate: f64,
    /// Fraction of days a user spends abroad, in one city of another country, using their
    /// phone there (honest traffic whose payments come from another country than the
    /// card's billing country).
    pub travel_rate: f64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            seed: 42,
            start_ms: DEFAULT_START_MS,
            events_per_sec: 10_000,
            users: 100_000,
            late_rate: 0.02,
            late_max_ms: 10 * 60_000,
            too_late_rate: 0.001,
            retention_ms: 7 * 86_400_000,
            duplicate_rate: 0.01,
            correction_rate: 0.005,
            malformed_rate: 0.005,
            session_id_rate: 0.5,
            fraud_rate: 0.002,
            travel_rate: 0.02,
        }
    }
}

impl GeneratorConfig {
    /// The defaults with every fault and lateness rate at zero, and no fraud: pure, valid,
    /// honest traffic.
    pub fn clean() -> Self {
        GeneratorConfig {
            fraud_rate: 0.0,
            late_rate: 0.0,
            too_late_rate: 0.0,
            duplicate_rate: 0.0,
            correction_rate: 0.0,
            malformed_rate: 0.0,
            ..GeneratorConfig::default()
        }
    }

    /// The decoder settings that match this configuration (its retention horizon).
    pub fn decode_config(&self) -> DecodeConfig {
        DecodeConfig { retention_ms: self.retention_ms, ..DecodeConfig::default() }
    }

    /// The simulated clock at the `k`-th record of a part when the stream has `parts` parts.
    pub fn clock_ms(&self, k: u64, parts: usize) -> Millis {
        let step = u128::from(k) * 1000 * parts as u128 / u128::from(self.events_per_sec.max(1));
        self.start_ms.saturating_add(i64::try_from(step).unwrap_or(i64::MAX))
    }
}

/// What the engine should do with a generated record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expected {
    /// The decoder accepts it and it is the first delivery of its `event_id`.
    Accepted,
    /// The decoder accepts it but it repeats an earlier delivery byte for byte, so the
    /// views reject it as [`RejectReason::Duplicate`].
    Duplicate,
    /// The decoder rejects it for this reason.
    Rejected(RejectReason),
}

/// A fraud pattern the generator injects: the label of a fraudulent payment. Each
/// incident starts at the end of a session of the victim (for impossible travel, a
/// session that ended with a payment) and uses the card that session used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FraudPattern {
    /// A stolen card checked with 4 to 15 small payments ($1.00 to $9.99), 2 to 20 s
    /// apart, from one new device and IP (abroad 60% of the time), 1 min to 3 h later;
    /// half the time followed by a cash-out of 5 to 20 typical orders 1 to 15 min after.
    CardTesting,
    /// One payment of a typical order from a new device in a country at least 3,000 km
    /// from where the victim just paid, 2 to 60 minutes after that payment.
    ImpossibleTravel,
    /// Account takeover: a new device in the victim's country (possibly another city)
    /// pays 3 to 10 typical orders, once or twice within 10 minutes, 10 min to 6 h later.
    AccountTakeover,
    /// The victim's own device and address pay 8 to 40 typical orders, 10 min to 24 h
    /// later (malware, or a family member).
    AmountSpike,
}

impl FraudPattern {
    /// Every pattern.
    pub const ALL: [FraudPattern; 4] =
        [FraudPattern::CardTesting, FraudPattern::ImpossibleTravel, FraudPattern::AccountTakeover, FraudPattern::AmountSpike];

    /// The pattern's name (`card_testing`, ...).
    pub fn name(self) -> &'static str {
        match self {
            FraudPattern::CardTesting => "card_testing",
            FraudPattern::ImpossibleTravel => "impossible_travel",
            FraudPattern::AccountTakeover => "account_takeover",
            FraudPattern::AmountSpike => "amount_spike",
        }
    }
}

/// One generated record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    /// The JSON record; its position is `k * parts + part` for the `k`-th record of a part.
    pub record: RawRecord,
    /// The simulated clock when the record is delivered (ms since the epoch).
    pub ingest_ms: u64,
    /// What the engine should do with it. Time checks are made at `ingest_ms`; the delays
    /// of late deliveries, corrections and re-deliveries add up to at most three quarters
    /// of the retention period, so rounding `ingest_ms` up to a tick does not change them.
    pub expected: Expected,
    /// For the first delivery of a fraudulent payment, its pattern.
    pub fraud: Option<FraudPattern>,
}

/// Counters of a generator's simulation so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeneratorStats {
    /// Records produced.
    pub records: u64,
    /// Sessions started.
    pub sessions_started: u64,
    /// Sessions running now.
    pub active_sessions: u64,
    /// Sessions started for a user whose pause was not over (the population is too small
    /// for the rate).
    pub early_returns: u64,
    /// Session events delivered before they were due (all users are busy).
    pub early_advances: u64,
    /// Deliveries waiting (late events, re-deliveries, corrections, refunds, fraud).
    pub pending_deliveries: u64,
    /// Fraud incidents started (see [`FraudPattern`]); their payments come later.
    pub fraud_incidents: u64,
}

/// A deterministic, partitioned traffic generator; see the module documentation.
pub struct Generator {
    config: GeneratorConfig,
    part: u64,
    parts: u64,
    rng: Rng,
    catalog: Catalog,
    writer: Writer,
    /// Records produced so far (the next record's `k`).
    k: u64,
    /// The simulated clock of the record being produced.
    clock: Millis,
    retention: i64,
    late_max: i64,
    duplicate_max: i64,
    correction_max: i64,
    local_users: u64,
    fresh_next: u64,
    fresh_stride: u64,
    fresh_offset: u64,
    /// Users between sessions: (time they may come back, local index).
    cooldown: BinaryHeap<Reverse<(Millis, u64)>>,
    sessions: Vec<Session>,
    free_sessions: Vec<u32>,
    /// Running sessions by the time of their next event (ties by slot).
    due_sessions: BinaryHeap<Reverse<(Millis, u32)>>,
    deliveries: Vec<Delivery>,
    free_deliveries: Vec<u32>,
    due_deliveries: BinaryHeap<Reverse<(Millis, u64, u32)>>,
    seq: u64,
    active_target: usize,
    /// The fraud label of the record being produced (set by its first delivery).
    label: Option<FraudPattern>,
    next_event: u64,
    next_session: u64,
    next_order: u64,
    stats: GeneratorStats,
}

impl Generator {
    /// A generator for part `part` of `parts`: it simulates the users `u` with
    /// `u % parts == part` at `events_per_sec / parts` records per second.
    ///
    /// # Panics
    /// If `parts == 0`, `part >= parts`, `events_per_sec == 0`, `users < parts`, a rate is
    /// not within `0..=1` (or `malformed_rate + too_late_rate > 1`), `retention_ms < 1000`,
    /// or the clock would leave the years the decoder accepts (1990..2100, counting one
    /// retention period and a day before `start_ms`).
    pub fn new(config: GeneratorConfig, part: usize, parts: usize) -> Self {
        assert!(parts >= 1 && part < parts, "part {part} of {parts} parts");
        assert!(config.events_per_sec >= 1, "events_per_sec must be positive");
        assert!(config.users >= parts as u64, "every part needs a user: {} users, {parts} parts", config.users);
        for (name, rate) in [
            ("late_rate", config.late_rate),
            ("too_late_rate", config.too_late_rate),
            ("duplicate_rate", config.duplicate_rate),
            ("correction_rate", config.correction_rate),
            ("malformed_rate", config.malformed_rate),
            ("session_id_rate", config.session_id_rate),
            ("fraud_rate", config.fraud_rate),
            ("travel_rate", config.travel_rate),
        ] {
            assert!((0.0..=1.0).contains(&rate), "{name} {rate} is not within 0..=1");
        }
        assert!(config.malformed_rate + config.too_late_rate <= 1.0, "malformed_rate + too_late_rate exceeds 1");
        assert!(config.retention_ms >= 1000, "retention_ms must be at least 1000");
        let retention = config.retention_ms.min(100 * 365 * DAY_MS as u64) as i64;
        let limits = DecodeConfig::default();
        assert!(
            config.start_ms.saturating_sub(retention + DAY_MS) >= limits.min_event_ts
                && config.start_ms < limits.max_event_ts - 365 * DAY_MS,
            "start_ms {} is too close to the years the decoder accepts",
            config.start_ms
        );
        let (part, parts) = (part as u64, parts as u64);
        let local_users = (config.users - 1 - part) / parts + 1;
        let mut rng = Rng::new(hash2(config.seed, part ^ 0x7061_7274));
        let fresh_stride = coprime_stride(local_users, rng.next());
        let fresh_offset = rng.below(local_users);
        let rate = config.events_per_sec as f64 / parts as f64;
        let active_target = ((rate * 25.0) as u64).clamp(1, (local_users / 2).max(1)) as usize;
        let mut tag = Vec::new();
        push_u64(&mut tag, part);
        tag.push(b'_');
        Generator {
            catalog: Catalog::new(config.seed),
            writer: Writer { buf: Vec::with_capacity(1024), tag, day: i64::MIN, date: [0; 10] },
            k: 0,
            clock: config.start_ms,
            retention,
            late_max: (config.late_max_ms.min(i64::MAX as u64) as i64).clamp(1, retention / 2),
            duplicate_max: (2 * MINUTE_MS).min(retention / 8),
            correction_max: (10 * MINUTE_MS).min(retention / 8),
            local_users,
            fresh_next: 0,
            fresh_stride,
            fresh_offset,
            cooldown: BinaryHeap::new(),
            sessions: Vec::new(),
            free_sessions: Vec::new(),
            due_sessions: BinaryHeap::new(),
            deliveries: Vec::new(),
            free_deliveries: Vec::new(),
            due_deliveries: BinaryHeap::new(),
            seq: 0,
            active_target,
            label: None,
            next_event: 0,
            next_session: 0,
            next_order: 0,
            stats: GeneratorStats::default(),
            rng,
            config,
            part,
            parts,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// Counters of the simulation so far.
    pub fn stats(&self) -> GeneratorStats {
        GeneratorStats {
            active_sessions: self.due_sessions.len() as u64,
            pending_deliveries: self.due_deliveries.len() as u64,
            ..self.stats
        }
    }

    /// The next record of this part.
    pub fn next_record(&mut self) -> Generated {
        self.clock = self.config.clock_ms(self.k, self.parts as usize);
        let position = self.k * self.parts + self.part;
        let (bytes, expected) = self.produce();
        self.k += 1;
        self.stats.records += 1;
        let fraud = self.label.take();
        Generated { record: RawRecord::json(position, bytes), ingest_ms: self.clock as u64, expected, fraud }
    }

    /// Appends the next `n` records to `out`.
    pub fn fill(&mut self, out: &mut Vec<Generated>, n: usize) {
        out.reserve(n);
        for _ in 0..n {
            out.push(self.next_record());
        }
    }

    fn produce(&mut self) -> (Vec<u8>, Expected) {
        let r = self.rng.f64();
        if r < self.config.malformed_rate {
            return self.malformed();
        }
        if r < self.config.malformed_rate + self.config.too_late_rate {
            return self.too_late();
        }
        let mut deferred = 0;
        loop {
            if let Some(&Reverse((due, _, slot))) = self.due_deliveries.peek() {
                if due <= self.clock {
                    self.due_deliveries.pop();
                    return self.deliver(slot);
                }
            }
            let (slot, on_top) = self.pick_session();
            if let Some(out) = self.advance(slot, on_top, deferred < MAX_DEFERRALS) {
                return out;
            }
            deferred += 1;
        }
    }

    /// The session to advance now: a due one, else a new one. The flag says whether it
    /// is the top of `due_sessions` (left there, for [`Self::advance`] to move).
    fn pick_session(&mut self) -> (u32, bool) {
        let top = self.due_sessions.peek().map(|&Reverse((due, slot))| (due, slot));
        if let Some((due, slot)) = top {
            if due <= self.clock {
                return (slot, true);
            }
        }
        if let Some(&Reverse((back, user))) = self.cooldown.peek() {
            if back <= self.clock {
                self.cooldown.pop();
                return (self.start_session(user), false);
            }
        }
        if self.fresh_next < self.local_users {
            let user = (self.fresh_next * self.fresh_stride + self.fresh_offset) % self.local_users;
            self.fresh_next += 1;
            return (self.start_session(user), false);
        }
        // Saturated: every user is in a session or pausing.
        if self.due_sessions.len() < self.active_target || top.is_none() {
            if let Some(Reverse((_, user))) = self.cooldown.pop() {
                self.stats.early_returns += 1;
                return (self.start_session(user), false);
            }
        }
        let (_, slot) = top.expect("a part without pausing users has running sessions");
        self.stats.early_advances += 1;
        (slot, true)
    }

    fn start_session(&mut self, local: u64) -> u32 {
        let user = local * self.parts + self.part;
        let profile = Profile::of(self.config.seed, user);
        let rng = &mut self.rng;
        // A user abroad stays in one city of one country for the whole (UTC) day.
        let trip = hash2(self.config.seed ^ 0x7472_6970, hash2(user, self.clock.div_euclid(DAY_MS) as u64));
        let abroad = ((trip >> 11) as f64 / (1u64 << 53) as f64) < self.config.travel_rate;
        // Abroad, users carry their phone.
        let device = if abroad { usize::from(!OSES[usize::from(profile.os[0])].1) } else { usize::from(!rng.chance(0.85)) };
        let os = profile.os[device];
        let mobile = OSES[usize::from(os)].1;
        // Phones change address with every session; computers keep their home address.
        let (country, city, ip, (lat_e6, lon_e6)) = if abroad {
            let country = other_country(profile.country, trip);
            let cities = COUNTRIES[usize::from(country)].cities;
            let city = ((trip >> 32) % cities.len() as u64) as u8;
            let (_, lat, lon) = cities[usize::from(city)];
            (country, city, random_ip(rng, country), (lat, lon))
        } else if mobile {
            (profile.country, profile.city, random_ip(rng, profile.country), (profile.lat_e6, profile.lon_e6))
        } else {
            (profile.country, profile.city, profile.home_ip, (profile.lat_e6, profile.lon_e6))
        };
        let utm = weighted(UTMS.iter().map(|u| u.weight), rng.below(100)) as u8;
        let campaigns = UTMS[usize::from(utm)].campaigns.len() as u64;
        let campaign = if campaigns == 0 { 0 } else { rng.below(campaigns) as u8 };
        let ctx = Ctx { country, city, os, utm, campaign, device: profile.device[device], ip, lat_e6, lon_e6 };
        let session = rng.chance(self.config.session_id_rate).then(|| {
            self.next_session += 1;
            self.next_session - 1
        });
        let focus = weighted(CATEGORIES.iter().map(|c| c.weight), rng.below(CATEGORY_WEIGHT)) as u8;
        let factor = UTMS[usize::from(utm)].factor * if mobile { 0.9 } else { 1.2 };
        let target_lines = if rng.chance((CART_RATE * factor).min(0.95)) { 1 + rng.geometric(0.4, MAX_LINES as u32 - 1) } else { 0 };
        let bounce = target_lines == 0 && rng.chance(BOUNCE_RATE);
        let views = if bounce { 0 } else { 1 + rng.geometric(0.7, 30) };
        let card = profile.card[usize::from(!rng.chance(0.92))];
        // Impossible travel is drawn at the payment (it needs one); the others here.
        const AFTER_ANY_SESSION: [FraudPattern; 3] = [FraudPattern::CardTesting, FraudPattern::AccountTakeover, FraudPattern::AmountSpike];
        let incident = (self.config.fraud_rate > 0.0 && rng.chance(self.config.fraud_rate))
            .then(|| AFTER_ANY_SESSION[rng.below(AFTER_ANY_SESSION.len() as u64) as usize]);
        let state = Session {
            local,
            user,
            session,
            ctx,
            card,
            focus,
            phase: Phase::Landing,
            left: views as u8,
            last_product: 0,
            lines: [(0, 0); MAX_LINES],
            n_lines: 0,
            adds: 0,
            target_adds: target_lines as u8,
            line: 0,
            will_remove: rng.chance(REMOVE_RATE),
            will_checkout: rng.chance(CHECKOUT_RATE),
            will_purchase: rng.chance(PURCHASE_RATE),
            order: 0,
            billing: profile.country,
            incident,
        };
        self.stats.sessions_started += 1;
        match self.free_sessions.pop() {
            Some(slot) => {
                self.sessions[slot as usize] = state;
                slot
            }
            None => {
                self.sessions.push(state);
                (self.sessions.len() - 1) as u32
            }
        }
    }

    /// Emits the next event of a session; `None` when the event was deferred as late.
    /// `on_top`: the session is the top of `due_sessions` (else it is new and not queued).
    fn advance(&mut self, slot: u32, on_top: bool, allow_late: bool) -> Option<(Vec<u8>, Expected)> {
        let mut s = self.sessions[slot as usize];
        let (ev, gap) = self.session_event(&mut s);
        match gap {
            Some(gap) => {
                self.sessions[slot as usize] = s;
                let entry = Reverse((self.clock + gap, slot));
                if on_top {
                    // One sift instead of a pop and a push.
                    *self.due_sessions.peek_mut().expect("the session is queued") = entry;
                } else {
                    self.due_sessions.push(entry);
                }
            }
            None => {
                if on_top {
                    self.due_sessions.pop();
                }
                if let Some(pattern) = s.incident {
                    self.fraud_incident(&s, pattern);
                }
                if s.phase == Phase::Payment && self.config.fraud_rate > 0.0 && self.rng.chance((2.0 * self.config.fraud_rate).min(1.0)) {
                    self.fraud_incident(&s, FraudPattern::ImpossibleTravel);
                }
                self.free_sessions.push(slot);
                let extra = self.rng.exponential(RETURN_EXTRA_MEAN_MS) as i64;
                self.cooldown.push(Reverse((self.clock + MIN_RETURN_GAP_MS + extra, s.local)));
            }
        }
        if allow_late && self.rng.chance(self.config.late_rate) {
            let delay = self.rng.range(1, self.late_max);
            self.schedule(self.clock + delay, Delivery::Emit(ev));
            return None;
        }
        Some(self.first_delivery(ev))
    }

    fn next_id(&mut self) -> u64 {
        self.next_event += 1;
        self.next_event - 1
    }

    fn session_ev(&mut self, s: &Session, event_type: EventType) -> Ev {
        let mut ev = Ev::bare(self.next_id(), event_type, self.clock, s.user);
        ev.session = s.session;
        ev.ctx = s.ctx;
        ev.ctx_mode = CtxMode::Full;
        ev.origin = true;
        ev
    }

    fn with_product(&self, ev: &mut Ev, product: u32, qty: u32) {
        ev.product = Some(product);
        ev.category = Some(self.catalog.category[product as usize]);
        ev.price = Some(i64::from(self.catalog.price[product as usize]));
        ev.qty = qty;
    }

    /// The next event of a session and the gap to the one after it (`None`: it ends).
    fn session_event(&mut self, s: &mut Session) -> (Ev, Option<i64>) {
        match s.phase {
            Phase::Landing => {
                let mut ev = self.session_ev(s, EventType::PageView);
                ev.ip = true;
                if self.rng.chance(0.5) {
                    ev.category = Some(s.focus);
                }
                if s.left == 0 {
                    return (ev, None);
                }
                s.phase = Phase::Browse;
                (ev, Some(self.rng.gap(12_000.0)))
            }
            Phase::Browse => {
                let heading_to_cart = s.adds < s.target_adds;
                let ev = if (s.left == 1 && heading_to_cart) || self.rng.chance(0.75) {
                    let product = if self.rng.chance(0.7) {
                        self.catalog.popular_in(&mut self.rng, s.focus)
                    } else {
                        self.catalog.popular(&mut self.rng)
                    };
                    s.last_product = product;
                    let mut ev = self.session_ev(s, EventType::ProductView);
                    self.with_product(&mut ev, product, 1);
                    ev
                } else {
                    let mut ev = self.session_ev(s, EventType::PageView);
                    ev.category = Some(if self.rng.chance(0.6) { s.focus } else { self.rng.below(CATEGORIES.len() as u64) as u8 });
                    ev
                };
                s.left = s.left.saturating_sub(1);
                if s.left > 0 {
                    (ev, Some(self.rng.gap(15_000.0)))
                } else if heading_to_cart {
                    s.phase = Phase::AddToCart;
                    (ev, Some(self.rng.gap(20_000.0)))
                } else {
                    (ev, None)
                }
            }
            Phase::AddToCart => {
                let product = s.last_product;
                let qty = match self.rng.below(100) {
                    0..85 => 1,
                    85..95 => 2,
                    _ => 3,
                };
                let mut ev = self.session_ev(s, EventType::AddToCart);
                self.with_product(&mut ev, product, qty);
                let n = usize::from(s.n_lines);
                match s.lines[..n].iter_mut().find(|(p, _)| *p == product) {
                    Some(line) => line.1 = line.1.saturating_add(qty as u8),
                    None => {
                        s.lines[n] = (product, qty as u8);
                        s.n_lines += 1;
                    }
                }
                s.adds += 1;
                if s.adds < s.target_adds {
                    s.phase = Phase::Browse;
                    s.left = 1 + self.rng.below(3) as u8;
                    (ev, Some(self.rng.gap(15_000.0)))
                } else {
                    let gap = self.after_cart(s);
                    (ev, gap)
                }
            }
            Phase::Remove => {
                let i = self.rng.below(u64::from(s.n_lines)) as usize;
                let (product, qty) = s.lines[i];
                let mut ev = self.session_ev(s, EventType::RemoveFromCart);
                self.with_product(&mut ev, product, u32::from(qty));
                s.lines.swap(i, usize::from(s.n_lines) - 1);
                s.n_lines -= 1;
                if s.n_lines > 0 && s.will_checkout {
                    s.phase = Phase::Checkout;
                    (ev, Some(self.rng.gap(40_000.0)))
                } else {
                    (ev, None)
                }
            }
            Phase::Checkout => {
                s.order = self.next_order;
                self.next_order += 1;
                let mut ev = self.session_ev(s, EventType::Checkout);
                ev.order = Some(s.order);
                if s.will_purchase {
                    s.phase = Phase::Purchase;
                    s.line = 0;
                    (ev, Some(self.rng.gap(60_000.0)))
                } else {
                    (ev, None)
                }
            }
            Phase::Purchase => {
                let (product, qty) = s.lines[usize::from(s.line)];
                let mut ev = self.session_ev(s, EventType::Purchase);
                self.with_product(&mut ev, product, u32::from(qty));
                ev.order = Some(s.order);
                s.line += 1;
                if s.line < s.n_lines {
                    (ev, Some(self.rng.range(0, 300)))
                } else {
                    s.phase = Phase::Payment;
                    (ev, Some(self.rng.range(300, 5000)))
                }
            }
            Phase::Payment => {
                let n = usize::from(s.n_lines);
                let mut amounts = [0i64; MAX_LINES];
                for (amount, &(product, qty)) in amounts.iter_mut().zip(&s.lines[..n]) {
                    *amount = i64::from(self.catalog.price[product as usize]) * i64::from(qty);
                }
                let total: i64 = amounts.iter().sum();
                let mut ev = self.session_ev(s, EventType::Payment);
                ev.price = Some(total);
                ev.order = Some(s.order);
                ev.card = Some(s.card);
                // Cards are billed to the user's home country.
                ev.billing = Some(s.billing);
                ev.ip = true;
                ev.latlon = true;
                if self.rng.chance(REFUND_RATE) {
                    let refunded = if n == 1 || self.rng.chance(0.7) { total } else { amounts[self.rng.below(n as u64) as usize] };
                    let due = self.clock + self.rng.range(35 * MINUTE_MS, 6 * HOUR_MS);
                    let mut refund = Ev::bare(self.next_id(), EventType::Refund, due, s.user);
                    refund.ctx = s.ctx;
                    refund.ctx_mode = CtxMode::Geo;
                    refund.price = Some(refunded);
                    refund.order = Some(s.order);
                    refund.card = Some(s.card);
                    refund.origin = true;
                    self.schedule(due, Delivery::Emit(refund));
                }
                (ev, None)
            }
        }
    }

    /// Schedules the payments of a fraud incident on the card of session `s`, which has
    /// just ended (see [`FraudPattern`]).
    fn fraud_incident(&mut self, s: &Session, pattern: FraudPattern) {
        self.stats.fraud_incidents += 1;
        let rng = &mut self.rng;
        let home = s.ctx;
        // A fraudster's device: a new id, any system.
        let stranger = |rng: &mut Rng, country: u8| {
            let (city, ip, (lat_e6, lon_e6)) = somewhere_in(rng, country);
            let os = rng.below(OSES.len() as u64) as u8;
            Ctx { country, city, os, utm: 0, campaign: 0, device: rng.next(), ip, lat_e6, lon_e6 }
        };
        let mut payments: Vec<(Millis, Ctx, i64)> = Vec::new();
        match pattern {
            FraudPattern::CardTesting => {
                let country = if rng.chance(0.6) { other_country(s.billing, rng.below(COUNTRIES.len() as u64 - 1)) } else { s.billing };
                let ctx = stranger(rng, country);
                let mut at = self.clock + rng.range(MINUTE_MS, 3 * HOUR_MS);
                for _ in 0..rng.range(4, 15) {
                    payments.push((at, ctx, rng.range(100, 999)));
                    at += rng.range(2_000, 20_000);
                }
                if rng.chance(0.5) {
                    let amount = typical_order(rng, &self.catalog) * rng.range(5, 20);
                    payments.push((at + rng.range(MINUTE_MS, 15 * MINUTE_MS), ctx, amount));
                }
            }
            FraudPattern::ImpossibleTravel => {
                let here = (home.lat_e6, home.lon_e6);
                let far: Vec<u8> = (0..COUNTRIES.len() as u8)
                    .filter(|&c| COUNTRIES[usize::from(c)].cities.iter().all(|&(_, lat, lon)| crate::fraud::haversine_km(here, (lat, lon)) >= 3_000.0))
                    .collect();
                let Some(&country) = far.get(rng.below(far.len() as u64) as usize) else { return };
                let ctx = stranger(rng, country);
                payments.push((self.clock + rng.range(2 * MINUTE_MS, HOUR_MS), ctx, typical_order(rng, &self.catalog)));
            }
            FraudPattern::AccountTakeover => {
                let ctx = stranger(rng, s.billing);
                let at = self.clock + rng.range(10 * MINUTE_MS, 6 * HOUR_MS);
                payments.push((at, ctx, typical_order(rng, &self.catalog) * rng.range(3, 10)));
                if rng.chance(0.5) {
                    payments.push((at + rng.range(MINUTE_MS, 10 * MINUTE_MS), ctx, typical_order(rng, &self.catalog) * rng.range(3, 10)));
                }
            }
            FraudPattern::AmountSpike => {
                let at = self.clock + rng.range(10 * MINUTE_MS, 24 * HOUR_MS);
                payments.push((at, home, typical_order(rng, &self.catalog) * rng.range(8, 40)));
            }
        }
        for (at, ctx, amount) in payments {
            let mut ev = Ev::bare(self.next_id(), EventType::Payment, at, s.user);
            ev.ctx = ctx;
            ev.ctx_mode = CtxMode::Full;
            ev.price = Some(amount);
            ev.order = Some(self.next_order);
            self.next_order += 1;
            ev.card = Some(s.card);
            ev.billing = Some(s.billing);
            ev.ip = true;
            ev.latlon = true;
            ev.fraud = Some(pattern);
            self.schedule(at, Delivery::Emit(ev));
        }
    }

    fn after_cart(&mut self, s: &mut Session) -> Option<i64> {
        if s.will_remove && (s.n_lines >= 2 || !s.will_checkout) {
            s.phase = Phase::Remove;
            Some(self.rng.gap(25_000.0))
        } else if s.will_checkout {
            s.phase = Phase::Checkout;
            Some(self.rng.gap(40_000.0))
        } else {
            None
        }
    }

    fn schedule(&mut self, due: Millis, delivery: Delivery) {
        let slot = match self.free_deliveries.pop() {
            Some(slot) => {
                self.deliveries[slot as usize] = delivery;
                slot
            }
            None => {
                self.deliveries.push(delivery);
                (self.deliveries.len() - 1) as u32
            }
        };
        self.seq += 1;
        self.due_deliveries.push(Reverse((due, self.seq, slot)));
    }

    fn deliver(&mut self, slot: u32) -> (Vec<u8>, Expected) {
        let delivery = std::mem::replace(&mut self.deliveries[slot as usize], Delivery::Dup(Vec::new(), 0));
        self.free_deliveries.push(slot);
        match delivery {
            Delivery::Emit(ev) => self.first_delivery(ev),
            Delivery::Dup(bytes, ts) => {
                let expected = self.expected_at(ts, Expected::Duplicate);
                (bytes, expected)
            }
        }
    }

    /// What the decoder says about an otherwise valid event with this time, delivered now.
    fn expected_at(&self, ts: Millis, valid: Expected) -> Expected {
        if ts.saturating_add(self.retention) <= self.clock {
            Expected::Rejected(RejectReason::TooLate)
        } else {
            valid
        }
    }

    /// Renders the first delivery of an event and schedules its re-delivery and
    /// correction, if any.
    fn first_delivery(&mut self, ev: Ev) -> (Vec<u8>, Expected) {
        let bytes = self.writer.render(&ev, Bad::None).to_vec();
        let expected = self.expected_at(ev.ts, Expected::Accepted);
        self.label = ev.fraud.filter(|_| expected == Expected::Accepted);
        if expected == Expected::Accepted {
            if self.rng.chance(self.config.duplicate_rate) {
                let due = self.clock + self.rng.range(50, self.duplicate_max);
                self.schedule(due, Delivery::Dup(bytes.clone(), ev.ts));
            }
            if ev.origin && self.rng.chance(self.config.correction_rate) {
                let due = self.clock + self.rng.range(1000.min(self.correction_max), self.correction_max);
                let id = self.next_id();
                let fix = match ev.price {
                    Some(price) if self.rng.chance(REPRICE_RATE) => {
                        let factor = 0.5 + self.rng.f64();
                        let mut new_price = ((price as f64 * factor).round() as i64).max(1);
                        if new_price == price {
                            new_price += 1;
                        }
                        Ev { id, retracts: Some(ev.id), origin: false, price: Some(new_price), ..ev }
                    }
                    _ => {
                        let mut cancel = Ev::bare(id, EventType::Retraction, due, ev.user);
                        cancel.retracts = Some(ev.id);
                        cancel
                    }
                };
                self.schedule(due, Delivery::Emit(fix));
            }
        }
        (bytes, expected)
    }

    /// A product or purchase event of a random user of this part, outside any session.
    fn stray_event(&mut self, ts: Millis) -> Ev {
        let local = self.rng.below(self.local_users);
        let user = local * self.parts + self.part;
        let profile = Profile::of(self.config.seed, user);
        let event_type = if self.rng.chance(0.8) { EventType::ProductView } else { EventType::Purchase };
        let mut ev = Ev::bare(self.next_id(), event_type, ts, user);
        ev.ctx = Ctx {
            country: profile.country,
            city: profile.city,
            os: profile.os[0],
            utm: 0,
            campaign: 0,
            device: profile.device[0],
            ip: profile.home_ip,
            lat_e6: profile.lat_e6,
            lon_e6: profile.lon_e6,
        };
        ev.ctx_mode = CtxMode::Full;
        let product = self.catalog.popular(&mut self.rng);
        self.with_product(&mut ev, product, 1);
        ev
    }

    fn too_late(&mut self) -> (Vec<u8>, Expected) {
        let age = self.retention + self.rng.range(1, DAY_MS);
        let ev = self.stray_event(self.clock - age);
        (self.writer.render(&ev, Bad::None).to_vec(), Expected::Rejected(RejectReason::TooLate))
    }

    fn malformed(&mut self) -> (Vec<u8>, Expected) {
        let ev = self.stray_event(self.clock);
        let choice = self.rng.below(100);
        let rng = &mut self.rng;
        let writer = &mut self.writer;
        let (bytes, reason) = match choice {
            // A record cut short, as by a crashed client or a full buffer.
            0..25 => {
                let full = writer.render(&ev, Bad::None);
                let cut = rng.below(full.len() as u64) as usize;
                (full[..cut].to_vec(), RejectReason::Malformed)
            }
            // Not JSON at all, or two records glued together.
            25..40 => {
                let bytes = match rng.below(5) {
                    0 => b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>".to_vec(),
                    1 => {
                        let mut b = vec![0xff, 0xfe, 0x00];
                        b.extend((0..8 + rng.below(32)).map(|_| rng.next() as u8));
                        b
                    }
                    2 => {
                        let mut b = writer.render(&ev, Bad::None).to_vec();
                        b.extend_from_slice(&b.clone());
                        b
                    }
                    3 => b"ERROR upstream timed out (110: Connection timed out) while reading response header".to_vec(),
                    _ => b"event_type=page_view&user_id=u1&ts=now".to_vec(),
                };
                (bytes, RejectReason::Malformed)
            }
            40..55 => {
                let bad = if rng.chance(0.7) { Bad::DropUser } else { Bad::EmptyUser };
                (writer.render(&ev, bad).to_vec(), RejectReason::MissingField)
            }
            55..70 => {
                let name = UNKNOWN_TYPES[rng.below(UNKNOWN_TYPES.len() as u64) as usize];
                (writer.render(&ev, Bad::UnknownType(name)).to_vec(), RejectReason::UnknownEventType)
            }
            70..85 => (writer.render(&ev, Bad::NegativePrice).to_vec(), RejectReason::BadAmount),
            _ => {
                let bad = match rng.below(5) {
                    0 => Bad::PriceAsString,
                    1 => Bad::QuantityAsString,
                    2 => Bad::TsAsNumber,
                    3 => Bad::UserAsObject,
                    _ => Bad::MobileAsString,
                };
                (writer.render(&ev, bad).to_vec(), RejectReason::BadType)
            }
        };
        (bytes, Expected::Rejected(reason))
    }
}

impl Iterator for Generator {
    type Item = Generated;

    fn next(&mut self) -> Option<Generated> {
        Some(self.next_record())
    }
}

/// The country other than `home` that `draw` picks (any value; each other country is
/// picked by an equal share of `0..COUNTRIES.len() - 1`).
fn other_country(home: u8, draw: u64) -> u8 {
    let n = COUNTRIES.len() as u64;
    ((u64::from(home) + 1 + draw % (n - 1)) % n) as u8
}

/// A random IP address of a country.
fn random_ip(rng: &mut Rng, country: u8) -> u32 {
    let octets = COUNTRIES[usize::from(country)].ip_octets;
    let octet = octets[rng.below(octets.len() as u64) as usize];
    (u32::from(octet) << 24) | (rng.next() as u32 & 0x00ff_ff00) | (1 + rng.below(254) as u32)
}

/// A random city of a country, an address there, and a location near the city centre
/// (micro-degrees).
fn somewhere_in(rng: &mut Rng, country: u8) -> (u8, u32, (i32, i32)) {
    let cities = COUNTRIES[usize::from(country)].cities;
    let city = rng.below(cities.len() as u64) as u8;
    let (_, lat, lon) = cities[usize::from(city)];
    let jitter = |rng: &mut Rng| rng.range(-50_000, 50_000) as i32;
    let location = (lat + jitter(rng), lon + jitter(rng));
    (city, random_ip(rng, country), location)
}

/// The value of a typical order (1 to 3 popular products), cents.
fn typical_order(rng: &mut Rng, catalog: &Catalog) -> i64 {
    (0..rng.range(1, 3)).map(|_| i64::from(catalog.price[catalog.popular(rng) as usize])).sum()
}

// ---------------------------------------------------------------------------------------
// Simulation state

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Landing,
    Browse,
    AddToCart,
    Remove,
    Checkout,
    Purchase,
    Payment,
}

/// A running session (plain data, so that it can be copied out and back cheaply).
#[derive(Clone, Copy)]
struct Session {
    local: u64,
    user: u64,
    session: Option<u64>,
    ctx: Ctx,
    card: u64,
    focus: u8,
    phase: Phase,
    /// Views left before the next cart decision.
    left: u8,
    last_product: u32,
    lines: [(u32, u8); MAX_LINES],
    n_lines: u8,
    adds: u8,
    target_adds: u8,
    /// Next cart line to purchase.
    line: u8,
    will_remove: bool,
    will_checkout: bool,
    will_purchase: bool,
    order: u64,
    /// The user's home country, where the cards are billed.
    billing: u8,
    /// The fraud incident that follows the session, if any.
    incident: Option<FraudPattern>,
}

enum Delivery {
    /// The first delivery of an event, rendered when delivered.
    Emit(Ev),
    /// A re-delivery of these bytes, of an event with this time.
    Dup(Vec<u8>, Millis),
}

/// Where a session comes from.
#[derive(Clone, Copy, Default)]
struct Ctx {
    country: u8,
    city: u8,
    os: u8,
    utm: u8,
    campaign: u8,
    device: u64,
    ip: u32,
    lat_e6: i32,
    lon_e6: i32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum CtxMode {
    /// No device, geo or attribution (back-office events).
    None,
    /// Country and city only.
    Geo,
    /// Device, country and city, and attribution.
    Full,
}

/// An event before rendering.
#[derive(Clone, Copy)]
struct Ev {
    id: u64,
    event_type: EventType,
    ts: Millis,
    user: u64,
    session: Option<u64>,
    ctx: Ctx,
    ctx_mode: CtxMode,
    product: Option<u32>,
    category: Option<u8>,
    price: Option<i64>,
    qty: u32,
    order: Option<u64>,
    card: Option<u64>,
    /// Country the card is billed to (an index into `COUNTRIES`).
    billing: Option<u8>,
    retracts: Option<u64>,
    ip: bool,
    latlon: bool,
    /// An original event, which may be corrected later.
    origin: bool,
    /// The pattern of a fraudulent payment.
    fraud: Option<FraudPattern>,
}

impl Ev {
    fn bare(id: u64, event_type: EventType, ts: Millis, user: u64) -> Ev {
        Ev {
            id,
            event_type,
            ts,
            user,
            session: None,
            ctx: Ctx::default(),
            ctx_mode: CtxMode::None,
            product: None,
            category: None,
            price: None,
            qty: 1,
            order: None,
            card: None,
            billing: None,
            retracts: None,
            ip: false,
            latlon: false,
            origin: false,
            fraud: None,
        }
    }
}

/// The stable attributes of a user, a function of the seed and the user id.
struct Profile {
    country: u8,
    city: u8,
    os: [u8; 2],
    device: [u64; 2],
    card: [u64; 2],
    home_ip: u32,
    lat_e6: i32,
    lon_e6: i32,
}

impl Profile {
    fn of(seed: u64, user: u64) -> Profile {
        let h0 = hash2(seed ^ 0x7573_6572, user);
        let h1 = mix64(h0 ^ 0x5851_f42d_4c95_7f2d);
        let h2 = mix64(h1 ^ 0x5851_f42d_4c95_7f2d);
        let h3 = mix64(h2 ^ 0x5851_f42d_4c95_7f2d);
        let country = weighted(COUNTRIES.iter().map(|c| c.weight), h0 % 100);
        let c = &COUNTRIES[country];
        let city = ((h0 >> 32) % c.cities.len() as u64) as usize;
        let primary = weighted(OSES.iter().map(|o| o.2), h1 % 100);
        // The second device is of the other kind: a computer for phone users and back.
        let other = (h1 >> 32) % 100;
        let secondary = if OSES[primary].1 {
            weighted(OSES.iter().map(|o| if o.1 { 0 } else { o.2 }), other % 32)
        } else {
            weighted(OSES.iter().map(|o| if o.1 { o.2 } else { 0 }), other % 68)
        };
        let octet = c.ip_octets[((h3 >> 32) % c.ip_octets.len() as u64) as usize];
        let home_ip = (u32::from(octet) << 24) | (h3 as u32 & 0x00ff_ff00) | (1 + (h3 & 0xff) as u32 % 254);
        let (_, lat, lon) = c.cities[city];
        let jitter = |bits: u64| (bits % 100_001) as i32 - 50_000;
        Profile {
            country: country as u8,
            city: city as u8,
            os: [primary as u8, secondary as u8],
            device: [mix64(h1 ^ 1), mix64(h1 ^ 2)],
            card: [mix64(h2 ^ 1), mix64(h2 ^ 2)],
            home_ip,
            lat_e6: lat + jitter(h3 >> 40),
            lon_e6: lon + jitter(h3 >> 20),
        }
    }
}

/// The product catalog: category and price of every product, from the seed alone.
struct Catalog {
    category: Vec<u8>,
    price: Vec<u32>,
    by_category: Vec<Vec<u32>>,
}

impl Catalog {
    fn new(seed: u64) -> Catalog {
        let mut category = Vec::with_capacity(PRODUCTS as usize);
        let mut price = Vec::with_capacity(PRODUCTS as usize);
        let mut by_category = vec![Vec::new(); CATEGORIES.len()];
        for p in 0..PRODUCTS {
            let h = hash2(seed ^ 0x7072_6f64, u64::from(p));
            let c = weighted(CATEGORIES.iter().map(|c| c.weight), h % CATEGORY_WEIGHT);
            let g = mix64(h);
            // Irwin-Hall: the sum of four uniforms, scaled to unit variance.
            let z = ((0..4).map(|i| ((g >> (16 * i)) & 0xffff) as f64 / 65_536.0).sum::<f64>() - 2.0) * 3f64.sqrt();
            let mut cents = (f64::from(CATEGORIES[c].median_cents) * (0.6 * z).exp()).round().clamp(99.0, 2_500_000.0) as u32;
            if cents >= 100 && h >> 62 != 0 {
                cents = cents / 100 * 100 + 99;
            }
            category.push(c as u8);
            price.push(cents);
            by_category[c].push(p);
        }
        Catalog { category, price, by_category }
    }

    /// A product, the popular ones far more often.
    fn popular(&self, rng: &mut Rng) -> u32 {
        let u = rng.f64();
        let rank = (u * u * u * f64::from(PRODUCTS)) as u64;
        ((rank * 7919 + 13) % u64::from(PRODUCTS)) as u32
    }

    /// A product of a category, the popular ones far more often.
    fn popular_in(&self, rng: &mut Rng, category: u8) -> u32 {
        let list = &self.by_category[usize::from(category)];
        if list.is_empty() {
            return self.popular(rng);
        }
        let u = rng.f64();
        list[((u * u * u * list.len() as f64) as usize).min(list.len() - 1)]
    }
}

// ---------------------------------------------------------------------------------------
// Tables

struct Country {
    code: &'static str,
    weight: u64,
    ip_octets: &'static [u8],
    cities: &'static [(&'static str, i32, i32)],
}

const COUNTRIES: [Country; 10] = [
    Country {
        code: "US",
        weight: 30,
        ip_octets: &[23, 73, 98],
        cities: &[
            ("New York", 40_712_776, -74_005_974),
            ("Los Angeles", 34_052_235, -118_243_683),
            ("Chicago", 41_878_113, -87_629_799),
            ("Houston", 29_760_427, -95_369_804),
            ("Seattle", 47_606_209, -122_332_071),
        ],
    },
    Country {
        code: "GB",
        weight: 12,
        ip_octets: &[81, 86],
        cities: &[("London", 51_507_351, -127_758), ("Manchester", 53_480_759, -2_242_631), ("Birmingham", 52_486_243, -1_890_401)],
    },
    Country {
        code: "DE",
        weight: 12,
        ip_octets: &[84, 91],
        cities: &[("Berlin", 52_520_008, 13_404_954), ("Munich", 48_135_125, 11_581_981), ("Hamburg", 53_551_086, 9_993_682)],
    },
    Country {
        code: "FR",
        weight: 9,
        ip_octets: &[82, 90],
        cities: &[("Paris", 48_856_613, 2_352_222), ("Lyon", 45_764_043, 4_835_659), ("Marseille", 43_296_482, 5_369_780)],
    },
    Country {
        code: "BR",
        weight: 8,
        ip_octets: &[177, 189],
        cities: &[("Sao Paulo", -23_550_520, -46_633_308), ("Rio de Janeiro", -22_906_847, -43_172_897)],
    },
    Country {
        code: "CA",
        weight: 6,
        ip_octets: &[24, 99],
        cities: &[("Toronto", 43_653_225, -79_383_186), ("Vancouver", 49_282_729, -123_120_738), ("Montreal", 45_501_689, -73_567_256)],
    },
    Country {
        code: "ES",
        weight: 6,
        ip_octets: &[83, 88],
        cities: &[("Madrid", 40_416_775, -3_703_790), ("Barcelona", 41_385_064, 2_173_404)],
    },
    Country {
        code: "IT",
        weight: 6,
        ip_octets: &[79, 93],
        cities: &[("Rome", 41_902_782, 12_496_366), ("Milan", 45_464_204, 9_189_982)],
    },
    Country {
        code: "NL",
        weight: 6,
        ip_octets: &[77, 145],
        cities: &[("Amsterdam", 52_367_573, 4_904_139), ("Rotterdam", 51_924_420, 4_477_733)],
    },
    Country {
        code: "AU",
        weight: 5,
        ip_octets: &[1, 101],
        cities: &[("Sydney", -33_868_820, 151_209_296), ("Melbourne", -37_813_628, 144_963_058)],
    },
];

/// Operating systems: name, mobile, weight among primary devices (the weights of the
/// computers add up to 32, those of the phones to 68).
const OSES: [(&str, bool, u64); 5] =
    [("android", true, 38), ("ios", true, 30), ("windows", false, 20), ("macos", false, 9), ("linux", false, 3)];

struct Utm {
    /// `None`: direct traffic, which carries no `utm` object.
    source: Option<&'static str>,
    medium: &'static str,
    campaigns: &'static [&'static str],
    weight: u64,
    /// How much more likely than average a session from here is to add to the cart.
    factor: f64,
}

const UTMS: [Utm; 8] = [
    Utm { source: None, medium: "", campaigns: &[], weight: 33, factor: 1.10 },
    Utm { source: Some("google"), medium: "cpc", campaigns: &["brand", "generic", "shopping"], weight: 18, factor: 1.05 },
    Utm { source: Some("google"), medium: "organic", campaigns: &[], weight: 12, factor: 1.0 },
    Utm { source: Some("facebook"), medium: "paid_social", campaigns: &["retargeting", "lookalike"], weight: 12, factor: 0.80 },
    Utm { source: Some("instagram"), medium: "paid_social", campaigns: &["stories", "reels"], weight: 7, factor: 0.75 },
    Utm { source: Some("newsletter"), medium: "email", campaigns: &["weekly", "black_friday"], weight: 8, factor: 1.35 },
    Utm { source: Some("tiktok"), medium: "paid_social", campaigns: &["ugc"], weight: 5, factor: 0.65 },
    Utm { source: Some("bing"), medium: "cpc", campaigns: &["brand"], weight: 5, factor: 1.0 },
];

struct Category {
    name: &'static str,
    weight: u64,
    median_cents: u32,
}

const CATEGORY_WEIGHT: u64 = 100;

const CATEGORIES: [Category; 20] = [
    Category { name: "electronics", weight: 6, median_cents: 14_900 },
    Category { name: "phones", weight: 4, median_cents: 54_900 },
    Category { name: "laptops", weight: 3, median_cents: 89_900 },
    Category { name: "audio", weight: 5, median_cents: 6_900 },
    Category { name: "cameras", weight: 2, median_cents: 39_900 },
    Category { name: "gaming", weight: 5, median_cents: 4_900 },
    Category { name: "home", weight: 7, median_cents: 2_900 },
    Category { name: "kitchen", weight: 6, median_cents: 3_900 },
    Category { name: "furniture", weight: 3, median_cents: 19_900 },
    Category { name: "garden", weight: 4, median_cents: 3_400 },
    Category { name: "tools", weight: 4, median_cents: 4_500 },
    Category { name: "fashion", weight: 10, median_cents: 3_500 },
    Category { name: "shoes", weight: 6, median_cents: 7_900 },
    Category { name: "beauty", weight: 7, median_cents: 1_900 },
    Category { name: "health", weight: 5, median_cents: 1_500 },
    Category { name: "sports", weight: 5, median_cents: 4_200 },
    Category { name: "toys", weight: 5, median_cents: 2_400 },
    Category { name: "books", weight: 6, median_cents: 1_500 },
    Category { name: "grocery", weight: 4, median_cents: 700 },
    Category { name: "pets", weight: 4, median_cents: 2_200 },
];

/// Event types that clients send but the schema does not know.
const UNKNOWN_TYPES: [&str; 7] =
    ["search", "wishlist_add", "login", "PageView", "page-view", "add_to_wishlist", "click"];

/// The index whose cumulative weight first exceeds `r` (`r` below the total weight).
fn weighted(weights: impl Iterator<Item = u64>, mut r: u64) -> usize {
    let mut last = 0;
    for (i, w) in weights.enumerate() {
        if r < w {
            return i;
        }
        r -= w;
        if w > 0 {
            last = i;
        }
    }
    last
}

// ---------------------------------------------------------------------------------------
// Randomness: our own small generators, so that the stream never changes with a crate
// version.

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hash2(a: u64, b: u64) -> u64 {
    mix64(a ^ mix64(b.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A stride coprime with `n`, so that `i * stride % n` visits every index once.
fn coprime_stride(n: u64, r: u64) -> u64 {
    if n <= 1 {
        return 1;
    }
    let mut stride = n / 2 + r % (n / 2).max(1) + 1;
    while gcd(stride, n) != 1 {
        stride += 1;
    }
    stride % n
}

/// xoshiro256++ seeded by splitmix64.
struct Rng {
    s: [u64; 4],
}

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            mix64(x)
        };
        Rng { s: [next(), next(), next(), next()] }
    }

    fn next(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)`.
    fn f64(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        let hi = hi.max(lo);
        lo + self.below((hi - lo) as u64 + 1) as i64
    }

    /// How many successes before the first failure, each with probability `p`, at most
    /// `cap`.
    fn geometric(&mut self, p: f64, cap: u32) -> u32 {
        let mut n = 0;
        while n < cap && self.chance(p) {
            n += 1;
        }
        n
    }

    fn exponential(&mut self, mean: f64) -> f64 {
        -(1.0 - self.f64()).ln() * mean
    }

    /// A pause inside a session: log-normal around `median_ms`, between half a second and
    /// [`MAX_SESSION_GAP_MS`].
    fn gap(&mut self, median_ms: f64) -> i64 {
        let z = (self.f64() + self.f64() + self.f64() + self.f64() - 2.0) * 3f64.sqrt();
        ((median_ms * (0.9 * z).exp()) as i64).clamp(500, MAX_SESSION_GAP_MS)
    }
}

// ---------------------------------------------------------------------------------------
// Rendering

/// A deliberate defect of a rendered record.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bad {
    None,
    DropUser,
    EmptyUser,
    UnknownType(&'static str),
    NegativePrice,
    PriceAsString,
    QuantityAsString,
    TsAsNumber,
    UserAsObject,
    MobileAsString,
}

/// Writes JSON records into a reused buffer.
struct Writer {
    buf: Vec<u8>,
    /// `<part>_`, the infix of every id.
    tag: Vec<u8>,
    /// The day whose date is cached in `date`.
    day: i64,
    date: [u8; 10],
}

impl Writer {
    fn id(&mut self, key: &[u8], prefix: u8, n: u64) {
        self.buf.extend_from_slice(key);
        self.buf.push(b'"');
        self.buf.push(prefix);
        self.buf.extend_from_slice(&self.tag);
        push_u64(&mut self.buf, n);
        self.buf.push(b'"');
    }

    fn str(&mut self, key: &[u8], value: &str) {
        self.buf.extend_from_slice(key);
        self.buf.push(b'"');
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(b'"');
    }

    fn ts(&mut self, ms: Millis) {
        let day = ms.div_euclid(DAY_MS);
        if day != self.day {
            let (y, m, d) = civil_from_days(day);
            let mut date = [b'-'; 10];
            put_digits(&mut date[0..4], y as u64);
            put_digits(&mut date[5..7], u64::from(m));
            put_digits(&mut date[8..10], u64::from(d));
            (self.day, self.date) = (day, date);
        }
        let rem = ms.rem_euclid(DAY_MS) as u64;
        let mut text = *b"\"YYYY-MM-DDTHH:MM:SS.mmmZ\"";
        text[1..11].copy_from_slice(&self.date);
        put_digits(&mut text[12..14], rem / 3_600_000);
        put_digits(&mut text[15..17], rem / 60_000 % 60);
        put_digits(&mut text[18..20], rem / 1000 % 60);
        put_digits(&mut text[21..24], rem % 1000);
        self.buf.extend_from_slice(&text);
    }

    /// Renders `ev` (with the defect `bad`) and returns the bytes.
    fn render(&mut self, ev: &Ev, bad: Bad) -> &[u8] {
        self.buf.clear();
        self.id(b"{\"event_id\":", b'e', ev.id);
        let type_name = match bad {
            Bad::UnknownType(name) => name,
            _ => ev.event_type.name(),
        };
        self.str(b",\"event_type\":", type_name);
        self.buf.extend_from_slice(b",\"event_ts\":");
        if bad == Bad::TsAsNumber {
            push_i64(&mut self.buf, ev.ts);
        } else {
            self.ts(ev.ts);
        }
        match bad {
            Bad::DropUser => {}
            Bad::EmptyUser => self.buf.extend_from_slice(b",\"user_id\":\"\""),
            Bad::UserAsObject => {
                self.buf.extend_from_slice(b",\"user_id\":{\"id\":");
                push_u64(&mut self.buf, ev.user);
                self.buf.push(b'}');
            }
            _ => {
                self.buf.extend_from_slice(b",\"user_id\":\"u");
                push_u64(&mut self.buf, ev.user);
                self.buf.push(b'"');
            }
        }
        if let Some(session) = ev.session {
            self.id(b",\"session_id\":", b's', session);
        }
        if let Some(product) = ev.product {
            self.buf.extend_from_slice(b",\"product_id\":\"p");
            push_u64(&mut self.buf, u64::from(product));
            self.buf.push(b'"');
        }
        if let Some(category) = ev.category {
            self.str(b",\"category\":", CATEGORIES[usize::from(category)].name);
        }
        if let Some(price) = ev.price {
            self.buf.extend_from_slice(b",\"price\":");
            match bad {
                Bad::PriceAsString => {
                    self.buf.push(b'"');
                    push_cents(&mut self.buf, price);
                    self.buf.push(b'"');
                }
                Bad::NegativePrice => push_cents(&mut self.buf, -price.max(1)),
                _ => push_cents(&mut self.buf, price),
            }
        }
        if bad == Bad::QuantityAsString {
            self.buf.extend_from_slice(b",\"quantity\":\"");
            push_u64(&mut self.buf, u64::from(ev.qty));
            self.buf.push(b'"');
        } else if ev.qty != 1 {
            self.buf.extend_from_slice(b",\"quantity\":");
            push_u64(&mut self.buf, u64::from(ev.qty));
        }
        if ev.price.is_some() {
            self.buf.extend_from_slice(b",\"currency\":\"USD\"");
        }
        if let Some(order) = ev.order {
            self.id(b",\"order_id\":", b'o', order);
        }
        if let Some(card) = ev.card {
            self.buf.extend_from_slice(b",\"card_id\":\"c");
            push_hex(&mut self.buf, card);
            self.buf.push(b'"');
        }
        if let Some(billing) = ev.billing {
            self.str(b",\"billing_country\":", COUNTRIES[usize::from(billing)].code);
        }
        if let Some(retracts) = ev.retracts {
            self.id(b",\"retracts\":", b'e', retracts);
        }
        let ctx = ev.ctx;
        if ev.ip {
            self.buf.extend_from_slice(b",\"ip\":\"");
            for (i, shift) in [24, 16, 8, 0].into_iter().enumerate() {
                if i > 0 {
                    self.buf.push(b'.');
                }
                push_u64(&mut self.buf, u64::from((ctx.ip >> shift) & 0xff));
            }
            self.buf.push(b'"');
        }
        if ev.ctx_mode == CtxMode::Full {
            let (os, mobile, _) = OSES[usize::from(ctx.os)];
            self.str(b",\"device\":{\"os\":", os);
            self.buf.extend_from_slice(match (bad, mobile) {
                (Bad::MobileAsString, _) => b",\"mobile\":\"yes\"".as_slice(),
                (_, true) => b",\"mobile\":true",
                (_, false) => b",\"mobile\":false",
            });
            self.buf.extend_from_slice(b",\"device_id\":\"d");
            push_hex(&mut self.buf, ctx.device);
            self.buf.extend_from_slice(b"\"}");
        }
        if ev.ctx_mode != CtxMode::None {
            let country = &COUNTRIES[usize::from(ctx.country)];
            self.str(b",\"geo\":{\"country\":", country.code);
            self.str(b",\"city\":", country.cities[usize::from(ctx.city)].0);
            if ev.latlon {
                self.buf.extend_from_slice(b",\"lat\":");
                push_e6(&mut self.buf, ctx.lat_e6);
                self.buf.extend_from_slice(b",\"lon\":");
                push_e6(&mut self.buf, ctx.lon_e6);
            }
            self.buf.push(b'}');
        }
        if ev.ctx_mode == CtxMode::Full {
            let utm = &UTMS[usize::from(ctx.utm)];
            if let Some(source) = utm.source {
                self.str(b",\"utm\":{\"source\":", source);
                self.str(b",\"medium\":", utm.medium);
                if let Some(campaign) = utm.campaigns.get(usize::from(ctx.campaign)) {
                    self.str(b",\"campaign\":", campaign);
                }
                self.buf.push(b'}');
            }
        }
        self.buf.push(b'}');
        &self.buf
    }
}

/// Writes `value` as exactly `out.len()` decimal digits (zero-padded, high digits cut).
fn put_digits(out: &mut [u8], mut value: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The two-digit decimal strings `00` to `99`, back to back.
const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

fn push_u64(buf: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    while value >= 100 {
        let pair = (value % 100) as usize * 2;
        value /= 100;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if value >= 10 {
        at -= 2;
        digits[at..at + 2].copy_from_slice(&PAIRS[value as usize * 2..value as usize * 2 + 2]);
    } else {
        at -= 1;
        digits[at] = b'0' + value as u8;
    }
    buf.extend_from_slice(&digits[at..]);
}

fn push_i64(buf: &mut Vec<u8>, value: i64) {
    if value < 0 {
        buf.push(b'-');
    }
    push_u64(buf, value.unsigned_abs());
}

/// Cents as a decimal amount with two places: `1999` is `19.99`.
fn push_cents(buf: &mut Vec<u8>, cents: i64) {
    if cents < 0 {
        buf.push(b'-');
    }
    let abs = cents.unsigned_abs();
    push_u64(buf, abs / 100);
    let mut frac = *b".00";
    put_digits(&mut frac[1..], abs % 100);
    buf.extend_from_slice(&frac);
}

/// Micro-degrees as a decimal with six places.
fn push_e6(buf: &mut Vec<u8>, e6: i32) {
    if e6 < 0 {
        buf.push(b'-');
    }
    let abs = u64::from(e6.unsigned_abs());
    push_u64(buf, abs / 1_000_000);
    let mut frac = *b".000000";
    put_digits(&mut frac[1..], abs % 1_000_000);
    buf.extend_from_slice(&frac);
}

fn push_hex(buf: &mut Vec<u8>, value: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = HEX[((value >> (60 - 4 * i)) & 0xf) as usize];
    }
    buf.extend_from_slice(&out);
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap, HashSet};

    use std::sync::Arc;

    use super::*;
    use crate::decode::decode;
    use crate::event::Event;
    use crate::time::tick_ceil;

    fn take(config: &GeneratorConfig, part: usize, parts: usize, n: usize) -> Vec<Generated> {
        Generator::new(config.clone(), part, parts).take(n).collect()
    }

    fn decode_one(config: &GeneratorConfig, g: &Generated) -> Result<Event, crate::decode::Reject> {
        decode(&g.record, tick_ceil(g.ingest_ms, 10), &config.decode_config())
    }

    #[test]
    fn is_deterministic() {
        let config = GeneratorConfig::default();
        let a = take(&config, 1, 3, 30_000);
        assert_eq!(a, take(&config, 1, 3, 30_000));
        let mut batched = Vec::new();
        let mut generator = Generator::new(config.clone(), 1, 3);
        generator.fill(&mut batched, 10_000);
        generator.fill(&mut batched, 20_000);
        assert_eq!(a, batched);
        assert_ne!(a, take(&GeneratorConfig { seed: 7, ..config.clone() }, 1, 3, 30_000));
        assert_ne!(a, take(&config, 2, 3, 30_000));
    }

    #[test]
    fn clock_and_positions() {
        let config = GeneratorConfig { events_per_sec: 7_000, ..GeneratorConfig::default() };
        let parts = 3;
        let mut positions = HashSet::new();
        for part in 0..parts {
            let records = take(&config, part, parts, 20_000);
            for (k, pair) in records.windows(2).enumerate() {
                assert!(pair[0].ingest_ms <= pair[1].ingest_ms, "clock went back at record {k}");
            }
            for (k, g) in records.iter().enumerate() {
                assert_eq!(g.ingest_ms as i64, config.start_ms + (k as i64 * 1000 * parts as i64) / 7_000);
                assert_eq!(g.record.position % parts as u64, part as u64);
                assert!(positions.insert(g.record.position), "position {} twice", g.record.position);
            }
        }
    }

    /// A record and its event, if it decodes.
    type Decoded = (Generated, Option<Event>);

    /// Decodes every record and checks it against its intent; returns the counts by
    /// outcome and the records of every part.
    fn check_decoding(config: &GeneratorConfig, parts: usize, n: usize) -> (BTreeMap<Expected, usize>, Vec<Vec<Decoded>>) {
        let mut intended = BTreeMap::new();
        let mut seen = BTreeMap::new();
        let mut all = Vec::new();
        for part in 0..parts {
            let mut decoded = Vec::with_capacity(n);
            for g in take(config, part, parts, n) {
                *intended.entry(g.expected).or_insert(0) += 1;
                let outcome = decode_one(config, &g);
                let got = match &outcome {
                    Ok(_) if g.expected == Expected::Duplicate => Expected::Duplicate,
                    Ok(_) => Expected::Accepted,
                    Err(reject) => Expected::Rejected(reject.reason),
                };
                assert_eq!(
                    got,
                    g.expected,
                    "record {} ({}) decodes otherwise than intended: {:?}",
                    g.record.position,
                    String::from_utf8_lossy(&g.record.bytes),
                    outcome.as_ref().err().map(|r| &r.detail)
                );
                *seen.entry(got).or_insert(0) += 1;
                decoded.push((g, outcome.ok()));
            }
            all.push(decoded);
        }
        assert_eq!(seen, intended);
        (intended, all)
    }

    #[test]
    fn clean_traffic_is_all_valid() {
        let config = GeneratorConfig::clean();
        let (counts, parts) = check_decoding(&config, 2, 100_000);
        assert_eq!(counts.len(), 1, "only accepted records: {counts:?}");
        for (g, event) in parts.iter().flatten() {
            let event = event.as_ref().expect("valid");
            assert!(event.retracts().is_none());
            assert!(event.event_ts <= g.ingest_ms as i64);
            if event.event_type != EventType::Refund {
                assert_eq!(event.event_ts, g.ingest_ms as i64, "a clean event is on time");
            }
        }
    }

    /// The default faults at a rate low enough that 100 000 records of a part span far
    /// more simulated time than the longest delay of a late delivery or a correction.
    fn faulty() -> GeneratorConfig {
        GeneratorConfig { events_per_sec: 50, ..GeneratorConfig::default() }
    }

    #[test]
    fn faults_decode_as_intended() {
        let config = faulty();
        let n = 100_000;
        let (counts, parts) = check_decoding(&config, 2, n);
        let total = (2 * n) as f64;
        let count = |e: Expected| counts.get(&e).copied().unwrap_or(0) as f64;
        let rejected = |r: RejectReason| count(Expected::Rejected(r));
        for reason in [
            RejectReason::Malformed,
            RejectReason::MissingField,
            RejectReason::BadType,
            RejectReason::UnknownEventType,
            RejectReason::BadAmount,
            RejectReason::TooLate,
        ] {
            assert!(rejected(reason) > 0.0, "no {reason} record in {counts:?}");
        }
        let invalid = [
            RejectReason::Malformed,
            RejectReason::MissingField,
            RejectReason::BadType,
            RejectReason::UnknownEventType,
            RejectReason::BadAmount,
        ]
        .into_iter()
        .map(rejected)
        .sum::<f64>();
        assert!((invalid / total - 0.005).abs() < 0.0015, "malformed share {}", invalid / total);
        assert!((rejected(RejectReason::TooLate) / total - 0.001).abs() < 0.0005, "too late share");
        assert!((count(Expected::Duplicate) / total - 0.01).abs() < 0.003, "duplicate share {}", count(Expected::Duplicate) / total);
        // Late first deliveries of session events, and corrections, of the events that
        // happened early enough for all of them to have been delivered.
        let end = config.clock_ms(n as u64, 2);
        let cutoff = end - config.late_max_ms as i64 - 11 * MINUTE_MS;
        let mut late = 0usize;
        let mut session_events = 0usize;
        let mut corrections = 0usize;
        for (g, event) in parts.iter().flatten() {
            if let (Expected::Accepted, Some(e)) = (g.expected, event) {
                if e.retracts().is_none() && e.event_type != EventType::Refund {
                    assert!(g.ingest_ms as i64 - e.event_ts <= config.late_max_ms as i64 + 1000);
                    if e.event_ts < cutoff {
                        session_events += 1;
                        late += usize::from(e.event_ts < g.ingest_ms as i64);
                    }
                }
                // A correction keeps the time of the event it corrects; a retraction is
                // dated at most 10 minutes after it.
                if e.retracts().is_some() && e.event_ts < cutoff - 10 * MINUTE_MS {
                    corrections += 1;
                }
            }
        }
        let span = |until: Millis| (until - config.start_ms) as f64;
        let session_events_before = session_events as f64 * span(cutoff - 10 * MINUTE_MS) / span(cutoff);
        let late_share = late as f64 / session_events as f64;
        println!("counts {counts:?}; late share {late_share}; corrections {corrections} of ~{session_events_before} events");
        assert!((late_share - 0.02).abs() < 0.004, "late share {late_share}");
        let correction_share = corrections as f64 / session_events_before;
        assert!((correction_share - 0.005).abs() < 0.002, "correction share {correction_share}");
    }

    #[test]
    fn ids_duplicates_and_corrections() {
        let config = GeneratorConfig { correction_rate: 0.02, ..faulty() };
        let mut ids = HashSet::new();
        let mut corrections = 0;
        let mut retractions = 0;
        for part in 0..2 {
            let mut earlier_bytes = HashSet::new();
            let mut earlier: HashMap<crate::event::Text, Event> = HashMap::new();
            for g in take(&config, part, 2, 100_000) {
                match g.expected {
                    Expected::Accepted => {
                        let e = decode_one(&config, &g).expect("accepted");
                        assert!(ids.insert(e.event_id().to_owned()), "event_id {} twice", e.event_id());
                        if let Some(old) = e.retracts() {
                            let original = earlier.get(old).unwrap_or_else(|| panic!("{} retracts an unknown id {old}", e.event_id()));
                            assert_eq!(original.user_id(), e.user_id());
                            if e.event_type == EventType::Retraction {
                                retractions += 1;
                            } else {
                                corrections += 1;
                                assert_eq!(e.event_type, original.event_type);
                                assert_eq!(e.event_ts, original.event_ts);
                                assert_ne!(e.price_cents, original.price_cents);
                            }
                        }
                        earlier.insert(crate::event::Text::from(e.event_id()), e);
                        earlier_bytes.insert(g.record.bytes.clone());
                    }
                    Expected::Duplicate => {
                        assert!(earlier_bytes.contains(&g.record.bytes), "a duplicate of nothing earlier");
                    }
                    Expected::Rejected(_) => {}
                }
            }
        }
        assert!(corrections > 100 && retractions > 100, "{corrections} corrections, {retractions} retractions");
    }

    #[test]
    fn sessions_follow_the_funnel() {
        // Few enough events per user that every pause between sessions can be honoured.
        let config = GeneratorConfig { events_per_sec: 10, users: 8_000, session_id_rate: 1.0, ..GeneratorConfig::clean() };
        let mut generator = Generator::new(config.clone(), 0, 1);
        let events: Vec<Event> = (&mut generator).take(150_000).map(|g| decode_one(&config, &g).expect("clean")).collect();
        assert_eq!(generator.stats().early_returns, 0, "{:?}", generator.stats());
        let mut by_session: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
        let mut by_user: HashMap<&str, Vec<&Event>> = HashMap::new();
        let mut payments = HashMap::new();
        let mut order_totals: HashMap<&str, i64> = HashMap::new();
        for e in &events {
            match e.event_type {
                EventType::Refund => continue,
                EventType::Payment => {
                    assert!(e.card_id().is_some() && e.ip().is_some() && (e.device_os.is_some() || e.device_id().is_some()));
                    assert!(e.country.is_some() && e.lat_e6.is_some() && e.lon_e6.is_some());
                    payments.insert(e.order_id().expect("order"), e.price_cents.expect("amount"));
                }
                EventType::Purchase => *order_totals.entry(e.order_id().expect("order")).or_default() += e.amount_cents(),
                _ => {}
            }
            by_session.entry(e.session_id().expect("session id")).or_default().push(e);
            by_user.entry(e.user_id()).or_default().push(e);
        }
        for (order, amount) in &payments {
            assert_eq!(order_totals.get(order), Some(amount), "payment of {order}");
        }
        let (mut carts, mut checkouts, mut purchases) = (0, 0, 0);
        for session in by_session.values() {
            assert_eq!(session[0].event_type, EventType::PageView);
            for pair in session.windows(2) {
                assert!(pair[1].event_ts - pair[0].event_ts <= MAX_SESSION_GAP_MS);
            }
            let has = |t: EventType| session.iter().any(|e| e.event_type == t);
            carts += usize::from(has(EventType::AddToCart));
            checkouts += usize::from(has(EventType::Checkout));
            purchases += usize::from(has(EventType::Purchase));
        }
        let sessions = by_session.len() as f64;
        let (carts, checkouts, purchases) = (carts as f64, checkouts as f64, purchases as f64);
        assert!((carts / sessions - 0.40).abs() < 0.04, "cart rate {}", carts / sessions);
        assert!((checkouts / carts - 0.50).abs() < 0.05, "checkout rate {}", checkouts / carts);
        assert!((purchases / checkouts - 0.60).abs() < 0.07, "purchase rate {}", purchases / checkouts);
        let mut returns = 0;
        for user_events in by_user.values() {
            for pair in user_events.windows(2) {
                if pair[0].session_id() != pair[1].session_id() {
                    returns += 1;
                    assert!(pair[1].event_ts - pair[0].event_ts > 30 * MINUTE_MS, "a user came back too soon");
                }
            }
        }
        assert!(returns > 1000, "users come back: {returns}");
    }

    #[test]
    fn fraud_incidents_are_labelled_payments() {
        let config = GeneratorConfig { events_per_sec: 20, users: 14_000, fraud_rate: 0.02, ..GeneratorConfig::default() };
        let records = take(&config, 0, 1, 200_000);
        let mut labelled: BTreeMap<FraudPattern, Vec<Event>> = BTreeMap::new();
        let mut honest_abroad = 0;
        let mut honest_payments: HashMap<Arc<str>, Vec<Event>> = HashMap::new();
        for g in &records {
            let Ok(e) = decode_one(&config, g) else {
                assert_eq!(g.fraud, None, "a rejected record is not labelled");
                continue;
            };
            let Some(pattern) = g.fraud else {
                if e.event_type == EventType::Payment && g.expected == Expected::Accepted {
                    let country = e.country;
                    honest_abroad += usize::from(country != e.billing_country);
                    honest_payments.entry(Arc::from(e.card_id().expect("card"))).or_default().push(e);
                }
                continue;
            };
            assert_eq!(g.expected, Expected::Accepted);
            assert_eq!(e.event_type, EventType::Payment);
            assert!(e.card_id().is_some() && e.billing_country.is_some() && e.ip().is_some(), "{e:?}");
            assert!(e.lat_e6.is_some() && e.device_id().is_some());
            labelled.entry(pattern).or_default().push(e);
        }
        // The victim paid 2 to 60 minutes before an impossible travel payment, at least
        // 3,000 km (less the few km of jitter around a city) away. (The victim's payment
        // may have been delivered late, so this is checked once all are read.)
        for e in &labelled[&FraudPattern::ImpossibleTravel] {
            let before = honest_payments.get(e.card_id().expect("card")).map_or(&[][..], Vec::as_slice);
            let victim = before.iter().find(|p| {
                let km = crate::fraud::haversine_km((p.lat_e6.unwrap(), p.lon_e6.unwrap()), (e.lat_e6.unwrap(), e.lon_e6.unwrap()));
                (2 * MINUTE_MS..=HOUR_MS).contains(&(e.event_ts - p.event_ts)) && km > 2_950.0
            });
            assert!(victim.is_some(), "no payment of the victim 2-60 min before {e:?}");
        }
        assert_eq!(labelled.keys().copied().collect::<Vec<_>>(), FraudPattern::ALL, "every pattern occurs");
        assert!(honest_abroad > 0, "honest payments from abroad exist too");
        let testing = &labelled[&FraudPattern::CardTesting];
        let small = testing.iter().filter(|e| e.price_cents.unwrap() < 1000).count();
        assert!(small * 10 >= testing.len() * 8, "card testing is mostly small amounts: {small} of {}", testing.len());
        for e in &labelled[&FraudPattern::AmountSpike] {
            assert!(e.price_cents.unwrap() >= 8 * 100, "a spike of 8 or more orders: {e:?}");
        }
        // No labels without a fraud rate.
        let honest = take(&GeneratorConfig { fraud_rate: 0.0, ..config.clone() }, 0, 1, 20_000);
        assert!(honest.iter().all(|g| g.fraud.is_none()));
    }

    /// `cargo test -p tidemark-dataflows generator::tests::print_sample -- --ignored --nocapture`
    #[test]
    #[ignore = "prints a sample"]
    fn print_sample() {
        for g in take(&GeneratorConfig::default(), 0, 2, 400_000).iter().step_by(20_000) {
            println!("{} {:?} {}", g.ingest_ms, g.expected, String::from_utf8_lossy(&g.record.bytes));
        }
    }

    #[test]
    fn many_sessions_interleave() {
        let records = take(&GeneratorConfig::clean(), 0, 1, 200_000);
        let window = &records[190_000..192_000];
        let users: HashSet<_> = window
            .iter()
            .map(|g| decode_one(&GeneratorConfig::clean(), g).expect("clean").user_id().to_owned())
            .collect();
        assert!(users.len() > 1_000, "{} distinct users in 2000 records", users.len());
    }

    #[test]
    fn extreme_settings_decode_as_intended() {
        let heavy = GeneratorConfig {
            late_rate: 0.5,
            too_late_rate: 0.1,
            duplicate_rate: 0.5,
            correction_rate: 0.3,
            malformed_rate: 0.2,
            session_id_rate: 0.9,
            ..GeneratorConfig::default()
        };
        for config in [
            GeneratorConfig { seed: 1, retention_ms: 60_000, events_per_sec: 100, ..heavy.clone() },
            GeneratorConfig { seed: 2, events_per_sec: 1_000_000, users: 10_000_000, ..heavy.clone() },
            GeneratorConfig { seed: 3, events_per_sec: 3, users: 5, ..heavy.clone() },
            GeneratorConfig { seed: 4, late_rate: 1.0, malformed_rate: 0.0, too_late_rate: 0.0, ..heavy },
        ] {
            check_decoding(&config, 3, 20_000);
        }
    }

    #[test]
    fn saturated_populations_keep_the_rate() {
        let config = GeneratorConfig { users: 50, events_per_sec: 1000, ..GeneratorConfig::default() };
        let (counts, _) = check_decoding(&config, 2, 20_000);
        assert!(counts[&Expected::Accepted] > 35_000);
    }

    /// `cargo test --release -p tidemark-dataflows generator::tests::throughput -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn throughput() {
        let roomy = GeneratorConfig { events_per_sec: 1_000, users: 1_000_000, ..GeneratorConfig::default() };
        for (name, config) in [("clean", GeneratorConfig::clean()), ("default", GeneratorConfig::default()), ("1M users at 1000/s", roomy)] {
            let mut generator = Generator::new(config, 0, 1);
            let n = 5_000_000;
            let start = std::time::Instant::now();
            let mut bytes = 0usize;
            for _ in 0..n {
                bytes += generator.next_record().record.bytes.len();
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{name}: {n} records in {secs:.2} s = {:.2} M records/s, {:.0} MB/s, {:.0} bytes/record; {:?}",
                n as f64 / secs / 1e6,
                bytes as f64 / secs / 1e6,
                bytes as f64 / n as f64,
                generator.stats()
            );
        }
    }
}
