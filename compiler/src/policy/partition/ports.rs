//! The port axis: each region's port table per protocol, swept or derived from its parent
//! region's, each interval decided by the reference evaluator's `decide`.

use std::hash::{Hash as _, Hasher as _};

use super::{
    FLAG_AUDIT, FLAG_DENY, FLAG_EVENT, FLAG_WOULD_DENY, RuleRef,
    addresses::Member,
    cell::{PortTable, Value},
    hash::{FxHasher, HashMap},
};
use crate::policy::{
    eval::{Decision, Matches, ReportKind, Verdict, decide},
    model::{Operation, PolicySet, Protocol},
};

/// Encodes a decision.
fn value(decision: &Decision, rules: &mut Vec<RuleRef>, rule_ids: &mut HashMap<RuleRef, u32>) -> Value {
    let mut flags = if decision.verdict == Verdict::Deny { FLAG_DENY } else { 0 };
    let mut rule = 0;
    if let Some(report) = decision.report {
        flags |= FLAG_EVENT;
        match report.kind {
            ReportKind::Deny => {}
            ReportKind::WouldDeny => flags |= FLAG_AUDIT | FLAG_WOULD_DENY,
            ReportKind::Audit => flags |= FLAG_AUDIT,
        }
        let r = RuleRef { policy: report.policy, rule: report.rule };
        rule = *rule_ids.entry(r).or_insert_with(|| {
            rules.push(r);
            (rules.len() - 1) as u32
        });
    }
    Value { rule, flags }
}

/// Builds port tables, interning identical ones.
#[derive(Default)]
pub(super) struct Tables {
    /// Interval hash (plus a probe count on collisions) → table id.
    ids: HashMap<u64, u32>,
    list: Vec<PortTable>,
    rules: Vec<RuleRef>,
    rule_ids: HashMap<RuleRef, u32>,
    /// Buffers reused across tables (compile time is mostly small allocations otherwise).
    scratch: Scratch,
    /// The rules' protocols and ports.
    index: RuleIndex,
}

/// Reused buffers of [`Tables::table`].
#[derive(Default)]
struct Scratch {
    events: Vec<(u32, bool, Member)>,
    /// Active members and how many of their ranges cover the sweep position, sorted.
    active: Vec<(Member, u32)>,
    here: Vec<Member>,
    intervals: Vec<(u32, Value)>,
    matches: Vec<(usize, Matches)>,
    own: Vec<(u32, u32)>,
    ranges: Vec<(u32, u32)>,
    cuts: Vec<u32>,
}

impl Tables {
    /// Tables for `op`'s rules; rule index 0 is reserved so that "no event" never aliases a
    /// real rule.
    pub(super) fn new(set: &PolicySet, op: Operation) -> Self {
        let mut tables = Self { index: RuleIndex::new(set, op), ..Self::default() };
        tables.rules.push(RuleRef { policy: usize::MAX, rule: crate::policy::eval::RuleName::Default });
        tables
    }

    /// Encodes a decision, naming its rule in the rule table.
    pub(super) fn encode(&mut self, decision: &Decision) -> Value {
        value(decision, &mut self.rules, &mut self.rule_ids)
    }

    /// The tables built so far, by id.
    pub(super) fn list(&self) -> &[PortTable] {
        &self.list
    }

    /// The tables and the rule table.
    pub(super) fn finish(self) -> (Vec<PortTable>, Vec<RuleRef>) {
        (self.list, self.rules)
    }

