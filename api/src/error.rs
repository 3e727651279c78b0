//! One error-code enum for the platform, each code mapped once to its HTTP status and its
//! gRPC code ([`ErrorCode`]'s table), and the JSON body `{"error": {"code", "message", "details"}}` every service answers with.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
    FunctionNotFound,
    DeploymentNotFound,
    OrgNotFound,
    TokenNotFound,
    UserNotFound,
    FunctionExists,
    OrgExists,
    UserExists,
    InvalidInput,
    ManifestInvalid,
    BundleTooLarge,
    PayloadTooLarge,
    DeploymentNotReady,
    FunctionTimeout,
    TooManyRequests,
    FunctionCrashed,
    PolicyDenied,
    WorkerUnavailable,
    NoWorkerAvailable,
    RuntimeDisabled,
    NotFound,
    MethodNotAllowed,
    QuotaExceeded,
    /// A call between functions went past `functions.calls.max_depth` hops.
    CallDepthExceeded,
    /// A call to a function its caller's manifest `calls` does not name.
    CallNotAllowed,
    /// A call made with less time left than the deadline margin.
    DeadlineExceeded,
    /// The function's circuit breaker is open (`interceptors.circuit_breaker`).
    CircuitOpen,
    /// A function's answer broke its contract's `output` schema.
    InvalidOutput,
    Internal,
}

