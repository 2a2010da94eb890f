//! `connect-probe [--cgroup DIR] (tcp|udp|bind-tcp|bind-udp) ADDR PORT`: moves itself into a
//! cgroup, makes one connect(2) (or bind(2)) and prints `ok` or the errno name; the exit code is 0 for ok, 1 for EPERM, 2
//! for anything else. Tests use it to act as a workload in a cgroup they created.
#![allow(clippy::print_stdout, reason = "the probe reports on stdout")]

use std::{
    io::{self, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    process::ExitCode,
    time::Duration,
};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--cgroup") {
        let dir = args.remove(1);
        args.remove(0);
        let procs = std::path::Path::new(&dir).join("cgroup.procs");
        if let Err(e) = std::fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .and_then(|mut f| f.write_all(std::process::id().to_string().as_bytes()))
        {
            println!("cgroup: {e}");
            return ExitCode::from(3);
        }
    }
    let [proto, addr, port] = args.as_slice() else {
        println!("usage: connect-probe [--cgroup DIR] (tcp|udp) ADDR PORT");
        return ExitCode::from(3);
    };
    let (Ok(ip), Ok(port)) = (addr.parse::<IpAddr>(), port.parse::<u16>()) else {
        println!("bad address");
        return ExitCode::from(3);
    };
    let target = SocketAddr::new(ip, port);
    let result: io::Result<()> = if proto == "bind-tcp" {
        std::net::TcpListener::bind(target).map(drop)
    } else if proto == "bind-udp" {
        UdpSocket::bind(target).map(drop)
    } else if proto == "tcp" {
        TcpStream::connect_timeout(&target, Duration::from_secs(3)).map(drop)
    } else {
        let bind: SocketAddr = if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap_or(target);
        UdpSocket::bind(bind).and_then(|s| s.connect(target))
    };
    match result {
        Ok(()) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            println!("EPERM");
            ExitCode::from(1)
        }
        Err(e) => {
            println!("{e}");
            ExitCode::from(2)
        }
    }
}
