//! The agent's side of the protocol: the `Sync` control stream (hello, bundles, ACK/NACK,
//! heartbeats) and event reporting, both reconnecting with jittered backoff.

use std::{collections::BTreeMap, future::Future, sync::Arc, time::Duration};

use palisade_proto::v1::{self, agent_service_client::AgentServiceClient, sync_request, sync_response};
use rand::Rng as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::{ApplyError, Enforcing, backlog::Backlog, error_chain, server_url, stats::EventCounters};

/// Why a Sync session or an event report ended.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The server cannot be reached.
    #[error("connect")]
    Connect(#[source] tonic::transport::Error),
    /// The server refused the hello.
    #[error("hello rejected")]
    Hello(#[source] tonic::Status),
    /// The stream failed.
    #[error("sync stream")]
    Stream(#[source] tonic::Status),
    /// The server ended the stream.
    #[error("server closed the stream")]
    ServerClosed,
    /// The server broke the bundle-part protocol.
    #[error("bundle parts: {0}")]
    Parts(#[from] PartError),
    /// No answer to the hello within [`OPEN_TIMEOUT`].
    #[error("no answer from the server within {OPEN_TIMEOUT:?}")]
    Timeout,
    /// Our side of the stream is gone (the request task stopped).
    #[error("request stream closed")]
    RequestClosed,
    /// Reporting a batch of events failed.
    #[error("reporting events")]
    Report(#[source] tonic::Status),
    /// No connection to report events on.
    #[error("not connected")]
    NotConnected,
}

/// Everything the Sync loop needs to say hello.
#[derive(Debug, Clone)]
pub struct SyncClient {
    /// The server.
    pub server: Server,
    /// Node name.
    pub node_name: String,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// Probed kernel features.
    pub features: v1::KernelFeatures,
    /// Failsafe ports.
    pub failsafe_ports: Vec<u32>,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Event counters, sent with the hello and every heartbeat.
    pub stats: Arc<EventCounters>,
    /// Where the stream's state is shown.
    pub metrics: Arc<crate::metrics::AgentMetrics>,
    /// Where capture orders go (`crate::capture::session`); `None`: they are ignored.
    pub captures: Option<mpsc::Sender<v1::CaptureOrder>>,
}

/// Largest bundle content the agent accepts, whole or in parts.
pub const MAX_BUNDLE_BYTES: usize = 256 << 20;

/// A sequence of bundle parts that cannot be a bundle.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PartError {
    /// A first part announcing more than [`MAX_BUNDLE_BYTES`].
    #[error("a bundle of {0} bytes is larger than the agent accepts ({MAX_BUNDLE_BYTES})")]
    TooLarge(u64),
    /// A continuation without a first part.
    #[error("a continuation part without a first part")]
    NoFirst,
    /// More content than the first part announced.
    #[error("parts carry more than the {0} bytes announced")]
    Overrun(usize),
}

/// Reassembles bundles the server sends as [`v1::BundlePart`]s.
#[derive(Debug, Default)]
pub struct Assembly {
    pending: Option<(v1::Bundle, usize, Vec<u8>)>,
}

impl Assembly {
    /// Takes the next part; the bundle once its content is complete. A first part discards
    /// any bundle left incomplete.
    pub fn add(&mut self, part: v1::BundlePart) -> Result<Option<v1::Bundle>, PartError> {
        if let Some(bundle) = part.bundle {
            let size = usize::try_from(part.content_size)
                .ok()
                .filter(|&n| n <= MAX_BUNDLE_BYTES)
                .ok_or(PartError::TooLarge(part.content_size))?;
            // Grown as parts arrive: a first part alone must not reserve what it announces.
            self.pending = Some((bundle, size, Vec::with_capacity(size.min(1 << 20))));
        }
        let Some((_, size, content)) = self.pending.as_mut() else { return Err(PartError::NoFirst) };
        if content.len() + part.content.len() > *size {
            let size = *size;
            self.pending = None;
            return Err(PartError::Overrun(size));
        }
        content.extend_from_slice(&part.content);
        if content.len() < *size {
            return Ok(None);
        }
        Ok(self.pending.take().map(|(mut bundle, _, content)| {
            bundle.content = content.into();
            bundle
        }))
    }
}

/// How long connecting to a replica and its answer to the hello may take together.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Exponential backoff from 200 ms to 10 s with ±50 % jitter, so a fleet that lost the
/// server does not reconnect in lockstep.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(10);

    /// The next delay.
    pub fn delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        base.mul_f64(rand::rng().random_range(0.5..1.5))
    }

    /// Back to the first delay (after a successful session).
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Where the server replicas are and how to reach them: their URLs and, for `https://`, the
/// CA to trust and this node's client certificate.
#[derive(Debug, Clone)]
pub struct Server {
    /// URLs, one per replica (`http://` only against `--dev` servers). With none, the
    /// Sync loop and the reporter log an error and stop.
    pub urls: Vec<String>,
    /// TLS settings for `https://` URLs.
    pub tls: Option<ClientTlsConfig>,
}

impl Server {
    /// Connects to replica `at` (an index into `urls`, taken modulo their number).
    pub(crate) async fn connect(&self, at: usize) -> Result<Channel, tonic::transport::Error> {
        let url = self.url(at);
        // HTTP/2 pings find a replica that died without closing the connection (a crashed
        // host, a partition) in under 30 s, where TCP alone would take minutes.
        let mut endpoint = Endpoint::from_shared(url.to_owned())?
            .connect_timeout(Duration::from_secs(5))
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .http2_keep_alive_interval(Duration::from_secs(15))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        endpoint.connect().await
    }

    /// The URL of replica `at`.
    fn url(&self, at: usize) -> &str {
        &self.urls[at % self.urls.len()]
    }
}

/// Which replica to use next and how long to wait first. A stream that fails moves on to
/// the next replica after a short jittered pause (so a fleet leaving a dead replica does not
/// arrive at the next one in the same millisecond); once every replica failed in a row, the
/// growing [`Backoff`] applies before the next round.
#[derive(Debug)]
pub struct Failover {
    replicas: usize,
    at: usize,
    failed_in_row: usize,
    backoff: Backoff,
}

impl Failover {
    /// Pause before trying the next replica while untried ones remain in this round.
    const NEXT: std::ops::Range<u64> = 20..120;

    /// Starts at replica `first` (modulo their number) of `replicas`.
    pub fn new(replicas: usize, first: usize) -> Self {
        let replicas = replicas.max(1);
        Self { replicas, at: first % replicas, failed_in_row: 0, backoff: Backoff::default() }
    }

    /// Where node `name` starts: a stable hash of its name, so a fleet configured with the
    /// same replica list spreads over the replicas instead of all landing on the first.
    pub fn first_for(name: &str) -> usize {
        // FNV-1a: stable across builds and platforms (std's hasher is neither promised).
        let hash =
            name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        usize::try_from(hash % 1_000_003).unwrap_or(0)
    }

    /// The replica to use now.
    pub fn current(&self) -> usize {
        self.at
    }

    /// The current replica failed: moves to the next and says how long to wait before it.
    pub fn failed(&mut self) -> Duration {
        self.at = (self.at + 1) % self.replicas;
        self.failed_in_row += 1;
        if self.failed_in_row < self.replicas {
            return Duration::from_millis(rand::rng().random_range(Self::NEXT));
        }
        self.failed_in_row = 0;
        self.backoff.delay()
    }

    /// The current replica answered: stay on it, and start over the backoff.
    pub fn connected(&mut self) {
        self.failed_in_row = 0;
        self.backoff.reset();
    }
}

/// `host:port` of the server URL, with the port the transport uses when the URL has none
/// (443 for `https://`, 80 for `http://`), so the failsafe list is never empty for want of
/// one.
fn authority(server: &str) -> String {
    let url = server_url(server);
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", &url));
    let authority = rest.split('/').next().unwrap_or_default();
    let has_port = match authority.strip_prefix('[') {
        Some(v6) => v6.contains("]:"),
        None => authority.contains(':'),
    };
    if has_port { authority.to_owned() } else { format!("{authority}:{}", if scheme == "https" { 443 } else { 80 }) }
}

/// Resolves every replica's addresses so the compiler can exempt them all (failsafe): the
/// replica an agent fails over to must be reachable whatever the policies say.
async fn server_endpoints(servers: &[String]) -> Vec<String> {
    let mut endpoints = Vec::new();
    for server in servers {
        // Bounded: a resolver that does not answer must not delay the hello (and failover).
        let lookup = tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host(authority(server)));
        match lookup.await {
            Ok(Ok(addrs)) => endpoints.extend(addrs.map(|a| a.to_string())),
            Ok(Err(error)) => tracing::warn!(%error, server, "cannot resolve the server for the failsafe list"),
            Err(_) => tracing::warn!(server, "resolving the server for the failsafe list timed out"),
        }
    }
    endpoints.sort();
    endpoints.dedup();
    endpoints
}

/// Holds the Sync stream until `shutdown`: says hello with what is enforced, hands every
/// bundle to `apply` and ACKs or NACKs it, forwards what the datapath reports on its own
/// (`reports`: a NACK when enforcement vanished, the ACK once restored), sends heartbeats,
/// reconnects on failure.
pub async fn run_sync<A, F>(
    client: SyncClient,
    apply: A,
    enforcing: Enforcing,
    mut reports: mpsc::Receiver<sync_request::Message>,
    shutdown: CancellationToken,
) where
    A: Fn(v1::Bundle) -> F,
    F: Future<Output = Result<(), ApplyError>>,
{
    if client.server.urls.is_empty() {
        tracing::error!("no server address to sync with");
        return;
    }
    let mut failover = Failover::new(client.server.urls.len(), Failover::first_for(&client.node_name));
    while !shutdown.is_cancelled() {
        match session(&client, &apply, &enforcing, &mut reports, &shutdown, &mut failover).await {
            Ok(()) => return,
            Err(error) => tracing::warn!(
                server = client.server.url(failover.current()),
                error = error_chain(&error),
                "sync stream ended"
            ),
        }
        let delay = failover.failed();
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

async fn session<A, F>(
    client: &SyncClient,
    apply: &A,
    enforcing: &Enforcing,
    reports: &mut mpsc::Receiver<sync_request::Message>,
    shutdown: &CancellationToken,
    failover: &mut Failover,
) -> Result<(), SyncError>
where
    A: Fn(v1::Bundle) -> F,
    F: Future<Output = Result<(), ApplyError>>,
{
    let (generation, digest) = enforcing.borrow().clone().unwrap_or_default();
    let hello = v1::AgentHello {
        node_name: client.node_name.clone(),
        labels: client.labels.clone(),
        features: Some(client.features.clone()),
        bundle_digest: digest,
        bundle_generation: generation,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        server_endpoints: server_endpoints(&client.server.urls).await,
        failsafe_ports: client.failsafe_ports.clone(),
        event_stats: Some(client.stats.snapshot()),
        accepts_bundle_parts: true,
    };
    let (out, out_rx) = mpsc::channel(16);
    let send = |m: sync_request::Message| {
        let out = out.clone();
        async move { out.send(v1::SyncRequest { message: Some(m) }).await.map_err(|_| SyncError::RequestClosed) }
    };
    send(sync_request::Message::Hello(hello)).await?;
    // Connecting, the TLS handshake and the answer to the hello, bounded together: a replica
    // that accepts connections but never answers must not hold the agent.
    let open = async {
        let channel = client.server.connect(failover.current()).await.map_err(SyncError::Connect)?;
        AgentServiceClient::new(channel)
            .max_decoding_message_size(256 << 20)
            .sync(ReceiverStream::new(out_rx))
            .await
            .map_err(SyncError::Hello)
    };
    let mut inbound = tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        opened = tokio::time::timeout(OPEN_TIMEOUT, open) => opened.map_err(|_| SyncError::Timeout)??.into_inner(),
    };
    tracing::info!(node = client.node_name, server = client.server.url(failover.current()), "sync stream open");
    failover.connected();
    client.metrics.set_connected(true);
    let _closed = Closed(&client.metrics);
    let mut heartbeat = tokio::time::interval(client.heartbeat);
    heartbeat.tick().await;
    let mut parts = Assembly::default();
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = heartbeat.tick() => {
                let now = std::time::SystemTime::now();
                let event_stats = Some(client.stats.snapshot());
                send(sync_request::Message::Heartbeat(v1::Heartbeat { sent_at: Some(now.into()), event_stats })).await?;
                continue;
            }
            Some(report) = reports.recv() => {
                send(report).await?;
                continue;
            }
            m = inbound.message() => m.map_err(SyncError::Stream)?,
        };
        let Some(message) = message else { return Err(SyncError::ServerClosed) };
        let bundle = match message.message {
            Some(sync_response::Message::Bundle(bundle)) => {
                // A whole bundle is newer than any bundle left incomplete.
                parts = Assembly::default();
                Some(bundle)
            }
            Some(sync_response::Message::BundlePart(part)) => parts.add(part)?,
            Some(sync_response::Message::Capture(order)) => {
                let id = order.id;
                if let Some(captures) = &client.captures {
                    if captures.try_send(order).is_err() {
                        tracing::warn!(
                            capture = id,
                            "capture orders arrive faster than they are taken; one was dropped"
                        );
                    }
                } else {
                    tracing::warn!(capture = id, "capture order ignored: captures are off on this agent");
                }
                None
            }
            Some(sync_response::Message::Heartbeat(_)) | None => None,
        };
        let Some(bundle) = bundle else { continue };
        let (generation, digest) = (bundle.generation, bundle.digest.clone());
        tracing::info!(generation, digest, "bundle received");
        let reply = match apply(bundle).await {
            Ok(()) => sync_request::Message::Ack(v1::BundleAck { generation, digest }),
            Err(error) => {
                sync_request::Message::Nack(v1::BundleNack { generation, digest, error: error_chain(&error) })
            }
        };
        send(reply).await?;
    }
}

