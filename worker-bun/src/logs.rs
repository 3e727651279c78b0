//! A Bun process's output as the function's log. In "serve" mode the harness tags each
//! console line written while a request is handled with the process's secret tag and the
//! worker's number for that invocation (`\x1e{tag}:{n}\x1f{line}`). Such a line is logged
//! with its request, under the invocation's byte budget (as on WASM), and its stderr lines
//! are all a failed invocation is ever told. Untagged output (a module's top level,
//! `process.stdout.write`, Bun's own messages and crash reports) belongs to the process: it
//! is logged under a budget per process and minute, and shown to no caller.
//!
//! The tag keeps output a caller feeds to the function's stdout from posing as another
//! invocation's; it does not need to resist the function itself, whose output it all is.

use reactor_api::DeploymentSpec;
use reactor_api::logs::{LogEntry, LogKind, LogSink};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::time::Instant;

/// Log bytes one invocation may write (stdout and stderr together, as on WASM); the line
/// that crosses it is cut and marked, the rest is dropped.
pub const MAX_LOG_BYTES: usize = 1024 * 1024;
/// Log bytes a process may write outside any invocation per [`PROCESS_WINDOW`].
const PROCESS_LOG_BYTES: usize = 1024 * 1024;
const PROCESS_WINDOW: Duration = Duration::from_secs(60);
/// Longest output line logged whole; a longer one is logged in pieces of this size.
const MAX_LINE: usize = 16 * 1024;
/// Bytes of an invocation's own stderr kept to explain its failure to its caller.
const OWN_TAIL: usize = 2048;
/// Finished invocations remembered, so that their late lines (still in the pipe, or from
/// a timer they left behind) stay theirs and within their budget.
const FINISHED_KEPT: usize = 256;

/// A tag no function can guess: 128 bits from the kernel, in hex.
pub fn secret_tag() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex::encode(bytes))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn kind(self) -> LogKind {
        match self {
            Stream::Stdout => LogKind::Stdout,
            Stream::Stderr => LogKind::Stderr,
        }
    }
}

/// Bytes left to log; the line that reaches the end is cut and is the last.
struct Budget {
    left: usize,
}

impl Budget {
    /// How much of a `len`-byte line to log and whether it is cut (the last);
    /// `None` once spent.
    fn take(&mut self, len: usize) -> Option<(usize, bool)> {
        if self.left == 0 {
            return None;
        }
        let cost = len + 1;
        if cost < self.left {
            self.left -= cost;
            return Some((len, false));
        }
        let keep = len.min(self.left);
        self.left = 0;
        Some((keep, true))
    }
}

/// The budget of output outside invocations, renewed every [`PROCESS_WINDOW`].
struct Window {
    budget: Budget,
    since: Instant,
}

impl Window {
    fn new() -> Self {
        Self {
            budget: Budget {
                left: PROCESS_LOG_BYTES,
            },
            since: Instant::now(),
        }
    }

    fn take(&mut self, len: usize) -> Option<(usize, bool)> {
        if self.since.elapsed() >= PROCESS_WINDOW {
            *self = Self::new();
        }
        self.budget.take(len)
    }
}

/// One invocation's share of the output.
struct InvocationLog {
    request_id: String,
    budget: Mutex<Budget>,
    /// The end of its stderr, while it runs.
    tail: Mutex<Vec<u8>>,
}

#[derive(Default)]
struct Invocations {
    by_id: HashMap<u64, Arc<InvocationLog>>,
    /// Finished ones still in `by_id`, oldest first.
    finished: VecDeque<u64>,
}

/// Who a process's output belongs to, and the invocations it is serving.
pub struct ProcessLogs {
    sink: Arc<dyn LogSink>,
    pub org: String,
    pub function: String,
    pub deployment_id: String,
    pub process: u64,
    /// `\x1e{tag}:`, what starts a tagged line.
    prefix: Vec<u8>,
    next: AtomicU64,
    invocations: Mutex<Invocations>,
    outside: Mutex<Window>,
}

