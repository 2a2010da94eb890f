//! The sockops program (`connections.observe` and `connections.tune`, semantics §13): reads
//! `struct bpf_sock_ops` (include/uapi/linux/bpf.h).
//!
//! - At `ACTIVE_ESTABLISHED` and `PASSIVE_ESTABLISHED` it finds the socket's workload class
//!   (the socket's cgroup and uid by BTF-checked loads through `bpf_skc_to_tcp_sock`, its
//!   ancestors with `bpf_probe_read_kernel`: sockops runs in softirq, where the current task
//!   is not the socket's, and the `bpf_sk_*cgroup_id` helpers are refused to sockops), walks both partitions with the peer address and port, applies the tune rule's
//!   profile with `bpf_setsockopt`, and for an observed connection asks for state callbacks
//!   and stores its state in `pal_flows` by socket cookie.
//! - At the `STATE_CB` transition to `TCP_CLOSE` it writes the flow record from that state
//!   and the socket's counters, and deletes the state. `pal_flows` outlives generations, so a
//!   connection opened under one generation is recorded once by whichever runs at its close.

use palisade_contract::{
    Hook,
    map::{FLOW_STAT_TUNE_REFUSED, FLOW_STAT_UNTRACKED, FLOW_STATS, FLOWS, PROFILES},
    record::{self, flow, flow_state, offset, profile},
};

use super::{ADDR_KEY, AF_INET, AF_INET6, CGROUP_KEY, INDEX_KEY, SockOffsets, UID_KEY, core, maps, record as out};
use crate::{
    bpf::{
        asm::{Asm, AsmError, Label, Program},
        insn::{self, Alu, Jmp, R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10, Size, helper},
    },
    policy::partition::Plan,
};

// Stack layout (offsets from r10), below the shared keys (ADDR_KEY … CGROUP_KEY).
const CTX: i16 = -144; // the context pointer
const SOCK_CGROUP: i16 = -160; // struct cgroup * of the socket
const TMP: i16 = -168; // 8 bytes read through probe_read_kernel
const CGROUP_ID: i16 = -176; // the socket's cgroup id
const LEVEL: i16 = -180; // its cgroup's level (u32)
const SOCK_UID: i16 = -184; // sk_uid
const OBSERVE_RULE: i16 = -188;
const TUNE_RULE: i16 = -192;
const FLAGS: i16 = -196; // record::flow::flags
const FLOW_KEY: i16 = -208; // socket cookie
const STATE: i16 = -248; // the pal_flows value (40 bytes)
const RECORD: i16 = -376; // the flow record (128 bytes)

// include/uapi/linux/bpf.h
const OP_ACTIVE_ESTABLISHED: i32 = 4;
const OP_PASSIVE_ESTABLISHED: i32 = 5;
const OP_STATE: i32 = 10;
const STATE_CB_FLAG: i32 = 4;
const TCP_CLOSE: i32 = 7;
// include/uapi/linux/tcp.h, include/uapi/linux/in.h
const SOL_TCP: i32 = 6;
const TCP_NODELAY: i32 = 1;
const TCP_CONGESTION: i32 = 13;
const TCP_BPF_IW: i32 = 1001;

// struct bpf_sock_ops
mod ctx {
    pub const OP: i16 = 0;
    pub const ARG1: i16 = 8;
    pub const FAMILY: i16 = 20;
    pub const REMOTE_IP4: i16 = 24;
    pub const LOCAL_IP4: i16 = 28;
    pub const REMOTE_IP6: i16 = 32;
    pub const LOCAL_IP6: i16 = 48;
    pub const REMOTE_PORT: i16 = 64;
    pub const LOCAL_PORT: i16 = 68;
    pub const SRTT_US: i16 = 80;
    pub const CB_FLAGS: i16 = 84;
    pub const RTT_MIN: i16 = 92;
    pub const TOTAL_RETRANS: i16 = 136;
    pub const DATA_SEGS_IN: i16 = 144;
    pub const DATA_SEGS_OUT: i16 = 152;
    pub const BYTES_RECEIVED: i16 = 168;
    pub const BYTES_ACKED: i16 = 176;
    pub const SK: i16 = 184;
}

