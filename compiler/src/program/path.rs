//! The `exec` and `files` adapter: BPF-LSM programs that resolve the file's path with
//! `bpf_d_path` and look `(workload, path)` up in an LPM trie.

use palisade_contract::{Hook, record::offset};

use super::{Exits, KernelOffsets, PATH_BYTES, PATH_EVENT, PATH_KEY, core, exits, maps, record};
use crate::{
    bpf::{
        asm::{Asm, AsmError, Program},
        insn::{self, Alu, Jmp, R0, R1, R2, R3, R6, R7, R8, R9, R10, Size, helper},
    },
    policy::partition::{FLAG_DENY, FLAG_EVENT, Plan},
};

/// The `exec` and `files` programs: workload class, the resolved path of the file
/// (`bpf_d_path`), one LPM lookup of `(workload, path)`, the decision for the open's access.
///
/// r6 = context, r7 = access bits (files), r8 = `struct file *`, r9 = workload, then the
/// decision.
pub(super) fn program(hook: Hook, plan: &Plan, offsets: KernelOffsets) -> Result<Program, AsmError> {
    let files = hook == Hook::LsmFileOpen;
    let mut a = Asm::new();
    let x = Exits::new(&mut a);
    let Exits { allow, deny } = x;
    let resolved = a.label();
    let have_key = a.label();
    let verdict = a.label();
    a.comment(format!("palisade {} — adapter", hook.section()));
    a.push(insn::mov64_reg(R6, R1));
    core::workload_class(&mut a, plan, &core::CurrentTask, allow);
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
    core::lookup(&mut a, maps::of(plan.operation).paths, PATH_KEY);
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
    record::event_header(&mut a, hook, PATH_EVENT);
    let at = |field: usize| PATH_EVENT + field as i16;
    for i in 0..2 {
        a.push(insn::st(Size::DW, R10, at(offset::ADDR) + 8 * i, 0));
    }
    // Port and family are zero; the detail byte holds the access bits.
    a.push(insn::st(Size::W, R10, at(offset::PORT), 0));
    a.push(insn::stx(Size::B, R10, R7, at(offset::DETAIL)));
    record::output(&mut a, PATH_EVENT, hook.spec().record);
    a.bind(verdict);
    a.push(insn::ldx(Size::W, R1, R9, 4));
    a.push(insn::alu64_imm(Alu::And, R1, FLAG_DENY as i32));
    a.jmp_imm(Jmp::Jne, R1, 0, deny);
    exits(a, hook, x)
}
