//! Capture expressions → eBPF socket filters, with libpcap's meaning for Ethernet frames.
//!
//! Each primitive is lowered, in the order the text names them, to the tests libpcap's
//! `gencode.c` makes — the same loads at the same offsets, in the same order — and the
//! boolean structure becomes short-circuit jumps. Order matters because a load past the end of
//! the frame ends a classic filter with "reject" however the expression is nested; eBPF's
//! legacy packet loads (`LD_ABS`/`LD_IND`, rewritten by the verifier into helper calls that
//! return 0 from the program when out of range) behave the same way, so they are what this
//! emits. Two further libpcap behaviours are kept on purpose: `vlan` shifts the link-layer
//! type and payload offsets of every primitive that follows it in the text (not only those it
//! is `and`ed with), and arithmetic is unsigned 32-bit with a division by zero rejecting the
//! packet and a shift by 32 or more giving 0, while an accessor's index plus its header offset
//! does not wrap (`ip[0xfffffff2]` is past the end, not byte 0).
//!
//! Every test runs in text order, as in libpcap's unoptimized program (`tcpdump -O`). Its
//! optimizer agrees except on frames too short for some load: there it sometimes drops a load
//! whose outcome cannot change the answer (`net ::/0` compares nothing; in `not (arp host A
//! and ip6)` an ARP frame's answer does not depend on A), so a short frame the unoptimized
//! program rejects may pass. Such a frame gets the unoptimized answer here.

use std::collections::HashMap;

use crate::bpf::{
    asm::{Asm, AsmError, Label, Program},
    insn::{self, Alu, Jmp, R0, R1, R6, R7, R8, R9, R10, Size},
    interp::SKF_LL_OFF,
};

use super::{
    Link,
    parse::{ArOp, Arith, Dir, Expr, Family, Layer, Prim, Rel, Transport},
};

/// Most instruction slots a capture program may have: every jump then fits the 16-bit
/// offset (the kernel would take more, but not with our forward jumps to one exit).
pub const MAX_SLOTS: usize = 32_767;
/// Conditional jumps on one path the verifier follows (`BPF_COMPLEXITY_LIMIT_JMP_SEQ`).
pub const MAX_PATH_JUMPS: u64 = 8192;
/// Nesting of arithmetic sub-expressions that need a stack slot (4 bytes each).
const MAX_SPILLS: usize = 128;
/// Largest packet index a variable load may use: beyond any frame (and below the kernel's
/// negative-offset ranges, which a wrapped index must not reach).
const MAX_INDEX: i32 = 0xf_ffff;

/// Where the link-layer type and the network layer start (Ethernet before any VLAN tag;
/// `LINUX_SLL2`'s protocol field and 20-byte header).
const fn offsets(link: Link) -> (u32, u32) {
    match link {
        Link::Ethernet => (12, 14),
        Link::LinuxSll2 => (0, 20),
    }
}

const ETHERTYPE_IP: u32 = 0x0800;
const ETHERTYPE_ARP: u32 = 0x0806;
const ETHERTYPE_REVARP: u32 = 0x8035;
const ETHERTYPE_IPV6: u32 = 0x86dd;
const VLAN_TPIDS: [u32; 3] = [0x8100, 0x88a8, 0x9100];
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const IPPROTO_SCTP: u32 = 132;
const IPPROTO_FRAGMENT: u32 = 44;
const IPPROTO_ICMPV6: u32 = 58;

/// `struct __sk_buff` fields read.
const SKB_LEN: i16 = 0;
const SKB_VLAN_PRESENT: i16 = 20;
const SKB_VLAN_TCI: i16 = 24;
/// `__sk_buff.cb[0]`: where a file run passes the frame's length on the wire.
pub const SKB_CB0: usize = 48;
/// Size of `struct __sk_buff` (what `BPF_PROG_TEST_RUN` takes as context).
pub const SKB_SIZE: usize = 192;

/// Where a program runs, which decides how it sees the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Frames from a capture file, run by `BPF_PROG_TEST_RUN` (or the interpreter): loads are
    /// relative to the link-layer header (`SKF_LL_OFF`, because the kernel's test run pulls the
    /// Ethernet header off the data), VLAN tags are read from the frame and the length on the
    /// wire comes from `__sk_buff.cb[0]` (a file's frame may be cut short of it).
    File,
    /// A live `AF_PACKET` socket: loads are relative to the frame, the kernel has moved the
    /// outer VLAN tag into `__sk_buff` (the first `vlan` reads it there and shifts nothing) and
    /// the length is `__sk_buff.len`. With [`Link::LinuxSll2`], the `any` pseudo-interface
    /// (a `SOCK_DGRAM` socket): the packet starts at its network header, the cooked header's
    /// protocol is `__sk_buff.protocol` and `len` counts the 20-byte header, as in the file.
    Live,
}

