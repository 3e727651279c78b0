//! The warm pool of one deployment: processes started on demand (a cold start), reused
//! while warm, each serving up to `per_process` requests at once; the pool grows up to
//! `max_processes`, then requests wait in a bounded queue, then get 429. Idle processes
//! are reaped after the idle TTL, down to `min_instances` while the deployment is live; a
//! retired pool (its function promoted another deployment) stops each process once it has
//! been idle for [`RETIRED_GRACE`], which leaves routers time to see the new table. When
//! the table no longer lists the deployment, [`Pool::stop_all`] stops its processes at once.

use crate::process::{Process, Start};
use reactor_api::pool::Pool as Shape;
use reactor_api::{DeploymentSpec, InvokeError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument;

/// Bounds of a pool, from the worker's configuration.
#[derive(Clone, Copy, Debug)]
pub struct PoolLimits {
    pub max_processes: usize,
    pub per_process: usize,
    pub queue: usize,
    pub idle_ttl: Duration,
}

impl PoolLimits {
    /// These limits as the deployment's manifest `pool` shapes them. A pool's size counts
    /// requests at once; it is held on as few processes as can hold it (each serving up to
    /// `per_process`), never more processes than this worker allows:
    /// - static: `workers` at once (the processes are kept started: the control plane
    ///   made them the deployment's `min_instances`), `buffer` queued, then 429;
    /// - lazy: up to `max_size` at once, processes idle for `idle_ttl_secs` stopped;
    /// - adaptive, or none: the worker's own limits (an adaptive pool is sized by routers).
    pub fn for_pool(self, pool: Option<&Shape>) -> PoolLimits {
        let fit = |slots: u32| {
            let slots = (slots as usize).max(1);
            let processes = slots
                .div_ceil(self.per_process.max(1))
                .clamp(1, self.max_processes.max(1));
            (processes, slots.div_ceil(processes).min(self.per_process))
        };
        match pool {
            Some(Shape::Static { workers, buffer }) => {
                let (max_processes, per_process) = fit(*workers);
                PoolLimits {
                    max_processes,
                    per_process,
                    queue: *buffer as usize,
                    ..self
                }
            }
            Some(Shape::Lazy {
                max_size,
                idle_ttl_secs,
            }) => {
                let (max_processes, per_process) = fit(*max_size);
                PoolLimits {
                    max_processes,
                    per_process,
                    idle_ttl: Duration::from_secs(*idle_ttl_secs),
                    ..self
                }
            }
            Some(Shape::Adaptive { .. } | Shape::Inline) | None => self,
        }
    }
}

/// How long a process of a retired deployment may stay idle before it is stopped: routers
/// may still send it requests until they have the new routing table.
pub const RETIRED_GRACE: Duration = Duration::from_secs(2);

#[derive(Default)]
struct State {
    processes: Vec<Arc<Process>>,
    /// Processes being started.
    starting: usize,
    /// Requests waiting for a slot.
    waiting: usize,
}

pub struct Pool {
    pub spec: Arc<DeploymentSpec>,
    pub bundle: PathBuf,
    /// What the processes import: the entrypoint, or its prebundled file.
    entry: String,
    limits: PoolLimits,
    /// The env the deployment pinned (secrets decrypted), for every process it starts.
    pub env: Arc<BTreeMap<String, String>>,
    state: Mutex<State>,
    /// Woken when a slot frees or a process starts or ends.
    changed: Notify,
    retired: AtomicBool,
    /// Prepared as the live deployment: `min_instances` are kept.
    live: AtomicBool,
}

/// A slot on a process, held until the response body is done.
pub struct Lease {
    pool: Arc<Pool>,
    pub process: Arc<Process>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.process.touch();
        self.process.release();
        self.pool.changed.notify_waiters();
    }
}

