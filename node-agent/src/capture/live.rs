//! Live capture: an `AF_PACKET` socket on one interface, our compiled filter attached
//! (`SO_ATTACH_BPF`, [`Target::Live`]), and a `TPACKET_V3` memory-mapped receive ring, so a
//! busy link costs a wake-up per block of packets rather than a syscall per packet.
//!
//! The socket is created with protocol 0 — it receives nothing — until the filter and the ring
//! are in place and it is bound to the interface, so no unfiltered packet is ever queued. The
//! kernel strips an 802.1Q/802.1ad tag into packet metadata before taps see the frame; the
//! ring reports it and [`Capture::next_block`] puts it back, so what is written is the frame as
//! it was on the wire. Blocking calls: run them on a dedicated thread.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use palisade_compiler::{
    bpf::asm::Program,
    capture::{Link, Target},
};

use crate::{
    capture::offline::Frame,
    sys::{ProgFd, SocketFilterRefused},
};

const SOL_PACKET: libc::c_int = 263;
const PACKET_VERSION: libc::c_int = 10;
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_STATISTICS: libc::c_int = 6;
const TPACKET_V3: libc::c_int = 2;
const SO_ATTACH_BPF: libc::c_int = 50;
const ETH_P_ALL: u16 = 0x0003;
const TP_STATUS_KERNEL: u32 = 0;
const PACKET_OUTGOING: u8 = 4;
const TP_STATUS_USER: u32 = 1;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;

/// `struct tpacket_req3`.
#[repr(C)]
struct Req3 {
    block_size: u32,
    block_nr: u32,
    frame_size: u32,
    frame_nr: u32,
    retire_blk_tov: u32,
    sizeof_priv: u32,
    feature_req_word: u32,
}

/// `struct tpacket_stats_v3`.
#[repr(C)]
#[derive(Default)]
struct StatsV3 {
    packets: u32,
    drops: u32,
    freeze_q_cnt: u32,
}

/// Ring geometry.
#[derive(Debug, Clone, Copy)]
pub struct Ring {
    /// Bytes per block (a multiple of the page size).
    pub block_size: u32,
    /// Blocks.
    pub blocks: u32,
    /// How long the kernel fills a block before handing it over anyway.
    pub timeout: Duration,
}

impl Default for Ring {
    /// 8 blocks of 1 MiB, handed over after 20 ms at the latest.
    fn default() -> Self {
        Ring { block_size: 1 << 20, blocks: 8, timeout: Duration::from_millis(20) }
    }
}

/// Why a capture could not start.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The filter was compiled for files.
    #[error("the filter was compiled for capture files, not live sockets")]
    WrongTarget,
    /// The kernel refused the program.
    #[error(transparent)]
    Refused(#[from] SocketFilterRefused),
    /// The interface is not an Ethernet one (the programs read Ethernet framing), or is 0
    /// (every interface).
    #[error("interface {ifindex}: {why}")]
    Interface {
        /// The interface index.
        ifindex: u32,
        /// Why it cannot be captured on.
        why: String,
    },
    /// A socket call failed.
    #[error("{what}: {source}")]
    Socket {
        /// Which call.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Refuses interface 0 and interfaces whose hardware type is not Ethernet or loopback
/// (`SIOCGIFHWADDR`); says whether it is the loopback.
fn ethernet(ifindex: u32) -> Result<bool, LiveError> {
    let refuse = |why: String| LiveError::Interface { ifindex, why };
    if ifindex == 0 {
        return Err(refuse("capturing on every interface (`any`) is not built yet".to_owned()));
    }
    // SAFETY: plain socket(2) for the ioctls below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check("socket(AF_INET)", raw)?;
    // SAFETY: a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: an all-zero ifreq is valid; SIOCGIFNAME reads ifr_ifindex and writes ifr_name,
    // SIOCGIFHWADDR reads ifr_name and writes ifr_hwaddr.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_ifru.ifru_ifindex = ifindex as i32;
    // SAFETY: as above.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFNAME, &raw mut req) } < 0 {
        return Err(refuse(format!("no such interface ({})", io::Error::last_os_error())));
    }
    // SAFETY: as above.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &raw mut req) } < 0 {
        return Err(refuse(format!("SIOCGIFHWADDR: {}", io::Error::last_os_error())));
    }
    // SAFETY: SIOCGIFHWADDR filled ifr_hwaddr.
    let family = unsafe { req.ifr_ifru.ifru_hwaddr.sa_family };
    // Loopback frames carry an Ethernet header too (zero addresses), as libpcap treats them.
    if family != libc::ARPHRD_ETHER && family != libc::ARPHRD_LOOPBACK {
        return Err(refuse(format!(
            "hardware type {family} is not Ethernet or loopback; only those are captured so far"
        )));
    }
    Ok(family == libc::ARPHRD_LOOPBACK)
}

