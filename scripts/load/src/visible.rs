//! `tidemark-load wait-visible`: the moment a consistent query first sees every record of
//! a known set, such as a (re)started worker rehydrating from a Kafka topic.
//!
//! The caller gives a time `--complete-after T` at or after the ingestion time of every
//! record it expects (for a topic, its records' timestamps on the tick: every record was
//! produced before `T`), and how many records there are (`--records N`). The tool reads
//! `rejected_by_reason` (a few rows: cheap to answer while the worker is busy) at the
//! latest complete time every `--interval-ms`. Once an answer's `as_of` is at or after
//! `T`, every update at times up to `T` is in the views: a query at that time sees every
//! record. That moment is the result. Only then, outside the measured time, it asks
//! `Status` how many records the worker processes have inserted since they started, which
//! must be at least `N` (fewer: the frontier passed records that were not read), and reads
//! at that `as_of` the valid events per day from `kpis` and the rejects by reason, totals
//! that every start over the same records must reproduce.
//!
//! Prints one JSON line to stdout: `visible_at_ms` (wall clock), `elapsed_ms` (since
//! `--started-ms`, if given), `as_of`, `polls`, `ingested`, `events`, `rejects` and
//! `rejected_by_reason` (count per reason).

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tidemark_proto::v1::filter::Op;
use tidemark_proto::v1::{Filter, QueryRequest, QueryResponse, StatusRequest};
use tidemark_proto::value;

use crate::summary::Json;
use crate::{connect, now_ms};

/// Flags of `tidemark-load wait-visible`.
#[derive(Clone, Debug, Args)]
pub struct VisibleArgs {
    /// The coordinator's public API.
    #[arg(long, env = "TIDEMARK_LOAD_TARGET", default_value = "http://127.0.0.1:6875")]
    pub target: String,
    /// Wait until the views are complete at this time (ms since the epoch): at or after
    /// the ingestion time of every record expected.
    #[arg(long)]
    pub complete_after: u64,
    /// Records the worker processes must have inserted by then.
    #[arg(long)]
    pub records: u64,
    /// Wall-clock start (ms since the epoch) to report the elapsed time from, such as
    /// when the worker process was started.
    #[arg(long)]
    pub started_ms: Option<u64>,
    /// Fail as soon as the process with this id is gone (the worker).
    #[arg(long)]
    pub watch_pid: Option<u32>,
    /// How often to ask (ms).
    #[arg(long, default_value_t = 50)]
    pub interval_ms: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
}

/// The sum of column `column` over the rows of `answer`.
fn column_sum(answer: &QueryResponse, column: &str) -> anyhow::Result<i64> {
    let at = answer.columns.iter().position(|c| c.name == column).with_context(|| format!("no column {column}"))?;
    let mut total = 0;
    for row in answer.rows.iter().filter_map(|r| r.row.as_ref()) {
        let v = row.values.get(at).context("a row shorter than its columns")?;
        total += value::display(v).parse::<i64>().with_context(|| format!("{column} is not an integer"))?;
    }
    Ok(total)
}

/// Waits until the views are complete at `--complete-after`, then checks and summarizes.
pub async fn run(args: VisibleArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut client = connect(&args.target).await?;
    let mut polls = 0u64;
    let (visible_at, counts) = loop {
        if let Some(pid) = args.watch_pid {
            anyhow::ensure!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "process {pid} is gone");
        }
        anyhow::ensure!(Instant::now() < deadline, "the views were not complete at {} within {} s", args.complete_after, args.timeout);
        polls += 1;
        let request = QueryRequest { view: "rejected_by_reason".into(), timeout_ms: 1000, ..Default::default() };
        match client.query(request).await {
            Ok(answer) if answer.get_ref().as_of >= args.complete_after => break (now_ms(), answer.into_inner()),
            Ok(_) => {}
            // Nothing complete yet, or the coordinator not connected to the worker yet.
            Err(status) if matches!(status.code(), tonic::Code::DeadlineExceeded | tonic::Code::Unavailable) => {}
            Err(status) => anyhow::bail!("Query rejected_by_reason: {:?}: {}", status.code(), status.message()),
        }
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    };
    let as_of = counts.as_of;
    let status = client.status(StatusRequest {}).await.context("Status")?.into_inner();
    anyhow::ensure!(
        status.ingested >= args.records,
        "the views were complete at {as_of} with only {} of {} records inserted: the frontier passed records not read yet",
        status.ingested,
        args.records
    );
    let day = Filter { column: "granularity".into(), op: Op::Eq as i32, value: Some(value::string("day")) };
    let kpis = client
        .query(QueryRequest { view: "kpis".into(), filters: vec![day], as_of: Some(as_of), ..Default::default() })
        .await
        .context("Query kpis")?
        .into_inner();
    let mut by_reason = Vec::new();
    let mut rejects = 0;
    for row in counts.rows.iter().filter_map(|r| r.row.as_ref()) {
        if let [reason, count] = row.values.as_slice() {
            let count: u64 = value::display(count).parse().context("a reject count is not a number")?;
            rejects += count;
            by_reason.push((value::display(reason), Json::Int(count)));
        }
    }
    let mut fields = vec![("visible_at_ms".to_owned(), Json::Int(visible_at))];
    if let Some(started) = args.started_ms {
        fields.push(("elapsed_ms".to_owned(), Json::Int(visible_at.saturating_sub(started))));
    }
    fields.extend([
        ("as_of".to_owned(), Json::Int(as_of)),
        ("polls".to_owned(), Json::Int(polls)),
        ("ingested".to_owned(), Json::Int(status.ingested)),
        ("events".to_owned(), Json::Int(column_sum(&kpis, "events")?.max(0) as u64)),
        ("rejects".to_owned(), Json::Int(rejects)),
        ("rejected_by_reason".to_owned(), Json::Object(by_reason)),
    ]);
    println!("{}", Json::Object(fields));
    Ok(())
}
