//! Capture sessions end to end: the real server (TLS, PostgreSQL), an agent in this process,
//! its `AF_PACKET` rings in the real kernel. A capture on the loopback keeps exactly the
//! datagrams its filter names, among everything else the loopback carries (this test's gRPC
//! and PostgreSQL traffic included), and a veth pair into a network namespace this test
//! creates carries the rest; the downloaded file is read back by `tcpdump -r`. A second
//! capture stops itself at its packet limit, across a server restart.

use std::{net::UdpSocket, process::Command, time::Duration};

use palisade_integration::{TestAgent, TestCgroup, capture::tcpdump_available, kernel_tests_enabled};
use palisade_proto::{
    client::Connection,
    v1::{self, capture_service_client::CaptureServiceClient},
};
use palisade_server::embedded::EmbeddedServer;
use palisade_testkit::eventually;
use sqlx::PgPool;
use tonic::Code;

fn start(expression: String, interfaces: &[&str], max_packets: u64) -> v1::StartCaptureRequest {
    v1::StartCaptureRequest {
        expression,
        interfaces: interfaces.iter().map(|&i| i.to_owned()).collect(),
        limits: Some(v1::CaptureLimits {
            duration: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
            max_packets,
            max_bytes: 10 << 20,
        }),
        ..Default::default()
    }
}

async fn capture_when(
    client: &CaptureServiceClient<Connection>,
    id: u64,
    what: &str,
    ready: impl Fn(&v1::Capture) -> bool,
) -> v1::Capture {
    let ready = &ready;
    eventually(what, Duration::from_secs(30), || {
        let mut client = client.clone();
        async move {
            let c = client.get_capture(v1::GetCaptureRequest { id }).await.ok()?.into_inner().capture?;
            ready(&c).then_some(c)
        }
    })
    .await
}

async fn download(server: &EmbeddedServer, id: u64, format: v1::CaptureFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    palisade_proto::client::download_capture(&server.admin().await, id, format, &mut bytes).await.expect("download");
    bytes
}

