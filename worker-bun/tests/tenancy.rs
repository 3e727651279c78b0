//! What one caller of a Bun function can do to another, and a function to the worker,
//! with Bun sandboxed by bubblewrap as in production:
//!
//! - a process that crashes tells the crashing request how it ended and that request's
//!   own output, never what another request running in the same process logged;
//! - a fork bomb stops at the process's task limit (`pids.max`) and the worker goes on
//!   serving; on a host without the pids controller the test says so and checks that the
//!   worker reports the limit as not enforced;
//! - the private `/tmp` is a bounded tmpfs;
//! - an invocation logging 10 MiB leaves at most its budget in the function's log, then
//!   one truncation note.

use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;
use reactor_api::config::FunctionsConfig;
use reactor_api::logs::{LogEntry, LogKind, LogSink};
use reactor_api::{DeploymentSpec, Invocation, InvokeError, InvokeFailure, Runtime, RuntimeWorker};
use reactor_storage::{LocalStorage, Storage, keys};
use reactor_worker_bun::{BunWorker, BunWorkerOptions, MAX_LOG_BYTES, MAX_TASKS};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ORG: &str = "acme";
const FUNCTION: &str = "tenancy";
const ENTRYPOINT: &str = "index.ts";
/// Deadline of every request: generous, the machine may be busy.
const GENEROUS: Duration = Duration::from_secs(30);
/// What one request logs and no other caller may see.
const SECRET: &str = "tenant-one-card-4111111111111111";
/// Spawns the fork bomb attempts.
const FORKS: usize = 2000;

const HANDLER: &str = r#"
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export default {
  async fetch(request: Request): Promise<Response> {
    const url = new URL(request.url);
    switch (url.pathname) {
      case "/secret": {
        console.error(`logging a request body: ${url.searchParams.get("body")}`);
        await sleep(10000);
        return new Response("done");
      }
      case "/exit":
        console.error("exiting on purpose");
        process.exit(1);
      case "/flood": {
        const line = "y".repeat(1023);
        for (let i = 0; i < 10 * 1024; i++) console.log(line);
        return new Response("flooded");
      }
      case "/mark":
        console.log(`mark ${url.searchParams.get("m")}`);
        return new Response("marked");
      case "/forkbomb": {
        const procs = [];
        let error = null;
        for (let i = 0; i < Number(url.searchParams.get("n")); i++) {
          try {
            procs.push(Bun.spawn(["sleep", "10"], { stdin: "ignore", stdout: "ignore", stderr: "ignore" }));
          } catch (e) {
            error = String(e);
            break;
          }
        }
        for (const p of procs) p.kill();
        return Response.json({ spawned: procs.length, error });
      }
      case "/fill-tmp": {
        const fs = await import("node:fs");
        const chunk = new Uint8Array(1 << 20).fill(1);
        let written = 0;
        let error = null;
        const fd = fs.openSync("/tmp/fill", "w");
        try {
          for (let i = 0; i < 80; i++) written += fs.writeSync(fd, chunk);
        } catch (e) {
          error = String(e);
        }
        fs.closeSync(fd);
        fs.unlinkSync("/tmp/fill");
        return Response.json({ written, error });
      }
      default:
        return new Response("ok");
    }
  },
};
"#;

/// A log sink that keeps every entry.
#[derive(Default)]
struct Collected(Mutex<Vec<LogEntry>>);

impl LogSink for Collected {
    fn emit(&self, entry: LogEntry) {
        if let Ok(mut entries) = self.0.lock() {
            entries.push(entry);
        }
    }
}

