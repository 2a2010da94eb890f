//! The generated programs themselves, run in the interpreter, against the reference
//! evaluator: verdict, and every field of every record, for random policy sets and attempts
//! through every hook (the cgroup programs of both families and the LSM programs). This is
//! the unprivileged half of the differential test; the kernel stays the final oracle.

use proptest::prelude::*;

use super::*;
use crate::{
    arbitrary::{self, Space},
    bundle::{Compiled, compile},
    policy::{
        eval::{Decision, ReportKind, RuleName, Verdict, evaluate, evaluate_path},
        model::PolicySet,
    },
    simulate::{Simulated, Simulation, expected_network_fields, network_hooks},
};
use palisade_contract::record::{self, DecisionRecord, flags};

const OFFSETS: KernelOffsets = KernelOffsets::LINUX_6_12;

/// What a decision's record says: (policy index, rule id, flags).
type Report = (u32, String, u32);

fn expected(set: &PolicySet, op: crate::policy::model::Operation, d: &Decision) -> (Verdict, Option<Report>) {
    let report = d.report.map(|r| {
        let mut f = flags::EVENT | if d.verdict == Verdict::Deny { flags::DENY } else { 0 };
        match r.kind {
            ReportKind::Deny => {}
            ReportKind::WouldDeny => f |= flags::AUDIT | flags::WOULD_DENY,
            ReportKind::Audit => f |= flags::AUDIT,
        }
        let rule = match r.rule {
            RuleName::Rule(i) => set.policies[r.policy].rule_id(op, i).unwrap_or_default().to_owned(),
            RuleName::Default => "default".to_owned(),
        };
        (r.policy as u32, rule, f)
    });
    (d.verdict, report)
}

/// The verdict and the one record (if any) a run produced, the record checked to decode.
fn observed(compiled: &Compiled, run: &Simulated) -> (Verdict, Option<Report>, Option<DecisionRecord>) {
    assert!(run.records.len() <= 1, "{:?} wrote {} records", run.hook, run.records.len());
    let Some(bytes) = run.records.first() else { return (run.verdict, None, None) };
    assert_eq!(bytes.len(), run.hook.spec().record.size(), "{:?} record size", run.hook);
    let r = DecisionRecord::decode(bytes).expect("the record decodes");
    let rule = &compiled.content.rules[r.rule as usize];
    (run.verdict, Some((rule.policy, rule.rule_id.clone(), r.flags)), Some(r))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn programs_decide_network_attempts_as_the_reference_evaluator(
        set in arbitrary::policy_set(&Space::under("")),
        attempts in prop::collection::vec(arbitrary::attempt(&Space::under("")), 30),
    ) {
        let compiled = compile(&set, OFFSETS).expect("compiles");
        let mut sim = Simulation::new(&compiled, OFFSETS).expect("maps");
        for attempt in &attempts {
            let want = expected(&set, attempt.operation, &evaluate(&set, attempt));
            for hook in network_hooks(attempt) {
                let run = sim.network(hook, attempt).unwrap_or_else(|e| panic!("{hook:?} {attempt:?}: {e:?}"));
                let (verdict, report, record) = observed(&compiled, &run);
                prop_assert_eq!((verdict, report), want.clone(), "{:?} {:?}", hook, attempt);
                if let Some(r) = record {
                    let fields = DecisionRecord { rule: r.rule, flags: r.flags, ..r };
                    prop_assert_eq!(fields, DecisionRecord { rule: r.rule, flags: r.flags, ..expected_network_fields(hook, attempt) });
                }
            }
        }
    }

    #[test]
    fn programs_decide_path_attempts_as_the_reference_evaluator(
        set in arbitrary::policy_set(&Space::under("")),
        attempts in prop::collection::vec(arbitrary::path_attempt(&Space::under("")), 30),
    ) {
        let compiled = compile(&set, OFFSETS).expect("compiles");
        let mut sim = Simulation::new(&compiled, OFFSETS).expect("maps");
        for attempt in &attempts {
            let want = expected(&set, attempt.operation, &evaluate_path(&set, attempt));
            let run = sim.path(attempt).unwrap_or_else(|e| panic!("{attempt:?}: {e:?}"));
            let (verdict, report, record) = observed(&compiled, &run);
            prop_assert_eq!((verdict, report), want, "{:?}", attempt);
            if let Some(r) = record {
                let files = attempt.operation == crate::policy::model::Operation::Files;
                prop_assert_eq!(r.detail, if files { attempt.access } else { 0 });
                prop_assert_eq!((r.family, r.port, r.addr), (0, 0, [0; 16]));
                prop_assert_eq!(r.hook, run.hook.id() as u32);
                let resolved = attempt.path.len() <= crate::policy::model::MAX_PATH;
                let path: &[u8] = if resolved { &attempt.path } else { b"" };
                prop_assert_eq!(r.path.as_deref(), Some(path));
            }
        }
    }
}

