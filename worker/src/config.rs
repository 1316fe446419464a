//! Command-line and environment configuration of a worker process.
//!
//! Every flag is also an environment variable `TIDEMARK_<FLAG>`. [`RunArgs::validate`]
//! reports every invalid field at once, and [`RunArgs::describe`] prints the effective
//! configuration at start.

use std::path::{Path, PathBuf};

use anyhow::Context;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tidemark_dataflows::decode::Format;
use tidemark_dataflows::generator::GeneratorConfig;
use tidemark_dataflows::fraud::FraudModel;
use tidemark_dataflows::views::ViewConfig;
use tidemark_coordinator::config::{expand_template, AddressMap};

/// The format of an input file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// Decide from the first line: the REES46 header, a CDNOW row, or JSON.
    Auto,
    /// JSON lines in the README's schema.
    Json,
    /// The REES46 clickstream CSV.
    Rees46,
    /// CDNOW transaction rows.
    Cdnow,
}

/// `tidemark run`: one worker process running every view.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Worker threads in this process.
    #[arg(long, short = 'w', env = "TIDEMARK_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// Number of worker processes in the cluster.
    #[arg(long, env = "TIDEMARK_PROCESSES", default_value_t = 1)]
    pub processes: usize,
    /// Index of this process in the cluster (0-based).
    #[arg(long, env = "TIDEMARK_PROCESS", default_value_t = 0)]
    pub process: usize,
    /// Comma-separated `host:port` of every process, in process order (needed with
    /// `--processes` > 1 unless `--hostfile` is given).
    #[arg(long, env = "TIDEMARK_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// File with one `host:port` per line, in process order.
    #[arg(long, env = "TIDEMARK_HOSTFILE")]
    pub hostfile: Option<PathBuf>,
    /// How long to wait for the other processes before giving up (seconds).
    #[arg(long, env = "TIDEMARK_CONNECT_TIMEOUT", default_value_t = 60)]
    pub connect_timeout: u64,

    /// Replay a file instead of generating traffic.
    #[arg(long, short = 'i', env = "TIDEMARK_INPUT")]
    pub input: Option<PathBuf>,
    /// Format of `--input`.
    #[arg(long, env = "TIDEMARK_FORMAT", value_enum, default_value_t = InputFormat::Auto)]
    pub format: InputFormat,
    /// Read a Kafka topic instead (`--kafka-brokers`): every partition from its start to
    /// its log end as it is at the start, then stop. Offsets are not committed.
    #[command(flatten)]
    pub kafka: crate::kafka::KafkaFlags,
    /// With `--kafka-brokers`: keep reading new records until Ctrl-C or `--duration`.
    #[arg(long, env = "TIDEMARK_KAFKA_FOLLOW")]
    pub kafka_follow: bool,

    /// The generator's traffic.
    #[command(flatten)]
    pub generator: GeneratorFlags,
    /// Generate as fast as possible; ingestion times follow the generator's simulated
    /// clock, so results do not depend on the machine's speed.
    #[arg(long, env = "TIDEMARK_MAX_SPEED")]
    pub max_speed: bool,
    /// Stop after this many generated events (the whole cluster).
    #[arg(long, env = "TIDEMARK_EVENTS")]
    pub events: Option<u64>,
    /// Stop after this many seconds of wall-clock time.
    #[arg(long, env = "TIDEMARK_DURATION")]
    pub duration: Option<u64>,

    /// Retention horizon in hours: older events are `too_late`, and events leave the
    /// views this long after their event time.
    #[arg(long, env = "TIDEMARK_RETENTION_HOURS", default_value_t = 168)]
    pub retention_hours: u64,
    /// Ingestion tick in milliseconds.
    #[arg(long, env = "TIDEMARK_TICK_MS", default_value_t = 10)]
    pub tick_ms: u64,

    /// Settings of the CLV views.
    #[command(flatten)]
    pub clv: ClvFlags,
    /// Settings of the fraud views.
    #[command(flatten)]
    pub fraud: FraudFlags,

    /// Write the final contents of every view to this JSON file.
    #[arg(long, env = "TIDEMARK_VIEWS_OUT")]
    pub views_out: Option<PathBuf>,
    /// Write every view change `(row, time, diff)` as JSON lines to this file.
    #[arg(long, env = "TIDEMARK_CHANGES_OUT")]
    pub changes_out: Option<PathBuf>,
    /// Append every rejected record (reason, detail, raw bytes) as JSON lines here.
    #[arg(long, env = "TIDEMARK_DEAD_LETTER")]
    pub dead_letter: Option<PathBuf>,
    /// Print no live summary, only the final one.
    #[arg(long, short = 'q', env = "TIDEMARK_QUIET")]
    pub quiet: bool,
    /// At the end, print to stderr the time each dataflow operator took (self time,
    /// summed over the worker threads of this process), busiest first.
    #[arg(long)]
    pub profile_operators: bool,
}

