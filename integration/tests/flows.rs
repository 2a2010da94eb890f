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
    events::Flow,
    loader::{Datapath, Paths},
};
use palisade_compiler::{compile, policy::model::PolicySet, program::KernelOffsets};
use palisade_contract::record::flow::flags;
use palisade_integration::{TestCgroup, TestPins, cgroup2, kernel_tests_enabled, node_offsets as offsets};
use palisade_proto::{document, v1};

const PROBE: &str = env!("CARGO_BIN_EXE_flow-probe");
/// Connections made during the generation swaps.
const LOOP: usize = 300;

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
        assert_eq!((&*f.policy, f.revision, &*f.rule_id), ("flows", 1, "default"));
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
    assert!(nested.iter().all(|f| f.record.cgroup_id == inner_id && &*f.policy == "flows"), "{nested:#?}");

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

// ---- The whole path: kernel → agent aggregation → ReportFlows → PostgreSQL → FlowService
// ---- and the CLI.

use palisade_integration::TestAgent;
use palisade_proto::v1::{
    apply_policy_request::Source, flow_service_client::FlowServiceClient, node_service_client::NodeServiceClient,
    policy_service_client::PolicyServiceClient,
};
use palisade_server::embedded::EmbeddedServer;
use palisade_testkit::eventually;
use tokio_stream::StreamExt as _;

/// The `palisade` binary the workspace build put next to this test's directory.
fn palisade_cli() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let cli = exe.parent().and_then(Path::parent).expect("target dir").join("palisade");
    assert!(cli.exists(), "{} is missing: build the workspace (cargo build --workspace)", cli.display());
    cli
}

async fn apply(channel: &palisade_proto::client::Connection, doc: String) {
    PolicyServiceClient::new(channel.clone())
        .apply_policy(v1::ApplyPolicyRequest { source: Some(Source::Document(doc)), ..Default::default() })
        .await
        .expect("apply");
}

/// The node, once it has said hello (`None` before: the agent may still be connecting).
async fn registered(channel: &palisade_proto::client::Connection, name: &str) -> Option<v1::Node> {
    match NodeServiceClient::new(channel.clone()).get_node(v1::GetNodeRequest { name: name.to_owned() }).await {
        Ok(response) => response.into_inner().node,
        Err(status) if status.code() == tonic::Code::NotFound => None,
        Err(status) => panic!("get node {name}: {status}"),
    }
}

async fn node(channel: &palisade_proto::client::Connection, name: &str) -> v1::Node {
    registered(channel, name).await.unwrap_or_else(|| panic!("node {name} is registered"))
}

/// Waits (30 s) until the node runs the newest generation the server wants for it.
async fn applied(channel: &palisade_proto::client::Connection, name: &str, after: u64) -> u64 {
    eventually("the node to apply the policy", Duration::from_secs(30), || async {
        let n = registered(channel, name).await?;
        (n.desired_generation > after && n.applied_digest == n.desired_digest).then_some(n.applied_generation)
    })
    .await
}

