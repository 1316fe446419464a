//! `tidemark-single-pass`: the practical limit. A hand-written, single-threaded program
//! that computes the final `funnel` and `kpis` (and `rejected_by_reason`) over exactly the
//! records `tidemark run --max-speed -w <parts>` generates, in one pass and without any
//! dataflow. The benchmark compares the engine's throughput with this loop's.
//!
//! What it does, record by record (parts merged in ingestion-time, position order):
//! 1. generate the record ([`Generator`], the same parts and counts as the engine's
//!    workers) and stamp it with `tick_ceil(ingest_ms, tick)`;
//! 2. [`decode`] it (JSON parse and validation, the engine's own decoder);
//! 3. drop what is no longer live at the run's final time (the same final time the
//!    engine agrees on, known up front from `--events`), exactly as the reference does:
//!    events whose retention ended, rejects older than one retention period;
//! 4. dedup by `event_id` (the first delivery in (ingestion time, position) order is
//!    kept) and note every id named in `retracts`;
//! 5. keep a compact copy of the event (interned strings, 48 bytes) in its user's list.
//!
//! At the end, for every user: drop cancelled events, sort by (event time, type, id), cut
//! sessions (by `session_id`, else by the 30-minute gap), walk the ordered funnel, and add
//! each session to every (granularity, dimension) funnel row and each event to the KPI
//! rows; distinct users and distinct orders are counted exactly.
//!
//! The last line on stdout is `throughput <records> records in <seconds> s = <rate>
//! records/s`, timed from the first generated record to the final rows (generation and
//! decoding included, writing `--views-out` excluded).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use differential_dataflow::difference::Semigroup;
use serde_json::{json, Value};
use tidemark_dataflows::decode::{decode, DecodeConfig, RejectReason};
use tidemark_dataflows::event::EventType;
use tidemark_dataflows::generator::{Generated, Generator, GeneratorConfig};
use tidemark_dataflows::rows::{next_step, Dimension, FunnelAgg, FunnelKey, KpiAgg, KpiKey, NONE_VALUE, SESSION_GAP_MS};
use tidemark_dataflows::time::{format_timestamp, tick_ceil, Granularity, Millis, Time};
use tidemark_dataflows::views::{ViewConfig, ViewRow};
use tidemark_worker::driver::SIMULATED_START_MS;
use tidemark_worker::output::row_json;
use tidemark_worker::source::generated_final_time;

/// The single-pass loop over generated traffic (the flags of `tidemark run --max-speed`).
#[derive(Parser, Debug)]
#[command(name = "tidemark-single-pass", about = "The practical limit: funnel and KPIs over the generated traffic of `tidemark run --max-speed`, single-threaded, in one pass, no dataflow.")]
struct Args {
    /// Records to generate (the whole stream, all parts together).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Simulated rate of the whole stream, records per second (sets the simulated clock).
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Generator user population.
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Only valid, on-time, unique events.
    #[arg(long)]
    clean: bool,
    /// Generator parts: the records of `tidemark run -w <parts>` (one part per worker).
    #[arg(long, short = 'w', alias = "workers", default_value_t = 1)]
    parts: usize,
    /// Retention horizon in hours (as `tidemark run --retention-hours`).
    #[arg(long, default_value_t = 168)]
    retention_hours: u64,
    /// Ingestion tick in milliseconds (as `tidemark run --tick-ms`).
    #[arg(long, default_value_t = 10)]
    tick_ms: u64,
    /// Write the final funnel, kpis and rejected_by_reason rows to this JSON file, in the
    /// shape of `tidemark run --views-out` (the sessions and rejects views are omitted).
    #[arg(long)]
    views_out: Option<PathBuf>,
    /// Accepted for command-line compatibility with `tidemark run` (always max speed).
    #[arg(long, hide = true)]
    max_speed: bool,
    /// Only generate and decode (no dedup, sessions or rows): the floor under the loop's
    /// and the engine's cost (`scripts/bench-engine` reports it beside them).
    #[arg(long)]
    decode_only: bool,
    /// Print only the throughput line (no breakdown on stderr).
    #[arg(long, short = 'q')]
    quiet: bool,
}

