//! Decoding and validation: raw bytes at an ingestion time become an [`Event`] or a
//! [`Reject`] with a [`RejectReason`].
//!
//! Properties a test can check:
//! - [`decode`] never panics, whatever the bytes.
//! - Every record yields exactly one of `Ok(event)` or `Err(reject)`, and a reject keeps
//!   the raw bytes unchanged.
//! - The outcome depends only on the record, its ingestion time and the
//!   [`DecodeConfig`]: decoding is deterministic and order-independent.
//!
//! Three formats share the validation rules: JSON lines (the schema in the README), the
//! REES46 clickstream CSV and CDNOW transaction rows (see [`Format`]).

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::dictionary::{self, Dim, DictionaryFull};
use crate::event::{Event, EventType, NewEvent};
use crate::time::{parse_timestamp, Millis, Time};

/// How the bytes of a record are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One JSON object per record (the README's schema).
    Json,
    /// A row of the REES46 clickstream CSV:
    /// `event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session`.
    Rees46,
    /// A row of the CDNOW transaction file: `customer sample_id YYYYMMDD cds dollars`.
    Cdnow,
}

impl Format {
    /// The snake_case name used in views and files.
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Rees46 => "rees46",
            Format::Cdnow => "cdnow",
        }
    }
}

/// A record as it arrived: its format, its position in its source (a line number or an
/// offset, used to derive ids where the format has none) and its bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RawRecord {
    /// Layout of `bytes`.
    pub format: Format,
    /// Position in the source (line number for files).
    pub position: u64,
    /// The bytes as received, without the line terminator.
    pub bytes: Vec<u8>,
}

impl RawRecord {
    /// A JSON record.
    pub fn json(position: u64, bytes: impl Into<Vec<u8>>) -> Self {
        RawRecord { format: Format::Json, position, bytes: bytes.into() }
    }
}

/// Why a record was rejected.
///
/// Variants are declared in the order of their names, so that reasons sort as the API's
/// text column does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// An amount is negative, not finite, or too large.
    BadAmount,
    /// A field has the wrong type.
    BadType,
    /// Another delivery with the same `event_id` was kept.
    Duplicate,
    /// Not valid JSON / not a well-formed row.
    Malformed,
    /// A required field is absent or null.
    MissingField,
    /// The record is larger than the configured maximum.
    Oversized,
    /// `event_ts` is not a valid timestamp, is outside the accepted years, or lies too far
    /// in the future of its ingestion time.
    TimestampOutOfRange,
    /// The event is older than the retention horizon at its ingestion time.
    TooLate,
    /// A dimension value (country, city, category, ...) is new, and the process's
    /// dictionary of them already holds its limit ([`crate::dictionary`]).
    TooManyValues,
    /// `event_type` is not one of the known types.
    UnknownEventType,
}

impl RejectReason {
    /// Every reason.
    pub const ALL: [RejectReason; 10] = [
        RejectReason::Malformed,
        RejectReason::MissingField,
        RejectReason::BadType,
        RejectReason::UnknownEventType,
        RejectReason::TimestampOutOfRange,
        RejectReason::BadAmount,
        RejectReason::Oversized,
        RejectReason::Duplicate,
        RejectReason::TooLate,
        RejectReason::TooManyValues,
    ];

    /// The reason of a name.
    pub fn from_name(name: &str) -> Option<RejectReason> {
        RejectReason::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The snake_case name used in views and files.
    pub fn name(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::MissingField => "missing_field",
            RejectReason::BadType => "bad_type",
            RejectReason::UnknownEventType => "unknown_event_type",
            RejectReason::TimestampOutOfRange => "timestamp_out_of_range",
            RejectReason::BadAmount => "bad_amount",
            RejectReason::Oversized => "oversized",
            RejectReason::Duplicate => "duplicate",
            RejectReason::TooLate => "too_late",
            RejectReason::TooManyValues => "too_many_values",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A rejected record: why, a human-readable detail, and the bytes as received.
///
/// As decoding makes it, `raw` holds every byte (what dead-letter files and topics get);
/// the `rejects` view keeps a [`Reject::sample`], whose `raw` is cut to
/// [`RAW_SAMPLE_BYTES`], so that a large record costs the view little. `size` and
/// `sha256` always describe the whole record. Rejects sort by reason, ingestion time and
/// position first: the `rejects` view's key order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Reject {
    /// The reason class (what `rejected_by_reason` counts).
    pub reason: RejectReason,
    /// Ingestion time of the record.
    pub ingest_time: Time,
    /// Position of the record in its source.
    pub position: u64,
    /// What exactly was wrong, e.g. `missing field user_id`.
    pub detail: String,
    /// Format of the record.
    pub format: Format,
    /// The raw bytes (for duplicates: the canonical JSON of the duplicate delivery), or
    /// their first [`RAW_SAMPLE_BYTES`] in a sample.
    pub raw: Vec<u8>,
    /// How many bytes the record has.
    pub size: u64,
    /// The SHA-256 of the record's bytes, in lower-case hex.
    pub sha256: String,
}

/// How many bytes of a rejected record the `rejects` view keeps.
pub const RAW_SAMPLE_BYTES: usize = 1024;

/// The longest reject detail kept, in bytes.
pub const MAX_DETAIL_BYTES: usize = 512;

impl Reject {
    /// A reject of the whole bytes `raw` (its detail cut to [`MAX_DETAIL_BYTES`]).
    pub fn new(reason: RejectReason, detail: String, ingest_time: Time, format: Format, position: u64, raw: Vec<u8>) -> Reject {
        use sha2::Digest;
        use std::fmt::Write;
        let mut sha256 = String::with_capacity(64);
        for b in sha2::Sha256::digest(&raw) {
            let _ = write!(sha256, "{b:02x}");
        }
        let mut detail = detail;
        if detail.len() > MAX_DETAIL_BYTES {
            let mut end = MAX_DETAIL_BYTES;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
        }
        Reject { reason, detail, ingest_time, format, position, size: raw.len() as u64, raw, sha256 }
    }

    /// The same reject with only the first [`RAW_SAMPLE_BYTES`] of its bytes.
    pub fn sample(&self) -> Reject {
        let mut sample = self.clone();
        sample.raw.truncate(RAW_SAMPLE_BYTES);
        sample
    }
}

/// Validation limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecodeConfig {
    /// Records larger than this many bytes are rejected as `oversized`.
    pub max_record_bytes: usize,
    /// How far back event time may lie behind ingestion time (ms); older is `too_late`.
    /// Accepted events also leave the views once ingestion time passes
    /// `event_ts + retention_ms`.
    pub retention_ms: u64,
    /// How far event time may lie ahead of ingestion time (ms).
    pub max_future_ms: u64,
    /// Earliest accepted event time (inclusive).
    pub min_event_ts: Millis,
    /// Latest accepted event time (exclusive).
    pub max_event_ts: Millis,
    /// Largest accepted amount in cents.
    pub max_amount_cents: i64,
    /// Largest accepted quantity.
    pub max_quantity: u32,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        DecodeConfig {
            max_record_bytes: 64 * 1024,
            retention_ms: 7 * 86_400_000,
            max_future_ms: 3_600_000,
            // 1990-01-01T00:00:00Z .. 2100-01-01T00:00:00Z (CDNOW is from 1997)
            min_event_ts: 631_152_000_000,
            max_event_ts: 4_102_444_800_000,
            max_amount_cents: 100_000_000_000,
            max_quantity: 1_000_000,
        }
    }
}

