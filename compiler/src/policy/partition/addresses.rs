//! The address axis: which rules (and failsafe entries) each written prefix brings, per
//! address family, and the chain of prefixes containing each other.

use std::collections::BTreeMap;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::layout::Family;
use crate::policy::model::{Operation, PolicySet};

/// A rule (or failsafe) that matches some address region, in set order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Member {
    /// `(policy, rule)`.
    Rule(usize, usize),
    /// Failsafe index.
    Failsafe(usize),
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
pub(super) fn members_by_prefix(
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
pub(super) type PrefixMembers = BTreeMap<(IpNet, u8), Vec<Member>>;

pub(super) fn contains(outer: &IpNet, inner: &IpNet) -> bool {
    outer.prefix_len() <= inner.prefix_len() && outer.contains(&inner.network())
}

/// The sorted union of sorted `outer` and `own` (which may repeat members).
pub(super) fn merged(outer: &[Member], own: &[Member]) -> Vec<Member> {
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
