//! The instruction layer: eBPF with no policy knowledge. Instruction encoding and helper ids
//! ([`insn`], shared with the agent through `palisade-contract`), a label-based assembler
//! ([`asm`]), the BPF ELF writer aya loads ([`elf`]), a disassembler ([`disasm`]) and an
//! interpreter for what we emit ([`interp`]).

pub mod asm;
pub mod disasm;
pub mod elf;
pub mod interp;

pub use palisade_contract::insn;
