//! Code generation: one shared decision core behind per-hook adapters.
//!
//! An adapter reads the hook's context into a fixed stack layout (destination address in the
//! address key, port in r7, protocol in r8); the core computes the workload class, looks up
//! the address region and the port decision (see [`crate::plan`]), writes an event when the
//! decision asks for one, and returns the hook's allow or deny value. Every exit goes
//! through `allow:`/`deny:`, so the return values are exactly two constants per hook.

use crate::{
    asm::{Asm, AsmError, Label, Program},
    insn::{self, Alu, Jmp, R0, R1, R2, R3, R4, R6, R7, R8, R9, R10, Size, helper},
    layout,
    plan::{FLAG_DENY, FLAG_EVENT, Family, Plan},
};

use palisade_contract::{Attach, btf, record};
pub use palisade_contract::{Hook, map as maps};

/// What a hook's programs return, by attach kind: the only two constants any program exits
/// with.
pub trait Returns {
    /// The allow value.
    fn allow(self) -> i32;
    /// The deny value.
    fn deny(self) -> i32;
}

impl Returns for Hook {
    fn allow(self) -> i32 {
        match self.spec().attach {
            // cgroup sock_addr: 1 lets the call proceed (kernel/bpf/cgroup.c).
            Attach::CgroupSockAddr(_) => 1,
            // LSM: 0 allows.
            Attach::Lsm { .. } => 0,
        }
    }

    fn deny(self) -> i32 {
        match self.spec().attach {
            // cgroup sock_addr: 0 makes connect(2)/bind(2) fail with EPERM.
            Attach::CgroupSockAddr(_) => 0,
            // LSM: a negative errno; never 1 (6.1 accepts it and connect then returns 1).
            Attach::Lsm { .. } => -EPERM,
        }
    }
}

/// `EPERM` from include/uapi/asm-generic/errno-base.h (the compiler links no libc).
const EPERM: i32 = 1;

/// Kernel struct offsets an adapter needs, from the node's BTF (DESIGN.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelOffsets {
    /// `offsetof(struct socket, type)`.
    pub socket_type: u32,
    /// `offsetof(struct linux_binprm, file)`.
    pub binprm_file: u32,
    /// `offsetof(struct file, f_path)`.
    pub file_path: u32,
    /// `offsetof(struct file, f_mode)`.
    pub file_mode: u32,
}

impl KernelOffsets {
    /// The offsets of Debian's 6.12 x86-64 kernel: what the server compiles with for nodes
    /// that did not report their own (and for `CompilePolicy`).
    pub const LINUX_6_12: Self = Self { socket_type: 4, binprm_file: 64, file_path: 64, file_mode: 12 };

    /// Offsets from reported `"struct.member"` values ([`palisade_contract::btf`] keys) (`reported` looks one up), each missing
    /// one taken from `defaults`.
    pub fn from_reported(reported: impl Fn(&str) -> Option<u32>, defaults: Self) -> Self {
        let get = |key: &str, default: u32| reported(key).unwrap_or(default);
        Self {
            socket_type: get(btf::SOCKET_TYPE.key, defaults.socket_type),
            binprm_file: get(btf::BINPRM_FILE.key, defaults.binprm_file),
            file_path: get(btf::FILE_PATH.key, defaults.file_path),
            file_mode: get(btf::FILE_MODE.key, defaults.file_mode),
        }
    }
}

