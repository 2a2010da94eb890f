//! Transport security, each guarantee proven by a refusal: the real server with TLS from the
//! development PKI (`palisade_server::pki`), real PostgreSQL, tonic clients over sockets.

use std::{collections::BTreeMap, os::unix::fs::PermissionsExt as _, path::Path};

use palisade_proto::v1::{
    self, agent_service_client::AgentServiceClient, node_service_client::NodeServiceClient,
    policy_service_client::PolicyServiceClient, token_service_client::TokenServiceClient,
};
use palisade_server::{
    auth::{Role, secret_hash},
    embedded::EmbeddedServer,
    pki,
    store::Store,
    tls::TlsFiles,
};
use sqlx::PgPool;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

/// A PKI of the server's own, another one (a CA the server does not trust), and a TLS server.
struct Secure {
    dir: tempfile::TempDir,
    other: tempfile::TempDir,
    server: EmbeddedServer,
    store: Store,
    /// An admin token's secret.
    admin: String,
}

impl Secure {
    async fn start(pool: PgPool) -> Self {
        let (dir, other) = (tempfile::tempdir().expect("pki"), tempfile::tempdir().expect("other pki"));
        pki::init(dir.path(), &[]).expect("pki init");
        for node in ["node-a", "node-b"] {
            pki::issue_node(node, dir.path()).expect("issue node");
        }
        pki::init(other.path(), &[]).expect("other pki init");
        pki::issue_node("node-a", other.path()).expect("issue from the other CA");
        let tls = TlsFiles {
            cert: dir.path().join("server.crt"),
            key: dir.path().join("server.key"),
            client_ca: dir.path().join("ca.crt"),
        };
        let options = palisade_server::Options { tls: Some(tls), ..palisade_server::Options::default() };
        let store = Store::new(pool.clone());
        let server = EmbeddedServer::start_with(pool, options).await.expect("server");
        let mut s = Self { dir, other, server, store, admin: String::new() };
        s.admin = s.token("root", Role::Admin).await;
        s
    }

    /// Creates a token as `palisade-server token create` does; returns its secret.
    async fn token(&self, name: &str, role: Role) -> String {
        let secret = palisade_server::auth::new_secret();
        self.store.create_token(name, role, &secret_hash(&secret)).await.expect("token");
        secret
    }

    /// A channel trusting the server's CA, presenting `node`'s certificate from `pki` if given.
    async fn channel(&self, client: Option<(&Path, &str)>) -> Result<Channel, tonic::transport::Error> {
        let ca = std::fs::read(self.dir.path().join("ca.crt")).expect("ca");
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((pki, node)) = client {
            let cert = std::fs::read(pki.join(format!("{node}.crt"))).expect("cert");
            let key = std::fs::read(pki.join(format!("{node}.key"))).expect("key");
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Channel::from_shared(self.server.url()).expect("url").tls_config(tls)?.connect().await
    }

    async fn node_channel(&self, node: &str) -> Channel {
        self.channel(Some((self.dir.path(), node))).await.expect("connect with a node certificate")
    }
}

fn hello(node: &str, labels: &[(&str, &str)]) -> v1::SyncRequest {
    v1::SyncRequest {
        message: Some(v1::sync_request::Message::Hello(v1::AgentHello {
            node_name: node.to_owned(),
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>(),
            failsafe_ports: vec![22],
            ..Default::default()
        })),
    }
}

async fn say_hello(channel: &Channel, message: v1::SyncRequest) -> Result<(), tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(message).await.expect("send");
    let response = AgentServiceClient::new(channel.clone()).sync(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
    // Keep the request stream open until the server has answered.
    drop(tx);
    response.map(|_| ())
}

/// `message` with `authorization: Bearer token`.
fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    request
}

async fn node(channel: &Channel, token: &str, name: &str) -> v1::Node {
    NodeServiceClient::new(channel.clone())
        .get_node(bearer(v1::GetNodeRequest { name: name.to_owned() }, token))
        .await
        .expect("get node")
        .into_inner()
        .node
        .expect("node")
}

