//! `diff-worker`: a workload for the differential test. Started by the test (root) in its own
//! empty network namespace — so no connect can send a packet anywhere — with the real uid
//! the test asks for; the test then moves it into a cgroup. It reads `OP PROTO ADDR PORT`
//! lines (OP: `connect` or `bind`) and answers each with `D` (the call failed with EPERM:
//! denied by the hook) or `A` (any other outcome: the hook allowed it, and routing or address
//! checks decided the rest).
//!
//! `diff-worker tcp UID ADDR,ADDR,...` is the workload of the sock_ops differential. Started
//! as root in its own network namespace, it makes every address local (`local` routes for
//! `0.0.0.0/0` and `::/0` on `lo`, the IPv6 addresses assigned to `lo` so they are also the
//! source of connections to themselves), lets any uid bind any port, sets the namespace's
//! default congestion control to `reno`, and then drops to real uid `UID`. It reads
//! `listen PORT...` (dual-stack listeners on `[::]`, made once the test moved it into its
//! cgroup) and `connect ADDR PORT`, which connects, accepts the connection on its own
//! listener, reads what a tuning profile sets at both ends, closes both with a reset and
//! answers `C LOCAL PEER SETTINGS ACCEPTED_LOCAL ACCEPTED_PEER SETTINGS` (`SETTINGS`:
//! `CONGESTION,NODELAY,CWND`), or `D` (EPERM: the
//! connect hook denied it) or `E ERRNO` (no connection for another reason).
#![allow(clippy::print_stdout, reason = "the worker answers on stdout")]

use std::{
    collections::HashMap,
    io::{BufRead as _, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

fn attempt(op: &str, proto: &str, addr: SocketAddr) -> char {
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let kind = if proto == "tcp" { libc::SOCK_STREAM } else { libc::SOCK_DGRAM } | libc::SOCK_NONBLOCK;
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(domain, kind, 0) };
    if fd < 0 {
        return '?';
    }
    // SAFETY: fd is a new socket nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let (storage, len) = sockaddr(addr);
    let ret = if op == "bind" {
        // SAFETY: storage holds a valid sockaddr of `len` bytes.
        unsafe { libc::bind(socket.as_raw_fd(), (&raw const storage).cast(), len) }
    } else {
        // SAFETY: storage holds a valid sockaddr of `len` bytes.
        unsafe { libc::connect(socket.as_raw_fd(), (&raw const storage).cast(), len) }
    };
    if ret == 0 {
        return 'A';
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EPERM) => 'D',
        _ => 'A',
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) };
            (storage, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
            (storage, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

/// What a tuning profile may have set on `fd`: `CONGESTION,NODELAY,CWND` (`TCP_CONGESTION`,
/// `TCP_NODELAY`, and `tcpi_snd_cwnd` of `TCP_INFO`, the initial window before any data).
fn settings(fd: i32) -> String {
    let mut no_delay: libc::c_int = -1;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd, value and length.
    unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, (&raw mut no_delay).cast(), &raw mut len) };
    // SAFETY: tcp_info is plain old data.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid fd, buffer and length.
    let rc = unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &raw mut len) };
    let cwnd = if rc == 0 { i64::from(info.tcpi_snd_cwnd) } else { -1 };
    format!("{},{no_delay},{cwnd}", palisade_integration::tcp_congestion(fd))
}

fn run(args: &[&str]) -> Result<(), String> {
    let status = std::process::Command::new("ip").args(args).status().map_err(|e| format!("ip: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("ip {}: {status}", args.join(" "))) }
}

/// Makes every address local in this (new) network namespace; see the module comment.
fn setup_namespace(addrs: &str) -> Result<(), String> {
    run(&["link", "set", "lo", "up"])?;
    run(&["route", "add", "local", "0.0.0.0/0", "dev", "lo"])?;
    run(&["-6", "route", "add", "local", "::/0", "dev", "lo"])?;
    for addr in addrs.split(',').filter_map(|a| a.parse::<Ipv6Addr>().ok()) {
        if addr.to_ipv4_mapped().is_none() && !addr.is_loopback() {
            run(&["-6", "addr", "add", &format!("{addr}/128"), "dev", "lo", "nodad"])?;
        }
    }
    for (key, value) in [("ip_unprivileged_port_start", "0"), ("tcp_congestion_control", "reno")] {
        std::fs::write(format!("/proc/sys/net/ipv4/{key}"), value).map_err(|e| format!("{key}: {e}"))?;
    }
    Ok(())
}

fn connect(listeners: &HashMap<u16, TcpListener>, addr: SocketAddr) -> String {
    let client = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => return "D".to_owned(),
        Err(e) => return format!("E {}", e.raw_os_error().unwrap_or(0)),
    };
    let Some(listener) = listeners.get(&addr.port()) else { return "E listener".to_owned() };
    let accepted = match listener.accept() {
        Ok((s, _)) => s,
        Err(e) => return format!("E accept {e}"),
    };
    let show = |s: &TcpStream| {
        let (local, peer) = (s.local_addr(), s.peer_addr());
        match (local, peer) {
            (Ok(l), Ok(p)) => format!("{l} {p} {}", settings(s.as_raw_fd())),
            _ => "? ? ?".to_owned(),
        }
    };
    let answer = format!("C {} {}", show(&client), show(&accepted));
    palisade_integration::reset_on_close(accepted.as_raw_fd());
    drop(accepted);
    drop(client);
    answer
}

/// The sock_ops differential's workload (module comment).
fn tcp_worker(uid: &str, addrs: &str) -> Result<(), String> {
    setup_namespace(addrs)?;
    let uid: u32 = uid.parse().map_err(|_| format!("uid {uid:?}"))?;
    // SAFETY: plain setresuid(2).
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(format!("setresuid: {}", std::io::Error::last_os_error()));
    }
    let mut listeners = HashMap::new();
    let mut stdout = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["listen", ports @ ..] => {
                let mut failed = None;
                for port in ports.iter().filter_map(|p| p.parse::<u16>().ok()) {
                    match TcpListener::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)) {
                        Ok(l) => {
                            listeners.insert(port, l);
                        }
                        Err(e) => failed = Some(format!("E listen {port}: {e}")),
                    }
                }
                failed.unwrap_or_else(|| "ok".to_owned())
            }
            ["connect", ip, port] => match (ip.parse::<IpAddr>(), port.parse::<u16>()) {
                (Ok(ip), Ok(port)) => connect(&listeners, SocketAddr::new(ip, port)),
                _ => "?".to_owned(),
            },
            _ => "?".to_owned(),
        };
        if writeln!(stdout, "{answer}").and_then(|()| stdout.flush()).is_err() {
            break;
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, uid, addrs] = args.iter().map(String::as_str).collect::<Vec<_>>().as_slice()
        && *mode == "tcp"
    {
        return match tcp_worker(uid, addrs) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                println!("setup failed: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let mut parts = line.split_whitespace();
        let (Some(op), Some(proto), Some(ip), Some(port)) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            let _ = writeln!(stdout, "?");
            continue;
        };
        let answer = match (ip.parse::<IpAddr>(), port.parse::<u16>()) {
            (Ok(ip), Ok(port)) => attempt(op, proto, SocketAddr::new(ip, port)),
            _ => '?',
        };
        if writeln!(stdout, "{answer}").and_then(|()| stdout.flush()).is_err() {
            break;
        }
    }
    std::process::ExitCode::SUCCESS
}
