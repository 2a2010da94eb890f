//! `AgentService`: the agents' control stream and event ingest.

use std::{
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::Stream;
use palisade_proto::v1::{self, agent_service_server::AgentService, sync_request::Message as Inbound};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    bundler::Bundler,
    error::ApiError,
    metrics::ServerMetrics,
    store::{NodeContext, Reported, Store, from_timestamp},
    tls, validate,
};

/// How often the server sends a heartbeat on each Sync stream.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// Most events in one `ReportEvents` message.
pub const MAX_EVENTS_PER_MESSAGE: usize = 10_000;
/// Most aggregates, and most records, in one `ReportFlows` message.
pub const MAX_FLOWS_PER_MESSAGE: usize = 10_000;
/// Longest error text stored from a NACK.
const MAX_NACK_ERROR: usize = 64 * 1024;
/// Most packet data in one `ReportCapture` message (agents send at most 1 MiB).
pub const MAX_CAPTURE_MESSAGE_BYTES: usize = 4 << 20;
/// Longest error text stored from a capture's end.
const MAX_CAPTURE_ERROR: usize = 4096;

/// Serves agents.
#[derive(Debug, Clone)]
pub struct AgentApi {
    store: Store,
    bundler: Bundler,
    generation: watch::Receiver<u64>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// Whether calls must carry a node's client certificate (TLS), whose node they are bound to.
    require_identity: bool,
    /// Per-node event rate limits.
    limiter: crate::ratelimit::EventLimiter,
    /// Per-node flow aggregate rate limits.
    flow_limiter: crate::ratelimit::EventLimiter,
    /// Which nodes' flow records live watchers want; `None`: flows are refused.
    hub: Option<crate::hub::EventHub>,
    metrics: Arc<ServerMetrics>,
    /// Capture orders to hand agents, and the server's capture storage quota; `None`:
    /// captures are refused.
    captures: Option<(watch::Receiver<Arc<crate::hub::CaptureOrders>>, u64)>,
}

impl AgentApi {
    /// Serves agents from `store`, pushing bundles from `bundler` whenever `generation`
    /// moves; stream tasks run on `tracker` and end at `shutdown`.
    pub fn new(
        store: Store,
        bundler: Bundler,
        generation: watch::Receiver<u64>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            store,
            bundler,
            generation,
            shutdown,
            tracker,
            require_identity: false,
            limiter: crate::ratelimit::EventLimiter::new(crate::ratelimit::EventRate::UNLIMITED),
            flow_limiter: crate::ratelimit::EventLimiter::new(crate::ratelimit::EventRate::UNLIMITED),
            hub: None,
            metrics: ServerMetrics::new(),
            captures: None,
        }
    }

    /// Hands agents the capture orders `orders` holds and stores what they capture, up to
    /// `quota` bytes over every capture.
    #[must_use]
    pub fn with_captures(mut self, orders: watch::Receiver<Arc<crate::hub::CaptureOrders>>, quota: u64) -> Self {
        self.captures = Some((orders, quota));
        self
    }

    /// Records events, connections and apply→ACK delays in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<ServerMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Limits how fast each node may report events; what is beyond it is counted, not stored.
    #[must_use]
    pub fn limiting_events(mut self, limiter: crate::ratelimit::EventLimiter) -> Self {
        self.limiter = limiter;
        self
    }

    /// Accepts flow reports, limited per node by `limiter`, relaying records to the
    /// watchers `hub` knows of.
    #[must_use]
    pub fn with_flows(mut self, hub: crate::hub::EventHub, limiter: crate::ratelimit::EventLimiter) -> Self {
        self.hub = Some(hub);
        self.flow_limiter = limiter;
        self
    }

    /// Binds every call to the node its client certificate names (TLS with a client CA).
    #[must_use]
    pub fn requiring_identity(mut self, required: bool) -> Self {
        self.require_identity = required;
        self
    }
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<v1::SyncResponse, Status>> + Send>>;

fn heartbeat() -> v1::SyncResponse {
    let now = crate::store::timestamp(chrono::Utc::now());
    v1::SyncResponse {
        message: Some(v1::sync_response::Message::Heartbeat(v1::Heartbeat { sent_at: Some(now), event_stats: None })),
    }
}

