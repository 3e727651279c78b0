//! The admin API over gRPC (`reactor.admin.v1.AdminService`): a thin layer over
//! [`ControlPlane`], as the HTTP API in [`crate::http`] is, so both share one
//! implementation. Calls authenticate from the metadata `authorization` and
//! `x-reactor-org`; errors become a [`Status`] in [`status`], the one place that maps them.

use crate::ControlPlane;
use crate::auth::Caller;
use crate::convert::{deployment, function, org_created, token, token_created};
use bytes::Bytes;
use futures::StreamExt;
use reactor_api::error::request_id;
use reactor_api::model::Role;
use reactor_api::runtime::UnknownRuntime;
use reactor_api::{ApiError, ErrorCode, Runtime, headers};
use reactor_proto::admin as pb;
use reactor_proto::admin::admin_service_server::{AdminService, AdminServiceServer};
use std::sync::Arc;
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};

/// Metadata of a failed call naming the platform's error code, e.g. `function_exists`.
pub const ERROR_CODE: &str = "x-reactor-error-code";

pub struct Admin {
    cp: Arc<ControlPlane>,
}

/// The admin service, ready to add to a tonic server.
pub fn admin_service(cp: Arc<ControlPlane>) -> AdminServiceServer<Admin> {
    AdminServiceServer::new(Admin { cp })
}

/// The gRPC status of a platform error, for every gRPC service: the code is the one
/// `reactor_api::ErrorCode` gives it, the message is its message, and the metadata carries
/// its JSON code and (when known) the request id.
pub fn status(e: &ApiError, id: &str) -> Status {
    let code = Code::from_i32(e.code.grpc_code() as i32);
    let mut status = Status::new(code, e.message.clone());
    status
        .metadata_mut()
        .insert(ERROR_CODE, MetadataValue::from_static(e.code.as_str()));
    echo_request_id(status.metadata_mut(), id);
    status
}

fn echo_request_id(meta: &mut MetadataMap, id: &str) {
    if let Ok(v) = id.parse::<MetadataValue<Ascii>>()
        && !id.is_empty()
    {
        meta.insert(headers::REQUEST_ID, v);
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidInput, message)
}

fn runtime(s: &str) -> Result<Runtime, ApiError> {
    s.parse()
        .map_err(|e: UnknownRuntime| invalid(e.to_string()))
}

fn role(s: &str) -> Result<Role, ApiError> {
    Role::parse(s).ok_or_else(|| {
        invalid(format!(
            "unknown role {s:?} (expected admin, developer or invoker)"
        ))
    })
}

impl Admin {
    /// Serves one call as the HTTP API serves a request: with its request id in scope
    /// (echoed on the answer), authenticated from its metadata, then `op`.
    async fn serve<T, R, F, Fut>(&self, req: Request<T>, op: F) -> Result<Response<R>, Status>
    where
        F: FnOnce(Arc<ControlPlane>, Caller, T) -> Fut,
        Fut: Future<Output = Result<R, ApiError>>,
    {
        let (meta, _, msg) = req.into_parts();
        let get = |name: &str| meta.get(name).and_then(|v| v.to_str().ok());
        let id = request_id::accept(get(headers::REQUEST_ID));
        let (authorization, org) = (get(headers::AUTHORIZATION), get(headers::ORG));
        let cp = self.cp.clone();
        let outcome: Result<R, ApiError> = request_id::scope(id.clone(), async move {
            let caller = cp.authenticate(authorization, org).await?;
            op(cp, caller, msg).await
        })
        .await;
        match outcome {
            Ok(answer) => {
                let mut response = Response::new(answer);
                echo_request_id(response.metadata_mut(), &id);
                Ok(response)
            }
            Err(e) => Err(status(&e, &id)),
        }
    }
}

