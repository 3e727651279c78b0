//! The internal headers and how the spec and failures travel.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reactor_api::manifest::Calls;
use reactor_api::{DeploymentSpec, InvokeError, Runtime};
use reactor_proto::routing::{FunctionRoute, LiveDeployment};
use serde::{Deserialize, Serialize};

/// Path prefix of invocations on a worker; health lives beside it.
pub const INVOKE_PREFIX: &str = "/invoke";

/// Path of "load this deployment now" on a worker.
pub const PREPARE_PATH: &str = "/prepare";

/// Path of "build this deployment" on a worker: it reads the bundle from storage, checks
/// its hash against the spec's, unpacks it and runs its runtime's builder.
pub const BUILD_PATH: &str = "/build";

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
/// Response: the call failed before the headers; the body is the [`InvokeError`] as
/// tagged JSON ([`encode_error`]), or for a build a [`BuildFailed`].
pub const ERROR: &str = "x-reactor-internal-error";

/// Request: the functions of the call chain before this one, comma-separated
/// (`Invocation::chain`); absent for an outside request.
pub const CHAIN: &str = "x-reactor-internal-chain";
/// Request to a router's call listener: the [`reactor_api::calls::CallContext`],
/// base64url JSON.
pub const CALL: &str = "x-reactor-internal-call";

/// Path prefix of calls between functions on a router's call listener.
pub const CALL_PREFIX: &str = "/call";

/// Every internal header, removed from what crosses to or from a function.
pub const ALL: [&str; 8] = [
    AUTH, SPEC, TIMEOUT_MS, COLD_START, WORKER_MS, ERROR, CHAIN, CALL,
];

/// The path and query of `uri` below `prefix` (`/call/a?b` → `/a?b`; the prefix alone,
/// or with only a query, → `/`), as the function sees it.
pub fn relative_path(uri: &http::Uri, prefix: &str) -> Result<http::Uri, String> {
    let rest = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .strip_prefix(prefix)
        .unwrap_or("/");
    let rest = if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    };
    http::Uri::builder()
        .path_and_query(rest)
        .build()
        .map_err(|e| format!("the request path is not valid: {e}"))
}

/// The `CHAIN` value of a chain.
pub fn encode_chain(chain: &[String]) -> String {
    chain.join(",")
}

/// A `CHAIN` value: function names only, else `None`.
pub fn decode_chain(value: &str) -> Option<Vec<String>> {
    if value.is_empty() {
        return Some(Vec::new());
    }
    let chain: Vec<String> = value.split(',').map(str::to_string).collect();
    (chain.len() <= reactor_api::calls::MAX_DEPTH_CAP as usize
        && chain
            .iter()
            .all(|f| reactor_api::manifest::valid_function_name(f)))
    .then_some(chain)
}

pub fn encode_call(context: &reactor_api::calls::CallContext) -> String {
    // A struct of strings and numbers always serializes.
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(context).unwrap_or_default())
}

pub fn decode_call(value: &str) -> Option<reactor_api::calls::CallContext> {
    let json = URL_SAFE_NO_PAD.decode(value).ok()?;
    serde_json::from_slice(&json).ok()
}

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
        calls: d.calls.as_deref().map(|json| parse_calls(f, d, json)),
        pool: d.pool.as_deref().and_then(|json| {
            serde_json::from_str(json)
                .inspect_err(|e| {
                    tracing::warn!(org = %f.org, function = %f.name, deployment_id = %d.deployment_id, error = %e, "unreadable pool: the worker's own settings apply");
                })
                .ok()
        }),
    })
}

/// A live deployment's `calls`. JSON that does not read fails closed: nothing may be
/// called.
fn parse_calls(f: &FunctionRoute, d: &LiveDeployment, json: &str) -> Calls {
    serde_json::from_str(json).unwrap_or_else(|e| {
        tracing::warn!(org = %f.org, function = %f.name, deployment_id = %d.deployment_id, error = %e, "unreadable calls: the deployment may call nothing");
        Calls::new()
    })
}

