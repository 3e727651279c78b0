//! `reactor functions logs NAME [--follow] [--since 10m] [--json]`: reads the SSE stream of
//! `GET /fn/v1/_admin/functions/{name}/logs` and prints one line per entry as it arrives.

use crate::client::{self, Client};
use anyhow::{Context, bail};
use futures::StreamExt;
use reactor_api::logs::LogEntry;
use std::io::Write;

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The function.
    pub name: String,
    /// Keep printing new entries as they come, until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only entries from this far back (`10m`, `1h`, `30s`) or since an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Print each entry as its JSON object, one per line.
    #[arg(long)]
    pub json: bool,
}

/// Longest SSE line accepted; an entry's message is at most 16 KiB before JSON escaping.
const MAX_LINE_BYTES: usize = 4 << 20;

pub async fn run(client: &Client, args: &LogsArgs) -> anyhow::Result<()> {
    let follow = if args.follow { "true" } else { "false" };
    let mut query = vec![("follow", follow)];
    if let Some(since) = args.since.as_deref() {
        query.push(("since", since));
    }
    let req = client
        .request(
            reqwest::Method::GET,
            &format!("/fn/v1/_admin/functions/{}/logs", args.name),
        )
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .query(&query);
    let resp = client.execute(req).await?;
    let resp = client::check(resp).await?;

    let mut parser = SseParser::default();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("reading the log stream")?;
        for event in parser.push(&chunk)? {
            match show(&event, args.json) {
                Ok(()) => {}
                // The reader of our stdout went away (`| head`): nothing more to do.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(e).context("writing to stdout"),
            }
        }
    }
    Ok(())
}

/// Prints one event: a `log` entry to stdout, a `dropped` notice to stderr; others are
/// ignored (a newer server may send kinds this client does not know).
fn show(event: &SseEvent, json: bool) -> std::io::Result<()> {
    match event.name.as_str() {
        "log" => {
            let line = if json {
                event.data.clone()
            } else {
                match serde_json::from_str::<LogEntry>(&event.data) {
                    Ok(entry) => entry.line(),
                    // Not an entry this client understands: show it rather than lose it.
                    Err(_) => event.data.clone(),
                }
            };
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")?;
            out.flush()
        }
        "dropped" => {
            let n = serde_json::from_str::<serde_json::Value>(&event.data)
                .ok()
                .and_then(|v| v.get("dropped").and_then(serde_json::Value::as_u64));
            match n {
                Some(n) => eprintln!("-- {n} entries dropped (the client fell behind) --"),
                None => eprintln!("-- entries dropped (the client fell behind) --"),
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// One server-sent event.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SseEvent {
    /// The `event:` field, `message` when there was none.
    name: String,
    /// The `data:` fields, joined with newlines.
    data: String,
}

/// An incremental SSE parser: feed it chunks as they arrive, in any sizes.
#[derive(Default)]
struct SseParser {
    /// Bytes of a line not yet ended.
    partial: Vec<u8>,
    /// The previous chunk ended with `\r`: a `\n` starting this one belongs to it.
    after_cr: bool,
    name: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// The events `chunk` completes.
    fn push(&mut self, chunk: &[u8]) -> anyhow::Result<Vec<SseEvent>> {
        let mut events = Vec::new();
        let mut rest = chunk;
        if self.after_cr {
            self.after_cr = false;
            if let Some(tail) = rest.strip_prefix(b"\n") {
                rest = tail;
            }
        }
        while let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.partial.extend_from_slice(&rest[..i]);
            let line = String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned();
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
            let ended_by_cr = rest[i] == b'\r';
            rest = &rest[i + 1..];
            if ended_by_cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() > MAX_LINE_BYTES {
            bail!(
                "the server sent a log stream line longer than {} MiB",
                MAX_LINE_BYTES >> 20
            );
        }
        Ok(events)
    }

    /// Takes one line (without its ending); a blank line completes the pending event.
    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let data = self.data.take();
            let name = self.name.take();
            // An event without data is not dispatched (as browsers do).
            return data.map(|data| SseEvent {
                name: name.unwrap_or_else(|| "message".to_string()),
                data,
            });
        }
        if line.starts_with(':') {
            return None; // a comment: the server's keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.name = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {} // id, retry and unknown fields mean nothing here
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, data: &str) -> SseEvent {
        SseEvent {
            name: name.to_string(),
            data: data.to_string(),
        }
    }

    #[test]
    fn parses_events_split_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: log\nda").expect("parses").is_empty());
        assert!(p.push(b"ta: {\"a\":1}\n").expect("parses").is_empty());
        let got = p.push(b"\n:\n\nevent: dropped\ndata: {\"dropped\":3}\n\n");
        assert_eq!(
            got.expect("parses"),
            [
                event("log", "{\"a\":1}"),
                event("dropped", "{\"dropped\":3}")
            ]
        );
    }

    #[test]
    fn handles_crlf_and_multiline_data() {
        let mut p = SseParser::default();
        let mut got = p.push(b"data:one\r").expect("parses");
        got.extend(p.push(b"\ndata: two\r\n\r\n").expect("parses"));
        assert_eq!(got, [event("message", "one\ntwo")]);
    }

    #[test]
    fn keep_alives_and_empty_events_yield_nothing() {
        let mut p = SseParser::default();
        assert!(
            p.push(b":\n\n: ping\n\nevent: log\n\n")
                .expect("parses")
                .is_empty()
        );
    }

    #[test]
    fn a_log_event_renders_as_the_entry_line() {
        let mut p = SseParser::default();
        let data = r#"{"ts":"2026-11-30T21:10:35.123Z","org":"acme","function":"hello","deployment_id":"dep_1","kind":"stdout","message":"hi"}"#;
        let got = p
            .push(format!("event: log\ndata: {data}\n\n").as_bytes())
            .expect("parses");
        let entry: LogEntry = serde_json::from_str(&got[0].data).expect("an entry");
        assert_eq!(entry.line(), "2026-11-30T21:10:35.123Z dep_1 stdout hi");
    }
}
