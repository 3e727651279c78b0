//! The admin HTTP API under `/fn/v1/_admin/`: a thin layer that authenticates, parses and
//! calls [`ControlPlane`].

use crate::ControlPlane;
use crate::auth::Caller;
use axum::extract::Query;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use reactor_api::model::{
    CreateFunction, CreateOrg, CreateToken, PromoteRequest, RollbackRequest, SetEnv,
};
use reactor_api::{ApiError, ErrorCode, headers};
use serde::de::DeserializeOwned;
use std::sync::Arc;

type Cp = State<Arc<ControlPlane>>;

impl FromRequestParts<Arc<ControlPlane>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        cp: &Arc<ControlPlane>,
    ) -> Result<Self, Self::Rejection> {
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        cp.authenticate(header(headers::AUTHORIZATION), header(headers::ORG))
            .await
    }
}

/// A JSON body whose errors are the platform's JSON errors.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidInput,
            format!("request body is not valid: {e}"),
        )
    })
}

/// The admin routes, to be merged into a server (they carry their full paths).
pub fn admin_router(cp: Arc<ControlPlane>) -> Router {
    let base = "/fn/v1/_admin";
    Router::new()
        .route(&format!("{base}/orgs"), post(create_org))
        .route(
            &format!("{base}/tokens"),
            get(list_tokens).post(create_token),
        )
        .route(&format!("{base}/tokens/{{id}}"), delete(revoke_token))
        .route(&format!("{base}/auth/token"), post(auth_token))
        .route(&format!("{base}/auth/revoke"), post(auth_revoke))
        .route(&format!("{base}/users"), get(list_users).post(create_user))
        .route(&format!("{base}/users/{{email}}"), delete(delete_user))
        .route(&format!("{base}/orgs/{{org}}/members"), get(list_members))
        .route(
            &format!("{base}/orgs/{{org}}/members/{{email}}"),
            put(set_member).delete(remove_member),
        )
        .route(
            &format!("{base}/functions"),
            get(list_functions).post(create_function),
        )
        .route(
            &format!("{base}/functions/{{name}}"),
            get(get_function).delete(delete_function),
        )
        .route(
            &format!("{base}/functions/{{name}}/deployments"),
            // The upload enforces bundle_max_bytes itself while streaming.
            get(list_deployments)
                .post(upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            &format!("{base}/functions/{{name}}/deployments/{{id}}"),
            get(get_deployment),
        )
        .route(&format!("{base}/functions/{{name}}/promote"), post(promote))
        .route(
            &format!("{base}/functions/{{name}}/rollback"),
            post(rollback),
        )
        .route(&format!("{base}/functions/{{name}}/env"), get(list_env))
        .route(
            &format!("{base}/functions/{{name}}/env/{{key}}"),
            put(set_env).delete(unset_env),
        )
        .route(
            &format!("{base}/functions/{{name}}/policy"),
            get(get_policy).put(set_policy).delete(clear_policy),
        )
        .route(&format!("{base}/functions/{{name}}/logs"), get(logs))
        .route(
            &format!("{base}/contracts"),
            get(list_contracts).post(create_contract),
        )
        .route(
            &format!("{base}/contracts/{{name}}"),
            get(get_contract).delete(delete_contract),
        )
        .route(
            &format!("{base}/contracts/{{name}}/binding"),
            put(bind_contract).delete(unbind_contract),
        )
        .route(
            &format!("{base}/contracts/{{name}}/openapi.json"),
            get(contract_openapi),
        )
        .route(
            &format!("{base}/{{*rest}}"),
            axum::routing::any(admin_not_found),
        )
        .with_state(cp)
}

async fn create_contract(State(cp): Cp, caller: Caller, body: Bytes) -> Result<Response, ApiError> {
    let req: reactor_api::contract::CreateContract = parse(&body)?;
    let created = cp.create_contract(&caller, req).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn list_contracts(State(cp): Cp, caller: Caller) -> Result<Response, ApiError> {
    Ok(Json(cp.list_contracts(&caller).await?).into_response())
}

async fn get_contract(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(cp.get_contract(&caller, &name).await?).into_response())
}

async fn delete_contract(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    cp.delete_contract(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn bind_contract(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: reactor_api::contract::BindContract = parse(&body)?;
    Ok(Json(cp.bind_contract(&caller, &name, Some(req)).await?).into_response())
}

async fn unbind_contract(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(cp.bind_contract(&caller, &name, None).await?).into_response())
}

async fn contract_openapi(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(cp.contract_openapi(&caller, &name).await?).into_response())
}

async fn admin_not_found(Path(rest): Path<String>) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no admin endpoint at /fn/v1/_admin/{rest}"),
    )
}

