//! The compiler's bundles in the real kernel through the agent's datapath: real programs,
//! real cgroup links, real connects from a cgroup this test owns.

use std::{net::TcpListener, time::Duration};

use palisade_agent::loader::{Datapath, Paths};
use palisade_compiler::{Compiled, compile, policy::model::PolicySet, program::KernelOffsets};
use palisade_integration::{Connect, TestCgroup, TestPins, cgroup2, dual_listeners, kernel_tests_enabled, probe};
use palisade_proto::{document, v1};
use palisade_testkit::eventually_blocking;

const PROBE: &str = env!("CARGO_BIN_EXE_connect-probe");
const OFFSETS: KernelOffsets = KernelOffsets::LINUX_6_12;

fn bundle(yaml: &str, generation: u64) -> (Compiled, v1::Bundle) {
    let policies: Vec<_> = document::parse_all(yaml).into_iter().map(|d| d.expect("parses").to_proto()).collect();
    let set = PolicySet::new(policies.iter().map(|p| (p, generation)), Vec::new()).expect("model");
    let compiled = compile(&set, OFFSETS).expect("compiles");
    let bundle = v1::Bundle {
        generation,
        digest: compiled.digest.clone(),
        content: compiled.bytes.clone().into(),
        ..Default::default()
    };
    (compiled, bundle)
}

fn policy(cgroup: &str, port: u16, action: &str) -> String {
    format!(
        "name: dp-test\nworkload: {{cgroup: \"{cgroup}\"}}\nnetwork:\n  connect:\n    rules:\n      - {{id: block, action: {action}, cidrs: [127.0.0.0/8, \"::1\"], ports: [{port}], protocols: [tcp]}}\n"
    )
}

