//! The decision partition: everything the kernel programs look up, computed at compile time.
//!
//! Per connect the programs do a constant number of lookups, whatever the rule count
//! (DESIGN.md §4):
//! 1. *workload class* `W`: the deepest selected cgroup among the task's ancestors (one
//!    `bpf_get_current_ancestor_cgroup_id` + hash lookup per distinct selector depth), then
//!    `(S, uid)` and `(S, any uid)` in a hash map;
//! 2. *address region*: the region of the destination's longest matching prefix, per
//!    workload class and address family — every address whose longest matching prefix is the
//!    same has the same set of matching rules;
//! 3. *decision*: the region's port table per protocol, cut into intervals of constant
//!    decision.
//!
//! [`crate::policy::partition::layout`] turns regions and tables into the arrays the programs walk.
//!
//! Each cell's decision comes from [`crate::policy::eval::decide`], the same code the reference
//! evaluator uses, so the bytecode can only differ from the specification through matching,
//! which the differential tests check.

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{BuildHasherDefault, Hash as _, Hasher},
    net::IpAddr,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::policy::{
    eval::{Decision, Matches, ReportKind, RuleName, Verdict, combine, decide},
    model::{ACCESS_READ, ACCESS_WRITE, MAX_PATH, Operation, PolicySet, Protocol},
};

pub mod layout;

use layout::NetLayout;

/// uid value meaning "any uid not listed" in the uid map (`(uid_t)-1` is not a user).
pub const ANY_UID: u32 = u32::MAX;
pub use palisade_contract::record::flags::{
    AUDIT as FLAG_AUDIT, DENY as FLAG_DENY, EVENT as FLAG_EVENT, WOULD_DENY as FLAG_WOULD_DENY,
};

/// A selected cgroup the agent resolves to a cgroup id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupClass {
    /// Path relative to the cgroup2 root, e.g. `/demo/api`.
    pub path: String,
    /// Depth (number of components): the ancestor level to look up.
    pub level: u32,
    /// Class id `S` (≥ 1; 0 is "no selected ancestor").
    pub class: u32,
}

/// A rule as events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleRef {
    /// Policy index in the set.
    pub policy: usize,
    /// Rule or default.
    pub rule: RuleName,
}

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

/// An address prefix of one workload class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region<N> {
    /// Workload class.
    pub workload: u32,
    /// Prefix.
    pub net: N,
    /// Port table per protocol (TCP, UDP).
    pub tables: [u32; 2],
}

/// A path prefix of one workload class (`exec`, `files`): paths whose longest matching
/// prefix this is get `values`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathEntry {
    /// Workload class.
    pub workload: u32,
    /// Key bytes: the start of a path, or a whole path followed by its NUL.
    pub prefix: Vec<u8>,
    /// The decision: one for `exec`; for `files` one per access set, indexed by
    /// `ACCESS_* bits − 1` (read, write, read+write).
    pub values: Vec<Value>,
}

/// The whole partition for one operation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The operation (section) this partition decides.
    pub operation: Operation,
    /// Selected cgroups.
    pub cgroups: Vec<CgroupClass>,
    /// Distinct levels of `cgroups`, deepest first.
    pub levels: Vec<u32>,
    /// `(S, uid) → W` entries (uid [`ANY_UID`] for the fallback). Empty in direct mode.
    pub workloads: Vec<((u32, u32), u32)>,
    /// Direct mode: no policy restricts uids, so the cgroups map holds `W` itself (in
    /// [`CgroupClass::class`]) and tasks in no selected cgroup have [`Plan::root_workload`];
    /// the programs then skip the uid helper and the workloads map.
    pub direct: bool,
    /// `W` of tasks in no selected cgroup, in direct mode (0: no policy applies).
    pub root_workload: u32,
    /// IPv4 regions.
    pub regions4: Vec<Region<Ipv4Net>>,
    /// IPv6 regions (for destinations outside `::ffff:0:0/96`).
    pub regions6: Vec<Region<Ipv6Net>>,
    /// Regions of IPv4-mapped destinations by their IPv4 part, for the workload classes not
    /// in [`Plan::mapped_shared`].
    pub regions_mapped: Vec<Region<Ipv4Net>>,
    /// Workload classes whose IPv4-mapped destinations have exactly the IPv4 regions (no
    /// IPv6 element reaches them), so they walk the IPv4 trie.
    pub mapped_shared: Vec<u32>,
    /// Port tables by id.
    pub tables: Vec<PortTable>,
    /// What the network programs look up (empty for `exec` and `files`).
    pub layout: NetLayout,
    /// Path prefixes (`exec`, `files`), sorted by workload and bytes.
    pub paths: Vec<PathEntry>,
    /// Rules named by events, index = `Value::rule`.
    pub rules: Vec<RuleRef>,
}

