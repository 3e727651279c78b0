//! `reactor-control-plane`: see [`reactor_control_plane::server`].

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = reactor_control_plane::server::Args::parse();
    reactor_control_plane::server::run(args).await
}
