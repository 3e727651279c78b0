//! `retire`, with Bun sandboxed by bubblewrap as in production:
//!
//! - the processes of a retired deployment (here one kept by `min_instances`) are gone
//!   at once, well before the idle TTL or the grace of a superseded pool, and the next
//!   request starts a fresh process;
//! - a request running when its deployment is retired finishes, then its process stops.
//!
//! The worker's processes are found in `/proc`: those whose command line names this
//! test's directory (bubblewrap's mounts) and their descendants (Bun, in the sandbox's
//! own pid namespace).

use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;
use reactor_api::config::FunctionsConfig;
use reactor_api::logs::NoLogs;
use reactor_api::{DeploymentSpec, Invocation, InvokeOutcome, Runtime, RuntimeWorker};
use reactor_storage::{LocalStorage, Storage, keys};
use reactor_worker_bun::{BunWorker, BunWorkerOptions};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

const ORG: &str = "acme";
const FUNCTION: &str = "retired";
const ENTRYPOINT: &str = "index.ts";
/// Deadline of every request: generous, the machine may be busy.
const GENEROUS: Duration = Duration::from_secs(30);
/// How soon a retired deployment's idle processes must be gone: less than the 2 s a
/// superseded pool waits (`RETIRED_GRACE`), far less than the idle TTL.
const AT_ONCE: Duration = Duration::from_millis(1500);

/// Streams the id of its process (one per process, drawn when the module loads) at once,
/// then " done" after `?ms=` milliseconds.
const HANDLER: &str = r#"
const INSTANCE = crypto.randomUUID();
const text = new TextEncoder();

export default {
  fetch(request: Request): Response {
    const ms = Number(new URL(request.url).searchParams.get("ms") ?? "0");
    const body = new ReadableStream({
      async start(controller) {
        controller.enqueue(text.encode(INSTANCE));
        if (ms > 0) await new Promise((resolve) => setTimeout(resolve, ms));
        controller.enqueue(text.encode(" done"));
        controller.close();
      },
    });
    return new Response(body);
  },
};
"#;

struct Harness {
    worker: Arc<BunWorker>,
    storage: Arc<LocalStorage>,
    dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = Arc::new(
        LocalStorage::open(dir.path().join("storage"))
            .await
            .expect("local storage"),
    );
    let config = FunctionsConfig {
        workdir: dir.path().join("work"),
        bun_max_instances_per_fn: 2,
        bun_concurrency_per_process: 4,
        bun_queue_per_fn: 4,
        // Far longer than the test: only `retire` may stop a process.
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
             These tests run Bun sandboxed by bubblewrap, as production does: they need the \
             bwrap binary and unprivileged user namespaces allowed on this host."
        )
    });
    Harness {
        worker,
        storage,
        dir,
    }
}

