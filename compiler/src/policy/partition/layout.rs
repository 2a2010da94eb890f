//! The kernel-side layout of a network partition: fixed-stride array walks the verifier
//! inlines, instead of LPM tries whose walk grows with the entry count (docs/decision-core.md).
//!
//! - **Addresses**: a multibit trie of 256-cell nodes, one destination byte per step (at most
//!   4 steps for IPv4 and for IPv4-mapped IPv6 destinations, which walk their IPv4 part, 16
//!   for other IPv6 destinations). A cell carries the region of the longest prefix ending at
//!   that byte (0: keep the one found so far) and a child: another node, or a *tail* when
//!   exactly one longer prefix lies below (one masked compare instead of a chain of nodes).
//!   Only non-empty cells are stored, so the bundle grows with prefixes, not with nodes × 256.
//! - **Regions**: `(TCP port table, its default value, UDP port table, its default value)`.
//! - **Ports**: per table, 256 cells indexed by the port's high byte; a cell is 0 (the table's
//!   default), a value id, or a *port node* for a 256-port chunk with inner boundaries: up to
//!   seven boundaries (low bytes) and eight slots, each slot again 0, a value id or a node for
//!   that slot's part of the chunk. Eight slots a level cover 256 intervals in three levels.
//! - **Values**: the cells' contents by value id (ids start at 1): `(rule, flags)` for
//!   decisions. The walk does not depend on what a value is ([`CellValue`]).

use std::net::IpAddr;

use super::{
    cell::{CellValue, PortTable, Value},
    hash::HashMap,
};

/// The address spaces the programs walk separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 destinations.
    V4,
    /// IPv6 destinations outside `::ffff:0:0/96`.
    V6,
    /// IPv4-mapped IPv6 destinations (`::ffff:a.b.c.d`), walked by their IPv4 part (§3.4):
    /// IPv4 elements match them, and so do IPv6 elements containing them.
    Mapped,
}

/// Child flag of an address cell: the child is a tail index.
pub const TAIL: u32 = 1 << 31;
/// Flag of a port cell or slot: it points at a port node.
pub const PORT_NODE: u32 = 1 << 31;
/// Cells per address node (one byte).
pub const NODE_CELLS: u32 = 256;
/// Cells per port table (the high byte of the port).
pub const TABLE_CELLS: u32 = 256;
/// Slots per port node.
pub const PORT_SLOTS: usize = 8;
/// Most port-node levels below a table cell.
pub const PORT_LEVELS: usize = 3;

/// A port node: the chunk's low byte `lo` selects slot `j`, the first with `lo < bounds[j]`
/// (slot 7 when there is none). Unused bounds are 255 and their slots repeat the last used
/// one, so the scan needs no count. `bounds[7]` is padding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortNode {
    /// Boundaries: low bytes where the next slot starts.
    pub bounds: [u8; PORT_SLOTS],
    /// 0 (the table's default), a value id, or `PORT_NODE | node id`.
    pub slots: [u32; PORT_SLOTS],
}

/// One longer prefix below an address cell: the destination matches when
/// `destination & mask == addr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tail {
    /// Prefix bytes (network order; IPv4 in the first four).
    pub addr: [u8; 16],
    /// Mask bytes.
    pub mask: [u8; 16],
    /// Region id on a match.
    pub region: u32,
}

/// A non-empty address cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cell {
    /// `node × 256 + byte`.
    pub index: u32,
    /// Region id of the longest prefix ending here (0: none).
    pub region: u32,
    /// Child node id, or `TAIL | tail id`, or 0.
    pub child: u32,
}

/// The arrays of one network operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetLayout<V = Value> {
    /// Non-empty address cells, sorted by index.
    pub cells: Vec<Cell>,
    /// Address nodes allocated (ids `0..nodes`; the roots are fixed, see [`root`]).
    pub nodes: u32,
    /// Tails by id.
    pub tails: Vec<Tail>,
    /// Regions by id (`[tcp table, tcp default value, udp table, udp default value]`); id 0 is
    /// unused.
    pub regions: Vec<[u32; 4]>,
    /// Non-zero port-table cells `(table × 256 + high byte, cell)`, sorted.
    pub ports: Vec<(u32, u32)>,
    /// Port tables.
    pub tables: u32,
    /// Port nodes by id; id 0 is unused.
    pub port_nodes: Vec<PortNode>,
    /// Values by id; id 0 is unused.
    pub values: Vec<V>,
}

