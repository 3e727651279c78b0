//! `reactor-worker-wasm`: see [`reactor_worker_wasm::server`].

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = reactor_worker_wasm::server::Args::parse();
    reactor_worker_wasm::server::run(args).await
}
