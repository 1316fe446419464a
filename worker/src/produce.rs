//! `tidemark produce`: generated traffic or a file's lines written into a Kafka topic at a
//! given rate, for people trying the Kafka source and for the load tests.
//!
//! Each record is keyed by its `user_id` (records that are not JSON, or have none, go
//! without a key), so one user's events stay in order within one partition. Message
//! timestamps are the wall clock at sending, which the engine takes as ingestion times.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rdkafka::producer::{BaseRecord, Producer};
use tidemark_dataflows::decode::RawRecord;

use crate::config::GeneratorFlags;
use crate::kafka::{producer, send_waiting, DeliveryCounter, KafkaConnect};
use crate::source::{now_ms, GeneratorSource, Source};

/// `tidemark produce`.
#[derive(Clone, Debug, Args)]
pub struct ProduceArgs {
    /// Brokers and topic.
    #[command(flatten)]
    pub connect: KafkaConnect,
    /// Send this file's lines (JSON events, or anything: malformed lines become rejects)
    /// instead of generated traffic.
    #[arg(long, short = 'i')]
    pub input: Option<PathBuf>,
    /// The generator's traffic (without `--input`).
    #[command(flatten)]
    pub generator: GeneratorFlags,
    /// Retention horizon (hours) the generated late records are made for.
    #[arg(long, env = "TIDEMARK_RETENTION_HOURS", default_value_t = 168)]
    pub retention_hours: u64,
    /// Records to send (default: all of `--input`; generated traffic needs it).
    #[arg(long, env = "TIDEMARK_EVENTS")]
    pub events: Option<u64>,
    /// Send as fast as the brokers take them instead of pacing to `--rate`. Generated
    /// events then cover the `--events / --rate` seconds before the start.
    #[arg(long)]
    pub max_speed: bool,
    /// Print nothing but the final line.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// The `user_id` of a JSON event, as the message key.
fn user_key(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        user_id: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes).ok()?;
    match probe.user_id? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Where the records come from.
enum Records {
    /// Byte lines, not text lines: a line that is not UTF-8 is a record too (the views
    /// reject it as malformed and the dead-letter topic keeps its bytes).
    File(std::io::Split<BufReader<File>>),
    Generated { source: Box<GeneratorSource>, buffer: std::collections::VecDeque<RawRecord> },
}

/// The next record, or why there is none.
enum Next {
    Record(Vec<u8>),
    /// The live generator has nothing due yet.
    Wait,
    Done,
}

impl Records {
    fn next(&mut self) -> anyhow::Result<Next> {
        match self {
            Records::File(lines) => loop {
                match lines.next().transpose()? {
                    // Blank lines are not records (as in a file replay).
                    Some(line) if line.iter().all(u8::is_ascii_whitespace) => continue,
                    Some(mut line) => {
                        while line.last() == Some(&b'\r') {
                            line.pop();
                        }
                        return Ok(Next::Record(line));
                    }
                    None => return Ok(Next::Done),
                }
            },
            Records::Generated { source, buffer } => {
                if buffer.is_empty() {
                    let mut batch = Vec::new();
                    if source.next_batch(&mut batch, 4096)?.is_none() {
                        return Ok(Next::Done);
                    }
                    buffer.extend(batch);
                }
                Ok(buffer.pop_front().map_or(Next::Wait, |r| Next::Record(r.bytes)))
            }
        }
    }
}

/// Sends the records; fails if any could not be delivered.
pub fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    args.connect.check(&mut problems);
    args.generator.check(&mut problems);
    if args.connect.kafka_brokers.is_none() {
        problems.push("--kafka-brokers is required".to_owned());
    }
    if args.input.is_none() && args.events.is_none() {
        problems.push("generated traffic needs --events".to_owned());
    }
    anyhow::ensure!(problems.is_empty(), "invalid configuration:\n  {}", problems.join("\n  "));
    let limit = args.events.unwrap_or(u64::MAX);
    let mut records = match &args.input {
        Some(path) => Records::File(BufReader::new(File::open(path).with_context(|| format!("opening {}", path.display()))?).split(b'\n')),
        None => {
            let span_ms = (limit as f64 / args.generator.rate as f64 * 1000.0) as i64;
            let start = if args.max_speed { now_ms() as i64 - span_ms } else { now_ms() as i64 };
            let config = args.generator.config(args.retention_hours, start);
            Records::Generated { source: Box::new(GeneratorSource::new(config, 0, 1, 1, !args.max_speed, Some(limit))), buffer: Default::default() }
        }
    };
    let counter = DeliveryCounter::default();
    let producer = producer(&args.connect, counter.clone())?;
    let topic = args.connect.kafka_topic.as_str();
    // Connect before the first record is stamped: a record's timestamp is taken when it
    // is sent, and the engine expects it to reach the log soon after.
    let metadata = producer.client().fetch_metadata(Some(topic), Duration::from_secs(30)).with_context(|| format!("asking the brokers about {topic}"))?;
    if metadata.topics().iter().all(|t| t.name() != topic || t.error().is_some() || t.partitions().is_empty()) {
        anyhow::bail!("the brokers have no topic {topic}: create it first");
    }
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut sent = 0u64;
    // A file is paced here; the live generator paces itself.
    let pace_file = args.input.is_some() && !args.max_speed;
    while sent < limit {
        let bytes = match records.next()? {
            Next::Record(bytes) => bytes,
            Next::Wait => {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Next::Done => break,
        };
        if pace_file {
            let due = Duration::from_secs_f64(sent as f64 / args.generator.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let key = user_key(&bytes);
        let mut record = BaseRecord::to(topic).payload(&bytes[..]);
        if let Some(key) = &key {
            record = record.key(key.as_bytes());
        }
        send_waiting(&producer, record).with_context(|| format!("sending to {topic}"))?;
        sent += 1;
        if !args.quiet && last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            eprintln!(
                "sent {sent} ({:.0}/s), delivered {}, failed {}",
                sent as f64 / started.elapsed().as_secs_f64(),
                counter.delivered.load(Ordering::Relaxed),
                counter.failed.load(Ordering::Relaxed)
            );
        }
    }
    producer.flush(Duration::from_secs(300)).context("waiting for the brokers to acknowledge")?;
    let elapsed = started.elapsed().as_secs_f64();
    let (delivered, failed) = (counter.delivered.load(Ordering::Relaxed), counter.failed.load(Ordering::Relaxed));
    eprintln!("produced {delivered} records to {topic} in {elapsed:.1} s ({:.0}/s); {failed} failed", delivered as f64 / elapsed);
    if failed > 0 {
        let error = counter.last_error.lock().expect("no panics holding this lock").clone().unwrap_or_default();
        anyhow::bail!("{failed} records could not be delivered (last error: {error})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{user_key, Next, Records};
    use std::io::{BufRead, BufReader, Write};

    #[test]
    fn file_records_are_byte_lines() {
        let path = std::env::temp_dir().join(format!("tidemark-produce-{}.jsonl", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"{\"a\":1}\r\n\n  \n\xff\xfe garbage\n{\"b\":2}").unwrap();
        drop(f);
        let mut records = Records::File(BufReader::new(std::fs::File::open(&path).unwrap()).split(b'\n'));
        let mut got = Vec::new();
        while let Next::Record(r) = records.next().unwrap() {
            got.push(r);
        }
        std::fs::remove_file(&path).unwrap();
        let want: Vec<&[u8]> = vec![b"{\"a\":1}", b"\xff\xfe garbage", b"{\"b\":2}"];
        assert_eq!(got, want);
    }

    #[test]
    fn keys_are_user_ids() {
        assert_eq!(user_key(br#"{"user_id":"u1","event_type":"page_view"}"#), Some("u1".to_owned()));
        assert_eq!(user_key(br#"{"user_id":42}"#), Some("42".to_owned()));
        assert_eq!(user_key(b"not json"), None);
        assert_eq!(user_key(br#"{"event_type":"page_view"}"#), None);
    }
}