/// Counts a process being started until it is in the pool or failed, also when the
/// starting request is cancelled.
struct Starting<'a>(&'a Pool);

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.state.lock() {
            s.starting -= 1;
        }
        self.0.changed.notify_waiters();
    }
}

/// Counts a request waiting in the queue, also when it is cancelled.
struct Waiting<'a>(&'a Pool);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.state.lock() {
            s.waiting -= 1;
        }
    }
}

enum Step {
    Take(Lease),
    Spawn,
    Wait,
}

impl Pool {
    pub fn new(
        spec: Arc<DeploymentSpec>,
        bundle: PathBuf,
        entry: String,
        limits: PoolLimits,
        env: Arc<BTreeMap<String, String>>,
    ) -> Arc<Self> {
        let limits = limits.for_pool(spec.pool.as_ref());
        Arc::new(Self {
            env,
            spec,
            bundle,
            entry,
            limits,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            retired: AtomicBool::new(false),
            live: AtomicBool::new(false),
        })
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Another deployment of the function went live: processes stop once idle for
    /// [`RETIRED_GRACE`] (see [`Pool::reap`]).
    pub fn retire(&self) {
        self.live.store(false, Ordering::Release);
        self.retired.store(true, Ordering::Release);
    }

    /// The deployment is no longer live (deleted, or superseded): every process stops
    /// now, a busy one once its requests end. The pool stays retired, so that a process a
    /// late request starts stops after [`RETIRED_GRACE`].
    pub fn stop_all(&self) {
        self.retire();
        let Ok(s) = self.state.lock() else {
            return;
        };
        for p in s.processes.iter().filter(|p| !p.stopping()) {
            tracing::info!(
                org = %self.spec.org, function = %self.spec.function,
                deployment_id = %self.spec.deployment_id, process = p.id,
                inflight = p.inflight.load(Ordering::Acquire),
                "stopping a bun process: its deployment was retired"
            );
            // Under the state lock: no request can take it meanwhile.
            p.drain();
        }
    }

    /// This deployment is (again) the live one.
    pub fn make_live(&self) {
        self.retired.store(false, Ordering::Release);
        self.live.store(true, Ordering::Release);
    }

    /// Stops a process, saying why.
    fn stop(&self, p: &Process, why: &str) {
        tracing::info!(
            org = %self.spec.org, function = %self.spec.function,
            deployment_id = %self.spec.deployment_id, process = p.id,
            "stopping a bun process: {why}"
        );
        p.kill();
    }

    /// A slot for one request, starting a process when none has room (then the request
    /// was cold). Waits in the queue until `deadline` when the pool is at its maximum.
    pub async fn acquire(
        self: &Arc<Self>,
        launcher: &crate::launcher::Launcher,
        env: &BTreeMap<String, String>,
        deadline: Instant,
    ) -> Result<(Lease, bool), InvokeError> {
        let queued_at = Instant::now();
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let step = self.step()?;
            match step {
                Step::Take(lease) => return Ok((lease, false)),
                Step::Spawn => return self.spawn(launcher, env, deadline).await,
                Step::Wait => {
                    let waiting = Waiting(self);
                    let woke = tokio::time::timeout_at(deadline, notified).await;
                    drop(waiting);
                    if woke.is_err() {
                        return Err(InvokeError::TooManyRequests {
                            message: format!(
                                "{} processes busy; waited {} ms in the queue",
                                self.limits.max_processes,
                                queued_at.elapsed().as_millis()
                            ),
                        });
                    }
                }
            }
        }
    }

