//! Kafka: the source that spreads a topic's partitions over every worker thread of the
//! cluster, the dead-letter writer, and the connection settings they share.
//!
//! # Ingestion times
//! A record's ingestion time is its Kafka timestamp (the producer's create time, or the
//! broker's append time if the topic says so) rounded up to the tick, and never below the
//! partition's *clock*, the largest such time seen in the partition so far. A
//! restarted worker that replays the partition from its start therefore gives every
//! record the time it had before: the views rehydrate to exactly the state they had.
//!
//! A partition is *idle* when the consumer has read it to its end (the high watermark in
//! librdkafka's latest statistics), its broker has been reachable and fetching for
//! `--kafka-idle-ms`, and nothing arrived for as long: its clock then follows the time of
//! those statistics, that far behind, so it does not hold the frontier back. While a broker is unreachable or a partition
//! is being caught up (after a start, a restart or an outage), nothing is idle and the
//! frontier waits. A record that arrives after its partition's clock passed its own
//! time, which needs a producer whose records reach the log more than `--kafka-idle-ms`
//! after their timestamp (a producer that buffered through a broker outage, say), is
//! ingested at the clock ("raised", logged and counted). The time it was given is first
//! written to the *times topic* (`<topic>-ingest-times`, key `partition:offset`), and
//! the record is handed to the views only once the broker has acknowledged it; a
//! restart reads that topic and gives the record the same time again.
//!
//! # Partitions and offsets
//! Partition `p` belongs to worker thread `p mod W` of the cluster's `W` threads (a fixed
//! assignment, no consumer-group rebalancing: the timely cluster has a fixed shape).
//! Every start replays each partition from the start of its retained log, which is what
//! rehydrates the views; the topic's retention must therefore cover the engine's. The
//! offsets below the views' frontier are committed to the consumer group, for lag
//! monitoring and to report when a restart has replayed what the previous run had read.
//! Producer retries that write a record twice are harmless: the views count an
//! `event_id` once (the second copy is a `duplicate` reject).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tidemark_dataflows::decode::{Format, RawRecord, Reject};
use tidemark_dataflows::time::{tick_ceil, Time};

use crate::source::{next_clock, now_ms, Source};

/// The bit that marks a record's position as a Kafka (partition, offset).
pub const KAFKA_POSITION: u64 = 1 << 63;
/// Bits of a position that hold the offset.
const OFFSET_BITS: u32 = 40;

/// The position of the record at `offset` of `partition`.
pub fn kafka_position(partition: i32, offset: i64) -> u64 {
    KAFKA_POSITION | ((partition as u64) << OFFSET_BITS) | (offset as u64 & ((1 << OFFSET_BITS) - 1))
}

/// The (partition, offset) of a Kafka record's position.
pub fn kafka_origin(position: u64) -> Option<(i32, i64)> {
    (position & KAFKA_POSITION != 0).then_some((((position & !KAFKA_POSITION) >> OFFSET_BITS) as i32, (position & ((1 << OFFSET_BITS) - 1)) as i64))
}

/// How to reach the brokers: shared by the source, the dead-letter writer and `produce`.
#[derive(Clone, Debug, Args)]
pub struct KafkaConnect {
    /// Comma-separated bootstrap brokers (`host:port`). Without it, no Kafka is used.
    #[arg(long, env = "TIDEMARK_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// The topic of events.
    #[arg(long, env = "TIDEMARK_KAFKA_TOPIC", default_value = "tidemark-events")]
    pub kafka_topic: String,
    /// Extra librdkafka settings, `key=value` (repeat, or separate with `;`), e.g.
    /// `security.protocol=ssl`.
    #[arg(long = "kafka-option", env = "TIDEMARK_KAFKA_OPTIONS", value_delimiter = ';')]
    pub kafka_options: Vec<String>,
}

impl KafkaConnect {
    /// A client configuration for the brokers, with the extra settings applied last.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let brokers = self.kafka_brokers.as_deref().context("--kafka-brokers is not set")?;
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", brokers);
        for option in &self.kafka_options {
            let (key, value) = option.split_once('=').with_context(|| format!("--kafka-option {option:?} is not key=value"))?;
            config.set(key.trim(), value.trim());
        }
        Ok(config)
    }

    /// Appends every problem with the settings to `problems`.
    pub fn check(&self, problems: &mut Vec<String>) {
        if self.kafka_topic.is_empty() {
            problems.push("--kafka-topic is empty".to_owned());
        }
        for option in &self.kafka_options {
            if !option.contains('=') {
                problems.push(format!("--kafka-option {option:?} is not key=value"));
            }
        }
    }
}

/// The Kafka source's settings on a worker.
#[derive(Clone, Debug, Args)]
pub struct KafkaFlags {
    /// Brokers and topic.
    #[command(flatten)]
    pub connect: KafkaConnect,
    /// Consumer group the offsets below the views' frontier are committed to.
    #[arg(long, env = "TIDEMARK_KAFKA_GROUP", default_value = "tidemark")]
    pub kafka_group: String,
    /// A partition that delivered nothing for this long (ms) no longer holds the frontier
    /// back: its clock follows the wall clock, this far behind.
    #[arg(long, env = "TIDEMARK_KAFKA_IDLE_MS", default_value_t = 1000)]
    pub kafka_idle_ms: u64,
    /// Topic for rejected records (raw bytes, with the reason in headers); default
    /// `<topic>-dead-letter`; `none` keeps them only in the `rejects` view. Created with
    /// one partition if missing.
    #[arg(long, env = "TIDEMARK_KAFKA_DEAD_LETTER_TOPIC")]
    pub kafka_dead_letter_topic: Option<String>,
    /// Topic recording the ingestion times of records that reached the log after their
    /// partition's clock had passed them, so that a restart gives them the same times;
    /// default `<topic>-ingest-times`. Created with one partition if missing.
    #[arg(long, env = "TIDEMARK_KAFKA_TIMES_TOPIC")]
    pub kafka_times_topic: Option<String>,
}

