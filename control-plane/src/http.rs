//! The admin HTTP API under `/fn/v1/_admin/`: a thin layer that authenticates, parses and
//! calls [`ControlPlane`].

use crate::ControlPlane;
use crate::auth::Caller;
use axum::extract::Query;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use bytes::Bytes;
use reactor_api::contract::{BindContract, ContractInfo, CreateContract};
use reactor_api::error::ErrorBody;
use reactor_api::model::{
    CreateFunction, CreateOrg, CreateToken, DeploymentInfo, EnvVarInfo, FunctionInfo, OrgCreated,
    PromoteRequest, RollbackRequest, SetEnv, TokenCreated, TokenInfo,
};
use reactor_api::users::{
    CreateUser, MemberInfo, RevokeRefresh, SetMember, TokenGranted, TokenRequest, UserInfo,
};
use reactor_api::{ApiError, ErrorCode, headers};
use reactor_policy::Policy;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::Arc;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

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

/// Where the admin API lives.
pub const ADMIN_BASE: &str = "/fn/v1/_admin";

/// The admin API's operations, each routed and described by its handler's
/// `#[utoipa::path]`: a route cannot be added without its description.
fn admin_routes() -> OpenApiRouter<Arc<ControlPlane>> {
    OpenApiRouter::new()
        .routes(routes!(create_org))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(auth_token))
        .routes(routes!(auth_revoke))
        .routes(routes!(list_users, create_user))
        .routes(routes!(delete_user))
        .routes(routes!(list_members))
        .routes(routes!(set_member, remove_member))
        .routes(routes!(list_functions, create_function))
        .routes(routes!(get_function, delete_function))
        // The upload enforces bundle_max_bytes itself while streaming.
        .routes(routes!(list_deployments, upload).layer(DefaultBodyLimit::disable()))
        .routes(routes!(get_deployment))
        .routes(routes!(promote))
        .routes(routes!(rollback))
        .routes(routes!(list_env))
        .routes(routes!(set_env, unset_env))
        .routes(routes!(get_policy, set_policy, clear_policy))
        .routes(routes!(logs))
        .routes(routes!(list_contracts, create_contract))
        .routes(routes!(get_contract, delete_contract))
        .routes(routes!(bind_contract, unbind_contract))
        .routes(routes!(contract_openapi))
        .routes(routes!(openapi_json))
}

/// The admin routes, to be merged into a server (they carry their full paths).
pub fn admin_router(cp: Arc<ControlPlane>) -> Router {
    let (router, _) = OpenApiRouter::new()
        .nest(ADMIN_BASE, admin_routes())
        .split_for_parts();
    router
        .route(
            &format!("{ADMIN_BASE}/{{*rest}}"),
            axum::routing::any(admin_not_found),
        )
        .with_state(cp)
}

/// The OpenAPI 3.1 document of the admin and invoke APIs, built once from the handlers'
/// descriptions, the API's shapes and [`reactor_api::openapi`].
pub fn openapi() -> &'static Value {
    static DOC: std::sync::LazyLock<Value> = std::sync::LazyLock::new(build_openapi);
    &DOC
}

/// [`openapi`] as served: serialized once.
fn openapi_bytes() -> Bytes {
    static BYTES: std::sync::LazyLock<Bytes> =
        std::sync::LazyLock::new(|| Bytes::from(serde_json::to_vec(openapi()).unwrap_or_default()));
    BYTES.clone()
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Reactor",
        description = "The admin API (`/fn/v1/_admin/...`: orgs, tokens, users, functions, \
                       deployments, env, policies, logs, contracts) and the invoke API \
                       (`/fn/v1/{name}/...`). Errors are `ErrorBody` with the code also in \
                       `X-Reactor-Error`."
    ),
    components(schemas(ErrorBody, reactor_api::logs::LogEntry)),
    tags(
        (name = "auth", description = "Sign-in: password and refresh grants, sign-out"),
        (name = "functions", description = "Functions"),
        (name = "deployments", description = "Uploads, promotion and rollback"),
        (name = "env", description = "Variables and secrets"),
        (name = "policies", description = "Invoke policies"),
        (name = "logs", description = "Function logs"),
        (name = "contracts", description = "Named contracts"),
        (name = "orgs", description = "Orgs"),
        (name = "tokens", description = "API tokens"),
        (name = "users", description = "Users who sign in"),
        (name = "members", description = "Org members"),
        (name = "meta", description = "This document"),
        (name = "invoke", description = "Invoking functions")
    )
)]
struct ApiDoc;

