//! The program layer: one shared decision core behind per-family adapters.
//!
//! Which program exists, where it attaches and what it records is the hook table
//! (`palisade_contract::hook`); here each row gets its adapter by attach kind:
//!
//! - [`sock_addr`]: cgroup `connect4/6`, `bind4/6` programs read `struct bpf_sock_addr`;
//! - [`lsm`]: `lsm/socket_connect` and `lsm/socket_bind` read the hook's `sockaddr`;
//! - [`path`]: `lsm/bprm_check_security` and `lsm/file_open` resolve a path and look it up.
//!
//! A network adapter reads the context into a fixed stack layout (destination address in the
//! address key, port in r7, protocol in r8); the [`core`] computes the workload class, looks
//! up the address region and the port decision (see [`crate::policy::partition`]), writes a
//! record ([`record`]) when the decision asks for one, and returns the hook's allow or deny
//! value. Every exit goes through `allow:`/`deny:`, so the return values are exactly two
//! constants per hook. A sock_ops family or a capture-filter frontend is a module beside
//! these.

mod core;
mod lsm;
mod path;
mod record;
mod sock_addr;
mod sockops;

use palisade_contract::{Attach, Operation, SockAddrHook, btf};
pub use palisade_contract::{Hook, map as maps};

pub use self::core::lookup;
use crate::{
    bpf::{
        asm::{Asm, AsmError, Label, Program},
        insn::{self, Jmp, R0, R1, R8},
    },
    policy::partition::Plan,
};

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
            // cgroup sock_addr: 1 lets the call proceed (kernel/bpf/cgroup.c); sockops
            // programs return 1 too (they never refuse anything).
            Attach::CgroupSockAddr(_) | Attach::CgroupSockOps => 1,
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
            // Nothing to deny: the same 1.
            Attach::CgroupSockOps => 1,
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
    /// What the sockops program reads of a socket's cgroup; `None` when the node did not
    /// report every one of them (then no sockops program is generated).
    pub sock: Option<SockOffsets>,
}

/// Kernel struct offsets the sockops program walks from a socket to its cgroup and ancestors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SockOffsets {
    /// `offsetof(struct sock, sk_cgrp_data)` (its first member is the cgroup pointer).
    pub sk_cgrp_data: u32,
    /// `offsetof(struct sock, sk_uid)`.
    pub sk_uid: u32,
    /// `offsetof(struct cgroup, level)`.
    pub cgroup_level: u32,
    /// `offsetof(struct cgroup, kn)`.
    pub cgroup_kn: u32,
    /// `offsetof(struct cgroup, ancestors)`.
    pub cgroup_ancestors: u32,
    /// `offsetof(struct kernfs_node, id)`.
    pub kernfs_node_id: u32,
}

impl KernelOffsets {
    /// The offsets of Debian's 6.12 x86-64 kernel: what the server compiles with for nodes
    /// that did not report their own (and for `CompilePolicy`).
    pub const LINUX_6_12: Self = Self { socket_type: 4, binprm_file: 64, file_path: 64, file_mode: 12, sock: None };

    /// Offsets from reported `"struct.member"` values ([`palisade_contract::btf`] keys) (`reported` looks one up), each missing
    /// one taken from `defaults`.
    pub fn from_reported(reported: impl Fn(&str) -> Option<u32>, defaults: Self) -> Self {
        let get = |key: &str, default: u32| reported(key).unwrap_or(default);
        Self {
            socket_type: get(btf::SOCKET_TYPE.key, defaults.socket_type),
            binprm_file: get(btf::BINPRM_FILE.key, defaults.binprm_file),
            file_path: get(btf::FILE_PATH.key, defaults.file_path),
            file_mode: get(btf::FILE_MODE.key, defaults.file_mode),
            sock: (|| {
                Some(SockOffsets {
                    sk_cgrp_data: reported(btf::SOCK_CGRP_DATA.key)?,
                    sk_uid: reported(btf::SOCK_UID.key)?,
                    cgroup_level: reported(btf::CGROUP_LEVEL.key)?,
                    cgroup_kn: reported(btf::CGROUP_KN.key)?,
                    cgroup_ancestors: reported(btf::CGROUP_ANCESTORS.key)?,
                    kernfs_node_id: reported(btf::KERNFS_NODE_ID.key)?,
                })
            })()
            .or(defaults.sock),
        }
    }
}

