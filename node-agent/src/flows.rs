//! Flow aggregation and reporting: closed TCP connections from the datapath are summed per
//! key and window (semantics §13), closed windows are sent to the server with
//! `ReportFlows`, and — only while the server says a live watcher wants them — the
//! per-connection records too, at most `--flow-record-rate` a second.
//!
//! Memory is bounded everywhere: a window holds at most `max_keys` keys (a connection with
//! a new key beyond it is dropped and counted), the backlog of aggregates waiting for the
//! server at most `backlog` (oldest dropped and counted), and waiting records at most one
//! second's worth of the record rate.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use palisade_contract::record::flow::flags;
use palisade_proto::v1::{self, agent_service_client::AgentServiceClient};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::{
    error_chain,
    events::{Flow, unix_timestamp},
    stats::EventCounters,
    sync::{Failover, OPEN_TIMEOUT, Server},
};

/// Most aggregates and records in one `ReportFlows` message (the server's limit).
pub const MAX_PER_MESSAGE: usize = 10_000;

/// How flows are aggregated and reported (`--flow-*` flags).
#[derive(Debug, Clone, Copy)]
pub struct FlowConfig {
    /// Aggregation window; windows are aligned to multiples of it in Unix time, so the
    /// windows of every node line up.
    pub window: Duration,
    /// Most keys one window holds.
    pub max_keys: usize,
    /// Most aggregates waiting for the server.
    pub backlog: usize,
    /// Most per-connection records sent to live watchers per second.
    pub record_rate: u32,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self { window: Duration::from_secs(10), max_keys: 10_000, backlog: 100_000, record_rate: 1_000 }
    }
}

/// What an aggregate sums over (the key; the ephemeral end's port is 0).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    policy: Arc<str>,
    rule_id: Arc<str>,
    cgroup_id: u64,
    inbound: bool,
    local: IpAddr,
    local_port: u16,
    peer: IpAddr,
    peer_port: u16,
}

/// Sums of one key.
#[derive(Debug, Clone, Default)]
struct Sums {
    revision: u64,
    connections: u64,
    bytes_sent: u64,
    bytes_received: u64,
    segments_sent: u64,
    segments_received: u64,
    retransmits: u64,
    srtt_min: u32,
    srtt_sum: u64,
    srtt_max: u32,
    tune_refused: u64,
}

/// The keys of the open window.
#[derive(Debug)]
pub struct Aggregator {
    window: Duration,
    max_keys: usize,
    /// Start of the open window, Unix time.
    start: Duration,
    keys: HashMap<Key, Sums>,
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

fn timestamp(t: Duration) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(t.subsec_nanos()).unwrap_or(0),
    }
}

impl Aggregator {
    /// An empty window containing `now` (Unix time).
    pub fn new(window: Duration, max_keys: usize, now: Duration) -> Self {
        let window = window.max(Duration::from_secs(1));
        Self { window, max_keys, start: Self::align(window, now), keys: HashMap::new() }
    }

    fn align(window: Duration, now: Duration) -> Duration {
        let w = window.as_nanos().max(1);
        Duration::from_nanos(u64::try_from(now.as_nanos() / w * w).unwrap_or(u64::MAX))
    }

    /// Adds a closed connection; false when it had a new key and the window was full.
    pub fn add(&mut self, flow: &Flow) -> bool {
        let r = &flow.record;
        let inbound = flow.inbound();
        let key = Key {
            // The generation's rule table made these once: a window of 10,000 keys shares a
            // few dozen strings.
            policy: flow.policy.clone(),
            rule_id: flow.rule_id.clone(),
            cgroup_id: r.cgroup_id,
            inbound,
            local: flow.local.to_canonical(),
            local_port: if inbound { r.local_port } else { 0 },
            peer: flow.peer.to_canonical(),
            peer_port: if inbound { 0 } else { r.peer_port },
        };
        let full = self.keys.len() >= self.max_keys;
        let sums = match self.keys.get_mut(&key) {
            Some(s) => s,
            None if full => return false,
            None => self.keys.entry(key).or_insert_with(|| Sums { srtt_min: u32::MAX, ..Sums::default() }),
        };
        sums.revision = sums.revision.max(flow.revision);
        sums.connections += 1;
        sums.bytes_sent = sums.bytes_sent.saturating_add(r.bytes_sent);
        sums.bytes_received = sums.bytes_received.saturating_add(r.bytes_received);
        sums.segments_sent += u64::from(r.segs_out);
        sums.segments_received += u64::from(r.segs_in);
        sums.retransmits += u64::from(r.retransmits);
        sums.srtt_min = sums.srtt_min.min(r.srtt_us);
        sums.srtt_sum += u64::from(r.srtt_us);
        sums.srtt_max = sums.srtt_max.max(r.srtt_us);
        sums.tune_refused += u64::from(r.flags & flags::TUNE_REFUSED != 0);
        true
    }

