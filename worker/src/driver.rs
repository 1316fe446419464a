//! Runs one worker process: a timely cluster member with N worker threads, each running
//! the view dataflow over its own source, and an aggregator on the main thread that
//! shows the live summary and writes the output files.
//!
//! Bounds: a worker never has more than [`MAX_IN_FLIGHT`] records inserted whose time the
//! views' frontier has not yet passed (it steps the dataflow instead of reading more),
//! and never runs more than [`MAX_LAG_MS`] of ingestion time ahead; view changes
//! reach the aggregator through a bounded channel, so a slow terminal or disk slows
//! ingestion down rather than growing memory.
//!
//! A run ends at an agreed *final time*: the replay clock at the end of a file, a bound
//! derived from `--events` at max speed, or (live) the largest time any local worker
//! reached when asked to stop. Every worker advances past it, waits until the views'
//! frontier has passed it, and the outputs describe the views as of that time.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use differential_dataflow::input::Input;
use tidemark_dataflows::decode::RawRecord;
use tidemark_dataflows::rows::Dimension;
use tidemark_dataflows::time::Time;
use tidemark_dataflows::views::{build, ViewConfig, ViewRow};

use crate::config::RunArgs;
use crate::output::Outputs;
use crate::kafka::KafkaSource;
use crate::source::{now_ms, probe_frontier, FileSource, GeneratorSource, InFlight, Source};
use crate::summary::Summary;

/// How far (ms of ingestion time) a worker may read ahead of the views' frontier.
pub const MAX_LAG_MS: u64 = 60_000;
/// How many inserted records a worker may have ahead of the views' frontier.
pub const MAX_IN_FLIGHT: usize = 100_000;
/// Records read per batch.
const BATCH: usize = 8_192;
/// Records inserted between two steps of the dataflow (off the live path): larger steps
/// let every arrangement receive one batch spanning many ticks instead of one per tick.
const STEP_EVERY: usize = 32_768;
/// Capacity of the channel from workers to the aggregator, in batches.
const CHANNEL_BATCHES: usize = 256;
/// Start of simulated time at max speed: 2026-11-01T00:00:00Z.
pub const SIMULATED_START_MS: i64 = 1_793_491_200_000;

/// One view change: row, ingestion time, diff.
pub type Update = (ViewRow, Time, isize);

/// The funnel dimensions the live summary shows.
pub const SUMMARY_DIMENSIONS: [Dimension; 2] = [Dimension::All, Dimension::Country];

/// View changes from one worker: every row for output files, else the summary's rows.
pub struct Message {
    /// The changes.
    pub updates: Vec<Update>,
    /// Rejects with all their bytes, for the dead-letter file.
    pub dead_letter: Vec<tidemark_dataflows::decode::Reject>,
}

/// State shared by the workers of this process and the aggregator.
#[derive(Default)]
pub struct Shared {
    /// Records inserted so far (this process).
    pub ingested: AtomicU64,
    /// Sessions in this process's shards of the `sessions` view, as of the frontier.
    pub sessions: Arc<std::sync::atomic::AtomicI64>,
    /// Bytes of the input file read by worker 0 (for the progress bar).
    pub bytes_read: Arc<AtomicU64>,
    /// The views' frontier as seen by worker 0 (ingestion ms).
    pub frontier: AtomicU64,
    /// Set to ask the sources to stop (Ctrl-C, `--duration`).
    pub stop: AtomicBool,
    /// Set by the aggregator once the outputs are written.
    pub exit: AtomicBool,
    /// Workers that have reported the end of their source, and the largest time they reached.
    ended: Mutex<(usize, Time)>,
    /// Workers whose views have passed the final time.
    pub finished: AtomicUsize,
    /// The agreed final time, once known.
    pub final_time: AtomicU64,
    /// Records read from Kafka.
    pub kafka: Arc<crate::kafka::KafkaCounters>,
    /// A fatal error of a worker, reported by the aggregator.
    pub error: Mutex<Option<String>>,
    /// Operator times, with `--profile-operators`.
    pub profile: crate::profile::OperatorProfile,
}