/// The sockops program from the observe and tune partitions.
pub(super) fn program(
    hook: Hook,
    observe: &Plan,
    tune: &Plan,
    offsets: SockOffsets,
    rules_tag: u32,
) -> Result<Program, AsmError> {
    let mut a = Asm::new();
    let done = a.label();
    let established = a.label();
    let passive = a.label();
    let state = a.label();
    a.comment(format!("palisade {} — dispatch on the callback", hook.section()));
    a.push(insn::mov64_reg(R6, R1));
    a.push(insn::stx(Size::DW, R10, R1, CTX));
    a.push(insn::ldx(Size::W, R1, R6, ctx::OP));
    a.jmp_imm(Jmp::Jeq, R1, OP_STATE, state);
    a.jmp_imm(Jmp::Jeq, R1, OP_PASSIVE_ESTABLISHED, passive);
    a.jmp_imm(Jmp::Jne, R1, OP_ACTIVE_ESTABLISHED, done);
    a.push(insn::st(Size::W, R10, FLAGS, 0));
    a.ja(established);
    a.bind(passive);
    a.push(insn::st(Size::W, R10, FLAGS, flow::flags::INBOUND as i32));
    a.bind(established);
    establish(&mut a, observe, tune, offsets, rules_tag, done);
    a.ja(done);
    a.bind(state);
    close(&mut a, hook, done);
    a.bind(done);
    a.comment("done");
    a.push(insn::mov64_imm(R0, 1));
    a.push(insn::exit());
    a.finish()
}

/// Whether the program is needed: some policy has a `connections` section. Without one no
/// program is generated, so nodes pay nothing per connection (the agent then removes the
/// sockops link; connections still open are not recorded).
pub(super) fn needed(observe: &Plan, tune: &Plan) -> bool {
    applies(observe) || applies(tune)
}

/// Whether any socket can have a workload class in `plan` (some policy has the section).
fn applies(plan: &Plan) -> bool {
    !plan.cgroups.is_empty() || !plan.workloads.is_empty() || plan.root_workload != 0
}

/// `*(size *)(r10 + dst) = *(r3 + 0)` through `bpf_probe_read_kernel` (r3 holds the kernel
/// address; r0–r5 clobbered). A failed read leaves zeros.
fn probe_read(a: &mut Asm, dst: i16, size: i32) {
    a.push(insn::mov64_reg(R1, R10));
    a.push(insn::alu64_imm(Alu::Add, R1, i32::from(dst)));
    a.push(insn::mov64_imm(R2, size));
    a.push(insn::call(helper::PROBE_READ_KERNEL));
}

/// r3 = `*(u64 *)(r10 + slot) + add`.
fn pointer_at(a: &mut Asm, slot: i16, add: u32) {
    a.push(insn::ldx(Size::DW, R3, R10, slot));
    if add != 0 {
        a.push(insn::alu64_imm(Alu::Add, R3, add as i32));
    }
}

/// r3 = the pointer read into `slot`, plus `add`; go to `null` when it is NULL.
fn deref(a: &mut Asm, slot: i16, add: u32, null: Label) {
    a.push(insn::ldx(Size::DW, R3, R10, slot));
    a.jmp_imm(Jmp::Jeq, R3, 0, null);
    a.push(insn::alu64_imm(Alu::Add, R3, add as i32));
}