// Stack layout (offsets from r10). Everything passed to a helper is fully written first.
const EVENT: i16 = -(record::HEADER_SIZE as i16); // the decision record
const ADDR_KEY: i16 = -104; // prefixlen u32, workload u32, address (4 or 16 bytes)
const INDEX_KEY: i16 = -120; // u32 array index
const UID_KEY: i16 = -128; // class u32, uid u32
const CGROUP_KEY: i16 = -136; // cgroup id u64
const SOCKADDR: i16 = -168; // 28 bytes of sockaddr_in6 (LSM adapter)
const SCRATCH: i16 = -176; // 8 bytes (LSM adapter)
// Path programs (exec, files): the 72-byte event header, directly followed by the lookup key
// (prefixlen u32, workload u32, 252 bytes of path), so one ringbuf_output sends both. Below
// CGROUP_KEY and UID_KEY, which the workload stage shares with the network programs.
const PATH_EVENT: i16 = -480;
const PATH_KEY: i16 = PATH_EVENT + record::HEADER_SIZE as i16;
/// Path bytes a key holds, NUL included ([`crate::model::MAX_PATH`] + 1).
pub const PATH_BYTES: i32 = record::PATH_BYTES as i32;

const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;
const IPPROTO_TCP: i32 = 6;
const IPPROTO_UDP: i32 = 17;
const SOCK_STREAM: i32 = 1;
const SOCK_DGRAM: i32 = 2;

/// Generates the program for `hook` from the partition of its operation.
pub fn program(hook: Hook, plan: &Plan, offsets: KernelOffsets) -> Result<Program, AsmError> {
    debug_assert_eq!(plan.operation, hook.operation());
    if matches!(hook, Hook::LsmExec | Hook::LsmFileOpen) {
        return path_program(hook, plan, offsets);
    }
    let mut a = Asm::new();
    let allow = a.label();
    let deny = a.label();
    let v6 = a.label();
    let core4 = a.label();
    let core6 = a.label();
    a.comment(format!("palisade {} — adapter", hook.section()));
    a.push(insn::mov64_reg(R6, R1));
    match hook {
        Hook::Connect4 | Hook::Connect6 | Hook::Bind4 | Hook::Bind6 => {
            // struct bpf_sock_addr: protocol at 36, user_ip4 at 4, user_ip6 at 8, user_port at 24.
            a.push(insn::ldx(Size::W, R1, R6, 36));
            protocol_to_r8(&mut a, IPPROTO_TCP, IPPROTO_UDP, allow);
            a.push(insn::ldx(Size::W, R7, R6, 24));
            if matches!(hook, Hook::Connect4 | Hook::Bind4) {
                a.push(insn::ldx(Size::W, R1, R6, 4));
                a.push(insn::stx(Size::W, R10, R1, ADDR_KEY + 8));
            } else {
                for i in 0..4 {
                    a.push(insn::ldx(Size::W, R1, R6, 8 + 4 * i));
                    a.push(insn::stx(Size::W, R10, R1, ADDR_KEY + 8 + 4 * i));
                }
            }
            // A cgroup program has one family, whose core follows directly: no jump.
        }
        Hook::LsmSocketConnect | Hook::LsmSocketBind => {
            // socket_connect and socket_bind(struct socket *sock, struct sockaddr *address,
            // int addrlen):
            // r1 points at the arguments as u64s. The sockaddr lives in a kernel
            // sockaddr_storage (move_addr_to_kernel), so reading 28 bytes stays inside it.
            a.push(insn::mov64_reg(R1, R10));
            a.push(insn::alu64_imm(Alu::Add, R1, i32::from(SOCKADDR)));
            a.push(insn::mov64_imm(R2, 28));
            a.push(insn::ldx(Size::DW, R3, R6, 8));
            a.push(insn::call(helper::PROBE_READ_KERNEL));
            a.jmp_imm(Jmp::Jne, R0, 0, allow);
            // sock->type decides the protocol (stream = tcp, datagram = udp).
            a.push(insn::mov64_reg(R1, R10));
            a.push(insn::alu64_imm(Alu::Add, R1, i32::from(SCRATCH)));
            a.push(insn::mov64_imm(R2, 2));
            a.push(insn::ldx(Size::DW, R3, R6, 0));
            a.push(insn::alu64_imm(Alu::Add, R3, offsets.socket_type as i32));
            a.push(insn::call(helper::PROBE_READ_KERNEL));
            a.jmp_imm(Jmp::Jne, R0, 0, allow);
            a.push(insn::ldx(Size::H, R1, R10, SCRATCH));
            protocol_to_r8(&mut a, SOCK_STREAM, SOCK_DGRAM, allow);
            a.push(insn::ldx(Size::H, R7, R10, SOCKADDR + 2));
            a.push(insn::ldx(Size::H, R1, R10, SOCKADDR));
            a.jmp_imm(Jmp::Jeq, R1, AF_INET6, v6);
            a.jmp_imm(Jmp::Jne, R1, AF_INET, allow);
            a.push(insn::ldx(Size::W, R1, R10, SOCKADDR + 4));
            a.push(insn::stx(Size::W, R10, R1, ADDR_KEY + 8));
            a.ja(core4);
            a.bind(v6);
            for i in 0..4 {
                a.push(insn::ldx(Size::W, R1, R10, SOCKADDR + 8 + 4 * i));
                a.push(insn::stx(Size::W, R10, R1, ADDR_KEY + 8 + 4 * i));
            }
            a.ja(core6);
        }
        Hook::LsmExec | Hook::LsmFileOpen => unreachable!("path hooks have their own generator"),
    }
    // r7 = port in network order (low 16 bits).
    let emit_v4 = matches!(hook, Hook::Connect4 | Hook::Bind4) || hook.is_lsm();
    let emit_v6 = matches!(hook, Hook::Connect6 | Hook::Bind6) || hook.is_lsm();
    // Only reachable code: the verifier rejects unreachable instructions.
    if emit_v4 {
        a.bind(core4);
        core(&mut a, hook, plan, false, allow, deny);
        if emit_v6 {
            a.ja(allow);
        }
    }
    if emit_v6 {
        a.bind(core6);
        core(&mut a, hook, plan, true, allow, deny);
    }
    exits(a, hook, allow, deny)
}

