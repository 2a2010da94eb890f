//! `palisade capture filter`: the `tcpdump -r` of Palisade. A compiled filter (target
//! [`Target::File`]) runs over every frame of a pcap or pcapng file and the frames it accepts
//! are counted or written out, cut to the length the filter returned.
//!
//! Two engines run the same instructions: the kernel's (`BPF_PROG_TEST_RUN`, root) and the
//! compiler's interpreter (any user). `BPF_PROG_TEST_RUN` only takes frames from 14 bytes up
//! to about a page, and an IPv4 or IPv6 frame only with its whole fixed IP header; the kernel
//! engine probes the size range once and hands the frames it cannot take to the interpreter,
//! counting them in [`Summary::interpreted`].

use std::{
    io::{self, Read, Write},
    time::Duration,
};

use palisade_compiler::{
    bpf::{
        asm::Program,
        interp::{Fault, Maps, Run, Task},
    },
    capture::{
        Link,
        codegen::{SKB_CB0, SKB_SIZE, Target},
    },
};
use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter},
    pcapng::{Block, PcapNgReader},
};

use crate::sys::{ProgFd, SocketFilterRefused};

/// Largest frame read from a file: a bound on what a hostile file can make us allocate.
pub const MAX_FRAME: usize = 256 * 1024;

/// Which machine runs the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The compiler's interpreter: no privileges needed.
    Interpreter,
    /// The kernel, through `BPF_PROG_TEST_RUN` (needs root or `CAP_BPF`).
    Kernel,
}

impl Engine {
    /// The kernel when running as root, the interpreter otherwise.
    pub fn for_this_process() -> Engine {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 { Engine::Kernel } else { Engine::Interpreter }
    }
}

/// Why an offline run failed.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// The filter was not compiled for capture files.
    #[error("the filter was compiled for live sockets, not for capture files")]
    WrongTarget,
    /// The kernel refused the program.
    #[error(transparent)]
    Refused(#[from] SocketFilterRefused),
    /// `BPF_PROG_TEST_RUN` failed.
    #[error("BPF_PROG_TEST_RUN of frame {index} ({len} bytes): {source}")]
    TestRun {
        /// 0-based frame index.
        index: u64,
        /// Its length.
        len: usize,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The interpreter stopped.
    #[error("frame {index}: the interpreter stopped: {fault}")]
    Fault {
        /// 0-based frame index.
        index: u64,
        /// Why.
        fault: Fault,
    },
    /// The input is not a capture file this reads.
    #[error("reading the capture: {0}")]
    Read(String),
    /// A link type the filter language has no framing for.
    #[error("link type {0:?} is not supported (Ethernet and LINUX_SLL2 are)")]
    LinkType(DataLink),
    /// A frame of another link type than the filter was compiled for.
    #[error("frame {index} is {frame:?}, the filter was compiled for {filter:?}")]
    LinkMismatch {
        /// 0-based frame index.
        index: u64,
        /// The frame's.
        frame: Link,
        /// The filter's.
        filter: Link,
    },
    /// Writing the output failed.
    #[error("writing the capture: {0}")]
    Write(String),
}

/// A filter ready to run over frames.
#[derive(Debug)]
pub struct Filter {
    program: Program,
    link: Link,
    kernel: Option<Kernel>,
}

#[derive(Debug)]
struct Kernel {
    prog: ProgFd,
    /// Frame lengths `BPF_PROG_TEST_RUN` takes.
    sizes: std::ops::Range<usize>,
}

impl Kernel {
    /// Whether `BPF_PROG_TEST_RUN` takes `frame`: a length in [`Kernel::sizes`], and (Linux
    /// 6.18, measured) an IPv4 or IPv6 ethertype only with the whole fixed IP header present.
    fn takes(&self, frame: &[u8]) -> bool {
        let ethertype = frame.get(12..14).map(|t| u16::from_be_bytes([t[0], t[1]]));
        let needs = match ethertype {
            Some(0x0800) => 14 + 20,
            Some(0x86dd) => 14 + 40,
            _ => 0,
        };
        self.sizes.contains(&frame.len()) && frame.len() >= needs
    }
}

/// How one frame fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The filter's return value: 0 rejects, otherwise the bytes to keep.
    pub keep: u32,
    /// Which engine ran it.
    pub engine: Engine,
}

impl Filter {
    /// Prepares `program` (compiled for [`Target::File`] and Ethernet) for `engine`.
    pub fn new(program: Program, target: Target, engine: Engine) -> Result<Filter, OfflineError> {
        Self::for_link(program, target, Link::Ethernet, engine)
    }