/// One Sync stream after its hello.
struct Session {
    store: Store,
    bundler: Bundler,
    node: String,
    /// What bundles depend on, as the hello that opened this stream set it.
    context: NodeContext,
    /// The policy generation as this replica last saw it.
    generation: watch::Receiver<u64>,
    /// When a failed build or record is tried again, and the next backoff.
    retry: Option<(tokio::time::Instant, Duration)>,
    /// Boxed: a channel allocates its slots 32 at a time and keeps the block for the stream's
    /// life, 32 × 176 bytes unboxed — 5.5 KiB of every idle agent's share of the server.
    outbound: mpsc::Sender<Box<Result<v1::SyncResponse, Status>>>,
    /// Digest the agent runs or was last sent.
    sent: String,
    metrics: Arc<ServerMetrics>,
    /// This stream's number among the node's streams ([`Store::node_hello`]).
    stream: i64,
    /// Whether the agent reassembles bundles sent in parts.
    accepts_parts: bool,
    /// The newest generation pushed because policy changed, and when this server first saw
    /// the change it carries (for the apply→ACK histogram).
    awaiting: Option<(u64, Instant)>,
    /// Capture orders sent on this stream (id, stop), so each is sent once per stream.
    sent_orders: Vec<(u64, bool)>,
}

impl Session {
    /// Computes the node's bundle and pushes it if the agent does not have it yet; the
    /// generation pushed, if any.
    async fn push(&mut self) -> Result<Option<u64>, ()> {
        let at = *self.generation.borrow_and_update();
        let built = match self.bundler.for_context(&self.context, at).await {
            Ok(built) => built,
            Err(error) => {
                // Shown as the node's last error, so "why does this node not run the current
                // policy" has an answer without reading server logs.
                tracing::error!(node = self.node, %error, "cannot compile the node's bundle");
                let message = format!("server could not build this node's bundle: {error}");
                if let Err(e) = self.store.node_nack(&self.node, 0, "", &message).await {
                    tracing::warn!(node = self.node, error = %e, "cannot record the build failure");
                }
                self.retry_later();
                return Ok(None);
            }
        };
        // Recorded on every change (grouped with every other session's record, one statement
        // per group), so a stale record — an old stream's, another replica's — is repaired by
        // the next change; pushed only when the node does not have it.
        let generation = match self.store.node_set_desired(&self.node, &built.digest).await {
            Ok(g) => g,
            Err(error) => {
                tracing::warn!(node = self.node, %error, "cannot record the desired bundle");
                self.retry_later();
                return Ok(None);
            }
        };
        self.retry = None;
        if built.digest == self.sent {
            return Ok(None);
        }
        tracing::debug!(node = self.node, generation, digest = built.digest, "pushing bundle");
        let bundle = self.bundler.issue(&built, &self.node, generation);
        for message in messages(bundle, self.accepts_parts) {
            self.outbound.send(Box::new(Ok(message))).await.map_err(drop)?;
        }
        self.sent.clone_from(&built.digest);
        Ok(Some(generation))
    }

    /// Schedules the next attempt after a failure: 1 s, doubling to at most a minute.
    fn retry_later(&mut self) {
        let backoff = self.retry.map_or(Duration::from_secs(1), |(_, b)| (b * 2).min(Duration::from_mins(1)));
        self.retry = Some((tokio::time::Instant::now() + backoff, backoff));
    }

    /// The policy generation moved (seen `since`): push, and time the node's ACK.
    async fn policy_changed(&mut self, since: Instant) -> Result<(), ()> {
        if let Some(generation) = self.push().await? {
            let first_seen = self.awaiting.map_or(since, |(_, t)| t);
            self.awaiting = Some((generation, first_seen));
        }
        Ok(())
    }

    /// Sends the node's capture orders it was not sent yet on this stream.
    async fn send_orders(&mut self, orders: &crate::hub::CaptureOrders) -> Result<(), ()> {
        let mine = orders.get(&self.node).map_or(&[][..], Vec::as_slice);
        if mine.is_empty() && self.sent_orders.is_empty() {
            return Ok(());
        }
        let mut sent = Vec::with_capacity(mine.len());
        for order in mine {
            let key = (order.id, order.stop);
            if !self.sent_orders.contains(&key) {
                tracing::info!(node = self.node, capture = order.id, stop = order.stop, "capture order");
                let message = v1::SyncResponse { message: Some(v1::sync_response::Message::Capture(order.clone())) };
                self.outbound.send(Box::new(Ok(message))).await.map_err(drop)?;
            }
            sent.push(key);
        }
        self.sent_orders = sent;
        Ok(())
    }

