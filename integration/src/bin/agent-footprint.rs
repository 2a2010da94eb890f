//! `agent-footprint`: the node agent's memory, measured on the real binary against a real
//! server and PostgreSQL, enforcing in the real kernel.
//!
//! It starts a `--dev` server in-process on a database of its own, runs the agent binary
//! next to this one (`agent-process`, the agent's own `main`) attached to a cgroup it
//! creates, and reads the agent's `/proc/PID/status` (`VmRSS`, `RssAnon`, `RssFile`,
//! `VmHWM`) once idle with the empty bundle, once enforcing a 10,000-rule policy, and once
//! after that policy is deleted again.
//!
//! Then its CPU for flow records: with `connections.observe: {}` on the cgroup, the agent's
//! CPU time (`/proc/PID/stat`, every thread) over `--flow-seconds` idle, and
//! over the same time while `flow-probe loop` makes `--flow-rate` connections a second in
//! the cgroup (both ends observed: two records per connection). The connections the server
//! stored afterwards show the records were all read, aggregated and sent.
//!
//! `cargo build --release -p palisade-integration --bin agent-process --bin agent-footprint &&
//! sudo -E target/release/agent-footprint` (root: the agent loads programs; `DATABASE_URL`).
//! `--max-idle-mib N` fails the run when idle RSS exceeds N MiB.
#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a benchmark prints its table")]
#![allow(clippy::cast_precision_loss, reason = "memory sizes far below 2^52")]

use std::{
    fmt::Write as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use palisade_proto::v1::{self, apply_policy_request::Source, policy_service_client::PolicyServiceClient};

/// Flags.
#[derive(Debug, clap::Parser)]
#[command(name = "agent-footprint", about = "RSS of the node agent: idle, enforcing 10,000 rules, and after")]
struct Args {
    /// Rules in the large policy.
    #[arg(long, default_value_t = 10_000)]
    rules: usize,
    /// Exit non-zero when the idle RSS is above this many MiB.
    #[arg(long)]
    max_idle_mib: Option<f64>,
    /// Connections a second of the flow load.
    #[arg(long, default_value_t = 10_000)]
    flow_rate: usize,
    /// Length of the idle and the loaded CPU measurement.
    #[arg(long, default_value_t = 10)]
    flow_seconds: usize,
}

/// CPU time of process `pid` (every thread, exited ones included: `/proc/PID/stat` utime +
/// stime, in clock ticks), ns. Summing `/proc/PID/task/*` would lose the time of threads
/// that exit between two readings (tokio's blocking threads do, after 10 s idle).
fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("the agent's /proc stat")?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("a /proc stat line")?;
    let fields: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse().ok()).collect();
    anyhow::ensure!(fields.len() == 2, "utime and stime in {stat:?}");
    // SAFETY: sysconf has no preconditions.
    let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100).max(1);
    Ok((fields[0] + fields[1]) * 1_000_000_000 / ticks)
}

/// What the flow phase measured.
struct FlowLoad {
    idle_ns: u64,
    loaded_ns: u64,
    seconds: f64,
    connections: u64,
    workload_cpu_ns: u64,
    stored: i64,
    memory: Memory,
}

/// Prints the flow phase's figures.
fn print_flows(flows: &FlowLoad) {
    let share = |ns: u64| ns as f64 / (flows.seconds * 1e9) * 100.0;
    println!(
        "\nflow records: {} connections in {:.2} s ({:.0}/s, both ends observed: {:.0} records/s); the server stored {} \
         connection ends (want {})",
        flows.connections,
        flows.seconds,
        flows.connections as f64 / flows.seconds,
        2.0 * flows.connections as f64 / flows.seconds,
        flows.stored,
        2 * flows.connections
    );
    println!(
        "- agent CPU, idle with the observe policy: {:.2}% of one core; under the load: {:.2}% of one core (target <= 5%), \
         {:.0} ns per record",
        share(flows.idle_ns),
        share(flows.loaded_ns),
        flows.loaded_ns.saturating_sub(flows.idle_ns) as f64 / (2.0 * flows.connections.max(1) as f64)
    );
    println!(
        "- the workload's own CPU for the same connections (baseline): {:.2}% of one core; agent / workload = {:.3}",
        share(flows.workload_cpu_ns),
        flows.loaded_ns as f64 / flows.workload_cpu_ns.max(1) as f64
    );
}