#[test]
fn pki_keys_are_private_and_init_refuses_to_replace_a_ca() {
    let dir = tempfile::tempdir().expect("dir");
    let mut written = pki::init(dir.path(), &["palisade.example".to_owned()]).expect("init");
    written.extend_from_slice(&pki::issue_node("web-1", dir.path()).expect("issue"));
    for path in &written {
        let mode = std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777;
        let key = path.extension().is_some_and(|e| e == "key");
        assert_eq!(mode, if key { 0o600 } else { 0o644 }, "{}", path.display());
    }
    let names: Vec<_> = written.iter().map(|p| p.file_name().expect("name").to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["ca.crt", "ca.key", "server.crt", "server.key", "web-1.crt", "web-1.key"]);
    assert!(matches!(pki::init(dir.path(), &[]), Err(pki::PkiError::Exists(_))));
    assert!(matches!(pki::issue_node("web-1", dir.path()), Err(pki::PkiError::Exists(_))), "no silent re-issue");
    assert!(pki::issue_node("../evil", dir.path()).is_err(), "a node name is a DNS subdomain");
    for reserved in ["ca", "server"] {
        assert!(matches!(pki::issue_node(reserved, dir.path()), Err(pki::PkiError::Name(..))), "{reserved}");
    }
    let ca = std::fs::read_to_string(dir.path().join("ca.crt")).expect("ca");
    assert!(ca.contains("BEGIN CERTIFICATE"), "the CA survived");
    // Certificates expire: the CA in ten years, the server's and nodes' in 397 days.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    for (file, days) in [("ca.crt", 3650), ("server.crt", 397), ("web-1.crt", 397)] {
        let pem = std::fs::read(dir.path().join(file)).expect("certificate");
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("pem");
        let cert = pem.parse_x509().expect("x509");
        let (from, until) = (cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp());
        assert!(from <= now && now - from <= 2 * 86_400, "{file} valid from {from}");
        assert!((until - now - days * 86_400).abs() <= 86_400, "{file} valid until {until}, expected {days} days");
    }
    // A half-made directory (a key without its certificate) is not overwritten either.
    let half = tempfile::tempdir().expect("dir");
    std::fs::write(half.path().join("ca.key"), "old").expect("write");
    assert!(matches!(pki::init(half.path(), &[]), Err(pki::PkiError::Exists(_))));
    assert_eq!(std::fs::read_to_string(half.path().join("ca.key")).expect("key"), "old");
}

