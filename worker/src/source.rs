//! Sources: where a worker's records come from, and at which ingestion time.
//!
//! A [`Source`] yields records in non-decreasing ingestion time. Every worker of every
//! process runs its own source over its own share of the input:
//! - [`FileSource`]: every worker reads the whole file, but inserts only the records whose
//!   line number falls to it. All workers compute the same *replay clock* (the running
//!   maximum of the event times read so far, on a tick), so a historical file replays as
//!   if it were live and every worker agrees on when the replay ends.
//! - [`GeneratorSource`]: worker `i` of `n` generates part `i` of the traffic. Live, it
//!   paces itself to the wall clock and stamps records with it; at max speed, records
//!   carry the generator's simulated clock, so results do not depend on machine speed.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tidemark_dataflows::decode::{check, peek_event_ts, DecodeConfig, Format, RawRecord, REES46_HEADER};
use tidemark_dataflows::generator::{Generated, Generator, GeneratorConfig};
use tidemark_dataflows::time::{tick_ceil, Time};

use crate::config::{detect_format, InputFormat};

/// A stream of records with ingestion times.
pub trait Source {
    /// Appends up to `max` records and returns their (single) ingestion time, or `None`
    /// when the source is exhausted. Records of one call share a time; times never
    /// decrease between calls.
    fn next_batch(&mut self, out: &mut Vec<RawRecord>, max: usize) -> anyhow::Result<Option<Time>>;

    /// The last ingestion time this source will ever produce, once it is known to every
    /// worker alike (finite sources), or `None` for open-ended ones.
    fn final_time(&self) -> Option<Time>;
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The most records of a replay that share one ingestion time: the next one moves the
/// replay clock one tick on. A file whose records all carry one timestamp (a daily
/// export) then plays as a burst over consecutive ticks, and no more than this many
/// records wait for one time to complete.
pub const MAX_RECORDS_PER_TICK: u64 = 65_536;

/// Replays a file of JSON lines, REES46 rows or CDNOW rows.
///
/// The replay clock starts at the time of the file's first accepted record (so that the
/// records before it, unreadable ones say, are not ingested at time 0) and then follows
/// the running maximum of the accepted records' times: a rejected record never moves it,
/// nor does one more than a retention period past it (which is then rejected as lying in
/// the future). A UTF-8 byte order mark at the start of the file is dropped.
pub struct FileSource {
    reader: BufReader<File>,
    format: Format,
    tick_ms: u64,
    decode: DecodeConfig,
    index: usize,
    peers: usize,
    line_no: u64,
    clock: Time,
    /// Records (of every worker) given the current clock so far.
    at_clock: u64,
    /// A record read but not yet returned because its time is later than the batch's.
    pending: Option<(RawRecord, Time)>,
    line: Vec<u8>,
    finished: bool,
    bytes_read: Option<Arc<AtomicU64>>,
}

/// The UTF-8 byte order mark.
const BOM: &[u8] = b"\xef\xbb\xbf";

impl FileSource {
    /// Opens `path` for worker `index` of `peers`, validating records as `decode` says;
    /// `bytes_read`, if given, is advanced as the file is read (for a progress bar).
    pub fn open(path: &Path, flag: InputFormat, tick_ms: u64, decode: DecodeConfig, index: usize, peers: usize, bytes_read: Option<Arc<AtomicU64>>) -> anyhow::Result<Self> {
        let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
        let first = reader.fill_buf()?;
        let first = first.strip_prefix(BOM).unwrap_or(first);
        let first_line = first.split(|&b| b == b'\n').find(|l| !l.iter().all(u8::is_ascii_whitespace)).unwrap_or_default();
        let first_line = String::from_utf8_lossy(first_line).into_owned();
        let format = detect_format(flag, &first_line);
        let mut source = FileSource {
            reader,
            format,
            tick_ms,
            decode,
            index,
            peers,
            line_no: 0,
            clock: 0,
            at_clock: 0,
            pending: None,
            line: Vec::new(),
            finished: false,
            bytes_read: None,
        };
        // The clock starts at the first accepted record's time.
        while let Some(record) = source.next_line()? {
            if let Some(own) = source.accepted_at(&record, None) {
                source.clock = own;
                break;
            }
        }
        source.reader.rewind()?;
        source.line_no = 0;
        source.bytes_read = bytes_read;
        Ok(source)
    }