/// Streams events to the server in batches. While the server is unreachable events wait in
/// `backlog` (bounded by count and bytes; the oldest are dropped first and counted); they are
/// sent, once each, when it is back. The queue from the datapath is drained into the backlog
/// also while waiting to retry, so a burst during an outage fills the backlog, not the queue.
pub async fn run_reporter(
    server: Server,
    node_name: String,
    mut events: mpsc::Receiver<v1::DecisionEvent>,
    mut backlog: Backlog,
    stats: Arc<EventCounters>,
    shutdown: CancellationToken,
) {
    const BATCH: usize = 1000;
    let keep = |backlog: &mut Backlog, e: v1::DecisionEvent| {
        let dropped = backlog.push(e);
        if dropped > 0 {
            stats.backlog_full(dropped);
        }
    };
    let mut client: Option<AgentServiceClient<Channel>> = None;
    if server.urls.is_empty() {
        tracing::error!("no server address to report events to");
        return;
    }
    let mut failover = Failover::new(server.urls.len(), Failover::first_for(&node_name));
    loop {
        stats.set_pending(backlog.len(), backlog.bytes());
        if backlog.is_empty() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                e = events.recv() => match e {
                    Some(e) => keep(&mut backlog, e),
                    None => return,
                },
            }
        }
        while let Ok(e) = events.try_recv() {
            keep(&mut backlog, e);
        }
        stats.set_pending(backlog.len(), backlog.bytes());
        if client.is_none() {
            let connect = tokio::time::timeout(OPEN_TIMEOUT, server.connect(failover.current()));
            let connected = tokio::select! {
                () = shutdown.cancelled() => return,
                c = connect => c,
            };
            match connected {
                Ok(Ok(channel)) => client = Some(AgentServiceClient::new(channel)),
                Ok(Err(error)) => {
                    tracing::debug!(%error, server = server.url(failover.current()), "event reporter cannot connect");
                }
                Err(_) => tracing::debug!(server = server.url(failover.current()), "event reporter: connect timed out"),
            }
        }
        let sent = match &mut client {
            Some(c) => {
                let batch = backlog.oldest(BATCH);
                let n = batch.len();
                let request = v1::ReportEventsRequest { node_name: node_name.clone(), events: batch };
                c.report_events(tokio_stream::iter(vec![request]))
                    .await
                    .map(|r| (n, usize::try_from(r.into_inner().rate_limited).unwrap_or(n).min(n)))
                    .map_err(SyncError::Report)
            }
            None => Err(SyncError::NotConnected),
        };
        let pause = match sent {
            Ok((n, refused)) => {
                // The server stores a prefix of the batch; what its rate limit refused stays at
                // the front of the backlog and goes again after a pause.
                backlog.sent(n - refused);
                stats.delivered((n - refused) as u64);
                failover.connected();
                if refused == 0 {
                    continue;
                }
                tracing::debug!(refused, pending = backlog.len(), "the server's event rate limit refused events");
                RATE_LIMITED_PAUSE
            }
            Err(error) => {
                tracing::warn!(
                    error = error_chain(&error),
                    pending = backlog.len(),
                    "reporting events failed; will retry"
                );
                client = None;
                failover.failed()
            }
        };
        if !wait_filling(pause, &shutdown, &mut events, |e| keep(&mut backlog, e)).await {
            return;
        }
    }
}

