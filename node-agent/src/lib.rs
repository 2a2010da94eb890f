//! Palisade node agent: holds the `Sync` stream to the server, loads the node's bundle into
//! the kernel with no enforcement gap, keeps the cgroup selectors current and streams
//! decision events back. `main.rs` wraps [`run`]; tests run [`Agent`] in-process.

pub mod backlog;
pub mod btf;
pub mod capture;
pub mod cgroups;
pub mod events;
pub mod flows;
pub mod loader;
pub mod metrics;
pub mod probe;
pub mod stats;
pub mod sync;
pub mod sys;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use palisade_proto::v1;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::loader::{Datapath, Enforcement, LoadError, Paths};

/// Agent configuration (flags with environment fallbacks).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "palisade-agent", version, about = "Palisade node agent: enforces the node's policy bundle")]
pub struct Config {
    /// Server address: `https://HOST:PORT` (TLS, with `--ca-cert`, `--cert`, `--key`), or
    /// `http://HOST:PORT` / `HOST:PORT` for a `--dev` server. Several replicas: repeat the
    /// flag or separate them with commas; the agent holds one stream, to the first that
    /// answers, and fails over to the next when it is lost.
    #[arg(long, env = "PALISADE_SERVER", value_delimiter = ',', default_value = "http://127.0.0.1:50051")]
    pub server: Vec<String>,
    /// PEM CA certificate the server's certificate must chain to (`https://` servers).
    #[arg(long, env = "PALISADE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate naming this node (`palisade-server pki issue-node`).
    #[arg(long, env = "PALISADE_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of `--cert`.
    #[arg(long, env = "PALISADE_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Node name (default: the hostname).
    #[arg(long, env = "PALISADE_NODE_NAME")]
    pub node_name: Option<String>,
    /// Node labels, `KEY=VALUE,...`, matched by policies' node selectors.
    #[arg(long, env = "PALISADE_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// bpffs directory for pins (mounted if no bpffs is there).
    #[arg(long, env = "PALISADE_BPFFS", default_value = "/sys/fs/bpf/palisade")]
    pub bpffs: PathBuf,
    /// Directory for the agent's state.
    #[arg(long, env = "PALISADE_STATE_DIR", default_value = "/var/lib/palisade/agent")]
    pub state_dir: PathBuf,
    /// cgroup (path relative to the cgroup2 mount) to attach cgroup programs to; its whole
    /// subtree is covered. Policies still select workloads by their own cgroup.
    #[arg(long, env = "PALISADE_ATTACH_CGROUP", default_value = "/")]
    pub attach_cgroup: String,
    /// Destination ports never denied, whatever the policies say (failsafe).
    #[arg(long, env = "PALISADE_FAILSAFE_PORTS", value_delimiter = ',', default_value = "22")]
    pub failsafe_ports: Vec<u16>,
    /// Decision events kept in memory while the server is unreachable; beyond it the oldest
    /// are dropped and counted in the node's status.
    #[arg(long, env = "PALISADE_EVENT_BACKLOG", default_value_t = 100_000)]
    pub event_backlog: usize,
    /// Bytes those events may occupy (each event's struct and strings, as the allocator
    /// rounds them); beyond it the oldest are dropped and counted.
    #[arg(long, env = "PALISADE_EVENT_BACKLOG_BYTES", default_value_t = 64 << 20)]
    pub event_backlog_bytes: usize,
    /// Seconds between heartbeats on the Sync stream.
    #[arg(long, env = "PALISADE_HEARTBEAT_SECONDS", default_value_t = 30)]
    pub heartbeat_seconds: u64,
    /// Log as JSON lines.
    #[arg(long, env = "PALISADE_LOG_JSON")]
    pub log_json: bool,
    /// The server's bundle public key (64 hex characters, or a file holding them — the
    /// server writes one next to its `--bundle-signing-key`). Bundles whose signature does
    /// not verify are rejected (NACK) and never loaded.
    #[arg(long, env = "PALISADE_BUNDLE_PUBLIC_KEY")]
    pub bundle_public_key: Option<String>,
    /// Load bundles without verifying signatures (development only).
    #[arg(long, env = "PALISADE_INSECURE_SKIP_BUNDLE_SIGNATURE")]
    pub insecure_skip_bundle_signature: bool,
    /// Detach everything this agent attached (remove its pins under `--bpffs` and its state
    /// file) and exit, instead of running.
    #[arg(long)]
    pub uninstall: bool,
    /// Serve Prometheus metrics over plain HTTP at `/metrics` on this address (off when not
    /// given).
    #[arg(long, env = "PALISADE_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Seconds per flow aggregation window (`connections.observe`): closed connections are
    /// summed per key and window, and each window is reported when it ends.
    #[arg(long, env = "PALISADE_FLOW_WINDOW_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub flow_window_seconds: u64,
    /// Most keys one flow window holds; a closed connection with a new key beyond it is
    /// dropped and counted (`flows_dropped`).
    #[arg(long, env = "PALISADE_FLOW_MAX_KEYS", default_value_t = 10_000)]
    pub flow_max_keys: usize,
    /// Flow aggregates kept while the server is unreachable; beyond it the oldest are dropped
    /// and counted (`flows_backlog_full`).
    #[arg(long, env = "PALISADE_FLOW_BACKLOG", default_value_t = 100_000)]
    pub flow_backlog: usize,
    /// Per-connection flow records sent per second while a live watcher asks for them;
    /// beyond it they are counted (`flow_records_dropped`), not sent.
    #[arg(long, env = "PALISADE_FLOW_RECORD_RATE", default_value_t = 1_000)]
    pub flow_record_rate: u32,
}