// ---------------------------------------------------------------------------------------
// Hashing: an Fx-style hasher for small keys; short strings stored inline and hashed once.

/// The Fx hash (as in rustc), with a final rotation so that the well-mixed high bits
/// also reach the bucket index.
#[derive(Default, Clone, Copy)]
struct Fx(u64);

const FX_K: u64 = 0xf135_7aea_2e62_a9c5;

impl Fx {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(FX_K);
    }
}

impl Hasher for Fx {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_i64(&mut self, i: i64) {
        self.add(i as u64);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;
type FxSet<K> = HashSet<K, BuildHasherDefault<Fx>>;

/// A hasher for keys that hash themselves into one `u64` ([`Short`]).
#[derive(Default, Clone, Copy)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn write(&mut self, _bytes: &[u8]) {
        unreachable!("PreHashed only hashes u64 keys")
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = i;
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A 64-bit hash of two little-endian words (murmur3's finaliser over an Fx-style mix).
#[inline]
fn hash_words(a: u64, b: u64) -> u64 {
    let mut h = (a.wrapping_mul(FX_K) ^ b.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A string of at most [`Short::MAX`] bytes stored inline (zero-padded, length in the
/// last byte), so that a lookup compares two words in the hash bucket itself.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Short([u8; 16]);

impl Short {
    const MAX: usize = 15;

    #[inline]
    fn new(s: &[u8]) -> Option<Short> {
        (s.len() <= Short::MAX).then(|| {
            let mut b = [0u8; 16];
            b[..s.len()].copy_from_slice(s);
            b[15] = s.len() as u8;
            Short(b)
        })
    }
}

impl std::hash::Hash for Short {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        let a = u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes"));
        let b = u64::from_le_bytes(self.0[8..].try_into().expect("8 bytes"));
        state.write_u64(hash_words(a, b));
    }
}

const NO: u32 = u32::MAX;

/// Maps strings to dense `u32` ids (exactly: keys are the strings themselves), and keeps
/// every string in an arena so that an id can be turned back into its string.
struct Interner {
    short: HashMap<Short, u32, BuildHasherDefault<PreHashed>>,
    long: FxMap<Box<[u8]>, u32>,
    /// `starts[i]..starts[i + 1]` is string `i` in `arena`.
    starts: Vec<usize>,
    arena: Vec<u8>,
}

impl Interner {
    fn new() -> Self {
        Interner::with_capacity(0)
    }

    fn with_capacity(n: usize) -> Self {
        Interner {
            short: HashMap::with_capacity_and_hasher(n, BuildHasherDefault::default()),
            long: FxMap::default(),
            starts: Vec::with_capacity(n + 1),
            arena: Vec::with_capacity(n * 8),
        }
        .init()
    }

    fn init(mut self) -> Self {
        self.starts.push(0);
        self
    }

    fn len(&self) -> usize {
        self.starts.len() - 1
    }

    #[inline]
    fn bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        &self.arena[self.starts[i]..self.starts[i + 1]]
    }

    fn get(&self, id: u32) -> &str {
        std::str::from_utf8(self.bytes(id)).expect("interned strings are UTF-8")
    }

    #[inline]
    fn push(arena: &mut Vec<u8>, starts: &mut Vec<usize>, s: &[u8]) -> u32 {
        let id = (starts.len() - 1) as u32;
        assert!(id != NO, "more than 2^32 - 1 distinct strings");
        arena.extend_from_slice(s);
        starts.push(arena.len());
        id
    }

    /// The id of `s` and whether it was new.
    #[inline]
    fn intern(&mut self, s: &str) -> (u32, bool) {
        let s = s.as_bytes();
        let (arena, starts) = (&mut self.arena, &mut self.starts);
        match Short::new(s) {
            Some(key) => match self.short.entry(key) {
                std::collections::hash_map::Entry::Occupied(e) => (*e.get(), false),
                std::collections::hash_map::Entry::Vacant(e) => (*e.insert(Interner::push(arena, starts, s)), true),
            },
            None => match self.long.get(s) {
                Some(&id) => (id, false),
                None => {
                    let id = Interner::push(arena, starts, s);
                    self.long.insert(s.into(), id);
                    (id, true)
                }
            },
        }
    }

    #[inline]
    fn id(&mut self, s: &str) -> u32 {
        self.intern(s).0
    }
}

// ---------------------------------------------------------------------------------------
// State of the pass.

/// The slice of a kept event that the funnel and KPIs need (strings interned).
#[derive(Clone, Copy)]
struct Ev {
    ts: Millis,
    /// Price × quantity, cents.
    amount: i64,
    /// Index in the event-id interner (also the key of its cancelled flag).
    id: u32,
    /// Shop session id (an index into its user's [`User::sessions`]) or `NO`.
    session: u32,
    /// Order key of a purchase (order interner) or `NO`.
    order: u32,
    /// Dimension values (value interner) or `NO`.
    country: u32,
    device: u32,
    utm: u32,
    category: u32,
    event_type: EventType,
}

/// A shop session id: short ones inline.
#[derive(PartialEq, Eq)]
enum Key {
    Short(Short),
    Long(Box<[u8]>),
}

impl Key {
    #[inline]
    fn new(s: &str) -> Key {
        Short::new(s.as_bytes()).map_or_else(|| Key::Long(s.as_bytes().into()), Key::Short)
    }
}

/// A user's kept events (in arrival order) and the shop session ids they name.
#[derive(Default)]
struct User {
    events: Vec<Ev>,
    sessions: Vec<Key>,
}

impl User {
    /// The index of a shop session id in [`User::sessions`].
    #[inline]
    fn session(&mut self, id: &str) -> u32 {
        let key = Key::new(id);
        let at = match self.sessions.iter().position(|k| *k == key) {
            Some(at) => at,
            None => {
                self.sessions.push(key);
                self.sessions.len() - 1
            }
        };
        at as u32
    }
}

/// The compact funnel key: granularity, window start, dimension, value id.
type FKey = (u8, Millis, u8, u32);

#[derive(Default)]
struct Counts {
    records: u64,
    accepted: u64,
    expired_events: u64,
    expired_rejects: u64,
    duplicates: u64,
    retractions: u64,
    kept: u64,
    sessions: u64,
    users_with_events: u64,
    valid_events: u64,
}

struct State {
    final_time: Time,
    view: ViewConfig,
    /// Event ids: delivered or named by `retracts`.
    ids: Interner,
    /// Per event id: bit 0 delivered (live), bit 1 cancelled by a live event.
    id_flags: Vec<u8>,
    /// Users by id (short ids inline in the hash table), with their kept events.
    users: HashMap<Short, User, BuildHasherDefault<PreHashed>>,
    long_users: FxMap<Box<[u8]>, User>,
    orders: Interner,
    values: Interner,
    rejects: BTreeMap<RejectReason, i64>,
    counts: Counts,
}

const DELIVERED: u8 = 1;
const CANCELLED: u8 = 2;

impl State {
    fn id_slot(&mut self, id: &str) -> usize {
        let (slot, new) = self.ids.intern(id);
        if new {
            self.id_flags.push(0);
        }
        slot as usize
    }

    fn value(&mut self, v: Option<&str>) -> u32 {
        v.map_or(NO, |v| self.values.id(v))
    }

    /// One record at its ingestion time.
    fn record(&mut self, g: &Generated, ingest: Time, decode_config: &DecodeConfig) {
        self.counts.records += 1;
        let event = match decode(&g.record, ingest, decode_config) {
            Ok(event) => event,
            Err(reject) => {
                if self.final_time < self.view.reject_expiry(ingest) {
                    *self.rejects.entry(reject.reason).or_insert(0) += 1;
                } else {
                    self.counts.expired_rejects += 1;
                }
                return;
            }
        };
        self.counts.accepted += 1;
        if self.final_time >= self.view.expiry(event.event_ts) {
            // Not live at the final time: as if it had never arrived.
            self.counts.expired_events += 1;
            return;
        }
        if let Some(target) = event.retracts() {
            let slot = self.id_slot(target);
            self.id_flags[slot] |= CANCELLED;
        }
        let slot = self.id_slot(event.event_id());
        if self.id_flags[slot] & DELIVERED != 0 {
            self.counts.duplicates += 1;
            *self.rejects.entry(RejectReason::Duplicate).or_insert(0) += 1;
            return;
        }
        self.id_flags[slot] |= DELIVERED;
        if event.event_type == EventType::Retraction {
            self.counts.retractions += 1;
            return;
        }
        self.counts.kept += 1;
        let mut ev = Ev {
            ts: event.event_ts,
            amount: event.amount_cents(),
            id: slot as u32,
            session: NO,
            order: if event.event_type == EventType::Purchase { self.orders.id(event.order_key()) } else { NO },
            country: self.value(event.country.as_deref()),
            device: self.value(event.device_os.as_deref()),
            utm: self.value(event.utm_source.as_deref()),
            category: self.value(event.category.as_deref()),
            event_type: event.event_type,
        };
        let user = match Short::new(event.user_id().as_bytes()) {
            Some(key) => self.users.entry(key).or_default(),
            None => self.long_users.entry(event.user_id().as_bytes().into()).or_default(),
        };
        if let Some(session) = event.session_id() {
            ev.session = user.session(session);
        }
        user.events.push(ev);
    }
}

/// A session being summed up.
struct Session {
    /// Shop session id, or `NO` for a derived session.
    given: u32,
    start_ts: Millis,
    last_ts: Millis,
    step: u8,
    purchases: u32,
    revenue: i64,
    orders: Vec<u32>,
    country: u32,
    device: u32,
    utm: u32,
    category: u32,
}

impl Session {
    fn new(given: u32, e: &Ev) -> Self {
        Session {
            given,
            start_ts: e.ts,
            last_ts: e.ts,
            step: 0,
            purchases: 0,
            revenue: 0,
            orders: Vec::new(),
            country: NO,
            device: NO,
            utm: NO,
            category: NO,
        }
    }

    #[inline]
    fn add(&mut self, e: &Ev) {
        self.last_ts = e.ts;
        if e.event_type == EventType::Purchase {
            self.purchases += 1;
            self.revenue += e.amount;
            if !self.orders.contains(&e.order) {
                self.orders.push(e.order);
            }
        }
        self.step = next_step(self.step, e.event_type);
        let first = |slot: &mut u32, v: u32| {
            if *slot == NO {
                *slot = v;
            }
        };
        first(&mut self.country, e.country);
        first(&mut self.device, e.device);
        first(&mut self.utm, e.utm);
        first(&mut self.category, e.category);
    }

    fn agg(&self) -> FunnelAgg {
        let agg = FunnelAgg::session(self.step, self.purchases > 0, self.orders.len() as i64, self.revenue);
        FunnelAgg { unique_users: 1, ..agg }
    }

    /// The value of every dimension, in [`Dimension::ALL`] order (`NO` for "(none)"; the
    /// caller maps `all` and `(none)` to their interned ids).
    fn values(&self, all: u32, none: u32) -> [u32; 5] {
        let or_none = |v: u32| if v == NO { none } else { v };
        [all, or_none(self.country), or_none(self.device), or_none(self.utm), or_none(self.category)]
    }
}

fn add_funnel(into: &mut FunnelAgg, a: &FunnelAgg) {
    into.plus_equals(a);
}

fn add_event(k: &mut KpiAgg, e: &Ev) {
    k.plus_equals(&KpiAgg::event(e.event_type, e.amount));
}

/// The final funnel and KPI rows (compact keys).
struct Final {
    funnel: FxMap<FKey, FunnelAgg>,
    kpis: FxMap<(u8, Millis), KpiAgg>,
}

const GRANULARITIES: [Granularity; 3] = Granularity::ALL;

/// Window starts of `ts` at every granularity.
#[inline]
fn windows(ts: Millis) -> [Millis; 3] {
    GRANULARITIES.map(|g| g.window_start(ts))
}

/// Sessions, funnel and KPIs from the kept events, user by user.
fn finish(state: &mut State) -> Final {
    let all = state.values.id("all");
    let none = state.values.id(NONE_VALUE);
    let mut funnel: FxMap<FKey, FunnelAgg> = FxMap::default();
    let mut kpis: FxMap<(u8, Millis), KpiAgg> = FxMap::default();
    let mut orders: FxSet<(u8, Millis, u32)> = FxSet::default();
    let mut sessions: Vec<Session> = Vec::new();
    let mut user_keys: Vec<(FKey, FunnelAgg)> = Vec::new();
    let ids = &state.ids;
    let flags = &state.id_flags;
    for user in state.users.values_mut().chain(state.long_users.values_mut()) {
        let events = &mut user.events;
        events.retain(|e| flags[e.id as usize] & CANCELLED == 0);
        if events.is_empty() {
            continue;
        }
        state.counts.users_with_events += 1;
        state.counts.valid_events += events.len() as u64;
        // The engine's order: (event time, type, id). Mostly sorted already.
        events.sort_by(|a, b| {
            (a.ts, a.event_type).cmp(&(b.ts, b.event_type)).then_with(|| ids.bytes(a.id).cmp(ids.bytes(b.id)))
        });

        // KPIs by event time.
        for e in events.iter() {
            let w = windows(e.ts);
            for (g, start) in w.into_iter().enumerate() {
                add_event(kpis.entry((g as u8, start)).or_default(), e);
                if e.event_type == EventType::Purchase {
                    orders.insert((g as u8, start, e.order));
                }
            }
        }

        // Sessions: given ones in order of first appearance, then derived ones.
        sessions.clear();
        let mut derived_open: Option<usize> = None;
        for e in events.iter() {
            if e.session != NO {
                match sessions.iter_mut().find(|s| s.given == e.session) {
                    Some(s) => s.add(e),
                    None => {
                        let mut s = Session::new(e.session, e);
                        s.add(e);
                        sessions.push(s);
                    }
                }
            } else {
                match derived_open {
                    Some(i) if e.ts - sessions[i].last_ts <= SESSION_GAP_MS => sessions[i].add(e),
                    _ => {
                        let mut s = Session::new(NO, e);
                        s.add(e);
                        sessions.push(s);
                        derived_open = Some(sessions.len() - 1);
                    }
                }
            }
        }
        state.counts.sessions += sessions.len() as u64;

        // Funnel: every session under 15 keys; a user counts once per key.
        if sessions.len() == 1 {
            let s = &sessions[0];
            let agg = s.agg();
            let values = s.values(all, none);
            for (g, start) in windows(s.start_ts).into_iter().enumerate() {
                for (d, v) in values.into_iter().enumerate() {
                    add_funnel(funnel.entry((g as u8, start, d as u8, v)).or_default(), &agg);
                }
            }
        } else {
            user_keys.clear();
            for s in &sessions {
                let mut agg = s.agg();
                let values = s.values(all, none);
                for (g, start) in windows(s.start_ts).into_iter().enumerate() {
                    for (d, v) in values.into_iter().enumerate() {
                        let key = (g as u8, start, d as u8, v);
                        match user_keys.iter_mut().find(|(k, _)| *k == key) {
                            Some((_, a)) => {
                                agg.unique_users = 0;
                                add_funnel(a, &agg);
                                agg.unique_users = 1;
                            }
                            None => user_keys.push((key, agg)),
                        }
                    }
                }
            }
            for (key, agg) in &user_keys {
                add_funnel(funnel.entry(*key).or_default(), agg);
            }
        }
    }
    for (g, start, _) in orders {
        kpis.entry((g, start)).or_default().orders += 1;
    }
    for (&(g, start, d, _), agg) in &funnel {
        if d == 0 {
            let k = kpis.entry((g, start)).or_default();
            k.sessions += agg.sessions;
            k.purchasing_sessions += agg.purchasing_sessions;
            k.unique_users += agg.unique_users;
        }
    }
    Final { funnel, kpis }
}

/// The final time the engine agrees on for `--max-speed --events N -w parts`.
fn final_time(args: &Args) -> Time {
    generated_final_time(&generator_config(args), args.events, args.parts, args.tick_ms).unwrap_or(SIMULATED_START_MS as Time)
}

/// The generator configuration of `driver::open_source` at max speed.
fn generator_config(args: &Args) -> GeneratorConfig {
    let mut config = if args.clean { GeneratorConfig::clean() } else { GeneratorConfig::default() };
    config.seed = args.seed;
    config.users = args.users;
    config.events_per_sec = args.rate;
    config.retention_ms = args.retention_hours * 3_600_000;
    config.start_ms = SIMULATED_START_MS;
    config
}

fn write_views(path: &PathBuf, state: &State, fin: &Final, final_time: Time) -> anyhow::Result<()> {
    let gran = |g: u8| GRANULARITIES[usize::from(g)];
    let mut rows: Vec<ViewRow> = Vec::with_capacity(fin.funnel.len() + fin.kpis.len() + state.rejects.len());
    for (&(g, start, d, v), agg) in &fin.funnel {
        let key = FunnelKey {
            granularity: gran(g),
            window_start: start,
            dimension: Dimension::ALL[usize::from(d)],
            value: state.values.get(v).into(),
        };
        rows.push(ViewRow::Funnel { key, agg: *agg });
    }
    for (&(g, start), agg) in &fin.kpis {
        rows.push(ViewRow::Kpis { key: KpiKey { granularity: gran(g), window_start: start }, agg: *agg });
    }
    for (&reason, &count) in &state.rejects {
        rows.push(ViewRow::RejectedByReason { reason, count });
    }
    rows.sort();
    let mut views: BTreeMap<&str, Vec<Value>> = ["funnel", "kpis", "rejected_by_reason"].into_iter().map(|v| (v, Vec::new())).collect();
    for row in &rows {
        views.entry(row.view()).or_default().push(row_json(row));
    }
    let doc = json!({
        "as_of": final_time,
        "as_of_rfc3339": format_timestamp(final_time as i64),
        "producer": "tidemark-single-pass",
        "omitted_views": ["sessions", "rejects"],
        "session_count": state.counts.sessions,
        "views": views,
    });
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    serde_json::to_writer_pretty(&mut out, &doc)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.parts >= 1, "--parts must be at least 1");
    anyhow::ensure!(args.rate >= 1, "--rate must be positive");
    anyhow::ensure!(args.tick_ms >= 1, "--tick-ms must be positive");
    anyhow::ensure!(args.retention_hours >= 1, "--retention-hours must be positive");
    anyhow::ensure!(args.users >= args.parts as u64, "--users must be at least --parts");
    let config = generator_config(&args);
    let mut view = ViewConfig { tick_ms: args.tick_ms, ..ViewConfig::default() };
    view.decode.retention_ms = args.retention_hours * 3_600_000;
    let decode_config = view.decode.clone();
    let final_time = final_time(&args);

    let started = Instant::now();
    let parts = args.parts;
    let mut generators: Vec<Generator> = (0..parts).map(|i| Generator::new(config.clone(), i, parts)).collect();
    let mut remaining: Vec<u64> =
        (0..parts as u64).map(|i| args.events / parts as u64 + u64::from(i < args.events % parts as u64)).collect();
    // The next record of every part with its ingestion time.
    let mut heads: Vec<Option<(Time, Generated)>> = Vec::with_capacity(parts);
    for (generator, left) in generators.iter_mut().zip(remaining.iter_mut()) {
        heads.push((*left > 0).then(|| {
            *left -= 1;
            let g = generator.next_record();
            (tick_ceil(g.ingest_ms, args.tick_ms), g)
        }));
    }
    let expected_users = args.users.min(args.events) as usize;
    let mut state = State {
        final_time,
        view,
        ids: Interner::with_capacity(args.events as usize),
        id_flags: Vec::with_capacity(args.events as usize),
        users: HashMap::with_capacity_and_hasher(expected_users, BuildHasherDefault::default()),
        long_users: FxMap::default(),
        orders: Interner::new(),
        values: Interner::new(),
        rejects: BTreeMap::new(),
        counts: Counts::default(),
    };
    let mut last_ingest: Time = 0;
    loop {
        // The earliest head in (ingestion time, position) order: the dedup order.
        let mut best: Option<usize> = None;
        for (i, head) in heads.iter().enumerate() {
            if let Some((t, g)) = head {
                let better = match best.and_then(|b| heads[b].as_ref()) {
                    None => true,
                    Some((bt, bg)) => (*t, g.record.position) < (*bt, bg.record.position),
                };
                if better {
                    best = Some(i);
                }
            }
        }
        let Some(i) = best else { break };
        let next = if remaining[i] > 0 {
            remaining[i] -= 1;
            let g = generators[i].next_record();
            Some((tick_ceil(g.ingest_ms, args.tick_ms), g))
        } else {
            None
        };
        let (ingest, g) = std::mem::replace(&mut heads[i], next).expect("the chosen head exists");
        debug_assert!(ingest >= last_ingest, "ingestion times never decrease");
        last_ingest = ingest;
        if args.decode_only {
            state.counts.records += 1;
            state.counts.accepted += u64::from(std::hint::black_box(decode(&g.record, ingest, &decode_config)).is_ok());
        } else {
            state.record(&g, ingest, &decode_config);
        }
    }
    let pass_done = started.elapsed();
    let fin = finish(&mut state);
    let elapsed = started.elapsed();

    let c = &state.counts;
    anyhow::ensure!(c.records == args.events, "generated {} records, expected {}", c.records, args.events);
    anyhow::ensure!(last_ingest <= final_time, "the last ingestion time {last_ingest} is past the final time {final_time}");
    if !args.quiet {
        eprintln!(
            "single pass: {} parts, {} records, final time {} ({}); pass {:.3} s, sessions/funnel/kpis {:.3} s",
            parts,
            c.records,
            final_time,
            format_timestamp(final_time as i64),
            pass_done.as_secs_f64(),
            (elapsed - pass_done).as_secs_f64(),
        );
        eprintln!(
            "  accepted {} (expired before the final time: {}), duplicates {}, retraction events {}, kept {} of which cancelled {}, valid {}",
            c.accepted,
            c.expired_events,
            c.duplicates,
            c.retractions,
            c.kept,
            c.kept - c.valid_events,
            c.valid_events,
        );
        eprintln!(
            "  users with events {}, sessions {}, funnel rows {}, kpi rows {}, distinct event ids {}, rejects expired {}",
            c.users_with_events,
            c.sessions,
            fin.funnel.len(),
            fin.kpis.len(),
            state.ids.len(),
            c.expired_rejects,
        );
        let rejects: Vec<String> = state.rejects.iter().map(|(r, n)| format!("{r} {n}")).collect();
        eprintln!("  rejects (live at the final time): {}", if rejects.is_empty() { "none".to_owned() } else { rejects.join(", ") });
    }
    if let Some(path) = &args.views_out {
        write_views(path, &state, &fin, final_time)?;
    }
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!("throughput {} records in {secs:.3} s = {:.0} records/s", c.records, c.records as f64 / secs);
    Ok(())
}
