//! JSON shapes of the admin API (see `docs/functions.md`), shared by server and clients.

use crate::Runtime;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Developer,
    Invoker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Invoker => "invoker",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "developer" => Some(Role::Developer),
            "invoker" => Some(Role::Invoker),
            _ => None,
        }
    }

    /// Create, deploy, promote and roll back functions.
    pub fn can_deploy(self) -> bool {
        matches!(self, Role::Admin | Role::Developer)
    }

    /// Manage tokens, orgs and delete functions.
    pub fn is_admin(self) -> bool {
        self == Role::Admin
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentStatus {
    Materializing,
    Ready,
    Failed,
}

impl DeploymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Materializing => "materializing",
            DeploymentStatus::Ready => "ready",
            DeploymentStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "materializing" => Some(Self::Materializing),
            "ready" => Some(Self::Ready),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateFunction {
    pub name: String,
    pub runtime: Runtime,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionInfo {
    pub name: String,
    pub org: String,
    pub runtime: Runtime,
    #[schema(required)]
    pub live_deployment_id: Option<String>,
    pub created_at: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploymentInfo {
    pub id: String,
    pub function: String,
    pub status: DeploymentStatus,
    pub sha256: String,
    pub size_bytes: u64,
    pub created_at: String,
    #[serde(default)]
    #[schema(required)]
    pub live: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub entrypoint: String,
    pub timeout_ms: u64,
    pub memory_mb: u32,
    /// On the upload's answer: the deepest chain of calls the deployment can start, as
    /// the manifests' `calls` declare them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_graph: Option<crate::calls::CallGraph>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PromoteRequest {
    #[serde(default)]
    pub deployment_id: Option<String>,
    /// Promote even when the deployment's schemas break a contract its function is bound
    /// to.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RollbackRequest {
    pub to_deployment_id: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateOrg {
    pub name: String,
}

/// An org just created, with the admin token that manages it (shown once).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrgCreated {
    pub name: String,
    pub created_at: String,
    pub admin_token: TokenCreated,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateToken {
    pub role: Role,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub org: String,
    pub role: Role,
    #[schema(required)]
    pub name: Option<String>,
    pub created_at: String,
}

/// A token just created: the secret appears here and nowhere else, ever.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenCreated {
    pub id: String,
    pub org: String,
    pub role: Role,
    #[schema(required)]
    pub name: Option<String>,
    pub token: String,
}

/// `PUT .../functions/{name}/env/{KEY}`.
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetEnv {
    pub value: String,
    #[serde(default)]
    pub secret: bool,
}

/// Never prints the value (it may be a secret).
impl std::fmt::Debug for SetEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetEnv")
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .field("secret", &self.secret)
            .finish()
    }
}

/// One env key of a function as the admin API shows it: a secret's value never.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnvVarInfo {
    pub key: String,
    pub secret: bool,
    /// Plain values only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub updated_at: String,
}

/// What a data-key rotation did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RotationReport {
    pub key_id: String,
    /// Values re-sealed under `key_id`.
    pub resealed: usize,
    /// Values already sealed under it.
    pub current: usize,
}