impl KafkaFlags {
    /// Whether a Kafka source is configured.
    pub fn enabled(&self) -> bool {
        self.connect.kafka_brokers.is_some()
    }

    /// The topic of recorded ingestion times.
    pub fn times_topic(&self) -> String {
        self.kafka_times_topic.clone().unwrap_or_else(|| format!("{}-ingest-times", self.connect.kafka_topic))
    }

    /// The dead-letter topic, unless turned off.
    pub fn dead_letter_topic(&self) -> Option<String> {
        match self.kafka_dead_letter_topic.as_deref() {
            Some("none") => None,
            Some(topic) => Some(topic.to_owned()),
            None => Some(format!("{}-dead-letter", self.connect.kafka_topic)),
        }
    }
}

/// Counters of the Kafka source of one process (all its threads).
#[derive(Default, Debug)]
pub struct KafkaCounters {
    /// Records read.
    pub records: prometheus_client::metrics::counter::Counter,
    /// Records ingested at their partition's clock because it had passed their own time
    /// while the partition was idle.
    pub raised: prometheus_client::metrics::counter::Counter,
    /// Messages the consumer delivered again at an offset already read (skipped).
    pub redelivered: prometheus_client::metrics::counter::Counter,
}

/// How long metadata and offset requests may take before they are retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Records buffered per partition before it is no longer polled.
const PARTITION_BUFFER: usize = 65_536;

/// What librdkafka's statistics last said of one partition.
#[derive(Clone, Copy, Debug)]
struct PartitionHealth {
    /// When (wall ms) the statistics were received.
    seen: u64,
    /// Its leader is up and the consumer is fetching it.
    fetching: bool,
    /// The high watermark of the last fetch response.
    high: i64,
    /// Since when (wall ms) `fetching` has held without a break.
    fetching_since: u64,
}