    /// The agent acknowledged `generation`.
    fn acknowledged(&mut self, generation: u64) {
        if let Some((awaited, since)) = self.awaiting
            && generation >= awaited
        {
            self.metrics.applied(since.elapsed());
            self.awaiting = None;
        }
    }
}

/// Content bytes per [`v1::BundlePart`].
pub const PART_BYTES: usize = 16 << 10;

/// The messages that carry `bundle`: itself, or — to an agent that reassembles parts, when
/// the content is larger than one part — parts of at most [`PART_BYTES`], each a slice of
/// the shared content (no copy).
pub fn messages(mut bundle: v1::Bundle, parts: bool) -> Vec<v1::SyncResponse> {
    use v1::sync_response::Message;
    if !parts || bundle.content.len() <= PART_BYTES {
        return vec![v1::SyncResponse { message: Some(Message::Bundle(bundle)) }];
    }
    let content = std::mem::take(&mut bundle.content);
    let mut header = Some((bundle, content.len() as u64));
    (0..content.len())
        .step_by(PART_BYTES)
        .map(|start| {
            let slice = content.slice(start..(start + PART_BYTES).min(content.len()));
            let (bundle, content_size) = header.take().map_or((None, 0), |(b, n)| (Some(b), n));
            v1::SyncResponse {
                message: Some(Message::BundlePart(v1::BundlePart { bundle, content_size, content: slice })),
            }
        })
        .collect()
}

/// Whether `digest` is a hex SHA-256 (what ACKs and NACKs must name; empty for a NACK of a
/// bundle the server could not build).
fn is_digest(digest: &str) -> bool {
    digest.is_empty() || (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Drives one Sync stream after its hello: pushes the node's bundle now and whenever the
/// policy generation moves, records heartbeats, ACKs and NACKs, sends heartbeats, and marks
/// the node disconnected when the stream ends.
async fn drive(
    mut session: Session,
    mut inbound: Streaming<v1::SyncRequest>,
    (mut generation, mut orders): (watch::Receiver<u64>, Option<watch::Receiver<Arc<crate::hub::CaptureOrders>>>),
    shutdown: CancellationToken,
) {
    let store = session.store.clone();
    let node = session.node.clone();
    let mut ticker = tokio::time::interval(HEARTBEAT_INTERVAL);
    ticker.tick().await;
    generation.mark_unchanged();
    let _connected = session.metrics.agent_connected();
    // The calls below are boxed: an async fn's state is the largest of everything it awaits,
    // and this task lives (idle) as long as the agent stays connected.
    if Box::pin(session.push()).await.is_err() {
        return;
    }
    if let Some(orders) = &mut orders {
        let current = orders.borrow_and_update().clone();
        if Box::pin(session.send_orders(&current)).await.is_err() {
            return;
        }
    }
    loop {
        let retry_at = session.retry.map(|(at, _)| at);
        let retry = async move {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                if session.outbound.send(Box::new(Ok(heartbeat()))).await.is_err() { break; }
                continue;
            }
            () = retry => {
                if Box::pin(session.push()).await.is_err() { break; }
                continue;
            }
            changed = generation.changed() => {
                if changed.is_err() || Box::pin(session.policy_changed(Instant::now())).await.is_err() { break; }
                continue;
            }
            current = changed_orders(&mut orders) => {
                match current {
                    Some(current) => if Box::pin(session.send_orders(&current)).await.is_err() { break; },
                    None => orders = None,
                }
                continue;
            }
            m = inbound.message() => m,
        };
        let result = match message {
            Ok(Some(v1::SyncRequest { message: Some(Inbound::Heartbeat(h)) })) => {
                Box::pin(store.node_seen(&node, session.stream, h.event_stats.as_ref())).await
            }
            Ok(Some(v1::SyncRequest {
                message: Some(Inbound::Ack(v1::BundleAck { digest, .. }) | Inbound::Nack(v1::BundleNack { digest, .. })),
            })) if !is_digest(&digest) => {
                let _ = session
                    .outbound
                    .send(Box::new(Err(Status::invalid_argument("a bundle digest is 64 hex characters"))))
                    .await;
                break;
            }
            Ok(Some(v1::SyncRequest { message: Some(Inbound::Ack(ack)) })) => {
                tracing::info!(node, generation = ack.generation, digest = ack.digest, "bundle acknowledged");
                let result = Box::pin(store.node_ack(&node, ack.generation, &ack.digest)).await;
                if result.is_ok() {
                    session.acknowledged(ack.generation);
                }
                result
            }
            Ok(Some(v1::SyncRequest { message: Some(Inbound::Nack(nack)) })) => {
                tracing::warn!(node, generation = nack.generation, error = nack.error, "bundle rejected");
                let error: String = nack.error.chars().take(MAX_NACK_ERROR).collect();
                // The change was rejected: whatever fixes it starts a new measurement.
                if session.awaiting.is_some_and(|(g, _)| nack.generation >= g) {
                    session.awaiting = None;
                }
                Box::pin(store.node_nack(&node, nack.generation, &nack.digest, &error)).await
            }
            Ok(Some(v1::SyncRequest { message: Some(Inbound::Hello(_)) | None })) => {
                let _ = session
                    .outbound
                    .send(Box::new(Err(Status::invalid_argument(
                        "hello is only valid as the first message of a stream",
                    ))))
                    .await;
                break;
            }
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(node, %status, "sync stream ended with an error");
                break;
            }
        };
        if let Err(error) = result {
            tracing::warn!(node, %error, "could not record sync message");
        }
    }
    if let Err(error) = Box::pin(store.node_disconnected(&node, session.stream)).await {
        tracing::warn!(node, %error, "could not mark node disconnected");
    }
    tracing::info!(node, "agent disconnected");
}

