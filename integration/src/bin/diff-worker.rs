//! `diff-worker`: a workload for the differential test. Started by the test (root) in its own
//! empty network namespace — so no connect can send a packet anywhere — with the real uid
//! the test asks for; the test then moves it into a cgroup. It reads `OP PROTO ADDR PORT`
//! lines (OP: `connect` or `bind`) and answers each with `D` (the call failed with EPERM:
//! denied by the hook) or `A` (any other outcome: the hook allowed it, and routing or address
//! checks decided the rest).
#![allow(clippy::print_stdout, reason = "the worker answers on stdout")]

use std::{
    io::{BufRead as _, Write as _},
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
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

fn main() {
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
}
