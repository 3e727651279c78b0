//! Deployments: receiving and checking bundles, materializing them (built here or on a
//! worker of their runtime), and reading them back.

use crate::auth::Caller;
use crate::build::Build;
use crate::bundle::{self, BundleError};
use crate::convert::{deployment_info, spec};
use crate::logs::LogHub;
use crate::service::{ControlPlane, need, now, storage_error};
use crate::store::{DeploymentRecord, FunctionRecord, Store};
use bytes::Bytes;
use futures::Stream;
use reactor_api::logs::{LogEntry, LogSink};
use reactor_api::manifest::{MANIFEST_FILE, Manifest};
use reactor_api::model::{DeploymentInfo, DeploymentStatus};
use reactor_api::{ApiError, DeploymentSpec, ErrorCode};
use reactor_storage::keys;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Names inside an upload's work directory.
const ARCHIVE_FILE: &str = "bundle.tar.gz";
const BUNDLE_DIR: &str = "bundle";
/// Largest manifest.json read.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// One of an org's upload slots (`functions.uploads_per_org`), given back on drop.
struct UploadSlot<'a> {
    uploads: &'a std::sync::Mutex<HashMap<String, usize>>,
    org: String,
}

impl Drop for UploadSlot<'_> {
    fn drop(&mut self) {
        let mut uploads = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = uploads.get_mut(&self.org) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                uploads.remove(&self.org);
            }
        }
    }
}