// Stack layout (offsets from r10). Everything passed to a helper is fully written first.
const EVENT: i16 = -(palisade_contract::record::HEADER_SIZE as i16); // the decision record
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
const PATH_KEY: i16 = PATH_EVENT + palisade_contract::record::HEADER_SIZE as i16;
/// Path bytes a key holds, NUL included ([`crate::policy::model::MAX_PATH`] + 1).
pub const PATH_BYTES: i32 = palisade_contract::record::PATH_BYTES as i32;

const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;
const IPPROTO_TCP: i32 = 6;
const IPPROTO_UDP: i32 = 17;
const SOCK_STREAM: i32 = 1;
const SOCK_DGRAM: i32 = 2;

/// What a program is generated from: the partition of every operation, the node's struct
/// offsets, and the tag of the bundle's rule table.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Partitions, one per operation.
    pub plans: &'a [Plan],
    /// The node's struct offsets.
    pub offsets: KernelOffsets,
    /// Tag of the bundle's rule table (written into per-connection state, so a record can
    /// be attributed with the table of the generation that decided it).
    pub rules_tag: u32,
}

impl Inputs<'_> {
    /// The partition of `op`.
    fn plan(&self, op: crate::policy::model::Operation) -> &Plan {
        self.plans.iter().find(|p| p.operation == op).unwrap_or(&self.plans[0])
    }
}

/// Generates the program for `hook`: the adapter its attach kind needs in front of the shared
/// core. None when the bundle needs no such program (sockops without a `connections`
/// section) or the node lacks what it needs (sockops without [`SockOffsets`]).
pub fn program(hook: Hook, inputs: Inputs<'_>) -> Option<Result<Program, AsmError>> {
    let plan = inputs.plan(hook.operation());
    let offsets = inputs.offsets;
    Some(match hook.spec().attach {
        Attach::CgroupSockOps => {
            let (observe, tune) = (inputs.plan(Operation::Observe), inputs.plan(Operation::Tune));
            if !sockops::needed(observe, tune) {
                return None;
            }
            sockops::program(hook, observe, tune, offsets.sock?, inputs.rules_tag)
        }
        Attach::CgroupSockAddr(which) => {
            sock_addr::program(hook, plan, matches!(which, SockAddrHook::Connect6 | SockAddrHook::Bind6))
        }
        Attach::Lsm { resolves_paths: true, .. } => path::program(hook, plan, offsets),
        Attach::Lsm { resolves_paths: false, .. } => lsm::program(hook, plan, offsets),
    })
}

/// The labels every program exits through.
#[derive(Debug, Clone, Copy)]
struct Exits {
    allow: Label,
    deny: Label,
}

impl Exits {
    fn new(a: &mut Asm) -> Self {
        Self { allow: a.label(), deny: a.label() }
    }
}

/// The only two exits of every program: `allow:` and `deny:` return the hook's constants.
fn exits(mut a: Asm, hook: Hook, Exits { allow, deny }: Exits) -> Result<Program, AsmError> {
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
    a.push(insn::mov64_imm(R8, i32::from(palisade_contract::record::PROTO_TCP)));
    a.jmp_imm(Jmp::Jeq, R1, tcp, done);
    a.jmp_imm(Jmp::Jne, R1, udp, other);
    a.bind(is_udp);
    a.push(insn::mov64_imm(R8, i32::from(palisade_contract::record::PROTO_UDP)));
    a.bind(done);
}

#[cfg(test)]
mod tests;
