//! `fleet-bench`: how fast a policy change reaches a fleet, measured against a real server
//! and PostgreSQL with simulated agents (real `Sync` streams, one HTTP/2 connection each,
//! that say hello and ACK every bundle at once; no kernel).
//!
//! For each fleet size it reports, over several applies: the `ApplyPolicy` RPC latency, the
//! time from the apply to each agent receiving the new bundle (p50/p99/max), the time until
//! the server has recorded each ACK (what `GetNode` shows), the server's RSS per connected
//! idle agent — and, in the same run as the baseline, raw tonic fan-out of the same bundle
//! bytes to the same number of streams (a minimal `AgentService` that only broadcasts),
//! with the ratio of the two p99s.
//!
//! With `--policies 10,10000` it measures policy scale instead (no agent): one
//! `ApplyPolicies` of that many stored 10-rule policies, `ApplyPolicy` of one more with them
//! stored, and `palisade apply -f DIR` of 1,000 files (the CLI next to the server binary).
//!
//! `cargo run --release -p palisade-integration --bin fleet-bench -- --agents 1000,10000`
//! (builds `palisade-server` first: `cargo build --release -p palisade-server`). Needs
//! `DATABASE_URL` (a database per fleet size is created and dropped) and raises its open-file
//! limit to the hard limit. The server runs `--dev` (plaintext): the figures are the fan-out's,
//! not TLS's.
#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a benchmark prints its table")]
#![allow(clippy::cast_precision_loss, reason = "durations and counts far below 2^52")]

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use clap::Parser;
use palisade_proto::v1::{
    self,
    agent_service_client::AgentServiceClient,
    agent_service_server::{AgentService, AgentServiceServer},
    apply_policy_request::Source,
    policy_service_client::PolicyServiceClient,
    sync_request::Message as Up,
    sync_response::Message as Down,
};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};
use tonic::transport::Endpoint;

/// Flags.
#[derive(Debug, Parser)]
#[command(name = "fleet-bench", about = "Policy fan-out to simulated agents against a real server")]
struct Args {
    /// Fleet sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    agents: Vec<usize>,
    /// Applies measured per fleet size.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The `palisade-server` binary (default: next to this one).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Agents connecting at once while the fleet starts.
    #[arg(long, default_value_t = 256)]
    connect_parallel: usize,
    /// Instead of fleets: measure applies against these numbers of stored policies (10 rules
    /// each, no agent): `ApplyPolicies` of them all in one call, then `ApplyPolicy` of one
    /// more with them stored; and `palisade apply -f DIR` of 1,000 such files.
    #[arg(long, value_delimiter = ',')]
    policies: Vec<usize>,
    /// Rules in the applied policy (its bundle grows with them: ~40 KB at 1, ~5 MB at
    /// 10,000).
    #[arg(long, default_value_t = 1)]
    rules: usize,
    /// Simulated agents that take bundles only whole, as agents from before bundle parts
    /// (for comparing the server's memory per agent).
    #[arg(long)]
    whole_bundles: bool,
    /// Internal: run the raw fan-out baseline server on this port, broadcasting the bundle in
    /// this file `--rounds` times once `--agents` streams are open.
    #[arg(long, hide = true)]
    raw_server: Option<u16>,
    /// Internal: the bundle bytes the raw server sends.
    #[arg(long, hide = true)]
    raw_bundle: Option<PathBuf>,
}

/// One receipt: which agent, which generation, when (wall clock: the raw baseline runs in
/// another process).
type Receipt = (usize, u64, SystemTime);

