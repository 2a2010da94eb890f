//! The `palisade` binary against a real server and PostgreSQL.

use std::{path::Path, process::Output, time::Duration};

use palisade_proto::{document, v1};
use palisade_server::embedded::EmbeddedServer;
use sqlx::PgPool;
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::Command,
};

/// `palisade` pointed at `server`: its URL, its CA and its admin token, through the
/// environment as an operator would set them.
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

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn example() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/deny-demo-port.yaml").display().to_string()
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn apply_then_get_yaml_round_trips_up_to_defaults(pool: PgPool) {
    let server = EmbeddedServer::start(pool).await.expect("server");
    let out = palisade(&server, &["apply", "-f", &example()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "policy/deny-demo-port created (revision 1)\n");

    let out = palisade(&server, &["get", "deny-demo-port", "-o", "yaml"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let got = document::parse(&stdout(&out)).expect("get prints a valid document");
    let mut want = document::parse(&std::fs::read_to_string(example()).expect("example")).expect("example parses");
    assert_eq!(want.mode, None, "the example relies on defaults");
    want.mode = Some(document::Mode::Enforce);
    want.network.as_mut().and_then(|n| n.connect.as_mut()).expect("connect").default = Some(document::Action::Allow);
    assert_eq!(got, want);

    let out = palisade(&server, &["get", "deny-demo-port", "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json output");
    assert_eq!(json["network"]["connect"]["rules"][0]["id"], "block-demo-port");

    let out = palisade(&server, &["apply", "-f", &example()]).await;
    assert_eq!(stdout(&out), "policy/deny-demo-port unchanged\n");
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn apply_invalid_policy_prints_field_paths_and_exits_nonzero(pool: PgPool) {
    let server = EmbeddedServer::start(pool.clone()).await.expect("server");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "name: bad\nnetwork:\n  connect:\n    rules:\n      - {id: r1, action: deny, cidrs: [10.0.0.0/40], ports: [\"90-80\"]}\n",
    )
    .expect("write");
    let out = palisade(&server, &["apply", "-f", &file.display().to_string()]).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("network.connect.rules[0].cidrs[0]:"), "{err}");
    assert!(err.contains("network.connect.rules[0].ports[0]:"), "{err}");

    // A syntax error in a second file stops the whole directory before anything is sent.
    std::fs::write(&file, "name: good\n").expect("write");
    std::fs::write(dir.path().join("worse.yaml"), "name: worse\nmode: sometimes\n").expect("write");
    let out = palisade(&server, &["apply", "-f", &dir.path().display().to_string()]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("worse.yaml (document 1): mode:"), "{}", stderr(&out));
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM policy_revisions").fetch_one(&pool).await.expect("count");
    assert_eq!(stored, 0);
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn an_alias_bomb_is_refused_within_a_second_in_bounded_memory(pool: PgPool) {
    let server = EmbeddedServer::start(pool.clone()).await.expect("server");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bomb.yaml");
    let aliases = vec!["*a"; 530_000].join(",");
    std::fs::write(
        &file,
        format!("name: bomb\nlabels: {{k: &a \"{}\"}}\ndescription: [{aliases}]\n", "x".repeat(1 << 20)),
    )
    .expect("write");
    let started = std::time::Instant::now();
    let out = palisade(&server, &["apply", "-f", &file.display().to_string()]).await;
    let took = started.elapsed();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("anchors and aliases are not accepted"), "{}", stderr(&out));
    eprintln!("CLI refused the alias bomb in {took:?}");
    assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
    // The largest child this test process waited for is the CLI.
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &raw mut usage) }, 0);
    assert!(usage.ru_maxrss < 200 * 1024, "the CLI peaked at {} KiB", usage.ru_maxrss);
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM policy_revisions").fetch_one(&pool).await.expect("count");
    assert_eq!(stored, 0);
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn list_history_and_delete_show_readable_tables(pool: PgPool) {
    let server = EmbeddedServer::start(pool).await.expect("server");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, "name: alpha\nlabels: {tier: gold}\n---\nname: beta\nlabels: {tier: silver}\n")
        .expect("write");
    let out = palisade(&server, &["apply", "-f", &file.display().to_string()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(&file, "name: alpha\nlabels: {tier: gold}\nmode: audit\n").expect("write");
    assert!(palisade(&server, &["apply", "-f", &file.display().to_string()]).await.status.success());

    let out = palisade(&server, &["list", "-l", "tier=gold"]).await;
    let text = stdout(&out);
    assert!(text.starts_with("NAME"), "{text}");
    assert!(text.contains("alpha") && text.contains("audit") && !text.contains("beta"), "{text}");

    let out = palisade(&server, &["delete", "alpha"]).await;
    assert_eq!(stdout(&out), "policy/alpha deleted (revision 3)\n");
    let out = palisade(&server, &["history", "alpha"]).await;
    let kinds: Vec<_> =
        stdout(&out).lines().skip(1).filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned)).collect();
    assert_eq!(kinds, ["deleted", "updated", "created"]);
    let out = palisade(&server, &["get", "alpha"]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("NotFound"), "{}", stderr(&out));
}