    /// The format the file is read as.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The next record of the file (every worker's), without its line terminator.
    fn next_line(&mut self) -> anyhow::Result<Option<RawRecord>> {
        loop {
            self.line.clear();
            let n = self.reader.read_until(b'\n', &mut self.line)?;
            if n == 0 {
                return Ok(None);
            }
            if let Some(counter) = &self.bytes_read {
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
            self.line_no += 1;
            if self.line_no == 1 && self.line.starts_with(BOM) {
                self.line.drain(..BOM.len());
            }
            while matches!(self.line.last(), Some(b'\n' | b'\r')) {
                self.line.pop();
            }
            if self.line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if self.line_no == 1 && self.format == Format::Rees46 && self.line == REES46_HEADER.as_bytes() {
                continue;
            }
            return Ok(Some(RawRecord { format: self.format, position: self.line_no, bytes: self.line.clone() }));
        }
    }

    /// The record's own time on the tick if it moves the clock there: it would be
    /// accepted at that time, and (with `clock`) lies at most a retention period past it.
    fn accepted_at(&self, record: &RawRecord, clock: Option<Time>) -> Option<Time> {
        let own = tick_ceil(peek_event_ts(record)?.max(0) as u64, self.tick_ms);
        if let Some(clock) = clock {
            if own <= clock || own > clock.saturating_add(self.decode.retention_ms) {
                return None;
            }
        }
        check(record.format, &record.bytes, record.position, own, &self.decode).is_ok().then_some(own)
    }

    /// The next record of this worker's share with its replay time.
    fn next_record(&mut self) -> anyhow::Result<Option<(RawRecord, Time)>> {
        loop {
            let Some(record) = self.next_line()? else { return Ok(None) };
            // Every worker advances the clock over every line, so all agree on it.
            let read = self.accepted_at(&record, Some(self.clock)).unwrap_or(0);
            (self.clock, self.at_clock) = next_clock(self.clock, self.at_clock, read, self.tick_ms);
            if (self.line_no as usize) % self.peers == self.index {
                return Ok(Some((record, self.clock)));
            }
        }
    }
}

impl Source for FileSource {
    fn next_batch(&mut self, out: &mut Vec<RawRecord>, max: usize) -> anyhow::Result<Option<Time>> {
        if self.finished {
            return Ok(None);
        }
        let (first, time) = match self.pending.take() {
            Some(p) => p,
            None => match self.next_record()? {
                Some(p) => p,
                None => {
                    self.finished = true;
                    return Ok(None);
                }
            },
        };
        out.push(first);
        while out.len() < max {
            match self.next_record()? {
                Some((record, t)) if t == time => out.push(record),
                Some(other) => {
                    self.pending = Some(other);
                    break;
                }
                None => {
                    self.finished = true;
                    break;
                }
            }
        }
        Ok(Some(time))
    }

    fn final_time(&self) -> Option<Time> {
        // Known once the whole file is read; every worker reads every line.
        (self.finished && self.pending.is_none()).then_some(self.clock)
    }
}

/// The replay clock after one more record whose own time is `read` (0 if unreadable):
/// the running maximum of the records' times, moved one tick on whenever
/// [`MAX_RECORDS_PER_TICK`] records have had the current one. Returns the clock and how
/// many records have had it.
pub fn next_clock(clock: Time, at_clock: u64, read: Time, tick_ms: u64) -> (Time, u64) {
    if read > clock {
        (read, 1)
    } else if at_clock >= MAX_RECORDS_PER_TICK {
        (clock + tick_ms.max(1), 1)
    } else {
        (clock, at_clock + 1)
    }
}

/// Generated traffic for one part of the cluster.
pub struct GeneratorSource {
    generator: Generator,
    pending: Option<Generated>,
    tick_ms: u64,
    live: bool,
    remaining: Option<u64>,
    last_time: Option<Time>,
    final_time: Option<Time>,
}

/// The last ingestion time of `events` records generated at max speed in `parts` parts
/// (`None` for no records): the largest part's last record is delivered at the simulated
/// clock of its index, which every part computes alike.
pub fn generated_final_time(config: &GeneratorConfig, events: u64, parts: usize, tick_ms: u64) -> Option<Time> {
    (events > 0).then(|| tick_ceil(config.clock_ms(events.div_ceil(parts as u64) - 1, parts).max(0) as u64, tick_ms))
}

impl GeneratorSource {
    /// Part `part` of `parts`; `events` bounds the whole cluster's total.
    pub fn new(config: GeneratorConfig, part: usize, parts: usize, tick_ms: u64, live: bool, events: Option<u64>) -> Self {
        let remaining = events.map(|n| n / parts as u64 + u64::from((part as u64) < n % parts as u64));
        let final_time = events.filter(|_| !live).and_then(|n| generated_final_time(&config, n, parts, tick_ms));
        let generator = Generator::new(config, part, parts);
        GeneratorSource { generator, pending: None, tick_ms, live, remaining, last_time: None, final_time }
    }
}

impl Source for GeneratorSource {
    fn next_batch(&mut self, out: &mut Vec<RawRecord>, max: usize) -> anyhow::Result<Option<Time>> {
        let start = out.len();
        let limit = match self.remaining {
            Some(0) => return Ok(None),
            Some(r) => max.min(r as usize),
            None => max,
        };
        let time = if self.live {
            // Pace to the wall clock: release what the simulated clock has reached.
            let now = now_ms();
            while out.len() - start < limit {
                let next = self.pending.take().unwrap_or_else(|| self.generator.next_record());
                if next.ingest_ms > now {
                    self.pending = Some(next);
                    break;
                }
                out.push(next.record);
            }
            tick_ceil(now, self.tick_ms)
        } else {
            let first = self.pending.take().unwrap_or_else(|| self.generator.next_record());
            let time = tick_ceil(first.ingest_ms, self.tick_ms);
            out.push(first.record);
            while out.len() - start < limit {
                let next = self.generator.next_record();
                if tick_ceil(next.ingest_ms, self.tick_ms) != time {
                    self.pending = Some(next);
                    break;
                }
                out.push(next.record);
            }
            time
        };
        let time = self.last_time.map_or(time, |last| last.max(time));
        self.last_time = Some(time);
        if let Some(r) = &mut self.remaining {
            *r -= (out.len() - start) as u64;
        }
        Ok(Some(time))
    }

