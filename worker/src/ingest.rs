//! `tidemark ingest FILE|-`: JSON lines into a running server over `Ingest`.
//!
//! Lines are cut into requests (at most `--batch` events and about `--batch-bytes` each),
//! sent on one stream with several in flight, and counted as their acknowledgements come
//! back. When the stream fails because the server or the connection went away (a
//! worker process lost, the coordinator restarted), the requests not yet acknowledged
//! are sent again on a new stream: resending is safe, since events count once by
//! `event_id` (a resent event that had been applied is a `duplicate` reject). At the end it
//! prints the time from which every acknowledged event is visible and the rejects by
//! reason.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tidemark_dataflows::time::format_timestamp;
use tidemark_proto::limits::MAX_INGEST_EVENTS;
use tidemark_proto::v1::IngestRequest;
use tokio::sync::mpsc;

use crate::cli::{api_error, Connect};

/// `tidemark ingest`.
#[derive(Clone, Debug, Args)]
pub struct IngestArgs {
    /// A file of JSON events, one per line, or `-` for standard input.
    pub input: String,
    /// Most events per request.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// About the most bytes of events per request (below the server's request limit).
    #[arg(long, default_value_t = 1 << 20)]
    pub batch_bytes: usize,
    /// How many times in a row to resend what was not acknowledged when the stream fails
    /// because the server or the connection went away.
    #[arg(long, default_value_t = 10)]
    pub retries: u32,
    /// Send at most this many events per second (0: as fast as the server takes them).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Where the coordinator is.
    #[command(flatten)]
    pub connect: Connect,
}

/// Requests on one stream at once.
const IN_FLIGHT: usize = 8;

/// Whether a failed stream is worth opening again: the server or the connection went
/// away, not a request the server refuses.
fn transient(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(code, Unavailable | Unknown | Cancelled | DeadlineExceeded | Aborted | Internal)
}

/// What came back.
#[derive(Debug, Default)]
struct Totals {
    /// Streams opened (more than one after failures).
    streams: u64,
    requests: u64,
    accepted: u64,
    rejected: BTreeMap<String, u64>,
    visible_at: u64,
}

