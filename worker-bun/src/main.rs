//! `reactor-worker-bun`: see [`reactor_worker_bun::server`].

/// mimalloc, not the system allocator: measured faster per request (docs/benchmarks.md,
/// "The WASM hot path").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = reactor_worker_bun::server::Args::parse();
    reactor_worker_bun::server::run(args).await
}
