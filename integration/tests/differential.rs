//! Differential test: the compiled bytecode, running in the real kernel on real connects,
//! must decide exactly what the reference evaluator decides — verdict and reported rule —
//! for random policy sets and attempts. Every generated bundle must also pass the verifier.
//!
//! `PALISADE_DIFF_CASES` sets the number of attempts (default 100,000; a long run uses
//! millions), `PALISADE_DIFF_SEED` replays a run (the seed is printed).
//!
//! The sock_ops differential does the same for `connections`: real TCP connections from
//! workloads in random cgroups and uids to random peers (every address is local in the
//! workers' network namespaces), each accepted by a listener of the same workload, so both an
//! outbound and an inbound connection exist. The flow records the kernel writes (which policy
//! and rule observed each end, which tune rule decided it and whether it was applied) and the
//! settings each end reports (congestion control, `TCP_NODELAY`, initial window) must be what
//! the reference evaluator says.
//! `PALISADE_TCP_DIFF_CASES` sets the number of connections (default 10,000).
#![allow(clippy::print_stderr, reason = "the test reports its seed and figures")]

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use palisade_agent::{
    events::Flow,
    loader::{Datapath, Paths},
};
use palisade_compiler::{
    arbitrary::{self, Space},
    compile,
    policy::{
        eval::{Attempt, Decision, ReportKind, RuleName, Verdict, evaluate},
        model::{Mode, Operation, PolicySet, Protocol, TuneSettings},
    },
    program::KernelOffsets,
};
use palisade_contract::record::flow::flags;
use palisade_integration::{TestCgroup, TestPins, cgroup2, kernel_tests_enabled, node_offsets};
use palisade_proto::v1;
use proptest::{
    strategy::{Strategy as _, ValueTree as _},
    test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
};