impl DecodeConfig {
    /// The time at which an event with this event time leaves the views: the first
    /// ingestion time at which it would be `too_late`.
    pub fn expiry(&self, event_ts: Millis) -> Time {
        let end = event_ts.saturating_add(self.retention_ms.min(i64::MAX as u64) as i64);
        end.max(0) as Time
    }
}

/// A failed check, before it is attached to the record.
struct Invalid(RejectReason, String);

impl Invalid {
    fn missing(field: &str) -> Self {
        Invalid(RejectReason::MissingField, format!("missing field {field}"))
    }
}

/// The `duplicate` reject of a delivery of an id already kept: its bytes are the
/// delivery's canonical JSON.
pub fn duplicate_reject(ingest_time: Time, position: u64, event: &Event) -> Reject {
    let detail = format!("event_id {:?} was already delivered", event.event_id());
    Reject::new(RejectReason::Duplicate, detail, ingest_time, Format::Json, position, event.to_json().into_bytes())
}

/// Decodes and validates one record ingested at `ingest_time`.
pub fn decode(record: &RawRecord, ingest_time: Time, config: &DecodeConfig) -> Result<Event, Reject> {
    check(record.format, &record.bytes, record.position, ingest_time, config)
        .map_err(|(reason, detail)| Reject::new(reason, detail, ingest_time, record.format, record.position, record.bytes.clone()))
}

/// What [`decode`] decides about the bytes of a record, without making a [`Reject`]: the
/// event, or the reason and detail it would be rejected with.
pub fn check(format: Format, bytes: &[u8], position: u64, ingest_time: Time, config: &DecodeConfig) -> Result<Event, (RejectReason, String)> {
    let checked = if bytes.len() > config.max_record_bytes {
        Err(Invalid(RejectReason::Oversized, format!("record has {} bytes, the limit is {}", bytes.len(), config.max_record_bytes)))
    } else {
        let mut dims = Dimensions::default();
        let parsed = match format {
            Format::Json => decode_json(bytes, config, &mut dims),
            Format::Rees46 => decode_rees46(bytes, position, config, &mut dims),
            Format::Cdnow => decode_cdnow(bytes, position, config),
        };
        parsed.and_then(|event| validate(event, dims.full, ingest_time, config))
    };
    checked.map_err(|Invalid(reason, detail)| (reason, detail))
}

/// The event time of a record, if it can be read: replay clocks use it to assign
/// ingestion times to historical files. Never fails loudly: a record whose time cannot
/// be read simply does not move the clock (and is rejected later by [`decode`]).
pub fn peek_event_ts(record: &RawRecord) -> Option<Millis> {
    match record.format {
        Format::Json => {
            #[derive(Deserialize)]
            struct TsOnly<'a> {
                #[serde(borrow)]
                event_ts: Option<Cow<'a, str>>,
            }
            let ts: TsOnly<'_> = serde_json::from_slice(&record.bytes).ok()?;
            parse_timestamp(&ts.event_ts?)
        }
        Format::Rees46 => {
            let text = std::str::from_utf8(&record.bytes).ok()?;
            parse_timestamp(text.split(',').next()?)
        }
        Format::Cdnow => {
            let text = std::str::from_utf8(&record.bytes).ok()?;
            cdnow_date(text.split_whitespace().nth(2)?)
        }
    }
}

/// The checks after parsing, in the order their reasons win: first what the record
/// itself holds (the quantity and amount limits, the fields its type needs), then
/// whether its dimension values fit the process's dictionary (`full`: the detail of the
/// first that did not), then how its event time lies to its ingestion time (too far
/// ahead, too late). So a record with a fault of its own gets the same reason whenever
/// it arrives.
fn validate(event: Event, full: Option<String>, ingest_time: Time, config: &DecodeConfig) -> Result<Event, Invalid> {
    let ts = event.event_ts;
    if event.quantity == 0 || event.quantity > config.max_quantity {
        return Err(Invalid(RejectReason::BadAmount, format!("quantity {} is not in 1..={}", event.quantity, config.max_quantity)));
    }
    if let Some(p) = event.price_cents {
        if p > config.max_amount_cents || event.amount_cents() > config.max_amount_cents {
            return Err(Invalid(RejectReason::BadAmount, format!("amount {p} cents exceeds the limit")));
        }
    }
    if event.event_type.needs_amount() && event.price_cents.is_none() {
        return Err(Invalid::missing("price"));
    }
    if event.event_type.needs_product() && event.product_id().is_none() {
        return Err(Invalid::missing("product_id"));
    }
    if event.event_type == EventType::Retraction && event.retracts().is_none() {
        return Err(Invalid::missing("retracts"));
    }
    if event.retracts() == Some(event.event_id()) {
        return Err(Invalid(RejectReason::BadType, "an event cannot retract itself".into()));
    }
    if let Some(detail) = full {
        return Err(Invalid(RejectReason::TooManyValues, detail));
    }
    let ingest = i64::try_from(ingest_time).unwrap_or(i64::MAX);
    if ts > ingest.saturating_add(config.max_future_ms as i64) {
        return Err(Invalid(
            RejectReason::TimestampOutOfRange,
            format!("event_ts lies {} ms after its ingestion time", ts - ingest),
        ));
    }
    if config.expiry(ts) <= ingest_time {
        return Err(Invalid(
            RejectReason::TooLate,
            format!("event_ts lies {} ms before its ingestion time, retention is {} ms", ingest - ts, config.retention_ms),
        ));
    }
    Ok(event)
}

/// An event time read from a record, if it lies in the accepted years: checked as soon as
/// the time is read, so that a record from another century is `timestamp_out_of_range`
/// whatever else it holds.
fn in_years(ts: Millis, config: &DecodeConfig) -> Result<Millis, Invalid> {
    if ts < config.min_event_ts || ts >= config.max_event_ts {
        return Err(Invalid(RejectReason::TimestampOutOfRange, format!("event_ts {ts} ms is outside the accepted years")));
    }
    Ok(ts)
}

