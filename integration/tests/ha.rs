//! High availability: two server replicas (real processes, real TLS) on one PostgreSQL
//! database, agents spread over both, a stream of applies through the multi-endpoint SDK,
//! and one replica killed (`SIGKILL`) in the middle. Every agent must be enforcing a generation made
//! after the kill — which only the surviving replica can have served — within a second, and
//! every apply the client saw acknowledged must be in the database.
//!
//! The agents are the agent's own Sync loop (`palisade_agent::sync::run_sync`, the code a
//! node runs, failover included) with a datapath that verifies each bundle — signature,
//! node, digest, content — instead of loading it, so the test needs no kernel.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use palisade_agent::{
    ApplyError,
    sync::{self, SyncClient},
};
use palisade_proto::{
    client,
    v1::{self, apply_policy_request::Source, policy_service_client::PolicyServiceClient},
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// Simulated nodes; half list replica A first, half replica B.
const AGENTS: usize = 20;
/// The target: every agent on a post-kill generation within this.
const CONVERGE: Duration = Duration::from_secs(1);

/// A `palisade-server` process; killed (`SIGKILL`) when dropped.
struct Replica {
    child: std::process::Child,
    url: String,
}

impl Replica {
    /// Starts the server binary on an ephemeral loopback port and waits until it serves.
    fn start(bin: &Path, name: &str, database: &str, pki: &Path) -> Self {
        let mut command = Command::new(bin);
        command
            .args(["--listen", "127.0.0.1:0", "--database-url", database])
            .arg("--tls-cert")
            .arg(pki.join("server.crt"))
            .arg("--tls-key")
            .arg(pki.join("server.key"))
            .arg("--client-ca")
            .arg(pki.join("ca.crt"))
            .arg("--bundle-signing-key")
            .arg(pki.join("bundle.key"))
            .env("PALISADE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Dies with the test process, however that ends (a timeout kills the test with
        // SIGKILL, which runs no destructor).
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let mut child = command.spawn().expect("start palisade-server");
        let stderr = child.stderr.take().expect("stderr");
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let name = name.to_owned();
        // Reads the log until the listening address shows, then keeps draining it (a full
        // pipe would stall the server), keeping the lines for a failure message.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // `serving gRPC addr=Some(127.0.0.1:PORT)`, around the log's colour codes.
                if !sent
                    && line.contains("serving gRPC")
                    && let Some(rest) = line.split("127.0.0.1:").nth(1)
                {
                    let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    let _ = addr_tx.send(format!("127.0.0.1:{port}"));
                    sent = true;
                }
                if std::env::var_os("HA_TEST_SERVER_LOG").is_some() || line.contains("ERROR") {
                    eprintln!("[{name}] {line}");
                }
            }
        });
        let addr = addr_rx.recv_timeout(Duration::from_mins(1)).unwrap_or_else(|_| {
            let status = child.try_wait();
            panic!("palisade-server did not start serving: {status:?}")
        });
        Self { child, url: format!("https://{addr}") }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A database of its own, dropped at the end.
struct Database {
    base: String,
    name: String,
    url: String,
}

impl Database {
    async fn create(base: &str) -> Self {
        let name = format!("palisade_ha_{}", std::process::id());
        let url = palisade_integration::create_database(base, &name).await.expect("create the database");
        Self { base: base.to_owned(), url, name }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        palisade_integration::drop_database_blocking(&self.base, &self.name);
    }
}

/// A simulated node: the agent's Sync loop and what its datapath enforces.
struct Sim {
    name: String,
    enforcing: watch::Receiver<Option<(u64, String)>>,
}

fn sim_name(index: usize) -> String {
    format!("ha-node-{index:02}")
}

/// Starts simulated node `index` against `urls`, with a certificate from the CA in `pki`,
/// pinning `key` (hex, or a file holding it).
fn start_sim(index: usize, urls: Vec<String>, pki: &Path, key: &str, shutdown: &CancellationToken) -> Sim {
    let name = sim_name(index);
    palisade_server::pki::issue_node(&name, pki).expect("node certificate");
    let read = |file: &str| std::fs::read(pki.join(file)).expect("PKI file");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.crt")))
        .identity(Identity::from_pem(read(&format!("{name}.crt")), read(&format!("{name}.key"))));
    let key = palisade_agent::public_key(key).expect("public key");
    let (enforced, enforcing) = watch::channel(None);
    let enforced = Arc::new(enforced);
    let node = name.clone();
    let apply = move |bundle: v1::Bundle| {
        let (enforced, node) = (enforced.clone(), node.clone());
        async move {
            // Both replicas must sign with the one key and issue for this node.
            palisade_agent::loader::verify(&bundle, Some(&key), Some(&node)).map_err(ApplyError::Rejected)?;
            enforced.send_replace(Some((bundle.generation, bundle.digest)));
            Ok(())
        }
    };
    let client = SyncClient {
        server: sync::Server { urls, tls: Some(tls) },
        node_name: name.clone(),
        labels: [("suite".to_owned(), "ha".to_owned())].into(),
        features: v1::KernelFeatures { kernel_release: "6.18.0-sim".into(), ..Default::default() },
        failsafe_ports: vec![22],
        heartbeat: Duration::from_secs(30),
        stats: Arc::new(palisade_agent::stats::EventCounters::default()),
        metrics: palisade_agent::metrics::AgentMetrics::new(),
        captures: None,
    };
    // Nothing reports on its own here; a closed queue is never selected.
    let (_, reports) = mpsc::channel(1);
    tokio::spawn(sync::run_sync(client, apply, enforcing.clone(), reports, shutdown.clone()));
    Sim { name, enforcing }
}

fn document(name: &str, i: usize) -> v1::ApplyPolicyRequest {
    let doc = format!(
        "name: {name}\nworkload: {{cgroup: /ha}}\nnetwork:\n  connect:\n    rules:\n      - {{id: r, action: deny, cidrs: [10.{}.0.0/16], ports: [443]}}\n",
        i % 250
    );
    v1::ApplyPolicyRequest { source: Some(Source::Document(doc)), ..Default::default() }
}

/// Applies `ha-0000`, `ha-0001`, … through the SDK with both replicas listed, reconnecting
/// (to whichever replica answers) after a failed call and retrying the same policy. Returns
/// every acknowledged (name, revision, when).
async fn applier(servers: String, ca: Vec<u8>, token: String, stop: CancellationToken) -> Vec<(String, u64, Instant)> {
    let mut acked = Vec::new();
    let mut connection = None;
    let mut i = 0;
    while !stop.is_cancelled() {
        let conn = match connection.clone() {
            Some(c) => c,
            None => match client::channel(&servers, Some(&ca), None).await {
                Ok(channel) => {
                    let c = client::with_token(channel, Some(&token)).expect("token");
                    connection = Some(c.clone());
                    c
                }
                Err(error) => {
                    eprintln!("applier: no replica: {error}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let name = format!("ha-{i:04}");
        let mut policies = PolicyServiceClient::new(conn);
        match tokio::time::timeout(Duration::from_secs(5), policies.apply_policy(document(&name, i))).await {
            Ok(Ok(response)) => {
                let revision = response.into_inner().policy.expect("stored policy").revision;
                acked.push((name, revision, Instant::now()));
                i += 1;
            }
            Ok(Err(status)) => {
                assert!(
                    matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled),
                    "apply {name}: {status:?}"
                );
                connection = None;
            }
            Err(_) => connection = None,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    acked
}

fn generation_of(sim: &Sim) -> u64 {
    sim.enforcing.borrow().as_ref().map_or(0, |(g, _)| *g)
}

/// Waits until every simulated node enforces at least `generation` and the database shows
/// each one acknowledged it; the time it took.
async fn all_at(store: &palisade_server::store::Store, sims: &[Sim], generation: u64, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let enforced = sims.iter().all(|s| generation_of(s) >= generation);
        let mut recorded = enforced;
        if enforced {
            for sim in sims {
                let node = store.get_node(&sim.name).await.expect("node");
                recorded &= node.applied_generation >= generation && node.connected;
            }
        }
        if recorded {
            return started.elapsed();
        }
        if started.elapsed() > within {
            let behind: Vec<_> =
                sims.iter().filter(|s| generation_of(s) < generation).map(|s| (&s.name, generation_of(s))).collect();
            panic!("not every node at generation {generation} after {within:?}; behind: {behind:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn server_bin() -> Option<PathBuf> {
    let bin = Path::new(env!("CARGO_BIN_EXE_fleet-bench")).with_file_name("palisade-server");
    if bin.exists() {
        return Some(bin);
    }
    assert!(std::env::var_os("CI").is_none(), "{} is missing: the test command builds it first", bin.display());
    eprintln!("SKIPPED ha: build palisade-server first (cargo build --bins)");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_replicas_under_applies_loses_no_acknowledged_apply_and_agents_converge_on_the_other() {
    let Some(bin) = server_bin() else { return };
    let Ok(base) = std::env::var("DATABASE_URL") else {
        assert!(std::env::var_os("CI").is_none(), "DATABASE_URL is required");
        eprintln!("SKIPPED ha: no DATABASE_URL");
        return;
    };
    let database = Database::create(&base).await;
    let pki = tempfile::tempdir().expect("tempdir");
    palisade_server::pki::init(pki.path(), &[]).expect("pki");
    // Migrates the database too, so the replicas do not race to.
    let token = palisade_server::create_token(&database.url, "ha-admin", palisade_server::auth::Role::Admin)
        .await
        .expect("admin token");
    // The first replica creates the bundle signing key; the second starts with the same one.
    let mut a = Replica::start(&bin, "a", &database.url, pki.path());
    let b = Replica::start(&bin, "b", &database.url, pki.path());
    let pool = sqlx::PgPool::connect(&database.url).await.expect("pool");
    let store = palisade_server::store::Store::new(pool);
    let ca = std::fs::read(pki.path().join("ca.crt")).expect("ca");

    let key = pki.path().join("bundle.key.pub").display().to_string();
    let shutdown = CancellationToken::new();
    // Every node starts at the replica its name hashes to; order each node's list so that
    // exactly half of them start on each replica.
    let sims: Vec<Sim> = (0..AGENTS)
        .map(|i| {
            let on_a_first = sync::Failover::first_for(&sim_name(i)).is_multiple_of(2);
            let urls = if on_a_first == i.is_multiple_of(2) {
                vec![a.url.clone(), b.url.clone()]
            } else {
                vec![b.url.clone(), a.url.clone()]
            };
            start_sim(i, urls, pki.path(), &key, &shutdown)
        })
        .collect();
    let stop = CancellationToken::new();
    let servers = format!("{},{}", a.url, b.url);
    let applies = tokio::spawn(applier(servers.clone(), ca.clone(), token.clone(), stop.clone()));

    // Steady state on both replicas first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = store.generation().await.expect("generation");
    assert!(before >= 5, "the applies move the generation: {before}");
    let steady = all_at(&store, &sims, before, Duration::from_secs(10)).await;
    eprintln!("ha: {AGENTS} agents at generation {before} on two replicas ({steady:?} after reading it)");

    a.kill();
    let killed = Instant::now();
    let at_kill = store.generation().await.expect("generation");
    // A generation only the survivor can have made.
    let after = palisade_testkit::poll(Duration::from_secs(5), || async {
        store.generation().await.ok().filter(|&g| g > at_kill)
    })
    .await
    .expect("an apply after the kill");
    all_at(&store, &sims, after, Duration::from_secs(10)).await;
    let converged = killed.elapsed();
    eprintln!(
        "ha: replica A killed at generation {at_kill}; every agent at post-kill generation {after} {:.0} ms after the kill",
        converged.as_secs_f64() * 1000.0
    );
    assert!(converged <= CONVERGE, "agents took {converged:?} to converge on the surviving replica");

    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    let acked = applies.await.expect("applier");
    let last = store.generation().await.expect("generation");
    all_at(&store, &sims, last, Duration::from_secs(5)).await;

    // Every acknowledged apply is stored, read back through the surviving replica.
    let (on_a, on_b) = (acked.iter().filter(|a| a.2 < killed).count(), acked.iter().filter(|a| a.2 > killed).count());
    eprintln!("ha: {on_a} applies acknowledged before the kill, {on_b} after");
    assert!(on_a >= 3 && on_b >= 3, "applies on both sides of the kill: {on_a} before, {on_b} after");
    let channel = client::channel(&servers, Some(&ca), None).await.expect("the survivor answers");
    let mut policies = PolicyServiceClient::new(client::with_token(channel, Some(&token)).expect("token"));
    for (name, revision, _) in &acked {
        let stored = policies
            .get_policy(v1::GetPolicyRequest { name: name.clone(), ..Default::default() })
            .await
            .unwrap_or_else(|s| panic!("acknowledged {name} is missing: {s:?}"))
            .into_inner();
        let got = stored.policy.expect("stored").revision;
        assert!(got >= *revision, "{name}: revision {got} < acknowledged {revision}");
    }

    // The CLI takes both replicas too, and uses the one that answers.
    let cli = bin.with_file_name("palisade");
    if cli.exists() {
        let out = Command::new(&cli)
            .args(["--server", &servers, "--ca-cert"])
            .arg(pki.path().join("ca.crt"))
            .args(["--token", &token, "list", "-o", "json"])
            .output()
            .expect("palisade list");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(&acked[0].0), "{stdout}");
    } else {
        assert!(std::env::var_os("CI").is_none(), "{} is missing", cli.display());
    }
    shutdown.cancel();
    drop(b);
}

/// A replica that accepts connections and never answers (a hung process, a half-dead load
/// balancer) costs an agent one open timeout, then it syncs with the next replica.
#[sqlx::test(migrator = "palisade_server::MIGRATOR")]
async fn a_replica_that_accepts_and_never_answers_is_left_after_the_open_timeout(pool: sqlx::PgPool) {
    let server = palisade_server::embedded::EmbeddedServer::start(pool.clone()).await.expect("server");
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_url = format!("https://{}", silent.local_addr().expect("addr"));
    // Accepts and holds every connection, reading nothing, writing nothing.
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let shutdown = CancellationToken::new();
    // Node 0 starts at the first replica its name hashes to: put the silent one there.
    let urls = if sync::Failover::first_for(&sim_name(0)).is_multiple_of(2) {
        vec![silent_url, server.url()]
    } else {
        vec![server.url(), silent_url]
    };
    let pki = server.pki_dir().expect("the embedded server's PKI").to_owned();
    let started = Instant::now();
    let sim = start_sim(0, urls, &pki, server.public_key_hex(), &shutdown);
    let store = palisade_server::store::Store::new(pool);
    let generation = store.generation().await.expect("generation");
    let took = palisade_testkit::poll(sync::OPEN_TIMEOUT + Duration::from_secs(10), || async {
        (generation_of(&sim) >= generation.max(1)).then(|| started.elapsed())
    })
    .await
    .expect("the node syncs through the replica that answers");
    assert!(took >= sync::OPEN_TIMEOUT, "it did try the silent replica first: {took:?}");
    eprintln!("ha: synced through the answering replica {took:?} after start (open timeout {:?})", sync::OPEN_TIMEOUT);
    shutdown.cancel();
    held.abort();
}
