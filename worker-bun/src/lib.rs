//! The Bun worker: runs `export default { fetch }` modules (TypeScript or JavaScript,
//! with their `node_modules`) in a warm pool of Bun processes per deployment.
//!
//! Each process runs a small harness (`harness.js`) that imports the entrypoint and serves
//! its `fetch` with `Bun.serve` on a unix socket in a private directory; the worker speaks
//! HTTP/1.1 to it, streaming both ways, and a client going away closes the connection,
//! which aborts the handler's `request.signal`. Processes run inside bubblewrap (unless
//! switched off), under a seccomp filter, in cgroups of the deployment's memory limit and
//! of [`MAX_TASKS`] tasks; their stdout and stderr are the function's log, each line of an
//! invocation attributed to it and within its budget ([`MAX_LOG_BYTES`]). A caller is
//! never shown another invocation's output. Calls between functions leave a process only
//! through the worker (`calls.rs`). See `docs/bun.md` for the pool, the sandbox and the
//! limits.

mod body;
mod build;
mod bundles;
mod calls;
mod host;
mod launcher;
mod logs;
mod pool;
mod process;
mod seccomp;
pub mod server;
mod worker;

pub use host::{MAX_TASKS, MemoryLimiter, TaskLimiter};
pub use logs::MAX_LOG_BYTES;
pub use pool::PoolLimits;
pub use reactor_bun_dist::{HARNESS, PINNED_BUN, bun_version, find_bun};
pub use worker::{BunWorker, BunWorkerOptions};