fn deny_event(port: u32) -> v1::DecisionEvent {
    v1::DecisionEvent {
        policy: "deny-demo-port".into(),
        revision: 1,
        rule_id: "block-demo-port".into(),
        verdict: v1::Verdict::Deny as i32,
        hook: "cgroup/connect4".into(),
        pid: 4242,
        comm: "nc".into(),
        address: "127.0.0.1".into(),
        port,
        protocol: v1::Protocol::Tcp as i32,
        ..Default::default()
    }
}

async fn report(server: &EmbeddedServer, port: u32) {
    let mut agents = v1::agent_service_client::AgentServiceClient::new(server.node("node-a").await);
    let batch = v1::ReportEventsRequest { node_name: "node-a".into(), events: vec![deny_event(port)] };
    agents.report_events(tokio_stream::iter(vec![batch])).await.expect("report");
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn events_lists_and_follows_decisions(pool: PgPool) {
    let server = EmbeddedServer::start(pool).await.expect("server");
    report(&server, 9999).await;
    let out = palisade(&server, &["events", "--policy", "deny-demo-port"]).await;
    let text = stdout(&out);
    assert!(text.contains("DENY") && text.contains("block-demo-port") && text.contains("127.0.0.1:9999/tcp"), "{text}");
    let out = palisade(&server, &["events", "--policy", "other"]).await;
    assert_eq!(stdout(&out).lines().count(), 1, "header only");

    let mut follow = cli(&server)
        .args(["events", "--follow", "--node", "node-a"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(follow.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    // Header and the stored event come first; the new one arrives through the watch.
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        let mut reported = false;
        while let Some(line) = lines.next_line().await.expect("read") {
            seen.push(line.clone());
            if line.contains(":9999/") && !reported {
                report(&server, 7777).await;
                reported = true;
            }
            if line.contains(":7777/") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "{seen:?}");
    follow.kill().await.expect("kill");
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn nodes_shows_registered_agents_and_sections_they_cannot_enforce(pool: PgPool) {
    let server = EmbeddedServer::start(pool).await.expect("server");
    let mut streams = Vec::new();
    for (name, bpf_lsm) in [("node-a", false), ("node-b", true)] {
        let hello = v1::SyncRequest {
            message: Some(v1::sync_request::Message::Hello(v1::AgentHello {
                node_name: name.into(),
                features: Some(v1::KernelFeatures {
                    kernel_release: "6.18.9".into(),
                    bpf_lsm,
                    bpf_lsm_paths: bpf_lsm,
                    ..Default::default()
                }),
                event_stats: bpf_lsm.then_some(v1::EventStats {
                    backlog_full: 5,
                    queue_full: 2,
                    pending: 9,
                    pending_bytes: 3000,
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(hello).await.expect("send");
        let mut agents = v1::agent_service_client::AgentServiceClient::new(server.node(name).await);
        streams.push((tx, agents.sync(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("sync")));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("guard.yaml");
    std::fs::write(
        &file,
        "name: guard\nexec: {rules: [{id: no-curl, action: deny, paths: [/usr/bin/curl]}]}\nfiles: {rules: [{id: ro, action: deny, access: [write], paths: [/etc/]}]}\n",
    )
    .expect("write");
    let out = palisade(&server, &["apply", "-f", file.to_str().expect("utf-8")]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = palisade(&server, &["nodes"]).await;
    let text = stdout(&out);
    let row = |name: &str| text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{text}")).to_owned();
    assert!(row("node-a").contains("6.18.9") && row("node-a").contains("guard/exec,guard/files"), "{text}");
    assert!(!row("node-b").contains("guard/"), "a BPF-LSM node enforces both: {text}");
    assert!(
        text.contains("node node-a: policy guard (revision 1) section exec is not enforceable on this node: BPF-LSM is not available on this node (kernel 6.18.9)"),
        "{text}"
    );
    assert!(
        text.contains("node node-b: 7 decision events dropped since the agent started (ring buffer full 0, queue full 2, backlog full 5, undecodable 0); 9 waiting to be reported (3 KiB)"),
        "{text}"
    );
    assert!(!text.contains("node node-a: 0 decision"), "no drops, no note: {text}");
    drop(streams);
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn events_show_the_path_and_access_of_file_decisions(pool: PgPool) {
    let server = EmbeddedServer::start(pool).await.expect("server");
    let mut agents = v1::agent_service_client::AgentServiceClient::new(server.node("node-a").await);
    let event = v1::DecisionEvent {
        policy: "guard".into(),
        revision: 2,
        rule_id: "ro".into(),
        verdict: v1::Verdict::Deny as i32,
        hook: "lsm/file_open".into(),
        comm: "sh".into(),
        path: "/etc/shadow".into(),
        access: vec![v1::FileAccess::Read as i32, v1::FileAccess::Write as i32],
        ..Default::default()
    };
    let batch = v1::ReportEventsRequest { node_name: "node-a".into(), events: vec![event] };
    agents.report_events(tokio_stream::iter(vec![batch])).await.expect("report");
    let out = palisade(&server, &["events", "--policy", "guard"]).await;
    let text = stdout(&out);
    assert!(text.contains("open(read+write) /etc/shadow") && text.contains("ro"), "{text}");
}

#[tokio::test]
async fn unreachable_server_fails_with_a_clear_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["--server", "127.0.0.1:1", "list"])
        .output()
        .await
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the Palisade server"));
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn compile_prints_program_stats_and_the_annotated_disassembly(pool: PgPool) {
    let server = EmbeddedServer::start(pool).await.expect("server");
    let out = palisade(&server, &["compile", "-f", &example(), "--disasm"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for section in ["cgroup/connect4", "cgroup/connect6", "lsm/socket_connect", "cgroup/bind4", "lsm/socket_bind"] {
        assert!(text.contains(section), "{section} missing:\n{text}");
    }
    assert!(text.lines().any(|l| l.contains("pal_ports") && l.contains("array")), "{text}");
    // pal_ports preallocates 1 KiB per port table: the example has at least one.
    let ports = text.lines().find(|l| l.starts_with("pal_ports")).expect("pal_ports row");
    let bytes: u64 = ports.split_whitespace().last().and_then(|b| b.parse().ok()).expect("KERNEL BYTES column");
    assert!(text.contains("KERNEL BYTES") && bytes >= 1024 && bytes.is_multiple_of(1024), "{text}");
    assert!(text.contains("DENY event: deny-demo-port@0/block-demo-port"), "{text}");
    assert!(text.contains("call bpf_map_lookup_elem"), "{text}");
    let bad = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(bad.path(), "name: x\nnetwork: {connect: {rules: [{id: r, action: deny, ports: [0]}]}}")
        .expect("write");
    let out = palisade(&server, &["compile", "-f", &bad.path().display().to_string()]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("network.connect.rules[0].ports[0]"), "{}", stderr(&out));
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn the_cli_speaks_tls_and_carries_its_token(pool: PgPool) {
    use palisade_server::auth::{Role, new_secret, secret_hash};
    let pki = tempfile::tempdir().expect("pki");
    palisade_server::pki::init(pki.path(), &[]).expect("pki init");
    let secret = new_secret();
    palisade_server::store::Store::new(pool.clone())
        .create_token("cli-admin", Role::Admin, &secret_hash(&secret))
        .await
        .expect("token");
    let tls = palisade_server::tls::TlsFiles {
        cert: pki.path().join("server.crt"),
        key: pki.path().join("server.key"),
        client_ca: pki.path().join("ca.crt"),
    };
    let options = palisade_server::Options { tls: Some(tls), ..palisade_server::Options::default() };
    let server = EmbeddedServer::start_with(pool, options).await.expect("server");
    let ca = pki.path().join("ca.crt");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(args)
            .env("PALISADE_SERVER", server.url())
            .env_remove("PALISADE_TOKEN")
            .env_remove("PALISADE_CA_CERT")
            .output()
    };
    let ca_arg = ca.display().to_string();
    let out = run(&["--ca-cert", &ca_arg, "--token", &secret, "token", "list"]).await.expect("runs");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("cli-admin") && stdout(&out).contains("admin"), "{}", stdout(&out));
    let out = run(&["--ca-cert", &ca_arg, "list"]).await.expect("runs");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("token is required"), "{}", stderr(&out));
    let out = run(&["--token", &secret, "list"]).await.expect("runs");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--ca-cert"), "{}", stderr(&out));
    let out = run(&["--ca-cert", &ca_arg, "--token", &secret, "token", "revoke", "cli-admin"]).await.expect("runs");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["--ca-cert", &ca_arg, "--token", &secret, "list"]).await.expect("runs");
    assert!(!out.status.success() && stderr(&out).contains("revoked"), "{}", stderr(&out));
}

/// A rendered table as header → cell maps, cut at the header's column starts.
fn table_rows(text: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut lines = text.lines();
    let header = lines.next().expect("a header line");
    let chars: Vec<char> = header.chars().collect();
    let mut starts = vec![0];
    for i in 1..chars.len() {
        if chars[i] != ' ' && chars[i - 1] == ' ' && i >= 2 && chars[i - 2] == ' ' {
            starts.push(i);
        }
    }
    let cut = |line: &str| -> Vec<String> {
        let chars: Vec<char> = line.chars().collect();
        starts
            .iter()
            .enumerate()
            .map(|(k, &s)| {
                let end = starts.get(k + 1).copied().unwrap_or(chars.len()).min(chars.len());
                chars
                    .get(s.min(chars.len())..end)
                    .map(|c| c.iter().collect::<String>())
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            })
            .collect()
    };
    let names = cut(header);
    lines.map(|l| names.iter().cloned().zip(cut(l)).collect()).collect()
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "{}", stderr(out));
    stdout(out).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

fn yaml_documents(out: &Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "{}", stderr(out));
    stdout(out)
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_saphyr::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect()
}

/// `value` as the table prints it.
fn cell(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A listing command and, for the table columns checked, the JSON pointer carrying each.
type Check<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn every_listing_prints_json_and_yaml_carrying_the_tables_fields(pool: PgPool) {
    let server = EmbeddedServer::start(pool).await.expect("server");
    let hello = v1::SyncRequest {
        message: Some(v1::sync_request::Message::Hello(v1::AgentHello {
            node_name: "node-a".into(),
            features: Some(v1::KernelFeatures { kernel_release: "6.18.9".into(), ..Default::default() }),
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(hello).await.expect("send");
    let mut agents = v1::agent_service_client::AgentServiceClient::new(server.node("node-a").await);
    let _stream = agents.sync(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("sync");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, "name: alpha\nmode: audit\n---\nname: beta\n").expect("write");
    assert!(palisade(&server, &["apply", "-f", &file.display().to_string()]).await.status.success());
    assert!(palisade(&server, &["apply", "-f", &example()]).await.status.success());
    std::fs::write(&file, "name: alpha\n").expect("write");
    assert!(palisade(&server, &["apply", "-f", &file.display().to_string()]).await.status.success());
    report(&server, 9999).await;

    // (command, JSON path for each table column checked)
    let checks: [Check; 5] = [
        (&["list"], &[("NAME", "/policy/name"), ("REVISION", "/revision"), ("BY", "/updated_by")]),
        (
            &["nodes"],
            &[
                ("NAME", "/name"),
                ("KERNEL", "/features/kernel_release"),
                ("DESIRED", "/desired_generation"),
                ("APPLIED", "/applied_generation"),
            ],
        ),
        (&["history", "alpha"], &[("REVISION", "/revision"), ("BY", "/created_by")]),
        (
            &["events"],
            &[
                ("NODE", "/node"),
                ("POLICY", "/policy"),
                ("REV", "/revision"),
                ("RULE", "/rule_id"),
                ("PID", "/pid"),
                ("UID", "/uid"),
                ("COMM", "/comm"),
            ],
        ),
        (&["token", "list"], &[("NAME", "/name")]),
    ];
    for (command, columns) in checks {
        let table = table_rows(&stdout(&palisade(&server, command).await));
        let json = json_lines(&palisade(&server, &[command, &["-o", "json"]].concat()).await);
        let yaml = yaml_documents(&palisade(&server, &[command, &["-o", "yaml"]].concat()).await);
        assert!(!table.is_empty(), "{command:?} lists something");
        assert_eq!(table.len(), json.len(), "{command:?}: one JSON object per row");
        assert_eq!(json, yaml, "{command:?}: YAML carries the same values as JSON");
        for (row, object) in table.iter().zip(&json) {
            for (column, pointer) in columns {
                let value = object.pointer(pointer).unwrap_or_else(|| panic!("{command:?}: {pointer} in {object}"));
                assert_eq!(&cell(value), &row[*column], "{command:?} column {column} vs {pointer}");
            }
        }
    }
    // Enum and timestamp columns: the JSON carries them by name and in RFC 3339.
    let json = json_lines(&palisade(&server, &["list", "-o", "json"]).await);
    assert_eq!(json[0]["policy"]["mode"], "MODE_ENFORCE");
    assert!(json[0]["updated_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{}", json[0]);
    let json = json_lines(&palisade(&server, &["nodes", "-o", "json"]).await);
    assert_eq!(json[0]["connected"], true);
    let json = json_lines(&palisade(&server, &["history", "alpha", "-o", "json"]).await);
    assert_eq!(
        json.iter().map(|r| r["kind"].as_str().unwrap_or("")).collect::<Vec<_>>(),
        ["REVISION_KIND_UPDATED", "REVISION_KIND_CREATED"]
    );
    let json = json_lines(&palisade(&server, &["events", "-o", "json"]).await);
    assert_eq!((json[0]["verdict"].as_str(), json[0]["port"].as_u64()), (Some("VERDICT_DENY"), Some(9999)));

    // compile: the server's answer and the offline compiler's are the same.
    let online = json_lines(&palisade(&server, &["compile", "-f", &example(), "-o", "json"]).await);
    let offline = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["--server", "http://127.0.0.1:1", "compile", "--offline", "-f", &example(), "-o", "json"])
        .output()
        .await
        .expect("runs");
    let offline = json_lines(&offline);
    assert_eq!(online, offline, "offline compile equals the server's");
    assert!(online[0]["digest"].as_str().is_some_and(|d| d.len() == 64), "{}", online[0]);
    let table = table_rows(&stdout(&palisade(&server, &["compile", "-f", &example()]).await));
    let programs: Vec<&str> =
        online[0]["programs"].as_array().expect("programs").iter().filter_map(|p| p["name"].as_str()).collect();
    let listed: Vec<&str> = table.iter().map(|r| r["PROGRAM"].as_str()).take(programs.len()).collect();
    assert_eq!(programs, listed);
}

#[tokio::test]
async fn offline_compile_refuses_what_the_server_refuses_and_completions_need_no_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "name: bad\nnetwork:\n  connect:\n    rules:\n      - {id: r, action: deny, ports: [70000]}\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["--server", "http://127.0.0.1:1", "compile", "--offline", "-f", &file.display().to_string()])
        .output()
        .await
        .expect("runs");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("network.connect.rules[0].ports[0]: port 70000 is above 65535"), "{}", stderr(&out));
    for shell in ["bash", "zsh", "fish"] {
        let out =
            Command::new(env!("CARGO_BIN_EXE_palisade")).args(["completions", shell]).output().await.expect("runs");
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        assert!(script.contains("palisade") && script.contains("rollout") && script.contains("explain"), "{shell}");
    }
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn version_shows_the_client_and_the_server(pool: PgPool) {
    let server = EmbeddedServer::start(pool).await.expect("server");
    let out = palisade(&server, &["version", "-o", "json"]).await;
    let json = json_lines(&out);
    assert_eq!(json[0]["client"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json[0]["server"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json[0]["server"]["bundle_public_key"], server.public_key_hex());
    assert_eq!(json[0]["server"]["secure"], true);
    let text = stdout(&palisade(&server, &["version"]).await);
    assert!(
        text.starts_with(&format!("client  {}\nserver  {}\n", env!("CARGO_PKG_VERSION"), env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn apply_of_a_directory_is_all_or_nothing_and_names_the_file_at_fault(pool: PgPool) {
    let server = EmbeddedServer::start(pool.clone()).await.expect("server");
    let dir = tempfile::tempdir().expect("tempdir");
    for (file, port) in [("a.yaml", 80), ("b.yaml", 70_000), ("c.yaml", 443)] {
        let doc = format!(
            "name: {}\nnetwork:\n  connect:\n    rules:\n      - {{id: r, action: deny, ports: [{port}]}}\n",
            &file[..1]
        );
        std::fs::write(dir.path().join(file), doc).expect("write");
    }
    let out = palisade(&server, &["apply", "-f", &dir.path().display().to_string()]).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("nothing applied"), "{err}");
    assert!(err.contains("b.yaml (document 1): policy/b: network.connect.rules[0].ports[0]"), "{err}");
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM policy_revisions").fetch_one(&pool).await.expect("count");
    assert_eq!(stored, 0, "a and c were not applied either");

    std::fs::remove_file(dir.path().join("b.yaml")).expect("rm");
    let before: i64 =
        sqlx::query_scalar("SELECT generation FROM policy_generation").fetch_one(&pool).await.expect("gen");
    let out = palisade(&server, &["apply", "-f", &dir.path().display().to_string()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "policy/a created (revision 1)\npolicy/c created (revision 1)\n");
    let after: i64 =
        sqlx::query_scalar("SELECT generation FROM policy_generation").fetch_one(&pool).await.expect("gen");
    assert_eq!(after, before + 1, "one generation for the directory");
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn several_server_replicas_use_the_first_that_answers_and_never_mix_schemes(pool: PgPool) {
    let server = EmbeddedServer::start(pool).await.expect("server");
    // Port 1 on loopback refuses connections: a replica that is down.
    let down = "https://127.0.0.1:1";
    let replicas = format!("{down},{}", server.url());
    let out = cli(&server).env("PALISADE_SERVER", &replicas).args(["list", "-o", "json"]).output().await.expect("runs");
    assert!(out.status.success(), "{}", stderr(&out));
    let none = cli(&server).env("PALISADE_SERVER", format!("{down},https://127.0.0.1:2")).arg("list").output().await;
    let none = none.expect("runs");
    assert!(
        !none.status.success() && stderr(&none).contains("127.0.0.1:2"),
        "the last replica's error: {}",
        stderr(&none)
    );
    let mixed =
        cli(&server).env("PALISADE_SERVER", format!("{},http://127.0.0.1:2", server.url())).arg("list").output();
    let mixed = mixed.await.expect("runs");
    assert!(!mixed.status.success() && stderr(&mixed).contains("mix https:// and http://"), "{}", stderr(&mixed));
}
