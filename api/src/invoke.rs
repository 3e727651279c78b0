//! What an invocation is, as it crosses from a router to a runtime worker: the
//! deployment to run ([`DeploymentSpec`]), the request ([`Invocation`]), its outcome and
//! its failures ([`InvokeError`], which crosses the worker link as tagged JSON).

use crate::{ApiError, ErrorCode, Runtime};
use async_trait::async_trait;
use axum::body::Body;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Everything a worker needs to run one deployment, as the routing table carries it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeploymentSpec {
    pub org: String,
    pub function: String,
    pub deployment_id: String,
    pub runtime: Runtime,
    /// Path of the entrypoint inside the bundle.
    pub entrypoint: String,
    /// Storage key of the bundle (tar.gz).
    pub bundle_key: String,
    pub sha256: String,
    pub timeout_ms: u64,
    pub memory_mb: u32,
    /// Instances (Bun processes) each worker keeps started for this deployment while it
    /// is live: `concurrency.min_instances`.
    #[serde(default)]
    pub min_instances: u32,
    /// `concurrency.max_concurrency` of the manifest, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// The manifest's `calls`: the aliases this deployment may call; `None`: any function
    /// of its org.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<crate::manifest::Calls>,
    /// The manifest's `pool`; `None`: the worker's own settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<crate::pool::Pool>,
}

impl DeploymentSpec {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// One request for a function, already authenticated and rewritten by the router: the
/// URI is relative to the function's mount.
pub struct Invocation {
    pub spec: Arc<DeploymentSpec>,
    pub request: http::Request<Body>,
    /// When the handler must have produced its response headers (and, for the body, when
    /// the invocation is aborted).
    pub deadline: tokio::time::Instant,
    pub request_id: String,
    /// The functions of the call chain before this one, the caller last; empty for an
    /// outside request (`crate::calls`).
    pub chain: Vec<String>,
}

impl Invocation {
    /// The chain with this invocation's own function last: its length is the depth.
    pub fn path(&self) -> Vec<String> {
        let mut path = self.chain.clone();
        path.push(self.spec.function.clone());
        path
    }
}

pub struct InvokeOutcome {
    pub response: http::Response<Body>,
    /// This request waited for code to be loaded or an instance initialised.
    pub cold_start: bool,
}

/// Why an invocation failed before its response headers. It crosses the worker link as
/// JSON tagged by `kind` (`{"kind":"timeout","timeout_ms":1000}`); a kind this build does
/// not know is an error to decode, never a silent `Unavailable`.
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InvokeError {
    #[error("the handler did not respond within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    #[error("{message}")]
    Crashed { message: String },
    #[error("{message}")]
    NotReady { message: String },
    #[error("{message}")]
    Unavailable { message: String },
    #[error("{message}")]
    InvalidRequest { message: String },
    #[error("{message}")]
    TooManyRequests { message: String },
    /// The runtime takes request bodies only up to `limit_bytes` (Lambda: 6 MB).
    #[error("the request body is larger than {limit_bytes} bytes")]
    PayloadTooLarge { limit_bytes: u64 },
}

/// A failed invocation, and whether it had waited for a cold load first.
#[derive(Debug)]
pub struct InvokeFailure {
    pub error: InvokeError,
    pub cold_start: bool,
}

impl From<InvokeError> for InvokeFailure {
    fn from(error: InvokeError) -> Self {
        Self {
            error,
            cold_start: false,
        }
    }
}

impl InvokeError {
    /// The public error for this failure of `spec`, `elapsed` after the router got it.
    pub fn to_api_error(&self, spec: &DeploymentSpec, elapsed: Duration) -> ApiError {
        let duration_ms = elapsed.as_millis() as u64;
        let err = match self {
            InvokeError::Timeout { timeout_ms } => ApiError::new(
                ErrorCode::FunctionTimeout,
                format!(
                    "function {} exceeded limits.timeout_ms ({timeout_ms} ms)",
                    spec.function
                ),
            )
            .with_detail("timeout_ms", *timeout_ms),
            InvokeError::Crashed { message } => ApiError::new(
                ErrorCode::FunctionCrashed,
                format!("function {} crashed: {message}", spec.function),
            ),
            InvokeError::NotReady { message } => ApiError::new(
                ErrorCode::DeploymentNotReady,
                format!(
                    "deployment {} of function {} is not ready: {message}",
                    spec.deployment_id, spec.function
                ),
            ),
            InvokeError::InvalidRequest { message } => ApiError::new(
                ErrorCode::InvalidInput,
                format!(
                    "the request cannot be passed to function {}: {message}",
                    spec.function
                ),
            ),
            InvokeError::Unavailable { message } => ApiError::new(
                ErrorCode::WorkerUnavailable,
                format!(
                    "the {} worker failed before answering: {message}",
                    spec.runtime
                ),
            ),
            InvokeError::TooManyRequests { message } => ApiError::new(
                ErrorCode::TooManyRequests,
                format!("function {} is at capacity: {message}", spec.function),
            ),
            InvokeError::PayloadTooLarge { limit_bytes } => ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the request body is larger than the {} runtime accepts ({limit_bytes} bytes)",
                    spec.runtime
                ),
            )
            .with_detail("limit_bytes", *limit_bytes),
        };
        err.with_detail("deployment_id", spec.deployment_id.clone())
            .with_detail("duration_ms", duration_ms)
    }
}

/// Where workers get a deployment's environment: the env values and decrypted secrets it
/// pinned when it was uploaded. In-process it reads the store; a worker service asks the
/// control plane. Workers cache it per deployment and hand it only to the instance.
#[async_trait]
pub trait EnvSource: Send + Sync + 'static {
    async fn deployment_env(
        &self,
        spec: &DeploymentSpec,
    ) -> Result<Arc<BTreeMap<String, String>>, String>;
}

/// No env at all (tools and tests without a control plane).
pub struct NoEnv;

#[async_trait]
impl EnvSource for NoEnv {
    async fn deployment_env(
        &self,
        _spec: &DeploymentSpec,
    ) -> Result<Arc<BTreeMap<String, String>>, String> {
        Ok(Arc::default())
    }
}
