//! End to end, all real: PostgreSQL, the server, the agent, the kernel. A policy applied
//! through the SDK is enforced on connects from a cgroup this test owns, its events come
//! back through ListEvents and WatchEvents, and the node's status follows.

use std::{net::TcpListener, time::Duration};

use palisade_compiler::bpf::{
    asm::Asm,
    elf::{ElfProgram, write},
    insn,
};
use palisade_integration::{
    Connect, TestAgent, TestCgroup, TestPins, attached_programs, dual_listeners, kernel_tests_enabled, probe,
};
use palisade_proto::client::Connection as Channel;
use palisade_proto::v1::{
    self, apply_policy_request::Source, event_service_client::EventServiceClient,
    node_service_client::NodeServiceClient, policy_service_client::PolicyServiceClient,
};
use palisade_server::embedded::EmbeddedServer;
use palisade_testkit::eventually;
use sqlx::PgPool;
use tokio_stream::StreamExt as _;

const PROBE: &str = env!("CARGO_BIN_EXE_connect-probe");
/// The agent's own `main`, built by this package so a test can run it as a process.
const AGENT: &str = env!("CARGO_BIN_EXE_agent-process");
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_INET6_CONNECT: u32 = 11;

fn policy(name: &str, cgroup: &str, port: u16, action: &str) -> v1::ApplyPolicyRequest {
    let doc = format!(
        "name: {name}\nworkload: {{cgroup: \"{cgroup}\"}}\nnetwork:\n  connect:\n    rules:\n      - {{id: block-port, action: {action}, cidrs: [127.0.0.0/8, \"::1\"], ports: [{port}], protocols: [tcp]}}\n"
    );
    v1::ApplyPolicyRequest { source: Some(Source::Document(doc)), ..Default::default() }
}

async fn node(channel: &Channel, name: &str) -> Option<v1::Node> {
    NodeServiceClient::new(channel.clone())
        .get_node(v1::GetNodeRequest { name: name.to_owned() })
        .await
        .ok()
        .and_then(|r| r.into_inner().node)
}

/// Polls the node (up to 30 s) until `ready` holds; returns it.
async fn node_when(channel: &Channel, name: &str, what: &str, ready: impl Fn(&v1::Node) -> bool) -> v1::Node {
    let what = format!("node {name}: {what}");
    eventually(&what, Duration::from_secs(30), || async { node(channel, name).await.filter(|n| ready(n)) }).await
}

/// Waits until the node has acknowledged a desired generation above `after`; returns it.
async fn applied_after(channel: &Channel, name: &str, after: u64) -> v1::Node {
    node_when(channel, name, &format!("a generation after {after} to be applied"), |n| {
        n.desired_generation > after
            && n.applied_generation == n.desired_generation
            && n.applied_digest == n.desired_digest
    })
    .await
}

