//! The WASM worker as a library, driven through its roles (`Builder`, `RuntimeWorker`)
//! with local storage and the probe component (`tests/fixtures/probe-wasm`):
//!
//! - `build` compiles a bundle's entrypoint and stores the artifact, and `prepare` loads
//!   it from storage, so the first request is warm; a deployment that was never prepared
//!   compiles from its stored bundle on its first request, which is cold;
//! - a handler still running at the deadline, sleeping or spinning, gives `Timeout`;
//! - a trap (the guest panics) gives `Crashed`, and the guest's stderr reaches the log sink;
//! - an allocation past `limits.memory_mb` is refused, which the guest turns into a trap
//!   (`Crashed`), while a small allocation succeeds;
//! - `build` of a file that is not a component fails with the reason the user reads;
//! - a deployment with as many live instances as its cap allows gets `TooManyRequests`
//!   (429) for one more, while another deployment is served, until one of them ends;
//! - an artifact replaced in storage is rebuilt from the bundle, never deserialized, and a
//!   bundle that does not match its recorded sha256 is refused;
//! - the same code deployed twice in an org is compiled and loaded once;
//! - past `loaded_budget` the least recently used idle deployment is unloaded.
//!
//! Every request gets a fresh instance, so after each failure the same deployment serves.

use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;
use reactor_api::logs::{LogEntry, LogKind, LogSink};
use reactor_api::{
    Builder, DeploymentSpec, Invocation, InvokeError, InvokeFailure, InvokeOutcome, Runtime,
    RuntimeWorker,
};
use reactor_storage::{LocalStorage, Storage, keys};
use reactor_worker_wasm::{WasmWorker, WasmWorkerOptions};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ORG: &str = "acme";
const FUNCTION: &str = "probe";
const ENTRYPOINT: &str = "probe.wasm";
/// Deadline of requests that are expected to succeed: generous, the machine may be busy.
const GENEROUS: Duration = Duration::from_secs(30);

/// A log sink that keeps every entry, to look at what the guest printed.
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
    /// Waits (a bounded time) for a stderr line of request `request_id` containing `text`.
    async fn stderr_line(&self, request_id: &str, text: &str) -> Option<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.0.lock().ok().and_then(|entries| {
                entries
                    .iter()
                    .filter(|e| e.kind == LogKind::Stderr)
                    .filter(|e| e.request_id.as_deref() == Some(request_id))
                    .find(|e| e.message.contains(text))
                    .map(|e| e.message.clone())
            });
            if found.is_some() || tokio::time::Instant::now() >= deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn dump(&self) -> String {
        self.0
            .lock()
            .map(|entries| {
                entries
                    .iter()
                    .map(LogEntry::line)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }
}

/// A worker over its own local storage and cache.
struct Harness {
    worker: WasmWorker,
    storage: Arc<LocalStorage>,
    logs: Arc<Collected>,
    dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    harness_with(None).await
}

/// A harness whose worker allows `instances_per_deployment` when set, else its default.
async fn harness_with(instances_per_deployment: Option<u32>) -> Harness {
    harness_full(instances_per_deployment, None).await
}

/// A harness whose loaded deployments may be charged `budget` bytes.
async fn harness_budget(budget: u64) -> Harness {
    harness_full(None, Some(budget)).await
}

async fn harness_full(instances_per_deployment: Option<u32>, budget: Option<u64>) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = Arc::new(
        LocalStorage::open(dir.path().join("storage"))
            .await
            .expect("local storage"),
    );
    let logs = Arc::new(Collected::default());
    let mut worker = WasmWorker::new(WasmWorkerOptions {
        storage: storage.clone(),
        cache_dir: dir.path().join("cache"),
        max_instances: 8,
        env: Arc::new(reactor_api::invoke::NoEnv),
        logs: logs.clone(),
    })
    .expect("wasm worker");
    if let Some(instances) = instances_per_deployment {
        worker = worker.with_instances_per_deployment(instances);
    }
    if let Some(budget) = budget {
        worker = worker.with_loaded_budget(budget);
    }
    Harness {
        worker,
        storage,
        logs,
        dir,
    }
}