/// Converts a decimal amount to cents, rejecting what cannot be money.
fn to_cents(value: f64, field: &str) -> Result<i64, Invalid> {
    if !value.is_finite() {
        return Err(Invalid(RejectReason::BadAmount, format!("{field} is not finite")));
    }
    if value < 0.0 {
        return Err(Invalid(RejectReason::BadAmount, format!("{field} {value} is negative")));
    }
    let cents = (value * 100.0).round();
    if cents >= 9.0e15 {
        return Err(Invalid(RejectReason::BadAmount, format!("{field} {value} is too large")));
    }
    Ok(cents as i64)
}

fn to_micro_degrees(value: Option<f64>, limit: f64, field: &str) -> Result<Option<i32>, Invalid> {
    match value {
        None => Ok(None),
        Some(v) if v.is_finite() && v.abs() <= limit => Ok(Some((v * 1e6).round() as i32)),
        Some(v) => Err(Invalid(RejectReason::BadType, format!("{field} {v} is not a coordinate"))),
    }
}

/// A JSON value as it was written: what ids and amounts are read from, so that an id
/// keeps the exact digits of an integer of any size and an amount too large for a float
/// is an amount out of range, not a parse error.
type Raw<'a> = &'a serde_json::value::RawValue;

/// An identifier (a JSON string, or an integer taken by its decimal digits): `None` for
/// an empty string; `Err` for any other JSON value.
fn id_of<'a>(raw: Option<&'a str>, field: &str) -> Result<Option<Cow<'a, str>>, Invalid> {
    let Some(text) = raw else { return Ok(None) };
    if text.starts_with('"') {
        return json_string(text, field);
    }
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        // An integer is its decimal value: `-0` is `0`.
        let canonical = if digits.bytes().all(|b| b == b'0') { "0" } else { text };
        return Ok(Some(Cow::Borrowed(canonical)));
    }
    if text == "null" {
        return Ok(None);
    }
    Err(Invalid(RejectReason::BadType, format!("{field} must be a string or an integer, not {}", shorten(text))))
}

/// A text field: `None` for an absent, null or empty string; `Err` for another type.
fn text_of<'a>(raw: Option<&'a str>, field: &str) -> Result<Option<Cow<'a, str>>, Invalid> {
    string_of(raw, field, |s| s)
}

/// A text field whose values repeat across events (a country, a category, a UTM source):
/// as [`text_of`], as a code of the process's dictionary.
fn dimension_of(raw: Option<&str>, field: &str, dims: &mut Dimensions) -> Result<Option<Dim>, Invalid> {
    Ok(string_of(raw, field, |s| dims.intern(&s, field))?.flatten())
}

/// A string field made into a value by `make`: `None` for an absent, null or empty
/// string; `Err` for another JSON type.
fn string_of<'a, T>(raw: Option<&'a str>, field: &str, make: impl FnOnce(Cow<'a, str>) -> T) -> Result<Option<T>, Invalid> {
    let Some(raw) = raw else { return Ok(None) };
    match raw {
        "null" => Ok(None),
        text if text.starts_with('"') => Ok(json_string(text, field)?.map(make)),
        text => Err(Invalid(RejectReason::BadType, format!("{field} must be a string, not {}", shorten(text)))),
    }
}

/// The value of a JSON string literal (`None` if empty). The raw value is a complete,
/// valid literal; one without escapes is its bytes between the quotes.
fn json_string<'a>(literal: &'a str, field: &str) -> Result<Option<Cow<'a, str>>, Invalid> {
    let s: Cow<'a, str> = match literal.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Cow::Borrowed(inner),
        _ => serde_json::from_str(literal).map_err(|e| Invalid(RejectReason::Malformed, format!("{field}: {e}")))?,
    };
    Ok((!s.is_empty()).then_some(s))
}

/// Interns the dimension values of one record ([`Dim::within_limit`]), and remembers the
/// first that did not fit: the record is then rejected as `too_many_values`, after its
/// own faults (see [`validate`]).
#[derive(Default)]
struct Dimensions {
    full: Option<String>,
}

impl Dimensions {
    fn intern(&mut self, value: &str, field: &str) -> Option<Dim> {
        match Dim::within_limit(value) {
            Ok(dim) => Some(dim),
            Err(DictionaryFull) => {
                self.full.get_or_insert_with(|| {
                    format!(
                        "{field} {:?} is a new value, and this process already holds {} distinct dimension values or {} bytes of them",
                        shorten(value),
                        dictionary::MAX_VALUES,
                        dictionary::MAX_BYTES
                    )
                });
                None
            }
        }
    }
}

/// A number field read from its literal (`None` if absent or null): a number too large
/// for a float reads as infinite, which amounts reject as out of range.
fn number_of(raw: Option<&str>, field: &str) -> Result<Option<f64>, Invalid> {
    let Some(text) = raw else { return Ok(None) };
    if text == "null" {
        return Ok(None);
    }
    let first = text.bytes().next().unwrap_or(b' ');
    if !(first == b'-' || first.is_ascii_digit()) {
        return Err(Invalid(RejectReason::BadType, format!("{field} must be a number, not {}", shorten(text))));
    }
    text.parse::<f64>().map(Some).map_err(|_| Invalid(RejectReason::BadType, format!("{field} {} is not a number", shorten(text))))
}

/// The first bytes of a value, for a detail.
fn shorten(text: &str) -> String {
    let cut = truncate_at_char(text, 40);
    if cut.len() < text.len() { format!("{cut}...") } else { cut.to_owned() }
}

/// At most `max` bytes of `text`, cut at a character boundary.
pub fn truncate_at_char(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A nested object (`utm`, `device`, `geo`): a JSON object only, never an array (serde
/// would otherwise read a struct from an array by position).
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectVisitor<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }
        deserializer.deserialize_map(ObjectVisitor(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct WireUtm<'a> {
    #[serde(borrow)]
    source: Option<Raw<'a>>,
    #[serde(borrow)]
    medium: Option<Raw<'a>>,
    #[serde(borrow)]
    campaign: Option<Raw<'a>>,
}

#[derive(Deserialize)]
struct WireDevice<'a> {
    #[serde(borrow)]
    os: Option<Raw<'a>>,
    mobile: Option<bool>,
    #[serde(borrow)]
    device_id: Option<Raw<'a>>,
}

#[derive(Deserialize)]
struct WireGeo<'a> {
    #[serde(borrow)]
    country: Option<Raw<'a>>,
    #[serde(borrow)]
    city: Option<Raw<'a>>,
    #[serde(borrow)]
    lat: Option<Raw<'a>>,
    #[serde(borrow)]
    lon: Option<Raw<'a>>,
}

