//! The Bun worker's pool, driven through the library's roles (`Builder`, `RuntimeWorker`)
//! with tiny limits from `[functions]` (`bun_max_instances_per_fn`,
//! `bun_concurrency_per_process`, `bun_queue_per_fn`, `bun_idle_ttl_secs`):
//!
//! - requests beyond `max_processes × per_process + queue` get `TooManyRequests` at once,
//!   the others are served (the queued one once a slot frees);
//! - processes start on demand (that request is cold), are reused while warm, and the
//!   pool grows to its cap and no further (requests past it wait in the queue);
//! - `prepare` starts a process, so the first request after it is warm;
//! - processes idle past the idle TTL are stopped (the next request is cold again, in a
//!   new process), except `min_instances` of the live deployment;
//! - `build` of a module whose default export has no `fetch` fails, saying so.
//!
//! Processes run sandboxed by bubblewrap, as in production: when bubblewrap is missing or
//! cannot create user namespaces here, these tests fail saying which.

use axum::body::Body;
use bytes::Bytes;
use futures::future::join_all;
use http_body_util::BodyExt;
use reactor_api::config::FunctionsConfig;
use reactor_api::logs::NoLogs;
use reactor_api::{
    Builder, DeploymentSpec, Invocation, InvokeError, InvokeFailure, Runtime, RuntimeWorker,
};
use reactor_storage::{LocalStorage, Storage, keys};
use reactor_worker_bun::{BunWorker, BunWorkerOptions};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const ORG: &str = "acme";
const FUNCTION: &str = "pool";
const ENTRYPOINT: &str = "index.ts";
/// Deadline of every request: generous, the machine may be busy; no request here is
/// expected to reach it.
const GENEROUS: Duration = Duration::from_secs(30);
/// How long the slow requests take: long enough that requests fired together all reach
/// the pool while the first ones are still running.
const SLOW_MS: u64 = 1000;
/// How often the worker looks for idle processes (`REAP_EVERY` in `src/worker.rs`).
const REAP_EVERY: Duration = Duration::from_millis(500);

/// Answers the id of the process that served it (drawn when the module loads, so one per
/// process), after sleeping `?ms=` milliseconds.
const HANDLER: &str = r#"
const INSTANCE = crypto.randomUUID();
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export default {
  async fetch(request: Request): Promise<Response> {
    const ms = Number(new URL(request.url).searchParams.get("ms") ?? "0");
    if (ms > 0) await sleep(ms);
    return new Response(INSTANCE);
  },
};
"#;

/// Pool bounds, as `[functions]` sets them.
struct Limits {
    max_processes: u32,
    per_process: u32,
    queue: u32,
    idle_ttl_secs: u64,
}

struct Harness {
    worker: Arc<BunWorker>,
    storage: Arc<LocalStorage>,
    dir: tempfile::TempDir,
}

async fn harness(limits: Limits) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = Arc::new(
        LocalStorage::open(dir.path().join("storage"))
            .await
            .expect("local storage"),
    );
    let config = FunctionsConfig {
        workdir: dir.path().join("work"),
        bun_max_instances_per_fn: limits.max_processes,
        bun_concurrency_per_process: limits.per_process,
        bun_queue_per_fn: limits.queue,
        bun_idle_ttl_secs: limits.idle_ttl_secs,
        // Production's setting, stated: processes run under bubblewrap.
        bun_sandbox: true,
        // Found as the worker finds it: the repository's node_modules/.bin/bun.
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
             bwrap binary (Debian package bubblewrap, installed by ./scripts/setup.sh) and \
             unprivileged user namespaces allowed on this host."
        )
    });
    Harness {
        worker,
        storage,
        dir,
    }
}

fn spec(deployment_id: &str, min_instances: u32) -> DeploymentSpec {
    DeploymentSpec {
        org: ORG.into(),
        function: FUNCTION.into(),
        deployment_id: deployment_id.into(),
        runtime: Runtime::Bun,
        entrypoint: ENTRYPOINT.into(),
        bundle_key: keys::bundle(ORG, FUNCTION, deployment_id),
        sha256: String::new(),
        timeout_ms: GENEROUS.as_millis() as u64,
        memory_mb: 128,
        min_instances,
        max_concurrency: None,
        calls: None,
        pool: None,
    }
}

/// A tar.gz of `(path, bytes)` regular files, as the CLI uploads.
fn bundle(files: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, name, *data)
            .expect("appending to the bundle");
    }
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .expect("finishing the bundle")
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// What a request came to.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// The id of the process that served it.
    instance: String,
    cold: bool,
}

