//! What a run reports: latency percentiles from an HDR histogram (microseconds), error
//! counts by gRPC status code, and one JSON line for the wrapper scripts to parse.

use std::collections::BTreeMap;
use std::fmt::{self, Display, Write as _};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest latency a histogram holds (µs); larger ones are recorded as this.
const MAX_MICROS: u64 = 600_000_000;

/// A latency histogram in microseconds, 3 significant digits, 1 µs to 10 minutes.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("the bounds are valid")
}

/// Records `d` (rounded to µs, at least 1 µs, at most the histogram's bound).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).clamp(1, MAX_MICROS);
    h.saturating_record(micros);
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest value.
    pub max: u64,
}

impl Percentiles {
    /// The percentiles of `h` (all zero when it is empty). Each is the highest value
    /// equivalent to the recorded ones at that quantile, as HdrHistogram reports it.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    /// As JSON fields `<prefix>count`, `<prefix>p50_us`, ... `<prefix>max_us`.
    pub fn fields(&self, prefix: &str) -> Vec<(String, Json)> {
        vec![
            (format!("{prefix}count"), Json::Int(self.count)),
            (format!("{prefix}p50_us"), Json::Int(self.p50)),
            (format!("{prefix}p90_us"), Json::Int(self.p90)),
            (format!("{prefix}p99_us"), Json::Int(self.p99)),
            (format!("{prefix}p999_us"), Json::Int(self.p999)),
            (format!("{prefix}max_us"), Json::Int(self.max)),
        ]
    }
}

impl Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "n={} p50={}us p90={}us p99={}us p999={}us max={}us",
            self.count, self.p50, self.p90, self.p99, self.p999, self.max
        )
    }
}

/// Failed calls by gRPC status code (`UNAVAILABLE`, ...), or by a short cause for
/// failures that have no status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Errors(pub BTreeMap<String, u64>);

impl Errors {
    /// Counts one failure with status `code`.
    pub fn count(&mut self, code: tonic::Code) {
        *self.0.entry(code_name(code)).or_insert(0) += 1;
    }

    /// Failures of every kind.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// As a JSON object.
    pub fn json(&self) -> Json {
        Json::Object(self.0.iter().map(|(k, v)| (k.clone(), Json::Int(*v))).collect())
    }
}

impl Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k} {v}")).collect();
        f.write_str(&parts.join(", "))
    }
}

/// The canonical name of a gRPC status code, as in the gRPC docs (`DEADLINE_EXCEEDED`).
pub fn code_name(code: tonic::Code) -> String {
    let camel = format!("{code:?}");
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// A JSON value, enough for one summary line.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    /// An integer.
    Int(u64),
    /// A number; non-finite values are written as `null`.
    Float(f64),
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
    /// An object, fields in the given order.
    Object(Vec<(String, Json)>),
}

impl Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Json::Int(v) => write!(f, "{v}"),
            Json::Float(v) if v.is_finite() => write!(f, "{v:.1}"),
            Json::Float(_) => f.write_str("null"),
            Json::Str(s) => write_string(f, s),
            Json::Bool(b) => write!(f, "{b}"),
            Json::Object(fields) => {
                f.write_char('{')?;
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    write_string(f, k)?;
                    write!(f, ":{v}")?;
                }
                f.write_char('}')
            }
        }
    }
}

fn write_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = histogram();
        for v in 1..=1000 {
            record(&mut h, Duration::from_micros(v));
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert_eq!((p.p50, p.p90, p.p99, p.p999, p.max), (500, 900, 990, 999, 1000));
    }

    #[test]
    fn percentiles_keep_three_significant_digits() {
        let mut h = histogram();
        for _ in 0..99 {
            record(&mut h, Duration::from_micros(200));
        }
        record(&mut h, Duration::from_millis(12_345));
        let p = Percentiles::of(&h);
        assert_eq!((p.p50, p.p99), (200, 200));
        // 12,345,000 µs at 3 significant digits: within 0.1%.
        assert!(p.max.abs_diff(12_345_000) <= 12_345, "{}", p.max);
        assert_eq!(p.p999, p.max);
    }

    #[test]
    fn an_empty_histogram_reports_zeros_and_extremes_are_clamped() {
        assert_eq!(Percentiles::of(&histogram()), Percentiles::default());
        let mut h = histogram();
        record(&mut h, Duration::ZERO);
        record(&mut h, Duration::from_secs(100_000));
        assert_eq!(h.min(), 1, "zero is recorded as 1 µs");
        assert!(h.max() >= MAX_MICROS, "a huge value is clamped to the bound, not dropped");
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn status_codes_have_their_canonical_names() {
        assert_eq!(code_name(tonic::Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_name(tonic::Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(tonic::Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
        let mut e = Errors::default();
        e.count(tonic::Code::Unavailable);
        e.count(tonic::Code::Unavailable);
        e.count(tonic::Code::OutOfRange);
        assert_eq!(e.total(), 3);
        assert_eq!(e.to_string(), "OUT_OF_RANGE 1, UNAVAILABLE 2");
        assert_eq!(e.json().to_string(), r#"{"OUT_OF_RANGE":1,"UNAVAILABLE":2}"#);
        assert_eq!(Errors::default().to_string(), "none");
    }

    #[test]
    fn summary_lines_are_json() {
        let mut h = histogram();
        record(&mut h, Duration::from_micros(750));
        let mut fields = vec![("test".to_owned(), Json::Str("query".into())), ("qps".to_owned(), Json::Float(9999.94))];
        fields.extend(Percentiles::of(&h).fields("lookup_"));
        fields.push(("saturated".to_owned(), Json::Bool(false)));
        fields.push(("errors".to_owned(), Errors::default().json()));
        fields.push(("nan".to_owned(), Json::Float(f64::NAN)));
        assert_eq!(
            Json::Object(fields).to_string(),
            r#"{"test":"query","qps":9999.9,"lookup_count":1,"lookup_p50_us":750,"lookup_p90_us":750,"lookup_p99_us":750,"lookup_p999_us":750,"lookup_max_us":750,"saturated":false,"errors":{},"nan":null}"#
        );
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(Json::Str("a\"b\\c\nd\u{1}é".into()).to_string(), r#""a\"b\\c\nd\u0001é""#);
    }
}
