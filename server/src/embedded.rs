//! Running a server inside another process: tests, the CLI's tests and tools start the
//! real server on `127.0.0.1:0` with a database they own.
//!
//! By default the server is what production runs: TLS from a development PKI of its own,
//! node certificates required on `AgentService`, admin tokens required elsewhere. The
//! server hands out what clients need: [`EmbeddedServer::admin`] (TLS and an admin token),
//! [`EmbeddedServer::node`] (TLS with node NAME's certificate) and
//! [`EmbeddedServer::node_tls`] (the files, for an agent). [`EmbeddedServer::start_dev`]
//! serves plaintext (`--dev`) for the few tests about that mode.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use palisade_proto::client::{self, Connection};
use sqlx::PgPool;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::{ServeError, auth, pki, store::Store, tls::TlsFiles};

/// The development PKI and admin token of a secure embedded server; kept to restart a
/// server its agents and clients already trust ([`EmbeddedServer::restart_on`]).
#[derive(Clone, Debug)]
pub struct Secured {
    dir: Arc<tempfile::TempDir>,
    admin_token: String,
    admin_name: String,
}

impl Secured {
    /// A fresh PKI and an admin token stored in `pool`'s database.
    ///
    /// # Errors
    /// When the PKI cannot be written or the token stored.
    pub async fn create(pool: &PgPool) -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        pki::init(dir.path(), &[]).map_err(std::io::Error::other)?;
        let admin_token = auth::new_secret();
        let name = format!("embedded-admin-{:016x}", rand::random::<u64>());
        Store::new(pool.clone())
            .create_token(&name, auth::Role::Admin, &auth::secret_hash(&admin_token))
            .await
            .map_err(std::io::Error::other)?;
        Ok(Self { dir: Arc::new(dir), admin_token, admin_name: name })
    }

    fn tls(&self) -> TlsFiles {
        TlsFiles {
            cert: self.dir.path().join("server.crt"),
            key: self.dir.path().join("server.key"),
            client_ca: self.dir.path().join("ca.crt"),
        }
    }
}

/// The files an agent of node NAME needs to reach a secure embedded server.
#[derive(Clone, Debug)]
pub struct NodeTls {
    /// The CA the server's certificate chains to (`--ca-cert`).
    pub ca_cert: PathBuf,
    /// The node's certificate (`--cert`).
    pub cert: PathBuf,
    /// Its key (`--key`).
    pub key: PathBuf,
}

/// A server running on a background task; dropping it shuts the server down.
#[derive(Debug)]
pub struct EmbeddedServer {
    addr: SocketAddr,
    public_key: String,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), ServeError>>>,
    tls: bool,
    secured: Option<Secured>,
}

impl EmbeddedServer {
    /// Serves a migrated `pool` on an ephemeral loopback port, with TLS and tokens.
    pub async fn start(pool: PgPool) -> std::io::Result<Self> {
        Self::start_with(pool, crate::Options::default()).await
    }

    /// [`Self::start`] with options. Unless `options.tls` is given, the server makes a PKI
    /// and an admin token of its own.
    pub async fn start_with(pool: PgPool, options: crate::Options) -> std::io::Result<Self> {
        Self::start_on(pool, loopback(), options).await
    }

    /// Serves on a given address (e.g. to restart a server where its agents expect it).
    pub async fn start_on(pool: PgPool, addr: SocketAddr, options: crate::Options) -> std::io::Result<Self> {
        let secured = if options.tls.is_some() { None } else { Some(Secured::create(&pool).await?) };
        Self::launch(pool, addr, options, secured).await
    }

    /// Restarts on `addr` with the PKI and token of an earlier server (from
    /// [`Self::secured`]), so its agents and clients trust this one.
    pub async fn restart_on(
        pool: PgPool,
        addr: SocketAddr,
        options: crate::Options,
        secured: Option<Secured>,
    ) -> std::io::Result<Self> {
        Self::launch(pool, addr, options, secured).await
    }

    /// Serves plaintext without node identities or tokens, as `--dev` does.
    pub async fn start_dev(pool: PgPool, options: crate::Options) -> std::io::Result<Self> {
        Self::launch(pool, loopback(), crate::Options { tls: None, ..options }, None).await
    }

    async fn launch(
        pool: PgPool,
        addr: SocketAddr,
        mut options: crate::Options,
        secured: Option<Secured>,
    ) -> std::io::Result<Self> {
        if let Some(s) = &secured {
            options.tls = Some(s.tls());
        }
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let public_key = options.signer.public_key_hex();
        let tls = options.tls.is_some();
        let task = tokio::spawn(crate::serve_with(pool, listener, shutdown.clone(), options));
        Ok(Self { addr, public_key, shutdown, task: Some(task), tls, secured })
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

    /// The PKI and admin token this server made, if it made them.
    pub fn secured(&self) -> Option<Secured> {
        self.secured.clone()
    }

    /// The CA clients must trust (`--ca-cert`), when the server made its PKI.
    pub fn ca_cert(&self) -> Option<PathBuf> {
        self.secured.as_ref().map(|s| s.dir.path().join("ca.crt"))
    }

    /// The admin token's secret (`--token`), when the server made it.
    pub fn admin_token(&self) -> Option<&str> {
        self.secured.as_ref().map(|s| s.admin_token.as_str())
    }

    /// The admin token's name (the audit log's actor for its calls), when the server made it.
    pub fn admin_name(&self) -> Option<&str> {
        self.secured.as_ref().map(|s| s.admin_name.as_str())
    }

    /// The PKI directory, when the server made it.
    pub fn pki_dir(&self) -> Option<&Path> {
        self.secured.as_ref().map(|s| s.dir.path())
    }

    /// An admin client's connection: TLS and the admin token (plaintext, no token, in dev).
    ///
    /// # Panics
    /// When the server cannot be reached (these helpers serve tests).
    pub async fn admin(&self) -> Connection {
        let ca = self.ca_cert().map(|p| std::fs::read(p).expect("the server's CA certificate"));
        let channel = client::channel(&self.url(), ca.as_deref(), None).await.expect("connect to the embedded server");
        client::with_token(channel, self.admin_token()).expect("token")
    }

    /// The files node `name`'s agent needs (its certificate is issued on first use).
    ///
    /// # Panics
    /// When the certificate cannot be issued.
    pub fn node_tls(&self, name: &str) -> Option<NodeTls> {
        // One issuer at a time: a second caller must not see a certificate without its key.
        static ISSUING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let dir = self.pki_dir()?;
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        let _issuing = ISSUING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !cert.exists() {
            pki::issue_node(name, dir).expect("issue the node certificate");
        }
        Some(NodeTls { ca_cert: dir.join("ca.crt"), cert, key })
    }

    /// A channel presenting node `name`'s certificate (plaintext in dev), for `AgentService`.
    ///
    /// # Panics
    /// When the server cannot be reached.
    pub async fn node(&self, name: &str) -> Channel {
        let files = self.node_tls(name);
        let read = |p: &Path| std::fs::read(p).expect("PKI file");
        let pems = files.as_ref().map(|f| (read(&f.ca_cert), read(&f.cert), read(&f.key)));
        let identity = pems.as_ref().map(|(_, cert, key)| (cert.as_slice(), key.as_slice()));
        client::channel(&self.url(), pems.as_ref().map(|(ca, _, _)| ca.as_slice()), identity)
            .await
            .expect("connect to the embedded server as a node")
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

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
