//! The response body handed back to the router: it owns the guest's task, so that when
//! the client goes away (the body is dropped) the instance is dropped too.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio_util::task::AbortOnDropHandle;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// How the guest's task ended.
pub enum TaskEnd {
    Done,
    Timeout,
    Trap(String),
}

/// The guest's response body. At its end it waits for the guest's task: a timeout or a
/// trap then fails the body, so that the client sees an aborted stream, not a complete one.
pub struct GuestBody {
    inner: HyperOutgoingBody,
    /// The guest's task: aborted when the body is dropped before its end (the client
    /// went away), left to run to its own end (bounded by its deadline) when the body
    /// was complete, as when the server drops a body it must not send (HEAD, 204, 304).
    task: Option<AbortOnDropHandle<()>>,
    end: Option<tokio::sync::oneshot::Receiver<TaskEnd>>,
    finished: bool,
    request_id: String,
}

impl GuestBody {
    pub fn new(
        inner: HyperOutgoingBody,
        task: AbortOnDropHandle<()>,
        end: tokio::sync::oneshot::Receiver<TaskEnd>,
        request_id: String,
    ) -> Self {
        Self {
            inner,
            task: Some(task),
            end: Some(end),
            finished: false,
            request_id,
        }
    }
}

impl Body for GuestBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                if let Some(end) = self.end.as_mut() {
                    let outcome = match std::future::Future::poll(Pin::new(end), cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(TaskEnd::Done)) => None,
                        Poll::Ready(Ok(TaskEnd::Timeout)) => {
                            Some("the function timed out while streaming its response".to_string())
                        }
                        Poll::Ready(Ok(TaskEnd::Trap(m))) => Some(format!(
                            "the function crashed while streaming its response: {m}"
                        )),
                        Poll::Ready(Err(_)) => {
                            Some("the function's task ended abruptly".to_string())
                        }
                    };
                    self.end = None;
                    self.finished = true;
                    if let Some(message) = outcome {
                        return Poll::Ready(Some(Err(std::io::Error::other(message))));
                    }
                }
                self.finished = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.finished = true;
                Poll::Ready(Some(Err(std::io::Error::other(format!(
                    "the function's response body failed: {e}"
                )))))
            }
            other => other.map_err(|e| std::io::Error::other(e.to_string())),
        }
    }

    fn is_end_stream(&self) -> bool {
        // Not before the guest's task has ended: a body that is empty from the start
        // must still be polled to its end, else the server drops it at once and so
        // aborts a guest still running after it set its response.
        self.end.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for GuestBody {
    fn drop(&mut self) {
        if !self.finished
            && self.inner.is_end_stream()
            && let Some(task) = self.task.take()
        {
            // Nothing more to send: the guest finishes on its own.
            drop(task.detach());
            return;
        }
        if !self.finished {
            tracing::info!(request_id = %self.request_id, "invocation cancelled: the client went away during the response body");
        }
    }
}