impl Config {
    /// The node name (`--node-name`, else the host name in lower case) and labels.
    fn identity(&self) -> Result<(String, BTreeMap<String, String>), StartError> {
        let node_name = match &self.node_name {
            Some(n) => n.clone(),
            None => hostname::get()
                .map_err(|e| StartError::Config(format!("hostname: {e}")))?
                .to_string_lossy()
                .to_lowercase(),
        };
        let labels = self
            .labels
            .iter()
            .filter(|l| !l.is_empty())
            .map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect::<Option<_>>()
            .ok_or_else(|| StartError::Config("labels must be KEY=VALUE".into()))?;
        Ok((node_name, labels))
    }

    /// The server replicas and how to reach them; `https://` needs `--ca-cert`, `--cert` and
    /// `--key`. All replicas use the same scheme: they are one service.
    pub fn server(&self) -> Result<sync::Server, StartError> {
        let urls: Vec<String> =
            self.server.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).map(server_url).collect();
        if urls.is_empty() {
            return Err(StartError::Config("--server: no server address".into()));
        }
        let https = urls.iter().filter(|u| u.starts_with("https://")).count();
        if https != 0 && https != urls.len() {
            return Err(StartError::Config("--server: mix of https:// and http:// addresses".into()));
        }
        if https == 0 {
            return Ok(sync::Server { urls, tls: None });
        }
        let read = |flag: &str, path: &Option<PathBuf>| {
            let path = path.as_ref().ok_or_else(|| StartError::Config(format!("an https:// server needs {flag}")))?;
            std::fs::read(path).map_err(|e| StartError::Config(format!("{flag} {}: {e}", path.display())))
        };
        let ca = tonic::transport::Certificate::from_pem(read("--ca-cert", &self.ca_cert)?);
        let identity = tonic::transport::Identity::from_pem(read("--cert", &self.cert)?, read("--key", &self.key)?);
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(ca).identity(identity);
        Ok(sync::Server { urls, tls: Some(tls) })
    }

    /// Where the datapath keeps things, with the cgroup2 mount found on this node.
    pub fn paths(&self) -> Result<Paths, StartError> {
        let cgroup2 = probe::cgroup2_mount().ok_or(StartError::NoCgroup2)?;
        Ok(Paths {
            attach: cgroup2.join(self.attach_cgroup.trim_start_matches('/')),
            bpffs: self.bpffs.clone(),
            state_dir: self.state_dir.clone(),
            cgroup2,
        })
    }
}