/// The only two exits of every program: `allow:` and `deny:` return the hook's constants.
fn exits(mut a: Asm, hook: Hook, allow: Label, deny: Label) -> Result<Program, AsmError> {
    a.bind(allow);
    a.comment("allow");
    a.push(insn::mov64_imm(R0, hook.allow()));
    a.push(insn::exit());
    a.bind(deny);
    a.comment("deny");
    a.push(insn::mov64_imm(R0, hook.deny()));
    a.push(insn::exit());
    a.finish()
}

/// r1 holds a protocol or socket type: r8 = the record's protocol byte for `tcp` or `udp`,
/// else go to `other`.
fn protocol_to_r8(a: &mut Asm, tcp: i32, udp: i32, other: Label) {
    let is_udp = a.label();
    let done = a.label();
    a.push(insn::mov64_imm(R8, i32::from(record::PROTO_TCP)));
    a.jmp_imm(Jmp::Jeq, R1, tcp, done);
    a.jmp_imm(Jmp::Jne, R1, udp, other);
    a.bind(is_udp);
    a.push(insn::mov64_imm(R8, i32::from(record::PROTO_UDP)));
    a.bind(done);
}

/// `r0 = bpf_map_lookup_elem(map, r10 + key)`.
pub fn lookup(a: &mut Asm, map: &str, key: i16) {
    a.ld_map(R1, map);
    a.push(insn::mov64_reg(R2, R10));
    a.push(insn::alu64_imm(Alu::Add, R2, i32::from(key)));
    a.push(insn::call(helper::MAP_LOOKUP_ELEM));
}

