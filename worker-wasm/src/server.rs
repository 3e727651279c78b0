//! `reactor-worker-wasm`: the WASM worker as its own service. Invocations from routers
//! (the internal HTTP/2 protocol of `reactor_worker_link`) and health on `listen`;
//! registers with the control plane and heartbeats; loads deployments from storage
//! (artifacts, or the bundle when its engine differs), never from the control plane.

use crate::{WasmWorker, WasmWorkerOptions};
use reactor_api::Runtime;
use reactor_storage::seal::ArtifactSeal;
use reactor_worker_link::service::{WorkerArgs, run_worker};

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "reactor-worker-wasm",
    version,
    about = "Reactor WASM worker: runs WASI HTTP components for routers"
)]
pub struct Args {
    #[command(flatten)]
    pub worker: WorkerArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    run_worker(args.worker, Runtime::Wasm, |cx| async move {
        // Artifacts are sealed with a key derived from the workers' credential, which
        // every WASM worker holds and routers do not.
        let seal = ArtifactSeal::from_secret(cx.config.worker_token()?);
        let worker = std::sync::Arc::new(
            WasmWorker::new(WasmWorkerOptions {
                storage: cx.storage,
                cache_dir: cx.cache_dir,
                max_instances: cx.config.worker.max_instances,
                env: cx.env,
                logs: cx.logs,
            })?
            .with_seal(seal)
            .with_loaded_budget(cx.config.worker.loaded_budget_mb.saturating_mul(1 << 20))
            .with_calls(cx.calls, cx.call_limits),
        );
        // Calls to inline WASM callees run here; it knows them from the routing table.
        worker.enable_inline(cx.tables);
        worker.report_pools();
        Ok(worker)
    })
    .await
}
