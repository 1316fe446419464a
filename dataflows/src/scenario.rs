//! Scenario files: the semantics of docs/SEMANTICS.md as readable cases, one file per
//! case (`dataflows/tests/scenarios/*.scenario`). Each file gives records with explicit
//! ingestion times and the rows expected as of chosen times. [`Scenario::parse`] reads
//! one, [`Expect::check`] checks an expectation against the contents of the views; the
//! tests run every file through the dataflow and the reference
//! (`dataflows/tests/scenarios.rs`), and through a served cluster and a replay
//! (`worker/tests/semantics.rs`).
//!
//! # Format
//!
//! Lines are trimmed; empty lines and lines starting with `#` are ignored.
//!
//! - `set retention 1h`, `set future 30m`, `set tick 10`: the configuration (durations
//!   take `ms`, `s`, `m`, `h`, `d`; a bare number is milliseconds). The defaults are a
//!   2 h retention, 1 h of allowed future and 10 ms ticks.
//! - `at 2026-11-01T10:00:00Z`: the ingestion time of the records that follow (never
//!   earlier than the previous one).
//! - `> bytes`: one record, the rest of the line verbatim (`>` alone is an empty record);
//!   `>hex 7b ff`: one record given as hexadecimal bytes. Records take their position
//!   (1, 2, ...) from their order in the file.
//! - `expect 2026-11-01T10:30:00Z`: what follows holds as of that ingestion time:
//!   - `VIEW sel... : check...`: exactly one row of VIEW matches every `sel`, once, and
//!     its columns have the values of every `check`;
//!   - `none VIEW sel...`: no row of VIEW matches;
//!   - `rows VIEW sel... = N`: N rows (counted with their multiplicity) match.
//!
//!   A `sel` or `check` is `column=value`. Columns are the fields of the row's JSON form
//!   (`key.granularity`, `agg.sessions`, or just the last part of the name when that is
//!   unique). A value is a word or a JSON string; `null` matches an absent value, and an
//!   RFC 3339 time matches a column in milliseconds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::decode::RawRecord;
use crate::time::{parse_timestamp, Time};
use crate::views::{ViewConfig, ViewRow};

/// One expectation: which rows of which view it is about, and what must hold of them.
#[derive(Debug)]
pub struct Expect {
    /// The view.
    pub view: String,
    /// `column=value` pairs a row must match to be selected.
    pub select: Vec<(String, String)>,
    /// What must hold of the selected rows.
    pub want: Want,
}

/// What an [`Expect`] wants of the rows it selects.
#[derive(Debug)]
pub enum Want {
    /// Exactly one row, once, with these `column=value` pairs.
    One(Vec<(String, String)>),
    /// No row.
    None,
    /// This many rows, counted with their multiplicity.
    Rows(i64),
}

/// One scenario file.
pub struct Scenario {
    /// The file's name without `.scenario`.
    pub name: String,
    /// Its settings.
    pub config: ViewConfig,
    /// Its records (positions 1, 2, ...) with their ingestion times.
    pub records: Vec<(RawRecord, Time)>,
    /// What holds as of each time: (time, line of the file, expectation).
    pub expects: Vec<(Time, usize, Expect)>,
}

fn duration_ms(text: &str) -> u64 {
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("{text:?} is not a duration"));
    n * match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => panic!("unknown duration unit {other:?} in {text:?}"),
    }
}

fn time_of(text: &str) -> Time {
    let ms = parse_timestamp(text).unwrap_or_else(|| panic!("{text:?} is not an RFC 3339 time"));
    u64::try_from(ms).expect("ingestion times are after 1970")
}

/// Splits `a=b c="d e"` into words, keeping JSON strings whole.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in text.chars() {
        if quoted {
            word.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
        } else if c.is_whitespace() {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
        } else {
            quoted = c == '"';
            word.push(c);
        }
    }
    assert!(!quoted, "an unterminated string in {text:?}");
    if !word.is_empty() {
        out.push(word);
    }
    out
}