impl ControlPlane {
    /// Receives a bundle, checks it and records a deployment that materializes in the
    /// background. Bad input (size, hash, archive, manifest) is refused and leaves nothing.
    pub async fn upload<S, E>(
        &self,
        caller: &Caller,
        name: &str,
        claimed_sha256: Option<&str>,
        content_length: Option<u64>,
        body: S,
    ) -> Result<DeploymentInfo, ApiError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let started = std::time::Instant::now();
        need(caller, caller.role.can_deploy(), "deploy")?;
        let function = self.function(caller, name).await?;
        let limit = self.config.bundle_max_bytes;
        if content_length.is_some_and(|n| n > limit) {
            return Err(BundleError::TooLarge { limit }.into());
        }
        // Held until the upload is recorded or refused: bounds the disk, memory and time
        // one org's uploads hold at once.
        let _slot = self.upload_slot(&function.org)?;
        let id = format!("dep_{}", ulid::Ulid::new());
        let work = Arc::new(
            tempfile::Builder::new()
                .prefix(&id)
                .tempdir_in(&self.tmp_dir)
                .map_err(|e| ApiError::internal(format!("creating a work directory: {e}")))?,
        );
        let archive = work.path().join(ARCHIVE_FILE);
        // A client that sends slowly (or stops) must not hold its slot and disk forever.
        let secs = self.config.upload_timeout_secs;
        let received = tokio::time::timeout(
            std::time::Duration::from_secs(secs),
            bundle::receive(body, &archive, limit),
        )
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidInput,
                format!(
                    "the upload did not complete within {secs} s (functions.upload_timeout_secs)"
                ),
            )
            .with_detail(crate::http::UPLOAD_TIMEOUT_DETAIL, secs)
        })??;
        if let Some(claimed) = claimed_sha256
            && !claimed.trim().eq_ignore_ascii_case(&received.sha256)
        {
            return Err(ApiError::new(
                ErrorCode::ManifestInvalid,
                format!(
                    "bundle sha256 mismatch: the client sent {claimed}, the server computed {}",
                    received.sha256
                ),
            )
            .with_detail("expected", claimed.to_string())
            .with_detail("computed", received.sha256.clone()));
        }
        let unpacked_dir = work.path().join(BUNDLE_DIR);
        let resolved = self.check_bundle(&function, &work).await?;
        // Checked as late as possible before the insert pins the env (not in
        // check_bundle: a resumed materialization has its env pinned already).
        self.check_env_keys(&function, &resolved).await?;
        let call_graph = self.call_graph(&function, resolved.calls.as_ref());
        let calls = json_column(resolved.calls.as_ref(), "calls")?;
        let interceptors = json_column(resolved.interceptors.as_ref(), "interceptors")?;
        let pool = json_column(resolved.pool.as_ref(), "pool")?;
        let contract = json_column(resolved.contract.as_ref(), "contract")?;
        let record = DeploymentRecord {
            id: id.clone(),
            org: function.org.clone(),
            function: function.name.clone(),
            status: DeploymentStatus::Materializing,
            error: None,
            sha256: received.sha256,
            size_bytes: received.size_bytes,
            entrypoint: resolved.entrypoint,
            bundle_key: keys::bundle(&function.org, &function.name, &id),
            timeout_ms: resolved.timeout_ms,
            memory_mb: resolved.memory_mb,
            min_instances: resolved.min_instances,
            max_concurrency: resolved.max_concurrency,
            created_at: now(),
            policy: resolved.policy,
            calls,
            interceptors,
            pool,
            contract,
        };
        self.storage
            .put_file(&record.bundle_key, &archive)
            .await
            .map_err(storage_error)?;
        self.store.insert_deployment(&record).await?;
        tracing::info!(org = %function.org, function = %function.name, deployment_id = %id, size_bytes = record.size_bytes, "deployment received");
        self.event(
            &function.org,
            &function.name,
            Some(&id),
            format!(
                "deployment received ({} bytes, sha256 {}), materializing",
                record.size_bytes, record.sha256
            ),
        );
        if let Some(g) = &call_graph
            && g.depth > 1
        {
            let max = self.config.calls.max_depth;
            let mut said = format!(
                "call graph: worst-case depth {} ({})",
                g.depth,
                g.path.join(" -> ")
            );
            if g.depth > max {
                said.push_str(&format!(
                    ", past functions.calls.max_depth {max}: the deepest calls will be refused"
                ));
            }
            if let Some(cycle) = &g.cycle {
                said.push_str(&format!(
                    "; the calls can loop ({}), bounded by functions.calls.max_depth {max}",
                    cycle.join(" -> ")
                ));
            }
            self.event(&function.org, &function.name, Some(&id), said);
        }
        let mut info = deployment_info(&record, function.live_deployment_id.as_deref());
        info.call_graph = call_graph;
        let spec = spec(&function, &record);
        let build = self.build.clone();
        let store = self.store.clone();
        let logs = self.logs.clone();
        tokio::spawn(async move {
            materialize(store, logs, build, spec, unpacked_dir).await;
            drop(work);
        });
        let metrics = reactor_service::metrics::get();
        if metrics.recording() {
            metrics
                .deploy_duration
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(info)
    }

    /// A slot for one more upload of `org`, or TooManyRequests when it has
    /// `functions.uploads_per_org` in progress already.
    fn upload_slot(&self, org: &str) -> Result<UploadSlot<'_>, ApiError> {
        let limit = self.config.uploads_per_org;
        let mut uploads = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        let n = uploads.get(org).copied().unwrap_or(0);
        if n >= limit {
            return Err(ApiError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "org {org} already has {limit} uploads in progress, its limit: retry when one has finished, or ask the operator to raise functions.uploads_per_org"
                ),
            )
            .with_detail("limit", limit as u64));
        }
        uploads.insert(org.to_string(), n + 1);
        Ok(UploadSlot {
            uploads: &self.uploads,
            org: org.to_string(),
        })
    }

    /// Unpacks into `dest` and validates the manifest against the function.
    async fn check_bundle(
        &self,
        function: &FunctionRecord,
        work: &Arc<tempfile::TempDir>,
    ) -> Result<reactor_api::manifest::Resolved, ApiError> {
        let dest = work.path().join(BUNDLE_DIR);
        // Bounds the disk and memory that unpacking uploads may hold at once.
        let _slot = self
            .unpack_slots
            .acquire()
            .await
            .map_err(|_| ApiError::internal("shutting down"))?;
        // The closure owns the work directory too: a client that goes away mid-unpack
        // must not have it removed under the unpacking thread.
        let held = work.clone();
        let unpacked = tokio::task::spawn_blocking(move || {
            let dest = held.path().join(BUNDLE_DIR);
            std::fs::create_dir_all(&dest)?;
            bundle::unpack(&held.path().join(ARCHIVE_FILE), &dest)
        })
        .await
        .map_err(|e| ApiError::internal(format!("unpacking task: {e}")))??;
        // The manifest's policy, parsed strictly from the file and compiled (reactor-api
        // keeps it as JSON), stored as the policy crate writes it.
        let mut policy = None;
        let manifest = if unpacked.files.iter().any(|f| f == MANIFEST_FILE) {
            let path = dest.join(MANIFEST_FILE);
            let len = tokio::fs::metadata(&path)
                .await
                .map(|m| m.len())
                .unwrap_or(0);
            if len > MAX_MANIFEST_BYTES {
                return Err(ApiError::new(
                    ErrorCode::ManifestInvalid,
                    format!(
                        "manifest.json is {len} bytes; at most {MAX_MANIFEST_BYTES} are allowed"
                    ),
                ));
            }
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|e| ApiError::internal(format!("reading manifest.json: {e}")))?;
            let manifest = Manifest::parse(&bytes)
                .map_err(|m| ApiError::new(ErrorCode::ManifestInvalid, m))?;
            policy = reactor_policy::Policy::from_manifest(&bytes)
                .map_err(|m| ApiError::new(ErrorCode::ManifestInvalid, m))?;
            Some(manifest)
        } else {
            None
        };
        let mut resolved = Manifest::resolve(
            manifest.as_ref(),
            &function.name,
            function.runtime,
            &unpacked.files,
            self.config.manifest_bounds(),
        )
        .map_err(|m| ApiError::new(ErrorCode::ManifestInvalid, m))?;
        self.check_warm_instances(&function.org, &function.name, resolved.min_instances)
            .await?;
        resolved.policy = policy
            .map(|p| serde_json::to_string(&p))
            .transpose()
            .map_err(|e| ApiError::internal(format!("policy: {e}")))?;
        // Schemas are compiled now: a bad one is refused at deploy, not met by a request.
        if let Some(contract) = &resolved.contract {
            reactor_contract::Compiled::from_spec(contract, "contract")
                .map_err(|e| ApiError::new(ErrorCode::ManifestInvalid, e.to_string()))?;
        }
        if let Some(json) = &resolved.policy {
            self.check_policy_size(json.len()).map_err(|e| {
                ApiError::new(
                    ErrorCode::ManifestInvalid,
                    format!("manifest.json: {}", e.message),
                )
            })?;
        }
        Ok(resolved)
    }

    /// Refuses a deployment of `function` keeping `min_instances` warm when the org's warm
    /// instances would pass its quota once it is live (it replaces its function's live
    /// deployment; the other functions' stay). Checked at upload and again at promote.
    pub(crate) async fn check_warm_instances(
        &self,
        org: &str,
        function: &str,
        min_instances: u32,
    ) -> Result<(), ApiError> {
        if min_instances == 0 {
            return Ok(());
        }
        let quota = self.config.max_warm_instances_per_org;
        let mut warm = u64::from(min_instances);
        for f in self.store.list_functions(org).await? {
            let Some(live) = f.live_deployment_id.as_deref() else {
                continue;
            };
            if f.name == function {
                continue;
            }
            if let Some(d) = self.store.get_deployment(&f.org, &f.name, live).await? {
                warm += u64::from(d.min_instances);
            }
        }
        if warm > quota as u64 {
            return Err(super::functions::quota_exceeded(
                format!(
                    "org {org} would keep {warm} instances warm (concurrency.min_instances of its live deployments and this one), past its quota of {quota}: lower min_instances, or ask the operator to raise functions.max_warm_instances_per_org"
                ),
                "warm_instances",
                quota,
            ));
        }
        Ok(())
    }

    /// Finishes a materialization that a previous run left, from the stored bundle.
    pub(crate) async fn rematerialize(self: Arc<Self>, d: DeploymentRecord) {
        let Ok(Some(function)) = self.store.get_function(&d.org, &d.function).await else {
            return;
        };
        let result: Result<Arc<tempfile::TempDir>, String> = async {
            let work = Arc::new(tempfile::tempdir_in(&self.tmp_dir).map_err(|e| e.to_string())?);
            let archive = work.path().join(ARCHIVE_FILE);
            self.storage
                .get_to_file(&d.bundle_key, &archive)
                .await
                .map_err(|e| e.to_string())?;
            // What comes back from storage is what was uploaded, or nothing is built.
            let path = archive.clone();
            let sha = tokio::task::spawn_blocking(move || reactor_storage::bundle::sha256_file(&path))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            if !sha.eq_ignore_ascii_case(&d.sha256) {
                return Err(format!(
                    "the bundle in storage does not match its recorded sha256 (recorded {}, found {sha})",
                    d.sha256
                ));
            }
            self.check_bundle(&function, &work)
                .await
                .map_err(|e: ApiError| e.message)?;
            Ok(work)
        }
        .await;
        match result {
            Ok(work) => {
                materialize(
                    self.store.clone(),
                    self.logs.clone(),
                    self.build.clone(),
                    spec(&function, &d),
                    work.path().join(BUNDLE_DIR),
                )
                .await;
            }
            Err(reason) => {
                let _ = self
                    .store
                    .set_deployment_status(&d.id, DeploymentStatus::Failed, Some(&reason))
                    .await;
            }
        }
    }

    pub async fn list_deployments(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<Vec<DeploymentInfo>, ApiError> {
        // Not invokers: a failed deployment's error can hold build output.
        need(caller, caller.role.can_deploy(), "read deployments")?;
        let f = self.function(caller, name).await?;
        let live = f.live_deployment_id.as_deref();
        Ok(self
            .store
            .list_deployments(&f.org, &f.name)
            .await?
            .iter()
            .map(|d| deployment_info(d, live))
            .collect())
    }

    pub async fn get_deployment(
        &self,
        caller: &Caller,
        name: &str,
        id: &str,
    ) -> Result<DeploymentInfo, ApiError> {
        need(caller, caller.role.can_deploy(), "read deployments")?;
        let f = self.function(caller, name).await?;
        let d = self.deployment(&f, id).await?;
        Ok(deployment_info(&d, f.live_deployment_id.as_deref()))
    }

    /// Deployment `id` of `f`, or DeploymentNotFound.
    pub(super) async fn deployment(
        &self,
        f: &FunctionRecord,
        id: &str,
    ) -> Result<DeploymentRecord, ApiError> {
        self.store
            .get_deployment(&f.org, &f.name, id)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::DeploymentNotFound,
                    format!("deployment {id} of function {} not found", f.name),
                )
                .with_detail("deployment_id", id)
            })
    }
}

