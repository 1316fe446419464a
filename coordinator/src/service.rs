//! The public `tidemark.v1.Tidemark` service over a [`Cluster`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tidemark_proto::internal::v1 as wire;
use tidemark_proto::limits::{MAX_FILTERS, MAX_INGEST_EVENTS, MAX_LIMIT, MAX_RESPONSE_BYTES};
use tidemark_proto::merge::{cut_to_bytes, sort_by_key};
use tidemark_proto::page::{next_token, read_token};
use tidemark_proto::v1::tidemark_server::Tidemark;
use tidemark_proto::v1::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::cluster::{Cluster, SUBSCRIPTION_EVENTS};
use crate::metrics::Metrics;
use crate::read::{read_page, start_cursors, Selection};
use crate::subscription::Plan;

/// How long a query waits for its time by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Acknowledgements buffered per Ingest stream.
const INGEST_ACKS: usize = 16;
/// Ingest requests of one stream at the workers at once.
const INGEST_PIPELINE: usize = 8;

/// The public API.
#[derive(Clone)]
pub struct TidemarkService {
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
    subscriber_buffer: usize,
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Refuses filters on unknown columns or with values of the wrong type before anything
/// reaches the workers (which check again).
fn check_filters(view: &ViewInfo, filters: &[Filter]) -> Result<(), Status> {
    if filters.len() > MAX_FILTERS {
        return Err(Status::invalid_argument(format!("{} filters given; at most {MAX_FILTERS} are allowed", filters.len())));
    }
    for f in filters {
        let column = view.columns.iter().find(|c| c.name == f.column).ok_or_else(|| Status::invalid_argument(format!("{} has no column {:?}", view.name, f.column)))?;
        tidemark_proto::value::check_fits("filter value", column, &f.value.clone().unwrap_or_default()).map_err(Status::invalid_argument)?;
    }
    Ok(())
}

impl TidemarkService {
    /// A service answering from `cluster`, counting into `metrics`, buffering
    /// `subscriber_buffer` messages per subscriber.
    pub fn new(cluster: Arc<Cluster>, metrics: Arc<Metrics>, subscriber_buffer: usize) -> Self {
        TidemarkService { cluster, metrics, subscriber_buffer }
    }

    fn view(&self, name: &str) -> Result<ViewInfo, Status> {
        self.cluster.views().into_iter().find(|v| v.name == name).ok_or_else(|| Status::not_found(format!("no view {name:?}")))
    }

    /// The time to read at: the requested one (checked against compaction, waited for),
    /// else the latest complete time.
    async fn read_time(&self, as_of: Option<u64>, timeout: Duration) -> Result<u64, Status> {
        let as_of = match as_of {
            Some(t) => t,
            None => {
                self.cluster.wait_past(0, timeout).await?;
                self.cluster.frontier_and_since().0 - 1
            }
        };
        let (_, since) = self.cluster.frontier_and_since();
        if as_of < since {
            return Err(Status::out_of_range(format!("as_of {as_of} is below the compaction frontier {since}")));
        }
        self.cluster.wait_past(as_of, timeout).await?;
        Ok(as_of)
    }

    async fn answer_query(&self, q: QueryRequest) -> Result<QueryResponse, Status> {
        let view = self.view(&q.view)?;
        check_filters(&view, &q.filters)?;
        if q.key.len() > view.key_columns.len() {
            return Err(Status::invalid_argument(format!("{} has {} key columns; the key gives {} values", view.name, view.key_columns.len(), q.key.len())));
        }
        if q.limit > MAX_LIMIT {
            return Err(Status::invalid_argument(format!("limit {} is above the most a query returns, {MAX_LIMIT}; read the whole view in pages without a limit", q.limit)));
        }
        let timeout = if q.timeout_ms == 0 { DEFAULT_TIMEOUT } else { Duration::from_millis(u64::from(q.timeout_ms)) };
        let (processes, threads) = self.cluster.shape();
        let (as_of, limit, mut cursors) = if q.page_token.is_empty() {
            let as_of = self.read_time(q.as_of, timeout).await?;
            (as_of, q.limit, start_cursors(&view, &q.key, processes, threads))
        } else {
            let token = read_token(&q, processes * threads).map_err(|e| Status::invalid_argument(e.to_string()))?;
            let (_, since) = self.cluster.frontier_and_since();
            if token.as_of < since {
                return Err(Status::out_of_range(format!(
                    "the page token reads at {}, which is now below the compaction frontier {since}; start the query again",
                    token.as_of
                )));
            }
            (token.as_of, 0, token.cursors)
        };
        let selection = Selection { key: q.key.clone(), range: q.range.clone(), filters: q.filters.clone() };
        let (mut rows, mut truncated) = read_page(&self.cluster, &view, &selection, as_of, limit, &mut cursors, timeout).await?;
        sort_by_key(&mut rows, view.key_columns.len());
        if limit > 0 {
            truncated |= rows.len() > limit as usize;
            rows.truncate(limit as usize);
            truncated |= cut_to_bytes(&mut rows, MAX_RESPONSE_BYTES);
        }
        let next_page_token = if limit > 0 { None } else { next_token(&q, as_of, cursors) }.unwrap_or_default();
        Ok(QueryResponse { as_of, columns: view.columns, rows, truncated, next_page_token })
    }