fn check(what: &'static str, ret: libc::c_int) -> Result<(), LiveError> {
    if ret < 0 { Err(LiveError::Socket { what, source: io::Error::last_os_error() }) } else { Ok(()) }
}

fn setsockopt<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
    what: &'static str,
) -> Result<(), LiveError> {
    // SAFETY: `value` is a live `T` of the size passed, as the option expects.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    check(what, ret)
}

/// Length of a `LINUX_SLL2` header.
const SLL2_HEADER: usize = 20;

/// The `LINUX_SLL2` frame of a packet the kernel reported with `sll` (a `sockaddr_ll`) and
/// network-layer `bytes`: protocol, reserved, interface index, ARPHRD type, packet type,
/// address length, 8 address bytes (all big-endian), then the packet.
fn sll2(sll: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(SLL2_HEADER + bytes.len());
    data.extend_from_slice(&sll[2..4]);
    data.extend_from_slice(&[0, 0]);
    data.extend_from_slice(&u32::from_ne_bytes([sll[4], sll[5], sll[6], sll[7]]).to_be_bytes());
    data.extend_from_slice(&u16::from_ne_bytes([sll[8], sll[9]]).to_be_bytes());
    data.extend_from_slice(&sll[10..20]);
    data.extend_from_slice(bytes);
    data
}

/// Counters the socket keeps (`PACKET_STATISTICS`, reset by each read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets the filter accepted (kept or dropped).
    pub accepted: u64,
    /// Of those, dropped because the ring was full.
    pub dropped: u64,
}

/// A capture on one interface.
#[derive(Debug)]
pub struct Capture {
    fd: OwnedFd,
    /// The filter, attached; kept so the program lives as long as the socket.
    _filter: ProgFd,
    ring: NonNull<u8>,
    ring_len: usize,
    block_size: usize,
    blocks: usize,
    next: usize,
    /// On the loopback every packet passes twice, leaving and arriving; the leaving copy is
    /// skipped, as libpcap does.
    loopback: bool,
    /// On `any` (a `SOCK_DGRAM` socket on every interface): the loopback's index, whose
    /// leaving copies are skipped, and packets are written with a `LINUX_SLL2` header.
    any: Option<u32>,
}

// SAFETY: the ring mapping is owned by this value alone and only touched through `&mut self`.
unsafe impl Send for Capture {}

impl Drop for Capture {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `open` with this length and nothing refers to it.
        unsafe { libc::munmap(self.ring.as_ptr().cast(), self.ring_len) };
    }
}

impl Capture {
    /// Starts capturing on interface `ifindex` the frames `program` (compiled for
    /// [`Target::Live`]) accepts.
    pub fn open(ifindex: u32, program: &Program, target: Target, ring: Ring) -> Result<Capture, LiveError> {
        if target != Target::Live {
            return Err(LiveError::WrongTarget);
        }
        let loopback = ethernet(ifindex)?;
        Self::open_socket(ifindex, program, ring, loopback, None)
    }

    /// Starts capturing on every interface (`any`) the packets `program` (compiled for
    /// [`Target::Live`] and [`Link::LinuxSll2`]) accepts; they are handed on with a
    /// `LINUX_SLL2` header built from what the kernel reports, as libpcap writes them. VLAN
    /// tags the kernel stripped are not put back (libpcap does not either on `any`).
    pub fn open_any(program: &Program, ring: Ring) -> Result<Capture, LiveError> {
        let name = c"lo";
        // SAFETY: a NUL-terminated name.
        let lo = unsafe { libc::if_nametoindex(name.as_ptr()) };
        Self::open_socket(0, program, ring, false, Some(lo))
    }