async fn connect(cgroup: &std::path::Path, addr: &str, port: u16) -> Connect {
    let (dir, addr) = (cgroup.to_owned(), addr.to_owned());
    tokio::task::spawn_blocking(move || probe(PROBE, Some(&dir), "tcp", &addr, port)).await.expect("probe task")
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn policy_applied_through_the_sdk_is_enforced_reported_updated_and_removed(pool: PgPool) {
    if !kernel_tests_enabled("e2e") {
        return;
    }
    let cg = TestCgroup::new("e2e");
    let work = cg.create_child("work");
    let bystander = cg.create_child("bystander");
    let (_v4, _v6, port) = dual_listeners();
    let other = TcpListener::bind("127.0.0.1:0").expect("bind");
    let other_port = other.local_addr().expect("addr").port();
    let server = EmbeddedServer::start(pool).await.expect("server");
    let channel = server.admin().await;
    let state = tempfile::tempdir().expect("tempdir");
    let node_name = format!("e2e-{}", std::process::id());
    let _agent = TestAgent::start(TestAgent::config(&server, &node_name, cg.path(), state.path())).await;
    let first = applied_after(&channel, &node_name, 0).await;

    let mut policies = PolicyServiceClient::new(channel.clone());
    let mut watch = EventServiceClient::new(channel.clone())
        .watch_events(v1::WatchEventsRequest {
            filter: Some(v1::EventFilter { node: node_name.clone(), ..Default::default() }),
        })
        .await
        .expect("watch")
        .into_inner();
    policies.apply_policy(policy("e2e-deny", &work, port, "deny")).await.expect("apply");
    let denied = applied_after(&channel, &node_name, first.desired_generation).await;

    let work_dir = cg.dir_of(&work);
    assert_eq!(connect(&work_dir, "127.0.0.1", port).await, Connect::Denied, "IPv4 denied");
    assert_eq!(connect(&work_dir, "::1", port).await, Connect::Denied, "IPv6 denied");
    assert_eq!(connect(&work_dir, "127.0.0.1", other_port).await, Connect::Ok, "other port still connects");
    assert_eq!(connect(&cg.dir_of(&bystander), "127.0.0.1", port).await, Connect::Ok, "other cgroup unaffected");

    let watched = tokio::time::timeout(Duration::from_secs(20), async {
        let mut seen = Vec::new();
        while seen.len() < 2 {
            seen.push(watch.next().await.expect("stream open").expect("event"));
        }
        seen
    })
    .await
    .expect("both deny events are pushed to the watcher");
    for (event, address) in watched.iter().zip(["127.0.0.1", "::1"]) {
        assert_eq!((event.policy.as_str(), event.revision, event.rule_id.as_str()), ("e2e-deny", 1, "block-port"));
        assert_eq!(
            (event.verdict, event.address.as_str(), event.port),
            (v1::Verdict::Deny as i32, address, u32::from(port))
        );
        assert_eq!(event.node, node_name);
        assert_eq!(event.bundle_digest, denied.applied_digest);
    }
    let listed = EventServiceClient::new(channel.clone())
        .list_events(v1::ListEventsRequest {
            filter: Some(v1::EventFilter { policy: "e2e-deny".into(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .events;
    assert_eq!(listed.len(), 2, "{listed:?}");

    // Changing the rule to allow lets the same connect through.
    policies.apply_policy(policy("e2e-deny", &work, port, "allow")).await.expect("update");
    let allowed = applied_after(&channel, &node_name, denied.desired_generation).await;
    assert_eq!(connect(&work_dir, "127.0.0.1", port).await, Connect::Ok, "allowed after update");

    // Deny again, then delete: access comes back.
    policies.apply_policy(policy("e2e-deny", &work, port, "deny")).await.expect("deny again");
    let again = applied_after(&channel, &node_name, allowed.desired_generation).await;
    assert_eq!(connect(&work_dir, "127.0.0.1", port).await, Connect::Denied);
    policies
        .delete_policy(v1::DeletePolicyRequest { name: "e2e-deny".into(), expected_revision: None })
        .await
        .expect("delete");
    let removed = applied_after(&channel, &node_name, again.desired_generation).await;
    assert_eq!(connect(&work_dir, "127.0.0.1", port).await, Connect::Ok, "deleting the policy restores access");
    assert!(removed.last_error.is_none());
    assert!(removed.connected);
}

/// On these hosts BPF-LSM cannot be loaded: the agent says so, still enforces the network
/// section through cgroup hooks, and `GetNode` lists the `exec` and `files` sections as not
/// enforceable instead of dropping them silently.
#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn exec_and_files_sections_are_reported_not_enforceable_without_bpf_lsm(pool: PgPool) {
    if !kernel_tests_enabled("not enforceable") {
        return;
    }
    let cg = TestCgroup::new("nolsm");
    let work = cg.create_child("work");
    let (_v4, _v6, port) = dual_listeners();
    let server = EmbeddedServer::start(pool).await.expect("server");
    let channel = server.admin().await;
    let state = tempfile::tempdir().expect("tempdir");
    let node_name = format!("nolsm-{}", std::process::id());
    let _agent = TestAgent::start(TestAgent::config(&server, &node_name, cg.path(), state.path())).await;
    let first = applied_after(&channel, &node_name, 0).await;
    assert!(first.not_enforceable.is_empty(), "{:?}", first.not_enforceable);
    let doc = format!(
        "name: guard\nworkload: {{cgroup: \"{work}\"}}\nnetwork:\n  connect:\n    rules:\n      - {{id: block-port, action: deny, cidrs: [127.0.0.0/8], ports: [{port}]}}\nexec:\n  rules:\n    - {{id: no-curl, action: deny, paths: [/usr/bin/curl]}}\nfiles:\n  rules:\n    - {{id: etc-ro, action: deny, access: [write], paths: [/etc/]}}\n"
    );
    PolicyServiceClient::new(channel.clone())
        .apply_policy(v1::ApplyPolicyRequest { source: Some(Source::Document(doc)), ..Default::default() })
        .await
        .expect("apply");
    let node = applied_after(&channel, &node_name, first.desired_generation).await;
    let features = node.features.clone().expect("features");
    assert!(!features.bpf_lsm, "these hosts refuse BPF-LSM (DESIGN.md §5)");
    assert_eq!(connect(&cg.dir_of(&work), "127.0.0.1", port).await, Connect::Denied, "network via cgroup hooks");
    let listed: Vec<(String, u64, String)> =
        node.not_enforceable.iter().map(|u| (u.policy.clone(), u.revision, u.section.clone())).collect();
    assert_eq!(listed, [("guard".to_owned(), 1, "exec".to_owned()), ("guard".to_owned(), 1, "files".to_owned())]);
    assert!(node.not_enforceable.iter().all(|u| u.reason.contains("BPF-LSM is not available")), "{node:?}");
    let listed_nodes = NodeServiceClient::new(channel.clone())
        .list_nodes(v1::ListNodesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .nodes;
    let same = listed_nodes.iter().find(|n| n.name == node_name).expect("listed");
    assert_eq!(same.not_enforceable, node.not_enforceable, "ListNodes reports the same");
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn agent_restart_keeps_enforcing_and_adopts_pinned_state(pool: PgPool) {
    if !kernel_tests_enabled("agent restart") {
        return;
    }
    let cg = TestCgroup::new("restart");
    let work = cg.create_child("work");
    let (_v4, _v6, port) = dual_listeners();
    let server = EmbeddedServer::start(pool).await.expect("server");
    let channel = server.admin().await;
    let state = tempfile::tempdir().expect("tempdir");
    let node_name = format!("restart-{}", std::process::id());
    PolicyServiceClient::new(channel.clone())
        .apply_policy(policy("restart-deny", &work, port, "deny"))
        .await
        .expect("apply");
    let config = TestAgent::config(&server, &node_name, cg.path(), state.path());
    let mut agent = TestAgent::start(config.clone()).await;
    let enforced = applied_after(&channel, &node_name, 0).await;
    let work_dir = cg.dir_of(&work);
    assert_eq!(connect(&work_dir, "127.0.0.1", port).await, Connect::Denied);

    agent.stop().await;
    for _ in 0..20 {
        assert_eq!(connect(&work_dir, "127.0.0.1", port).await, Connect::Denied, "denied while the agent is down");
    }
    // Restart while a loop of connects runs: none may slip through.
    let prober = {
        let dir = work_dir.clone();
        tokio::task::spawn_blocking(move || {
            (0..60)
                .map(|_| probe(PROBE, Some(&dir), "tcp", "127.0.0.1", port))
                .filter(|c| *c != Connect::Denied)
                .count()
        })
    };
    let restarted = TestAgent::start(config).await;
    assert_eq!(prober.await.expect("prober"), 0, "no connect got through across the restart");
    // The node reconnects; the server sees the same digest and pushes nothing new.
    let seen = |n: &v1::Node| n.last_seen.map(|t| (t.seconds, t.nanos));
    let after = node_when(&channel, &node_name, "the restarted agent to reconnect", |n| {
        n.connected && seen(n) > seen(&enforced)
    })
    .await;
    assert_eq!(after.applied_digest, enforced.applied_digest, "adopted, not reloaded");
    assert_eq!(after.desired_generation, enforced.desired_generation);
    assert!(after.connected);
    assert_eq!(attached_programs(&cg.dir(), BPF_CGROUP_INET4_CONNECT), 1, "no duplicate connect4 attachment");
    assert_eq!(attached_programs(&cg.dir(), BPF_CGROUP_INET6_CONNECT), 1, "no duplicate connect6 attachment");
    assert_eq!(connect(&work_dir, "127.0.0.1", port).await, Connect::Denied);

    // --uninstall removes what the agent left and so detaches it.
    let mut restarted = restarted;
    restarted.stop().await;
    palisade_agent::uninstall(&restarted.config).expect("uninstall");
    // The kernel frees a link whose last pin went away on a workqueue: poll.
    eventually("the programs to detach after --uninstall", Duration::from_secs(5), || async {
        (attached_programs(&cg.dir(), BPF_CGROUP_INET4_CONNECT) == 0).then_some(())
    })
    .await;
    assert_eq!(attached_programs(&cg.dir(), BPF_CGROUP_INET6_CONNECT), 0);
    assert_eq!(connect(&work_dir, "127.0.0.1", port).await, Connect::Ok, "uninstalled: access restored");
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn bundle_the_kernel_rejects_is_nacked_and_the_previous_one_keeps_enforcing(pool: PgPool) {
    if !kernel_tests_enabled("nack") {
        return;
    }
    // Any bundle containing a policy named "nack-me" gets programs that exit without
    // setting r0, which every verifier rejects ("R0 !read_ok").
    let mutator: palisade_server::bundler::BundleMutator = std::sync::Arc::new(|content: &mut v1::BundleContent| {
        if !content.policies.iter().any(|p| p.name == "nack-me") {
            return;
        }
        let mut a = Asm::new();
        a.push(insn::exit());
        let bad = a.finish().expect("assembles");
        let programs: Vec<_> =
            content.programs.iter().map(|p| ElfProgram { name: &p.name, section: &p.section, program: &bad }).collect();
        let maps = palisade_compiler::bundle::map_defs(&content.maps);
        content.elf = write(&programs, &maps).expect("writes");
    });
    let cg = TestCgroup::new("nack");
    let work = cg.create_child("work");
    let (_v4, _v6, port) = dual_listeners();
    let options = palisade_server::Options { bundle_mutator: Some(mutator), ..palisade_server::Options::default() };
    let server = EmbeddedServer::start_with(pool, options).await.expect("server");
    let channel = server.admin().await;
    let state = tempfile::tempdir().expect("tempdir");
    let node_name = format!("nack-{}", std::process::id());
    let mut policies = PolicyServiceClient::new(channel.clone());
    policies.apply_policy(policy("nack-deny", &work, port, "deny")).await.expect("apply");
    let _agent = TestAgent::start(TestAgent::config(&server, &node_name, cg.path(), state.path())).await;
    let good = applied_after(&channel, &node_name, 0).await;
    let work_dir = cg.dir_of(&work);
    assert_eq!(connect(&work_dir, "127.0.0.1", port).await, Connect::Denied);

    policies.apply_policy(policy("nack-me", "/nowhere", 1, "deny")).await.expect("apply the trigger");
    let n = node_when(&channel, &node_name, "a NACK", |n| n.last_error.is_some()).await;
    let error = n.last_error.clone().expect("NACK");
    assert!(error.message.contains("rejected program"), "{}", error.message);
    assert!(error.message.contains("R0"), "the verifier log comes back: {}", error.message);
    assert_eq!(error.generation, n.desired_generation);
    assert_eq!(n.applied_generation, good.applied_generation, "the previous generation stays applied");
    assert_eq!(n.applied_digest, good.applied_digest);
    assert_eq!(connect(&work_dir, "127.0.0.1", port).await, Connect::Denied, "the previous bundle keeps enforcing");
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn agent_reconnects_after_a_server_restart_and_keeps_enforcing(pool: PgPool) {
    if !kernel_tests_enabled("server restart") {
        return;
    }
    let cg = TestCgroup::new("reconnect");
    let work = cg.create_child("work");
    let (_v4, _v6, port) = dual_listeners();
    let options = palisade_server::Options::default();
    let signer = options.signer.clone();
    let server = EmbeddedServer::start_with(pool.clone(), options).await.expect("server");
    let (addr, secured) = (server.addr(), server.secured());
    let channel = server.admin().await;
    let state = tempfile::tempdir().expect("tempdir");
    let node_name = format!("reconnect-{}", std::process::id());
    PolicyServiceClient::new(channel.clone())
        .apply_policy(policy("reconnect-deny", &work, port, "deny"))
        .await
        .expect("apply");
    let _agent = TestAgent::start(TestAgent::config(&server, &node_name, cg.path(), state.path())).await;
    let first = applied_after(&channel, &node_name, 0).await;
    let work_dir = cg.dir_of(&work);

    server.stop().await.expect("stop");
    assert_eq!(connect(&work_dir, "127.0.0.1", port).await, Connect::Denied, "denied while the server is down");
    // A new server on the same address and database; a policy change made meanwhile.
    // Same signing key: agents pin it across server restarts.
    let options = palisade_server::Options { signer, ..palisade_server::Options::default() };
    // The same PKI too: the agent trusts that CA and holds a certificate from it.
    let server = EmbeddedServer::restart_on(pool, addr, options, secured).await.expect("restart");
    let channel = server.admin().await;
    PolicyServiceClient::new(channel.clone())
        .apply_policy(policy("reconnect-deny", &work, port, "allow"))
        .await
        .expect("update");
    let updated = applied_after(&channel, &node_name, first.desired_generation).await;
    assert!(updated.connected);
    assert_eq!(connect(&work_dir, "127.0.0.1", port).await, Connect::Ok, "the reconnected agent got the update");
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn bundle_signed_with_another_key_is_nacked_and_never_loaded(pool: PgPool) {
    if !kernel_tests_enabled("signature") {
        return;
    }
    let cg = TestCgroup::new("signature");
    let work = cg.create_child("work");
    let (_v4, _v6, port) = dual_listeners();
    let server = EmbeddedServer::start(pool).await.expect("server");
    let channel = server.admin().await;
    PolicyServiceClient::new(channel.clone())
        .apply_policy(policy("signature-deny", &work, port, "deny"))
        .await
        .expect("apply");
    let state = tempfile::tempdir().expect("tempdir");
    let node_name = format!("signature-{}", std::process::id());
    let mut config = TestAgent::config(&server, &node_name, cg.path(), state.path());
    config.bundle_public_key = Some(palisade_server::signing::BundleSigner::generate().public_key_hex());
    let _agent = TestAgent::start(config).await;
    let error = node_when(&channel, &node_name, "a NACK", |n| n.last_error.is_some()).await.last_error.expect("NACK");
    assert!(error.message.contains("signature"), "{}", error.message);
    let n = node(&channel, &node_name).await.expect("node");
    assert_eq!(n.applied_generation, 0, "nothing was loaded");
    assert_eq!(
        connect(&cg.dir_of(&work), "127.0.0.1", port).await,
        Connect::Ok,
        "the unverified bundle never enforced"
    );
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn selected_cgroup_created_after_the_policy_is_enforced_within_a_second(pool: PgPool) {
    if !kernel_tests_enabled("late cgroup") {
        return;
    }
    let cg = TestCgroup::new("late");
    let late = cg.child_path("late");
    let (_v4, _v6, port) = dual_listeners();
    let server = EmbeddedServer::start(pool).await.expect("server");
    let channel = server.admin().await;
    PolicyServiceClient::new(channel.clone())
        .apply_policy(policy("late-deny", &late, port, "deny"))
        .await
        .expect("apply");
    let state = tempfile::tempdir().expect("tempdir");
    let node_name = format!("late-{}", std::process::id());
    let _agent = TestAgent::start(TestAgent::config(&server, &node_name, cg.path(), state.path())).await;
    applied_after(&channel, &node_name, 0).await;
    assert!(!cg.dir_of(&late).exists());

    // The agent's periodic rescan is 5 s; inotify must make this much faster.
    std::fs::create_dir(cg.dir_of(&late)).expect("create the selected cgroup");
    let created = tokio::time::Instant::now();
    while connect(&cg.dir_of(&late), "127.0.0.1", port).await != Connect::Denied {
        assert!(created.elapsed() < Duration::from_secs(1), "not enforced within 1 s of the cgroup's creation");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A server with a policy denying a workload cgroup's connects to a listener, for the
/// outage tests: stopped, then restarted on the same address with the same signing key.
struct Outage {
    pool: PgPool,
    cg: TestCgroup,
    work: String,
    port: u16,
    _listeners: (TcpListener, TcpListener),
    signer: palisade_server::signing::BundleSigner,
    addr: std::net::SocketAddr,
    secured: Option<palisade_server::embedded::Secured>,
    server: Option<EmbeddedServer>,
    channel: Channel,
    node_name: String,
}

impl Outage {
    async fn start(pool: PgPool, name: &str) -> Self {
        Self::start_with(pool, name, palisade_server::Options::default()).await
    }

    async fn start_with(pool: PgPool, name: &str, options: palisade_server::Options) -> Self {
        let cg = TestCgroup::new(name);
        let work = cg.create_child("work");
        let (v4, v6, port) = dual_listeners();
        let signer = options.signer.clone();
        let server = EmbeddedServer::start_with(pool.clone(), options).await.expect("server");
        let channel = server.admin().await;
        PolicyServiceClient::new(channel.clone()).apply_policy(policy(name, &work, port, "deny")).await.expect("apply");
        let node_name = format!("{name}-{}", std::process::id());
        Self {
            pool,
            cg,
            work,
            port,
            _listeners: (v4, v6),
            signer,
            addr: server.addr(),
            secured: server.secured(),
            server: Some(server),
            channel,
            node_name,
        }
    }

    fn server(&self) -> &EmbeddedServer {
        self.server.as_ref().expect("the server is up")
    }

    async fn stop_server(&mut self) {
        self.server.take().expect("the server is up").stop().await.expect("stop");
    }

    async fn restart_server(&mut self) {
        let options = palisade_server::Options { signer: self.signer.clone(), ..palisade_server::Options::default() };
        let server = EmbeddedServer::restart_on(self.pool.clone(), self.addr, options, self.secured.clone())
            .await
            .expect("restart");
        self.channel = server.admin().await;
        self.server = Some(server);
    }

    /// `n` connects from the workload, every one denied.
    async fn denies(&self, n: u64) {
        let out = tokio::process::Command::new(PROBE)
            .args(["--cgroup"])
            .arg(self.cg.dir_of(&self.work))
            .args(["--repeat", &n.to_string(), "tcp", "127.0.0.1", &self.port.to_string()])
            .output()
            .await
            .expect("probe runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("ok=0 eperm={n} other=0"));
    }

    /// The node once `ready` holds for its event counters.
    async fn stats_when(&self, what: &str, ready: impl Fn(&v1::EventStats) -> bool) -> v1::EventStats {
        let node =
            node_when(&self.channel, &self.node_name, what, |n| n.event_stats.as_ref().is_some_and(&ready)).await;
        node.event_stats.expect("stats")
    }

    async fn stored_events(&self) -> u64 {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE node = $1")
            .bind(&self.node_name)
            .fetch_one(&self.pool)
            .await
            .expect("count");
        u64::try_from(stored).expect("count")
    }
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn events_during_a_server_outage_arrive_once_up_to_the_backlog_and_the_rest_are_counted(pool: PgPool) {
    const BACKLOG: usize = 2_000;
    const DENIES: u64 = 6_000;
    if !kernel_tests_enabled("event outage") {
        return;
    }
    let mut outage = Outage::start(pool, "outage").await;
    let state = tempfile::tempdir().expect("tempdir");
    let mut config = TestAgent::config(outage.server(), &outage.node_name, outage.cg.path(), state.path());
    config.event_backlog = BACKLOG;
    config.heartbeat_seconds = 1;
    let agent = TestAgent::start(config).await;
    applied_after(&outage.channel, &outage.node_name, 0).await;

    outage.stop_server().await;
    outage.denies(DENIES).await;
    // Every deny is accounted for before the server returns: buffered or counted as dropped.
    let stats = eventually("every deny to be buffered or counted", Duration::from_secs(10), || async {
        agent.event_stats().filter(|s| s.pending + s.backlog_full + s.queue_full + s.ring_full == DENIES)
    })
    .await;
    assert_eq!(stats.pending, BACKLOG as u64, "the backlog is full: {stats:?}");
    assert_eq!(stats.undecodable, 0);

    outage.restart_server().await;
    let reported = outage
        .stats_when("the backlog to be delivered and reported", |s| s.pending == 0 && s.delivered == BACKLOG as u64)
        .await;
    let dropped = reported.backlog_full + reported.queue_full + reported.ring_full + reported.undecodable;
    assert_eq!(dropped, DENIES - BACKLOG as u64, "every deny that did not arrive is counted: {reported:?}");
    assert_eq!(outage.stored_events().await, BACKLOG as u64, "what fit the backlog arrived, once");
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn events_the_servers_rate_limit_refuses_wait_in_the_agent_and_all_arrive_once(pool: PgPool) {
    const DENIES: u64 = 1_000;
    if !kernel_tests_enabled("rate-limited events") {
        return;
    }
    let rate = palisade_server::ratelimit::EventRate { per_second: 300, burst: 200 };
    let options = palisade_server::Options { event_rate: rate, ..palisade_server::Options::default() };
    let outage = Outage::start_with(pool, "ratelimit", options).await;
    let state = tempfile::tempdir().expect("tempdir");
    let mut config = TestAgent::config(outage.server(), &outage.node_name, outage.cg.path(), state.path());
    config.heartbeat_seconds = 1;
    let _agent = TestAgent::start(config).await;
    applied_after(&outage.channel, &outage.node_name, 0).await;
    outage.denies(DENIES).await;
    let stats = outage.stats_when("every deny to be delivered", |s| s.delivered == DENIES && s.pending == 0).await;
    assert_eq!(stats.backlog_full + stats.queue_full + stats.ring_full + stats.undecodable, 0, "{stats:?}");
    assert_eq!(outage.stored_events().await, DENIES, "every event arrived, once");
    let node = node(&outage.channel, &outage.node_name).await.expect("node");
    assert!(
        node.events_rate_limited >= DENIES - u64::from(rate.burst) - 300,
        "the limit refused and the agent retried: {node:?}"
    );
}

/// A field of `/proc/PID/status` in bytes (`VmRSS`, `VmHWM`).
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status.lines().find(|l| l.starts_with(field)).expect("field");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("kB value");
    kib * 1024
}

/// The acceptance, with the agent as its own process: the server is away for 60 s
/// while the workload is denied 50,000 times. What fits the byte bound arrives once, the
/// rest is counted as dropped, and the agent's peak RSS grows by no more than the bound
/// allows (the backlog's bytes, up to as much again of deque capacity, and 4 MiB of slack).
#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn a_minute_long_outage_under_50_000_denies_stays_within_the_agents_memory_bound(pool: PgPool) {
    const DENIES: u64 = 50_000;
    const BACKLOG_BYTES: u64 = 4 << 20;
    const OUTAGE: Duration = Duration::from_mins(1);
    if !kernel_tests_enabled("minute-long outage") {
        return;
    }
    let mut outage = Outage::start(pool, "minute").await;
    let (state, pins) = (tempfile::tempdir().expect("state"), TestPins::new("minute"));
    let server = outage.server();
    let mut agent = tokio::process::Command::new(AGENT)
        .args(["--server", &server.url(), "--node-name", &outage.node_name, "--attach-cgroup", outage.cg.path()])
        .args(["--bundle-public-key", server.public_key_hex(), "--heartbeat-seconds", "1"])
        .args(
            server
                .node_tls(&outage.node_name)
                .map(|t| {
                    let arg = |flag: &str, path: &std::path::Path| [flag.to_owned(), path.display().to_string()];
                    [arg("--ca-cert", &t.ca_cert), arg("--cert", &t.cert), arg("--key", &t.key)].concat()
                })
                .unwrap_or_default(),
        )
        .arg("--bpffs")
        .arg(pins.path())
        .arg("--state-dir")
        .arg(state.path())
        .args(["--event-backlog-bytes", &BACKLOG_BYTES.to_string()])
        .env("PALISADE_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("agent starts");
    let pid = agent.id().expect("pid");
    applied_after(&outage.channel, &outage.node_name, 0).await;
    outage.denies(1).await;
    // The event of that deny arrives, so the reporter's connection is warm too.
    outage.stats_when("the first event to be delivered", |s| s.delivered == 1).await;
    let before = proc_status_bytes(pid, "VmHWM");

    outage.stop_server().await;
    let away = std::time::Instant::now();
    outage.denies(DENIES).await;
    tokio::time::sleep(OUTAGE.saturating_sub(away.elapsed())).await;
    let (peak, rss) = (proc_status_bytes(pid, "VmHWM"), proc_status_bytes(pid, "VmRSS"));
    let growth = peak.saturating_sub(before);
    eprintln!(
        "agent memory: peak RSS {before} -> {peak} bytes (+{growth}), RSS now {rss}, backlog bound {BACKLOG_BYTES}"
    );
    assert!(growth <= 2 * BACKLOG_BYTES + (4 << 20), "peak RSS grew by {growth} bytes, over the bound");

    outage.restart_server().await;
    let stats = outage
        .stats_when("the backlog to be delivered and every deny accounted for", |s| {
            s.pending == 0 && s.delivered + s.backlog_full + s.queue_full + s.ring_full == DENIES + 1
        })
        .await;
    eprintln!("after the outage: {stats:?}");
    assert_eq!((stats.undecodable, stats.pending_bytes), (0, 0), "{stats:?}");
    assert!(stats.backlog_full > 0, "50,000 denies overflow a 4 MiB backlog: {stats:?}");
    assert_eq!(outage.stored_events().await, stats.delivered, "what fit the backlog arrived, once");
    let events = EventServiceClient::new(outage.channel.clone())
        .list_events(v1::ListEventsRequest {
            filter: Some(v1::EventFilter { node: outage.node_name.clone(), ..Default::default() }),
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .events;
    let one = palisade_agent::backlog::event_bytes(&v1::DecisionEvent { node: String::new(), ..events[0].clone() });
    let buffered = stats.delivered - 1;
    assert!(
        buffered * one as u64 <= BACKLOG_BYTES && (buffered + 1) * one as u64 * 2 > BACKLOG_BYTES,
        "{buffered} buffered events of about {one} bytes: the backlog held what its bound allows"
    );
    let _ = agent.kill().await;
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn enforcement_that_vanishes_under_the_agent_is_restored_without_manual_steps(pool: PgPool) {
    if !kernel_tests_enabled("vanished pins") {
        return;
    }
    let cg = TestCgroup::new("vanish");
    let work = cg.create_child("work");
    let (_v4, _v6, port) = dual_listeners();
    let server = EmbeddedServer::start(pool).await.expect("server");
    let channel = server.admin().await;
    PolicyServiceClient::new(channel.clone()).apply_policy(policy("vanish", &work, port, "deny")).await.expect("apply");
    let state = tempfile::tempdir().expect("state");
    // A bpffs instance of the test's own, so unmounting it touches no other test.
    let mount = tempfile::tempdir().expect("mount point");
    let bpf = mount.path().join("bpf");
    let node_name = format!("vanish-{}", std::process::id());
    let mut config = TestAgent::config(&server, &node_name, cg.path(), state.path());
    config.bpffs = bpf.join("palisade");
    let mut agent = TestAgent::start(config).await;
    let applied = applied_after(&channel, &node_name, 0).await;
    let work_dir = cg.dir_of(&work);
    assert_eq!(connect(&work_dir, "127.0.0.1", port).await, Connect::Denied);

    let unmounted = std::process::Command::new("umount").arg(&bpf).status().expect("umount runs");
    assert!(unmounted.success(), "unmount the agent's bpffs");
    // The pins went with the mount, and with them the links: enforcement is gone...
    eventually("the programs to detach with the unmounted pins", Duration::from_secs(5), || async {
        (connect(&work_dir, "127.0.0.1", port).await == Connect::Ok).then_some(())
    })
    .await;
    // ...until the agent notices (it checks every 5 s), mounts bpffs again and reloads.
    eventually("the agent to restore enforcement", Duration::from_secs(15), || async {
        (connect(&work_dir, "127.0.0.1", port).await == Connect::Denied).then_some(())
    })
    .await;
    let node = node_when(&channel, &node_name, "the restored generation to be acknowledged", |n| {
        n.last_error.is_none() && n.applied_generation == applied.applied_generation
    })
    .await;
    assert_eq!(node.applied_digest, applied.applied_digest, "the same bundle enforces again");
    // Stopped first, so that it does not mount the instance again.
    agent.stop().await;
    agent.remove_pins();
    let _ = std::process::Command::new("umount").arg(&bpf).status();
}