/// The workload stage shared by every program: r9 = workload class, or go to `allow` when no
/// policy applies to the calling task.
fn workload_class(a: &mut Asm, plan: &Plan, allow: Label) {
    let have_class = a.label();
    let have_workload = a.label();
    a.push(insn::mov64_imm(R9, if plan.direct { plan.root_workload as i32 } else { 0 }));
    for (n, &level) in plan.levels.iter().enumerate() {
        let next = a.label();
        a.comment(format!("selected cgroups at depth {level}"));
        a.push(insn::mov64_imm(R1, level as i32));
        a.push(insn::call(helper::GET_CURRENT_ANCESTOR_CGROUP_ID));
        a.jmp_imm(Jmp::Jeq, R0, 0, next);
        a.push(insn::stx(Size::DW, R10, R0, CGROUP_KEY));
        lookup(a, maps::of(plan.operation).cgroups, CGROUP_KEY);
        a.jmp_imm(Jmp::Jeq, R0, 0, next);
        a.push(insn::ldx(Size::W, R9, R0, 0));
        // The last depth falls through to `have_class` anyway.
        if n + 1 < plan.levels.len() {
            a.ja(have_class);
        }
        a.bind(next);
    }
    a.bind(have_class);
    if plan.direct {
        // No uid-specific policy: the cgroups map already gave the workload class.
        a.comment("no policy applies to this workload");
        a.jmp_imm(Jmp::Jeq, R9, 0, allow);
    } else {
        a.push(insn::stx(Size::W, R10, R9, UID_KEY));
        a.push(insn::call(helper::GET_CURRENT_UID_GID));
        a.push(insn::stx(Size::W, R10, R0, UID_KEY + 4));
        lookup(a, maps::of(plan.operation).workloads, UID_KEY);
        a.jmp_imm(Jmp::Jne, R0, 0, have_workload);
        a.push(insn::st(Size::W, R10, UID_KEY + 4, -1));
        lookup(a, maps::of(plan.operation).workloads, UID_KEY);
        a.comment("no policy applies to this workload");
        a.jmp_imm(Jmp::Jeq, R0, 0, allow);
        a.bind(have_workload);
        a.push(insn::ldx(Size::W, R9, R0, 0));
    }
}

/// The shared decision core for one address family (the structures: [`crate::layout`]).
///
/// r6 = node, then the region's default value; r7 = port (network order); r8 = protocol;
/// r9 = workload, then the region id, then the decision. Jumps to `deny`, or to `allow`
/// early; an allowed decision falls through, so `allow` (or a jump to it) must follow.
fn core(a: &mut Asm, hook: Hook, plan: &Plan, v6: bool, allow: Label, deny: Label) {
    let verdict = a.label();
    let names = maps::of(plan.operation);
    a.comment(format!("core ({}): workload class", if v6 { "IPv6" } else { "IPv4" }));
    workload_class(a, plan, allow);
    address_region(a, names, v6);
    port_value(a, names, allow);
    a.comment("decision");
    a.push(insn::stx(Size::W, R10, R1, INDEX_KEY));
    lookup(a, names.values, INDEX_KEY);
    a.jmp_imm(Jmp::Jeq, R0, 0, allow);
    a.push(insn::mov64_reg(R9, R0));
    a.push(insn::ldx(Size::W, R1, R9, 4));
    a.push(insn::alu64_imm(Alu::And, R1, FLAG_EVENT as i32));
    a.jmp_imm(Jmp::Jeq, R1, 0, verdict);
    event(a, hook, v6);
    a.bind(verdict);
    a.push(insn::ldx(Size::W, R1, R9, 4));
    a.push(insn::alu64_imm(Alu::And, R1, FLAG_DENY as i32));
    a.jmp_imm(Jmp::Jne, R1, 0, deny);
}

/// r9 = workload class → r9 = region id of the destination (in `ADDR_KEY`); r6 is scratch.
fn address_region(a: &mut Asm, names: maps::Names, v6: bool) {
    let walked = a.label();
    if v6 {
        let native = a.label();
        a.comment("IPv4-mapped destination (::ffff:a.b.c.d)? Then its IPv4 part is walked");
        a.push(insn::ldx(Size::DW, R1, R10, ADDR_KEY + 8));
        a.jmp_imm(Jmp::Jne, R1, 0, native);
        a.push(insn::ldx(Size::W, R1, R10, ADDR_KEY + 16));
        // Bytes 00 00 ff ff read as a little-endian u32.
        a.jmp32_imm(Jmp::Jne, R1, 0xffff_0000_u32 as i32, native);
        walk(a, names, Family::Mapped, walked);
        a.ja(walked);
        a.bind(native);
        walk(a, names, Family::V6, walked);
    } else {
        walk(a, names, Family::V4, walked);
    }
    a.bind(walked);
}