#[test]
fn datapath_enforces_denies_reports_events_and_swaps_generations() {
    if !kernel_tests_enabled("datapath_enforces_denies_reports_events_and_swaps_generations") {
        return;
    }
    let cg = TestCgroup::new("dp");
    let work = cg.create_child("work");
    let bystander = cg.create_child("bystander");
    let (_v4, _v6, port) = dual_listeners();
    let allowed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let allowed_port = allowed.local_addr().expect("addr").port();
    let state = tempfile::tempdir().expect("tempdir");
    let pins = TestPins::new("dp");
    let mut datapath = Datapath::new(Paths {
        bpffs: pins.path().to_owned(),
        state_dir: state.path().to_owned(),
        cgroup2: cgroup2(),
        attach: cg.dir(),
    });

    let (_, deny) = bundle(&policy(&work, port, "deny"), 1);
    let mut drained = Vec::new();
    datapath.apply(deny, &mut drained).expect("the kernel accepts the bundle");
    assert_eq!(datapath.batch_fallbacks(), 0, "array contents go in with BPF_MAP_UPDATE_BATCH");

    let in_work = Some(cg.dir_of(&work));
    assert_eq!(probe(PROBE, in_work.as_deref(), "tcp", "127.0.0.1", port), Connect::Denied, "IPv4 denied");
    assert_eq!(probe(PROBE, in_work.as_deref(), "tcp", "::1", port), Connect::Denied, "IPv6 denied");
    assert_eq!(probe(PROBE, in_work.as_deref(), "tcp", "127.0.0.1", allowed_port), Connect::Ok, "other port allowed");
    let in_bystander = Some(cg.dir_of(&bystander));
    assert_eq!(probe(PROBE, in_bystander.as_deref(), "tcp", "127.0.0.1", port), Connect::Ok, "other cgroup unaffected");
    assert_eq!(probe(PROBE, None, "tcp", "127.0.0.1", port), Connect::Ok, "outside the attach point unaffected");

    let mut events = Vec::new();
    eventually_blocking("two deny events", Duration::from_secs(5), || {
        datapath.drain(&mut events);
        (events.len() >= 2).then_some(())
    });
    assert_eq!(events.len(), 2, "one event per denied connect: {events:?}");
    for (event, address) in events.iter().zip(["127.0.0.1", "::1"]) {
        assert_eq!((event.policy.as_str(), event.revision, event.rule_id.as_str()), ("dp-test", 1, "block"));
        assert_eq!(event.verdict, v1::Verdict::Deny as i32);
        assert_eq!((event.address.as_str(), event.port), (address, u32::from(port)));
        assert_eq!(event.comm, "connect-probe");
        assert!(event.pid > 0 && event.cgroup_id > 0);
    }

    // A new generation that allows: swapped in place through BPF_LINK_UPDATE.
    let (_, allow) = bundle(&policy(&work, port, "allow"), 2);
    datapath.apply(allow, &mut drained).expect("swap");
    assert_eq!(probe(PROBE, in_work.as_deref(), "tcp", "127.0.0.1", port), Connect::Ok, "allowed after the swap");

    // A cgroup created after the bundle arrived is covered (under the selected subtree).
    let (_, deny_again) = bundle(&policy(&work, port, "deny"), 3);
    datapath.apply(deny_again, &mut drained).expect("swap back");
    let late = format!("{work}/late");
    std::fs::create_dir_all(cg.dir_of(&late)).expect("late cgroup");
    assert_eq!(probe(PROBE, Some(&cg.dir_of(&late)), "tcp", "127.0.0.1", port), Connect::Denied);

    // Swaps between two denying generations under a loop of connects: none slips through.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (stop, dir) = (stop.clone(), cg.dir_of(&work));
        std::thread::spawn(move || {
            let (mut tries, mut through) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tries += 1;
                if probe(PROBE, Some(&dir), "tcp", "127.0.0.1", port) != Connect::Denied {
                    through += 1;
                }
            }
            (tries, through)
        })
    };
    for generation in 4..24 {
        // Alternate rule ids so every generation is a different bundle.
        let id = if generation % 2 == 0 { "id: block" } else { "id: block-again" };
        let yaml = policy(&work, port, "deny").replace("id: block", id);
        let (_, next) = bundle(&yaml, generation);
        datapath.apply(next, &mut drained).expect("swap under load");
        std::thread::sleep(Duration::from_millis(15));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (tries, through) = prober.join().expect("prober");
    assert!(tries > 10, "the prober ran ({tries} connects)");
    assert_eq!(through, 0, "{through} of {tries} connects got through during 20 swaps");

    // A selected cgroup that does not exist yet is enforced once it appears.
    let future = format!("{}/future", cg.path());
    let (_, pending) = bundle(&policy(&future, port, "deny"), 30);
    datapath.apply(pending, &mut drained).expect("apply for a missing cgroup");
    std::fs::create_dir_all(cg.dir_of(&future)).expect("create the selected cgroup");
    datapath.sync_cgroups().expect("rescan");
    assert_eq!(probe(PROBE, Some(&cg.dir_of(&future)), "tcp", "127.0.0.1", port), Connect::Denied);
    assert_eq!(probe(PROBE, in_work.as_deref(), "tcp", "127.0.0.1", port), Connect::Ok, "work is no longer selected");

    datapath.remove_all().expect("cleanup");
    // The kernel frees a link whose last pin went away on a workqueue: poll.
    eventually_blocking("removing the pins to detach", Duration::from_secs(5), || {
        (probe(PROBE, in_work.as_deref(), "tcp", "127.0.0.1", port) == Connect::Ok).then_some(())
    });
}

/// `bundle` re-issued for `node`, signed as the server signs it.
fn issued(signer: &palisade_server::signing::BundleSigner, mut bundle: v1::Bundle, node: &str) -> v1::Bundle {
    node.clone_into(&mut bundle.node);
    bundle.issued_at = Some(std::time::SystemTime::now().into());
    bundle.signature = signer.sign(&palisade_proto::envelope(&bundle));
    bundle
}

