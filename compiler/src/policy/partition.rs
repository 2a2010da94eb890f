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

use std::{collections::BTreeSet, net::IpAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::policy::{
    eval::RuleName,
    model::{MAX_PATH, Operation, PolicySet, Protocol},
};

mod addresses;
mod cell;
mod decisions;
pub(crate) mod hash;
pub mod layout;
mod paths;
mod ports;
mod workloads;

use addresses::{Member, PrefixMembers, contains, members_by_prefix, merged};
pub use cell::{CellValue, PortTable, Value};
use decisions::Decisions;
pub use layout::Family;
use layout::NetLayout;
use paths::path_entries;
use ports::{Tables, protocol_index};

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

/// Computes the partition of a policy set for one operation.
pub fn plan(set: &PolicySet, op: Operation) -> Plan {
    let (cgroups, workload_entries, classes) = workloads::classes(set, op);
    let mut levels: Vec<u32> = cgroups.iter().map(|c| c.level).collect::<BTreeSet<_>>().into_iter().collect();
    levels.reverse();
    let mut tables = Tables::new(Decisions::new(set, op));
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
            plan.paths.extend(path_entries(set, op, applying, w as u32, tables.cells_mut()));
            continue;
        }
        tables.cells_mut().workload(applying);
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
                    tables.table(&members, protocol, derive)
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
        let mut builder = layout::Builder::new(classes.len() as u32 - 1, tables.list());
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
    let (list, decisions) = tables.finish();
    (plan.tables, plan.rules) = (list, decisions.finish());
    plan
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
