//! Releases: making a ready deployment live (promote, rollback), loaded by its workers
//! before the routing table changes.

use crate::auth::Caller;
use crate::convert::{deployment_info, spec};
use crate::service::{ControlPlane, need};
use reactor_api::model::{DeploymentInfo, DeploymentStatus};
use reactor_api::{ApiError, DeploymentSpec, ErrorCode, Release, Runtimes};
use reactor_worker_link::rendezvous::MAX_CANDIDATES;
use std::sync::{Arc, Weak};

/// Why a deployment is made live.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MakeLive {
    /// `force`: even when it breaks a contract its function is bound to.
    Promote {
        force: bool,
    },
    Rollback,
}

/// How long promote waits for a worker service to load a deployment.
const PREPARE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl ControlPlane {
    /// Makes a ready deployment live (the newest when `id` is `None`): its worker loads it
    /// first, then the routing table changes.
    pub async fn promote(
        &self,
        caller: &Caller,
        name: &str,
        id: Option<&str>,
    ) -> Result<DeploymentInfo, ApiError> {
        self.make_live(caller, name, id, MakeLive::Promote { force: false })
            .await
    }

    /// [`ControlPlane::promote`]; with `force`, even when the deployment's schemas break
    /// a contract the function is bound to.
    pub async fn promote_with(
        &self,
        caller: &Caller,
        name: &str,
        id: Option<&str>,
        force: bool,
    ) -> Result<DeploymentInfo, ApiError> {
        self.make_live(caller, name, id, MakeLive::Promote { force })
            .await
    }

    async fn make_live(
        &self,
        caller: &Caller,
        name: &str,
        id: Option<&str>,
        how: MakeLive,
    ) -> Result<DeploymentInfo, ApiError> {
        let rollback = how == MakeLive::Rollback;
        need(caller, caller.role.can_deploy(), "promote")?;
        // One promote at a time per function: the live pointer a caller is told about is
        // the one that the routers get, even when two promotes race. Per function because
        // it is held across the release step (Lambda's AWS calls).
        let _promoting = self.lock_function(&caller.org, name).await?;
        let f = self.function(caller, name).await?;
        let d = match id {
            Some(id) => self.deployment(&f, id).await?,
            None => self
                .store
                .list_deployments(&f.org, &f.name)
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::DeploymentNotReady,
                        format!("function {name} has no deployment to promote"),
                    )
                })?,
        };
        if d.status != DeploymentStatus::Ready {
            let reason = match (&d.status, &d.error) {
                (DeploymentStatus::Failed, Some(e)) => format!("it failed: {e}"),
                (s, _) => format!("it is {}", s.as_str()),
            };
            return Err(ApiError::new(
                ErrorCode::DeploymentNotReady,
                format!("deployment {} is not ready: {reason}", d.id),
            )
            .with_detail("deployment_id", d.id.clone())
            .with_detail("status", d.status.as_str()));
        }
        // A bound contract's callers must keep getting what it promises. A rollback goes
        // back to what was live before, and is not held up.
        if how == (MakeLive::Promote { force: false }) {
            self.check_contracts(&d).await?;
        }
        // Uploads were checked one at a time; promoting several must not pass the quota.
        self.check_warm_instances(&f.org, &f.name, d.min_instances)
            .await?;
        let spec = spec(&f, &d);
        if !self.build.can_build(f.runtime) {
            return Err(Runtimes::no_worker(f.runtime));
        }
        let not_loaded = |e: String| {
            ApiError::new(
                ErrorCode::DeploymentNotReady,
                format!("deployment {} could not be loaded: {e}", d.id),
            )
            .with_detail("deployment_id", d.id.clone())
        };
        if let Some(worker) = self.local_workers.get(f.runtime) {
            worker
                .prepare(&spec)
                .await
                .map_err(|e| not_loaded(e.to_string()))?;
        }
        self.prepare_on_workers(&spec).await;
        // The release step comes last before the store: nothing between it and the
        // record can fail but the record, and a failed record moves it back.
        let release = self.releases.get(f.runtime);
        // Read now: the store may be what fails below.
        let previous_spec = match (release, f.live_deployment_id.as_deref()) {
            (Some(_), Some(prev)) if prev != d.id => self
                .store
                .get_deployment(&f.org, &f.name, prev)
                .await?
                .map(|p| crate::convert::spec(&f, &p)),
            _ => None,
        };
        if let Some(release) = release {
            release.go_live(&spec).await.map_err(not_loaded)?;
        }
        if let Err(e) = self.store.set_live(&f.org, &f.name, &d.id).await {
            // Re-promoting the live deployment moved nothing.
            if let Some(release) = release
                && f.live_deployment_id.as_deref() != Some(d.id.as_str())
            {
                undo_go_live(&**release, &spec, previous_spec.as_ref()).await;
            }
            return Err(e.into());
        }
        let version = self.routing.publish_function(&f.org, &f.name).await?;
        tracing::info!(org = %f.org, function = %f.name, deployment_id = %d.id, version, rollback, "promoted");
        let previous = f.live_deployment_id.as_deref().unwrap_or("none");
        self.event(
            &f.org,
            &f.name,
            Some(&d.id),
            if rollback {
                format!("rolled back: {} is live again (was {previous})", d.id)
            } else {
                format!("promoted: {} is live (was {previous})", d.id)
            },
        );
        Ok(deployment_info(&d, Some(&d.id)))
    }

    /// The promote lock of function `name` of `org`, held until the guard drops. Entries
    /// nobody holds or awaits are dropped on the way, so the map is bounded by the
    /// promotes in flight.
    pub(crate) async fn lock_function(
        &self,
        org: &str,
        name: &str,
    ) -> Result<FunctionLock, crate::store::StoreError> {
        let lock = {
            let mut locks = self.promote_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.retain(|_, l| l.strong_count() > 0);
            let key = (org.to_string(), name.to_string());
            match locks.get(&key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(key, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        // This process's callers queue here; then the database's lock, which other
        // control planes on the same database take too (PostgreSQL).
        let process = lock.lock_owned().await;
        let database = self.store.lock_function(org, name).await?;
        Ok(FunctionLock {
            _database: database,
            _process: process,
        })
    }

    /// Makes an earlier ready deployment live again, with the env it pinned.
    pub async fn rollback(
        &self,
        caller: &Caller,
        name: &str,
        to: &str,
    ) -> Result<DeploymentInfo, ApiError> {
        self.make_live(caller, name, Some(to), MakeLive::Rollback)
            .await
    }

    /// Has the workers routers send `spec` to (its first [`MAX_CANDIDATES`] in rendezvous
    /// order, those that prewarm it) load it, so that the first request after the table
    /// changes is warm wherever it lands (no other worker gets requests for it). Not
    /// fatal: a worker that fails (or takes longer than [`PREPARE_TIMEOUT`]) loads it on
    /// its first request instead.
    async fn prepare_on_workers(&self, spec: &DeploymentSpec) {
        let Some(remote) = &self.remote_workers else {
            return;
        };
        let urls: Vec<String> = self
            .workers
            .urls_for(spec.runtime, &spec.deployment_id)
            .into_iter()
            .take(MAX_CANDIDATES)
            .collect();
        let started = std::time::Instant::now();
        let prepared = futures::future::join_all(
            urls.iter()
                .map(|url| tokio::time::timeout(PREPARE_TIMEOUT, remote.prepare(url, spec))),
        )
        .await;
        for (url, outcome) in urls.iter().zip(prepared) {
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(worker = %url, deployment_id = %spec.deployment_id, error = %e, "worker could not prepare the deployment")
                }
                Err(_) => {
                    tracing::warn!(worker = %url, deployment_id = %spec.deployment_id, "worker took too long to prepare the deployment")
                }
            }
        }
        tracing::debug!(
            workers = urls.len(),
            ms = started.elapsed().as_millis() as u64,
            "prepared on workers"
        );
    }
}