    /// [`Filter::new`] for a program compiled for frames of `link`.
    pub fn for_link(program: Program, target: Target, link: Link, engine: Engine) -> Result<Filter, OfflineError> {
        if target != Target::File {
            return Err(OfflineError::WrongTarget);
        }
        let kernel = match engine {
            Engine::Interpreter => None,
            Engine::Kernel => {
                let prog = ProgFd::load_socket_filter(&program.bytes())?;
                let sizes = test_run_sizes(&prog);
                Some(Kernel { prog, sizes })
            }
        };
        Ok(Filter { program, link, kernel })
    }

    /// Runs the filter over one frame of `wire_len` bytes on the wire (`frame` may be shorter).
    pub fn run(&self, index: u64, frame: &[u8], wire_len: u32) -> Result<Verdict, OfflineError> {
        let ctx = context(wire_len.max(frame.len() as u32));
        if let Some(k) = &self.kernel
            && k.takes(frame)
        {
            let run = k.prog.test_run(frame, &ctx, 1).map_err(|source| OfflineError::TestRun {
                index,
                len: frame.len(),
                source,
            })?;
            return Ok(Verdict { keep: run.retval, engine: Engine::Kernel });
        }
        let keep = interpret(&self.program, frame, &ctx).map_err(|fault| OfflineError::Fault { index, fault })?;
        Ok(Verdict { keep, engine: Engine::Interpreter })
    }

    /// Whether frames go to the kernel (those it cannot take still run in the interpreter).
    pub fn uses_kernel(&self) -> bool {
        self.kernel.is_some()
    }

    /// Refuses a frame of another link type than the filter's.
    pub fn check_link(&self, index: u64, frame: &Frame) -> Result<(), OfflineError> {
        if frame.link == self.link {
            Ok(())
        } else {
            Err(OfflineError::LinkMismatch { index, frame: frame.link, filter: self.link })
        }
    }

    /// Mean nanoseconds per run of the kernel program over `frame`, `repeat` times
    /// (`BPF_PROG_TEST_RUN`'s own clock); `None` for the interpreter.
    pub fn kernel_cost(&self, frame: &[u8], wire_len: u32, repeat: u32) -> Option<io::Result<u32>> {
        let k = self.kernel.as_ref()?;
        Some(k.prog.test_run(frame, &context(wire_len), repeat).map(|r| r.duration_ns))
    }
}

/// The `struct __sk_buff` a file run passes: the length on the wire in `cb[0]`.
pub fn context(wire_len: u32) -> [u8; SKB_SIZE] {
    let mut ctx = [0_u8; SKB_SIZE];
    ctx[SKB_CB0..SKB_CB0 + 4].copy_from_slice(&wire_len.to_ne_bytes());
    ctx
}

/// Runs `program` in the interpreter over `frame` with context `ctx`.
pub fn interpret(program: &Program, frame: &[u8], ctx: &[u8]) -> Result<u32, Fault> {
    let mut maps = Maps::default();
    let mut run = Run::new(&mut maps, Task::default());
    let ctx = run.object(ctx.to_vec());
    run.packet(frame);
    Ok(run.exec(program, ctx)?.ret as u32)
}

/// The frame lengths this kernel's `BPF_PROG_TEST_RUN` accepts for a socket filter: from the
/// Ethernet header's 14 bytes up to a page less the skb's head- and tailroom, found by asking.
fn test_run_sizes(prog: &ProgFd) -> std::ops::Range<usize> {
    let frame = vec![0_u8; 65_536];
    let ctx = context(0);
    let takes = |n: usize| prog.test_run(&frame[..n], &ctx, 1).is_ok();
    let (mut lo, mut hi) = (14_usize, 65_536_usize);
    if !takes(lo) {
        return 0..0;
    }
    while lo + 1 < hi {
        let mid = usize::midpoint(lo, hi);
        if takes(mid) { lo = mid } else { hi = mid }
    }
    14..lo + 1
}

/// What a run over a file counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Frames read.
    pub packets: u64,
    /// Frames the filter accepted.
    pub accepted: u64,
    /// Frames the kernel engine could not take and the interpreter ran.
    pub interpreted: u64,
}

/// One frame of a capture file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Its framing.
    pub link: Link,
    /// Capture time.
    pub timestamp: Duration,
    /// Length on the wire.
    pub wire_len: u32,
    /// The captured bytes (possibly fewer).
    pub data: Vec<u8>,
}

