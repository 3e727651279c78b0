//! The data plane: a stateless router for `* /fn/v1/{name}` and `* /fn/v1/{name}/{*sub}`.
//!
//! It holds the routing table pushed by the control plane (in memory only: a restart
//! loses nothing), authenticates callers against the token hashes in it without calling
//! the control plane, rewrites the request to the path the function sees, forwards it to
//! the worker of the function's runtime and streams the response back with the
//! `X-Reactor-*` headers, through the interceptors of [`interceptors`] (timeout, retry,
//! circuit breaker, admission). It keeps serving its last table while the control plane
//! is away.
#![forbid(unsafe_code)]

pub mod admission;
pub mod admission_redis;
mod body;
pub mod calls;
mod contract;
mod follow;
pub mod interceptors;
pub mod lambda_calls;
mod router;
pub mod server;
mod table;

pub use calls::call_router;
pub use follow::{ControlPlaneEndpoint, follow_control_plane};
pub use lambda_calls::{LambdaCallListener, LambdaCalls};
pub use router::{DataPlane, RouterOptions, invoke_router};
pub use table::{Grant, RouteIndex};
