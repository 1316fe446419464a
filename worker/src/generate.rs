//! `tidemark generate`: the built-in generator's traffic written to a file of JSON lines
//! (for replays with `tidemark run --input`, other engines, and the fraud evaluation),
//! with the fraud labels beside it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tidemark_dataflows::generator::{FraudPattern, Generator};

use crate::config::GeneratorFlags;
use crate::driver::SIMULATED_START_MS;

/// `tidemark generate`.
#[derive(Clone, Debug, Args)]
pub struct GenerateArgs {
    /// The generator's traffic (`--rate` sets how fast simulated time passes).
    #[command(flatten)]
    pub generator: GeneratorFlags,
    /// Records to write.
    #[arg(long, env = "TIDEMARK_EVENTS", default_value_t = 1_000_000)]
    pub events: u64,
    /// Retention horizon in hours that the records are made for (records this much
    /// older than their delivery are the `too_late` ones): replay with the same value.
    #[arg(long, env = "TIDEMARK_RETENTION_HOURS", default_value_t = 168)]
    pub retention_hours: u64,
    /// The file of JSON lines to write, in delivery order (the simulated clock starts at
    /// 2026-11-01T00:00:00Z, as in `tidemark run --max-speed`).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Also write the fraud labels here: CSV `payment_id,pattern`, one line per
    /// fraudulent payment (every other payment is honest).
    #[arg(long)]
    pub labels_out: Option<PathBuf>,
}

/// Writes the records and labels; prints what it wrote to standard error.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    args.generator.check(&mut problems);
    if args.retention_hours == 0 {
        problems.push("--retention-hours must be positive".to_owned());
    }
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
    let config = args.generator.config(args.retention_hours, SIMULATED_START_MS);
    let create = |path: &PathBuf| -> anyhow::Result<BufWriter<File>> {
        Ok(BufWriter::with_capacity(1 << 20, File::create(path).with_context(|| format!("creating {}", path.display()))?))
    };
    let mut out = create(&args.out)?;
    let mut labels = args.labels_out.as_ref().map(create).transpose()?;
    if let Some(labels) = &mut labels {
        writeln!(labels, "payment_id,pattern")?;
    }
    let mut generator = Generator::new(config, 0, 1);
    let mut fraudulent = [0u64; FraudPattern::ALL.len()];
    for _ in 0..args.events {
        let g = generator.next_record();
        out.write_all(&g.record.bytes)?;
        out.write_all(b"\n")?;
        if let (Some(pattern), Some(labels)) = (g.fraud, &mut labels) {
            let event: serde_json::Value = serde_json::from_slice(&g.record.bytes).context("a labelled record is not JSON")?;
            let id = event.get("event_id").and_then(|v| v.as_str()).context("a labelled record has no event_id")?;
            writeln!(labels, "{id},{}", pattern.name())?;
        }
        if let Some(pattern) = g.fraud {
            fraudulent[pattern as usize] += 1;
        }
    }
    out.flush()?;
    if let Some(labels) = &mut labels {
        labels.flush()?;
    }
    let stats = generator.stats();
    let by_pattern: Vec<String> = FraudPattern::ALL.iter().map(|p| format!("{} {}", p.name(), fraudulent[*p as usize])).collect();
    eprintln!(
        "wrote {} records to {} ({} sessions, {} fraud incidents; fraudulent payments: {})",
        args.events,
        args.out.display(),
        stats.sessions_started,
        stats.fraud_incidents,
        by_pattern.join(", ")
    );
    Ok(())
}
