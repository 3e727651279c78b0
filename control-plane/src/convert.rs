//! Every conversion between what the control plane stores, what its APIs answer, what
//! the routing table carries and what a worker runs: records → JSON shapes
//! (`reactor_api::model`) → admin protobuf; records → routing entries → deployment specs
//! (the spec is always read from a routing entry, by `reactor_worker_link::protocol`).

use crate::store::{ContractRecord, DeploymentRecord, FunctionRecord, TokenRecord};
use reactor_api::DeploymentSpec;
use reactor_api::model::{DeploymentInfo, FunctionInfo, OrgCreated, TokenCreated, TokenInfo};
use reactor_proto::admin as pb;
use reactor_proto::routing::{BoundContract, FunctionRoute, LiveDeployment, TokenGrant};
use reactor_worker_link::protocol;

/// The routing-table entry of `f`, with its live deployment and the contracts bound to it.
pub(crate) fn route(
    f: FunctionRecord,
    live: Option<DeploymentRecord>,
    contracts: Vec<BoundContract>,
) -> FunctionRoute {
    FunctionRoute {
        contracts,
        org: f.org,
        name: f.name,
        runtime: f.runtime.as_str().to_string(),
        policy: f.policy,
        live: live.map(|d| LiveDeployment {
            deployment_id: d.id,
            entrypoint: d.entrypoint,
            bundle_key: d.bundle_key,
            sha256: d.sha256,
            timeout_ms: d.timeout_ms,
            memory_mb: d.memory_mb,
            min_instances: d.min_instances,
            max_concurrency: d.max_concurrency,
            policy: d.policy,
            calls: d.calls,
            interceptors: d.interceptors,
            pool: d.pool,
            contract: d.contract,
        }),
    }
}

/// A bound contract as routers hold callers to it.
pub(crate) fn bound_contract(c: ContractRecord) -> BoundContract {
    BoundContract {
        name: c.name,
        input: c.input,
        output: c.output,
        validate_output: c.validate_output,
    }
}

pub(crate) fn contract_info(c: &ContractRecord) -> reactor_api::contract::ContractInfo {
    let schema = |s: &Option<String>| s.as_deref().and_then(|s| serde_json::from_str(s).ok());
    reactor_api::contract::ContractInfo {
        name: c.name.clone(),
        org: c.org.clone(),
        description: c.description.clone(),
        input: schema(&c.input),
        output: schema(&c.output),
        validate_output: c.validate_output,
        function: c.function.clone(),
        created_at: c.created_at.clone(),
    }
}

/// The routing-table grant of a token.
pub(crate) fn grant(t: TokenRecord) -> TokenGrant {
    TokenGrant {
        token_id: t.id,
        sha256: t.sha256,
        org: t.org,
        role: t.role.as_str().to_string(),
        user_id: String::new(),
    }
}

/// The routing-table grant of a user's membership of an org: routers act on a signed-in
/// user's access token with it.
pub(crate) fn membership_grant(m: crate::store::MemberRecord) -> TokenGrant {
    TokenGrant {
        token_id: format!("{}/{}", m.user_id, m.org),
        sha256: String::new(),
        org: m.org,
        role: m.role.as_str().to_string(),
        user_id: m.user_id,
    }
}

pub(crate) fn function_info(f: &FunctionRecord) -> FunctionInfo {
    FunctionInfo {
        name: f.name.clone(),
        org: f.org.clone(),
        runtime: f.runtime,
        live_deployment_id: f.live_deployment_id.clone(),
        created_at: f.created_at.clone(),
    }
}

pub(crate) fn deployment_info(d: &DeploymentRecord, live: Option<&str>) -> DeploymentInfo {
    DeploymentInfo {
        id: d.id.clone(),
        function: d.function.clone(),
        status: d.status,
        sha256: d.sha256.clone(),
        size_bytes: d.size_bytes,
        created_at: d.created_at.clone(),
        live: live == Some(d.id.as_str()),
        error: d.error.clone(),
        entrypoint: d.entrypoint.clone(),
        timeout_ms: d.timeout_ms,
        memory_mb: d.memory_mb,
        call_graph: None,
    }
}

/// The spec of deployment `d` of `f`, as a worker gets it: built from the routing
/// table's entry, so that what the control plane sends and what routers and workers read
/// from the table cannot differ.
pub(crate) fn spec(f: &FunctionRecord, d: &DeploymentRecord) -> DeploymentSpec {
    let entry = route(f.clone(), Some(d.clone()), Vec::new());
    protocol::live_spec(&entry, f.runtime)
        .unwrap_or_else(|| unreachable!("a route built with a live deployment has one"))
}

pub(crate) fn function(f: FunctionInfo) -> pb::Function {
    pb::Function {
        name: f.name,
        org: f.org,
        runtime: f.runtime.as_str().to_string(),
        live_deployment_id: f.live_deployment_id,
        created_at: f.created_at,
    }
}

pub(crate) fn deployment(d: DeploymentInfo) -> pb::Deployment {
    pb::Deployment {
        id: d.id,
        function: d.function,
        status: d.status.as_str().to_string(),
        sha256: d.sha256,
        size_bytes: d.size_bytes,
        created_at: d.created_at,
        live: d.live,
        error: d.error,
        entrypoint: d.entrypoint,
        timeout_ms: d.timeout_ms,
        memory_mb: d.memory_mb,
    }
}

pub(crate) fn token(t: TokenInfo) -> pb::Token {
    pb::Token {
        id: t.id,
        org: t.org,
        role: t.role.as_str().to_string(),
        name: t.name,
        created_at: t.created_at,
    }
}

pub(crate) fn token_created(t: TokenCreated) -> pb::TokenCreated {
    pb::TokenCreated {
        id: t.id,
        org: t.org,
        role: t.role.as_str().to_string(),
        name: t.name,
        token: t.token,
    }
}

pub(crate) fn org_created(o: OrgCreated) -> pb::OrgCreated {
    pb::OrgCreated {
        name: o.name,
        created_at: o.created_at,
        admin_token: Some(token_created(o.admin_token)),
    }
}
