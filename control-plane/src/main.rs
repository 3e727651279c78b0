//! `reactor-control-plane`: see [`reactor_control_plane::server`].

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    reactor_service::init_tracing();
    reactor_control_plane::server::run(reactor_control_plane::server::Args::parse()).await
}