impl Harness {
    /// Runs `build` on an unpacked bundle holding `source` as the entrypoint.
    async fn build(&self, spec: &DeploymentSpec, source: &str) -> Result<(), String> {
        let bundle_dir = self
            .dir
            .path()
            .join(format!("bundle-{}", spec.deployment_id));
        std::fs::create_dir_all(&bundle_dir).expect("bundle dir");
        std::fs::write(bundle_dir.join(&spec.entrypoint), source).expect("writing the entrypoint");
        self.worker.build(spec, &bundle_dir).await
    }

    /// Uploads and builds the handler as the control plane does: the bundle (tar.gz) in
    /// storage under `bundle_key`, where workers unpack it from, then `build`.
    async fn deploy(&self, mut spec: DeploymentSpec) -> Arc<DeploymentSpec> {
        let archive = bundle(&[(ENTRYPOINT, HANDLER.as_bytes())]);
        spec.sha256 = sha256_hex(&archive);
        self.storage
            .put_bytes(&spec.bundle_key, Bytes::from(archive))
            .await
            .expect("storing the bundle");
        self.build(&spec, HANDLER)
            .await
            .unwrap_or_else(|e| panic!("building the handler: {e}"));
        Arc::new(spec)
    }

    async fn call(&self, spec: &Arc<DeploymentSpec>, path: &str) -> Result<Answer, InvokeFailure> {
        let invocation = Invocation {
            spec: spec.clone(),
            request: http::Request::get(path)
                .body(Body::empty())
                .expect("request"),
            deadline: tokio::time::Instant::now() + GENEROUS,
            request_id: format!("req-{path}"),
            chain: Vec::new(),
        };
        let outcome = self.worker.invoke(invocation).await?;
        let status = outcome.response.status().as_u16();
        // Reading the body to its end releases the process's slot.
        let body = outcome
            .response
            .into_body()
            .collect()
            .await
            .expect("reading the response body")
            .to_bytes();
        Ok(Answer {
            status,
            instance: String::from_utf8_lossy(&body).into_owned(),
            cold: outcome.cold_start,
        })
    }

    /// A request that must succeed with 200.
    async fn ok(&self, spec: &Arc<DeploymentSpec>, path: &str) -> Answer {
        let answer = self
            .call(spec, path)
            .await
            .unwrap_or_else(|f| panic!("{path} failed: {f:?}"));
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        answer
    }

    /// `n` requests for `path` fired together. They are polled in one task: on the first
    /// poll each one reaches the pool (its pool exists already) before any of them gets
    /// an answer, so the pool sees them all at once.
    async fn together(
        &self,
        spec: &Arc<DeploymentSpec>,
        path: &str,
        n: usize,
    ) -> Vec<Result<Answer, InvokeFailure>> {
        join_all((0..n).map(|_| self.call(spec, path))).await
    }
}

