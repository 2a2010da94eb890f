//! gRPC tests: the real server on 127.0.0.1:0, the generated client, real PostgreSQL.

use std::{collections::BTreeMap, time::Duration};

use palisade_proto::client::Connection;
use palisade_proto::v1::{
    self, agent_service_client::AgentServiceClient, apply_policy_request::Source,
    event_service_client::EventServiceClient, node_service_client::NodeServiceClient,
    policy_service_client::PolicyServiceClient,
};
use palisade_server::embedded::EmbeddedServer;
use sqlx::PgPool;
use tokio_stream::StreamExt as _;
use tonic::{Code, Request, transport::Channel};
use tonic_types::StatusExt as _;

use palisade_testkit::eventually;

/// How long a test waits for the server to record what an agent said.
const WAIT: Duration = Duration::from_secs(10);

struct Harness {
    server: EmbeddedServer,
    /// TLS and the admin token.
    admin: Connection,
    /// TLS with node-1's certificate.
    node1: Channel,
}

impl Harness {
    async fn start(pool: PgPool) -> Self {
        Self::on(EmbeddedServer::start(pool).await.expect("server starts")).await
    }
    async fn on(server: EmbeddedServer) -> Self {
        let (admin, node1) = (server.admin().await, server.node("node-1").await);
        Self { server, admin, node1 }
    }
    fn policies(&self) -> PolicyServiceClient<Connection> {
        PolicyServiceClient::new(self.admin.clone()).max_encoding_message_size(64 << 20)
    }
    /// `AgentService` as node-1.
    fn agents(&self) -> AgentServiceClient<Channel> {
        AgentServiceClient::new(self.node1.clone())
    }
    /// `AgentService` as node `name`.
    async fn agents_as(&self, name: &str) -> AgentServiceClient<Channel> {
        AgentServiceClient::new(self.server.node(name).await)
    }
    fn nodes(&self) -> NodeServiceClient<Connection> {
        NodeServiceClient::new(self.admin.clone())
    }
    fn events(&self) -> EventServiceClient<Connection> {
        EventServiceClient::new(self.admin.clone())
    }
}

fn apply_doc(doc: &str) -> v1::ApplyPolicyRequest {
    v1::ApplyPolicyRequest { source: Some(Source::Document(doc.to_owned())), ..Default::default() }
}

