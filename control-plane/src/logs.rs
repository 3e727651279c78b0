//! Function logs: an in-memory hub that keeps a bounded history per function and fans
//! entries out live, and the SSE endpoint `GET /fn/v1/_admin/functions/{name}/logs`.
//!
//! The hub keeps at most [`LogRetention::max_entries_per_function`] entries per function,
//! none older than [`LogRetention::max_age`]; a restart forgets them. Emitting never
//! blocks on a reader: a reader that falls behind the live channel is told how many
//! entries it missed.

use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::stream::BoxStream;
use reactor_api::logs::{LogEntry, LogSink, cap_message};
use reactor_api::{ApiError, ErrorCode};
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// Entries the live channel holds for its slowest reader before that reader lags.
pub const LIVE_CAPACITY: usize = 1024;
/// How often an idle stream sends an SSE comment, so proxies keep the connection.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Every this many entries, the hub also prunes the rings of functions that went quiet.
const SWEEP_EVERY: u64 = 4096;

/// How much history the hub keeps.
#[derive(Clone, Debug)]
pub struct LogRetention {
    /// Entries kept per function; the oldest go first (default 1000).
    pub max_entries_per_function: usize,
    /// Entries older than this are dropped (default 24 h).
    pub max_age: Duration,
}

impl Default for LogRetention {
    fn default() -> Self {
        Self {
            max_entries_per_function: 1000,
            max_age: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// An entry on the live channel, with its place in the hub's order.
#[derive(Clone, Debug)]
pub struct LiveEntry {
    /// Increases by one with every entry the hub receives, across all functions.
    pub seq: u64,
    pub entry: Arc<LogEntry>,
}

struct Stored {
    /// The entry's own timestamp (the hub's clock when it has none that parses).
    at: SystemTime,
    entry: Arc<LogEntry>,
}

type Ring = VecDeque<Stored>;

#[derive(Default)]
struct Rings {
    /// org → function → entries, oldest first.
    by_org: HashMap<String, HashMap<String, Ring>>,
    /// The seq of the last entry received (0: none yet).
    last_seq: u64,
}

/// The log hub: history per function, bounded, plus a live broadcast of every entry.
pub struct LogHub {
    retention: LogRetention,
    rings: Mutex<Rings>,
    live: broadcast::Sender<LiveEntry>,
    closed: CancellationToken,
    /// Where emitted entries go when logs are shared through Redis (`logs_redis.rs`);
    /// they come back through [`LogHub::record`].
    publisher: OnceLock<mpsc::Sender<LogEntry>>,
    /// Redis answers: publish rather than record directly.
    shared: AtomicBool,
}

impl LogHub {
    pub fn new(retention: LogRetention) -> Arc<LogHub> {
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        Arc::new(LogHub {
            retention,
            rings: Mutex::new(Rings::default()),
            live,
            closed: CancellationToken::new(),
            publisher: OnceLock::new(),
            shared: AtomicBool::new(true),
        })
    }

    /// Sends emitted entries to `publisher` from now on (logs shared through Redis).
    pub fn set_publisher(&self, publisher: mpsc::Sender<LogEntry>) {
        let _ = self.publisher.set(publisher);
    }

    /// Marks the shared path up or down; true when that changed.
    pub fn set_shared(&self, up: bool) -> bool {
        self.shared.swap(up, Ordering::AcqRel) != up
    }

    /// Cancelled when the hub closes (background tasks stop with it).
    pub fn closed_token(&self) -> CancellationToken {
        self.closed.clone()
    }

    pub fn retention(&self) -> &LogRetention {
        &self.retention
    }

    /// The kept entries of a function, oldest first, none older than the retention age
    /// nor (when given) than `since`.
    pub fn history(
        &self,
        org: &str,
        function: &str,
        since: Option<SystemTime>,
    ) -> Vec<Arc<LogEntry>> {
        self.snapshot(org, function, since).0
    }

    /// Every entry from now on, of all functions; filter by `entry.org` and
    /// `entry.function`.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveEntry> {
        self.live.subscribe()
    }

    /// Drops the history of a deleted function.
    pub fn forget(&self, org: &str, function: &str) {
        let mut rings = self.lock();
        if let Some(functions) = rings.by_org.get_mut(org) {
            functions.remove(function);
            if functions.is_empty() {
                rings.by_org.remove(org);
            }
        }
    }

    /// Ends every following stream (at shutdown, so that draining does not wait for
    /// clients that would follow forever). Entries are still kept after it.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// The history as [`LogHub::history`] gives it, and the seq of the last entry the hub
    /// had received then: a live entry with a seq at most that was in the history or
    /// left out of it on purpose.
    fn snapshot(
        &self,
        org: &str,
        function: &str,
        since: Option<SystemTime>,
    ) -> (Vec<Arc<LogEntry>>, u64) {
        let cutoff = self.cutoff(SystemTime::now());
        let from = match (cutoff, since) {
            (Some(c), Some(s)) => Some(c.max(s)),
            (c, s) => c.or(s),
        };
        let mut rings = self.lock();
        let last_seq = rings.last_seq;
        let Some(ring) = rings
            .by_org
            .get_mut(org)
            .and_then(|functions| functions.get_mut(function))
        else {
            return (Vec::new(), last_seq);
        };
        if let Some(c) = cutoff {
            prune(ring, c);
        }
        let entries = ring
            .iter()
            .filter(|s| from.is_none_or(|f| s.at >= f))
            .map(|s| Arc::clone(&s.entry))
            .collect();
        (entries, last_seq)
    }

    /// Entries older than this are past retention (`None`: nothing is, yet).
    fn cutoff(&self, now: SystemTime) -> Option<SystemTime> {
        now.checked_sub(self.retention.max_age)
    }

    fn lock(&self) -> MutexGuard<'_, Rings> {
        // A panic elsewhere while holding the lock leaves the rings usable.
        self.rings.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LogSink for LogHub {
    /// Records the entry, or publishes it when logs are shared (it is recorded when it
    /// comes back from the stream, or here when the queue is full).
    fn emit(&self, entry: LogEntry) {
        if let Some(publisher) = self.publisher.get()
            && self.shared.load(Ordering::Acquire)
        {
            match publisher.try_send(entry) {
                Ok(()) => return,
                Err(e) => return self.record(e.into_inner()),
            }
        }
        self.record(entry);
    }
}

impl LogHub {
    /// Keeps the entry and sends it to live followers.
    pub fn record(&self, mut entry: LogEntry) {
        entry.message = cap_message(std::mem::take(&mut entry.message));
        let now = SystemTime::now();
        let at = humantime::parse_rfc3339(&entry.ts).unwrap_or(now);
        let cutoff = self.cutoff(now);
        let entry = Arc::new(entry);

        let mut guard = self.lock();
        let rings = &mut *guard;
        rings.last_seq += 1;
        let seq = rings.last_seq;
        let ring = rings
            .by_org
            .entry(entry.org.clone())
            .or_default()
            .entry(entry.function.clone())
            .or_default();
        ring.push_back(Stored {
            at,
            entry: Arc::clone(&entry),
        });
        while ring.len() > self.retention.max_entries_per_function {
            ring.pop_front();
        }
        if let Some(c) = cutoff {
            prune(ring, c);
            if seq.is_multiple_of(SWEEP_EVERY) {
                sweep(&mut rings.by_org, c);
            }
        }
        // Sent under the lock so that live entries go out in seq order; sending is a
        // slot write and a wake-up, never a wait. No receiver is not an error.
        let _ = self.live.send(LiveEntry { seq, entry });
    }
}

/// Drops entries older than `cutoff` from the front. Entries come in time order; one that
/// carried an earlier timestamp than its predecessor goes when it reaches the front.
fn prune(ring: &mut Ring, cutoff: SystemTime) {
    while ring.front().is_some_and(|s| s.at < cutoff) {
        ring.pop_front();
    }
}

/// Prunes every ring and forgets the emptied ones.
fn sweep(by_org: &mut HashMap<String, HashMap<String, Ring>>, cutoff: SystemTime) {
    by_org.retain(|_, functions| {
        functions.retain(|_, ring| {
            prune(ring, cutoff);
            !ring.is_empty()
        });
        !functions.is_empty()
    });
}

/// The query of the logs endpoint.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Keep the stream open for new entries after the history (default true).
    pub follow: Option<bool>,
    /// Only entries from this far back (`10m`, `1h`, `30s`) or from this RFC 3339 time.
    pub since: Option<String>,
}

/// The SSE stream of a function's logs: its history, then (unless `follow=false`) every
/// new entry until the client goes away. Each entry is an event `log` whose data is the
/// entry's JSON; a reader that fell behind gets an event `dropped` with
/// `{"dropped": n}`, where n counts the entries of all functions it missed.
///
/// The caller has authenticated and checked that the function exists.
pub fn sse_response(
    hub: &Arc<LogHub>,
    org: &str,
    function: &str,
    query: &LogsQuery,
) -> Result<Response, ApiError> {
    let since = match query.since.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => Some(parse_since(s, SystemTime::now())?),
        _ => None,
    };
    let follow = query.follow.unwrap_or(true);
    // Subscribe before reading the history, so that no entry falls between the two; the
    // seq then skips live entries the history already had.
    let live = follow.then(|| hub.subscribe());
    let (history, last_seq) = hub.snapshot(org, function, since);
    let history = futures::stream::iter(
        history
            .into_iter()
            .map(|e| Ok::<Event, Infallible>(log_event(&e))),
    );
    let stream: BoxStream<'static, Result<Event, Infallible>> = match live {
        None => history.boxed(),
        Some(rx) => history
            .chain(follow_stream(Follow {
                rx,
                after: last_seq,
                org: org.to_string(),
                function: function.to_string(),
                closed: hub.closed.clone(),
            }))
            .boxed(),
    };
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// `since` as a point in time: a duration back from `now`, or an RFC 3339 time.
fn parse_since(since: &str, now: SystemTime) -> Result<SystemTime, ApiError> {
    let invalid = || {
        ApiError::new(
            ErrorCode::InvalidInput,
            format!("since {since:?} is not a duration like 10m or an RFC 3339 time"),
        )
        .with_detail("since", since)
    };
    if let Ok(back) = humantime::parse_duration(since) {
        return Ok(now.checked_sub(back).unwrap_or(SystemTime::UNIX_EPOCH));
    }
    humantime::parse_rfc3339_weak(since).map_err(|_| invalid())
}

fn log_event(entry: &LogEntry) -> Event {
    // Serializing plain strings, numbers and options cannot fail; the fallback keeps the
    // stream going if it ever did.
    let data = serde_json::to_string(entry).unwrap_or_else(|e| {
        serde_json::json!({
            "ts": entry.ts,
            "org": entry.org,
            "function": entry.function,
            "kind": "event",
            "message": format!("unserializable log entry: {e}"),
        })
        .to_string()
    });
    Event::default().event("log").data(data)
}

fn dropped_event(n: u64) -> Event {
    Event::default()
        .event("dropped")
        .data(serde_json::json!({ "dropped": n }).to_string())
}

struct Follow {
    rx: broadcast::Receiver<LiveEntry>,
    /// Live entries with a seq at most this were in the history (or left out of it).
    after: u64,
    org: String,
    function: String,
    closed: CancellationToken,
}

fn follow_stream(state: Follow) -> impl futures::Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(state, |mut s| async move {
        loop {
            let received = tokio::select! {
                biased;
                () = s.closed.cancelled() => return None,
                received = s.rx.recv() => received,
            };
            match received {
                Ok(live) => {
                    let e = &live.entry;
                    if live.seq <= s.after || e.org != s.org || e.function != s.function {
                        continue;
                    }
                    return Some((Ok::<Event, Infallible>(log_event(e)), s));
                }
                Err(RecvError::Lagged(n)) => {
                    return Some((Ok::<Event, Infallible>(dropped_event(n)), s));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reactor_api::logs::LogKind;

    fn hub(max_entries: usize, max_age: Duration) -> Arc<LogHub> {
        LogHub::new(LogRetention {
            max_entries_per_function: max_entries,
            max_age,
        })
    }

    fn out(org: &str, function: &str, message: &str) -> LogEntry {
        LogEntry::new(org, function, Some("dep_1"), LogKind::Stdout, message)
    }

    fn at(entry: LogEntry, time: SystemTime) -> LogEntry {
        LogEntry {
            ts: humantime::format_rfc3339_millis(time).to_string(),
            ..entry
        }
    }

    fn messages(entries: &[Arc<LogEntry>]) -> Vec<String> {
        entries.iter().map(|e| e.message.clone()).collect()
    }

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    #[test]
    fn keeps_at_most_the_bound_oldest_first() {
        let hub = hub(3, DAY);
        for i in 0..5 {
            hub.emit(out("acme", "hello", &format!("line {i}")));
        }
        assert_eq!(
            messages(&hub.history("acme", "hello", None)),
            ["line 2", "line 3", "line 4"]
        );
    }

    #[test]
    fn drops_entries_past_the_age() {
        let hub = hub(100, Duration::from_secs(3600));
        let now = SystemTime::now();
        hub.emit(at(
            out("acme", "hello", "old"),
            now - Duration::from_secs(7200),
        ));
        hub.emit(at(
            out("acme", "hello", "recent"),
            now - Duration::from_secs(60),
        ));
        hub.emit(out("acme", "hello", "now"));
        assert_eq!(
            messages(&hub.history("acme", "hello", None)),
            ["recent", "now"]
        );
    }

    #[test]
    fn since_filters_history() {
        let hub = hub(100, DAY);
        let now = SystemTime::now();
        hub.emit(at(
            out("acme", "hello", "an hour ago"),
            now - Duration::from_secs(3600),
        ));
        hub.emit(at(
            out("acme", "hello", "a minute ago"),
            now - Duration::from_secs(60),
        ));
        let since = parse_since("10m", now).expect("a duration");
        assert_eq!(
            messages(&hub.history("acme", "hello", Some(since))),
            ["a minute ago"]
        );
        let rfc = humantime::format_rfc3339_seconds(now - Duration::from_secs(7200)).to_string();
        let since = parse_since(&rfc, now).expect("an RFC 3339 time");
        assert_eq!(hub.history("acme", "hello", Some(since)).len(), 2);
        let err = parse_since("yesterday-ish", now).expect_err("not a time");
        assert_eq!(err.code, ErrorCode::InvalidInput);
    }

    #[test]
    fn forget_drops_one_function() {
        let hub = hub(100, DAY);
        hub.emit(out("acme", "hello", "a"));
        hub.emit(out("acme", "other", "b"));
        hub.forget("acme", "hello");
        assert!(hub.history("acme", "hello", None).is_empty());
        assert_eq!(messages(&hub.history("acme", "other", None)), ["b"]);
    }

    #[test]
    fn functions_and_orgs_are_kept_apart() {
        let hub = hub(2, DAY);
        hub.emit(out("acme", "hello", "acme hello"));
        hub.emit(out("beta", "hello", "beta hello"));
        for i in 0..5 {
            hub.emit(out("acme", "noisy", &format!("noise {i}")));
        }
        assert_eq!(
            messages(&hub.history("acme", "hello", None)),
            ["acme hello"]
        );
        assert_eq!(
            messages(&hub.history("beta", "hello", None)),
            ["beta hello"]
        );
        assert!(hub.history("beta", "noisy", None).is_empty());
    }

    #[test]
    fn caps_messages_built_by_hand() {
        let hub = hub(10, DAY);
        let mut e = out("acme", "hello", "");
        e.message = "x".repeat(reactor_api::logs::MAX_MESSAGE_BYTES + 10);
        hub.emit(e);
        let kept = hub.history("acme", "hello", None);
        assert!(kept[0].message.ends_with(reactor_api::logs::TRUNCATED_MARK));
    }

    /// The `log` events' entries in an SSE body.
    fn log_events(body: &str) -> Vec<LogEntry> {
        body.split("\n\n")
            .filter(|event| event.lines().any(|l| l == "event: log"))
            .filter_map(|event| {
                event
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .map(|d| serde_json::from_str(d).expect("an entry"))
            })
            .collect()
    }

    #[tokio::test]
    async fn history_only_stream_ends() {
        let hub = hub(100, DAY);
        hub.emit(out("acme", "hello", "first"));
        hub.emit(out("acme", "other", "not mine"));
        hub.emit(LogEntry::event("acme", "hello", Some("dep_1"), "promote"));
        let query = LogsQuery {
            follow: Some(false),
            since: None,
        };
        let response = sse_response(&hub, "acme", "hello", &query).expect("a response");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["cache-control"], "no-cache");
        let body = tokio::time::timeout(
            Duration::from_secs(5),
            axum::body::to_bytes(response.into_body(), 1 << 20),
        )
        .await
        .expect("the stream ends")
        .expect("a body");
        let body = String::from_utf8(body.to_vec()).expect("utf-8");
        let entries = log_events(&body);
        let got: Vec<_> = entries.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(got, ["first", "promote"]);
        assert_eq!(entries[1].kind, LogKind::Event);
    }

    #[tokio::test]
    async fn bad_since_is_invalid_input() {
        let hub = hub(100, DAY);
        let query = LogsQuery {
            follow: Some(false),
            since: Some("soon".into()),
        };
        let err = sse_response(&hub, "acme", "hello", &query).expect_err("rejected");
        assert_eq!(err.code, ErrorCode::InvalidInput);
    }

    #[tokio::test]
    async fn follow_sends_history_then_live_entries_once() {
        let hub = hub(100, DAY);
        hub.emit(out("acme", "hello", "before"));
        let response =
            sse_response(&hub, "acme", "hello", &LogsQuery::default()).expect("a response");
        hub.emit(out("acme", "other", "not mine"));
        hub.emit(out("acme", "hello", "live"));

        let mut body = response.into_body().into_data_stream();
        let mut text = String::new();
        let read = async {
            while log_events(&text).len() < 2 {
                let chunk = body
                    .next()
                    .await
                    .expect("the stream stays open")
                    .expect("a chunk");
                text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("history and the live entry arrive");
        let got: Vec<_> = log_events(&text).into_iter().map(|e| e.message).collect();
        assert_eq!(got, ["before", "live"]);

        // Closing the hub ends the stream.
        hub.close();
        let rest = tokio::time::timeout(Duration::from_secs(5), async {
            let mut more = String::new();
            while let Some(chunk) = body.next().await {
                more.push_str(std::str::from_utf8(&chunk.expect("a chunk")).expect("utf-8"));
            }
            more
        })
        .await
        .expect("the stream ends once the hub is closed");
        assert!(log_events(&rest).is_empty(), "{rest}");
    }

    #[tokio::test]
    async fn a_lagging_reader_is_told_what_it_missed() {
        let hub = hub(10, DAY);
        let response =
            sse_response(&hub, "acme", "hello", &LogsQuery::default()).expect("a response");
        for i in 0..(LIVE_CAPACITY + 5) {
            hub.emit(out("acme", "hello", &format!("line {i}")));
        }
        let mut body = response.into_body().into_data_stream();
        let first = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("an event")
            .expect("the stream stays open")
            .expect("a chunk");
        let first = String::from_utf8(first.to_vec()).expect("utf-8");
        assert!(first.starts_with("event: dropped\n"), "{first}");
        assert!(first.contains("data: {\"dropped\":5}"), "{first}");
    }
}
