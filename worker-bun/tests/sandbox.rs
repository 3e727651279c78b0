//! The sandbox's seccomp filter seen from a function, with Bun under bubblewrap as in
//! production: a function that asks libc (through `bun:ffi`) for a user namespace of its
//! own is refused with `EPERM`, and the same process goes on serving, its file I/O and
//! timers working (so the filter leaves Bun what it needs).
//!
//! Without the sandbox's filter the call succeeds (`unshare` returns 0).

use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;
use reactor_api::config::FunctionsConfig;
use reactor_api::logs::NoLogs;
use reactor_api::{DeploymentSpec, Invocation, Runtime, RuntimeWorker};
use reactor_storage::{LocalStorage, Storage, keys};
use reactor_worker_bun::{BunWorker, BunWorkerOptions};
use std::sync::Arc;
use std::time::Duration;

const ORG: &str = "acme";
const FUNCTION: &str = "sandboxed";
const ENTRYPOINT: &str = "index.ts";
/// Deadline of every request: generous, the machine may be busy.
const GENEROUS: Duration = Duration::from_secs(30);
const EPERM: i64 = 1;

/// `/unshare` calls `unshare(CLONE_NEWUSER)` and answers its result and errno; any other
/// path writes and reads a file in `/tmp` after a timer. Both name the process.
const HANDLER: &str = r#"
import { dlopen, FFIType, read } from "bun:ffi";

const INSTANCE = crypto.randomUUID();
const CLONE_NEWUSER = 0x10000000;
const libc = dlopen("libc.so.6", {
  unshare: { args: [FFIType.i32], returns: FFIType.i32 },
  __errno_location: { args: [], returns: FFIType.ptr },
});

export default {
  async fetch(request: Request): Promise<Response> {
    if (new URL(request.url).pathname === "/unshare") {
      const result = libc.symbols.unshare(CLONE_NEWUSER);
      // Read at once, before anything else sets errno.
      const errno = read.i32(libc.symbols.__errno_location(), 0);
      return Response.json({ instance: INSTANCE, result, errno });
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
    await Bun.write("/tmp/probe.txt", "still working");
    const text = await Bun.file("/tmp/probe.txt").text();
    return Response.json({ instance: INSTANCE, text });
  },
};
"#;

/// A JSON answer of the function, which must be a 200.
async fn call(worker: &BunWorker, spec: &Arc<DeploymentSpec>, path: &str) -> serde_json::Value {
    let invocation = Invocation {
        spec: spec.clone(),
        request: http::Request::get(path)
            .body(Body::empty())
            .expect("request"),
        deadline: tokio::time::Instant::now() + GENEROUS,
        request_id: format!("req-{path}"),
        chain: Vec::new(),
    };
    let outcome = worker
        .invoke(invocation)
        .await
        .unwrap_or_else(|f| panic!("{path} failed: {f:?}"));
    let status = outcome.response.status().as_u16();
    let body = outcome
        .response
        .into_body()
        .collect()
        .await
        .expect("reading the response body")
        .to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} answered {text}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_cannot_create_a_user_namespace_and_keeps_serving() {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = Arc::new(
        LocalStorage::open(dir.path().join("storage"))
            .await
            .expect("local storage"),
    );
    let config = FunctionsConfig {
        workdir: dir.path().join("work"),
        // One process, so that both requests reach the same one.
        bun_max_instances_per_fn: 1,
        bun_concurrency_per_process: 1,
        bun_queue_per_fn: 4,
        bun_idle_ttl_secs: 300,
        // Production's setting, stated: processes run under bubblewrap.
        bun_sandbox: true,
        bun_path: None,
        ..Default::default()
    };
    let options = BunWorkerOptions::from_config(
        &config,
        storage.clone(),
        dir.path().join("cache"),
        Arc::new(reactor_api::invoke::NoEnv),
        Arc::new(NoLogs),
    )
    .unwrap_or_else(|e| {
        panic!("Bun is missing: {e:#}\n(run ./scripts/setup.sh, or npm install in the repository)")
    });
    let worker = BunWorker::new(options).await.unwrap_or_else(|e| {
        panic!(
            "the Bun worker cannot start here: {e:#}\n\
             This test runs Bun sandboxed by bubblewrap (0.8 or later), as production does."
        )
    });

    let deployment_id = "dep_sandbox";
    let archive = reactor_tests::bundle(&[(ENTRYPOINT, HANDLER.as_bytes())]);
    let spec = Arc::new(DeploymentSpec {
        org: ORG.into(),
        function: FUNCTION.into(),
        deployment_id: deployment_id.into(),
        runtime: Runtime::Bun,
        entrypoint: ENTRYPOINT.into(),
        bundle_key: keys::bundle(ORG, FUNCTION, deployment_id),
        sha256: {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(&archive))
        },
        timeout_ms: GENEROUS.as_millis() as u64,
        memory_mb: 128,
        min_instances: 0,
        max_concurrency: None,
        calls: None,
        pool: None,
    });
    storage
        .put_bytes(&spec.bundle_key, Bytes::from(archive))
        .await
        .expect("storing the bundle");

    let refused = call(&worker, &spec, "/unshare").await;
    assert_eq!(
        refused["result"].as_i64(),
        Some(-1),
        "unshare(CLONE_NEWUSER) must fail in the sandbox: {refused}"
    );
    assert_eq!(
        refused["errno"].as_i64(),
        Some(EPERM),
        "refused by the seccomp filter (EPERM): {refused}"
    );

    let after = call(&worker, &spec, "/").await;
    assert_eq!(
        after["text"].as_str(),
        Some("still working"),
        "the process still does file I/O: {after}"
    );
    assert_eq!(
        after["instance"], refused["instance"],
        "the same process answered both: the refusal did not kill it"
    );
}
