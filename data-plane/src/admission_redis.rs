//! [`RedisAdmission`]: `max_concurrency` counted across all routers, as leases in Redis.
//!
//! **Leases.** Each function has a sorted set `reactor:conc:{org/function}` (the braces are
//! a cluster hash tag) whose members are lease ids (router id, a per-process nonce and a
//! counter) scored by the lease's expiry in milliseconds of the Redis server's clock
//! (`TIME` inside the scripts, so the routers' clocks do not matter). Taking a permit is
//! one Lua script, atomic on the server: drop the expired members, and if fewer than the
//! limit remain add the lease at `now + ttl`, make sure the key outlives it (`2 × ttl`,
//! so that idle keys vanish) and answer 1; else answer 0. A permit's drop removes its
//! lease (`ZREM`, best effort, from a background task).
//!
//! **Renewal.** A background task renews every live lease of this router every `ttl / 3`
//! (one script call per batch of leases, re-scoring only leases still present), so a
//! request that runs longer than the TTL stays counted, and a router that dies leaks its
//! slots for at most the TTL. The same task sends the releases and, while degraded,
//! probes Redis with backoff (100 ms doubling to 2 s).
//!
//! **Local bound first.** Every permit also takes a slot of an inner [`LocalAdmission`]
//! under the same limit: a router that alone runs `limit` requests of a function refuses
//! the next one without asking Redis, and requests admitted during an outage keep counting
//! against this router's share afterwards.
//!
//! **Failure mode: fail open to the local cap.** Every Redis call is bounded by
//! `call_timeout`. When a call fails or times out, the router counts per router only
//! (through the inner [`LocalAdmission`]) until Redis answers again: one warning when
//! the outage starts, one "recovered" line when it ends, and [`RedisAdmission::degraded`]
//! in between. Answering 503 instead would make the counter a single point of failure of
//! the whole invoke path; failing open to the local cap keeps functions available and
//! still bounded, only looser: with N routers a function may run up to
//! `N × max_concurrency` requests during the outage. While degraded the request path does
//! not call Redis at all (no per-request timeout); the background probe ends the outage.
//! A call that timed out may still have taken its lease on the server: its release is
//! sent anyway, and at worst the lease expires after the TTL.
//!
//! One Redis server (or a primary with replicas), not a cluster: a renewal batch names the
//! keys of several functions.

use crate::admission::{Admission, AdmissionError, LocalAdmission, Permit};
use async_trait::async_trait;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

/// Takes a lease if the set holds fewer than the limit. KEYS[1] the set; ARGV limit,
/// lease id, ttl in ms. Answers 1 (taken) or 0 (at the cap).
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
if redis.call('PTTL', KEYS[1]) < 2 * ttl then
  redis.call('PEXPIRE', KEYS[1], 2 * ttl)
end
return 1
";

/// Pushes back the expiry of leases still present. ARGV[1] the ttl in ms; KEYS[i] is the
/// set of lease ARGV[i + 1]. Answers how many leases had already expired (lost).
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local lost = 0
for i, key in ipairs(KEYS) do
  if redis.call('ZSCORE', key, ARGV[i + 1]) then
    redis.call('ZADD', key, 'XX', now + ttl, ARGV[i + 1])
    if redis.call('PTTL', key) < 2 * ttl then
      redis.call('PEXPIRE', key, 2 * ttl)
    end
  else
    lost = lost + 1
  end
end
return lost
";

/// Leases renewed per script call.
const RENEW_BATCH: usize = 500;
/// Releases sent per pipeline.
const RELEASE_BATCH: usize = 500;
/// Backoff of the probe while degraded.
const PROBE_MIN: Duration = Duration::from_millis(100);
const PROBE_MAX: Duration = Duration::from_secs(2);

/// Where the counter lives and how it behaves.
#[derive(Clone)]
pub struct RedisAdmissionConfig {
    /// `redis://[:password@]host:port[/db]`.
    pub url: String,
    /// How long a lease lives without renewal (default 10 s): what a dead router leaks.
    pub lease_ttl: Duration,
    /// Bound of every Redis call (default 250 ms); past it the router counts locally.
    pub call_timeout: Duration,
    /// Prefix of this router's lease ids (shows in Redis which router holds a slot).
    pub router_id: String,
}