/// The built-in generator's traffic (`tidemark run`, `tidemark worker --generate`).
#[derive(Clone, Debug, Args)]
pub struct GeneratorFlags {
    /// Generator rate in events per second (the whole cluster). Live mode paces to it;
    /// with `--max-speed` it only sets how fast simulated time passes.
    #[arg(long, env = "TIDEMARK_RATE", default_value_t = 10_000)]
    pub rate: u64,
    /// Generator seed.
    #[arg(long, env = "TIDEMARK_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Generator user population. Users return after more than 30 minutes, so it takes
    /// about 700 users per event/s of `--rate` for sessions to stay realistic.
    #[arg(long, env = "TIDEMARK_USERS", default_value_t = 7_000_000)]
    pub users: u64,
    /// Generate only valid, on-time, unique events (no late, duplicate, corrected or
    /// malformed records).
    #[arg(long, env = "TIDEMARK_CLEAN")]
    pub clean: bool,
    /// Fraction of sessions followed by a fraud incident on the user's card (card
    /// testing, account takeover or an amount spike; and twice this fraction of paying
    /// sessions by impossible travel) [default: 0.002, 0 with --clean].
    #[arg(long, env = "TIDEMARK_FRAUD_RATE")]
    pub fraud_rate: Option<f64>,
    /// Fraction of days users spend abroad (honest payments from another country)
    /// [default: 0.02].
    #[arg(long, env = "TIDEMARK_TRAVEL_RATE")]
    pub travel_rate: Option<f64>,
}

impl GeneratorFlags {
    /// The generator configuration: these flags, the retention horizon, and the
    /// simulated clock's start.
    pub fn config(&self, retention_hours: u64, start_ms: i64) -> GeneratorConfig {
        let mut config = if self.clean { GeneratorConfig::clean() } else { GeneratorConfig::default() };
        config.seed = self.seed;
        config.users = self.users;
        config.events_per_sec = self.rate;
        config.retention_ms = retention_hours * 3_600_000;
        config.start_ms = start_ms;
        config.fraud_rate = self.fraud_rate.unwrap_or(config.fraud_rate);
        config.travel_rate = self.travel_rate.unwrap_or(config.travel_rate);
        config
    }

    /// Appends every problem with the flags to `problems`.
    pub fn check(&self, problems: &mut Vec<String>) {
        if self.rate == 0 {
            problems.push("--rate must be positive".to_owned());
        }
        if self.users == 0 {
            problems.push("--users must be positive".to_owned());
        }
        for (flag, rate) in [("--fraud-rate", self.fraud_rate), ("--travel-rate", self.travel_rate)] {
            if let Some(rate) = rate.filter(|r| !(0.0..=1.0).contains(r)) {
                problems.push(format!("{flag} {rate} is not within 0..=1"));
            }
        }
    }
}

/// The shape of a timely cluster as flags give it: what `tidemark run` and
/// `tidemark worker` share.
pub struct ClusterFlags<'a> {
    /// Worker threads per process.
    pub workers: usize,
    /// Processes in the cluster.
    pub processes: usize,
    /// This process's index.
    pub process: usize,
    /// `--peers`.
    pub peers: &'a [String],
    /// `--hostfile`.
    pub hostfile: Option<&'a Path>,
    /// `--peer-template`.
    pub peer_template: Option<&'a str>,
    /// `--address-map`.
    pub address_map: Option<&'a AddressMap>,
}