/// Every stored aggregate matching `filter`.
async fn stored(channel: &palisade_proto::client::Connection, filter: v1::FlowFilter) -> Vec<v1::FlowAggregate> {
    let mut client = FlowServiceClient::new(channel.clone());
    let (mut out, mut token) = (Vec::new(), String::new());
    loop {
        let page = client
            .list_flows(v1::ListFlowsRequest { filter: Some(filter.clone()), page_size: 1000, page_token: token })
            .await
            .expect("list flows")
            .into_inner();
        out.extend(page.flows);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// Sums per (direction, peer, peer port, local port): windows may split a key's connections.
/// (direction, peer, peer port, local port) → (connections, bytes sent, bytes received).
type Sums = std::collections::BTreeMap<(i32, String, u32, u32), (u64, u64, u64)>;

fn sums(flows: &[v1::FlowAggregate]) -> Sums {
    let mut out = std::collections::BTreeMap::new();
    for f in flows {
        let e = out.entry((f.direction, f.peer_address.clone(), f.peer_port, f.local_port)).or_insert((0, 0, 0));
        e.0 += f.connections;
        e.1 += f.bytes_sent;
        e.2 += f.bytes_received;
    }
    out
}

fn within(got: u64, want: u64) -> bool {
    got.abs_diff(want) * 100 <= want
}

const OUT: i32 = v1::FlowDirection::Outbound as i32;
const IN: i32 = v1::FlowDirection::Inbound as i32;

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn flows_reach_the_api_and_the_cli_aggregated_and_exactly_once(pool: sqlx::PgPool) {
    if !kernel_tests_enabled("flows_reach_the_api_and_the_cli_aggregated_and_exactly_once") {
        return;
    }
    let cli = palisade_cli();
    let cg = TestCgroup::new("flowapi");
    let web = cg.create_child("web");
    let other = cg.create_child("other");
    let (web_dir, other_dir) = (cg.dir_of(&web), cg.dir_of(&other));
    let web_id = std::fs::metadata(&web_dir).expect("cgroup").ino();
    let api = EmbeddedServer::start(pool).await.expect("server");
    let channel = api.admin().await;
    let state = tempfile::tempdir().expect("tempdir");
    let mut config = TestAgent::config(&api, "flow-node", cg.path(), state.path());
    config.flow_window_seconds = 1;
    config.heartbeat_seconds = 1;
    let mut agent = TestAgent::start(config).await;

    let (v4_server, port) = tokio::task::spawn_blocking({
        let d = web_dir.clone();
        move || server(&d, "127.0.0.1", 30_000, 3)
    })
    .await
    .expect("server");
    let doc = format!(
        "name: flows\nworkload: {{cgroup: \"{web}\"}}\nconnections:\n  observe:\n    rules:\n      - {{id: loopback, cidrs: [127.0.0.0/8, \"::1\"]}}\n  tune:\n    rules:\n      - {{id: to-server, cidrs: [127.0.0.0/8], ports: [{port}], congestion: cubic}}\n      - {{id: missing-algo, cidrs: [\"::1\"], congestion: {}}}\n",
        unavailable_algorithm()
    );
    apply(&channel, doc.clone()).await;
    let generation = applied(&channel, "flow-node", 0).await;

    // The unavailable algorithm is reported, with the rule's path and what the node offers.
    let n = node(&channel, "flow-node").await;
    let sections: Vec<&str> = n.not_enforceable.iter().map(|u| u.section.as_str()).collect();
    assert_eq!(sections, ["connections.tune.rules[1].congestion"], "{:?}", n.not_enforceable);
    assert!(n.not_enforceable[0].reason.contains("is not offered"), "{:?}", n.not_enforceable);

    // A live watcher asking for records, before any connection.
    let mut watch = FlowServiceClient::new(channel.clone())
        .watch_flows(v1::WatchFlowsRequest {
            filter: Some(v1::FlowFilter { node: "flow-node".into(), ..Default::default() }),
            records: true,
        })
        .await
        .expect("watch")
        .into_inner();

    let (v4_clients, v4_accepted, v6_port) = tokio::task::spawn_blocking({
        let (w, o) = (web_dir.clone(), other_dir.clone());
        move || {
            let clients = client(&w, "127.0.0.1", port, 50_000, 30_000, 3);
            let accepted = finish(v4_server);
            let (v6_server, port6) = server(&w, "::1", 20_000, 2);
            client(&w, "::1", port6, 10_000, 20_000, 2);
            finish(v6_server);
            let (outside, outside_port) = server(&o, "127.0.0.1", 100, 2);
            client(&o, "127.0.0.1", outside_port, 100, 100, 2);
            finish(outside);
            (clients, accepted, port6)
        }
    })
    .await
    .expect("workload");
    for line in &v4_clients {
        assert_eq!(field(line, "congestion"), "cubic", "outbound to the tuned port: {line}");
    }
    let default = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").expect("sysctl");
    for line in &v4_accepted {
        assert_eq!(field(line, "congestion"), default.trim(), "the accepted end is not tuned: {line}");
    }

    let node_filter = || v1::FlowFilter { node: "flow-node".into(), ..Default::default() };
    let want = |k: (i32, &str, u32, u32)| (k.0, k.1.to_owned(), k.2, k.3);
    let got = eventually("10 connection ends in the stored aggregates", Duration::from_secs(30), || async {
        let flows = stored(&channel, node_filter()).await;
        (flows.iter().map(|f| f.connections).sum::<u64>() >= 10).then_some(flows)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = if stored(&channel, node_filter()).await.len() == got.len() {
        got
    } else {
        stored(&channel, node_filter()).await
    };
    for f in &got {
        assert_eq!((f.node.as_str(), f.policy.as_str(), f.rule_id.as_str()), ("flow-node", "flows", "loopback"));
        assert_eq!((f.cgroup_id, f.revision), (web_id, 1), "only the workload's sockets: {f:?}");
        let secs = |t: Option<prost_types::Timestamp>| t.map_or(0, |t| t.seconds);
        assert!(secs(f.window_start) < secs(f.window_end), "{f:?}");
    }
    let s = sums(&got);
    assert_eq!(s.len(), 4, "one key per direction and family: {s:#?}");
    let (c, sent, recv) = s[&want((OUT, "127.0.0.1", u32::from(port), 0))];
    assert!(c == 3 && within(sent, 150_000) && within(recv, 90_000), "outbound v4 {c} {sent} {recv}");
    let (c, sent, recv) = s[&want((IN, "127.0.0.1", 0, u32::from(port)))];
    assert!(c == 3 && within(sent, 90_000) && within(recv, 150_000), "inbound v4 {c} {sent} {recv}");
    let (c, sent, recv) = s[&want((OUT, "::1", u32::from(v6_port), 0))];
    assert!(c == 2 && within(sent, 20_000) && within(recv, 40_000), "outbound v6 {c} {sent} {recv}");
    let (c, sent, recv) = s[&want((IN, "::1", 0, u32::from(v6_port)))];
    assert!(c == 2 && within(sent, 40_000) && within(recv, 20_000), "inbound v6 {c} {sent} {recv}");
    let v6: Vec<_> = got.iter().filter(|f| f.peer_address == "::1").collect();
    assert_eq!(v6.iter().map(|f| f.tune_refused).sum::<u64>(), 4, "the missing algorithm, once per IPv6 end");

    // Filters: a peer CIDR and a port.
    let only_v6 = stored(&channel, v1::FlowFilter { peer: "::1/128".into(), ..node_filter() }).await;
    assert!(!only_v6.is_empty() && only_v6.iter().all(|f| f.peer_address == "::1"), "{only_v6:?}");
    let by_port = stored(&channel, v1::FlowFilter { port: u32::from(port), ..node_filter() }).await;
    assert_eq!(by_port.iter().map(|f| f.connections).sum::<u64>(), 6);

    // The watcher saw the aggregates as they were stored.
    let mut live = 0;
    while live < 10 {
        let item = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.expect("watch item");
        if let Some(v1::watch_flows_response::Item::Aggregate(a)) = item.expect("open").expect("ok").item {
            live += a.connections;
        }
    }
    // Records: the agent learned of the watcher from its first report; connections after it
    // come as records too.
    tokio::task::spawn_blocking({
        let w = web_dir.clone();
        move || {
            let (s, p) = server(&w, "127.0.0.1", 700, 1);
            client(&w, "127.0.0.1", p, 900, 700, 1);
            finish(s);
        }
    })
    .await
    .expect("workload");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let record = loop {
        let item = tokio::time::timeout_at(deadline, watch.next()).await.expect("a per-connection record on the watch");
        if let Some(v1::watch_flows_response::Item::Record(r)) = item.expect("open").expect("ok").item
            && r.direction == OUT
            && r.bytes_sent >= 900
        {
            break r;
        }
    };
    assert!(within(record.bytes_sent, 901) && within(record.bytes_received, 701), "{record:?}");
    assert!(
        record.local_port != 0
            && record.peer_port != 0
            && record.end.map(|t| t.seconds) >= record.start.map(|t| t.seconds),
        "{record:?}"
    );

    cli_shows_the_flows(&cli, &api, port).await;

    // 20 generations while a connection loop runs: every connection counted once.
    let (loop_server, loop_port) = tokio::task::spawn_blocking({
        let d = web_dir.clone();
        move || server(&d, "127.0.0.1", 10, LOOP)
    })
    .await
    .expect("server");
    // In 30 runs of 10 connections, 100 ms apart, so the loop spans the swaps.
    let looper = tokio::task::spawn_blocking({
        let d = web_dir.clone();
        move || {
            (0..LOOP / 10)
                .flat_map(|_| {
                    std::thread::sleep(Duration::from_millis(100));
                    client(&d, "127.0.0.1", loop_port, 10, 10, 10)
                })
                .collect::<Vec<_>>()
        }
    });
    let mut last = generation;
    for i in 0..20 {
        apply(&channel, doc.replace("name: flows\n", &format!("name: flows\ndescription: swap {i}\n"))).await;
        last = applied(&channel, "flow-node", last).await;
    }
    assert_eq!(looper.await.expect("loop").len(), LOOP);
    tokio::task::spawn_blocking(move || finish(loop_server)).await.expect("server");
    let loop_filter = || v1::FlowFilter { port: u32::from(loop_port), ..node_filter() };
    let counted = eventually("every loop connection counted", Duration::from_secs(30), || async {
        let n: u64 = stored(&channel, loop_filter()).await.iter().map(|f| f.connections).sum();
        (n >= 2 * LOOP as u64).then_some(n)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again: u64 = stored(&channel, loop_filter()).await.iter().map(|f| f.connections).sum();
    assert_eq!((counted, again), (2 * LOOP as u64, 2 * LOOP as u64), "exactly once at each end across 20 swaps");
    let revisions: std::collections::BTreeSet<u64> =
        stored(&channel, loop_filter()).await.iter().map(|f| f.revision).collect();
    assert!(revisions.len() > 1, "the loop spanned several revisions: {revisions:?}");
    let stats = node(&channel, "flow-node").await.event_stats.expect("stats");
    assert_eq!((stats.flows_dropped, stats.flows_backlog_full), (0, 0), "{stats:?}");
    agent.stop().await;
}

/// `palisade flows` and `palisade flows top` print what the API stores.
async fn cli_shows_the_flows(cli: &Path, server: &EmbeddedServer, port: u16) {
    let run = |args: Vec<String>| {
        let mut command = tokio::process::Command::new(cli);
        command.env("PALISADE_SERVER", server.url()).env_remove("PALISADE_CA_CERT").env_remove("PALISADE_TOKEN");
        if let Some(ca) = server.ca_cert() {
            command.env("PALISADE_CA_CERT", ca);
        }
        if let Some(token) = server.admin_token() {
            command.env("PALISADE_TOKEN", token);
        }
        command.args(args);
        async move {
            let out = command.output().await.expect("palisade runs");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let args = |a: &str| a.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let lines = run(args("flows --node flow-node --peer 127.0.0.0/8 --since 10m --limit 1000 -o json")).await;
    let objects: Vec<serde_json::Value> =
        lines.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    let outbound: u64 = objects
        .iter()
        .filter(|o| o["direction"] == "outbound" && o["peer_port"] == u64::from(port))
        .map(|o| o["connections"].as_u64().expect("connections"))
        .sum();
    assert_eq!(outbound, 3, "{lines}");
    assert!(objects.iter().all(|o| o["peer_address"] == "127.0.0.1" && o["srtt_us"]["max"].is_u64()), "{lines}");
    let table = run(args("flows --node flow-node")).await;
    assert!(table.contains("WINDOW END") && table.contains(&format!("127.0.0.1:{port}")), "{table}");
    let top = run(args("flows top --node flow-node --limit 2 -o json")).await;
    let talkers: Vec<serde_json::Value> = top.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(talkers.len(), 2, "{top}");
    let total =
        |o: &serde_json::Value| o["bytes_sent"].as_u64().unwrap_or(0) + o["bytes_received"].as_u64().unwrap_or(0);
    assert!(total(&talkers[0]) >= total(&talkers[1]) && total(&talkers[0]) >= 200_000, "v4 talkers first: {top}");
}

/// Loopback peers of the flood, and the agent's keys per window in it.
const PEERS: u64 = 60;
const MAX_KEYS: usize = 20;

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn a_flow_flood_is_bounded_counted_and_rate_limited(pool: sqlx::PgPool) {
    if !kernel_tests_enabled("a_flow_flood_is_bounded_counted_and_rate_limited") {
        return;
    }
    let cg = TestCgroup::new("flowflood");
    let web = cg.create_child("web");
    let web_dir = cg.dir_of(&web);
    let options = palisade_server::Options {
        flow_rate: palisade_server::ratelimit::EventRate { per_second: 5, burst: 10 },
        ..palisade_server::Options::default()
    };
    let api = EmbeddedServer::start_with(pool, options).await.expect("server");
    let channel = api.admin().await;
    let state = tempfile::tempdir().expect("tempdir");
    let mut config = TestAgent::config(&api, "flood-node", cg.path(), state.path());
    config.flow_window_seconds = 1;
    config.heartbeat_seconds = 1;
    config.flow_max_keys = MAX_KEYS;
    let mut agent = TestAgent::start(config).await;
    apply(&channel, format!("name: flood\nworkload: {{cgroup: \"{web}\"}}\nconnections: {{observe: {{}}}}\n")).await;
    applied(&channel, "flood-node", 0).await;

    // One connection to each of PEERS loopback addresses: two keys per connection (each end
    // names its own local address), far more than a window holds.
    tokio::task::spawn_blocking(move || {
        let (s, port) = server(&web_dir, "0.0.0.0", 10, PEERS as usize);
        for i in 0..PEERS {
            client(&web_dir, &format!("127.0.1.{}", i + 1), port, 10, 10, 1);
        }
        finish(s);
    })
    .await
    .expect("workload");

    let filter = v1::FlowFilter { node: "flood-node".into(), ..Default::default() };
    // Every connection end is either stored or counted as dropped; the server's rate limit
    // refused some reports on the way (counted on the node) and the agent sent them again.
    let (stored_ends, n) = eventually("stored + dropped to account for every end", Duration::from_secs(40), || async {
        let kept: u64 = stored(&channel, filter.clone()).await.iter().map(|f| f.connections).sum();
        let n = node(&channel, "flood-node").await;
        let dropped = n.event_stats.as_ref().map_or(0, |s| s.flows_dropped);
        (kept + dropped == 2 * PEERS && n.flows_rate_limited > 0).then_some((kept, n))
    })
    .await;
    let stats = n.event_stats.expect("stats");
    assert!(stats.flows_dropped > 0, "a full window drops new keys: {stats:?}");
    assert!(stored_ends >= MAX_KEYS as u64, "at least one full window was kept: {stored_ends}");
    assert!(stats.flows_pending <= 100_000 && stats.flows_backlog_full == 0, "{stats:?}");
    let keys_per_window = stored(&channel, filter.clone()).await.iter().fold(
        std::collections::BTreeMap::<i64, usize>::new(),
        |mut m, f| {
            *m.entry(f.window_start.map_or(0, |t| t.seconds)).or_default() += 1;
            m
        },
    );
    assert!(keys_per_window.values().all(|&k| k <= MAX_KEYS), "no window above --flow-max-keys: {keys_per_window:?}");
    agent.stop().await;
}
