//! `flow-bench` (root): what the sockops program adds to a TCP connection. Runs a loop of
//! connect + accept + close over loopback, from a cgroup a `connections` policy selects
//! (`observe: {}` and a 10,000-rule tune table), and the same loop with no program in the
//! same run, alternating; prints the ratio, the in-kernel run time per callback
//! (`BPF_ENABLE_STATS`, `run_time_ns / run_cnt`) and the records the agent decoded.
#![allow(clippy::print_stdout, reason = "the bench reports on stdout")]
#![allow(clippy::cast_precision_loss, reason = "nanosecond counts far below 2^52")]

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use palisade_agent::{
    flows::Aggregator,
    loader::{Datapath, Paths},
};
use palisade_compiler::{compile, policy::model::PolicySet, program::KernelOffsets};
use palisade_proto::{document, v1};

/// Connections per batch, batches per configuration.
const BATCH: usize = 3000;
const ROUNDS: usize = 5;
/// Tune rules in the table (none matches the loop's loopback peer).
const TUNE_RULES: usize = 10_000;

/// Flags.
#[derive(Debug, clap::Parser)]
#[command(name = "flow-bench", about = "per-connection cost of the sockops program (root)")]
struct Args {
    /// Tune rules in the table.
    #[arg(long, default_value_t = TUNE_RULES)]
    rules: usize,
}