async fn create_org(State(cp): Cp, caller: Caller, body: Bytes) -> Result<Response, ApiError> {
    let req: CreateOrg = parse(&body)?;
    let created = cp.create_org(&caller, &req.name).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn create_token(State(cp): Cp, caller: Caller, body: Bytes) -> Result<Response, ApiError> {
    let req: CreateToken = parse(&body)?;
    let created = cp
        .create_token(&caller, req.role, req.name.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn list_tokens(State(cp): Cp, caller: Caller) -> Result<Response, ApiError> {
    Ok(Json(cp.list_tokens(&caller).await?).into_response())
}

async fn revoke_token(
    State(cp): Cp,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    cp.revoke_token(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The client's address, as the server saw the connection (none in tests that call the
/// router directly).
fn client_ip(extensions: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    use axum::extract::ConnectInfo;
    extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
        .or_else(|| {
            extensions
                .get::<ConnectInfo<reactor_service::tls::Peer>>()
                .map(|c| c.0.addr.ip())
        })
}

/// `POST /auth/token`: no bearer token; the grant is the credential.
async fn auth_token(State(cp): Cp, request: axum::extract::Request) -> Result<Response, ApiError> {
    let client = client_ip(request.extensions());
    let body = axum::body::to_bytes(request.into_body(), 64 * 1024)
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidInput,
                format!("request body is not valid: {e}"),
            )
        })?;
    let req: reactor_api::users::TokenRequest = parse(&body)?;
    let granted = cp.grant_token(req, client).await?;
    // Tokens are never cached by a proxy or a browser (RFC 6749, 5.1).
    Ok((
        [
            (axum::http::header::CACHE_CONTROL, "no-store"),
            (axum::http::header::PRAGMA, "no-cache"),
        ],
        Json(granted),
    )
        .into_response())
}

async fn auth_revoke(State(cp): Cp, body: Bytes) -> Result<Response, ApiError> {
    let req: reactor_api::users::RevokeRefresh = parse(&body)?;
    cp.revoke_refresh(&req.refresh_token).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn create_user(State(cp): Cp, caller: Caller, body: Bytes) -> Result<Response, ApiError> {
    let req: reactor_api::users::CreateUser = parse(&body)?;
    let created = cp.create_user(&caller, req).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn list_users(State(cp): Cp, caller: Caller) -> Result<Response, ApiError> {
    Ok(Json(cp.list_users(&caller).await?).into_response())
}

async fn delete_user(
    State(cp): Cp,
    caller: Caller,
    Path(email): Path<String>,
) -> Result<Response, ApiError> {
    cp.delete_user(&caller, &email).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_members(
    State(cp): Cp,
    caller: Caller,
    Path(org): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(cp.list_members(&caller, &org).await?).into_response())
}

async fn set_member(
    State(cp): Cp,
    caller: Caller,
    Path((org, email)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: reactor_api::users::SetMember = parse(&body)?;
    Ok(Json(cp.set_member(&caller, &org, &email, req.role).await?).into_response())
}

async fn remove_member(
    State(cp): Cp,
    caller: Caller,
    Path((org, email)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    cp.remove_member(&caller, &org, &email).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn create_function(State(cp): Cp, caller: Caller, body: Bytes) -> Result<Response, ApiError> {
    let req: CreateFunction = parse(&body)?;
    let created = cp.create_function(&caller, &req.name, req.runtime).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn list_functions(State(cp): Cp, caller: Caller) -> Result<Response, ApiError> {
    Ok(Json(cp.list_functions(&caller).await?).into_response())
}

async fn get_function(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(cp.get_function(&caller, &name).await?).into_response())
}

async fn delete_function(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    cp.delete_function(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn upload(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let sha = headers
        .get(headers::BUNDLE_SHA256)
        .and_then(|v| v.to_str().ok());
    let length = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut stream = body.into_data_stream();
    match cp.upload(&caller, &name, sha, length, &mut stream).await {
        Ok(info) => Ok((StatusCode::ACCEPTED, Json(info)).into_response()),
        Err(e) => {
            // A client too slow to finish in time is not waited for any longer.
            if !e.details.contains_key(UPLOAD_TIMEOUT_DETAIL) {
                drain(&mut stream).await;
            }
            Err(e)
        }
    }
}

/// The detail of an upload refused for not completing within `functions.upload_timeout_secs`.
pub(crate) const UPLOAD_TIMEOUT_DETAIL: &str = "upload_timeout_secs";

/// Most of a refused upload that is read and dropped before the error is sent.
const DRAIN_MAX_BYTES: u64 = 64 << 20;
/// The longest a refused upload is drained for.
const DRAIN_MAX_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads and drops the rest of a refused upload (bounded in bytes and time), so a client
/// still sending gets the error response rather than a connection reset mid-write.
async fn drain(stream: &mut axum::body::BodyDataStream) {
    use futures::StreamExt;
    let read = async {
        let mut seen = 0u64;
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len() as u64;
            if seen > DRAIN_MAX_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, read).await;
}

async fn list_deployments(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(cp.list_deployments(&caller, &name).await?).into_response())
}

async fn get_deployment(
    State(cp): Cp,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(Json(cp.get_deployment(&caller, &name, &id).await?).into_response())
}

async fn promote(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: PromoteRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PromoteRequest::default()
    } else {
        parse(&body)?
    };
    Ok(Json(
        cp.promote_with(&caller, &name, req.deployment_id.as_deref(), req.force)
            .await?,
    )
    .into_response())
}

async fn rollback(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: RollbackRequest = parse(&body)?;
    Ok(Json(cp.rollback(&caller, &name, &req.to_deployment_id).await?).into_response())
}

async fn list_env(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(cp.list_env(&caller, &name).await?).into_response())
}

async fn set_env(
    State(cp): Cp,
    caller: Caller,
    Path((name, key)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: SetEnv = parse(&body)?;
    Ok(Json(cp.set_env(&caller, &name, &key, req).await?).into_response())
}

async fn unset_env(
    State(cp): Cp,
    caller: Caller,
    Path((name, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    cp.unset_env(&caller, &name, &key).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_policy(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(cp.get_policy(&caller, &name).await?).into_response())
}

async fn set_policy(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(ErrorCode::InvalidInput, "policy is not UTF-8 JSON"))?;
    let policy = reactor_policy::Policy::from_json(text)
        .map_err(|e| ApiError::new(ErrorCode::InvalidInput, format!("policy is not valid: {e}")))?;
    Ok(Json(cp.set_policy(&caller, &name, Some(policy)).await?).into_response())
}

async fn clear_policy(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    cp.set_policy(&caller, &name, None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Server-sent events: the function's recent log history, then (unless
/// `?follow=false`) live entries as they come.
async fn logs(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
    query: Result<Query<crate::logs::LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query
        .map_err(|e| ApiError::new(ErrorCode::InvalidInput, format!("query is not valid: {e}")))?;
    let f = cp.function_for_logs(&caller, &name).await?;
    crate::logs::sse_response(cp.logs(), &f.org, &f.name, &query)
}