/// The release moved to `moved` but the store could not record it live: moves it back to
/// the `previous` live deployment, so that the runtime serves what the platform says is
/// live. Without one (a first promote) the routers send nothing there; either way a retry
/// of the promote sets both again.
async fn undo_go_live(
    release: &dyn Release,
    moved: &DeploymentSpec,
    previous: Option<&DeploymentSpec>,
) {
    let Some(previous) = previous else {
        tracing::warn!(org = %moved.org, function = %moved.function, deployment_id = %moved.deployment_id,
            "the release moved to a deployment that could not be recorded live; there was no live deployment to move it back to");
        return;
    };
    match release.go_live(previous).await {
        Ok(()) => {
            tracing::warn!(org = %moved.org, function = %moved.function, deployment_id = %moved.deployment_id, previous = %previous.deployment_id,
                "the deployment could not be recorded live: the release moved back to the previous one")
        }
        Err(e) => {
            tracing::error!(org = %moved.org, function = %moved.function, deployment_id = %moved.deployment_id, previous = %previous.deployment_id, error = %e,
                "the deployment could not be recorded live and the release could not move back: the runtime serves a deployment the platform does not consider live until the next promote")
        }
    }
}

/// A function's promote lock: this process's, and the database's (see
/// [`ControlPlane::lock_function`]). The database's is released first.
pub(crate) struct FunctionLock {
    _database: Option<crate::store::HeldLock>,
    _process: tokio::sync::OwnedMutexGuard<()>,
}
