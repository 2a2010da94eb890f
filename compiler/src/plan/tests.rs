//! The partition against the reference evaluator, for random policy sets and attempts.

use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::{
    arbitrary::{self, Space},
    eval::{evaluate, evaluate_path},
    model::{Action, Default, Mode, Operation, Policy, Ports, Rule, Section, cgroup_components},
};

/// The selected-cgroup class the kernel would find: the deepest selected ancestor.
fn class_of(plan: &Plan, cgroup: &[String]) -> u32 {
    plan.cgroups
        .iter()
        .filter(|c| cgroup.starts_with(&cgroup_components(&c.path)))
        .max_by_key(|c| c.level)
        .map_or(0, |c| c.class)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn plan_lookup_equals_reference(
        set in arbitrary::policy_set(&Space::under("")),
        attempts in prop::collection::vec(arbitrary::attempt(&Space::under("")), 20),
    ) {
        let plans: Vec<Plan> = Operation::ALL.iter().map(|&op| plan(&set, op)).collect();
        for attempt in attempts {
            let plan = plans.iter().find(|p| p.operation == attempt.operation).expect("a plan per operation");
            let want = evaluate(&set, &attempt);
            let got = plan.lookup(class_of(plan, &attempt.cgroup), attempt.uid, attempt.addr, attempt.port, attempt.protocol);
            prop_assert_eq!(observed(plan, got), expected(&want), "attempt {:?}", attempt);
        }
    }

    #[test]
    fn plan_path_lookup_equals_reference(
        set in arbitrary::policy_set(&Space::under("")),
        attempts in prop::collection::vec(arbitrary::path_attempt(&Space::under("")), 20),
    ) {
        let plans: Vec<Plan> = [Operation::Exec, Operation::Files].iter().map(|&op| plan(&set, op)).collect();
        for attempt in attempts {
            let plan = plans.iter().find(|p| p.operation == attempt.operation).expect("a plan per operation");
            let want = evaluate_path(&set, &attempt);
            let got = plan.lookup_path(class_of(plan, &attempt.cgroup), attempt.uid, &attempt.path, attempt.access);
            prop_assert_eq!(observed(plan, got), expected(&want), "attempt {:?}", attempt);
        }
    }
}

/// What the kernel would do with a looked-up value: verdict, and the event's rule and flags.
fn observed(plan: &Plan, got: Option<Value>) -> (Verdict, Option<(RuleRef, u32)>) {
    let verdict = if got.is_some_and(|v| v.flags & FLAG_DENY != 0) { Verdict::Deny } else { Verdict::Allow };
    (verdict, got.filter(|v| v.flags & FLAG_EVENT != 0).map(|v| (plan.rules[v.rule as usize], v.flags)))
}

/// The same, from the reference evaluator's decision.
fn expected(want: &Decision) -> (Verdict, Option<(RuleRef, u32)>) {
    let report = want.report.map(|r| {
        let mut flags = FLAG_EVENT | if want.verdict == Verdict::Deny { FLAG_DENY } else { 0 };
        match r.kind {
            ReportKind::Deny => {}
            ReportKind::WouldDeny => flags |= FLAG_AUDIT | FLAG_WOULD_DENY,
            ReportKind::Audit => flags |= FLAG_AUDIT,
        }
        (RuleRef { policy: r.policy, rule: r.rule }, flags)
    });
    (want.verdict, report)
}

#[test]
fn plan_port_ranges_become_aligned_blocks() {
    let set = PolicySet {
        policies: vec![Policy {
            name: "p".into(),
            revision: 1,
            mode: Mode::Enforce,
            cgroup: Vec::new(),
            uid: None,
            bind: None,
            exec: None,
            files: None,
            connect: Some(Section {
                default: Default::Allow,
                rules: vec![Rule {
                    id: "r".into(),
                    action: Action::Deny,
                    nets: Vec::new(),
                    ports: vec![Ports { first: 8000, last: 8080 }],
                    protocols: vec![Protocol::Tcp],
                }],
            }),
        }],
        failsafe: Vec::new(),
    };
    let plan = plan(&set, Operation::Connect);
    // 8000-8080 = 8000/12 (8000-8015) ... decomposes into a handful of aligned blocks.
    let deny_blocks: Vec<_> = plan.ports.iter().filter(|b| b.value.flags & FLAG_DENY != 0).collect();
    assert!(!deny_blocks.is_empty() && deny_blocks.len() <= 16, "{deny_blocks:?}");
    let covered: u32 = deny_blocks.iter().map(|b| 1_u32 << (16 - b.len)).sum();
    assert_eq!(covered, 81);
    let addr: IpAddr = "1.2.3.4".parse().expect("addr");
    for (port, deny) in [(7999, false), (8000, true), (8080, true), (8081, false)] {
        let v = plan.lookup(0, 0, addr, port, Protocol::Tcp).expect("workload has a policy");
        assert_eq!(v.flags & FLAG_DENY != 0, deny, "port {port}");
    }
}
