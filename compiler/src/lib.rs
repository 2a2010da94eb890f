//! Palisade policy compiler: policy set → decision partition → eBPF programs → BPF ELF
//! bundle. Pure library: no I/O, no async, no database. Also the reference evaluator (the
//! executable specification of `docs/policy-semantics.md`) and the disassembler.

#[cfg(any(test, feature = "arbitrary"))]
pub mod arbitrary;
pub mod asm;
pub mod bundle;
pub mod codegen;
pub mod disasm;
pub mod elf;
pub mod eval;
pub mod interp;
pub mod layout;
pub mod limits;
pub mod model;
pub mod plan;
pub mod simulate;

pub use palisade_contract::insn;