fn build_openapi() -> Value {
    use utoipa::OpenApi as _;
    let mut doc = ApiDoc::openapi();
    // The API's version (its paths are /fn/v1), not the build's: the document is public.
    doc.info.version = "v1".to_string();
    let routed = OpenApiRouter::<Arc<ControlPlane>>::new()
        .nest(ADMIN_BASE, admin_routes())
        .into_openapi();
    doc.merge(routed);
    let mut doc = serde_json::to_value(doc).unwrap_or(Value::Null);
    if let Some(paths) = doc["paths"].as_object_mut() {
        paths.extend(reactor_api::openapi::invoke_paths());
    }
    reactor_api::openapi::finish(&mut doc);
    doc
}

#[utoipa::path(get, path = "/openapi.json", tag = "meta", summary = "This document: the admin and invoke APIs as OpenAPI 3.1", responses((status = 200, description = "The document", body = Object)))]
async fn openapi_json() -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, "application/json"),
            (axum::http::header::CACHE_CONTROL, "public, max-age=300"),
        ],
        openapi_bytes(),
    )
        .into_response()
}

#[utoipa::path(post, path = "/contracts", tag = "contracts", summary = "Create a named contract (immutable once created)", request_body = CreateContract, responses((status = 201, description = "The contract", body = ContractInfo), (status = 409, description = "the contract exists", body = ErrorBody)), security(("bearer" = [])))]
async fn create_contract(State(cp): Cp, caller: Caller, body: Bytes) -> Result<Response, ApiError> {
    let req: reactor_api::contract::CreateContract = parse(&body)?;
    let created = cp.create_contract(&caller, req).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[utoipa::path(get, path = "/contracts", tag = "contracts", summary = "The org's named contracts", responses((status = 200, description = "The contracts", body = [ContractInfo])), security(("bearer" = [])))]
async fn list_contracts(State(cp): Cp, caller: Caller) -> Result<Response, ApiError> {
    Ok(Json(cp.list_contracts(&caller).await?).into_response())
}

#[utoipa::path(get, path = "/contracts/{name}", tag = "contracts", summary = "A named contract", params(("name" = String, Path, description = "NAME@VERSION.")), responses((status = 200, description = "The contract", body = ContractInfo)), security(("bearer" = [])))]
async fn get_contract(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(cp.get_contract(&caller, &name).await?).into_response())
}

#[utoipa::path(delete, path = "/contracts/{name}", tag = "contracts", summary = "Delete a named contract", params(("name" = String, Path, description = "NAME@VERSION.")), responses((status = 204, description = "Deleted")), security(("bearer" = [])))]
async fn delete_contract(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    cp.delete_contract(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(put, path = "/contracts/{name}/binding", tag = "contracts", summary = "Bind a contract to the function that implements it in this org", params(("name" = String, Path, description = "NAME@VERSION.")), request_body = BindContract, responses((status = 200, description = "The contract, bound", body = ContractInfo)), security(("bearer" = [])))]
async fn bind_contract(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: reactor_api::contract::BindContract = parse(&body)?;
    Ok(Json(cp.bind_contract(&caller, &name, Some(req)).await?).into_response())
}

#[utoipa::path(delete, path = "/contracts/{name}/binding", tag = "contracts", summary = "Unbind a contract", params(("name" = String, Path, description = "NAME@VERSION.")), responses((status = 200, description = "The contract, unbound", body = ContractInfo)), security(("bearer" = [])))]
async fn unbind_contract(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(cp.bind_contract(&caller, &name, None).await?).into_response())
}