fn deny_doc(name: &str, port: u32) -> String {
    format!(
        "name: {name}\nlabels: {{team: web}}\nworkload: {{cgroup: /demo}}\nnetwork:\n  connect:\n    rules:\n      - {{id: block, action: deny, cidrs: [127.0.0.0/8, \"::1\"], ports: [{port}], protocols: [tcp]}}\n"
    )
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(pool)
        .await
        .expect("count")
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn policy_crud_round_trip_records_history_and_audit(pool: PgPool) {
    let h = Harness::start(pool.clone()).await;
    let mut client = h.policies();
    let mut request = Request::new(apply_doc(&deny_doc("web", 9999)));
    request.metadata_mut().insert("palisade-actor", "alice".parse().expect("ascii"));
    let applied = client.apply_policy(request).await.expect("apply").into_inner();
    assert!(applied.created && applied.changed);
    let stored = applied.policy.expect("stored");
    assert_eq!(stored.revision, 1);
    let actor = h.server.admin_name().expect("a token").to_owned();
    assert_eq!(stored.updated_by, actor, "the token's name, not the palisade-actor header");

    let got = client.get_policy(v1::GetPolicyRequest { name: "web".into(), revision: None }).await.expect("get");
    let got = got.into_inner().policy.expect("policy");
    let policy = got.policy.expect("content");
    assert_eq!(policy.mode, v1::Mode::Enforce as i32, "defaults are filled");
    assert_eq!(policy.network.and_then(|n| n.connect).map(|c| c.default), Some(v1::Action::Allow as i32));

    let updated = client.apply_policy(apply_doc(&deny_doc("web", 8080))).await.expect("update").into_inner();
    assert_eq!(updated.policy.map(|p| p.revision), Some(2));
    let deleted = client
        .delete_policy(v1::DeletePolicyRequest { name: "web".into(), expected_revision: Some(2) })
        .await
        .expect("delete");
    assert_eq!(deleted.into_inner().revision, 3);
    let err = client.get_policy(v1::GetPolicyRequest { name: "web".into(), revision: None }).await.expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);

    let history = client
        .list_policy_revisions(v1::ListPolicyRevisionsRequest {
            name: "web".into(),
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .expect("history")
        .into_inner();
    assert_eq!(history.revisions.iter().map(|r| r.revision).collect::<Vec<_>>(), [3, 2]);
    let rest = client
        .list_policy_revisions(v1::ListPolicyRevisionsRequest {
            name: "web".into(),
            page_size: 2,
            page_token: history.next_page_token,
        })
        .await
        .expect("history page 2")
        .into_inner();
    assert_eq!(rest.revisions.iter().map(|r| r.revision).collect::<Vec<_>>(), [1]);
    assert!(rest.next_page_token.is_empty());

    let audit: Vec<(String, String)> =
        sqlx::query_as("SELECT action, actor FROM audit_log WHERE object_kind = 'policy' ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("audit");
    assert_eq!(audit.len(), 3);
    assert_eq!(audit[0], ("policy.created".to_owned(), actor.clone()));
    assert_eq!(audit[2].0, "policy.deleted");
    assert_eq!(audit[1].1, actor, "{audit:?}");
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn in_dev_mode_the_actor_header_names_the_actor(pool: PgPool) {
    let server = EmbeddedServer::start_dev(pool.clone(), palisade_server::Options::default()).await.expect("server");
    assert!(server.url().starts_with("http://") && server.admin_token().is_none());
    let mut policies = PolicyServiceClient::new(server.admin().await);
    let mut request = Request::new(apply_doc(&deny_doc("web", 9999)));
    request.metadata_mut().insert("palisade-actor", "alice".parse().expect("ascii"));
    policies.apply_policy(request).await.expect("apply");
    policies.apply_policy(apply_doc(&deny_doc("web", 9998))).await.expect("apply without a header");
    let actors: Vec<String> =
        sqlx::query_scalar("SELECT actor FROM audit_log WHERE object_kind = 'policy' ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("audit");
    assert_eq!(actors[0], "alice");
    assert!(actors[1].starts_with("anonymous@127.0.0.1:"), "{actors:?}");
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn list_policies_filters_labels_and_paginates(pool: PgPool) {
    let h = Harness::start(pool).await;
    let mut client = h.policies();
    for i in 0..7 {
        let tier = if i < 5 { "gold" } else { "silver" };
        client.apply_policy(apply_doc(&format!("name: p{i}\nlabels: {{tier: {tier}}}"))).await.expect("apply");
    }
    let selector = BTreeMap::from([("tier".to_owned(), "gold".to_owned())]);
    let mut names = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_policies(v1::ListPoliciesRequest {
                label_selector: selector.clone(),
                page_size: 2,
                page_token: token,
            })
            .await
            .expect("list")
            .into_inner();
        pages += 1;
        names.extend(page.policies.into_iter().filter_map(|p| p.policy).map(|p| p.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(names, ["p0", "p1", "p2", "p3", "p4"]);
    assert_eq!(pages, 3);
    let err = client
        .list_policies(v1::ListPoliciesRequest { page_token: "garbage".into(), ..Default::default() })
        .await
        .expect_err("bad token");
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// A 1 MB anchor and 1.6 MB of aliases to it (what made `serde_yaml` allocate past 4 GB).
fn alias_bomb() -> String {
    format!(
        "name: bomb\nlabels: {{k: &a \"{}\"}}\ndescription: [{}]\n",
        "x".repeat(1 << 20),
        vec!["*a"; 530_000].join(",")
    )
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn an_alias_bomb_document_is_invalid_argument_within_a_second(pool: PgPool) {
    let h = Harness::start(pool.clone()).await;
    let started = std::time::Instant::now();
    let status = h.policies().apply_policy(apply_doc(&alias_bomb())).await.expect_err("must be rejected");
    assert!(started.elapsed() < std::time::Duration::from_secs(1), "took {:?}", started.elapsed());
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad = status.get_details_bad_request().expect("field violations");
    assert_eq!(bad.field_violations[0].field, "document");
    assert!(bad.field_violations[0].description.contains("anchors and aliases"), "{bad:?}");
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM policy_revisions").fetch_one(&pool).await.expect("count");
    assert_eq!(stored, 0);
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn apply_policy_bad_input_is_rejected_with_field_paths_and_stores_nothing(pool: PgPool) {
    let h = Harness::start(pool.clone()).await;
    let mut client = h.policies();
    let rule = |r: &str| format!("name: bad\nnetwork: {{connect: {{rules: [{r}]}}}}");
    let long_name = format!("name: {}", "a".repeat(64));
    let oversized = format!("name: big\ndescription: \"{}\"", "x".repeat(9 << 20));
    let cases: Vec<(String, &str)> = vec![
        (rule("{id: r, action: deny, cidrs: [10.0.0.0/33]}"), "network.connect.rules[0].cidrs[0]"),
        (rule("{id: r, action: deny, cidrs: [\"fe80::/200\"]}"), "network.connect.rules[0].cidrs[0]"),
        (rule("{id: r, action: deny, ports: [65536]}"), "network.connect.rules[0].ports[0]"),
        (rule("{id: r, action: deny, ports: [\"90-80\"]}"), "network.connect.rules[0].ports[0]"),
        (rule("{id: r, action: deny, colour: red}"), "network.connect.rules[0].colour"),
        ("name: bad\nmode: strict".to_owned(), "mode"),
        (rule("{id: r, action: block}"), "network.connect.rules[0].action"),
        (rule("{id: r, action: deny, protocols: [icmp]}"), "network.connect.rules[0].protocols[0]"),
        ("name: \"\"".to_owned(), "name"),
        (long_name, "name"),
        (rule("{id: r, action: deny}, {id: r, action: allow}"), "network.connect.rules[1].id"),
        (oversized, "document"),
        ("[not, a, mapping]".to_owned(), "document"),
        ("name: bad\ndescription: \"a\\0b\"".to_owned(), "description"),
    ];
    for (doc, field) in cases {
        let status = client.apply_policy(apply_doc(&doc)).await.expect_err("must be rejected");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let bad = status.get_details_bad_request().expect("field violations");
        assert_eq!(bad.field_violations[0].field, field, "{:?}", bad.field_violations);
        assert!(!bad.field_violations[0].description.is_empty());
    }
    // The structured source gets the same checks, including unknown enum numbers.
    let mut policy = palisade_proto::document::parse(&rule("{id: r, action: deny}")).expect("doc").to_proto();
    policy.network.as_mut().and_then(|n| n.connect.as_mut()).expect("connect").rules[0].action = 17;
    let status = client
        .apply_policy(v1::ApplyPolicyRequest { source: Some(Source::Policy(policy)), ..Default::default() })
        .await
        .expect_err("unknown enum");
    assert_eq!(
        status.get_details_bad_request().expect("violations").field_violations[0].field,
        "network.connect.rules[0].action"
    );
    let status = client.apply_policy(v1::ApplyPolicyRequest::default()).await.expect_err("no source");
    assert_eq!(status.code(), Code::InvalidArgument);
    for table in ["policies", "policy_revisions", "audit_log WHERE object_kind = 'policy'"] {
        assert_eq!(count(&pool, table).await, 0, "{table} must stay empty");
    }
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn apply_policy_concurrency_one_stale_writer_loses_and_fifty_creates_land(pool: PgPool) {
    let h = Harness::start(pool.clone()).await;
    let mut client = h.policies();
    client.apply_policy(apply_doc(&deny_doc("shared", 1))).await.expect("create");
    let stale = |port| {
        let mut c = h.policies();
        async move {
            let mut req = apply_doc(&deny_doc("shared", port));
            req.expected_revision = Some(1);
            c.apply_policy(req).await
        }
    };
    let (a, b) = tokio::join!(stale(2), stale(3));
    let codes: Vec<_> = [&a, &b].iter().map(|r| r.as_ref().err().map(tonic::Status::code)).collect();
    assert!(codes.contains(&None) && codes.contains(&Some(Code::Aborted)), "{codes:?}");

    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let mut c = h.policies();
            tokio::spawn(async move { c.apply_policy(apply_doc(&deny_doc(&format!("bulk-{i}"), 1000 + i))).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("every concurrent apply lands");
    }
    let bulk: i64 = sqlx::query_scalar("SELECT count(*) FROM policies WHERE name LIKE 'bulk-%' AND NOT deleted")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(bulk, 50);
    let generation: i64 =
        sqlx::query_scalar("SELECT generation FROM policy_generation").fetch_one(&pool).await.expect("gen");
    assert_eq!(generation, 52, "one generation per change");
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn apply_policy_create_only_of_a_live_policy_is_already_exists_and_stores_nothing(pool: PgPool) {
    let h = Harness::start(pool.clone()).await;
    let create_only = |port| {
        let mut req = apply_doc(&deny_doc("web", port));
        req.expected_revision = Some(0);
        req
    };
    h.policies().apply_policy(create_only(1)).await.expect("create-only of a new name lands");
    let err = h.policies().apply_policy(create_only(2)).await.expect_err("the name is live");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains("\"web\" already exists (revision 1)"), "{}", err.message());
    assert_eq!(count(&pool, "policy_revisions").await, 1);
    // Deleting with expected revision 0 stays a stale revision, not a duplicate.
    let err = h
        .policies()
        .delete_policy(v1::DeletePolicyRequest { name: "web".into(), expected_revision: Some(0) })
        .await
        .expect_err("stale");
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn apply_policy_dry_run_reports_without_storing(pool: PgPool) {
    let h = Harness::start(pool.clone()).await;
    let mut req = apply_doc(&deny_doc("web", 1));
    req.dry_run = true;
    let out = h.policies().apply_policy(req).await.expect("dry run").into_inner();
    assert!(out.created && out.changed);
    assert_eq!(count(&pool, "policies").await, 0);
}

fn hello(name: &str) -> v1::SyncRequest {
    v1::SyncRequest {
        message: Some(v1::sync_request::Message::Hello(v1::AgentHello {
            node_name: name.to_owned(),
            labels: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
            features: Some(v1::KernelFeatures {
                kernel_release: "6.18.0".into(),
                cgroup_sock_addr: true,
                ..Default::default()
            }),
            agent_version: "test".into(),
            ..Default::default()
        })),
    }
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn sync_hello_registers_node_and_records_ack_and_nack(pool: PgPool) {
    let h = Harness::start(pool).await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(hello("node-1")).await.expect("send hello");
    let _responses = h.agents().sync(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("sync");
    let nodes = h.nodes().list_nodes(v1::ListNodesRequest::default()).await.expect("list").into_inner().nodes;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].name, "node-1");
    assert!(nodes[0].connected);
    assert_eq!(nodes[0].features.as_ref().map(|f| f.kernel_release.as_str()), Some("6.18.0"));

    let nack =
        v1::BundleNack { generation: 4, digest: "d4".repeat(32), error: "verifier: R1 invalid mem access".into() };
    tx.send(v1::SyncRequest { message: Some(v1::sync_request::Message::Nack(nack)) }).await.expect("nack");
    let mut nodes = h.nodes();
    eventually("the NACK to be recorded", WAIT, || {
        let mut nodes = nodes.clone();
        async move {
            let node =
                nodes.get_node(v1::GetNodeRequest { name: "node-1".into() }).await.expect("get").into_inner().node;
            node.and_then(|n| n.last_error)
                .is_some_and(|e| e.generation == 4 && e.message.contains("verifier"))
                .then_some(())
        }
    })
    .await;
    let ack = v1::BundleAck { generation: 5, digest: "d5".repeat(32) };
    tx.send(v1::SyncRequest { message: Some(v1::sync_request::Message::Ack(ack)) }).await.expect("ack");
    eventually("the ACK to be recorded and clear the older NACK", WAIT, || {
        let mut nodes = nodes.clone();
        async move {
            let node =
                nodes.get_node(v1::GetNodeRequest { name: "node-1".into() }).await.expect("get").into_inner().node;
            node.is_some_and(|n| {
                n.applied_generation == 5 && n.applied_digest == "d5".repeat(32) && n.last_error.is_none()
            })
            .then_some(())
        }
    })
    .await;
    drop(tx);
    // An ACK naming something that is not a digest ends the stream (grouped ACK writes must
    // not fail for every node because one sent a NUL); nothing is recorded.
    let (bad_tx, bad_rx) = tokio::sync::mpsc::channel(8);
    bad_tx.send(hello("node-1")).await.expect("send hello");
    let ack = v1::BundleAck { generation: 6, digest: "not\0hex".into() };
    bad_tx.send(v1::SyncRequest { message: Some(v1::sync_request::Message::Ack(ack)) }).await.expect("ack");
    let mut bad =
        h.agents().sync(tokio_stream::wrappers::ReceiverStream::new(bad_rx)).await.expect("sync").into_inner();
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match bad.next().await {
                Some(Ok(_)) => {}
                Some(Err(status)) => return Some(status),
                None => return None,
            }
        }
    })
    .await
    .expect("the stream ends");
    assert_eq!(ended.map(|s| s.code()), Some(Code::InvalidArgument));
    let node = h.nodes().get_node(v1::GetNodeRequest { name: "node-1".into() }).await.expect("get").into_inner().node;
    // (The hello said it enforces nothing, which the server records; the ACK is not.)
    assert_eq!(
        node.map(|n| (n.applied_generation, n.applied_digest)),
        Some((0, String::new())),
        "the bad ACK recorded nothing"
    );
    drop(bad_tx);
    eventually("the node to show as disconnected", WAIT, || {
        let mut nodes = nodes.clone();
        async move {
            let node =
                nodes.get_node(v1::GetNodeRequest { name: "node-1".into() }).await.expect("get").into_inner().node;
            node.is_some_and(|n| !n.connected).then_some(())
        }
    })
    .await;
    let err = nodes.get_node(v1::GetNodeRequest { name: "nope".into() }).await.expect_err("unknown node");
    assert_eq!(err.code(), Code::NotFound);
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn sync_without_hello_or_with_bad_name_is_rejected(pool: PgPool) {
    let h = Harness::start(pool.clone()).await;
    let heartbeat = v1::SyncRequest { message: Some(v1::sync_request::Message::Heartbeat(v1::Heartbeat::default())) };
    let err = h.agents().sync(tokio_stream::iter(vec![heartbeat])).await.expect_err("no hello");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = h.agents().sync(tokio_stream::iter(vec![hello("Bad_Name")])).await.expect_err("bad name");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(count(&pool, "nodes").await, 0);
}

fn event(policy: &str, verdict: v1::Verdict, port: u32) -> v1::DecisionEvent {
    v1::DecisionEvent {
        policy: policy.to_owned(),
        revision: 1,
        rule_id: "block".into(),
        verdict: verdict as i32,
        hook: "cgroup/connect4".into(),
        pid: 42,
        comm: "curl".into(),
        uid: 1000,
        cgroup_id: u64::MAX - 1,
        address: "127.0.0.1".into(),
        port,
        protocol: v1::Protocol::Tcp as i32,
        bundle_digest: "abc".into(),
        ..Default::default()
    }
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn report_events_are_stored_listed_with_filters_and_watched(pool: PgPool) {
    let h = Harness::start(pool).await;
    let watch_filter =
        v1::EventFilter { policy: "web".into(), verdict: v1::Verdict::Deny as i32, ..Default::default() };
    let mut watch = h
        .events()
        .watch_events(v1::WatchEventsRequest { filter: Some(watch_filter) })
        .await
        .expect("watch")
        .into_inner();

    let batch = vec![
        v1::ReportEventsRequest {
            node_name: "node-1".into(),
            events: vec![event("web", v1::Verdict::Deny, 1), event("web", v1::Verdict::Audit, 2)],
        },
        v1::ReportEventsRequest { node_name: String::new(), events: vec![event("db", v1::Verdict::Deny, 3)] },
    ];
    let accepted = h.agents().report_events(tokio_stream::iter(batch)).await.expect("report").into_inner().accepted;
    assert_eq!(accepted, 3);
    let other =
        v1::ReportEventsRequest { node_name: "node-2".into(), events: vec![event("web", v1::Verdict::Deny, 4)] };
    h.agents_as("node-2").await.report_events(tokio_stream::iter(vec![other])).await.expect("report node-2");

    let watched = tokio::time::timeout(Duration::from_secs(10), async {
        let mut ports = Vec::new();
        while ports.len() < 2 {
            let e = watch.next().await.expect("stream open").expect("event");
            assert_eq!((e.policy.as_str(), e.verdict), ("web", v1::Verdict::Deny as i32));
            ports.push(e.port);
        }
        ports
    })
    .await
    .expect("watched events arrive");
    assert_eq!(watched, [1, 4]);

    let mut events = h.events();
    let list = |filter: v1::EventFilter, page_size: u32, page_token: String| {
        let mut events = events.clone();
        async move {
            events
                .list_events(v1::ListEventsRequest { filter: Some(filter), page_size, page_token })
                .await
                .expect("list")
                .into_inner()
        }
    };
    let all = list(v1::EventFilter::default(), 0, String::new()).await;
    assert_eq!(all.events.iter().map(|e| e.port).collect::<Vec<_>>(), [4, 3, 2, 1], "newest first");
    let first = &all.events[3];
    assert_eq!((first.node.as_str(), first.cgroup_id, first.comm.as_str()), ("node-1", u64::MAX - 1, "curl"));
    assert!(first.id > 0 && first.received_at.is_some());
    let by_node = list(v1::EventFilter { node: "node-2".into(), ..Default::default() }, 0, String::new()).await;
    assert_eq!(by_node.events.iter().map(|e| e.port).collect::<Vec<_>>(), [4]);
    let by_policy_verdict = list(
        v1::EventFilter { policy: "web".into(), verdict: v1::Verdict::Audit as i32, ..Default::default() },
        0,
        String::new(),
    )
    .await;
    assert_eq!(by_policy_verdict.events.iter().map(|e| e.port).collect::<Vec<_>>(), [2]);
    let page1 = list(v1::EventFilter::default(), 3, String::new()).await;
    assert_eq!(page1.events.len(), 3);
    let page2 = list(v1::EventFilter::default(), 3, page1.next_page_token).await;
    assert_eq!(page2.events.iter().map(|e| e.port).collect::<Vec<_>>(), [1]);
    assert!(page2.next_page_token.is_empty());
    let future = prost_types::Timestamp { seconds: chrono::Utc::now().timestamp() + 3600, nanos: 0 };
    let since_future = list(v1::EventFilter { since: Some(future), ..Default::default() }, 0, String::new()).await;
    assert!(since_future.events.is_empty());
    let err = events
        .list_events(v1::ListEventsRequest { page_size: 5000, ..Default::default() })
        .await
        .expect_err("page too large");
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// Makes one field of a message invalid.
type Corrupt<T> = fn(&mut T);

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn report_events_invalid_batch_is_rejected_whole(pool: PgPool) {
    let h = Harness::start(pool.clone()).await;
    let mut bad = event("web", v1::Verdict::Deny, 1);
    bad.verdict = 99;
    let req =
        v1::ReportEventsRequest { node_name: "node-1".into(), events: vec![event("web", v1::Verdict::Deny, 1), bad] };
    let err = h.agents().report_events(tokio_stream::iter(vec![req])).await.expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.get_details_bad_request().expect("violations").field_violations[0].field, "events[1].verdict");
    assert_eq!(count(&pool, "events").await, 0);
    // Text PostgreSQL cannot store, and untrusted fields past their bounds, are the caller's
    // fault (InvalidArgument with the field), never Internal.
    let cases: Vec<(Corrupt<v1::DecisionEvent>, &str)> = vec![
        (|e| e.comm = "ev\0il".into(), "events[0].comm"),
        (|e| e.path = "/etc/\0shadow".into(), "events[0].path"),
        (|e| e.path = format!("/{}", "p".repeat(300)), "events[0].path"),
        (|e| e.access = vec![1, 2, 1], "events[0].access"),
    ];
    for (corrupt, field) in cases {
        let mut e = event("web", v1::Verdict::Deny, 1);
        corrupt(&mut e);
        let req = v1::ReportEventsRequest { node_name: "node-1".into(), events: vec![e] };
        let err = h.agents().report_events(tokio_stream::iter(vec![req])).await.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert_eq!(err.get_details_bad_request().expect("violations").field_violations[0].field, field);
    }
    assert_eq!(count(&pool, "events").await, 0);
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn hello_fields_are_bounded(pool: PgPool) {
    let h = Harness::start(pool.clone()).await;
    let hello = |f: fn(&mut v1::AgentHello)| {
        let mut hello = v1::AgentHello { node_name: "node-x".into(), failsafe_ports: vec![22], ..Default::default() };
        f(&mut hello);
        v1::SyncRequest { message: Some(v1::sync_request::Message::Hello(hello)) }
    };
    let cases: Vec<(Corrupt<v1::AgentHello>, &str)> = vec![
        (|h| h.agent_version = "0.1\0".into(), "hello.agent_version"),
        (|h| h.agent_version = "v".repeat(65), "hello.agent_version"),
        (|h| h.failsafe_ports = vec![22; 1025], "hello.failsafe_ports"),
        (
            |h| h.features = Some(v1::KernelFeatures { kernel_release: "6\0".into(), ..Default::default() }),
            "hello.features.kernel_release",
        ),
    ];
    for (corrupt, field) in cases {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(hello(corrupt)).await.expect("send");
        let err =
            h.agents_as("node-x").await.sync(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert_eq!(err.get_details_bad_request().expect("violations").field_violations[0].field, field);
    }
    assert_eq!(count(&pool, "nodes").await, 0, "no refused hello registered a node");
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn health_reports_serving_and_compile_policy_reports_programs(pool: PgPool) {
    let h = Harness::start(pool.clone()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(h.admin.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: "palisade.v1.PolicyService".into() })
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let compiled = h
        .policies()
        .compile_policy(v1::CompilePolicyRequest {
            target: Some(v1::compile_policy_request::Target::Document(deny_doc("web", 9999))),
            disassemble: true,
        })
        .await
        .expect("compile")
        .into_inner();
    let sections: Vec<_> = compiled.programs.iter().map(|p| p.section.as_str()).collect();
    assert_eq!(
        sections,
        [
            "cgroup/connect4",
            "cgroup/connect6",
            "lsm/socket_connect",
            "cgroup/bind4",
            "cgroup/bind6",
            "lsm/socket_bind",
            "lsm/bprm_check_security",
            "lsm/file_open"
        ]
    );
    assert!(compiled.programs.iter().all(|p| p.instructions > 10));
    assert!(compiled.disassembly.contains("web@0/block"), "{}", compiled.disassembly);
    assert_eq!(compiled.digest.len(), 64);
    assert_eq!(count(&pool, "policies").await, 0, "compiling stores nothing");
    let err = h.policies().compile_policy(v1::CompilePolicyRequest::default()).await.expect_err("no target");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = h
        .policies()
        .compile_policy(v1::CompilePolicyRequest {
            target: Some(v1::compile_policy_request::Target::NodeName("nowhere".into())),
            disassemble: false,
        })
        .await
        .expect_err("unknown node");
    assert_eq!(err.code(), Code::NotFound);
    h.server.stop().await.expect("graceful stop");
}

#[tokio::test]
async fn health_is_not_serving_while_the_database_is_gone_and_serving_once_it_is_back() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let admin = PgPool::connect(&base).await.expect("connect");
    let db = format!("palisade_health_{}", std::process::id());
    let sql = |text: String| sqlx::query(sqlx::AssertSqlSafe(text));
    sql(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&admin).await.expect("drop");
    sql(format!("CREATE DATABASE {db}")).execute(&admin).await.expect("create");
    let url = format!("{}/{db}", base.rsplit_once('/').expect("a URL with a path").0);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect(&url)
        .await
        .expect("test database");
    palisade_server::MIGRATOR.run(&pool).await.expect("migrate");
    let server = EmbeddedServer::start(pool).await.expect("server");
    let channel = server.admin().await;
    let status = |service: &'static str| {
        let channel = channel.clone();
        async move {
            HealthClient::new(channel)
                .check(HealthCheckRequest { service: service.into() })
                .await
                .map(|r| r.into_inner().status)
                .ok()
        }
    };
    assert_eq!(status("").await, Some(ServingStatus::Serving as i32));

    sql(format!("DROP DATABASE {db} WITH (FORCE)")).execute(&admin).await.expect("drop under the server");
    eventually("health to turn NOT_SERVING", WAIT, || async {
        let s = status("palisade.v1.PolicyService").await;
        (s == Some(ServingStatus::NotServing as i32)).then_some(())
    })
    .await;
    assert_eq!(status("").await, Some(ServingStatus::NotServing as i32));

    sql(format!("CREATE DATABASE {db}")).execute(&admin).await.expect("recreate");
    eventually("health to turn SERVING again", WAIT, || async {
        (status("").await == Some(ServingStatus::Serving as i32)).then_some(())
    })
    .await;
    let _ = server.stop().await;
    let _ = sql(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&admin).await;
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn shutdown_with_an_idle_open_stream_ends_within_the_grace_period(pool: PgPool) {
    let grace = Duration::from_secs(1);
    let options = palisade_server::Options { shutdown_grace: grace, ..palisade_server::Options::default() };
    let server = EmbeddedServer::start_with(pool, options).await.expect("server");
    let channel = server.node("node-1").await;
    // A ReportEvents stream that is open and never sends anything.
    let (_tx, rx) = tokio::sync::mpsc::channel::<v1::ReportEventsRequest>(1);
    let idle = tokio::spawn(async move {
        AgentServiceClient::new(channel).report_events(tokio_stream::wrappers::ReceiverStream::new(rx)).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let stopped = tokio::time::timeout(grace * 5, server.stop()).await;
    assert!(stopped.is_ok(), "the server did not stop within 5× its grace period");
    assert!(started.elapsed() < grace * 3, "stopped after {:?}", started.elapsed());
    idle.abort();
}

/// A server on a runtime of its own (two worker threads, as the daemon runs), so a test's
/// clients on the test's runtime measure the server, not their own scheduling.
struct OwnRuntimeServer {
    server: Option<EmbeddedServer>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl OwnRuntimeServer {
    /// TLS and tokens, or plaintext (`secure` false).
    async fn start(pool: PgPool, options: palisade_server::Options, secure: bool) -> Self {
        // The PKI's token goes in through the test's runtime, which owns the pool's
        // connections; the server runtime is started after.
        let secured =
            if secure { Some(palisade_server::embedded::Secured::create(&pool).await.expect("PKI")) } else { None };
        let options = if secure { options } else { palisade_server::Options { tls: None, ..options } };
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let addr = "127.0.0.1:0".parse().expect("addr");
        let server = std::thread::scope(|scope| {
            scope
                .spawn(|| runtime.block_on(EmbeddedServer::restart_on(pool, addr, options, secured)))
                .join()
                .expect("start thread")
                .expect("server starts")
        });
        Self { server: Some(server), runtime: Some(runtime) }
    }

    fn server(&self) -> &EmbeddedServer {
        self.server.as_ref().expect("running")
    }
}

impl Drop for OwnRuntimeServer {
    fn drop(&mut self) {
        drop(self.server.take());
        if let Some(runtime) = self.runtime.take() {
            // Dropped from the test's async context, where a runtime may not block.
            runtime.shutdown_background();
        }
    }
}

/// Floods ReportEvents at `url` from `streams` parallel streams (stream `i` reports for
/// `node(i)`), each sending `messages` messages of `per_message` events, while a client on
/// a thread of its own, connected before the flood starts, lists policies and gets node
/// `probe_node` every 50 ms. Returns
/// (accepted, rate limited, slowest other call, flood duration).
async fn flood(
    server: &EmbeddedServer,
    node: impl Fn(usize) -> String,
    streams: usize,
    messages: usize,
    per_message: usize,
    probe_node: &str,
) -> (u64, u64, Duration, Duration) {
    // A node certificate per node with TLS; one shared connection in dev.
    let mut channels = std::collections::HashMap::new();
    let shared = if server.admin_token().is_none() { Some(server.node("any").await) } else { None };
    for name in (0..streams).map(&node) {
        if let std::collections::hash_map::Entry::Vacant(slot) = channels.entry(name) {
            let channel = match &shared {
                Some(channel) => channel.clone(),
                None => server.node(slot.key()).await,
            };
            slot.insert(channel);
        }
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Awaited, not blocked on: the test's runtime drives the pool's connections.
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let prober = {
        let (done, probe_node) = (done.clone(), probe_node.to_owned());
        let (url, token) = (server.url(), server.admin_token().map(str::to_owned));
        let ca = server.ca_cert().map(|p| std::fs::read(p).expect("ca"));
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let channel = palisade_proto::client::channel(&url, ca.as_deref(), None).await.expect("connect");
                let channel = palisade_proto::client::with_token(channel, token.as_deref()).expect("token");
                let (mut policies, mut nodes) =
                    (PolicyServiceClient::new(channel.clone()), NodeServiceClient::new(channel));
                // One call before the flood: the connection is up and the token known.
                policies.list_policies(v1::ListPoliciesRequest::default()).await.expect("list before the flood");
                ready_tx.send(()).expect("signal");
                let mut slowest = Duration::ZERO;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = std::time::Instant::now();
                    policies.list_policies(v1::ListPoliciesRequest::default()).await.expect("list during the flood");
                    nodes
                        .get_node(v1::GetNodeRequest { name: probe_node.clone() })
                        .await
                        .expect("get during the flood");
                    slowest = slowest.max(t.elapsed());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                slowest
            })
        })
    };
    ready.await.expect("the prober is connected");
    let started = std::time::Instant::now();
    let floods: Vec<_> = (0..streams)
        .map(|i| {
            let node = node(i);
            let mut agents = AgentServiceClient::new(channels[&node].clone());
            tokio::spawn(async move {
                let batch: Vec<v1::DecisionEvent> =
                    (0..per_message).map(|p| event("web", v1::Verdict::Deny, p as u32)).collect();
                let requests = (0..messages).map(move |m| v1::ReportEventsRequest {
                    node_name: if m == 0 { node.clone() } else { String::new() },
                    events: batch.clone(),
                });
                agents.report_events(tokio_stream::iter(requests)).await.expect("report").into_inner()
            })
        })
        .collect();
    let (mut accepted, mut limited) = (0, 0);
    for f in floods {
        let response = f.await.expect("flood task");
        (accepted, limited) = (accepted + response.accepted, limited + response.rate_limited);
    }
    let elapsed = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    (accepted, limited, prober.join().expect("prober"), elapsed)
}

async fn register(pool: &PgPool, name: &str) {
    let Some(v1::sync_request::Message::Hello(hello)) = hello(name).message else { unreachable!() };
    palisade_server::store::Store::new(pool.clone()).node_hello(&hello).await.expect("register");
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn an_events_flood_from_one_node_is_rate_limited_counted_and_other_calls_still_answer(pool: PgPool) {
    let rate = palisade_server::ratelimit::EventRate { per_second: 1_000, burst: 2_000 };
    let options = palisade_server::Options { event_rate: rate, ..palisade_server::Options::default() };
    let server = OwnRuntimeServer::start(pool.clone(), options, true).await;
    register(&pool, "flood").await;
    register(&pool, "quiet").await;
    let (streams, messages, per_message) = (16, 20, 1_000);
    let (accepted, limited, slowest, elapsed) =
        flood(server.server(), |_| "flood".into(), streams, messages, per_message, "flood").await;
    let sent = (streams * messages * per_message) as u64;
    eprintln!(
        "flood of {sent} events in {elapsed:?}: {accepted} stored, {limited} refused; slowest other call {slowest:?}"
    );
    assert_eq!(accepted + limited, sent, "every event is stored or counted");
    let allowed = u64::from(rate.burst) + (elapsed.as_secs_f64() * f64::from(rate.per_second)).ceil() as u64;
    assert!((u64::from(rate.burst)..=allowed).contains(&accepted), "{accepted} stored, the limit allowed {allowed}");
    assert_eq!(count(&pool, "events").await as u64, accepted, "refused events are not stored");
    let node = NodeServiceClient::new(server.server().admin().await)
        .get_node(v1::GetNodeRequest { name: "flood".into() })
        .await
        .expect("node")
        .into_inner();
    assert_eq!(node.node.expect("node").events_rate_limited, limited, "the refusals are counted on the node");
    assert!(slowest < Duration::from_secs(1), "other calls waited {slowest:?} during the flood");
    // Another node has its own budget.
    let quiet = vec![v1::ReportEventsRequest {
        node_name: "quiet".into(),
        events: vec![event("web", v1::Verdict::Deny, 1); 100],
    }];
    let response = AgentServiceClient::new(server.server().node("quiet").await)
        .report_events(tokio_stream::iter(quiet))
        .await
        .expect("quiet");
    let response = response.into_inner();
    assert_eq!((response.accepted, response.rate_limited), (100, 0));
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn sixteen_parallel_event_streams_do_not_starve_other_calls(pool: PgPool) {
    let options = palisade_server::Options {
        event_rate: palisade_server::ratelimit::EventRate::UNLIMITED,
        ..palisade_server::Options::default()
    };
    // Plaintext on one connection: this is about database connections, and 16 TLS sessions
    // in a debug build on two cores would make it a measure of CPU (0.8–1.1 s for the
    // slowest call).
    let server = OwnRuntimeServer::start(pool.clone(), options, false).await;
    register(&pool, "n0").await;
    let (accepted, limited, slowest, elapsed) = flood(server.server(), |i| format!("n{i}"), 16, 8, 2_000, "n0").await;
    eprintln!("{accepted} events from 16 streams in {elapsed:?}; slowest other call {slowest:?}");
    assert_eq!((accepted, limited), (16 * 8 * 2_000, 0));
    assert!(slowest < Duration::from_secs(1), "other calls waited {slowest:?} behind event ingest");
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn a_call_that_never_sends_is_ended_by_the_request_timeout(pool: PgPool) {
    let transport =
        palisade_server::Transport { request_timeout: Duration::from_secs(1), ..palisade_server::Transport::DEFAULT };
    let options = palisade_server::Options { transport, ..palisade_server::Options::default() };
    let server = EmbeddedServer::start_with(pool, options).await.expect("server");
    let channel = server.node("node-1").await;
    // A Sync stream that never says hello, and a ReportEvents stream that never reports.
    let (_sync_tx, sync_rx) = tokio::sync::mpsc::channel::<v1::SyncRequest>(1);
    let (_report_tx, report_rx) = tokio::sync::mpsc::channel::<v1::ReportEventsRequest>(1);
    let started = std::time::Instant::now();
    let (mut syncs, mut reports) = (AgentServiceClient::new(channel.clone()), AgentServiceClient::new(channel));
    let (sync, report) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(
            syncs.sync(tokio_stream::wrappers::ReceiverStream::new(sync_rx)),
            reports.report_events(tokio_stream::wrappers::ReceiverStream::new(report_rx)),
        )
    })
    .await
    .expect("the server ends both calls");
    for (what, code) in
        [("sync", sync.map(drop).expect_err("sync").code()), ("report", report.expect_err("report").code())]
    {
        assert_eq!(code, Code::Cancelled, "{what}");
    }
    assert!(started.elapsed() < Duration::from_secs(3), "ended after {:?}", started.elapsed());
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn calls_beyond_the_per_connection_stream_limit_wait_for_a_free_stream(pool: PgPool) {
    let transport = palisade_server::Transport { max_streams_per_connection: 4, ..palisade_server::Transport::DEFAULT };
    let options = palisade_server::Options { transport, ..palisade_server::Options::default() };
    let server = EmbeddedServer::start_with(pool, options).await.expect("server");
    // One connection, with a node certificate for the streams and the admin token for the call.
    let channel = palisade_proto::client::with_token(server.node("node-1").await, server.admin_token()).expect("token");
    let mut open = Vec::new();
    for _ in 0..4 {
        let (tx, rx) = tokio::sync::mpsc::channel::<v1::ReportEventsRequest>(1);
        let mut agents = AgentServiceClient::new(channel.clone());
        let call =
            tokio::spawn(async move { agents.report_events(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
        open.push((tx, call));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut nodes = NodeServiceClient::new(channel);
    let list = nodes.list_nodes(v1::ListNodesRequest::default());
    tokio::pin!(list);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut list).await.is_err(),
        "a fifth call on the connection was served while four streams were open"
    );
    let (tx, call) = open.pop().expect("a stream");
    drop(tx);
    call.await.expect("task").expect("the closed stream ends cleanly");
    tokio::time::timeout(Duration::from_secs(5), list).await.expect("served once a stream is free").expect("list");
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn the_server_drops_expired_event_partitions_and_keeps_recent_ones(pool: PgPool) {
    sqlx::query("SELECT palisade_ensure_event_partitions(current_date - 5, current_date)")
        .execute(&pool)
        .await
        .expect("old partitions");
    for days_ago in [5, 0] {
        sqlx::query(
            "INSERT INTO events (node, policy, revision, rule_id, verdict, hook, pid, comm, uid, cgroup_id, address, \
               port, protocol, bundle_digest, event_time, received_at) \
             VALUES ('n1', 'web', 1, 'block', 1, 'cgroup/connect4', 1, 'curl', 0, 1, '10.1.2.3', 443, 6, 'abc', \
               now(), now() - make_interval(days => $1))",
        )
        .bind(days_ago)
        .execute(&pool)
        .await
        .expect("event");
    }
    let retention = palisade_server::parse_retention("2d").expect("retention");
    let options = palisade_server::Options { event_retention: retention, ..palisade_server::Options::default() };
    let server = EmbeddedServer::start_with(pool.clone(), options).await.expect("server");
    eventually("the expired partitions to be dropped", WAIT, || async {
        (count(&pool, "events").await == 1).then_some(())
    })
    .await;
    let listed = EventServiceClient::new(server.admin().await)
        .list_events(v1::ListEventsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .events;
    assert_eq!(listed.len(), 1, "today's event stays: {listed:?}");
}

#[test]
fn event_retention_takes_a_unit_and_at_least_an_hour() {
    use palisade_server::{Retention, parse_retention};
    assert_eq!(parse_retention("30d"), Ok(Retention(Some(Duration::from_hours(30 * 24)))));
    assert_eq!(parse_retention("12h"), Ok(Retention(Some(Duration::from_hours(12)))));
    assert_eq!(parse_retention("90m"), Ok(Retention(Some(Duration::from_mins(90)))));
    assert_eq!(parse_retention("forever"), Ok(Retention(None)));
    for bad in ["", "30", "d", "30w", "-1d", "59m", "99999999999999999999d", "1.5d"] {
        assert!(parse_retention(bad).is_err(), "{bad:?} was accepted");
    }
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn apply_policies_is_one_transaction_and_one_generation_all_or_nothing(pool: PgPool) {
    let h = Harness::start(pool.clone()).await;
    let mut policies = h.policies();
    let generation = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT generation FROM policy_generation").fetch_one(&pool).await.expect("gen")
    };
    let before = generation(pool.clone()).await;
    let batch = |docs: Vec<String>| v1::ApplyPoliciesRequest {
        policies: docs.iter().map(|d| apply_doc(d)).collect(),
        dry_run: false,
    };
    let docs: Vec<String> = (0..50).map(|i| deny_doc(&format!("batch-{i:02}"), 1000 + i)).collect();
    let applied = policies.apply_policies(batch(docs.clone())).await.expect("batch").into_inner();
    assert_eq!(applied.results.len(), 50);
    assert!(applied.results.iter().all(|r| r.created && r.changed));
    let names: Vec<&str> =
        applied.results.iter().filter_map(|r| r.policy.as_ref()?.policy.as_ref().map(|p| p.name.as_str())).collect();
    assert_eq!(names[0], "batch-00");
    assert_eq!(names[49], "batch-49", "results in request order");
    assert_eq!(generation(pool.clone()).await, before + 1, "fifty policies, one generation");
    assert_eq!(count(&pool, "policy_revisions").await, 50);

    // Re-applying the same batch changes nothing and moves no generation.
    let again = policies.apply_policies(batch(docs.clone())).await.expect("again").into_inner();
    assert!(again.results.iter().all(|r| !r.changed));
    assert_eq!(generation(pool.clone()).await, before + 1);

    // One invalid entry, one duplicate name: refused whole, every problem under policies[i].
    let mut bad = docs.clone();
    bad[3] = deny_doc("batch-03", 70_000);
    bad.push(deny_doc("batch-07", 1));
    bad.push(deny_doc("brand-new", 1));
    let status = policies.apply_policies(batch(bad)).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<String> =
        status.get_details_bad_request().expect("details").field_violations.into_iter().map(|v| v.field).collect();
    assert_eq!(fields, ["policies[3].network.connect.rules[0].ports[0]", "policies[50].name"]);
    assert_eq!(count(&pool, "policy_revisions").await, 50, "nothing stored");

    // A stale expected revision on one entry aborts the transaction: the other entries'
    // changes are rolled back too.
    let mut stale: Vec<v1::ApplyPolicyRequest> =
        docs.iter().map(|d| apply_doc(&d.replace("action: deny", "action: audit"))).collect();
    stale[10].expected_revision = Some(7);
    let status =
        policies.apply_policies(v1::ApplyPoliciesRequest { policies: stale, dry_run: false }).await.expect_err("stale");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("batch-10"), "{}", status.message());
    assert_eq!(count(&pool, "policy_revisions").await, 50, "rolled back whole");
    assert_eq!(generation(pool.clone()).await, before + 1);

    let empty = policies.apply_policies(v1::ApplyPoliciesRequest::default()).await.expect_err("empty");
    assert_eq!(empty.code(), Code::InvalidArgument);
}

/// The first bundle of a Sync stream, reassembled from parts when they come in parts; and
/// how many messages carried it.
async fn first_bundle(h: &Harness, name: &str, parts: bool) -> (v1::Bundle, usize) {
    let mut request = hello(name);
    if let Some(v1::sync_request::Message::Hello(hello)) = request.message.as_mut() {
        hello.accepts_bundle_parts = parts;
    }
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(request).await.expect("send hello");
    let mut responses =
        h.agents().sync(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("sync").into_inner();
    let (mut first, mut content, mut messages) = (None, Vec::new(), 0);
    loop {
        let message = tokio::time::timeout(WAIT, responses.next()).await.expect("a bundle").expect("open").expect("ok");
        messages += 1;
        match message.message {
            Some(v1::sync_response::Message::Bundle(b)) => return (b, messages),
            Some(v1::sync_response::Message::BundlePart(part)) => {
                assert!(part.content.len() <= palisade_server::api::agent::PART_BYTES);
                if let Some(b) = part.bundle {
                    assert!(first.is_none() && b.content.is_empty(), "one first part, without content");
                    first = Some((b, usize::try_from(part.content_size).expect("size")));
                } else {
                    assert_eq!(part.content_size, 0, "only the first part says the size");
                }
                content.extend_from_slice(&part.content);
                let (bundle, size) = first.as_ref().expect("the first part comes first");
                if content.len() == *size {
                    let mut bundle = bundle.clone();
                    bundle.content = content.into();
                    return (bundle, messages);
                }
            }
            _ => {}
        }
    }
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn an_agent_that_accepts_parts_gets_the_same_bundle_in_parts_of_at_most_16_kib(pool: PgPool) {
    let h = Harness::start(pool).await;
    h.policies().apply_policy(apply_doc(&deny_doc("web", 1))).await.expect("apply");
    let (whole, one) = first_bundle(&h, "node-1", false).await;
    assert_eq!(one, 1, "an agent that does not accept parts gets one message");
    assert!(whole.content.len() > palisade_server::api::agent::PART_BYTES, "{} bytes", whole.content.len());
    let (parted, messages) = first_bundle(&h, "node-1", true).await;
    assert_eq!(messages, whole.content.len().div_ceil(palisade_server::api::agent::PART_BYTES));
    assert_eq!(parted.content, whole.content, "same content");
    assert_eq!(parted.digest, whole.digest);
    assert_eq!(palisade_proto::sha256_hex(&parted.content), parted.digest);
    assert_eq!((parted.generation, parted.node.as_str()), (whole.generation, "node-1"));
    assert!(!parted.signature.is_empty());
}