/// The body of a [`BUILD_PATH`] answer that failed: why, as the user reads it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildFailed {
    pub message: String,
}

/// An [`InvokeError`] as it crosses the link (the worker sends it with [`ERROR`]).
pub fn encode_error(e: &InvokeError) -> Vec<u8> {
    // A tagged enum of strings and numbers always serializes.
    serde_json::to_vec(e).unwrap_or_default()
}

/// The [`InvokeError`] a worker sent; one this build cannot read (another version's kind)
/// says so instead of passing for another error.
pub fn decode_error(body: &[u8]) -> InvokeError {
    serde_json::from_slice(body).unwrap_or_else(|e| InvokeError::Unavailable {
        message: format!(
            "the worker reported a failure this router cannot read ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reactor_api::Runtime;
    use reactor_api::manifest::CallAlias;

    #[test]
    fn paths_are_relative_to_their_prefix() {
        let rel = |uri: &str| {
            relative_path(&uri.parse().expect("uri"), CALL_PREFIX)
                .expect("valid")
                .to_string()
        };
        assert_eq!(rel("/call"), "/");
        assert_eq!(rel("/call?a=1"), "/?a=1");
        assert_eq!(rel("/call/"), "/");
        assert_eq!(rel("/call/a%20b/c?x=%2F"), "/a%20b/c?x=%2F");
        assert_eq!(rel("/other"), "/");
    }

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
            calls: Some(Calls::from([(
                "users".to_string(),
                CallAlias {
                    function: Some("get-user".into()),
                    contract: None,
                    timeout_ms: Some(500),
                    interceptors: None,
                },
            )])),
            pool: Some(reactor_api::pool::Pool::Static {
                workers: 2,
                buffer: 4,
            }),
        };
        let header = encode_spec(&spec);
        assert!(http::HeaderValue::from_str(&header).is_ok());
        assert_eq!(decode_spec(&header), Some(spec));
        assert_eq!(decode_spec("not base64!"), None);
        let f = encode_error(&InvokeError::Timeout { timeout_ms: 7 });
        assert_eq!(f, br#"{"kind":"timeout","timeout_ms":7}"#);
        assert!(matches!(
            decode_error(&f),
            InvokeError::Timeout { timeout_ms: 7 }
        ));
        let f = encode_error(&InvokeError::TooManyRequests {
            message: "queue full".into(),
        });
        assert!(matches!(
            decode_error(&f),
            InvokeError::TooManyRequests { message } if message == "queue full"
        ));
        // A kind from another version is reported as unreadable, with what was sent.
        let unknown = decode_error(br#"{"kind":"melted","message":"x"}"#);
        assert!(
            matches!(&unknown, InvokeError::Unavailable { message } if message.contains("melted")),
            "{unknown:?}"
        );
    }

    #[test]
    fn live_specs_carry_the_calls() {
        let route = |calls: Option<&str>| FunctionRoute {
            org: "acme".into(),
            name: "hello".into(),
            runtime: "wasm".into(),
            live: Some(LiveDeployment {
                deployment_id: "dep_1".into(),
                calls: calls.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        };
        let calls = |f: FunctionRoute| live_spec(&f, Runtime::Wasm).and_then(|s| s.calls);
        let users = Calls::from([(
            "users".to_string(),
            CallAlias {
                function: Some("get-user".into()),
                contract: None,
                timeout_ms: None,
                interceptors: None,
            },
        )]);
        assert_eq!(
            calls(route(Some(r#"{"users":{"function":"get-user"}}"#))),
            Some(users)
        );
        assert_eq!(
            calls(route(Some("not json"))),
            Some(Calls::new()),
            "unreadable calls allow nothing"
        );
        assert_eq!(
            calls(route(None)),
            None,
            "no calls: any function of the org"
        );
    }
}
