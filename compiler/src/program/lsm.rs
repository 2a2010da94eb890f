//! The BPF-LSM socket adapter (`lsm/socket_connect`, `lsm/socket_bind`): reads the hook's
//! `sockaddr` and the socket's type, then runs the core of the address family it finds.

use palisade_contract::Hook;

use super::{
    ADDR_KEY, AF_INET, AF_INET6, Exits, KernelOffsets, SCRATCH, SOCK_DGRAM, SOCK_STREAM, SOCKADDR, core, protocol_to_r8,
};
use crate::{
    bpf::{
        asm::{Asm, AsmError, Program},
        insn::{self, Alu, Jmp, R0, R1, R2, R3, R6, R7, R10, Size, helper},
    },
    policy::partition::Plan,
};

/// The program of an LSM socket hook.
pub(super) fn program(hook: Hook, plan: &Plan, offsets: KernelOffsets) -> Result<Program, AsmError> {
    let mut a = Asm::new();
    let exits = Exits::new(&mut a);
    let allow = exits.allow;
    let v6 = a.label();
    let core4 = a.label();
    let core6 = a.label();
    a.comment(format!("palisade {} — adapter", hook.section()));
    a.push(insn::mov64_reg(R6, R1));
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
    core::network_cores(a, hook, plan, exits, (Some(core4), Some(core6)))
}