fn link_of(link: DataLink) -> Result<Link, OfflineError> {
    match link {
        DataLink::ETHERNET => Ok(Link::Ethernet),
        DataLink::LINUX_SLL2 => Ok(Link::LinuxSll2),
        other => Err(OfflineError::LinkType(other)),
    }
}

/// The link type of a capture file's first interface (what to compile a filter for), from
/// the file's first bytes: the pcap header, or the pcapng section header and the first
/// interface description within `prefix`. `None`: no interface is declared there.
pub fn sniff_link(prefix: &[u8]) -> Result<Option<Link>, OfflineError> {
    let word = |at: usize, little: bool| -> Option<u32> {
        let b: [u8; 4] = prefix.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if little { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) })
    };
    let short = || OfflineError::Read("the file is shorter than a capture header".to_owned());
    let magic = word(0, true).ok_or_else(short)?;
    let link = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d | 0xd4c3_b2a1 | 0x4d3c_b2a1 => {
            let little = matches!(magic, 0xa1b2_c3d4 | 0xa1b2_3c4d);
            // The link type is the low 16 bits (the rest can carry FCS details).
            word(20, little).ok_or_else(short)? & 0xffff
        }
        0x0a0d_0d0a => {
            let little = word(8, true).ok_or_else(short)? == 0x1a2b_3c4d;
            let mut at = word(4, little).ok_or_else(short)? as usize;
            loop {
                let (Some(kind), Some(len)) = (word(at, little), word(at.saturating_add(4), little)) else {
                    return Ok(None);
                };
                if kind == 1 {
                    // An interface block cut by the end of the prefix: not known from here.
                    let Some(b) = prefix.get(at + 8..at + 10) else { return Ok(None) };
                    break u32::from(if little {
                        u16::from_le_bytes([b[0], b[1]])
                    } else {
                        u16::from_be_bytes([b[0], b[1]])
                    });
                }
                if len < 12 {
                    return Err(OfflineError::Read(format!("a pcapng block of {len} bytes")));
                }
                at = at.saturating_add(len as usize);
            }
        }
        other => return Err(OfflineError::Read(format!("not a pcap or pcapng file (magic {other:#010x})"))),
    };
    link_of(DataLink::from(link)).map(Some)
}

/// Reads every frame of a pcap or pcapng file of Ethernet or `LINUX_SLL2` frames, calling
/// `each` in order.
pub fn read_frames(
    input: impl Read,
    mut each: impl FnMut(&Frame) -> Result<(), OfflineError>,
) -> Result<(), OfflineError> {
    let mut input = io::BufReader::new(input);
    let mut magic = [0_u8; 4];
    let peek = io::BufRead::fill_buf(&mut input).map_err(|e| OfflineError::Read(e.to_string()))?;
    if peek.len() < 4 {
        return Err(OfflineError::Read("the file is shorter than a capture header".to_owned()));
    }
    magic.copy_from_slice(&peek[..4]);
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut reader = PcapNgReader::new(input).map_err(|e| OfflineError::Read(e.to_string()))?;
        while let Some(block) = reader.next_block() {
            let (block, state) = block.map_err(|e| OfflineError::Read(e.to_string()))?;
            match block {
                Block::EnhancedPacket(p) => {
                    let Some(link) = state.interfaces().get(p.interface_id as usize).map(|i| i.linktype) else {
                        return Err(OfflineError::Read(format!("packet of undeclared interface {}", p.interface_id)));
                    };
                    let link = link_of(link)?;
                    check_size(p.data.len())?;
                    each(&Frame { link, timestamp: p.timestamp, wire_len: p.original_len, data: p.data.to_vec() })?;
                }
                Block::SimplePacket(_) | Block::Packet(_) => {
                    return Err(OfflineError::Read(
                        "pcapng simple/obsolete packet blocks are not supported".to_owned(),
                    ));
                }
                _ => {}
            }
        }
        return Ok(());
    }
    let mut reader = PcapReader::new(input).map_err(|e| OfflineError::Read(e.to_string()))?;
    let link = link_of(reader.header().datalink)?;
    while let Some(packet) = reader.next_packet() {
        let packet = packet.map_err(|e| OfflineError::Read(e.to_string()))?;
        check_size(packet.data().len())?;
        each(&Frame {
            link,
            timestamp: packet.timestamp(),
            wire_len: packet.orig_len(),
            data: packet.data().to_vec(),
        })?;
    }
    Ok(())
}