#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(borrow)]
    event_id: Option<Raw<'a>>,
    #[serde(borrow)]
    event_type: Option<Raw<'a>>,
    #[serde(borrow)]
    event_ts: Option<Raw<'a>>,
    #[serde(borrow)]
    user_id: Option<Raw<'a>>,
    #[serde(borrow)]
    session_id: Option<Raw<'a>>,
    #[serde(borrow)]
    product_id: Option<Raw<'a>>,
    #[serde(borrow)]
    category: Option<Raw<'a>>,
    #[serde(borrow)]
    price: Option<Raw<'a>>,
    quantity: Option<u32>,
    #[serde(borrow)]
    currency: Option<Raw<'a>>,
    #[serde(borrow)]
    order_id: Option<Raw<'a>>,
    #[serde(borrow)]
    utm: Option<Object<WireUtm<'a>>>,
    #[serde(borrow)]
    device: Option<Object<WireDevice<'a>>>,
    #[serde(borrow)]
    geo: Option<Object<WireGeo<'a>>>,
    #[serde(borrow)]
    ip: Option<Raw<'a>>,
    #[serde(borrow)]
    card_id: Option<Raw<'a>>,
    #[serde(borrow)]
    billing_country: Option<Raw<'a>>,
    #[serde(borrow)]
    retracts: Option<Raw<'a>>,
}

/// The literal text of each field of a JSON record (none for `null`), as
/// [`decode_json`] reads them: from [`fast_fields`] when the record is plain, else from
/// serde's [`WireEvent`].
#[derive(Debug, Default, PartialEq)]
struct Fields<'a> {
    event_id: Option<&'a str>,
    event_type: Option<&'a str>,
    event_ts: Option<&'a str>,
    user_id: Option<&'a str>,
    session_id: Option<&'a str>,
    product_id: Option<&'a str>,
    category: Option<&'a str>,
    price: Option<&'a str>,
    quantity: Option<u32>,
    currency: Option<&'a str>,
    order_id: Option<&'a str>,
    /// `source`, `medium`, `campaign`.
    utm: Option<[Option<&'a str>; 3]>,
    /// `os`, `mobile`, `device_id`.
    device: Option<(Option<&'a str>, Option<bool>, Option<&'a str>)>,
    /// `country`, `city`, `lat`, `lon`.
    geo: Option<[Option<&'a str>; 4]>,
    ip: Option<&'a str>,
    card_id: Option<&'a str>,
    billing_country: Option<&'a str>,
    retracts: Option<&'a str>,
}

impl<'a> From<WireEvent<'a>> for Fields<'a> {
    fn from(w: WireEvent<'a>) -> Self {
        let get = |r: Option<Raw<'a>>| r.map(|r| r.get());
        Fields {
            event_id: get(w.event_id),
            event_type: get(w.event_type),
            event_ts: get(w.event_ts),
            user_id: get(w.user_id),
            session_id: get(w.session_id),
            product_id: get(w.product_id),
            category: get(w.category),
            price: get(w.price),
            quantity: w.quantity,
            currency: get(w.currency),
            order_id: get(w.order_id),
            utm: w.utm.map(|Object(u)| [get(u.source), get(u.medium), get(u.campaign)]),
            device: w.device.map(|Object(d)| (get(d.os), d.mobile, get(d.device_id))),
            geo: w.geo.map(|Object(g)| [get(g.country), get(g.city), get(g.lat), get(g.lon)]),
            ip: get(w.ip),
            card_id: get(w.card_id),
            billing_country: get(w.billing_country),
            retracts: get(w.retracts),
        }
    }
}

/// The fields of a plain record in one pass over its bytes, or `None` to leave the
/// record to serde: a record is plain when it is one JSON object of known keys, each at
/// most once, whose strings have no escapes, whose numbers are JSON numbers, whose
/// `utm`, `device` and `geo` are objects of their known keys (or `null`), followed only
/// by whitespace. serde reads such a record into the same literals, so both paths give
/// the same event; anything else (an escape, an unknown or repeated key, a value of
/// another JSON type, a syntax error) goes to serde, which also words the errors.
fn fast_fields(text: &str) -> Option<Fields<'_>> {
    let mut p = Scan { text, at: 0 };
    let mut f = Fields::default();
    p.object(|p, key| {
        let slot = match key {
            "event_id" => &mut f.event_id,
            "event_type" => &mut f.event_type,
            "event_ts" => &mut f.event_ts,
            "user_id" => &mut f.user_id,
            "session_id" => &mut f.session_id,
            "product_id" => &mut f.product_id,
            "category" => &mut f.category,
            "price" => &mut f.price,
            "currency" => &mut f.currency,
            "order_id" => &mut f.order_id,
            "ip" => &mut f.ip,
            "card_id" => &mut f.card_id,
            "billing_country" => &mut f.billing_country,
            "retracts" => &mut f.retracts,
            "quantity" => return once(&mut f.quantity, p.quantity()?),
            "utm" => {
                let utm = p.nested(|p, key, u: &mut [Option<&str>; 3]| match key {
                    "source" => once(&mut u[0], p.scalar()?),
                    "medium" => once(&mut u[1], p.scalar()?),
                    "campaign" => once(&mut u[2], p.scalar()?),
                    _ => None,
                })?;
                return once(&mut f.utm, utm);
            }
            "device" => {
                let device = p.nested(|p, key, d: &mut (Option<&str>, Option<bool>, Option<&str>)| match key {
                    "os" => once(&mut d.0, p.scalar()?),
                    "mobile" => once(&mut d.1, p.boolean()?),
                    "device_id" => once(&mut d.2, p.scalar()?),
                    _ => None,
                })?;
                return once(&mut f.device, device);
            }
            "geo" => {
                let geo = p.nested(|p, key, g: &mut [Option<&str>; 4]| match key {
                    "country" => once(&mut g[0], p.scalar()?),
                    "city" => once(&mut g[1], p.scalar()?),
                    "lat" => once(&mut g[2], p.scalar()?),
                    "lon" => once(&mut g[3], p.scalar()?),
                    _ => None,
                })?;
                return once(&mut f.geo, geo);
            }
            _ => return None,
        };
        once(slot, p.scalar()?)
    })?;
    p.skip_ws();
    (p.at == text.len()).then_some(f)
}

/// Sets a field read once; `None` (leave the record to serde) for a repeated key.
fn once<T>(slot: &mut Option<T>, value: Option<T>) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = value;
    Some(())
}

