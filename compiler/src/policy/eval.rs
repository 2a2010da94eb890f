//! The reference evaluator: the executable specification of `docs/policy-semantics.md`.
//!
//! [`evaluate`] decides one concrete operation. [`decide`] is the part after rule matching
//! (§4–§6); the compiler calls it for every cell of its partition, so the bytecode and the
//! specification share the decision logic, and the differential tests check the matching.

use std::net::IpAddr;

use crate::policy::model::{
    ACCESS_READ, ACCESS_WRITE, Action, Default, MAX_PATH, Mode, Operation, PolicySet, Protocol,
};

/// One operation attempt (§1.2): a connect (destination address and port) or a bind (local
/// address and port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Which operation.
    pub operation: Operation,
    /// cgroup path components of the calling task.
    pub cgroup: Vec<String>,
    /// Real uid.
    pub uid: u32,
    /// Destination (connect) or local (bind) address.
    pub addr: IpAddr,
    /// Destination (connect) or local (bind) port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// The verdict (§5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// The operation proceeds.
    Allow,
    /// connect(2) fails with EPERM.
    Deny,
}

/// The rule an event names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleName {
    /// A rule, by index in its section.
    Rule(usize),
    /// The section default ("default").
    Default,
}

/// The kind of event (§6.1 cases 1–3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReportKind {
    /// Case 1: verdict DENY.
    Deny,
    /// Case 2: verdict AUDIT, `would_deny`.
    WouldDeny,
    /// Case 3: verdict AUDIT.
    Audit,
}

/// The event of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Report {
    /// Kind.
    pub kind: ReportKind,
    /// Index of the policy in the set.
    pub policy: usize,
    /// Rule named.
    pub rule: RuleName,
}

/// Verdict plus at most one event (§6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Decision {
    /// Verdict.
    pub verdict: Verdict,
    /// Event, if any.
    pub report: Option<Report>,
}

impl Decision {
    /// Allowed, nothing reported.
    pub const ALLOW: Self = Self { verdict: Verdict::Allow, report: None };
}

/// The first matching deny, allow and audit rule of one applying policy (§4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, std::default::Default)]
pub struct Matches {
    /// First matching deny rule.
    pub deny: Option<usize>,
    /// First matching allow rule.
    pub allow: Option<usize>,
    /// First matching audit rule.
    pub audit: Option<usize>,
}

impl Matches {
    /// Records that rule `index` with `action` matched; rules must be offered in order.
    pub fn add(&mut self, index: usize, action: Action) {
        let slot = match action {
            Action::Deny => &mut self.deny,
            Action::Allow => &mut self.allow,
            Action::Audit => &mut self.audit,
        };
        if slot.is_none() {
            *slot = Some(index);
        }
    }
}

/// Decides an `op` from the matches of the applying policies (§4–§6). `applying` yields
/// `(policy index, matches)` for every policy that applies (§2) in set (name) order.
pub fn decide(set: &PolicySet, op: Operation, applying: impl IntoIterator<Item = (usize, Matches)>) -> Decision {
    let mut would_deny = None;
    let mut audit = None;
    for (index, m) in applying {
        let policy = &set.policies[index];
        let Some(default) = policy.default_of(op) else { continue };
        // §4.2
        let deny = match (m.deny, m.allow, default) {
            (Some(d), _, _) => Some(RuleName::Rule(d)),
            (None, None, Default::Deny) => Some(RuleName::Default),
            _ => None,
        };
        let audit_default = m.deny.is_none() && m.allow.is_none() && default == Default::Audit;
        if let Some(rule) = deny {
            match policy.mode {
                // §6.1 case 1: the first denying enforce-mode policy decides and is named.
                Mode::Enforce => {
                    return Decision {
                        verdict: Verdict::Deny,
                        report: Some(Report { kind: ReportKind::Deny, policy: index, rule }),
                    };
                }
                Mode::Audit => {
                    would_deny.get_or_insert(Report { kind: ReportKind::WouldDeny, policy: index, rule });
                }
            }
        }
        // §4.3
        let report = m.audit.map(RuleName::Rule).or(audit_default.then_some(RuleName::Default));
        if let Some(rule) = report {
            audit.get_or_insert(Report { kind: ReportKind::Audit, policy: index, rule });
        }
    }
    Decision { verdict: Verdict::Allow, report: would_deny.or(audit) }
}

/// Decides one operation exactly as the specification says.
pub fn evaluate(set: &PolicySet, attempt: &Attempt) -> Decision {
    // §8: failsafe first, no evaluation, no event (it protects connections, not binds).
    if attempt.operation == Operation::Connect && set.failsafe.iter().any(|f| f.covers(attempt.addr, attempt.port)) {
        return Decision::ALLOW;
    }
    let applying = set.policies.iter().enumerate().filter_map(|(index, policy)| {
        let section = policy.section(attempt.operation)?;
        if !policy.selects(&attempt.cgroup, attempt.uid) {
            return None;
        }
        let mut matches = Matches::default();
        for (i, rule) in section.rules.iter().enumerate() {
            if rule.matches_protocol(attempt.protocol)
                && rule.matches_port(attempt.port)
                && rule.matches_address(attempt.addr)
            {
                matches.add(i, rule.action);
            }
        }
        Some((index, matches))
    });
    decide(set, attempt.operation, applying)
}

/// An `exec` or `files` attempt (§12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathAttempt {
    /// [`Operation::Exec`] or [`Operation::Files`].
    pub operation: Operation,
    /// cgroup path components of the calling task.
    pub cgroup: Vec<String>,
    /// Real uid.
    pub uid: u32,
    /// The resolved path, as the kernel spells it (§12.2).
    pub path: Vec<u8>,
    /// `ACCESS_*` bits the open asks for (`files`; ignored for `exec`).
    pub access: u8,
}

/// Combines the decisions of one open's accesses (§12.4): the first deny decides; otherwise
/// the first would-deny report, else the first audit report.
pub fn combine(decisions: &[Decision]) -> Decision {
    if let Some(d) = decisions.iter().find(|d| d.verdict == Verdict::Deny) {
        return *d;
    }
    let report = |kind| decisions.iter().filter_map(|d| d.report).find(|r| r.kind == kind);
    Decision { verdict: Verdict::Allow, report: report(ReportKind::WouldDeny).or_else(|| report(ReportKind::Audit)) }
}

/// Decides one `exec` or `files` attempt exactly as the specification says.
pub fn evaluate_path(set: &PolicySet, attempt: &PathAttempt) -> Decision {
    let op = attempt.operation;
    // §12.2: a path the programs cannot hold matches only rules without paths.
    let path = (attempt.path.len() <= MAX_PATH).then_some(attempt.path.as_slice());
    let one = |access: u8| {
        let applying = set.policies.iter().enumerate().filter_map(|(index, policy)| {
            let section = policy.path_section(op)?;
            if !policy.selects(&attempt.cgroup, attempt.uid) {
                return None;
            }
            let mut matches = Matches::default();
            for (i, rule) in section.rules.iter().enumerate() {
                if rule.matches(path, access) {
                    matches.add(i, rule.action);
                }
            }
            Some((index, matches))
        });
        decide(set, op, applying)
    };
    match op {
        Operation::Files => {
            let parts: Vec<Decision> =
                [ACCESS_READ, ACCESS_WRITE].into_iter().filter(|a| attempt.access & a != 0).map(one).collect();
            combine(&parts)
        }
        _ => one(ACCESS_READ),
    }
}

#[cfg(test)]
mod tests;
