//! Releases: making a ready deployment live (promote, rollback), loaded by its workers
//! before the routing table changes.

use crate::auth::Caller;
use crate::convert::{deployment_info, spec};
use crate::service::{ControlPlane, need};
use reactor_api::model::{DeploymentInfo, DeploymentStatus};
use reactor_api::{ApiError, DeploymentSpec, ErrorCode, Runtimes};

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
        self.make_live(caller, name, id, false).await
    }

    async fn make_live(
        &self,
        caller: &Caller,
        name: &str,
        id: Option<&str>,
        rollback: bool,
    ) -> Result<DeploymentInfo, ApiError> {
        need(caller, caller.role.can_deploy(), "promote")?;
        // One promote at a time: the live pointer a caller is told about is the one that
        // the routers get, even when two promotes race.
        let _promoting = self.promote_lock.lock().await;
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
        if let Some(release) = self.releases.get(f.runtime) {
            release.go_live(&spec).await.map_err(not_loaded)?;
        }
        if let Some(worker) = self.local_workers.get(f.runtime) {
            worker
                .prepare(&spec)
                .await
                .map_err(|e| not_loaded(e.to_string()))?;
        }
        self.prepare_on_workers(&spec).await;
        self.store.set_live(&f.org, &f.name, &d.id).await?;
        let version = self.routing.publish().await?;
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

    /// Makes an earlier ready deployment live again, with the env it pinned.
    pub async fn rollback(
        &self,
        caller: &Caller,
        name: &str,
        to: &str,
    ) -> Result<DeploymentInfo, ApiError> {
        self.make_live(caller, name, Some(to), true).await
    }

    /// Has every registered worker of the runtime load `spec`, so that the first request
    /// after the table changes is warm wherever it lands. Not fatal: a worker that fails
    /// (or takes longer than [`PREPARE_TIMEOUT`]) loads it on its first request instead.
    async fn prepare_on_workers(&self, spec: &DeploymentSpec) {
        let Some(remote) = &self.remote_workers else {
            return;
        };
        let runtime = spec.runtime.as_str();
        let urls: Vec<String> = self
            .workers
            .endpoints()
            .into_iter()
            .filter(|w| w.runtime == runtime)
            .map(|w| w.url)
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