/// A poisoned lock is as good: what it guards stays consistent line by line.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ProcessLogs {
    pub fn new(
        spec: &DeploymentSpec,
        process: u64,
        sink: Arc<dyn LogSink>,
        tag: &str,
    ) -> Arc<Self> {
        Arc::new(Self {
            sink,
            org: spec.org.clone(),
            function: spec.function.clone(),
            deployment_id: spec.deployment_id.clone(),
            process,
            prefix: format!("\x1e{tag}:").into_bytes(),
            next: AtomicU64::new(1),
            invocations: Mutex::new(Invocations::default()),
            outside: Mutex::new(Window::new()),
        })
    }

    /// Registers an invocation: the output tagged with its number is its own.
    pub fn begin(self: &Arc<Self>, request_id: &str) -> InvocationScope {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let log = Arc::new(InvocationLog {
            request_id: request_id.to_string(),
            budget: Mutex::new(Budget {
                left: MAX_LOG_BYTES,
            }),
            tail: Mutex::new(Vec::new()),
        });
        lock(&self.invocations).by_id.insert(id, log.clone());
        InvocationScope {
            logs: self.clone(),
            id,
            log,
        }
    }

    fn finish(&self, id: u64, log: &InvocationLog) {
        *lock(&log.tail) = Vec::new();
        let mut invocations = lock(&self.invocations);
        invocations.finished.push_back(id);
        while invocations.finished.len() > FINISHED_KEPT {
            if let Some(old) = invocations.finished.pop_front() {
                invocations.by_id.remove(&old);
            }
        }
    }

    /// Whose a line is (`None`: the process's) and its text without the tag.
    fn attribute<'a>(&self, line: &'a [u8]) -> (Option<Arc<InvocationLog>>, &'a [u8]) {
        let Some(rest) = line.strip_prefix(self.prefix.as_slice()) else {
            return (None, line);
        };
        let Some(end) = rest.iter().position(|b| *b == 0x1f) else {
            return (None, line);
        };
        let owner = std::str::from_utf8(&rest[..end])
            .ok()
            .and_then(|n| n.parse::<u64>().ok())
            .and_then(|id| lock(&self.invocations).by_id.get(&id).cloned());
        (owner, &rest[end + 1..])
    }

    /// Logs one line of `owner` (or of the process), within its budget.
    fn emit(&self, owner: Option<&InvocationLog>, stream: Stream, text: &[u8]) {
        if let (Some(inv), Stream::Stderr) = (owner, stream) {
            let mut tail = lock(&inv.tail);
            tail.extend_from_slice(text);
            tail.push(b'\n');
            let excess = tail.len().saturating_sub(OWN_TAIL);
            tail.drain(..excess);
        }
        let taken = match owner {
            Some(inv) => lock(&inv.budget).take(text.len()),
            None => lock(&self.outside).take(text.len()),
        };
        let Some((keep, cut)) = taken else {
            return;
        };
        let mut message = String::from_utf8_lossy(&text[..keep]).into_owned();
        if cut {
            message.push_str(&match owner {
                Some(_) => format!(" [log output truncated: {MAX_LOG_BYTES} bytes per invocation]"),
                None => format!(
                    " [log output truncated: {PROCESS_LOG_BYTES} bytes per process and minute outside invocations]"
                ),
            });
        }
        let request_id = owner.map(|inv| inv.request_id.as_str());
        tracing::info!(
            target: "reactor::function",
            org = %self.org,
            function = %self.function,
            deployment_id = %self.deployment_id,
            process = self.process,
            request_id = request_id.unwrap_or("-"),
            stream = stream.as_str(),
            "{message}"
        );
        let mut entry = LogEntry::new(
            &self.org,
            &self.function,
            Some(&self.deployment_id),
            stream.kind(),
            message,
        );
        entry.request_id = request_id.map(str::to_string);
        self.sink.emit(entry);
    }
}