/// The consumer's context: keeps the statistics the idleness rule needs.
#[derive(Clone, Default)]
pub struct SourceContext {
    health: Arc<std::sync::Mutex<std::collections::HashMap<i32, PartitionHealth>>>,
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let now = now_ms();
        let up: HashSet<i32> = statistics.brokers.values().filter(|b| b.state == "UP").map(|b| b.nodeid).collect();
        let mut health = self.health.lock().expect("no panics holding this lock");
        for topic in statistics.topics.values() {
            for (p, partition) in &topic.partitions {
                if *p < 0 {
                    continue;
                }
                let fetching = partition.fetch_state == "active" && up.contains(&partition.leader);
                let fetching_since = match health.get(p) {
                    Some(h) if h.fetching && fetching => h.fetching_since,
                    _ => now,
                };
                health.insert(*p, PartitionHealth { seen: now, fetching, high: partition.hi_offset, fetching_since });
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for SourceContext {}

/// One partition this worker reads.
struct PartitionState {
    partition: i32,
    /// Largest time given to a record, raised by idleness.
    clock: Time,
    /// Largest time of a record's own timestamp, moved a tick on after every
    /// [`MAX_RECORDS_PER_TICK`](crate::source::MAX_RECORDS_PER_TICK) records at one time (what a replay reproduces).
    data_clock: Time,
    /// Records given the current data clock.
    at_data_clock: u64,
    /// Wall clock (ms) of the last record received.
    last_received: u64,
    /// Records read but not yet handed out, with their times.
    buffer: VecDeque<(RawRecord, Time)>,
    /// The offset after the last record read.
    next_offset: i64,
    /// The log end at the start (a finite replay stops there).
    end: Option<i64>,
    /// The committed offset at the start: where the previous run had got to.
    resume_target: i64,
    /// (time, offset after the last record handed out at that time), for commits.
    handed_out: VecDeque<(Time, i64)>,
}

impl PartitionState {
    /// The time of a record with Kafka timestamp `timestamp` received now, and whether
    /// idleness raised it above its own time.
    fn assign(&mut self, timestamp: Option<i64>, tick_ms: u64, now: u64) -> (Time, bool) {
        let own = timestamp.map_or(0, |ts| tick_ceil(ts.max(0) as u64, tick_ms));
        (self.data_clock, self.at_data_clock) = next_clock(self.data_clock, self.at_data_clock, own, tick_ms);
        let time = self.clock.max(self.data_clock);
        let raised = time > self.data_clock;
        self.clock = time;
        self.last_received = now;
        (time, raised)
    }

    /// A partition not read yet; `now` counts as its last receipt.
    fn new(partition: i32, now: u64) -> Self {
        PartitionState {
            partition,
            clock: 0,
            data_clock: 0,
            at_data_clock: 0,
            last_received: now,
            buffer: VecDeque::new(),
            next_offset: 0,
            end: None,
            resume_target: 0,
            handed_out: VecDeque::new(),
        }
    }

    /// The recorded time of a record raised in an earlier run.
    fn bind(&mut self, timestamp: Option<i64>, recorded: Time, tick_ms: u64, now: u64) -> Time {
        let own = timestamp.map_or(0, |ts| tick_ceil(ts.max(0) as u64, tick_ms));
        (self.data_clock, self.at_data_clock) = next_clock(self.data_clock, self.at_data_clock, own, tick_ms);
        self.clock = self.clock.max(recorded);
        self.last_received = now;
        recorded
    }

    /// Lets an idle partition's clock follow the wall clock, `idle_ms` behind: one read to
    /// its end, nothing received for `idle_ms`, and its broker fetching for as long.
    fn idle(&mut self, now: u64, idle_ms: u64, tick_ms: u64, health: Option<PartitionHealth>) {
        // The statistics say the log held nothing more when they were taken (`seen`), so
        // the clock may follow up to then, not up to now.
        let Some(h) = health.filter(|h| h.fetching && h.seen.saturating_sub(h.fetching_since) >= idle_ms && h.high <= self.next_offset) else { return };
        if now.saturating_sub(self.last_received) >= idle_ms {
            let floor = h.seen.saturating_sub(idle_ms) / tick_ms.max(1) * tick_ms.max(1);
            self.clock = self.clock.max(floor);
        }
    }

    /// The least time this partition may still hand out, or `None` when it is done.
    fn lower(&self) -> Option<Time> {
        match self.buffer.front() {
            Some((_, t)) => Some(*t),
            None if self.end.is_some_and(|end| self.next_offset >= end) => None,
            None => Some(self.clock),
        }
    }
}

/// What taking a message into its partition's buffer needs.
struct Received<'a> {
    tick_ms: u64,
    now: u64,
    recorded: &'a std::collections::HashMap<(i32, i64), Time>,
    unrecorded: &'a mut Vec<(String, String)>,
    counters: &'a KafkaCounters,
}

impl Received<'_> {
    /// Gives `message` its time and buffers it.
    fn take(&mut self, state: &mut PartitionState, message: &rdkafka::message::BorrowedMessage<'_>) {
        let (partition, offset) = (message.partition(), message.offset());
        if offset < state.next_offset {
            // Offsets only grow within a partition: a message delivered again is read once.
            if self.counters.redelivered.inc() == 0 {
                tracing::warn!("partition {partition}: offset {offset} delivered again after {}; skipped (counted in kafka_records_redelivered)", state.next_offset - 1);
            }
            return;
        }
        let timestamp = message.timestamp().to_millis();
        let (time, raised) = match self.recorded.get(&(partition, offset)) {
            Some(t) => (state.bind(timestamp, *t, self.tick_ms, self.now), false),
            None => state.assign(timestamp, self.tick_ms, self.now),
        };
        if raised {
            self.unrecorded.push((origin_key(partition, offset), time.to_string()));
            let before = self.counters.raised.inc();
            if before == 0 || (before + 1).is_power_of_two() {
                tracing::warn!(
                    "partition {partition}: a record with timestamp {timestamp:?} reached the log after the idle partition's clock passed it; ingested at {time} (raised; {} so far)",
                    before + 1
                );
            }
        }
        let record = RawRecord { format: Format::Json, position: kafka_position(partition, offset), bytes: message.payload().unwrap_or_default().to_vec() };
        state.next_offset = offset + 1;
        state.buffer.push_back((record, time));
        self.counters.records.inc();
    }
}

/// Reads this worker's partitions of the topic, merged in time order.
pub struct KafkaSource {
    consumer: Arc<BaseConsumer<SourceContext>>,
    /// Records buffered per partition before it is no longer polled.
    buffer_limit: usize,
    /// Each partition's own queue, in the order of `partitions`.
    queues: Vec<rdkafka::consumer::base_consumer::PartitionQueue<SourceContext>>,
    context: SourceContext,
    topic: String,
    partitions: Vec<PartitionState>,
    tick_ms: u64,
    /// `None` for a finite replay (up to the log end at the start), where nothing is idle.
    idle_ms: Option<u64>,
    counters: Arc<KafkaCounters>,
    worker: usize,
    started: Instant,
    rehydrated: bool,
    last_commit: Instant,
    /// Times recorded for raised records of this worker's partitions.
    recorded: std::collections::HashMap<(i32, i64), Time>,
    /// Where raised records' times are recorded (`None` in a finite replay).
    times: Option<(ThreadedProducer<DeliveryCounter>, DeliveryCounter, String)>,
    /// Raised records read in this poll whose times are not recorded yet.
    unrecorded: Vec<(String, String)>,
}

/// Creates a consumer, retrying while the brokers are unreachable.
fn connect_consumer<C: rdkafka::consumer::ConsumerContext>(config: &ClientConfig, topic: &str, context: C) -> anyhow::Result<(BaseConsumer<C>, usize)> {
    let consumer: BaseConsumer<C> = config.create_with_context(context).context("creating the Kafka consumer")?;
    let mut delay = Duration::from_millis(100);
    let mut warned = false;
    loop {
        match consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT) {
            Ok(metadata) => {
                let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
                    anyhow::bail!("the brokers know no topic {topic}");
                };
                if let Some(error) = t.error() {
                    anyhow::bail!("topic {topic}: {:?} (create it first, with as many partitions as the cluster has worker threads or more)", error);
                }
                if t.partitions().is_empty() {
                    anyhow::bail!("topic {topic} has no partitions");
                }
                return Ok((consumer, t.partitions().len()));
            }
            Err(e) => {
                if !warned {
                    tracing::warn!("Kafka metadata for {topic} not available yet ({e}); retrying");
                    warned = true;
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

impl KafkaSource {
    /// Worker `index` of `peers` reads partitions `index`, `index + peers`, ... from their
    /// start. `finite`: stop at the log end as it is now.
    pub fn open(flags: &KafkaFlags, tick_ms: u64, index: usize, peers: usize, finite: bool, counters: Arc<KafkaCounters>) -> anyhow::Result<Self> {
        let topic = flags.connect.kafka_topic.clone();
        let mut config = flags.connect.client_config()?;
        config
            .set("group.id", &flags.kafka_group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100")
            .set("statistics.interval.ms", "100");
        let context = SourceContext::default();
        let (consumer, count) = connect_consumer(&config, &topic, context.clone())?;
        let mine: Vec<i32> = (0..count as i32).filter(|p| *p as usize % peers == index).collect();
        let mut assignment = TopicPartitionList::new();
        for p in &mine {
            assignment.add_partition_offset(&topic, *p, Offset::Beginning)?;
        }
        consumer.assign(&assignment).context("assigning partitions")?;
        let consumer = Arc::new(consumer);
        let queues = mine
            .iter()
            .map(|p| consumer.split_partition_queue(&topic, *p).with_context(|| format!("a queue for partition {p} of {topic}")))
            .collect::<anyhow::Result<Vec<_>>>()?;

        let now = now_ms();
        let mut partitions = Vec::with_capacity(mine.len());
        let committed = if mine.is_empty() { None } else { consumer.committed_offsets(assignment.clone(), REQUEST_TIMEOUT).ok() };
        for p in mine {
            let end = if finite {
                let (_, high) = consumer.fetch_watermarks(&topic, p, REQUEST_TIMEOUT).with_context(|| format!("reading the log end of {topic}/{p}"))?;
                Some(high)
            } else {
                None
            };
            let resume_target = committed
                .as_ref()
                .and_then(|c| c.find_partition(&topic, p))
                .and_then(|e| e.offset().to_raw())
                .filter(|o| *o > 0)
                .unwrap_or(0);
            partitions.push(PartitionState { end, resume_target, ..PartitionState::new(p, now) });
        }
        let times_topic = flags.times_topic();
        let mut recorded = std::collections::HashMap::new();
        // A finite replay only reads the times; a live source also writes them.
        let times_exist = if finite { topic_exists(&flags.connect, &times_topic)? } else { ensure_topic(&flags.connect, &times_topic).map(|()| true)? };
        if times_exist {
            for m in read_topic(&flags.connect, &times_topic)? {
                match parse_recorded(&m) {
                    Some(((p, o), t)) if p as usize % peers == index => {
                        recorded.insert((p, o), t);
                    }
                    Some(_) => {}
                    None => tracing::warn!("{times_topic}: ignoring a message that is not `partition:offset` -> time"),
                }
            }
        }
        let times = if finite {
            None
        } else {
            let counter = DeliveryCounter::default();
            Some((producer(&flags.connect, counter.clone())?, counter, times_topic))
        };
        let targets: i64 = partitions.iter().map(|p| p.resume_target).sum();
        if targets > 0 {
            tracing::info!("worker {index}: replaying {topic} from the start; the previous run had committed {targets} records");
        }
        Ok(KafkaSource {
            consumer,
            buffer_limit: PARTITION_BUFFER,
            queues,
            context,
            topic,
            partitions,
            tick_ms: tick_ms.max(1),
            idle_ms: (!finite).then_some(flags.kafka_idle_ms),
            counters,
            worker: index,
            started: Instant::now(),
            rehydrated: targets == 0,
            last_commit: Instant::now(),
            recorded,
            times,
            unrecorded: Vec::new(),
        })
    }

    /// Reads what the brokers have ready, up to about `max` records.
    fn poll(&mut self, max: usize) -> anyhow::Result<()> {
        let now = now_ms();
        // The main queue serves librdkafka's callbacks (statistics) and errors; every
        // partition's messages come through its own queue.
        while let Some(result) = self.consumer.poll(Duration::ZERO) {
            match result {
                // Transient broker errors are retried by librdkafka itself.
                Err(e) => tracing::warn!("Kafka consumer: {e}"),
                Ok(m) => tracing::warn!("partition {}: a message outside its partition's queue (offset {}); it is read from that queue", m.partition(), m.offset()),
            }
        }
        // A partition whose buffer is full is not polled: its messages wait in librdkafka,
        // which stops fetching the partition when its queue is full.
        let share = max / self.partitions.len().max(1) + 1;
        let mut received = Received { tick_ms: self.tick_ms, now, recorded: &self.recorded, unrecorded: &mut self.unrecorded, counters: &self.counters };
        for (state, queue) in self.partitions.iter_mut().zip(&self.queues) {
            for _ in 0..share {
                if state.buffer.len() >= self.buffer_limit {
                    break;
                }
                match queue.poll(Duration::ZERO) {
                    None => break,
                    Some(Err(e)) => {
                        tracing::warn!("Kafka partition {}: {e}", state.partition);
                        break;
                    }
                    Some(Ok(message)) => received.take(state, &message),
                }
            }
        }
        self.record_times()?;
        if let Some(idle_ms) = self.idle_ms {
            let health = self.context.health.lock().expect("no panics holding this lock").clone();
            for state in &mut self.partitions {
                state.idle(now, idle_ms, self.tick_ms, health.get(&state.partition).copied());
            }
        }
        Ok(())
    }

    /// Writes the times of this poll's raised records to the times topic and waits for
    /// the broker to acknowledge them: only then may the records reach the views.
    fn record_times(&mut self) -> anyhow::Result<()> {
        if self.unrecorded.is_empty() {
            return Ok(());
        }
        let Some((producer, counter, topic)) = &self.times else {
            anyhow::bail!("a finite replay raised a record's time");
        };
        let failed = counter.failed.load(Ordering::Relaxed);
        for (key, time) in &self.unrecorded {
            send_waiting(producer, BaseRecord::to(topic).key(key.as_bytes()).payload(time.as_bytes())).with_context(|| format!("recording ingestion times in {topic}"))?;
        }
        producer.flush(Duration::from_secs(300)).with_context(|| format!("recording ingestion times in {topic}"))?;
        anyhow::ensure!(
            counter.failed.load(Ordering::Relaxed) == failed,
            "recording ingestion times in {topic}: {}",
            counter.last_error.lock().expect("no panics holding this lock").clone().unwrap_or_default()
        );
        self.unrecorded.clear();
        Ok(())
    }

    /// The least time any of this worker's partitions may still hand out (`None` once a
    /// finite replay is done). A worker without partitions follows the wall clock as if
    /// all its partitions were idle.
    pub fn lower(&self) -> Option<Time> {
        if self.partitions.is_empty() {
            return self.idle_ms.map(|idle| now_ms().saturating_sub(idle) / self.tick_ms * self.tick_ms);
        }
        self.partitions.iter().filter_map(PartitionState::lower).min()
    }

    /// Commits, for each partition, the offset after the last record at a time below
    /// `frontier` (the views include everything before it). At most once a second.
    pub fn commit(&mut self, frontier: Time) {
        if self.last_commit.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_commit = Instant::now();
        let mut list = TopicPartitionList::new();
        let mut replayed = true;
        for state in &mut self.partitions {
            let mut offset = None;
            while let Some((t, o)) = state.handed_out.front().copied() {
                if t >= frontier {
                    break;
                }
                offset = Some(o);
                state.handed_out.pop_front();
            }
            if let Some(o) = offset {
                let _ = list.add_partition_offset(&self.topic, state.partition, Offset::Offset(o));
            }
            replayed &= state.next_offset >= state.resume_target && state.handed_out.front().is_none_or(|(_, o)| *o > state.resume_target);
        }
        if list.count() > 0 {
            if let Err(e) = self.consumer.commit(&list, CommitMode::Async) {
                tracing::warn!("committing Kafka offsets: {e}");
            }
        }
        if !self.rehydrated && replayed {
            self.rehydrated = true;
            tracing::info!("worker {}: the views include every record the previous run had committed ({:.1} s after start)", self.worker, self.started.elapsed().as_secs_f64());
        }
    }

    /// This worker's partitions.
    pub fn partitions(&self) -> Vec<i32> {
        self.partitions.iter().map(|p| p.partition).collect()
    }
}

impl Source for KafkaSource {
    /// Hands out the records at the least time any partition may still produce; an empty
    /// batch when nothing is ready but the time may advance.
    fn next_batch(&mut self, out: &mut Vec<RawRecord>, max: usize) -> anyhow::Result<Option<Time>> {
        self.poll(max)?;
        let Some(lower) = self.lower() else { return Ok(None) };
        for state in &mut self.partitions {
            while out.len() < max && state.buffer.front().is_some_and(|(_, t)| *t == lower) {
                let (record, time) = state.buffer.pop_front().expect("a front record");
                let offset = kafka_origin(record.position).map_or(0, |(_, o)| o) + 1;
                match state.handed_out.back_mut() {
                    Some((t, o)) if *t == time => *o = offset,
                    _ => state.handed_out.push_back((time, offset)),
                }
                out.push(record);
            }
        }
        Ok(Some(lower))
    }

    fn final_time(&self) -> Option<Time> {
        None
    }
}

/// Queues `record`, waiting while librdkafka's queue is full (it drains as the brokers
/// acknowledge); any other error is returned.
pub fn send_waiting(producer: &ThreadedProducer<DeliveryCounter>, mut record: BaseRecord<'_, [u8], [u8]>) -> rdkafka::error::KafkaResult<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((e, back)) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// The key of a Kafka record's identity in the times and dead-letter topics.
fn origin_key(partition: i32, offset: i64) -> String {
    format!("{partition}:{offset}")
}

/// A times-topic message: the record's (partition, offset) and its recorded time.
fn parse_recorded(m: &ReadMessage) -> Option<((i32, i64), Time)> {
    let key = std::str::from_utf8(m.key.as_deref()?).ok()?;
    let (p, o) = key.split_once(':')?;
    let time = std::str::from_utf8(&m.payload).ok()?.parse().ok()?;
    Some(((p.parse().ok()?, o.parse().ok()?), time))
}

/// Counts failed deliveries of a producer.
#[derive(Clone, Default)]
pub struct DeliveryCounter {
    /// Messages the brokers acknowledged.
    pub delivered: Arc<AtomicU64>,
    /// Messages that could not be delivered (after librdkafka's retries).
    pub failed: Arc<AtomicU64>,
    /// The last delivery error.
    pub last_error: Arc<std::sync::Mutex<Option<String>>>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock().expect("no panics holding this lock") = Some(e.to_string());
            }
        }
    }
}

/// A producer that retries and keeps order per partition.
pub fn producer(connect: &KafkaConnect, counter: DeliveryCounter) -> anyhow::Result<ThreadedProducer<DeliveryCounter>> {
    let mut config = connect.client_config()?;
    config.set("acks", "all").set("linger.ms", "5").set("message.timeout.ms", "300000").set("max.in.flight.requests.per.connection", "1");
    config.create_with_context(counter).context("creating the Kafka producer")
}

/// Copies rejected records to the dead-letter topic, each once: the value is the record
/// as received, the key its source `partition:offset`, and the headers say why
/// (`tidemark-reason`, `tidemark-detail`, `tidemark-ingest-time`). On start it reads
/// the keys already in the topic, so a restarted cluster that rejects the same records
/// again does not copy them twice. Records that did not come from Kafka (gRPC Ingest)
/// have no stable identity across restarts and are copied as they come.
pub struct DeadLetterWriter {
    producer: ThreadedProducer<DeliveryCounter>,
    counter: DeliveryCounter,
    topic: String,
    written: HashSet<String>,
    sent: u64,
}

impl DeadLetterWriter {
    /// Opens the writer, reading the keys the topic holds.
    pub fn open(connect: &KafkaConnect, topic: &str) -> anyhow::Result<Self> {
        ensure_topic(connect, topic)?;
        let written = read_keys(connect, topic).with_context(|| format!("reading the dead-letter topic {topic}"))?;
        let counter = DeliveryCounter::default();
        let producer = producer(connect, counter.clone())?;
        if !written.is_empty() {
            tracing::info!("dead-letter topic {topic} already holds {} records", written.len());
        }
        Ok(DeadLetterWriter { producer, counter, topic: topic.to_owned(), written, sent: 0 })
    }

    /// Copies `reject` unless it is already there.
    pub fn write(&mut self, reject: &Reject) -> anyhow::Result<()> {
        let key = match kafka_origin(reject.position) {
            Some((p, o)) => origin_key(p, o),
            None => format!("ingest:{}", reject.position),
        };
        if !self.written.insert(key.clone()) {
            return Ok(());
        }
        let time = reject.ingest_time.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "tidemark-reason", value: Some(reject.reason.name()) })
            .insert(Header { key: "tidemark-detail", value: Some(reject.detail.as_str()) })
            .insert(Header { key: "tidemark-ingest-time", value: Some(time.as_str()) });
        let record = BaseRecord::to(&self.topic).key(key.as_bytes()).payload(&reject.raw[..]).headers(headers);
        send_waiting(&self.producer, record).with_context(|| format!("writing to the dead-letter topic {}", self.topic))?;
        self.sent += 1;
        Ok(())
    }

    /// Copies sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Copies the brokers acknowledged so far; an error once one could not be delivered
    /// (librdkafka retried it for `message.timeout.ms`): the process must restart, and
    /// the restarted writer copies what the topic lacks.
    pub fn acknowledged(&self) -> anyhow::Result<u64> {
        if self.counter.failed.load(Ordering::Relaxed) > 0 {
            let error = self.counter.last_error.lock().expect("no panics holding this lock").clone().unwrap_or_default();
            anyhow::bail!("a copy to the dead-letter topic {} could not be delivered: {error}", self.topic);
        }
        Ok(self.counter.delivered.load(Ordering::Relaxed))
    }

    /// Waits up to `timeout` for every copy to be acknowledged.
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        self.producer.flush(timeout).context("flushing the dead-letter topic")
    }
}