/// What the generator can refuse (the parser has already checked the language).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodegenError {
    /// The program would be larger than [`MAX_SLOTS`].
    #[error(
        "the filter needs {slots} instructions, more than the {MAX_SLOTS} allowed (long `or` runs of IPv4 hosts, networks and ports cost little; other primitives, IPv6 hosts among them, cost about 20 each)"
    )]
    TooLarge {
        /// Slots needed.
        slots: usize,
    },
    /// More conditional jumps on one path than the verifier follows.
    #[error(
        "the filter has a path through {jumps} tests, more than the {MAX_PATH_JUMPS} the kernel's verifier follows (long `or` runs of IPv4 hosts, networks and ports are searched; runs of other primitives, IPv6 hosts among them, are tested one by one)"
    )]
    TooManyTests {
        /// Conditional jumps on the longest path.
        jumps: u64,
    },
    /// Arithmetic nested deeper than the stack allows.
    #[error("arithmetic is nested too deeply (more than {MAX_SPILLS} pending operands)")]
    TooDeep,
    /// Not built for this combination.
    #[error("{0}")]
    Unsupported(&'static str),
    /// An assembler invariant failed (a bug, reported rather than panicking).
    #[error(transparent)]
    Asm(#[from] AsmError),
}

/// Generates the socket filter for `expr`: it returns `snaplen` for a packet that matches, 0
/// otherwise.
pub fn generate(expr: &Expr, target: Target, link: Link, snaplen: u32) -> Result<Program, CodegenError> {
    let (off_linktype, off_nl) = offsets(link);
    let mut asm = Asm::new();
    let reject = asm.label();
    let mut g = Gen {
        asm,
        target,
        off_linktype,
        off_nl,
        reject,
        shift: 0,
        live_vlan_used: false,
        spills: 0,
        regs: Regs::UNKNOWN,
        regs_at: HashMap::new(),
        cooked: target == Target::Live && link == Link::LinuxSll2,
        unsupported: None,
    };
    g.asm.push(insn::mov64_reg(R6, R1));
    g.jump_if(expr, false, reject)?;
    if let Some(why) = g.unsupported {
        return Err(CodegenError::Unsupported(why));
    }
    g.asm.push(insn::mov32_imm(R0, snaplen as i32));
    g.asm.push(insn::exit());
    g.asm.bind(reject);
    g.asm.push(insn::mov64_imm(R0, 0));
    g.asm.push(insn::exit());
    if g.asm.len() > MAX_SLOTS {
        return Err(CodegenError::TooLarge { slots: g.asm.len() });
    }
    let program = g.asm.finish()?;
    // Caught here rather than by the verifier on a node ("the sequence of 8193 jumps is too
    // complex"); every jump we emit goes forward.
    let jumps = program.longest_path_jumps().unwrap_or_else(|| program.max_path_jumps());
    if jumps > MAX_PATH_JUMPS {
        return Err(CodegenError::TooManyTests { jumps });
    }
    Ok(program)
}

/// A packet load.
#[derive(Debug, Clone, Copy)]
enum Load {
    /// At a constant offset from the link-layer header.
    Abs(Size, u32),
    /// At a constant offset from the IPv4 payload (after `4 * (ip[0] & 0xf)` bytes), network
    /// header at the given link offset.
    Ip4Payload { size: Size, nl: u32, off: u32 },
    /// A `__sk_buff` field.
    Skb(i16),
}

/// A test: `(load & mask) op value`.
#[derive(Debug, Clone, Copy)]
struct Cmp {
    load: Load,
    mask: u32,
    op: Rel,
    value: u32,
}

/// The tests a primitive lowers to.
enum Cond<'e> {
    Test(Cmp),
    And(Vec<Cond<'e>>),
    Or(Vec<Cond<'e>>),
    /// `a REL b` over arithmetic with the current offsets (its protocol guards come before it
    /// in an `And`).
    Rel(Rel, &'e Arith, &'e Arith, u32),
}

struct Gen {
    asm: Asm,
    target: Target,
    /// Where the link-layer type is, before VLAN shifts.
    off_linktype: u32,
    /// Where the network layer starts, before VLAN shifts.
    off_nl: u32,
    /// Returns 0: where a false expression, a division by zero and a wild index go.
    reject: Label,
    /// Bytes the `vlan` primitives seen so far add to the link-type and payload offsets.
    shift: u32,
    /// Whether a live program's first `vlan` (read from `__sk_buff`) has been used.
    live_vlan_used: bool,
    /// Stack slots in use by pending arithmetic operands.
    spills: usize,
    /// What the registers hold here, so the same bytes are not loaded twice.
    regs: Regs,
    /// What they hold on the jumps to each label not bound yet.
    regs_at: HashMap<Label, Regs>,
    /// A live socket on `any` (`SOCK_DGRAM`): the program sees the packet from its network
    /// header, the `LINUX_SLL2` header the capture is written with does not exist yet. Its
    /// protocol field is `__sk_buff.protocol`; no other byte of it can be read.
    cooked: bool,
    /// Set when the expression needs what this target cannot do.
    unsupported: Option<&'static str>,
}

/// `__sk_buff.protocol`: the packet's protocol (network byte order), what a cooked header's
/// first field says.
const SKB_PROTOCOL: i16 = 16;
/// What a live program on `any` cannot read.
const COOKED_LINK_BYTES: &str = "live capture on `any` reads only the protocol of the LINUX_SLL2 header (the kernel hands the socket the packet from its network header); link-layer accessors are not available there";

/// What one register holds at a point of the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Val {
    /// No path reaches here (after an unconditional jump).
    Unreachable,
    /// Something else.
    Unknown,
    /// `load(size, off) & mask`.
    Holds(Size, u32, u32),
    /// `4 * (ip[0] & 0xf)` of the IPv4 header at this offset.
    HeaderLength(u32),
    /// A load at `off` from the IPv4 payload of the header at `nl`.
    Payload(Size, u32, u32),
}

impl Val {
    /// Whether this is a raw loaded value worth keeping in r8 when r0 is reloaded.
    fn is_raw_load(self) -> bool {
        matches!(self, Val::Holds(_, _, u32::MAX) | Val::Payload(..))
    }
}

impl Val {
    fn merge(self, other: Val) -> Val {
        match (self, other) {
            (Val::Unreachable, x) | (x, Val::Unreachable) => x,
            (a, b) if a == b => a,
            _ => Val::Unknown,
        }
    }
}

/// The registers a test's value can be found in: r0 (the last load), r8 (the load before,
/// outside arithmetic), r7 (the IPv4 header length) and r9 (the link-layer type). Loads
/// clobber r0–r5 only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Regs {
    r0: Val,
    r7: Val,
    r8: Val,
    r9: Val,
}

impl Regs {
    const UNKNOWN: Regs = Regs { r0: Val::Unknown, r7: Val::Unknown, r8: Val::Unknown, r9: Val::Unknown };
    const UNREACHABLE: Regs =
        Regs { r0: Val::Unreachable, r7: Val::Unreachable, r8: Val::Unreachable, r9: Val::Unreachable };

