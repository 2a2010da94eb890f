//! Palisade control plane: the gRPC services operators and agents talk to, backed by
//! PostgreSQL. `main.rs` is a thin wrapper around [`run`]; tests call [`serve`] with their
//! own database and a listener on port 0.

pub mod api;
pub mod auth;
pub mod bundler;
pub mod embedded;
pub mod error;
pub mod hub;
pub mod metrics;
pub mod pki;
pub mod ratelimit;
pub mod signing;
pub mod store;
pub mod tls;

use std::{net::SocketAddr, time::Duration};

use palisade_proto::{
    FILE_DESCRIPTOR_SET,
    v1::{
        agent_service_server::AgentServiceServer, capture_service_server::CaptureServiceServer,
        event_service_server::EventServiceServer, explain_service_server::ExplainServiceServer,
        flow_service_server::FlowServiceServer, node_service_server::NodeServiceServer,
        policy_service_server::PolicyServiceServer, rollout_service_server::RolloutServiceServer,
        token_service_server::TokenServiceServer,
    },
};
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use palisade_compiler::validate;
pub use store::MIGRATOR;

use crate::{
    api::{
        agent::AgentApi, capture::CaptureApi, event::EventApi, explain::ExplainApi, flow::FlowApi, node::NodeApi,
        policy::PolicyApi, rollout::RolloutApi, token::TokenApi,
    },
    hub::EventHub,
    store::Store,
};

/// Largest gRPC message the server decodes. Above the 8 MiB document limit, so oversized
/// documents get a field violation rather than a transport error.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// How long shutdown waits for stream tasks to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Largest message `AgentService` decodes: a `ReportEvents` message of 10,000 events with
/// every field at its bound is about 7.1 MB (the agent sends 1,000 per message).
pub const MAX_AGENT_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// Transport bounds: what one client connection may hold open and buffer.
#[derive(Clone, Copy, Debug)]
pub struct Transport {
    /// Longest a call may take until the server answers it: unary calls, a client stream
    /// (`ReportEvents`: the agent opens one per batch), and a `Sync` stream until its hello.
    /// Server streams run on after their first answer. Clients may ask for less with
    /// `grpc-timeout`.
    pub request_timeout: Duration,
    /// Most concurrent streams (calls) on one HTTP/2 connection.
    pub max_streams_per_connection: u32,
}

impl Transport {
    /// 60 s per call, 64 streams per connection.
    pub const DEFAULT: Self = Self { request_timeout: Duration::from_mins(1), max_streams_per_connection: 64 };
}

