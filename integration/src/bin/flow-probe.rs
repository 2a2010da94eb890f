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
        _ => {
            println!("usage: flow-probe [--cgroup DIR] (client ADDR PORT SEND RECV COUNT | server ADDR SEND COUNT)");
            ExitCode::from(3)
        }
    }
}