    fn merge(self, o: Regs) -> Regs {
        Regs { r0: self.r0.merge(o.r0), r7: self.r7.merge(o.r7), r8: self.r8.merge(o.r8), r9: self.r9.merge(o.r9) }
    }
}

fn test(load: Load, op: Rel, value: u32) -> Cond<'static> {
    Cond::Test(Cmp { load, mask: u32::MAX, op, value })
}

fn masked(load: Load, mask: u32, value: u32) -> Cond<'static> {
    Cond::Test(Cmp { load, mask, op: Rel::Eq, value })
}

fn either<'e>(dir: Dir, src: Cond<'e>, dst: Cond<'e>) -> Cond<'e> {
    match dir {
        Dir::Src => src,
        Dir::Dst => dst,
        Dir::Either => Cond::Or(vec![src, dst]),
        Dir::Both => Cond::And(vec![src, dst]),
    }
}

impl Gen {
    fn linktype(&self, ethertype: u32) -> Cond<'static> {
        test(Load::Abs(Size::H, self.off_linktype + self.shift), Rel::Eq, ethertype)
    }

    fn nl(&self) -> u32 {
        self.off_nl + self.shift
    }

    /// A load at `off` from the network header.
    fn net(&self, size: Size, off: u32) -> Load {
        Load::Abs(size, self.nl() + off)
    }

    /// `ip[6:2] & 0x1fff = 0`: not a later fragment.
    fn first_fragment(&self) -> Cond<'static> {
        masked(self.net(Size::H, 6), 0x1fff, 0)
    }

    /// libpcap's `gen_proto` for IPv4 (`ip proto N`, no fragment check).
    fn proto4(&self, n: u32) -> Cond<'static> {
        Cond::And(vec![self.linktype(ETHERTYPE_IP), test(self.net(Size::B, 9), Rel::Eq, n)])
    }

    /// `ip6 proto N`: the next header directly or behind one fragment header.
    fn proto6(&self, n: u32) -> Cond<'static> {
        Cond::And(vec![
            self.linktype(ETHERTYPE_IPV6),
            Cond::Or(vec![
                test(self.net(Size::B, 6), Rel::Eq, n),
                Cond::And(vec![
                    test(self.net(Size::B, 6), Rel::Eq, IPPROTO_FRAGMENT),
                    test(self.net(Size::B, 40), Rel::Eq, n),
                ]),
            ]),
        ])
    }

    fn proto(&self, family: Family, n: u32) -> Cond<'static> {
        match family {
            Family::Ip => self.proto4(n),
            Family::Ip6 => self.proto6(n),
            _ => Cond::Or(vec![self.proto4(n), self.proto6(n)]),
        }
    }

    /// An IPv4 address (under `mask`) at `src`/`dst` offsets of a protocol's header.
    fn hostop(&self, ethertype: u32, (src, dst): (u32, u32), dir: Dir, addr: u32, mask: u32) -> Cond<'static> {
        let one = |off| Cond::And(vec![self.linktype(ethertype), masked(self.net(Size::W, off), mask, addr)]);
        either(dir, one(src), one(dst))
    }

    fn host4(&self, family: Family, dir: Dir, addr: u32, mask: u32) -> Cond<'static> {
        const IP: (u32, u32) = (12, 16);
        const ARP: (u32, u32) = (14, 24);
        match family {
            Family::Ip => self.hostop(ETHERTYPE_IP, IP, dir, addr, mask),
            Family::Arp => self.hostop(ETHERTYPE_ARP, ARP, dir, addr, mask),
            Family::Rarp => self.hostop(ETHERTYPE_REVARP, ARP, dir, addr, mask),
            Family::Any | Family::Ip6 => Cond::Or(vec![
                self.hostop(ETHERTYPE_IP, IP, dir, addr, mask),
                self.hostop(ETHERTYPE_ARP, ARP, dir, addr, mask),
                self.hostop(ETHERTYPE_REVARP, ARP, dir, addr, mask),
            ]),
        }
    }

    fn host6(&self, dir: Dir, addr: u128, mask: u128) -> Cond<'static> {
        let one = |off: u32| {
            let mut tests = vec![self.linktype(ETHERTYPE_IPV6)];
            for word in 0..4_u32 {
                let shift = 96 - 32 * word;
                let (a, m) = ((addr >> shift) as u32, (mask >> shift) as u32);
                tests.push(masked(self.net(Size::W, off + 4 * word), m, a));
            }
            Cond::And(tests)
        };
        either(dir, one(8), one(24))
    }

    fn port4(&self, transport: Transport, dir: Dir, first: u16, last: u16) -> Cond<'static> {
        let atom = |off| {
            let load = Load::Ip4Payload { size: Size::H, nl: self.nl(), off };
            range(load, first, last)
        };
        let op = |proto| {
            Cond::And(vec![
                test(self.net(Size::B, 9), Rel::Eq, proto),
                self.first_fragment(),
                either(dir, atom(0), atom(2)),
            ])
        };
        Cond::And(vec![self.linktype(ETHERTYPE_IP), transports(transport, op)])
    }

    fn port6(&self, transport: Transport, dir: Dir, first: u16, last: u16) -> Cond<'static> {
        let atom = |off: u32| range(self.net(Size::H, 40 + off), first, last);
        let op = |proto| Cond::And(vec![test(self.net(Size::B, 6), Rel::Eq, proto), either(dir, atom(0), atom(2))]);
        Cond::And(vec![self.linktype(ETHERTYPE_IPV6), transports(transport, op)])
    }

    /// Lowers a primitive at the current offsets (and moves them, for `vlan`).
    fn prim(&mut self, p: &Prim) -> Cond<'static> {
        match *p {
            Prim::Host { family, dir, addr } => match addr {
                std::net::IpAddr::V4(a) => self.host4(family, dir, a.to_bits(), u32::MAX),
                std::net::IpAddr::V6(a) => self.host6(dir, a.to_bits(), u128::MAX),
            },
            Prim::Net { family, dir, net } => match net {
                ipnet::IpNet::V4(n) => self.host4(family, dir, n.network().to_bits(), n.netmask().to_bits()),
                ipnet::IpNet::V6(n) => self.host6(dir, n.network().to_bits(), n.netmask().to_bits()),
            },
            Prim::Port { transport, dir, first, last } => {
                Cond::Or(vec![self.port4(transport, dir, first, last), self.port6(transport, dir, first, last)])
            }
            Prim::EtherHost { dir, mac } => {
                // libpcap compares the last four bytes, then the first two.
                let one = |off: u32| {
                    Cond::And(vec![
                        test(
                            Load::Abs(Size::W, off + 2),
                            Rel::Eq,
                            u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]),
                        ),
                        test(Load::Abs(Size::H, off), Rel::Eq, u32::from(u16::from_be_bytes([mac[0], mac[1]]))),
                    ])
                };
                either(dir, one(6), one(0))
            }
            Prim::EtherProto(n) => self.linktype(n),
            Prim::Proto { family, number } => self.proto(family, number),
            Prim::Vlan(id) => {
                if self.target == Target::Live && !self.live_vlan_used {
                    self.live_vlan_used = true;
                    let present = test(Load::Skb(SKB_VLAN_PRESENT), Rel::Ne, 0);
                    return match id {
                        None => present,
                        Some(id) => Cond::And(vec![
                            present,
                            Cond::Test(Cmp {
                                load: Load::Skb(SKB_VLAN_TCI),
                                mask: 0x0fff,
                                op: Rel::Eq,
                                value: u32::from(id),
                            }),
                        ]),
                    };
                }
                let tpid = Cond::Or(VLAN_TPIDS.iter().map(|&t| self.linktype(t)).collect());
                let cond = match id {
                    None => tpid,
                    Some(id) => Cond::And(vec![tpid, masked(self.net(Size::H, 0), 0x0fff, u32::from(id))]),
                };
                self.shift += 4;
                cond
            }
        }
    }

    /// The protocol checks libpcap puts before a relation's loads, in its order.
    fn guards(&self, a: &Arith, out: &mut Vec<Cond<'_>>) {
        match a {
            Arith::Num(_) | Arith::Len => {}
            Arith::Neg(a) => self.guards(a, out),
            Arith::Bin(_, a, b) => {
                self.guards(a, out);
                self.guards(b, out);
            }
            Arith::Load { layer, offset, .. } => match layer {
                Layer::Ether => self.guards(offset, out),
                Layer::Ip | Layer::Ip6 | Layer::Arp => {
                    self.guards(offset, out);
                    out.push(self.linktype(match layer {
                        Layer::Ip => ETHERTYPE_IP,
                        Layer::Ip6 => ETHERTYPE_IPV6,
                        _ => ETHERTYPE_ARP,
                    }));
                }
                Layer::Tcp | Layer::Udp | Layer::Icmp => {
                    out.push(self.linktype(ETHERTYPE_IP));
                    self.guards(offset, out);
                    out.push(match layer {
                        Layer::Tcp => self.proto(Family::Any, IPPROTO_TCP),
                        Layer::Udp => self.proto(Family::Any, IPPROTO_UDP),
                        _ => self.proto4(1),
                    });
                    out.push(self.first_fragment());
                }
                Layer::Icmp6 => {
                    self.guards(offset, out);
                    out.push(self.linktype(ETHERTYPE_IPV6));
                    out.push(test(self.net(Size::B, 6), Rel::Eq, IPPROTO_ICMPV6));
                }
            },
        }
    }

    /// A relation's tests: libpcap's protocol guards for its accessors, then the comparison.
    fn relation_cond<'e>(&self, rel: Rel, a: &'e Arith, b: &'e Arith) -> Cond<'e> {
        let mut all: Vec<Cond<'e>> = Vec::new();
        self.guards(a, &mut all);
        self.guards(b, &mut all);
        all.push(Cond::Rel(rel, a, b, self.nl()));
        Cond::And(all)
    }

    /// Jumps to `label` when `expr` is `want`, falls through otherwise. `and`/`or` associate
    /// left, so a long expression is a long left spine: it is walked with a loop (each level's
    /// right operand, a term or a parenthesized group, is emitted on the way back up), and
    /// recursion only follows parentheses and `not`, which the parser bounds.
    fn jump_if(&mut self, expr: &Expr, want: bool, label: Label) -> Result<(), CodegenError> {
        struct Level<'e> {
            right: &'e Expr,
            want: bool,
            label: Label,
            bind: Option<Label>,
        }
        let mut levels = Vec::new();
        let (mut node, mut want, mut label) = (expr, want, label);
        let mut top_of_or = true;
        loop {
            match node {
                Expr::Or(..) if top_of_or && has_set_run(node) => {
                    if want {
                        self.or_chain_true(node, label)?;
                    } else {
                        let yes = self.asm.label();
                        self.or_chain_true(node, yes)?;
                        self.ja(label);
                        self.bind(yes);
                    }
                    break;
                }
                Expr::Or(left, right) | Expr::And(left, right) => {
                    let or = matches!(node, Expr::Or(..));
                    // `a or b` jumps when true as a does, then b; `a and b` jumps when false
                    // likewise; the other two need a label of their own past b.
                    if or == want {
                        levels.push(Level { right, want, label, bind: None });
                    } else {
                        let own = self.asm.label();
                        levels.push(Level { right, want, label, bind: Some(own) });
                        (want, label) = (!want, own);
                    }
                    top_of_or = !or;
                    node = left;
                }
                Expr::Not(inner) => {
                    self.jump_if(inner, !want, label)?;
                    break;
                }
                Expr::Prim(p) => {
                    let cond = self.prim(p);
                    self.cond(&cond, want, label)?;
                    break;
                }
                Expr::Rel(rel, a, b) => {
                    let cond = self.relation_cond(*rel, a, b);
                    self.cond(&cond, want, label)?;
                    break;
                }
            }
        }
        for level in levels.into_iter().rev() {
            self.jump_if(level.right, level.want, level.label)?;
            if let Some(own) = level.bind {
                self.bind(own);
            }
        }
        Ok(())
    }

    /// An `or` chain with runs of IPv4 hosts (same protocols and direction): the first host
    /// of a run is tested as libpcap tests it — the same loads, so a frame too short for them
    /// is rejected at the same point — and the rest as one set, a binary search over the
    /// addresses on the values those loads gave (the protocols' order does not matter: one
    /// link-layer type at most matches). Jumps to `yes` when true.
    fn or_chain_true(&mut self, expr: &Expr, yes: Label) -> Result<(), CodegenError> {
        let items = or_chain(expr);
        let mut i = 0;
        while i < items.len() {
            let run = run_length(&items[i..]);
            if run >= SET_MIN
                && let Some((key, first)) = member(items[i])
            {
                let rest = merged(items[i + 1..i + run].iter().filter_map(|e| member(e).map(|m| m.1)).collect());
                match key {
                    RunKey::Host(family, dir) => self.host_run_true(family, dir, first, &rest, yes),
                    RunKey::Port(transport, dir) => self.port_run_true(transport, dir, first, &rest, yes),
                }
                i += run;
            } else {
                self.jump_if(items[i], true, yes)?;
                i += 1;
            }
        }
        Ok(())
    }

    /// Jumps to `yes` when a TCP/UDP/SCTP port of the frame in `dir` is `first` — tested as
    /// libpcap tests `port first`: IPv4 (first fragments) then IPv6, each transport's
    /// protocol, then the ports — or one of `rest`, searched among the ports those loads gave.
    fn port_run_true(&mut self, transport: Transport, dir: Dir, first: (u32, u32), rest: &[(u32, u32)], yes: Label) {
        let protos: &[u32] = match transport {
            Transport::Tcp => &[IPPROTO_TCP],
            Transport::Udp => &[IPPROTO_UDP],
            Transport::Sctp => &[IPPROTO_SCTP],
            Transport::Any => &[IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP],
        };
        let offsets: &[u32] = match dir {
            Dir::Src => &[0],
            Dir::Dst => &[2],
            Dir::Either | Dir::Both => &[0, 2],
        };
        for v6 in [false, true] {
            let skip = self.asm.label();
            let ethertype = if v6 { ETHERTYPE_IPV6 } else { ETHERTYPE_IP };
            let linktype = Cmp {
                load: Load::Abs(Size::H, self.off_linktype + self.shift),
                mask: u32::MAX,
                op: Rel::Eq,
                value: ethertype,
            };
            let reg = self.load(&linktype);
            self.jump(Jmp::Jne, reg, &linktype, skip);
            for &proto in protos {
                let next = self.asm.label();
                let nh =
                    Cmp { load: self.net(Size::B, if v6 { 6 } else { 9 }), mask: u32::MAX, op: Rel::Eq, value: proto };
                let reg = self.load(&nh);
                self.jump(Jmp::Jne, reg, &nh, next);
                if !v6 {
                    let frag = Cmp { load: self.net(Size::H, 6), mask: 0x1fff, op: Rel::Eq, value: 0 };
                    let reg = self.load(&frag);
                    self.jump(Jmp::Jne, reg, &frag, next);
                }
                let port = |g: &Self, off: u32| {
                    let load =
                        if v6 { g.net(Size::H, 40 + off) } else { Load::Ip4Payload { size: Size::H, nl: g.nl(), off } };
                    Cmp { load, mask: u32::MAX, op: Rel::Eq, value: 0 }
                };
                for &off in offsets {
                    let reg = self.load(&port(self, off));
                    self.interval(reg, first, yes);
                }
                for &off in offsets {
                    let reg = self.load(&port(self, off));
                    self.search(reg, rest, yes);
                }
                self.bind(next);
            }
            self.bind(skip);
        }
    }

    /// Jumps to `yes` when the frame's IPv4 (ARP, RARP) address in `dir` is `first` —
    /// tested as libpcap tests the first host of the run, the same loads in the same order —
    /// or one of `rest`, searched among the values those loads gave.
    fn host_run_true(&mut self, family: Family, dir: Dir, first: (u32, u32), rest: &[(u32, u32)], yes: Label) {
        const IP: (u32, u32, u32) = (ETHERTYPE_IP, 12, 16);
        const ARP: (u32, u32, u32) = (ETHERTYPE_ARP, 14, 24);
        const RARP: (u32, u32, u32) = (ETHERTYPE_REVARP, 14, 24);
        let families: &[(u32, u32, u32)] = match family {
            Family::Ip => &[IP],
            Family::Arp => &[ARP],
            Family::Rarp => &[RARP],
            Family::Any | Family::Ip6 => &[IP, ARP, RARP],
        };
        for &(ethertype, src, dst) in families {
            let skip = self.asm.label();
            let linktype = Cmp {
                load: Load::Abs(Size::H, self.off_linktype + self.shift),
                mask: u32::MAX,
                op: Rel::Eq,
                value: ethertype,
            };
            let reg = self.load(&linktype);
            self.jump(Jmp::Jne, reg, &linktype, skip);
            let offsets: &[u32] = match dir {
                Dir::Src => &[src],
                Dir::Dst => &[dst],
                Dir::Either | Dir::Both => &[src, dst],
            };
            let word = |g: &Self, off| Cmp { load: g.net(Size::W, off), mask: u32::MAX, op: Rel::Eq, value: 0 };
            for &off in offsets {
                let reg = self.load(&word(self, off));
                // `(w & mask) == net` is `w` in the network's range: the same load, one test.
                self.interval(reg, first, yes);
            }
            for &off in offsets {
                let reg = self.load(&word(self, off));
                self.search(reg, rest, yes);
            }
            self.bind(skip);
        }
    }

    /// Jumps to `yes` when the value in `reg` is in `lo..=hi`; falls through otherwise.
    fn interval(&mut self, reg: u8, (lo, hi): (u32, u32), yes: Label) {
        self.to(yes);
        if lo == hi {
            self.asm.jmp32_imm(Jmp::Jeq, reg, lo as i32, yes);
            return;
        }
        if lo == 0 {
            self.asm.jmp32_imm(Jmp::Jle, reg, hi as i32, yes);
            return;
        }
        let below = self.asm.label();
        self.to(below);
        self.asm.jmp32_imm(Jmp::Jlt, reg, lo as i32, below);
        self.asm.jmp32_imm(Jmp::Jle, reg, hi as i32, yes);
        self.bind(below);
    }

    /// A binary search for the value in `reg` among sorted, disjoint `intervals`: jumps to
    /// `yes` on a hit, falls through on a miss.
    fn search(&mut self, reg: u8, intervals: &[(u32, u32)], yes: Label) {
        if intervals.len() <= 3 {
            for &iv in intervals {
                self.interval(reg, iv, yes);
            }
            return;
        }
        let mid = intervals.len() / 2;
        let (lo, hi) = intervals[mid];
        let (left, miss) = (self.asm.label(), self.asm.label());
        self.to(left);
        self.asm.jmp32_imm(Jmp::Jlt, reg, lo as i32, left);
        self.to(yes);
        self.asm.jmp32_imm(Jmp::Jle, reg, hi as i32, yes);
        self.search(reg, &intervals[mid + 1..], yes);
        self.ja(miss);
        self.bind(left);
        self.search(reg, &intervals[..mid], yes);
        self.bind(miss);
    }

    /// Jumps to `label` when `c` is `want`, falls through otherwise (as [`Gen::jump_if`]).
    fn cond(&mut self, c: &Cond<'_>, want: bool, label: Label) -> Result<(), CodegenError> {
        let pick = |(yes, no): (Jmp, Jmp)| if want { yes } else { no };
        match c {
            Cond::Test(cmp) => {
                let reg = self.load(cmp);
                self.jump(pick(rel_jmps(cmp.op)), reg, cmp, label);
            }
            Cond::And(all) | Cond::Or(all) => {
                let or = matches!(c, Cond::Or(..));
                let Some((last, rest)) = all.split_last() else {
                    // An empty `and` is true, an empty `or` false.
                    if or != want {
                        self.ja(label);
                    }
                    return Ok(());
                };
                if or == want {
                    for c in all {
                        self.cond(c, want, label)?;
                    }
                } else {
                    let own = self.asm.label();
                    for c in rest {
                        self.cond(c, !want, own)?;
                    }
                    self.cond(last, want, label)?;
                    self.bind(own);
                }
            }
            Cond::Rel(rel, a, b, nl) => {
                self.relation(a, b, *nl)?;
                self.to(label);
                self.asm.jmp32_reg(pick(rel_jmps(*rel)), R8, R0, label);
            }
        }
        Ok(())
    }

    /// Notes what the registers hold on a jump to `label` about to be emitted.
    fn to(&mut self, label: Label) {
        let here = self.regs;
        let at = self.regs_at.entry(label).or_insert(Regs::UNREACHABLE);
        *at = at.merge(here);
    }

    fn ja(&mut self, label: Label) {
        self.to(label);
        self.asm.ja(label);
        self.regs = Regs::UNREACHABLE;
    }

    fn bind(&mut self, label: Label) {
        self.asm.bind(label);
        let jumps = self.regs_at.remove(&label).unwrap_or(Regs::UNREACHABLE);
        self.regs = self.regs.merge(jumps);
    }

    fn jump(&mut self, op: Jmp, reg: u8, cmp: &Cmp, to: Label) {
        self.to(to);
        self.asm.jmp32_imm(op, reg, cmp.value as i32, to);
    }

    /// Puts `load & mask` in a register, unless one holds it already, and names it.
    fn load(&mut self, cmp: &Cmp) -> u8 {
        match cmp.load {
            Load::Abs(size, off) => {
                let wanted = Val::Holds(size, off, cmp.mask);
                if self.regs.r9 == wanted {
                    return R9;
                }
                if self.regs.r0 == wanted {
                    return R0;
                }
                if self.regs.r8 == wanted {
                    return R8;
                }
                if self.regs.r0 != Val::Holds(size, off, u32::MAX) {
                    self.keep_r0();
                    if self.cooked && off < self.off_nl {
                        if size == Size::H && off == self.off_linktype {
                            self.asm.push(insn::ldx(Size::W, R0, R6, SKB_PROTOCOL));
                            self.asm.push(insn::endian_be(R0, 16));
                        } else {
                            self.unsupported = Some(COOKED_LINK_BYTES);
                        }
                    } else {
                        let at = self.offset(off);
                        self.asm.push(insn::ld_abs(size, at));
                    }
                }
                if cmp.mask != u32::MAX {
                    self.asm.push(insn::alu32_imm(Alu::And, R0, cmp.mask as i32));
                }
                self.regs.r0 = wanted;
                if size == Size::H && off == self.off_linktype + self.shift && cmp.mask == u32::MAX {
                    // The link-layer type is what most tests start with: keep it.
                    self.asm.push(insn::mov64_reg(R9, R0));
                    self.regs.r9 = wanted;
                }
                return R0;
            }
            Load::Ip4Payload { size, nl, off } if cmp.mask == u32::MAX => {
                let wanted = Val::Payload(size, nl, off);
                if self.regs.r0 == wanted {
                    return R0;
                }
                if self.regs.r8 == wanted {
                    return R8;
                }
                self.keep_r0();
                self.ip4_payload(size, nl, off);
                self.regs.r0 = wanted;
                return R0;
            }
            Load::Ip4Payload { size, nl, off } => self.ip4_payload(size, nl, off),
            Load::Skb(field) => self.asm.push(insn::ldx(Size::W, R0, R6, field)),
        }
        if cmp.mask != u32::MAX {
            self.asm.push(insn::alu32_imm(Alu::And, R0, cmp.mask as i32));
        }
        self.regs.r0 = Val::Unknown;
        R0
    }

    /// Before r0 is reloaded: keep a raw loaded value in r8 (host and port tests alternate
    /// two values, source and destination).
    fn keep_r0(&mut self) {
        if self.regs.r0.is_raw_load() && self.regs.r8 != self.regs.r0 {
            self.asm.push(insn::mov64_reg(R8, R0));
            self.regs.r8 = self.regs.r0;
        }
    }

    /// `r0 = load(size) at nl + 4 * (ip[0] & 0xf) + off`, the header length kept in r7.
    fn ip4_payload(&mut self, size: Size, nl: u32, off: u32) {
        if self.regs.r7 != Val::HeaderLength(nl) {
            self.ip4_header_length(nl);
            self.asm.push(insn::mov64_reg(R7, R0));
            self.regs.r7 = Val::HeaderLength(nl);
        }
        let at = self.offset(nl + off);
        self.asm.push(insn::ld_ind(size, R7, at));
    }

    /// `r0 = 4 * (ip[0] & 0xf)`, libpcap's `ldxb 4*([nl]&0xf)`.
    fn ip4_header_length(&mut self, nl: u32) {
        let at = self.offset(nl);
        self.asm.push(insn::ld_abs(Size::B, at));
        self.asm.push(insn::alu32_imm(Alu::And, R0, 0xf));
        self.asm.push(insn::alu32_imm(Alu::Lsh, R0, 2));
    }

    /// A constant frame offset as the target's loads take it (on `any`, past the cooked
    /// header: the packet starts at its network header).
    fn offset(&mut self, off: u32) -> i32 {
        match self.target {
            Target::File => SKF_LL_OFF + off as i32,
            Target::Live if self.cooked => {
                if off < self.off_nl {
                    self.unsupported = Some(COOKED_LINK_BYTES);
                }
                off as i32 - self.off_nl as i32
            }
            Target::Live => off as i32,
        }
    }

    /// r8 = a, r0 = b.
    fn relation(&mut self, a: &Arith, b: &Arith, nl: u32) -> Result<(), CodegenError> {
        self.regs.r0 = Val::Unknown;
        self.regs.r8 = Val::Unknown;
        self.arith(a, nl)?;
        if let Arith::Num(n) = b {
            self.asm.push(insn::mov32_imm(R0, *n as i32));
            return Ok(());
        }
        let slot = self.spill()?;
        self.arith(b, nl)?;
        self.asm.push(insn::mov64_reg(R0, R8));
        self.unspill(slot);
        Ok(())
    }

    fn spill(&mut self) -> Result<i16, CodegenError> {
        if self.spills == MAX_SPILLS {
            return Err(CodegenError::TooDeep);
        }
        self.spills += 1;
        let off = -4 * self.spills as i16;
        self.asm.push(insn::stx(Size::W, R10, R8, off));
        Ok(off)
    }

    fn unspill(&mut self, off: i16) {
        self.asm.push(insn::ldx(Size::W, R8, R10, off));
        self.spills -= 1;
    }

    /// r8 = the value of `a` (32 bits); clobbers r0–r5 (never the cache registers r7, r9;
    /// [`Gen::relation`] forgets r8's).
    fn arith(&mut self, a: &Arith, nl: u32) -> Result<(), CodegenError> {
        match a {
            Arith::Num(n) => self.asm.push(insn::mov32_imm(R8, *n as i32)),
            Arith::Len => {
                let field = match self.target {
                    Target::File => SKB_CB0 as i16,
                    Target::Live => SKB_LEN,
                };
                self.asm.push(insn::ldx(Size::W, R8, R6, field));
                if self.cooked {
                    // The length of the packet as written: its cooked header included.
                    self.asm.push(insn::alu32_imm(Alu::Add, R8, self.off_nl as i32));
                }
            }
            Arith::Neg(a) => {
                self.arith(a, nl)?;
                self.asm.push(insn::alu32_imm(Alu::Neg, R8, 0));
            }
            Arith::Bin(op, a, b) => {
                self.arith(a, nl)?;
                if let Arith::Num(n) = **b
                    && !matches!(op, ArOp::Div | ArOp::Mod | ArOp::Shl | ArOp::Shr)
                {
                    self.asm.push(insn::alu32_imm(ar_alu(*op), R8, n as i32));
                    return Ok(());
                }
                let slot = self.spill()?;
                self.arith(b, nl)?;
                self.asm.push(insn::mov64_reg(R0, R8));
                self.unspill(slot);
                self.binary(*op);
            }
            Arith::Load { layer, offset, size } => {
                self.arith(offset, nl)?;
                let size = match size {
                    1 => Size::B,
                    2 => Size::H,
                    _ => Size::W,
                };
                let base = match layer {
                    Layer::Ether if self.cooked => {
                        self.unsupported = Some(COOKED_LINK_BYTES);
                        0
                    }
                    Layer::Ether => 0,
                    Layer::Ip | Layer::Ip6 | Layer::Arp => nl,
                    Layer::Icmp6 => nl + 40,
                    Layer::Tcp | Layer::Udp | Layer::Icmp => {
                        // libpcap adds the header length in the 32-bit accumulator.
                        self.ip4_header_length(nl);
                        self.asm.push(insn::alu32_reg(Alu::Add, R8, R0));
                        nl
                    }
                };
                // The index plus the header offset does not wrap: libpcap's `ld [x + k]`
                // rejects the packet when x + k is past the end, however large x is.
                if base != 0 {
                    self.asm.push(insn::alu64_imm(Alu::Add, R8, base as i32));
                }
                self.asm.jmp_imm(Jmp::Jgt, R8, MAX_INDEX, self.reject);
                // On `any` the base includes the cooked header the packet does not have.
                let at = if self.cooked { -(self.off_nl as i32) } else { self.offset(0) };
                self.asm.push(insn::ld_ind(size, R8, at));
                self.asm.push(insn::mov64_reg(R8, R0));
            }
        }
        Ok(())
    }

    /// r8 = r8 op r0, with libpcap's rules for division by zero and wide shifts.
    fn binary(&mut self, op: ArOp) {
        match op {
            ArOp::Div | ArOp::Mod => self.asm.jmp32_imm(Jmp::Jeq, R0, 0, self.reject),
            ArOp::Shl | ArOp::Shr => {
                let ok = self.asm.label();
                let done = self.asm.label();
                self.asm.jmp32_imm(Jmp::Jlt, R0, 32, ok);
                self.asm.push(insn::mov32_imm(R8, 0));
                self.asm.ja(done);
                self.asm.bind(ok);
                self.asm.push(insn::alu32_reg(ar_alu(op), R8, R0));
                self.asm.bind(done);
                return;
            }
            _ => {}
        }
        self.asm.push(insn::alu32_reg(ar_alu(op), R8, R0));
    }
}