/// Detaches every program of a previous agent by removing its pins and state. Enforcement
/// stops when the kernel releases the last link (asynchronously, within milliseconds).
pub fn uninstall(config: &Config) -> Result<(), StartError> {
    Datapath::new(config.paths()?)
        .remove_all()
        .map_err(|source| StartError::Bpffs { path: config.bpffs.clone(), source })?;
    tracing::info!(bpffs = %config.bpffs.display(), "removed pins and state; programs detached");
    Ok(())
}

/// Parses `--bundle-public-key`: hex, or a file holding hex.
pub fn public_key(value: &str) -> Result<ed25519_dalek::VerifyingKey, String> {
    let text = if palisade_proto::from_hex(value).is_some_and(|b| b.len() == 32) {
        value.to_owned()
    } else {
        std::fs::read_to_string(value).map_err(|e| format!("--bundle-public-key {value}: {e}"))?
    };
    let bytes: [u8; 32] = palisade_proto::from_hex(&text)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("--bundle-public-key: expected 64 hex characters, got {:?}", text.trim()))?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|e| format!("--bundle-public-key: {e}"))
}

/// Failures that stop the agent before it can run.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The node has no cgroup2 hierarchy.
    #[error("no cgroup2 mount found in /proc/self/mountinfo")]
    NoCgroup2,
    /// bpffs could not be mounted.
    #[error("cannot use bpffs at {path}")]
    Bpffs {
        /// Directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The datapath thread did not start.
    #[error("the datapath thread failed to start")]
    Datapath,
    /// The metrics endpoint cannot be bound.
    #[error("metrics endpoint")]
    Metrics(#[source] std::io::Error),
}

/// Probes the kernel on a blocking thread, then gives back what probing allocated (the
/// kernel's BTF, parsed: tens of MB for a moment).
async fn probe_kernel() -> Result<v1::KernelFeatures, StartError> {
    tokio::task::spawn_blocking(|| {
        let features = probe::probe();
        sys::release_freed_memory();
        features
    })
    .await
    .map_err(|_| StartError::Datapath)
}

/// How long the datapath thread lets records gather after the ring buffer woke it, given
/// that the previous drain read `records` that had gathered over `interval`. The kernel wakes
/// the reader for each record written while it is caught up: at 20,000 flow records a second
/// the agent spent a quarter of a core on wake-ups (12.7 µs a record, `agent-footprint`).
/// Waiting until about a quarter of the ring could have filled with the largest records
/// (path decisions) turns that into one wake-up per batch, from 1 ms at the rates where the
/// ring would overflow to 10 ms at low rates (so a flood starting from idle has 10 ms of ring:
/// ~190,000 flow records a second; beyond, records are lost and counted, `ring_full`).
#[allow(clippy::cast_precision_loss, reason = "record counts and sizes far below 2^52")]
fn coalesce(records: usize, interval: Duration) -> Duration {
    const MIN: Duration = Duration::from_millis(1);
    const MAX: Duration = Duration::from_millis(10);
    let budget = f64::from(palisade_contract::map::EVENTS_BYTES)
        / 4.0
        / (palisade_contract::record::PATH_RECORD_SIZE + 8) as f64;
    if records == 0 {
        return MAX;
    }
    let rate = records as f64 / interval.as_secs_f64().max(1e-6);
    Duration::from_secs_f64((budget / rate).min(MAX.as_secs_f64())).max(MIN)
}

/// Backstop rescan of selected cgroups (inotify normally reports changes at once).
const CGROUP_RESCAN: Duration = Duration::from_secs(5);

/// Commands for the datapath thread.
enum Command {
    Apply(v1::Bundle, oneshot::Sender<Result<(), LoadError>>),
}

/// Why a bundle handed to the datapath was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The datapath refused it; the previous bundle keeps enforcing.
    #[error(transparent)]
    Rejected(#[from] LoadError),
    /// The datapath thread has stopped.
    #[error("the datapath has stopped")]
    Stopped,
}

/// `error` and every source below it, joined by `: ` (what a NACK or a log line carries).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// What the datapath currently enforces (generation, digest).
pub type Enforcing = watch::Receiver<Option<(u64, String)>>;

/// A running agent.
pub struct Agent {
    tracker: TaskTracker,
    shutdown: CancellationToken,
    enforcing: Enforcing,
    stats: std::sync::Arc<stats::EventCounters>,
    metrics_addr: Option<std::net::SocketAddr>,
}

impl Agent {
    /// Starts the datapath, adopts pinned state, and starts syncing and reporting.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Self, StartError> {
        let (node_name, labels) = config.identity()?;
        let public_key = match (&config.bundle_public_key, config.insecure_skip_bundle_signature) {
            (Some(value), _) => Some(public_key(value).map_err(StartError::Config)?),
            (None, true) => {
                tracing::warn!("bundle signatures are NOT verified (--insecure-skip-bundle-signature)");
                None
            }
            (None, false) => {
                return Err(StartError::Config(
                    "set --bundle-public-key (the server's bundle public key), or --insecure-skip-bundle-signature"
                        .into(),
                ));
            }
        };
        let server = config.server()?;
        let features = probe_kernel().await?;
        tracing::info!(
            kernel = features.kernel_release,
            bpf_lsm = features.bpf_lsm,
            cgroup_sock_addr = features.cgroup_sock_addr,
            "kernel probed"
        );
        let paths = config.paths()?;
        let bpffs_root = paths.bpffs.parent().map_or_else(|| paths.bpffs.clone(), PathBuf::from);
        sys::ensure_bpffs(&bpffs_root).map_err(|source| StartError::Bpffs { path: bpffs_root.clone(), source })?;
        let (commands, command_rx) = std::sync::mpsc::channel();
        let (events_tx, events_rx) = mpsc::channel(16 * 1024);
        // Batches of closed connections, one per datapath wake-up.
        let (flows_tx, flows_rx) = mpsc::channel(256);
        let (enforcing_tx, enforcing) = watch::channel(None);
        let (reports_tx, reports) = mpsc::channel(16);
        let (captures_tx, captures_rx) = mpsc::channel(64);
        let tracker = TaskTracker::new();
        let stop = shutdown.clone();
        // Network policy goes through BPF-LSM where the kernel allows it, else cgroup hooks.
        let datapath = Datapath::new(paths)
            .with_enforcement(Enforcement::for_kernel(&features))
            .with_public_key(public_key)
            .for_node(node_name.clone());
        let (ready_tx, ready) = oneshot::channel();
        let stats = std::sync::Arc::new(stats::EventCounters::default());
        let thread_stats = stats.clone();
        let metrics = metrics::AgentMetrics::new();
        let thread_metrics = metrics.clone();
        // Bound before anything starts, so a taken port fails the start rather than later.
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(palisade_metrics::bind(addr).await.map_err(StartError::Metrics)?),
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        let handle = std::thread::Builder::new()
            .name("palisade-datapath".into())
            .spawn(move || {
                let queues = Queues {
                    commands: &command_rx,
                    events: &events_tx,
                    flows: &flows_tx,
                    stats: &thread_stats,
                    reports: &reports_tx,
                    metrics: &thread_metrics,
                };
                datapath_thread(datapath, &queues, &enforcing_tx, ready_tx, &stop);
            })
            .map_err(|_| StartError::Datapath)?;
        // The thread owns kernel objects; join it on a blocking task so shutdown waits.
        tracker.spawn_blocking(move || {
            if handle.join().is_err() {
                tracing::error!("datapath thread panicked");
            }
        });
        let sync = sync::SyncClient {
            stats: stats.clone(),
            server: server.clone(),
            node_name: node_name.clone(),
            labels,
            features,
            failsafe_ports: config.failsafe_ports.iter().map(|&p| u32::from(p)).collect(),
            heartbeat: Duration::from_secs(config.heartbeat_seconds.max(1)),
            metrics: metrics.clone(),
            captures: Some(captures_tx),
        };
        let apply = move |bundle: v1::Bundle| {
            let commands = commands.clone();
            async move {
                let (tx, rx) = oneshot::channel();
                commands.send(Command::Apply(bundle, tx)).map_err(|_| ApplyError::Stopped)?;
                Ok(rx.await.map_err(|_| ApplyError::Stopped)??)
            }
        };
        // Say hello only after adoption, so the hello names the bundle the kernel runs.
        ready.await.map_err(|_| StartError::Datapath)?;
        tracker.spawn(sync::run_sync(sync, apply, enforcing.clone(), reports, shutdown.clone()));
        tracker.spawn(capture::session::run(server.clone(), node_name.clone(), captures_rx, shutdown.clone()));
        spawn_reporters(&tracker, &config, server, node_name, (events_rx, flows_rx), &stats, &shutdown);
        if let Some(listener) = metrics_listener {
            tracker.spawn(serve_metrics(listener, metrics, stats.clone(), shutdown.clone()));
        }
        tracker.close();
        Ok(Self { tracker, shutdown, enforcing, stats, metrics_addr })
    }

    /// What the datapath enforces now.
    pub fn enforcing(&self) -> Enforcing {
        self.enforcing.clone()
    }

    /// Where `/metrics` is served (`--metrics-listen`), with the port bound.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// The event counters now (what the next heartbeat reports).
    pub fn event_stats(&self) -> v1::EventStats {
        self.stats.snapshot()
    }

    /// Waits until the agent has stopped (after the shutdown token is cancelled).
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        self.tracker.wait().await;
    }
}