fn generation_dirs(pins: &TestPins) -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir(pins.path())
        .expect("pins")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("gen-"))
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn a_bundle_for_another_node_or_an_older_generation_is_refused_and_nothing_changes() {
    if !kernel_tests_enabled("a_bundle_for_another_node_or_an_older_generation_is_refused_and_nothing_changes") {
        return;
    }
    let cg = TestCgroup::new("bound");
    let work = cg.create_child("work");
    let (_v4, _v6, port) = dual_listeners();
    let state = tempfile::tempdir().expect("tempdir");
    let pins = TestPins::new("bound");
    let signer = palisade_server::signing::BundleSigner::generate();
    let key = palisade_agent::public_key(&signer.public_key_hex()).expect("key");
    let mut datapath = Datapath::new(Paths {
        bpffs: pins.path().to_owned(),
        state_dir: state.path().to_owned(),
        cgroup2: cgroup2(),
        attach: cg.dir(),
    })
    .with_public_key(Some(key))
    .for_node("node-a");
    let in_work = Some(cg.dir_of(&work));
    let denied = || probe(PROBE, in_work.as_deref(), "tcp", "127.0.0.1", port) == Connect::Denied;
    let mut drained = Vec::new();

    let deny5 = issued(&signer, bundle(&policy(&work, port, "deny"), 5).1, "node-a");
    datapath.apply(deny5.clone(), &mut drained).expect("node-a's own bundle");
    assert!(denied(), "generation 5 enforces");
    let before = generation_dirs(&pins);
    let allow = |generation, node| issued(&signer, bundle(&policy(&work, port, "allow"), generation).1, node);
    let refusals = [
        ("signed for node-b", allow(6, "node-b")),
        ("an older generation", allow(4, "node-a")),
        ("generation 5 with other content", allow(5, "node-a")),
    ];
    for (what, offered) in refusals {
        let err = datapath.apply(offered, &mut drained).expect_err(what);
        let expected = if what.contains("node-b") { "issued for node" } else { "not newer than the enforced" };
        assert!(err.to_string().contains(expected), "{what}: {err}");
        assert_eq!(datapath.active().map(|(g, _)| g), Some(5), "{what}: generation 5 still recorded");
        assert_eq!(generation_dirs(&pins), before, "{what}: nothing was loaded or pinned");
        assert!(denied(), "{what}: generation 5 keeps enforcing");
    }
    datapath.apply(deny5.clone(), &mut drained).expect("the enforced bundle again is a no-op");

    // The guard refuses only what it should: a newer generation for this node goes in.
    datapath.apply(allow(6, "node-a"), &mut drained).expect("generation 6");
    assert!(!denied(), "generation 6 allows");
    // Replaying the correctly signed generation 5 now is a downgrade.
    let err = datapath.apply(deny5, &mut drained).expect_err("replayed generation 5");
    assert!(matches!(err, palisade_agent::loader::LoadError::Stale { generation: 5, enforced: 6, .. }), "{err}");
    assert!(!denied(), "generation 6 keeps enforcing");
    datapath.remove_all().expect("cleanup");
}

#[test]
fn records_the_full_ring_buffer_refuses_are_counted_and_every_deny_is_accounted_for() {
    const DENIES: usize = 10_000;
    if !kernel_tests_enabled("records_the_full_ring_buffer_refuses_are_counted_and_every_deny_is_accounted_for") {
        return;
    }
    let cg = TestCgroup::new("ringfull");
    let work = cg.create_child("work");
    let (_v4, _v6, port) = dual_listeners();
    let state = tempfile::tempdir().expect("tempdir");
    let pins = TestPins::new("ringfull");
    let mut datapath = Datapath::new(Paths {
        bpffs: pins.path().to_owned(),
        state_dir: state.path().to_owned(),
        cgroup2: cgroup2(),
        attach: cg.dir(),
    });
    let mut drained = Vec::new();
    datapath.apply(bundle(&policy(&work, port, "deny"), 1).1, &mut drained).expect("apply");
    // Nobody drains while the workload denies itself 10,000 times: the 256 KiB ring buffer
    // holds a few thousand records, the rest must be counted, not lost silently.
    let out = std::process::Command::new(PROBE)
        .arg("--cgroup")
        .arg(cg.dir_of(&work))
        .args(["--repeat", &DENIES.to_string(), "tcp", "127.0.0.1", &port.to_string()])
        .output()
        .expect("probe runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("ok=0 eperm={DENIES} other=0"));
    let mut events = Vec::new();
    datapath.drain(&mut events);
    let lost = datapath.ring_lost();
    assert!(lost > 0 && !events.is_empty(), "the ring overflowed: {} drained, {lost} lost", events.len());
    assert_eq!(events.len() as u64 + lost, DENIES as u64, "every deny is a record or a count");
    // The count survives a swap (it is the datapath's, not one generation's).
    datapath
        .apply(bundle(&policy(&work, port, "deny").replace("id: block", "id: again"), 2).1, &mut drained)
        .expect("swap");
    assert_eq!(datapath.ring_lost(), lost);
}
