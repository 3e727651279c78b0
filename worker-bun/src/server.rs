//! `reactor-worker-bun`: the Bun worker as its own service, registered with the control
//! plane like every worker (see `reactor_worker_link::service`). Bun is found as
//! `functions.bun_path` says, else as `reactor_bun_dist::find_bun` looks (the build
//! repository's `node_modules`, the current directory's, `PATH`); the worker refuses to
//! start without it.

use crate::{BunWorker, BunWorkerOptions};
use reactor_api::Runtime;
use reactor_worker_link::service::{WorkerArgs, run_worker};

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "reactor-worker-bun",
    version,
    about = "Reactor Bun worker: runs TypeScript/JavaScript functions in warm, sandboxed Bun processes"
)]
pub struct Args {
    #[command(flatten)]
    pub worker: WorkerArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    run_worker(args.worker, Runtime::Bun, |cx| async move {
        let mut options = BunWorkerOptions::from_config(
            &cx.config.functions,
            cx.storage,
            cx.cache_dir,
            cx.env,
            cx.logs,
        )?;
        options.calls = cx.calls;
        BunWorker::new(options).await
    })
    .await
}