#[test]
fn the_pki_tools_run_without_a_database() {
    let dir = tempfile::tempdir().expect("dir");
    let pki_dir = dir.path().join("pki");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_palisade-server"))
            .args(args)
            .env_remove("DATABASE_URL")
            .output()
            .expect("palisade-server runs")
    };
    let out = run(&["pki", "init", pki_dir.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4, "it prints the four files");
    let out = run(&["pki", "issue-node", "web-1", pki_dir.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(pki_dir.join("web-1.crt").exists() && pki_dir.join("web-1.key").exists());
    // TLS without a persistent bundle key: refused at start, before the database is needed.
    let file = |name: &str| pki_dir.join(name).to_str().expect("utf-8").to_owned();
    let (cert, key, ca) = (file("server.crt"), file("server.key"), file("ca.crt"));
    let out = run(&["--tls-cert", &cert, "--tls-key", &key, "--client-ca", &ca]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--bundle-signing-key") && !stderr.contains("--database-url"), "{stderr}");
    let out = run(&["--dev"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--database-url"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn a_plaintext_client_and_a_certificate_from_another_ca_are_refused(pool: PgPool) {
    let s = Secure::start(pool).await;
    let plaintext = format!("http://{}", s.server.addr());
    let refused = match Channel::from_shared(plaintext).expect("url").connect().await {
        Err(_) => true,
        Ok(channel) => {
            PolicyServiceClient::new(channel).list_policies(v1::ListPoliciesRequest::default()).await.is_err()
        }
    };
    assert!(refused, "a plaintext client must not get an answer from a TLS server");

    let foreign = match s.channel(Some((s.other.path(), "node-a"))).await {
        Err(_) => true,
        Ok(channel) => say_hello(&channel, hello("node-a", &[])).await.is_err(),
    };
    assert!(foreign, "a client certificate from another CA must be refused");

    // The server's own certificate (same CA, serverAuth only) is no node identity.
    let as_server = match s.channel(Some((s.dir.path(), "server"))).await {
        Err(_) => true,
        Ok(channel) => say_hello(&channel, hello("server", &[])).await.is_err(),
    };
    assert!(as_server, "the server certificate must not speak for a node");

    // The right CA without a client certificate: admin calls work, AgentService does not.
    let admin = s.channel(None).await.expect("TLS without a client certificate");
    PolicyServiceClient::new(admin.clone())
        .list_policies(bearer(v1::ListPoliciesRequest::default(), &s.admin))
        .await
        .expect("admin call");
    let status = say_hello(&admin, hello("node-a", &[])).await.expect_err("no client certificate");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = AgentServiceClient::new(admin)
        .report_events(tokio_stream::iter(vec![v1::ReportEventsRequest {
            node_name: "node-a".into(),
            events: Vec::new(),
        }]))
        .await
        .expect_err("no client certificate");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn a_node_certificate_speaks_only_for_its_own_node(pool: PgPool) {
    let s = Secure::start(pool.clone()).await;
    let (a, b) = (s.node_channel("node-a").await, s.node_channel("node-b").await);
    say_hello(&b, hello("node-b", &[("zone", "b")])).await.expect("node b says hello with its own certificate");
    let admin = s.channel(None).await.expect("admin");
    let before = node(&admin, &s.admin, "node-b").await;

    let status = say_hello(&a, hello("node-b", &[("zone", "stolen")])).await.expect_err("a speaking for b");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("node-a"), "{status:?}");
    let after = node(&admin, &s.admin, "node-b").await;
    assert_eq!(after.labels, before.labels, "node b's labels are unchanged");
    assert_eq!(after.last_seen, before.last_seen, "node b's row is untouched");

    let event = v1::DecisionEvent {
        policy: "p".into(),
        rule_id: "r".into(),
        verdict: v1::Verdict::Deny as i32,
        hook: "cgroup/connect4".into(),
        address: "10.0.0.1".into(),
        protocol: v1::Protocol::Tcp as i32,
        time: Some(prost_types::Timestamp { seconds: 1, nanos: 0 }),
        ..Default::default()
    };
    let status = AgentServiceClient::new(a.clone())
        .report_events(tokio_stream::iter(vec![v1::ReportEventsRequest {
            node_name: "node-b".into(),
            events: vec![event.clone()],
        }]))
        .await
        .expect_err("a reporting as b");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await.expect("count");
    assert_eq!(stored, 0, "nothing was stored for node b");

    // Its own name works.
    say_hello(&a, hello("node-a", &[])).await.expect("node a as itself");
    let accepted = AgentServiceClient::new(a)
        .report_events(tokio_stream::iter(vec![v1::ReportEventsRequest {
            node_name: "node-a".into(),
            events: vec![event],
        }]))
        .await
        .expect("a reporting as a")
        .into_inner()
        .accepted;
    assert_eq!(accepted, 1);

    // A stream that starts as node a cannot switch to another node's name later.
    let status = AgentServiceClient::new(s.node_channel("node-a").await)
        .report_events(tokio_stream::iter(vec![
            v1::ReportEventsRequest { node_name: "node-a".into(), events: Vec::new() },
            v1::ReportEventsRequest { node_name: "node-b".into(), events: Vec::new() },
        ]))
        .await
        .expect_err("switching nodes mid-stream");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[test]
fn plaintext_needs_dev_and_dev_needs_loopback() {
    use clap::Parser as _;
    let parse = |args: &[&str]| {
        let mut argv = vec!["palisade-server", "--database-url", "postgres://x"];
        // The flags' environment fallbacks must not decide this test.
        assert!(std::env::var_os("PALISADE_DEV").is_none() && std::env::var_os("PALISADE_TLS_CERT").is_none());
        argv.extend_from_slice(args);
        palisade_server::Cli::try_parse_from(argv).expect("flags parse").serve
    };
    let err = parse(&[]).tls().expect_err("plaintext without --dev").to_string();
    assert!(err.contains("--tls-cert") && err.contains("--dev"), "{err}");
    let err = parse(&["--dev", "--listen", "0.0.0.0:50051"]).tls().expect_err("--dev off loopback").to_string();
    assert!(err.contains("only on loopback"), "{err}");
    assert!(parse(&["--dev"]).tls().expect("dev on loopback").is_none());
    let tls = parse(&["--tls-cert", "c", "--tls-key", "k", "--client-ca", "ca", "--listen", "0.0.0.0:1"]);
    assert!(tls.tls().expect("TLS anywhere").is_some());
    // Every flag reaches the options the server runs with.
    let tuned = parse(&[
        "--dev",
        "--event-retention",
        "forever",
        "--event-rate",
        "7",
        "--event-burst",
        "9",
        "--max-map-entries",
        "123",
    ]);
    let options = tuned.options(palisade_server::signing::BundleSigner::generate(), None);
    assert_eq!(options.event_retention, palisade_server::Retention(None));
    assert_eq!(options.event_rate, palisade_server::ratelimit::EventRate { per_second: 7, burst: 9 });
    assert_eq!(options.limits.max_map_entries, 123);
    let defaults = parse(&["--dev"]).options(palisade_server::signing::BundleSigner::generate(), None);
    assert_eq!(defaults.event_retention, palisade_server::parse_retention("30d").expect("30d"));
    let err = tls.signer().expect_err("no persistent signing key").to_string();
    assert!(err.contains("--bundle-signing-key"), "{err}");
    assert!(parse(&["--dev"]).signer().is_ok(), "--dev may sign with a key of the moment");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("bundle.key");
    let keyed = parse(&["--bundle-signing-key", key.to_str().expect("utf-8")]);
    let first = keyed.signer().expect("created").public_key_hex();
    assert_eq!(keyed.signer().expect("loaded").public_key_hex(), first, "the key persists");
    assert!(
        palisade_server::Cli::try_parse_from(["palisade-server", "--database-url", "x", "--tls-cert", "c"]).is_err(),
        "--tls-cert without --tls-key and --client-ca"
    );
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn tokens_decide_who_may_do_what_and_name_the_actor(pool: PgPool) {
    let s = Secure::start(pool.clone()).await;
    let (viewer, editor) = (s.token("ci-viewer", Role::Viewer).await, s.token("ci-editor", Role::Editor).await);
    let channel = s.channel(None).await.expect("TLS");
    let mut policies = PolicyServiceClient::new(channel.clone());
    let doc = "name: web\nnetwork: {connect: {rules: [{id: r, action: deny, ports: [9]}]}}\n";
    let apply = || v1::ApplyPolicyRequest {
        source: Some(v1::apply_policy_request::Source::Document(doc.to_owned())),
        ..Default::default()
    };

    let status = policies.list_policies(v1::ListPoliciesRequest::default()).await.expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status =
        policies.list_policies(bearer(v1::ListPoliciesRequest::default(), "pal_wrong")).await.expect_err("bad");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    policies.list_policies(bearer(v1::ListPoliciesRequest::default(), &viewer)).await.expect("a viewer lists");
    let status = policies.apply_policy(bearer(apply(), &viewer)).await.expect_err("a viewer applies");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM policy_revisions").fetch_one(&pool).await.expect("n");
    assert_eq!(stored, 0);

    // The audit actor is the token's name, whatever the actor header claims.
    let mut request = bearer(apply(), &editor);
    request.metadata_mut().insert(palisade_proto::ACTOR_METADATA_KEY, "somebody-else".parse().expect("header"));
    policies.apply_policy(request).await.expect("an editor applies");
    let actor: String = sqlx::query_scalar("SELECT actor FROM audit_log WHERE object_kind = 'policy'")
        .fetch_one(&pool)
        .await
        .expect("audit row");
    assert_eq!(actor, "ci-editor");

    let mut tokens = TokenServiceClient::new(channel.clone());
    let status = tokens.list_tokens(bearer(v1::ListTokensRequest {}, &editor)).await.expect_err("editor lists tokens");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let listed = tokens.list_tokens(bearer(v1::ListTokensRequest {}, &s.admin)).await.expect("admin").into_inner();
    let names: Vec<_> = listed.tokens.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["ci-editor", "ci-viewer", "root"]);
    tokens
        .revoke_token(bearer(v1::RevokeTokenRequest { name: "ci-editor".into() }, &s.admin))
        .await
        .expect("admin revokes");
    let status = policies.apply_policy(bearer(apply(), &editor)).await.expect_err("a revoked token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = tokens
        .revoke_token(bearer(v1::RevokeTokenRequest { name: "nobody".into() }, &s.admin))
        .await
        .expect_err("unknown token");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn token_create_prints_the_secret_alone_on_the_last_line(pool: PgPool) {
    let s = Secure::start(pool.clone()).await;
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let database = pool.connect_options().get_database().expect("test database").to_owned();
    let url = format!("{}/{database}", base.rsplit_once('/').expect("a URL with a path").0);
    let create = |name: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_palisade-server"))
            .args(["token", "create", "--role", "viewer", "--name", name, "--database-url", &url])
            .output()
            .expect("runs")
    };
    let out = create("from-cli");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let secret = stdout.lines().last().expect("a line").to_owned();
    assert!(secret.starts_with("pal_") && stdout.lines().count() == 1, "{stdout:?}");
    let channel = s.channel(None).await.expect("TLS");
    PolicyServiceClient::new(channel)
        .list_policies(bearer(v1::ListPoliciesRequest::default(), &secret))
        .await
        .expect("the printed token works");
    let stored: Vec<u8> = sqlx::query_scalar("SELECT secret_sha256 FROM tokens WHERE name = 'from-cli'")
        .fetch_one(&pool)
        .await
        .expect("row");
    assert_eq!(stored, secret_hash(&secret), "only the hash is stored");
    let again = create("from-cli");
    assert!(!again.status.success(), "a name is used once");
}