/// The keys of every message in `topic`, read from the start to the log end as it is now.
pub fn read_keys(connect: &KafkaConnect, topic: &str) -> anyhow::Result<HashSet<String>> {
    let mut keys = HashSet::new();
    for message in read_topic(connect, topic)? {
        if let Some(key) = message.key {
            keys.insert(String::from_utf8_lossy(&key).into_owned());
        }
    }
    Ok(keys)
}

/// Whether the brokers know `topic`.
pub fn topic_exists(connect: &KafkaConnect, topic: &str) -> anyhow::Result<bool> {
    let consumer: BaseConsumer = connect.client_config()?.create().context("creating a Kafka client")?;
    let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT).with_context(|| format!("asking the brokers about {topic}"))?;
    Ok(metadata.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
}

/// Creates `topic` with one partition unless it exists.
pub fn ensure_topic(connect: &KafkaConnect, topic: &str) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    if topic_exists(connect, topic)? {
        return Ok(());
    }
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = connect.client_config()?.create().context("creating a Kafka admin client")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let results = runtime
        .block_on(admin.create_topics(&[NewTopic::new(topic, 1, TopicReplication::Fixed(1))], &AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT))))
        .with_context(|| format!("creating the topic {topic}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("creating the topic {name}: {code}"),
        }
    }
    tracing::info!("created the topic {topic}");
    Ok(())
}

