//! `palisade-agent`: parse flags, start logging, enforce until SIGINT/SIGTERM. Pinned
//! programs keep enforcing after the agent exits.

use clap::Parser as _;
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    // Before any thread exists, so that every thread allocates from the one arena.
    palisade_agent::sys::limit_allocator_arenas();
    // The agent's async work is a few streams; its kernel work has a thread of its own. Two
    // workers, whatever the node's core count (tokio's default is one per core).
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let config = palisade_agent::Config::parse();
    palisade_agent::init_logging(config.log_json);
    if config.uninstall {
        palisade_agent::uninstall(&config)?;
        return Ok(());
    }
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(%error, "cannot install SIGTERM handler");
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        signal.cancel();
    });
    let agent = palisade_agent::Agent::start(config, shutdown).await?;
    agent.wait().await;
    Ok(())
}
