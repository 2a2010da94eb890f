//! Palisade policy compiler: policy set → decision partition → eBPF programs → BPF ELF
//! bundle. Pure library: no I/O, no async, no database, no tonic (DESIGN.md §1).
//!
//! The pipeline, layer by layer:
//!
//! 1. [`policy`] — the policy layer. [`policy::model`] turns validated protobuf policies into
//!    a typed [`PolicySet`](policy::model::PolicySet); [`policy::eval`] is the reference
//!    evaluator, the executable specification of `docs/policy-semantics.md`;
//!    [`policy::partition`] computes, per policy section, everything the kernel programs look
//!    up (workload classes, address regions, port tables, path prefixes — each cell decided by
//!    the evaluator's own `decide`) and lays it out as fixed-stride arrays
//!    ([`policy::partition::layout`]).
//! 2. [`program`] — the program layer. A hook table (`palisade_contract::hook`) names every
//!    program; each program is an adapter for its hook's context (`bpf_sock_addr`, LSM
//!    arguments, a resolved path) in front of the shared decision core, which walks the
//!    partition's arrays and writes records (`palisade_contract::record`).
//! 3. [`bpf`] — the instruction layer, with no policy knowledge: instructions and helper ids,
//!    the assembler, the ELF writer, the disassembler and an interpreter for what we emit.
//! 4. [`bundle`] — the programs, map definitions, map contents and attribution tables
//!    encoded as `palisade.v1.BundleContent` and addressed by SHA-256 ([`compile`]);
//!    [`limits`] checks a bundle against a node's capacity; [`simulate`] runs a bundle's real
//!    programs in the interpreter with the contexts the kernel would give them.
//!
//! New program families (sock_ops, capture filters) are a row in the hook table and a module
//! in [`program`] beside the sock_addr, LSM and path adapters.

#[cfg(any(test, feature = "arbitrary"))]
pub mod arbitrary;
pub mod bpf;
pub mod bundle;
pub mod capture;
pub mod limits;
pub mod policy;
pub mod program;
pub mod simulate;
pub mod validate;

pub use bundle::{CompileError, Compiled, compile};