    /// Keys in the open window.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the open window is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// When the open window ends, Unix time.
    pub fn end(&self) -> Duration {
        self.start + self.window
    }

    /// If the open window has ended at `now`, its aggregates (and a new window is open).
    pub fn close_if_due(&mut self, now: Duration) -> Option<Vec<v1::FlowAggregate>> {
        (now >= self.end()).then(|| self.close(now))
    }

    /// Closes the open window now, whether or not it has ended (at shutdown), and opens the
    /// one containing `now`.
    pub fn close(&mut self, now: Duration) -> Vec<v1::FlowAggregate> {
        let start = timestamp(self.start);
        let end = timestamp(if now >= self.end() { self.end() } else { now.max(self.start) });
        let out = self
            .keys
            .drain()
            .map(|(k, s)| v1::FlowAggregate {
                policy: k.policy.to_string(),
                revision: s.revision,
                rule_id: k.rule_id.to_string(),
                cgroup_id: k.cgroup_id,
                direction: direction(k.inbound) as i32,
                local_address: k.local.to_string(),
                local_port: u32::from(k.local_port),
                peer_address: k.peer.to_string(),
                peer_port: u32::from(k.peer_port),
                connections: s.connections,
                bytes_sent: s.bytes_sent,
                bytes_received: s.bytes_received,
                segments_sent: s.segments_sent,
                segments_received: s.segments_received,
                retransmits: s.retransmits,
                srtt_us_min: s.srtt_min,
                srtt_us_avg: u32::try_from(s.srtt_sum / s.connections.max(1)).unwrap_or(u32::MAX),
                srtt_us_max: s.srtt_max,
                tune_refused: s.tune_refused,
                window_start: Some(start),
                window_end: Some(end),
                ..Default::default()
            })
            .collect();
        self.start = Self::align(self.window, now);
        out
    }
}

fn direction(inbound: bool) -> v1::FlowDirection {
    if inbound { v1::FlowDirection::Inbound } else { v1::FlowDirection::Outbound }
}

/// The record of one connection as live watchers get it.
pub fn record(flow: &Flow) -> v1::FlowRecord {
    let r = &flow.record;
    let duration_ns = i128::from(r.end_ns.saturating_sub(r.start_ns));
    v1::FlowRecord {
        policy: flow.policy.to_string(),
        revision: flow.revision,
        rule_id: flow.rule_id.to_string(),
        tune_rule: flow.tune.as_deref().unwrap_or_default().to_owned(),
        tune_refused: r.flags & flags::TUNE_REFUSED != 0,
        cgroup_id: r.cgroup_id,
        uid: r.uid,
        direction: direction(flow.inbound()) as i32,
        local_address: flow.local.to_canonical().to_string(),
        local_port: u32::from(r.local_port),
        peer_address: flow.peer.to_canonical().to_string(),
        peer_port: u32::from(r.peer_port),
        bytes_sent: r.bytes_sent,
        bytes_received: r.bytes_received,
        segments_sent: r.segs_out,
        segments_received: r.segs_in,
        retransmits: r.retransmits,
        srtt_us: r.srtt_us,
        rtt_min_us: r.rtt_min_us,
        start: Some(unix_timestamp(flow.end_unix_ns - duration_ns)),
        end: Some(unix_timestamp(flow.end_unix_ns)),
        ..Default::default()
    }
}

