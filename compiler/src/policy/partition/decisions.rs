//! Decision cells: what the connect and bind programs look up. Each cell is decided by the
//! reference evaluator's `decide` from the rules matching there, and named in the rule table
//! events index.

use super::{
    FLAG_AUDIT, FLAG_DENY, FLAG_EVENT, FLAG_WOULD_DENY, RuleRef,
    addresses::Member,
    cell::Value,
    hash::HashMap,
    ports::{Cells, protocol_index},
};
use crate::policy::{
    eval::{Decision, Matches, ReportKind, Verdict, decide},
    model::{Operation, PolicySet, Protocol},
};

/// The decision cells of one operation, and the rule table their values index.
pub(super) struct Decisions<'a> {
    set: &'a PolicySet,
    op: Operation,
    /// The rules' protocols and ports.
    index: RuleIndex,
    /// [`initial_matches`] of the workload class whose tables are being built.
    initial: Vec<(usize, Matches)>,
    /// Reused by every cell.
    matches: Vec<(usize, Matches)>,
    rules: Vec<RuleRef>,
    rule_ids: HashMap<RuleRef, u32>,
}

impl<'a> Decisions<'a> {
    /// Cells for `op`'s rules; rule index 0 is reserved so that "no event" never aliases a
    /// real rule.
    pub(super) fn new(set: &'a PolicySet, op: Operation) -> Self {
        Self {
            set,
            op,
            index: RuleIndex::new(set, op),
            initial: Vec::new(),
            matches: Vec::new(),
            rules: vec![RuleRef { policy: usize::MAX, rule: crate::policy::eval::RuleName::Default }],
            rule_ids: HashMap::default(),
        }
    }

    /// The cells that follow are those of the workload class the policies `applying` select.
    pub(super) fn workload(&mut self, applying: &[usize]) {
        self.initial = initial_matches(self.set, self.op, applying);
    }

    /// Encodes a decision, naming its rule in the rule table.
    pub(super) fn encode(&mut self, decision: &Decision) -> Value {
        value(decision, &mut self.rules, &mut self.rule_ids)
    }

    /// The rule table: the rule each value's `rule` names.
    pub(super) fn finish(self) -> Vec<RuleRef> {
        self.rules
    }
}

impl Cells for Decisions<'_> {
    type Value = Value;

    fn ports(&self, m: Member, protocol: Protocol, out: &mut Vec<(u32, u32)>) {
        self.index.ports(self.set, m, protocol, out);
    }

    fn value(&mut self, members: &[Member], protocol: Protocol, port: u16) -> Value {
        let mut matches = std::mem::take(&mut self.matches);
        let decision = cell(self.set, self.op, &self.index, &self.initial, members, protocol, port, &mut matches);
        self.matches = matches;
        self.encode(&decision)
    }
}

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