/// The flow phase (module comment).
async fn flow_load(
    args: &Args,
    policies: &mut PolicyServiceClient<palisade_proto::client::Connection>,
    store: &palisade_server::store::Store,
    pool: &sqlx::PgPool,
    (node, agent_pid, cgroup, cgroup_dir): (&str, u32, &str, &std::path::Path),
) -> anyhow::Result<FlowLoad> {
    let probe = std::env::current_exe()?.with_file_name("flow-probe");
    anyhow::ensure!(probe.exists(), "{} is missing: build the flow-probe binary too", probe.display());
    let doc = format!("name: footprint-flows\nworkload: {{cgroup: {cgroup}}}\nconnections:\n  observe: {{}}\n");
    let request = v1::ApplyPolicyRequest { source: Some(Source::Document(doc)), ..Default::default() };
    policies.apply_policy(request).await.context("apply the observe policy")?;
    acknowledged(store, node, store.generation().await?).await?;
    let length = Duration::from_secs(args.flow_seconds as u64);
    let before = cpu_ns(agent_pid)?;
    tokio::time::sleep(length).await;
    let idle_ns = cpu_ns(agent_pid)?.saturating_sub(before);
    let before = cpu_ns(agent_pid)?;
    let output = tokio::process::Command::new(&probe)
        .arg("--cgroup")
        .arg(cgroup_dir)
        .args(["loop", &args.flow_rate.to_string(), &args.flow_seconds.to_string()])
        .output()
        .await
        .context("run flow-probe")?;
    let loaded_ns = cpu_ns(agent_pid)?.saturating_sub(before);
    let line = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(output.status.success(), "flow-probe: {line}");
    let field = |key: &str| -> anyhow::Result<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .with_context(|| format!("{key} in {line:?}"))
    };
    let (connections, seconds, workload_cpu_ns) = (field("connections")? as u64, field("seconds")?, field("cpu_ns")?);
    let memory = memory(agent_pid)?;
    // Both ends are observed; the last window is sent once it closes.
    let want = i64::try_from(2 * connections)?;
    let stored_now = || async {
        sqlx::query_scalar::<_, i64>("SELECT coalesce(sum(connections), 0)::bigint FROM flows WHERE node = $1")
            .bind(node)
            .fetch_one(pool)
            .await
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let mut stored = stored_now().await;
    while stored < want && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        stored = stored_now().await;
    }
    Ok(FlowLoad { idle_ns, loaded_ns, seconds, connections, workload_cpu_ns: workload_cpu_ns as u64, stored, memory })
}

/// Memory figures of a process, in KiB.
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    rss: u64,
    anon: u64,
    file: u64,
    peak: u64,
}

fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("the agent's /proc status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Memory { rss: field("VmRSS:"), anon: field("RssAnon:"), file: field("RssFile:"), peak: field("VmHWM:") })
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// A deny policy of `n` host rules for `cgroup`.
fn policy(n: usize, cgroup: &str) -> String {
    let mut doc = format!("name: footprint\nworkload: {{cgroup: {cgroup}}}\nnetwork:\n  connect:\n    rules:\n");
    for i in 0..n {
        let _ = writeln!(
            doc,
            "      - {{id: r{i}, action: deny, cidrs: [10.{}.{}.{}/32], ports: [{}]}}",
            i / 62_500 % 250,
            i / 250 % 250,
            i % 250,
            1000 + i % 5000
        );
    }
    doc
}

/// Everything the run made, removed on every exit path.
struct Cleanup {
    agent: Option<Child>,
    agent_bin: PathBuf,
    bpffs: PathBuf,
    state: PathBuf,
    cgroup_dir: PathBuf,
    base: String,
    database: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        // The agent's own uninstall removes its pins (and so its programs).
        let _ = Command::new(&self.agent_bin)
            .arg("--uninstall")
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--state-dir")
            .arg(&self.state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.bpffs);
        let _ = std::fs::remove_dir_all(&self.state);
        let _ = std::fs::remove_dir(&self.cgroup_dir);
        palisade_integration::drop_database_blocking(&self.base, &self.database);
    }
}