/// The capture orders once they change; `None` when they never will again (and never, when
/// there are none to watch).
async fn changed_orders(
    orders: &mut Option<watch::Receiver<Arc<crate::hub::CaptureOrders>>>,
) -> Option<Arc<crate::hub::CaptureOrders>> {
    match orders {
        Some(orders) => match orders.changed().await {
            Ok(()) => Some(orders.borrow_and_update().clone()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}

/// Checks one `ReportCapture` message's bounds; its end, if it is the last.
fn check_capture_report(message: &v1::ReportCaptureRequest) -> Result<Option<(String, String, bool)>, ApiError> {
    use crate::error::Violation;
    let mut v = Vec::new();
    let data: usize = message.packets.iter().map(|p| p.data.len()).sum();
    if data > MAX_CAPTURE_MESSAGE_BYTES {
        v.push(Violation::new(
            "packets",
            format!("{data} bytes in one message, the limit is {MAX_CAPTURE_MESSAGE_BYTES}"),
        ));
    }
    if let Some(i) = message.packets.iter().position(|p| p.data.len() as u64 > u64::from(p.wire_length)) {
        v.push(Violation::new(format!("packets[{i}].data"), "is longer than the packet's wire_length"));
    }
    v.extend(check_text("stop_reason", &message.stop_reason, 32));
    v.extend(check_text("error", &message.error, MAX_CAPTURE_ERROR));
    if !v.is_empty() {
        return Err(ApiError::Invalid(v));
    }
    let ended = message.failed || !message.stop_reason.is_empty();
    Ok(ended.then(|| {
        let reason = if message.stop_reason.is_empty() { "error".to_owned() } else { message.stop_reason.clone() };
        (reason, message.error.clone(), message.failed)
    }))
}

/// Most failsafe ports and server endpoints a hello may carry.
const MAX_HELLO_LIST: usize = 1024;

/// Text an agent sent: at most `max` bytes and no NUL (which PostgreSQL text cannot hold).
fn check_text(field: impl Into<String>, value: &str, max: usize) -> Option<crate::error::Violation> {
    check_text_at(|| field.into(), value, max)
}

/// [`check_text`] naming the field only when there is something to say (events are checked
/// by the hundred thousand).
fn check_text_at(field: impl FnOnce() -> String, value: &str, max: usize) -> Option<crate::error::Violation> {
    if value.len() > max {
        Some(crate::error::Violation::new(field(), format!("is longer than {max} bytes")))
    } else if value.contains('\0') {
        Some(crate::error::Violation::new(field(), "contains a NUL byte"))
    } else {
        None
    }
}

/// Bounds of a hello's fields, and its failsafe list.
fn check_hello(hello: &v1::AgentHello) -> Result<(), ApiError> {
    let mut violations = Vec::new();
    violations.extend(check_text("hello.agent_version", &hello.agent_version, 64));
    violations.extend(check_text("hello.bundle_digest", &hello.bundle_digest, 64));
    if let Some(f) = &hello.features {
        violations.extend(check_text("hello.features.kernel_release", &f.kernel_release, 128));
        if f.btf_offsets.len() > 64 {
            violations.push(crate::error::Violation::new("hello.features.btf_offsets", "more than 64 offsets"));
        }
        violations.extend(f.btf_offsets.keys().filter_map(|key| check_text("hello.features.btf_offsets", key, 64)));
        if f.tcp_congestion.len() > 64 {
            violations.push(crate::error::Violation::new("hello.features.tcp_congestion", "more than 64 names"));
        }
        violations.extend(f.tcp_congestion.iter().filter_map(|n| check_text("hello.features.tcp_congestion", n, 15)));
    }
    for (field, n) in
        [("hello.server_endpoints", hello.server_endpoints.len()), ("hello.failsafe_ports", hello.failsafe_ports.len())]
    {
        if n > MAX_HELLO_LIST {
            violations.push(crate::error::Violation::new(field, format!("{n} entries, the limit is {MAX_HELLO_LIST}")));
        }
    }
    if !violations.is_empty() {
        return Err(ApiError::Invalid(violations));
    }
    for (i, e) in hello.server_endpoints.iter().enumerate() {
        if e.parse::<std::net::SocketAddr>().is_err() {
            violations.push(crate::error::Violation::new(format!("hello.server_endpoints[{i}]"), "not IP:PORT"));
        }
    }
    for (i, p) in hello.failsafe_ports.iter().enumerate() {
        if *p == 0 || *p > 65_535 {
            violations.push(crate::error::Violation::new(format!("hello.failsafe_ports[{i}]"), "not a port 1–65535"));
        }
    }
    if violations.is_empty() { Ok(()) } else { Err(ApiError::Invalid(violations)) }
}

fn check_event(i: usize, e: &v1::DecisionEvent) -> Vec<crate::error::Violation> {
    use crate::error::Violation;
    let mut v = Vec::new();
    let mut text = |field: &str, value: &str, max: usize, required: bool| {
        if required && value.is_empty() {
            v.push(Violation::new(format!("events[{i}].{field}"), "must not be empty"));
        } else {
            v.extend(check_text_at(|| format!("events[{i}].{field}"), value, max));
        }
    };
    text("policy", &e.policy, 63, true);
    text("rule_id", &e.rule_id, 63, true);
    text("hook", &e.hook, 64, true);
    text("comm", &e.comm, 64, false);
    text("address", &e.address, 64, false);
    text("bundle_digest", &e.bundle_digest, 64, false);
    // The kernel resolves at most 252 bytes of a path (the record's field).
    text("path", &e.path, 256, false);
    if e.access.len() > 2 || e.access.iter().any(|a| v1::FileAccess::try_from(*a).is_err()) {
        v.push(Violation::new(format!("events[{i}].access"), "at most read and write, each a known access"));
    }
    if !matches!(v1::Verdict::try_from(e.verdict), Ok(v1::Verdict::Allow | v1::Verdict::Deny | v1::Verdict::Audit)) {
        v.push(Violation::new(format!("events[{i}].verdict"), format!("unknown verdict {}", e.verdict)));
    }
    if v1::Protocol::try_from(e.protocol).is_err() {
        v.push(Violation::new(format!("events[{i}].protocol"), format!("unknown protocol {}", e.protocol)));
    }
    if e.port > 65_535 {
        v.push(Violation::new(format!("events[{i}].port"), format!("port {} is above 65535", e.port)));
    }
    v
}

/// The node a report stream speaks for: named (and checked against the caller's certificate)
/// by its first message; a later message may repeat the name or leave it empty.
fn stream_node(node: &mut Option<String>, named: &str, identity: Option<&str>) -> Result<String, Status> {
    match node {
        Some(node) if named != node.as_str() && !named.is_empty() => {
            Err(ApiError::invalid("node_name", format!("this stream reports for {node:?}, not {named:?}")).into())
        }
        Some(node) => Ok(node.clone()),
        None => {
            validate::node_name("node_name", named).map_err(ApiError::Invalid)?;
            tls::check_node(identity, "node_name", named)?;
            Ok(node.insert(named.to_owned()).clone())
        }
    }
}

/// The checks shared by aggregates and records, at `at` (e.g. `aggregates[3]`).
fn check_flow_common(
    at: &dyn Fn(&str) -> String,
    v: &mut Vec<crate::error::Violation>,
    text: [(&str, &str, bool); 3],
    direction: i32,
    addresses: [(&str, &str); 2],
    ports: [(&str, u32); 2],
) {
    use crate::error::Violation;
    for (field, value, required) in text {
        if required && value.is_empty() {
            v.push(Violation::new(at(field), "must not be empty"));
        } else {
            v.extend(check_text_at(|| at(field), value, 63));
        }
    }
    if !matches!(v1::FlowDirection::try_from(direction), Ok(v1::FlowDirection::Outbound | v1::FlowDirection::Inbound)) {
        v.push(Violation::new(at("direction"), format!("unknown direction {direction}")));
    }
    for (field, value) in addresses {
        if value.len() > 64 || value.parse::<std::net::IpAddr>().is_err() {
            v.push(Violation::new(at(field), "not an IPv4 or IPv6 address"));
        }
    }
    for (field, port) in ports {
        if port > 65_535 {
            v.push(Violation::new(at(field), format!("port {port} is above 65535")));
        }
    }
}

fn check_aggregate(i: usize, a: &v1::FlowAggregate) -> Vec<crate::error::Violation> {
    use crate::error::Violation;
    let at = |field: &str| format!("aggregates[{i}].{field}");
    let mut v = Vec::new();
    check_flow_common(
        &at,
        &mut v,
        [("policy", &a.policy, true), ("rule_id", &a.rule_id, true), ("node", &a.node, false)],
        a.direction,
        [("local_address", &a.local_address), ("peer_address", &a.peer_address)],
        [("local_port", a.local_port), ("peer_port", a.peer_port)],
    );
    if a.connections == 0 {
        v.push(Violation::new(at("connections"), "an aggregate counts at least one connection"));
    }
    if !(a.srtt_us_min <= a.srtt_us_avg && a.srtt_us_avg <= a.srtt_us_max) {
        v.push(Violation::new(at("srtt_us_avg"), "min ≤ avg ≤ max does not hold"));
    }
    // The kernel's srtt is a u32 of µs << 3: real values are far below this.
    if a.srtt_us_max > i32::MAX as u32 {
        v.push(Violation::new(at("srtt_us_max"), format!("{} µs is not a round-trip time", a.srtt_us_max)));
    }
    match (a.window_start.as_ref().and_then(from_timestamp), a.window_end.as_ref().and_then(from_timestamp)) {
        (Some(start), Some(end)) if start <= end => {}
        (Some(_), Some(_)) => v.push(Violation::new(at("window_end"), "is before window_start")),
        _ => v.push(Violation::new(at("window_start"), "window_start and window_end are required timestamps")),
    }
    v
}

fn check_record(i: usize, r: &v1::FlowRecord) -> Vec<crate::error::Violation> {
    let at = |field: &str| format!("records[{i}].{field}");
    let mut v = Vec::new();
    check_flow_common(
        &at,
        &mut v,
        [("policy", &r.policy, true), ("rule_id", &r.rule_id, true), ("node", &r.node, false)],
        r.direction,
        [("local_address", &r.local_address), ("peer_address", &r.peer_address)],
        [("local_port", r.local_port), ("peer_port", r.peer_port)],
    );
    // "policy/rule": two names of up to 63 characters.
    v.extend(check_text_at(|| at("tune_rule"), &r.tune_rule, 127));
    v
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    type SyncStream = SyncStream;

    async fn sync(&self, request: Request<Streaming<v1::SyncRequest>>) -> Result<Response<SyncStream>, Status> {
        let identity = tls::node_identity(&request, self.require_identity)?;
        let mut inbound = request.into_inner();
        let Some(v1::SyncRequest { message: Some(Inbound::Hello(hello)) }) = inbound.message().await? else {
            return Err(Status::invalid_argument("the first message of a Sync stream must be a hello"));
        };
        validate::node_name("hello.node_name", &hello.node_name).map_err(ApiError::Invalid)?;
        tls::check_node(identity.as_deref(), "hello.node_name", &hello.node_name)?;
        validate::selector("hello.labels", &hello.labels).map_err(ApiError::Invalid)?;
        check_hello(&hello)?;
        let sync_session = self.store.node_hello(&hello).await?;
        tracing::info!(node = hello.node_name, digest = hello.bundle_digest, "agent connected");
        let context = self.store.node_context(&hello.node_name).await?;
        let (sender, receiver) = mpsc::channel(16);
        let session = Session {
            store: self.store.clone(),
            bundler: self.bundler.clone(),
            context,
            generation: self.generation.clone(),
            retry: None,
            node: hello.node_name,
            stream: sync_session,
            accepts_parts: hello.accepts_bundle_parts,
            outbound: sender,
            sent: hello.bundle_digest,
            metrics: self.metrics.clone(),
            awaiting: None,
            sent_orders: Vec::new(),
        };
        let orders = self.captures.as_ref().map(|(orders, _)| orders.clone());
        self.tracker.spawn(drive(session, inbound, (self.generation.clone(), orders), self.shutdown.clone()));
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(ReceiverStream::new(receiver), |item| *item))))
    }

    async fn report_events(
        &self,
        request: Request<Streaming<v1::ReportEventsRequest>>,
    ) -> Result<Response<v1::ReportEventsResponse>, Status> {
        let identity = tls::node_identity(&request, self.require_identity)?;
        let mut inbound = request.into_inner();
        let mut node: Option<String> = None;
        let (mut accepted, mut rate_limited, mut unrecorded) = (0, 0, 0);
        let mut recorded_at = Instant::now();
        while let Some(message) = inbound.message().await? {
            let node = stream_node(&mut node, &message.node_name, identity.as_deref())?;
            if message.events.len() > MAX_EVENTS_PER_MESSAGE {
                return Err(ApiError::invalid(
                    "events",
                    format!("{} events in one message, the limit is {MAX_EVENTS_PER_MESSAGE}", message.events.len()),
                )
                .into());
            }
            // Events beyond the node's rate are dropped before they cost any more work.
            let admitted = self.limiter.admit(&node, message.events.len());
            let violations: Vec<_> =
                message.events[..admitted].iter().enumerate().flat_map(|(i, e)| check_event(i, e)).take(100).collect();
            if !violations.is_empty() {
                self.metrics.dropped("invalid", admitted as u64);
                self.metrics.dropped("rate_limited", (message.events.len() - admitted) as u64);
                return Err(ApiError::Invalid(violations).into());
            }
            let refused = (message.events.len() - admitted) as u64;
            if refused > 0 {
                if rate_limited == 0 {
                    tracing::warn!(
                        node,
                        "node reports events faster than --event-rate; refusing and counting the excess"
                    );
                }
                rate_limited += refused;
                unrecorded += refused;
                self.metrics.dropped("rate_limited", refused);
            }
            // Counted on the node at most once a second: a flood must not turn into a flood
            // of updates to one row.
            if unrecorded > 0 && recorded_at.elapsed() >= Duration::from_secs(1) {
                self.store.node_rate_limited(&node, Reported::Events, unrecorded).await?;
                (unrecorded, recorded_at) = (0, Instant::now());
            }
            let stored = self.store.insert_events(&node, &message.events[..admitted]).await?;
            self.metrics.ingested(stored);
            accepted += stored;
        }
        if let Some(node) = &node
            && unrecorded > 0
        {
            self.store.node_rate_limited(node, Reported::Events, unrecorded).await?;
        }
        Ok(Response::new(v1::ReportEventsResponse { accepted, rate_limited }))
    }

    async fn report_flows(
        &self,
        request: Request<Streaming<v1::ReportFlowsRequest>>,
    ) -> Result<Response<v1::ReportFlowsResponse>, Status> {
        let Some(hub) = &self.hub else {
            return Err(Status::unimplemented("this server does not take flow reports"));
        };
        let identity = tls::node_identity(&request, self.require_identity)?;
        let mut inbound = request.into_inner();
        let mut node: Option<String> = None;
        let (mut accepted, mut rate_limited) = (0, 0);
        while let Some(mut message) = inbound.message().await? {
            let node = stream_node(&mut node, &message.node_name, identity.as_deref())?;
            for (field, n) in [("aggregates", message.aggregates.len()), ("records", message.records.len())] {
                if n > MAX_FLOWS_PER_MESSAGE {
                    return Err(ApiError::invalid(
                        field,
                        format!("{n} {field} in one message, the limit is {MAX_FLOWS_PER_MESSAGE}"),
                    )
                    .into());
                }
            }
            let admitted = self.flow_limiter.admit(&node, message.aggregates.len());
            let violations: Vec<_> = message.aggregates[..admitted]
                .iter()
                .enumerate()
                .flat_map(|(i, a)| check_aggregate(i, a))
                .chain(message.records.iter().enumerate().flat_map(|(i, r)| check_record(i, r)))
                .take(100)
                .collect();
            if !violations.is_empty() {
                return Err(ApiError::Invalid(violations).into());
            }
            let refused = (message.aggregates.len() - admitted) as u64;
            if refused > 0 {
                if rate_limited == 0 {
                    tracing::warn!(
                        node,
                        "node reports flows faster than --flow-rate; refusing and counting the excess"
                    );
                }
                rate_limited += refused;
                self.store.node_rate_limited(&node, Reported::Flows, refused).await?;
            }
            message.aggregates.truncate(admitted);
            for a in &mut message.aggregates {
                a.node.clone_from(&node);
                a.id = 0;
            }
            accepted += self.store.insert_flows(&node, &message.aggregates).await?;
            if !message.records.is_empty() && hub.records_wanted(&node) {
                for r in &mut message.records {
                    r.node.clone_from(&node);
                }
                self.store.relay_flow_records(&message.records).await?;
            }
        }
        let records_wanted = node.as_deref().is_some_and(|n| hub.records_wanted(n));
        Ok(Response::new(v1::ReportFlowsResponse { accepted, rate_limited, records_wanted }))
    }

    async fn report_capture(
        &self,
        request: Request<Streaming<v1::ReportCaptureRequest>>,
    ) -> Result<Response<v1::ReportCaptureResponse>, Status> {
        let Some((_, quota)) = &self.captures else {
            return Err(Status::unimplemented("this server does not take captures"));
        };
        let identity = tls::node_identity(&request, self.require_identity)?;
        let mut inbound = request.into_inner();
        let (mut node, mut capture, mut accepted) = (None, None, 0);
        while let Some(message) = inbound.message().await? {
            let node = stream_node(&mut node, &message.node_name, identity.as_deref())?;
            match capture {
                Some(id) if id != message.capture_id => {
                    return Err(ApiError::invalid("capture_id", format!("this stream reports capture {id}")).into());
                }
                Some(_) => {}
                None => capture = Some(message.capture_id),
            }
            let end = check_capture_report(&message)?;
            let progress = crate::store::Progress { seen: message.packets_seen, dropped: message.packets_dropped, end };
            accepted += self
                .store
                .report_capture(&node, message.capture_id, message.interface, message.packets, &progress, *quota)
                .await?;
        }
        Ok(Response::new(v1::ReportCaptureResponse { accepted }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(content: usize) -> Vec<(bool, usize)> {
        let bundle = v1::Bundle { content: vec![7; content].into(), ..Default::default() };
        messages(bundle, true)
            .into_iter()
            .map(|m| match m.message {
                Some(v1::sync_response::Message::Bundle(b)) => (false, b.content.len()),
                Some(v1::sync_response::Message::BundlePart(p)) => (p.bundle.is_some(), p.content.len()),
                _ => unreachable!("only bundles"),
            })
            .collect()
    }

    #[test]
    fn parts_split_at_the_part_size_with_no_empty_part() {
        const P: usize = PART_BYTES;
        assert_eq!(sizes(0), [(false, 0)], "whole");
        assert_eq!(sizes(P), [(false, P)], "whole");
        assert_eq!(sizes(P + 1), [(true, P), (false, 1)]);
        assert_eq!(sizes(2 * P), [(true, P), (false, P)]);
        let whole = messages(v1::Bundle { content: vec![1; 3 * P].into(), ..Default::default() }, false);
        assert_eq!(whole.len(), 1, "an agent without parts gets it whole");
    }
}