    fn step(self: &Arc<Self>) -> Result<Step, InvokeError> {
        let mut s = self.state.lock().map_err(|_| InvokeError::Unavailable {
            message: "worker state poisoned".into(),
        })?;
        s.processes.retain(|p| !p.exited());
        let best = s
            .processes
            .iter()
            .filter(|p| !p.stopping())
            .map(|p| (p.inflight.load(Ordering::Acquire), p))
            .filter(|(n, _)| *n < self.limits.per_process)
            .min_by_key(|(n, _)| *n)
            .map(|(_, p)| p.clone());
        if let Some(process) = best {
            process.inflight.fetch_add(1, Ordering::AcqRel);
            return Ok(Step::Take(Lease {
                pool: self.clone(),
                process,
            }));
        }
        let running = s.processes.iter().filter(|p| !p.stopping()).count();
        let room = running + s.starting < self.limits.max_processes;
        // A process being started will take `per_process` of the waiting requests: start
        // another only when they are more than that.
        let covered = s.starting * self.limits.per_process > s.waiting;
        // With no queue at all, a request that would wait for a starting process starts
        // another instead (while there is room).
        if room && (!covered || self.limits.queue == 0) {
            s.starting += 1;
            return Ok(Step::Spawn);
        }
        if s.waiting >= self.limits.queue {
            return Err(InvokeError::TooManyRequests {
                message: format!(
                    "{} processes of {} concurrent requests each are busy and {} requests are queued",
                    running + s.starting,
                    self.limits.per_process,
                    s.waiting
                ),
            });
        }
        s.waiting += 1;
        Ok(Step::Wait)
    }

    /// Its processes now, for `reactor_pool_*`.
    pub fn stat(&self) -> reactor_service::metrics::PoolStat {
        let mut stat = reactor_service::metrics::PoolStat {
            org: self.spec.org.clone(),
            function: self.spec.function.clone(),
            capacity: self.limits.max_processes as u64,
            ..Default::default()
        };
        if let Ok(s) = self.state.lock() {
            for p in &s.processes {
                if p.inflight.load(Ordering::Relaxed) > 0 {
                    stat.busy += 1;
                } else {
                    stat.idle += 1;
                }
            }
            stat.queued = s.waiting as u64;
        }
        stat
    }

    async fn spawn(
        self: &Arc<Self>,
        launcher: &crate::launcher::Launcher,
        env: &BTreeMap<String, String>,
        deadline: Instant,
    ) -> Result<(Lease, bool), InvokeError> {
        let starting = Starting(self);
        let started = std::time::Instant::now();
        let span = reactor_service::trace_span!(
            "cold_start",
            reactor.deployment = %self.spec.deployment_id
        );
        let result = Process::spawn(
            launcher,
            Start {
                spec: &self.spec,
                bundle: &self.bundle,
                entry: &self.entry,
                env: env.clone(),
                deadline,
            },
        )
        .instrument(span)
        .await;
        let mut s = self.state.lock().map_err(|_| InvokeError::Unavailable {
            message: "worker state poisoned".into(),
        })?;
        let outcome = match result {
            Ok(process) => {
                tracing::info!(
                    org = %self.spec.org, function = %self.spec.function,
                    deployment_id = %self.spec.deployment_id, process = process.id, entry = %self.entry,
                    ms = started.elapsed().as_secs_f64() * 1e3, "bun process started"
                );
                reactor_service::metrics::get().cold_start("bun", "total", started.elapsed());
                process.inflight.fetch_add(1, Ordering::AcqRel);
                s.processes.push(process.clone());
                Ok((
                    Lease {
                        pool: self.clone(),
                        process,
                    },
                    true,
                ))
            }
            Err(message) if Instant::now() >= deadline => {
                tracing::warn!(deployment_id = %self.spec.deployment_id, "bun process start timed out: {message}");
                Err(InvokeError::Timeout {
                    timeout_ms: self.spec.timeout_ms,
                })
            }
            Err(message) => Err(InvokeError::Crashed { message }),
        };
        drop(s);
        // Uncounts the start and wakes the waiters, now that the process is in the pool.
        drop(starting);
        outcome
    }

