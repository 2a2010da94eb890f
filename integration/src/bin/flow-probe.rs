//! `flow-probe [--cgroup DIR] client ADDR PORT SEND RECV COUNT`: moves itself into a cgroup
//! and makes COUNT TCP connections to ADDR:PORT, each sending SEND bytes, half-closing, and
//! reading until the peer closes (expecting RECV bytes). Prints one line per connection:
//! `local=PORT congestion=NAME received=N`.
//!
//! `flow-probe [--cgroup DIR] server ADDR SEND COUNT`: moves itself into a cgroup, listens on
//! ADDR port 0, prints `port=P`, then accepts COUNT connections; each is read until the client
//! half-closes and answered with SEND bytes. Prints `peer=PORT congestion=NAME received=N` per
//! connection.
//!
//! `flow-probe [--cgroup DIR] loop RATE SECONDS`: moves itself into a cgroup, listens on
//! 127.0.0.1 port 0 and for SECONDS makes RATE connections a second to itself, each accepted
//! and closed with a reset (no data, no `TIME_WAIT`). Prints `connections=N seconds=S
//! cpu_ns=C` (its own CPU time). Benchmarks use it as a steady connection load.
//!
//! Tests use it as a workload whose TCP connections a sockops program records and tunes; the
//! congestion algorithm is what `getsockopt(TCP_CONGESTION)` says inside the workload.
#![allow(clippy::print_stdout, reason = "the probe reports on stdout")]

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::ExitCode,
};

fn join(dir: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(std::path::Path::new(dir).join("cgroup.procs"))
        .and_then(|mut f| f.write_all(std::process::id().to_string().as_bytes()))
}

fn exchange(mut s: TcpStream, send: usize) -> std::io::Result<usize> {
    s.write_all(&vec![b'x'; send])?;
    s.shutdown(Shutdown::Write)?;
    let mut got = Vec::new();
    s.read_to_end(&mut got)?;
    Ok(got.len())
}

/// The `loop` mode (module comment): paced in 10 ms steps, so the rate holds without a
/// timer per connection.
fn connection_loop(rate: usize, seconds: usize) -> std::io::Result<()> {
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    let started = std::time::Instant::now();
    let length = std::time::Duration::from_secs(seconds as u64);
    let mut made = 0_u64;
    while started.elapsed() < length {
        let due = (started.elapsed().as_secs_f64() * f64::from(u32::try_from(rate).unwrap_or(u32::MAX))) as u64;
        while made < due {
            let client = TcpStream::connect(addr)?;
            let (accepted, _) = listener.accept()?;
            palisade_integration::reset_on_close(accepted.as_raw_fd());
            drop(accepted);
            drop(client);
            made += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // SAFETY: rusage is plain old data, filled by the call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut usage) };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    println!(
        "connections={made} seconds={:.3} cpu_ns={}",
        started.elapsed().as_secs_f64(),
        ns(usage.ru_utime) + ns(usage.ru_stime)
    );
    Ok(())
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--cgroup") && args.len() > 1 {
        let dir = args.remove(1);
        args.remove(0);
        if let Err(e) = join(&dir) {
            println!("cgroup: {e}");
            return ExitCode::from(3);
        }
    }
    let num = |s: &str| s.parse::<usize>().ok();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["client", addr, port, send, _recv, count] => {
            let (Ok(ip), Ok(port), Some(send), Some(count)) =
                (addr.parse::<IpAddr>(), port.parse::<u16>(), num(send), num(count))
            else {
                println!("bad arguments");
                return ExitCode::from(3);
            };
            for _ in 0..count {
                let s = match TcpStream::connect(SocketAddr::new(ip, port)) {
                    Ok(s) => s,
                    Err(e) => {
                        println!("connect: {e}");
                        return ExitCode::from(1);
                    }
                };
                let local = s.local_addr().map(|a| a.port()).unwrap_or_default();
                let algorithm = palisade_integration::tcp_congestion(s.as_raw_fd());
                match exchange(s, send) {
                    Ok(received) => println!("local={local} congestion={algorithm} received={received}"),
                    Err(e) => {
                        println!("exchange: {e}");
                        return ExitCode::from(1);
                    }
                }
            }
            ExitCode::SUCCESS
        }
        ["server", addr, send, count] => {
            let (Ok(ip), Some(send), Some(count)) = (addr.parse::<IpAddr>(), num(send), num(count)) else {
                println!("bad arguments");
                return ExitCode::from(3);
            };
            let listener = match TcpListener::bind(SocketAddr::new(ip, 0)) {
                Ok(l) => l,
                Err(e) => {
                    println!("bind: {e}");
                    return ExitCode::from(1);
                }
            };
            println!("port={}", listener.local_addr().map(|a| a.port()).unwrap_or_default());
            let _ = std::io::stdout().flush();
            for _ in 0..count {
                let Ok((mut s, peer)) = listener.accept() else { return ExitCode::from(1) };
                let algorithm = palisade_integration::tcp_congestion(s.as_raw_fd());
                let mut got = Vec::new();
                let received = s.read_to_end(&mut got).map_or(0, |_| got.len());
                let _ = s.write_all(&vec![b'y'; send]);
                drop(s);
                println!("peer={} congestion={algorithm} received={received}", peer.port());
                let _ = std::io::stdout().flush();
            }
            ExitCode::SUCCESS
        }
        ["loop", rate, seconds] => {
            let (Some(rate), Some(seconds)) = (num(rate), num(seconds)) else {
                println!("bad arguments");
                return ExitCode::from(3);
            };
            match connection_loop(rate, seconds) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    println!("loop: {e}");
                    ExitCode::from(1)
                }
            }
        }
        _ => {
            println!(
                "usage: flow-probe [--cgroup DIR] (client ADDR PORT SEND RECV COUNT | server ADDR SEND COUNT | loop \
                 RATE SECONDS)"
            );
            ExitCode::from(3)
        }
    }
}