/// A token bucket of `rate` per second, as large as one second.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: std::time::Instant,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        Self { rate: f64::from(rate), tokens: f64::from(rate), at: std::time::Instant::now() }
    }

    fn take(&mut self) -> bool {
        let now = std::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The reporter's state between sends.
struct Pending {
    backlog: VecDeque<v1::FlowAggregate>,
    records: Vec<v1::FlowRecord>,
    limit: usize,
}

impl Pending {
    /// Queues closed aggregates, dropping the oldest beyond the limit; how many it dropped.
    fn queue(&mut self, aggregates: Vec<v1::FlowAggregate>) -> u64 {
        self.backlog.extend(aggregates);
        let excess = self.backlog.len().saturating_sub(self.limit);
        self.backlog.drain(..excess);
        excess as u64
    }
}

/// Aggregates the flows the datapath hands over and reports them until shutdown; on
/// shutdown closes the open window and makes one last attempt to send what is pending.
pub async fn run_flow_reporter(
    server: Server,
    node_name: String,
    config: FlowConfig,
    mut flows: mpsc::Receiver<Vec<Flow>>,
    stats: Arc<EventCounters>,
    shutdown: CancellationToken,
) {
    let mut aggregator = Aggregator::new(config.window, config.max_keys, unix_now());
    let mut pending =
        Pending { backlog: VecDeque::new(), records: Vec::new(), limit: config.backlog.max(MAX_PER_MESSAGE) };
    let mut bucket = Bucket::new(config.record_rate);
    let mut wanted = false;
    let mut client: Option<AgentServiceClient<Channel>> = None;
    let mut failover = Failover::new(server.urls.len(), Failover::first_for(&node_name));
    let mut retry_at = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            () = shutdown.cancelled() => true,
            batch = flows.recv() => {
                let Some(batch) = batch else { return };
                let mut dropped = 0;
                for flow in &batch {
                    if !aggregator.add(flow) {
                        dropped += 1;
                    }
                    if wanted && pending.records.len() < MAX_PER_MESSAGE && bucket.take() {
                        pending.records.push(record(flow));
                    } else if wanted {
                        stats.flow_records_dropped(1);
                    }
                }
                stats.flows_key_dropped(dropped);
                continue;
            }
            _ = tick.tick() => false,
        };
        let now = unix_now();
        let closed = if stopping { Some(aggregator.close(now)) } else { aggregator.close_if_due(now) };
        if let Some(closed) = closed {
            stats.flows_backlog_full(pending.queue(closed));
        }
        stats.set_flows_pending(pending.backlog.len() as u64);
        let due = !pending.backlog.is_empty() || !pending.records.is_empty();
        if due && (stopping || tokio::time::Instant::now() >= retry_at) {
            let send = report(&server, &node_name, &mut client, &mut failover, &mut pending, &stats);
            let result = if stopping {
                tokio::time::timeout(Duration::from_secs(2), send).await.unwrap_or(Err(()))
            } else {
                tokio::select! {
                    () = shutdown.cancelled() => Err(()),
                    r = send => r,
                }
            };
            if let Ok((still_wanted, pause)) = result {
                wanted = still_wanted;
                retry_at = tokio::time::Instant::now() + pause;
            } else {
                client = None;
                retry_at = tokio::time::Instant::now() + failover.failed();
            }
            stats.set_flows_pending(pending.backlog.len() as u64);
        }
        if stopping || shutdown.is_cancelled() {
            return;
        }
    }
}

