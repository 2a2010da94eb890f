//! The compiler–agent contract crossed end to end without root: records written by the
//! generated programs (run in the interpreter) are decoded by the agent's own decoder into the
//! `DecisionEvent`s the server stores.

use palisade_compiler::{
    compile,
    policy::{
        eval::{Attempt, PathAttempt, Verdict},
        model::{ACCESS_WRITE, Operation, PolicySet, Protocol},
    },
    program::KernelOffsets,
    simulate::Simulation,
};
use palisade_contract::Hook;
use palisade_proto::{document, v1};

const OFFSETS: KernelOffsets = KernelOffsets::LINUX_6_12;

const POLICIES: &str = "\
name: web
workload: {cgroup: /web}
network:
  connect:
    rules:
      - {id: block, action: deny, cidrs: [10.0.0.0/8, \"2001:db8::/32\"], ports: [9999], protocols: [tcp]}
  bind:
    rules:
      - {id: no-debug, action: deny, ports: [6060], protocols: [udp]}
files:
  rules:
    - {id: ro-etc, action: deny, access: [write], paths: [/etc/]}
---
name: watch
mode: audit
workload: {cgroup: /web}
exec:
  rules:
    - {id: curl, action: deny, paths: [/usr/bin/curl]}
";

fn set() -> PolicySet {
    let docs: Vec<v1::Policy> =
        document::parse_all(POLICIES).into_iter().map(|d| d.expect("parses").to_proto()).collect();
    PolicySet::new(docs.iter().zip([4, 9]), Vec::new()).expect("model")
}

fn network(operation: Operation, addr: &str, port: u16, protocol: Protocol) -> Attempt {
    Attempt { operation, cgroup: vec!["web".into()], uid: 1000, addr: addr.parse().expect("addr"), port, protocol }
}

#[test]
fn records_of_every_hook_decode_into_the_events_the_programs_meant() {
    let set = set();
    let compiled = compile(&set, OFFSETS).expect("compiles");
    let mut sim = Simulation::new(&compiled, OFFSETS).expect("maps");
    let mut events = Vec::new();
    let cases = [
        (Hook::Connect4, network(Operation::Connect, "10.1.2.3", 9999, Protocol::Tcp)),
        (Hook::Connect6, network(Operation::Connect, "2001:db8::7", 9999, Protocol::Tcp)),
        (Hook::LsmSocketConnect, network(Operation::Connect, "2001:db8::7", 9999, Protocol::Tcp)),
        (Hook::Bind4, network(Operation::Bind, "0.0.0.0", 6060, Protocol::Udp)),
        (Hook::LsmSocketBind, network(Operation::Bind, "::", 6060, Protocol::Udp)),
    ];
    for (hook, attempt) in &cases {
        let run = sim.network(*hook, attempt).expect("runs");
        assert_eq!(run.records.len(), 1, "{hook:?}");
        events.push(
            palisade_agent::events::decode(&run.records[0], &compiled.content, &compiled.digest, 0).expect("decodes"),
        );
    }
    for (event, (hook, attempt)) in events.iter().zip(&cases) {
        assert_eq!(event.hook, hook.section());
        assert_eq!(event.verdict, v1::Verdict::Deny as i32);
        assert_eq!((event.policy.as_str(), event.revision), ("web", 4));
        let rule = if attempt.operation == Operation::Bind { "no-debug" } else { "block" };
        assert_eq!(event.rule_id, rule);
        assert_eq!((event.address.clone(), event.port), (attempt.addr.to_string(), u32::from(attempt.port)));
        let protocol = if attempt.protocol == Protocol::Tcp { v1::Protocol::Tcp } else { v1::Protocol::Udp };
        assert_eq!(event.protocol, protocol as i32);
        assert_eq!((event.uid, event.pid, event.comm.as_str()), (1000, 4242, "test"));
        assert_eq!(event.bundle_digest, compiled.digest);
        assert_eq!(event.time.map(|t| (t.seconds, t.nanos)), Some((1, 7)), "the program's bpf_ktime_get_ns");
    }

    let open = PathAttempt {
        operation: Operation::Files,
        cgroup: vec!["web".into()],
        uid: 0,
        path: b"/etc/passwd".to_vec(),
        access: ACCESS_WRITE,
    };
    let run = sim.path(&open).expect("runs");
    let e = palisade_agent::events::decode(&run.records[0], &compiled.content, &compiled.digest, 0).expect("decodes");
    assert_eq!((e.hook.as_str(), e.path.as_str(), e.rule_id.as_str()), ("lsm/file_open", "/etc/passwd", "ro-etc"));
    assert_eq!(e.access, vec![v1::FileAccess::Write as i32]);
    assert_eq!((e.address.as_str(), e.port, e.protocol), ("", 0, v1::Protocol::Unspecified as i32));

    let exec = PathAttempt { operation: Operation::Exec, access: 0, path: b"/usr/bin/curl".to_vec(), ..open };
    let run = sim.path(&exec).expect("runs");
    assert_eq!(run.verdict, Verdict::Allow, "an audit-mode policy never denies");
    let e = palisade_agent::events::decode(&run.records[0], &compiled.content, &compiled.digest, 0).expect("decodes");
    assert_eq!((e.policy.as_str(), e.revision, e.rule_id.as_str()), ("watch", 9, "curl"));
    assert_eq!((e.verdict, e.would_deny), (v1::Verdict::Audit as i32, true));
    assert_eq!((e.hook.as_str(), e.path.as_str()), ("lsm/bprm_check_security", "/usr/bin/curl"));
}

#[test]
fn a_record_the_full_ring_buffer_refuses_is_counted_in_pal_lost_and_the_decision_stands() {
    let set = set();
    let compiled = compile(&set, OFFSETS).expect("compiles");
    let mut sim = Simulation::new(&compiled, OFFSETS).expect("maps");
    let lost = |sim: &mut Simulation<'_>| {
        let value = sim.maps_mut().get(palisade_contract::map::LOST, &0_u32.to_le_bytes()).expect("pal_lost[0]");
        u64::from_le_bytes(value.try_into().expect("a u64"))
    };
    let denied = network(Operation::Connect, "10.1.2.3", 9999, Protocol::Tcp);
    assert_eq!(lost(&mut sim), 0);
    sim.maps_mut().set_ring_full(true);
    for (n, hook) in [Hook::Connect4, Hook::LsmSocketConnect].into_iter().enumerate() {
        let out = sim.network(hook, &denied).expect("runs");
        assert_eq!(out.verdict, Verdict::Deny, "{hook:?}: a full ring buffer changes no decision");
        assert!(out.records.is_empty());
        assert_eq!(lost(&mut sim), n as u64 + 1, "{hook:?}: the refused record is counted");
    }
    let file = PathAttempt {
        operation: Operation::Files,
        cgroup: vec!["web".into()],
        uid: 0,
        path: b"/etc/passwd".to_vec(),
        access: ACCESS_WRITE,
    };
    let out = sim.path(&file).expect("runs");
    assert_eq!((out.verdict, out.records.len()), (Verdict::Deny, 0));
    assert_eq!(lost(&mut sim), 3, "path records are counted too");
    sim.maps_mut().set_ring_full(false);
    let out = sim.network(Hook::Connect4, &denied).expect("runs");
    assert_eq!(out.records.len(), 1, "room again: records flow");
    assert_eq!(lost(&mut sim), 3);
}
