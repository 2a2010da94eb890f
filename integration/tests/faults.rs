//! Crash consistency of the agent's datapath: the agent is killed (SIGABRT, through the
//! `PALISADE_FAULT_AT` seam) at every step of a swap while a workload keeps connecting; the
//! restarted agent must find exactly one generation enforcing, leave no stale pins, and
//! apply the next bundle. Real programs, real cgroup links, a cgroup this test owns.

use std::{
    os::unix::process::ExitStatusExt as _,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use palisade_agent::loader::FAULT_STEPS;
use palisade_compiler::{compile, policy::model::PolicySet, program::KernelOffsets};
use palisade_integration::{
    Connect, TestCgroup, TestPins, attached_programs, cgroup2, dual_listeners, kernel_tests_enabled, probe,
};
use palisade_proto::{document, v1};
use prost::Message as _;

const PROBE: &str = env!("CARGO_BIN_EXE_connect-probe");
const WORKER: &str = env!("CARGO_BIN_EXE_datapath-worker");
/// `BPF_CGROUP_INET{4,6}_{BIND,CONNECT}`.
const CGROUP_HOOKS: [u32; 4] = [8, 9, 10, 11];

fn bundle(cgroup: &str, port: u16, action: &str, rule: &str, generation: u64) -> v1::Bundle {
    let yaml = format!(
        "name: crash\nworkload: {{cgroup: \"{cgroup}\"}}\nnetwork:\n  connect:\n    rules:\n      - {{id: {rule}, action: {action}, cidrs: [127.0.0.0/8, \"::1\"], ports: [{port}], protocols: [tcp]}}\n"
    );
    let policies: Vec<_> = document::parse_all(&yaml).into_iter().map(|d| d.expect("parses").to_proto()).collect();
    let set = PolicySet::new(policies.iter().map(|p| (p, generation)), Vec::new()).expect("model");
    let compiled = compile(&set, KernelOffsets::LINUX_6_12).expect("compiles");
    v1::Bundle { generation, digest: compiled.digest, content: compiled.bytes.into(), ..Default::default() }
}

/// A node for one test: a workload cgroup, a listener the policies deny or allow, pins and
/// a state directory.
struct Node {
    cg: TestCgroup,
    work: String,
    port: u16,
    _listeners: (std::net::TcpListener, std::net::TcpListener),
    pins: TestPins,
    state: tempfile::TempDir,
    scratch: tempfile::TempDir,
}

impl Node {
    fn new(name: &str) -> Self {
        let cg = TestCgroup::new(name);
        let work = cg.create_child("work");
        let (v4, v6, port) = dual_listeners();
        let (state, scratch) = (tempfile::tempdir().expect("state"), tempfile::tempdir().expect("scratch"));
        Self { cg, work, port, _listeners: (v4, v6), pins: TestPins::new(name), state, scratch }
    }

    fn bundle(&self, action: &str, rule: &str, generation: u64) -> v1::Bundle {
        bundle(&self.work, self.port, action, rule, generation)
    }

    /// One connect from the workload to the port.
    fn connect(&self) -> Connect {
        probe(PROBE, Some(&self.cg.dir_of(&self.work)), "tcp", "127.0.0.1", self.port)
    }

    /// One agent lifetime: adopt, then apply `bundle`, optionally dying at `fault`.
    fn run(&self, bundle: &v1::Bundle, fault: Option<&str>) -> (std::process::ExitStatus, String) {
        let file = self.scratch.path().join(format!("bundle-{}", bundle.generation));
        std::fs::write(&file, bundle.encode_to_vec()).expect("bundle file");
        let out = Command::new(WORKER)
            .args([self.pins.path(), self.state.path(), &cgroup2(), &self.cg.dir(), &file])
            .env("PALISADE_FAULT_AT", fault.unwrap_or_default())
            .env("PALISADE_LOG", "warn")
            .output()
            .expect("worker runs");
        (out.status, String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn generation_dirs(&self) -> Vec<String> {
        let mut dirs: Vec<String> = std::fs::read_dir(self.pins.path())
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        dirs.retain(|d| d.starts_with("gen-"));
        dirs.sort();
        dirs
    }

    fn recorded_bundles(&self) -> usize {
        std::fs::read_dir(self.state.path().join("generations")).map_or(0, Iterator::count)
    }
}

#[test]
fn a_crash_at_every_step_of_a_swap_leaves_one_generation_and_the_next_one_applies() {
    if !kernel_tests_enabled("a_crash_at_every_step_of_a_swap_leaves_one_generation_and_the_next_one_applies") {
        return;
    }
    let node = Node::new("crash");
    let mut generation = 1;
    let (status, out) = node.run(&node.bundle("deny", "block", generation), None);
    assert!(status.success(), "first bundle: {out}");
    assert_eq!(node.connect(), Connect::Denied);

    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (stop, dir, port) = (stop.clone(), node.cg.dir_of(&node.work), node.port);
        std::thread::spawn(move || {
            let (mut tries, mut through) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                tries += 1;
                match probe(PROBE, Some(&dir), "tcp", "127.0.0.1", port) {
                    Connect::Denied => {}
                    other => through.push(other),
                }
            }
            (tries, through)
        })
    };
    for step in FAULT_STEPS {
        generation += 1;
        let dying = node.bundle("deny", &format!("block-{step}"), generation);
        let (status, out) = node.run(&dying, Some(step));
        assert_eq!(status.signal(), Some(libc::SIGABRT), "{step}: the worker should die there: {status:?} {out}");
        generation += 1;
        let next = node.bundle("deny", &format!("after-{step}"), generation);
        let (status, out) = node.run(&next, None);
        assert!(status.success(), "{step}: the restarted agent must apply the next bundle: {out}");
        assert!(out.contains("adopted true"), "{step}: something enforcing was adopted: {out}");
        for hook in CGROUP_HOOKS {
            assert_eq!(attached_programs(&node.cg.dir(), hook), 1, "{step}: exactly one program on attach type {hook}");
        }
        let dirs = node.generation_dirs();
        let expected = format!("gen-{generation}-{}", &next.digest[..16]);
        assert_eq!(dirs, [expected], "{step}: only the new generation is pinned");
        assert_eq!(node.recorded_bundles(), 1, "{step}: only the new generation's bundle is recorded");
        let active = std::fs::read(node.state.path().join("active.bundle")).expect("state file");
        assert_eq!(v1::Bundle::decode(active.as_slice()).expect("state").digest, next.digest, "{step}: state = kernel");
    }
    stop.store(true, Ordering::Relaxed);
    let (tries, through) = prober.join().expect("prober");
    assert!(tries > 20, "the prober ran ({tries} connects)");
    assert!(through.is_empty(), "{} of {tries} denied connects got through: {through:?}", through.len());

    // Nothing stale keeps denying: an allowing generation allows.
    generation += 1;
    let (status, out) = node.run(&node.bundle("allow", "open", generation), None);
    assert!(status.success(), "{out}");
    assert_eq!(node.connect(), Connect::Ok);
}

#[test]
fn a_read_only_state_directory_is_a_nack_that_changes_nothing_and_recovers() {
    if !kernel_tests_enabled("a_read_only_state_directory_is_a_nack_that_changes_nothing_and_recovers") {
        return;
    }
    let node = Node::new("rostate");
    let (status, out) = node.run(&node.bundle("deny", "block", 1), None);
    assert!(status.success(), "{out}");
    // Root ignores permission bits: make the directory read-only with a read-only bind mount.
    let dir = node.state.path().to_str().expect("utf-8 path");
    let mount = |args: &[&str]| Command::new("mount").args(args).status().expect("mount runs").success();
    assert!(mount(&["--bind", dir, dir]) && mount(&["-o", "remount,bind,ro", dir]), "read-only bind mount");
    let (status, out) = node.run(&node.bundle("allow", "open", 2), None);
    let _ = Command::new("umount").arg(dir).status();
    assert!(!status.success(), "the swap must be refused: {out}");
    assert!(out.contains("Read-only file system"), "the NACK names the cause: {out}");
    assert_eq!(node.connect(), Connect::Denied, "the previous generation enforces");
    assert_eq!(node.generation_dirs().len(), 1, "nothing of the refused generation stays pinned");

    let (status, out) = node.run(&node.bundle("allow", "open", 3), None);
    assert!(status.success(), "writable again: the next bundle applies: {out}");
    assert_eq!(node.connect(), Connect::Ok);
}
