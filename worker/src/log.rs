//! The ingest log: what makes an `Ingest` acknowledgement mean durable on the embedded
//! default.
//!
//! Every worker process appends each `Ingest` request it takes, with the ingestion time
//! and source positions its thread gave the events, to a local append-only log, and
//! acknowledges the request only once the log is synced to disk. A restarted process
//! replays its log before it serves: every acknowledged event goes back in at the time it
//! had, so the views come back exactly as they were.
//!
//! # On disk
//! A directory of *segments* `ingest-<16 hex digits>.log`, numbered in order. A segment
//! starts with the 8 bytes `TDMLOG01`, then holds records:
//! `[u32 length][u32 CRC-32 of the payload][payload]` (little-endian), the payload being
//! `[u32 thread][u64 time][u64 first position][u32 count]` and then `count` times
//! `[u32 length][bytes]`, one per event. One record is one request: a request is in the
//! log whole or not at all.
//!
//! # Group commit
//! One writer thread per process takes the records of every worker thread from a bounded
//! queue, writes all that are waiting, syncs the file once, and only then tells each
//! worker thread that its records are durable. A full queue refuses a request (the
//! client gets UNAVAILABLE and may retry) rather than grow.
//!
//! # Damage
//! Opening checks every record. A record cut off or garbled at the end of the last
//! segment is what a crash during a write leaves: it was never acknowledged, so it is
//! dropped and reported (the file is cut back to the last whole record). Damage anywhere
//! else means acknowledged data is unreadable: the process refuses to start and says
//! where, unless `--ingest-log-repair` tells it to cut the log there (and report what was
//! dropped).
//!
//! # Retention
//! A segment is deleted once every event in it has left the views: its latest ingestion
//! time plus the retention horizon plus the allowed future skew is in the past.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tidemark_dataflows::time::Time;

/// The bytes every segment starts with.
const MAGIC: &[u8; 8] = b"TDMLOG01";
/// A segment is closed and a new one started once it is this large.
const SEGMENT_BYTES: u64 = 64 << 20;
/// No record is larger (a request is at most a few tens of MiB).
const MAX_RECORD_BYTES: u32 = 256 << 20;
/// Records waiting for the writer, from all threads of the process.
const QUEUE: usize = 256;
/// The most damaged bytes at the end of the last segment that a crash can explain (what
/// one group commit writes at most).
const MAX_TORN_BYTES: u64 = 512 << 20;

/// Where a serving process keeps its data.
#[derive(Clone, Debug, Args)]
pub struct LogFlags {
    /// Directory of this process's durable data: its ingest log lives in
    /// `<dir>/ingest-log/process-<index>`.
    #[arg(long, env = "TIDEMARK_DATA_DIR", default_value = "tidemark-data")]
    pub data_dir: PathBuf,
    /// Keep no ingest log: `Ingest` acknowledgements then mean only that the events
    /// entered the dataflow, and a restart loses them.
    #[arg(long, env = "TIDEMARK_NO_INGEST_LOG")]
    pub no_ingest_log: bool,
    /// If the ingest log is damaged before its end, cut it at the damage (reporting what
    /// is dropped) instead of refusing to start.
    #[arg(long, env = "TIDEMARK_INGEST_LOG_REPAIR")]
    pub ingest_log_repair: bool,
}

impl LogFlags {
    /// The log directory of process `index`, unless there is no log.
    pub fn dir(&self, index: usize) -> Option<PathBuf> {
        (!self.no_ingest_log).then(|| self.data_dir.join("ingest-log").join(format!("process-{index}")))
    }
}

/// One request as the log holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The worker thread (within its process) that took it.
    pub thread: u32,
    /// The ingestion time its events were given.
    pub time: Time,
    /// The source position of its first event; the others follow one by one.
    pub first_position: u64,
    /// The events, as received.
    pub events: Vec<Vec<u8>>,
}