/// One message as read back by [`read_topic`].
#[derive(Clone, Debug)]
pub struct ReadMessage {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Timestamp (ms), if any.
    pub timestamp: Option<i64>,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub payload: Vec<u8>,
    /// Headers as (name, value) strings.
    pub headers: Vec<(String, String)>,
}

/// Every message of `topic`, from the start of each partition to its log end as it is
/// now, in partition and offset order.
pub fn read_topic(connect: &KafkaConnect, topic: &str) -> anyhow::Result<Vec<ReadMessage>> {
    let mut config = connect.client_config()?;
    config.set("group.id", "tidemark-reader").set("enable.auto.commit", "false").set("auto.offset.reset", "earliest");
    let (consumer, count) = connect_consumer(&config, topic, rdkafka::consumer::DefaultConsumerContext)?;
    let mut ends = Vec::with_capacity(count);
    let mut assignment = TopicPartitionList::new();
    for p in 0..count as i32 {
        let (low, high) = consumer.fetch_watermarks(topic, p, REQUEST_TIMEOUT).with_context(|| format!("reading the log end of {topic}/{p}"))?;
        if high > low {
            assignment.add_partition_offset(topic, p, Offset::Beginning)?;
            ends.push((p, high));
        }
    }
    let mut messages = Vec::new();
    if ends.is_empty() {
        return Ok(messages);
    }
    consumer.assign(&assignment)?;
    let mut next: std::collections::HashMap<i32, i64> = ends.iter().map(|(p, _)| (*p, 0)).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while ends.iter().any(|(p, high)| next[p] < *high) {
        anyhow::ensure!(Instant::now() < deadline, "reading {topic} did not reach its log end within 120 s");
        let Some(result) = consumer.poll(Duration::from_millis(100)) else { continue };
        let m = result?;
        next.insert(m.partition(), m.offset() + 1);
        let headers = m
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())).collect())
            .unwrap_or_default();
        messages.push(ReadMessage {
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers,
        });
    }
    messages.sort_by_key(|m| (m.partition, m.offset));
    Ok(messages)
}