impl ClusterFlags<'_> {
    /// Appends every problem with the shape to `problems`.
    pub fn check(&self, problems: &mut Vec<String>) {
        if self.workers == 0 {
            problems.push("--workers must be at least 1".to_owned());
        }
        if self.processes == 0 {
            problems.push("--processes must be at least 1".to_owned());
        }
        if self.process >= self.processes.max(1) {
            problems.push(format!("process index {} is not below --processes {}", self.process, self.processes));
        }
        if self.processes > 1 && self.peers.is_empty() && self.hostfile.is_none() && self.peer_template.is_none() {
            problems.push("--processes > 1 needs --peers or --hostfile (or, for `tidemark worker`, --peer-template)".to_owned());
        }
        if let Some(template) = self.peer_template {
            if let Err(e) = expand_template(template, self.processes.max(1)) {
                problems.push(format!("--peer-template: {e:#}"));
            }
        }
        if !self.peers.is_empty() && self.peers.len() != self.processes {
            problems.push(format!("--peers lists {} addresses for {} processes", self.peers.len(), self.processes));
        }
    }

    /// The addresses of all processes (empty for a single process).
    pub fn addresses(&self) -> anyhow::Result<Vec<String>> {
        let addresses = if let Some(path) = self.hostfile {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let hosts: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
            anyhow::ensure!(hosts.len() == self.processes, "{} lists {} hosts for {} processes", path.display(), hosts.len(), self.processes);
            hosts
        } else if let Some(template) = self.peer_template {
            expand_template(template, self.processes)?
        } else {
            self.peers.to_vec()
        };
        match self.address_map {
            Some(map) => map.apply(addresses),
            None => Ok(addresses),
        }
    }

    /// Timely's communication settings: one process, or this member of a cluster.
    pub fn communication(&self) -> anyhow::Result<timely::CommunicationConfig> {
        Ok(if self.processes > 1 {
            timely::CommunicationConfig::Cluster {
                threads: self.workers,
                process: self.process,
                addresses: self.addresses()?,
                report: false,
                zerocopy: false,
            }
        } else {
            timely::CommunicationConfig::Process(self.workers)
        })
    }
}

/// Settings of `customer_rfm`, `clv_model` and `customer_clv`.
#[derive(Clone, Debug, Args)]
pub struct ClvFlags {
    /// Evaluate customers as of this day (YYYY-MM-DD, UTC), leaving later orders out (a
    /// calibration period). Default: the latest day any customer bought on.
    #[arg(long, env = "TIDEMARK_CLV_EVALUATION_DATE")]
    pub clv_evaluation_date: Option<String>,
    /// Horizon of `customer_clv.expected_purchases`, in weeks.
    #[arg(long, env = "TIDEMARK_CLV_PREDICTION_WEEKS", default_value_t = 52)]
    pub clv_prediction_weeks: u32,
    /// Months summed in `customer_clv.clv`.
    #[arg(long, env = "TIDEMARK_CLV_MONTHS", default_value_t = 12)]
    pub clv_months: u32,
    /// Monthly discount rate of `customer_clv.clv` (0.01 = 1% a month).
    #[arg(long, env = "TIDEMARK_CLV_DISCOUNT", default_value_t = 0.01)]
    pub clv_discount: f64,
    /// Refit the CLV model once its inputs changed this many times per mille of all
    /// customers since the last fit...
    #[arg(long, env = "TIDEMARK_CLV_REFIT_PER_MILLE", default_value_t = 10)]
    pub clv_refit_per_mille: u64,
    /// ...or once this many milliseconds of ingestion time passed, if anything changed.
    #[arg(long, env = "TIDEMARK_CLV_REFIT_INTERVAL_MS", default_value_t = 60_000)]
    pub clv_refit_interval_ms: u64,
}