/// An invocation registered with its process, until dropped (with the response body).
pub struct InvocationScope {
    logs: Arc<ProcessLogs>,
    id: u64,
    log: Arc<InvocationLog>,
}

impl InvocationScope {
    /// The number the harness tags this invocation's lines with.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The end of what this invocation (and no other) wrote to stderr.
    pub fn own_stderr(&self) -> String {
        String::from_utf8_lossy(&lock(&self.log.tail))
            .trim()
            .to_string()
    }
}

impl Drop for InvocationScope {
    fn drop(&mut self) {
        self.logs.finish(self.id, &self.log);
    }
}

/// Logs each line of one of a process's streams, attributed to its invocation.
pub async fn pump(out: impl AsyncRead + Unpin, logs: Arc<ProcessLogs>, stream: Stream) {
    let mut reader = BufReader::with_capacity(MAX_LINE, out);
    let mut line = Vec::new();
    // Whose the rest of a line longer than MAX_LINE is.
    let mut rest_of: Option<Option<Arc<InvocationLog>>> = None;
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let ended = line.last() == Some(&b'\n');
        let (owner, text) = match rest_of.take() {
            Some(owner) => (owner, line.as_slice()),
            None => logs.attribute(&line),
        };
        let text = text.strip_suffix(b"\n").unwrap_or(text);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        logs.emit(owner.as_deref(), stream, text);
        if !ended {
            rest_of = Some(owner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Kept(Mutex<Vec<LogEntry>>);

    impl LogSink for Kept {
        fn emit(&self, entry: LogEntry) {
            lock(&self.0).push(entry);
        }
    }

    fn logs(sink: Arc<Kept>) -> Arc<ProcessLogs> {
        let spec = DeploymentSpec {
            org: "acme".into(),
            function: "f".into(),
            deployment_id: "dep".into(),
            runtime: reactor_api::Runtime::Bun,
            entrypoint: "index.ts".into(),
            bundle_key: String::new(),
            sha256: String::new(),
            timeout_ms: 1000,
            memory_mb: 128,
            min_instances: 0,
            max_concurrency: None,
            calls: None,
            pool: None,
        };
        ProcessLogs::new(&spec, 1, sink, "t0")
    }

    #[tokio::test]
    async fn tagged_lines_are_their_invocations_and_cut_at_its_budget() {
        let sink = Arc::new(Kept::default());
        let logs = logs(sink.clone());
        let one = logs.begin("req-1");
        let two = logs.begin("req-2");
        let line = "x".repeat(1023);
        let mut out = format!("\x1et0:{}\x1fmine\n", one.id()).into_bytes();
        for _ in 0..2048 {
            out.extend_from_slice(format!("\x1et0:{}\x1f{line}\n", two.id()).as_bytes());
        }
        out.extend_from_slice(b"untagged\n\x1ewrong:1\x1fforged\n\x1et0:999\x1flate\n");
        pump(out.as_slice(), logs.clone(), Stream::Stderr).await;

        assert_eq!(one.own_stderr(), "mine");
        assert!(!two.own_stderr().contains("mine"));
        let entries = lock(&sink.0);
        let of = |id: &'static str| {
            entries
                .iter()
                .filter(move |e| e.request_id.as_deref() == Some(id))
        };
        assert_eq!(of("req-1").count(), 1);
        let bytes: usize = of("req-2").map(|e| e.message.len()).sum();
        let note = format!(" [log output truncated: {MAX_LOG_BYTES} bytes per invocation]");
        assert!(bytes <= MAX_LOG_BYTES + note.len(), "{bytes}");
        assert!(bytes > MAX_LOG_BYTES - 1024, "{bytes}");
        assert_eq!(
            of("req-2").filter(|e| e.message.ends_with(&note)).count(),
            1
        );
        let outside: Vec<&str> = entries
            .iter()
            .filter(|e| e.request_id.is_none())
            .map(|e| e.message.as_str())
            .collect();
        assert_eq!(outside, ["untagged", "\x1ewrong:1\x1fforged", "late"]);
    }
}
