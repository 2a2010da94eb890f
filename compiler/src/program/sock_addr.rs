//! The cgroup `sock_addr` adapter (`cgroup/connect4`, `connect6`, `bind4`, `bind6`): reads
//! `struct bpf_sock_addr` (include/uapi/linux/bpf.h). A cgroup program sees one address
//! family, so its one core follows the adapter directly.

use palisade_contract::Hook;

use super::{ADDR_KEY, Exits, IPPROTO_TCP, IPPROTO_UDP, core, protocol_to_r8};
use crate::{
    bpf::{
        asm::{Asm, AsmError, Program},
        insn::{self, R1, R6, R7, R10, Size},
    },
    policy::partition::Plan,
};

/// The program of a cgroup `sock_addr` hook for IPv4 or (`v6`) IPv6.
pub(super) fn program(hook: Hook, plan: &Plan, v6: bool) -> Result<Program, AsmError> {
    let mut a = Asm::new();
    let exits = Exits::new(&mut a);
    let core = a.label();
    a.comment(format!("palisade {} — adapter", hook.section()));
    a.push(insn::mov64_reg(R6, R1));
    // struct bpf_sock_addr: protocol at 36, user_ip4 at 4, user_ip6 at 8, user_port at 24.
    a.push(insn::ldx(Size::W, R1, R6, 36));
    protocol_to_r8(&mut a, IPPROTO_TCP, IPPROTO_UDP, exits.allow);
    a.push(insn::ldx(Size::W, R7, R6, 24));
    if v6 {
        for i in 0..4 {
            a.push(insn::ldx(Size::W, R1, R6, 8 + 4 * i));
            a.push(insn::stx(Size::W, R10, R1, ADDR_KEY + 8 + 4 * i));
        }
    } else {
        a.push(insn::ldx(Size::W, R1, R6, 4));
        a.push(insn::stx(Size::W, R10, R1, ADDR_KEY + 8));
    }
    // One family, whose core follows directly: no jump.
    let cores = if v6 { (None, Some(core)) } else { (Some(core), None) };
    core::network_cores(a, hook, plan, exits, cores)
}
