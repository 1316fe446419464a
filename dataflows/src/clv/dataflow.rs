//! The CLV views as a differential dataflow over the valid events.
//!
//! 1. Purchases and refunds, arranged by customer; a reduce keeps each customer's
//!    [`CustomerSummary`] (it changes only when that customer's transactions do).
//! 2. The [`Context`] (evaluation day, RFM cut points) is a reduce over the histogram of
//!    the summaries' measures, on one worker; it is then copied to every worker.
//! 3. `customer_rfm` joins each worker's summaries with the context: a new context
//!    (a new day, a moved cut point) revisits that worker's customers, a changed
//!    summary only itself.
//! 4. `clv_model`: the multiset of model inputs goes to one worker, where an operator
//!    applies its changes time by time, in time order, and refits by the
//!    [`RefitPolicy`] ([`ModelState`]): the model at a time depends on the data and its
//!    ingestion times only, never on how updates were batched.
//! 5. `customer_clv` joins each worker's `customer_rfm` rows with the model.

use std::sync::Arc;

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;

use super::{summarize_users, ClvConfig, ClvModel, ClvRow, Context, CustomerSummary, Measure, ModelInput, ModelState, RfmRow, Txn};
use crate::event::Event;
use crate::rows::{key_of, Route};
use crate::time::Time;
use crate::views::{arrange_routed, expanded, push_keyed, Pending, ViewArrangement};

/// The key of a view with a single row (`clv_model`), placed on worker 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Single;

impl Route for Single {
    fn route(&self) -> u64 {
        0
    }
}

/// A worker index as a key: a copy of a population-wide row for that worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Owner(u64);

impl Route for Owner {
    fn route(&self) -> u64 {
        self.0
    }
}

/// The CLV views, arranged by key.
pub struct ClvViews<'scope> {
    /// `customer_rfm`: key [`key_of`] the customer id, row [`RfmRow`]; one row per
    /// customer with a transaction up to the evaluation day.
    pub customer_rfm: ViewArrangement<'scope, u64, RfmRow>,
    /// `clv_model`: the current [`ClvModel`] (none before the first customer).
    pub clv_model: ViewArrangement<'scope, Single, ClvModel>,
    /// `customer_clv`: key [`key_of`] the customer id, row [`ClvRow`] under the current
    /// model; one row per `customer_rfm` row once a model exists.
    pub customer_clv: ViewArrangement<'scope, u64, ClvRow>,
}

/// Builds the CLV views over the valid events.
pub fn build<'scope>(events: VecCollection<'scope, Time, Arc<Event>>, config: &ClvConfig) -> ClvViews<'scope> {
    let peers = events.inner.scope().peers() as u64;
    let until = config.evaluation_day;

    let txns = arrange_routed(events.flat_map(|e| Txn::of(&e).map(|t| (key_of(&t.user_id), t))), "Arrange: transactions by customer");
    let summaries = txns.reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<u64, CustomerSummary, Time, isize>, _, _>(
        "Reduce: customer summaries",
        move |_key, input, output| output.extend(summarize_users(expanded(input), until).into_iter().map(|s| (s, 1))),
        push_keyed,
    );

    let context = summaries
        .clone()
        .flat_map_ref(|_, s| Measure::of(s).map(|m| (0u64, m)))
        .reduce_named("Reduce: RFM context", move |_key, input, output| {
            let histogram: Vec<(Measure, i64)> = input.iter().map(|(m, n)| (**m, *n as i64)).collect();
            output.extend(Context::of(&histogram, until).map(|c| (c, 1)));
        });
    let context = arrange_routed(
        context.flat_map(move |(_, c)| (0..peers).map(move |w| (Owner(w), c))),
        "Arrange: RFM context per worker",
    );
    let summaries = arrange_routed(summaries.as_collection(move |k, s| (Owner(k % peers), s.clone())), "Arrange: summaries per worker");
    let rfm = summaries.join_core(context, |_, s, c| Some(RfmRow::new(s, c)));

    let model = fit_model(rfm.clone().flat_map(|r| ModelInput::of(&r).collect::<Vec<_>>()), config);
    let models = arrange_routed(model.clone().flat_map(move |m| (0..peers).map(move |w| (Owner(w), m.clone()))), "Arrange: clv_model per worker");
    let rfm_by_worker = arrange_routed(rfm.clone().map(move |r| (Owner(key_of(&r.summary.user_id) % peers), r)), "Arrange: customer_rfm per worker");
    let cfg = config.clone();
    let clv = rfm_by_worker.join_core(models, move |_, r, m| Some(ClvRow::new(r, m, &cfg)));

    ClvViews {
        customer_rfm: arrange_routed(rfm.map(|r| (key_of(&r.summary.user_id), r)), "Arrange: customer_rfm"),
        clv_model: arrange_routed(model.map(|m| (Single, m)), "Arrange: clv_model"),
        customer_clv: arrange_routed(clv.map(|c| (key_of(&c.user_id), c)), "Arrange: customer_clv"),
    }
}

/// The model fit: on worker 0, applies the inputs' changes time by time once the
/// frontier has passed each time, and emits the model's changes at those times.
fn fit_model<'scope>(inputs: VecCollection<'scope, Time, ModelInput>, config: &ClvConfig) -> VecCollection<'scope, Time, ClvModel> {
    let policy = config.refit;
    inputs
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<(ClvModel, Time, isize)>>, _, _, _>(
            Exchange::new(|_: &(ModelInput, Time, isize)| 0u64),
            "Fit: clv_model",
            |_, _| {
                let mut pending = Pending::default();
                let mut state = ModelState::default();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        for (d, t, r) in data.drain(..) {
                            pending.push(&cap, t, (d, r));
                        }
                    });
                    // A time's changes are complete once the frontier has passed it.
                    while let Some((cap, time, mut updates)) = pending.pop_ready(|time| !frontier.less_equal(time)) {
                        consolidate(&mut updates);
                        let changes: Vec<(ModelInput, i64)> = updates.into_iter().map(|(d, r)| (d, r as i64)).collect();
                        if let Some((old, new)) = state.advance(time, &changes, &policy) {
                            let mut session = output.session(&cap);
                            session.give_iterator(old.map(|m| (m, time, -1)).into_iter().chain(new.map(|m| (m, time, 1))));
                        }
                    }
                    pending.settle();
                }
            },
        )
        .as_collection()
}