/// HTTP/2 flow-control windows: what a client may send on one stream, and on one
/// connection, before the server has read it.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;
/// Largest header block (metadata, tokens) a request may carry.
const MAX_HEADER_LIST: u32 = 16 << 10;
/// HTTP/2 pings on idle connections, and how long an answer may take before the connection
/// is dropped: a peer that vanished without closing frees its streams within half a minute.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Server configuration (flags with environment fallbacks).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "palisade-server", version, about = "Palisade control plane: policies, nodes and events over gRPC")]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "PALISADE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// PostgreSQL connection URL, e.g. `postgres://postgres@127.0.0.1:5432/palisade`.
    /// Required to serve (optional only so that the `pki` tools run without one).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Maximum PostgreSQL connections.
    #[arg(long, env = "PALISADE_DB_CONNECTIONS", default_value_t = 16)]
    pub db_connections: u32,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "PALISADE_LOG_JSON")]
    pub log_json: bool,
    /// File holding the ed25519 seed bundles are signed with (hex); created, with a `.pub`
    /// file holding the public key agents pin, if missing. Required unless `--dev`, where a
    /// random key is used and its public half logged (agents must be given it again after
    /// every restart).
    #[arg(long, env = "PALISADE_BUNDLE_SIGNING_KEY")]
    pub bundle_signing_key: Option<std::path::PathBuf>,
    /// Most entries one map of a compiled bundle may have; policies that would exceed it on
    /// any node are rejected at apply time.
    #[arg(long, env = "PALISADE_MAX_MAP_ENTRIES", default_value_t = palisade_compiler::limits::Limits::DEFAULT.max_map_entries)]
    pub max_map_entries: u32,
    /// Most kernel memory (bytes, estimated) one map of a compiled bundle may take; policies
    /// that would exceed it on any node are rejected at apply time.
    #[arg(long, env = "PALISADE_MAX_MAP_BYTES", default_value_t = palisade_compiler::limits::Limits::DEFAULT.max_map_bytes)]
    pub max_map_bytes: u64,
    /// PEM certificate chain the server presents (TLS); needs `--tls-key` and `--client-ca`.
    #[arg(long, env = "PALISADE_TLS_CERT", requires_all = ["tls_key", "client_ca"])]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "PALISADE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// PEM CA certificate that signs node (agent) certificates. `AgentService` calls must
    /// present one; its common name is the node's identity.
    #[arg(long, env = "PALISADE_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<std::path::PathBuf>,
    /// Events per second one node may report (sustained); beyond it events are refused and
    /// counted on the node (`events_rate_limited`). 0: no limit.
    #[arg(long, env = "PALISADE_EVENT_RATE", default_value_t = ratelimit::EventRate::DEFAULT.per_second)]
    pub event_rate: u32,
    /// Events one node may report at once after a quiet spell (an agent's backlog after an
    /// outage).
    #[arg(long, env = "PALISADE_EVENT_BURST", default_value_t = ratelimit::EventRate::DEFAULT.burst)]
    pub event_burst: u32,
    /// How long decision events are kept: `30d`, `12h`, `90m`, or `forever`. Events live in
    /// daily partitions, dropped whole once their day is older than this (so they are kept up
    /// to a day longer).
    #[arg(long, env = "PALISADE_EVENT_RETENTION", default_value = "30d", value_parser = parse_retention)]
    pub event_retention: Retention,
    /// Flow aggregates per second one node may report (sustained); beyond it they are
    /// refused, counted on the node (`flows_rate_limited`) and sent again by the agent
    /// later. 0: no limit.
    #[arg(long, env = "PALISADE_FLOW_RATE", default_value_t = ratelimit::EventRate::FLOWS.per_second)]
    pub flow_rate: u32,
    /// Flow aggregates one node may report at once after a quiet spell.
    #[arg(long, env = "PALISADE_FLOW_BURST", default_value_t = ratelimit::EventRate::FLOWS.burst)]
    pub flow_burst: u32,
    /// How long flow aggregates are kept, like `--event-retention` (daily partitions of the
    /// window's start, dropped whole).
    #[arg(long, env = "PALISADE_FLOW_RETENTION", default_value = "7d", value_parser = parse_retention)]
    pub flow_retention: Retention,
    /// Development mode, loopback only: plaintext, no client certificates, no node identity.
    #[arg(long, env = "PALISADE_DEV", conflicts_with = "tls_cert")]
    pub dev: bool,
    /// Serve Prometheus metrics over plain HTTP at `/metrics` on this address (off when not
    /// given).
    #[arg(long, env = "PALISADE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Bytes of captured packets the server stores over every capture; a capture that would
    /// exceed it expires the oldest finished captures first, and stops ("quota") if that is
    /// not enough.
    #[arg(long, env = "PALISADE_CAPTURE_QUOTA", default_value_t = api::capture::DEFAULT_QUOTA)]
    pub capture_quota: u64,
}