impl Harness {
    /// Stores the bundle where workers unpack it from.
    async fn deploy(&self, deployment_id: &str, min_instances: u32) -> Arc<DeploymentSpec> {
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
            memory_mb: 128,
            min_instances,
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

    /// The response's head: the process is serving the request until its body is read.
    async fn start(&self, spec: &Arc<DeploymentSpec>, path: &str) -> InvokeOutcome {
        let invocation = Invocation {
            spec: spec.clone(),
            request: http::Request::get(path)
                .body(Body::empty())
                .expect("request"),
            deadline: tokio::time::Instant::now() + GENEROUS,
            request_id: format!("req-{path}"),
            chain: Vec::new(),
        };
        let outcome = self
            .worker
            .invoke(invocation)
            .await
            .unwrap_or_else(|f| panic!("{path} failed: {f:?}"));
        assert_eq!(outcome.response.status().as_u16(), 200, "{path}");
        outcome
    }

    /// A whole request: the serving process's id and whether it was started for it.
    async fn call(&self, spec: &Arc<DeploymentSpec>, path: &str) -> (String, bool) {
        let outcome = self.start(spec, path).await;
        let cold = outcome.cold_start;
        (body_text(outcome).await, cold)
    }

    /// This worker's processes, as `(pid, start time)`.
    fn processes(&self) -> BTreeSet<(u32, u64)> {
        processes_under(&self.dir.path().display().to_string())
    }
}

async fn body_text(outcome: InvokeOutcome) -> String {
    let body = outcome
        .response
        .into_body()
        .collect()
        .await
        .expect("reading the response body")
        .to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// One entry of `/proc`: parent, start time (which tells a reused pid apart), zombie.
struct Proc {
    ppid: u32,
    start: u64,
    zombie: bool,
}

/// `/proc/<pid>/stat`, whose second field (the command name, in parentheses) may hold
/// spaces: the fields after it are read from the last `)`.
fn stat(pid: u32) -> Option<Proc> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (3), ppid (4), .., starttime (22).
    Some(Proc {
        zombie: *fields.first()? == "Z",
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Live processes whose command line contains `marker`, and all their descendants.
fn processes_under(marker: &str) -> BTreeSet<(u32, u64)> {
    let mut all: HashMap<u32, Proc> = HashMap::new();
    let mut roots = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(p) = stat(pid) else { continue };
        if p.zombie {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(marker) {
            roots.push(pid);
        }
        all.insert(pid, p);
    }
    let mut found = BTreeSet::new();
    let mut todo = roots;
    while let Some(pid) = todo.pop() {
        let Some(p) = all.get(&pid) else { continue };
        if found.insert((pid, p.start)) {
            let children = all.iter().filter(|(_, child)| child.ppid == pid);
            todo.extend(children.map(|(child, _)| *child));
        }
    }
    found
}

/// Whether any of `processes` still runs (the same pid with the same start time).
fn any_alive(processes: &BTreeSet<(u32, u64)>) -> bool {
    processes
        .iter()
        .any(|(pid, start)| stat(*pid).is_some_and(|p| !p.zombie && p.start == *start))
}

/// Polls every 20 ms until `done` or `timeout`; returns whether it became true.
async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retired_deployment_s_processes_stop_at_once_and_a_later_request_starts_afresh() {
    let h = harness().await;
    // Live with one instance kept: without `retire`, it would run for ever.
    let spec = h.deploy("dep_retire", 1).await;
    h.worker.prepare(&spec).await.expect("prepare");
    let (first, cold) = h.call(&spec, "/").await;
    assert!(!cold, "prepare started the process");
    let before = h.processes();
    assert!(
        !before.is_empty(),
        "the worker's process is found in /proc under {}",
        h.dir.path().display()
    );

    h.worker.retire(&spec.deployment_id).await;
    assert!(
        wait_until(AT_ONCE, || !any_alive(&before)).await,
        "the retired deployment's processes still run {AT_ONCE:?} after retire: {before:?}"
    );

    // A late request (a router behind on the table) is still served, by a new process.
    let (second, cold) = h.call(&spec, "/").await;
    assert!(cold, "the retired process was not reused");
    assert_ne!(second, first, "a fresh process served it");
    let after = h.processes();
    assert!(
        after.is_disjoint(&before),
        "none of the retired processes serves: {before:?} then {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_running_when_its_deployment_is_retired_finishes_then_its_process_stops() {
    let h = harness().await;
    let spec = h.deploy("dep_busy", 0).await;
    h.worker.prepare(&spec).await.expect("prepare");
    // The head arrives with the process's id; " done" a second later.
    let running = h.start(&spec, "/?ms=1000").await;
    let before = h.processes();
    assert!(!before.is_empty(), "the worker's process is found in /proc");

    h.worker.retire(&spec.deployment_id).await;
    let text = body_text(running).await;
    assert!(
        text.ends_with(" done"),
        "the running request finished: {text:?}"
    );
    assert!(
        wait_until(AT_ONCE, || !any_alive(&before)).await,
        "the process still runs {AT_ONCE:?} after its last request: {before:?}"
    );
}