#[utoipa::path(get, path = "/contracts/{name}/openapi.json", tag = "contracts", summary = "An OpenAPI 3.1 document of the contract's function", params(("name" = String, Path, description = "NAME@VERSION.")), responses((status = 200, description = "The document", body = Object)), security(("bearer" = [])))]
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

#[utoipa::path(post, path = "/orgs", tag = "orgs", summary = "Create an org (platform admins), with its first admin token", request_body = CreateOrg, responses((status = 201, description = "The org and its admin token (shown once)", body = OrgCreated), (status = 409, description = "org_exists", body = ErrorBody)), security(("bearer" = [])))]
async fn create_org(State(cp): Cp, caller: Caller, body: Bytes) -> Result<Response, ApiError> {
    let req: CreateOrg = parse(&body)?;
    let created = cp.create_org(&caller, &req.name).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[utoipa::path(post, path = "/tokens", tag = "tokens", summary = "Create an API token in the org", request_body = CreateToken, responses((status = 201, description = "The token, its secret shown this once", body = TokenCreated)), security(("bearer" = [])))]
async fn create_token(State(cp): Cp, caller: Caller, body: Bytes) -> Result<Response, ApiError> {
    let req: CreateToken = parse(&body)?;
    let created = cp
        .create_token(&caller, req.role, req.name.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[utoipa::path(get, path = "/tokens", tag = "tokens", summary = "The org's API tokens (never their secrets)", responses((status = 200, description = "The tokens", body = [TokenInfo])), security(("bearer" = [])))]
async fn list_tokens(State(cp): Cp, caller: Caller) -> Result<Response, ApiError> {
    Ok(Json(cp.list_tokens(&caller).await?).into_response())
}

#[utoipa::path(delete, path = "/tokens/{id}", tag = "tokens", summary = "Revoke an API token", params(("id" = String, Path, description = "The token's id (tok_...).")), responses((status = 204, description = "Revoked")), security(("bearer" = [])))]
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
#[utoipa::path(post, path = "/auth/token", tag = "auth", summary = "Sign in (password grant) or renew an access token (refresh grant)", request_body = TokenRequest, responses((status = 200, description = "An access token and the next refresh token", body = TokenGranted), (status = 401, description = "unauthorized: wrong email, password or refresh token", body = ErrorBody), (status = 429, description = "too_many_requests: too many failed sign-ins; Retry-After says when to try again", body = ErrorBody)))]
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

#[utoipa::path(post, path = "/auth/revoke", tag = "auth", summary = "Sign out: end the sign-in of a refresh token", request_body = RevokeRefresh, responses((status = 204, description = "The sign-in is over (also when the token was unknown)")))]
async fn auth_revoke(State(cp): Cp, body: Bytes) -> Result<Response, ApiError> {
    let req: reactor_api::users::RevokeRefresh = parse(&body)?;
    cp.revoke_refresh(&req.refresh_token).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/users", tag = "users", summary = "Create a user who signs in with a password (platform admins)", request_body = CreateUser, responses((status = 201, description = "The user", body = UserInfo), (status = 409, description = "user_exists", body = ErrorBody)), security(("bearer" = [])))]
async fn create_user(State(cp): Cp, caller: Caller, body: Bytes) -> Result<Response, ApiError> {
    let req: reactor_api::users::CreateUser = parse(&body)?;
    let created = cp.create_user(&caller, req).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[utoipa::path(get, path = "/users", tag = "users", summary = "Every user (platform admins)", responses((status = 200, description = "The users", body = [UserInfo])), security(("bearer" = [])))]
async fn list_users(State(cp): Cp, caller: Caller) -> Result<Response, ApiError> {
    Ok(Json(cp.list_users(&caller).await?).into_response())
}

#[utoipa::path(delete, path = "/users/{email}", tag = "users", summary = "Delete a user and end their sign-ins (platform admins)", params(("email" = String, Path, description = "The user's email address.")), responses((status = 204, description = "Deleted")), security(("bearer" = [])))]
async fn delete_user(
    State(cp): Cp,
    caller: Caller,
    Path(email): Path<String>,
) -> Result<Response, ApiError> {
    cp.delete_user(&caller, &email).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/orgs/{org}/members", tag = "members", summary = "The org's members", params(("org" = String, Path, description = "The org.")), responses((status = 200, description = "The members", body = [MemberInfo])), security(("bearer" = [])))]
async fn list_members(
    State(cp): Cp,
    caller: Caller,
    Path(org): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(cp.list_members(&caller, &org).await?).into_response())
}

#[utoipa::path(put, path = "/orgs/{org}/members/{email}", tag = "members", summary = "Add a user to the org, or change their role", params(("org" = String, Path, description = "The org."), ("email" = String, Path, description = "The user's email address.")), request_body = SetMember, responses((status = 200, description = "The membership", body = MemberInfo)), security(("bearer" = [])))]
async fn set_member(
    State(cp): Cp,
    caller: Caller,
    Path((org, email)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: reactor_api::users::SetMember = parse(&body)?;
    Ok(Json(cp.set_member(&caller, &org, &email, req.role).await?).into_response())
}

#[utoipa::path(delete, path = "/orgs/{org}/members/{email}", tag = "members", summary = "Remove a user from the org", params(("org" = String, Path, description = "The org."), ("email" = String, Path, description = "The user's email address.")), responses((status = 204, description = "Removed")), security(("bearer" = [])))]
async fn remove_member(
    State(cp): Cp,
    caller: Caller,
    Path((org, email)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    cp.remove_member(&caller, &org, &email).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/functions", tag = "functions", summary = "Create a function", request_body = CreateFunction, responses((status = 201, description = "The function", body = FunctionInfo), (status = 409, description = "function_exists", body = ErrorBody), (status = 422, description = "runtime_disabled", body = ErrorBody)), security(("bearer" = [])))]
async fn create_function(State(cp): Cp, caller: Caller, body: Bytes) -> Result<Response, ApiError> {
    let req: CreateFunction = parse(&body)?;
    let created = cp.create_function(&caller, &req.name, req.runtime).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[utoipa::path(get, path = "/functions", tag = "functions", summary = "The org's functions", responses((status = 200, description = "The functions", body = [FunctionInfo])), security(("bearer" = [])))]
async fn list_functions(State(cp): Cp, caller: Caller) -> Result<Response, ApiError> {
    Ok(Json(cp.list_functions(&caller).await?).into_response())
}

#[utoipa::path(get, path = "/functions/{name}", tag = "functions", summary = "A function", params(("name" = String, Path, description = "The function.")), responses((status = 200, description = "The function", body = FunctionInfo)), security(("bearer" = [])))]
async fn get_function(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(cp.get_function(&caller, &name).await?).into_response())
}

#[utoipa::path(delete, path = "/functions/{name}", tag = "functions", summary = "Delete a function, its deployments and its env", params(("name" = String, Path, description = "The function.")), responses((status = 204, description = "Deleted")), security(("bearer" = [])))]
async fn delete_function(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    cp.delete_function(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/functions/{name}/deployments", tag = "deployments", summary = "Upload a bundle (a gzipped tar of the function directory): a new deployment, materialized in the background", params(("name" = String, Path, description = "The function."), ("X-Reactor-Bundle-Sha256" = Option<String>, Header, description = "The bundle's SHA-256 in hex; a mismatch is refused.")), request_body(description = "The bundle: a gzipped tar with reactor.toml at its root (sent as application/gzip; any type is read the same).", content((String = "application/gzip"), (String = "application/octet-stream"))), responses((status = 202, description = "The deployment, materializing", body = DeploymentInfo), (status = 413, description = "bundle_too_large", body = ErrorBody), (status = 422, description = "manifest_invalid, runtime_disabled", body = ErrorBody)), security(("bearer" = [])))]
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

#[utoipa::path(get, path = "/functions/{name}/deployments", tag = "deployments", summary = "The function's deployments, newest first", params(("name" = String, Path, description = "The function.")), responses((status = 200, description = "The deployments", body = [DeploymentInfo])), security(("bearer" = [])))]
async fn list_deployments(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(cp.list_deployments(&caller, &name).await?).into_response())
}

#[utoipa::path(get, path = "/functions/{name}/deployments/{id}", tag = "deployments", summary = "A deployment", params(("name" = String, Path, description = "The function."), ("id" = String, Path, description = "The deployment.")), responses((status = 200, description = "The deployment", body = DeploymentInfo)), security(("bearer" = [])))]
async fn get_deployment(
    State(cp): Cp,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(Json(cp.get_deployment(&caller, &name, &id).await?).into_response())
}

#[utoipa::path(post, path = "/functions/{name}/promote", tag = "deployments", summary = "Make a deployment live (the newest ready one by default)", params(("name" = String, Path, description = "The function.")), request_body(content = Option<PromoteRequest>, description = "Optional: an empty body promotes the newest ready deployment."), responses((status = 200, description = "The deployment now live", body = DeploymentInfo), (status = 503, description = "deployment_not_ready", body = ErrorBody)), security(("bearer" = [])))]
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

#[utoipa::path(post, path = "/functions/{name}/rollback", tag = "deployments", summary = "Make an earlier deployment live again", params(("name" = String, Path, description = "The function.")), request_body = RollbackRequest, responses((status = 200, description = "The deployment now live", body = DeploymentInfo), (status = 503, description = "deployment_not_ready", body = ErrorBody)), security(("bearer" = [])))]
async fn rollback(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: RollbackRequest = parse(&body)?;
    Ok(Json(cp.rollback(&caller, &name, &req.to_deployment_id).await?).into_response())
}

#[utoipa::path(get, path = "/functions/{name}/env", tag = "env", summary = "The function's env (secret values never shown)", params(("name" = String, Path, description = "The function.")), responses((status = 200, description = "The variables", body = [EnvVarInfo])), security(("bearer" = [])))]
async fn list_env(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(cp.list_env(&caller, &name).await?).into_response())
}

#[utoipa::path(put, path = "/functions/{name}/env/{key}", tag = "env", summary = "Set a variable or a secret (live deployments get it without a redeploy)", params(("name" = String, Path, description = "The function."), ("key" = String, Path, description = "The variable (letters, digits and _; not starting with REACTOR_).")), request_body = SetEnv, responses((status = 200, description = "The variable (a secret without its value)", body = EnvVarInfo)), security(("bearer" = [])))]
async fn set_env(
    State(cp): Cp,
    caller: Caller,
    Path((name, key)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: SetEnv = parse(&body)?;
    Ok(Json(cp.set_env(&caller, &name, &key, req).await?).into_response())
}

#[utoipa::path(delete, path = "/functions/{name}/env/{key}", tag = "env", summary = "Unset a variable", params(("name" = String, Path, description = "The function."), ("key" = String, Path, description = "The variable (letters, digits and _; not starting with REACTOR_).")), responses((status = 204, description = "Unset")), security(("bearer" = [])))]
async fn unset_env(
    State(cp): Cp,
    caller: Caller,
    Path((name, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    cp.unset_env(&caller, &name, &key).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/functions/{name}/policy", tag = "policies", summary = "The function's invoke policy", params(("name" = String, Path, description = "The function.")), responses((status = 200, description = "The policy (allow all when none is set)", body = Policy)), security(("bearer" = [])))]
async fn get_policy(
    State(cp): Cp,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(cp.get_policy(&caller, &name).await?).into_response())
}

#[utoipa::path(put, path = "/functions/{name}/policy", tag = "policies", summary = "Set the function's invoke policy", params(("name" = String, Path, description = "The function.")), request_body = Policy, responses((status = 200, description = "The policy as stored", body = Policy)), security(("bearer" = [])))]
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

#[utoipa::path(delete, path = "/functions/{name}/policy", tag = "policies", summary = "Remove the function's invoke policy", params(("name" = String, Path, description = "The function.")), responses((status = 204, description = "Removed")), security(("bearer" = [])))]
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
#[utoipa::path(get, path = "/functions/{name}/logs", tag = "logs", summary = "The function's logs as server-sent events: history, then live entries", params(("name" = String, Path, description = "The function."), crate::logs::LogsQuery), responses((status = 200, description = "Events `log` whose data is a LogEntry, and `dropped` with `{\"dropped\": n}` when the reader fell behind", body = String, content_type = "text/event-stream")), security(("bearer" = [])))]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` in `v`.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn the_document_describes_every_route_and_resolves() {
        let doc = openapi();
        if let Ok(path) = std::env::var("REACTOR_OPENAPI_OUT") {
            std::fs::write(path, serde_json::to_string_pretty(doc).expect("json")).expect("write");
        }
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().expect("paths");
        for (path, method) in [
            ("/fn/v1/_admin/auth/token", "post"),
            ("/fn/v1/_admin/functions", "post"),
            ("/fn/v1/_admin/functions/{name}/deployments", "post"),
            ("/fn/v1/_admin/functions/{name}/env/{key}", "put"),
            ("/fn/v1/_admin/functions/{name}/logs", "get"),
            ("/fn/v1/_admin/orgs/{org}/members/{email}", "delete"),
            ("/fn/v1/_admin/openapi.json", "get"),
            ("/fn/v1/{name}", "post"),
            ("/fn/v1/{name}/{path}", "get"),
        ] {
            assert!(paths[path][method].is_object(), "{method} {path} missing");
        }
        // The invoke API answers with the function's own responses: one `default`.
        let invoke = paths["/fn/v1/{name}"]["post"]["responses"]
            .as_object()
            .expect("invoke responses");
        assert_eq!(invoke.keys().collect::<Vec<_>>(), ["default"]);
        // An empty body promotes the newest ready deployment.
        assert_ne!(
            paths["/fn/v1/_admin/functions/{name}/promote"]["post"]["requestBody"]["required"],
            true
        );
        let mut operations = 0;
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("item") {
                if method == "parameters" {
                    continue;
                }
                operations += 1;
                let responses = op["responses"].as_object().expect("responses");
                assert!(responses.contains_key("default"), "{method} {path}");
                assert!(op["summary"].is_string(), "{method} {path} has no summary");
                // Path parameters are all declared.
                for name in path.split('{').skip(1).filter_map(|s| s.split('}').next()) {
                    let declared = op["parameters"]
                        .as_array()
                        .into_iter()
                        .chain(item["parameters"].as_array())
                        .flatten()
                        .any(|p| p["name"] == name && p["in"] == "path");
                    assert!(declared, "{method} {path}: {{{name}}} not declared");
                }
            }
        }
        assert!(operations >= 36 + 14, "{operations} operations");
        let mut all = Vec::new();
        refs(doc, &mut all);
        for r in all {
            let pointer = r.strip_prefix('#').expect("local ref");
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
    }

    #[test]
    fn the_error_body_schema_matches_what_errors_send() {
        let body = ApiError::new(ErrorCode::FunctionNotFound, "no").to_body();
        let parsed: ErrorBody = serde_json::from_value(body).expect("an ErrorBody");
        assert_eq!(parsed.error.code, ErrorCode::FunctionNotFound);
        let schema = &openapi()["components"]["schemas"]["ErrorObject"];
        let required = schema["required"].as_array().expect("required");
        for field in ["code", "message", "details"] {
            assert!(required.iter().any(|r| r == field), "{field} not required");
        }
    }
}