/// The probe component, built once per test run (release, as the end-to-end tests use).
async fn probe_wasm() -> Vec<u8> {
    let path: PathBuf = tokio::task::spawn_blocking(|| {
        reactor_tests::build_component("tests/fixtures/probe-wasm", true)
    })
    .await
    .expect("building the probe component");
    std::fs::read(&path).expect("reading the probe component")
}

/// A deployment of function `function` of `org`.
fn spec_of(org: &str, function: &str, deployment_id: &str) -> DeploymentSpec {
    DeploymentSpec {
        org: org.into(),
        function: function.into(),
        bundle_key: keys::bundle(org, function, deployment_id),
        ..spec(deployment_id, 30_000, 128)
    }
}

fn spec(deployment_id: &str, timeout_ms: u64, memory_mb: u32) -> DeploymentSpec {
    DeploymentSpec {
        org: ORG.into(),
        function: FUNCTION.into(),
        deployment_id: deployment_id.into(),
        runtime: Runtime::Wasm,
        entrypoint: ENTRYPOINT.into(),
        bundle_key: keys::bundle(ORG, FUNCTION, deployment_id),
        sha256: String::new(),
        timeout_ms,
        memory_mb,
        min_instances: 0,
        max_concurrency: None,
        calls: None,
        pool: None,
    }
}

impl Harness {
    /// Writes `wasm` as the entrypoint of an unpacked bundle and runs `build` on it.
    async fn build(&self, spec: &DeploymentSpec, wasm: &[u8]) -> Result<(), String> {
        let bundle_dir = self
            .dir
            .path()
            .join(format!("bundle-{}", spec.deployment_id));
        std::fs::create_dir_all(&bundle_dir).expect("bundle dir");
        std::fs::write(bundle_dir.join(&spec.entrypoint), wasm).expect("writing the entrypoint");
        self.worker.build(spec, &bundle_dir).await
    }

    /// Stores `wasm` as the deployment's bundle (a tar.gz with the entrypoint) and sets
    /// its sha256, as the control plane does on upload.
    async fn store_bundle(&self, spec: &mut DeploymentSpec, wasm: &[u8]) {
        let archive = reactor_tests::bundle(&[(ENTRYPOINT, wasm)]);
        spec.sha256 = reactor_tests::sha256_hex(&archive);
        self.storage
            .put_bytes(&spec.bundle_key, Bytes::from(archive))
            .await
            .expect("storing the bundle");
    }

    /// Builds and prepares a deployment of the probe: it is live and loaded.
    async fn deploy(&self, spec: DeploymentSpec) -> Arc<DeploymentSpec> {
        let wasm = probe_wasm().await;
        self.build(&spec, &wasm).await.expect("build");
        self.worker.prepare(&spec).await.expect("prepare");
        Arc::new(spec)
    }

    /// Invokes `path`; the response body is left unread (its instance lives with it).
    async fn invoke(
        &self,
        spec: &Arc<DeploymentSpec>,
        request_id: &str,
        path: &str,
        within: Duration,
    ) -> Result<InvokeOutcome, InvokeFailure> {
        let invocation = Invocation {
            spec: spec.clone(),
            request: http::Request::get(path)
                .body(Body::empty())
                .expect("request"),
            deadline: tokio::time::Instant::now() + within,
            request_id: request_id.to_string(),
            chain: Vec::new(),
        };
        self.worker.invoke(invocation).await
    }