/// Starts the event reporter and the flow reporter.
fn spawn_reporters(
    tracker: &TaskTracker,
    config: &Config,
    server: sync::Server,
    node_name: String,
    (events, flows): (mpsc::Receiver<v1::DecisionEvent>, mpsc::Receiver<Vec<events::Flow>>),
    stats: &std::sync::Arc<stats::EventCounters>,
    shutdown: &CancellationToken,
) {
    let backlog = backlog::Backlog::new(config.event_backlog, config.event_backlog_bytes);
    tracker.spawn(sync::run_reporter(
        server.clone(),
        node_name.clone(),
        events,
        backlog,
        stats.clone(),
        shutdown.clone(),
    ));
    let flow_config = flows::FlowConfig {
        window: Duration::from_secs(config.flow_window_seconds),
        max_keys: config.flow_max_keys,
        backlog: config.flow_backlog,
        record_rate: config.flow_record_rate,
    };
    tracker.spawn(flows::run_flow_reporter(server, node_name, flow_config, flows, stats.clone(), shutdown.clone()));
}

/// Serves `/metrics`, refreshing the kernel-side values before each scrape.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<metrics::AgentMetrics>,
    counters: std::sync::Arc<stats::EventCounters>,
    shutdown: CancellationToken,
) {
    let registry = metrics.registry();
    let refresh: palisade_metrics::Refresh = std::sync::Arc::new(move || {
        let (metrics, counters) = (metrics.clone(), counters.clone());
        // bpf(2) calls on the pins: off the async workers.
        Box::pin(async move {
            let _ = tokio::task::spawn_blocking(move || metrics.refresh(&counters)).await;
        })
    });
    palisade_metrics::serve(listener, registry, refresh, shutdown).await;
}