const WORKER: &str = env!("CARGO_BIN_EXE_diff-worker");
const ATTEMPTS_PER_SET: usize = 400;
const CONNECTIONS_PER_SET: usize = 200;

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    /// A worker in its own empty network namespace (nothing it does leaves the machine),
    /// running with real uid `uid`, moved into `cgroup_dir`.
    fn spawn(cgroup_dir: &std::path::Path, uid: u32) -> Self {
        Self::start(cgroup_dir, &[], Some(uid))
    }

    /// `diff-worker ARGS` in a new network namespace, as `uid` if given (else root), moved
    /// into `cgroup_dir`.
    fn start(cgroup_dir: &std::path::Path, args: &[&str], uid: Option<u32>) -> Self {
        let mut command = Command::new(WORKER);
        command.args(args).stdin(Stdio::piped()).stdout(Stdio::piped());
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::unshare(libc::CLONE_NEWNET) != 0 || uid.is_some_and(|u| libc::setresuid(u, u, u) != 0) {
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

    fn say(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("write to worker");
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).expect("read from worker");
        answer.trim().to_owned()
    }

    fn ask(&mut self, a: &Attempt) -> Verdict {
        let proto = if a.protocol == Protocol::Tcp { "tcp" } else { "udp" };
        let op = if a.operation == Operation::Bind { "bind" } else { "connect" };
        match self.say(&format!("{op} {proto} {} {}", a.addr, a.port)).as_str() {
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

/// A test cgroup with the arbitrary space's task cgroups, one worker per (cgroup, uid), and a
/// datapath attached to the cgroup. The fields it only keeps alive are dropped with it.
struct Rig<W> {
    space: Space,
    workers: HashMap<(Vec<String>, u32), W>,
    datapath: Datapath,
    _cgroup: TestCgroup,
    _pins: TestPins,
    _state: tempfile::TempDir,
}

impl<W> Rig<W> {
    fn new(name: &str, spawn: impl Fn(&std::path::Path, u32) -> W) -> Self {
        let cg = TestCgroup::new(name);
        let space = Space::under(cg.path());
        for path in &space.task_cgroups {
            std::fs::create_dir_all(cg.dir_of(path)).expect("task cgroup");
        }
        let mut workers = HashMap::new();
        for path in &space.task_cgroups {
            for uid in space.uids.iter().copied().chain([5]) {
                let key = (palisade_compiler::policy::model::cgroup_components(path), uid);
                workers.insert(key, spawn(&cg.dir_of(path), uid));
            }
        }
        let pins = TestPins::new(name);
        let state = tempfile::tempdir().expect("tempdir");
        let datapath = Datapath::new(Paths {
            bpffs: pins.path().to_owned(),
            state_dir: state.path().to_owned(),
            cgroup2: cgroup2(),
            attach: cg.dir(),
        });
        Self { space, workers, datapath, _cgroup: cg, _pins: pins, _state: state }
    }
}

/// Compiles `set` for `offsets` and makes it generation `generation` of `datapath`; every
/// generated bundle must pass the verifier.
fn enforce(datapath: &mut Datapath, set: &PolicySet, generation: u64, offsets: KernelOffsets) {
    let compiled = compile(set, offsets).expect("compiles");
    let bundle =
        v1::Bundle { generation, digest: compiled.digest, content: compiled.bytes.into(), ..Default::default() };
    datapath
        .apply(bundle, &mut Vec::new())
        .unwrap_or_else(|e| panic!("the kernel rejected a generated bundle: {e}\nset: {set:#?}"));
}

/// `PALISADE_DIFF_SEED`, else a new seed.
fn seed() -> u64 {
    std::env::var("PALISADE_DIFF_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    })
}

/// A proptest runner that replays `seed`.
fn runner(seed: u64) -> TestRunner {
    let mut seed_bytes = [0_u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes))
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
    let seed = seed();
    eprintln!("differential: {cases} attempts, PALISADE_DIFF_SEED={seed}");
    let rig = Rig::new("diff", Worker::spawn);
    let (space, mut workers, mut datapath) = (rig.space, rig.workers, rig.datapath);

    let mut runner = runner(seed);
    let sets = arbitrary::policy_set(&space);
    let attempts = proptest::collection::vec(arbitrary::attempt(&space), ATTEMPTS_PER_SET);
    let started = Instant::now();
    let (mut done, mut denied, mut events_checked, mut generation) = (0, 0, 0, 0);
    while done < cases {
        generation += 1;
        let set = sets.new_tree(&mut runner).expect("generate a set").current();
        let batch = attempts.new_tree(&mut runner).expect("generate attempts").current();
        enforce(&mut datapath, &set, generation, KernelOffsets::LINUX_6_12);
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

/// A sock_ops differential workload: `diff-worker tcp` in its own network namespace, in one
/// cgroup, as one uid, with a listener on every attempt port.
struct TcpWorker {
    worker: Worker,
    cgroup_id: u64,
}

/// One end of a connection as the worker saw it.
#[derive(Debug)]
struct End {
    local: SocketAddr,
    peer: SocketAddr,
    /// `CONGESTION,NODELAY,CWND` (diff-worker's module comment).
    settings: String,
}

#[derive(Debug)]
enum Outcome {
    /// EPERM: the connect hook denied it.
    Denied,
    /// No connection for another reason (port 0, …).
    Failed(String),
    /// The connecting end and the accepted end.
    Connected(End, End),
}

impl TcpWorker {
    fn spawn(cgroup_dir: &std::path::Path, uid: u32) -> Self {
        // The worker configures its namespace as root, then drops to `uid` itself.
        let mut worker = Worker::start(cgroup_dir, &["tcp", &uid.to_string(), &arbitrary::ADDRS.join(",")], None);
        let ports: Vec<String> = arbitrary::ATTEMPT_PORTS.iter().filter(|&&p| p != 0).map(u16::to_string).collect();
        assert_eq!(worker.say(&format!("listen {}", ports.join(" "))), "ok", "the worker listens");
        let cgroup_id = std::fs::metadata(cgroup_dir).expect("cgroup dir").ino();
        Self { worker, cgroup_id }
    }

    fn connect(&mut self, a: &Attempt) -> Outcome {
        let answer = self.worker.say(&format!("connect {} {}", a.addr, a.port));
        let words: Vec<&str> = answer.split_whitespace().collect();
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap_or_else(|_| panic!("worker answered {answer:?}"));
        match words.as_slice() {
            ["D"] => Outcome::Denied,
            ["C", l, p, c, al, ap, ac] => Outcome::Connected(
                End { local: addr(l), peer: addr(p), settings: (*c).to_owned() },
                End { local: addr(al), peer: addr(ap), settings: (*ac).to_owned() },
            ),
            ["E", ..] => Outcome::Failed(answer.clone()),
            _ => panic!("worker answered {answer:?}"),
        }
    }
}

/// A flow record as comparable text: the socket's cgroup and uid, direction, both ends
/// (IPv4-mapped shown as IPv4), the observe rule, and the tune rule with what happened.
fn record_text(
    cgroup_id: u64,
    uid: u32,
    inbound: bool,
    local: SocketAddr,
    peer: SocketAddr,
    observe: &str,
    tune: &str,
) -> String {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let direction = if inbound { "in" } else { "out" };
    format!("{cgroup_id} uid={uid} {direction} {} -> {} {observe} tune={tune}", canonical(local), canonical(peer))
}

fn actual_record(f: &Flow) -> String {
    let r = &f.record;
    let tune = match &f.tune {
        None => "none".to_owned(),
        Some(rule) => {
            let what = if r.flags & flags::TUNE_REFUSED != 0 {
                "refused"
            } else if r.flags & flags::WOULD_TUNE != 0 {
                "would"
            } else if r.flags & flags::TUNED != 0 {
                "applied"
            } else {
                "unflagged"
            };
            format!("{rule} {what}")
        }
    };
    record_text(
        r.cgroup_id,
        r.uid,
        f.inbound(),
        SocketAddr::new(f.local, r.local_port),
        SocketAddr::new(f.peer, r.peer_port),
        &format!("{}@{}/{}", f.policy, f.revision, f.rule_id),
        &tune,
    )
}

/// The rule a decision reports, `policy/rule`, with its policy's mode and revision and (for a
/// tune rule) its settings.
fn reported_rule<'a>(
    set: &'a PolicySet,
    op: Operation,
    d: &Decision,
) -> Option<(String, Mode, u64, Option<&'a TuneSettings>)> {
    let report = d.report?;
    let policy = &set.policies[report.policy];
    let (rule, settings) = match report.rule {
        RuleName::Default => ("default".to_owned(), None),
        RuleName::Rule(i) => (
            policy.section(op).map(|s| s.rules[i].id.clone()).unwrap_or_default(),
            if op == Operation::Tune { policy.tune_settings.get(i) } else { None },
        ),
    };
    Some((format!("{}/{rule}", policy.name), policy.mode, policy.revision, settings))
}

/// Counts of what a sock_ops run exercised, so it cannot pass by exercising nothing.
#[derive(Debug, Default)]
struct TcpCounts {
    connections: usize,
    denied: usize,
    failed: usize,
    records: usize,
    inbound_records: usize,
    ipv6_records: usize,
    tuned: usize,
    would_tune: usize,
}

/// Checks one end of a connection against the evaluator; returns the record it expects.
fn expect_end(set: &PolicySet, attempt: &Attempt, end: &End, inbound: bool, cgroup_id: u64) -> Option<String> {
    let peer = Attempt {
        operation: Operation::Observe,
        addr: end.peer.ip(),
        port: end.peer.port(),
        protocol: Protocol::Tcp,
        ..attempt.clone()
    };
    let observe = reported_rule(set, Operation::Observe, &evaluate(set, &peer));
    let tune_attempt = Attempt { operation: Operation::Tune, ..peer.clone() };
    let tune = reported_rule(set, Operation::Tune, &evaluate(set, &tune_attempt));
    // The workers' namespaces default to reno, no TCP_NODELAY and the kernel's initial window.
    let mut want = TuneSettings { congestion: "reno".to_owned(), initial_cwnd: 10, no_delay: false };
    if let Some((_, Mode::Enforce, _, Some(p))) = &tune {
        if !p.congestion.is_empty() {
            want.congestion.clone_from(&p.congestion);
        }
        if p.initial_cwnd != 0 {
            want.initial_cwnd = p.initial_cwnd;
        }
        want.no_delay |= p.no_delay;
    }
    let want = format!("{},{},{}", want.congestion, u8::from(want.no_delay), want.initial_cwnd);
    assert_eq!(
        end.settings,
        want,
        "settings of the {} end of {attempt:?} ({end:?}); tune decision {tune:?}\nset: {set:#?}",
        if inbound { "accepted" } else { "connecting" }
    );
    let (name, _, revision, _) = observe?;
    let (policy, rule) = name.split_once('/').unwrap_or((&name, ""));
    let tune = match tune {
        None => "none".to_owned(),
        Some((rule, Mode::Enforce, ..)) => format!("{rule} applied"),
        Some((rule, Mode::Audit, ..)) => format!("{rule} would"),
    };
    Some(record_text(
        cgroup_id,
        attempt.uid,
        inbound,
        end.local,
        end.peer,
        &format!("{policy}@{revision}/{rule}"),
        &tune,
    ))
}

/// Makes every connection of `batch`, checks the connect verdicts and both ends' settings,
/// and returns the flow records the evaluator expects.
fn connect_all(
    set: &PolicySet,
    batch: &[Attempt],
    workers: &mut HashMap<(Vec<String>, u32), TcpWorker>,
    counts: &mut TcpCounts,
    seed: u64,
) -> Vec<String> {
    let mut expected = Vec::new();
    for attempt in batch {
        let connect = Attempt { operation: Operation::Connect, ..attempt.clone() };
        let verdict = evaluate(set, &connect).verdict;
        let worker = workers.get_mut(&(attempt.cgroup.clone(), attempt.uid)).expect("a worker per context");
        let cgroup_id = worker.cgroup_id;
        match worker.connect(attempt) {
            Outcome::Denied => {
                assert_eq!(verdict, Verdict::Deny, "seed {seed}: {connect:?} was denied\nset: {set:#?}");
                counts.denied += 1;
            }
            Outcome::Failed(why) => {
                assert_eq!(verdict, Verdict::Allow, "seed {seed}: {connect:?}: {why}\nset: {set:#?}");
                counts.failed += 1;
            }
            Outcome::Connected(client, server) => {
                assert_eq!(verdict, Verdict::Allow, "seed {seed}: {connect:?} connected\nset: {set:#?}");
                counts.connections += 1;
                expected.extend(expect_end(set, attempt, &client, false, cgroup_id));
                expected.extend(expect_end(set, attempt, &server, true, cgroup_id));
            }
        }
    }
    expected
}

/// Drains flow records until `n` arrived or `wait` passed, then briefly for extra ones.
fn drain_flows(datapath: &mut Datapath, n: usize, wait: Duration) -> Vec<Flow> {
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    loop {
        datapath.drain(&mut Vec::new());
        out.extend(datapath.take_flows());
        if out.len() >= n || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(20));
    datapath.drain(&mut Vec::new());
    out.extend(datapath.take_flows());
    out
}

#[test]
fn sock_ops_in_the_kernel_observes_and_tunes_exactly_as_the_reference_evaluator() {
    if !kernel_tests_enabled("sock_ops differential") {
        return;
    }
    let cases: usize = std::env::var("PALISADE_TCP_DIFF_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let seed = seed();
    eprintln!("sock_ops differential: {cases} connections, PALISADE_DIFF_SEED={seed}");
    let offsets = node_offsets();
    let rig = Rig::new("tcpdiff", TcpWorker::spawn);
    let (space, mut workers, mut datapath) = (rig.space, rig.workers, rig.datapath);

    let mut runner = runner(seed);
    let sets = arbitrary::policy_set(&space);
    let attempts = proptest::collection::vec(arbitrary::connection_attempt(&space), CONNECTIONS_PER_SET);
    let started = Instant::now();
    let (mut done, mut generation, mut counts) = (0, 0, TcpCounts::default());
    while done < cases {
        generation += 1;
        let set = sets.new_tree(&mut runner).expect("generate a set").current();
        let batch = attempts.new_tree(&mut runner).expect("generate attempts").current();
        enforce(&mut datapath, &set, generation, offsets);
        let mut expected = connect_all(&set, &batch, &mut workers, &mut counts, seed);
        let flows = drain_flows(&mut datapath, expected.len(), Duration::from_secs(5));
        for f in &flows {
            counts.inbound_records += usize::from(f.inbound());
            counts.ipv6_records += usize::from(f.peer.to_canonical().is_ipv6());
            counts.tuned += usize::from(f.record.flags & flags::TUNED != 0);
            counts.would_tune += usize::from(f.record.flags & flags::WOULD_TUNE != 0);
        }
        let mut actual: Vec<String> = flows.iter().map(actual_record).collect();
        actual.sort();
        expected.sort();
        assert_eq!(actual, expected, "seed {seed}: flow records differ\nset: {set:#?}\nattempts: {batch:#?}");
        counts.records += actual.len();
        done += batch.len();
    }
    let elapsed = started.elapsed();
    eprintln!(
        "sock_ops differential: {done} attempts over {generation} generated bundles, {counts:?}, 0 mismatches, {:.1} s",
        elapsed.as_secs_f64()
    );
    assert!(
        counts.denied > 0
            && counts.connections > done / 2
            && counts.inbound_records > 0
            && counts.ipv6_records > 0
            && counts.tuned > 0
            && counts.would_tune > 0
            && counts.records < 2 * counts.connections,
        "the run exercised every case: {counts:?}"
    );
    datapath.remove_all().expect("cleanup");
}
