//! Time: ingestion ticks, RFC 3339 parsing and formatting, tumbling windows.
//!
//! Two clocks meet here. *Ingestion time* is the differential timestamp: milliseconds
//! since the Unix epoch, rounded up to a tick, assigned by the source when a record
//! arrives. *Event time* (`event_ts`) is data: windows are buckets on it. Both are
//! milliseconds since the Unix epoch, so retention compares them directly.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (UTC).
pub type Millis = i64;

/// The differential timestamp: ingestion time in milliseconds, a multiple of the tick.
pub type Time = u64;

/// Rounds an ingestion instant up to the next multiple of `tick_ms` (at least 1 ms).
pub fn tick_ceil(ms: u64, tick_ms: u64) -> Time {
    let tick = tick_ms.max(1);
    ms.div_ceil(tick).saturating_mul(tick)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (valid for years 1..=9999).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Shift the year so that it starts in March: the leap day is then the last day.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let m = i64::from(month);
    let day_of_year = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The (year, month, day) of a count of days since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn digits(bytes: &[u8], at: usize, len: usize) -> Option<u32> {
    let slice = bytes.get(at..at + len)?;
    slice.iter().try_fold(0u32, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
    })
}

/// Parses `YYYY-MM-DD[T ]HH:MM:SS[.fraction](Z|±HH:MM| UTC)` into milliseconds.
///
/// Accepts RFC 3339 (with `T` or a space as separator) and the REES46 style
/// `2019-10-01 00:00:00 UTC`. Fractions beyond milliseconds are truncated. Returns `None`
/// for anything else, including impossible dates such as February 30.
pub fn parse_timestamp(text: &str) -> Option<Millis> {
    let b = text.as_bytes();
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || b.get(13) != Some(&b':') || b.get(16) != Some(&b':')
    {
        return None;
    }
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(i64::from(year), month)
        || hour > 23 || minute > 59 || second > 60
    {
        return None;
    }
    let mut pos = 19;
    let mut millis = 0u32;
    if b.get(pos) == Some(&b'.') {
        pos += 1;
        let start = pos;
        while let Some(d) = b.get(pos).filter(|d| d.is_ascii_digit()) {
            if pos - start < 3 {
                millis = millis * 10 + u32::from(d - b'0');
            }
            pos += 1;
        }
        if pos == start {
            return None;
        }
        for _ in (pos - start)..3 {
            millis *= 10;
        }
    }
    let offset_minutes: i64 = match &b[pos..] {
        b"Z" | b"z" | b" UTC" => 0,
        [sign @ (b'+' | b'-'), rest @ ..] if rest.len() == 5 && rest[2] == b':' => {
            let oh = i64::from(digits(rest, 0, 2)?);
            let om = i64::from(digits(rest, 3, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let total = oh * 60 + om;
            if *sign == b'+' { total } else { -total }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second)
        - offset_minutes * 60;
    Some(secs * 1000 + i64::from(millis))
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Formats milliseconds as RFC 3339 in UTC with millisecond precision.
pub fn format_timestamp(ms: Millis) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (h, min, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z")
}

/// A tumbling window size.
///
/// Variants are declared in the order of their names (`day` < `hour` < `minute`), so that
/// keys that start with a granularity sort as the API's text columns do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One-day windows (UTC days).
    Day,
    /// One-hour windows.
    Hour,
    /// One-minute windows.
    Minute,
}

impl Granularity {
    /// All granularities the views maintain.
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    /// The window length in milliseconds.
    pub fn millis(self) -> Millis {
        match self {
            Granularity::Minute => 60_000,
            Granularity::Hour => 3_600_000,
            Granularity::Day => 86_400_000,
        }
    }

    /// The start of the window that contains `ts`.
    pub fn window_start(self, ts: Millis) -> Millis {
        ts - ts.rem_euclid(self.millis())
    }

    /// The granularity of a name.
    pub fn from_name(name: &str) -> Option<Granularity> {
        Granularity::ALL.into_iter().find(|g| g.name() == name)
    }

    /// The lower-case name used in output (`minute`, `hour`, `day`).
    pub fn name(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_known_instants() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("2019-10-01 00:00:00 UTC"), Some(1_569_888_000_000));
        assert_eq!(parse_timestamp("2019-10-01T02:00:00.5+02:00"), Some(1_569_888_000_500));
        assert_eq!(parse_timestamp("2020-02-30T00:00:00Z"), None);
        assert_eq!(parse_timestamp("2019-10-01T00:00:00"), None);
        for ms in [0, 1, 951_782_400_123, 4_102_444_799_999, -86_400_001] {
            assert_eq!(parse_timestamp(&format_timestamp(ms)), Some(ms), "{ms}");
        }
        for days in -800_000..800_000i64 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn ticks_and_windows() {
        assert_eq!(tick_ceil(0, 10), 0);
        assert_eq!(tick_ceil(1, 10), 10);
        assert_eq!(tick_ceil(10, 10), 10);
        assert_eq!(Granularity::Hour.window_start(3_600_000 * 5 + 17), 3_600_000 * 5);
        assert_eq!(Granularity::Minute.window_start(-1), -60_000);
        let mut by_order = Granularity::ALL;
        by_order.sort();
        let mut by_name = Granularity::ALL;
        by_name.sort_by_key(|g| g.name());
        assert_eq!(by_order, by_name, "granularities sort as their names do");
        assert!(Granularity::ALL.iter().all(|g| Granularity::from_name(g.name()) == Some(*g)));
    }
}
