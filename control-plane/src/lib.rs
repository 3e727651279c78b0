//! The control plane: owns orgs, tokens, functions and deployments, receives bundles and
//! has them built ([`build`]: in process, or on a worker of their runtime), and publishes
//! the routing table to routers.
//!
//! Operations live on [`ControlPlane`] and take the authenticated [`auth::Caller`]; the
//! admin HTTP API ([`http::admin_router`]) is a thin layer over them, so that the gRPC
//! admin service can share the same implementation. It must not serve invocations: that
//! is the data plane's job.
#![forbid(unsafe_code)]

pub mod auth;
pub mod backends;
pub mod build;
mod convert;
pub use reactor_storage::bundle;
pub mod env;
pub mod gc;
pub mod grpc;
pub mod grpc_admin;
pub mod http;
pub mod lease;
pub mod logs;
pub mod logs_redis;
mod ops;
pub mod routing;
pub mod secrets;
pub mod server;
mod service;
pub mod store;
#[doc(hidden)]
pub mod test_support;
pub mod workers;

pub use build::RuntimeRoles;
pub use service::{Bootstrap, ControlPlane, ControlPlaneOptions, valid_function_name};
