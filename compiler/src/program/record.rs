//! The record writer: decision records as `palisade_contract::record` lays them out, built
//! on the stack and output to the events ring buffer.

use palisade_contract::{Hook, record};

use super::{ADDR_KEY, EVENT, maps};
use crate::bpf::{
    asm::Asm,
    insn::{self, Alu, Jmp, R0, R1, R2, R3, R4, R7, R8, R9, R10, Size, helper},
};

/// Writes the task and decision fields of an event header at `base` (r9 = the decision):
/// time, cgroup, tgid, uid, rule, flags, hook and comm.
pub(super) fn event_header(a: &mut Asm, hook: Hook, base: i16) {
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

/// Outputs a record of `kind` from the stack at `base` to the events ring buffer; when the
/// ring buffer has no room, counts the record in [`maps::LOST`] instead (r0–r5 clobbered).
pub(super) fn output(a: &mut Asm, base: i16, kind: record::RecordKind) {
    a.ld_map(R1, maps::EVENTS);
    a.push(insn::mov64_reg(R2, R10));
    a.push(insn::alu64_imm(Alu::Add, R2, i32::from(base)));
    a.push(insn::mov64_imm(R3, kind.size() as i32));
    a.push(insn::mov64_imm(R4, 0));
    a.push(insn::call(helper::RINGBUF_OUTPUT));
    let done = a.label();
    a.jmp_imm(Jmp::Jeq, R0, 0, done);
    a.comment("ring buffer full: count the record as lost");
    // The record was not copied, so its first word can hold the counter's key (0).
    a.push(insn::st(Size::W, R10, base, 0));
    super::lookup(a, maps::LOST, base);
    a.jmp_imm(Jmp::Jeq, R0, 0, done);
    a.push(insn::mov64_imm(R1, 1));
    a.push(insn::atomic_add(Size::DW, R0, R1, 0));
    a.bind(done);
}

/// Writes the decision record ([`record`]) and outputs it.
pub(super) fn event(a: &mut Asm, hook: Hook, v6: bool) {
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