impl Collected {
    fn entries(&self) -> Vec<LogEntry> {
        self.0.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Waits (a bounded time) for an entry matching `what`.
    async fn wait_for(&self, what: impl Fn(&LogEntry) -> bool) -> Option<LogEntry> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let found = self
                .0
                .lock()
                .ok()
                .and_then(|entries| entries.iter().find(|&e| what(e)).cloned());
            if found.is_some() || tokio::time::Instant::now() >= deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct Harness {
    worker: Arc<BunWorker>,
    storage: Arc<LocalStorage>,
    logs: Arc<Collected>,
    _dir: tempfile::TempDir,
}

/// A worker of one process per deployment serving `per_process` requests at once.
async fn harness(per_process: u32) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = Arc::new(
        LocalStorage::open(dir.path().join("storage"))
            .await
            .expect("local storage"),
    );
    let config = FunctionsConfig {
        workdir: dir.path().join("work"),
        bun_max_instances_per_fn: 1,
        bun_concurrency_per_process: per_process,
        bun_queue_per_fn: 4,
        bun_idle_ttl_secs: 300,
        // Production's setting, stated: processes run under bubblewrap.
        bun_sandbox: true,
        bun_path: None,
        ..Default::default()
    };
    let logs = Arc::new(Collected::default());
    let options = BunWorkerOptions::from_config(
        &config,
        storage.clone(),
        dir.path().join("cache"),
        Arc::new(reactor_api::invoke::NoEnv),
        logs.clone(),
    )
    .unwrap_or_else(|e| {
        panic!("Bun is missing: {e:#}\n(run ./scripts/setup.sh, or npm install in the repository)")
    });
    let worker = BunWorker::new(options).await.unwrap_or_else(|e| {
        panic!(
            "the Bun worker cannot start here: {e:#}\n\
             These tests run Bun sandboxed by bubblewrap (0.8 or later), as production does."
        )
    });
    Harness {
        worker,
        storage,
        logs,
        _dir: dir,
    }
}

impl Harness {
    /// Stores the handler's bundle under a deployment of `memory_mb`.
    async fn deploy(&self, deployment_id: &str, memory_mb: u32) -> Arc<DeploymentSpec> {
        let archive = reactor_tests::bundle(&[(ENTRYPOINT, HANDLER.as_bytes())]);
        let spec = DeploymentSpec {
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
            memory_mb,
            min_instances: 0,
            max_concurrency: None,
            calls: None,
            pool: None,
        };
        self.storage
            .put_bytes(&spec.bundle_key, Bytes::from(archive))
            .await
            .expect("storing the bundle");
        Arc::new(spec)
    }
}

/// One request: its status and body, or how it failed.
async fn call(
    worker: &BunWorker,
    spec: &Arc<DeploymentSpec>,
    path: &str,
    request_id: &str,
) -> Result<(u16, String), InvokeFailure> {
    let invocation = Invocation {
        spec: spec.clone(),
        request: http::Request::get(path)
            .body(Body::empty())
            .expect("request"),
        deadline: tokio::time::Instant::now() + GENEROUS,
        request_id: request_id.into(),
        chain: Vec::new(),
    };
    let outcome = worker.invoke(invocation).await?;
    let status = outcome.response.status().as_u16();
    let body = outcome
        .response
        .into_body()
        .collect()
        .await
        .expect("reading the response body")
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn crash_message(result: Result<(u16, String), InvokeFailure>, what: &str) -> String {
    match result {
        Err(InvokeFailure {
            error: InvokeError::Crashed { message },
            ..
        }) => message,
        other => panic!("{what} must fail as crashed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_tells_its_caller_its_own_output_and_never_another_requests() {
    let h = harness(4).await;
    let spec = h.deploy("dep_crash", 128).await;

    // Request one logs a secret and waits, in the one process.
    let first = tokio::spawn({
        let (worker, spec) = (h.worker.clone(), spec.clone());
        async move {
            call(
                &worker,
                &spec,
                &format!("/secret?body={SECRET}"),
                "req-secret",
            )
            .await
        }
    });
    let logged = h
        .logs
        .wait_for(|e| e.message.contains(SECRET))
        .await
        .expect("the secret line reaches the function's log");
    assert_eq!(logged.kind, LogKind::Stderr, "{logged:?}");
    assert_eq!(
        logged.request_id.as_deref(),
        Some("req-secret"),
        "the line is attributed to its request: {logged:?}"
    );

    // Request two makes the same process exit.
    let second = crash_message(call(&h.worker, &spec, "/exit", "req-exit").await, "/exit");
    assert!(
        second.contains("exited with status 1"),
        "the caller is told how the process ended: {second}"
    );
    assert!(
        !second.contains(SECRET) && !second.contains("logging a request body"),
        "the caller must not see another request's output: {second}"
    );
    assert!(
        second.contains("exiting on purpose"),
        "the caller is told its own output: {second}"
    );

    // Request one fails with the process, told its own output and not the other's.
    let first = crash_message(first.await.expect("joining request one"), "/secret");
    assert!(first.contains(SECRET), "{first}");
    assert!(!first.contains("exiting on purpose"), "{first}");

    // Everything is still in the function's log, each line with its request.
    let exiting = h
        .logs
        .wait_for(|e| e.message.contains("exiting on purpose"))
        .await
        .expect("the crashing request's line is logged");
    assert_eq!(exiting.request_id.as_deref(), Some("req-exit"));

    // The next request starts a new process.
    let (status, _) = call(&h.worker, &spec, "/", "req-after")
        .await
        .unwrap_or_else(|f| panic!("the request after the crash failed: {f:?}"));
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_bomb_stops_at_the_task_limit_and_the_worker_keeps_serving() {
    let h = harness(1).await;
    let limit = h.worker.task_limit().clone();
    if !limit.enforced() {
        let said = limit.describe();
        eprintln!("NOT TESTED: this host offers no pids controller to the worker: {said}");
        assert!(
            said.starts_with("not enforced ("),
            "the worker reports the limit as not enforced, with why: {said}"
        );
        return;
    }
    // Memory enough for every child, so that only the task limit can stop them.
    let spec = h.deploy("dep_forkbomb", 1024).await;

    match call(
        &h.worker,
        &spec,
        &format!("/forkbomb?n={FORKS}"),
        "req-bomb",
    )
    .await
    {
        // Bun reports the refused spawn to the function...
        Ok((status, body)) => {
            assert_eq!(status, 200, "{body}");
            let answer: serde_json::Value =
                serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
            let spawned = answer["spawned"].as_u64().unwrap_or(u64::MAX);
            assert!(
                spawned < MAX_TASKS as u64,
                "at most {MAX_TASKS} tasks per process ({limit:?}): {body}"
            );
            assert!(
                answer["error"].is_string(),
                "spawning failed at the limit: {body}"
            );
        }
        // ...or (Bun 1.4) aborts, unable to start a thread: the process is replaced.
        Err(InvokeFailure {
            error: InvokeError::Crashed { message },
            ..
        }) => assert!(
            message.contains("task limit"),
            "the process ended at its task limit: {message}"
        ),
        Err(other) => panic!("the fork bomb failed otherwise: {other:?}"),
    }

    let (status, body) = call(&h.worker, &spec, "/", "req-after")
        .await
        .unwrap_or_else(|f| panic!("the worker must go on serving: {f:?}"));
    assert_eq!((status, body.as_str()), (200, "ok"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_private_tmp_is_bounded() {
    let h = harness(1).await;
    // Memory enough for more than the bound: the tmpfs size is what stops the writes.
    let spec = h.deploy("dep_tmp", 512).await;
    let (status, body) = call(&h.worker, &spec, "/fill-tmp", "req-tmp")
        .await
        .unwrap_or_else(|f| panic!("/fill-tmp failed: {f:?}"));
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
    assert!(
        answer["written"].as_u64().is_some_and(|n| n <= 64 << 20),
        "at most 64 MiB fit in /tmp: {body}"
    );
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("ENOSPC")),
        "writing past the bound fails with ENOSPC: {body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invocation_logs_at_most_its_budget_then_one_note() {
    let h = harness(1).await;
    let spec = h.deploy("dep_flood", 128).await;
    let (status, body) = call(&h.worker, &spec, "/flood", "req-flood")
        .await
        .unwrap_or_else(|f| panic!("/flood failed: {f:?}"));
    assert_eq!((status, body.as_str()), (200, "flooded"));
    // The process's stdout is logged in order: once this later line is in, all of the
    // flood has been read.
    call(&h.worker, &spec, "/mark?m=after-flood", "req-mark")
        .await
        .unwrap_or_else(|f| panic!("/mark failed: {f:?}"));
    h.logs
        .wait_for(|e| e.message == "mark after-flood")
        .await
        .expect("the later line is logged");

    let entries = h.logs.entries();
    let flood: Vec<&LogEntry> = entries
        .iter()
        .filter(|e| e.request_id.as_deref() == Some("req-flood"))
        .collect();
    let note = format!("[log output truncated: {MAX_LOG_BYTES} bytes per invocation]");
    let bytes: usize = flood.iter().map(|e| e.message.len()).sum();
    assert!(
        bytes <= MAX_LOG_BYTES + note.len() + 1,
        "{bytes} bytes logged for a budget of {MAX_LOG_BYTES}"
    );
    assert!(
        bytes >= MAX_LOG_BYTES / 2,
        "the budget's worth is logged: {bytes} bytes"
    );
    assert_eq!(
        flood.iter().filter(|e| e.message.contains(&note)).count(),
        1,
        "one truncation note"
    );
    assert!(
        flood.last().is_some_and(|e| e.message.ends_with(&note)),
        "the note ends the invocation's log"
    );
    let outside: usize = entries
        .iter()
        .filter(|e| e.request_id.is_none())
        .map(|e| e.message.len())
        .sum();
    assert!(
        outside < 64 << 10,
        "the flood did not escape as the process's output: {outside} bytes"
    );
}