/// Packets `tcpdump -r FILE [EXPR]` reads.
fn tcpdump_count(file: &std::path::Path, expression: &str) -> usize {
    let mut command = Command::new("tcpdump");
    command.args(["-n", "-r"]).arg(file);
    if !expression.is_empty() {
        command.arg(expression);
    }
    let out = command.output().expect("tcpdump runs");
    assert!(out.status.success(), "tcpdump: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// A network namespace with a veth pair whose host end is `name` (10.77.x.1/30) and whose
/// other end (10.77.x.2) is inside it; removed on drop.
struct Veth {
    name: String,
    netns: String,
    host: String,
}

impl Veth {
    fn new() -> Self {
        let tag = std::process::id() % 200;
        let (name, netns) = (format!("pcs{tag}"), format!("palisade-cap-{}", std::process::id()));
        let run = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("ip runs");
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let _ = Command::new("ip").args(["link", "del", &name]).output();
        let _ = Command::new("ip").args(["netns", "del", &netns]).output();
        run(&["netns", "add", &netns]);
        run(&["link", "add", &name, "type", "veth", "peer", "name", "pcs-peer", "netns", &netns]);
        run(&["addr", "add", &format!("10.77.{tag}.1/30"), "dev", &name]);
        run(&["link", "set", &name, "up"]);
        run(&["-n", &netns, "addr", "add", &format!("10.77.{tag}.2/30"), "dev", "pcs-peer"]);
        run(&["-n", &netns, "link", "set", "pcs-peer", "up"]);
        run(&["-n", &netns, "link", "set", "lo", "up"]);
        Self { name, netns, host: format!("10.77.{tag}.1") }
    }

    /// Sends `n` datagrams of `len` bytes from inside the namespace to `to`.
    fn send_from_inside(&self, to: std::net::SocketAddr, n: usize, len: usize) {
        let path = format!("/run/netns/{}", self.netns);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).expect("netns file");
                // SAFETY: setns on this (scoped) thread only, with a namespace file we hold.
                let ret = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
                assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
                let socket = UdpSocket::bind("0.0.0.0:0").expect("bind inside");
                for i in 0..n {
                    socket.send_to(&vec![i as u8; len], to).expect("send from inside");
                }
            });
        });
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.name]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
    }
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn a_fleet_capture_keeps_exactly_the_matching_packets_and_tcpdump_reads_the_download(pool: PgPool) {
    let test = "a_fleet_capture_keeps_exactly_the_matching_packets_and_tcpdump_reads_the_download";
    if !kernel_tests_enabled(test) || !tcpdump_available(test) {
        return;
    }
    let veth = Veth::new();
    let cg = TestCgroup::new("capture-sessions");
    // Open capture streams hold a stopping server for its grace period.
    let grace = Duration::from_millis(500);
    let options = palisade_server::Options { shutdown_grace: grace, ..palisade_server::Options::default() };
    let signer = options.signer.clone();
    let mut server = EmbeddedServer::start_with(pool.clone(), options).await.expect("server");
    let channel = server.admin().await;
    let state = tempfile::tempdir().expect("tempdir");
    let node = format!("cap-{}", std::process::id());
    let _agent = TestAgent::start(TestAgent::config(&server, &node, cg.path(), state.path())).await;
    let client = CaptureServiceClient::new(channel);

    // Wanted and unwanted receivers, on the loopback and on the veth's host end.
    let wanted = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let other = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let outside = UdpSocket::bind(format!("{}:0", veth.host)).expect("bind on the veth");
    let (port, other_port) = (wanted.local_addr().expect("addr").port(), other.local_addr().expect("addr").port());
    let expression =
        format!("udp dst port {port} or (udp dst port {} and greater 200)", outside.local_addr().expect("a").port());
    let started = eventually("the node to register", Duration::from_secs(30), || {
        let (mut client, request) = (client.clone(), start(expression.clone(), &["lo", &veth.name], 10_000));
        async move { client.start_capture(request).await.ok()?.into_inner().capture }
    })
    .await;
    let id = started.id;
    capture_when(&client, id, "the node to start capturing", |c| {
        c.nodes.iter().all(|n| n.state == v1::CaptureNodeState::Running as i32)
    })
    .await;
    let status = client.clone().delete_capture(v1::DeleteCaptureRequest { id }).await.expect_err("running");
    assert_eq!(status.code(), Code::FailedPrecondition);
    // The rings are bound once the node says it runs; a moment for the last of them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sender = UdpSocket::bind("127.0.0.1:0").expect("sender");
    for i in 0..150_usize {
        sender.send_to(&vec![7; 20 + i * 7], ("127.0.0.1", port)).expect("send wanted");
        sender.send_to(&[8; 64], ("127.0.0.1", other_port)).expect("send unwanted");
    }
    let to_outside = outside.local_addr().expect("addr");
    veth.send_from_inside(to_outside, 40, 300); // kept: over 200 bytes on the wire
    veth.send_from_inside(to_outside, 25, 50); // not kept: too short
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.clone().stop_capture(v1::StopCaptureRequest { id }).await.expect("stop");
    let done =
        capture_when(&client, id, "the capture to finish", |c| c.state == v1::CaptureState::Finished as i32).await;
    let n = &done.nodes[0];
    assert_eq!((n.state, n.stop_reason.as_str()), (v1::CaptureNodeState::Finished as i32, "stopped"), "{n:?}");
    assert_eq!(n.packets_kept, 190, "exactly the matching packets: {n:?}");
    assert_eq!(n.packets_dropped, 0);
    assert!(n.packets_seen >= 190 + 150 + 25, "the interfaces carried at least what was sent: {n:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    let pcapng = dir.path().join("capture.pcapng");
    std::fs::write(&pcapng, download(&server, id, v1::CaptureFormat::Pcapng).await).expect("write");
    assert_eq!(tcpdump_count(&pcapng, ""), 190, "tcpdump reads every packet");
    assert_eq!(tcpdump_count(&pcapng, &format!("udp dst port {port}")), 150);
    assert_eq!(tcpdump_count(&pcapng, &format!("udp dst port {}", to_outside.port())), 40);
    assert_eq!(tcpdump_count(&pcapng, &format!("udp port {other_port}")), 0);
    let pcap = dir.path().join("capture.pcap");
    std::fs::write(&pcap, download(&server, id, v1::CaptureFormat::Pcap).await).expect("write");
    assert_eq!(tcpdump_count(&pcap, &expression), 190, "our expression, in libpcap, keeps every packet");
    // Time order across both interfaces, and the packets whole.
    let mut times = Vec::new();
    let mut lengths = Vec::new();
    palisade_agent::capture::offline::read_frames(std::fs::File::open(&pcapng).expect("open"), |f| {
        times.push(f.timestamp);
        if f.wire_len < 200 {
            lengths.push(f.data.len());
        }
        Ok(())
    })
    .expect("read back");
    assert!(times.is_sorted(), "merged in time order");
    let want: Vec<usize> = (0..150).map(|i| 14 + 20 + 8 + 20 + i * 7).filter(|&l| l < 200).collect();
    assert_eq!(lengths, want, "loopback datagrams whole and in order");

    // A capture that stops itself at 10 packets ("packets"), across a server restart: the
    // agent's stream reconnects and what it kept arrives.
    let limited = client
        .clone()
        .start_capture(start(format!("udp dst port {port}"), &["lo"], 10))
        .await
        .expect("start")
        .into_inner()
        .capture
        .expect("capture");
    capture_when(&client, limited.id, "the second capture to run", |c| {
        c.nodes.iter().all(|n| n.state == v1::CaptureNodeState::Running as i32)
    })
    .await;
    let (addr, secured) = (server.addr(), server.secured());
    server.stop().await.expect("stop");
    let options = palisade_server::Options { signer, shutdown_grace: grace, ..palisade_server::Options::default() };
    server = EmbeddedServer::restart_on(pool, addr, options, secured).await.expect("restart");
    let client = CaptureServiceClient::new(server.admin().await);
    for _ in 0..50 {
        sender.send_to(&[1; 32], ("127.0.0.1", port)).expect("send");
    }
    let done =
        capture_when(&client, limited.id, "the limit to stop it", |c| c.state == v1::CaptureState::Finished as i32)
            .await;
    assert_eq!((done.nodes[0].packets_kept, done.nodes[0].stop_reason.as_str()), (10, "packets"), "{done:?}");
    let file = dir.path().join("limited.pcapng");
    std::fs::write(&file, download(&server, limited.id, v1::CaptureFormat::Pcapng).await).expect("write");
    assert_eq!(tcpdump_count(&file, ""), 10);

    // On `any`: every interface, cooked (LINUX_SLL2) frames; each loopback datagram once.
    let cooked = client
        .clone()
        .start_capture(start(format!("udp dst port {port} and greater 60"), &["any"], 10_000))
        .await
        .expect("start on any")
        .into_inner()
        .capture
        .expect("capture");
    capture_when(&client, cooked.id, "the capture on any to run", |c| {
        c.nodes.iter().all(|n| n.state == v1::CaptureNodeState::Running as i32)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..60_usize {
        // 20 + 8 + 12 + i bytes of IPv4, 60 + i with the cooked header `len` counts (as in
        // the file): kept by `greater 60`; the 2-byte datagrams below (50) are not.
        sender.send_to(&vec![3; 12 + i], ("127.0.0.1", port)).expect("send");
    }
    for _ in 0..20 {
        sender.send_to(&[4; 2], ("127.0.0.1", port)).expect("send short");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.clone().stop_capture(v1::StopCaptureRequest { id: cooked.id }).await.expect("stop");
    let done = capture_when(&client, cooked.id, "the capture on any to finish", |c| {
        c.state == v1::CaptureState::Finished as i32
    })
    .await;
    assert_eq!(done.nodes[0].packets_kept, 60, "each datagram once, the short ones not: {done:?}");
    let file = dir.path().join("any.pcap");
    std::fs::write(&file, download(&server, cooked.id, v1::CaptureFormat::Pcap).await).expect("write");
    assert_eq!(tcpdump_count(&file, ""), 60, "tcpdump reads the LINUX_SLL2 pcap");
    assert_eq!(tcpdump_count(&file, &format!("udp dst port {port} and greater 60")), 60);
    let out = Command::new("tcpdump").args(["-r"]).arg(&file).output().expect("tcpdump");
    assert!(String::from_utf8_lossy(&out.stderr).contains("LINUX_SLL2"), "link type LINUX_SLL2");
    drop((wanted, other, outside));
}
