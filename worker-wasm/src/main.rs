//! `reactor-worker-wasm`: see [`reactor_worker_wasm::server`].

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    reactor_service::init_tracing();
    reactor_worker_wasm::server::run(reactor_worker_wasm::server::Args::parse()).await
}