impl<V: CellValue> Default for NetLayout<V> {
    fn default() -> Self {
        Self {
            cells: Vec::new(),
            nodes: 1,
            tails: Vec::new(),
            regions: vec![[0; 4]],
            ports: Vec::new(),
            tables: 0,
            port_nodes: vec![PortNode::default()],
            values: vec![V::default()],
        }
    }
}

/// The root node id, which is also the region id of the `/0` prefix, of workload `w` (≥ 1):
/// `3w − 2` for IPv4, `3w − 1` for IPv6, `3w` for IPv4-mapped destinations.
pub fn root(w: u32, family: Family) -> u32 {
    3 * w
        - match family {
            Family::V4 => 2,
            Family::V6 => 1,
            Family::Mapped => 0,
        }
}

/// `(start, value id)` pairs.
type Spans = Vec<(u32, u32)>;

/// A prefix to place: network bytes, length in bits, region id.
type Prefix = ([u8; 16], u8, u32);

/// Builds a layout.
pub struct Builder<V = Value> {
    out: NetLayout<V>,
    region_ids: HashMap<[u32; 4], u32>,
    /// Value ids.
    value_ids: HashMap<V, u32>,
    table_defaults: Vec<u32>,
    /// Reused by [`Builder::table`].
    buffers: (Spans, Spans),
}

impl<V: CellValue> Builder<V> {
    /// A builder for `workloads` workload classes (ids `1..=workloads`) and the port tables.
    pub fn new(workloads: u32, tables: &[PortTable<V>]) -> Self {
        let mut b = Self {
            out: NetLayout::default(),
            region_ids: HashMap::default(),
            value_ids: HashMap::default(),
            table_defaults: Vec::new(),
            buffers: (Vec::new(), Vec::new()),
        };
        b.out.nodes = 3 * workloads + 1;
        b.out.regions = vec![[0; 4]; 3 * workloads as usize + 1];
        b.out.tables = tables.len() as u32;
        for (t, table) in tables.iter().enumerate() {
            let default = b.value_id(table.default);
            b.table_defaults.push(default);
            b.table(t as u32, table);
        }
        b
    }

    fn value_id(&mut self, v: V) -> u32 {
        let next = self.out.values.len() as u32;
        *self.value_ids.entry(v).or_insert_with(|| {
            self.out.values.push(v);
            next
        })
    }

    fn region(&self, tables: [u32; 2]) -> [u32; 4] {
        [tables[0], self.table_defaults[tables[0] as usize], tables[1], self.table_defaults[tables[1] as usize]]
    }

    /// Places workload `w`'s regions of one family: `(network bytes, length, port tables)`,
    /// the `/0` prefix among them.
    pub fn addresses(&mut self, w: u32, family: Family, regions: impl Iterator<Item = ([u8; 16], u8, [u32; 2])>) {
        let root = root(w, family);
        let mut prefixes: Vec<Prefix> = Vec::new();
        for (addr, len, tables) in regions {
            let region = self.region(tables);
            if len == 0 {
                self.out.regions[root as usize] = region;
                continue;
            }
            let next = self.out.regions.len() as u32;
            let id = *self.region_ids.entry(region).or_insert_with(|| {
                self.out.regions.push(region);
                next
            });
            prefixes.push((addr, len, id));
        }
        prefixes.sort_unstable();
        self.node(root, 0, &prefixes);
    }

    /// Gives workload `w`'s IPv4-mapped root the IPv4 root's cells and region: the same trie
    /// below it.
    pub fn share_mapped(&mut self, w: u32) {
        let (v4, mapped) = (root(w, Family::V4), root(w, Family::Mapped));
        self.out.regions[mapped as usize] = self.out.regions[v4 as usize];
        let cells: Vec<Cell> = self
            .out
            .cells
            .iter()
            .filter(|c| c.index / NODE_CELLS == v4)
            .map(|c| Cell { index: mapped * NODE_CELLS + c.index % NODE_CELLS, ..*c })
            .collect();
        self.out.cells.extend(cells);
    }

