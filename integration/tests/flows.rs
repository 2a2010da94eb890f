//! `connections` sections in the real kernel through the agent's datapath: the sockops
//! program records the TCP connections of a cgroup this test owns (both directions, IPv4 and
//! IPv6, byte counts), tunes the matching ones, and counts every closed connection exactly
//! once across generation swaps.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use palisade_agent::{
    btf,
    events::Flow,
    loader::{Datapath, Paths},
};
use palisade_compiler::{compile, policy::model::PolicySet, program::KernelOffsets};
use palisade_contract::record::flow::flags;
use palisade_integration::{TestCgroup, TestPins, cgroup2, kernel_tests_enabled};
use palisade_proto::{document, v1};

const PROBE: &str = env!("CARGO_BIN_EXE_flow-probe");
/// Connections made during the generation swaps.
const LOOP: usize = 300;

/// This kernel's struct offsets, from its BTF (what the agent reports).
fn offsets() -> KernelOffsets {
    let blob = std::fs::read("/sys/kernel/btf/vmlinux").expect("this kernel has BTF");
    let found = btf::member_offsets(&blob, &palisade_contract::btf::FIELDS).expect("BTF parses");
    let offsets = KernelOffsets::from_reported(|key| found.get(key).copied(), KernelOffsets::LINUX_6_12);
    assert!(offsets.sock.is_some(), "this kernel reports every offset the sockops program needs: {found:?}");
    offsets
}

fn bundle(yaml: &str, generation: u64, offsets: KernelOffsets) -> v1::Bundle {
    let policies: Vec<_> = document::parse_all(yaml).into_iter().map(|d| d.expect("parses").to_proto()).collect();
    let set = PolicySet::new(policies.iter().map(|p| (p, generation)), Vec::new()).expect("model");
    let compiled = compile(&set, offsets).expect("compiles");
    assert!(compiled.programs.iter().any(|(h, _)| *h == palisade_contract::Hook::SockOps), "a sockops program");
    v1::Bundle { generation, digest: compiled.digest, content: compiled.bytes.into(), ..Default::default() }
}

/// An algorithm the kernel does not offer (BPF cannot load its module).
fn unavailable_algorithm() -> &'static str {
    let offered = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control").expect("sysctl");
    ["vegas", "westwood", "htcp", "illinois", "veno", "yeah"]
        .into_iter()
        .find(|a| !offered.split_whitespace().any(|o| o == *a))
        .expect("some algorithm is not offered")
}

fn policy(cgroup: &str, port: u16, tune_id: &str) -> String {
    format!(
        "name: flows\nworkload: {{cgroup: \"{cgroup}\"}}\nconnections:\n  observe: {{}}\n  tune:\n    rules:\n      - {{id: {tune_id}, cidrs: [127.0.0.0/8], ports: [{port}], congestion: cubic, no_delay: true}}\n      - {{id: missing-algo, cidrs: [\"::1\"], congestion: {}}}\n",
        unavailable_algorithm()
    )
}

/// A running `flow-probe server` and the reader of its output.
struct Server(Child, BufReader<std::process::ChildStdout>);