/// One `ReportFlows` call with the oldest pending aggregates and every waiting record.
/// Answers whether records are still wanted, and how long to wait before the next call.
async fn report(
    server: &Server,
    node_name: &str,
    client: &mut Option<AgentServiceClient<Channel>>,
    failover: &mut Failover,
    pending: &mut Pending,
    stats: &EventCounters,
) -> Result<(bool, Duration), ()> {
    if client.is_none() {
        match tokio::time::timeout(OPEN_TIMEOUT, server.connect(failover.current())).await {
            Ok(Ok(channel)) => *client = Some(AgentServiceClient::new(channel)),
            Ok(Err(error)) => {
                tracing::debug!(%error, "flow reporter cannot connect");
                return Err(());
            }
            Err(_) => return Err(()),
        }
    }
    let Some(c) = client else { return Err(()) };
    let n = pending.backlog.len().min(MAX_PER_MESSAGE);
    let records = std::mem::take(&mut pending.records);
    let sent_records = records.len() as u64;
    let request = v1::ReportFlowsRequest {
        node_name: node_name.to_owned(),
        aggregates: pending.backlog.iter().take(n).cloned().collect(),
        records,
    };
    match c.report_flows(tokio_stream::iter(vec![request])).await {
        Ok(response) => {
            let response = response.into_inner();
            // The server stores a prefix; what its rate limit refused stays and goes again.
            let stored = usize::try_from(response.accepted).unwrap_or(n).min(n);
            pending.backlog.drain(..stored);
            stats.flows_reported(stored as u64);
            failover.connected();
            let pause = if response.rate_limited > 0 { Duration::from_secs(1) } else { Duration::ZERO };
            Ok((response.records_wanted, pause))
        }
        Err(failure) if failure.code() == tonic::Code::InvalidArgument => {
            // The server will never take these (a bug on one side): sending them again would
            // block every later window. Their connections are counted as dropped.
            let lost: u64 = pending.backlog.drain(..n).map(|a| a.connections).sum();
            stats.flows_key_dropped(lost);
            stats.flow_records_dropped(sent_records);
            tracing::error!(
                error = error_chain(&failure),
                lost,
                "the server refused flow aggregates as invalid; dropped"
            );
            Ok((false, Duration::from_secs(1)))
        }
        Err(failure) => {
            // Records are live only: not kept for a later call.
            stats.flow_records_dropped(sent_records);
            tracing::warn!(
                error = error_chain(&failure),
                pending = pending.backlog.len(),
                "reporting flows failed; will retry"
            );
            Err(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use palisade_contract::record::FlowRecord;

    use super::*;

    fn flow(inbound: bool, peer: IpAddr, peer_port: u16, local_port: u16, bytes: u64, srtt: u32) -> Flow {
        Flow {
            policy: "web".into(),
            revision: 3,
            rule_id: "peers".into(),
            tune: None,
            record: FlowRecord {
                cgroup_id: 77,
                flags: if inbound { flags::INBOUND } else { 0 },
                peer_port,
                local_port,
                bytes_sent: bytes,
                bytes_received: 2 * bytes,
                segs_out: 1,
                segs_in: 2,
                srtt_us: srtt,
                ..FlowRecord::default()
            },
            peer,
            local: IpAddr::V4(Ipv4Addr::LOCALHOST),
            end_unix_ns: 0,
        }
    }

    #[test]
    fn sums_per_key_with_the_ephemeral_port_zeroed() {
        let secs = Duration::from_secs;
        let mut a = Aggregator::new(secs(10), 100, secs(1_000_003));
        let peer = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
        // Two outbound connections from different ephemeral ports to one service: one key.
        assert!(a.add(&flow(false, peer, 443, 40_001, 100, 50)));
        assert!(a.add(&flow(false, peer, 443, 40_002, 300, 150)));
        // Inbound from two client ports to local port 8080: one key. A v4-mapped peer is
        // the same peer.
        assert!(a.add(&flow(true, peer, 51_000, 8080, 10, 20)));
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped());
        assert!(a.add(&flow(true, mapped, 51_001, 8080, 10, 20)));
        assert_eq!(a.len(), 2);
        assert!(a.close_if_due(secs(1_000_009)).is_none(), "window 1,000,000–1,000,010 still open");
        let mut out = a.close_if_due(secs(1_000_010)).expect("window over");
        out.sort_by_key(|f| f.direction);
        let (o, i) = (&out[0], &out[1]);
        assert_eq!((o.direction, o.peer_port, o.local_port), (v1::FlowDirection::Outbound as i32, 443, 0));
        assert_eq!((o.connections, o.bytes_sent, o.bytes_received), (2, 400, 800));
        assert_eq!((o.srtt_us_min, o.srtt_us_avg, o.srtt_us_max), (50, 100, 150));
        assert_eq!((i.direction, i.peer_port, i.local_port), (v1::FlowDirection::Inbound as i32, 0, 8080));
        assert_eq!((i.connections, i.peer_address.as_str()), (2, "10.1.2.3"));
        assert_eq!(o.window_start.map(|t| t.seconds), Some(1_000_000));
        assert_eq!(o.window_end.map(|t| t.seconds), Some(1_000_010));
        assert!(a.is_empty());
        assert_eq!(a.end(), secs(1_000_020));
    }

    #[test]
    fn a_full_window_refuses_new_keys_but_sums_known_ones() {
        let mut a = Aggregator::new(Duration::from_secs(10), 2, Duration::ZERO);
        let p = |n: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n));
        assert!(a.add(&flow(false, p(1), 80, 1, 1, 1)));
        assert!(a.add(&flow(false, p(2), 80, 1, 1, 1)));
        assert!(!a.add(&flow(false, p(3), 80, 1, 1, 1)), "third key refused");
        assert!(a.add(&flow(false, p(1), 80, 2, 1, 1)), "known key still counted");
        let out = a.close(Duration::from_secs(3));
        assert_eq!(out.iter().map(|f| f.connections).sum::<u64>(), 3);
        assert_eq!(out[0].window_end.map(|t| t.seconds), Some(3), "closed early at shutdown");
    }

    #[test]
    fn the_backlog_drops_the_oldest_beyond_its_limit() {
        let mut p = Pending { backlog: VecDeque::new(), records: Vec::new(), limit: 3 };
        let agg = |n| v1::FlowAggregate { connections: n, ..Default::default() };
        assert_eq!(p.queue(vec![agg(1), agg(2)]), 0);
        assert_eq!(p.queue(vec![agg(3), agg(4)]), 1);
        assert_eq!(p.backlog.iter().map(|a| a.connections).collect::<Vec<_>>(), [2, 3, 4]);
    }

    #[test]
    fn records_carry_both_ends_and_the_tune_rule() {
        let mut f = flow(false, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)), 443, 40_000, 5, 7);
        f.tune = Some("wan/cubic".into());
        f.record.flags |= flags::TUNE_REFUSED;
        f.record.start_ns = 1_000;
        f.record.end_ns = 3_000;
        f.end_unix_ns = 10_000_000_000;
        let r = record(&f);
        assert_eq!((r.local_port, r.peer_port, r.tune_rule.as_str(), r.tune_refused), (40_000, 443, "wan/cubic", true));
        assert_eq!(r.start.map(|t| t.nanos), Some(999_998_000));
    }
}
