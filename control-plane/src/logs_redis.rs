//! Function logs shared through Redis (`functions.redis_url`), so that every control-plane
//! instance streams every entry, whichever instance received it, and a restarted one
//! still has the recent history.
//!
//! Entries go to one Redis stream, [`STREAM`] by default (JSON per entry, trimmed to about
//! [`StreamOptions::max_len`] entries). Each instance publishes what it receives there
//! (batched, from a queue that never blocks the caller) and reads the stream back into its
//! own [`LogHub`], which stays the store that history and SSE followers read: an entry
//! reaches a hub once, by the stream, whichever instance published it. At start an
//! instance loads the stream's newest entries into its hub.
//!
//! When Redis is away the hub records entries directly (this instance's followers still
//! see them; other instances don't, and they are not in Redis afterwards), warns once, and
//! goes back to the stream when a read succeeds again. Logs never wait for Redis.

use crate::logs::LogHub;
use reactor_api::logs::LogEntry;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The Redis stream of every function's log entries (the default key).
pub const STREAM: &str = "reactor:logs";
/// The field of a stream entry that holds the JSON entry.
const FIELD: &str = "e";

#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// The stream's key.
    pub key: String,
    /// About how many entries the stream keeps (`XADD MAXLEN ~`).
    pub max_len: usize,
    /// How many of the newest entries a starting instance loads.
    pub backfill: usize,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            key: STREAM.to_string(),
            max_len: 100_000,
            backfill: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("redis_url is not valid: {0}")]
pub struct InvalidRedisUrl(String);

/// Connects `hub` to the stream at `url`: loads the newest entries, then publishes what
/// the hub is given and reads back what every instance published, until `stop`.
pub async fn attach(
    hub: &Arc<LogHub>,
    url: &str,
    options: StreamOptions,
    stop: CancellationToken,
) -> Result<(), InvalidRedisUrl> {
    let client = redis::Client::open(url).map_err(|e| InvalidRedisUrl(e.to_string()))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(0);
    let publish_conn = client
        .get_connection_manager_lazy(config.clone())
        .map_err(|e| InvalidRedisUrl(e.to_string()))?;
    // Reads block for a while: their own connection, so publishing never waits on them.
    let read_conn = client
        .get_connection_manager_lazy(config)
        .map_err(|e| InvalidRedisUrl(e.to_string()))?;

    let key: Arc<str> = options.key.as_str().into();
    let last_id = backfill(hub, read_conn.clone(), &key, options.backfill).await;
    let (tx, rx) = mpsc::channel(8192);
    hub.set_publisher(tx);
    tokio::spawn(publish(
        hub.clone(),
        publish_conn,
        key.clone(),
        rx,
        options.max_len,
        stop.clone(),
    ));
    tokio::spawn(follow(hub.clone(), read_conn, key, last_id, stop));
    Ok(())
}

/// Loads the newest `count` entries into the hub; returns the id to read on from.
async fn backfill(
    hub: &Arc<LogHub>,
    mut conn: ConnectionManager,
    key: &str,
    count: usize,
) -> String {
    let mut cmd = redis::cmd("XREVRANGE");
    cmd.arg(key).arg("+").arg("-").arg("COUNT").arg(count);
    let reply: Result<StreamRangeReply, String> =
        match tokio::time::timeout(Duration::from_secs(5), cmd.query_async(&mut conn)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("timed out".into()),
        };
    match reply {
        Ok(reply) => {
            let newest = reply.ids.first().map(|e| e.id.clone());
            let mut loaded = 0;
            for e in reply.ids.iter().rev() {
                if let Some(entry) = decode(e.map.get(FIELD)) {
                    hub.record(entry);
                    loaded += 1;
                }
            }
            tracing::info!(entries = loaded, "function logs: loaded from Redis");
            newest.unwrap_or_else(|| "0-0".into())
        }
        Err(e) => {
            tracing::warn!(error = %e, "function logs: Redis unreachable at start; recording locally until it answers");
            hub.set_shared(false);
            "$".into()
        }
    }
}

fn decode(value: Option<&redis::Value>) -> Option<LogEntry> {
    let bytes: Vec<u8> = match value? {
        redis::Value::BulkString(b) => b.clone(),
        redis::Value::SimpleString(s) => s.clone().into_bytes(),
        _ => return None,
    };
    serde_json::from_slice(&bytes).ok()
}

/// Sends queued entries to the stream in batches; a batch Redis refused is recorded
/// locally so that nothing is lost to this instance's followers.
async fn publish(
    hub: Arc<LogHub>,
    mut conn: ConnectionManager,
    key: Arc<str>,
    mut rx: mpsc::Receiver<LogEntry>,
    max_len: usize,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(256);
    loop {
        batch.clear();
        tokio::select! {
            _ = stop.cancelled() => return,
            n = rx.recv_many(&mut batch, 256) => if n == 0 { return },
        }
        let mut pipe = redis::pipe();
        for entry in &batch {
            let Ok(json) = serde_json::to_string(entry) else {
                continue;
            };
            pipe.cmd("XADD")
                .arg(&*key)
                .arg("MAXLEN")
                .arg("~")
                .arg(max_len)
                .arg("*")
                .arg(FIELD)
                .arg(json)
                .ignore();
        }
        let sent = tokio::time::timeout(Duration::from_secs(2), pipe.exec_async(&mut conn)).await;
        let failure = match sent {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("timed out".to_string()),
        };
        if let Some(error) = failure {
            if hub.set_shared(false) {
                tracing::warn!(%error, "function logs: Redis unreachable; recording locally (other instances miss these entries) until it answers");
            }
            for entry in batch.drain(..) {
                hub.record(entry);
            }
        }
    }
}

/// Reads the stream from `last_id` into the hub, forever; reconnects with backoff.
async fn follow(
    hub: Arc<LogHub>,
    mut conn: ConnectionManager,
    key: Arc<str>,
    mut last_id: String,
    stop: CancellationToken,
) {
    let options = StreamReadOptions::default().block(1000).count(512);
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg(&options).arg("STREAMS").arg(&*key).arg(&last_id);
        let read = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(
                Duration::from_secs(4),
                cmd.query_async::<Option<StreamReadReply>>(&mut conn),
            ) => r,
        };
        match read {
            Ok(Ok(reply)) => {
                backoff = Duration::from_millis(100);
                if hub.set_shared(true) {
                    tracing::info!(
                        "function logs: Redis answers again; sharing entries through it"
                    );
                }
                for key in reply.map(|r| r.keys).unwrap_or_default() {
                    for e in key.ids {
                        if let Some(entry) = decode(e.map.get(FIELD)) {
                            hub.record(entry);
                        }
                        last_id = e.id;
                    }
                }
                // "$" means "from now": after a first successful read, from what was seen.
                if last_id == "$" {
                    last_id = latest_id(&mut conn, &key).await.unwrap_or(last_id);
                }
            }
            Ok(Err(e)) => {
                if hub.set_shared(false) {
                    tracing::warn!(error = %e, "function logs: reading from Redis failed; recording locally until it answers");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(_) => {}
        }
    }
}

/// The id of the newest entry of the stream, if any.
async fn latest_id(conn: &mut ConnectionManager, key: &str) -> Option<String> {
    let reply: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await
        .ok()?;
    reply.ids.first().map(|e| e.id.clone())
}