fn pairs(words: &[String], line: usize) -> Vec<(String, String)> {
    words
        .iter()
        .map(|w| {
            let (column, value) = w
                .split_once('=')
                .unwrap_or_else(|| panic!("line {line}: {w:?} is not column=value"));
            let value = if value.starts_with('"') {
                serde_json::from_str::<String>(value)
                    .unwrap_or_else(|e| panic!("line {line}: {value}: {e}"))
            } else {
                value.to_owned()
            };
            (column.to_owned(), value)
        })
        .collect()
}

fn parse_expect(text: &str, line: usize) -> Expect {
    let words = words(text);
    let view = |i: usize| words.get(i).cloned().unwrap_or_else(|| panic!("line {line}: which view?"));
    match words.first().map(String::as_str) {
        Some("none") => Expect { view: view(1), select: pairs(&words[2..], line), want: Want::None },
        Some("rows") => {
            let n = words.len();
            assert!(n >= 4 && words[n - 2] == "=", "line {line}: rows VIEW sel... = N");
            let count = words[n - 1].parse().unwrap_or_else(|_| panic!("line {line}: {} is not a count", words[n - 1]));
            Expect { view: view(1), select: pairs(&words[2..n - 2], line), want: Want::Rows(count) }
        }
        Some(_) => {
            let colon = words.iter().position(|w| w == ":").unwrap_or_else(|| panic!("line {line}: VIEW sel... : check..."));
            Expect { view: view(0), select: pairs(&words[1..colon], line), want: Want::One(pairs(&words[colon + 1..], line)) }
        }
        None => panic!("line {line}: an empty expectation"),
    }
}

fn hex_bytes(text: &str, line: usize) -> Vec<u8> {
    let digits: String = text.split_whitespace().collect();
    assert!(
        digits.len().is_multiple_of(2),
        "line {line}: an odd number of hex digits"
    );
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16)
                .unwrap_or_else(|_| panic!("line {line}: {digits:?} is not hex"))
        })
        .collect()
}

impl Scenario {
    /// Reads a scenario file; panics with the line on a mistake (it is a test's input).
    pub fn parse(path: &Path) -> Scenario {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut config = ViewConfig::default();
        config.decode.retention_ms = 2 * 3_600_000;
        config.decode.max_future_ms = 3_600_000;
        let mut records = Vec::new();
        let mut expects = Vec::new();
        let mut at: Option<Time> = None;
        let mut expect_at: Option<Time> = None;
        for (n, raw) in text.lines().enumerate() {
            let line = n + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if let Some(rest) = trimmed.strip_prefix('>') {
                let time = at.unwrap_or_else(|| panic!("line {line}: a record before any `at`"));
                let bytes = match rest.strip_prefix("hex ") {
                    Some(hex) => hex_bytes(hex, line),
                    None => rest.strip_prefix(' ').unwrap_or(rest).as_bytes().to_vec(),
                };
                records.push((RawRecord::json(records.len() as u64 + 1, bytes), time));
                expect_at = None;
            } else if let Some(rest) = trimmed.strip_prefix("set ") {
                let words = words(rest);
                assert!(
                    records.is_empty(),
                    "line {line}: settings come before the records"
                );
                match (words[0].as_str(), words.get(1)) {
                    ("retention", Some(d)) => config.decode.retention_ms = duration_ms(d),
                    ("future", Some(d)) => config.decode.max_future_ms = duration_ms(d),
                    ("tick", Some(d)) => config.tick_ms = duration_ms(d),
                    _ => panic!("line {line}: unknown setting {rest:?}"),
                }
            } else if let Some(rest) = trimmed.strip_prefix("at ") {
                let time = time_of(rest.trim());
                assert!(
                    at.is_none_or(|a| a <= time),
                    "line {line}: ingestion times never go back"
                );
                at = Some(time);
                expect_at = None;
            } else if let Some(rest) = trimmed.strip_prefix("expect ") {
                expect_at = Some(time_of(rest.trim()));
            } else {
                let time = expect_at.unwrap_or_else(|| panic!("line {line}: {trimmed:?} is neither a record nor a directive, and follows no `expect`"));
                expects.push((time, line, parse_expect(trimmed, line)));
            }
        }
        let name = path
            .file_stem()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        assert!(
            !records.is_empty() && !expects.is_empty(),
            "{name}: a scenario has records and expectations"
        );
        Scenario {
            name,
            config,
            records,
            expects,
        }
    }