/// How long the reporter waits after the server's rate limit refused part of a batch.
const RATE_LIMITED_PAUSE: Duration = Duration::from_secs(1);

/// Waits `delay`, handing every event that arrives meanwhile to `keep`; false once the agent
/// shuts down.
async fn wait_filling(
    delay: Duration,
    shutdown: &CancellationToken,
    events: &mut mpsc::Receiver<v1::DecisionEvent>,
    mut keep: impl FnMut(v1::DecisionEvent),
) -> bool {
    let wait = tokio::time::sleep(delay);
    tokio::pin!(wait);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = &mut wait => return true,
            e = events.recv() => {
                let Some(e) = e else {
                    (&mut wait).await;
                    return true;
                };
                keep(e);
            }
        }
    }
}

/// Shows the stream closed when the session ends, however it ends.
struct Closed<'a>(&'a crate::metrics::AgentMetrics);

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        self.0.set_connected(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failsafe_authority_has_the_port_the_transport_uses() {
        assert_eq!(authority("https://palisade.example:50051/"), "palisade.example:50051");
        assert_eq!(authority("https://palisade.example"), "palisade.example:443");
        assert_eq!(authority("http://10.0.0.1"), "10.0.0.1:80");
        assert_eq!(authority("10.0.0.1:50051"), "10.0.0.1:50051");
        assert_eq!(authority("https://[2001:db8::1]"), "[2001:db8::1]:443");
        assert_eq!(authority("https://[2001:db8::1]:8443"), "[2001:db8::1]:8443");
    }

    #[tokio::test]
    async fn an_https_url_without_a_port_still_resolves_to_failsafe_endpoints() {
        assert_eq!(server_endpoints(&["https://127.0.0.1".to_owned()]).await, ["127.0.0.1:443"]);
    }

    #[tokio::test]
    async fn every_replica_is_in_the_failsafe_list() {
        let servers = ["https://127.0.0.2:50051", "127.0.0.1:50052", "https://127.0.0.2:50051"].map(str::to_owned);
        assert_eq!(server_endpoints(&servers).await, ["127.0.0.1:50052", "127.0.0.2:50051"]);
    }

    fn part(bundle: Option<v1::Bundle>, size: u64, content: &[u8]) -> v1::BundlePart {
        v1::BundlePart { bundle, content_size: size, content: content.to_vec().into() }
    }

    #[test]
    fn parts_reassemble_into_the_bundle_and_bad_sequences_are_refused() {
        let header = v1::Bundle { generation: 7, digest: "d".into(), ..Default::default() };
        let mut a = Assembly::default();
        assert_eq!(a.add(part(Some(header.clone()), 5, b"ab")), Ok(None));
        assert_eq!(a.add(part(None, 0, b"cd")), Ok(None));
        let bundle = a.add(part(None, 0, b"e")).expect("valid").expect("complete");
        assert_eq!((bundle.generation, &bundle.content[..]), (7, &b"abcde"[..]));
        // A new first part replaces an incomplete bundle.
        assert_eq!(a.add(part(Some(header.clone()), 4, b"xy")), Ok(None));
        let fresh = a.add(part(Some(header.clone()), 2, b"zz")).expect("valid").expect("complete");
        assert_eq!(&fresh.content[..], b"zz");
        assert_eq!(a.add(part(None, 0, b"x")), Err(PartError::NoFirst));
        assert_eq!(a.add(part(Some(header.clone()), 2, b"abc")), Err(PartError::Overrun(2)));
        assert_eq!(a.add(part(None, 0, b"x")), Err(PartError::NoFirst), "an overrun drops the bundle");
        let huge = MAX_BUNDLE_BYTES as u64 + 1;
        assert_eq!(a.add(part(Some(header), huge, b"")), Err(PartError::TooLarge(huge)));
    }

    #[test]
    fn nodes_start_on_different_replicas() {
        let starts: std::collections::BTreeSet<usize> =
            (0..32).map(|i| Failover::new(3, Failover::first_for(&format!("web-{i}"))).current()).collect();
        assert_eq!(starts.len(), 3, "32 nodes over 3 replicas use all of them: {starts:?}");
        assert_eq!(Failover::first_for("web-1"), Failover::first_for("web-1"), "stable");
    }

    #[test]
    fn failover_moves_to_the_next_replica_quickly_then_backs_off_after_a_full_round() {
        let mut f = Failover::new(3, 0);
        assert_eq!(f.current(), 0);
        let quick = Duration::from_millis(Failover::NEXT.end);
        assert!(f.failed() < quick);
        assert_eq!(f.current(), 1);
        assert!(f.failed() < quick);
        assert_eq!(f.current(), 2);
        // Every replica failed in a row: the backoff (200 ms ± 50 %), then the next round.
        let first = f.failed();
        assert!(first >= Duration::from_millis(100), "{first:?}");
        assert_eq!(f.current(), 0);
        assert!(f.failed() < quick);
        assert!(f.failed() < quick);
        let second = f.failed();
        assert!(second >= Duration::from_millis(200), "grows: {second:?}");
        // A replica that answers is kept, and the backoff starts over.
        f.failed();
        assert_eq!(f.current(), 1);
        f.connected();
        assert_eq!(f.current(), 1);
        assert!(f.failed() < quick, "the next replica is tried at once");
        assert!(f.failed() < quick);
        assert!(f.failed() <= Duration::from_millis(300), "backoff was reset");
        let mut single = Failover::new(1, 5);
        assert!(single.failed() >= Duration::from_millis(100), "one replica: always the backoff");
        assert_eq!(single.current(), 0);
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::default();
        let first = b.delay();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(300), "{first:?}");
        for _ in 0..10 {
            let d = b.delay();
            assert!(d <= Duration::from_secs(15), "{d:?}");
        }
        assert!(b.delay() >= Duration::from_secs(5));
        b.reset();
        assert!(b.delay() <= Duration::from_millis(300));
    }
}
