//! `connect-probe [--cgroup DIR] [--repeat N] (tcp|udp|bind-tcp|bind-udp) ADDR PORT`, or
//! `connect-probe [--cgroup DIR] (exec|open-read|open-write|open-rw) PATH`: moves itself into a
//! cgroup, makes one connect(2), bind(2), execve(2) (of `PATH` as `busybox true`: a
//! busybox copy in the guest suite) or open(2), and prints `ok` or the errno name; the exit code is 0 for ok, 1
//! for EPERM, 2 for anything else. With `--repeat N` it makes N TCP connects, one every 50 µs,
//! and prints `ok=A eperm=B other=C` (exit 0). Tests use it to act as a workload in a cgroup
//! they created.
#![allow(clippy::print_stdout, reason = "the probe reports on stdout")]

use std::{
    io::{self, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::unix::process::CommandExt as _,
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
    if let [mode, path] = args.as_slice() {
        let mut options = std::fs::OpenOptions::new();
        let result = match mode.as_str() {
            // argv[0] "busybox" makes a renamed busybox run the applet named by argv[1].
            "exec" => std::process::Command::new(path).arg0("busybox").arg("true").status().and_then(|status| {
                if status.success() { Ok(()) } else { Err(io::Error::other(format!("exited with {status}"))) }
            }),
            "open-read" => options.read(true).open(path).map(drop),
            "open-write" => options.write(true).open(path).map(drop),
            "open-rw" => options.read(true).write(true).open(path).map(drop),
            _ => Err(io::Error::other(format!("unknown mode {mode}"))),
        };
        return report(result);
    }
    let mut repeat = None;
    if args.first().map(String::as_str) == Some("--repeat") && args.len() > 1 {
        repeat = args[1].parse::<u32>().ok();
        args.drain(..2);
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
    if let Some(n) = repeat {
        let (mut ok, mut eperm, mut other) = (0, 0, 0);
        for _ in 0..n {
            match TcpStream::connect_timeout(&target, Duration::from_secs(3)) {
                Ok(_) => ok += 1,
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => eperm += 1,
                Err(_) => other += 1,
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        println!("ok={ok} eperm={eperm} other={other}");
        return ExitCode::SUCCESS;
    }
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
    report(result)
}

fn report(result: io::Result<()>) -> ExitCode {
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