/// Everything at establishment: the socket's cgroup, uid and peer, both walks, the profile,
/// and the state of an observed connection.
fn establish(a: &mut Asm, observe: &Plan, tune: &Plan, o: SockOffsets, rules_tag: u32, done: Label) {
    a.comment("the socket: its BTF pointer, then its cgroup, uid, cgroup level and id by BTF-checked loads");
    a.push(insn::st(Size::W, R10, OBSERVE_RULE, 0));
    a.push(insn::st(Size::W, R10, TUNE_RULE, 0));
    a.push(insn::ldx(Size::DW, R1, R6, ctx::SK));
    a.jmp_imm(Jmp::Jeq, R1, 0, done);
    a.push(insn::call(helper::SKC_TO_TCP_SOCK));
    a.jmp_imm(Jmp::Jeq, R0, 0, done);
    // struct tcp_sock starts with struct sock, so the sock offsets apply. Loads through a BTF
    // pointer are checked against the kernel's types and cannot fault.
    a.push(insn::ldx(Size::W, R2, R0, o.sk_uid as i16));
    a.push(insn::stx(Size::W, R10, R2, SOCK_UID));
    a.push(insn::ldx(Size::DW, R1, R0, o.sk_cgrp_data as i16));
    a.jmp_imm(Jmp::Jeq, R1, 0, done);
    a.push(insn::stx(Size::DW, R10, R1, SOCK_CGROUP));
    a.push(insn::ldx(Size::W, R2, R1, o.cgroup_level as i16));
    a.push(insn::stx(Size::W, R10, R2, LEVEL));
    a.push(insn::st(Size::DW, R10, CGROUP_ID, 0));
    let no_id = a.label();
    a.push(insn::ldx(Size::DW, R2, R1, o.cgroup_kn as i16));
    a.jmp_imm(Jmp::Jeq, R2, 0, no_id);
    a.push(insn::ldx(Size::DW, R3, R2, o.kernfs_node_id as i16));
    a.push(insn::stx(Size::DW, R10, R3, CGROUP_ID));
    a.bind(no_id);

    a.comment("the peer: address into the key, port (network order) into r7");
    let v6 = a.label();
    let walked = a.label();
    a.push(insn::mov64_imm(R8, i32::from(record::PROTO_TCP)));
    a.push(insn::ldx(Size::W, R7, R6, ctx::REMOTE_PORT));
    a.push(insn::alu64_imm(Alu::Rsh, R7, 16));
    a.push(insn::ldx(Size::W, R1, R6, ctx::FAMILY));
    a.jmp_imm(Jmp::Jeq, R1, AF_INET6, v6);
    a.jmp_imm(Jmp::Jne, R1, AF_INET, done);
    a.push(insn::ldx(Size::W, R1, R6, ctx::REMOTE_IP4));
    a.push(insn::stx(Size::W, R10, R1, ADDR_KEY + 8));
    walks(a, observe, tune, o, false);
    a.ja(walked);
    a.bind(v6);
    for i in 0..4 {
        a.push(insn::ldx(Size::W, R1, R6, ctx::REMOTE_IP6 + 4 * i));
        a.push(insn::stx(Size::W, R10, R1, ADDR_KEY + 8 + 4 * i));
    }
    walks(a, observe, tune, o, true);
    a.bind(walked);
    apply_profile(a);
    remember(a, rules_tag, done);
}

/// Both partitions' walks for one family: `OBSERVE_RULE`, `TUNE_RULE` = the rules of the
/// cells found (0: none). r7, r8 and the address key hold the peer.
fn walks(a: &mut Asm, observe: &Plan, tune: &Plan, o: SockOffsets, v6: bool) {
    for (plan, slot) in [(observe, OBSERVE_RULE), (tune, TUNE_RULE)] {
        let none = a.label();
        a.comment(format!("{} ({})", plan.operation.section_path(), if v6 { "IPv6" } else { "IPv4" }));
        core::workload_class(a, plan, &Socket(o), none);
        core::value_of(a, maps::of(plan.operation), v6, none);
        a.push(insn::ldx(Size::W, R1, R0, 0));
        a.push(insn::stx(Size::W, R10, R1, slot));
        a.bind(none);
    }
}

/// The socket: its cgroup (id and level, loaded at establishment) and `sk_uid`; ancestors
/// above its own depth through `cgroup.ancestors[level]`.
struct Socket(SockOffsets);

