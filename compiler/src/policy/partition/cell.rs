//! What a cell of the partition holds. The address and port walk is the same whatever the
//! cell means: a decision today ([`Value`]), a tuning profile for sock_ops next. A cell type
//! only says how to break ties when choosing a port table's default.

use std::{fmt::Debug, hash::Hash};

/// A cell's content: interned by equality, stored by id in the layout's value array.
pub trait CellValue: Copy + Eq + Hash + Debug + Default {
    /// Among values covering equally many ports of a table, the one with the highest rank
    /// becomes the table's default (so the choice does not depend on hash order).
    fn rank(&self) -> impl Ord;
}

/// A decision as the kernel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Value {
    /// Index into [`super::Plan::rules`] (0 when there is no event).
    pub rule: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
}

impl CellValue for Value {
    fn rank(&self) -> impl Ord {
        // Fewer flags first, then the earlier rule.
        std::cmp::Reverse((self.flags, self.rule))
    }
}

/// The port axis of one region and protocol: intervals with constant cell values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortTable<V = Value> {
    /// The value covering the most ports (what the table's empty cells mean).
    pub default: V,
    /// `(first port, value)`, sorted, starting at 0; each interval runs to the next start
    /// (the last to 65535), and adjacent intervals differ.
    pub intervals: Vec<(u32, V)>,
}