/// A fast non-cryptographic hasher for the compiler's internal tables (keys are our own
/// small integers and vectors of them, never attacker-chosen strings), in the style of
/// `rustc`'s `FxHasher`: `SipHash` was a tenth of compile time.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0_u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A hash map with [`FxHasher`].
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FxHasher>>;

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

/// A rule (or failsafe) that matches some address region, in set order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Member {
    /// `(policy, rule)`.
    Rule(usize, usize),
    /// Failsafe index.
    Failsafe(usize),
}

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

/// `::ffff:0:0/96`, the IPv4-mapped addresses.
fn mapped_space() -> Ipv6Net {
    Ipv6Net::new(std::net::Ipv4Addr::UNSPECIFIED.to_ipv6_mapped(), 96).unwrap_or_default()
}

/// An element as a prefix of `family`'s space, or None when it matches no destination there.
fn in_family(net: IpNet, family: Family) -> Option<IpNet> {
    let space = mapped_space();
    match (net.trunc(), family) {
        (net @ IpNet::V4(_), Family::V4 | Family::Mapped) => Some(net),
        // An IPv4 destination never matches an IPv6 element, nor an IPv6 one an IPv4 element
        // unless it is IPv4-mapped (§3.4).
        (IpNet::V6(_), Family::V4) | (IpNet::V4(_), Family::V6) => None,
        (IpNet::V6(n), Family::V6) => (!space.contains(&n)).then_some(IpNet::V6(n)),
        (IpNet::V6(n), Family::Mapped) => {
            if n.contains(&space) {
                Some(IpNet::V4(Ipv4Net::default()))
            } else if space.contains(&n) {
                let v4 = n.network().to_ipv4_mapped().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
                Ipv4Net::new(v4, n.prefix_len() - 96).ok().map(IpNet::V4)
            } else {
                None
            }
        }
    }
}

/// Groups every member by the exact prefix it was written with, as a prefix of `family`'s
/// space; returns the prefixes sorted so that every prefix comes after the prefixes
/// containing it.
fn members_by_prefix(
    set: &PolicySet,
    op: Operation,
    applying: &[usize],
    family: Family,
) -> (PrefixMembers, Vec<Member>) {
    let mut by_prefix: BTreeMap<(IpNet, u8), Vec<Member>> = BTreeMap::new();
    let mut anywhere = Vec::new();
    let root: IpNet = if family == Family::V6 { Ipv6Net::default().into() } else { Ipv4Net::default().into() };
    by_prefix.insert((root, 0), Vec::new());
    let mut add = |net: IpNet, member: Member| {
        if let Some(net) = in_family(net, family) {
            by_prefix.entry((net, net.prefix_len())).or_default().push(member);
        }
    };
    for &p in applying {
        let Some(section) = set.policies[p].section(op) else { continue };
        for (r, rule) in section.rules.iter().enumerate() {
            if rule.nets.is_empty() {
                anywhere.push(Member::Rule(p, r));
            }
            for net in &rule.nets {
                add(*net, Member::Rule(p, r));
            }
        }
    }
    // The failsafe protects connections (§8); binds have none.
    for (i, f) in set.failsafe.iter().enumerate().filter(|_| op == Operation::Connect) {
        match f.net {
            None => anywhere.push(Member::Failsafe(i)),
            Some(net) => add(net, Member::Failsafe(i)),
        }
    }
    (by_prefix, anywhere)
}

/// Members keyed by the prefix they were written with.
type PrefixMembers = BTreeMap<(IpNet, u8), Vec<Member>>;

fn contains(outer: &IpNet, inner: &IpNet) -> bool {
    outer.prefix_len() <= inner.prefix_len() && outer.contains(&inner.network())
}

