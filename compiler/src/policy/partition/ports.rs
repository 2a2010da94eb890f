//! The port axis: each region's port table per protocol, swept or derived from its parent
//! region's. The sweep is the same whatever a cell holds; [`Cells`] says which ports a
//! member matches and what the cell where a set of members matches holds (decisions:
//! [`super::decisions`]).

use std::hash::{Hash as _, Hasher as _};

use super::{
    addresses::Member,
    cell::{CellValue, PortTable},
    hash::{FxHasher, HashMap},
};
use crate::policy::model::Protocol;

/// What the port sweep fills its tables with.
pub(super) trait Cells {
    /// The content of one cell.
    type Value: CellValue;

    /// Appends the port ranges `[first, end)` member `m` matches for `protocol` to `out`:
    /// none if it does not match the protocol, `[0, 65536)` if it matches every port.
    fn ports(&self, m: Member, protocol: Protocol, out: &mut Vec<(u32, u32)>);

    /// The cell where exactly `members` match, for `protocol` and `port`.
    fn value(&mut self, members: &[Member], protocol: Protocol, port: u16) -> Self::Value;
}

/// Builds port tables, interning identical ones.
pub(super) struct Tables<C: Cells> {
    /// Interval hash (plus a probe count on collisions) → table id.
    ids: HashMap<u64, u32>,
    list: Vec<PortTable<C::Value>>,
    /// Buffers reused across tables (compile time is mostly small allocations otherwise).
    scratch: Scratch<C::Value>,
    cells: C,
}

/// Reused buffers of [`Tables::table`].
#[derive(Default)]
struct Scratch<V> {
    events: Vec<(u32, bool, Member)>,
    /// Active members and how many of their ranges cover the sweep position, sorted.
    active: Vec<(Member, u32)>,
    here: Vec<Member>,
    intervals: Vec<(u32, V)>,
    own: Vec<(u32, u32)>,
    ranges: Vec<(u32, u32)>,
    cuts: Vec<u32>,
}

impl<C: Cells> Tables<C> {
    /// Tables filled by `cells`.
    pub(super) fn new(cells: C) -> Self {
        Self { ids: HashMap::default(), list: Vec::new(), scratch: Scratch::default(), cells }
    }

    /// The cells (to say which workload class comes next, or to encode values directly).
    pub(super) fn cells_mut(&mut self) -> &mut C {
        &mut self.cells
    }

    /// The tables built so far, by id.
    pub(super) fn list(&self) -> &[PortTable<C::Value>] {
        &self.list
    }

    /// The tables and the cells.
    pub(super) fn finish(self) -> (Vec<PortTable<C::Value>>, C) {
        (self.list, self.cells)
    }

    /// The port table of one region and protocol. With `derive = (parent table, own
    /// members)`, `members` are the parent region's plus `own`: ports no own member matches
    /// keep the parent's cells, so only the ports own members cover are filled anew.
    pub(super) fn table(&mut self, members: &[Member], protocol: Protocol, derive: Option<(u32, &[Member])>) -> u32 {
        if let Some((parent, own)) = derive
            && let Some(id) = self.derived(members, protocol, parent, own)
        {
            return id;
        }
        // Sweep the port axis: a member enters the active set where one of its ranges starts
        // and leaves after it ends, so each interval's cell looks only at the members
        // matching there, not at every member of the region.
        let mut s = std::mem::take(&mut self.scratch);
        s.events.clear();
        s.active.clear();
        for m in members {
            s.ranges.clear();
            self.cells.ports(*m, protocol, &mut s.ranges);
            s.events.extend(s.ranges.iter().flat_map(|r| [(r.0, true, *m), (r.1, false, *m)]));
        }
        s.events.sort_unstable();
        s.intervals.clear();
        let mut at = 0;
        let mut e = 0;
        while at < 65_536 {
            while e < s.events.len() && s.events[e].0 == at {
                let (_, enter, m) = s.events[e];
                match (s.active.binary_search_by_key(&m, |(a, _)| *a), enter) {
                    (Ok(i), true) => s.active[i].1 += 1,
                    (Err(i), true) => s.active.insert(i, (m, 1)),
                    (Ok(i), false) => {
                        s.active[i].1 -= 1;
                        if s.active[i].1 == 0 {
                            s.active.remove(i);
                        }
                    }
                    // Every exit follows its entry in the sorted events.
                    (Err(_), false) => {}
                }
                e += 1;
            }
            let next = s.events.get(e).map_or(65_536, |ev| ev.0);
            s.here.clear();
            s.here.extend(s.active.iter().map(|(m, _)| *m));
            let v = self.cells.value(&s.here, protocol, at as u16);
            if s.intervals.last().is_none_or(|(_, last)| *last != v) {
                s.intervals.push((at, v));
            }
            at = next;
        }
        let id = self.intern(&s.intervals);
        self.scratch = s;
        id
    }

