//! `RedisAdmission` against the real Redis at `redis://127.0.0.1:6379` (started by
//! `.ci/run`). Two instances stand for two routers; every test counts its own function
//! keys, so tests run in parallel without seeing each other.

use reactor_data_plane::admission::{Admission, AdmissionError, Permit};
use reactor_data_plane::admission_redis::{RedisAdmission, RedisAdmissionConfig};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// A function key no other test (or earlier run) uses.
fn unique_key(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("test-{}-{nanos}/{name}", std::process::id())
}

/// A router's counter on the real Redis; fails the test if Redis does not answer.
async fn router(id: &str, lease_ttl: Duration) -> Arc<RedisAdmission> {
    let mut config = RedisAdmissionConfig::new(REDIS_URL, id);
    config.lease_ttl = lease_ttl;
    // Generous: a loaded CI machine must not push the test into degraded mode.
    config.call_timeout = Duration::from_secs(2);
    let admission = RedisAdmission::connect(config)
        .await
        .expect("connecting the redis counter");
    assert!(
        !admission.degraded(),
        "redis at {REDIS_URL} is not answering: these tests need a real redis-server there \
         (start it with `redis-server --port 6379`)"
    );
    admission
}

async fn acquire(a: &RedisAdmission, key: &str, limit: u32) -> Option<Permit> {
    a.try_acquire(key, limit).await.expect("try_acquire")
}

/// Polls until a permit is granted or `within` has passed.
async fn acquire_within(
    a: &RedisAdmission,
    key: &str,
    limit: u32,
    within: Duration,
) -> Option<Permit> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(permit) = acquire(a, key, limit).await {
            return Some(permit);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_share_one_cap() {
    let key = unique_key("shared");
    let a = router("router-a", RedisAdmissionConfig::DEFAULT_LEASE_TTL).await;
    let b = router("router-b", RedisAdmissionConfig::DEFAULT_LEASE_TTL).await;

    let a1 = acquire(&a, &key, 3).await.expect("a: first permit");
    let _a2 = acquire(&a, &key, 3).await.expect("a: second permit");
    let _b1 = acquire(&b, &key, 3).await.expect("b: third permit");
    assert!(
        acquire(&a, &key, 3).await.is_none(),
        "a: a fourth permit over a cap of 3"
    );
    assert!(
        acquire(&b, &key, 3).await.is_none(),
        "b: a fourth permit over a cap of 3"
    );
    // Another function has its own count.
    assert!(acquire(&b, &unique_key("other"), 1).await.is_some());

    // Release is asynchronous: b gets the slot a gave back within a second.
    drop(a1);
    let _b2 = acquire_within(&b, &key, 3, Duration::from_secs(1))
        .await
        .expect("b: the slot a released");
    assert!(!a.degraded() && !b.degraded());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_of_a_dead_router_expire() {
    let key = unique_key("expiry");
    let ttl = Duration::from_millis(600);
    let a = router("router-a", ttl).await;
    let b = router("router-b", ttl).await;

    let _held = [
        acquire(&a, &key, 2).await.expect("a: first permit"),
        acquire(&a, &key, 2).await.expect("a: second permit"),
    ];
    assert!(acquire(&b, &key, 2).await.is_none(), "b: over the cap");

    // a "crashes": its leases are neither renewed nor released, yet its permits live on.
    a.shutdown();
    let started = Instant::now();
    let _b1 = acquire_within(&b, &key, 2, Duration::from_secs(3))
        .await
        .expect("b: a slot once a's leases expired");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "a's leases went away sooner than their ttl ({:?})",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_permits_are_renewed_past_their_ttl() {
    let key = unique_key("renewal");
    let ttl = Duration::from_millis(600);
    let a = router("router-a", ttl).await;
    let b = router("router-b", ttl).await;

    let held = acquire(&a, &key, 1).await.expect("a: the one permit");
    // For more than three ttls, b is refused every time it asks.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert!(
            acquire(&b, &key, 1).await.is_none(),
            "b got a permit while a still held the only one"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!a.degraded(), "a lost redis while renewing");

    drop(held);
    let _b1 = acquire_within(&b, &key, 1, Duration::from_secs(1))
        .await
        .expect("b: the permit a released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_cap_holds_per_router() {
    // Nothing listens on port 1: the counter starts degraded and does not fail.
    let mut config = RedisAdmissionConfig::new("redis://127.0.0.1:1", "router-down");
    config.call_timeout = Duration::from_millis(200);
    let a = RedisAdmission::connect(config)
        .await
        .expect("a counter whose redis is down still starts");
    assert!(a.degraded());

    let key = unique_key("degraded");
    let first = acquire(&a, &key, 2).await.expect("first local permit");
    let _second = acquire(&a, &key, 2).await.expect("second local permit");
    assert!(acquire(&a, &key, 2).await.is_none(), "over the local cap");
    drop(first);
    assert!(
        acquire(&a, &key, 2).await.is_some(),
        "a dropped local permit frees its slot at once"
    );
    assert!(a.degraded());
}

#[tokio::test]
async fn an_invalid_url_is_an_error() {
    let config = RedisAdmissionConfig::new("not a redis url", "router-x");
    assert!(matches!(
        RedisAdmission::connect(config).await,
        Err(AdmissionError::InvalidUrl(_))
    ));
}