#[tonic::async_trait]
impl AdminService for Admin {
    async fn create_org(
        &self,
        req: Request<pb::CreateOrgRequest>,
    ) -> Result<Response<pb::OrgCreated>, Status> {
        self.serve(req, |cp, caller, r| async move {
            cp.create_org(&caller, &r.name).await.map(org_created)
        })
        .await
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::TokenCreated>, Status> {
        self.serve(req, |cp, caller, r| async move {
            cp.create_token(&caller, role(&r.role)?, r.name.as_deref())
                .await
                .map(token_created)
        })
        .await
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.serve(req, |cp, caller, _| async move {
            let tokens = cp.list_tokens(&caller).await?;
            Ok::<_, ApiError>(pb::ListTokensResponse {
                tokens: tokens.into_iter().map(token).collect(),
            })
        })
        .await
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        self.serve(req, |cp, caller, r| async move {
            cp.revoke_token(&caller, &r.id).await?;
            Ok::<_, ApiError>(pb::RevokeTokenResponse {})
        })
        .await
    }

    async fn create_function(
        &self,
        req: Request<pb::CreateFunctionRequest>,
    ) -> Result<Response<pb::Function>, Status> {
        self.serve(req, |cp, caller, r| async move {
            cp.create_function(&caller, &r.name, runtime(&r.runtime)?)
                .await
                .map(function)
        })
        .await
    }

    async fn get_function(
        &self,
        req: Request<pb::GetFunctionRequest>,
    ) -> Result<Response<pb::Function>, Status> {
        self.serve(req, |cp, caller, r| async move {
            cp.get_function(&caller, &r.name).await.map(function)
        })
        .await
    }

    async fn list_functions(
        &self,
        req: Request<pb::ListFunctionsRequest>,
    ) -> Result<Response<pb::ListFunctionsResponse>, Status> {
        self.serve(req, |cp, caller, _| async move {
            let functions = cp.list_functions(&caller).await?;
            Ok::<_, ApiError>(pb::ListFunctionsResponse {
                functions: functions.into_iter().map(function).collect(),
            })
        })
        .await
    }

    async fn delete_function(
        &self,
        req: Request<pb::DeleteFunctionRequest>,
    ) -> Result<Response<pb::DeleteFunctionResponse>, Status> {
        self.serve(req, |cp, caller, r| async move {
            cp.delete_function(&caller, &r.name).await?;
            Ok::<_, ApiError>(pb::DeleteFunctionResponse {})
        })
        .await
    }

    async fn upload_bundle(
        &self,
        req: Request<Streaming<pb::UploadChunk>>,
    ) -> Result<Response<pb::Deployment>, Status> {
        self.serve(req, |cp, caller, mut chunks| async move {
            let first = chunks
                .message()
                .await
                .map_err(|e| invalid(format!("reading the upload: {}", e.message())))?
                .ok_or_else(|| {
                    invalid("the upload is empty: its first message names the function")
                })?;
            let pb::UploadChunk {
                function,
                sha256,
                size_bytes,
                data,
            } = first;
            // The first message's bytes, then the rest's, as the HTTP body would stream them.
            let head = Ok::<_, Status>(Bytes::from(data));
            let body = futures::stream::once(futures::future::ready(head))
                .chain(chunks.map(|chunk| chunk.map(|c| Bytes::from(c.data))));
            cp.upload(&caller, &function, sha256.as_deref(), size_bytes, body)
                .await
                .map(deployment)
        })
        .await
    }

    async fn list_deployments(
        &self,
        req: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        self.serve(req, |cp, caller, r| async move {
            let deployments = cp.list_deployments(&caller, &r.function).await?;
            Ok::<_, ApiError>(pb::ListDeploymentsResponse {
                deployments: deployments.into_iter().map(deployment).collect(),
            })
        })
        .await
    }

    async fn get_deployment(
        &self,
        req: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        self.serve(req, |cp, caller, r| async move {
            cp.get_deployment(&caller, &r.function, &r.id)
                .await
                .map(deployment)
        })
        .await
    }

    async fn promote(
        &self,
        req: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        self.serve(req, |cp, caller, r| async move {
            cp.promote_with(&caller, &r.function, r.deployment_id.as_deref(), r.force)
                .await
                .map(deployment)
        })
        .await
    }

    async fn rollback(
        &self,
        req: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        self.serve(req, |cp, caller, r| async move {
            if r.to_deployment_id.is_empty() {
                return Err(invalid("to_deployment_id is required"));
            }
            cp.rollback(&caller, &r.function, &r.to_deployment_id)
                .await
                .map(deployment)
        })
        .await
    }

    async fn set_env(
        &self,
        req: Request<pb::SetEnvRequest>,
    ) -> Result<Response<pb::EnvVar>, Status> {
        self.serve(req, |cp, caller, r| async move {
            let set = reactor_api::model::SetEnv {
                value: r.value,
                secret: r.secret,
            };
            cp.set_env(&caller, &r.function, &r.key, set)
                .await
                .map(env_var)
        })
        .await
    }

    async fn list_env(
        &self,
        req: Request<pb::ListEnvRequest>,
    ) -> Result<Response<pb::ListEnvResponse>, Status> {
        self.serve(req, |cp, caller, r| async move {
            let env = cp.list_env(&caller, &r.function).await?;
            Ok::<_, ApiError>(pb::ListEnvResponse {
                env: env.into_iter().map(env_var).collect(),
            })
        })
        .await
    }

    async fn unset_env(
        &self,
        req: Request<pb::UnsetEnvRequest>,
    ) -> Result<Response<pb::UnsetEnvResponse>, Status> {
        self.serve(req, |cp, caller, r| async move {
            cp.unset_env(&caller, &r.function, &r.key).await?;
            Ok::<_, ApiError>(pb::UnsetEnvResponse {})
        })
        .await
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::PolicyJson>, Status> {
        self.serve(req, |cp, caller, r| async move {
            policy_json(&cp.get_policy(&caller, &r.function).await?)
        })
        .await
    }

    async fn set_policy(
        &self,
        req: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::PolicyJson>, Status> {
        self.serve(req, |cp, caller, r| async move {
            let policy = reactor_policy::Policy::from_json(&r.policy_json)
                .map_err(|e| invalid(format!("policy is not valid: {e}")))?;
            policy_json(&cp.set_policy(&caller, &r.function, Some(policy)).await?)
        })
        .await
    }

    async fn clear_policy(
        &self,
        req: Request<pb::ClearPolicyRequest>,
    ) -> Result<Response<pb::ClearPolicyResponse>, Status> {
        self.serve(req, |cp, caller, r| async move {
            cp.set_policy(&caller, &r.function, None).await?;
            Ok::<_, ApiError>(pb::ClearPolicyResponse {})
        })
        .await
    }
}

fn env_var(e: reactor_api::model::EnvVarInfo) -> pb::EnvVar {
    pb::EnvVar {
        key: e.key,
        secret: e.secret,
        value: e.value,
        updated_at: e.updated_at,
    }
}

fn policy_json(p: &reactor_policy::Policy) -> Result<pb::PolicyJson, ApiError> {
    Ok(pb::PolicyJson {
        policy_json: serde_json::to_string(p).map_err(|e| ApiError::internal(e.to_string()))?,
    })
}
