//! `reactor-worker-wasm`: see [`reactor_worker_wasm::server`].

/// mimalloc, not the system allocator: measured faster per request (docs/benchmarks.md,
/// "The WASM hot path").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = reactor_worker_wasm::server::Args::parse();
    reactor_worker_wasm::server::run(args).await
}