/// One family's walk (see [`layout::root`]): r9 = workload class → r9 = region id; every
/// path ends at `walked` or falls through to the code after the walk. r6 is scratch.
fn walk(a: &mut Asm, names: maps::Names, family: Family, walked: Label) {
    let tail = a.label();
    let (first, width, root_offset): (i16, i16, i32) = match family {
        Family::V4 => (0, 4, 2),
        Family::V6 => (0, 16, 1),
        Family::Mapped => (12, 4, 0),
    };
    a.comment(format!(
        "address ({family:?}): one byte per step through 256-cell nodes from the workload's root 3W - {root_offset}, which is also the region of /0; r9 = region of the longest prefix so far"
    ));
    a.push(insn::alu64_imm(Alu::Mul, R9, 3));
    if root_offset != 0 {
        a.push(insn::alu64_imm(Alu::Sub, R9, root_offset));
    }
    a.push(insn::mov64_reg(R6, R9));
    for byte in first..first + width {
        let no_region = a.label();
        a.push(insn::mov64_reg(R1, R6));
        a.push(insn::alu64_imm(Alu::Lsh, R1, 8));
        a.push(insn::ldx(Size::B, R2, R10, ADDR_KEY + 8 + byte));
        a.push(insn::alu64_reg(Alu::Or, R1, R2));
        a.push(insn::stx(Size::W, R10, R1, INDEX_KEY));
        lookup(a, names.nodes, INDEX_KEY);
        a.jmp_imm(Jmp::Jeq, R0, 0, walked);
        a.push(insn::ldx(Size::W, R1, R0, 0));
        a.jmp_imm(Jmp::Jeq, R1, 0, no_region);
        a.push(insn::mov64_reg(R9, R1));
        a.bind(no_region);
        // Cells of the last byte have no child.
        if byte + 1 < first + width {
            a.push(insn::ldx(Size::W, R6, R0, 4));
            a.jmp_imm(Jmp::Jeq, R6, 0, walked);
            a.jmp32_imm(Jmp::Jge, R6, layout::TAIL as i32, tail);
        }
    }
    a.ja(walked);
    a.bind(tail);
    a.comment("tail: the one longer prefix below this cell, if the destination is in it");
    a.push(insn::alu64_imm(Alu::And, R6, !layout::TAIL as i32));
    a.push(insn::stx(Size::W, R10, R6, INDEX_KEY));
    lookup(a, names.tails, INDEX_KEY);
    a.jmp_imm(Jmp::Jeq, R0, 0, walked);
    let (size, words): (Size, i16) = if family == Family::V6 { (Size::DW, 2) } else { (Size::W, 1) };
    for i in 0..words {
        let step = size.bytes() as i16;
        a.push(insn::ldx(size, R1, R10, ADDR_KEY + 8 + first + step * i));
        a.push(insn::ldx(size, R2, R0, 16 + step * i));
        a.push(insn::alu64_reg(Alu::And, R1, R2));
        a.push(insn::ldx(size, R2, R0, step * i));
        a.jmp_reg(Jmp::Jne, R1, R2, walked);
    }
    a.push(insn::ldx(Size::W, R9, R0, 32));
}