/// gRPC status codes, numbered as in the gRPC specification (`tonic::Code` has the same
/// numbers), for the services that answer over gRPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum GrpcCode {
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl ErrorCode {
    /// The contract of each code, side by side: its JSON name, its HTTP status and its
    /// gRPC code. Every API maps errors through this table and nowhere else.
    fn contract(self) -> (&'static str, StatusCode, GrpcCode) {
        use ErrorCode::*;
        use GrpcCode as G;
        match self {
            Unauthorized => ("unauthorized", StatusCode::UNAUTHORIZED, G::Unauthenticated),
            Forbidden => ("forbidden", StatusCode::FORBIDDEN, G::PermissionDenied),
            PolicyDenied => ("policy_denied", StatusCode::FORBIDDEN, G::PermissionDenied),
            FunctionNotFound => ("function_not_found", StatusCode::NOT_FOUND, G::NotFound),
            DeploymentNotFound => ("deployment_not_found", StatusCode::NOT_FOUND, G::NotFound),
            OrgNotFound => ("org_not_found", StatusCode::NOT_FOUND, G::NotFound),
            TokenNotFound => ("token_not_found", StatusCode::NOT_FOUND, G::NotFound),
            UserNotFound => ("user_not_found", StatusCode::NOT_FOUND, G::NotFound),
            NotFound => ("not_found", StatusCode::NOT_FOUND, G::NotFound),
            FunctionExists => ("function_exists", StatusCode::CONFLICT, G::AlreadyExists),
            OrgExists => ("org_exists", StatusCode::CONFLICT, G::AlreadyExists),
            UserExists => ("user_exists", StatusCode::CONFLICT, G::AlreadyExists),
            InvalidInput => ("invalid_input", StatusCode::BAD_REQUEST, G::InvalidArgument),
            ManifestInvalid => (
                "manifest_invalid",
                StatusCode::UNPROCESSABLE_ENTITY,
                G::InvalidArgument,
            ),
            RuntimeDisabled => (
                "runtime_disabled",
                StatusCode::UNPROCESSABLE_ENTITY,
                G::InvalidArgument,
            ),
            BundleTooLarge => (
                "bundle_too_large",
                StatusCode::PAYLOAD_TOO_LARGE,
                G::InvalidArgument,
            ),
            PayloadTooLarge => (
                "payload_too_large",
                StatusCode::PAYLOAD_TOO_LARGE,
                G::InvalidArgument,
            ),
            DeploymentNotReady => (
                "deployment_not_ready",
                StatusCode::SERVICE_UNAVAILABLE,
                G::Unavailable,
            ),
            NoWorkerAvailable => (
                "no_worker_available",
                StatusCode::SERVICE_UNAVAILABLE,
                G::Unavailable,
            ),
            FunctionTimeout => (
                "function_timeout",
                StatusCode::REQUEST_TIMEOUT,
                G::DeadlineExceeded,
            ),
            TooManyRequests => (
                "too_many_requests",
                StatusCode::TOO_MANY_REQUESTS,
                G::ResourceExhausted,
            ),
            FunctionCrashed => (
                "function_crashed",
                StatusCode::INTERNAL_SERVER_ERROR,
                G::Internal,
            ),
            Internal => ("internal", StatusCode::INTERNAL_SERVER_ERROR, G::Internal),
            WorkerUnavailable => (
                "worker_unavailable",
                StatusCode::BAD_GATEWAY,
                G::Unavailable,
            ),
            MethodNotAllowed => (
                "method_not_allowed",
                StatusCode::METHOD_NOT_ALLOWED,
                G::Unimplemented,
            ),
            QuotaExceeded => (
                "quota_exceeded",
                StatusCode::TOO_MANY_REQUESTS,
                G::ResourceExhausted,
            ),
            CallDepthExceeded => (
                "call_depth_exceeded",
                StatusCode::LOOP_DETECTED,
                G::ResourceExhausted,
            ),
            CallNotAllowed => (
                "call_not_allowed",
                StatusCode::FORBIDDEN,
                G::PermissionDenied,
            ),
            DeadlineExceeded => (
                "deadline_exceeded",
                StatusCode::GATEWAY_TIMEOUT,
                G::DeadlineExceeded,
            ),
            CircuitOpen => (
                "circuit_open",
                StatusCode::SERVICE_UNAVAILABLE,
                G::Unavailable,
            ),
            InvalidOutput => ("invalid_output", StatusCode::BAD_GATEWAY, G::Internal),
        }
    }

    pub fn status(self) -> StatusCode {
        self.contract().1
    }

    pub fn grpc_code(self) -> GrpcCode {
        self.contract().2
    }

    pub fn as_str(self) -> &'static str {
        self.contract().0
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The request id of the request being served, set by [`with_request_id`] so that every
/// error body can carry it without threading it through each handler.
pub mod request_id {
    use std::future::Future;

    tokio::task_local! {
        static REQUEST_ID: String;
    }

    /// Runs `fut` with `id` as the current request id.
    pub async fn scope<F: Future>(id: String, fut: F) -> F::Output {
        REQUEST_ID.scope(id, fut).await
    }

    /// The current request id, when inside [`scope`].
    pub fn current() -> Option<String> {
        REQUEST_ID.try_with(|id| id.clone()).ok()
    }

    /// The caller's request id when it is reasonable (1 to 128 visible ASCII characters),
    /// else a new `req_<ULID>`: what the HTTP middleware and the gRPC services use.
    pub fn accept(given: Option<&str>) -> String {
        given
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_string)
            .unwrap_or_else(|| format!("req_{}", ulid::Ulid::new()))
    }

    /// The request id of a request, as an extension set by [`middleware`].
    #[derive(Clone, Debug)]
    pub struct RequestId(pub String);

    /// Axum middleware: takes the caller's `X-Request-Id` when it is reasonable, else
    /// makes one; serves the request inside [`scope`] and echoes the id on the response.
    pub async fn middleware(
        mut req: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        let id = accept(
            req.headers()
                .get(crate::headers::REQUEST_ID)
                .and_then(|v| v.to_str().ok()),
        );
        req.extensions_mut().insert(RequestId(id.clone()));
        let mut response = scope(id.clone(), next.run(req)).await;
        if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
            response.headers_mut().insert(crate::headers::REQUEST_ID, v);
        }
        response
    }
}

/// The body of every platform error; the response also names the code in
/// `X-Reactor-Error`. (`ApiError::to_body` writes it.)
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

/// A platform error: its code, a message for people, and details for programs.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorObject {
    pub code: ErrorCode,
    pub message: String,
    /// What the code's documentation says it carries (`retry_after_secs`, `pool_limit`,
    /// JSON pointers of `invalid_input`, ...), and `request_id`.
    #[schema(value_type = Object)]
    pub details: Map<String, Value>,
}

