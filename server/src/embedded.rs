//! Running a server inside another process: tests, the CLI's tests and tools start the
//! real server on `127.0.0.1:0` with a database they own.

use std::net::SocketAddr;

use sqlx::PgPool;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::ServeError;

/// A server running on a background task; dropping it shuts the server down.
#[derive(Debug)]
pub struct EmbeddedServer {
    addr: SocketAddr,
    public_key: String,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), ServeError>>>,
    tls: bool,
}

impl EmbeddedServer {
    /// Serves a migrated `pool` on an ephemeral loopback port.
    pub async fn start(pool: PgPool) -> std::io::Result<Self> {
        Self::start_with(pool, crate::Options::default()).await
    }

    /// [`Self::start`] with options.
    pub async fn start_with(pool: PgPool, options: crate::Options) -> std::io::Result<Self> {
        Self::start_on(pool, "127.0.0.1:0".parse().map_err(std::io::Error::other)?, options).await
    }

    /// Serves on a given address (e.g. to restart a server where its agents expect it).
    pub async fn start_on(pool: PgPool, addr: SocketAddr, options: crate::Options) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let public_key = options.signer.public_key_hex();
        let tls = options.tls.is_some();
        let task = tokio::spawn(crate::serve_with(pool, listener, shutdown.clone(), options));
        Ok(Self { addr, public_key, shutdown, task: Some(task), tls })
    }

    /// The public key agents of this server must pin (hex).
    pub fn public_key_hex(&self) -> &str {
        &self.public_key
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL clients connect to: `https://ADDR` with TLS, `http://ADDR` without.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// Shuts down gracefully and returns how serving ended.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