impl core::Identity for Socket {
    fn ancestor(&self, a: &mut Asm, level: u32, none: Label) {
        let (ancestor, have_id) = (a.label(), a.label());
        a.push(insn::ldx(Size::W, R1, R10, LEVEL));
        a.jmp_imm(Jmp::Jlt, R1, level as i32, none);
        a.jmp_imm(Jmp::Jne, R1, level as i32, ancestor);
        // The socket's own cgroup is at this depth: its id is already known.
        a.push(insn::ldx(Size::DW, R1, R10, CGROUP_ID));
        a.push(insn::stx(Size::DW, R10, R1, CGROUP_KEY));
        a.ja(have_id);
        a.bind(ancestor);
        pointer_at(a, SOCK_CGROUP, self.0.cgroup_ancestors + 8 * level);
        probe_read(a, TMP, 8);
        deref(a, TMP, self.0.cgroup_kn, none);
        probe_read(a, TMP, 8);
        deref(a, TMP, self.0.kernfs_node_id, none);
        probe_read(a, CGROUP_KEY, 8);
        a.bind(have_id);
    }

    fn uid(&self, a: &mut Asm) {
        a.push(insn::ldx(Size::W, R1, R10, SOCK_UID));
        a.push(insn::stx(Size::W, R10, R1, UID_KEY + 4));
    }
}

/// Adds 1 to counter `index` of `pal_flowstat` (r0–r5 clobbered; `INDEX_KEY` reused).
fn count(a: &mut Asm, index: u32) {
    let skip = a.label();
    a.push(insn::st(Size::W, R10, INDEX_KEY, index as i32));
    core::lookup(a, FLOW_STATS, INDEX_KEY);
    a.jmp_imm(Jmp::Jeq, R0, 0, skip);
    a.push(insn::mov64_imm(R1, 1));
    a.push(insn::atomic_add(Size::DW, R0, R1, 0));
    a.bind(skip);
}

/// Applies the profile of `TUNE_RULE` (none: nothing), or marks it would-tune for an
/// audit-mode policy. Each setting the kernel refuses is flagged and counted.
fn apply_profile(a: &mut Asm) {
    let after = a.label();
    let audit = a.label();
    a.comment("tune: the profile of the deciding rule");
    a.push(insn::ldx(Size::W, R1, R10, TUNE_RULE));
    a.jmp_imm(Jmp::Jeq, R1, 0, after);
    a.push(insn::stx(Size::W, R10, R1, INDEX_KEY));
    core::lookup(a, PROFILES, INDEX_KEY);
    a.jmp_imm(Jmp::Jeq, R0, 0, after);
    a.push(insn::mov64_reg(R9, R0));
    a.push(insn::ldx(Size::W, R1, R9, 24));
    a.push(insn::alu64_imm(Alu::And, R1, profile::AUDIT as i32));
    a.jmp_imm(Jmp::Jne, R1, 0, audit);
    set_flag(a, flow::flags::TUNED);
    // (test of the setting, optname, offset of its value in the profile, length)
    for (test, name, at, len) in
        [(Size::B, TCP_CONGESTION, 0_i16, 16), (Size::W, TCP_BPF_IW, 16, 4), (Size::W, TCP_NODELAY, 20, 4)]
    {
        let skip = a.label();
        a.push(insn::ldx(test, R1, R9, at));
        a.jmp_imm(Jmp::Jeq, R1, 0, skip);
        a.push(insn::ldx(Size::DW, R1, R10, CTX));
        a.push(insn::mov64_imm(R2, SOL_TCP));
        a.push(insn::mov64_imm(R3, name));
        a.push(insn::mov64_reg(R4, R9));
        if at != 0 {
            a.push(insn::alu64_imm(Alu::Add, R4, i32::from(at)));
        }
        a.push(insn::mov64_imm(R5, len));
        a.push(insn::call(helper::SETSOCKOPT));
        a.jmp_imm(Jmp::Jeq, R0, 0, skip);
        set_flag(a, flow::flags::TUNE_REFUSED);
        count(a, FLOW_STAT_TUNE_REFUSED);
        a.bind(skip);
    }
    a.ja(after);
    a.bind(audit);
    set_flag(a, flow::flags::WOULD_TUNE);
    a.bind(after);
}

