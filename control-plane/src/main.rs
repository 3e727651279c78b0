//! `reactor-control-plane`: see [`reactor_control_plane::server`].

/// mimalloc, not the system allocator: measured faster per request (docs/benchmarks.md,
/// "The WASM hot path").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = reactor_control_plane::server::Args::parse();
    reactor_control_plane::server::run(args).await
}
