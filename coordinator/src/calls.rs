//! Counting every public call where it enters and leaves the server: a tower layer
//! around all services, so that calls refused before any handler runs (no or a wrong
//! token, a request over the size limit, one that does not decode) are counted with the
//! status they got, and every call's time to its response is measured, streams included.
//!
//! A call's status is in the response headers when it failed at once (a trailers-only
//! response), otherwise in the trailers at the end of its body: the body is wrapped to
//! read them there.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame};
use tower_layer::Layer;
use tower_service::Service;

use crate::metrics::Metrics;

/// The public API's path prefix.
const PREFIX: &str = "/tidemark.v1.Tidemark/";

/// The method name of a public call's path (`None` for other services: health,
/// reflection).
fn method(path: &str) -> Option<&'static str> {
    let name = path.strip_prefix(PREFIX)?;
    ["ListViews", "Query", "Subscribe", "Ingest", "Status"].into_iter().find(|m| *m == name).or(Some("unknown"))
}

fn status_of(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(tonic::Code::from_i32(code))
}

/// The layer: counts into `metrics`.
#[derive(Clone)]
pub struct CallsLayer {
    metrics: Arc<Metrics>,
}

impl CallsLayer {
    /// A layer counting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        CallsLayer { metrics }
    }
}

impl<S> Layer<S> for CallsLayer {
    type Service = Calls<S>;

    fn layer(&self, inner: S) -> Calls<S> {
        Calls { inner, metrics: self.metrics.clone() }
    }
}

/// See [`CallsLayer`].
#[derive(Clone)]
pub struct Calls<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Calls<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body + Send + 'static,
{
    type Response = http::Response<Counted<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = method(request.uri().path());
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let Some(method) = method else {
                return Ok(response.map(|body| Counted { body: Box::pin(body), pending: None }));
            };
            metrics.answered(method, started.elapsed());
            let pending = match status_of(response.headers()) {
                Some(code) => {
                    metrics.finished(method, code);
                    None
                }
                None => Some(Pending { method, metrics, counted: false }),
            };
            Ok(response.map(|body| Counted { body: Box::pin(body), pending }))
        })
    }
}

/// A call whose status is still to come, in its trailers.
struct Pending {
    method: &'static str,
    metrics: Arc<Metrics>,
    counted: bool,
}

impl Pending {
    fn finish(&mut self, code: tonic::Code) {
        if !self.counted {
            self.counted = true;
            self.metrics.finished(self.method, code);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // The body went away before any trailers: the client left (or the server ended).
        self.finish(tonic::Code::Cancelled);
    }
}

/// A response body that counts its call's status when the trailers go by.
pub struct Counted<B> {
    body: Pin<Box<B>>,
    pending: Option<Pending>,
}

impl<B: Body> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = this.body.as_mut().poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let (Some(code), Some(pending)) = (frame.trailers_ref().and_then(status_of), &mut this.pending) {
                pending.finish(code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_methods_are_named_and_others_left_alone() {
        assert_eq!(method("/tidemark.v1.Tidemark/Query"), Some("Query"));
        assert_eq!(method("/tidemark.v1.Tidemark/Nope"), Some("unknown"));
        assert_eq!(method("/grpc.health.v1.Health/Check"), None);
        let mut headers = http::HeaderMap::new();
        assert_eq!(status_of(&headers), None);
        headers.insert("grpc-status", "16".parse().unwrap());
        assert_eq!(status_of(&headers), Some(tonic::Code::Unauthenticated));
    }
}
