//! `reactor-control-plane`: see [`reactor_control_plane::server`].

/// mimalloc: fewer cycles per allocation than the system allocator on the invoke path
/// (docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = reactor_control_plane::server::Args::parse();
    reactor_control_plane::server::run(args).await
}
