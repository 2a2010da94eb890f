//! Differential test: the compiled bytecode, running in the real kernel on real connects,
//! must decide exactly what the reference evaluator decides — verdict and reported rule —
//! for random policy sets and attempts. Every generated bundle must also pass the verifier.
//!
//! `PALISADE_DIFF_CASES` sets the number of attempts (default 100,000; a long run uses
//! millions), `PALISADE_DIFF_SEED` replays a run (the seed is printed).
#![allow(clippy::print_stderr, reason = "the test reports its seed and figures")]

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::CommandExt as _,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Instant,
};

use palisade_agent::loader::{Datapath, Paths};
use palisade_compiler::{
    arbitrary::{self, Space},
    compile,
    policy::{
        eval::{Attempt, Decision, ReportKind, RuleName, Verdict, evaluate},
        model::{Operation, PolicySet, Protocol},
    },
    program::KernelOffsets,
};
use palisade_integration::{TestCgroup, TestPins, cgroup2, kernel_tests_enabled};
use palisade_proto::v1;
use proptest::{
    strategy::{Strategy as _, ValueTree as _},
    test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
};

const WORKER: &str = env!("CARGO_BIN_EXE_diff-worker");
const ATTEMPTS_PER_SET: usize = 400;

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    /// A worker in its own empty network namespace (nothing it does leaves the machine),
    /// running with real uid `uid`, moved into `cgroup_dir`.
    fn spawn(cgroup_dir: &std::path::Path, uid: u32) -> Self {
        let mut command = Command::new(WORKER);
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::unshare(libc::CLONE_NEWNET) != 0 || libc::setresuid(uid, uid, uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().expect("diff-worker starts");
        std::fs::write(cgroup_dir.join("cgroup.procs"), child.id().to_string()).expect("move worker into its cgroup");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self { child, stdin, stdout }
    }

    fn ask(&mut self, a: &Attempt) -> Verdict {
        let proto = if a.protocol == Protocol::Tcp { "tcp" } else { "udp" };
        let op = if a.operation == Operation::Bind { "bind" } else { "connect" };
        writeln!(self.stdin, "{op} {proto} {} {}", a.addr, a.port).expect("write to worker");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read from worker");
        match line.trim() {
            "D" => Verdict::Deny,
            "A" => Verdict::Allow,
            other => panic!("worker answered {other:?}"),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What an event should say, as comparable text.
fn expected_event(set: &PolicySet, attempt: &Attempt, d: &Decision) -> Option<String> {
    let report = d.report?;
    let policy = &set.policies[report.policy];
    let rule = match report.rule {
        RuleName::Default => "default".to_owned(),
        RuleName::Rule(i) => policy.section(attempt.operation).map(|s| s.rules[i].id.clone()).unwrap_or_default(),
    };
    let (verdict, would_deny) = match report.kind {
        ReportKind::Deny => (v1::Verdict::Deny, false),
        ReportKind::WouldDeny => (v1::Verdict::Audit, true),
        ReportKind::Audit => (v1::Verdict::Audit, false),
    };
    Some(format!(
        "{}@{}/{rule} {} would_deny={would_deny} {} {}",
        policy.name, policy.revision, verdict as i32, attempt.addr, attempt.port
    ))
}

fn actual_event(e: &v1::DecisionEvent) -> String {
    format!(
        "{}@{}/{} {} would_deny={} {} {}",
        e.policy, e.revision, e.rule_id, e.verdict, e.would_deny, e.address, e.port
    )
}

#[test]
fn bytecode_in_the_kernel_decides_exactly_as_the_reference_evaluator() {
    if !kernel_tests_enabled("differential") {
        return;
    }
    let cases: usize = std::env::var("PALISADE_DIFF_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let seed: u64 = std::env::var("PALISADE_DIFF_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("differential: {cases} attempts, PALISADE_DIFF_SEED={seed}");
    let cg = TestCgroup::new("diff");
    let space = Space::under(cg.path());
    for path in &space.task_cgroups {
        std::fs::create_dir_all(cg.dir_of(path)).expect("task cgroup");
    }
    let uids: Vec<u32> = space.uids.iter().copied().chain([5]).collect();
    let mut workers: HashMap<(Vec<String>, u32), Worker> = HashMap::new();
    for path in &space.task_cgroups {
        for &uid in &uids {
            let key = (palisade_compiler::policy::model::cgroup_components(path), uid);
            workers.insert(key, Worker::spawn(&cg.dir_of(path), uid));
        }
    }
    let pins = TestPins::new("diff");
    let state = tempfile::tempdir().expect("tempdir");
    let mut datapath = Datapath::new(Paths {
        bpffs: pins.path().to_owned(),
        state_dir: state.path().to_owned(),
        cgroup2: cgroup2(),
        attach: cg.dir(),
    });

    let mut seed_bytes = [0_u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
    let sets = arbitrary::policy_set(&space);
    let attempts = proptest::collection::vec(arbitrary::attempt(&space), ATTEMPTS_PER_SET);
    let started = Instant::now();
    let (mut done, mut denied, mut events_checked, mut generation) = (0, 0, 0, 0);
    while done < cases {
        generation += 1;
        let set = sets.new_tree(&mut runner).expect("generate a set").current();
        let batch = attempts.new_tree(&mut runner).expect("generate attempts").current();
        let compiled = compile(&set, KernelOffsets::LINUX_6_12).expect("compiles");
        let bundle = v1::Bundle {
            generation,
            digest: compiled.digest.clone(),
            content: compiled.bytes.clone().into(),
            ..Default::default()
        };
        let mut drained = Vec::new();
        datapath
            .apply(bundle, &mut drained)
            .unwrap_or_else(|e| panic!("the kernel rejected a generated bundle: {e}\nset: {set:#?}"));
        let mut expected_events = Vec::new();
        for attempt in &batch {
            let want = evaluate(&set, attempt);
            let worker = workers.get_mut(&(attempt.cgroup.clone(), attempt.uid)).expect("a worker per context");
            let got = worker.ask(attempt);
            assert_eq!(got, want.verdict, "seed {seed}: verdict differs for {attempt:?}\nset: {set:#?}");
            denied += usize::from(got == Verdict::Deny);
            expected_events.extend(expected_event(&set, attempt, &want));
        }
        let mut events = Vec::new();
        datapath.drain(&mut events);
        let actual: Vec<String> = events.iter().map(actual_event).collect();
        assert_eq!(actual, expected_events, "seed {seed}: events differ\nset: {set:#?}\nattempts: {batch:#?}");
        events_checked += actual.len();
        done += batch.len();
    }
    let elapsed = started.elapsed();
    eprintln!(
        "differential: {done} attempts over {generation} generated bundles, {denied} denied, {events_checked} events \
         compared, 0 mismatches, {:.1} s",
        elapsed.as_secs_f64()
    );
    datapath.remove_all().expect("cleanup");
}
