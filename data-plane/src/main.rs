//! `reactor-data-plane`: see [`reactor_data_plane::server`].

/// mimalloc: fewer cycles per allocation than the system allocator on the invoke path
/// (docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = reactor_data_plane::server::Args::parse();
    reactor_data_plane::server::run(args).await
}