/// r9 = region id → r1 = value id of the port (r7) for the protocol (r8); r6 = the
/// region's default value id.
fn port_value(a: &mut Asm, names: maps::Names, allow: Label) {
    let tcp = a.label();
    let default = a.label();
    let have_value = a.label();
    a.comment("region: the protocol's port table (r1) and its default value (r6)");
    a.push(insn::stx(Size::W, R10, R9, INDEX_KEY));
    lookup(a, names.regions, INDEX_KEY);
    a.jmp_imm(Jmp::Jeq, R0, 0, allow);
    a.jmp_imm(Jmp::Jne, R8, i32::from(record::PROTO_UDP), tcp);
    a.push(insn::alu64_imm(Alu::Add, R0, 8));
    a.bind(tcp);
    a.push(insn::ldx(Size::W, R1, R0, 0));
    a.push(insn::ldx(Size::W, R6, R0, 4));
    a.comment("port: the table's cell for the high byte (two cells an element), then port nodes; 0 means the default");
    a.push(insn::alu64_imm(Alu::Lsh, R1, 7));
    a.push(insn::mov64_reg(R2, R7));
    a.push(insn::alu64_imm(Alu::And, R2, 0xff));
    a.push(insn::alu64_imm(Alu::Rsh, R2, 1));
    a.push(insn::alu64_reg(Alu::Or, R1, R2));
    a.push(insn::stx(Size::W, R10, R1, INDEX_KEY));
    lookup(a, names.ports, INDEX_KEY);
    a.jmp_imm(Jmp::Jeq, R0, 0, default);
    a.push(insn::mov64_reg(R2, R7));
    a.push(insn::alu64_imm(Alu::And, R2, 1));
    a.push(insn::alu64_imm(Alu::Lsh, R2, 2));
    a.push(insn::alu64_reg(Alu::Add, R0, R2));
    a.push(insn::ldx(Size::W, R1, R0, 0));
    // r7 holds the port's low byte in bits 8-15. A node's slot is the first j with
    // low byte < bounds[j], else the last.
    for level in 0..layout::PORT_LEVELS {
        let picked = a.label();
        a.comment(format!("port node level {level}"));
        a.jmp_imm(Jmp::Jeq, R1, 0, default);
        a.jmp32_imm(Jmp::Jlt, R1, layout::PORT_NODE as i32, have_value);
        a.push(insn::alu64_imm(Alu::And, R1, !layout::PORT_NODE as i32));
        a.push(insn::stx(Size::W, R10, R1, INDEX_KEY));
        lookup(a, names.port_nodes, INDEX_KEY);
        a.jmp_imm(Jmp::Jeq, R0, 0, default);
        a.push(insn::mov64_reg(R2, R7));
        a.push(insn::alu64_imm(Alu::Rsh, R2, 8));
        a.push(insn::alu64_imm(Alu::And, R2, 0xff));
        let slots: Vec<Label> = (0..layout::PORT_SLOTS).map(|_| a.label()).collect();
        for (j, &slot) in slots.iter().enumerate().take(layout::PORT_SLOTS - 1) {
            a.push(insn::ldx(Size::B, R3, R0, j as i16));
            a.jmp_reg(Jmp::Jlt, R2, R3, slot);
        }
        for (j, &slot) in slots.iter().enumerate().rev() {
            a.bind(slot);
            a.push(insn::ldx(Size::W, R1, R0, (layout::PORT_SLOTS + 4 * j) as i16));
            if j > 0 {
                a.ja(picked);
            }
        }
        a.bind(picked);
    }
    a.jmp_imm(Jmp::Jne, R1, 0, have_value);
    a.bind(default);
    a.push(insn::mov64_reg(R1, R6));
    a.bind(have_value);
}

