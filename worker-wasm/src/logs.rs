//! Guest stdout and stderr, split into lines and logged with the function's identity,
//! both to the worker's own log and to the function's log history (a [`LogSink`]).

use reactor_api::logs::{LogEntry, LogKind, LogSink};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Who a log line belongs to, and where function logs go.
pub struct LogTarget {
    sink: Arc<dyn LogSink>,
    pub org: String,
    pub function: String,
    pub deployment_id: String,
    pub request_id: String,
    budget: std::sync::atomic::AtomicUsize,
}

impl LogTarget {
    pub fn new(
        spec: &reactor_api::DeploymentSpec,
        request_id: &str,
        sink: Arc<dyn LogSink>,
    ) -> Self {
        Self {
            sink,
            org: spec.org.clone(),
            function: spec.function.clone(),
            deployment_id: spec.deployment_id.clone(),
            request_id: request_id.to_string(),
            budget: std::sync::atomic::AtomicUsize::new(MAX_LOG_BYTES),
        }
    }
}

/// Log bytes one invocation may write (stdout and stderr together); the rest is dropped.
const MAX_LOG_BYTES: usize = 1024 * 1024;

/// A `wasi:cli` stdout or stderr that logs each line the guest writes.
#[derive(Clone)]
pub struct LogStream {
    target: Arc<LogTarget>,
    stream: &'static str,
}

impl LogStream {
    pub fn new(target: Arc<LogTarget>, stream: &'static str) -> Self {
        Self { target, stream }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            target: self.target.clone(),
            stream: self.stream,
            pending: Vec::new(),
        })
    }
}

/// Longest line kept whole; longer output is logged in pieces of this size.
const MAX_LINE: usize = 16 * 1024;

struct LineWriter {
    target: Arc<LogTarget>,
    stream: &'static str,
    pending: Vec<u8>,
}

impl LineWriter {
    fn emit(&self, line: &[u8]) {
        use std::sync::atomic::Ordering;
        let budget = &self.target.budget;
        let left = budget.load(Ordering::Relaxed);
        if left == 0 {
            return;
        }
        budget.store(left.saturating_sub(line.len() + 1), Ordering::Relaxed);
        let truncated = left <= line.len() + 1;
        let line = String::from_utf8_lossy(&line[..line.len().min(left)]);
        let line = line.trim_end_matches('\r');
        let line = if truncated {
            format!("{line} [log output truncated: {MAX_LOG_BYTES} bytes per invocation]")
        } else {
            line.to_string()
        };
        let t = &self.target;
        tracing::info!(
            target: "reactor::function",
            org = %t.org,
            function = %t.function,
            deployment_id = %t.deployment_id,
            request_id = %t.request_id,
            stream = self.stream,
            "{line}"
        );
        let kind = if self.stream == "stderr" {
            LogKind::Stderr
        } else {
            LogKind::Stdout
        };
        let mut entry = LogEntry::new(&t.org, &t.function, Some(&t.deployment_id), kind, line);
        entry.request_id = Some(t.request_id.clone());
        t.sink.emit(entry);
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.pending.extend_from_slice(buf);
        while let Some(pos) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=pos).collect();
            self.emit(&line[..line.len() - 1]);
        }
        while self.pending.len() >= MAX_LINE {
            let chunk: Vec<u8> = self.pending.drain(..MAX_LINE).collect();
            self.emit(&chunk);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.emit(&rest);
        }
    }
}
