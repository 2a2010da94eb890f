//! `palisade-bench`: the performance figures of docs/performance.md, measured in one run.
//!
//! - `connect()` cost to an IPv4 and an IPv6 destination with no program, an empty program on
//!   the same hook, and Palisade bundles of 10, 1,000 and 10,000 rules (mixed IPv4/IPv6 CIDRs
//!   with overlapping prefixes, ports, ranges), interleaved over several rounds so machine
//!   noise hits every configuration;
//! - compile time for 10, 1,000 and 10,000 rules;
//! - bundle size, instruction counts and map entries.
//!
//! Run as root: `cargo run --release -p palisade-integration --bin palisade-bench` (add
//! `-- --lookup-costs` for the cost of one lookup per map kind). The
//! process moves itself into a cgroup it creates and a network namespace of its own (so the
//! IPv6 test prefix can be routed to `lo`), attaches there only, and cleans up.
#![allow(clippy::print_stdout, reason = "a benchmark prints its table")]
#![allow(clippy::cast_precision_loss, reason = "nanosecond counts far below 2^52")]

use std::{
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use palisade_agent::loader::{Datapath, Paths};
use palisade_compiler::{
    Compiled,
    bpf::{
        asm::Asm,
        elf::{ElfProgram, write},
        insn,
    },
    compile,
    policy::model::{Action, Default, Mode, Policy, PolicySet, Ports, Protocol, Rule, Section},
    program::{self, Hook, KernelOffsets},
};
use palisade_proto::v1;
use prost::Message as _;

const OFFSETS: KernelOffsets = KernelOffsets::LINUX_6_12;
const ROUNDS: usize = 11;
const CONNECTS: usize = 200_000;

/// A small deterministic generator (xorshift), so every run benchmarks the same rules.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// How rule prefixes are spread.
#[derive(Debug, Clone, Copy)]
enum Profile {
    /// Mostly hosts and small subnets under a few supernets, like real allow-lists:
    /// 70 % /32 (/128), 20 % /24–/31 (/64–/127), 9 % /16–/23 (/48–/63), 1 % /8–/15 (/32–/47).
    Hosts,
    /// Prefix lengths uniform over /8–/32 (/32–/128): many nested supernets, the worst case
    /// for the partition (every supernet rule is replicated into the regions below it).
    Uniform,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Self::Hosts => "hosts",
            Self::Uniform => "uniform",
        }
    }

    /// A prefix length within `min..=max` for this profile.
    fn length(self, rng: &mut Rng, min: u8, max: u8) -> u8 {
        let span = max - min;
        match self {
            Self::Uniform => min + rng.below(u64::from(span) + 1) as u8,
            Self::Hosts => {
                let quarter = span / 4;
                match rng.below(100) {
                    0 => min + rng.below(u64::from(quarter)) as u8,
                    1..=9 => min + quarter + rng.below(u64::from(quarter)) as u8,
                    10..=29 => min + 2 * quarter + rng.below(u64::from(max - min - 2 * quarter)) as u8,
                    _ => max,
                }
            }
        }
    }
}

/// `n` rules: IPv4 prefixes inside 127.0.0.0/8 and 10.0.0.0/8 and IPv6 prefixes inside
/// `2001:db8::/32`, overlapping by construction; ports and ranges from 10 up, so the
/// measured destination (127.1.2.3, UDP port 9) walks deep into the tries and is allowed.
fn rules(n: usize, profile: Profile) -> Vec<Rule> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|i| {
            let net = match rng.below(3) {
                0 => {
                    let len = profile.length(&mut rng, 8, 32);
                    let addr = u32::from_be_bytes([127, 0, 0, 0]) | (rng.next() as u32 & 0x00ff_ffff);
                    ipnet::Ipv4Net::new(addr.into(), len).map(|n| n.trunc().into())
                }
                1 => {
                    let len = profile.length(&mut rng, 8, 32);
                    let addr = u32::from_be_bytes([10, 0, 0, 0]) | (rng.next() as u32 & 0x00ff_ffff);
                    ipnet::Ipv4Net::new(addr.into(), len).map(|n| n.trunc().into())
                }
                _ => {
                    let len = profile.length(&mut rng, 32, 128);
                    let addr =
                        (0x2001_0db8_u128 << 96) | (u128::from(rng.next()) << 32) | u128::from(rng.next() as u32);
                    ipnet::Ipv6Net::new(addr.into(), len).map(|n| n.trunc().into())
                }
            }
            .expect("valid prefix");
            let first = 10 + rng.below(60_000) as u16;
            let ports = if rng.below(3) == 0 {
                vec![Ports { first, last: first.saturating_add(rng.below(2000) as u16) }]
            } else {
                vec![Ports { first, last: first }]
            };
            let action = [Action::Deny, Action::Allow, Action::Audit][rng.below(3) as usize];
            let protocols = [vec![], vec![Protocol::Tcp], vec![Protocol::Udp]][rng.below(3) as usize].clone();
            Rule { id: format!("r{i}"), action, nets: vec![net], ports, protocols }
        })
        .collect()
}

