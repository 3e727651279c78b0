//! `reactor-data-plane`: see [`reactor_data_plane::server`].

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    reactor_service::init_tracing();
    reactor_data_plane::server::run(reactor_data_plane::server::Args::parse()).await
}