fn slow() -> String {
    format!("/?ms={SLOW_MS}")
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_beyond_processes_times_concurrency_plus_queue_get_too_many_requests() {
    // Room for 1 process × 1 request, and 1 request waiting.
    let h = harness(Limits {
        max_processes: 1,
        per_process: 1,
        queue: 1,
        idle_ttl_secs: 300,
    })
    .await;
    let spec = h.deploy(spec("dep_429", 0)).await;
    h.worker.prepare(&spec).await.expect("prepare");

    let results = h.together(&spec, &slow(), 5).await;
    let mut served = Vec::new();
    let mut refused = 0;
    for result in results {
        match result {
            Ok(answer) => served.push(answer),
            Err(InvokeFailure {
                error: InvokeError::TooManyRequests { message },
                ..
            }) => {
                assert!(!message.is_empty());
                refused += 1;
            }
            Err(other) => panic!("only 429s may fail: {other:?}"),
        }
    }
    assert_eq!(
        (served.len(), refused),
        (2, 3),
        "1 running + 1 queued are served, the other 3 refused: {served:?}"
    );
    for answer in &served {
        assert_eq!(answer.status, 200, "{answer:?}");
        assert!(!answer.cold, "the prepared process served it: {answer:?}");
    }
    assert_eq!(
        served[0].instance, served[1].instance,
        "one process served both (the queued one after the first)"
    );

    // Once the burst is over, the pool serves again.
    let after = h.ok(&spec, "/").await;
    assert!(!after.cold, "{after:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pool_starts_processes_on_demand_and_grows_to_its_cap() {
    let h = harness(Limits {
        max_processes: 2,
        per_process: 1,
        queue: 8,
        idle_ttl_secs: 300,
    })
    .await;
    // Never prepared: the pool starts empty.
    let spec = h.deploy(spec("dep_grow", 0)).await;

    let first = h.ok(&spec, "/").await;
    assert!(first.cold, "the first request started a process: {first:?}");
    let second = h.ok(&spec, "/").await;
    assert!(!second.cold, "the warm process was reused: {second:?}");
    assert_eq!(second.instance, first.instance, "the same process");

    // Two at once: one takes the warm process, the other starts a second one.
    let pair: Vec<Answer> = h
        .together(&spec, &slow(), 2)
        .await
        .into_iter()
        .map(|r| r.unwrap_or_else(|f| panic!("a request of the pair failed: {f:?}")))
        .collect();
    let colds = pair.iter().filter(|a| a.cold).count();
    assert_eq!(
        colds, 1,
        "exactly one of the pair started a process: {pair:?}"
    );
    let instances: BTreeSet<&str> = pair.iter().map(|a| a.instance.as_str()).collect();
    assert_eq!(
        instances.len(),
        2,
        "two processes served the pair: {pair:?}"
    );
    assert!(instances.contains(first.instance.as_str()), "{pair:?}");

    // Three at once with the pool at its cap of 2: two are served at once, the third
    // waits in the queue for a slot; no process is started.
    let three: Vec<Answer> = h
        .together(&spec, &slow(), 3)
        .await
        .into_iter()
        .map(|r| r.unwrap_or_else(|f| panic!("a request of the three failed: {f:?}")))
        .collect();
    for answer in &three {
        assert_eq!(answer.status, 200, "{answer:?}");
        assert!(
            !answer.cold,
            "the pool was at its cap: no process started: {three:?}"
        );
        assert!(
            instances.contains(answer.instance.as_str()),
            "only the two processes serve: {three:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prepare_starts_a_process_so_the_first_request_is_warm() {
    let h = harness(Limits {
        max_processes: 2,
        per_process: 4,
        queue: 8,
        idle_ttl_secs: 300,
    })
    .await;
    let spec = h.deploy(spec("dep_prepared", 0)).await;
    h.worker.prepare(&spec).await.expect("prepare");

    let first = h.ok(&spec, "/").await;
    assert!(!first.cold, "prepare started the process: {first:?}");
    let second = h.ok(&spec, "/").await;
    assert!(!second.cold, "{second:?}");
    assert_eq!(first.instance, second.instance, "the same process");
}

/// Long enough for a process to be idle past a 1 s TTL and for the reaper to have run
/// after that (it runs every [`REAP_EVERY`]), with room for a busy machine.
fn past_idle_ttl(ttl_secs: u64) -> Duration {
    Duration::from_secs(ttl_secs) + REAP_EVERY * 2 + Duration::from_secs(2)
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_processes_of_a_deployment_that_is_not_live_are_stopped_after_the_idle_ttl() {
    let h = harness(Limits {
        max_processes: 2,
        per_process: 4,
        queue: 8,
        idle_ttl_secs: 1,
    })
    .await;
    // Never prepared: not live, so no process is kept.
    let spec = h.deploy(spec("dep_idle", 0)).await;

    let first = h.ok(&spec, "/").await;
    assert!(first.cold, "{first:?}");
    let warm = h.ok(&spec, "/").await;
    assert!(
        !warm.cold,
        "used again before the TTL, it is warm: {warm:?}"
    );
    assert_eq!(warm.instance, first.instance);

    tokio::time::sleep(past_idle_ttl(1)).await;

    let after = h.ok(&spec, "/").await;
    assert!(
        after.cold,
        "the idle process was stopped: the next request starts one: {after:?}"
    );
    assert_ne!(after.instance, first.instance, "a new process served it");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_deployment_keeps_min_instances_past_the_idle_ttl() {
    let h = harness(Limits {
        max_processes: 2,
        per_process: 4,
        queue: 8,
        idle_ttl_secs: 1,
    })
    .await;
    let spec = h.deploy(spec("dep_min", 1)).await;
    h.worker.prepare(&spec).await.expect("prepare");

    let first = h.ok(&spec, "/").await;
    assert!(!first.cold, "{first:?}");

    tokio::time::sleep(past_idle_ttl(1)).await;

    let after = h.ok(&spec, "/").await;
    assert!(
        !after.cold,
        "min_instances = 1 of the live deployment is kept: {after:?}"
    );
    assert_eq!(after.instance, first.instance, "the same process, kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn build_refuses_a_default_export_without_fetch() {
    let h = harness(Limits {
        max_processes: 1,
        per_process: 1,
        queue: 0,
        idle_ttl_secs: 300,
    })
    .await;
    let error = h
        .build(
            &spec("dep_nofetch", 0),
            "export default { hello() { return 1; } };\n",
        )
        .await
        .expect_err("a module without fetch must not build");
    assert!(error.contains("no fetch method"), "{error}");
    assert!(
        error.contains(ENTRYPOINT),
        "the error names the entrypoint: {error}"
    );
}