    /// Every scenario file of this crate, in name order.
    pub fn files() -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("a directory entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "scenario"))
            .collect();
        files.sort();
        files
    }
}

/// The row's JSON form flattened to `path -> value`.
fn columns(row: &ViewRow) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, v, out);
                }
            }
            other => {
                out.insert(prefix.to_owned(), other.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        "",
        &serde_json::to_value(row).expect("rows serialize"),
        &mut out,
    );
    out
}

/// The value of `column` in `cols`: by its whole path, or by the last part(s) of it when
/// only one column ends so. `None` when the row has no such column.
fn column<'a>(cols: &'a BTreeMap<String, Value>, column: &str) -> Option<&'a Value> {
    if let Some(v) = cols.get(column) {
        return Some(v);
    }
    let suffix = format!(".{column}");
    let mut found = cols.iter().filter(|(path, _)| path.ends_with(&suffix));
    let first = found.next();
    assert!(
        found.next().is_none(),
        "column {column:?} is ambiguous: name it by its path"
    );
    first.map(|(_, v)| v)
}

fn matches(value: Option<&Value>, expected: &str) -> bool {
    match value {
        None | Some(Value::Null) => expected == "null",
        Some(Value::String(s)) => s == expected,
        Some(Value::Bool(b)) => expected == if *b { "true" } else { "false" },
        Some(Value::Number(n)) => {
            if let (Some(a), Ok(b)) = (n.as_i64(), expected.parse::<i64>()) {
                a == b
            } else if let (Some(a), Ok(b)) = (n.as_f64(), expected.parse::<f64>()) {
                a == b
            } else {
                parse_timestamp(expected).is_some_and(|ms| n.as_i64() == Some(ms))
            }
        }
        Some(other) => other.to_string() == expected,
    }
}

/// A row's columns for a message, without the bytes of a reject.
fn shown(cols: &BTreeMap<String, Value>) -> String {
    let cols: BTreeMap<&String, &Value> =
        cols.iter().filter(|(c, _)| c.as_str() != "raw").collect();
    serde_json::to_string(&cols).expect("json")
}

impl Expect {
    /// Checks the expectation against the contents of the views; `Err` says what is wrong.
    pub fn check(&self, state: &BTreeMap<ViewRow, i64>) -> Result<(), String> {
        let selected = |select: &[(String, String)]| -> Vec<(BTreeMap<String, Value>, i64)> {
            state
                .iter()
                .filter(|(row, _)| row.view() == self.view)
                .map(|(row, n)| (columns(row), *n))
                .filter(|(cols, _)| select.iter().all(|(c, v)| matches(column(cols, c), v)))
                .collect()
        };
        let show = |rows: &[(BTreeMap<String, Value>, i64)]| rows.iter().map(|(c, n)| format!("  {n} x {}", shown(c))).collect::<Vec<_>>().join("\n");
        let rows = selected(&self.select);
        match &self.want {
            Want::One(check) => {
                if rows.len() != 1 || rows[0].1 != 1 {
                    return Err(format!("{} rows match, not one; the view holds:\n{}", rows.len(), show(&selected(&[]))));
                }
                let cols = &rows[0].0;
                let wrong: Vec<String> = check
                    .iter()
                    .filter(|(c, v)| !matches(column(cols, c), v))
                    .map(|(c, v)| match column(cols, c) {
                        Some(actual) => format!("{c} is {actual}, not {v}"),
                        None => format!("the row has no column {c}"),
                    })
                    .collect();
                if wrong.is_empty() { Ok(()) } else { Err(format!("{}; the row: {}", wrong.join(", "), shown(cols))) }
            }
            Want::None if rows.is_empty() => Ok(()),
            Want::None => Err(format!("rows match:\n{}", show(&rows))),
            Want::Rows(count) => {
                let n: i64 = rows.iter().map(|(_, n)| n).sum();
                if n == *count { Ok(()) } else { Err(format!("{n} rows match, not {count}:\n{}", show(&rows))) }
            }
        }
    }
}