impl ClvFlags {
    /// The evaluation day of `--clv-evaluation-date`, if given and valid.
    fn evaluation_day(&self) -> Result<Option<i64>, String> {
        let Some(date) = &self.clv_evaluation_date else { return Ok(None) };
        tidemark_dataflows::time::parse_timestamp(&format!("{date}T00:00:00Z"))
            .map(|ms| Some(tidemark_dataflows::clv::day_of(ms)))
            .ok_or_else(|| format!("--clv-evaluation-date {date:?} is not a date (YYYY-MM-DD)"))
    }

    /// Adds what is wrong with these flags to `problems`.
    pub fn check(&self, problems: &mut Vec<String>) {
        if let Err(e) = self.evaluation_day() {
            problems.push(e);
        }
        if self.clv_months == 0 || self.clv_prediction_weeks == 0 {
            problems.push("--clv-months and --clv-prediction-weeks must be positive".to_owned());
        }
        if !(self.clv_discount.is_finite() && self.clv_discount > -1.0) {
            problems.push(format!("--clv-discount {} must be a finite rate above -1", self.clv_discount));
        }
    }

    /// The CLV settings (call [`ClvFlags::check`] first: an invalid date is ignored here).
    pub fn config(&self) -> tidemark_dataflows::clv::ClvConfig {
        use tidemark_dataflows::clv::{model::ClvSettings, ClvConfig, RefitPolicy};
        ClvConfig {
            evaluation_day: self.evaluation_day().ok().flatten(),
            prediction_weeks: self.clv_prediction_weeks,
            clv: ClvSettings { months: self.clv_months, monthly_discount_rate: self.clv_discount, ..ClvSettings::default() },
            refit: RefitPolicy { changed_per_mille: self.clv_refit_per_mille, interval_ms: self.clv_refit_interval_ms },
        }
    }
}

/// Checks the view settings both commands take.
pub fn check_view_flags(tick_ms: u64, retention_hours: u64, problems: &mut Vec<String>) {
    if tick_ms == 0 {
        problems.push("--tick-ms must be positive".to_owned());
    }
    if retention_hours == 0 {
        problems.push("--retention-hours must be positive".to_owned());
    }
}

/// Settings of `fraud_scores` and `fraud_alerts`.
#[derive(Clone, Debug, Default, Args)]
pub struct FraudFlags {
    /// Scoring model file (JSON: version, bias, inputs, weights, threshold; the format of
    /// config/fraud-model.json, the model built in and used without this flag).
    #[arg(long, env = "TIDEMARK_FRAUD_MODEL")]
    pub fraud_model: Option<PathBuf>,
    /// Alert threshold (a score in 0..=1), instead of the model's.
    #[arg(long, env = "TIDEMARK_FRAUD_THRESHOLD")]
    pub fraud_threshold: Option<f64>,
}

impl FraudFlags {
    /// The scoring model these flags name.
    pub fn model(&self) -> anyhow::Result<FraudModel> {
        let mut model = match &self.fraud_model {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading the fraud model {}", path.display()))?;
                FraudModel::from_json(&text).with_context(|| format!("the fraud model {}", path.display()))?
            }
            None => FraudModel::default(),
        };
        if let Some(threshold) = self.fraud_threshold {
            anyhow::ensure!((0.0..=1.0).contains(&threshold), "--fraud-threshold {threshold} is not within 0..=1");
            model.threshold = threshold;
        }
        Ok(model)
    }

    /// Appends every problem with the flags to `problems`.
    pub fn check(&self, problems: &mut Vec<String>) {
        if let Err(e) = self.model() {
            problems.push(format!("{e:#}"));
        }
    }
}

/// The view settings of `--tick-ms`, `--retention-hours`, the CLV and the fraud flags.
pub fn view_config(tick_ms: u64, retention_hours: u64, clv: &ClvFlags, fraud: &FraudFlags) -> anyhow::Result<ViewConfig> {
    let mut config = ViewConfig { tick_ms, clv: clv.config(), fraud: fraud.model()?, ..ViewConfig::default() };
    config.decode.retention_ms = retention_hours * 3_600_000;
    Ok(config)
}

