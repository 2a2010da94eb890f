//! `CaptureService` against the real server (TLS, tokens) and PostgreSQL: field-by-field
//! refusals that start nothing, the capture permission, the merged download (time order over
//! nodes and interfaces, every packet naming its node in pcapng), server-side limits, the
//! storage quota expiring the oldest finished capture, and captures surviving a restart.
//! Packets are reported through the store as the `ReportCapture` handler does; the agent's
//! side runs in the kernel test (`integration/tests/capture_sessions.rs`).

use palisade_proto::{
    client,
    v1::{self, capture_service_client::CaptureServiceClient},
};
use palisade_server::{
    auth::{Role, secret_hash},
    embedded::EmbeddedServer,
    error::ApiError,
    store::{Progress, Store},
};
use sqlx::PgPool;
use tonic::Code;
use tonic_types::StatusExt as _;

fn start(expression: &str, max_bytes: u64) -> v1::StartCaptureRequest {
    v1::StartCaptureRequest {
        expression: expression.into(),
        interfaces: vec!["lo".into(), "eth0".into()],
        limits: Some(v1::CaptureLimits {
            duration: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
            max_packets: 5,
            max_bytes,
        }),
        ..Default::default()
    }
}

async fn nodes(pool: &PgPool, names: &[&str]) {
    for name in names {
        sqlx::query("INSERT INTO nodes (name, labels) VALUES ($1, '{\"zone\": \"a\"}')")
            .bind(name)
            .execute(pool)
            .await
            .expect("node");
    }
}

fn packet(ns: u64, len: usize) -> v1::CapturedPacket {
    v1::CapturedPacket { timestamp_ns: ns, wire_length: len as u32 + 10, data: vec![(ns % 251) as u8; len] }
}

fn end(reason: &str) -> Progress {
    Progress { seen: 100, dropped: 1, end: Some((reason.into(), String::new(), false)) }
}

async fn captures(server: &EmbeddedServer, token: Option<&str>) -> CaptureServiceClient<client::Connection> {
    let ca = server.ca_cert().map(|p| std::fs::read(p).expect("ca"));
    let channel = client::channel(&server.url(), ca.as_deref(), None).await.expect("connect");
    CaptureServiceClient::new(client::with_token(channel, token.or(server.admin_token())).expect("token"))
}

fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad = status.get_details_bad_request().expect("field violations");
    bad.field_violations.into_iter().map(|v| (v.field, v.description)).collect()
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn bad_capture_requests_name_the_field_start_nothing_and_capturing_needs_its_permission(pool: PgPool) {
    let server = EmbeddedServer::start(pool.clone()).await.expect("server");
    nodes(&pool, &["cap-a"]).await;
    let mut admin = captures(&server, None).await;

    let status = admin.start_capture(start("tcp port 99999", 1000)).await.expect_err("bad port");
    let v = violations(&status);
    assert_eq!(v[0].0, "expression");
    assert!(v[0].1.starts_with("column 10:"), "{v:?}");
    let status = admin.start_capture(start("host 10.0.0.1 and frobnicate", 1000)).await.expect_err("keyword");
    assert!(violations(&status)[0].1.starts_with("column 19:"), "{status:?}");
    let mut no_limits = start("udp", 1000);
    no_limits.limits = None;
    assert_eq!(violations(&admin.start_capture(no_limits).await.expect_err("limits"))[0].0, "limits");
    let mut no_duration = start("udp", 1000);
    no_duration.limits.as_mut().expect("limits").duration = None;
    assert_eq!(violations(&admin.start_capture(no_duration).await.expect_err("duration"))[0].0, "limits.duration");
    let mut absurd = start("udp", 1000);
    absurd.snap_length = 1 << 30;
    assert_eq!(violations(&admin.start_capture(absurd).await.expect_err("snap"))[0].0, "snap_length");
    let mut huge = start("udp", u64::MAX);
    huge.limits.as_mut().expect("limits").max_packets = 0;
    let fields: Vec<_> =
        violations(&admin.start_capture(huge).await.expect_err("limits")).into_iter().map(|v| v.0).collect();
    assert_eq!(fields, ["limits.max_packets", "limits.max_bytes"]);
    let mut nobody = start("udp", 1000);
    nobody.node_selector.insert("zone".into(), "nowhere".into());
    assert_eq!(violations(&admin.start_capture(nobody).await.expect_err("no node"))[0].0, "node_selector");
    let listed = admin.list_captures(v1::ListCapturesRequest::default()).await.expect("list").into_inner();
    assert!(listed.captures.is_empty(), "nothing started: {listed:?}");
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE object_kind = 'capture'")
        .fetch_one(&pool)
        .await
        .expect("audit");
    assert_eq!(audited, 0);

    // An editor may change policy but not read packets; a viewer created with --capture may.
    let store = Store::new(pool.clone());
    let (editor, capturer) = (palisade_server::auth::new_secret(), palisade_server::auth::new_secret());
    store.create_token("editor", Role::Editor, &secret_hash(&editor)).await.expect("token");
    store.create_token_capturing("capturer", Role::Viewer, true, &secret_hash(&capturer)).await.expect("token");
    let status = captures(&server, Some(&editor)).await.start_capture(start("udp", 1000)).await.expect_err("editor");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = captures(&server, Some(&editor))
        .await
        .download_capture(v1::DownloadCaptureRequest { id: 1, format: 0 })
        .await
        .expect_err("editor downloads");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let started = captures(&server, Some(&capturer))
        .await
        .start_capture(start("udp", 1000))
        .await
        .expect("a capturing token starts")
        .into_inner()
        .capture
        .expect("capture");
    assert_eq!((started.created_by.as_str(), started.node_count, started.nodes.len()), ("capturer", 1, 1));
    assert_eq!(started.nodes[0].state, v1::CaptureNodeState::Pending as i32);
    let status = admin.delete_capture(v1::DeleteCaptureRequest { id: started.id }).await.expect_err("running");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    // Stopped before any node started it: every node finishes at once.
    let stopped = admin.stop_capture(v1::StopCaptureRequest { id: started.id }).await.expect("stop").into_inner();
    let stopped = stopped.capture.expect("capture");
    assert_eq!(stopped.state, v1::CaptureState::Finished as i32);
    assert_eq!(stopped.nodes[0].stop_reason, "stopped");
    admin.delete_capture(v1::DeleteCaptureRequest { id: started.id }).await.expect("delete");
    let status = admin.get_capture(v1::GetCaptureRequest { id: started.id }).await.expect_err("gone");
    assert_eq!(status.code(), Code::NotFound);
}