/// Runs of IPv4 hosts/networks or ports at least this long become a set.
const SET_MIN: usize = 4;

/// The members of a left-nested `or` chain, in text order.
fn or_chain(e: &Expr) -> Vec<&Expr> {
    let mut items = Vec::new();
    let mut node = e;
    while let Expr::Or(left, right) = node {
        items.push(&**right);
        node = left;
    }
    items.push(node);
    items.reverse();
    items
}

/// What a run of set members shares: IPv4 hosts and networks of the same protocols and
/// direction, or ports and port ranges of the same transport and direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunKey {
    Host(Family, Dir),
    Port(Transport, Dir),
}

/// An IPv4 host or network test (`host A`, `net N`) or a port test (`port P`, `portrange
/// A-B`), not `src and dst`: its run key and the interval of values it accepts.
fn member(e: &Expr) -> Option<(RunKey, (u32, u32))> {
    match e {
        Expr::Prim(Prim::Host { family, dir, addr: std::net::IpAddr::V4(a) }) if *dir != Dir::Both => {
            Some((RunKey::Host(*family, *dir), (a.to_bits(), a.to_bits())))
        }
        Expr::Prim(Prim::Net { family, dir, net: ipnet::IpNet::V4(n) }) if *dir != Dir::Both => {
            Some((RunKey::Host(*family, *dir), (n.network().to_bits(), n.broadcast().to_bits())))
        }
        Expr::Prim(Prim::Port { transport, dir, first, last }) if *dir != Dir::Both => {
            Some((RunKey::Port(*transport, *dir), (u32::from(*first), u32::from(*last))))
        }
        _ => None,
    }
}

