//! Bun as Reactor ships it, shared by the Bun worker (which runs it) and the Lambda
//! runtime (which packs it): the version the project pins, where the binary is found, and
//! the harness every Bun process runs around a function's `export default { fetch }`.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The harness every process runs (see `harness.js`); the Lambda package ships it too.
pub const HARNESS: &str = include_str!("harness.js");
/// The response header the harness marks the function's own answers with.
pub const HARNESS_MARK: &str = "x-reactor-harness";
/// The harness's mark on the first answer of a process.
pub const COLD_MARK: &str = "x-reactor-cold-start";
/// The request header carrying the worker's number for an invocation ("serve" mode): the
/// harness tags the invocation's console lines with it and removes it from the request.
pub const INVOCATION_MARK: &str = "x-reactor-invocation";

/// Request header: the capability of the invocation, given by the worker on each request
/// (the harness takes it off) and sent back on the calls it makes (`worker-bun/src/calls.rs`).
pub const CALL_CAPABILITY: &str = "x-reactor-call-capability";
/// Request header of a call from the harness: the host the function's `fetch` named.
pub const CALL_HOST: &str = "x-reactor-call-host";
/// Request header ("lambda" mode): the base URL the harness sends the invocation's calls
/// to (`{url}/call{path}`, with the capability), given by the router on each request.
pub const CALL_URL: &str = "x-reactor-call-url";

/// The Bun version the project pins (package.json); another version works but is warned.
pub const PINNED_BUN: &str = "1.4.5";

/// Finds the Bun binary: the configured path, else `node_modules/.bin/bun` in the
/// repository this binary was built from (so that `reactor dev` installed by the set-up
/// finds it from any directory), then in the current directory or one of its parents,
/// else `bun` on `PATH`. Returns the canonical path of the
/// binary itself (not the npm shim link).
pub fn find_bun(configured: Option<&Path>) -> Result<PathBuf, String> {
    let mut tried = Vec::new();
    let mut candidates = Vec::new();
    if let Some(p) = configured {
        candidates.push(p.to_path_buf());
    } else {
        // The repository this binary was built from first: a `node_modules` in whatever
        // directory the server happens to start in is not trusted before it.
        if let Some(repo) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
            candidates.push(repo.join("node_modules/.bin/bun"));
        }
        if let Ok(cwd) = std::env::current_dir() {
            for dir in cwd.ancestors() {
                candidates.push(dir.join("node_modules/.bin/bun"));
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                candidates.push(dir.join("bun"));
            }
        }
    }
    for c in candidates {
        if let Ok(real) = std::fs::canonicalize(&c)
            && real.is_file()
        {
            return Ok(real);
        }
        tried.push(c.display().to_string());
    }
    let hint = "install it with ./scripts/setup.sh (npm install of the pinned bun package), \
                or set functions.bun_path (REACTOR_FUNCTIONS_BUN_PATH)";
    Err(match configured {
        Some(p) => format!(
            "Bun was not found at {} (functions.bun_path): {hint}",
            p.display()
        ),
        None => format!(
            "Bun was not found (looked for node_modules/.bin/bun in {}, in the current directory and its parents, and bun on PATH): {hint}",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or(Path::new("/"))
                .display()
        ),
    })
}

/// `bun --version`, checking that the binary runs.
pub fn bun_version(bun: &Path) -> Result<String, String> {
    let out = Command::new(bun)
        .arg("--version")
        .output()
        .map_err(|e| format!("running {} --version: {e}", bun.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --version failed: {}",
            bun.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
