//! Function logs shared through the real Redis at 127.0.0.1:6379 (`logs_redis.rs`): two
//! control-plane hubs see each other's entries once each, a new one loads the history,
//! and one whose Redis is away still records locally.

use reactor_api::logs::{LogEntry, LogSink};
use reactor_control_plane::logs::{LogHub, LogRetention};
use reactor_control_plane::logs_redis::{StreamOptions, attach};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const REDIS: &str = "redis://127.0.0.1:6379";

fn options(key: &str) -> StreamOptions {
    StreamOptions {
        key: key.to_string(),
        ..StreamOptions::default()
    }
}

async fn hub_on(url: &str, key: &str, stop: &CancellationToken) -> Arc<LogHub> {
    let hub = LogHub::new(LogRetention::default());
    attach(&hub, url, options(key), stop.clone())
        .await
        .expect("valid url");
    hub
}

async fn messages_eventually(hub: &LogHub, org: &str, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got: Vec<String> = hub
            .history(org, "f", None)
            .iter()
            .map(|e| e.message.clone())
            .collect();
        if got.len() >= n || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_entries_and_a_new_one_loads_the_history() {
    let mut probe = redis::Client::open(REDIS)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is not reachable at 127.0.0.1:6379, and this test needs it: start it with `redis-server --daemonize yes`");
    let key = format!(
        "reactor:test-logs:{}:{}",
        std::process::id(),
        ulid::Ulid::new()
    );
    let org = "acme";
    let stop = CancellationToken::new();
    let a = hub_on(REDIS, &key, &stop).await;
    let b = hub_on(REDIS, &key, &stop).await;

    a.emit(LogEntry::event(org, "f", Some("dep_1"), "from a"));
    b.emit(LogEntry::event(org, "f", Some("dep_1"), "from b"));
    for hub in [&a, &b] {
        let mut got = messages_eventually(hub, org, 2).await;
        got.sort();
        assert_eq!(
            got,
            vec!["from a", "from b"],
            "each entry once, on every instance"
        );
    }

    // A new instance (a restarted control plane) starts with the history.
    let c = hub_on(REDIS, &key, &stop).await;
    let got = messages_eventually(&c, org, 2).await;
    assert_eq!(got.len(), 2, "history loaded from Redis: {got:?}");
    stop.cancel();
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut probe)
        .await
        .expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_entries_are_recorded_locally() {
    let stop = CancellationToken::new();
    let hub = hub_on("redis://127.0.0.1:1", "reactor:test-logs:down", &stop).await;
    hub.emit(LogEntry::event("acme", "f", None, "kept here"));
    let got = messages_eventually(&hub, "acme", 1).await;
    assert_eq!(got, vec!["kept here"]);
    stop.cancel();
    assert!(
        attach(&hub, "not a url", options("k"), stop).await.is_err(),
        "an invalid URL is refused"
    );
}
