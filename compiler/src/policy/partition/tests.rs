//! The partition against the reference evaluator, for random policy sets and attempts.

use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::{
    arbitrary::{self, Space},
    policy::{
        eval::{Decision, ReportKind, Verdict, evaluate, evaluate_path},
        model::{Action, Default, Mode, Operation, Policy, Ports, Rule, Section, cgroup_components},
    },
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
    fn plan_connection_lookup_equals_reference(
        set in arbitrary::policy_set(&Space::under("")),
        attempts in prop::collection::vec(arbitrary::connection_attempt(&Space::under("")), 20),
    ) {
        let plans: Vec<Plan> = [Operation::Observe, Operation::Tune].iter().map(|&op| plan(&set, op)).collect();
        for attempt in attempts {
            let plan = plans.iter().find(|p| p.operation == attempt.operation).expect("a plan per operation");
            let want = evaluate(&set, &attempt);
            prop_assert_eq!(want.verdict, Verdict::Allow, "connections sections never deny");
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
fn plan_port_range_inside_a_chunk_becomes_one_port_node() {
    let set = connect_only(
        Default::Allow,
        vec![Rule {
            id: "r".into(),
            action: Action::Deny,
            nets: Vec::new(),
            ports: vec![Ports { first: 8000, last: 8080 }],
            protocols: vec![Protocol::Tcp],
        }],
    );
    let plan = plan(&set, Operation::Connect);
    // One deny interval 8000-8080: the table's cell for the chunk 7936-8191 points at one node
    // whose slots are default, deny, default, split at low bytes 64 and 145.
    assert_eq!(plan.tables.len(), 2, "TCP and UDP tables");
    let deny = plan.layout.values.iter().position(|v| v.flags & FLAG_DENY != 0).expect("a deny value") as u32;
    assert_eq!(plan.layout.ports, vec![(31, layout::PORT_NODE | 1)]);
    let node = plan.layout.port_nodes[1];
    assert_eq!(node.bounds[..3], [64, 145, 255]);
    assert_eq!(node.slots[..3], [0, deny, 0]);
    let addr: IpAddr = "1.2.3.4".parse().expect("addr");
    for (port, deny) in
        [(7935, false), (7999, false), (8000, true), (8047, true), (8080, true), (8081, false), (8192, false)]
    {
        let v = plan.lookup(0, 0, addr, port, Protocol::Tcp).expect("workload has a policy");
        assert_eq!(v.flags & FLAG_DENY != 0, deny, "port {port}");
    }
}

#[test]
fn plan_chunk_with_many_boundaries_nests_port_nodes_and_matches_the_evaluator() {
    // 60 single ports and short ranges in one 256-port chunk, with alternating actions: more
    // intervals than one node's eight slots, so nodes nest.
    let rules: Vec<Rule> = (0..60_u16)
        .map(|i| Rule {
            id: format!("r{i}"),
            action: [Action::Deny, Action::Audit, Action::Allow][usize::from(i % 3)],
            nets: Vec::new(),
            ports: vec![Ports { first: 256 + 4 * i, last: 256 + 4 * i + i % 3 }],
            protocols: Vec::new(),
        })
        .collect();
    let set = connect_only(Default::Deny, rules);
    let plan = plan(&set, Operation::Connect);
    assert!(plan.layout.port_nodes.iter().any(|n| n.slots.iter().any(|s| s & layout::PORT_NODE != 0)), "nested nodes");
    let addr: IpAddr = "10.0.0.1".parse().expect("addr");
    for port in 0..1024 {
        let attempt = crate::policy::eval::Attempt {
            operation: Operation::Connect,
            cgroup: Vec::new(),
            uid: 0,
            addr,
            port,
            protocol: Protocol::Udp,
        };
        let got = plan.lookup(0, 0, addr, port, Protocol::Udp);
        assert_eq!(observed(&plan, got), expected(&evaluate(&set, &attempt)), "port {port}");
    }
}

/// One policy for every task with only a `network.connect` section.
fn connect_only(default: Default, rules: Vec<Rule>) -> PolicySet {
    PolicySet {
        policies: vec![Policy {
            name: "p".into(),
            revision: 1,
            mode: Mode::Enforce,
            cgroup: Vec::new(),
            uid: None,
            bind: None,
            exec: None,
            files: None,
            observe: None,
            tune: None,
            tune_settings: Vec::new(),
            connect: Some(Section { default, rules }),
        }],
        failsafe: Vec::new(),
    }
}
