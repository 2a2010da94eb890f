//! `capture-worker` (root): a live capture in a network namespace of its own. It makes a veth
//! pair, captures on one end with our filter (`Target::Live`, `AF_PACKET` + `TPACKET_V3`
//! ring), injects frames into the other end and writes what it captured.
//!
//! - `capture-worker replay EXPR IN.pcap OUT.pcap`: injects every frame of IN (whole frames
//!   only: a truncated one goes out as what was captured of it) and writes the captured ones.
//! - `capture-worker any EXPR IN.pcap OUT.pcap`: the same, captured on `any` (every
//!   interface of the namespace, a `LINUX_SLL2` capture: each frame is seen leaving one end
//!   and arriving at the other); an empty EXPR keeps every packet.
//! - `capture-worker loopback EXPR N`: sends N UDP datagrams to 127.0.0.1 port 53 and N to
//!   port 54 over `lo`, captures with EXPR on `lo` and prints how many frames it kept (and
//!   how many of them are to port 53).
//! - `capture-worker flood EXPR SECONDS`: one thread sends a matching and a non-matching
//!   frame alternately as fast as it can; the capture thread drains the ring. Prints frames
//!   kept per second, drops, and the capture thread's CPU per 100,000 kept frames a second.
#![allow(clippy::print_stdout, reason = "the worker reports on stdout")]
#![allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use palisade_agent::capture::{
    live::{Capture, Ring},
    offline::{Frame, Output, read_frames},
};
use palisade_compiler::capture::{DEFAULT_SNAPLEN, Link, Target, accept_all, compile, compile_for};

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new("ip").args(args).status().context("ip")?;
    anyhow::ensure!(status.success(), "ip {}: {status}", args.join(" "));
    Ok(())
}

fn ifindex(name: &str) -> anyhow::Result<u32> {
    let c = CString::new(name)?;
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    anyhow::ensure!(index != 0, "no interface {name}");
    Ok(index)
}

/// A new network namespace with the veth pair `cap0` (send) — `cap1` (capture), up, and no
/// IPv6 so the kernel itself sends nothing on them.
fn namespace() -> anyhow::Result<(u32, u32)> {
    // SAFETY: unshare has no memory-safety preconditions; the process is single-threaded here.
    anyhow::ensure!(unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0, "unshare(CLONE_NEWNET)");
    for conf in ["all", "default"] {
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1")?;
    }
    ip(&["link", "add", "cap0", "type", "veth", "peer", "name", "cap1"])?;
    ip(&["link", "set", "cap0", "up"])?;
    ip(&["link", "set", "cap1", "up"])?;
    let deadline = Instant::now() + Duration::from_secs(5);
    // (/sys shows the namespace it was mounted in; `ip` asks this one.)
    let up = || -> anyhow::Result<bool> {
        let out = std::process::Command::new("ip").args(["-o", "link", "show", "cap0"]).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).contains("state UP"))
    };
    while !up()? {
        anyhow::ensure!(Instant::now() < deadline, "cap0 never came up");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((ifindex("cap0")?, ifindex("cap1")?))
}

/// A raw socket that sends frames out of interface `ifindex`.
fn sender(ifindex: u32) -> anyhow::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    anyhow::ensure!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: zeroed sockaddr_ll is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: addr is a sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&addr).cast(), size_of::<libc::sockaddr_ll>() as libc::socklen_t)
    };
    anyhow::ensure!(rc == 0, "bind: {}", std::io::Error::last_os_error());
    Ok(fd)
}