    async fn start_subscription(&self, s: SubscribeRequest) -> Result<mpsc::Receiver<Result<SubscribeResponse, Status>>, Status> {
        let view = self.view(&s.view)?;
        check_filters(&view, &s.filters)?;
        let as_of = self.read_time(s.as_of, DEFAULT_TIMEOUT).await?;
        let (tx, rx) = mpsc::channel(self.subscriber_buffer.max(2));
        tx.send(Ok(SubscribeResponse { columns: view.columns.clone(), batch: None })).await.map_err(|_| Status::cancelled("the subscriber left"))?;
        let (events_tx, events) = mpsc::channel(SUBSCRIPTION_EVENTS);
        let subscribe = wire::Subscribe { id: 0, view: s.view, filters: s.filters.clone(), as_of };
        let id = self.cluster.subscribe(subscribe, events_tx)?;
        let plan = Plan { view, selection: Selection { filters: s.filters, ..Selection::default() }, as_of, snapshot: !s.without_snapshot };
        tokio::spawn(crate::subscription::run(self.cluster.clone(), id, plan, events, tx));
        Ok(rx)
    }

    /// The answer `Status` gives now.
    pub async fn status_now(&self) -> Result<StatusResponse, Status> {
        self.answer_status().await
    }

    async fn answer_status(&self) -> Result<StatusResponse, Status> {
        let (frontier, _) = self.cluster.frontier_and_since();
        let (_, threads) = self.cluster.shape();
        let processes = self.cluster.processes();
        let workers = processes
            .iter()
            .enumerate()
            .map(|(p, s)| WorkerStatus { process: p as u32, address: s.address.clone(), threads: threads as u32, frontier: s.frontier, connected: s.connected })
            .collect();
        // Rejects are read from the view when every process can answer; a status while
        // one is down still reports the workers and the sizes of those that are up.
        let mut rejects = Vec::new();
        if frontier > 0 && processes.iter().all(|p| p.connected) {
            if let Ok(view) = self.view("rejected_by_reason") {
                let (processes, threads) = self.cluster.shape();
                let mut cursors = start_cursors(&view, &[], processes, threads);
                let mut pages = 0;
                while cursors.iter().any(|c| !c.done) && pages < 16 {
                    pages += 1;
                    let Ok((rows, _)) = read_page(&self.cluster, &view, &Selection::default(), frontier - 1, 0, &mut cursors, DEFAULT_TIMEOUT).await else { break };
                    for row in rows.into_iter().filter_map(|r| r.row) {
                        if let [reason, count] = row.values.as_slice() {
                            rejects.push(RejectCount { reason: tidemark_proto::value::display(reason), count: tidemark_proto::value::display(count).parse().unwrap_or(0) });
                        }
                    }
                }
            }
        }
        let sizes = self.cluster.sizes().await.unwrap_or_default();
        let lag_ms = crate::now_ms() as i64 - frontier as i64;
        Ok(StatusResponse { workers, frontier, lag_ms, views: sizes.views, rejects, ingested: sizes.ingested })
    }
}

#[tonic::async_trait]
impl Tidemark for TidemarkService {
    async fn list_views(&self, _: Request<ListViewsRequest>) -> Result<Response<ListViewsResponse>, Status> {
        Ok(Response::new(ListViewsResponse { views: self.cluster.views() }))
    }

    async fn query(&self, request: Request<QueryRequest>) -> Result<Response<QueryResponse>, Status> {
        self.answer_query(request.into_inner()).await.map(Response::new)
    }

    type SubscribeStream = Boxed<SubscribeResponse>;

    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let rx = self.start_subscription(request.into_inner()).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as Self::SubscribeStream))
    }

    type IngestStream = Boxed<IngestResponse>;

    async fn ingest(&self, request: Request<Streaming<IngestRequest>>) -> Result<Response<Self::IngestStream>, Status> {
        let requests = request.into_inner();
        let (cluster, metrics) = (self.cluster.clone(), self.metrics.clone());
        let counting = metrics.clone();
        let (tx, rx) = mpsc::channel(INGEST_ACKS);
        // Up to INGEST_PIPELINE requests are at the workers at once; acknowledgements go
        // back in request order.
        let mut acks = futures::StreamExt::buffered(
            requests.map(move |request| {
                let (cluster, metrics) = (cluster.clone(), metrics.clone());
                async move {
                    let events = request?.events;
                    metrics.ingest_request();
                    if events.len() > MAX_INGEST_EVENTS {
                        return Err(Status::invalid_argument(format!("{} events in one request; at most {MAX_INGEST_EVENTS} are allowed: split it", events.len())));
                    }
                    cluster.ingest(events).await
                }
            }),
            INGEST_PIPELINE,
        );
        tokio::spawn(async move {
            while let Some(ack) = acks.next().await {
                let response = ack.map(|ack| {
                    counting.ingested(u64::from(ack.accepted), ack.rejects.len() as u64);
                    IngestResponse { accepted: ack.accepted, rejects: ack.rejects, visible_at: ack.time }
                });
                let failed = response.is_err();
                if tx.send(response).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.answer_status().await.map(Response::new)
    }
}