/// A cursor over a record for [`fast_fields`]; each reader returns `None` for what it
/// leaves to serde.
struct Scan<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.skip_ws();
        (self.peek() == Some(byte)).then(|| self.at += 1)
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if self.text[self.at..].starts_with(word) {
            self.at += word.len();
            true
        } else {
            false
        }
    }

    /// An object, calling `field` at each key with the cursor before its value.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Some(());
        }
        loop {
            self.skip_ws();
            let key = self.string()?;
            let key = &key[1..key.len() - 1];
            self.eat(b':')?;
            self.skip_ws();
            field(self, key)?;
            self.skip_ws();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A nested object of known keys, or `null` (no object).
    fn nested<T: Default>(&mut self, mut field: impl FnMut(&mut Self, &'a str, &mut T) -> Option<()>) -> Option<Option<T>> {
        if self.eat_word("null") {
            return Some(None);
        }
        let mut value = T::default();
        self.object(|p, key| field(p, key, &mut value))?;
        Some(Some(value))
    }

    /// A string without escapes, as its literal (quotes included).
    fn string(&mut self) -> Option<&'a str> {
        let bytes = self.text.as_bytes();
        if bytes.get(self.at) != Some(&b'"') {
            return None;
        }
        let start = self.at;
        let len = bytes[start + 1..].iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        let end = start + 1 + len;
        if bytes[end] != b'"' {
            return None;
        }
        self.at = end + 1;
        Some(&self.text[start..self.at])
    }

    /// A string or a JSON number as its literal, or `null` as no value (as serde reads an
    /// optional raw value).
    fn scalar(&mut self) -> Option<Option<&'a str>> {
        match self.peek()? {
            b'"' => self.string().map(Some),
            b'n' if self.eat_word("null") => Some(None),
            b'-' | b'0'..=b'9' => self.number().map(Some),
            _ => None,
        }
    }

    /// A number by JSON's grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<&'a str> {
        let bytes = self.text.as_bytes();
        let start = self.at;
        let mut i = start;
        let digits = |i: &mut usize| {
            let from = *i;
            while bytes.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i > from
        };
        if bytes.get(i) == Some(&b'-') {
            i += 1;
        }
        match bytes.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => {
                digits(&mut i);
            }
            _ => return None,
        }
        if bytes.get(i) == Some(&b'.') {
            i += 1;
            if !digits(&mut i) {
                return None;
            }
        }
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(bytes.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if !digits(&mut i) {
                return None;
            }
        }
        self.at = i;
        Some(&self.text[start..i])
    }

    /// A `u32` written as a plain integer, or `null`.
    fn quantity(&mut self) -> Option<Option<u32>> {
        if self.eat_word("null") {
            return Some(None);
        }
        let literal = self.number()?;
        if literal.starts_with('-') || literal.contains(['.', 'e', 'E']) {
            return None;
        }
        literal.parse().ok().map(Some)
    }

    /// `true`, `false` or `null`.
    fn boolean(&mut self) -> Option<Option<bool>> {
        if self.eat_word("true") {
            Some(Some(true))
        } else if self.eat_word("false") {
            Some(Some(false))
        } else if self.eat_word("null") {
            Some(None)
        } else {
            None
        }
    }
}

/// A JSON record as an [`Event`]. Which reason a record with several faults gets, in
/// order: not UTF-8, not a JSON object, or not JSON (`malformed`); a field of the wrong
/// JSON type (`bad_type`: first `quantity`, `device.mobile` or a `utm`/`device`/`geo`
/// that is not an object, in record order, then the other fields in the schema's
/// order); `event_id`, `event_type`, `event_ts`, `user_id` absent, null or empty
/// (`missing_field`, in that order); an unknown `event_type`; an `event_ts` that is not
/// an RFC 3339 time or lies outside the accepted years (`timestamp_out_of_range`); a
/// price that cannot be money (`bad_amount`) or a coordinate out of range (`bad_type`);
/// then [`validate`]'s checks.
fn decode_json(bytes: &[u8], config: &DecodeConfig, dims: &mut Dimensions) -> Result<Event, Invalid> {
    let text = std::str::from_utf8(bytes).map_err(|e| Invalid(RejectReason::Malformed, format!("the record is not UTF-8 (byte {})", e.valid_up_to())))?;
    if !text.trim_start().starts_with('{') {
        let start = shorten(text.trim_start());
        return Err(Invalid(RejectReason::Malformed, format!("a record is a JSON object, not {start:?}")));
    }
    let wire = match fast_fields(text) {
        Some(fields) => fields,
        None => Fields::from(serde_json::from_str::<WireEvent<'_>>(text).map_err(|e| {
            let reason = match e.classify() {
                serde_json::error::Category::Data => RejectReason::BadType,
                _ => RejectReason::Malformed,
            };
            Invalid(reason, e.to_string())
        })?),
    };
    let event_id = id_of(wire.event_id, "event_id")?;
    let type_name = text_of(wire.event_type, "event_type")?;
    let ts_text = text_of(wire.event_ts, "event_ts")?;
    let user_id = id_of(wire.user_id, "user_id")?;
    let session_id = id_of(wire.session_id, "session_id")?;
    let product_id = id_of(wire.product_id, "product_id")?;
    let category = dimension_of(wire.category, "category", dims)?;
    let price = number_of(wire.price, "price")?;
    let currency = dimension_of(wire.currency, "currency", dims)?;
    let order_id = id_of(wire.order_id, "order_id")?;
    let [utm_source, utm_medium, utm_campaign] = match wire.utm {
        None => [None, None, None],
        Some([source, medium, campaign]) => [dimension_of(source, "utm.source", dims)?, dimension_of(medium, "utm.medium", dims)?, dimension_of(campaign, "utm.campaign", dims)?],
    };
    let (device_os, mobile, device_id) = match wire.device {
        None => (None, None, None),
        Some((os, mobile, device_id)) => (dimension_of(os, "device.os", dims)?, mobile, id_of(device_id, "device.device_id")?),
    };
    let (country, city, lat, lon) = match wire.geo {
        None => (None, None, None, None),
        Some([country, city, lat, lon]) => (dimension_of(country, "geo.country", dims)?, dimension_of(city, "geo.city", dims)?, number_of(lat, "geo.lat")?, number_of(lon, "geo.lon")?),
    };
    let ip = text_of(wire.ip, "ip")?;
    let card_id = id_of(wire.card_id, "card_id")?;
    let billing_country = dimension_of(wire.billing_country, "billing_country", dims)?;
    let retracts = id_of(wire.retracts, "retracts")?;
    let event_id = event_id.ok_or_else(|| Invalid::missing("event_id"))?;
    let type_name = type_name.ok_or_else(|| Invalid::missing("event_type"))?;
    let ts_text = ts_text.ok_or_else(|| Invalid::missing("event_ts"))?;
    let user_id = user_id.ok_or_else(|| Invalid::missing("user_id"))?;
    let event_type = EventType::from_name(&type_name)
        .ok_or_else(|| Invalid(RejectReason::UnknownEventType, format!("unknown event_type {:?}", shorten(&type_name))))?;
    let event_ts = parse_timestamp(&ts_text)
        .ok_or_else(|| Invalid(RejectReason::TimestampOutOfRange, format!("event_ts {:?} is not an RFC 3339 time", shorten(&ts_text))))?;
    let event_ts = in_years(event_ts, config)?;
    let price_cents = price.map(|p| to_cents(p, "price")).transpose()?;
    let lat_e6 = to_micro_degrees(lat, 90.0, "geo.lat")?;
    let lon_e6 = to_micro_degrees(lon, 180.0, "geo.lon")?;
    let texts = NewEvent {
        event_id: &event_id,
        user_id: &user_id,
        session_id: session_id.as_deref(),
        product_id: product_id.as_deref(),
        order_id: order_id.as_deref(),
        ip: ip.as_deref(),
        device_id: device_id.as_deref(),
        card_id: card_id.as_deref(),
        retracts: retracts.as_deref(),
    };
    let mut event = texts.build(event_type, event_ts);
    event.price_cents = price_cents;
    event.quantity = wire.quantity.unwrap_or(1);
    (event.mobile, event.lat_e6, event.lon_e6) = (mobile, lat_e6, lon_e6);
    (event.category, event.currency, event.billing_country) = (category, currency, billing_country);
    (event.utm_source, event.utm_medium, event.utm_campaign) = (utm_source, utm_medium, utm_campaign);
    (event.device_os, event.country, event.city) = (device_os, country, city);
    Ok(event)
}