/// `FLAGS |= flag` (r1 clobbered).
fn set_flag(a: &mut Asm, flag: u32) {
    a.push(insn::ldx(Size::W, R1, R10, FLAGS));
    a.push(insn::alu64_imm(Alu::Or, R1, flag as i32));
    a.push(insn::stx(Size::W, R10, R1, FLAGS));
}

/// For an observed connection: state callbacks on, and its state in `pal_flows`.
fn remember(a: &mut Asm, rules_tag: u32, done: Label) {
    a.comment("observe: ask for state callbacks and keep the connection's state by cookie");
    a.push(insn::ldx(Size::W, R1, R10, OBSERVE_RULE));
    a.jmp_imm(Jmp::Jeq, R1, 0, done);
    a.push(insn::ldx(Size::DW, R1, R10, CTX));
    a.push(insn::ldx(Size::W, R2, R1, ctx::CB_FLAGS));
    a.push(insn::alu64_imm(Alu::Or, R2, STATE_CB_FLAG));
    a.push(insn::call(helper::SOCK_OPS_CB_FLAGS_SET));
    a.push(insn::ldx(Size::DW, R1, R10, CTX));
    a.push(insn::call(helper::GET_SOCKET_COOKIE));
    a.push(insn::stx(Size::DW, R10, R0, FLOW_KEY));
    a.push(insn::call(helper::KTIME_GET_NS));
    let at = |field: usize| STATE + field as i16;
    a.push(insn::stx(Size::DW, R10, R0, at(flow_state::START)));
    for (from, field) in [
        (OBSERVE_RULE, flow_state::OBSERVE_RULE),
        (TUNE_RULE, flow_state::TUNE_RULE),
        (FLAGS, flow_state::FLAGS),
        (SOCK_UID, flow_state::UID),
    ] {
        a.push(insn::ldx(Size::W, R1, R10, from));
        a.push(insn::stx(Size::W, R10, R1, at(field)));
    }
    a.push(insn::st(Size::W, R10, at(flow_state::TAG), rules_tag as i32));
    a.push(insn::st(Size::W, R10, at(flow_state::UID) + 4, 0));
    a.push(insn::ldx(Size::DW, R1, R10, CGROUP_ID));
    a.push(insn::stx(Size::DW, R10, R1, at(flow_state::CGROUP)));
    a.ld_map(R1, FLOWS);
    a.push(insn::mov64_reg(R2, R10));
    a.push(insn::alu64_imm(Alu::Add, R2, i32::from(FLOW_KEY)));
    a.push(insn::mov64_reg(R3, R10));
    a.push(insn::alu64_imm(Alu::Add, R3, i32::from(STATE)));
    a.push(insn::mov64_imm(R4, 0));
    a.push(insn::call(helper::MAP_UPDATE_ELEM));
    a.jmp_imm(Jmp::Jeq, R0, 0, done);
    a.comment("pal_flows is full: the connection is counted, not recorded");
    count(a, FLOW_STAT_UNTRACKED);
}

