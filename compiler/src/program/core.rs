//! The shared decision core: the workload stage every program starts with, and for network
//! programs the address walk, the port lookup and the decision (structures:
//! [`crate::policy::partition::layout`]).

use palisade_contract::Hook;

use super::{ADDR_KEY, CGROUP_KEY, Exits, INDEX_KEY, UID_KEY, maps, record};
use crate::{
    bpf::{
        asm::{Asm, Label},
        insn::{self, Alu, Jmp, R0, R1, R2, R3, R6, R7, R8, R9, R10, Size, helper},
    },
    policy::partition::{FLAG_DENY, FLAG_EVENT, Family, Plan, layout},
};

/// Both families' cores after a network adapter, which jumps to `core4`/`core6` (or falls
/// through into the first core emitted), then the exits. Only reachable code is emitted: the
/// verifier rejects unreachable instructions.
pub(super) fn network_cores(
    mut a: Asm,
    hook: Hook,
    plan: &Plan,
    exits: Exits,
    (core4, core6): (Option<Label>, Option<Label>),
) -> Result<crate::bpf::asm::Program, crate::bpf::asm::AsmError> {
    // r7 = port in network order (low 16 bits).
    if let Some(core4) = core4 {
        a.bind(core4);
        core(&mut a, hook, plan, false, exits);
        if core6.is_some() {
            a.ja(exits.allow);
        }
    }
    if let Some(core6) = core6 {
        a.bind(core6);
        core(&mut a, hook, plan, true, exits);
    }
    super::exits(a, hook, exits)
}

/// `r0 = bpf_map_lookup_elem(map, r10 + key)`.
pub fn lookup(a: &mut Asm, map: &str, key: i16) {
    a.ld_map(R1, map);
    a.push(insn::mov64_reg(R2, R10));
    a.push(insn::alu64_imm(Alu::Add, R2, i32::from(key)));
    a.push(insn::call(helper::MAP_LOOKUP_ELEM));
}

/// Whose cgroup and uid the workload stage classifies.
pub(super) trait Identity {
    /// Stores the id of the cgroup's ancestor at depth `level` (the cgroup itself at its own
    /// depth) at `r10 + CGROUP_KEY`, or jumps to `none` when it has none there.
    fn ancestor(&self, a: &mut Asm, level: u32, none: Label);
    /// Stores the uid at `r10 + UID_KEY + 4`.
    fn uid(&self, a: &mut Asm);
}

/// The calling task: the helpers that read its cgroup ancestors and uid.
pub(super) struct CurrentTask;

impl Identity for CurrentTask {
    fn ancestor(&self, a: &mut Asm, level: u32, none: Label) {
        a.push(insn::mov64_imm(R1, level as i32));
        a.push(insn::call(helper::GET_CURRENT_ANCESTOR_CGROUP_ID));
        a.jmp_imm(Jmp::Jeq, R0, 0, none);
        a.push(insn::stx(Size::DW, R10, R0, CGROUP_KEY));
    }

    fn uid(&self, a: &mut Asm) {
        a.push(insn::call(helper::GET_CURRENT_UID_GID));
        a.push(insn::stx(Size::W, R10, R0, UID_KEY + 4));
    }
}

/// The workload stage shared by every program: r9 = workload class of `who`, or go to
/// `allow` (for sockops: nothing to do) when no policy applies to it.
pub(super) fn workload_class(a: &mut Asm, plan: &Plan, who: &dyn Identity, allow: Label) {
    let have_class = a.label();
    let have_workload = a.label();
    a.push(insn::mov64_imm(R9, if plan.direct { plan.root_workload as i32 } else { 0 }));
    for (n, &level) in plan.levels.iter().enumerate() {
        let next = a.label();
        a.comment(format!("selected cgroups at depth {level}"));
        who.ancestor(a, level, next);
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
        who.uid(a);
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

/// The shared decision core for one address family (the structures: [`crate::policy::partition::layout`]).
///
/// r6 = node, then the region's default value; r7 = port (network order); r8 = protocol;
/// r9 = workload, then the region id, then the decision. Jumps to `deny`, or to `allow`
/// early; an allowed decision falls through, so `allow` (or a jump to it) must follow.
fn core(a: &mut Asm, hook: Hook, plan: &Plan, v6: bool, Exits { allow, deny }: Exits) {
    let verdict = a.label();
    let names = maps::of(plan.operation);
    a.comment(format!("core ({}): workload class", if v6 { "IPv6" } else { "IPv4" }));
    workload_class(a, plan, &CurrentTask, allow);
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
    record::event(a, hook, v6);
    a.bind(verdict);
    a.push(insn::ldx(Size::W, R1, R9, 4));
    a.push(insn::alu64_imm(Alu::And, R1, FLAG_DENY as i32));
    a.jmp_imm(Jmp::Jne, R1, 0, deny);
}

/// r9 = workload class, `ADDR_KEY` = the address, r7 = port (network order), r8 = protocol →
/// r0 = the cell's value (rule, flags), or go to `none` when the partition has no value
/// there. r6 is scratch. The walk of the decision core, for programs that act on a value
/// instead of deciding (sockops).
pub(super) fn value_of(a: &mut Asm, names: maps::Names, v6: bool, none: Label) {
    address_region(a, names, v6);
    port_value(a, names, none);
    a.push(insn::stx(Size::W, R10, R1, INDEX_KEY));
    lookup(a, names.values, INDEX_KEY);
    a.jmp_imm(Jmp::Jeq, R0, 0, none);
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
    a.jmp_imm(Jmp::Jne, R8, i32::from(palisade_contract::record::PROTO_UDP), tcp);
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