/// The REES46 header row (files start with it; readers skip it).
pub const REES46_HEADER: &str = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session";

/// A REES46 row. Event ids are `rees46:<line>`; `view` becomes `product_view`, `cart`
/// becomes `add_to_cart`; the category is `category_code` (absent when empty).
fn decode_rees46<'a>(bytes: &'a [u8], position: u64, config: &DecodeConfig, dims: &mut Dimensions) -> Result<Event, Invalid> {
    let text = std::str::from_utf8(bytes).map_err(|_| Invalid(RejectReason::Malformed, "row is not UTF-8".into()))?;
    let fields: Vec<&str> = text.trim_end_matches(['\r', '\n']).split(',').collect();
    if fields.len() != 9 {
        return Err(Invalid(RejectReason::Malformed, format!("row has {} fields, REES46 rows have 9", fields.len())));
    }
    let [time, kind, product, _category_id, category_code, _brand, price, user, session] =
        <[&str; 9]>::try_from(fields).expect("length checked above");
    let event_type = match kind {
        "view" => EventType::ProductView,
        "cart" => EventType::AddToCart,
        "remove_from_cart" => EventType::RemoveFromCart,
        "purchase" => EventType::Purchase,
        other => return Err(Invalid(RejectReason::UnknownEventType, format!("unknown REES46 event_type {other:?}"))),
    };
    let event_ts = parse_timestamp(time)
        .ok_or_else(|| Invalid(RejectReason::TimestampOutOfRange, format!("event_time {time:?} is not a time")))?;
    let event_ts = in_years(event_ts, config)?;
    let price: f64 = price.parse().map_err(|_| Invalid(RejectReason::BadType, format!("price {price:?} is not a number")))?;
    if user.is_empty() {
        return Err(Invalid::missing("user_id"));
    }
    let non_empty = |s: &'a str| (!s.is_empty()).then_some(s);
    let event_id = format!("rees46:{position}");
    let texts = NewEvent { event_id: &event_id, user_id: user, session_id: non_empty(session), product_id: non_empty(product), ..NewEvent::default() };
    let mut event = texts.build(event_type, event_ts);
    event.category = (!category_code.is_empty()).then(|| dims.intern(category_code, "category_code")).flatten();
    event.price_cents = Some(to_cents(price, "price")?);
    Ok(event)
}

fn cdnow_date(text: &str) -> Option<Millis> {
    let b = text.as_bytes();
    if b.len() != 8 {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[4..6])?;
    let day = digits(&b[6..8])?;
    parse_timestamp(&format!("{year:04}-{month:02}-{day:02}T00:00:00Z"))
}

fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |acc, &d| d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0')))
}

