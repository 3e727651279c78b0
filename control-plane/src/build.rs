//! Where a deployment is built, and what the control plane does per runtime.
//!
//! A deployment is built by a builder in this process when there is one (the embedded
//! default builds every runtime in process; the control-plane service builds only
//! Lambda's, which runs no tenant code), else by a worker service of its runtime, asked
//! over the worker link (`/build`): the deployment's home worker (in rendezvous order;
//! on failure the next of the workers that may read its env, see
//! [`WorkerRegistry::urls_for`]) reads the bundle from storage, checks its hash, builds
//! and stores the artifacts. So the control-plane service links no runtime
//! and runs no function code, and needs neither Bun nor bubblewrap on its host.

use crate::workers::WorkerRegistry;
use reactor_api::{Builders, DeploymentSpec, Releases, Runtime, Runtimes};
use reactor_worker_link::RemoteWorkers;
use reactor_worker_link::client::BuildError;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What the control plane does per runtime, in this process (see `reactor_api::roles`).
#[derive(Clone, Default)]
pub struct RuntimeRoles {
    /// Builders in this process: every runtime in the embedded default, Lambda's in the
    /// control-plane service; other runtimes are built on their worker services.
    pub builders: Builders,
    /// Release steps run on promote, before the routing table changes (Lambda's alias).
    pub releases: Releases,
    /// Workers in this process (the embedded default), which load a deployment on promote.
    pub workers: Runtimes,
}

/// How long a build waits for a worker of its runtime to register (a control plane that
/// has just started, or workers that are being replaced).
const WAIT_FOR_WORKER: Duration = Duration::from_secs(60);
/// How long one worker may take to build.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the registry is looked at again while no worker could take the build.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// Builds deployments: in process, or on a worker service.
#[derive(Clone)]
pub(crate) struct Build {
    local: Builders,
    remote: Option<(RemoteWorkers, Arc<WorkerRegistry>)>,
}

impl Build {
    pub(crate) fn new(
        local: Builders,
        remote: Option<RemoteWorkers>,
        registry: Arc<WorkerRegistry>,
    ) -> Self {
        Self {
            local,
            remote: remote.map(|r| (r, registry)),
        }
    }

    /// Whether deployments of `runtime` can be built here or on a worker service.
    pub(crate) fn can_build(&self, runtime: Runtime) -> bool {
        self.local.get(runtime).is_some() || self.remote.is_some()
    }

    /// Builds `spec` (unpacked and checked in `bundle_dir`). `Err` is the reason the
    /// deployment failed, as the user reads it.
    pub(crate) async fn run(&self, spec: &DeploymentSpec, bundle_dir: &Path) -> Result<(), String> {
        if let Some(builder) = self.local.get(spec.runtime) {
            return builder.build(spec, bundle_dir).await;
        }
        let Some((client, registry)) = &self.remote else {
            return Err(format!(
                "no worker is available for runtime {}",
                spec.runtime
            ));
        };
        let runtime = spec.runtime;
        let deadline = tokio::time::Instant::now() + WAIT_FOR_WORKER;
        let mut last_error: Option<String> = None;
        loop {
            // The deployment's home worker first (it is then warm), then those it fails
            // over to: the workers that may read its env, which a Bun build needs.
            for url in registry.urls_for(runtime, &spec.deployment_id) {
                match tokio::time::timeout(BUILD_TIMEOUT, client.build(&url, spec)).await {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(BuildError::Failed(reason))) => return Err(reason),
                    Ok(Err(BuildError::Lost(e))) => {
                        tracing::warn!(worker = %url, deployment_id = %spec.deployment_id, error = %e, "worker went away during a build");
                        return Err(format!(
                            "the {runtime} worker stopped while building it (out of memory on this bundle?); deploy again to retry"
                        ));
                    }
                    Ok(Err(BuildError::Unreachable(e))) => {
                        tracing::warn!(worker = %url, deployment_id = %spec.deployment_id, error = %e, "worker could not take the build; trying another");
                        last_error = Some(e);
                    }
                    Err(_) => {
                        tracing::warn!(worker = %url, deployment_id = %spec.deployment_id, "build timed out");
                        return Err(format!(
                            "the {runtime} worker did not finish the build within {} s (builds wait their turn on a worker)",
                            BUILD_TIMEOUT.as_secs()
                        ));
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(match last_error {
                    Some(_) => format!(
                        "no {runtime} worker could take the build within {} s",
                        WAIT_FOR_WORKER.as_secs()
                    ),
                    None => format!(
                        "no worker is available for runtime {runtime} (none registered within {} s): start a reactor-worker-{runtime}",
                        WAIT_FOR_WORKER.as_secs()
                    ),
                });
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }
}
