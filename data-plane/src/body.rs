//! Body wrappers of the invoke path: [`Counted`] bounds a request body that has no (or a
//! false) `Content-Length`; [`Tail`] rides on the response body and, when the body ends
//! or the client goes away, frees the concurrency permit and logs the invocation with its
//! full duration.

use crate::admission::Permit;
use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use reactor_api::logs::{LogEntry, LogSink};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tokio::time::Instant;

/// A request body that fails once more than `limit` bytes went through, and says so.
pub struct Counted {
    inner: Body,
    seen: u64,
    limit: u64,
    exceeded: Arc<AtomicBool>,
}

impl Counted {
    /// The bounded body and the flag set when it went over.
    pub fn wrap(inner: Body, limit: u64) -> (Body, Arc<AtomicBool>) {
        let exceeded = Arc::new(AtomicBool::new(false));
        let body = Counted {
            inner,
            seen: 0,
            limit,
            exceeded: exceeded.clone(),
        };
        (Body::new(body), exceeded)
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            self.seen += data.len() as u64;
            if self.seen > self.limit {
                self.exceeded.store(true, Ordering::Release);
                return Poll::Ready(Some(Err(axum::Error::new(format!(
                    "request body larger than {} bytes",
                    self.limit
                )))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What happens when a response body is done: the permit is released and the invocation
/// logged.
pub struct Tail {
    _permit: Option<Permit>,
    logs: Arc<dyn LogSink>,
    entry: Option<LogEntry>,
    started: Instant,
}

impl Tail {
    pub fn new(
        permit: Option<Permit>,
        logs: Arc<dyn LogSink>,
        entry: LogEntry,
        started: Instant,
    ) -> Self {
        Self {
            _permit: permit,
            logs,
            entry: Some(entry),
            started,
        }
    }

    /// `response` with this tail on its body.
    pub fn attach(self, response: axum::response::Response) -> axum::response::Response {
        let (parts, body) = response.into_parts();
        axum::response::Response::from_parts(
            parts,
            Body::new(WithTail {
                inner: body,
                _tail: self,
            }),
        )
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        if let Some(mut entry) = self.entry.take() {
            let total = self.started.elapsed();
            entry.duration_ms = Some(total.as_secs_f64() * 1e3);
            reactor_service::metrics::get().finished(&entry.org, &entry.function, total);
            self.logs.emit(entry);
        }
    }
}

struct WithTail {
    inner: Body,
    _tail: Tail,
}

impl http_body::Body for WithTail {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