/// A `flow-probe server` in `cgroup` on `addr`, and its port.
fn server(cgroup: &Path, addr: &str, send: usize, count: usize) -> (Server, u16) {
    let mut child = Command::new(PROBE)
        .arg("--cgroup")
        .arg(cgroup)
        .args(["server", addr, &send.to_string(), &count.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("flow-probe runs");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("port line");
    let port = line.trim().strip_prefix("port=").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{line}"));
    (Server(child, out), port)
}

/// Runs `flow-probe client` in `cgroup`; returns its lines.
fn client(cgroup: &Path, addr: &str, port: u16, send: usize, recv: usize, count: usize) -> Vec<String> {
    let out = Command::new(PROBE)
        .arg("--cgroup")
        .arg(cgroup)
        .args(["client", addr, &port.to_string(), &send.to_string(), &recv.to_string(), &count.to_string()])
        .output()
        .expect("flow-probe runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "client failed: {text}");
    text.lines().map(str::to_owned).collect()
}

fn finish(Server(mut child, out): Server) -> Vec<String> {
    let lines: Vec<String> = out.lines().map(|l| l.expect("server output")).collect();
    assert!(child.wait().expect("server exits").success(), "server failed: {lines:?}");
    lines
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{key} in {line}"))
}

/// Drains until at least `n` flows arrived or `wait` passed (and a moment longer, to see extra
/// ones).
fn flows(datapath: &mut Datapath, n: usize, wait: Duration) -> Vec<Flow> {
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + wait;
    while out.len() < n && std::time::Instant::now() < deadline {
        datapath.drain(&mut Vec::new());
        out.extend(datapath.take_flows());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    datapath.drain(&mut Vec::new());
    out.extend(datapath.take_flows());
    out
}

fn within_one_percent(got: u64, want: usize) -> bool {
    let want = want as u64;
    got.abs_diff(want) * 100 <= want
}

#[test]
fn sockops_records_and_tunes_a_cgroups_connections_and_counts_each_once_across_swaps() {
    if !kernel_tests_enabled("sockops_records_and_tunes_a_cgroups_connections_and_counts_each_once_across_swaps") {
        return;
    }
    let offsets = offsets();
    let cg = TestCgroup::new("flows");
    let web = cg.create_child("web");
    let other = cg.create_child("other");
    let (web_dir, other_dir) = (cg.dir_of(&web), cg.dir_of(&other));
    let web_id = std::fs::metadata(&web_dir).expect("cgroup").ino();
    let state = tempfile::tempdir().expect("tempdir");
    let pins = TestPins::new("flows");
    let mut datapath = Datapath::new(Paths {
        bpffs: pins.path().to_owned(),
        state_dir: state.path().to_owned(),
        cgroup2: cgroup2(),
        attach: cg.dir(),
    });

    // The tune rule names the IPv4 server's port, so it is known before the bundle.
    let (v4_server, port) = server(&web_dir, "127.0.0.1", 30_000, 3);
    datapath.apply(bundle(&policy(&web, port, "to-server"), 1, offsets), &mut Vec::new()).expect("kernel accepts");
    let v4_clients = client(&web_dir, "127.0.0.1", port, 50_000, 30_000, 3);
    let v4_accepted = finish(v4_server);
    let (v6_server, port6) = server(&web_dir, "::1", 20_000, 2);
    let v6_clients = client(&web_dir, "::1", port6, 10_000, 20_000, 2);
    let v6_accepted = finish(v6_server);
    let (outside_server, outside_port) = server(&other_dir, "127.0.0.1", 100, 2);
    client(&other_dir, "127.0.0.1", outside_port, 100, 100, 2);
    finish(outside_server);

    // Tuning, as getsockopt sees it inside the workload: the rule's peer and port get cubic,
    // everything else keeps the node's default.
    let default = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").expect("sysctl");
    let default = default.trim();
    assert_ne!(default, "cubic", "the test needs a default other than cubic");
    for line in &v4_clients {
        assert_eq!(field(line, "congestion"), "cubic", "outbound to the rule's port: {line}");
    }
    for line in v4_accepted.iter().chain(&v6_clients).chain(&v6_accepted) {
        assert_eq!(field(line, "congestion"), default, "not matched by the tune rule: {line}");
    }

    let got = flows(&mut datapath, 10, Duration::from_secs(10));
    assert_eq!(got.len(), 10, "3 + 2 connections, both ends in the cgroup, none from outside: {got:#?}");
    for f in &got {
        assert_eq!((f.policy.as_str(), f.revision, f.rule_id.as_str()), ("flows", 1, "default"));
        assert_eq!(f.record.cgroup_id, web_id, "the socket's cgroup");
        assert!(f.record.end_ns >= f.record.start_ns && f.record.start_ns > 0);
    }
    let by = |inbound: bool, peer: &str| -> Vec<&Flow> {
        got.iter().filter(|f| f.inbound() == inbound && f.peer.to_string() == peer).collect()
    };
    let (out4, in4, out6, in6) = (by(false, "127.0.0.1"), by(true, "127.0.0.1"), by(false, "::1"), by(true, "::1"));
    assert_eq!((out4.len(), in4.len(), out6.len(), in6.len()), (3, 3, 2, 2), "{got:#?}");
    for f in &out4 {
        assert_eq!(f.record.peer_port, port);
        assert!(v4_clients.iter().any(|l| field(l, "local") == f.record.local_port.to_string()), "{f:?}");
        assert!(
            within_one_percent(f.record.bytes_sent, 50_000) && within_one_percent(f.record.bytes_received, 30_000),
            "{f:?}"
        );
        assert_eq!(f.tune.as_deref(), Some("flows/to-server"));
        assert_eq!(f.record.flags & (flags::TUNED | flags::TUNE_REFUSED), flags::TUNED, "{f:?}");
    }
    for f in &in4 {
        assert_eq!(f.record.local_port, port);
        assert!(v4_accepted.iter().any(|l| field(l, "peer") == f.record.peer_port.to_string()), "{f:?}");
        assert!(
            within_one_percent(f.record.bytes_received, 50_000) && within_one_percent(f.record.bytes_sent, 30_000),
            "{f:?}"
        );
        assert_eq!(f.tune, None, "the peer port is the client's");
    }
    // The IPv6 connections match a rule naming an algorithm the node lacks: the kernel refuses
    // it for each of them, they keep the default and work (nothing breaks), and it is counted.
    for f in out6.iter().chain(&in6) {
        assert_eq!(f.tune.as_deref(), Some("flows/missing-algo"));
        assert_eq!(f.record.flags & (flags::TUNED | flags::TUNE_REFUSED), flags::TUNED | flags::TUNE_REFUSED, "{f:?}");
    }
    for f in &out6 {
        assert_eq!(f.record.peer_port, port6);
        assert!(
            within_one_percent(f.record.bytes_sent, 10_000) && within_one_percent(f.record.bytes_received, 20_000),
            "{f:?}"
        );
    }
    for f in &in6 {
        assert!(
            within_one_percent(f.record.bytes_received, 10_000) && within_one_percent(f.record.bytes_sent, 20_000),
            "{f:?}"
        );
    }
    assert_eq!(datapath.flow_stats(), (4, 0), "one refusal per IPv6 connection end, nothing untracked");

    // A cgroup below the selected one is selected too: its sockets' ancestor at the policy's
    // depth is found through the cgroup's ancestors.
    let inner = format!("{web}/inner");
    std::fs::create_dir_all(cg.dir_of(&inner)).expect("inner cgroup");
    let inner_dir = cg.dir_of(&inner);
    let (inner_server, inner_port) = server(&inner_dir, "127.0.0.1", 1000, 1);
    client(&inner_dir, "127.0.0.1", inner_port, 2000, 1000, 1);
    finish(inner_server);
    let nested = flows(&mut datapath, 2, Duration::from_secs(10));
    let inner_id = std::fs::metadata(&inner_dir).expect("cgroup").ino();
    assert_eq!(nested.len(), 2, "{nested:#?}");
    assert!(nested.iter().all(|f| f.record.cgroup_id == inner_id && f.policy == "flows"), "{nested:#?}");

    swaps_count_each_connection_once(&mut datapath, &web, &web_dir, offsets);
    no_connections_section_detaches(&mut datapath, &pins.path().join("links"), &web, &web_dir, offsets);
    datapath.remove_all().expect("cleanup");
}

/// 20 swaps under a connection loop: every closed connection is recorded exactly once.
fn swaps_count_each_connection_once(datapath: &mut Datapath, web: &str, web_dir: &Path, offsets: KernelOffsets) {
    let (loop_server, loop_port) = server(web_dir, "127.0.0.1", 10, LOOP);
    let looper = {
        let dir = web_dir.to_owned();
        std::thread::spawn(move || client(&dir, "127.0.0.1", loop_port, 10, 10, LOOP))
    };
    for generation in 2..22 {
        let id = if generation % 2 == 0 { "swap-even" } else { "swap-odd" };
        datapath.apply(bundle(&policy(web, loop_port, id), generation, offsets), &mut Vec::new()).expect("swap");
        std::thread::sleep(Duration::from_millis(10));
    }
    let lines = looper.join().expect("client loop");
    finish(loop_server);
    assert_eq!(lines.len(), LOOP);
    let recorded = flows(datapath, 2 * LOOP, Duration::from_secs(10));
    let mut keys: Vec<(bool, u16, u16)> =
        recorded.iter().map(|f| (f.inbound(), f.record.local_port, f.record.peer_port)).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!((recorded.len(), keys.len()), (2 * LOOP, 2 * LOOP), "each connection once at each end");
    assert_eq!(datapath.flows_dropped(), 0);
}

/// A generation without connections sections has no sockops program: its link goes, and with
/// it the per-connection cost.
fn no_connections_section_detaches(
    datapath: &mut Datapath,
    links: &Path,
    web: &str,
    web_dir: &Path,
    offsets: KernelOffsets,
) {
    assert!(links.join("pal_sockops").exists(), "the sockops link while connections sections exist");
    assert!(links.with_file_name("shared").join("pal_flows").exists(), "the connection states' pin");
    let plain = format!(
        "name: flows\nworkload: {{cgroup: \"{web}\"}}\nnetwork: {{connect: {{rules: [{{id: r, action: deny, ports: [9]}}]}}}}\n"
    );
    let policies: Vec<_> = document::parse_all(&plain).into_iter().map(|d| d.expect("parses").to_proto()).collect();
    let set = PolicySet::new(policies.iter().map(|p| (p, 30)), Vec::new()).expect("model");
    let compiled = compile(&set, offsets).expect("compiles");
    assert!(compiled.programs.iter().all(|(h, _)| *h != palisade_contract::Hook::SockOps), "no sockops program");
    let bundle =
        v1::Bundle { generation: 30, digest: compiled.digest, content: compiled.bytes.into(), ..Default::default() };
    datapath.apply(bundle, &mut Vec::new()).expect("apply without connections");
    assert!(!links.join("pal_sockops").exists(), "the sockops link was removed");
    let shared = links.with_file_name("shared").join("pal_flows");
    assert!(!shared.exists(), "and the connection states with it");
    let (after_server, after_port) = server(web_dir, "127.0.0.1", 10, 1);
    client(web_dir, "127.0.0.1", after_port, 10, 10, 1);
    finish(after_server);
    assert!(flows(datapath, 1, Duration::from_secs(1)).is_empty(), "nothing is recorded once no policy observes");
}
