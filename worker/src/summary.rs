//! The live terminal summary: ingestion rate, frontier, sessions, the latest KPI windows,
//! the funnel of the current hour (all and by country), and rejects by reason.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tidemark_dataflows::decode::RejectReason;
use tidemark_dataflows::rows::{Dimension, FunnelAgg, FunnelKey, KpiAgg, KpiKey};
use tidemark_dataflows::time::{format_timestamp, Granularity, Time};
use tidemark_dataflows::views::ViewRow;

use crate::config::RunArgs;
use crate::driver::{Message, Shared};

/// The small views the summary shows, kept up to date from view changes.
pub struct Summary<'a> {
    shared: &'a Shared,
    title: String,
    file_size: Option<u64>,
    tty: bool,
    /// The rows shown, as a multiset: diffs arrive sorted by row rather than by time,
    /// so rows are counted, never overwritten.
    rows: BTreeMap<ViewRow, i64>,
    rate: RateMeter,
}

struct RateMeter {
    at: Instant,
    count: u64,
    per_sec: f64,
}

impl<'a> Summary<'a> {
    /// A summary for this run.
    pub fn new(args: &RunArgs, shared: &'a Shared) -> Self {
        Summary {
            shared,
            title: args.describe(),
            file_size: args.input.as_ref().and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len()),
            tty: std::io::stdout().is_terminal(),
            rows: BTreeMap::new(),
            rate: RateMeter { at: Instant::now(), count: 0, per_sec: 0.0 },
        }
    }

    /// Applies a batch of view changes. A batch holds every change of the times it
    /// covers, so after each batch the multiset is the views' contents at some time.
    pub fn apply(&mut self, message: &Message) {
        for (row, _time, diff) in &message.updates {
            let shown = match row {
                ViewRow::Kpis { .. } | ViewRow::RejectedByReason { .. } | ViewRow::ClvModel(_) => true,
                ViewRow::Funnel { key, .. } => matches!(key.dimension, Dimension::All | Dimension::Country),
                ViewRow::Sessions(_)
                | ViewRow::Rejects(_)
                | ViewRow::CustomerRfm(_)
                | ViewRow::CustomerClv(_)
                | ViewRow::FraudFeatures(_)
                | ViewRow::FraudScores(_)
                | ViewRow::FraudAlerts(_) => false,
            };
            if shown {
                let count = self.rows.entry(row.clone()).or_insert(0);
                *count += *diff as i64;
                if *count == 0 {
                    self.rows.remove(row);
                }
            }
        }
    }

    fn kpis(&self) -> impl Iterator<Item = (&KpiKey, &KpiAgg)> {
        self.rows.keys().filter_map(|row| match row {
            ViewRow::Kpis { key, agg } => Some((key, agg)),
            _ => None,
        })
    }

    fn funnel(&self) -> impl Iterator<Item = (&FunnelKey, &FunnelAgg)> {
        self.rows.keys().filter_map(|row| match row {
            ViewRow::Funnel { key, agg } => Some((key, agg)),
            _ => None,
        })
    }

    fn rejected(&self) -> impl Iterator<Item = (RejectReason, i64)> + '_ {
        self.rows.keys().filter_map(|row| match row {
            ViewRow::RejectedByReason { reason, count } => Some((*reason, *count)),
            _ => None,
        })
    }

    fn measure(&mut self) -> (u64, f64) {
        let count = self.shared.ingested.load(Ordering::Relaxed);
        let elapsed = self.rate.at.elapsed();
        if elapsed >= Duration::from_millis(900) && count > self.rate.count {
            self.rate.per_sec = (count - self.rate.count) as f64 / elapsed.as_secs_f64();
            self.rate.at = Instant::now();
            self.rate.count = count;
        }
        (count, self.rate.per_sec)
    }

    fn text(&mut self, final_time: Option<Time>) -> String {
        let (count, per_sec) = self.measure();
        let mut out = String::new();
        out += &format!("{}\n", self.title);
        if let Some(size) = self.file_size.filter(|s| *s > 0) {
            let read = self.shared.bytes_read.load(Ordering::Relaxed).min(size);
            let filled = (read * 40 / size) as usize;
            out += &format!("replay [{}{}] {:>3}%  {} of {} bytes\n", "#".repeat(filled), "-".repeat(40 - filled), read * 100 / size, read, size);
        }
        let frontier = final_time.unwrap_or_else(|| self.shared.frontier.load(Ordering::Relaxed));
        out += &format!(
            "ingested {count} records ({per_sec:.0}/s)   views complete up to {}{}\n",
            if frontier == 0 || frontier == Time::MAX { "-".to_owned() } else { format_timestamp(frontier as i64) },
            if final_time.is_some() { " (final)" } else { "" },
        );
        out += &format!("live sessions {}\n\nKPIs (latest windows)\n", self.shared.sessions.load(Ordering::Relaxed));
        out += "  window                     events   views   carts  purchases  orders      revenue      AOV  sessions  conv%   users\n";
        for g in Granularity::ALL {
            if let Some((key, k)) = self.kpis().filter(|(k, _)| k.granularity == g).last() {
                let r = k.rates();
                out += &format!(
                    "  {:<6} {:<19} {:>7} {:>7} {:>7} {:>10} {:>7} {:>12.2} {:>8} {:>9} {:>6} {:>7}\n",
                    g.name(),
                    &format_timestamp(key.window_start)[..19],
                    k.events,
                    k.page_views + k.product_views,
                    k.cart_adds,
                    k.purchases,
                    k.orders,
                    k.revenue_cents as f64 / 100.0,
                    r.aov.map_or("-".into(), |a| format!("{a:.2}")),
                    k.sessions,
                    r.conversion.map_or("-".into(), |c| format!("{:.1}", c * 100.0)),
                    k.unique_users,
                );
            }
        }
        if let Some(hour) = self.funnel().filter(|(k, _)| k.granularity == Granularity::Hour).map(|(k, _)| k.window_start).max() {
            out += &format!("\nFunnel, hour from {} (sessions by start; ordered steps)\n", &format_timestamp(hour)[..16]);
            out += "  value            sessions     view     cart  checkout  purchase   buyers   revenue\n";
            let mut rows: Vec<(&FunnelKey, &FunnelAgg)> =
                self.funnel().filter(|(k, _)| k.granularity == Granularity::Hour && k.window_start == hour).collect();
            rows.sort_by_key(|(k, a)| (k.dimension != Dimension::All, -a.sessions));
            for (key, a) in rows.into_iter().take(7) {
                out += &format!(
                    "  {:<15} {:>9} {:>8} {:>8} {:>9} {:>9} {:>8} {:>9.2}\n",
                    if key.dimension == Dimension::All { "all".to_owned() } else { format!("country {}", key.value) },
                    a.sessions,
                    a.reached_view,
                    a.reached_cart,
                    a.reached_checkout,
                    a.reached_purchase,
                    a.purchasing_sessions,
                    a.revenue_cents as f64 / 100.0,
                );
            }
        }
        if let Some(m) = self.rows.keys().find_map(|row| if let ViewRow::ClvModel(m) = row { Some(m) } else { None }) {
            out += &format!("\nCLV model v{} (fitted at {}, {} customers): ", m.version, format_timestamp(m.fitted_at as i64), m.customers);
            match (m.bg(), m.gg()) {
                (Some(b), Some(g)) => {
                    out += &format!("BG/NBD r {:.4} alpha {:.4} a {:.4} b {:.4}; Gamma-Gamma p {:.4} q {:.4} v {:.4}\n", b.r, b.alpha, b.a, b.b, g.p, g.q, g.v)
                }
                _ => out += &format!("{}\n", m.error.as_deref().unwrap_or("not fitted")),
            }
        }
        out += "\nRejects (within retention): ";
        let rejected: Vec<String> = self.rejected().map(|(r, c)| format!("{r} {c}")).collect();
        out += if rejected.is_empty() { "none".to_owned() } else { rejected.join(", ") }.as_str();
        out += "\n";
        out
    }

    /// Redraws the summary (a fresh screen on a terminal, one block otherwise).
    pub fn render_live(&mut self) {
        let text = self.text(None);
        let mut stdout = std::io::stdout().lock();
        if self.tty {
            let _ = write!(stdout, "\x1b[2J\x1b[H{text}");
        } else {
            let _ = writeln!(stdout, "{text}");
        }
        let _ = stdout.flush();
    }

    /// Prints the summary of the final state.
    ///
    /// The last line is meant for scripts:
    /// `throughput <records> records in <seconds> s = <rate> records/s`.
    pub fn render_final(&mut self, final_time: Time, elapsed: Duration) {
        let records = self.shared.ingested.load(Ordering::Relaxed);
        let secs = elapsed.as_secs_f64().max(1e-9);
        self.rate = RateMeter { at: Instant::now(), count: records, per_sec: records as f64 / secs };
        let text = self.text(Some(final_time));
        let mut stdout = std::io::stdout().lock();
        if self.tty {
            let _ = write!(stdout, "\x1b[2J\x1b[H");
        }
        let _ = writeln!(stdout, "{text}throughput {records} records in {secs:.3} s = {:.0} records/s", records as f64 / secs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Arranged updates arrive sorted by row, not by time: a count that went down (an
    /// expiry) must not leave the older, larger row on screen.
    #[test]
    fn summary_counts_do_not_depend_on_update_order() {
        let shared = Shared::default();
        let args = <crate::config::RunArgs as clap::FromArgMatches>::from_arg_matches(
            &<crate::config::RunArgs as clap::Args>::augment_args(clap::Command::new("t")).get_matches_from(["t"]),
        )
        .expect("default arguments parse");
        let mut summary = Summary::new(&args, &shared);
        let row = |count| ViewRow::RejectedByReason { reason: RejectReason::Malformed, count };
        // At t=1 the count is 7; at t=2 it drops to 5. Sorted by row: 5 before 7.
        summary.apply(&Message { updates: vec![(row(5), 2, 1), (row(7), 1, 1), (row(7), 2, -1)], dead_letter: Vec::new() });
        assert_eq!(summary.rejected().collect::<Vec<_>>(), [(RejectReason::Malformed, 5)]);
    }
}