/// A CDNOW row becomes a purchase at midnight UTC of its day: user `cdnow:<customer id>`,
/// one order of `dollars` (price = total, quantity 1), event id `cdnow:<line>`.
fn decode_cdnow(bytes: &[u8], position: u64, config: &DecodeConfig) -> Result<Event, Invalid> {
    let text = std::str::from_utf8(bytes).map_err(|_| Invalid(RejectReason::Malformed, "row is not UTF-8".into()))?;
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [customer, _sample, date, cds, dollars] = <[&str; 5]>::try_from(fields)
        .map_err(|f| Invalid(RejectReason::Malformed, format!("row has {} fields, CDNOW rows have 5", f.len())))?;
    let event_ts = cdnow_date(date)
        .ok_or_else(|| Invalid(RejectReason::TimestampOutOfRange, format!("date {date:?} is not YYYYMMDD")))?;
    let event_ts = in_years(event_ts, config)?;
    let _: u32 = cds.parse().map_err(|_| Invalid(RejectReason::BadType, format!("cd count {cds:?} is not an integer")))?;
    let dollars: f64 = dollars.parse().map_err(|_| Invalid(RejectReason::BadType, format!("amount {dollars:?} is not a number")))?;
    let event_id = format!("cdnow:{position}");
    let user_id = format!("cdnow:{customer}");
    let mut event = NewEvent { event_id: &event_id, user_id: &user_id, order_id: Some(&event_id), ..NewEvent::default() }.build(EventType::Purchase, event_ts);
    event.price_cents = Some(to_cents(dollars, "amount")?);
    event.currency = Some(Dim::new("USD"));
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Time = 1_700_000_000_000;

    fn json(text: &str) -> Result<Event, Reject> {
        decode(&RawRecord::json(1, text), T, &DecodeConfig::default())
    }

    fn reason(text: &str) -> RejectReason {
        json(text).expect_err("must be rejected").reason
    }

    const OK: &str = r#"{"event_id":"e1","event_type":"purchase","event_ts":"2023-11-14T22:13:20Z","user_id":42,"price":19.99,"quantity":2,"geo":{"country":"DE","lat":52.52,"lon":13.405},"utm":{"source":"google"}}"#;

    fn with(field: &str) -> String {
        format!(r#"{{"event_id":"e","event_type":"page_view","event_ts":"2023-11-14T22:13:20Z","user_id":"u",{field}}}"#)
    }

    /// What is not a JSON object is malformed, whatever JSON it is; invalid UTF-8 anywhere
    /// in a record is malformed too, even in a field no one reads.
    #[test]
    fn only_objects_are_events() {
        for text in ["[]", "42", "null", "\"s\"", "[1,2", "  [\"e\",\"page_view\"]", "", "{\"event_id\": \"broken"] {
            assert_eq!(reason(text), RejectReason::Malformed, "{text:?}");
        }
        let eighteen: Vec<String> = (0..18).map(|i| format!("\"f{i}\"")).collect();
        assert_eq!(reason(&format!("[{}]", eighteen.join(","))), RejectReason::Malformed, "an array is not an event");
        let mut bytes = with(r#""note":"x""#).into_bytes();
        let at = bytes.iter().position(|b| *b == b'x').unwrap();
        bytes[at] = 0xff;
        let err = decode(&RawRecord::json(1, bytes), T, &DecodeConfig::default()).expect_err("not UTF-8");
        assert_eq!(err.reason, RejectReason::Malformed);
        for nested in [r#""geo":["FR","Paris"]"#, r#""utm":["google"]"#, r#""device":[1]"#, r#""geo":"FR""#] {
            assert_eq!(reason(&with(nested)), RejectReason::BadType, "{nested}");
        }
    }

    /// Ids are strings or integers, by the integer's decimal value whatever its size; any
    /// other JSON value is a bad type. Empty optional strings are absent.
    #[test]
    fn ids_are_strings_or_integers() {
        let e = json(&OK.replace("\"user_id\":42", "\"user_id\":18446744073709551616")).expect("a large integer id");
        assert_eq!(e.user_id(), "18446744073709551616");
        let e = json(&OK.replace("\"event_id\":\"e1\"", "\"event_id\":-0")).expect("-0 is an integer");
        assert_eq!(e.event_id(), "0");
        for field in ["session_id", "order_id", "product_id", "card_id", "retracts"] {
            let e = json(&with(&format!("\"{field}\":123"))).expect("an integer id");
            let got = match field {
                "session_id" => e.session_id(),
                "order_id" => e.order_id(),
                "product_id" => e.product_id(),
                "card_id" => e.card_id(),
                _ => e.retracts(),
            };
            assert_eq!(got, Some("123"), "{field}");
            assert_eq!(reason(&with(&format!("\"{field}\":1.5"))), RejectReason::BadType, "{field} 1.5");
            assert_eq!(reason(&with(&format!("\"{field}\":true"))), RejectReason::BadType, "{field} true");
        }
        assert_eq!(reason(&OK.replace("\"user_id\":42", "\"user_id\":[42]")), RejectReason::BadType);
        let e = json(&with(r#""category":"","session_id":"","currency":"""#)).expect("empty optional strings");
        assert!(e.category.is_none() && e.session_id().is_none() && e.currency.is_none());
        let product_view = r#"{"event_id":"e","event_type":"product_view","event_ts":"2023-11-14T22:13:20Z","user_id":"u","product_id":""}"#;
        assert_eq!(reason(product_view), RejectReason::MissingField, "an empty product_id is none");
        let retraction = r#"{"event_id":"e","event_type":"retraction","event_ts":"2023-11-14T22:13:20Z","user_id":"u","retracts":""}"#;
        assert_eq!(reason(retraction), RejectReason::MissingField, "an empty retracts is none");
        assert_eq!(reason(&OK.replace("\"user_id\":42", "\"user_id\":\"\"")), RejectReason::MissingField);
    }

    /// Amounts too large for a float are out of range, not unreadable; cents round half
    /// away from zero on the float's binary value.
    #[test]
    fn amounts_and_their_boundaries() {
        assert_eq!(reason(&OK.replace("19.99", "1e400")), RejectReason::BadAmount);
        assert_eq!(reason(&OK.replace("19.99", "-0.01")), RejectReason::BadAmount);
        assert_eq!(reason(&OK.replace("19.99", "\"19.99\"")), RejectReason::BadType);
        let e = json(&OK.replace("19.99", "1.005").replace("\"quantity\":2", "\"quantity\":1")).expect("valid");
        assert_eq!(e.price_cents, Some(100), "1.005 is 1.00499999999999989... as a float");
        let e = json(&OK.replace("19.99", "0.125")).expect("valid");
        assert_eq!(e.price_cents, Some(13), "half away from zero");
    }

    /// `too_late` starts exactly at event time plus retention.
    #[test]
    fn the_retention_boundary() {
        let config = DecodeConfig { retention_ms: 3_600_000, ..DecodeConfig::default() };
        let at = |ingest: Time| decode(&RawRecord::json(1, with("\"x\":0")), ingest, &config).map(|_| ()).map_err(|r| r.reason);
        let ts = 1_700_000_000_000u64;
        assert_eq!(at(ts + 3_600_000), Err(RejectReason::TooLate));
        assert_eq!(at(ts + 3_599_999), Ok(()));
    }

    #[test]
    fn accepts_a_full_event() {
        let e = json(OK).expect("valid");
        assert_eq!(e.event_id(), "e1");
        assert_eq!(e.user_id(), "42");
        assert_eq!(e.event_type, EventType::Purchase);
        assert_eq!(e.event_ts, 1_700_000_000_000);
        assert_eq!(e.amount_cents(), 3998);
        assert_eq!(e.country.as_deref(), Some("DE"));
        assert_eq!(e.lat_e6, Some(52_520_000));
        assert_eq!(e.utm_source.as_deref(), Some("google"));
        // The canonical form decodes to the same event.
        assert_eq!(json(&e.to_json()).expect("canonical form is valid"), e);
    }

    #[test]
    fn classifies_every_reason() {
        assert_eq!(reason("{not json"), RejectReason::Malformed);
        assert_eq!(reason(""), RejectReason::Malformed);
        assert_eq!(reason(r#"{"event_type":"page_view","event_ts":"2023-11-14T22:13:20Z","user_id":"u"}"#), RejectReason::MissingField);
        assert_eq!(reason(r#"{"event_id":"e","event_type":"purchase","event_ts":"2023-11-14T22:13:20Z","user_id":"u"}"#), RejectReason::MissingField);
        assert_eq!(reason(r#"{"event_id":"e","event_type":"page_view","event_ts":"2023-11-14T22:13:20Z","user_id":"u","price":"x"}"#), RejectReason::BadType);
        assert_eq!(reason(r#"{"event_id":["e"],"event_type":"page_view","event_ts":"2023-11-14T22:13:20Z","user_id":"u"}"#), RejectReason::BadType);
        assert_eq!(reason(r#"{"event_id":"e","event_type":"teleport","event_ts":"2023-11-14T22:13:20Z","user_id":"u"}"#), RejectReason::UnknownEventType);
        assert_eq!(reason(r#"{"event_id":"e","event_type":"page_view","event_ts":"yesterday","user_id":"u"}"#), RejectReason::TimestampOutOfRange);
        assert_eq!(reason(r#"{"event_id":"e","event_type":"page_view","event_ts":"1989-12-31T23:59:59Z","user_id":"u"}"#), RejectReason::TimestampOutOfRange);
        assert_eq!(reason(r#"{"event_id":"e","event_type":"page_view","event_ts":"2023-11-15T22:13:20Z","user_id":"u"}"#), RejectReason::TimestampOutOfRange);
        assert_eq!(reason(r#"{"event_id":"e","event_type":"page_view","event_ts":"2023-11-01T22:13:20Z","user_id":"u"}"#), RejectReason::TooLate);
        assert_eq!(reason(r#"{"event_id":"e","event_type":"purchase","event_ts":"2023-11-14T22:13:20Z","user_id":"u","price":-1}"#), RejectReason::BadAmount);
        assert_eq!(reason(r#"{"event_id":"e","event_type":"purchase","event_ts":"2023-11-14T22:13:20Z","user_id":"u","price":1e300}"#), RejectReason::BadAmount);
        assert_eq!(reason(r#"{"event_id":"e","event_type":"purchase","event_ts":"2023-11-14T22:13:20Z","user_id":"u","price":1,"quantity":0}"#), RejectReason::BadAmount);
        let big = format!(r#"{{"event_id":"e","event_type":"page_view","event_ts":"2023-11-14T22:13:20Z","user_id":"{}"}}"#, "u".repeat(70_000));
        assert_eq!(reason(&big), RejectReason::Oversized);
    }

    #[test]
    fn a_reject_keeps_its_bytes() {
        let raw = b"\xff\xfe garbage".to_vec();
        let rej = decode(&RawRecord::json(7, raw.clone()), T, &DecodeConfig::default()).expect_err("garbage");
        assert_eq!(rej.raw, raw);
        assert_eq!(rej.position, 7);
        assert_eq!(rej.ingest_time, T);
    }

    #[test]
    fn adapters() {
        let row = RawRecord {
            format: Format::Rees46,
            position: 3,
            bytes: b"2019-10-01 00:00:00 UTC,view,3900821,2053013552326770905,appliances.environment.water_heater,aqua,33.20,554748717,9333dfbd-b87a-4708-9857-6336556b0fcc".to_vec(),
        };
        let t = 1_569_888_000_000;
        let e = decode(&row, t, &DecodeConfig::default()).expect("valid row");
        assert_eq!((e.event_id(), e.event_type, e.price_cents), ("rees46:3", EventType::ProductView, Some(3320)));
        assert_eq!(e.category.as_deref(), Some("appliances.environment.water_heater"));
        assert_eq!(peek_event_ts(&row), Some(t as i64));
        let cut = RawRecord { bytes: b"2019-10-01 02:50:00 UTC,view,10900305,2053013555069845885,appliances.kitchen.mixer,elenberg,25.71,520403300".to_vec(), ..row };
        assert_eq!(decode(&cut, t, &DecodeConfig::default()).expect_err("cut row").reason, RejectReason::Malformed);
        let cd = RawRecord { format: Format::Cdnow, position: 1, bytes: b" 00004 0001 19970101  2   29.33".to_vec() };
        let e = decode(&cd, 852_076_800_000 + 1, &DecodeConfig::default()).expect("cdnow row");
        assert_eq!((e.user_id(), e.amount_cents(), e.event_ts), ("cdnow:00004", 2933, 852_076_800_000));
    }

    /// What serde reads a record into, as the one-pass reader's literals.
    fn serde_fields(text: &str) -> Option<Fields<'_>> {
        serde_json::from_str::<WireEvent<'_>>(text).ok().map(Fields::from)
    }

    /// Whether the one-pass reader took `text`; when it does, it must agree with serde.
    fn fast_agrees(text: &str) -> bool {
        match fast_fields(text) {
            Some(fast) => {
                assert_eq!(serde_fields(text).as_ref(), Some(&fast), "{text:?}");
                true
            }
            None => false,
        }
    }

    /// The one-pass reader takes the generator's plain records and gives serde's literals
    /// for every record it takes, among random edits of them too; what it leaves to serde
    /// includes every syntax serde rejects.
    #[test]
    fn fast_fields_agree_with_serde() {
        use crate::generator::{Generator, GeneratorConfig};
        use rand::{Rng, SeedableRng};
        let mut generator = Generator::new(GeneratorConfig::default(), 0, 1);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(19);
        let alphabet: Vec<char> = "\"\\{}[],: 0123456789.-+eEtrufalsn\u{e9}\u{1}x".chars().collect();
        let (mut plain, mut taken, mut edited_taken) = (0, 0, 0);
        for _ in 0..20_000 {
            let Ok(text) = String::from_utf8(generator.next_record().record.bytes) else { continue };
            if serde_fields(&text).is_some() && !text.contains('\\') {
                plain += 1;
            }
            taken += usize::from(fast_agrees(&text));
            let mut chars: Vec<char> = text.chars().collect();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..=chars.len());
                match rng.random_range(0..3) {
                    0 if at < chars.len() => {
                        chars.remove(at);
                    }
                    1 if at < chars.len() => chars[at] = alphabet[rng.random_range(0..alphabet.len())],
                    _ => chars.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                }
            }
            edited_taken += usize::from(fast_agrees(&chars.into_iter().collect::<String>()));
        }
        assert!(taken * 100 >= plain * 95, "the one-pass reader took {taken} of {plain} plain records");
        assert!(edited_taken > 0, "some edits leave a plain record");
        for text in [
            r#"{"event_id":"e","event_id":"f"}"#,
            r#"{"utm":{"source":"a","extra":1}}"#,
            r#"{"price":01}"#,
            r#"{"price":1.}"#,
            r#"{"price":-}"#,
            r#"{"price":1e}"#,
            r#"{"quantity":2.0}"#,
            r#"{"quantity":-1}"#,
            r#"{"quantity":4294967296}"#,
            r#"{"event_id":"a\"b"}"#,
            r#"{"event_id":"e"} x"#,
            r#"{"event_id":"e",}"#,
            r#"{"device":{"mobile":1}}"#,
            r#"{"geo":[1,2]}"#,
            r#"{"category":true}"#,
        ] {
            assert!(!fast_agrees(text), "{text:?} is left to serde");
        }
        for text in [r#"{}"#, r#" { "price" : -0.5e+3 , "quantity" : null , "utm" : null , "geo" : {} } "#, r#"{"device":{"mobile":false,"os":null},"session_id":null}"#] {
            assert!(fast_agrees(text), "{text:?} is plain");
        }
    }
}
