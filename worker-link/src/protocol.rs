//! The internal headers and how the spec and failures travel.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reactor_api::{DeploymentSpec, InvokeError, Runtime};
use reactor_proto::routing::FunctionRoute;
use serde::{Deserialize, Serialize};

/// Path prefix of invocations on a worker; health lives beside it.
pub const INVOKE_PREFIX: &str = "/invoke";

/// Path of "load this deployment now" on a worker.
pub const PREPARE_PATH: &str = "/prepare";

/// Request: the internal token.
pub const AUTH: &str = "x-reactor-internal-auth";
/// Request: the deployment, base64url JSON of a `DeploymentSpec`.
pub const SPEC: &str = "x-reactor-internal-spec";
/// Request: milliseconds left before the handler's deadline.
pub const TIMEOUT_MS: &str = "x-reactor-internal-timeout-ms";
/// Response: `true` when the invocation waited for a cold load.
pub const COLD_START: &str = "x-reactor-internal-cold-start";
/// Response: milliseconds the worker took to the response headers.
pub const WORKER_MS: &str = "x-reactor-internal-worker-ms";
/// Response: the invocation failed before the headers; the body is a [`Failure`].
pub const ERROR: &str = "x-reactor-internal-error";

/// Every internal header, removed from what crosses to or from a function.
pub const ALL: [&str; 6] = [AUTH, SPEC, TIMEOUT_MS, COLD_START, WORKER_MS, ERROR];

pub fn encode_spec(spec: &DeploymentSpec) -> String {
    // Serializing a struct of strings and numbers cannot fail.
    let json = serde_json::to_vec(spec).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

pub fn decode_spec(value: &str) -> Option<DeploymentSpec> {
    let json = URL_SAFE_NO_PAD.decode(value).ok()?;
    serde_json::from_slice(&json).ok()
}

/// The live deployment of a routing-table entry, as a worker runs it.
pub fn live_spec(f: &FunctionRoute, runtime: Runtime) -> Option<DeploymentSpec> {
    let d = f.live.as_ref()?;
    Some(DeploymentSpec {
        org: f.org.clone(),
        function: f.name.clone(),
        deployment_id: d.deployment_id.clone(),
        runtime,
        entrypoint: d.entrypoint.clone(),
        bundle_key: d.bundle_key.clone(),
        sha256: d.sha256.clone(),
        timeout_ms: d.timeout_ms,
        memory_mb: d.memory_mb,
        min_instances: d.min_instances,
        max_concurrency: d.max_concurrency,
    })
}

/// A failure before the response headers, as the worker reports it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Failure {
    pub kind: String,
    pub message: String,
    #[serde(default)]
    pub timeout_ms: u64,
    #[serde(default)]
    pub limit_bytes: u64,
}

impl Failure {
    pub fn from_error(e: &InvokeError) -> Self {
        let mut limit_bytes = 0;
        let (kind, message, timeout_ms) = match e {
            InvokeError::Timeout { timeout_ms } => ("timeout", e.to_string(), *timeout_ms),
            InvokeError::Crashed { message } => ("crashed", message.clone(), 0),
            InvokeError::NotReady { message } => ("not_ready", message.clone(), 0),
            InvokeError::Unavailable { message } => ("unavailable", message.clone(), 0),
            InvokeError::InvalidRequest { message } => ("invalid_request", message.clone(), 0),
            InvokeError::TooManyRequests { message } => ("too_many_requests", message.clone(), 0),
            InvokeError::PayloadTooLarge { limit_bytes: n } => {
                limit_bytes = *n;
                ("payload_too_large", e.to_string(), 0)
            }
        };
        Self {
            kind: kind.into(),
            message,
            timeout_ms,
            limit_bytes,
        }
    }

    pub fn into_error(self) -> InvokeError {
        let message = self.message;
        match self.kind.as_str() {
            "timeout" => InvokeError::Timeout {
                timeout_ms: self.timeout_ms,
            },
            "crashed" => InvokeError::Crashed { message },
            "not_ready" => InvokeError::NotReady { message },
            "invalid_request" => InvokeError::InvalidRequest { message },
            "too_many_requests" => InvokeError::TooManyRequests { message },
            "payload_too_large" => InvokeError::PayloadTooLarge {
                limit_bytes: self.limit_bytes,
            },
            _ => InvokeError::Unavailable { message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reactor_api::Runtime;

    #[test]
    fn specs_and_failures_round_trip() {
        let spec = DeploymentSpec {
            org: "acme".into(),
            function: "hello".into(),
            deployment_id: "dep_1".into(),
            runtime: Runtime::Wasm,
            entrypoint: "dir with space/ü.wasm".into(),
            bundle_key: "bundles/acme/hello/dep_1.tar.gz".into(),
            sha256: "ab".repeat(32),
            timeout_ms: 1000,
            memory_mb: 128,
            min_instances: 0,
            max_concurrency: None,
        };
        let header = encode_spec(&spec);
        assert!(http::HeaderValue::from_str(&header).is_ok());
        assert_eq!(decode_spec(&header), Some(spec));
        assert_eq!(decode_spec("not base64!"), None);
        let f = Failure::from_error(&InvokeError::Timeout { timeout_ms: 7 });
        assert!(matches!(
            f.into_error(),
            InvokeError::Timeout { timeout_ms: 7 }
        ));
        let f = Failure::from_error(&InvokeError::TooManyRequests {
            message: "queue full".into(),
        });
        assert_eq!(f.kind, "too_many_requests");
        assert!(matches!(
            f.into_error(),
            InvokeError::TooManyRequests { message } if message == "queue full"
        ));
    }
}
