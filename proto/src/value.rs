//! Building, comparing and printing [`Value`]s.
//!
//! Values compare within their kind; null sorts below everything, and values of different
//! kinds (which a well-typed view never mixes in one column) by kind.

use std::cmp::Ordering;

use crate::v1::value::Kind;
use crate::v1::{Column, ColumnType, Value};

/// Null.
pub fn null() -> Value {
    Value { kind: None }
}

/// An integer.
pub fn int64(v: i64) -> Value {
    Value { kind: Some(Kind::Int64(v)) }
}

/// A floating-point number.
pub fn double(v: f64) -> Value {
    Value { kind: Some(Kind::Double(v)) }
}

/// A string.
pub fn string(v: &str) -> Value {
    Value { kind: Some(Kind::String(v.to_owned())) }
}

/// A boolean.
pub fn boolean(v: bool) -> Value {
    Value { kind: Some(Kind::Bool(v)) }
}

/// A timestamp, ms since the Unix epoch.
pub fn timestamp_ms(v: i64) -> Value {
    Value { kind: Some(Kind::TimestampMs(v)) }
}

/// Bytes.
pub fn bytes(v: &[u8]) -> Value {
    Value { kind: Some(Kind::Bytes(v.to_vec())) }
}

fn rank(kind: &Option<Kind>) -> u8 {
    match kind {
        None => 0,
        Some(Kind::Bool(_)) => 1,
        Some(Kind::Int64(_)) => 2,
        Some(Kind::Double(_)) => 3,
        Some(Kind::TimestampMs(_)) => 4,
        Some(Kind::String(_)) => 5,
        Some(Kind::Bytes(_)) => 6,
    }
}

/// The total order of values (doubles by `total_cmp`).
pub fn compare(a: &Value, b: &Value) -> Ordering {
    match (&a.kind, &b.kind) {
        (Some(Kind::Bool(x)), Some(Kind::Bool(y))) => x.cmp(y),
        (Some(Kind::Int64(x)), Some(Kind::Int64(y))) => x.cmp(y),
        (Some(Kind::Double(x)), Some(Kind::Double(y))) => x.total_cmp(y),
        (Some(Kind::TimestampMs(x)), Some(Kind::TimestampMs(y))) => x.cmp(y),
        (Some(Kind::String(x)), Some(Kind::String(y))) => x.cmp(y),
        (Some(Kind::Bytes(x)), Some(Kind::Bytes(y))) => x.cmp(y),
        (x, y) => rank(x).cmp(&rank(y)),
    }
}

/// Lexicographic order of value sequences (a proper prefix sorts first).
pub fn compare_all(a: &[Value], b: &[Value]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        match compare(x, y) {
            Ordering::Equal => {}
            other => return other,
        }
    }
    a.len().cmp(&b.len())
}

/// Compares `values` with a prefix bound: only the bound's length is compared.
pub fn compare_prefix(values: &[Value], bound: &[Value]) -> Ordering {
    compare_all(&values[..bound.len().min(values.len())], bound)
}

/// Whether `v` may appear in a column of type `t` (null may appear in any).
pub fn fits(v: &Value, t: ColumnType) -> bool {
    matches!(
        (&v.kind, t),
        (None, _)
            | (Some(Kind::Int64(_)), ColumnType::Int64)
            | (Some(Kind::Double(_)), ColumnType::Double)
            | (Some(Kind::String(_)), ColumnType::String)
            | (Some(Kind::Bool(_)), ColumnType::Bool)
            | (Some(Kind::TimestampMs(_)), ColumnType::TimestampMs)
            | (Some(Kind::Bytes(_)), ColumnType::Bytes)
    )
}

/// Refuses `v` as a value of `column` unless it fits the column's type; `what` names the
/// value in the message ("filter value", "key value", ...).
pub fn check_fits(what: &str, column: &Column, v: &Value) -> Result<(), String> {
    let t = ColumnType::try_from(column.r#type).unwrap_or(ColumnType::Unspecified);
    if fits(v, t) {
        Ok(())
    } else {
        Err(format!("{what} for column {:?} is not of its type {}", column.name, t.as_str_name()))
    }
}

/// A value as text, for people (null as `null`, bytes as lossy UTF-8).
pub fn display(v: &Value) -> String {
    match &v.kind {
        None => "null".to_owned(),
        Some(Kind::Bool(x)) => x.to_string(),
        Some(Kind::Int64(x)) | Some(Kind::TimestampMs(x)) => x.to_string(),
        Some(Kind::Double(x)) => x.to_string(),
        Some(Kind::String(x)) => x.clone(),
        Some(Kind::Bytes(x)) => String::from_utf8_lossy(x).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_sorts_first_and_kinds_compare_within() {
        assert_eq!(compare(&null(), &int64(-5)), Ordering::Less);
        assert_eq!(compare(&int64(2), &int64(10)), Ordering::Less);
        assert_eq!(compare(&string("b"), &string("a")), Ordering::Greater);
        assert_eq!(compare(&double(f64::NAN), &double(1.0)), Ordering::Greater);
    }

    #[test]
    fn values_fit_their_column_type() {
        assert!(fits(&int64(1), ColumnType::Int64) && fits(&null(), ColumnType::String));
        assert!(!fits(&string("1"), ColumnType::Int64) && !fits(&int64(1), ColumnType::TimestampMs));
    }

    #[test]
    fn prefixes() {
        let row = [string("hour"), int64(7), string("FR")];
        assert_eq!(compare_prefix(&row, &[string("hour")]), Ordering::Equal);
        assert_eq!(compare_prefix(&row, &[string("hour"), int64(8)]), Ordering::Less);
        assert_eq!(compare_all(&row[..1], &row), Ordering::Less);
    }
}