async fn download(server: &EmbeddedServer, id: u64, format: v1::CaptureFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    palisade_proto::client::download_capture(&server.admin().await, id, format, &mut bytes).await.expect("download");
    bytes
}

/// (interface name, timestamp ns, length) of every packet of a pcapng file.
fn read_pcapng(bytes: &[u8]) -> Vec<(String, u64, usize)> {
    use pcap_file::pcapng::{Block, PcapNgReader, blocks::interface_description::InterfaceDescriptionOption};
    let mut reader = PcapNgReader::new(bytes).expect("pcapng");
    let (mut names, mut packets) = (Vec::new(), Vec::new());
    while let Some(block) = reader.next_block() {
        match block.expect("block").0 {
            Block::InterfaceDescription(idb) => names.push(
                idb.options
                    .iter()
                    .find_map(|o| match o {
                        InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                        _ => None,
                    })
                    .expect("if_name"),
            ),
            Block::EnhancedPacket(p) => packets.push((
                names[p.interface_id as usize].clone(),
                u64::try_from(p.timestamp.as_nanos()).expect("ns"),
                p.data.len(),
            )),
            _ => {}
        }
    }
    packets
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn downloads_merge_nodes_in_time_order_the_quota_expires_the_oldest_and_captures_survive_a_restart(pool: PgPool) {
    let options = palisade_server::Options { capture_quota: 10_000, ..palisade_server::Options::default() };
    let server = EmbeddedServer::start_with(pool.clone(), options).await.expect("server");
    nodes(&pool, &["cap-a", "cap-b"]).await;
    let store = Store::new(pool.clone());
    let mut admin = captures(&server, None).await;
    let first = admin.start_capture(start("udp", 5_000)).await.expect("start").into_inner().capture.expect("capture");
    assert_eq!(first.node_count, 2);
    let id = first.id;
    // Node a on lo, node b on eth0, interleaved in time; node a reports 6 packets, one past
    // its limit of 5, which the server drops.
    let a: Vec<_> = [1_000, 3_000, 5_000, 7_000, 9_000, 11_000].iter().map(|&t| packet(t, 100)).collect();
    let b: Vec<_> = [2_000, 4_000].iter().map(|&t| packet(t, 100)).collect();
    let stored = store.report_capture("cap-a", id, 0, a, &Progress::default(), 10_000).await.expect("a");
    assert_eq!(stored, 5, "the server enforces max_packets itself");
    store.report_capture("cap-b", id, 1, b, &Progress::default(), 10_000).await.expect("b");
    let running = admin.get_capture(v1::GetCaptureRequest { id }).await.expect("get").into_inner().capture.expect("c");
    assert_eq!(running.state, v1::CaptureState::Running as i32);
    assert!(running.nodes.iter().all(|n| n.state == v1::CaptureNodeState::Running as i32), "{running:?}");
    store.report_capture("cap-a", id, 0, Vec::new(), &end("packets"), 10_000).await.expect("a ends");
    store.report_capture("cap-b", id, 1, Vec::new(), &end("duration"), 10_000).await.expect("b ends");
    let after_end = store.report_capture("cap-b", id, 1, vec![packet(5, 10)], &Progress::default(), 10_000).await;
    assert!(matches!(after_end, Err(ApiError::FailedPrecondition(_))), "{after_end:?}");
    let done = admin.get_capture(v1::GetCaptureRequest { id }).await.expect("get").into_inner().capture.expect("c");
    assert_eq!(done.state, v1::CaptureState::Finished as i32);
    assert_eq!((done.packets_kept, done.stored_bytes), (7, 700));
    let reasons: Vec<_> =
        done.nodes.iter().map(|n| (n.node.as_str(), n.stop_reason.as_str(), n.packets_kept)).collect();
    assert_eq!(reasons, [("cap-a", "packets", 5), ("cap-b", "duration", 2)]);
    assert_eq!((done.nodes[0].packets_seen, done.nodes[0].packets_dropped), (100, 1));

    let merged = read_pcapng(&download(&server, id, v1::CaptureFormat::Pcapng).await);
    let want: Vec<(String, u64, usize)> = [
        ("lo@cap-a", 1_000),
        ("eth0@cap-b", 2_000),
        ("lo@cap-a", 3_000),
        ("eth0@cap-b", 4_000),
        ("lo@cap-a", 5_000),
        ("lo@cap-a", 7_000),
        ("lo@cap-a", 9_000),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_owned(), t, 100))
    .collect();
    assert_eq!(merged, want, "time order over nodes, each packet naming its node");
    let pcap = download(&server, id, v1::CaptureFormat::Pcap).await;
    let mut reader = pcap_file::pcap::PcapReader::new(pcap.as_slice()).expect("pcap");
    let mut times = Vec::new();
    while let Some(p) = reader.next_packet() {
        times.push(p.expect("packet").timestamp().as_micros());
    }
    assert_eq!(times, [1, 2, 3, 4, 5, 7, 9], "classic pcap, microseconds");

    // Quota 10,000 bytes: 700 stored; a second capture's 9,000 fit, its next 600 only once
    // the first (finished) capture expires; beyond that it stops with "quota".
    let second = admin.start_capture(start("", 10_000)).await.expect("start").into_inner().capture.expect("c").id;
    let big = vec![packet(1, 3_000), packet(2, 3_000), packet(3, 3_000)];
    store.report_capture("cap-a", second, 0, big, &Progress::default(), 10_000).await.expect("fits");
    assert!(admin.get_capture(v1::GetCaptureRequest { id }).await.is_ok(), "not expired yet");
    store
        .report_capture("cap-a", second, 0, vec![packet(4, 600)], &Progress::default(), 10_000)
        .await
        .expect("expires");
    let status = admin.get_capture(v1::GetCaptureRequest { id }).await.expect_err("the oldest finished expired");
    assert_eq!(status.code(), Code::NotFound);
    let full = store.report_capture("cap-b", second, 0, vec![packet(5, 600)], &Progress::default(), 10_000).await;
    assert!(matches!(full, Err(ApiError::ResourceExhausted(_))), "{full:?}");
    let c =
        admin.get_capture(v1::GetCaptureRequest { id: second }).await.expect("get").into_inner().capture.expect("c");
    let b = c.nodes.iter().find(|n| n.node == "cap-b").expect("b");
    assert_eq!((b.state, b.stop_reason.as_str()), (v1::CaptureNodeState::Finished as i32, "quota"));
    assert_eq!(store.capture_bytes().await.expect("bytes"), 9_600);

    // A restart keeps everything stored.
    server.stop().await.expect("stop");
    let server = EmbeddedServer::start(pool.clone()).await.expect("restart");
    let mut admin = captures(&server, None).await;
    store.report_capture("cap-a", second, 0, Vec::new(), &end("stopped"), 10_000).await.expect("a ends");
    let c =
        admin.get_capture(v1::GetCaptureRequest { id: second }).await.expect("get").into_inner().capture.expect("c");
    assert_eq!((c.state, c.stored_bytes), (v1::CaptureState::Finished as i32, 9_600));
    let packets = read_pcapng(&download(&server, second, v1::CaptureFormat::Pcapng).await);
    assert_eq!(packets.iter().map(|p| p.2).collect::<Vec<_>>(), [3_000, 3_000, 3_000, 600]);
}