/// A platform error as the public API returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Map<String, Value>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Map::new(),
        }
    }

    pub fn with_detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The JSON body, with `request_id` added to `details` when one is known.
    pub fn to_body(&self) -> Value {
        let mut details = self.details.clone();
        if let Some(id) = request_id::current() {
            details
                .entry("request_id".to_string())
                .or_insert(Value::String(id));
        }
        serde_json::to_value(ErrorBody {
            error: ErrorObject {
                code: self.code,
                message: self.message.clone(),
                details,
            },
        })
        .unwrap_or(Value::Null)
    }

    /// Parses an error body produced by [`ApiError::to_body`] (used by clients).
    pub fn from_body(body: &Value) -> Option<Self> {
        let err = body.get("error")?;
        let code: ErrorCode = serde_json::from_value(err.get("code")?.clone()).ok()?;
        let message = err.get("message")?.as_str()?.to_string();
        let details = err
            .get("details")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        Some(Self {
            code,
            message,
            details,
        })
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = self.to_body();
        let mut response = (status, axum::Json(body)).into_response();
        // The platform refused or failed the request, as opposed to a function answering
        // with an error status: clients (the SDK's `invoke`) tell the two apart by this.
        response.headers_mut().insert(
            crate::headers::ERROR,
            HeaderValue::from_static(self.code.as_str()),
        );
        // 429 and an open breaker say when to come back: what the error says
        // (`retry_after_secs`: the breaker's time left, a sign-in backoff), else a second.
        let retry_after = match self.code {
            ErrorCode::TooManyRequests | ErrorCode::CircuitOpen => Some(
                self.details
                    .get("retry_after_secs")
                    .and_then(Value::as_u64)
                    .unwrap_or(1),
            ),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_serde_and_as_str() {
        for code in [
            ErrorCode::DeploymentNotReady,
            ErrorCode::FunctionTimeout,
            ErrorCode::TooManyRequests,
            ErrorCode::FunctionCrashed,
            ErrorCode::ManifestInvalid,
            ErrorCode::BundleTooLarge,
            ErrorCode::PayloadTooLarge,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::FunctionNotFound,
            ErrorCode::CallDepthExceeded,
            ErrorCode::CallNotAllowed,
            ErrorCode::DeadlineExceeded,
            ErrorCode::InvalidOutput,
        ] {
            let json = serde_json::to_value(code).expect("serializes");
            assert_eq!(json, Value::String(code.as_str().to_string()));
            let back: ErrorCode = serde_json::from_value(json).expect("deserializes");
            assert_eq!(back, code);
        }
        assert_eq!(ErrorCode::DeploymentNotReady.status().as_u16(), 503);
        assert_eq!(ErrorCode::FunctionTimeout.status().as_u16(), 408);
        assert_eq!(ErrorCode::TooManyRequests.status().as_u16(), 429);
        assert_eq!(ErrorCode::ManifestInvalid.status().as_u16(), 422);
        assert_eq!(ErrorCode::BundleTooLarge.status().as_u16(), 413);
        assert_eq!(ErrorCode::WorkerUnavailable.status().as_u16(), 502);
    }

    #[test]
    fn call_codes_have_their_contract() {
        let contract = |c: ErrorCode| (c.as_str(), c.status().as_u16(), c.grpc_code());
        assert_eq!(
            contract(ErrorCode::CallDepthExceeded),
            ("call_depth_exceeded", 508, GrpcCode::ResourceExhausted)
        );
        assert_eq!(
            contract(ErrorCode::CallNotAllowed),
            ("call_not_allowed", 403, GrpcCode::PermissionDenied)
        );
        assert_eq!(
            contract(ErrorCode::DeadlineExceeded),
            ("deadline_exceeded", 504, GrpcCode::DeadlineExceeded)
        );
        assert_eq!(
            contract(ErrorCode::CircuitOpen),
            ("circuit_open", 503, GrpcCode::Unavailable)
        );
        assert_eq!(
            contract(ErrorCode::InvalidOutput),
            ("invalid_output", 502, GrpcCode::Internal)
        );
        let open = ApiError::new(ErrorCode::CircuitOpen, "open")
            .with_detail("retry_after_secs", 7)
            .into_response();
        assert_eq!(open.headers()["retry-after"], "7");
        // The platform's function timeout stays a different code.
        assert_ne!(
            ErrorCode::DeadlineExceeded.as_str(),
            ErrorCode::FunctionTimeout.as_str()
        );
        let body = ApiError::new(ErrorCode::CallDepthExceeded, "too deep").to_body();
        assert_eq!(
            ApiError::from_body(&body).expect("parses").code,
            ErrorCode::CallDepthExceeded
        );
    }

    #[tokio::test]
    async fn body_carries_request_id_inside_scope() {
        let err = ApiError::new(ErrorCode::FunctionNotFound, "function hello not found")
            .with_detail("function", "hello");
        let body = request_id::scope("req_1".into(), async { err.to_body() }).await;
        assert_eq!(body["error"]["code"], "function_not_found");
        assert_eq!(body["error"]["details"]["request_id"], "req_1");
        let parsed = ApiError::from_body(&body).expect("parses");
        assert_eq!(parsed.code, ErrorCode::FunctionNotFound);
    }
}