impl Entry {
    fn encode(&self) -> Vec<u8> {
        let size = 24 + self.events.iter().map(|e| 4 + e.len()).sum::<usize>();
        let mut payload = Vec::with_capacity(8 + size);
        payload.extend_from_slice(&[0; 8]);
        payload.extend_from_slice(&self.thread.to_le_bytes());
        payload.extend_from_slice(&self.time.to_le_bytes());
        payload.extend_from_slice(&self.first_position.to_le_bytes());
        payload.extend_from_slice(&(self.events.len() as u32).to_le_bytes());
        for event in &self.events {
            payload.extend_from_slice(&(event.len() as u32).to_le_bytes());
            payload.extend_from_slice(event);
        }
        let length = (payload.len() - 8) as u32;
        let crc = crc32fast::hash(&payload[8..]);
        payload[..4].copy_from_slice(&length.to_le_bytes());
        payload[4..8].copy_from_slice(&crc.to_le_bytes());
        payload
    }

    fn decode(payload: &[u8]) -> Option<Entry> {
        let mut at = 0;
        let mut take = |n: usize| -> Option<&[u8]> {
            let slice = payload.get(at..at + n)?;
            at += n;
            Some(slice)
        };
        let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
        let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        let thread = u32_at(take(4)?);
        let time = u64_at(take(8)?);
        let first_position = u64_at(take(8)?);
        let count = u32_at(take(4)?) as usize;
        let mut events = Vec::with_capacity(count.min(payload.len() / 4));
        for _ in 0..count {
            let len = u32_at(take(4)?) as usize;
            events.push(take(len)?.to_vec());
        }
        (at == payload.len()).then_some(Entry { thread, time, first_position, events })
    }
}

/// A segment file found when opening.
#[derive(Clone, Debug)]
struct Segment {
    number: u64,
    path: PathBuf,
    /// Bytes of whole records (and the header).
    end: u64,
    /// The latest ingestion time in it (0 if empty).
    max_time: Time,
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("ingest-{number:016x}.log"))
}

/// What was wrong with a segment, from where.
enum Damage {
    /// The bytes from `offset` on are no whole record.
    At { offset: u64, why: &'static str },
}

/// Reads the records of a segment from its header to `end` (or the file's end), calling
/// `each` for every whole record; stops at the first damaged one.
fn read_segment(path: &Path, end: Option<u64>, mut each: impl FnMut(Entry)) -> anyhow::Result<(u64, Option<Damage>)> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata()?.len();
    let end = end.unwrap_or(size).min(size);
    let mut reader = std::io::BufReader::with_capacity(1 << 20, &mut file);
    let mut magic = [0u8; 8];
    if end < 8 || reader.read_exact(&mut magic).is_err() || &magic != MAGIC {
        return Ok((0, Some(Damage::At { offset: 0, why: "no segment header" })));
    }
    let mut offset = 8u64;
    let mut header = [0u8; 8];
    let mut payload = Vec::new();
    while offset < end {
        if end - offset < 8 {
            return Ok((offset, Some(Damage::At { offset, why: "a record header cut off" })));
        }
        reader.read_exact(&mut header)?;
        let length = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if length > MAX_RECORD_BYTES || u64::from(length) > end - offset - 8 {
            return Ok((offset, Some(Damage::At { offset, why: "a record cut off" })));
        }
        payload.resize(length as usize, 0);
        reader.read_exact(&mut payload)?;
        if crc32fast::hash(&payload) != crc {
            return Ok((offset, Some(Damage::At { offset, why: "a record whose checksum does not match" })));
        }
        let Some(entry) = Entry::decode(&payload) else {
            return Ok((offset, Some(Damage::At { offset, why: "a record that does not decode" })));
        };
        each(entry);
        offset += 8 + u64::from(length);
    }
    Ok((offset, None))
}

/// What a process replays at start: the segments as they were when the log was opened.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    segments: Vec<(PathBuf, u64)>,
}

impl Replay {
    /// Every entry of worker thread `local` of `threads` (entries of threads a process of
    /// another shape had go to `thread mod threads`), in log order.
    pub fn entries(&self, local: usize, threads: usize, mut each: impl FnMut(Entry)) -> anyhow::Result<()> {
        for (path, end) in &self.segments {
            let (_, damage) = read_segment(path, Some(*end), |entry| {
                if entry.thread as usize % threads.max(1) == local {
                    each(entry);
                }
            })?;
            if let Some(Damage::At { offset, why }) = damage {
                anyhow::bail!("{} changed while it was replayed: {why} at offset {offset}", path.display());
            }
        }
        Ok(())
    }

