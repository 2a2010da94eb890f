//! The reporter's backlog: decision events waiting for the server, bounded by a count and by
//! the bytes they occupy, dropping the oldest first.

use std::collections::VecDeque;

use palisade_proto::v1;

/// Bytes one heap allocation of `capacity` bytes takes from the allocator: glibc's malloc
/// rounds a request plus its 8-byte header up to 16 bytes, 32 at least.
fn allocation(capacity: usize) -> usize {
    if capacity == 0 { 0 } else { (capacity + 8).div_ceil(16).max(2) * 16 }
}

/// Memory one event occupies: the struct itself and each of its heap allocations.
pub fn event_bytes(e: &v1::DecisionEvent) -> usize {
    let strings = [&e.node, &e.policy, &e.rule_id, &e.hook, &e.comm, &e.address, &e.bundle_digest, &e.path];
    size_of::<v1::DecisionEvent>()
        + strings.iter().map(|s| allocation(s.capacity())).sum::<usize>()
        + allocation(e.access.capacity() * size_of::<i32>())
}

/// Events in arrival order, at most `max_events` of them and `max_bytes` of memory.
#[derive(Debug)]
pub struct Backlog {
    events: VecDeque<(v1::DecisionEvent, usize)>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

impl Backlog {
    /// An empty backlog with these bounds (each at least one event).
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        Self { events: VecDeque::new(), bytes: 0, max_events: max_events.max(1), max_bytes }
    }

    /// Adds `event`, dropping the oldest until it fits; returns how many were dropped. An event
    /// larger than the whole byte bound is itself dropped.
    pub fn push(&mut self, event: v1::DecisionEvent) -> u64 {
        let size = event_bytes(&event);
        if size > self.max_bytes {
            return 1;
        }
        let mut dropped = 0;
        while self.events.len() >= self.max_events || self.bytes + size > self.max_bytes {
            let Some((_, old)) = self.events.pop_front() else { break };
            self.bytes -= old;
            dropped += 1;
        }
        self.bytes += size;
        self.events.push_back((event, size));
        dropped
    }

    /// The oldest `n` events (copies: they stay until [`Self::sent`]).
    pub fn oldest(&self, n: usize) -> Vec<v1::DecisionEvent> {
        self.events.iter().take(n).map(|(e, _)| e.clone()).collect()
    }

    /// Forgets the oldest `n` events (the server has them).
    pub fn sent(&mut self, n: usize) {
        for (_, size) in self.events.drain(..n.min(self.events.len())) {
            self.bytes -= size;
        }
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Memory the waiting events occupy, as [`event_bytes`] counts it.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(rule: &str) -> v1::DecisionEvent {
        v1::DecisionEvent { rule_id: rule.to_owned(), bundle_digest: "d".repeat(64), ..Default::default() }
    }

    #[test]
    fn the_count_bound_drops_the_oldest_first() {
        let mut b = Backlog::new(2, usize::MAX);
        assert_eq!(b.push(event("a")) + b.push(event("b")), 0);
        assert_eq!(b.push(event("c")), 1);
        let rules: Vec<_> = b.oldest(10).into_iter().map(|e| e.rule_id).collect();
        assert_eq!(rules, ["b", "c"]);
    }

    #[test]
    fn the_byte_bound_holds_and_sent_events_free_their_bytes() {
        let one = event_bytes(&event("a"));
        let mut b = Backlog::new(usize::MAX, 3 * one + one / 2);
        let dropped: u64 = (0..10).map(|i| b.push(event(&format!("{i}")))).sum();
        assert_eq!((b.len(), dropped), (3, 7));
        assert!(b.bytes() <= 3 * one + one / 2, "{}", b.bytes());
        assert_eq!(b.oldest(1)[0].rule_id, "7");
        b.sent(2);
        assert_eq!((b.len(), b.bytes()), (1, one));
        b.sent(5);
        assert!(b.is_empty() && b.bytes() == 0);
    }

    #[test]
    fn an_event_larger_than_the_bound_is_dropped_alone() {
        let mut b = Backlog::new(10, 100);
        assert_eq!(b.push(event("big")), 1);
        assert!(b.is_empty());
    }

    #[test]
    fn event_bytes_counts_the_strings() {
        let small = event_bytes(&v1::DecisionEvent::default());
        assert_eq!(small, size_of::<v1::DecisionEvent>());
        let with_path = v1::DecisionEvent { path: "p".repeat(200), ..Default::default() };
        // 200 bytes + the 8-byte header, rounded up to 16.
        assert_eq!(event_bytes(&with_path) - small, 208);
    }
}