fn send(fd: &OwnedFd, frame: &[u8]) -> std::io::Result<()> {
    // SAFETY: frame is a live buffer of the length passed.
    let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

fn thread_cpu() -> Duration {
    // SAFETY: a zeroed timespec is valid and clock_gettime only writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn replay(expr: &str, input: &str, output: &str, any: bool) -> anyhow::Result<()> {
    let mut frames = Vec::new();
    read_frames(std::fs::File::open(input)?, |f| {
        frames.push(f.data.clone());
        Ok(())
    })?;
    let (tx, rx) = namespace()?;
    let (mut capture, link) = if any {
        let program = if expr.is_empty() {
            accept_all(DEFAULT_SNAPLEN)?
        } else {
            compile_for(expr, Target::Live, Link::LinuxSll2, DEFAULT_SNAPLEN)?
        };
        (Capture::open_any(&program, Ring::default())?, Link::LinuxSll2)
    } else {
        let program = compile(expr, Target::Live, DEFAULT_SNAPLEN)?;
        (Capture::open(rx, &program, Target::Live, Ring::default())?, Link::Ethernet)
    };
    let out = sender(tx)?;
    let mut sent = 0;
    for frame in &frames {
        if frame.len() >= 14 {
            send(&out, frame).with_context(|| format!("send a {}-byte frame", frame.len()))?;
            sent += 1;
        }
    }
    let mut captured: Vec<Frame> = Vec::new();
    let mut idle = Instant::now();
    while idle.elapsed() < Duration::from_millis(300) {
        if capture.next_block(Duration::from_millis(50), |f| captured.push(f))? > 0 {
            idle = Instant::now();
        }
    }
    let counters = capture.counters()?;
    let mut w = Output::for_link(std::io::BufWriter::new(std::fs::File::create(output)?), link)?;
    for f in &captured {
        w.write(f, DEFAULT_SNAPLEN)?;
    }
    std::io::Write::flush(&mut w.finish()?)?;
    println!("sent {sent} captured {} accepted {} dropped {}", captured.len(), counters.accepted, counters.dropped);
    Ok(())
}

fn loopback(expr: &str, n: usize) -> anyhow::Result<()> {
    // SAFETY: unshare has no memory-safety preconditions; the process is single-threaded here.
    anyhow::ensure!(unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0, "unshare(CLONE_NEWNET)");
    ip(&["link", "set", "lo", "up"])?;
    let program = compile(expr, Target::Live, DEFAULT_SNAPLEN)?;
    let mut capture = Capture::open(ifindex("lo")?, &program, Target::Live, Ring::default())?;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    // Receivers, so no ICMP port-unreachable replies join the capture.
    let sinks = [std::net::UdpSocket::bind("127.0.0.1:53")?, std::net::UdpSocket::bind("127.0.0.1:54")?];
    for i in 0..n {
        socket.send_to(&(i as u32).to_be_bytes(), "127.0.0.1:53")?;
        socket.send_to(&(i as u32).to_be_bytes(), "127.0.0.1:54")?;
    }
    drop(sinks);
    let mut kept = Vec::new();
    let mut idle = Instant::now();
    while idle.elapsed() < Duration::from_millis(300) {
        if capture.next_block(Duration::from_millis(50), |f| kept.push(f))? > 0 {
            idle = Instant::now();
        }
    }
    // IPv4 UDP on lo: the destination port is at 14 + 20 + 2.
    let to53 = kept.iter().filter(|f| f.data.get(36..38) == Some(&53_u16.to_be_bytes()[..])).count();
    println!("kept {} to-53 {to53} dropped {}", kept.len(), capture.counters()?.dropped);
    Ok(())
}

fn flood(expr: &str, seconds: u64) -> anyhow::Result<()> {
    let program = compile(expr, Target::Live, DEFAULT_SNAPLEN)?;
    let (tx, rx) = namespace()?;
    let mut capture = Capture::open(rx, &program, Target::Live, Ring::default())?;
    let out = sender(tx)?;
    // 64-byte IPv4/UDP frames to port 53 (kept by `udp port 53`) and 54 (not).
    let frame = |port: u16| {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        f.extend([0x45, 0, 0, 50, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend([0x30, 0x39]);
        f.extend(port.to_be_bytes());
        f.extend([0, 30, 0, 0]);
        f.resize(64, 0);
        f
    };
    let (keep, skip) = (frame(53), frame(54));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sending = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0_u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if send(&out, &keep).is_ok() && send(&out, &skip).is_ok() {
                    n += 1;
                }
            }
            n
        })
    };
    let (start, cpu) = (Instant::now(), thread_cpu());
    let mut kept = 0_u64;
    let mut dropped = 0_u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        capture.next_block(Duration::from_millis(50), |_| kept += 1)?;
        dropped += capture.counters()?.dropped;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let pairs = sending.join().map_err(|_| anyhow::anyhow!("sender panicked"))?;
    let (wall, cpu) = (start.elapsed().as_secs_f64(), thread_cpu().saturating_sub(cpu).as_secs_f64());
    let rate = kept as f64 / wall;
    println!(
        "sent {} frames ({} matching), kept {kept} ({:.0}/s), ring drops {dropped}, capture thread CPU {:.1}% = {:.2}% per 100k kept/s",
        2 * pairs,
        pairs,
        rate,
        100.0 * cpu / wall,
        100.0 * cpu / wall / (rate / 100_000.0),
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["replay", expr, input, output] => replay(expr, input, output, false),
        ["any", expr, input, output] => replay(expr, input, output, true),
        ["flood", expr, seconds] => flood(expr, seconds.parse()?),
        ["loopback", expr, n] => loopback(expr, n.parse()?),
        _ => anyhow::bail!(
            "usage: capture-worker replay|any EXPR IN.pcap OUT.pcap | loopback EXPR N | flood EXPR SECONDS"
        ),
    }
}