    /// Fills node `id` at byte `depth` from `prefixes`: sorted, sharing the first `depth`
    /// bytes; those of `8 × depth` bits or fewer belong to ancestors and are skipped.
    fn node(&mut self, id: u32, depth: usize, prefixes: &[Prefix]) {
        let mut cells = [(0_u32, 0_u32); NODE_CELLS as usize];
        let (start, end) = (8 * depth as u32, 8 * (depth as u32 + 1));
        let mut at = 0;
        while at < prefixes.len() {
            let byte = prefixes[at].0[depth];
            let run = prefixes[at..].iter().take_while(|p| p.0[depth] == byte).count();
            let group = &prefixes[at..at + run];
            let mut deeper = group.iter().filter(|p| u32::from(p.1) > end);
            let (first_deeper, more) = (deeper.next(), deeper.next().is_some());
            // Prefixes ending in this byte cover 2^(end − len) cells. Sorted order puts a
            // prefix before the longer ones inside it, so the longest is written last.
            for &(addr, len, region) in group.iter().filter(|p| u32::from(p.1) > start && u32::from(p.1) <= end) {
                let span = 1_usize << (end - u32::from(len));
                let first = usize::from(addr[depth]) & !(span - 1);
                for c in &mut cells[first..first + span] {
                    c.0 = region;
                }
            }
            if more {
                let child = self.out.nodes;
                self.out.nodes += 1;
                self.node(child, depth + 1, group);
                cells[usize::from(byte)].1 = child;
            } else if let Some(&(addr, len, region)) = first_deeper {
                self.out.tails.push(Tail { addr, mask: mask(len), region });
                cells[usize::from(byte)].1 = TAIL | (self.out.tails.len() as u32 - 1);
            }
            at += run;
        }
        let base = id * NODE_CELLS;
        self.out.cells.extend(
            cells.iter().enumerate().filter(|(_, c)| **c != (0, 0)).map(|(i, &(region, child))| Cell {
                index: base + i as u32,
                region,
                child,
            }),
        );
    }

    /// The cells of port table `t`: intervals whose value is the default stay 0.
    fn table(&mut self, t: u32, table: &PortTable<V>) {
        let (mut intervals, mut inner) = std::mem::take(&mut self.buffers);
        intervals.clear();
        for &(start, v) in &table.intervals {
            let id = if v == table.default { 0 } else { self.value_id(v) };
            intervals.push((start, id));
        }
        let end = |i: usize| intervals.get(i + 1).map_or(65_536, |iv: &(u32, u32)| iv.0);
        let base = t * TABLE_CELLS;
        // Chunks wholly inside one interval.
        for (i, &(start, id)) in intervals.iter().enumerate().filter(|(_, iv)| iv.1 != 0) {
            self.out.ports.extend((start.div_ceil(256)..end(i) / 256).map(|c| (base + c, id)));
        }
        // Chunks with inner boundaries: a node over the intervals overlapping the chunk.
        let mut i = 1;
        while i < intervals.len() {
            let start = intervals[i].0;
            if start % 256 == 0 {
                i += 1;
                continue;
            }
            let (lo, hi) = (start / 256 * 256, start / 256 * 256 + 256);
            let to = intervals.partition_point(|iv| iv.0 < hi);
            inner.clear();
            inner.extend(intervals[i - 1..to].iter().map(|&(s, id)| (s.max(lo) - lo, id)));
            let cell = self.port_node(&inner);
            self.out.ports.push((base + start / 256, cell));
            i = to;
        }
        self.buffers = (intervals, inner);
    }

    /// The cell for part of a chunk: `intervals` are `(low byte where it starts, value id)`,
    /// the first starting at the part's start.
    fn port_node(&mut self, intervals: &[(u32, u32)]) -> u32 {
        if let [(_, id)] = intervals {
            return *id;
        }
        let per = intervals.len().div_ceil(PORT_SLOTS);
        let mut node = PortNode { bounds: [255; PORT_SLOTS], slots: [0; PORT_SLOTS] };
        let mut used = 0;
        for (j, group) in intervals.chunks(per).enumerate() {
            node.slots[j] = self.port_node(group);
            if j > 0 {
                node.bounds[j - 1] = group[0].0 as u8;
            }
            used = j + 1;
        }
        let last = node.slots[used - 1];
        node.slots[used..].fill(last);
        self.out.port_nodes.push(node);
        PORT_NODE | (self.out.port_nodes.len() as u32 - 1)
    }