    async fn call(
        &self,
        spec: &Arc<DeploymentSpec>,
        request_id: &str,
        path: &str,
        within: Duration,
    ) -> Result<Answer, InvokeFailure> {
        let outcome = self.invoke(spec, request_id, path, within).await?;
        let status = outcome.response.status().as_u16();
        let body = outcome
            .response
            .into_body()
            .collect()
            .await
            .expect("reading the response body")
            .to_bytes();
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
            cold: outcome.cold_start,
        })
    }

    /// A request that must succeed with 200.
    async fn ok(&self, spec: &Arc<DeploymentSpec>, request_id: &str, path: &str) -> Answer {
        let answer = self
            .call(spec, request_id, path, GENEROUS)
            .await
            .unwrap_or_else(|f| panic!("{path} failed: {f:?}\nlogs:\n{}", self.logs.dump()));
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        answer
    }

    /// A request that must fail before its response headers.
    async fn fails(
        &self,
        spec: &Arc<DeploymentSpec>,
        request_id: &str,
        path: &str,
        within: Duration,
    ) -> InvokeFailure {
        match self.call(spec, request_id, path, within).await {
            Ok(answer) => panic!("{path} was expected to fail, it answered {answer:?}"),
            Err(failure) => failure,
        }
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
    cold: bool,
}

