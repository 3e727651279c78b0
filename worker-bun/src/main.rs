//! `reactor-worker-bun`: see [`reactor_worker_bun::server`].

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = reactor_worker_bun::server::Args::parse();
    reactor_worker_bun::server::run(args).await
}
