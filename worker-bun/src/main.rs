//! `reactor-worker-bun`: see [`reactor_worker_bun::server`].

/// mimalloc: fewer cycles per allocation than the system allocator on the invoke path
/// (docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = reactor_worker_bun::server::Args::parse();
    reactor_worker_bun::server::run(args).await
}
