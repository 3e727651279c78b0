//! Log entries of a function: what it printed, what the platform did to it (deploy,
//! materialized, failed, promote, rollback, crash, timeout) and one line per invocation.
//!
//! This is the shape the log endpoint streams and the CLI prints, and the [`LogSink`]
//! services emit into. It does no I/O: where entries are kept is the control plane's
//! business.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{Duration, SystemTime};

/// Longest message kept, in bytes; a longer one is cut on a char boundary and marked.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// What marks a message cut at [`MAX_MESSAGE_BYTES`].
pub const TRUNCATED_MARK: &str = "…[truncated]";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogKind {
    /// A line the function wrote to stdout.
    Stdout,
    /// A line the function wrote to stderr.
    Stderr,
    /// A platform event: deploy, materialized, failed, promote, rollback, crash, timeout.
    Event,
    /// One invocation: deployment, status, duration and cold start.
    Invocation,
}

impl LogKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LogKind::Stdout => "stdout",
            LogKind::Stderr => "stderr",
            LogKind::Event => "event",
            LogKind::Invocation => "invocation",
        }
    }
}

impl fmt::Display for LogKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One log entry of one function.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogEntry {
    /// When it happened: RFC 3339 UTC with milliseconds, e.g. `2026-11-30T21:10:35.123Z`.
    pub ts: String,
    pub org: String,
    pub function: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,
    pub kind: LogKind,
    pub message: String,
    /// Invocation fields, set only when `kind` is `invocation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start: Option<bool>,
}

impl LogEntry {
    /// An entry stamped now, its message cut to [`MAX_MESSAGE_BYTES`].
    pub fn new(
        org: &str,
        function: &str,
        deployment_id: Option<&str>,
        kind: LogKind,
        message: impl Into<String>,
    ) -> Self {
        Self {
            ts: now(),
            org: org.to_string(),
            function: function.to_string(),
            deployment_id: deployment_id.map(str::to_string),
            kind,
            message: cap_message(message.into()),
            request_id: None,
            status: None,
            duration_ms: None,
            cold_start: None,
        }
    }

    /// A platform event (deploy, materialized, failed, promote, rollback, crash, timeout).
    pub fn event(
        org: &str,
        function: &str,
        deployment_id: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Self::new(org, function, deployment_id, LogKind::Event, message)
    }

    /// The entry of one invocation; its message is empty.
    pub fn invocation(
        org: &str,
        function: &str,
        deployment_id: Option<&str>,
        request_id: &str,
        status: u16,
        duration: Duration,
        cold_start: bool,
    ) -> Self {
        Self {
            request_id: Some(request_id.to_string()),
            status: Some(status),
            duration_ms: Some(duration.as_secs_f64() * 1000.0),
            cold_start: Some(cold_start),
            ..Self::new(org, function, deployment_id, LogKind::Invocation, "")
        }
    }

    /// The CLI's one-line rendering: `{ts} {deployment_id or -} {kind} {message}`, and for
    /// invocations `{ts} {deployment_id or -} invocation {status} {duration}ms
    /// cold={cold_start} {request_id}` (then the message, when there is one).
    pub fn line(&self) -> String {
        let deployment = self.deployment_id.as_deref().unwrap_or("-");
        if self.kind != LogKind::Invocation {
            return format!("{} {deployment} {} {}", self.ts, self.kind, self.message);
        }
        let status = self
            .status
            .map_or_else(|| "-".to_string(), |s| s.to_string());
        let duration = self
            .duration_ms
            .map_or_else(|| "-".to_string(), |d| format!("{d:.1}ms"));
        let cold = self
            .cold_start
            .map_or_else(|| "-".to_string(), |c| c.to_string());
        let request = self.request_id.as_deref().unwrap_or("-");
        let mut line = format!(
            "{} {deployment} invocation {status} {duration} cold={cold} {request}",
            self.ts
        );
        if !self.message.is_empty() {
            line.push(' ');
            line.push_str(&self.message);
        }
        line
    }
}

/// `message` cut to [`MAX_MESSAGE_BYTES`] on a char boundary, with [`TRUNCATED_MARK`]
/// appended when it was cut.
pub fn cap_message(mut message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(TRUNCATED_MARK);
    message
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Where services send log entries. Must never block or fail the caller: an
/// implementation drops entries when it is overloaded (and counts them).
pub trait LogSink: Send + Sync + 'static {
    fn emit(&self, entry: LogEntry);
}

/// A sink that drops everything, for tools and tests that have no log hub.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoLogs;

impl LogSink for NoLogs {
    fn emit(&self, _entry: LogEntry) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_lowercase_kind_and_skips_absent_fields() {
        let e = LogEntry::event("acme", "hello", Some("dep_1"), "promote");
        let json = serde_json::to_value(&e).expect("serializes");
        assert_eq!(json["kind"], "event");
        assert_eq!(json["deployment_id"], "dep_1");
        assert!(json.get("status").is_none());
        assert!(json.get("request_id").is_none());
        let back: LogEntry = serde_json::from_value(json).expect("parses");
        assert_eq!(back, e);
        assert!(e.ts.ends_with('Z'), "{}", e.ts);
        assert_eq!(e.ts.len(), "2026-11-30T21:10:35.123Z".len(), "{}", e.ts);
    }

    #[test]
    fn renders_one_line() {
        let mut e = LogEntry::new("acme", "hello", None, LogKind::Stdout, "hi there");
        e.ts = "2026-11-30T21:10:35.123Z".into();
        assert_eq!(e.line(), "2026-11-30T21:10:35.123Z - stdout hi there");

        let mut i = LogEntry::invocation(
            "acme",
            "hello",
            Some("dep_1"),
            "req_1",
            200,
            Duration::from_micros(12_340),
            true,
        );
        i.ts = "2026-11-30T21:10:35.123Z".into();
        assert_eq!(
            i.line(),
            "2026-11-30T21:10:35.123Z dep_1 invocation 200 12.3ms cold=true req_1"
        );
    }

    #[test]
    fn caps_long_messages_on_a_char_boundary() {
        // 'é' is two bytes: MAX_MESSAGE_BYTES + 1 bytes in, the cut falls inside a char.
        let long = format!("a{}", "é".repeat(MAX_MESSAGE_BYTES));
        let e = LogEntry::new("acme", "hello", None, LogKind::Stderr, long);
        assert!(e.message.ends_with(TRUNCATED_MARK));
        let kept = e.message.len() - TRUNCATED_MARK.len();
        assert!(kept <= MAX_MESSAGE_BYTES);
        assert!(kept >= MAX_MESSAGE_BYTES - 1);

        let short = LogEntry::new("acme", "hello", None, LogKind::Stdout, "x".repeat(10));
        assert_eq!(short.message, "x".repeat(10));
        let exact = cap_message("y".repeat(MAX_MESSAGE_BYTES));
        assert_eq!(exact.len(), MAX_MESSAGE_BYTES);
    }
}