fn check_size(n: usize) -> Result<(), OfflineError> {
    if n > MAX_FRAME {
        return Err(OfflineError::Read(format!("a {n}-byte frame; at most {MAX_FRAME} are read")));
    }
    Ok(())
}

/// A pcap writer for accepted frames (nanosecond timestamps).
pub struct Output<W: Write> {
    writer: PcapWriter<W>,
}

impl<W: Write> Output<W> {
    /// Writes the header of an Ethernet capture file.
    pub fn new(w: W) -> Result<Self, OfflineError> {
        Self::for_link(w, Link::Ethernet)
    }

    /// Writes the header of a capture file of `link` frames.
    pub fn for_link(w: W, link: Link) -> Result<Self, OfflineError> {
        let header = PcapHeader {
            snaplen: MAX_FRAME as u32,
            datalink: DataLink::from(link.dlt()),
            ts_resolution: pcap_file::pcap::PcapTsResolution::NanoSecond,
            ..PcapHeader::default()
        };
        let writer = PcapWriter::with_header(w, header).map_err(|e| OfflineError::Write(e.to_string()))?;
        Ok(Self { writer })
    }

    /// Writes `frame`, cut to `keep` bytes.
    pub fn write(&mut self, frame: &Frame, keep: u32) -> Result<(), OfflineError> {
        let data = &frame.data[..frame.data.len().min(keep as usize)];
        let packet = PcapPacket::new(frame.timestamp, frame.wire_len.max(data.len() as u32), data)
            .map_err(|e| OfflineError::Write(e.to_string()))?;
        self.writer.write_packet(&packet).map_err(|e| OfflineError::Write(e.to_string()))?;
        Ok(())
    }

    /// Flushes and returns the writer.
    pub fn finish(mut self) -> Result<W, OfflineError> {
        self.writer.flush().map_err(|e| OfflineError::Write(e.to_string()))?;
        Ok(self.writer.into_inner())
    }
}

/// Runs `filter` over every frame of `input`, writing the accepted ones to `output`.
pub fn filter_file<W: Write>(
    filter: &Filter,
    input: impl Read,
    mut output: Option<&mut Output<W>>,
) -> Result<Summary, OfflineError> {
    let mut summary = Summary::default();
    read_frames(input, |frame| {
        filter.check_link(summary.packets, frame)?;
        let verdict = filter.run(summary.packets, &frame.data, frame.wire_len)?;
        summary.packets += 1;
        if verdict.engine == Engine::Interpreter && filter.uses_kernel() {
            summary.interpreted += 1;
        }
        if verdict.keep != 0 {
            summary.accepted += 1;
            if let Some(out) = output.as_deref_mut() {
                out.write(frame, verdict.keep)?;
            }
        }
        Ok(())
    })?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pcap_file::{
        DataLink,
        pcapng::{
            PcapNgWriter,
            blocks::{enhanced_packet::EnhancedPacketBlock, interface_description::InterfaceDescriptionBlock},
        },
    };

    use super::{Frame, Link, read_frames, sniff_link};

    #[test]
    fn pcapng_files_are_read_with_their_link_type_and_wire_lengths() {
        let mut writer = PcapNgWriter::new(Vec::new()).expect("writer");
        writer.write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::LINUX_SLL2, 0)).expect("idb");
        for (i, len) in [(1_u64, 40_u32), (2, 60)] {
            let data = vec![i as u8; 30];
            let block = EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::from_secs(i),
                original_len: len,
                data: data.into(),
                options: vec![],
            };
            writer.write_pcapng_block(block).expect("epb");
        }
        let bytes = writer.into_inner();
        assert_eq!(sniff_link(&bytes).expect("sniffs"), Some(Link::LinuxSll2));
        let mut frames: Vec<Frame> = Vec::new();
        read_frames(&bytes[..], |f| {
            frames.push(f.clone());
            Ok(())
        })
        .expect("reads");
        assert_eq!(frames.len(), 2);
        assert!(frames.iter().all(|f| f.link == Link::LinuxSll2 && f.data.len() == 30));
        assert_eq!((frames[0].wire_len, frames[1].timestamp), (40, Duration::from_secs(2)));
        assert!(sniff_link(b"not a capture file").is_err());
        // A prefix that cuts the interface block: not known yet, not an error.
        let shb = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
        assert_eq!(sniff_link(&bytes[..shb + 9]).expect("cut is not an error"), None);
    }
}
