//! The platform's contract, shared by every service and the CLI.
//!
//! It owns the error codes and their JSON body, the admin API's JSON shapes, the bundle
//! manifest and its validation, the per-runtime limits, the configuration file, the roles
//! a runtime plays ([`roles`]: build, release, run), the rules of calls between
//! functions ([`calls`]) and the format of signed-in users' access tokens ([`access`]). It does no I/O of its own beyond reading the configuration file.
#![forbid(unsafe_code)]

pub mod access;
pub mod calls;
pub mod config;
pub mod contract;
pub mod error;
pub mod headers;
pub mod interceptors;
pub mod invoke;
pub mod logs;
pub mod manifest;
pub mod model;
pub mod openapi;
pub mod pool;
pub mod roles;
pub mod runtime;
pub mod token;
pub mod users;

pub use error::{ApiError, ErrorCode};
pub use invoke::{
    DeploymentSpec, EnvSource, Invocation, InvokeError, InvokeFailure, InvokeOutcome,
};
pub use manifest::Manifest;
pub use roles::{
    Builder, Builders, CallForwarder, CallLink, Release, Releases, RuntimeRole, RuntimeWorker,
    Runtimes,
};
pub use runtime::Runtime;
