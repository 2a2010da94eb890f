//! The contract between the programs Palisade generates and the agent that loads them.
//!
//! Everything two crates must agree on byte for byte lives here once, and both import it
//! (STYLE.md, "One definition of every contract"): the compiler writes programs, maps and
//! records with these constants, the agent attaches, fills and decodes with them.
//!
//! - [`insn`]: the eBPF instruction encoding (UAPI), used by the compiler's assembler and by
//!   the agent's feature probes.
//! - [`hook`]: the hook table — every program the compiler generates, its id, ELF section,
//!   symbol, how the agent attaches it, which policy section it decides and which record it
//!   writes.
//! - [`record`]: the ring-buffer record layouts and decision flag bits.
//! - [`map`]: map names per policy section and the events map.
//! - [`format`]: bundle format versions.
//! - [`btf`]: the kernel struct fields the programs need and the keys agents report them by.
#![forbid(unsafe_code)]

pub mod btf;
pub mod format;
pub mod hook;
pub mod insn;
pub mod map;
pub mod record;

pub use hook::{Attach, Hook, HookSpec, Operation, SockAddrHook};