/// Runs the process to the end; returns the summary of the final state.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    if let Err(problems) = args.validate() {
        anyhow::bail!("invalid configuration:\n  {}", problems.join("\n  "));
    }
    eprintln!("{}", args.describe());
    let shared = Arc::new(Shared::default());
    {
        let shared = shared.clone();
        ctrlc::set_handler(move || shared.stop.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    }
    let (tx, rx) = sync_channel::<Message>(CHANNEL_BATCHES);
    let config = timely::Config { communication: args.cluster().communication()?, worker: timely::WorkerConfig::default() };
    let started = Arc::new(AtomicUsize::new(0));
    // Read once (the fraud model may be a file), so every thread has the same settings.
    let view_config = args.view_config()?;

    let cluster = {
        let (args, shared, started) = (args.clone(), shared.clone(), started.clone());
        std::thread::Builder::new().name("timely".into()).spawn(move || {
            let guards = timely::execute(config, move |worker| {
                started.fetch_add(1, Ordering::SeqCst);
                if let Err(e) = run_worker(worker, &args, &view_config, &shared, tx.clone()) {
                    shared.error.lock().expect("error slot").get_or_insert(format!("{e:#}"));
                    shared.stop.store(true, Ordering::SeqCst);
                }
            });
            guards.map(|g| drop(g.join()))
        })?
    };

    let deadline = Instant::now() + Duration::from_secs(args.connect_timeout);
    while started.load(Ordering::SeqCst) < args.workers {
        if cluster.is_finished() {
            let outcome = cluster.join().map_err(|_| anyhow::anyhow!("the timely runtime panicked while starting"))?;
            outcome.map_err(|e| anyhow::anyhow!("timely could not start: {e}"))?;
            anyhow::bail!("timely exited before the workers started");
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the cluster did not form within {} s: are all {} processes started with the same --peers/--hostfile?",
                args.connect_timeout,
                args.processes
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let result = aggregate(&args, &shared, rx);
    shared.exit.store(true, Ordering::SeqCst);
    if let Some(e) = shared.error.lock().expect("error slot").take() {
        anyhow::bail!("a worker failed: {e}");
    }
    result
}

/// The main thread: applies view changes, shows the summary, writes the outputs.
fn aggregate(args: &RunArgs, shared: &Shared, rx: Receiver<Message>) -> anyhow::Result<()> {
    let mut outputs = Outputs::open(args)?;
    let mut summary = Summary::new(args, shared);
    let started = Instant::now();
    let mut last_render = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(message) => {
                summary.apply(&message);
                outputs.apply(&message.updates)?;
                outputs.dead_letters(&message.dead_letter)?;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if args.wall_limit().is_some_and(|limit| started.elapsed() >= limit) {
            shared.stop.store(true, Ordering::SeqCst);
        }
        if shared.finished.load(Ordering::SeqCst) >= args.workers || shared.error.lock().expect("error slot").is_some() {
            // Every update up to the final time was sent before the workers finished.
            while let Ok(message) = rx.try_recv() {
                summary.apply(&message);
                outputs.apply(&message.updates)?;
                outputs.dead_letters(&message.dead_letter)?;
            }
            break;
        }
        if !args.quiet && last_render.elapsed() >= Duration::from_secs(1) {
            summary.render_live();
            last_render = Instant::now();
        }
    }
    let final_time = shared.final_time.load(Ordering::SeqCst);
    outputs.finish(final_time)?;
    summary.render_final(final_time, started.elapsed());
    if args.profile_operators {
        eprint!("{}", shared.profile.report());
    }
    Ok(())
}

fn open_source(args: &RunArgs, config: &ViewConfig, shared: &Shared, index: usize, peers: usize) -> anyhow::Result<Box<dyn Source>> {
    if args.kafka.enabled() {
        let source = KafkaSource::open(&args.kafka, args.tick_ms, index, peers, !args.kafka_follow, shared.kafka.clone())?;
        return Ok(Box::new(source));
    }
    Ok(match &args.input {
        Some(path) => {
            let progress = (index == 0).then(|| shared.bytes_read.clone());
            Box::new(FileSource::open(path, args.format, args.tick_ms, config.decode.clone(), index, peers, progress)?)
        }
        None => {
            let start_ms = if args.max_speed { SIMULATED_START_MS } else { now_ms() as i64 };
            let config = args.generator.config(args.retention_hours, start_ms);
            let source = GeneratorSource::new(config, index, peers, args.tick_ms, !args.max_speed, args.events);
            Box::new(source)
        }
    })
}

fn run_worker(
    worker: &mut timely::worker::Worker,
    args: &RunArgs,
    config: &ViewConfig,
    shared: &Shared,
    tx: SyncSender<Message>,
) -> anyhow::Result<()> {
    let (index, peers) = (worker.index(), worker.peers());
    let full = args.views_out.is_some() || args.changes_out.is_some();
    let dead_letter = args.dead_letter.is_some();
    let profile = args.profile_operators.then(|| shared.profile.attach(worker));
    let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
        let (input, records) = scope.new_collection::<RawRecord, isize>();
        let views = build(records, config);
        let observed = if full { views.rows() } else { views.summary_rows(&SUMMARY_DIMENSIONS, false) };
        let sessions = shared.sessions.clone();
        let (probe, _) = views
            .session_count()
            .inspect_batch(move |_time, batch| {
                sessions.fetch_add(batch.iter().map(|u| u.2 as i64).sum(), Ordering::Relaxed);
            })
            .probe();
        observed
            .inspect_batch({
                let tx = tx.clone();
                move |_time, batch| {
                    if !batch.is_empty() {
                        // A closed channel means the aggregator is gone; nothing is left to show.
                        let _ = tx.send(Message { updates: batch.to_vec(), dead_letter: Vec::new() });
                    }
                }
            })
            .probe_with(&probe);
        if dead_letter {
            views
                .dead_letter
                .inspect_batch(move |_time, batch| {
                    let _ = tx.send(Message { updates: Vec::new(), dead_letter: batch.iter().map(|(r, _, _)| r.clone()).collect() });
                })
                .probe_with(&probe);
        }
        (input, probe)
    });

    let mut source = open_source(args, config, shared, index, peers)?;
    let mut batch = Vec::with_capacity(BATCH);
    let mut in_flight = InFlight::default();
    let mut since_step = 0usize;
    // Live sources are stepped at once; replays in large steps.
    let live = if args.kafka.enabled() { args.kafka_follow } else { args.input.is_none() && !args.max_speed };
    while !shared.stop.load(Ordering::Relaxed) {
        batch.clear();
        let Some(time) = source.next_batch(&mut batch, BATCH)? else { break };
        if time > *input.time() {
            input.advance_to(time);
        }
        let inserted = batch.len();
        shared.ingested.fetch_add(inserted as u64, Ordering::Relaxed);
        for record in batch.drain(..) {
            input.insert(record);
        }
        since_step += inserted;
        if inserted == 0 || (live && inserted < BATCH) {
            // Caught up with the source: let the dataflow run a little.
            input.flush();
            worker.step_or_park(Some(Duration::from_millis(1)));
            since_step = 0;
        } else if live || since_step >= STEP_EVERY {
            input.flush();
            worker.step();
            since_step = 0;
        }
        in_flight.push(time, inserted);
        let horizon = input.time().saturating_sub(MAX_LAG_MS);
        let open = *input.time();
        if probe.less_than(&horizon) || in_flight.waiting(probe_frontier(&probe), open) > MAX_IN_FLIGHT {
            // Too far ahead: expose what was inserted and let the views catch up.
            input.flush();
            while probe.less_than(&horizon) || in_flight.waiting(probe_frontier(&probe), open) > MAX_IN_FLIGHT {
                worker.step();
            }
            since_step = 0;
        }
        if index == 0 {
            shared.frontier.store(probe_frontier(&probe), Ordering::Relaxed);
        }
    }

    let final_time = match source.final_time() {
        Some(t) => t.max(*input.time()),
        None => agree_locally(worker, shared, *input.time(), args.workers),
    };
    shared.final_time.fetch_max(final_time, Ordering::SeqCst);
    let end = final_time + 1;
    input.advance_to(end);
    input.flush();
    worker.step_while(|| probe.less_than(&end));
    if index == 0 {
        shared.frontier.store(end, Ordering::Relaxed);
    }
    if let Some(profile) = profile {
        profile.finish(worker);
    }
    shared.finished.fetch_add(1, Ordering::SeqCst);
    // Keep serving the cluster (progress for the other processes) until the outputs are
    // written; the process then exits without draining future expiries.
    while !shared.exit.load(Ordering::SeqCst) {
        worker.step_or_park(Some(Duration::from_millis(10)));
    }
    Ok(())
}

/// The final time of an open-ended run: the largest time any worker of this process
/// reached. (Open-ended runs are single-process; `RunArgs::validate` enforces it.)
fn agree_locally(worker: &mut timely::worker::Worker, shared: &Shared, reached: Time, workers: usize) -> Time {
    {
        let mut ended = shared.ended.lock().expect("no worker panics holding this lock");
        ended.0 += 1;
        ended.1 = ended.1.max(reached);
    }
    loop {
        let (count, max) = *shared.ended.lock().expect("no worker panics holding this lock");
        if count >= workers {
            return max;
        }
        worker.step_or_park(Some(Duration::from_millis(1)));
    }
}