/// Writes the task and decision fields of an event header at `base` (r9 = the decision):
/// time, cgroup, tgid, uid, rule, flags, hook and comm.
fn event_header(a: &mut Asm, hook: Hook, base: i16) {
    use record::offset;
    let at = |field: usize| base + field as i16;
    a.push(insn::call(helper::KTIME_GET_NS));
    a.push(insn::stx(Size::DW, R10, R0, at(offset::TIME)));
    a.push(insn::call(helper::GET_CURRENT_CGROUP_ID));
    a.push(insn::stx(Size::DW, R10, R0, at(offset::CGROUP)));
    a.push(insn::call(helper::GET_CURRENT_PID_TGID));
    a.push(insn::alu64_imm(Alu::Rsh, R0, 32));
    a.push(insn::stx(Size::W, R10, R0, at(offset::TGID)));
    a.push(insn::call(helper::GET_CURRENT_UID_GID));
    a.push(insn::stx(Size::W, R10, R0, at(offset::UID)));
    a.push(insn::ldx(Size::W, R1, R9, 0));
    a.push(insn::stx(Size::W, R10, R1, at(offset::RULE)));
    a.push(insn::ldx(Size::W, R1, R9, 4));
    a.push(insn::stx(Size::W, R10, R1, at(offset::FLAGS)));
    a.push(insn::st(Size::W, R10, at(offset::HOOK), hook.id()));
    a.push(insn::mov64_reg(R1, R10));
    a.push(insn::alu64_imm(Alu::Add, R1, i32::from(at(offset::COMM))));
    a.push(insn::mov64_imm(R2, record::COMM_LEN as i32));
    a.push(insn::call(helper::GET_CURRENT_COMM));
}

/// Outputs a record of `kind` from the stack at `base` to the events ring buffer.
fn output(a: &mut Asm, base: i16, kind: record::RecordKind) {
    a.ld_map(R1, maps::EVENTS);
    a.push(insn::mov64_reg(R2, R10));
    a.push(insn::alu64_imm(Alu::Add, R2, i32::from(base)));
    a.push(insn::mov64_imm(R3, kind.size() as i32));
    a.push(insn::mov64_imm(R4, 0));
    a.push(insn::call(helper::RINGBUF_OUTPUT));
}

/// Writes the decision record ([`record`]) and outputs it.
fn event(a: &mut Asm, hook: Hook, v6: bool) {
    use record::offset;
    let at = |field: usize| EVENT + field as i16;
    a.comment("event record");
    event_header(a, hook, EVENT);
    if v6 {
        for i in 0..2 {
            a.push(insn::ldx(Size::DW, R1, R10, ADDR_KEY + 8 + 8 * i));
            a.push(insn::stx(Size::DW, R10, R1, at(offset::ADDR) + 8 * i));
        }
    } else {
        a.push(insn::st(Size::DW, R10, at(offset::ADDR), 0));
        a.push(insn::st(Size::DW, R10, at(offset::ADDR) + 8, 0));
        a.push(insn::ldx(Size::W, R1, R10, ADDR_KEY + 8));
        a.push(insn::stx(Size::W, R10, R1, at(offset::ADDR)));
    }
    // r7 holds the port in network order, as the record wants it; r8 the record's protocol.
    a.push(insn::stx(Size::H, R10, R7, at(offset::PORT)));
    let family = if v6 { record::FAMILY_V6 } else { record::FAMILY_V4 };
    a.push(insn::st(Size::B, R10, at(offset::FAMILY), i32::from(family)));
    a.push(insn::stx(Size::B, R10, R8, at(offset::DETAIL)));
    output(a, EVENT, hook.spec().record);
}