/// Builds the deployment (here or on a worker of its runtime) and records the outcome.
async fn materialize(
    store: Arc<dyn Store>,
    logs: Arc<LogHub>,
    build: Build,
    spec: DeploymentSpec,
    dir: PathBuf,
) {
    let started = std::time::Instant::now();
    let outcome = build.run(&spec, &dir).await;
    let metrics = reactor_service::metrics::get();
    if metrics.recording() {
        metrics
            .materialize_duration
            .get_or_create(&reactor_service::metrics::RuntimeLabels {
                runtime: spec.runtime.to_string(),
            })
            .observe(started.elapsed().as_secs_f64());
    }
    let ms = started.elapsed().as_millis() as u64;
    let (status, error) = match &outcome {
        Ok(()) => {
            tracing::info!(org = %spec.org, function = %spec.function, deployment_id = %spec.deployment_id, ms, "materialized");
            logs.emit(LogEntry::event(
                &spec.org,
                &spec.function,
                Some(&spec.deployment_id),
                format!("materialized in {ms} ms: ready to promote"),
            ));
            (DeploymentStatus::Ready, None)
        }
        Err(reason) => {
            tracing::warn!(org = %spec.org, function = %spec.function, deployment_id = %spec.deployment_id, ms, reason, "materialization failed");
            logs.emit(LogEntry::event(
                &spec.org,
                &spec.function,
                Some(&spec.deployment_id),
                format!("materialization failed: {reason}"),
            ));
            (DeploymentStatus::Failed, Some(reason.as_str()))
        }
    };
    if let Err(e) = store
        .set_deployment_status(&spec.deployment_id, status, error)
        .await
    {
        tracing::error!(error = %e, deployment_id = %spec.deployment_id, "recording the materialization outcome");
    }
}

