//! What a cell of the partition holds: a decision, and the port axis of decisions.

/// A decision as the kernel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Value {
    /// Index into [`Plan::rules`] (0 when there is no event).
    pub rule: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
}

/// The port axis of one region and protocol: intervals with constant decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortTable {
    /// The decision covering the most ports (what the table's empty cells mean).
    pub default: Value,
    /// `(first port, decision)`, sorted, starting at 0; each interval runs to the next start
    /// (the last to 65535), and adjacent intervals differ.
    pub intervals: Vec<(u32, Value)>,
}
