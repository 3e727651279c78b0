//! One error-code enum for the platform, each code mapped once to an HTTP status, and the
//! JSON body `{"error": {"code", "message", "details"}}` every service answers with.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
    FunctionNotFound,
    DeploymentNotFound,
    OrgNotFound,
    TokenNotFound,
    FunctionExists,
    OrgExists,
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
    Internal,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            Unauthorized => StatusCode::UNAUTHORIZED,
            Forbidden | PolicyDenied => StatusCode::FORBIDDEN,
            FunctionNotFound | DeploymentNotFound | OrgNotFound | TokenNotFound | NotFound => {
                StatusCode::NOT_FOUND
            }
            FunctionExists | OrgExists => StatusCode::CONFLICT,
            InvalidInput => StatusCode::BAD_REQUEST,
            ManifestInvalid | RuntimeDisabled => StatusCode::UNPROCESSABLE_ENTITY,
            BundleTooLarge | PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            DeploymentNotReady | NoWorkerAvailable => StatusCode::SERVICE_UNAVAILABLE,
            FunctionTimeout => StatusCode::REQUEST_TIMEOUT,
            TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            FunctionCrashed | Internal => StatusCode::INTERNAL_SERVER_ERROR,
            WorkerUnavailable => StatusCode::BAD_GATEWAY,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            Unauthorized => "unauthorized",
            Forbidden => "forbidden",
            FunctionNotFound => "function_not_found",
            DeploymentNotFound => "deployment_not_found",
            OrgNotFound => "org_not_found",
            TokenNotFound => "token_not_found",
            FunctionExists => "function_exists",
            OrgExists => "org_exists",
            InvalidInput => "invalid_input",
            ManifestInvalid => "manifest_invalid",
            BundleTooLarge => "bundle_too_large",
            PayloadTooLarge => "payload_too_large",
            DeploymentNotReady => "deployment_not_ready",
            FunctionTimeout => "function_timeout",
            TooManyRequests => "too_many_requests",
            FunctionCrashed => "function_crashed",
            PolicyDenied => "policy_denied",
            WorkerUnavailable => "worker_unavailable",
            NoWorkerAvailable => "no_worker_available",
            RuntimeDisabled => "runtime_disabled",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            Internal => "internal",
        }
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
        serde_json::json!({
            "error": {
                "code": self.code.as_str(),
                "message": self.message,
                "details": details,
            }
        })
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
        if self.code == ErrorCode::TooManyRequests {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
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
        ] {
            let json = serde_json::to_value(code).expect("serializes");
            assert_eq!(json, Value::String(code.as_str().to_string()));
        }
        assert_eq!(ErrorCode::DeploymentNotReady.status().as_u16(), 503);
        assert_eq!(ErrorCode::FunctionTimeout.status().as_u16(), 408);
        assert_eq!(ErrorCode::TooManyRequests.status().as_u16(), 429);
        assert_eq!(ErrorCode::ManifestInvalid.status().as_u16(), 422);
        assert_eq!(ErrorCode::BundleTooLarge.status().as_u16(), 413);
        assert_eq!(ErrorCode::WorkerUnavailable.status().as_u16(), 502);
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
