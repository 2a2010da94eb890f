//! `palisade-server`: parse flags, start logging, serve until SIGINT/SIGTERM.

use clap::Parser as _;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = palisade_server::Config::parse();
    palisade_server::init_logging(config.log_json);
    let shutdown = CancellationToken::new();
    palisade_server::cancel_on_signals(shutdown.clone());
    palisade_server::run(config, shutdown).await?;
    Ok(())
}
