//! `capture-bench` (root): capture filters against libpcap, in the same run.
//!
//! - Compile time of `not (host A1 or … or An)`: ours in-process (parse + code generation),
//!   libpcap's as `tcpdump -d` wall time (its optimizer is what grows; the process start is
//!   the `ip` row's figure).
//! - Per-packet cost of `host A1 or … or An`: our program and libpcap's optimized program
//!   (`tcpdump -ddd`, translated instruction for instruction to eBPF with the same legacy
//!   packet loads) both loaded as socket filters and run by `BPF_PROG_TEST_RUN` with a repeat
//!   count over the same frames: an IPv4 TCP frame no host matches, and one whose destination
//!   is the last host. Figures are the kernel's own mean ns per run, best of `--rounds`.
#![allow(clippy::print_stdout, reason = "the bench reports on stdout")]
#![allow(clippy::cast_precision_loss, reason = "nanosecond counts far below 2^52")]

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use palisade_agent::{
    capture::offline::{Engine, Filter, context},
    sys::ProgFd,
};
use palisade_compiler::capture::{DEFAULT_SNAPLEN, Target, compile};
use palisade_integration::{
    capture::empty_pcap,
    cbpf::{parse_ddd, translate},
};

/// Flags.
#[derive(Debug, clap::Parser)]
#[command(name = "capture-bench", about = "capture filters against libpcap: compile time and per-packet cost (root)")]
struct Args {
    /// Host counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 100, 1000])]
    hosts: Vec<usize>,
    /// Above this many hosts libpcap is not asked to compile (its optimizer takes ~42 s at
    /// 1,000 hosts here); those rows show only our figures.
    #[arg(long, default_value_t = 1000)]
    libpcap_max_hosts: usize,
    /// `BPF_PROG_TEST_RUN` repeat count per measurement.
    #[arg(long, default_value_t = 200_000)]
    repeat: u32,
    /// Measurements per figure (the best is reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// The `i`th host: 10.x.y.z, scattered (an odd multiplier is a bijection on 24 bits), so no
/// two are adjacent and the set cannot collapse into a few ranges.
fn host(i: usize) -> String {
    let v = (i as u32).wrapping_mul(0x9e37_79b1) & 0xff_ffff;
    format!("10.{}.{}.{}", v >> 16, (v >> 8) & 0xff, v & 0xff)
}

fn hosts(n: usize) -> String {
    (1..=n).map(|i| format!("host {}", host(i))).collect::<Vec<_>>().join(" or ")
}

/// Ethernet + IPv4 + TCP from 192.0.2.1 to `dst`, port 80.
fn frame(dst: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0, 0x11, 0x22, 0x33, 0x44, 0x55, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    f.extend([0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 192, 0, 2, 1]);
    f.extend(dst);
    f.extend([0x30, 0x39, 0, 80, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02, 0, 0, 0, 0, 0, 0]);
    f
}

fn tcpdump(args: &[&str], expr: &str) -> anyhow::Result<(String, Duration)> {
    let start = Instant::now();
    let out = Command::new("tcpdump").args(args).arg(expr).output().context("tcpdump runs")?;
    let took = start.elapsed();
    anyhow::ensure!(out.status.success(), "tcpdump: {}", String::from_utf8_lossy(&out.stderr));
    Ok((String::from_utf8(out.stdout)?, took))
}

fn best(rounds: usize, mut f: impl FnMut() -> anyhow::Result<u32>) -> anyhow::Result<u32> {
    let mut best = u32::MAX;
    for _ in 0..rounds {
        best = best.min(f()?);
    }
    Ok(best)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let dir = tempfile::tempdir()?;
    // The "miss" frame's 10.200.0.1 must not be one of the hosts.
    anyhow::ensure!(
        (1..=*args.hosts.iter().max().unwrap_or(&0)).all(|i| host(i) != "10.200.0.1"),
        "miss address is a host"
    );
    let empty = empty_pcap(dir.path());
    let empty = empty.to_str().context("temp path")?;
    let (_, start) = tcpdump(&["-d", "-r", empty], "ip")?;
    println!("libpcap: tcpdump 4.99.3 / libpcap 1.10.3; `tcpdump -d ip` (process start) {}", ms(start));
    println!(
        "| hosts | our compile | libpcap compile | our insns | libpcap insns | our ns/pkt miss | libpcap miss | ratio | our ns/pkt hit | libpcap hit | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &args.hosts {
        let negated = format!("not ({})", hosts(n));
        let runs = 20;
        let start = Instant::now();
        for _ in 0..runs {
            compile(&negated, Target::File, DEFAULT_SNAPLEN)?;
        }
        let ours_compile = start.elapsed() / runs;
        let text = hosts(n);
        let ours = compile(&text, Target::File, DEFAULT_SNAPLEN)?;
        let our_insns = ours.len();
        let filter = Filter::new(ours, Target::File, Engine::Kernel)?;
        let miss = frame([10, 200, 0, 1]);
        let last = host(n);
        let octets: Vec<u8> = last.split('.').map(str::parse).collect::<Result<_, _>>()?;
        let hit = frame([octets[0], octets[1], octets[2], octets[3]]);
        let ours_ns = |f: &[u8]| {
            best(args.rounds, || {
                filter.kernel_cost(f, f.len() as u32, args.repeat).context("kernel engine")?.map_err(Into::into)
            })
        };
        let (our_miss, our_hit) = (ours_ns(&miss)?, ours_ns(&hit)?);
        if n > args.libpcap_max_hosts {
            println!("| {n} | {} | – | {our_insns} | – | {our_miss} | – | – | {our_hit} | – | – |", ms(ours_compile));
            continue;
        }
        let (_, theirs_compile) = tcpdump(&["-d", "-r", empty], &negated)?;
        let (ddd, _) = tcpdump(&["-ddd", "-r", empty], &text)?;
        let classic = parse_ddd(&ddd)?;
        let theirs = ProgFd::load_socket_filter(&translate(&classic)?.bytes())?;
        let theirs_ns =
            |f: &[u8]| best(args.rounds, || Ok(theirs.test_run(f, &context(f.len() as u32), args.repeat)?.duration_ns));
        let (their_miss, their_hit) = (theirs_ns(&miss)?, theirs_ns(&hit)?);
        println!(
            "| {n} | {} | {} | {our_insns} | {} | {our_miss} | {their_miss} | {:.3} | {our_hit} | {their_hit} | {:.3} |",
            ms(ours_compile),
            ms(theirs_compile),
            classic.len(),
            f64::from(our_miss) / f64::from(their_miss.max(1)),
            f64::from(our_hit) / f64::from(their_hit.max(1)),
        );
    }
    Ok(())
}