    fn open_socket(
        ifindex: u32,
        program: &Program,
        ring: Ring,
        loopback: bool,
        any: Option<u32>,
    ) -> Result<Capture, LiveError> {
        let filter = ProgFd::load_socket_filter(&program.bytes())?;
        let kind = if any.is_some() { libc::SOCK_DGRAM } else { libc::SOCK_RAW };
        // SAFETY: plain socket(2); protocol 0 receives nothing until bind names one.
        let raw = unsafe { libc::socket(libc::AF_PACKET, kind | libc::SOCK_CLOEXEC, 0) };
        check("socket(AF_PACKET)", raw)?;
        // SAFETY: socket returned a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let prog_fd: libc::c_int = filter.as_raw();
        setsockopt(&fd, libc::SOL_SOCKET, SO_ATTACH_BPF, &prog_fd, "SO_ATTACH_BPF")?;
        setsockopt(&fd, SOL_PACKET, PACKET_VERSION, &TPACKET_V3, "PACKET_VERSION")?;
        let frame_size = 2048;
        let req = Req3 {
            block_size: ring.block_size,
            block_nr: ring.blocks,
            frame_size,
            frame_nr: (ring.block_size / frame_size).checked_mul(ring.blocks).ok_or(LiveError::Socket {
                what: "PACKET_RX_RING",
                source: io::Error::from(io::ErrorKind::InvalidInput),
            })?,
            retire_blk_tov: ring.timeout.as_millis().clamp(1, 1000) as u32,
            sizeof_priv: 0,
            feature_req_word: 0,
        };
        setsockopt(&fd, SOL_PACKET, PACKET_RX_RING, &req, "PACKET_RX_RING")?;
        let ring_len = ring.block_size as usize * ring.blocks as usize;
        // SAFETY: maps the ring the kernel just allocated for this socket; checked below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(LiveError::Socket { what: "mmap(PACKET_RX_RING)", source: io::Error::last_os_error() });
        }
        let ring_ptr = NonNull::new(map.cast::<u8>())
            .ok_or(LiveError::Socket { what: "mmap(PACKET_RX_RING)", source: io::Error::other("null mapping") })?;
        let capture = Capture {
            fd,
            _filter: filter,
            ring: ring_ptr,
            ring_len,
            block_size: ring.block_size as usize,
            blocks: ring.blocks as usize,
            next: 0,
            loopback,
            any,
        };
        // SAFETY: an all-zero sockaddr_ll is valid; the fields set are the ones bind reads.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL.to_be();
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a sockaddr_ll of the size passed.
        let ret = unsafe {
            libc::bind(
                capture.fd.as_raw_fd(),
                std::ptr::from_ref(&addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        check("bind(AF_PACKET)", ret)?;
        Ok(capture)
    }

    #[expect(
        clippy::cast_ptr_alignment,
        reason = "the ring is page-aligned and the kernel keeps block and packet headers 16-byte aligned (TPACKET_ALIGNMENT)"
    )]
    fn word(&self, at: usize) -> u32 {
        // SAFETY: `at + 4` lies inside the ring (callers bound it by the block and its
        // packets' offsets, which the kernel keeps inside the block).
        unsafe { self.ring.as_ptr().add(at).cast::<u32>().read_volatile() }
    }

    /// The block's status word, with the acquire that makes the kernel's writes to the block
    /// visible once it says "user".
    fn status(&self, block: usize) -> u32 {
        // SAFETY: the status word of a block inside the ring, 4-byte aligned (blocks start at
        // multiples of the page-sized block size); the kernel writes it concurrently, hence
        // the atomic access.
        unsafe { AtomicU32::from_ptr(self.ring.as_ptr().add(block + 8).cast()) }.load(Ordering::Acquire)
    }