impl ControlPlane {
    /// The declared call graph from `function` once this deployment is live: the live
    /// deployments' `calls` in the org (contract aliases through their bindings), this
    /// one's in place of the function's own; `None` when the deployment declares no
    /// `calls` (it may call anything: nothing to follow).
    fn call_graph(
        &self,
        function: &FunctionRecord,
        calls: Option<&reactor_api::manifest::Calls>,
    ) -> Option<reactor_api::calls::CallGraph> {
        let calls = calls?;
        let table = self.routing.current();
        let org: Vec<_> = table
            .functions
            .iter()
            .filter(|f| f.org == function.org)
            .collect();
        let bound = |contract: &str| {
            org.iter()
                .find(|f| f.contracts.iter().any(|c| c.name == contract))
                .map(|f| f.name.clone())
        };
        let targets = |calls: &reactor_api::manifest::Calls| -> Vec<String> {
            calls
                .values()
                .filter_map(|c| {
                    c.function
                        .clone()
                        .or_else(|| c.contract.as_deref().and_then(bound))
                })
                .collect()
        };
        let mut callees: std::collections::HashMap<String, Vec<String>> = org
            .iter()
            .filter_map(|f| {
                let json = f.live.as_ref()?.calls.as_deref()?;
                let calls: reactor_api::manifest::Calls = serde_json::from_str(json).ok()?;
                Some((f.name.clone(), targets(&calls)))
            })
            .collect();
        callees.insert(function.name.clone(), targets(calls));
        Some(reactor_api::calls::call_graph(&function.name, &callees))
    }
}

/// A manifest setting as the JSON its column holds (`None` stays NULL).
fn json_column<T: serde::Serialize>(
    value: Option<&T>,
    field: &str,
) -> Result<Option<String>, ApiError> {
    value
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| ApiError::internal(format!("{field}: {e}")))
}
