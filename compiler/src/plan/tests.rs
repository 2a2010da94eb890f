//! The partition against the reference evaluator, for random policy sets and attempts.

use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::{
    eval::{Attempt, evaluate},
    model::{Action, Default, Mode, Policy, Ports, Rule, Section, cgroup_components},
};

const NETS: &[&str] = &[
    "0.0.0.0/0",
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.0/24",
    "10.1.2.3/32",
    "192.168.0.0/16",
    "::/0",
    "2001:db8::/32",
    "2001:db8:1::/48",
    "::ffff:10.1.0.0/112",
    "::1/128",
];
const ADDRS: &[&str] = &[
    "10.1.2.3",
    "10.1.2.4",
    "10.1.3.1",
    "10.2.0.1",
    "192.168.1.1",
    "8.8.8.8",
    "2001:db8::1",
    "2001:db8:1::5",
    "2001:db9::1",
    "::ffff:10.1.2.3",
    "::ffff:10.1.9.9",
    "::ffff:8.8.8.8",
    "::1",
];
const CGROUPS: &[&str] = &["", "/a", "/a/b", "/c"];
const TASK_CGROUPS: &[&str] = &["/", "/a", "/a/b", "/a/b/c", "/c", "/d"];
const PORTS: &[(u16, u16)] = &[(22, 22), (53, 53), (80, 80), (80, 90), (1, 1023), (443, 443), (8000, 8080), (1, 65535)];
const ATTEMPT_PORTS: &[u16] = &[0, 1, 22, 53, 79, 80, 85, 90, 91, 443, 1023, 1024, 8000, 8080, 8081, 65535];

fn rule_strategy(id: usize) -> impl Strategy<Value = Rule> {
    (
        prop::sample::select(vec![Action::Allow, Action::Deny, Action::Audit]),
        prop::collection::vec(prop::sample::select(NETS), 0..3),
        prop::collection::vec(prop::sample::select(PORTS), 0..3),
        prop::sample::select(vec![vec![], vec![Protocol::Tcp], vec![Protocol::Udp]]),
    )
        .prop_map(move |(action, nets, ports, protocols)| Rule {
            id: format!("r{id}"),
            action,
            nets: nets.iter().map(|n| n.parse().expect("net")).collect(),
            ports: ports.iter().map(|&(first, last)| Ports { first, last }).collect(),
            protocols,
        })
}

fn policy_strategy(index: usize) -> impl Strategy<Value = Policy> {
    (
        prop::sample::select(vec![Mode::Enforce, Mode::Enforce, Mode::Audit]),
        prop::sample::select(CGROUPS),
        prop::sample::select(vec![None, None, Some(0_u32), Some(1000)]),
        prop::sample::select(vec![Default::Allow, Default::Allow, Default::Deny, Default::Audit]),
        (0_usize..5).prop_flat_map(|n| (0..n).map(rule_strategy).collect::<Vec<_>>()),
        any::<bool>(),
    )
        .prop_map(move |(mode, cgroup, uid, default, rules, has_section)| Policy {
            name: format!("p{index}"),
            revision: 1,
            mode,
            cgroup: cgroup_components(cgroup),
            uid,
            connect: has_section.then_some(Section { default, rules }),
        })
}

fn set_strategy() -> impl Strategy<Value = PolicySet> {
    (1_usize..5).prop_flat_map(|n| {
        let policies: Vec<_> = (0..n).map(policy_strategy).collect();
        (policies, prop::sample::select(vec![None, Some(("10.1.2.3/32", Some(443))), Some(("::/0", Some(22)))]))
            .prop_map(|(policies, failsafe)| PolicySet {
                policies,
                failsafe: failsafe
                    .into_iter()
                    .map(|(n, port)| Failsafe { net: Some(n.parse().expect("net")), port })
                    .collect(),
            })
    })
}

fn attempt_strategy() -> impl Strategy<Value = Attempt> {
    (
        prop::sample::select(TASK_CGROUPS),
        prop::sample::select(vec![0_u32, 1000, 5]),
        prop::sample::select(ADDRS),
        prop::sample::select(ATTEMPT_PORTS),
        prop::sample::select(vec![Protocol::Tcp, Protocol::Udp]),
    )
        .prop_map(|(cgroup, uid, addr, port, protocol)| Attempt {
            cgroup: cgroup_components(cgroup),
            uid,
            addr: addr.parse::<IpAddr>().expect("addr"),
            port,
            protocol,
        })
}

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
    fn plan_lookup_equals_reference(set in set_strategy(), attempts in prop::collection::vec(attempt_strategy(), 20)) {
        let plan = plan(&set);
        for attempt in attempts {
            let want = evaluate(&set, &attempt);
            let got = plan.lookup(class_of(&plan, &attempt.cgroup), attempt.uid, attempt.addr, attempt.port, attempt.protocol);
            let got_verdict = if got.is_some_and(|v| v.flags & FLAG_DENY != 0) { Verdict::Deny } else { Verdict::Allow };
            prop_assert_eq!(got_verdict, want.verdict, "attempt {:?}", attempt);
            let got_report = got.filter(|v| v.flags & FLAG_EVENT != 0).map(|v| (plan.rules[v.rule as usize], v.flags));
            let want_report = want.report.map(|r| {
                let mut flags = FLAG_EVENT | if want.verdict == Verdict::Deny { FLAG_DENY } else { 0 };
                match r.kind {
                    ReportKind::Deny => {}
                    ReportKind::WouldDeny => flags |= FLAG_AUDIT | FLAG_WOULD_DENY,
                    ReportKind::Audit => flags |= FLAG_AUDIT,
                }
                (RuleRef { policy: r.policy, rule: r.rule }, flags)
            });
            prop_assert_eq!(got_report, want_report, "attempt {:?}", attempt);
        }
    }
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
    let plan = plan(&set);
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