#[tokio::test(flavor = "multi_thread")]
async fn build_then_prepare_serves_the_first_request_warm() {
    let h = harness().await;
    // No bundle in storage: what `prepare` loads can only be the artifact `build` stored.
    let spec = h.deploy(spec("dep_warm", 30_000, 128)).await;

    let first = h.ok(&spec, "req-1", "/hello?x=1").await;
    assert!(!first.cold, "the first request after prepare was cold");
    assert!(
        first.body.contains(r#""probe":true"#) && first.body.contains("/hello?x=1"),
        "the probe echoes the request: {}",
        first.body
    );
    let second = h.ok(&spec, "req-2", "/again").await;
    assert!(!second.cold, "a later request was cold");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_never_prepared_loads_from_its_bundle_on_its_first_request() {
    let h = harness().await;
    let wasm = probe_wasm().await;
    let mut spec = spec("dep_cold", 30_000, 128);
    // Only the bundle is stored (no build): the worker compiles it on first use.
    h.store_bundle(&mut spec, &wasm).await;
    let spec = Arc::new(spec);

    let first = h.ok(&spec, "req-1", "/").await;
    assert!(
        first.cold,
        "the first request loaded the deployment: it was cold"
    );
    let second = h.ok(&spec, "req-2", "/").await;
    assert!(
        !second.cold,
        "the deployment stays loaded: the second request is warm"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_running_past_its_deadline_times_out() {
    let h = harness().await;
    let spec = h.deploy(spec("dep_timeout", 500, 128)).await;
    let within = Duration::from_millis(spec.timeout_ms);

    // `/slow` waits 3 s in a host call (a clock subscription).
    let slow = h.fails(&spec, "req-slow", "/slow", within).await;
    assert!(
        matches!(slow.error, InvokeError::Timeout { timeout_ms: 500 }),
        "a sleeping handler: {slow:?}"
    );
    assert!(!slow.cold_start, "the deployment was prepared: {slow:?}");

    // `/spin` loops in wasm code: epoch interruption stops it.
    let spin = h.fails(&spec, "req-spin", "/spin", within).await;
    assert!(
        matches!(spin.error, InvokeError::Timeout { timeout_ms: 500 }),
        "a spinning handler: {spin:?}"
    );

    // The next request gets a fresh instance and answers.
    h.ok(&spec, "req-after", "/").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trap_is_a_crash_and_the_guest_stderr_is_logged() {
    let h = harness().await;
    let spec = h.deploy(spec("dep_trap", 30_000, 128)).await;

    // `/crash` panics; the probe is built with panic = "abort": the instance traps.
    let crash = h.fails(&spec, "req-crash", "/crash", GENEROUS).await;
    match &crash.error {
        InvokeError::Crashed { message } => {
            assert!(!message.is_empty(), "the crash says something: {crash:?}")
        }
        other => panic!("a trap must be Crashed, got {other:?}"),
    }
    assert!(
        h.logs
            .stderr_line("req-crash", "probe crashed on purpose")
            .await
            .is_some(),
        "the panic message reaches the function's log as a stderr line:\n{}",
        h.logs.dump()
    );

    h.ok(&spec, "req-after", "/").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn allocating_past_memory_mb_is_refused_and_crashes_the_instance() {
    let h = harness().await;
    // 32 MiB over all the instance's memories.
    let spec = h.deploy(spec("dep_memory", 30_000, 32)).await;

    let small = h.ok(&spec, "req-small", "/grow?mb=4").await;
    assert_eq!(small.body, "grew 4 MiB");

    // The limiter refuses `memory.grow`; Rust's allocator then reports the failure on
    // stderr and aborts, which is a trap: the invocation crashed.
    let big = h.fails(&spec, "req-big", "/grow?mb=64", GENEROUS).await;
    assert!(
        matches!(big.error, InvokeError::Crashed { .. }),
        "an allocation past memory_mb: {big:?}"
    );
    assert!(
        h.logs
            .stderr_line("req-big", "memory allocation of")
            .await
            .is_some(),
        "the guest says on stderr which allocation failed:\n{}",
        h.logs.dump()
    );

    // Each request has its own instance and its own budget.
    let again = h.ok(&spec, "req-again", "/grow?mb=4").await;
    assert_eq!(again.body, "grew 4 MiB");
}

#[tokio::test(flavor = "multi_thread")]
async fn build_of_a_file_that_is_not_a_component_fails_with_the_reason() {
    let h = harness().await;

    let garbage = h
        .build(
            &spec("dep_garbage", 30_000, 128),
            b"this is not webassembly",
        )
        .await
        .expect_err("building garbage");
    assert!(
        garbage.contains("not a valid WebAssembly component"),
        "{garbage}"
    );

    // A core module (the 8-byte header of an empty one) is WebAssembly, not a component.
    let core = h
        .build(&spec("dep_core", 30_000, 128), b"\0asm\x01\0\0\0")
        .await
        .expect_err("building a core module");
    assert!(core.contains("not a valid WebAssembly component"), "{core}");

    // An entrypoint missing from the bundle directory.
    let missing_dir = h.dir.path().join("empty-bundle");
    std::fs::create_dir_all(&missing_dir).expect("dir");
    let missing = h
        .worker
        .build(&spec("dep_missing", 30_000, 128), &missing_dir)
        .await
        .expect_err("building without the entrypoint");
    assert!(
        missing.contains("reading entrypoint") && missing.contains(ENTRYPOINT),
        "{missing}"
    );

    // Nothing was stored for the failed build: the deployment cannot be loaded.
    let not_ready = h
        .worker
        .prepare(&spec("dep_garbage", 30_000, 128))
        .await
        .expect_err("preparing a deployment whose build failed");
    assert!(
        matches!(not_ready, InvokeError::NotReady { .. }),
        "{not_ready:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_at_its_instance_cap_is_refused_while_another_is_served() {
    let h = harness_with(Some(2)).await;
    let busy = h.deploy(spec("dep_busy", 30_000, 128)).await;
    let mut other = spec("dep_other", 30_000, 128);
    other.function = "other".into();
    other.bundle_key = keys::bundle(ORG, "other", "dep_other");
    let other = h.deploy(other).await;

    // `/stall` answers its headers, then sleeps 5 s: its instance lives while its
    // response is held.
    let mut stalled = Vec::new();
    for i in 0..2 {
        let outcome = h
            .invoke(&busy, &format!("req-stall-{i}"), "/stall", GENEROUS)
            .await
            .unwrap_or_else(|f| panic!("stalled request {i}: {f:?}"));
        stalled.push(outcome);
    }

    let third = h.fails(&busy, "req-third", "/", GENEROUS).await;
    assert!(
        matches!(third.error, InvokeError::TooManyRequests { .. }),
        "a third instance of a deployment capped at 2: {third:?}"
    );
    let public = third.error.to_api_error(&busy, Duration::ZERO);
    assert_eq!(public.status().as_u16(), 429, "{public:?}");
    assert_eq!(public.code.as_str(), "too_many_requests");

    // Another function's deployment is served meanwhile.
    h.ok(&other, "req-other", "/").await;

    // A response that ends (here, dropped) frees its instance's slot; the abort of its
    // task is asynchronous, hence a bounded wait.
    drop(stalled.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match h.call(&busy, "req-after", "/", GENEROUS).await {
            Ok(answer) => {
                assert_eq!(answer.status, 200, "{answer:?}");
                break;
            }
            Err(InvokeFailure {
                error: InvokeError::TooManyRequests { .. },
                ..
            }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(failure) => panic!("after one of the two ended: {failure:?}"),
        }
    }
}

/// Write access to the bucket is not code execution: an artifact replaced in storage is
/// never deserialized (its MAC fails) and the worker rebuilds it from the bundle; a
/// bundle that does not match its recorded sha256 is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_artifact_is_rebuilt_from_the_bundle_and_a_tampered_bundle_refused() {
    let h = harness().await;
    let wasm = probe_wasm().await;
    let mut s = spec("dep_tampered", 30_000, 128);
    h.store_bundle(&mut s, &wasm).await;
    h.build(&s, &wasm).await.expect("build");
    // Local storage keeps objects as files under its root: overwrite the artifact there.
    let dir = h
        .dir
        .path()
        .join(format!("storage/artifacts/{ORG}/{FUNCTION}/dep_tampered"));
    let artifacts: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the artifact's folder")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(
        artifacts.len(),
        1,
        "build stored one artifact: {artifacts:?}"
    );
    std::fs::write(&artifacts[0], b"\x7fELF not what was built").expect("tampering");
    let s = Arc::new(s);
    let answer = h.ok(&s, "req-1", "/hello").await;
    assert!(answer.cold, "rebuilt from the bundle on first use");

    // The bundle itself replaced: refused, nothing runs.
    let mut other = spec("dep_bad_bundle", 30_000, 128);
    h.store_bundle(&mut other, &wasm).await;
    h.storage
        .put_bytes(
            &other.bundle_key,
            Bytes::from(reactor_tests::bundle(&[(ENTRYPOINT, b"\0asm evil")])),
        )
        .await
        .expect("tampering");
    let other = Arc::new(other);
    match h.fails(&other, "req-2", "/hello", GENEROUS).await.error {
        InvokeError::NotReady { message } => {
            assert!(
                message.contains("does not match its recorded sha256"),
                "{message}"
            )
        }
        e => panic!("expected NotReady, got {e:?}"),
    }
}

/// The stored artifact of a deployment, as a file of the local storage.
fn artifact_file(h: &Harness, spec: &DeploymentSpec) -> std::fs::Metadata {
    let dir = h.dir.path().join("storage").join(keys::artifact(
        &spec.org,
        &spec.function,
        &spec.deployment_id,
        "",
    ));
    let file = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
        .unwrap_or_else(|| panic!("no artifact in {}", dir.display()));
    file.metadata().expect("artifact metadata")
}

/// Deployments of one org that run the same code are compiled once (the artifact is
/// copied in storage: here a hard link) and loaded once (one component, one charge);
/// another org's deployment of the same code gets its own.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_code_in_one_org_is_built_once_and_loaded_once() {
    use std::os::unix::fs::MetadataExt;
    let h = harness().await;
    let first = h.deploy(spec_of("acme", "one", "dep_one")).await;
    let second = h.deploy(spec_of("acme", "two", "dep_two")).await;
    let other = h.deploy(spec_of("globex", "one", "dep_other")).await;
    assert_eq!(
        artifact_file(&h, &first).ino(),
        artifact_file(&h, &second).ino(),
        "the second build of the same code in the org is a copy (a hard link), not a compile"
    );
    assert_ne!(
        artifact_file(&h, &first).ino(),
        artifact_file(&h, &other).ino(),
        "another org's build is its own"
    );
    let loaded = h.worker.loaded();
    assert_eq!(loaded.deployments.len(), 3, "{loaded:?}");
    assert_eq!(loaded.codes, 2, "one code per org: {loaded:?}");
    for (spec, id) in [(&first, "r1"), (&second, "r2"), (&other, "r3")] {
        let answer = h.ok(spec, id, "/").await;
        assert!(!answer.cold, "{}: prepared, so warm", spec.deployment_id);
    }
    let code = artifact_file(&h, &first).len();
    assert!(
        loaded.charged < 2 * code + 3 * 64 * 1024,
        "the shared code is charged once: {loaded:?}, artifact {code} bytes"
    );
    // A new deployment of `one` supersedes the first; retiring the rest leaves nothing.
    h.deploy(spec_of("acme", "one", "dep_one_v2")).await;
    assert!(
        !h.worker
            .loaded()
            .deployments
            .contains(&"dep_one".to_string())
    );
    for id in ["dep_one_v2", "dep_two", "dep_other"] {
        h.worker.retire(id).await;
    }
    assert_eq!(
        h.worker.loaded(),
        reactor_worker_wasm::LoadedSummary::default(),
        "everything unloaded gives its charge back"
    );
}

/// Past its budget a worker unloads the least recently used idle deployment; one with an
/// instance running stays, and an unloaded one serves again on its next request (cold).
#[tokio::test(flavor = "multi_thread")]
async fn past_its_budget_the_worker_unloads_the_least_recently_used_idle_deployment() {
    // What one loaded deployment is charged, measured on a worker without a budget.
    let probe = harness().await;
    probe.deploy(spec_of("a", "f", "dep_measure")).await;
    let one = probe.worker.loaded().charged;
    assert!(one > 0, "a loaded deployment is charged");

    // Room for two deployments of distinct code (three orgs: nothing shared), not three.
    let h = harness_budget(one * 5 / 2).await;
    let a = h.deploy(spec_of("a", "f", "dep_a")).await;
    let b = h.deploy(spec_of("b", "f", "dep_b")).await;
    assert_eq!(h.worker.loaded().deployments, ["dep_a", "dep_b"]);
    // `a` used after `b`: `b` is the least recently used.
    assert!(!h.ok(&a, "r-a", "/").await.cold);
    let c = h.deploy(spec_of("c", "f", "dep_c")).await;
    let loaded = h.worker.loaded();
    assert_eq!(loaded.deployments, ["dep_a", "dep_c"], "{loaded:?}");
    assert!(loaded.charged <= one * 5 / 2, "{loaded:?}");
    let again = h.ok(&b, "r-b", "/").await;
    assert!(
        again.cold,
        "an unloaded deployment loads again on its next request"
    );
    assert_eq!(
        h.worker.loaded().deployments,
        ["dep_c", "dep_b"],
        "`a` went this time"
    );

    // A deployment with an instance running is not unloaded, however old.
    let held = h
        .invoke(&c, "r-stall", "/stall", GENEROUS)
        .await
        .unwrap_or_else(|f| panic!("stall: {f:?}"));
    assert!(!h.ok(&b, "r-b2", "/").await.cold);
    let again = h.ok(&a, "r-a2", "/").await;
    assert!(again.cold, "`a` was unloaded");
    let loaded = h.worker.loaded();
    assert!(
        loaded.deployments.contains(&"dep_c".to_string()),
        "`c` (least recently used, but running) stays: {loaded:?}"
    );
    assert_eq!(loaded.deployments.len(), 2, "{loaded:?}");
    drop(held);
}
