//! Garbage collection of deployments: their bundle, build artifacts, pinned env and row,
//! once `functions.gc_retention_secs` has passed since their upload and they are neither
//! live, nor materializing, nor among their function's [`ROLLBACK_TARGETS`] newest ready
//! deployments (failed ones go once old enough). A deleted function's rows go with it
//! (`Store::delete_function`) and its objects when it is deleted.
//!
//! Objects are deleted before the row, so that a failure leaves the row and the next run
//! tries again. Must not touch a live deployment: the function's promote lock is held
//! while one of its deployments is collected, and the store refuses to delete a live one.

use crate::service::ControlPlane;
use crate::store::DeploymentRecord;
use reactor_api::ApiError;
use reactor_storage::keys;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Ready deployments kept per function as rollback targets, besides the live one.
pub const ROLLBACK_TARGETS: u32 = 5;
/// How often the collector runs.
const INTERVAL: Duration = Duration::from_secs(600);

/// What one run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// The deployments deleted, with their objects and pinned env.
    pub deployments: Vec<String>,
    /// Candidates that could not be deleted (tried again next run).
    pub failed: usize,
}

/// Collects what the retention allows at `now` (see the module's documentation).
pub async fn run_once(cp: &ControlPlane, now: SystemTime) -> Result<Collected, ApiError> {
    let mut collected = Collected::default();
    let retention = cp.config.gc_retention_secs;
    if retention == 0 {
        return Ok(collected);
    }
    let Some(cutoff) = now.checked_sub(Duration::from_secs(retention)) else {
        return Ok(collected);
    };
    let before = humantime::format_rfc3339_millis(cutoff).to_string();
    for d in cp
        .store
        .collectable_deployments(&before, ROLLBACK_TARGETS)
        .await?
    {
        // No promote or rollback of the function while its deployment goes.
        let _promoting = match cp.lock_function(&d.org, &d.function).await {
            Ok(lock) => lock,
            Err(e) => {
                tracing::warn!(org = %d.org, function = %d.function, deployment_id = %d.id, error = %e, "leaving a deployment for the next collection: its function is locked");
                collected.failed += 1;
                continue;
            }
        };
        match collect(cp, &d).await {
            Ok(true) => {
                tracing::info!(org = %d.org, function = %d.function, deployment_id = %d.id, "deployment collected");
                cp.event(
                    &d.org,
                    &d.function,
                    Some(&d.id),
                    format!(
                        "deployment collected: older than {retention} s and not among the {ROLLBACK_TARGETS} newest ready ones"
                    ),
                );
                collected.deployments.push(d.id);
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(org = %d.org, function = %d.function, deployment_id = %d.id, error = %e, "collecting a deployment");
                collected.failed += 1;
            }
        }
    }
    Ok(collected)
}

/// Deletes `d`'s objects, then its row and pinned env; false when it became live or was
/// deleted meanwhile.
async fn collect(cp: &ControlPlane, d: &DeploymentRecord) -> Result<bool, String> {
    let f = cp
        .store
        .get_function(&d.org, &d.function)
        .await
        .map_err(|e| e.to_string())?;
    if f.and_then(|f| f.live_deployment_id).as_deref() == Some(d.id.as_str()) {
        return Ok(false);
    }
    // The deployment's artifact folder: an artifact key without its name.
    let artifacts = keys::artifact(&d.org, &d.function, &d.id, "");
    for prefix in [artifacts.trim_end_matches('/'), d.bundle_key.as_str()] {
        cp.storage
            .delete_prefix(prefix)
            .await
            .map_err(|e| e.to_string())?;
    }
    cp.store
        .delete_deployment(&d.id)
        .await
        .map_err(|e| e.to_string())
}

/// Runs [`run_once`] every [`INTERVAL`] for as long as the control plane lives, unless
/// the retention is 0; with several replicas on one database, only on the one holding
/// the `gc` lease (see [`crate::lease`]).
pub(crate) async fn spawn(cp: &Arc<ControlPlane>) {
    if cp.config.gc_retention_secs == 0 {
        return;
    }
    let lease =
        crate::lease::Lease::spawn(cp.store.clone(), "gc", crate::lease::LEASE_TTL, cp.closed())
            .await;
    let weak = Arc::downgrade(cp);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(INTERVAL).await;
            let Some(cp) = weak.upgrade() else { return };
            if cp.is_closing() {
                return;
            }
            if !lease.held() {
                continue;
            }
            match run_once(&cp, SystemTime::now()).await {
                Ok(c) if c.failed > 0 => {
                    tracing::warn!(
                        collected = c.deployments.len(),
                        failed = c.failed,
                        "garbage collection left deployments for the next run"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "garbage collection"),
            }
        }
    });
}
