//! The body of a response streamed from a process: [`LeasedBody`] holds the process's
//! slot until the body is done and cuts the stream at the invocation's deadline.

use crate::pool::Lease;
use bytes::Bytes;
use http_body::Frame;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A process's response body, holding its slot until done and cut at the deadline.
pub(crate) struct LeasedBody {
    pub(crate) inner: hyper::body::Incoming,
    /// The invocation's output stays attributed to it while the body streams.
    pub(crate) _scope: crate::logs::InvocationScope,
    /// The invocation's right to call: revoked, its calls cancelled, when the body goes.
    pub(crate) _calls: crate::calls::CallGrant,
    pub(crate) _lease: Lease,
    pub(crate) deadline: Pin<Box<tokio::time::Sleep>>,
    pub(crate) request_id: String,
    pub(crate) timed_out: bool,
}

impl http_body::Body for LeasedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.timed_out {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.timed_out = true;
            tracing::warn!(request_id = %self.request_id, "invocation timed out while streaming its response; aborting the stream");
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the function exceeded limits.timeout_ms while streaming",
            ))));
        }
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(std::io::Error::other)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

use std::future::Future as _;
