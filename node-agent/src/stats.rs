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
        }
    }
}
