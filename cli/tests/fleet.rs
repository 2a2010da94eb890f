//! The `palisade` binary against a real server, PostgreSQL and an agent enforcing in the
//! kernel: `apply --wait` and `rollout status` follow what the node acknowledged (and fail
//! naming a node that NACKs), and `explain` agrees with the events the kernel produced.

use std::{path::Path, process::Output, time::Duration};

use palisade_compiler::bpf::{
    asm::Asm,
    elf::{ElfProgram, write},
    insn,
};
use palisade_integration::{TestAgent, TestCgroup, dual_listeners, kernel_tests_enabled};
use palisade_proto::v1::{self, event_service_client::EventServiceClient, node_service_client::NodeServiceClient};
use palisade_server::embedded::EmbeddedServer;
use palisade_testkit::eventually;
use sqlx::PgPool;
use tokio::process::Command;
use tokio_stream::StreamExt as _;

fn cli(server: &EmbeddedServer) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_palisade"));
    command.env("PALISADE_SERVER", server.url()).env_remove("PALISADE_CA_CERT").env_remove("PALISADE_TOKEN");
    if let Some(ca) = server.ca_cert() {
        command.env("PALISADE_CA_CERT", ca);
    }
    if let Some(token) = server.admin_token() {
        command.env("PALISADE_TOKEN", token);
    }
    command
}

