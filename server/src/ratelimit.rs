//! Per-node event rate limits: a token bucket per reporting node, shared by every
//! `ReportEvents` stream of this replica, so one node flooding events cannot fill the
//! database or crowd out the others. What is refused is counted on the node.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

/// How fast one node may report events.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EventRate {
    /// Sustained events per second per node; 0 turns the limit off.
    pub per_second: u32,
    /// Events a node may report at once after being quiet (the bucket's size), so an agent
    /// delivering its backlog after an outage is not cut short.
    pub burst: u32,
}

impl EventRate {
    /// 2,000 events per second per node, bursts of 100,000 (the agent's default backlog).
    pub const DEFAULT: Self = Self { per_second: 2_000, burst: 100_000 };
    /// Flow aggregates: 2,000 per second per node (an agent sends one per key and 10 s
    /// window, so 20,000 distinct keys per window), bursts of 100,000.
    pub const FLOWS: Self = Self { per_second: 2_000, burst: 100_000 };
    /// No limit.
    pub const UNLIMITED: Self = Self { per_second: 0, burst: 0 };
}

/// Most nodes tracked at once; beyond it, nodes whose buckets have refilled are forgotten
/// (forgetting a full bucket changes nothing), and if that is not enough, all are.
const MAX_TRACKED: usize = 65_536;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every node reporting to this replica.
#[derive(Clone, Debug)]
pub struct EventLimiter {
    rate: EventRate,
    buckets: Arc<Mutex<HashMap<String, Bucket>>>,
}

impl EventLimiter {
    /// Limits every node to `rate`.
    pub fn new(rate: EventRate) -> Self {
        Self { rate, buckets: Arc::default() }
    }

    /// How many of `wanted` events `node` may report now (the rest are to be dropped).
    pub fn admit(&self, node: &str, wanted: usize) -> usize {
        self.admit_at(node, wanted, Instant::now())
    }

    fn admit_at(&self, node: &str, wanted: usize, now: Instant) -> usize {
        if self.rate.per_second == 0 {
            return wanted;
        }
        let burst = f64::from(self.rate.burst.max(1));
        let refill = |b: &Bucket| {
            (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * f64::from(self.rate.per_second)).min(burst)
        };
        let Ok(mut buckets) = self.buckets.lock() else { return wanted };
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(node) {
            buckets.retain(|_, b| refill(b) < burst);
            if buckets.len() >= MAX_TRACKED {
                // More distinct reporters than any fleet this replica serves: start over
                // rather than grow (each node gets a fresh burst once).
                buckets.clear();
            }
        }
        let bucket = buckets.entry(node.to_owned()).or_insert(Bucket { tokens: burst, at: now });
        bucket.tokens = refill(bucket);
        bucket.at = now;
        // Whole events only; tokens never exceed the burst, a u32.
        let admitted = (bucket.tokens.floor() as u32).min(u32::try_from(wanted).unwrap_or(u32::MAX));
        bucket.tokens -= f64::from(admitted);
        admitted as usize
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_node_gets_its_burst_then_its_rate_and_others_are_unaffected() {
        let limiter = EventLimiter::new(EventRate { per_second: 100, burst: 1_000 });
        let t0 = Instant::now();
        assert_eq!(limiter.admit_at("a", 600, t0), 600);
        assert_eq!(limiter.admit_at("a", 600, t0), 400, "the rest of the burst");
        assert_eq!(limiter.admit_at("a", 10, t0), 0, "empty");
        assert_eq!(limiter.admit_at("b", 1_000, t0), 1_000, "another node has its own bucket");
        assert_eq!(limiter.admit_at("a", 1_000, t0 + Duration::from_millis(500)), 50, "100/s for 0.5 s");
        assert_eq!(limiter.admit_at("a", 5_000, t0 + Duration::from_hours(1)), 1_000, "refills up to the burst only");
    }

    #[test]
    fn rate_zero_is_no_limit() {
        let limiter = EventLimiter::new(EventRate::UNLIMITED);
        assert_eq!(limiter.admit("a", usize::MAX), usize::MAX);
    }

    #[test]
    fn the_table_of_nodes_stays_bounded() {
        let limiter = EventLimiter::new(EventRate { per_second: 1_000_000, burst: 10 });
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED {
            limiter.admit_at(&format!("n{i}"), 1, t0);
        }
        // One second later every bucket has refilled; the next new node forgets them.
        limiter.admit_at("late", 1, t0 + Duration::from_secs(1));
        assert_eq!(limiter.buckets.lock().expect("lock").len(), 1, "full buckets are forgotten");
        // Buckets still draining are kept until the table is full, then the table restarts.
        for i in 0..MAX_TRACKED + 10 {
            limiter.admit_at(&format!("m{i}"), 1, t0 + Duration::from_secs(1));
        }
        assert!(limiter.buckets.lock().expect("lock").len() <= MAX_TRACKED);
    }
}