fn set(n: usize, profile: Profile, cgroup: &str) -> PolicySet {
    PolicySet {
        policies: vec![Policy {
            name: "bench".into(),
            revision: 1,
            mode: Mode::Enforce,
            cgroup: palisade_compiler::policy::model::cgroup_components(cgroup),
            uid: None,
            connect: Some(Section { default: Default::Allow, rules: rules(n, profile) }),
            bind: None,
            exec: None,
            files: None,
            observe: None,
            tune: None,
            tune_settings: Vec::new(),
        }],
        failsafe: Vec::new(),
    }
}

fn bundle(generation: u64, compiled: &Compiled) -> v1::Bundle {
    v1::Bundle {
        generation,
        digest: compiled.digest.clone(),
        content: compiled.bytes.clone().into(),
        ..std::default::Default::default()
    }
}

/// A bundle whose connect programs only `return 1`: the cost of the hook itself.
fn empty_bundle(generation: u64) -> anyhow::Result<v1::Bundle> {
    probe_bundle(generation, &[Hook::Connect4, Hook::Connect6], Vec::new(), |_| {})
}

/// A bundle whose programs on `hooks` run `body`, then return 1, with `maps`.
fn probe_bundle(
    generation: u64,
    hooks: &[Hook],
    maps: Vec<v1::BundleMap>,
    body: impl Fn(&mut Asm),
) -> anyhow::Result<v1::Bundle> {
    let mut a = Asm::new();
    body(&mut a);
    a.push(insn::mov64_imm(insn::R0, 1));
    a.push(insn::exit());
    let program = a.finish()?;
    let programs: Vec<_> =
        hooks.iter().map(|h| ElfProgram { name: h.symbol(), section: h.section(), program: &program }).collect();
    let content = v1::BundleContent {
        format: 1,
        elf: write(&programs, &palisade_compiler::bundle::map_defs(&maps))?,
        programs: hooks
            .iter()
            .map(|h| v1::BundleProgram {
                name: h.symbol().into(),
                section: h.section().into(),
                hook: h.id(),
                instructions: program.insns.len() as u32,
            })
            .collect(),
        maps,
        ..v1::BundleContent::default()
    };
    let bytes = content.encode_to_vec();
    Ok(v1::Bundle {
        generation,
        digest: palisade_proto::sha256_hex(&bytes),
        content: bytes.into(),
        ..std::default::Default::default()
    })
}

/// A static map holding `entries`, with at least `min_slots` slots.
fn static_map(
    name: &str,
    map_type: u32,
    key: u32,
    value: u32,
    min_slots: u32,
    entries: Vec<v1::MapEntry>,
) -> v1::BundleMap {
    let mut m = palisade_compiler::bundle::map(name, v1::MapRole::Static, map_type, key, value, entries);
    m.max_entries = m.max_entries.max(min_slots);
    m
}

/// The measured destination as the programs see it (network order, read as a little-endian u32).
const TARGET: [u8; 4] = [127, 1, 2, 3];

/// An LPM trie keyed `(64, workload 1, address)` (as the first decision core's was) holding the IPv4 prefixes of
/// `n` rules of the `hosts` profile plus the destination's /8, /16, /24 and /32, and a
/// program that looks the destination up once.
fn lpm_probe(generation: u64, n: usize) -> anyhow::Result<v1::Bundle> {
    let mut entries = Vec::new();
    let mut key = |len: u8, addr: [u8; 4]| {
        let mut k = (32 + u32::from(len)).to_le_bytes().to_vec();
        k.extend_from_slice(&1_u32.to_le_bytes());
        k.extend_from_slice(&addr);
        entries.push(v1::MapEntry { key: k, value: 7_u32.to_le_bytes().to_vec() });
    };
    for len in [8, 16, 24, 32] {
        let net = ipnet::Ipv4Net::new(TARGET.into(), len)?.trunc();
        key(len, net.network().octets());
    }
    for rule in rules(n, Profile::Hosts) {
        if let Some(ipnet::IpNet::V4(net)) = rule.nets.first() {
            key(net.prefix_len(), net.network().octets());
        }
    }
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    entries.dedup_by(|a, b| a.key == b.key);
    let map = static_map("lc_lpm", 11, 12, 4, 0, entries);
    probe_bundle(generation, &[Hook::Connect4], vec![map], |a| {
        a.push(insn::st(insn::Size::W, insn::R10, -16, 64));
        a.push(insn::st(insn::Size::W, insn::R10, -12, 1));
        a.push(insn::st(insn::Size::W, insn::R10, -8, i32::from_le_bytes(TARGET)));
        program::lookup(a, "lc_lpm", -16);
    })
}