/// Sorted, disjoint intervals covering `intervals`.
fn merged(mut intervals: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    intervals.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(intervals.len());
    for (lo, hi) in intervals {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// How many items from the first are members of its run.
fn run_length(items: &[&Expr]) -> usize {
    let Some((key, _)) = items.first().and_then(|e| member(e)) else { return 0 };
    items.iter().take_while(|e| member(e).is_some_and(|(k, _)| k == key)).count()
}

fn has_set_run(expr: &Expr) -> bool {
    let (mut key, mut run) = (None, 0);
    for e in or_chain(expr) {
        match member(e) {
            Some((k, _)) if key == Some(k) => run += 1,
            Some((k, _)) => (key, run) = (Some(k), 1),
            None => (key, run) = (None, 0),
        }
        if run >= SET_MIN {
            return true;
        }
    }
    false
}

/// `first <= load <= last`, or `load == first` for a single port.
fn range(load: Load, first: u16, last: u16) -> Cond<'static> {
    if first == last {
        test(load, Rel::Eq, u32::from(first))
    } else {
        Cond::And(vec![test(load, Rel::Ge, u32::from(first)), test(load, Rel::Le, u32::from(last))])
    }
}

fn transports(transport: Transport, op: impl Fn(u32) -> Cond<'static>) -> Cond<'static> {
    match transport {
        Transport::Tcp => op(IPPROTO_TCP),
        Transport::Udp => op(IPPROTO_UDP),
        Transport::Sctp => op(IPPROTO_SCTP),
        Transport::Any => Cond::Or(vec![op(IPPROTO_TCP), op(IPPROTO_UDP), op(IPPROTO_SCTP)]),
    }
}

/// The jump taken when `rel` holds, and the one taken when it does not.
fn rel_jmps(rel: Rel) -> (Jmp, Jmp) {
    match rel {
        Rel::Eq => (Jmp::Jeq, Jmp::Jne),
        Rel::Ne => (Jmp::Jne, Jmp::Jeq),
        Rel::Lt => (Jmp::Jlt, Jmp::Jge),
        Rel::Le => (Jmp::Jle, Jmp::Jgt),
        Rel::Gt => (Jmp::Jgt, Jmp::Jle),
        Rel::Ge => (Jmp::Jge, Jmp::Jlt),
    }
}

fn ar_alu(op: ArOp) -> Alu {
    match op {
        ArOp::Add => Alu::Add,
        ArOp::Sub => Alu::Sub,
        ArOp::Mul => Alu::Mul,
        ArOp::Div => Alu::Div,
        ArOp::Mod => Alu::Mod,
        ArOp::And => Alu::And,
        ArOp::Or => Alu::Or,
        ArOp::Xor => Alu::Xor,
        ArOp::Shl => Alu::Lsh,
        ArOp::Shr => Alu::Rsh,
    }
}

#[cfg(test)]
mod tests;
