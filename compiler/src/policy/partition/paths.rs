//! The path axis (`exec`, `files`): every pattern's key prefixes with the decision of the
//! rules whose prefixes they extend.

use std::collections::BTreeMap;

use super::{
    PathEntry,
    decisions::{Decisions, initial_matches, record},
};
use crate::policy::{
    eval::{Decision, combine, decide},
    model::{ACCESS_READ, ACCESS_WRITE, Operation, PolicySet},
};

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
pub(super) fn path_entries(
    set: &PolicySet,
    op: Operation,
    applying: &[usize],
    workload: u32,
    decisions: &mut Decisions<'_>,
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
        let mut encode = |d: &Decision| decisions.encode(d);
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
