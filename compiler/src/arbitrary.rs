//! Random policy sets and connect attempts for property tests (feature `arbitrary`): the
//! partition tests here and the differential tests against the kernel share these
//! generators. Values come from small pools with deliberate overlaps — nested prefixes,
//! IPv4-mapped IPv6, adjacent and overlapping port ranges, nested cgroups — so random cases
//! hit the interesting boundaries instead of missing everything.

use crate::policy::model::TuneSettings;
use std::net::IpAddr;

use proptest::prelude::*;

use crate::policy::{
    eval::{Attempt, PathAttempt},
    model::{
        ACCESS_READ, ACCESS_WRITE, Action, Default, Failsafe, Mode, Operation, PathPattern, PathRule, PathSection,
        Policy, PolicySet, Ports, Protocol, Rule, Section, cgroup_components,
    },
};

/// Path patterns `exec` and `files` rules draw from: exact files, nested subtrees and
/// prefixes that end inside a component.
pub const PATTERNS: &[&str] = &[
    "/",
    "/usr/",
    "/usr/bin/",
    "/usr/bin/curl",
    "/usr/bin/py*",
    "/etc/",
    "/etc/shadow",
    "/etc/ss*",
    "/opt/tools/",
    "/opt/tool*",
];

/// Paths attempts draw from (inside, outside and on the edges of `PATTERNS`).
pub fn attempt_paths() -> Vec<String> {
    let mut paths: Vec<String> = [
        "/usr/bin/curl",
        "/usr/bin/curlx",
        "/usr/bin/python3",
        "/usr/bin",
        "/usr/binx/a",
        "/etc/shadow",
        "/etc/shadow-",
        "/etc/ssh/sshd_config",
        "/etc",
        "/opt/tools",
        "/opt/tools/run",
        "/opt/toolsx",
        "/tmp/x",
        "/",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    // Longer than the programs resolve (§12.2), under a subtree and a prefix.
    paths.push(format!("/opt/tools/{}", "d/".repeat(130)));
    paths
}

/// Prefixes rules draw from.
pub const NETS: &[&str] = &[
    "0.0.0.0/0",
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.0/24",
    "10.1.2.3/32",
    "10.1.2.0/25",
    "10.1.2.0/28",
    "10.1.2.2/31",
    "10.1.0.0/20",
    "10.128.0.0/9",
    "192.168.0.0/16",
    "127.0.0.0/8",
    "::/0",
    "2001:db8::/32",
    "2001:db8:1::/48",
    "2001:db8::/33",
    "2001:db8:1::/60",
    "::1/127",
    "::ffff:10.1.0.0/112",
    "::1/128",
];
/// Destinations attempts draw from (inside, outside and on the edges of `NETS`).
pub const ADDRS: &[&str] = &[
    "10.1.2.3",
    "10.1.2.4",
    "10.1.2.2",
    "10.1.2.17",
    "10.1.2.129",
    "10.1.15.1",
    "10.1.16.1",
    "10.200.0.1",
    "10.1.3.1",
    "10.2.0.1",
    "192.168.1.1",
    "8.8.8.8",
    "127.0.0.1",
    "2001:db8::1",
    "2001:db8:1::5",
    "2001:db8:1:f::1",
    "2001:db8:1:10::1",
    "2001:db8:8000::1",
    "2001:db9::1",
    "::ffff:10.1.2.3",
    "::ffff:10.1.9.9",
    "::ffff:8.8.8.8",
    "::1",
];
/// Port specs rules draw from.
pub const PORTS: &[(u16, u16)] = &[
    (22, 22),
    (53, 53),
    (80, 80),
    (80, 90),
    (1, 1023),
    (250, 300),
    (443, 443),
    (8000, 8080),
    (1, 65535),
    (65535, 65535),
];
/// Destination ports attempts draw from.
pub const ATTEMPT_PORTS: &[u16] =
    &[0, 1, 22, 53, 79, 80, 85, 90, 91, 249, 250, 255, 256, 300, 301, 443, 1023, 1024, 8000, 8080, 8081, 65534, 65535];

/// Where policies and tasks live.
#[derive(Debug, Clone)]
pub struct Space {
    /// Workload cgroups policies may select ("" = every process).
    pub policy_cgroups: Vec<String>,
    /// cgroups attempts come from.
    pub task_cgroups: Vec<String>,
    /// uids policies may require and attempts run as.
    pub uids: Vec<u32>,
}

impl Space {
    /// Nested cgroups under `root` (a cgroup path such as `/palisade-test-x`).
    pub fn under(root: &str) -> Self {
        let c = |s: &str| format!("{root}{s}");
        Self {
            policy_cgroups: vec![String::new(), c("/a"), c("/a/b"), c("/c")],
            task_cgroups: vec![c("/a"), c("/a/b"), c("/a/b/c"), c("/c"), c("/d")],
            uids: vec![0, 1000],
        }
    }
}

fn rule(id: usize) -> impl Strategy<Value = Rule> {
    (
        prop::sample::select(vec![Action::Allow, Action::Deny, Action::Audit]),
        prop::collection::vec(prop::sample::select(NETS), 0..3),
        prop::collection::vec(prop::sample::select(PORTS), 0..3),
        prop::sample::select(vec![vec![], vec![Protocol::Tcp], vec![Protocol::Udp]]),
    )
        .prop_map(move |(action, nets, ports, protocols)| Rule {
            id: format!("r{id}"),
            action,
            nets: nets.iter().filter_map(|n| n.parse().ok()).collect(),
            ports: ports.iter().map(|&(first, last)| Ports { first, last }).collect(),
            protocols,
        })
}

fn section() -> impl Strategy<Value = Option<Section>> {
    (
        prop::sample::select(vec![Default::Allow, Default::Allow, Default::Deny, Default::Audit]),
        (0_usize..6).prop_flat_map(|n| (0..n).map(rule).collect::<Vec<_>>()),
        prop::bool::weighted(0.8),
    )
        .prop_map(|(default, rules, present)| present.then_some(Section { default, rules }))
}

/// A `connections.observe` or `connections.tune` section as the model holds it: peer rules
/// (action audit, TCP), default audit for an observe section without rules.
fn peer_section(prefix: &'static str, observe: bool) -> impl Strategy<Value = Option<Section>> {
    ((0_usize..5).prop_flat_map(|n| (0..n).map(rule).collect::<Vec<_>>()), prop::bool::weighted(0.6)).prop_map(
        move |(rules, present)| {
            let rules: Vec<Rule> = rules
                .into_iter()
                .map(|r| Rule {
                    id: format!("{prefix}{}", r.id),
                    action: Action::Audit,
                    protocols: vec![Protocol::Tcp],
                    ..r
                })
                .collect();
            let default = if observe && rules.is_empty() { Default::Audit } else { Default::Allow };
            present.then_some(Section { default, rules })
        },
    )
}

/// A tuning profile: algorithms every node here offers (so the differential can tell a
/// profile from the default and one profile from another), sometimes none.
fn tune_settings() -> impl Strategy<Value = TuneSettings> {
    (prop::sample::select(vec!["cubic", "bbr", ""]), prop::sample::select(vec![0_u32, 20]), any::<bool>()).prop_map(
        |(congestion, initial_cwnd, no_delay)| TuneSettings {
            congestion: congestion.to_owned(),
            initial_cwnd,
            no_delay,
        },
    )
}

fn path_rule(id: usize, files: bool) -> impl Strategy<Value = PathRule> {
    let access = if files { vec![ACCESS_READ | ACCESS_WRITE, ACCESS_READ, ACCESS_WRITE] } else { vec![3] };
    (
        prop::sample::select(vec![Action::Allow, Action::Deny, Action::Audit]),
        prop::collection::vec(prop::sample::select(PATTERNS), 0..3),
        prop::sample::select(access),
    )
        .prop_map(move |(action, paths, access)| PathRule {
            id: format!("{}{id}", if files { "f" } else { "e" }),
            action,
            paths: paths.iter().map(|p| PathPattern::parse(p)).collect(),
            access,
        })
}

fn path_section(files: bool) -> impl Strategy<Value = Option<PathSection>> {
    (
        prop::sample::select(vec![Default::Allow, Default::Allow, Default::Deny, Default::Audit]),
        (0_usize..6).prop_flat_map(move |n| (0..n).map(|i| path_rule(i, files)).collect::<Vec<_>>()),
        prop::bool::weighted(0.5),
    )
        .prop_map(|(default, rules, present)| present.then_some(PathSection { default, rules }))
}

fn policy(index: usize, space: &Space) -> impl Strategy<Value = Policy> + use<> {
    let uids: Vec<Option<u32>> = std::iter::repeat_n(None, 2).chain(space.uids.iter().copied().map(Some)).collect();
    (
        prop::sample::select(vec![Mode::Enforce, Mode::Enforce, Mode::Audit]),
        prop::sample::select(space.policy_cgroups.clone()),
        prop::sample::select(uids),
        section(),
        section(),
        (path_section(false), path_section(true)),
        (peer_section("o", true), peer_section("t", false), prop::collection::vec(tune_settings(), 5)),
    )
        .prop_map(move |(mode, cgroup, uid, connect, bind, (exec, files), (observe, tune, settings))| Policy {
            name: format!("p{index}"),
            revision: 1 + index as u64,
            mode,
            cgroup: cgroup_components(&cgroup),
            uid,
            connect,
            bind: bind.map(|mut s| {
                // Rule ids are unique across a policy's sections.
                for r in &mut s.rules {
                    r.id = format!("b{}", r.id);
                }
                s
            }),
            exec,
            files,
            tune_settings: tune.as_ref().map_or_else(Vec::new, |t| settings[..t.rules.len()].to_vec()),
            observe,
            tune,
        })
}

/// Policy sets of 1–4 policies, sometimes with a failsafe entry.
pub fn policy_set(space: &Space) -> impl Strategy<Value = PolicySet> + use<> {
    let space = space.clone();
    (1_usize..5).prop_flat_map(move |n| {
        let policies: Vec<_> = (0..n).map(|i| policy(i, &space)).collect();
        let failsafe = prop::sample::select(vec![None, Some(("10.1.2.3/32", 443)), Some(("::/0", 22))]);
        (policies, failsafe).prop_map(|(policies, failsafe)| PolicySet {
            policies,
            failsafe: failsafe
                .into_iter()
                .filter_map(|(n, port)| Some(Failsafe { net: Some(n.parse().ok()?), port: Some(port) }))
                .collect(),
        })
    })
}

/// One attempt (connect or bind) from a task in `space`.
pub fn attempt(space: &Space) -> impl Strategy<Value = Attempt> + use<> {
    (
        prop::sample::select(vec![Operation::Connect, Operation::Connect, Operation::Bind]),
        prop::sample::select(space.task_cgroups.clone()),
        prop::sample::select(space.uids.iter().copied().chain([5]).collect::<Vec<_>>()),
        prop::sample::select(ADDRS),
        prop::sample::select(ATTEMPT_PORTS),
        prop::sample::select(vec![Protocol::Tcp, Protocol::Udp]),
    )
        .prop_map(|(operation, cgroup, uid, addr, port, protocol)| Attempt {
            operation,
            cgroup: cgroup_components(&cgroup),
            uid,
            addr: addr.parse::<IpAddr>().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            port,
            protocol,
        })
}

/// One established TCP connection (`connections.observe` and `.tune`) from a task in `space`.
pub fn connection_attempt(space: &Space) -> impl Strategy<Value = Attempt> + use<> {
    (
        prop::sample::select(vec![Operation::Observe, Operation::Tune]),
        prop::sample::select(space.task_cgroups.clone()),
        prop::sample::select(space.uids.iter().copied().chain([5]).collect::<Vec<_>>()),
        prop::sample::select(ADDRS),
        prop::sample::select(ATTEMPT_PORTS),
    )
        .prop_map(|(operation, cgroup, uid, addr, port)| Attempt {
            operation,
            cgroup: cgroup_components(&cgroup),
            uid,
            addr: addr.parse::<IpAddr>().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            port,
            protocol: Protocol::Tcp,
        })
}

/// One `exec` or `files` attempt from a task in `space`.
pub fn path_attempt(space: &Space) -> impl Strategy<Value = PathAttempt> + use<> {
    (
        prop::sample::select(vec![Operation::Exec, Operation::Files]),
        prop::sample::select(space.task_cgroups.clone()),
        prop::sample::select(space.uids.iter().copied().chain([5]).collect::<Vec<_>>()),
        prop::sample::select(attempt_paths()),
        prop::sample::select(vec![ACCESS_READ, ACCESS_WRITE, ACCESS_READ | ACCESS_WRITE]),
    )
        .prop_map(|(operation, cgroup, uid, path, access)| PathAttempt {
            operation,
            cgroup: cgroup_components(&cgroup),
            uid,
            path: path.into_bytes(),
            access,
        })
}
