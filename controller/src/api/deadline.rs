//! The unary-call deadline ([`super::REQUEST_DEADLINE`]): a call whose
//! answer has not begun by then gets DEADLINE_EXCEEDED, as gRPC names it
//! (tonic's own server timeout answers CANCELLED "Timeout expired", which
//! tells a client nothing about which limit it met). An open stream has
//! begun its answer, so streams are not affected.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::Status;

#[derive(Clone, Copy)]
pub struct DeadlineLayer(pub Duration);

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            limit: self.0,
        }
    }
}

#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
    limit: Duration,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let limit = self.limit;
        let answer = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(limit, answer).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(
                        path,
                        limit_s = limit.as_secs(),
                        "call cut off at the deadline"
                    );
                    let msg = format!(
                        "the request ran past the controller's {} s deadline",
                        limit.as_secs()
                    );
                    Ok(Status::deadline_exceeded(msg).into_http())
                }
            }
        })
    }
}
