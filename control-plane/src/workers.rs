//! Workers that registered and keep heartbeating. On PostgreSQL the registry every
//! control-plane replica reads is in the database (`workers`, see
//! [`ControlPlane::register_worker`](crate::ControlPlane::register_worker)) and this is
//! each replica's copy of it, read again every half heartbeat interval. On SQLite (one
//! control plane) it is kept here only: after a restart a worker's next heartbeat answers
//! `known: false` and it registers again.

use reactor_api::Runtime;
use reactor_proto::routing::WorkerEndpoint;
use reactor_worker_link::rendezvous::{self, ENV_CANDIDATES};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often workers heartbeat, and how long one may stay silent before it leaves the table.
/// The defaults (250 ms, 750 ms: three missed heartbeats) take a worker that stopped
/// answering out of every router's table within a second.
#[derive(Clone, Copy, Debug)]
pub struct WorkerTiming {
    pub heartbeat_interval: Duration,
    pub ttl: Duration,
}

impl Default for WorkerTiming {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(250),
            ttl: Duration::from_millis(750),
        }
    }
}

struct Registered {
    runtime: Runtime,
    url: String,
    last_seen: Instant,
    /// SHA-256 of the secret the worker registered with (empty: none).
    secret: Vec<u8>,
}

/// The hex SHA-256 of a worker's secret, as the database's registry keeps it.
pub fn secret_hex(secret: &str) -> String {
    secret_hash(secret)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn secret_hash(secret: &str) -> Vec<u8> {
    use sha2::Digest;
    if secret.is_empty() {
        Vec::new()
    } else {
        sha2::Sha256::digest(secret.as_bytes()).to_vec()
    }
}

/// A registration refused: the id belongs to a live worker with another secret.
#[derive(Debug, thiserror::Error)]
#[error("worker id {0:?} is registered by another worker (another secret)")]
pub struct IdTaken(pub String);

pub struct WorkerRegistry {
    timing: WorkerTiming,
    workers: Mutex<HashMap<String, Registered>>,
    /// Until when [`WorkerRegistry::replace`] only adds workers (after the database was
    /// away: no heartbeat landed meanwhile).
    adding_only_until: Mutex<Option<Instant>>,
}

impl WorkerRegistry {
    pub fn new(timing: WorkerTiming) -> Self {
        Self {
            timing,
            workers: Mutex::new(HashMap::new()),
            adding_only_until: Mutex::new(None),
        }
    }

    pub fn timing(&self) -> WorkerTiming {
        self.timing
    }

    /// Registers (or re-registers) a worker without a secret; true when the table must
    /// change.
    pub fn register(&self, id: &str, runtime: Runtime, url: &str) -> bool {
        self.register_with_secret(id, runtime, url, "")
            .unwrap_or(false)
    }

    /// Registers (or re-registers) a worker with the secret it chose; true when the
    /// table must change. A live id registered with another secret is refused.
    pub fn register_with_secret(
        &self,
        id: &str,
        runtime: Runtime,
        url: &str,
        secret: &str,
    ) -> Result<bool, IdTaken> {
        let Ok(mut workers) = self.workers.lock() else {
            return Ok(false);
        };
        let now = Instant::now();
        let hash = secret_hash(secret);
        match workers.get_mut(id) {
            Some(w) if w.secret != hash && now.duration_since(w.last_seen) < self.timing.ttl => {
                Err(IdTaken(id.to_string()))
            }
            Some(w) if w.runtime == runtime && w.url == url => {
                w.last_seen = now;
                Ok(false)
            }
            _ => {
                workers.insert(
                    id.to_string(),
                    Registered {
                        runtime,
                        url: url.to_string(),
                        last_seen: now,
                        secret: hash,
                    },
                );
                Ok(true)
            }
        }
    }

    /// Records worker `id` as the database's registry took it (that registry decides
    /// whether the id was free); true when the table must change.
    pub fn put(&self, id: &str, runtime: Runtime, url: &str, secret: &str) -> bool {
        let Ok(mut workers) = self.workers.lock() else {
            return false;
        };
        let changed = workers
            .get(id)
            .is_none_or(|w| w.runtime != runtime || w.url != url);
        workers.insert(
            id.to_string(),
            Registered {
                runtime,
                url: url.to_string(),
                last_seen: Instant::now(),
                secret: secret_hash(secret),
            },
        );
        changed
    }

    /// The database answers again after it was away: for a TTL and a heartbeat interval
    /// from now, [`WorkerRegistry::replace`] only adds workers, so that those alive have
    /// the time to heartbeat again before anyone is taken out of the tables.
    pub fn hold_removals(&self) {
        if let Ok(mut until) = self.adding_only_until.lock() {
            *until = Some(Instant::now() + self.timing.ttl + self.timing.heartbeat_interval);
        }
    }

    /// Becomes a copy of the database's live workers (rows of an unknown runtime are
    /// left out), or while removals are held (see [`WorkerRegistry::hold_removals`]) only
    /// takes those it lacks or that changed; true when the table must change.
    pub fn replace(&self, rows: &[crate::store::WorkerRow]) -> bool {
        let remove = self
            .adding_only_until
            .lock()
            .map(|u| u.is_none_or(|t| Instant::now() >= t))
            .unwrap_or(true);
        let Ok(mut workers) = self.workers.lock() else {
            return false;
        };
        let now = Instant::now();
        let mut next: HashMap<String, Registered> = rows
            .iter()
            .filter_map(|r| {
                let runtime = r.runtime.parse::<Runtime>().ok()?;
                Some((
                    r.id.clone(),
                    Registered {
                        runtime,
                        url: r.url.clone(),
                        last_seen: now,
                        secret: from_hex(&r.secret_sha256),
                    },
                ))
            })
            .collect();
        if !remove {
            for (id, w) in workers.iter() {
                next.entry(id.clone()).or_insert_with(|| Registered {
                    runtime: w.runtime,
                    url: w.url.clone(),
                    last_seen: w.last_seen,
                    secret: w.secret.clone(),
                });
            }
        }
        let same = next.len() == workers.len()
            && next.iter().all(|(id, n)| {
                workers
                    .get(id)
                    .is_some_and(|w| w.runtime == n.runtime && w.url == n.url)
            });
        for (id, w) in workers.iter() {
            if !next.contains_key(id) {
                tracing::warn!(worker_id = %id, runtime = %w.runtime, url = %w.url, "worker left the registry (stopped heartbeating or deregistered); removed from the routing table");
            }
        }
        *workers = next;
        !same
    }

    /// The runtime of registered worker `id` when `secret` is the one it registered with.
    pub fn authorize(&self, id: &str, secret: &str) -> Option<Runtime> {
        let workers = self.workers.lock().ok()?;
        let w = workers.get(id)?;
        let hash = secret_hash(secret);
        // Hashes are compared, so the time taken says nothing about the secret.
        (!hash.is_empty() && w.secret == hash).then_some(w.runtime)
    }

    /// Records a heartbeat of the worker that registered `id` with `secret`; false when
    /// no such worker is known (another secret is not that worker).
    pub fn heartbeat(&self, id: &str, secret: &str) -> bool {
        let Ok(mut workers) = self.workers.lock() else {
            return false;
        };
        let hash = secret_hash(secret);
        match workers.get_mut(id) {
            Some(w) if w.secret == hash => {
                w.last_seen = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// Removes a worker that is draining, if `secret` is the one it registered with; true
    /// when it was removed.
    pub fn deregister(&self, id: &str, secret: &str) -> bool {
        let Ok(mut workers) = self.workers.lock() else {
            return false;
        };
        let hash = secret_hash(secret);
        if workers.get(id).is_some_and(|w| w.secret == hash) {
            workers.remove(id);
            true
        } else {
            false
        }
    }

    /// Drops workers silent for longer than the TTL; true when any left.
    pub fn expire(&self) -> bool {
        let Ok(mut workers) = self.workers.lock() else {
            return false;
        };
        let before = workers.len();
        let ttl = self.timing.ttl;
        workers.retain(|id, w| {
            let alive = w.last_seen.elapsed() <= ttl;
            if !alive {
                tracing::warn!(worker_id = %id, runtime = %w.runtime, url = %w.url, "worker stopped heartbeating; removed from the routing table");
            }
            alive
        });
        workers.len() != before
    }

    /// Whether worker `worker_id` is among the first [`ENV_CANDIDATES`] registered workers
    /// of `runtime` in rendezvous order for `deployment_id`: those routers send it to (home,
    /// spill, failover) and builds go to, so the only ones with a reason to load it.
    pub fn is_candidate(&self, worker_id: &str, runtime: Runtime, deployment_id: &str) -> bool {
        let Ok(workers) = self.workers.lock() else {
            return false;
        };
        rendezvous::is_among_first(
            ENV_CANDIDATES,
            workers
                .iter()
                .filter(|(_, w)| w.runtime == runtime)
                .map(|(id, _)| id.as_str()),
            worker_id,
            deployment_id,
        )
    }

    /// The addresses of the first [`ENV_CANDIDATES`] registered workers of `runtime` in
    /// rendezvous order for `deployment_id`: its home first (which is then warm), then
    /// those it fails over to. Only these may read its env (see [`Self::is_candidate`]).
    pub fn urls_for(&self, runtime: Runtime, deployment_id: &str) -> Vec<String> {
        let Ok(workers) = self.workers.lock() else {
            return Vec::new();
        };
        let of_runtime: Vec<(&String, &Registered)> = workers
            .iter()
            .filter(|(_, w)| w.runtime == runtime)
            .collect();
        rendezvous::rank(&of_runtime, |(id, _)| id.as_str(), deployment_id)
            .into_iter()
            .take(ENV_CANDIDATES)
            .map(|(_, w)| w.url.clone())
            .collect()
    }

    /// The healthy workers, in a stable order.
    pub fn endpoints(&self) -> Vec<WorkerEndpoint> {
        let Ok(workers) = self.workers.lock() else {
            return Vec::new();
        };
        let mut list: Vec<WorkerEndpoint> = workers
            .iter()
            .map(|(id, w)| WorkerEndpoint {
                worker_id: id.clone(),
                runtime: w.runtime.as_str().to_string(),
                url: w.url.clone(),
            })
            .collect();
        list.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        list
    }
}

/// `reactor_workers_registered{runtime}`: the registry's workers at scrape time.
#[derive(Debug)]
pub struct RegisteredWorkers(pub std::sync::Weak<WorkerRegistry>);

impl std::fmt::Debug for WorkerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerRegistry")
    }
}

impl reactor_service::metrics::prometheus_client::collector::Collector for RegisteredWorkers {
    fn encode(
        &self,
        mut encoder: reactor_service::metrics::prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use reactor_service::metrics::RuntimeLabels;
        use reactor_service::metrics::prometheus_client::encoding::EncodeMetric;
        use reactor_service::metrics::prometheus_client::metrics::{family::Family, gauge::Gauge};
        let Some(registry) = self.0.upgrade() else {
            return Ok(());
        };
        let family = Family::<RuntimeLabels, Gauge>::default();
        for runtime in [Runtime::Wasm, Runtime::Bun] {
            drop(family.get_or_create(&RuntimeLabels {
                runtime: runtime.to_string(),
            }));
        }
        for w in registry.endpoints() {
            family
                .get_or_create(&RuntimeLabels { runtime: w.runtime })
                .inc();
        }
        family.encode(encoder.encode_descriptor(
            "workers_registered",
            "Workers registered with this control plane and not expired, by runtime",
            None,
            family.metric_type(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> crate::store::WorkerRow {
        crate::store::WorkerRow {
            id: id.into(),
            runtime: "wasm".into(),
            url: format!("http://{id}:7101"),
            secret_sha256: secret_hex("s"),
        }
    }

    fn ids(r: &WorkerRegistry) -> Vec<String> {
        r.endpoints().into_iter().map(|e| e.worker_id).collect()
    }

    /// The copy of the database's registry follows it; right after the database was
    /// away it only takes workers in, for a TTL and a heartbeat interval.
    #[test]
    fn the_copy_follows_the_database_and_holds_removals_after_an_outage() {
        let r = WorkerRegistry::new(WorkerTiming {
            heartbeat_interval: Duration::from_millis(10),
            ttl: Duration::from_millis(40),
        });
        assert!(r.replace(&[row("w1"), row("w2")]));
        assert!(!r.replace(&[row("w2"), row("w1")]), "the same workers");
        assert!(r.authorize("w1", "s").is_some());
        assert!(r.replace(&[row("w1")]));
        assert_eq!(ids(&r), ["w1"]);
        assert!(r.replace(&[row("w1"), row("w2")]));
        r.hold_removals();
        assert!(!r.replace(&[row("w1")]), "nothing removed, nothing changed");
        assert_eq!(ids(&r), ["w1", "w2"]);
        assert!(r.replace(&[row("w3")]), "added while holding");
        assert_eq!(ids(&r), ["w1", "w2", "w3"]);
        std::thread::sleep(Duration::from_millis(60));
        assert!(r.replace(&[row("w3")]));
        assert_eq!(ids(&r), ["w3"]);
    }

    #[test]
    fn silent_workers_expire_and_unknown_ones_are_told() {
        let r = WorkerRegistry::new(WorkerTiming {
            heartbeat_interval: Duration::from_millis(10),
            ttl: Duration::from_millis(50),
        });
        assert!(r.register("w1", Runtime::Wasm, "http://127.0.0.1:1"));
        assert!(
            !r.register("w1", Runtime::Wasm, "http://127.0.0.1:1"),
            "same registration changes nothing"
        );
        assert!(
            r.register("w1", Runtime::Wasm, "http://127.0.0.1:2"),
            "a new address changes the table"
        );
        assert!(r.heartbeat("w1", ""));
        assert!(!r.heartbeat("w2", ""));
        assert!(!r.expire());
        std::thread::sleep(Duration::from_millis(80));
        assert!(r.expire());
        assert!(r.endpoints().is_empty());
        assert!(
            !r.heartbeat("w1", ""),
            "an expired worker must register again"
        );
    }

    #[test]
    fn only_the_registering_worker_heartbeats_and_deregisters_itself() {
        let r = WorkerRegistry::new(WorkerTiming::default());
        r.register_with_secret("w1", Runtime::Wasm, "http://127.0.0.1:1", "the-secret")
            .expect("registers");
        assert!(
            !r.heartbeat("w1", "another"),
            "a stranger's heartbeat is not the worker's"
        );
        assert!(
            !r.deregister("w1", "another"),
            "a stranger cannot take it out"
        );
        assert_eq!(r.endpoints().len(), 1);
        assert!(r.heartbeat("w1", "the-secret"));
        assert!(r.deregister("w1", "the-secret"));
        assert!(r.endpoints().is_empty());
    }

    #[test]
    fn a_deployment_has_its_top_ranked_workers_of_its_runtime_as_candidates() {
        let r = WorkerRegistry::new(WorkerTiming::default());
        let ids: Vec<String> = (0..12).map(|i| format!("w{i:02}")).collect();
        for id in &ids {
            r.register(id, Runtime::Wasm, &format!("http://{id}:7080"));
        }
        r.register("b1", Runtime::Bun, "http://b1:7080");
        for i in 0..30 {
            let d = format!("dep_{i}");
            let ranked = rendezvous::rank(&ids, |id| id.as_str(), &d);
            let urls: Vec<String> = ranked
                .iter()
                .take(ENV_CANDIDATES)
                .map(|id| format!("http://{id}:7080"))
                .collect();
            assert_eq!(r.urls_for(Runtime::Wasm, &d), urls, "{d}: home first");
            for (place, id) in ranked.iter().enumerate() {
                assert_eq!(
                    r.is_candidate(id, Runtime::Wasm, &d),
                    place < ENV_CANDIDATES,
                    "{id} is number {place} for {d}"
                );
            }
            assert!(
                !r.is_candidate("b1", Runtime::Wasm, &d),
                "a worker of another runtime"
            );
            assert!(
                !r.is_candidate("w99", Runtime::Wasm, &d),
                "an unknown worker"
            );
            // Alone of its runtime: the candidate for everything.
            assert!(r.is_candidate("b1", Runtime::Bun, &d));
            assert_eq!(r.urls_for(Runtime::Bun, &d), ["http://b1:7080"]);
        }
        assert!(r.urls_for(Runtime::Lambda, "dep_0").is_empty());
    }
}
