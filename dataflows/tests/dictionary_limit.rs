//! The dictionary of dimension values at its limit: a record with a value the process
//! has not seen is rejected as `too_many_values` (after its own faults, before its
//! time's), and records with known values still decode. Its own test binary, because
//! it fills the process's dictionary.

use tidemark_dataflows::decode::{decode, DecodeConfig, RawRecord, RejectReason};
use tidemark_dataflows::dictionary::{Dim, DictionaryFull, MAX_VALUES};

const INGEST: u64 = 1_700_000_000_000;

fn record(fields: &str) -> RawRecord {
    RawRecord::json(0, format!(r#"{{"event_id":"e1","event_type":"page_view","event_ts":"2023-11-14T22:13:20Z","user_id":"u1"{fields}}}"#))
}

fn reason(fields: &str) -> Option<RejectReason> {
    decode(&record(fields), INGEST, &DecodeConfig::default()).err().map(|r| r.reason)
}

#[test]
fn a_new_value_past_the_limit_is_rejected_and_known_ones_still_decode() {
    // Known before the dictionary fills.
    assert_eq!(reason(r#","geo":{"country":"DE","city":"Berlin"}"#), None);
    let (held, _) = Dim::dictionary_size();
    for i in held..MAX_VALUES {
        Dim::within_limit(&format!("filler {i}")).expect("room below the limit");
    }
    assert_eq!(Dim::within_limit("one more"), Err(DictionaryFull));

    assert_eq!(reason(r#","geo":{"country":"DE","city":"Berlin"}"#), None, "known values decode at the limit");
    assert_eq!(reason(r#","geo":{"country":"DE","city":"Hamburg"}"#), Some(RejectReason::TooManyValues));
    let rejected = decode(&record(r#","utm":{"source":"a new source"}"#), INGEST, &DecodeConfig::default()).expect_err("a new value");
    assert_eq!(rejected.reason, RejectReason::TooManyValues);
    assert!(rejected.detail.contains("utm.source") && rejected.detail.contains("a new source"), "the detail names the field and value: {}", rejected.detail);
    // The record's own faults win; its time's faults lose.
    assert_eq!(reason(r#","geo":{"country":"XX","lat":95.0}"#), Some(RejectReason::BadType), "a coordinate out of range is the record's own fault");
    // Retention of one second, ingested a minute after the event time.
    let late = DecodeConfig { retention_ms: 1_000, ..DecodeConfig::default() };
    let too_late = |fields: &str| decode(&record(fields), INGEST + 60_000, &late).err().map(|r| r.reason);
    assert_eq!(too_late(r#","geo":{"country":"DE"}"#), Some(RejectReason::TooLate));
    assert_eq!(too_late(r#","geo":{"country":"YY"}"#), Some(RejectReason::TooManyValues));
    // Values read back from another process are taken whatever the dictionary holds.
    let back: Dim = serde_json::from_str(r#""from another process""#).expect("always interned");
    assert_eq!(&*back, "from another process");
}