    /// Starts processes until `n` are running (for `min_instances` and prepare).
    pub async fn ensure(
        self: &Arc<Self>,
        launcher: &crate::launcher::Launcher,
        env: &BTreeMap<String, String>,
        n: usize,
        deadline: Instant,
    ) -> Result<(), InvokeError> {
        loop {
            {
                let mut s = self.state.lock().map_err(|_| InvokeError::Unavailable {
                    message: "worker state poisoned".into(),
                })?;
                s.processes.retain(|p| !p.exited());
                let running = s.processes.iter().filter(|p| !p.stopping()).count();
                if running + s.starting >= n.min(self.limits.max_processes) {
                    return Ok(());
                }
                s.starting += 1;
            }
            // The new process serves no request yet: give its slot back at once.
            let (lease, _) = self.spawn(launcher, env, deadline).await?;
            drop(lease);
        }
    }

    /// Processes kept started while the deployment is live: a static pool's, as this
    /// worker holds it (its own `bun_concurrency_per_process` may differ from the control
    /// plane's, which counted `min_instances`), else `min_instances`.
    pub fn keep_started(&self) -> usize {
        match self.spec.pool {
            Some(Shape::Static { .. }) => self.limits.max_processes,
            _ => self.spec.min_instances as usize,
        }
    }

    /// Stops processes idle past the TTL, keeping `min_instances` while the deployment is
    /// live; a retired pool keeps none and stops them after [`RETIRED_GRACE`] idle.
    /// Returns whether the pool is now retired and empty (it can be dropped).
    pub fn reap(&self) -> bool {
        let retired = self.is_retired();
        let keep = if self.live.load(Ordering::Acquire) {
            self.keep_started()
        } else {
            0
        };
        let ttl = if retired {
            RETIRED_GRACE
        } else {
            self.limits.idle_ttl
        };
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        s.processes.retain(|p| !p.exited());
        let mut alive = s.processes.iter().filter(|p| !p.stopping()).count();
        for p in s.processes.iter().filter(|p| !p.stopping()) {
            if alive <= keep {
                break;
            }
            // Under the state lock: no request can take this process meanwhile.
            if p.inflight.load(Ordering::Acquire) == 0 && p.idle_for() >= ttl {
                self.stop(
                    p,
                    if retired {
                        "its deployment is no longer live"
                    } else {
                        "idle past its idle TTL (pool.idle_ttl_secs or bun_idle_ttl_secs)"
                    },
                );
                alive -= 1;
            }
        }
        retired && s.processes.is_empty() && s.starting == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKER: PoolLimits = PoolLimits {
        max_processes: 8,
        per_process: 32,
        queue: 64,
        idle_ttl: Duration::from_secs(300),
    };

    fn shape(pool: Shape) -> (usize, usize, usize, u64) {
        let l = WORKER.for_pool(Some(&pool));
        (
            l.max_processes,
            l.per_process,
            l.queue,
            l.idle_ttl.as_secs(),
        )
    }

    #[test]
    fn a_pools_size_is_held_on_as_few_processes_as_the_worker_allows() {
        let stat = |workers, buffer| Shape::Static { workers, buffer };
        assert_eq!(
            shape(stat(1, 2)),
            (1, 1, 2, 300),
            "one at a time, two queued"
        );
        assert_eq!(shape(stat(40, 0)), (2, 20, 0, 300));
        assert_eq!(
            shape(stat(1000, 5)),
            (8, 32, 5, 300),
            "the worker's bounds hold"
        );
        let lazy = |max_size, idle_ttl_secs| Shape::Lazy {
            max_size,
            idle_ttl_secs,
        };
        assert_eq!(shape(lazy(3, 1)), (1, 3, 64, 1));
        assert_eq!(shape(lazy(64, 60)), (2, 32, 64, 60));
        let adaptive = Shape::Adaptive {
            min_size: 1,
            max_size: 10,
            algorithm: Default::default(),
        };
        assert_eq!(shape(adaptive), (8, 32, 64, 300), "sized by routers");
        assert_eq!(WORKER.for_pool(None).max_processes, 8);
    }
}