/// What the datapath thread receives from and sends to the async side.
struct Queues<'a> {
    commands: &'a std::sync::mpsc::Receiver<Command>,
    events: &'a mpsc::Sender<v1::DecisionEvent>,
    /// Closed connections, to the flow reporter.
    flows: &'a mpsc::Sender<Vec<events::Flow>>,
    stats: &'a stats::EventCounters,
    /// What the datapath reports on its own (dropped when the Sync stream is not keeping up).
    reports: &'a mpsc::Sender<v1::sync_request::Message>,
    metrics: &'a metrics::AgentMetrics,
}

/// The datapath thread: applies bundles, polls the ring buffer, keeps the cgroup map current.
fn datapath_thread(
    mut datapath: Datapath,
    queues: &Queues<'_>,
    enforcing: &watch::Sender<Option<(u64, String)>>,
    ready: oneshot::Sender<()>,
    shutdown: &CancellationToken,
) {
    match datapath.adopt() {
        Ok(true) => {}
        Ok(false) => tracing::info!("no pinned bundle to adopt; waiting for the server"),
        Err(error) => {
            tracing::warn!(error = error_chain(&error), "could not adopt the pinned bundle; waiting for the server");
        }
    }
    sys::release_freed_memory();
    let publish = |d: &Datapath| {
        enforcing.send_replace(d.active().map(|(g, digest)| (g, digest.to_owned())));
        queues.metrics.enforcing(d.active().map(|(g, _)| g), d.active_dir());
    };
    publish(&datapath);
    let _ = ready.send(());
    let mut batch = Vec::new();
    let mut watch = cgroups::CgroupWatch::new()
        .map_err(|error| tracing::warn!(%error, "no inotify; selected cgroups are only rescanned every few seconds"))
        .ok();
    let rearm = |watch: &mut Option<cgroups::CgroupWatch>, d: &Datapath| {
        if let Some(w) = watch {
            w.rearm(d.cgroup2(), &d.selected_cgroups());
        }
    };
    rearm(&mut watch, &datapath);
    let mut last_cgroup_sync = std::time::Instant::now();
    let mut dropped = 0_u64;
    // What the last drain read, and when: the rate `coalesce` sizes the next wait by.
    let (mut last_drained, mut last_interval, mut last_drain) = (0_usize, Duration::ZERO, std::time::Instant::now());
    while !shutdown.is_cancelled() {
        match queues.commands.try_recv() {
            Ok(Command::Apply(bundle, reply)) => {
                let generation = bundle.generation;
                let started = std::time::Instant::now();
                let result = datapath.apply(bundle, &mut batch);
                queues.metrics.applied(started.elapsed());
                let result = result.inspect_err(|e| {
                    tracing::warn!(
                        generation,
                        error = error_chain(e),
                        "bundle rejected; the previous one keeps enforcing"
                    );
                });
                publish(&datapath);
                rearm(&mut watch, &datapath);
                let _ = reply.send(result);
                sys::release_freed_memory();
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
            Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
        }
        let mut fds = Vec::with_capacity(2);
        if let Some(fd) = datapath.events_fd() {
            fds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
        }
        if let Some(w) = &watch {
            fds.push(libc::pollfd { fd: w.fd(), events: libc::POLLIN, revents: 0 });
        }
        // SAFETY: a valid array of pollfds; a 50 ms timeout bounds command latency.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        if fds.first().is_some_and(|p| p.revents & libc::POLLIN != 0 && Some(p.fd) == datapath.events_fd()) {
            // A wake-up costs far more than reading one more record: let them gather.
            std::thread::sleep(coalesce(last_drained, last_interval));
        }
        datapath.drain(&mut batch);
        let now = std::time::Instant::now();
        last_interval = now - std::mem::replace(&mut last_drain, now);
        last_drained = forward(&mut datapath, &mut batch, queues, &mut dropped);
        let changed = watch.as_ref().is_some_and(cgroups::CgroupWatch::drain);
        // The periodic rescan is only a backstop for missed or unsupported notifications.
        if changed || last_cgroup_sync.elapsed() >= CGROUP_RESCAN {
            last_cgroup_sync = std::time::Instant::now();
            if let Err(error) = datapath.sync_cgroups() {
                tracing::warn!(error = error_chain(&error), "cgroup map update failed");
            }
            restore_if_vanished(&mut datapath, queues, &mut batch);
            // A map lookup: on the rescan tick, not on every wake-up for events (heartbeats,
            // which carry it, are rarer still).
            queues.stats.set_ring_full(datapath.ring_lost());
            let (tune_refused, untracked) = datapath.flow_stats();
            queues.stats.set_flows(datapath.flows_dropped(), untracked, tune_refused);
            publish(&datapath);
            rearm(&mut watch, &datapath);
        }
    }
    tracing::info!("datapath stopped; pinned programs keep enforcing");
}

