//! The agent's event counters (`palisade.v1.EventStats`): written by the datapath thread
//! and the reporter, sent to the server in every hello and heartbeat, shown by `GetNode`.

use std::sync::atomic::{AtomicU64, Ordering};

use palisade_proto::v1;

/// Counters since the agent started.
#[derive(Debug, Default)]
pub struct EventCounters {
    queue_full: AtomicU64,
    backlog_full: AtomicU64,
    undecodable: AtomicU64,
    pending: AtomicU64,
    pending_bytes: AtomicU64,
    delivered: AtomicU64,
    ring_full: AtomicU64,
    flows_recorded: AtomicU64,
    flows_dropped: AtomicU64,
    flows_untracked: AtomicU64,
    tune_refused: AtomicU64,
    /// Flows dropped after the datapath: the queue to the reporter, a full window.
    flows_agent_dropped: AtomicU64,
    flows_reported: AtomicU64,
    flows_backlog_full: AtomicU64,
    flow_records_dropped: AtomicU64,
    flows_pending: AtomicU64,
}

impl EventCounters {
    /// `n` events the datapath thread could not queue for the reporter.
    pub fn queue_full(&self, n: u64) {
        self.queue_full.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` events dropped from the full backlog.
    pub fn backlog_full(&self, n: u64) {
        self.backlog_full.fetch_add(n, Ordering::Relaxed);
    }

    /// The datapath's count of records that did not decode.
    pub fn set_undecodable(&self, n: u64) {
        self.undecodable.store(n, Ordering::Relaxed);
    }

    /// The datapath's count of records the ring buffer had no room for.
    pub fn set_ring_full(&self, n: u64) {
        self.ring_full.store(n, Ordering::Relaxed);
    }

    /// Events waiting to be reported now, and the memory they occupy.
    pub fn set_pending(&self, n: usize, bytes: usize) {
        self.pending.store(n as u64, Ordering::Relaxed);
        self.pending_bytes.store(bytes as u64, Ordering::Relaxed);
    }

    /// `n` flow records decoded from the kernel.
    pub fn flows_recorded(&self, n: u64) {
        self.flows_recorded.fetch_add(n, Ordering::Relaxed);
    }

    /// The datapath's flow counters: records dropped in the agent, connections the kernel
    /// could not track, tuning settings the kernel refused.
    pub fn set_flows(&self, dropped: u64, untracked: u64, tune_refused: u64) {
        self.flows_dropped.store(dropped, Ordering::Relaxed);
        self.flows_untracked.store(untracked, Ordering::Relaxed);
        self.tune_refused.store(tune_refused, Ordering::Relaxed);
    }

    /// `n` flow records dropped on their way to aggregation (a full queue or window).
    pub fn flows_key_dropped(&self, n: u64) {
        self.flows_agent_dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` flow aggregates the server stored.
    pub fn flows_reported(&self, n: u64) {
        self.flows_reported.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` flow aggregates dropped from the full backlog.
    pub fn flows_backlog_full(&self, n: u64) {
        self.flows_backlog_full.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` per-connection records a watcher wanted that were not sent.
    pub fn flow_records_dropped(&self, n: u64) {
        self.flow_records_dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Flow aggregates waiting to be reported now.
    pub fn set_flows_pending(&self, n: u64) {
        self.flows_pending.store(n, Ordering::Relaxed);
    }

    /// `n` events the server acknowledged.
    pub fn delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters as the protocol carries them.
    pub fn snapshot(&self) -> v1::EventStats {
        v1::EventStats {
            queue_full: self.queue_full.load(Ordering::Relaxed),
            backlog_full: self.backlog_full.load(Ordering::Relaxed),
            undecodable: self.undecodable.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            ring_full: self.ring_full.load(Ordering::Relaxed),
            pending_bytes: self.pending_bytes.load(Ordering::Relaxed),
            flows_recorded: self.flows_recorded.load(Ordering::Relaxed),
            flows_dropped: self.flows_dropped.load(Ordering::Relaxed)
                + self.flows_agent_dropped.load(Ordering::Relaxed),
            flows_untracked: self.flows_untracked.load(Ordering::Relaxed),
            tune_refused: self.tune_refused.load(Ordering::Relaxed),
            flows_reported: self.flows_reported.load(Ordering::Relaxed),
            flows_backlog_full: self.flows_backlog_full.load(Ordering::Relaxed),
            flow_records_dropped: self.flow_records_dropped.load(Ordering::Relaxed),
            flows_pending: self.flows_pending.load(Ordering::Relaxed),
        }
    }
}