/// A stride-8 walk: `steps` dependent `BPF_MAP_TYPE_ARRAY` lookups (the verifier inlines
/// them), node `v` byte `b` at index `v * 256 + b`, the destination's four bytes over and
/// over, in an array of 2^20 slots.
fn array_probe(generation: u64, steps: usize) -> anyhow::Result<v1::Bundle> {
    let mut entries = Vec::new();
    let mut node = 1_u32;
    for &byte in TARGET.iter().cycle().take(steps) {
        let index = node * 256 + u32::from(byte);
        node += 1;
        entries.push(v1::MapEntry { key: index.to_le_bytes().to_vec(), value: node.to_le_bytes().to_vec() });
    }
    let map = static_map("lc_array", 2, 4, 4, 1 << 20, entries);
    probe_bundle(generation, &[Hook::Connect4], vec![map], |a| {
        let done = a.label();
        a.push(insn::mov64_imm(insn::R6, 1));
        for &byte in TARGET.iter().cycle().take(steps) {
            a.push(insn::alu64_imm(insn::Alu::Lsh, insn::R6, 8));
            a.push(insn::alu64_imm(insn::Alu::Add, insn::R6, i32::from(byte)));
            a.push(insn::stx(insn::Size::W, insn::R10, insn::R6, -4));
            program::lookup(a, "lc_array", -4);
            a.jmp_imm(insn::Jmp::Jeq, insn::R0, 0, done);
            a.push(insn::ldx(insn::Size::W, insn::R6, insn::R0, 0));
        }
        a.bind(done);
    })
}

/// One lookup in a hash map of 10,000 `u64` keys (the destination's among them).
fn hash_probe(generation: u64) -> anyhow::Result<v1::Bundle> {
    let target = u64::from(u32::from_le_bytes(TARGET)) | (1 << 32);
    let entries = (0..10_000_u64)
        .map(|i| if i == 0 { target } else { target ^ (i << 40) })
        .map(|k| v1::MapEntry { key: k.to_le_bytes().to_vec(), value: 7_u32.to_le_bytes().to_vec() })
        .collect();
    let map = static_map("lc_hash", 1, 8, 4, 0, entries);
    probe_bundle(generation, &[Hook::Connect4], vec![map], |a| {
        a.push(insn::st(insn::Size::W, insn::R10, -8, i32::from_le_bytes(TARGET)));
        a.push(insn::st(insn::Size::W, insn::R10, -4, 1));
        program::lookup(a, "lc_hash", -8);
    })
}