/// Hands what a drain read to the event and flow queues, counting what they refuse; returns
/// how many records it read.
fn forward(
    datapath: &mut Datapath,
    batch: &mut Vec<v1::DecisionEvent>,
    queues: &Queues<'_>,
    dropped: &mut u64,
) -> usize {
    let read = batch.len();
    let mut lost = 0;
    for event in batch.drain(..) {
        queues.metrics.decision(&event);
        if queues.events.try_send(event).is_err() {
            lost += 1;
        }
    }
    if lost > 0 {
        queues.stats.queue_full(lost);
        *dropped += lost;
        if dropped.is_power_of_two() || lost == *dropped {
            tracing::warn!(dropped, "event queue full; events dropped");
        }
    }
    queues.stats.set_undecodable(datapath.undecodable());
    let flows = datapath.take_flows();
    let read = read + flows.len();
    if !flows.is_empty() {
        let n = flows.len() as u64;
        queues.stats.flows_recorded(n);
        if queues.flows.try_send(flows).is_err() {
            queues.stats.flows_key_dropped(n);
        }
    }
    read
}

/// Checks with the kernel that the active generation still enforces; if its pins vanished
/// (bpffs unmounted, pins removed) the programs are detached: NACK it with the reason, load
/// it again, and ACK it once it enforces again.
fn restore_if_vanished(datapath: &mut Datapath, queues: &Queues<'_>, drained: &mut Vec<v1::DecisionEvent>) {
    let Err(vanished) = datapath.check() else { return };
    let Some((generation, digest)) = datapath.active().map(|(g, d)| (g, d.to_owned())) else { return };
    let reason = format!("enforcement vanished under the agent: {}; loading it again", error_chain(&vanished));
    tracing::error!(generation, reason);
    let nack = v1::BundleNack { generation, digest: digest.clone(), error: reason };
    let _ = queues.reports.try_send(v1::sync_request::Message::Nack(nack));
    match datapath.restore(drained) {
        Ok(()) => {
            tracing::info!(generation, "enforcement restored");
            let _ = queues.reports.try_send(v1::sync_request::Message::Ack(v1::BundleAck { generation, digest }));
        }
        Err(error) => tracing::error!(generation, error = error_chain(&error), "could not restore enforcement"),
    }
}

/// Parses a server address into a URL with a scheme.
pub fn server_url(server: &str) -> String {
    if server.contains("://") { server.to_owned() } else { format!("http://{server}") }
}

/// Installs the tracing subscriber (`PALISADE_LOG`, default `info`).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coalescing_wait_shrinks_as_the_record_rate_grows_within_bounds() {
        let second = Duration::from_secs(1);
        assert_eq!(coalesce(0, second), Duration::from_millis(10), "idle: the longest wait");
        assert_eq!(coalesce(10, second), Duration::from_millis(10), "a trickle: capped");
        // A quarter of 256 KiB in 340-byte records is 192 records: at 20,000/s, 9.6 ms.
        let at_20k = coalesce(20_000, second);
        assert!(at_20k > Duration::from_millis(9) && at_20k < Duration::from_millis(10), "{at_20k:?}");
        let at_100k = coalesce(100_000, second);
        assert!(at_100k > Duration::from_millis(1) && at_100k < Duration::from_millis(2), "{at_100k:?}");
        assert_eq!(coalesce(10_000_000, second), Duration::from_millis(1), "a flood: the shortest wait");
        assert_eq!(coalesce(5, Duration::ZERO), Duration::from_millis(1), "no interval measured yet");
    }
}
