//! `reactor-data-plane`: see [`reactor_data_plane::server`].

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = reactor_data_plane::server::Args::parse();
    reactor_data_plane::server::run(args).await
}