impl RedisAdmissionConfig {
    pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
    pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(250);

    /// The defaults for `url` and `router_id`.
    pub fn new(url: impl Into<String>, router_id: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            lease_ttl: Self::DEFAULT_LEASE_TTL,
            call_timeout: Self::DEFAULT_CALL_TIMEOUT,
            router_id: router_id.into(),
        }
    }
}

impl std::fmt::Debug for RedisAdmissionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisAdmissionConfig")
            .field("url", &"<hidden>")
            .field("lease_ttl", &self.lease_ttl)
            .field("call_timeout", &self.call_timeout)
            .field("router_id", &self.router_id)
            .finish()
    }
}

/// This router's live leases, shared with the permits that hold them.
struct Leases {
    /// Lease id → Redis key, renewed by the background task.
    live: Mutex<HashMap<String, String>>,
    /// (lease id, Redis key) to `ZREM`, sent by the background task.
    released: mpsc::UnboundedSender<(String, String)>,
}

impl Leases {
    fn live(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A lease held by a permit; dropping it stops its renewal and releases it.
struct Lease {
    leases: Arc<Leases>,
    id: String,
    key: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.leases.live().remove(&self.id);
        // Fails only once the background task is gone (shut down): the lease expires.
        let _ = self
            .leases
            .released
            .send((std::mem::take(&mut self.id), std::mem::take(&mut self.key)));
    }
}

/// The concurrency cap counted in Redis for all routers; see the module doc.
pub struct RedisAdmission {
    conn: ConnectionManager,
    /// The runtime that made the connection: every Redis call runs there, so that the
    /// connection's tasks and timers do not depend on the runtime of a request.
    runtime: Handle,
    lease_ttl_ms: u64,
    call_timeout: Duration,
    /// `{router_id}:{nonce}:`; the nonce keeps a restarted router's ids apart.
    lease_prefix: String,
    next_lease: AtomicU64,
    local: LocalAdmission,
    leases: Arc<Leases>,
    degraded: AtomicBool,
    /// Wakes the background task when an outage starts, so that it probes at once.
    outage: Arc<Notify>,
    stop: watch::Sender<bool>,
    acquire: Arc<Script>,
    renew: Arc<Script>,
}

impl RedisAdmission {
    /// Builds the counter and starts its background task (on the current runtime). Does
    /// not fail when Redis is down: it then starts degraded and keeps trying. Only an
    /// invalid URL is an error.
    pub async fn connect(config: RedisAdmissionConfig) -> Result<Arc<Self>, AdmissionError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| AdmissionError::InvalidUrl(e.to_string()))?;
        // No retries inside the manager: the background probe paces reconnection, and a
        // request never waits for more than one attempt.
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.call_timeout))
            .set_response_timeout(Some(config.call_timeout))
            .set_number_of_retries(0);
        // Lazy: connects on the first call, so creating it does not need Redis up.
        let conn = client
            .get_connection_manager_lazy(manager)
            .map_err(|e| AdmissionError::Unavailable(e.to_string()))?;
        let (released, released_rx) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(false);
        let lease_ttl_ms = u64::try_from(config.lease_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let this = Arc::new(Self {
            conn,
            runtime: Handle::current(),
            lease_ttl_ms,
            call_timeout: config.call_timeout,
            lease_prefix: format!("{}:{:016x}:", config.router_id, rand::random::<u64>()),
            next_lease: AtomicU64::new(0),
            local: LocalAdmission::default(),
            leases: Arc::new(Leases {
                live: Mutex::new(HashMap::new()),
                released,
            }),
            degraded: AtomicBool::new(false),
            outage: Arc::new(Notify::new()),
            stop,
            acquire: Arc::new(Script::new(ACQUIRE)),
            renew: Arc::new(Script::new(RENEW)),
        });
        // One probe now, so that a router started while Redis is down says so at once.
        if this.probe().await {
            tracing::info!(
                router_id = %config.router_id,
                lease_ttl_ms,
                "redis concurrency counter connected"
            );
        }
        let renew_every = (config.lease_ttl / 3).max(Duration::from_millis(10));
        tokio::spawn(maintain(
            Arc::downgrade(&this),
            this.outage.clone(),
            released_rx,
            stopped,
            renew_every,
        ));
        Ok(this)
    }

    /// Whether caps are counted per router because Redis does not answer.
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    /// Stops renewing (and releasing); the leases held then expire as if this router had
    /// died. Later permits are counted locally only. For tests and process exit.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    fn is_shut_down(&self) -> bool {
        *self.stop.borrow()
    }

    /// Records a failed call: the outage starts (one warning) or goes on.
    fn failed(&self, error: &str) {
        if !self.degraded.swap(true, Ordering::AcqRel) {
            self.outage.notify_one();
            tracing::warn!(
                error,
                "redis concurrency counter unavailable: caps now count per router until it answers"
            );
        } else {
            tracing::debug!(error, "redis call failed while degraded");
        }
    }

    /// Records a call that succeeded: the outage, if any, ends.
    fn succeeded(&self) {
        if self.degraded.swap(false, Ordering::AcqRel) {
            tracing::info!("redis concurrency counter recovered: caps count across routers again");
        }
    }

    /// Runs one Redis call on the counter's runtime, bounded by `call_timeout`.
    async fn call<T: Send + 'static>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>> + Send + 'static,
    ) -> Result<T, String> {
        let timeout = self.call_timeout;
        match self
            .runtime
            .spawn(async move { tokio::time::timeout(timeout, call).await })
            .await
        {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(_)) => Err(format!("no answer within {} ms", timeout.as_millis())),
            Err(e) => Err(format!("redis call task failed: {e}")),
        }
    }

    /// Pings Redis and records the outcome; true if it answered.
    async fn probe(&self) -> bool {
        let mut conn = self.conn.clone();
        let answer = self
            .call(async move {
                let ping = redis::cmd("PING");
                ping.query_async::<()>(&mut conn).await
            })
            .await;
        match answer {
            Ok(()) => {
                self.succeeded();
                true
            }
            Err(e) => {
                self.failed(&e);
                false
            }
        }
    }

    /// Runs the acquire script. The lease is registered (and on a later drop, released)
    /// inside the spawned call, so that a request that goes away mid-call, or a call that
    /// times out after the server took the lease, still gives it back.
    async fn take_lease(&self, key: &str, limit: u32) -> Result<Option<Lease>, String> {
        let id = format!(
            "{}{}",
            self.lease_prefix,
            self.next_lease.fetch_add(1, Ordering::Relaxed)
        );
        let rkey = redis_key(key);
        let (script, mut conn, leases) =
            (self.acquire.clone(), self.conn.clone(), self.leases.clone());
        let (ttl_ms, timeout) = (self.lease_ttl_ms, self.call_timeout);
        let call = async move {
            let mut invocation = script.prepare_invoke();
            invocation
                .key(rkey.as_str())
                .arg(limit)
                .arg(id.as_str())
                .arg(ttl_ms);
            let answer =
                tokio::time::timeout(timeout, invocation.invoke_async::<i64>(&mut conn)).await;
            match answer {
                Ok(Ok(1)) => {
                    leases.live().insert(id.clone(), rkey.clone());
                    Ok(Some(Lease {
                        leases,
                        id,
                        key: rkey,
                    }))
                }
                Ok(Ok(_)) => Ok(None),
                Ok(Err(e)) => {
                    // The script may have run before the connection failed.
                    let _ = leases.released.send((id, rkey));
                    Err(e.to_string())
                }
                Err(_) => {
                    let _ = leases.released.send((id, rkey));
                    Err(format!("no answer within {} ms", timeout.as_millis()))
                }
            }
        };
        match self.runtime.spawn(call).await {
            Ok(answer) => answer,
            Err(e) => Err(format!("redis call task failed: {e}")),
        }
    }

    /// Renews every live lease of this router.
    async fn renew_all(&self) {
        let live: Vec<(String, String)> = self
            .leases
            .live()
            .iter()
            .map(|(id, key)| (id.clone(), key.clone()))
            .collect();
        for batch in live.chunks(RENEW_BATCH) {
            let (script, mut conn, batch) = (self.renew.clone(), self.conn.clone(), batch.to_vec());
            let ttl_ms = self.lease_ttl_ms;
            let answer = self
                .call(async move {
                    let mut invocation = script.prepare_invoke();
                    invocation.arg(ttl_ms);
                    for (id, key) in &batch {
                        invocation.key(key.as_str()).arg(id.as_str());
                    }
                    invocation.invoke_async::<u64>(&mut conn).await
                })
                .await;
            match answer {
                Ok(lost) => {
                    self.succeeded();
                    if lost > 0 {
                        // Renewal came too late (an outage longer than the TTL): their
                        // slots may have gone to other requests.
                        tracing::warn!(
                            lost,
                            "leases expired before renewal; their requests no longer count"
                        );
                    }
                }
                Err(e) => {
                    self.failed(&e);
                    return;
                }
            }
        }
    }

    /// Removes released leases from Redis (best effort: they expire anyway).
    async fn release(&self, batch: Vec<(String, String)>) {
        let mut pipe = redis::pipe();
        for (id, key) in &batch {
            pipe.cmd("ZREM").arg(key.as_str()).arg(id.as_str()).ignore();
        }
        let mut conn = self.conn.clone();
        match self
            .call(async move { pipe.exec_async(&mut conn).await })
            .await
        {
            Ok(()) => self.succeeded(),
            Err(e) => {
                tracing::debug!(error = %e, leases = batch.len(), "releasing leases failed; they expire after their ttl");
                self.failed(&e);
            }
        }
    }
}