/// At the transition to `TCP_CLOSE` of an observed connection: its flow record.
fn close(a: &mut Asm, hook: Hook, done: Label) {
    a.comment("state change: only the transition to TCP_CLOSE of a connection with state");
    a.push(insn::ldx(Size::W, R1, R6, ctx::ARG1));
    a.jmp_imm(Jmp::Jne, R1, TCP_CLOSE, done);
    a.push(insn::mov64_reg(R1, R6));
    a.push(insn::call(helper::GET_SOCKET_COOKIE));
    a.push(insn::stx(Size::DW, R10, R0, FLOW_KEY));
    core::lookup(a, FLOWS, FLOW_KEY);
    a.jmp_imm(Jmp::Jeq, R0, 0, done);
    a.push(insn::mov64_reg(R9, R0));
    let at = |field: usize| RECORD + field as i16;
    a.comment("flow record: the state, then the socket's addresses and counters");
    a.push(insn::call(helper::KTIME_GET_NS));
    a.push(insn::stx(Size::DW, R10, R0, at(offset::TIME)));
    for (from, to, size) in [
        (flow_state::CGROUP, offset::CGROUP, Size::DW),
        (flow_state::START, flow::START, Size::DW),
        (flow_state::UID, offset::UID, Size::W),
        (flow_state::OBSERVE_RULE, offset::RULE, Size::W),
        (flow_state::FLAGS, offset::FLAGS, Size::W),
        (flow_state::TUNE_RULE, flow::TUNE_RULE, Size::W),
        (flow_state::TAG, flow::TAG, Size::W),
    ] {
        a.push(insn::ldx(size, R1, R9, from as i16));
        a.push(insn::stx(size, R10, R1, at(to)));
    }
    a.push(insn::st(Size::W, R10, at(offset::TGID), 0));
    a.push(insn::st(Size::W, R10, at(offset::HOOK), hook.id()));
    a.push(insn::st(Size::B, R10, at(offset::DETAIL), i32::from(record::PROTO_TCP)));
    for (from, to, size) in [
        (ctx::BYTES_ACKED, flow::BYTES_ACKED, Size::DW),
        (ctx::BYTES_RECEIVED, flow::BYTES_RECEIVED, Size::DW),
        (ctx::DATA_SEGS_OUT, flow::SEGS_OUT, Size::W),
        (ctx::DATA_SEGS_IN, flow::SEGS_IN, Size::W),
        (ctx::TOTAL_RETRANS, flow::RETRANS, Size::W),
        (ctx::SRTT_US, flow::SRTT, Size::W),
        (ctx::RTT_MIN, flow::RTT_MIN, Size::W),
    ] {
        a.push(insn::ldx(size, R1, R6, from));
        a.push(insn::stx(size, R10, R1, at(to)));
    }
    a.push(insn::ldx(Size::W, R1, R6, ctx::REMOTE_PORT));
    a.push(insn::alu64_imm(Alu::Rsh, R1, 16));
    a.push(insn::stx(Size::H, R10, R1, at(offset::PORT)));
    a.push(insn::ldx(Size::W, R1, R6, ctx::LOCAL_PORT));
    a.push(insn::stx(Size::H, R10, R1, at(flow::LOCAL_PORT)));
    a.push(insn::st(Size::H, R10, at(flow::LOCAL_PORT) + 2, 0));
    let v6 = a.label();
    let addressed = a.label();
    a.push(insn::ldx(Size::W, R1, R6, ctx::FAMILY));
    a.jmp_imm(Jmp::Jeq, R1, AF_INET6, v6);
    for base in [offset::ADDR, flow::LOCAL_ADDR] {
        a.push(insn::st(Size::DW, R10, at(base), 0));
        a.push(insn::st(Size::DW, R10, at(base) + 8, 0));
    }
    a.push(insn::ldx(Size::W, R1, R6, ctx::REMOTE_IP4));
    a.push(insn::stx(Size::W, R10, R1, at(offset::ADDR)));
    a.push(insn::ldx(Size::W, R1, R6, ctx::LOCAL_IP4));
    a.push(insn::stx(Size::W, R10, R1, at(flow::LOCAL_ADDR)));
    a.push(insn::st(Size::B, R10, at(offset::FAMILY), i32::from(record::FAMILY_V4)));
    a.ja(addressed);
    a.bind(v6);
    for i in 0..4_i16 {
        a.push(insn::ldx(Size::W, R1, R6, ctx::REMOTE_IP6 + 4 * i));
        a.push(insn::stx(Size::W, R10, R1, at(offset::ADDR) + 4 * i));
        a.push(insn::ldx(Size::W, R1, R6, ctx::LOCAL_IP6 + 4 * i));
        a.push(insn::stx(Size::W, R10, R1, at(flow::LOCAL_ADDR) + 4 * i));
    }
    a.push(insn::st(Size::B, R10, at(offset::FAMILY), i32::from(record::FAMILY_V6)));
    a.bind(addressed);
    out::output(a, RECORD, record::RecordKind::Flow);
    a.ld_map(R1, FLOWS);
    a.push(insn::mov64_reg(R2, R10));
    a.push(insn::alu64_imm(Alu::Add, R2, i32::from(FLOW_KEY)));
    a.push(insn::call(helper::MAP_DELETE_ELEM));
}
