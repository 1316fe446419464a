//! Where a worker's time goes, operator by operator: `tidemark run --profile-operators`.
//!
//! Timely logs every operator's start and stop; [`OperatorProfile`] adds up, per
//! operator, the time spent inside it minus the time spent in the operators it contains
//! (a dataflow is an operator that contains the others), and the number of times it was
//! scheduled. Each worker thread keeps its own profile; [`OperatorProfile::report`]
//! sums them by operator (operators have the same id on every worker, as every worker
//! builds the same dataflow) and prints a table, busiest first.
//!
//! Logging costs a little: the figures are for comparing operators with each other, the
//! throughput of a run without the flag is the engine's.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use timely::logging::{StartStop, TimelyEvent, TimelyEventBuilder};

/// Per operator id: its name, self time and activations.
#[derive(Default, Clone)]
struct Totals {
    names: HashMap<usize, String>,
    self_time: HashMap<usize, Duration>,
    activations: HashMap<usize, u64>,
}

/// One worker's operator times as they are logged.
#[derive(Default)]
struct Recorder {
    totals: Totals,
    /// Operators running now, innermost last: (id, start, time spent in operators inside).
    running: Vec<(usize, Duration, Duration)>,
}

impl Recorder {
    fn record(&mut self, at: Duration, event: &TimelyEvent) {
        match event {
            TimelyEvent::Operates(o) => {
                self.totals.names.insert(o.id, o.name.clone());
            }
            TimelyEvent::Schedule(s) => match s.start_stop {
                StartStop::Start => self.running.push((s.id, at, Duration::ZERO)),
                StartStop::Stop => {
                    let Some((id, start, inner)) = self.running.pop() else { return };
                    debug_assert_eq!(id, s.id, "operators stop in the order they started");
                    let spent = at.saturating_sub(start);
                    *self.totals.self_time.entry(id).or_default() += spent.saturating_sub(inner);
                    *self.totals.activations.entry(id).or_default() += 1;
                    if let Some(parent) = self.running.last_mut() {
                        parent.2 += spent;
                    }
                }
            },
            _ => {}
        }
    }
}

/// The operator times of every worker thread of a process.
#[derive(Clone, Default)]
pub struct OperatorProfile {
    workers: Arc<Mutex<Vec<Totals>>>,
}

/// A worker's part of an [`OperatorProfile`], recording from [`OperatorProfile::attach`]
/// until [`WorkerProfile::finish`].
pub struct WorkerProfile {
    recorder: Rc<RefCell<Recorder>>,
    profile: OperatorProfile,
}

impl OperatorProfile {
    /// Starts recording `worker`'s operators; call before building its dataflows.
    pub fn attach(&self, worker: &mut timely::worker::Worker) -> WorkerProfile {
        let recorder = Rc::new(RefCell::new(Recorder::default()));
        if let Some(mut registry) = worker.log_register() {
            let sink = recorder.clone();
            registry.insert::<TimelyEventBuilder, _>("timely", move |_time, data| {
                if let Some(events) = data {
                    let mut sink = sink.borrow_mut();
                    for (at, event) in events.iter() {
                        sink.record(*at, event);
                    }
                }
            });
        }
        WorkerProfile { recorder, profile: self.clone() }
    }

    /// The table of every worker's operators, summed by operator, busiest first: self time,
    /// its share of all operators' time, activations, and the name.
    pub fn report(&self) -> String {
        let workers = self.workers.lock().expect("no panics while reporting");
        let mut rows: HashMap<usize, (String, Duration, u64)> = HashMap::new();
        for totals in workers.iter() {
            for (id, spent) in &totals.self_time {
                let row = rows.entry(*id).or_insert_with(|| (totals.names.get(id).cloned().unwrap_or_else(|| format!("operator {id}")), Duration::ZERO, 0));
                row.1 += *spent;
                row.2 += totals.activations.get(id).copied().unwrap_or(0);
            }
        }
        let total: Duration = rows.values().map(|r| r.1).sum();
        let mut rows: Vec<_> = rows.into_iter().collect();
        rows.sort_by(|a, b| b.1 .1.cmp(&a.1 .1).then(a.0.cmp(&b.0)));
        let mut out = format!("operator profile ({} worker threads, {:.3} s in operators)\n", workers.len(), total.as_secs_f64());
        out.push_str(&format!("{:>10} {:>6} {:>11}  {:>4}  operator\n", "self ms", "share", "activations", "id"));
        for (id, (name, spent, activations)) in rows {
            if spent < Duration::from_micros(500) {
                continue;
            }
            let share = 100.0 * spent.as_secs_f64() / total.as_secs_f64().max(1e-9);
            out.push_str(&format!("{:>10.1} {:>5.1}% {:>11}  {:>4}  {}\n", spent.as_secs_f64() * 1e3, share, activations, id, name));
        }
        out
    }
}

impl WorkerProfile {
    /// Stops recording and adds this worker's times to the profile.
    pub fn finish(self, worker: &mut timely::worker::Worker) {
        if let Some(mut registry) = worker.log_register() {
            registry.flush();
            registry.remove("timely");
        }
        let totals = self.recorder.borrow().totals.clone();
        self.profile.workers.lock().expect("no panics while recording").push(totals);
    }
}
