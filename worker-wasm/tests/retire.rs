//! `retire` on the WASM worker, with the probe component (`tests/fixtures/probe-wasm`):
//! a retired deployment is unloaded (its next request loads it again, cold), while an
//! instance running when it was retired finishes its response.

use axum::body::Body;
use http_body_util::BodyExt;
use reactor_api::logs::NoLogs;
use reactor_api::{Builder, DeploymentSpec, Invocation, InvokeOutcome, Runtime, RuntimeWorker};
use reactor_storage::{LocalStorage, keys};
use reactor_worker_wasm::{WasmWorker, WasmWorkerOptions};
use std::sync::Arc;
use std::time::Duration;

const ORG: &str = "acme";
const FUNCTION: &str = "probe";
const ENTRYPOINT: &str = "probe.wasm";
/// Deadline of every request: generous, the machine may be busy.
const GENEROUS: Duration = Duration::from_secs(30);

async fn invoke(worker: &WasmWorker, spec: &Arc<DeploymentSpec>, path: &str) -> InvokeOutcome {
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
    assert_eq!(outcome.response.status().as_u16(), 200, "{path}");
    outcome
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

#[tokio::test(flavor = "multi_thread")]
async fn a_retired_deployment_is_unloaded_and_its_running_instance_finishes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = Arc::new(
        LocalStorage::open(dir.path().join("storage"))
            .await
            .expect("local storage"),
    );
    let worker = WasmWorker::new(WasmWorkerOptions {
        storage,
        cache_dir: dir.path().join("cache"),
        max_instances: 8,
        env: Arc::new(reactor_api::invoke::NoEnv),
        logs: Arc::new(NoLogs),
    })
    .expect("wasm worker");
    let wasm_path = tokio::task::spawn_blocking(|| {
        reactor_tests::build_component("tests/fixtures/probe-wasm", true)
    })
    .await
    .expect("building the probe component");
    let wasm = std::fs::read(&wasm_path).expect("reading the probe component");
    let deployment_id = "dep_retire";
    let spec = Arc::new(DeploymentSpec {
        org: ORG.into(),
        function: FUNCTION.into(),
        deployment_id: deployment_id.into(),
        runtime: Runtime::Wasm,
        entrypoint: ENTRYPOINT.into(),
        bundle_key: keys::bundle(ORG, FUNCTION, deployment_id),
        sha256: String::new(),
        timeout_ms: GENEROUS.as_millis() as u64,
        memory_mb: 128,
        min_instances: 0,
        max_concurrency: None,
        calls: None,
        pool: None,
    });
    let bundle_dir = dir.path().join("bundle");
    std::fs::create_dir_all(&bundle_dir).expect("bundle dir");
    std::fs::write(bundle_dir.join(ENTRYPOINT), &wasm).expect("writing the entrypoint");
    worker.build(&spec, &bundle_dir).await.expect("build");
    worker.prepare(&spec).await.expect("prepare");

    let warm = invoke(&worker, &spec, "/").await;
    assert!(!warm.cold_start, "prepare loaded the deployment");
    body_text(warm).await;
    // Writes a first chunk, then the rest 5 s later.
    let running = invoke(&worker, &spec, "/stall").await;

    worker.retire(&spec.deployment_id).await;
    let again = invoke(&worker, &spec, "/").await;
    assert!(
        again.cold_start,
        "the retired deployment was unloaded: the next request loads it again"
    );
    body_text(again).await;
    let text = body_text(running).await;
    assert!(
        text.contains("first chunk") && text.contains("too late"),
        "the instance running at retire finished its response: {text:?}"
    );
}