impl Config {
    /// The TLS files, or `None` in `--dev`; refuses what DESIGN.md §7 refuses: plaintext
    /// without `--dev`, and `--dev` on a non-loopback address.
    pub fn tls(&self) -> Result<Option<tls::TlsFiles>, ServeError> {
        match (&self.tls_cert, &self.tls_key, &self.client_ca) {
            (Some(cert), Some(key), Some(client_ca)) => {
                Ok(Some(tls::TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: client_ca.clone() }))
            }
            _ if !self.dev => Err(ServeError::Insecure(
                "give --tls-cert, --tls-key and --client-ca (`palisade-server pki init DIR` makes a development \
                 set), or --dev for plaintext on loopback"
                    .into(),
            )),
            _ if !self.listen.ip().is_loopback() => Err(ServeError::Insecure(format!(
                "--dev serves plaintext without authentication and only on loopback, not on {}",
                self.listen
            ))),
            _ => Ok(None),
        }
    }

    /// The server options these flags ask for, with the key and TLS files already checked.
    pub fn options(&self, signer: signing::BundleSigner, tls: Option<tls::TlsFiles>) -> Options {
        Options {
            limits: palisade_compiler::limits::Limits {
                max_map_entries: self.max_map_entries,
                max_map_bytes: self.max_map_bytes,
                ..palisade_compiler::limits::Limits::DEFAULT
            },
            signer,
            bundle_mutator: None,
            tls,
            shutdown_grace: SHUTDOWN_GRACE,
            event_rate: ratelimit::EventRate { per_second: self.event_rate, burst: self.event_burst },
            transport: Transport::DEFAULT,
            event_retention: self.event_retention,
            flow_rate: ratelimit::EventRate { per_second: self.flow_rate, burst: self.flow_burst },
            flow_retention: self.flow_retention,
            metrics_listener: None,
            capture_quota: self.capture_quota,
        }
    }

    /// The bundle signing key: `--bundle-signing-key`, or a random one in `--dev`. Without
    /// `--dev` a server must keep its key across restarts, or every agent pinning it would
    /// refuse the next bundle.
    pub fn signer(&self) -> Result<signing::BundleSigner, ServeError> {
        match &self.bundle_signing_key {
            Some(path) => signing::BundleSigner::load_or_create(path).map_err(ServeError::Signing),
            None if self.dev => {
                let signer = signing::BundleSigner::generate();
                tracing::warn!(
                    public_key = signer.public_key_hex(),
                    "--dev without --bundle-signing-key: using a random key for this run"
                );
                Ok(signer)
            }
            None => Err(ServeError::Insecure(
                "give --bundle-signing-key FILE (created on first start, with FILE.pub for agents), or --dev".into(),
            )),
        }
    }
}

/// How long events are kept; `None` keeps them for ever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention(pub Option<Duration>);

/// Parses `--event-retention`: a whole number with unit `m`, `h` or `d` (at least one
/// hour), or `forever`.
pub fn parse_retention(text: &str) -> Result<Retention, String> {
    if text == "forever" {
        return Ok(Retention(None));
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{text:?}: expected a number and a unit, like 30d"))?;
    let seconds = match unit {
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be m, h or d (or say forever)")),
    };
    let retention = number.checked_mul(seconds).ok_or_else(|| format!("{text:?} is too long"))?;
    if retention < 3600 {
        return Err(format!("{text:?}: events are kept at least an hour"));
    }
    Ok(Retention(Some(Duration::from_secs(retention))))
}

/// How often the server creates event and flow partitions ahead and drops expired ones.
const EVENT_MAINTENANCE_INTERVAL: Duration = Duration::from_hours(1);

/// Keeps event and flow partitions ahead of time and drops expired ones: now, then every
/// [`EVENT_MAINTENANCE_INTERVAL`], until shutdown.
async fn maintain_events(store: Store, events: Retention, flows: Retention, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(EVENT_MAINTENANCE_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (table, result) in [
            ("event", store.maintain_event_partitions(events.0).await),
            ("flow", store.maintain_flow_partitions(flows.0).await),
        ] {
            match result {
                Ok((0, 0)) => {}
                Ok((created, dropped)) => tracing::info!(table, created, dropped, "partitions maintained"),
                Err(error) => tracing::warn!(table, %error, "cannot maintain partitions; will retry"),
            }
        }
    }
}

/// How often the server gives up on capture nodes that stopped reporting.
const CAPTURE_EXPIRY_INTERVAL: Duration = Duration::from_secs(5);

/// Finishes captures past their deadline whose nodes never reported their end, until
/// shutdown.
async fn expire_captures(store: Store, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(CAPTURE_EXPIRY_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.expire_captures().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(captures = n, "captures past their deadline finished"),
            Err(error) => tracing::warn!(%error, "cannot expire captures; will retry"),
        }
    }
}