    /// Whether there is anything to replay.
    pub fn is_empty(&self) -> bool {
        self.segments.iter().all(|(_, end)| *end <= MAGIC.len() as u64)
    }
}

/// A request's records are durable (or could not be written).
#[derive(Debug)]
pub struct Durable {
    /// The token the thread gave with the append.
    pub token: u64,
    /// The entry, handed back.
    pub entry: Entry,
    /// `Err` with why, if the log could not be written.
    pub result: Result<(), String>,
}

struct Append {
    entry: Entry,
    token: u64,
    done: std::sync::mpsc::Sender<Durable>,
    wake: Option<std::thread::Thread>,
}

/// What the log shows Prometheus.
#[derive(Debug, Default)]
pub struct LogCounters {
    /// Records appended.
    pub records: AtomicU64,
    /// Syncs to disk.
    pub syncs: AtomicU64,
    /// Bytes appended.
    pub bytes: AtomicU64,
    /// Segments deleted after retention.
    pub deleted_segments: AtomicU64,
    /// Damaged bytes dropped at open (a cut-off tail, or a repair).
    pub dropped_bytes: AtomicU64,
    /// Set once a write or sync failed: the log takes nothing more.
    pub failed: AtomicBool,
}

/// The sending side of the log, one per worker thread.
#[derive(Clone)]
pub struct Appender {
    queue: SyncSender<Append>,
}

impl Appender {
    /// Queues `entry`; `done` hears (with `token`) once it is durable, and `wake` is
    /// unparked then. Fails at once if the queue is full or the log has failed.
    pub fn append(&self, entry: Entry, token: u64, done: std::sync::mpsc::Sender<Durable>, wake: Option<std::thread::Thread>) -> Result<(), String> {
        self.queue.try_send(Append { entry, token, done, wake }).map_err(|e| match e {
            TrySendError::Full(_) => "the ingest log's queue is full".to_owned(),
            TrySendError::Disconnected(_) => "the ingest log is closed".to_owned(),
        })
    }
}

/// An open ingest log: its writer thread, and what to replay.
pub struct IngestLog {
    queue: Option<SyncSender<Append>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// What was in the log when it was opened.
    pub replay: Replay,
    /// Counters.
    pub counters: Arc<LogCounters>,
    _lock: File,
}

