//! Which rows a peek or subscription wants: a key prefix, a key range, column filters.

use std::cmp::Ordering;

use tidemark_proto::v1::filter::Op;
use tidemark_proto::limits::MAX_FILTERS;
use tidemark_proto::v1::{Filter, Row, Value};
use tidemark_proto::value::{check_fits, compare, compare_prefix};

use super::schema::Schema;

/// A compiled selection of rows (column names resolved to indices).
#[derive(Clone, Debug, Default)]
pub struct RowFilter {
    key: Vec<Value>,
    lower: Vec<Value>,
    upper: Vec<Value>,
    columns: Vec<(usize, Op, Value)>,
}

impl RowFilter {
    /// Compiles a selection against a view's schema; an error names what is wrong.
    pub fn new(schema: &Schema, key: &[Value], lower: &[Value], upper: &[Value], filters: &[Filter]) -> Result<Self, String> {
        for (what, values) in [("key", key), ("range lower bound", lower), ("range upper bound", upper)] {
            if values.len() > schema.key_columns {
                return Err(format!("{what} has {} values, but {} has {} key columns", values.len(), schema.name, schema.key_columns));
            }
        }
        if !key.is_empty() && (!lower.is_empty() || !upper.is_empty()) {
            return Err("give a key or a key range, not both".to_owned());
        }
        for (what, values) in [("key value", key), ("range bound", lower), ("range bound", upper)] {
            for (v, column) in values.iter().zip(&schema.columns) {
                check_fits(what, column, v)?;
            }
        }
        if filters.len() > MAX_FILTERS {
            return Err(format!("{} filters given; at most {MAX_FILTERS} are allowed", filters.len()));
        }
        let mut columns = Vec::new();
        for f in filters {
            let index = schema.column(&f.column).ok_or_else(|| format!("{} has no column {:?}", schema.name, f.column))?;
            let op = Op::try_from(f.op).ok().filter(|op| *op != Op::Unspecified).ok_or_else(|| format!("filter on {:?} has no operator", f.column))?;
            let value = f.value.clone().unwrap_or_default();
            check_fits("filter value", &schema.columns[index], &value)?;
            columns.push((index, op, value));
        }
        Ok(RowFilter { key: key.to_vec(), lower: lower.to_vec(), upper: upper.to_vec(), columns })
    }

    /// The least key the selection can hold rows of, as a prefix of key values: the key
    /// prefix of a lookup, else the range's lower bound (empty: unbounded).
    pub fn start_bound(&self) -> &[Value] {
        if self.key.is_empty() { &self.lower } else { &self.key }
    }

    /// Whether no row after this one in key order can be selected: its key is past the
    /// lookup's prefix or at or past the range's upper bound.
    pub fn beyond(&self, row: &Row) -> bool {
        let values = &row.values;
        (!self.key.is_empty() && compare_prefix(values, &self.key) == Ordering::Greater)
            || (!self.upper.is_empty() && compare_prefix(values, &self.upper) != Ordering::Less)
    }

    /// Whether the row is selected.
    pub fn keeps(&self, row: &Row) -> bool {
        let values = &row.values;
        if !self.key.is_empty() && compare_prefix(values, &self.key) != Ordering::Equal {
            return false;
        }
        if !self.lower.is_empty() && compare_prefix(values, &self.lower) == Ordering::Less {
            return false;
        }
        if !self.upper.is_empty() && compare_prefix(values, &self.upper) != Ordering::Less {
            return false;
        }
        self.columns.iter().all(|(i, op, v)| {
            let Some(x) = values.get(*i) else { return false };
            let order = compare(x, v);
            match op {
                Op::Eq => order == Ordering::Equal,
                Op::Ne => order != Ordering::Equal,
                Op::Lt => order == Ordering::Less,
                Op::Le => order != Ordering::Greater,
                Op::Gt => order == Ordering::Greater,
                Op::Ge => order != Ordering::Less,
                Op::Unspecified => false,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::schema::{index, schemas};
    use tidemark_proto::value::{int64, string, timestamp_ms};

    fn kpi(g: &str, start: i64, events: i64) -> Row {
        let mut values = vec![string(g), timestamp_ms(start), int64(events)];
        values.resize(schemas()[index::KPIS].columns.len(), int64(0));
        Row { values }
    }

    #[test]
    fn keys_ranges_and_filters() {
        let schema = &schemas()[index::KPIS];
        let by_key = RowFilter::new(schema, &[string("hour")], &[], &[], &[]).unwrap();
        assert!(by_key.keeps(&kpi("hour", 5, 1)) && !by_key.keeps(&kpi("day", 5, 1)));
        let range = RowFilter::new(schema, &[], &[string("hour"), timestamp_ms(10)], &[string("hour"), timestamp_ms(20)], &[]).unwrap();
        assert!(range.keeps(&kpi("hour", 10, 1)) && !range.keeps(&kpi("hour", 20, 1)) && !range.keeps(&kpi("hour", 9, 1)));
        let f = Filter { column: "events".into(), op: Op::Ge as i32, value: Some(int64(3)) };
        let filtered = RowFilter::new(schema, &[], &[], &[], &[f]).unwrap();
        assert!(filtered.keeps(&kpi("day", 0, 3)) && !filtered.keeps(&kpi("day", 0, 2)));
        let bad = Filter { column: "nope".into(), op: Op::Eq as i32, value: None };
        assert!(RowFilter::new(schema, &[], &[], &[], &[bad]).unwrap_err().contains("no column"));
        let many = vec![Filter { column: "events".into(), op: Op::Ge as i32, value: Some(int64(3)) }; MAX_FILTERS + 1];
        assert!(RowFilter::new(schema, &[], &[], &[], &many).unwrap_err().contains("at most"));
    }

    #[test]
    fn bounds_say_where_an_ordered_read_starts_and_stops() {
        let schema = &schemas()[index::KPIS];
        let range = RowFilter::new(schema, &[], &[string("hour"), timestamp_ms(10)], &[string("hour"), timestamp_ms(20)], &[]).unwrap();
        assert_eq!(range.start_bound(), &[string("hour"), timestamp_ms(10)]);
        assert!(!range.beyond(&kpi("hour", 19, 1)) && range.beyond(&kpi("hour", 20, 1)) && range.beyond(&kpi("minute", 0, 1)));
        assert!(!range.beyond(&kpi("day", 99, 1)), "before the range is not beyond it");
        let lookup = RowFilter::new(schema, &[string("hour")], &[], &[], &[]).unwrap();
        assert_eq!(lookup.start_bound(), &[string("hour")]);
        assert!(!lookup.beyond(&kpi("hour", 99, 1)) && lookup.beyond(&kpi("minute", 0, 1)));
        let all = RowFilter::new(schema, &[], &[], &[], &[]).unwrap();
        assert!(all.start_bound().is_empty() && !all.beyond(&kpi("minute", 0, 1)));
    }
}