/// `--lookup-costs`: what one lookup of each map kind costs on the connect path, measured
/// like the main table (interleaved rounds, overhead against no program in the same run).
/// The numbers behind the choice of structures for the decision core.
fn run_lookup_costs(datapath: &mut Datapath) -> anyhow::Result<()> {
    let target: SocketAddr = "127.1.2.3:9".parse()?;
    let names = [
        "no program",
        "empty program",
        "1 LPM lookup, 10 rules' prefixes",
        "1 LPM lookup, 10,000 rules' prefixes",
        "4 dependent array lookups (stride-8 walk)",
        "16 dependent array lookups (the longest IPv6 walk)",
        "1 hash lookup, 10,000 keys",
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut generation = 0;
    let mut drained = Vec::new();
    // Single lookups are small against the machine's noise: three times the rounds.
    for _ in 0..3 * ROUNDS {
        for (i, sample) in samples.iter_mut().enumerate() {
            generation += 1;
            match i {
                0 => datapath.remove_all()?,
                1 => datapath.apply(empty_bundle(generation)?, &mut drained)?,
                2 => datapath.apply(lpm_probe(generation, 10)?, &mut drained)?,
                3 => datapath.apply(lpm_probe(generation, 10_000)?, &mut drained)?,
                4 => datapath.apply(array_probe(generation, 4)?, &mut drained)?,
                5 => datapath.apply(array_probe(generation, 16)?, &mut drained)?,
                _ => datapath.apply(hash_probe(generation)?, &mut drained)?,
            }
            std::thread::sleep(Duration::from_millis(20));
            sample.push(connect_ns(target)?);
        }
    }
    let m: Vec<f64> = samples.into_iter().map(median).collect();
    println!("Lookup costs on the cgroup/connect4 path, median of {} interleaved rounds:\n", 3 * ROUNDS);
    println!("| configuration | ns per connect | above the empty program |");
    println!("|---|---:|---:|");
    for (name, ns) in names.iter().zip(&m) {
        println!("| {name} | {ns:.0} | {:+.0} ns |", ns - m[1]);
    }
    println!();
    println!("- LPM lookup, 10,000 rules' prefixes vs 10: {:.2}x", (m[3] - m[1]) / (m[2] - m[1]));
    println!(
        "- one inlined array lookup: {:+.1} ns (4 steps), {:+.1} ns (16 steps)",
        (m[4] - m[1]) / 4.0,
        (m[5] - m[1]) / 16.0
    );
    Ok(())
}

/// Nanoseconds per UDP `connect()` to `target`, best of 3 batches.
fn connect_ns(target: SocketAddr) -> anyhow::Result<f64> {
    let socket = UdpSocket::bind(if target.is_ipv4() { "127.0.0.1:0" } else { "[::]:0" })?;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        for _ in 0..CONNECTS / 3 {
            socket.connect(target)?;
        }
        best = best.min(start.elapsed().as_nanos() as f64 / (CONNECTS / 3) as f64);
    }
    Ok(best)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn compile_ms(set: &PolicySet) -> f64 {
    let runs: Vec<f64> = (0..3)
        .map(|_| {
            let start = Instant::now();
            let _ = compile(set, OFFSETS);
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    median(runs)
}

/// Flags.
#[derive(Debug, clap::Parser)]
#[command(name = "palisade-bench", about = "connect() cost with Palisade bundles, compile times and sizes (root)")]
struct Args {
    /// Only the compile table (no privileges needed).
    #[arg(long)]
    compile_only: bool,
    /// The cost of one lookup per map kind on the connect path instead of the main tables.
    #[arg(long)]
    lookup_costs: bool,
    /// Limit the compile table to one rule profile.
    #[arg(long, value_parser = ["hosts", "uniform"])]
    profile: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    if args.compile_only {
        return compile_table("/palisade-bench", args.profile.as_deref());
    }
    let lookup_costs = args.lookup_costs;
    // SAFETY: geteuid has no preconditions.
    anyhow::ensure!(unsafe { libc::geteuid() } == 0, "palisade-bench loads BPF programs: run it as root");
    isolate_network()?;
    let cgroup2 = palisade_agent::probe::cgroup2_mount().context("no cgroup2 mount")?;
    let path = format!("/palisade-bench-{}", std::process::id());
    let dir = cgroup2.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(&dir)?;
    let original = std::fs::read_to_string("/proc/self/cgroup")?;
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())?;
    palisade_agent::sys::ensure_bpffs(std::path::Path::new("/sys/fs/bpf"))?;
    let pins = PathBuf::from(format!("/sys/fs/bpf/palisade-bench-{}", std::process::id()));
    let _cleanup =
        palisade_integration::BenchCleanup { pins: pins.clone(), cgroup2: cgroup2.clone(), dir: dir.clone() };
    let state = tempfile::tempdir()?;
    let mut datapath = Datapath::new(Paths {
        bpffs: pins,
        state_dir: state.path().to_owned(),
        cgroup2: cgroup2.clone(),
        attach: dir.clone(),
    });
    let result =
        if lookup_costs { run_lookup_costs(&mut datapath) } else { run(&mut datapath, &path, args.profile.as_deref()) };
    if let Err(error) = datapath.remove_all() {
        eprintln!("palisade-bench: removing the pins: {error}; removing the directory instead");
    }
    let _ = original;
    result
}

/// The IPv6 destination the connect figures use: the network address of the first `/128`
/// rule of `set` with its last bit flipped, so the walk follows that rule's nodes to the
/// last byte and ends on the enclosing region (port 9 lies below every rule's ports, so the
/// connect is allowed without an event, like the IPv4 one).
fn deep_v6_target(set: &PolicySet) -> anyhow::Result<SocketAddr> {
    let rules = set.policies.first().and_then(|p| p.connect.as_ref()).map_or(&[][..], |c| c.rules.as_slice());
    let host = rules
        .iter()
        .flat_map(|r| &r.nets)
        .find_map(|n| match n {
            ipnet::IpNet::V6(n) if n.prefix_len() == 128 => Some(n.network()),
            _ => None,
        })
        .context("no IPv6 host rule")?;
    let flipped = std::net::Ipv6Addr::from(u128::from(host) ^ 1);
    Ok(SocketAddr::new(flipped.into(), 9))
}

/// Moves the process into a network namespace of its own with `lo` up and
/// `2001:db8::/32` routed locally, so IPv6 connects to the rules' space succeed (cgroup hooks
/// do not care about namespaces).
fn isolate_network() -> anyhow::Result<()> {
    // SAFETY: unshare has no memory-safety preconditions; the process is single-threaded here.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    anyhow::ensure!(rc == 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
    for args in [&["link", "set", "lo", "up"][..], &["-6", "route", "add", "local", "2001:db8::/32", "dev", "lo"]] {
        let status = std::process::Command::new("ip").args(args).status().context("running ip (iproute2)")?;
        anyhow::ensure!(status.success(), "ip {}: {status}", args.join(" "));
    }
    Ok(())
}

/// Cumulative run time (ns) and run count of the enforced generation's cgroup connect
/// program for `family` (0: IPv4, 1: IPv6), from `bpf_prog_info`; counted while run-time
/// statistics are on.
fn kernel_runs(datapath: &Datapath, family: usize) -> Option<(u64, u64)> {
    let program = if family == 0 { "prog_pal_connect4" } else { "prog_pal_connect6" };
    let info = aya::programs::ProgramInfo::from_pin(datapath.active_dir()?.join(program)).ok()?;
    Some((u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX), info.run_count()))
}

/// Mean in-kernel ns per run between two [`kernel_runs`] readings.
fn per_run(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((t0, n0), (t1, n1)) = (before?, after?);
    (n1 > n0).then(|| (t1 - t0) as f64 / (n1 - n0) as f64)
}

fn run(datapath: &mut Datapath, cgroup: &str, only: Option<&str>) -> anyhow::Result<()> {
    let sizes = [10_usize, 1_000, 10_000, 100_000];
    let sets: Vec<PolicySet> = sizes.iter().map(|&n| set(n, Profile::Hosts, cgroup)).collect();
    let compiled: Vec<Compiled> = sets.iter().map(|s| compile(s, OFFSETS)).collect::<Result<_, _>>()?;
    let targets: [SocketAddr; 2] = ["127.1.2.3:9".parse()?, deep_v6_target(&sets[2])?];
    let mut drained = Vec::new();
    let mut generation = 0;
    let names = ["no program", "empty program", "10 rules", "1,000 rules", "10,000 rules", "100,000 rules"];
    let mut samples: Vec<[Vec<f64>; 2]> = vec![[Vec::new(), Vec::new()]; names.len()];
    // The kernel's own figure: run time per program run while this fd is open
    // (BPF_ENABLE_STATS, as `kernel.bpf_stats_enabled=1` but only for this process's life).
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let mut in_kernel: Vec<[Vec<f64>; 2]> = vec![[Vec::new(), Vec::new()]; names.len()];
    // How long the agent's datapath takes to make each bundle enforce (load, verify, fill the
    // maps, attach, release the previous generation), per rule count.
    let mut applies: Vec<Vec<f64>> = vec![Vec::new(); sizes.len()];
    for _ in 0..ROUNDS {
        for (i, _) in names.iter().enumerate() {
            generation += 1;
            match i {
                0 => datapath.remove_all()?,
                1 => datapath.apply(empty_bundle(generation)?, &mut drained)?,
                _ => {
                    let started = Instant::now();
                    datapath.apply(bundle(generation, &compiled[i - 2]), &mut drained)?;
                    applies[i - 2].push(started.elapsed().as_secs_f64() * 1000.0);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
            for (family, target) in targets.iter().enumerate() {
                let before = kernel_runs(datapath, family);
                samples[i][family].push(connect_ns(*target)?);
                if let Some(ns) = per_run(before, kernel_runs(datapath, family)) {
                    in_kernel[i][family].push(ns);
                }
            }
        }
    }
    anyhow::ensure!(drained.is_empty(), "the measured connects must be allowed without events");
    let m: Vec<[f64; 2]> = samples.into_iter().map(|[v4, v6]| [median(v4), median(v6)]).collect();
    println!("connect() from a selected cgroup, UDP, rules of the `hosts` profile, median of {ROUNDS}");
    println!("interleaved rounds of {CONNECTS} connects to each destination:\n");
    println!(
        "| configuration | {} ns | overhead | in-kernel ns per run | {} ns | overhead | in-kernel ns per run |",
        targets[0], targets[1]
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let k: Vec<[Option<f64>; 2]> = in_kernel
        .into_iter()
        .map(|[v4, v6]| [(!v4.is_empty()).then(|| median(v4)), (!v6.is_empty()).then(|| median(v6))])
        .collect();
    let shown = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    for ((name, ns), k) in names.iter().zip(&m).zip(&k) {
        println!(
            "| {name} | {:.0} | {:+.0} ns | {} | {:.0} | {:+.0} ns | {} |",
            ns[0],
            ns[0] - m[0][0],
            shown(k[0]),
            ns[1],
            ns[1] - m[0][1],
            shown(k[1])
        );
    }
    for (family, label) in ["IPv4", "IPv6"].iter().enumerate() {
        let overhead = |i: usize| m[i][family] - m[0][family];
        let steps: Vec<String> = compiled
            .iter()
            .map(|c| {
                let layout = &c.plan(palisade_compiler::policy::model::Operation::Connect).layout;
                layout.region(1, targets[family].ip()).map_or_else(|| "-".to_owned(), |(_, n)| n.to_string())
            })
            .collect();
        println!();
        println!("{label} (address steps with 10 / 1,000 / 10,000 rules: {}):", steps.join(" / "));
        println!("- empty program (hook cost): {:+.0} ns", overhead(1));
        println!("- 10,000 rules vs 10 rules, overhead ratio: {:.2}x (target <= 1.10x)", overhead(4) / overhead(2));
        println!("- 10,000 rules above the empty program: {:+.0} ns (target <= 100 ns)", overhead(4) - overhead(1));
        println!("- 100,000 rules vs 10 rules, overhead ratio: {:.2}x", overhead(5) / overhead(2));
        if let (Some(ten), Some(big), Some(huge)) = (k[2][family], k[4][family], k[5][family]) {
            println!(
                "- in-kernel run time, 10,000 / 100,000 rules vs 10 rules: {:.2}x / {:.2}x (target at 100,000 <= 1.10x)",
                big / ten,
                huge / ten
            );
        }
    }
    println!();
    let applies: Vec<String> = applies.into_iter().map(|a| format!("{:.1}", median(a))).collect();
    println!(
        "Applying a bundle on the node (load, verify, fill, attach, release the previous one), median ms for 10 / 1,000 / 10,000 / 100,000 rules: {}",
        applies.join(" / ")
    );
    println!();
    compile_table(cgroup, only)
}

/// Compile time and sizes for both profiles (needs no privileges: `--compile-only`).
fn compile_table(cgroup: &str, only: Option<&str>) -> anyhow::Result<()> {
    println!(
        "| profile | rules | compile (ms, median of 3) | bundle bytes | instructions per program (connect4/connect6/lsm connect/bind4/bind6/lsm bind/lsm exec/lsm file) | map entries filled | kernel memory of the maps (MiB, estimated) |"
    );
    println!("|---|---:|---:|---:|---|---:|---:|");
    // `--profile hosts|uniform` limits the table to one profile (handy under a profiler).
    for profile in [Profile::Hosts, Profile::Uniform] {
        if only.is_some_and(|o| o != profile.name()) {
            continue;
        }
        for n in [10_usize, 1_000, 10_000, 100_000] {
            let s = set(n, profile, cgroup);
            let c = compile(&s, OFFSETS)?;
            let insns: Vec<String> = c.programs.iter().map(|(_, p)| p.insns.len().to_string()).collect();
            let entries: usize = c.content.maps.iter().map(v1::BundleMap::filled).sum();
            let bytes: u64 = c.content.maps.iter().map(palisade_compiler::limits::map_bytes).sum();
            println!(
                "| {} | {n} | {:.1} | {} | {} | {entries} | {:.1} |",
                profile.name(),
                compile_ms(&s),
                c.bytes.len(),
                insns.join("/"),
                bytes as f64 / f64::from(1 << 20)
            );
        }
    }
    Ok(())
}