/// The periodic upkeep: event and flow partitions, overdue captures.
async fn maintain(store: Store, events: Retention, flows: Retention, shutdown: CancellationToken) {
    tokio::join!(maintain_events(store.clone(), events, flows, shutdown.clone()), expire_captures(store, shutdown));
}

/// `palisade-server`: serve (the default), or a tool.
#[derive(Debug, clap::Parser)]
#[command(
    name = "palisade-server",
    version,
    about = "Palisade control plane: policies, nodes and events over gRPC",
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// A tool to run instead of serving.
    #[command(subcommand)]
    pub command: Option<Tool>,
    /// Serving flags.
    #[command(flatten)]
    pub serve: Config,
}

/// Tools of `palisade-server`.
#[derive(Debug, clap::Subcommand)]
pub enum Tool {
    /// A development PKI: CA, server and node certificates (PEM).
    #[command(subcommand)]
    Pki(PkiTool),
    /// Admin API tokens.
    #[command(subcommand)]
    Token(TokenTool),
}

/// `palisade-server token ...`.
#[derive(Debug, clap::Subcommand)]
pub enum TokenTool {
    /// Creates a token and prints its secret once, alone on the last line of stdout.
    Create {
        /// viewer (read), editor (+ apply, delete) or admin (+ tokens).
        #[arg(long, value_parser = ["viewer", "editor", "admin"])]
        role: String,
        /// Unique name: the audit log's actor for calls made with the token.
        #[arg(long)]
        name: String,
        /// The token may also start and download packet captures (admin tokens always may).
        #[arg(long)]
        capture: bool,
        /// PostgreSQL connection URL.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
}

/// Creates token `name` with `role` in the database at `database_url` (migrating it first)
/// and returns its secret, which is stored only as a hash.
pub async fn create_token(database_url: &str, name: &str, role: auth::Role) -> Result<String, ServeError> {
    create_token_capturing(database_url, name, role, false).await
}

/// [`create_token`], saying whether the token may capture packets.
pub async fn create_token_capturing(
    database_url: &str,
    name: &str,
    role: auth::Role,
    capture: bool,
) -> Result<String, ServeError> {
    validate::node_name("--name", name).map_err(|v| {
        ServeError::Invalid(v.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; "))
    })?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(database_url)
        .await
        .map_err(ServeError::Connect)?;
    MIGRATOR.run(&pool).await.map_err(ServeError::Migrate)?;
    let secret = auth::new_secret();
    Store::new(pool)
        .create_token_capturing(name, role, capture, &auth::secret_hash(&secret))
        .await
        .map_err(|e| ServeError::Invalid(e.to_string()))?;
    Ok(secret)
}

/// `palisade-server pki ...`.
#[derive(Debug, clap::Subcommand)]
pub enum PkiTool {
    /// Creates ca.crt, ca.key, server.crt and server.key in DIR. The server certificate names
    /// `localhost`, `127.0.0.1`, `::1`, the host name and every --san.
    Init {
        /// Directory (created if missing).
        dir: std::path::PathBuf,
        /// Another DNS name or IP address for the server certificate (repeatable).
        #[arg(long)]
        san: Vec<String>,
    },
    /// Creates NAME.crt and NAME.key in DIR: node NAME's agent certificate, signed by DIR's CA.
    IssueNode {
        /// Node name (the agent's --node-name).
        name: String,
        /// Directory holding ca.crt and ca.key.
        dir: std::path::PathBuf,
    },
}

/// Failures that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The database could not be reached.
    #[error("cannot connect to PostgreSQL")]
    Connect(#[source] sqlx::Error),
    /// Migrations failed.
    #[error("database migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The event hub could not start.
    #[error("cannot start the event hub")]
    Hub(#[source] error::ApiError),
    /// Reflection could not be built from the descriptor set.
    #[error("cannot build gRPC reflection")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("gRPC transport failed")]
    Transport(#[source] tonic::transport::Error),
    /// The bundle signing key cannot be used.
    #[error("bundle signing key")]
    Signing(#[source] signing::SigningError),
    /// A tool's input is invalid.
    #[error("{0}")]
    Invalid(String),
    /// No `--database-url` / `DATABASE_URL`.
    #[error("--database-url (or DATABASE_URL) is required to serve")]
    NoDatabase,
    /// The transport security asked for is missing or refused.
    #[error("{0}")]
    Insecure(String),
    /// A TLS file cannot be read.
    #[error("TLS file")]
    TlsFile(#[source] tls::TlsFileError),
    /// The metrics endpoint cannot be served.
    #[error("metrics endpoint")]
    Metrics(#[source] std::io::Error),
}

/// Connects to the database, migrates it, binds `config.listen` and serves until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServeError> {
    let tls = config.tls()?;
    let signer = config.signer()?;
    if tls.is_none() {
        tracing::warn!(
            listen = %config.listen,
            "--dev: plaintext gRPC, no client certificates, no node identity checks; never use this outside development"
        );
    }
    let pool = PgPoolOptions::new()
        .max_connections(config.db_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(config.database_url.as_deref().ok_or(ServeError::NoDatabase)?)
        .await
        .map_err(ServeError::Connect)?;
    MIGRATOR.run(&pool).await.map_err(ServeError::Migrate)?;
    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    tracing::info!(public_key = signer.public_key_hex(), "bundles are signed; agents pin this key");
    let mut options = config.options(signer, tls);
    if let Some(addr) = config.metrics_listen {
        options.metrics_listener = Some(MetricsListener::bind(addr).map_err(ServeError::Metrics)?);
    }
    serve_with(pool, listener, shutdown, options).await
}

/// Serves every service on `listener` from a migrated `pool` until `shutdown` is cancelled:
/// health turns NOT_SERVING first, then in-flight calls and stream tasks drain.
pub async fn serve(pool: PgPool, listener: TcpListener, shutdown: CancellationToken) -> Result<(), ServeError> {
    serve_with(pool, listener, shutdown, Options::default()).await
}

/// Server options beyond the listener and database.
#[derive(Clone)]
pub struct Options {
    /// Test seam: changes every compiled bundle before it is stored and pushed (to hand an
    /// agent a bundle its kernel rejects). Never set by `palisade-server`.
    pub bundle_mutator: Option<bundler::BundleMutator>,
    /// Capacity limits for compiled bundles.
    pub limits: palisade_compiler::limits::Limits,
    /// The key bundles are signed with.
    pub signer: signing::BundleSigner,
    /// TLS with node certificates; `None` serves plaintext (`--dev`).
    pub tls: Option<tls::TlsFiles>,
    /// How long shutdown waits for open calls and stream tasks before closing them.
    pub shutdown_grace: Duration,
    /// How fast each node may report events.
    pub event_rate: ratelimit::EventRate,
    /// Per-call and per-connection bounds.
    pub transport: Transport,
    /// How long events are kept.
    pub event_retention: Retention,
    /// How fast each node may report flow aggregates.
    pub flow_rate: ratelimit::EventRate,
    /// How long flow aggregates are kept.
    pub flow_retention: Retention,
    /// Where `/metrics` is served (`--metrics-listen`); `None`: not served.
    pub metrics_listener: Option<MetricsListener>,
    /// Bytes of captured packets stored over every capture (`--capture-quota`).
    pub capture_quota: u64,
}

/// A bound listener for the metrics endpoint, shareable so [`Options`] stays `Clone` (tests
/// bind port 0 and read the address before the server starts).
#[derive(Clone, Debug)]
pub struct MetricsListener(std::sync::Arc<std::net::TcpListener>);

impl MetricsListener {
    /// Binds `addr` now.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| std::io::Error::new(e.kind(), format!("--metrics-listen {addr}: {e}")))?;
        listener.set_nonblocking(true)?;
        Ok(Self(std::sync::Arc::new(listener)))
    }

    /// The bound address.
    ///
    /// # Errors
    /// The socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn tokio(&self) -> std::io::Result<TcpListener> {
        TcpListener::from_std(self.0.try_clone()?)
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            bundle_mutator: None,
            limits: palisade_compiler::limits::Limits::DEFAULT,
            signer: signing::BundleSigner::generate(),
            tls: None,
            shutdown_grace: SHUTDOWN_GRACE,
            event_rate: ratelimit::EventRate::DEFAULT,
            transport: Transport::DEFAULT,
            event_retention: Retention(Some(Duration::from_hours(30 * 24))),
            flow_rate: ratelimit::EventRate::FLOWS,
            flow_retention: Retention(Some(Duration::from_hours(7 * 24))),
            metrics_listener: None,
            capture_quota: api::capture::DEFAULT_QUOTA,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("bundle_mutator", &self.bundle_mutator.is_some())
            .field("limits", &self.limits)
            .field("signer", &self.signer)
            .field("tls", &self.tls)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("event_rate", &self.event_rate)
            .field("transport", &self.transport)
            .field("event_retention", &self.event_retention)
            .field("flow_rate", &self.flow_rate)
            .field("flow_retention", &self.flow_retention)
            .field("metrics_listener", &self.metrics_listener)
            .field("capture_quota", &self.capture_quota)
            .finish()
    }
}

/// How often the server checks that PostgreSQL answers (health follows it).
pub const DATABASE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Sets the server as a whole (`""`) and every Palisade service to SERVING or NOT_SERVING.
async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    use tonic::server::NamedService as _;
    let status = if serving { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
    for service in [
        "",
        PolicyServiceServer::<PolicyApi>::NAME,
        AgentServiceServer::<AgentApi>::NAME,
        NodeServiceServer::<NodeApi>::NAME,
        ExplainServiceServer::<ExplainApi>::NAME,
        RolloutServiceServer::<RolloutApi>::NAME,
        EventServiceServer::<EventApi>::NAME,
        FlowServiceServer::<FlowApi>::NAME,
        TokenServiceServer::<TokenApi>::NAME,
        CaptureServiceServer::<CaptureApi>::NAME,
    ] {
        health.set_service_status(service, status).await;
    }
}

/// Turns health NOT_SERVING while PostgreSQL does not answer `SELECT 1` within 2 s, and
/// SERVING again once it does (until shutdown, which owns health from then on).
async fn watch_database(store: Store, health: tonic_health::server::HealthReporter, shutdown: CancellationToken) {
    let mut up = true;
    let mut tick = tokio::time::interval(DATABASE_CHECK_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let answered = tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(store.pool()))
            .await
            .is_ok_and(|r| r.is_ok());
        if answered != up && !shutdown.is_cancelled() {
            up = answered;
            if up {
                tracing::info!("PostgreSQL answers again: health SERVING");
            } else {
                tracing::warn!("PostgreSQL does not answer: health NOT_SERVING");
            }
            set_health(&health, up).await;
        }
    }
}

/// Serves `/metrics` on `listener` until `shutdown`.
fn serve_metrics(
    listener: &MetricsListener,
    metrics: &std::sync::Arc<metrics::ServerMetrics>,
    store: &Store,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), ServeError> {
    let listener = listener.tokio().map_err(ServeError::Metrics)?;
    let (scraped, store) = (metrics.clone(), store.clone());
    let refresh: palisade_metrics::Refresh = std::sync::Arc::new(move || {
        let (metrics, store) = (scraped.clone(), store.clone());
        Box::pin(async move { metrics.refresh(&store).await })
    });
    tracker.spawn(palisade_metrics::serve(listener, metrics.registry(), refresh, shutdown.clone()));
    Ok(())
}

/// [`serve`] with options.
pub async fn serve_with(
    pool: PgPool,
    listener: TcpListener,
    shutdown: CancellationToken,
    options: Options,
) -> Result<(), ServeError> {
    let tracker = TaskTracker::new();
    let store = Store::new(pool);
    let signer = options.signer.clone();
    let bundler = bundler::Bundler::new(store.clone(), options.bundle_mutator, options.limits, options.signer);
    let hub = EventHub::start(store.clone(), shutdown.clone(), &tracker).await.map_err(ServeError::Hub)?;
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, true).await;
    tracker.spawn(watch_database(store.clone(), health.clone(), shutdown.clone()));
    tracker.spawn(maintain(store.clone(), options.event_retention, options.flow_retention, shutdown.clone()));
    let metrics = metrics::ServerMetrics::new();
    if let Some(listener) = &options.metrics_listener {
        serve_metrics(listener, &metrics, &store, &tracker, &shutdown)?;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(ServeError::Reflection)?;
    let local = listener.local_addr().ok();
    let mut builder = tonic::transport::Server::builder()
        .timeout(options.transport.request_timeout)
        .max_concurrent_streams(options.transport.max_streams_per_connection)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_max_header_list_size(MAX_HEADER_LIST)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .tcp_keepalive(Some(Duration::from_mins(1)))
        .layer(metrics::GrpcMetricsLayer(metrics.clone()));
    if let Some(files) = &options.tls {
        let config = files.server_config().map_err(ServeError::TlsFile)?;
        builder = builder.tls_config(config).map_err(ServeError::Transport)?;
    }
    let require_identity = options.tls.is_some();
    // `--dev` turns tokens off together with TLS (DESIGN.md §7).
    let auth = if require_identity { auth::Auth::tokens(store.clone()) } else { auth::Auth::off() };
    tracing::info!(addr = ?local, tls = require_identity, "serving gRPC");
    let signal = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            tracing::info!("shutting down: health NOT_SERVING, draining");
            set_health(&health, false).await;
        }
    };
    let serve = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            PolicyServiceServer::new(PolicyApi::new(store.clone(), bundler.clone(), auth.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            AgentServiceServer::new(
                AgentApi::new(store.clone(), bundler, hub.generation(), shutdown.clone(), tracker.clone())
                    .requiring_identity(require_identity)
                    .limiting_events(ratelimit::EventLimiter::new(options.event_rate))
                    .with_flows(hub.clone(), ratelimit::EventLimiter::new(options.flow_rate))
                    .with_captures(hub.capture_orders(), options.capture_quota)
                    .with_metrics(metrics),
            )
            .max_decoding_message_size(MAX_AGENT_MESSAGE_BYTES),
        )
        .add_service(NodeServiceServer::new(NodeApi::new(store.clone(), auth.clone())))
        .add_service(ExplainServiceServer::new(ExplainApi::new(store.clone(), auth.clone())))
        .add_service(RolloutServiceServer::new(RolloutApi::new(store.clone(), auth.clone(), &signer, require_identity)))
        .add_service(TokenServiceServer::new(TokenApi::new(store.clone(), auth.clone())))
        .add_service(CaptureServiceServer::new(CaptureApi::new(
            store.clone(),
            auth.clone(),
            shutdown.clone(),
            options.capture_quota,
        )))
        .add_service(FlowServiceServer::new(FlowApi::new(store.clone(), hub.clone(), shutdown.clone(), auth.clone())))
        .add_service(EventServiceServer::new(EventApi::new(store, hub, shutdown.clone(), auth)))
        .serve_with_incoming_shutdown(incoming(listener), signal);
    // Graceful shutdown waits for every open call; a client that holds a call open and idle
    // (a ReportEvents stream that never sends) would keep the server alive for ever. After the
    // grace period the remaining connections are dropped.
    let grace = options.shutdown_grace;
    let deadline = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        }
    };
    let result = tokio::select! {
        result = serve => result.map_err(ServeError::Transport),
        () = deadline => {
            tracing::warn!(?grace, "calls still open after the grace period: closing their connections");
            Ok(())
        }
    };
    // The transport may also stop on its own (error): make sure stream tasks see it.
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("stream tasks did not finish within the grace period");
    }
    result
}

/// Accepted connections with Nagle's algorithm off: a pushed bundle or a unary answer is a
/// small write that must leave at once (measured: with Nagle on, every push waited ~40 ms
/// for the peer's delayed ACK).
fn incoming(listener: TcpListener) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted
            && let Err(error) = stream.set_nodelay(true)
        {
            tracing::debug!(%error, "cannot turn off Nagle's algorithm on a connection");
        }
        accepted
    })
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot install SIGTERM handler");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminate => {}
        }
        tracing::info!("signal received");
        token.cancel();
    });
}

/// Installs the tracing subscriber: `PALISADE_LOG` filter (default `info`), text or JSON.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
