//! The router's call listener (`data_plane.call_listen`): calls between functions, sent
//! by the worker where each started (`reactor_worker_link::calls`). Only workers reach it:
//! the internal token on every request and, with `internal.tls`, a worker's certificate
//! (the listener drops any other). The context in `x-reactor-internal-call` is what that
//! worker vouches for; the router resolves the callee in the caller's org, checks depth,
//! deadline and the callee's policies, and forwards as for any request
//! ([`DataPlane::call`]). Never merged into the public listener.

use crate::DataPlane;
use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use reactor_api::token::InternalToken;
use reactor_api::{ApiError, CallForwarder, ErrorCode, headers};
use reactor_worker_link::protocol;
use std::sync::Arc;

struct CallState {
    dp: Arc<DataPlane>,
    token: InternalToken,
}

/// The call routes, authenticated with `internal_token`.
pub fn call_router(dp: Arc<DataPlane>, internal_token: &str) -> Router {
    let state = Arc::new(CallState {
        dp,
        token: InternalToken::new(internal_token),
    });
    Router::new()
        .route(protocol::CALL_PREFIX, axum::routing::any(call))
        .route("/call/", axum::routing::any(call))
        .route("/call/{*rest}", axum::routing::any(call))
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::disable())
}

async fn call(State(state): State<Arc<CallState>>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let authorized = parts
        .headers
        .get(protocol::AUTH)
        .is_some_and(|v| state.token.matches(v.as_bytes()));
    if !authorized {
        return ApiError::new(
            ErrorCode::Unauthorized,
            "calls between functions come from workers only: a valid internal token is required",
        )
        .into_response();
    }
    let Some(mut context) = parts
        .headers
        .get(protocol::CALL)
        .and_then(|v| v.to_str().ok())
        .and_then(protocol::decode_call)
    else {
        return ApiError::new(
            ErrorCode::InvalidInput,
            format!("{} is missing or not a call context", protocol::CALL),
        )
        .into_response();
    };
    for name in protocol::ALL {
        parts.headers.remove(name);
    }
    parts.uri = match protocol::relative_path(&parts.uri, protocol::CALL_PREFIX) {
        Ok(uri) => uri,
        Err(message) => return ApiError::new(ErrorCode::InvalidInput, message).into_response(),
    };
    if let Some(baggage) = parts
        .headers
        .get(headers::BAGGAGE)
        .and_then(|v| v.to_str().ok())
    {
        // The worker sends the context's baggage as the header itself (see
        // `RouterCalls`): it is the largest part, kept out of the context's header.
        context.baggage = Some(baggage.to_string());
    }
    let request = axum::http::Request::from_parts(parts, body);
    state.dp.forward_call(context, request).await
}