/// The sorted set of a function's leases.
fn redis_key(key: &str) -> String {
    format!("reactor:conc:{{{key}}}")
}

#[async_trait]
impl Admission for RedisAdmission {
    async fn try_acquire(&self, key: &str, limit: u32) -> Result<Option<Permit>, AdmissionError> {
        // This router alone at the cap: refused without asking Redis.
        let Some(local) = self.local.try_acquire(key, limit).await? else {
            return Ok(None);
        };
        if self.degraded() || self.is_shut_down() {
            return Ok(Some(local));
        }
        match self.take_lease(key, limit).await {
            Ok(Some(lease)) => {
                self.succeeded();
                Ok(Some(Permit::new((local, lease))))
            }
            Ok(None) => {
                self.succeeded();
                Ok(None)
            }
            Err(e) => {
                // Fail open to the local cap (see the module doc).
                self.failed(&e);
                Ok(Some(local))
            }
        }
    }
}

/// The background task: renewals, releases and, while degraded, probes. Ends when the
/// counter is dropped or shut down.
async fn maintain(
    this: Weak<RedisAdmission>,
    outage: Arc<Notify>,
    mut released: mpsc::UnboundedReceiver<(String, String)>,
    mut stop: watch::Receiver<bool>,
    renew_every: Duration,
) {
    let mut renew = tokio::time::interval(renew_every);
    renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut backoff = PROBE_MIN;
    let mut next_probe = Instant::now() + backoff;
    let mut was_degraded = false;
    loop {
        let degraded = match this.upgrade() {
            Some(a) if !a.is_shut_down() => a.degraded(),
            _ => return,
        };
        if degraded && !was_degraded {
            backoff = PROBE_MIN;
            next_probe = Instant::now() + backoff;
        }
        was_degraded = degraded;
        tokio::select! {
            // Shut down, or the counter dropped.
            _ = stop.changed() => return,
            // An outage started: loop, to schedule the first probe.
            _ = outage.notified() => {}
            first = released.recv() => {
                let Some(first) = first else { return };
                let mut batch = vec![first];
                while batch.len() < RELEASE_BATCH {
                    match released.try_recv() {
                        Ok(lease) => batch.push(lease),
                        Err(_) => break,
                    }
                }
                let Some(a) = this.upgrade() else { return };
                a.release(batch).await;
            }
            _ = renew.tick() => {
                let Some(a) = this.upgrade() else { return };
                a.renew_all().await;
            }
            _ = tokio::time::sleep_until(next_probe), if degraded => {
                let Some(a) = this.upgrade() else { return };
                backoff = if a.probe().await { PROBE_MIN } else { (backoff * 2).min(PROBE_MAX) };
                next_probe = Instant::now() + backoff;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_set_per_function_with_a_hash_tag() {
        assert_eq!(redis_key("acme/f"), "reactor:conc:{acme/f}");
    }

    #[test]
    fn the_config_debug_hides_the_url() {
        let c = RedisAdmissionConfig::new("redis://:secret@127.0.0.1:6379", "r1");
        assert!(!format!("{c:?}").contains("secret"));
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
        assert_eq!(c.call_timeout, Duration::from_millis(250));
    }
}
