//! The three things a runtime does, as separate roles, so that each service links and
//! runs only its own:
//!
//! - [`Builder`]: turns a checked bundle into what the runtime runs and stores it (WASM:
//!   the precompiled component; Bun: the import check and the prebundle; Lambda: the
//!   package, published as a version). It runs on a worker of the runtime (in the
//!   embedded default, in process; Lambda's on the control plane, which runs no tenant
//!   code for it): a deployment is ready once its builder has stored its artifacts.
//! - [`Release`]: what the control plane does on promote before the routing table
//!   changes (Lambda: moves the alias). Runtimes whose workers read the table need none.
//! - [`RuntimeWorker`]: loads live deployments (`prepare`), unloads those no longer live
//!   (`retire`) and serves invocations.
//!
//! [`ByRuntime`] holds one implementation of a role per runtime.

use crate::invoke::{DeploymentSpec, Invocation, InvokeError, InvokeFailure, InvokeOutcome};
use crate::{ApiError, ErrorCode, Runtime};
use async_trait::async_trait;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The runtime a role implementation serves.
pub trait RuntimeRole: Send + Sync + 'static {
    fn runtime(&self) -> Runtime;
}

#[async_trait]
pub trait Builder: RuntimeRole {
    /// Checks the unpacked bundle of `spec` and builds and stores what the runtime needs.
    /// `Err` is the reason the deployment failed, as the user reads it.
    async fn build(&self, spec: &DeploymentSpec, bundle_dir: &Path) -> Result<(), String>;
}

#[async_trait]
pub trait Release: RuntimeRole {
    /// Makes `spec` the version that serves, before the routing table says so.
    async fn go_live(&self, spec: &DeploymentSpec) -> Result<(), String>;
}

#[async_trait]
pub trait RuntimeWorker: RuntimeRole {
    /// Loads a deployment that is about to go live so that its first request is warm.
    async fn prepare(&self, spec: &DeploymentSpec) -> Result<(), InvokeError>;

    /// Loads a live deployment ahead of its requests when there is room for it (a worker
    /// following the routing table); `Ok(false)` when it left it for its first request.
    /// Default: [`RuntimeWorker::prepare`].
    async fn prewarm(&self, spec: &DeploymentSpec) -> Result<bool, InvokeError> {
        self.prepare(spec).await.map(|()| true)
    }

    async fn invoke(&self, invocation: Invocation) -> Result<InvokeOutcome, InvokeFailure>;

    /// Unloads a deployment that is no longer live (deleted, or superseded): what it kept
    /// started stops, with the env it holds. Requests already running may finish; a later
    /// request loads it again. Default: nothing is kept.
    async fn retire(&self, _deployment_id: &str) {}
}

/// Where the calls a worker's functions make (`http://NAME.reactor.internal/...`) go: a
/// router, in process (`reactor dev`) or over the internal network.
#[async_trait]
pub trait CallForwarder: Send + Sync + 'static {
    /// Runs the call `context` describes on its callee, as for any request. A refusal
    /// (policy, depth, deadline, capacity) is an error response with the platform's JSON
    /// body, as the caller's code reads it.
    async fn forward_call(
        &self,
        context: crate::calls::CallContext,
        request: http::Request<axum::body::Body>,
    ) -> http::Response<axum::body::Body>;
}

/// A [`CallForwarder`] set once its router exists: in one process the router is built
/// after the workers that need it. Until then (or never, on a host without one) a call is
/// refused with 503 `no_worker_available`.
#[derive(Clone, Default)]
pub struct CallLink(Arc<std::sync::OnceLock<Arc<dyn CallForwarder>>>);

impl CallLink {
    pub fn new() -> Self {
        Self::default()
    }

    /// A link that is set already.
    pub fn to(forwarder: Arc<dyn CallForwarder>) -> Self {
        let link = Self::new();
        link.set(forwarder);
        link
    }

    /// Sets where calls go; a second call changes nothing.
    pub fn set(&self, forwarder: Arc<dyn CallForwarder>) {
        let _ = self.0.set(forwarder);
    }

    pub fn get(&self) -> Option<&Arc<dyn CallForwarder>> {
        self.0.get()
    }
}

/// One implementation of a role per runtime.
pub struct ByRuntime<T: ?Sized> {
    by_runtime: HashMap<Runtime, Arc<T>>,
}

/// The in-process workers that run functions.
pub type Runtimes = ByRuntime<dyn RuntimeWorker>;
/// The in-process builders.
pub type Builders = ByRuntime<dyn Builder>;
/// The release steps the control plane runs on promote.
pub type Releases = ByRuntime<dyn Release>;

impl<T: ?Sized> Default for ByRuntime<T> {
    fn default() -> Self {
        Self {
            by_runtime: HashMap::new(),
        }
    }
}

impl<T: ?Sized> Clone for ByRuntime<T> {
    fn clone(&self) -> Self {
        Self {
            by_runtime: self.by_runtime.clone(),
        }
    }
}

impl<T: ?Sized + RuntimeRole> ByRuntime<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, role: Arc<T>) -> Self {
        self.by_runtime.insert(role.runtime(), role);
        self
    }

    pub fn get(&self, runtime: Runtime) -> Option<&Arc<T>> {
        self.by_runtime.get(&runtime)
    }

    /// The error for a runtime with nothing to run, build or release it.
    pub fn no_worker(runtime: Runtime) -> ApiError {
        ApiError::new(
            ErrorCode::NoWorkerAvailable,
            format!("no worker is available for runtime {runtime}"),
        )
        .with_detail("runtime", runtime.as_str())
    }
}