    fn final_time(&self) -> Option<Time> {
        self.final_time
    }
}

/// The least time a probe may still see (`Time::MAX` once the dataflow is done).
pub fn probe_frontier(probe: &timely::dataflow::ProbeHandle<Time>) -> Time {
    probe.with_frontier(|f| f.first().copied().unwrap_or(Time::MAX))
}

/// Records inserted at times the views' frontier has not passed yet.
#[derive(Default)]
pub struct InFlight {
    batches: std::collections::VecDeque<(Time, usize)>,
    total: usize,
}

impl InFlight {
    /// Counts `count` records inserted at `time`.
    pub fn push(&mut self, time: Time, count: usize) {
        match self.batches.back_mut() {
            Some((t, n)) if *t == time => *n += count,
            _ => self.batches.push_back((time, count)),
        }
        self.total += count;
    }

    /// Forgets the batches the frontier has passed, and counts the records at times
    /// before `open` (the input's current time) that the frontier has not passed: those a
    /// reader may wait for. Records at the open time cannot complete before the input
    /// moves on, so waiting for them would never end.
    pub fn waiting(&mut self, frontier: Time, open: Time) -> usize {
        self.count(frontier);
        self.batches.iter().filter(|(t, _)| *t < open).map(|(_, n)| n).sum()
    }

    /// Forgets the batches the frontier has passed and counts the rest.
    pub fn count(&mut self, frontier: Time) -> usize {
        while let Some((time, count)) = self.batches.front().copied() {
            if time >= frontier {
                break;
            }
            self.total -= count;
            self.batches.pop_front();
        }
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records of one time move the clock a tick on after every MAX_RECORDS_PER_TICK, and
    /// a later record's own time wins.
    #[test]
    fn the_replay_clock_spreads_one_time_over_ticks() {
        let (mut clock, mut at) = (0, 0);
        let mut times = Vec::new();
        for _ in 0..(2 * MAX_RECORDS_PER_TICK + 1) {
            (clock, at) = next_clock(clock, at, 1000, 10);
            times.push(clock);
        }
        assert_eq!(times[0], 1000);
        assert_eq!(times[MAX_RECORDS_PER_TICK as usize - 1], 1000);
        assert_eq!(times[MAX_RECORDS_PER_TICK as usize], 1010);
        assert_eq!(*times.last().unwrap(), 1020);
        assert_eq!(next_clock(1020, 5, 5000, 10), (5000, 1), "a later record's time moves the clock");
        assert_eq!(next_clock(1020, 5, 0, 10), (1020, 6), "an unreadable time keeps it");
    }

    /// Only records at times before the open one are waited for.
    #[test]
    fn in_flight_records_at_the_open_time_are_not_waited_for() {
        let mut in_flight = InFlight::default();
        in_flight.push(10, 5);
        in_flight.push(20, 7);
        in_flight.push(30, 100);
        assert_eq!(in_flight.waiting(0, 30), 12);
        assert_eq!(in_flight.waiting(15, 30), 7);
        assert_eq!(in_flight.waiting(15, 40), 107);
        assert_eq!(in_flight.waiting(30, 30), 0);
        assert_eq!(in_flight.count(30), 100);
    }
}