/// The `exec` and `files` programs: workload class, the resolved path of the file
/// (`bpf_d_path`), one LPM lookup of `(workload, path)`, the decision for the open's access.
///
/// r6 = context, r7 = access bits (files), r8 = `struct file *`, r9 = workload, then the
/// decision.
fn path_program(hook: Hook, plan: &Plan, offsets: KernelOffsets) -> Result<Program, AsmError> {
    let files = hook == Hook::LsmFileOpen;
    let mut a = Asm::new();
    let allow = a.label();
    let deny = a.label();
    let resolved = a.label();
    let have_key = a.label();
    let verdict = a.label();
    a.comment(format!("palisade {} — adapter", hook.section()));
    a.push(insn::mov64_reg(R6, R1));
    workload_class(&mut a, plan, allow);
    // Typed (BTF) loads: the verifier knows the hook's argument types and checks the offsets
    // against the running kernel's structs.
    a.push(insn::ldx(Size::DW, R8, R6, 0));
    if files {
        a.comment("file_open(struct file *file): access bits from f_mode (FMODE_READ 1, FMODE_WRITE 2)");
        a.push(insn::ldx(Size::W, R7, R8, offsets.file_mode as i16));
        a.push(insn::alu64_imm(Alu::And, R7, 3));
        a.jmp_imm(Jmp::Jeq, R7, 0, allow);
    } else {
        a.comment("bprm_check_security(struct linux_binprm *bprm): bprm->file");
        a.push(insn::ldx(Size::DW, R8, R8, offsets.binprm_file as i16));
        a.push(insn::mov64_imm(R7, 0));
    }
    a.comment("key = (workload, resolved path); zeroed first so every byte is defined");
    for off in (0..(8 + PATH_BYTES as i16) / 8).map(|i| PATH_KEY + 8 * i) {
        a.push(insn::st(Size::DW, R10, off, 0));
    }
    a.push(insn::st(Size::W, R10, PATH_KEY + 8 + PATH_BYTES as i16 - 4, 0));
    a.push(insn::stx(Size::W, R10, R9, PATH_KEY + 4));
    a.push(insn::mov64_reg(R1, R8));
    a.push(insn::alu64_imm(Alu::Add, R1, offsets.file_path as i32));
    a.push(insn::mov64_reg(R2, R10));
    a.push(insn::alu64_imm(Alu::Add, R2, i32::from(PATH_KEY + 8)));
    a.push(insn::mov64_imm(R3, PATH_BYTES));
    a.push(insn::call(helper::D_PATH));
    a.jmp_imm(Jmp::Jsgt, R0, 0, resolved);
    a.comment("unresolved (or longer than the key): only the empty prefix matches");
    a.push(insn::st(Size::B, R10, PATH_KEY + 8, 0));
    a.push(insn::st(Size::W, R10, PATH_KEY, 32));
    a.ja(have_key);
    a.bind(resolved);
    a.push(insn::st(Size::W, R10, PATH_KEY, 32 + 8 * PATH_BYTES));
    a.bind(have_key);
    lookup(&mut a, maps::of(plan.operation).paths, PATH_KEY);
    a.jmp_imm(Jmp::Jeq, R0, 0, allow);
    a.push(insn::mov64_reg(R9, R0));
    if files {
        // values[access - 1]: read, write, read+write.
        let write = a.label();
        let picked = a.label();
        a.jmp_imm(Jmp::Jeq, R7, 1, picked);
        a.jmp_imm(Jmp::Jeq, R7, 2, write);
        a.push(insn::alu64_imm(Alu::Add, R9, 16));
        a.ja(picked);
        a.bind(write);
        a.push(insn::alu64_imm(Alu::Add, R9, 8));
        a.bind(picked);
    }
    a.push(insn::ldx(Size::W, R1, R9, 4));
    a.push(insn::alu64_imm(Alu::And, R1, FLAG_EVENT as i32));
    a.jmp_imm(Jmp::Jeq, R1, 0, verdict);
    a.comment("event record: header, then the key with the path");
    event_header(&mut a, hook, PATH_EVENT);
    let at = |field: usize| PATH_EVENT + field as i16;
    for i in 0..2 {
        a.push(insn::st(Size::DW, R10, at(record::offset::ADDR) + 8 * i, 0));
    }
    // Port and family are zero; the detail byte holds the access bits.
    a.push(insn::st(Size::W, R10, at(record::offset::PORT), 0));
    a.push(insn::stx(Size::B, R10, R7, at(record::offset::DETAIL)));
    output(&mut a, PATH_EVENT, hook.spec().record);
    a.bind(verdict);
    a.push(insn::ldx(Size::W, R1, R9, 4));
    a.push(insn::alu64_imm(Alu::And, R1, FLAG_DENY as i32));
    a.jmp_imm(Jmp::Jne, R1, 0, deny);
    exits(a, hook, allow, deny)
}

#[cfg(test)]
mod tests;