impl IngestLog {
    /// Opens (creating if need be) the log in `dir`: checks every segment, cuts off a
    /// damaged tail, and starts the writer. `keep_ms` is how long after its latest
    /// ingestion time a segment is still needed.
    pub fn open(dir: &Path, repair: bool, keep_ms: u64) -> anyhow::Result<IngestLog> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating the ingest log directory {}", dir.display()))?;
        let lock = File::create(dir.join("LOCK")).with_context(|| format!("creating {}", dir.join("LOCK").display()))?;
        lock.try_lock().map_err(|_| anyhow::anyhow!("{} is in use by another process (its LOCK is held)", dir.display()))?;
        let counters = Arc::new(LogCounters::default());
        let mut segments = list_segments(dir)?;
        let mut kept = Vec::new();
        let count = segments.len();
        for (i, mut segment) in segments.drain(..).enumerate() {
            let last = i + 1 == count;
            let mut max_time = 0;
            let (end, damage) = read_segment(&segment.path, None, |entry| max_time = max_time.max(entry.time))?;
            segment.end = end;
            segment.max_time = max_time;
            let Some(Damage::At { offset, why }) = damage else {
                kept.push(segment);
                continue;
            };
            let size = std::fs::metadata(&segment.path)?.len();
            let torn = last && size - offset <= MAX_TORN_BYTES;
            if !torn && !repair {
                anyhow::bail!(
                    "the ingest log is damaged: {why} at offset {offset} of {} ({} bytes after it{}); acknowledged events there cannot be read. \
                     Start with --ingest-log-repair to cut the log at the damage, dropping them",
                    segment.path.display(),
                    size - offset,
                    if last { String::new() } else { format!(", and {} later segments", count - i - 1) }
                );
            }
            let mut dropped = size - offset;
            let file = OpenOptions::new().write(true).open(&segment.path)?;
            if offset == 0 {
                // Not even a header: start the segment again.
                file.set_len(0)?;
                drop(file);
                std::fs::remove_file(&segment.path)?;
            } else {
                file.set_len(offset)?;
                file.sync_all()?;
                segment.end = offset;
                kept.push(segment);
            }
            if torn {
                tracing::warn!(
                    "the ingest log ended in {why} ({dropped} bytes at offset {offset} of {}), left by a crash during a write: \
                     its events were never acknowledged, and are dropped",
                    kept.last().map(|s| s.path.display().to_string()).unwrap_or_default()
                );
            } else {
                for later in &list_segments(dir)? {
                    if later.number > kept.last().map_or(0, |s| s.number) {
                        dropped += std::fs::metadata(&later.path)?.len();
                        std::fs::remove_file(&later.path)?;
                    }
                }
                tracing::error!("the ingest log was damaged ({why} at offset {offset}): cut there as --ingest-log-repair asks, dropping {dropped} bytes");
            }
            counters.dropped_bytes.fetch_add(dropped, Ordering::Relaxed);
            sync_dir(dir)?;
            break;
        }
        let replay = Replay { segments: kept.iter().map(|s| (s.path.clone(), s.end)).collect() };
        let (queue, appends) = sync_channel(QUEUE);
        let writer = Writer::start(dir.to_owned(), kept, keep_ms, counters.clone())?;
        let handle = std::thread::Builder::new().name("ingest-log".into()).spawn(move || writer.run(appends))?;
        Ok(IngestLog { queue: Some(queue), writer: Some(handle), replay, counters, _lock: lock })
    }

    /// A sender for a worker thread.
    pub fn appender(&self) -> Appender {
        Appender { queue: self.queue.clone().expect("open until closed") }
    }

    /// Stops the writer once every queued record is written and synced.
    pub fn close(mut self) {
        drop(self.queue.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn list_segments(dir: &Path) -> anyhow::Result<Vec<Segment>> {
    let mut segments = Vec::new();
    for item in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let item = item?;
        let name = item.file_name();
        let Some(number) = name.to_str().and_then(|n| n.strip_prefix("ingest-")).and_then(|n| n.strip_suffix(".log")).and_then(|n| u64::from_str_radix(n, 16).ok()) else {
            continue;
        };
        segments.push(Segment { number, path: item.path(), end: 0, max_time: 0 });
    }
    segments.sort_by_key(|s| s.number);
    Ok(segments)
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    /// Closed segments, oldest first.
    closed: Vec<Segment>,
    current: Segment,
    file: BufWriter<File>,
    keep_ms: u64,
    counters: Arc<LogCounters>,
}

impl Writer {
    fn start(dir: PathBuf, mut segments: Vec<Segment>, keep_ms: u64, counters: Arc<LogCounters>) -> anyhow::Result<Writer> {
        let current = match segments.pop() {
            Some(last) if last.end < SEGMENT_BYTES => last,
            Some(last) => {
                let number = last.number + 1;
                segments.push(last);
                new_segment(&dir, number)?
            }
            None => new_segment(&dir, 0)?,
        };
        let mut file = OpenOptions::new().write(true).open(&current.path)?;
        file.seek(SeekFrom::Start(current.end))?;
        Ok(Writer { dir, closed: segments, current, file: BufWriter::with_capacity(1 << 20, file), keep_ms, counters })
    }

    fn run(mut self, appends: Receiver<Append>) {
        while let Ok(first) = appends.recv() {
            let mut group = vec![first];
            while let Ok(more) = appends.try_recv() {
                group.push(more);
                if group.len() >= QUEUE {
                    break;
                }
            }
            let result = self.write(&group).map_err(|e| format!("the ingest log could not be written: {e:#}"));
            if result.is_err() {
                // After a failed write or sync the file's state is unknown: take nothing more.
                self.counters.failed.store(true, Ordering::SeqCst);
            }
            for append in group {
                let _ = append.done.send(Durable { token: append.token, entry: append.entry, result: result.clone() });
                if let Some(thread) = append.wake {
                    thread.unpark();
                }
            }
            if self.counters.failed.load(Ordering::SeqCst) {
                tracing::error!("{}", result.err().unwrap_or_default());
                // Refuse everything still queued, and later appends find the queue closed.
                for append in appends.try_iter() {
                    let _ = append.done.send(Durable { token: append.token, entry: append.entry, result: Err("the ingest log has failed".to_owned()) });
                }
                return;
            }
            if let Err(e) = self.roll_and_expire() {
                tracing::warn!("ingest log housekeeping: {e:#}");
            }
        }
        let _ = self.file.flush().and_then(|_| self.file.get_ref().sync_data());
    }

    fn write(&mut self, group: &[Append]) -> anyhow::Result<()> {
        if self.counters.failed.load(Ordering::SeqCst) {
            anyhow::bail!("an earlier write failed");
        }
        for append in group {
            let record = append.entry.encode();
            self.file.write_all(&record)?;
            self.current.end += record.len() as u64;
            self.current.max_time = self.current.max_time.max(append.entry.time);
            self.counters.bytes.fetch_add(record.len() as u64, Ordering::Relaxed);
        }
        self.file.flush()?;
        self.file.get_ref().sync_data()?;
        self.counters.records.fetch_add(group.len() as u64, Ordering::Relaxed);
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Starts a new segment once the current one is full, and deletes the segments whose
    /// events have all left the views.
    fn roll_and_expire(&mut self) -> anyhow::Result<()> {
        if self.current.end >= SEGMENT_BYTES {
            let next = new_segment(&self.dir, self.current.number + 1)?;
            let file = OpenOptions::new().write(true).open(&next.path)?;
            let mut file = BufWriter::with_capacity(1 << 20, file);
            file.seek(SeekFrom::Start(next.end))?;
            self.file = file;
            self.closed.push(std::mem::replace(&mut self.current, next));
        }
        let now = crate::source::now_ms();
        let keep = self.keep_ms;
        let (expired, kept): (Vec<Segment>, Vec<Segment>) = self.closed.drain(..).partition(|s| s.max_time.saturating_add(keep) < now);
        self.closed = kept;
        for segment in expired {
            std::fs::remove_file(&segment.path).with_context(|| format!("deleting {}", segment.path.display()))?;
            self.counters.deleted_segments.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn new_segment(dir: &Path, number: u64) -> anyhow::Result<Segment> {
    let path = segment_path(dir, number);
    let mut file = OpenOptions::new().write(true).create_new(true).open(&path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(MAGIC)?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(Segment { number, path, end: MAGIC.len() as u64, max_time: 0 })
}

/// Waits (a little) for the writer to report, for tests and shutdown.
pub fn wait_durable(done: &Receiver<Durable>, timeout: Duration) -> Option<Durable> {
    done.recv_timeout(timeout).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tidemark-log-{name}-{}-{}", std::process::id(), crate::source::now_ms()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn entry(thread: u32, time: Time, n: usize) -> Entry {
        Entry { thread, time, first_position: time * 100, events: (0..n).map(|i| format!("{{\"event\":{time}{i}}}").into_bytes()).collect() }
    }

    fn append_all(log: &IngestLog, entries: &[Entry]) {
        let (done, durable) = std::sync::mpsc::channel();
        for (token, e) in entries.iter().enumerate() {
            log.appender().append(e.clone(), token as u64, done.clone(), None).expect("room in the queue");
        }
        for token in 0..entries.len() {
            let d = wait_durable(&durable, Duration::from_secs(10)).expect("the writer reports");
            assert_eq!(d.token, token as u64, "durable in append order");
            d.result.expect("written");
        }
    }

    fn replayed(log: &IngestLog, local: usize, threads: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        log.replay.entries(local, threads, |e| out.push(e)).expect("replays");
        out
    }

    #[test]
    fn entries_round_trip() {
        let e = entry(3, 1234, 4);
        let bytes = e.encode();
        assert_eq!(Entry::decode(&bytes[8..]), Some(e));
        assert_eq!(Entry::decode(&bytes[8..bytes.len() - 1]), None);
    }

    #[test]
    fn a_reopened_log_replays_every_durable_entry_by_thread() {
        let dir = scratch("replay");
        let entries: Vec<Entry> = (0..10).map(|i| entry(i % 2, 100 + u64::from(i), 3)).collect();
        let log = IngestLog::open(&dir, false, u64::MAX / 2).expect("opens");
        assert!(log.replay.is_empty());
        append_all(&log, &entries);
        log.close();
        let log = IngestLog::open(&dir, false, u64::MAX / 2).expect("reopens");
        let zero = replayed(&log, 0, 2);
        assert_eq!(zero, entries.iter().filter(|e| e.thread == 0).cloned().collect::<Vec<_>>());
        assert_eq!(replayed(&log, 0, 1), entries, "one thread takes every entry");
        // Appending after a reopen continues the log.
        append_all(&log, &[entry(0, 500, 1)]);
        log.close();
        let log = IngestLog::open(&dir, false, u64::MAX / 2).expect("reopens");
        assert_eq!(replayed(&log, 0, 1).len(), 11);
        log.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_reported() {
        let dir = scratch("torn");
        let log = IngestLog::open(&dir, false, u64::MAX / 2).expect("opens");
        append_all(&log, &[entry(0, 1, 2), entry(0, 2, 2)]);
        log.close();
        let path = segment_path(&dir, 0);
        // A crash in the middle of the next record: half of it reached the disk.
        let half = entry(0, 3, 50).encode();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&half[..half.len() / 2]).unwrap();
        drop(file);
        let before = std::fs::metadata(&path).unwrap().len();
        let log = IngestLog::open(&dir, false, u64::MAX / 2).expect("a torn tail is no reason to refuse");
        assert_eq!(replayed(&log, 0, 1).iter().map(|e| e.time).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(log.counters.dropped_bytes.load(Ordering::Relaxed), (half.len() / 2) as u64);
        assert!(std::fs::metadata(&path).unwrap().len() < before, "the file is cut back");
        log.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn damage_before_the_end_refuses_to_start_unless_repaired() {
        let dir = scratch("corrupt");
        let log = IngestLog::open(&dir, false, u64::MAX / 2).expect("opens");
        append_all(&log, &[entry(0, 1, 2), entry(0, 2, 2)]);
        log.close();
        // A second segment after the first, and a flipped byte in the first's first record.
        let next = new_segment(&dir, 1).unwrap();
        let mut file = OpenOptions::new().append(true).open(&next.path).unwrap();
        file.write_all(&entry(0, 3, 1).encode()).unwrap();
        drop(file);
        let path = segment_path(&dir, 0);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = IngestLog::open(&dir, false, u64::MAX / 2).err().expect("acknowledged data is unreadable");
        assert!(err.to_string().contains("--ingest-log-repair"), "{err:#}");
        let log = IngestLog::open(&dir, true, u64::MAX / 2).expect("repair cuts the log");
        assert!(replayed(&log, 0, 1).is_empty(), "nothing before the damage");
        assert!(log.counters.dropped_bytes.load(Ordering::Relaxed) > 0);
        log.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_second_process_cannot_open_the_same_log() {
        let dir = scratch("lock");
        let log = IngestLog::open(&dir, false, u64::MAX / 2).expect("opens");
        let err = IngestLog::open(&dir, false, u64::MAX / 2).err().expect("locked");
        assert!(err.to_string().contains("in use"), "{err:#}");
        log.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn expired_segments_are_deleted() {
        let dir = scratch("expire");
        std::fs::create_dir_all(&dir).unwrap();
        // An old closed segment, and a current one after it.
        let old = new_segment(&dir, 0).unwrap();
        let mut file = OpenOptions::new().append(true).open(&old.path).unwrap();
        file.write_all(&entry(0, 5, 1).encode()).unwrap();
        drop(file);
        let current = new_segment(&dir, 1).unwrap();
        // Segments are kept 1 ms past their latest time: the old one has expired.
        let log = IngestLog::open(&dir, false, 1).expect("opens");
        assert_eq!(replayed(&log, 0, 1).len(), 1, "what is still on disk at open is replayed");
        append_all(&log, &[entry(0, crate::source::now_ms() + 60_000, 1)]);
        log.close();
        assert!(!old.path.exists(), "the expired segment is deleted");
        assert!(current.path.exists(), "the current segment is kept");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