/// The time every record of `messages` (one topic, in partition and offset order) gets
/// when a worker replays them with the times recorded in `times` (the messages of the
/// times topic).
pub fn replay_times(messages: &[ReadMessage], times: &[ReadMessage], tick_ms: u64) -> Vec<Time> {
    let recorded: std::collections::HashMap<(i32, i64), Time> = times.iter().filter_map(parse_recorded).collect();
    let mut clocks: std::collections::HashMap<i32, PartitionState> = std::collections::HashMap::new();
    messages
        .iter()
        .map(|m| {
            let state = clocks.entry(m.partition).or_insert_with(|| PartitionState::new(m.partition, 0));
            match recorded.get(&(m.partition, m.offset)) {
                Some(t) => state.bind(m.timestamp, *t, tick_ms.max(1), 0),
                None => state.assign(m.timestamp, tick_ms.max(1), 0).0,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> PartitionState {
        PartitionState::new(0, 0)
    }

    #[test]
    fn positions_round_trip() {
        for (p, o) in [(0, 0), (3, 17), (1000, (1 << 40) - 1)] {
            let position = kafka_position(p, o);
            assert_eq!(kafka_origin(position), Some((p, o)));
        }
        assert_eq!(kafka_origin(12345), None, "positions of other sources are not Kafka's");
    }

    #[test]
    fn times_follow_timestamps_on_the_tick_and_never_decrease() {
        let mut s = state();
        assert_eq!(s.assign(Some(1_001), 10, 5_000), (1_010, false));
        assert_eq!(s.assign(Some(995), 10, 5_000), (1_010, false), "an older timestamp takes the running maximum");
        assert_eq!(s.assign(Some(1_020), 10, 5_000), (1_020, false));
        assert_eq!(s.assign(None, 10, 5_000), (1_020, false), "no timestamp: the clock");
    }

    /// Records that all carry one timestamp move the partition's clock a tick on every
    /// 65,536 records, alike on every replay, and are not taken for raised ones.
    #[test]
    fn one_timestamp_for_many_records_spreads_over_ticks() {
        let mut s = state();
        let times: Vec<(Time, bool)> = (0..200_000).map(|_| s.assign(Some(1_000), 10, 5_000)).collect();
        assert!(times.iter().all(|(_, raised)| !raised));
        assert_eq!(times[65_535].0, 1_000);
        assert_eq!(times[65_536].0, 1_010);
        assert_eq!(times[199_999].0, 1_030);
        let mut again = state();
        assert!(times.iter().all(|t| again.assign(Some(1_000), 10, 5_000) == *t), "a replay gives the same times");
    }

    #[test]
    fn idleness_advances_the_clock_and_raises_older_records() {
        let mut s = state();
        s.assign(Some(1_000), 10, 1_000);
        s.next_offset = 1;
        let at_end = |seen: u64| Some(PartitionHealth { seen, fetching: true, high: 1, fetching_since: 0 });
        s.idle(1_500, 1_000, 10, at_end(1_500));
        assert_eq!(s.clock, 1_000, "not idle yet");
        s.idle(10_000, 1_000, 10, None);
        assert_eq!(s.clock, 1_000, "no statistics yet: not idle");
        s.idle(10_000, 1_000, 10, Some(PartitionHealth { seen: 10_000, fetching: true, high: 5, fetching_since: 0 }));
        assert_eq!(s.clock, 1_000, "records wait in the log: not idle");
        s.idle(10_000, 1_000, 10, Some(PartitionHealth { seen: 10_000, fetching: false, high: 1, fetching_since: 0 }));
        assert_eq!(s.clock, 1_000, "the broker is down: not idle");
        s.idle(10_000, 1_000, 10, Some(PartitionHealth { seen: 10_000, fetching: true, high: 1, fetching_since: 9_500 }));
        assert_eq!(s.clock, 1_000, "fetching again for less than idle_ms: not idle");
        s.idle(10_000, 1_000, 10, at_end(5_000));
        assert_eq!(s.clock, 4_000, "idle as of older statistics: their time, idle_ms behind");
        s.idle(10_000, 1_000, 10, at_end(9_900));
        assert_eq!(s.clock, 8_900, "idle: the statistics' time, idle_ms behind");
        s.idle(20_000, 1_000, 10, at_end(19_990));
        assert_eq!(s.clock, 18_990);
        s.clock = 9_000;
        assert_eq!(s.assign(Some(8_000), 10, 10_000), (9_000, true), "an older record is raised");
        assert_eq!(s.assign(Some(9_500), 10, 10_000), (9_500, false), "a newer one keeps its own time");
    }

    #[test]
    fn replay_times_match_a_live_read_without_idleness() {
        let messages: Vec<ReadMessage> = [(0, 5), (1, 3), (0, 2), (1, 9)]
            .iter()
            .enumerate()
            .map(|(i, (p, ts))| ReadMessage { partition: *p, offset: i as i64, timestamp: Some(*ts * 1000), key: None, payload: Vec::new(), headers: Vec::new() })
            .collect();
        assert_eq!(replay_times(&messages, &[], 10), vec![5_000, 3_000, 5_000, 9_000]);
        let recorded = ReadMessage { partition: 0, offset: 2, timestamp: None, key: Some(b"0:2".to_vec()), payload: b"7000".to_vec(), headers: Vec::new() };
        assert_eq!(replay_times(&messages, &[recorded], 10), vec![5_000, 3_000, 7_000, 9_000], "a recorded time wins");
    }

    /// Against librdkafka's in-process mock broker: two workers of a cluster split four
    /// partitions, read every record once, in time order, at its timestamp on the tick,
    /// also when partitions' buffers fill up.
    #[test]
    fn workers_split_the_partitions_and_times_follow_the_timestamps() {
        use rdkafka::mocking::MockCluster;
        use rdkafka::producer::BaseProducer;
        let cluster = MockCluster::new(1).expect("a mock cluster");
        cluster.create_topic("events", 4, 1).expect("a topic");
        cluster.create_topic("events-ingest-times", 1, 1).expect("the times topic");
        let connect = KafkaConnect { kafka_brokers: Some(cluster.bootstrap_servers()), kafka_topic: "events".to_owned(), kafka_options: Vec::new() };
        let producer: BaseProducer = connect.client_config().expect("config").create().expect("a producer");
        let mut sent = std::collections::HashMap::new();
        for i in 0..4000i64 {
            let payload = format!("record {i}");
            let ts = 1_000_000 + i * 7;
            producer.send(BaseRecord::<(), _>::to("events").partition((i % 4) as i32).payload(&payload).timestamp(ts)).expect("queued");
            sent.insert(payload.into_bytes(), tick_ceil(ts as u64, 10));
        }
        producer.flush(Duration::from_secs(10)).expect("delivered");
        let flags = KafkaFlags { connect, kafka_group: "test".to_owned(), kafka_idle_ms: 1000, kafka_dead_letter_topic: None, kafka_times_topic: None };
        let mut seen = std::collections::HashMap::new();
        for worker in 0..2 {
            let mut source = KafkaSource::open(&flags, 10, worker, 2, true, Arc::new(KafkaCounters::default())).expect("the source opens");
            // Small buffers: partitions fill up and wait in librdkafka's queues (a partition
            // that was paused and resumed here once lost records).
            source.buffer_limit = 16;
            assert_eq!(source.partitions(), vec![worker as i32, worker as i32 + 2]);
            let (mut batch, mut last) = (Vec::new(), 0);
            let deadline = Instant::now() + Duration::from_secs(30);
            while let Some(time) = source.next_batch(&mut batch, 7).expect("reads") {
                assert!(time >= last, "times never decrease");
                last = time;
                for record in batch.drain(..) {
                    let (partition, _) = kafka_origin(record.position).expect("a Kafka position");
                    assert_eq!(partition as usize % 2, worker, "a partition of this worker");
                    assert!(seen.insert(record.bytes.clone(), time).is_none(), "read once");
                }
                assert!(Instant::now() < deadline, "the replay ends");
            }
        }
        assert_eq!(seen, sent, "every record, at its timestamp on the tick");
    }

    #[test]
    fn a_finite_partition_is_done_at_its_end() {
        let mut s = state();
        s.end = Some(2);
        assert_eq!(s.lower(), Some(0));
        s.next_offset = 2;
        assert_eq!(s.lower(), None);
    }
}
