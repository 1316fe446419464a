//! The decoder never panics and always accounts for its input: arbitrary bytes, mutated
//! valid records, and every format.

use proptest::prelude::*;
use tidemark_dataflows::decode::{decode, DecodeConfig, Format, RawRecord};

const VALID: &str = r#"{"event_id":"e1","event_type":"purchase","event_ts":"2026-11-01T10:00:00Z","user_id":"u1","price":12.5,"quantity":2,"geo":{"country":"DE","lat":52.5,"lon":13.4},"device":{"os":"ios","mobile":true},"utm":{"source":"google"},"order_id":"o1","card_id":"c1"}"#;
const INGEST: u64 = 1_793_527_200_000; // 2026-11-01T10:00:00Z

fn format_strategy() -> impl Strategy<Value = Format> {
    prop_oneof![Just(Format::Json), Just(Format::Rees46), Just(Format::Cdnow)]
}

fn check(format: Format, bytes: Vec<u8>, ingest: u64) {
    let record = RawRecord { format, position: 9, bytes: bytes.clone() };
    match decode(&record, ingest, &DecodeConfig::default()) {
        Ok(event) => {
            assert!(!event.event_id().is_empty() && !event.user_id().is_empty());
            assert!(event.price_cents.unwrap_or(0) >= 0);
            assert!(event.quantity >= 1);
        }
        Err(reject) => {
            assert_eq!(reject.raw, bytes, "a reject keeps the bytes it was given");
            assert_eq!((reject.position, reject.ingest_time, reject.format), (9, ingest, format));
            assert!(!reject.detail.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(format in format_strategy(), bytes in proptest::collection::vec(any::<u8>(), 0..512), ingest in any::<u64>()) {
        check(format, bytes, ingest);
    }

    #[test]
    fn mutated_records_never_panic(
        format in format_strategy(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let mut bytes = VALID.as_bytes().to_vec();
        for (at, byte, op) in edits {
            let i = at.index(bytes.len().max(1));
            match op {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i.min(bytes.len()), byte),
                _ if i < bytes.len() => { bytes.truncate(i); }
                _ => {}
            }
        }
        check(format, bytes, INGEST);
    }

    #[test]
    fn json_values_of_any_shape_never_panic(field in "[a-z_]{1,12}", value in prop_oneof![
        Just("null".to_owned()), Just("true".to_owned()), Just("[]".to_owned()), Just("{}".to_owned()),
        any::<i64>().prop_map(|v| v.to_string()), any::<f64>().prop_map(|v| format!("{v:e}")),
        "\\PC{0,40}".prop_map(|s| serde_json::to_string(&s).expect("strings serialize")),
    ]) {
        let text = VALID.replacen('{', &format!("{{\"{field}\":{value},"), 1);
        check(Format::Json, text.into_bytes(), INGEST);
    }
}

#[test]
fn the_valid_record_is_accepted() {
    let record = RawRecord::json(1, VALID);
    let event = decode(&record, INGEST, &DecodeConfig::default()).expect("the base record is valid");
    assert_eq!(event.amount_cents(), 2500);
}