    #[expect(
        clippy::cast_ptr_alignment,
        reason = "the ring is page-aligned and the kernel keeps block and packet headers 16-byte aligned (TPACKET_ALIGNMENT)"
    )]
    fn half(&self, at: usize) -> u16 {
        // SAFETY: as `word`.
        unsafe { self.ring.as_ptr().add(at).cast::<u16>().read_volatile() }
    }

    /// Waits up to `timeout` for the next block of packets and hands each one, VLAN tag put
    /// back, to `each`; returns how many the block held, the loopback's skipped leaving copies
    /// included (0: nothing arrived in time).
    pub fn next_block(&mut self, timeout: Duration, mut each: impl FnMut(Frame)) -> io::Result<usize> {
        let block = self.next * self.block_size;
        if self.status(block) & TP_STATUS_USER == 0 {
            let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN | libc::POLLERR, revents: 0 };
            // SAFETY: one valid pollfd.
            let ret = unsafe { libc::poll(&raw mut pfd, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
            if ret < 0 {
                let e = io::Error::last_os_error();
                return if e.kind() == io::ErrorKind::Interrupted { Ok(0) } else { Err(e) };
            }
            if self.status(block) & TP_STATUS_USER == 0 {
                return Ok(0);
            }
        }
        let count = self.word(block + 12) as usize;
        let mut at = block + self.word(block + 16) as usize;
        let end = block + self.block_size;
        for _ in 0..count {
            if at + 48 > end {
                break;
            }
            let (next, sec, nsec) = (self.word(at), self.word(at + 4), self.word(at + 8));
            let (snap, len, status) = (self.word(at + 12) as usize, self.word(at + 16), self.word(at + 20));
            let mac = usize::from(self.half(at + 24));
            if at + mac + snap > end || mac < 68 {
                break;
            }
            // The sockaddr_ll after the 48-byte header: its packet type at byte 10.
            // SAFETY: inside this packet's slot (checked above: the frame starts past it).
            let pkttype = unsafe { self.ring.as_ptr().add(at + 58).read_volatile() };
            if self.loopback && pkttype == PACKET_OUTGOING {
                if next == 0 {
                    break;
                }
                at += next as usize;
                continue;
            }
            // SAFETY: [at + mac, at + mac + snap) is inside this block (checked above).
            let bytes = unsafe { std::slice::from_raw_parts(self.ring.as_ptr().add(at + mac), snap) };
            if let Some(lo) = self.any {
                // SAFETY: the sockaddr_ll at at + 48, inside this packet's slot (mac >= 68).
                let sll = unsafe { std::slice::from_raw_parts(self.ring.as_ptr().add(at + 48), 20) };
                let ifindex = u32::from_ne_bytes([sll[4], sll[5], sll[6], sll[7]]);
                if !(ifindex == lo && pkttype == PACKET_OUTGOING) {
                    each(Frame {
                        link: Link::LinuxSll2,
                        timestamp: Duration::new(u64::from(sec), nsec),
                        wire_len: len + SLL2_HEADER as u32,
                        data: sll2(sll, bytes),
                    });
                }
                if next == 0 {
                    break;
                }
                at += next as usize;
                continue;
            }
            let mut data = Vec::with_capacity(snap + 4);
            let mut wire_len = len;
            if status & TP_STATUS_VLAN_VALID != 0 && bytes.len() >= 12 {
                let tpid = if status & TP_STATUS_VLAN_TPID_VALID != 0 { self.half(at + 36) } else { 0x8100 };
                let tci = self.word(at + 32) as u16;
                data.extend_from_slice(&bytes[..12]);
                data.extend_from_slice(&tpid.to_be_bytes());
                data.extend_from_slice(&tci.to_be_bytes());
                data.extend_from_slice(&bytes[12..]);
                wire_len += 4;
            } else {
                data.extend_from_slice(bytes);
            }
            each(Frame { link: Link::Ethernet, timestamp: Duration::new(u64::from(sec), nsec), wire_len, data });
            if next == 0 {
                break;
            }
            at += next as usize;
        }
        // Hand the block back, after every read of it.
        self.release(block);
        self.next = (self.next + 1) % self.blocks;
        Ok(count)
    }

    fn release(&mut self, block: usize) {
        // SAFETY: as `status`.
        unsafe { AtomicU32::from_ptr(self.ring.as_ptr().add(block + 8).cast()) }
            .store(TP_STATUS_KERNEL, Ordering::Release);
    }

    /// The socket's counters since the last call.
    pub fn counters(&self) -> io::Result<Counters> {
        let mut stats = StatsV3::default();
        let mut len = size_of::<StatsV3>() as libc::socklen_t;
        // SAFETY: `stats` and `len` are live and sized for tpacket_stats_v3.
        let ret = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                SOL_PACKET,
                PACKET_STATISTICS,
                std::ptr::from_mut(&mut stats).cast(),
                &raw mut len,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Counters { accepted: u64::from(stats.packets), dropped: u64::from(stats.drops) })
    }
}
