//! The routing table as a router looks it up: indexed once per version, never locked
//! across an await.

use reactor_api::model::Role;
use reactor_api::{DeploymentSpec, Runtime};
use reactor_proto::routing::RoutingTable;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

/// What a valid token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub token_id: String,
    pub org: String,
    pub role: Role,
}

#[derive(Clone, Debug)]
pub struct FunctionEntry {
    pub runtime: Runtime,
    pub live: Option<Arc<DeploymentSpec>>,
}

#[derive(Clone, Debug, Default)]
pub struct RouteIndex {
    pub version: u64,
    tokens: HashMap<String, Grant>,
    functions: HashMap<(String, String), FunctionEntry>,
}

impl RouteIndex {
    pub fn build(table: &RoutingTable) -> Self {
        let tokens = table
            .tokens
            .iter()
            .filter_map(|t| {
                let role = Role::parse(&t.role)?;
                Some((
                    t.sha256.clone(),
                    Grant {
                        token_id: t.token_id.clone(),
                        org: t.org.clone(),
                        role,
                    },
                ))
            })
            .collect();
        let functions = table
            .functions
            .iter()
            .filter_map(|f| {
                let runtime = Runtime::from_str(&f.runtime).ok()?;
                let live = f.live.as_ref().map(|d| {
                    Arc::new(DeploymentSpec {
                        org: f.org.clone(),
                        function: f.name.clone(),
                        deployment_id: d.deployment_id.clone(),
                        runtime,
                        entrypoint: d.entrypoint.clone(),
                        bundle_key: d.bundle_key.clone(),
                        sha256: d.sha256.clone(),
                        timeout_ms: d.timeout_ms,
                        memory_mb: d.memory_mb,
                    })
                });
                Some((
                    (f.org.clone(), f.name.clone()),
                    FunctionEntry { runtime, live },
                ))
            })
            .collect();
        Self {
            version: table.version,
            tokens,
            functions,
        }
    }

    /// The grant of the token whose SHA-256 is `sha256`.
    pub fn grant(&self, sha256: &str) -> Option<&Grant> {
        self.tokens.get(sha256)
    }

    pub fn function(&self, org: &str, name: &str) -> Option<&FunctionEntry> {
        self.functions.get(&(org.to_string(), name.to_string()))
    }
}
