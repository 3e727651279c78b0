//! `reactor-worker-bun`: see [`reactor_worker_bun::server`].

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    reactor_service::init_tracing();
    reactor_worker_bun::server::run(reactor_worker_bun::server::Args::parse()).await
}