impl RunArgs {
    /// The cluster shape these flags give.
    pub fn cluster(&self) -> ClusterFlags<'_> {
        ClusterFlags {
            workers: self.workers,
            processes: self.processes,
            process: self.process,
            peers: &self.peers,
            hostfile: self.hostfile.as_deref(),
            peer_template: None,
            address_map: None,
        }
    }

    /// Every problem with the configuration, or nothing.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        self.cluster().check(&mut problems);
        if self.kafka.enabled() {
            self.kafka.connect.check(&mut problems);
            if self.input.is_some() {
                problems.push("--input and --kafka-brokers are two sources: choose one".to_owned());
            }
            if self.processes > 1 {
                problems.push("a Kafka replay with `tidemark run` is single-process (a serving cluster reads Kafka with `tidemark worker`)".to_owned());
            }
        } else if self.input.is_none() {
            self.generator.check(&mut problems);
        }
        check_view_flags(self.tick_ms, self.retention_hours, &mut problems);
        self.clv.check(&mut problems);
        self.fraud.check(&mut problems);
        if self.processes > 1 && self.input.is_none() && !self.kafka.enabled() && !(self.max_speed && self.events.is_some()) {
            problems.push("a multi-process run needs a finite source: --input, or --max-speed with --events".to_owned());
        }
        if let Some(input) = &self.input {
            if !input.is_file() {
                problems.push(format!("--input {} is not a readable file", input.display()));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    /// The view settings these flags select.
    pub fn view_config(&self) -> anyhow::Result<ViewConfig> {
        view_config(self.tick_ms, self.retention_hours, &self.clv, &self.fraud)
    }

    /// How long to run, if bounded by wall-clock time.
    pub fn wall_limit(&self) -> Option<Duration> {
        self.duration.map(Duration::from_secs)
    }

    /// A one-paragraph description of the effective configuration.
    pub fn describe(&self) -> String {
        let source = match &self.input {
            None if self.kafka.enabled() => format!(
                "Kafka topic {} at {} ({})",
                self.kafka.connect.kafka_topic,
                self.kafka.connect.kafka_brokers.as_deref().unwrap_or_default(),
                if self.kafka_follow { "following new records" } else { "from the start to the log end, then stop" }
            ),
            Some(path) => format!("replaying {} ({:?})", path.display(), self.format),
            None if self.max_speed => format!("generator at max speed (simulated {} events/s), seed {}", self.generator.rate, self.generator.seed),
            None => format!("generator at {} events/s, seed {}", self.generator.rate, self.generator.seed),
        };
        format!(
            "tidemark worker: process {}/{} with {} worker threads; {source}; retention {} h, tick {} ms{}{}",
            self.process,
            self.processes,
            self.workers,
            self.retention_hours,
            self.tick_ms,
            self.events.map(|n| format!("; stop after {n} events")).unwrap_or_default(),
            self.duration.map(|s| format!("; stop after {s} s")).unwrap_or_default(),
        )
    }
}

/// The record format of a file, from the flag or from its first non-blank line: a JSON
/// object, the REES46 header, or a CDNOW row (five fields, the third a `YYYYMMDD` date).
/// Anything else is read as JSON, so that each line gets its own clear reject.
pub fn detect_format(flag: InputFormat, first_line: &str) -> Format {
    match flag {
        InputFormat::Json => Format::Json,
        InputFormat::Rees46 => Format::Rees46,
        InputFormat::Cdnow => Format::Cdnow,
        InputFormat::Auto => {
            let line = first_line.trim();
            let fields: Vec<&str> = line.split_whitespace().collect();
            let cdnow = fields.len() == 5 && fields[2].len() == 8 && fields[2].bytes().all(|b| b.is_ascii_digit());
            if line.starts_with("event_time,") {
                Format::Rees46
            } else if cdnow {
                Format::Cdnow
            } else {
                Format::Json
            }
        }
    }
}