fn policy(cgroup: &str, rules: usize) -> String {
    let mut yaml = format!(
        "name: bench\nworkload: {{cgroup: \"{cgroup}\"}}\nconnections:\n  observe: {{}}\n  tune:\n    rules:\n"
    );
    for i in 0..rules {
        // Hosts in 10.0.0.0/8 on varied ports: none is the loop's 127.0.0.1.
        let (a, b, c) = ((i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
        let _ = writeln!(
            yaml,
            "      - {{id: t{i}, cidrs: [10.{a}.{b}.{c}], ports: [{}], congestion: cubic}}",
            1 + i % 60_000
        );
    }
    yaml
}

fn offsets() -> anyhow::Result<KernelOffsets> {
    let blob = std::fs::read("/sys/kernel/btf/vmlinux").context("reading the kernel's BTF")?;
    let found = palisade_agent::btf::member_offsets(&blob, &palisade_contract::btf::FIELDS)?;
    let offsets = KernelOffsets::from_reported(|key| found.get(key).copied(), KernelOffsets::LINUX_6_12);
    anyhow::ensure!(offsets.sock.is_some(), "this kernel lacks a struct offset the sockops program needs");
    Ok(offsets)
}

/// `SO_LINGER` with a zero timeout: close sends a reset.
fn linger_zero(s: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: valid fd, option struct and length.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Connections between two drains of the ring buffer (the agent drains continuously; the
/// buffer holds ~1,900 flow records).
const DRAIN_EVERY: usize = 250;

/// One batch: nanoseconds per connect + accept + close with the drains' time taken out, and
/// the drains' nanoseconds per decoded record (what the agent spends on them: the ring-buffer
/// read, the decode, and the aggregation into the open window, as its threads do).
fn batch(
    listener: &TcpListener,
    target: SocketAddr,
    datapath: &mut Datapath,
    window: &mut Aggregator,
) -> anyhow::Result<(f64, f64, usize)> {
    let start = Instant::now();
    let (mut draining, mut records) = (std::time::Duration::ZERO, 0);
    for i in 0..BATCH {
        let client = TcpStream::connect(target)?;
        let (server, _) = listener.accept()?;
        // An abortive close: no TIME_WAIT pile-up over thousands of connections.
        linger_zero(&client)?;
        drop(client);
        drop(server);
        if i % DRAIN_EVERY == DRAIN_EVERY - 1 {
            let t = Instant::now();
            datapath.drain(&mut Vec::new());
            let flows = datapath.take_flows();
            records += flows.len();
            for flow in &flows {
                window.add(flow);
            }
            draining += t.elapsed();
        }
    }
    let loop_ns = start.elapsed().saturating_sub(draining).as_nanos() as f64 / BATCH as f64;
    Ok((loop_ns, draining.as_nanos() as f64 / records.max(1) as f64, records))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    // SAFETY: geteuid has no preconditions.
    anyhow::ensure!(unsafe { libc::geteuid() } == 0, "flow-bench loads BPF programs: run it as root");
    // SAFETY: unshare has no memory-safety preconditions; the process is single-threaded here.
    anyhow::ensure!(unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0, "unshare(CLONE_NEWNET)");
    let up = std::process::Command::new("ip").args(["link", "set", "lo", "up"]).status().context("ip")?;
    anyhow::ensure!(up.success(), "ip link set lo up");
    let offsets = offsets()?;
    let cgroup2 = palisade_agent::probe::cgroup2_mount().context("no cgroup2 mount")?;
    let path = format!("/palisade-flow-bench-{}", std::process::id());
    let dir = cgroup2.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())?;
    palisade_agent::sys::ensure_bpffs(std::path::Path::new("/sys/fs/bpf"))?;
    let pins = PathBuf::from(format!("/sys/fs/bpf/palisade-flow-bench-{}", std::process::id()));
    let _cleanup =
        palisade_integration::BenchCleanup { pins: pins.clone(), cgroup2: cgroup2.clone(), dir: dir.clone() };
    let state = tempfile::tempdir()?;
    let mut datapath =
        Datapath::new(Paths { bpffs: pins, state_dir: state.path().to_owned(), cgroup2, attach: dir.clone() });

    let started = Instant::now();
    let docs: Vec<v1::Policy> = document::parse_all(&policy(&path, args.rules))
        .into_iter()
        .map(|d| Ok(d?.to_proto()))
        .collect::<anyhow::Result<_>>()?;
    let compiled = compile(&PolicySet::new(docs.iter().map(|p| (p, 1)), Vec::new())?, offsets)?;
    println!("compiled {} tune rules in {:.0} ms", args.rules, started.elapsed().as_secs_f64() * 1000.0);
    let bundle = |generation| v1::Bundle {
        generation,
        digest: compiled.digest.clone(),
        content: compiled.bytes.clone().into(),
        ..Default::default()
    };

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let target = listener.local_addr()?;
    let mut window = Aggregator::new(Duration::from_secs(10), 10_000, Duration::ZERO);
    batch(&listener, target, &mut datapath, &mut window)?; // warm-up
    let (mut bare, mut with, mut drain_ns) = (Vec::new(), Vec::new(), Vec::new());
    let (mut run_ns, mut runs, mut records, mut untracked) = (0_u64, 0_u64, 0_usize, 0_u64);
    // Run-time statistics cost two clock reads per program run, so the loop figures are taken
    // with them off, and the in-kernel figure in one more round with them on.
    for round in 0..=ROUNDS {
        if round < ROUNDS {
            bare.push(batch(&listener, target, &mut datapath, &mut window)?.0);
        }
        datapath.apply(bundle(round as u64 + 1), &mut Vec::new())?;
        if round < ROUNDS {
            let (ns, per_record, n) = batch(&listener, target, &mut datapath, &mut window)?;
            with.push(ns);
            drain_ns.push(per_record);
            records += n;
        } else {
            let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
            let program = datapath.active_dir().context("active generation")?.join("prog_pal_sockops");
            let before = aya::programs::ProgramInfo::from_pin(&program)?;
            batch(&listener, target, &mut datapath, &mut window)?;
            let after = aya::programs::ProgramInfo::from_pin(&program)?;
            run_ns = u64::try_from(after.run_time().saturating_sub(before.run_time()).as_nanos()).unwrap_or(0);
            runs = after.run_count() - before.run_count();
        }
        datapath.drain(&mut Vec::new());
        let rest = datapath.take_flows().len();
        if round < ROUNDS {
            records += rest;
            untracked += datapath.flow_stats().1;
        }
        datapath.remove_all()?;
    }
    let (b, w, per_record) = (median(bare), median(with), median(drain_ns));
    println!("connect + accept + close on loopback, median of {ROUNDS} batches of {BATCH} (drains excluded):");
    println!("- no program (also every node without a connections section): {b:.0} ns");
    println!("- observe + {}-rule tune table: {w:.0} ns ({:.3}x no program)", args.rules, w / b);
    println!(
        "- in-kernel (one more batch, statistics on): {:.1} ns per sockops callback, {:.1} callbacks per connection (both ends)",
        run_ns as f64 / runs.max(1) as f64,
        runs as f64 / BATCH as f64
    );
    println!(
        "- flow records decoded: {records} of {} connection ends (dropped {}, untracked {}); {:.0} ns of agent time per record",
        2 * ROUNDS * BATCH,
        datapath.flows_dropped(),
        untracked,
        per_record
    );
    // Both ends of each connection are observed here: 2 records per connection.
    println!(
        "- agent CPU at 10,000 connections/s (20,000 records/s: read, decode, aggregate): {:.2}% of one core",
        per_record * 20_000.0 / 1e9 * 100.0
    );
    Ok(())
}