/// Waits until the node has acknowledged `generation`, then lets the agent settle.
async fn acknowledged(store: &palisade_server::store::Store, node: &str, generation: u64) -> anyhow::Result<()> {
    palisade_testkit::poll(Duration::from_mins(2), || async {
        store.get_node(node).await.ok().filter(|n| n.applied_generation >= generation).map(|_| ())
    })
    .await
    .with_context(|| format!("the agent did not acknowledge generation {generation}"))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    // SAFETY: geteuid has no preconditions.
    anyhow::ensure!(unsafe { libc::geteuid() } == 0, "the agent loads BPF programs: run agent-footprint as root");
    let agent_bin = std::env::current_exe()?.with_file_name("agent-process");
    anyhow::ensure!(agent_bin.exists(), "{} is missing: build the agent-process binary too", agent_bin.display());
    let base = std::env::var("DATABASE_URL").context("set DATABASE_URL (scripts/ensure-postgres.sh prints one)")?;
    let pid = std::process::id();
    let name = format!("palisade_footprint_{pid}");
    let cgroup = format!("/palisade-footprint-{pid}");
    let cgroup2 = palisade_agent::probe::cgroup2_mount().context("no cgroup2 mount")?;
    let mut cleanup = Cleanup {
        agent: None,
        agent_bin: agent_bin.clone(),
        bpffs: PathBuf::from(format!("/sys/fs/bpf/palisade-footprint-{pid}")),
        state: std::env::temp_dir().join(format!("palisade-footprint-{pid}")),
        cgroup_dir: cgroup2.join(cgroup.trim_start_matches('/')),
        base: base.clone(),
        database: name.clone(),
    };
    std::fs::create_dir_all(&cleanup.cgroup_dir)?;
    let database = palisade_integration::create_database(&base, &name).await?;
    let pool = sqlx::PgPool::connect(&database).await?;
    let pool_for_flows = pool.clone();
    palisade_server::MIGRATOR.run(&pool).await?;
    let store = palisade_server::store::Store::new(pool.clone());
    let server =
        palisade_server::embedded::EmbeddedServer::start_dev(pool, palisade_server::Options::default()).await?;
    let node = "footprint";
    let agent = Command::new(&agent_bin)
        .args(["--server", &server.url(), "--node-name", node, "--bundle-public-key", server.public_key_hex()])
        .arg("--bpffs")
        .arg(&cleanup.bpffs)
        .arg("--state-dir")
        .arg(&cleanup.state)
        .args(["--attach-cgroup", &cgroup])
        .env("PALISADE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("start the agent")?;
    let agent_pid = agent.id();
    cleanup.agent = Some(agent);

    let mut rows: Vec<(String, Memory)> = Vec::new();
    acknowledged(&store, node, store.generation().await?).await?;
    rows.push(("idle, the empty bundle enforced".to_owned(), memory(agent_pid)?));
    let mut policies = PolicyServiceClient::new(server.admin().await);
    let request =
        v1::ApplyPolicyRequest { source: Some(Source::Document(policy(args.rules, &cgroup))), ..Default::default() };
    policies.apply_policy(request).await.context("apply the large policy")?;
    acknowledged(&store, node, store.generation().await?).await?;
    rows.push((format!("enforcing {} rules", args.rules), memory(agent_pid)?));
    policies
        .delete_policy(v1::DeletePolicyRequest { name: "footprint".into(), ..Default::default() })
        .await
        .context("delete the large policy")?;
    acknowledged(&store, node, store.generation().await?).await?;
    rows.push(("idle again, after the policy was deleted".to_owned(), memory(agent_pid)?));
    let flows =
        flow_load(&args, &mut policies, &store, &pool_for_flows, (node, agent_pid, &cgroup, &cleanup.cgroup_dir))
            .await?;
    rows.push((format!("after {} connections/s observed", args.flow_rate), flows.memory));
    if let Some(mut child) = cleanup.agent.take() {
        let _ = child.kill();
        let status = child.wait()?;
        if !status.success() && status.code().is_some() {
            bail!("the agent exited: {status}");
        }
    }

    println!("palisade-agent memory ({}):\n", agent_bin.display());
    println!("| state | RSS | anonymous | file-backed | peak RSS so far |");
    println!("|---|---:|---:|---:|---:|");
    for (state, m) in &rows {
        println!("| {state} | {} | {} | {} | {} |", mib(m.rss), mib(m.anon), mib(m.file), mib(m.peak));
    }
    print_flows(&flows);
    let idle = rows[0].1.rss as f64 / 1024.0;
    println!("\nidle RSS: {idle:.1} MiB (target <= 24 MiB)");
    if let Some(max) = args.max_idle_mib {
        anyhow::ensure!(idle <= max, "idle RSS {idle:.1} MiB is above --max-idle-mib {max}");
    }
    Ok(())
}