    /// The id of the table with these intervals, recording it if it is new.
    fn intern(&mut self, intervals: &[(u32, C::Value)]) -> u32 {
        let mut key = {
            let mut h = FxHasher::default();
            intervals.hash(&mut h);
            h.finish()
        };
        loop {
            match self.ids.get(&key) {
                Some(&id) if self.list[id as usize].intervals == intervals => return id,
                Some(_) => key = key.wrapping_add(1),
                None => break,
            }
        }
        let id = self.list.len() as u32;
        self.emit(intervals);
        self.ids.insert(key, id);
        id
    }

    /// A region's table from its parent region's: outside the ports its own members match
    /// (`own`), the parent's matches and so its cells hold; inside, each piece between
    /// member boundaries is filled from every member. None when an own member matches every
    /// port (nothing to inherit).
    fn derived(&mut self, members: &[Member], protocol: Protocol, parent: u32, own: &[Member]) -> Option<u32> {
        let mut s = std::mem::take(&mut self.scratch);
        let Some(own) = own_ports(&self.cells, own, protocol, &mut s.own) else {
            self.scratch = s;
            return None;
        };
        let inside = |x: u32| {
            let i = own.partition_point(|r| r.1 <= x);
            own.get(i).is_some_and(|r| r.0 <= x)
        };
        // Where a cell may change: the parent's interval starts, the own ranges' ends, and
        // member range bounds inside the own ranges.
        s.cuts.clear();
        s.cuts.extend(self.list[parent as usize].intervals.iter().map(|iv| iv.0));
        s.cuts.extend(own.iter().flat_map(|r| [r.0, r.1]));
        s.ranges.clear();
        for m in members {
            self.cells.ports(*m, protocol, &mut s.ranges);
        }
        s.cuts.extend(s.ranges.iter().flat_map(|r| [r.0, r.1]).filter(|&x| inside(x)));
        s.cuts.sort_unstable();
        s.cuts.dedup();
        s.intervals.clear();
        let mut in_parent = 0;
        for &at in s.cuts.iter().filter(|&&x| x < 65_536) {
            let v = if inside(at) {
                self.cells.value(members, protocol, at as u16)
            } else {
                let intervals = &self.list[parent as usize].intervals;
                while intervals.get(in_parent + 1).is_some_and(|iv| iv.0 <= at) {
                    in_parent += 1;
                }
                intervals[in_parent].1
            };
            if s.intervals.last().is_none_or(|(_, last)| *last != v) {
                s.intervals.push((at, v));
            }
        }
        let id = self.intern(&s.intervals);
        self.scratch = s;
        Some(id)
    }

    /// Records a new table; its default is the value covering the most ports.
    fn emit(&mut self, intervals: &[(u32, C::Value)]) {
        // A table has few distinct values: a small vector beats a map.
        let mut span: Vec<(C::Value, u32)> = Vec::new();
        for (i, (start, v)) in intervals.iter().enumerate() {
            let end = intervals.get(i + 1).map_or(65_536, |(s, _)| *s);
            match span.iter_mut().find(|(w, _)| w == v) {
                Some((_, n)) => *n += end - start,
                None => span.push((*v, end - start)),
            }
        }
        let default = span.iter().max_by_key(|(v, n)| (*n, v.rank())).map_or_else(C::Value::default, |(v, _)| *v);
        self.list.push(PortTable { default, intervals: intervals.to_vec() });
    }
}

/// Index of a protocol's port table in a region (`Region::tables`): TCP 0, UDP 1.
pub(super) fn protocol_index(protocol: Protocol) -> usize {
    usize::from(protocol == Protocol::Udp)
}

/// The ports `own` members match for `protocol` as merged `[first, end)` ranges in `out`, or
/// None when one of them matches every port.
fn own_ports<'a, C: Cells>(
    cells: &C,
    own: &[Member],
    protocol: Protocol,
    out: &'a mut Vec<(u32, u32)>,
) -> Option<&'a [(u32, u32)]> {
    out.clear();
    for m in own {
        cells.ports(*m, protocol, out);
    }
    if out.contains(&(0, 65_536)) {
        return None;
    }
    out.sort_unstable();
    let mut merged = 0;
    for i in 0..out.len() {
        if merged > 0 && out[i].0 <= out[merged - 1].1 {
            out[merged - 1].1 = out[merged - 1].1.max(out[i].1);
        } else {
            out[merged] = out[i];
            merged += 1;
        }
    }
    out.truncate(merged);
    Some(out)
}