/// Builds port tables, interning identical ones.
#[derive(Default)]
struct Tables {
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
    /// The port table of one region and protocol. `initial` is [`initial_matches`] of the
    /// region's workload class. With `derive = (parent table, own members)`, `members` are the
    /// parent region's plus `own`: ports no own member matches keep the parent's decision, so
    /// only the ports own members cover are decided anew.
    fn table(
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
fn protocol_index(protocol: Protocol) -> usize {
    usize::from(protocol == Protocol::Udp)
}

/// A protocol's bit in [`RuleIndex`]'s protocol bits.
fn protocol_bit(protocol: Protocol) -> u8 {
    1 << protocol_index(protocol)
}

/// Every rule's protocols and port ranges in flat arrays, so the per-table work reads them
/// without walking policies and sections.
#[derive(Default)]
struct RuleIndex {
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
fn initial_matches(set: &PolicySet, op: Operation, applying: &[usize]) -> Vec<(usize, Matches)> {
    applying
        .iter()
        .filter(|&&p| set.policies[p].default_of(op).is_some_and(|d| d != crate::policy::model::Default::Allow))
        .map(|&p| (p, Matches::default()))
        .collect()
}

/// Records that rule `r` of policy `p` matched, keeping `matches` in policy order (a small
/// vector, usually one or two entries, beats a map here).
fn record(matches: &mut Vec<(usize, Matches)>, p: usize, r: usize, action: crate::policy::model::Action) {
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

/// The decision for paths matched by `members` (`(policy, rule)` pairs) for one access bit.
fn path_cell(set: &PolicySet, op: Operation, applying: &[usize], members: &[(usize, usize)], access: u8) -> Decision {
    let mut matches = initial_matches(set, op, applying);
    for &(p, r) in members {
        let rule = &set.policies[p].path_section(op).expect("member policies have a section").rules[r];
        if rule.access & access != 0 {
            record(&mut matches, p, r, rule.action);
        }
    }
    decide(set, op, matches)
}

/// `(policy, rule)` pairs.
type RuleMembers = Vec<(usize, usize)>;

/// The path entries of one workload class: every pattern's key prefixes, each with the
/// decision of the rules whose prefixes it extends (the chain of its LPM ancestors).
fn path_entries(
    set: &PolicySet,
    op: Operation,
    applying: &[usize],
    workload: u32,
    tables: &mut Tables,
) -> Vec<PathEntry> {
    let mut by_prefix: BTreeMap<Vec<u8>, RuleMembers> = BTreeMap::new();
    by_prefix.insert(Vec::new(), Vec::new());
    for &p in applying {
        let Some(section) = set.policies[p].path_section(op) else { continue };
        for (r, rule) in section.rules.iter().enumerate() {
            if rule.paths.is_empty() {
                by_prefix.entry(Vec::new()).or_default().push((p, r));
            }
            for prefix in rule.paths.iter().flat_map(crate::policy::model::PathPattern::key_prefixes) {
                by_prefix.entry(prefix).or_default().push((p, r));
            }
        }
    }
    let mut out = Vec::with_capacity(by_prefix.len());
    // Byte-wise order visits every prefix after the prefixes it extends.
    let mut chain: Vec<(Vec<u8>, RuleMembers)> = Vec::new();
    for (prefix, own) in by_prefix {
        while chain.last().is_some_and(|(outer, _)| !prefix.starts_with(outer)) {
            chain.pop();
        }
        let mut members = chain.last().map(|(_, m)| m.clone()).unwrap_or_default();
        members.extend(own);
        members.sort_unstable();
        members.dedup();
        let mut encode = |d: &Decision| value(d, &mut tables.rules, &mut tables.rule_ids);
        let values = if op == Operation::Files {
            let read = path_cell(set, op, applying, &members, ACCESS_READ);
            let write = path_cell(set, op, applying, &members, ACCESS_WRITE);
            vec![encode(&read), encode(&write), encode(&combine(&[read, write]))]
        } else {
            vec![encode(&path_cell(set, op, applying, &members, ACCESS_READ))]
        };
        out.push(PathEntry { workload, prefix: prefix.clone(), values });
        chain.push((prefix, members));
    }
    out
}

/// Selected cgroups, `(S, uid) → W` entries, and the applying policies of each `W`.
type Workloads = (Vec<CgroupClass>, Vec<((u32, u32), u32)>, Vec<Vec<usize>>);

/// Workload classes: `S` per selected cgroup, `W` per distinct set of applying policies.
fn workloads(set: &PolicySet, op: Operation) -> Workloads {
    let sectioned: Vec<usize> =
        set.policies.iter().enumerate().filter(|(_, p)| p.default_of(op).is_some()).map(|(i, _)| i).collect();
    let paths: BTreeSet<&Vec<String>> =
        sectioned.iter().map(|&i| &set.policies[i].cgroup).filter(|c| !c.is_empty()).collect();
    let cgroups: Vec<CgroupClass> = paths
        .iter()
        .enumerate()
        .map(|(i, c)| CgroupClass { path: format!("/{}", c.join("/")), level: c.len() as u32, class: i as u32 + 1 })
        .collect();
    let uids: BTreeSet<u32> = sectioned.iter().filter_map(|&i| set.policies[i].uid).collect();
    let mut classes: Vec<Vec<usize>> = vec![Vec::new()];
    let mut class_ids: HashMap<Vec<usize>, u32> = HashMap::default();
    class_ids.insert(Vec::new(), 0);
    let mut entries = Vec::new();
    let empty = Vec::new();
    let selected: Vec<(u32, &Vec<String>)> =
        std::iter::once((0, &empty)).chain(paths.iter().enumerate().map(|(i, c)| (i as u32 + 1, *c))).collect();
    for (s, path) in selected {
        let mut intern = |policies: Vec<usize>| {
            let next = classes.len() as u32;
            *class_ids.entry(policies.clone()).or_insert_with(|| {
                classes.push(policies);
                next
            })
        };
        let applying = |uid: Option<u32>| -> Vec<usize> {
            sectioned
                .iter()
                .copied()
                .filter(|&i| {
                    let p = &set.policies[i];
                    path.starts_with(&p.cgroup) && (p.uid.is_none() || p.uid == uid)
                })
                .collect()
        };
        let any = intern(applying(None));
        if any != 0 {
            entries.push(((s, ANY_UID), any));
        }
        for &uid in &uids {
            let w = intern(applying(Some(uid)));
            if w != any {
                entries.push(((s, uid), w));
            }
        }
    }
    (cgroups, entries, classes)
}

/// Computes the partition of a policy set for one operation.
pub fn plan(set: &PolicySet, op: Operation) -> Plan {
    let (cgroups, workload_entries, classes) = workloads(set, op);
    let mut levels: Vec<u32> = cgroups.iter().map(|c| c.level).collect::<BTreeSet<_>>().into_iter().collect();
    levels.reverse();
    let mut tables = Tables { index: RuleIndex::new(set, op), ..Tables::default() };
    // Rule index 0 is reserved so that "no event" never aliases a real rule.
    tables.rules.push(RuleRef { policy: usize::MAX, rule: RuleName::Default });
    let mut plan = Plan { operation: op, cgroups, levels, workloads: workload_entries, ..Plan::default() };
    if plan.workloads.iter().all(|((_, uid), _)| *uid == ANY_UID) {
        let any = |s: u32| plan.workloads.iter().find(|((c, _), _)| *c == s).map_or(0, |(_, w)| *w);
        plan.root_workload = any(0);
        let classes: Vec<u32> = plan.cgroups.iter().map(|c| any(c.class)).collect();
        for (c, w) in plan.cgroups.iter_mut().zip(classes) {
            c.class = w;
        }
        plan.workloads.clear();
        plan.direct = true;
    }
    for (w, applying) in classes.iter().enumerate().skip(1) {
        if op.is_path() {
            plan.paths.extend(path_entries(set, op, applying, w as u32, &mut tables));
            continue;
        }
        let initial = initial_matches(set, op, applying);
        let mut v4_prefixes = PrefixMembers::new();
        for family in [Family::V4, Family::V6, Family::Mapped] {
            let (by_prefix, anywhere) = members_by_prefix(set, op, applying, family);
            if family == Family::Mapped && by_prefix == v4_prefixes {
                // No IPv6 element reaches IPv4-mapped destinations: they walk the IPv4 trie.
                plan.mapped_shared.push(w as u32);
                continue;
            }
            // Prefixes sorted by (network, length) visit containers before contents; a stack
            // of the chain of containing prefixes gives each prefix its members.
            let mut chain: Vec<(IpNet, Vec<Member>, [u32; 2])> = Vec::new();
            for ((net, _), own) in &by_prefix {
                while chain.last().is_some_and(|(outer, _, _)| !contains(outer, net)) {
                    chain.pop();
                }
                let parent = chain.last().map(|(_, _, t)| *t);
                let members = merged(chain.last().map_or(&anywhere, |(_, m, _)| m), own);
                // Identical tables (e.g. of regions with identical members) are interned.
                let t = [Protocol::Tcp, Protocol::Udp].map(|protocol| {
                    let derive = parent.map(|p| (p[protocol_index(protocol)], own.as_slice()));
                    tables.table(set, op, &initial, &members, protocol, derive)
                });
                match (net, family) {
                    (IpNet::V4(n), Family::V4) => plan.regions4.push(Region { workload: w as u32, net: *n, tables: t }),
                    (IpNet::V4(n), _) => plan.regions_mapped.push(Region { workload: w as u32, net: *n, tables: t }),
                    (IpNet::V6(n), _) => plan.regions6.push(Region { workload: w as u32, net: *n, tables: t }),
                }
                chain.push((*net, members, t));
            }
            if family == Family::V4 {
                v4_prefixes = by_prefix;
            }
        }
    }
    if !op.is_path() {
        let mut builder = layout::Builder::new(classes.len() as u32 - 1, &tables.list);
        let v4_bytes = |r: &Region<Ipv4Net>| (layout::v4_bytes(r.net.network()), r.net.prefix_len(), r.tables);
        for w in 1..classes.len() as u32 {
            builder.addresses(w, Family::V4, plan.regions4[of_workload(&plan.regions4, w)].iter().map(v4_bytes));
            builder.addresses(
                w,
                Family::V6,
                plan.regions6[of_workload(&plan.regions6, w)]
                    .iter()
                    .map(|r| (r.net.network().octets(), r.net.prefix_len(), r.tables)),
            );
            if plan.mapped_shared.contains(&w) {
                builder.share_mapped(w);
            } else {
                builder.addresses(
                    w,
                    Family::Mapped,
                    plan.regions_mapped[of_workload(&plan.regions_mapped, w)].iter().map(v4_bytes),
                );
            }
        }
        plan.layout = builder.finish();
    }
    plan.tables = tables.list;
    plan.rules = tables.rules;
    plan
}

/// The sorted union of sorted `outer` and `own` (which may repeat members).
fn merged(outer: &[Member], own: &[Member]) -> Vec<Member> {
    let mut out = Vec::with_capacity(outer.len() + own.len());
    let (mut i, mut j) = (0, 0);
    while i < outer.len() || j < own.len() {
        let next = match (outer.get(i), own.get(j)) {
            (Some(a), Some(b)) if b < a => {
                j += 1;
                *b
            }
            (Some(a), _) => {
                i += 1;
                *a
            }
            (None, Some(b)) => {
                j += 1;
                *b
            }
            (None, None) => break,
        };
        if out.last() != Some(&next) {
            out.push(next);
        }
    }
    out
}

/// The regions of workload `w` (regions are in workload order).
fn of_workload<N>(regions: &[Region<N>], w: u32) -> std::ops::Range<usize> {
    regions.partition_point(|r| r.workload < w)..regions.partition_point(|r| r.workload <= w)
}

impl Plan {
    /// The workload class of a task: `s` is the cgroups-map value of its deepest selected
    /// cgroup (0 if none). 0: no policy applies.
    fn workload(&self, s: u32, uid: u32) -> u32 {
        let find = |key| self.workloads.iter().find(|(k, _)| *k == key).map(|(_, w)| *w);
        match (self.direct, s) {
            (true, 0) => self.root_workload,
            (true, w) => w,
            (false, _) => find((s, uid)).or_else(|| find((s, ANY_UID))).unwrap_or(0),
        }
    }

    /// Looks a path decision up exactly as the kernel programs do: `path` is the resolved
    /// path, `access` the `ACCESS_*` bits of an open (ignored for `exec`).
    pub fn lookup_path(&self, s: u32, uid: u32, path: &[u8], access: u8) -> Option<Value> {
        let w = self.workload(s, uid);
        if w == 0 {
            return None;
        }
        // The key holds the path and its NUL; a longer path is looked up as "unresolved",
        // which only the empty prefix matches.
        let key: Vec<u8> = if path.len() <= MAX_PATH { [path, b"\0"].concat() } else { Vec::new() };
        let entry =
            longest(self.paths.iter().filter(|e| e.workload == w && key.starts_with(&e.prefix)), |e| e.prefix.len())?;
        let index = if self.operation == Operation::Files { usize::from(access & 3).checked_sub(1)? } else { 0 };
        entry.values.get(index).copied()
    }

    /// Looks a decision up exactly as the kernel programs do (for tests and tools).
    /// `s` is the cgroups-map value of the task's deepest selected cgroup (0 if none).
    pub fn lookup(&self, s: u32, uid: u32, addr: IpAddr, port: u16, protocol: Protocol) -> Option<Value> {
        let w = self.workload(s, uid);
        if w == 0 {
            return None;
        }
        self.layout.lookup(w, addr, port, protocol == Protocol::Udp)
    }
}

fn longest<'a, T, K: Ord>(items: impl Iterator<Item = &'a T>, key: impl Fn(&T) -> K) -> Option<&'a T> {
    items.max_by_key(|i| key(i))
}

#[cfg(test)]
mod tests;