async fn palisade(server: &EmbeddedServer, args: &[&str]) -> Output {
    cli(server).args(args).output().await.expect("palisade runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// How a connect from a cgroup ended.
#[derive(Debug, PartialEq, Eq)]
enum Connect {
    Ok,
    Denied,
    Other(String),
}

/// A TCP connect from a shell moved into `dir` first (bash's /dev/tcp).
async fn connect(dir: &Path, addr: &str, port: u16) -> Connect {
    let out = Command::new("bash")
        .args(["-c", r#"echo $$ > "$1/cgroup.procs" && exec 3<>"/dev/tcp/$2/$3""#, "probe"])
        .arg(dir)
        .args([addr, &port.to_string()])
        .output()
        .await
        .expect("bash runs");
    let stderr = text(&out.stderr);
    match out.status.code() {
        Some(0) => Connect::Ok,
        _ if stderr.contains("Operation not permitted") => Connect::Denied,
        _ => Connect::Other(stderr),
    }
}

fn write_policy(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, format!("name: {name}\n{body}")).expect("write policy");
    path.display().to_string()
}

/// A server whose bundles holding a policy named `nack-me` carry programs every verifier
/// rejects, and an agent of node `node` attached at a fresh test cgroup.
struct Fleet {
    cg: TestCgroup,
    server: EmbeddedServer,
    node: String,
    _agent: TestAgent,
    _state: tempfile::TempDir,
    files: tempfile::TempDir,
}

impl Fleet {
    async fn start(pool: PgPool, name: &str) -> Self {
        let mutator: palisade_server::bundler::BundleMutator =
            std::sync::Arc::new(|content: &mut v1::BundleContent| {
                if !content.policies.iter().any(|p| p.name == "nack-me") {
                    return;
                }
                let mut a = Asm::new();
                a.push(insn::exit());
                let bad = a.finish().expect("assembles");
                let programs: Vec<_> = content
                    .programs
                    .iter()
                    .map(|p| ElfProgram { name: &p.name, section: &p.section, program: &bad })
                    .collect();
                let maps = palisade_compiler::bundle::map_defs(&content.maps);
                content.elf = write(&programs, &maps).expect("writes");
            });
        let cg = TestCgroup::new(name);
        let options = palisade_server::Options { bundle_mutator: Some(mutator), ..Default::default() };
        let server = EmbeddedServer::start_with(pool, options).await.expect("server");
        let state = tempfile::tempdir().expect("tempdir");
        let node = format!("{name}-{}", std::process::id());
        let agent = TestAgent::start(TestAgent::config(&server, &node, cg.path(), state.path())).await;
        let channel = server.admin().await;
        eventually("the agent registers", Duration::from_secs(30), || {
            let mut nodes = NodeServiceClient::new(channel.clone());
            let node = node.clone();
            async move {
                let n = nodes.get_node(v1::GetNodeRequest { name: node }).await.ok()?.into_inner().node?;
                (n.connected && n.applied_digest == n.desired_digest && !n.applied_digest.is_empty()).then_some(())
            }
        })
        .await;
        Self { cg, server, node, _agent: agent, _state: state, files: tempfile::tempdir().expect("tempdir") }
    }
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn apply_wait_returns_once_the_node_enforces_and_fails_naming_a_node_that_nacks(pool: PgPool) {
    if !kernel_tests_enabled("apply --wait") {
        return;
    }
    let fleet = Fleet::start(pool, "wait").await;
    let work = fleet.cg.create_child("work");
    let (_v4, _v6, port) = dual_listeners();
    let deny = format!(
        "workload: {{cgroup: \"{work}\"}}\nnetwork:\n  connect:\n    rules:\n      - {{id: block, action: deny, ports: [{port}]}}\n"
    );
    let file = write_policy(fleet.files.path(), "wait-deny", &deny);
    let out = palisade(&fleet.server, &["apply", "-f", &file, "--wait", "--timeout", "60s"]).await;
    assert!(out.status.success(), "stdout: {}\nstderr: {}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("rollout complete: 1 selected: 1 applied, 0 failed"), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("rollout: "), "progress is shown (plain lines off a terminal)");
    // When --wait returns the kernel already enforces the policy: no retry needed.
    assert_eq!(connect(&fleet.cg.dir_of(&work), "127.0.0.1", port).await, Connect::Denied);

    let status = palisade(&fleet.server, &["rollout", "status", "wait-deny", "-o", "json"]).await;
    assert!(status.status.success(), "{}", text(&status.stderr));
    let rollout: serde_json::Value = serde_json::from_slice(&status.stdout).expect("one JSON object");
    assert_eq!((rollout["policy"].as_str(), rollout["revision"].as_u64()), (Some("wait-deny"), Some(1)));
    assert_eq!(rollout["nodes"][0]["node"], fleet.node.as_str());
    assert_eq!(rollout["nodes"][0]["state"], "ROLLOUT_STATE_APPLIED");
    assert_eq!(rollout["nodes"][0]["enforced_revision"], 1);

    let bad = write_policy(
        fleet.files.path(),
        "nack-me",
        "workload: {cgroup: /nowhere}\nnetwork: {connect: {default: deny}}\n",
    );
    let out = palisade(&fleet.server, &["apply", "-f", &bad, "--wait", "--timeout", "60s"]).await;
    assert!(!out.status.success(), "a NACK fails the wait: {}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("node {}:", fleet.node)), "names the node: {stderr}");
    assert!(stderr.contains("rejected program"), "and the loader's error: {stderr}");

    let status = palisade(&fleet.server, &["rollout", "status"]).await;
    assert!(!status.status.success(), "a failed node makes rollout status fail");
    let table = text(&status.stdout);
    let row = table.lines().find(|l| l.starts_with("nack-me")).unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells, ["nack-me", "1", "1", "0", "0", "1", "0"], "{table}");
    let row = table.lines().find(|l| l.starts_with("wait-deny")).unwrap_or_else(|| panic!("{table}"));
    // The node keeps the last good bundle, which holds wait-deny revision 1.
    assert_eq!(row.split_whitespace().collect::<Vec<_>>(), ["wait-deny", "1", "1", "1", "0", "0", "0"], "{table}");
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn explain_agrees_with_the_events_the_kernel_produced(pool: PgPool) {
    if !kernel_tests_enabled("explain") {
        return;
    }
    let fleet = Fleet::start(pool, "explain").await;
    let work = fleet.cg.create_child("work");
    let (_a4, _a6, denied) = dual_listeners();
    let (_b4, _b6, would) = dual_listeners();
    let (_c4, _c6, audited) = dual_listeners();
    let (_d4, _d6, open) = dual_listeners();
    let cgroup = format!("workload: {{cgroup: \"{work}\"}}\n");
    let files = [
        write_policy(
            fleet.files.path(),
            "x-deny",
            &format!(
                "{cgroup}network:\n  connect:\n    rules:\n      - {{id: no-a, action: deny, cidrs: [127.0.0.0/8, \"::1/128\"], ports: [{denied}]}}\n"
            ),
        ),
        write_policy(
            fleet.files.path(),
            "x-trial",
            &format!(
                "mode: audit\n{cgroup}network:\n  connect:\n    rules:\n      - {{id: no-b, action: deny, ports: [{would}]}}\n"
            ),
        ),
        write_policy(
            fleet.files.path(),
            "x-watch",
            &format!(
                "{cgroup}network:\n  connect:\n    rules:\n      - {{id: see-c, action: audit, ports: [{audited}]}}\n"
            ),
        ),
    ];
    for file in &files {
        let out = palisade(&fleet.server, &["apply", "-f", file, "--wait", "--timeout", "60s"]).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let channel = fleet.server.admin().await;
    let mut watch = EventServiceClient::new(channel.clone())
        .watch_events(v1::WatchEventsRequest {
            filter: Some(v1::EventFilter { node: fleet.node.clone(), ..Default::default() }),
        })
        .await
        .expect("watch")
        .into_inner();
    let dir = fleet.cg.dir_of(&work);
    let cases = [
        ("127.0.0.1", denied, Connect::Denied),
        ("::1", denied, Connect::Denied),
        ("127.0.0.1", would, Connect::Ok),
        ("127.0.0.1", audited, Connect::Ok),
        ("127.0.0.1", open, Connect::Ok),
    ];
    let mut reported = 0;
    for (addr, port, expected) in &cases {
        assert_eq!(connect(&dir, addr, *port).await, *expected, "{addr}:{port}");
        let target = if addr.contains(':') { format!("[{addr}]:{port}") } else { format!("{addr}:{port}") };
        let out = palisade(
            &fleet.server,
            &["explain", "--node", &fleet.node, "--cgroup", &work, "-o", "json", "connect", "tcp", &target],
        )
        .await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let explained: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let verdict = if *expected == Connect::Denied { "VERDICT_DENY" } else { "VERDICT_ALLOW" };
        if explained["event"].is_null() {
            assert_eq!(explained["verdict"], verdict, "{explained}");
            continue;
        }
        reported += 1;
        let event = tokio::time::timeout(Duration::from_secs(20), watch.next())
            .await
            .expect("the kernel's event arrives")
            .expect("stream open")
            .expect("event");
        let predicted = &explained["event"];
        let kernel = palisade_cli_json(&event);
        for field in [
            "policy",
            "revision",
            "rule_id",
            "verdict",
            "hook",
            "address",
            "port",
            "protocol",
            "would_deny",
            "bundle_digest",
            "node",
        ] {
            assert_eq!(predicted[field], kernel[field], "{field} for {target}: explain {predicted} kernel {kernel}");
        }
        let verdict = if explained["event"]["verdict"] == "VERDICT_DENY" { "VERDICT_DENY" } else { "VERDICT_AUDIT" };
        assert_eq!(kernel["verdict"], verdict);
    }
    assert_eq!(reported, 4, "deny v4, deny v6, would-deny, audit report; the open port reports nothing");
    // The table names the deciding policy and the event.
    let out = palisade(
        &fleet.server,
        &["explain", "--node", &fleet.node, "--cgroup", &work, "connect", "tcp", &format!("127.0.0.1:{denied}")],
    )
    .await;
    let table = text(&out.stdout);
    assert!(table.contains("verdict: DENY"), "{table}");
    assert!(table.contains("event: DENY policy x-deny revision 1 rule no-a"), "{table}");
    let row = table.lines().find(|l| l.starts_with("x-deny")).unwrap_or_else(|| panic!("{table}"));
    assert!(row.trim_end().ends_with("yes"), "x-deny decides: {row}");
    // Another cgroup is not selected by any policy.
    let out =
        palisade(&fleet.server, &["explain", "--node", &fleet.node, "-o", "json", "connect", "tcp", "127.0.0.1:1"])
            .await;
    let explained: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(explained["policies"].as_array().expect("policies").iter().all(|p| p["applies"] == false), "{explained}");
    // Bad input names the field.
    let out = palisade(&fleet.server, &["explain", "--node", "no such node!", "exec", "relative/path"]).await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("node:") && stderr.contains("exec.path:"), "{stderr}");
}

/// The event as the CLI's JSON prints it (the same mapping `explain -o json` uses).
fn palisade_cli_json(event: &v1::DecisionEvent) -> serde_json::Value {
    serde_json::json!({
        "policy": event.policy,
        "revision": event.revision,
        "rule_id": event.rule_id,
        "verdict": v1::Verdict::try_from(event.verdict).map_or("?", |v| v.as_str_name()),
        "hook": event.hook,
        "address": event.address,
        "port": event.port,
        "protocol": v1::Protocol::try_from(event.protocol).map_or("?", |p| p.as_str_name()),
        "would_deny": event.would_deny,
        "bundle_digest": event.bundle_digest,
        "node": event.node,
    })
}