    /// The finished layout.
    pub fn finish(mut self) -> NetLayout<V> {
        self.out.cells.sort_unstable();
        self.out.ports.sort_unstable();
        self.out
    }
}

/// An IPv4 address in the 16-byte form prefixes and tails use (its bytes first).
pub fn v4_bytes(a: std::net::Ipv4Addr) -> [u8; 16] {
    let mut b = [0; 16];
    b[..4].copy_from_slice(&a.octets());
    b
}

/// The mask of a `len`-bit prefix.
fn mask(len: u8) -> [u8; 16] {
    let mut m = [0_u8; 16];
    for (i, byte) in m.iter_mut().enumerate() {
        let bits = u32::from(len).saturating_sub(8 * i as u32).min(8);
        *byte = if bits == 0 { 0 } else { 0xff << (8 - bits) };
    }
    m
}

fn find(cells: &[(u32, u32)], index: u32) -> u32 {
    cells.binary_search_by_key(&index, |c| c.0).map_or(0, |i| cells[i].1)
}

impl<V: CellValue> NetLayout<V> {
    /// The region of `addr` for workload `w` (≥ 1) and how many address steps (node cells,
    /// plus one for a tail) the programs take to find it.
    pub fn region(&self, w: u32, addr: IpAddr) -> Option<(u32, usize)> {
        let (bytes, width, family) = match addr {
            IpAddr::V4(a) => (v4_bytes(a), 4, Family::V4),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(m) => (v4_bytes(m), 4, Family::Mapped),
                None => (a.octets(), 16, Family::V6),
            },
        };
        let mut node = root(w, family);
        let mut best = node;
        let mut steps = 0;
        for (depth, &byte) in bytes.iter().enumerate().take(width) {
            steps += 1;
            let index = node * NODE_CELLS + u32::from(byte);
            let cell = self.cells.binary_search_by_key(&index, |c| c.index).map(|i| self.cells[i]);
            let Ok(cell) = cell else { break };
            if cell.region != 0 {
                best = cell.region;
            }
            // The programs read no child at the last byte.
            if cell.child == 0 || depth + 1 == width {
                break;
            }
            if cell.child & TAIL != 0 {
                steps += 1;
                let tail = self.tails.get((cell.child & !TAIL) as usize)?;
                if bytes.iter().zip(tail.mask).map(|(b, m)| b & m).eq(tail.addr.iter().copied()) {
                    best = tail.region;
                }
                break;
            }
            node = cell.child;
        }
        Some((best, steps))
    }

    /// Looks a decision up step by step exactly as the generated programs do (for tests and
    /// tools): workload `w` (≥ 1), destination, port, UDP or TCP.
    pub fn lookup(&self, w: u32, addr: IpAddr, port: u16, udp: bool) -> Option<V> {
        let (best, _) = self.region(w, addr)?;
        let region = self.regions.get(best as usize)?;
        let (table, default) = if udp { (region[2], region[3]) } else { (region[0], region[1]) };
        let [high, low] = port.to_be_bytes();
        let mut cell = find(&self.ports, table * TABLE_CELLS + u32::from(high));
        for _ in 0..PORT_LEVELS {
            if cell & PORT_NODE == 0 {
                break;
            }
            let node = self.port_nodes.get((cell & !PORT_NODE) as usize)?;
            let slot = node.bounds[..PORT_SLOTS - 1].iter().position(|&b| low < b).unwrap_or(PORT_SLOTS - 1);
            cell = node.slots[slot];
        }
        let id = if cell == 0 { default } else { cell };
        self.values.get(id as usize).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_covers_exactly_the_prefix_bits() {
        assert_eq!(mask(0), [0; 16]);
        assert_eq!(&mask(12)[..3], &[0xff, 0xf0, 0]);
        assert_eq!(mask(128), [0xff; 16]);
    }
}
