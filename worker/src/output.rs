//! Output files: the final contents of every view (`--views-out`), every view change
//! (`--changes-out`), and the dead letter of rejected records (`--dead-letter`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use serde_json::{json, Value};
use tidemark_dataflows::clv::DAY_MS;
use tidemark_dataflows::decode::Reject;
use tidemark_dataflows::fraud::score::{inputs, INPUT_NAMES};
use tidemark_dataflows::time::{format_timestamp, Time};
use tidemark_dataflows::views::ViewRow;

use crate::config::RunArgs;
use crate::driver::Update;

/// The view names, in output order.
pub const VIEW_NAMES: [&str; 11] = [
    "sessions",
    "funnel",
    "kpis",
    "rejected_by_reason",
    "rejects",
    "customer_rfm",
    "clv_model",
    "customer_clv",
    "fraud_features",
    "fraud_scores",
    "fraud_alerts",
];

/// Open output files and the state behind `--views-out`.
pub struct Outputs {
    views_out: Option<(PathBuf, BTreeMap<ViewRow, i64>)>,
    changes_out: Option<BufWriter<File>>,
    dead_letter: Option<BufWriter<File>>,
}

fn create(path: &PathBuf, what: &str) -> anyhow::Result<BufWriter<File>> {
    let file = File::create(path).with_context(|| format!("creating the {what} file {}", path.display()))?;
    Ok(BufWriter::new(file))
}

impl Outputs {
    /// Opens the files the flags ask for.
    pub fn open(args: &RunArgs) -> anyhow::Result<Self> {
        Ok(Outputs {
            views_out: args.views_out.clone().map(|p| (p, BTreeMap::new())),
            changes_out: args.changes_out.as_ref().map(|p| create(p, "changes")).transpose()?,
            dead_letter: args.dead_letter.as_ref().map(|p| create(p, "dead-letter")).transpose()?,
        })
    }

    /// Records a batch of view changes.
    pub fn apply(&mut self, updates: &[Update]) -> anyhow::Result<()> {
        for (row, time, diff) in updates {
            if let Some((_, state)) = &mut self.views_out {
                let count = state.entry(row.clone()).or_insert(0);
                *count += *diff as i64;
                if *count == 0 {
                    state.remove(row);
                }
            }
            if let Some(out) = &mut self.changes_out {
                serde_json::to_writer(&mut *out, &json!({"time": time, "diff": diff, "row": row}))?;
                out.write_all(b"\n")?;
            }
        }
        Ok(())
    }

    /// Writes rejects, with all their bytes, to the dead-letter file.
    pub fn dead_letters(&mut self, rejects: &[Reject]) -> anyhow::Result<()> {
        if let Some(out) = &mut self.dead_letter {
            for reject in rejects {
                serde_json::to_writer(&mut *out, &reject_json(reject))?;
                out.write_all(b"\n")?;
            }
        }
        Ok(())
    }

    /// Flushes every file; writes the views as of `final_time`.
    pub fn finish(&mut self, final_time: Time) -> anyhow::Result<()> {
        if let Some(out) = &mut self.changes_out {
            out.flush()?;
        }
        if let Some(out) = &mut self.dead_letter {
            out.flush()?;
        }
        if let Some((path, state)) = &self.views_out {
            let mut views: BTreeMap<&str, Vec<Value>> = VIEW_NAMES.iter().map(|v| (*v, Vec::new())).collect();
            for (row, count) in state {
                for _ in 0..*count {
                    views.entry(row.view()).or_default().push(row_json(row));
                }
            }
            let doc = json!({
                "as_of": final_time,
                "as_of_rfc3339": format_timestamp(final_time as i64),
                "views": views,
            });
            let mut out = create(path, "views")?;
            serde_json::to_writer_pretty(&mut out, &doc)?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
        Ok(())
    }
}

/// A rejected record as a dead-letter line.
pub fn reject_json(r: &Reject) -> Value {
    json!({
        "reason": r.reason.name(),
        "detail": r.detail,
        "ingest_time": r.ingest_time,
        "format": r.format,
        "position": r.position,
        "raw": String::from_utf8_lossy(&r.raw),
        "raw_is_utf8": std::str::from_utf8(&r.raw).is_ok(),
        "size": r.size,
        "sha256": r.sha256,
    })
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
        b.extend(e);
    }
    base
}

fn value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("view rows serialize to JSON")
}

/// A view row as a flat JSON object (keys, sums, and derived rates).
pub fn row_json(row: &ViewRow) -> Value {
    match row {
        ViewRow::Sessions(s) => merge(value(s), json!({"start": format_timestamp(s.start_ts), "end": format_timestamp(s.end_ts)})),
        ViewRow::Funnel { key, agg } => merge(
            merge(value(key), json!({"window": format_timestamp(key.window_start)})),
            merge(value(agg), value(&agg.rates())),
        ),
        ViewRow::Kpis { key, agg } => merge(
            merge(value(key), json!({"window": format_timestamp(key.window_start)})),
            merge(value(agg), value(&agg.rates())),
        ),
        ViewRow::RejectedByReason { reason, count } => json!({"reason": reason.name(), "count": count}),
        ViewRow::Rejects(r) => reject_json(r),
        ViewRow::CustomerRfm(r) => {
            let s = &r.summary;
            let (x, t_x, t) = r.triple_days();
            let day = |d: i64| format_timestamp(d * DAY_MS)[..10].to_owned();
            json!({
                "user_id": s.user_id,
                "first_purchase": day(s.first_day),
                "last_purchase": day(s.last_day),
                "evaluation_day": day(r.evaluation_day),
                "x": x,
                "t_x_days": t_x,
                "t_days": t,
                "recency_days": r.evaluation_day - s.last_day,
                "purchase_days": s.days,
                "spend_cents": s.first_cents + s.repeat_cents,
                "zbar": r.zbar(),
                "r_score": r.scores[0],
                "f_score": r.scores[1],
                "m_score": r.scores[2],
            })
        }
        ViewRow::ClvModel(m) => value(m),
        ViewRow::CustomerClv(c) => value(c),
        ViewRow::FraudFeatures(f) => merge(
            value(f),
            json!({
                "prior_mean_cents": f.prior_mean_cents(),
                "prior_std_cents": f.prior_std_cents(),
                "amount_z": f.amount_z(),
                "amount_ratio": f.amount_ratio(),
                "geo_velocity_kmh": f.geo_velocity_kmh(),
                // What the scoring model sees (for training and audits).
                "model_inputs": INPUT_NAMES.iter().zip(inputs(f)).map(|(n, x)| (n.to_string(), json!(x))).collect::<serde_json::Map<_, _>>(),
            }),
        ),
        ViewRow::FraudScores(s) | ViewRow::FraudAlerts(s) => value(s),
    }
}