#[test]
fn a_program_writes_one_record_the_decoder_reads_back() {
    // The contract crossing in one case: connect to a denied port from the selected cgroup.
    let yaml = "name: demo\nworkload: {cgroup: /demo}\nnetwork:\n  connect:\n    rules:\n      - {id: block, action: deny, cidrs: [10.0.0.0/8], ports: [9999], protocols: [tcp]}\n";
    let docs: Vec<_> =
        palisade_proto::document::parse_all(yaml).into_iter().map(|d| d.expect("parses").to_proto()).collect();
    let set = PolicySet::new(docs.iter().map(|p| (p, 3)), Vec::new()).expect("model");
    let compiled = compile(&set, OFFSETS).expect("compiles");
    let mut sim = Simulation::new(&compiled, OFFSETS).expect("maps");
    let attempt = crate::policy::eval::Attempt {
        operation: crate::policy::model::Operation::Connect,
        cgroup: vec!["demo".into(), "api".into()],
        uid: 1000,
        addr: "10.1.2.3".parse().expect("addr"),
        port: 9999,
        protocol: crate::policy::model::Protocol::Tcp,
    };
    let run = sim.network(Hook::Connect4, &attempt).expect("runs");
    assert_eq!(run.verdict, Verdict::Deny);
    let r = DecisionRecord::decode(&run.records[0]).expect("decodes");
    assert_eq!((r.port, r.family, r.detail, r.uid), (9999, record::FAMILY_V4, record::PROTO_TCP, 1000));
    assert_eq!(&r.addr[..4], &[10, 1, 2, 3]);
    assert_eq!(compiled.content.rules[r.rule as usize].rule_id, "block");
    assert_eq!(r.flags, flags::DENY | flags::EVENT);
    // Another port, another cgroup: allowed, silently.
    let other = crate::policy::eval::Attempt { port: 9998, ..attempt.clone() };
    assert_eq!(sim.network(Hook::Connect4, &other).expect("runs").records.len(), 0);
    let outside = crate::policy::eval::Attempt { cgroup: vec!["other".into()], ..attempt };
    assert_eq!(sim.network(Hook::Connect4, &outside).expect("runs").verdict, Verdict::Allow);
}

/// A set that gives every hook every stage: selected cgroups at two depths, a uid, audit mode,
/// prefixes of both families with tails and port nodes, path rules with access sets.
const GOLDEN_SET: &str = "\
name: web
workload: {cgroup: /web/api, uid: 1000}
network:
  connect:
    default: audit
    rules:
      - {id: c1, action: deny, cidrs: [10.0.0.0/8, 10.1.2.3/32, \"2001:db8::/32\"], ports: [443, \"8000-8080\"]}
  bind:
    rules:
      - {id: b1, action: deny, ports: [6060], protocols: [udp]}
exec:
  rules:
    - {id: e1, action: deny, paths: [/usr/bin/curl, /opt/tools/]}
files:
  rules:
    - {id: f1, action: deny, access: [write], paths: [/etc/]}
connections:
  observe:
    rules:
      - {id: o1, cidrs: [10.0.0.0/8], ports: [443]}
  tune:
    rules:
      - {id: t1, cidrs: [\"::/0\"], congestion: cubic, no_delay: true}
---
name: watch
mode: audit
workload: {cgroup: /web}
network:
  connect:
    default: deny
";

#[test]
fn disassembly_of_every_hook_matches_its_reviewed_golden_file() {
    // The programs are reviewed as text: a change to the generated code shows up here as a
    // diff of the assembly. PALISADE_BLESS=1 rewrites the files after a deliberate change.
    let docs: Vec<_> =
        palisade_proto::document::parse_all(GOLDEN_SET).into_iter().map(|d| d.expect("parses").to_proto()).collect();
    let set = PolicySet::new(docs.iter().map(|p| (p, 1)), Vec::new()).expect("model");
    // Struct offsets of the sockops program as a node would report them (Debian 6.18).
    let sock = crate::program::SockOffsets {
        sk_cgrp_data: 664,
        sk_uid: 604,
        cgroup_level: 196,
        cgroup_kn: 256,
        cgroup_ancestors: 2288,
        kernfs_node_id: 96,
    };
    let compiled = compile(&set, KernelOffsets { sock: Some(sock), ..OFFSETS }).expect("compiles");
    assert_eq!(compiled.programs.len(), Hook::ALL.len());
    let bless = std::env::var_os("PALISADE_BLESS").is_some();
    for (hook, program) in &compiled.programs {
        let text = crate::bpf::disasm::disassemble(program);
        let path = format!("{}/src/program/golden/{}.txt", env!("CARGO_MANIFEST_DIR"), hook.symbol());
        if bless {
            std::fs::write(&path, &text).expect("write the golden file");
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(text == want, "{hook:?} differs from {path} (PALISADE_BLESS=1 accepts a deliberate change)");
    }
}