/// Reads lines into requests on a thread of its own; ends the channel at the end.
fn read(args: &IngestArgs, requests: mpsc::Sender<IngestRequest>, read_bytes: Arc<AtomicU64>, unsendable: Arc<AtomicU64>) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    let input: Box<dyn BufRead + Send> = if args.input == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let path = PathBuf::from(&args.input);
        Box::new(std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?))
    };
    let (batch, batch_bytes) = (args.batch.clamp(1, MAX_INGEST_EVENTS), args.batch_bytes.max(1024));
    let rate = args.rate;
    // A line larger than this cannot go in any request the server accepts (4 MiB by
    // default, less the framing).
    let largest = (4 << 20) - (16 << 10);
    Ok(std::thread::Builder::new().name("ingest-reader".into()).spawn(move || {
        let mut input = input;
        let started = Instant::now();
        let mut sent = 0u64;
        let mut events = Vec::new();
        let mut bytes = 0;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = input.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            read_bytes.fetch_add(n as u64, Ordering::Relaxed);
            while matches!(line.last(), Some(b'\n' | b'\r')) {
                line.pop();
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if line.len() > largest {
                unsendable.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if !events.is_empty() && (events.len() >= batch || bytes + line.len() > batch_bytes) {
                bytes = 0;
                sent += events.len() as u64;
                if requests.blocking_send(IngestRequest { events: std::mem::take(&mut events) }).is_err() {
                    return Ok(());
                }
                if rate > 0 {
                    // Paced: the events sent so far are due at this time.
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            bytes += line.len();
            events.push(line.clone());
        }
        if !events.is_empty() {
            let _ = requests.blocking_send(IngestRequest { events });
        }
        Ok(())
    })?)
}

/// `tidemark ingest`.
pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    let size = (args.input != "-").then(|| std::fs::metadata(&args.input).map(|m| m.len()).ok()).flatten();
    let (read_bytes, unsendable) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (tx, mut lines) = mpsc::channel::<IngestRequest>(2 * IN_FLIGHT);
    let reader = read(&args, tx, read_bytes.clone(), unsendable.clone())?;
    let started = Instant::now();
    let mut totals = Totals::default();
    // Sent and not yet acknowledged, oldest first: what a new stream sends again.
    let mut unacknowledged: VecDeque<IngestRequest> = VecDeque::new();
    let mut attempts = 0;
    let mut last_drawn = Instant::now();
    let mut finished_reading = false;
    'streams: loop {
        let mut client = match args.connect.client().await {
            Ok(c) => c,
            Err(e) if attempts < args.retries => {
                attempts += 1;
                eprintln!("\n{e:#}; retrying ({attempts} of {})", args.retries);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let (requests, outgoing) = mpsc::channel::<IngestRequest>(IN_FLIGHT);
        for again in &unacknowledged {
            requests.send(again.clone()).await.context("the stream is open")?;
        }
        totals.streams += 1;
        let response = client.ingest(tokio_stream::wrappers::ReceiverStream::new(outgoing)).await;
        let mut acks = match response {
            Ok(r) => r.into_inner(),
            Err(status) if transient(status.code()) && attempts < args.retries => {
                attempts += 1;
                eprintln!("\n{}: {}; resending {} requests ({attempts} of {})", status.code(), status.message(), unacknowledged.len(), args.retries);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(status) => return Err(api_error(status)),
        };
        let mut requests = Some(requests);
        loop {
            let window_full = unacknowledged.len() >= IN_FLIGHT;
            tokio::select! {
                next = lines.recv(), if !finished_reading && !window_full => match next {
                    Some(request) => {
                        unacknowledged.push_back(request.clone());
                        if let Some(r) = &requests {
                            if r.send(request).await.is_err() {
                                // The stream broke; its status comes with the next ack read.
                                requests = None;
                            }
                        }
                    }
                    None => {
                        finished_reading = true;
                    }
                },
                ack = acks.message() => match ack {
                    Ok(Some(ack)) => {
                        unacknowledged.pop_front();
                        totals.requests += 1;
                        totals.accepted += u64::from(ack.accepted);
                        for reject in ack.rejects {
                            *totals.rejected.entry(reject.reason).or_default() += 1;
                        }
                        totals.visible_at = totals.visible_at.max(ack.visible_at);
                        attempts = 0;
                    }
                    Ok(None) => break 'streams,
                    Err(status) if transient(status.code()) && attempts < args.retries => {
                        attempts += 1;
                        eprintln!("\n{}: {}; resending {} requests ({attempts} of {})", status.code(), status.message(), unacknowledged.len(), args.retries);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue 'streams;
                    }
                    Err(status) => {
                        print_totals(&args, &totals, started, unsendable.load(Ordering::Relaxed));
                        return Err(api_error(status)).with_context(|| format!("{} requests were not acknowledged", unacknowledged.len()));
                    }
                },
            }
            if finished_reading && unacknowledged.is_empty() {
                // Every request is acknowledged: end the stream, and read it to its end.
                requests = None;
            }
            if !args.quiet && last_drawn.elapsed() >= Duration::from_millis(200) {
                draw(&totals, read_bytes.load(Ordering::Relaxed), size, started);
                last_drawn = Instant::now();
            }
        }
    }
    reader.join().map_err(|_| anyhow::anyhow!("the reader panicked"))??;
    if !args.quiet {
        eprintln!();
    }
    print_totals(&args, &totals, started, unsendable.load(Ordering::Relaxed));
    Ok(())
}

fn draw(totals: &Totals, read: u64, size: Option<u64>, started: Instant) {
    let events = totals.accepted + totals.rejected.values().sum::<u64>();
    let rate = events as f64 / started.elapsed().as_secs_f64().max(1e-3);
    let part = match size {
        Some(size) if size > 0 => {
            let done = (read as f64 / size as f64).min(1.0);
            let width = 30;
            let filled = (done * width as f64) as usize;
            format!("[{}{}] {:>3.0}% ", "#".repeat(filled), " ".repeat(width - filled), done * 100.0)
        }
        _ => String::new(),
    };
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r{part}{events} events acknowledged ({rate:.0}/s)   ");
    let _ = err.flush();
}

fn print_totals(args: &IngestArgs, totals: &Totals, started: Instant, unsendable: u64) {
    let rejected: u64 = totals.rejected.values().sum();
    if args.json {
        let line = serde_json::json!({
            "streams": totals.streams,
            "requests": totals.requests,
            "accepted": totals.accepted,
            "rejected": totals.rejected,
            "visible_at": totals.visible_at,
            "unsendable": unsendable,
            "seconds": started.elapsed().as_secs_f64(),
        });
        println!("{line}");
        return;
    }
    println!(
        "{} events in {} requests: {} accepted, {rejected} rejected, in {:.1} s",
        totals.accepted + rejected,
        totals.requests,
        totals.accepted,
        started.elapsed().as_secs_f64()
    );
    if totals.visible_at > 0 {
        println!("visible from {} ({})", totals.visible_at, format_timestamp(totals.visible_at as i64));
    }
    for (reason, count) in &totals.rejected {
        println!("  {reason}: {count}");
    }
    if totals.streams > 1 {
        println!("the stream was opened {} times: what was not acknowledged was sent again", totals.streams);
    }
    if unsendable > 0 {
        println!("{unsendable} lines were larger than any request may be and were not sent");
    }
}
