//! The WASM worker: runs `wasi:http/proxy` components with wasmtime.
//!
//! One [`wasmtime::Engine`] (pooling allocator, epoch interruption) per worker; each
//! deployment is precompiled once at materialization and the artifact stored beside the
//! bundle, keyed by the engine's compatibility hash; a worker keeps artifacts in a local
//! disk cache and one pre-instantiated component ([`ProxyPre`]) per loaded deployment;
//! deployments of an org that run the same code share one artifact file (hard links) and
//! one loaded component, and are built once (the artifact copied in storage); idle loaded
//! deployments past `[worker] loaded_budget_mb` are unloaded, least recently used first;
//! every request gets a fresh instance in a fresh `Store` with the deployment's memory
//! limit and deadline. Guest stdout/stderr become the function's log lines. It never
//! decides who may call what: the router did that.

mod body;
mod engine;
mod host;
pub mod inline;
mod logs;
mod outbound;
pub mod server;

pub use engine::{DEFAULT_LOADED_BUDGET_MB, LoadedSummary, WasmWorker, WasmWorkerOptions};