/// Percentiles of a sample of durations.
fn percentiles(mut sample: Vec<Duration>) -> (Duration, Duration, Duration) {
    if sample.is_empty() {
        return (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    }
    sample.sort();
    let at = |q: f64| sample[((sample.len() as f64 * q).ceil() as usize).clamp(1, sample.len()) - 1];
    (at(0.50), at(0.99), sample[sample.len() - 1])
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// A free port below the ephemeral range (32768–60999), so thousands of client sockets never
/// collide with it.
fn free_port() -> anyhow::Result<u16> {
    for port in (20_000..32_000).step_by(7) {
        let port = u16::try_from(port)?;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port between 20000 and 32000")
}

/// Raises the open-file limit to the hard limit (each agent holds one connection, and the
/// server one per agent).
fn raise_nofile() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// A simulated agent: one connection, one Sync stream; every bundle is reported to
/// `receipts` and acknowledged at once. Returns when the stream ends.
async fn agent(
    index: usize,
    url: String,
    receipts: mpsc::UnboundedSender<Receipt>,
    first: Option<Arc<Mutex<Vec<u8>>>>,
    whole: bool,
) -> anyhow::Result<()> {
    let channel = Endpoint::from_shared(url)?.connect().await?;
    let (up, rx) = mpsc::channel(4);
    let hello = v1::AgentHello {
        node_name: format!("sim-{index:05}"),
        labels: [("fleet".to_owned(), "bench".to_owned())].into(),
        features: Some(v1::KernelFeatures { kernel_release: "6.18.0-sim".into(), ..Default::default() }),
        agent_version: "fleet-bench".into(),
        // As real agents: bundles larger than a part come in parts.
        accepts_bundle_parts: !whole,
        ..Default::default()
    };
    up.send(v1::SyncRequest { message: Some(Up::Hello(hello)) }).await?;
    let mut down = AgentServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .sync(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut parts = palisade_agent::sync::Assembly::default();
    while let Some(message) = down.next().await {
        let bundle = match message?.message {
            Some(Down::Bundle(bundle)) => bundle,
            Some(Down::BundlePart(part)) => match parts.add(part)? {
                Some(bundle) => bundle,
                None => continue,
            },
            _ => continue,
        };
        let _ = receipts.send((index, bundle.generation, SystemTime::now()));
        if let Some(slot) = &first
            && let Ok(mut slot) = slot.lock()
            && slot.is_empty()
        {
            *slot = bundle.content.to_vec();
        }
        let ack = v1::BundleAck { generation: bundle.generation, digest: bundle.digest };
        if up.send(v1::SyncRequest { message: Some(Up::Ack(ack)) }).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Starts `n` agents against `url`, at most `parallel` connecting at once; returns once every
/// one has its stream open and its first bundle (or, against the raw server, its stream).
async fn start_fleet(
    n: usize,
    url: &str,
    parallel: usize,
    receipts: &mpsc::UnboundedSender<Receipt>,
    first: Option<Arc<Mutex<Vec<u8>>>>,
    whole: bool,
) -> Vec<tokio::task::JoinHandle<()>> {
    let slots = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut handles = Vec::with_capacity(n);
    for index in 0..n {
        let permit = slots.clone().acquire_owned().await.expect("semaphore open");
        let (url, receipts, first) = (url.to_owned(), receipts.clone(), first.clone());
        handles.push(tokio::spawn(async move {
            // The permit is held while connecting only.
            let task = agent(index, url, receipts, first, whole);
            tokio::pin!(task);
            let result = tokio::select! {
                r = &mut task => Some(r),
                () = tokio::time::sleep(Duration::from_millis(500)) => None,
            };
            drop(permit);
            let result = match result {
                Some(r) => r,
                None => task.await,
            };
            if let Err(error) = result {
                eprintln!("fleet-bench: agent {index}: {error:#}");
            }
        }));
    }
    handles
}

/// Waits until `count` receipts of a generation above `above` (per agent) arrived; returns
/// each agent's receipt time.
async fn receipts_after(
    rx: &mut mpsc::UnboundedReceiver<Receipt>,
    count: usize,
    above: &HashMap<usize, u64>,
    timeout: Duration,
) -> anyhow::Result<HashMap<usize, (u64, SystemTime)>> {
    let mut got = HashMap::with_capacity(count);
    let deadline = tokio::time::Instant::now() + timeout;
    while got.len() < count {
        let Ok(Some((index, generation, at))) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            bail!("only {} of {count} agents received a new bundle within {timeout:?}", got.len());
        };
        if generation > above.get(&index).copied().unwrap_or(0) {
            got.insert(index, (generation, at));
        }
    }
    Ok(got)
}

/// When each of `n` simulated nodes showed a generation above `before` applied (what
/// `GetNode` shows), polling a count every 2 ms, as offsets from `t0`.
async fn acks_recorded(pool: sqlx::PgPool, n: usize, before: i64, t0: SystemTime) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_mins(2);
    while times.len() < n {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM nodes WHERE name LIKE 'sim-%' AND applied_generation > $1")
                .bind(before)
                .fetch_one(&pool)
                .await?;
        let now = since(t0, SystemTime::now());
        let done = usize::try_from(done).unwrap_or(0).min(n);
        while times.len() < done {
            times.push(now);
        }
        if Instant::now() > deadline {
            bail!("only {} of {n} ACKs recorded within 120 s", times.len());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(times)
}

fn since(t0: SystemTime, at: SystemTime) -> Duration {
    at.duration_since(t0).unwrap_or_default()
}

fn policy(round: usize, rules: usize) -> v1::ApplyPolicyRequest {
    use std::fmt::Write as _;
    let mut doc = format!(
        "name: fleet-bench\nworkload: {{cgroup: /fleet-bench}}\nnetwork:\n  connect:\n    rules:\n      - {{id: r{round}, action: deny, cidrs: [10.{}.0.0/16], ports: [443]}}\n",
        round % 250
    );
    for i in 1..rules {
        let _ = writeln!(
            doc,
            "      - {{id: h{i}, action: deny, cidrs: [172.{}.{}.{}/32], ports: [{}]}}",
            16 + i / 62_500 % 16,
            i / 250 % 250,
            i % 250,
            1000 + i % 5000
        );
    }
    v1::ApplyPolicyRequest { source: Some(Source::Document(doc)), ..Default::default() }
}

/// Figures for one fleet size against the real server.
struct Real {
    apply: Vec<Duration>,
    receipt: Vec<Duration>,
    recorded: Vec<Duration>,
    rss_per_agent_kib: f64,
    bundle: Vec<u8>,
    /// Mean `ApplyPolicy` handler time as the server's metrics report it.
    apply_handler: Duration,
}

/// A `palisade-server --dev` process on `database`, serving; killed when dropped.
struct ServerProcess {
    child: tokio::process::Child,
    pid: u32,
    url: String,
    metrics_port: u16,
    admin: tonic::transport::Channel,
}

async fn start_server(server_bin: &PathBuf, database: &str, tag: &str) -> anyhow::Result<ServerProcess> {
    let (port, metrics_port) = {
        let first = std::net::TcpListener::bind(("127.0.0.1", free_port()?))?;
        let second = free_port()?;
        (first.local_addr()?.port(), second)
    };
    let log = std::fs::File::create(std::env::temp_dir().join(format!("fleet-bench-server-{tag}.log")))?;
    let mut server = tokio::process::Command::new(server_bin)
        .args(["--dev", "--listen", &format!("127.0.0.1:{port}"), "--database-url", database])
        .args(["--db-connections", "16", "--event-rate", "0"])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .env("PALISADE_LOG", std::env::var("FLEET_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".to_owned()))
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("start palisade-server")?;
    let pid = server.id().context("server pid")?;
    let url = format!("http://127.0.0.1:{port}");
    let admin = loop {
        if let Ok(channel) = Endpoint::from_shared(url.clone())?.connect().await {
            break channel;
        }
        if let Some(status) = server.try_wait()? {
            bail!("palisade-server exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Ok(ServerProcess { child: server, pid, url, metrics_port, admin })
}

async fn measure_real(args: &Args, n: usize, database: &str, server_bin: &PathBuf) -> anyhow::Result<Real> {
    let ServerProcess { child: mut server, pid, url, metrics_port, admin } =
        start_server(server_bin, database, &n.to_string()).await?;
    let mut policies = PolicyServiceClient::new(admin.clone());
    policies.apply_policy(policy(0, args.rules)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_before = rss_kib(pid);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let first = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let handles = start_fleet(n, &url, args.connect_parallel, &tx, Some(first.clone()), args.whole_bundles).await;
    let mut seen = receipts_after(&mut rx, n, &HashMap::new(), Duration::from_mins(5)).await?;
    eprintln!("fleet-bench: {n} agents connected and synced in {:.1} s", started.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_after = rss_kib(pid);
    let pool = sqlx::PgPool::connect(database).await?;
    let mut real = Real {
        apply: Vec::new(),
        receipt: Vec::new(),
        recorded: Vec::new(),
        rss_per_agent_kib: (idle_after.saturating_sub(idle_before)) as f64 / n as f64,
        bundle: first.lock().map(|b| b.clone()).unwrap_or_default(),
        apply_handler: Duration::ZERO,
    };
    for round in 1..=args.rounds {
        let above: HashMap<usize, u64> = seen.iter().map(|(i, (g, _))| (*i, *g)).collect();
        let t0 = SystemTime::now();
        let clock = Instant::now();
        // Every simulated agent has the same context, so the same generation before and after.
        let before = i64::try_from(above.values().copied().max().unwrap_or(0)).unwrap_or(i64::MAX);
        policies.apply_policy(policy(round, args.rules)).await?;
        real.apply.push(clock.elapsed());
        // ACK recorded, polled while the bundles go out (not after the last receipt).
        let recorded = tokio::spawn(acks_recorded(pool.clone(), n, before, t0));
        let got = receipts_after(&mut rx, n, &above, Duration::from_mins(2)).await?;
        real.receipt.extend(got.values().map(|(_, at)| since(t0, *at)));
        real.recorded.extend(recorded.await.context("the ACK poll")??);
        seen = got;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The server's own view of ApplyPolicy (handler time, without the answer's trip back).
    if let Ok(scrape) = palisade_metrics::scrape(format!("127.0.0.1:{metrics_port}").parse()?).await {
        let series =
            r#"palisade_server_grpc_request_duration_seconds_{}{method="palisade.v1.PolicyService/ApplyPolicy"}"#;
        let sum = palisade_metrics::sample(&scrape, &series.replace("{}", "sum"));
        let count = palisade_metrics::sample(&scrape, &series.replace("{}", "count"));
        if let (Some(sum), Some(count)) = (sum, count) {
            real.apply_handler = Duration::from_secs_f64(sum / count.max(1.0));
        }
    }
    for h in handles {
        h.abort();
    }
    pool.close().await;
    let _ = server.kill().await;
    Ok(real)
}

/// The raw baseline, client side: starts the raw server process, connects `n` agents, and
/// collects each round's receipt times from the wall-clock send times it prints.
async fn measure_raw(args: &Args, n: usize, bundle: &[u8]) -> anyhow::Result<Vec<Duration>> {
    let port = free_port()?;
    let file = std::env::temp_dir().join(format!("fleet-bench-bundle-{}", std::process::id()));
    std::fs::write(&file, bundle)?;
    let mut raw = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--raw-server", &port.to_string(), "--agents", &n.to_string(), "--rounds", &args.rounds.to_string()])
        .arg("--raw-bundle")
        .arg(&file)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(raw.stdout.take().context("stdout")?));
    let url = format!("http://127.0.0.1:{port}");
    loop {
        if Endpoint::from_shared(url.clone())?.connect().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handles = start_fleet(n, &url, args.connect_parallel, &tx, None, true).await;
    let mut sample = Vec::new();
    let mut above = HashMap::new();
    for _ in 0..args.rounds {
        let line = lines.next_line().await?.context("raw server ended")?;
        let sent: u128 = line.trim().parse().context("raw server's send time")?;
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(sent)?);
        let got = receipts_after(&mut rx, n, &above, Duration::from_mins(2)).await?;
        sample.extend(got.values().map(|(_, at)| since(t0, *at)));
        above = got.iter().map(|(i, (g, _))| (*i, *g)).collect();
    }
    for h in handles {
        h.abort();
    }
    let _ = raw.kill().await;
    let _ = std::fs::remove_file(&file);
    Ok(sample)
}

/// One stream's sending half.
type Outbound = mpsc::Sender<Result<v1::SyncResponse, tonic::Status>>;

/// The raw baseline server: streams register; once `agents` are open it sends the same
/// bundle to every stream, `rounds` times, printing each send's wall-clock start.
#[derive(Clone)]
struct RawServer {
    streams: Arc<Mutex<Vec<Outbound>>>,
}

type SyncStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::SyncResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for RawServer {
    type SyncStream = SyncStream;

    async fn sync(
        &self,
        request: tonic::Request<tonic::Streaming<v1::SyncRequest>>,
    ) -> Result<tonic::Response<Self::SyncStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        if let Ok(mut streams) = self.streams.lock() {
            streams.push(tx);
        }
        // Drain ACKs so the client's sends never block.
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_events(
        &self,
        _: tonic::Request<tonic::Streaming<v1::ReportEventsRequest>>,
    ) -> Result<tonic::Response<v1::ReportEventsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("raw baseline"))
    }

    async fn report_flows(
        &self,
        _: tonic::Request<tonic::Streaming<v1::ReportFlowsRequest>>,
    ) -> Result<tonic::Response<v1::ReportFlowsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("raw baseline"))
    }

    async fn report_capture(
        &self,
        _: tonic::Request<tonic::Streaming<v1::ReportCaptureRequest>>,
    ) -> Result<tonic::Response<v1::ReportCaptureResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("raw baseline"))
    }
}

async fn raw_server(port: u16, agents: usize, rounds: usize, bundle: PathBuf) -> anyhow::Result<()> {
    let content = std::fs::read(bundle)?;
    let server = RawServer { streams: Arc::new(Mutex::new(Vec::new())) };
    let streams = server.streams.clone();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(server).max_decoding_message_size(64 << 20))
            .serve(addr),
    );
    while streams.lock().map_or(0, |s| s.len()) < agents {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for round in 1..=rounds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let senders: Vec<_> = streams.lock().map(|s| s.clone()).unwrap_or_default();
        let sent = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_nanos();
        println!("{sent}");
        let bundle = v1::Bundle {
            generation: round as u64 + 1,
            digest: palisade_proto::sha256_hex(&content),
            content: content.clone().into(),
            ..Default::default()
        };
        for tx in senders {
            let message = v1::SyncResponse { message: Some(Down::Bundle(bundle.clone())) };
            let _ = tx.send(Ok(message)).await;
        }
    }
    tokio::time::sleep(Duration::from_hours(1)).await;
    Ok(())
}

/// Policy `name` with ten deny rules (distinct addresses per policy).
fn ten_rule_document(name: &str, index: usize) -> String {
    use std::fmt::Write as _;
    let mut doc =
        format!("name: {name}\nworkload: {{cgroup: /fleet-bench/{name}}}\nnetwork:\n  connect:\n    rules:\n");
    for r in 0..10 {
        let _ = writeln!(
            doc,
            "      - {{id: r{r}, action: deny, cidrs: [10.{}.{}.{r}/32], ports: [{}]}}",
            index / 250 % 250,
            index % 250,
            1000 + r
        );
    }
    doc
}

fn apply_request(doc: String) -> v1::ApplyPolicyRequest {
    v1::ApplyPolicyRequest { source: Some(Source::Document(doc)), ..Default::default() }
}

/// `--policies`: apply latency against stored policies, and the CLI's directory apply.
async fn measure_policies(args: &Args, base: &str, server_bin: &PathBuf) -> anyhow::Result<()> {
    println!(
        "| stored policies (10 rules each) | ApplyPolicies of them all | ApplyPolicy of one more, p50 / max of 20 |"
    );
    println!("|---:|---:|---|");
    let mut p50s = Vec::new();
    for &n in &args.policies {
        let name = format!("palisade_fleet_bench_{}_p{n}", std::process::id());
        let database = palisade_integration::create_database(base, &name).await?;
        let result = async {
            let server = start_server(server_bin, &database, &format!("p{n}")).await?;
            let mut policies = PolicyServiceClient::new(server.admin.clone())
                .max_encoding_message_size(256 << 20)
                .max_decoding_message_size(256 << 20);
            let batch = v1::ApplyPoliciesRequest {
                policies: (0..n).map(|i| apply_request(ten_rule_document(&format!("stored-{i:05}"), i))).collect(),
                ..Default::default()
            };
            let clock = Instant::now();
            policies.apply_policies(batch).await?;
            let all = clock.elapsed();
            let mut one = Vec::new();
            for round in 0..20 {
                let clock = Instant::now();
                policies.apply_policy(apply_request(ten_rule_document("one-more", 60_000 + round))).await?;
                one.push(clock.elapsed());
            }
            drop(server);
            anyhow::Ok((all, one))
        }
        .await;
        palisade_integration::drop_database_blocking(base, &name);
        let (all, one) = result?;
        let (p50, _, max) = percentiles(one);
        p50s.push(p50);
        println!("| {n} | {} | {} / {} |", ms(all), ms(p50), ms(max));
    }
    if let (Some(first), Some(last)) = (p50s.first(), p50s.last()) {
        println!(
            "\nApplyPolicy p50 at {} stored policies ÷ at {}: {:.2} (target <= 2)",
            args.policies.last().unwrap_or(&0),
            args.policies.first().unwrap_or(&0),
            last.as_secs_f64() / first.as_secs_f64().max(1e-9)
        );
    }
    // The CLI over a directory (what a GitOps sync does), on an empty database.
    let cli = server_bin.with_file_name("palisade");
    if !cli.exists() {
        println!("\n(palisade apply -f DIR not measured: {} is missing)", cli.display());
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    for i in 0..1000 {
        std::fs::write(dir.path().join(format!("p{i:04}.yaml")), ten_rule_document(&format!("dir-{i:04}"), i))?;
    }
    let name = format!("palisade_fleet_bench_{}_dir", std::process::id());
    let database = palisade_integration::create_database(base, &name).await?;
    let result = async {
        let server = start_server(server_bin, &database, "dir").await?;
        let clock = Instant::now();
        let out = tokio::process::Command::new(&cli)
            .args(["--server", &server.url, "apply", "-f"])
            .arg(dir.path())
            .output()
            .await?;
        let took = clock.elapsed();
        anyhow::ensure!(out.status.success(), "palisade apply -f: {}", String::from_utf8_lossy(&out.stderr));
        drop(server);
        anyhow::Ok(took)
    }
    .await;
    palisade_integration::drop_database_blocking(base, &name);
    println!("\n`palisade apply -f DIR`, 1,000 files of one 10-rule policy each: {} (target <= 2 s)", ms(result?));
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_nofile();
    if let Some(port) = args.raw_server {
        let bundle = args.raw_bundle.clone().context("--raw-bundle")?;
        return raw_server(port, args.agents.first().copied().unwrap_or(1), args.rounds, bundle).await;
    }
    let base = std::env::var("DATABASE_URL").context("set DATABASE_URL (scripts/ensure-postgres.sh prints one)")?;
    let server_bin = match &args.server {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("palisade-server"),
    };
    anyhow::ensure!(
        server_bin.exists(),
        "{} is missing: cargo build --release -p palisade-server",
        server_bin.display()
    );
    if !args.policies.is_empty() {
        return measure_policies(&args, &base, &server_bin).await;
    }
    println!(
        "| agents | apply RPC p50 / max (server-side mean) | receipt p50 / p99 / max | ACK recorded p50 / p99 / max | raw fan-out p50 / p99 / max | receipt p99 ÷ raw p99 | server RSS per idle agent |"
    );
    println!("|---:|---|---|---|---|---:|---:|");
    for &n in &args.agents {
        let name = format!("palisade_fleet_bench_{}_{n}", std::process::id());
        let database = palisade_integration::create_database(&base, &name).await?;
        let real = measure_real(&args, n, &database, &server_bin).await;
        palisade_integration::drop_database_blocking(&base, &name);
        let real = real?;
        let raw = measure_raw(&args, n, &real.bundle).await?;
        let (a50, _, amax) = percentiles(real.apply.clone());
        let (r50, r99, rmax) = percentiles(real.receipt.clone());
        let (c50, c99, cmax) = percentiles(real.recorded.clone());
        let (b50, b99, bmax) = percentiles(raw);
        println!(
            "| {n} | {} / {} ({}) | {} / {} / {} | {} / {} / {} | {} / {} / {} | {:.2} | {:.1} KiB |",
            ms(a50),
            ms(amax),
            ms(real.apply_handler),
            ms(r50),
            ms(r99),
            ms(rmax),
            ms(c50),
            ms(c99),
            ms(cmax),
            ms(b50),
            ms(b99),
            ms(bmax),
            r99.as_secs_f64() / b99.as_secs_f64().max(1e-9),
            real.rss_per_agent_kib
        );
    }
    Ok(())
}