    /// The port table of one region and protocol. `initial` is [`initial_matches`] of the
    /// region's workload class. With `derive = (parent table, own members)`, `members` are the
    /// parent region's plus `own`: ports no own member matches keep the parent's decision, so
    /// only the ports own members cover are decided anew.
    pub(super) fn table(
        &mut self,
        set: &PolicySet,
        op: Operation,
        initial: &[(usize, Matches)],
        members: &[Member],
        protocol: Protocol,
        derive: Option<(u32, &[Member])>,
    ) -> u32 {
        if let Some((parent, own)) = derive
            && let Some(id) = self.derived(set, op, initial, members, protocol, parent, own)
        {
            return id;
        }
        // Sweep the port axis: a member enters the active set where one of its ranges starts
        // and leaves after it ends, so each interval's decision looks only at the members
        // matching there, not at every member of the region.
        let mut s = std::mem::take(&mut self.scratch);
        s.events.clear();
        s.active.clear();
        for m in members {
            s.ranges.clear();
            self.index.ports(set, *m, protocol, &mut s.ranges);
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
            let decision = cell(set, op, &self.index, initial, &s.here, protocol, at as u16, &mut s.matches);
            let v = value(&decision, &mut self.rules, &mut self.rule_ids);
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
    fn intern(&mut self, intervals: &[(u32, Value)]) -> u32 {
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
    /// (`own`), the parent's matches and so its decisions hold; inside, each piece between
    /// member boundaries is decided from every member. None when an own member matches every
    /// port (nothing to inherit).
    #[allow(clippy::too_many_arguments, reason = "the inputs of one table, passed through from `table`")]
    fn derived(
        &mut self,
        set: &PolicySet,
        op: Operation,
        initial: &[(usize, Matches)],
        members: &[Member],
        protocol: Protocol,
        parent: u32,
        own: &[Member],
    ) -> Option<u32> {
        let mut s = std::mem::take(&mut self.scratch);
        let Some(own) = own_ports(set, &self.index, own, protocol, &mut s.own) else {
            self.scratch = s;
            return None;
        };
        let inside = |x: u32| {
            let i = own.partition_point(|r| r.1 <= x);
            own.get(i).is_some_and(|r| r.0 <= x)
        };
        // Where a decision may change: the parent's interval starts, the own ranges' ends,
        // and member range bounds inside the own ranges.
        s.cuts.clear();
        s.cuts.extend(self.list[parent as usize].intervals.iter().map(|iv| iv.0));
        s.cuts.extend(own.iter().flat_map(|r| [r.0, r.1]));
        s.ranges.clear();
        for m in members {
            self.index.ports(set, *m, protocol, &mut s.ranges);
        }
        s.cuts.extend(s.ranges.iter().flat_map(|r| [r.0, r.1]).filter(|&x| inside(x)));
        s.cuts.sort_unstable();
        s.cuts.dedup();
        s.intervals.clear();
        let mut in_parent = 0;
        for &at in s.cuts.iter().filter(|&&x| x < 65_536) {
            let v = if inside(at) {
                let decision = cell(set, op, &self.index, initial, members, protocol, at as u16, &mut s.matches);
                value(&decision, &mut self.rules, &mut self.rule_ids)
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

    /// Records a new table; its default is the decision covering the most ports.
    fn emit(&mut self, intervals: &[(u32, Value)]) {
        // A table has few distinct values: a small vector beats a map.
        let mut span: Vec<(Value, u32)> = Vec::new();
        for (i, (start, v)) in intervals.iter().enumerate() {
            let end = intervals.get(i + 1).map_or(65_536, |(s, _)| *s);
            match span.iter_mut().find(|(w, _)| w == v) {
                Some((_, n)) => *n += end - start,
                None => span.push((*v, end - start)),
            }
        }
        let default = span
            .iter()
            .max_by_key(|(v, n)| (*n, std::cmp::Reverse((v.flags, v.rule))))
            .map_or(Value { rule: 0, flags: 0 }, |(v, _)| *v);
        self.list.push(PortTable { default, intervals: intervals.to_vec() });
    }
}

/// Index of a protocol's port table in a region (`Region::tables`): TCP 0, UDP 1.
pub(super) fn protocol_index(protocol: Protocol) -> usize {
    usize::from(protocol == Protocol::Udp)
}

/// A protocol's bit in [`RuleIndex`]'s protocol bits.
fn protocol_bit(protocol: Protocol) -> u8 {
    1 << protocol_index(protocol)
}

/// Every rule's protocols and port ranges in flat arrays, so the per-table work reads them
/// without walking policies and sections.
#[derive(Default)]
pub(super) struct RuleIndex {
    /// Per policy, the index of its first rule in `rules`.
    base: Vec<usize>,
    /// Per rule: protocol bits (1 TCP, 2 UDP) and its `[start, end)` in `ranges`.
    rules: Vec<(u8, u32, u32)>,
    /// Per rule: its action.
    actions: Vec<crate::policy::model::Action>,
    /// Port ranges `[first, end)`; a rule without ports has `[0, 65536)`.
    ranges: Vec<(u32, u32)>,
}

impl RuleIndex {
    fn new(set: &PolicySet, op: Operation) -> Self {
        let mut index = Self::default();
        for policy in &set.policies {
            index.base.push(index.rules.len());
            for rule in policy.section(op).map_or(&[][..], |s| s.rules.as_slice()) {
                let bits = [Protocol::Tcp, Protocol::Udp]
                    .into_iter()
                    .filter(|p| rule.matches_protocol(*p))
                    .fold(0, |b, p| b | protocol_bit(p));
                let start = index.ranges.len() as u32;
                if rule.ports.is_empty() {
                    index.ranges.push((0, 65_536));
                }
                index.ranges.extend(rule.ports.iter().map(|r| (u32::from(r.first), u32::from(r.last) + 1)));
                index.rules.push((bits, start, index.ranges.len() as u32));
                index.actions.push(rule.action);
            }
        }
        index
    }

    /// The action of rule `r` of policy `p` if it matches `protocol` and `port`.
    fn matching(&self, p: usize, r: usize, protocol: Protocol, port: u16) -> Option<crate::policy::model::Action> {
        let i = self.base[p] + r;
        let (bits, start, end) = self.rules[i];
        let port = u32::from(port);
        (bits & protocol_bit(protocol) != 0
            && self.ranges[start as usize..end as usize].iter().any(|&(first, end)| first <= port && port < end))
        .then_some(self.actions[i])
    }

    /// Appends the port ranges `[first, end)` member `m` matches for `protocol` to `out`:
    /// none if it does not match the protocol, `[0, 65536)` if it matches every port
    /// (explicit ranges start at 1).
    fn ports(&self, set: &PolicySet, m: Member, protocol: Protocol, out: &mut Vec<(u32, u32)>) {
        match m {
            Member::Rule(p, r) => {
                let (bits, start, end) = self.rules[self.base[p] + r];
                if bits & protocol_bit(protocol) != 0 {
                    out.extend_from_slice(&self.ranges[start as usize..end as usize]);
                }
            }
            Member::Failsafe(i) => match set.failsafe[i].port {
                None => out.push((0, 65_536)),
                Some(port) => out.push((u32::from(port), u32::from(port) + 1)),
            },
        }
    }
}

/// The ports `own` members match for `protocol` as merged `[first, end)` ranges in `out`, or
/// None when one of them matches every port.
fn own_ports<'a>(
    set: &PolicySet,
    index: &RuleIndex,
    own: &[Member],
    protocol: Protocol,
    out: &'a mut Vec<(u32, u32)>,
) -> Option<&'a [(u32, u32)]> {
    out.clear();
    for m in own {
        index.ports(set, *m, protocol, out);
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

/// The policies whose outcome can matter before any rule matches: those whose default says
/// something (deny or audit). Only these, plus policies with a match, affect a decision, which
/// keeps a cell's cost independent of the policy count.
pub(super) fn initial_matches(set: &PolicySet, op: Operation, applying: &[usize]) -> Vec<(usize, Matches)> {
    applying
        .iter()
        .filter(|&&p| set.policies[p].default_of(op).is_some_and(|d| d != crate::policy::model::Default::Allow))
        .map(|&p| (p, Matches::default()))
        .collect()
}

/// Records that rule `r` of policy `p` matched, keeping `matches` in policy order (a small
/// vector, usually one or two entries, beats a map here).
pub(super) fn record(matches: &mut Vec<(usize, Matches)>, p: usize, r: usize, action: crate::policy::model::Action) {
    let at = match matches.binary_search_by_key(&p, |(q, _)| *q) {
        Ok(at) => at,
        Err(at) => {
            matches.insert(at, (p, Matches::default()));
            at
        }
    };
    matches[at].1.add(r, action);
}

/// The decision for one cell: a protocol, a port, and the members matching its region.
#[allow(clippy::too_many_arguments, reason = "the inputs of one cell")]
fn cell(
    set: &PolicySet,
    op: Operation,
    index: &RuleIndex,
    initial: &[(usize, Matches)],
    members: &[Member],
    protocol: Protocol,
    port: u16,
    matches: &mut Vec<(usize, Matches)>,
) -> Decision {
    matches.clear();
    matches.extend_from_slice(initial);
    for m in members {
        match *m {
            Member::Failsafe(i) => {
                if set.failsafe[i].port.is_none_or(|p| p == port) {
                    return Decision::ALLOW;
                }
            }
            Member::Rule(p, r) => {
                if let Some(action) = index.matching(p, r, protocol, port) {
                    record(matches, p, r, action);
                }
            }
        }
    }
    decide(set, op, matches.iter().copied())
}
