//! Packet capture filters (issue 12): a documented subset of libpcap's filter language,
//! parsed with libpcap's meaning ([`parse`]) and compiled into eBPF socket filters
//! ([`codegen`]) by the same instruction layer as the policy hooks.
//!
//! Both are held to libpcap: the accept/reject decisions of the parser against `tcpdump -d`,
//! and the packets a compiled filter accepts against `tcpdump -r`, in the interpreter and in
//! the kernel (`integration/tests/capture.rs`).

pub mod codegen;
pub mod parse;

pub use codegen::Target;

use crate::bpf::asm::Program;

/// libpcap's default snap length, what a matching packet returns unless told otherwise.
pub const DEFAULT_SNAPLEN: u32 = 262_144;

/// Why an expression did not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// Not in the language.
    #[error(transparent)]
    Parse(#[from] parse::ParseError),
    /// In the language, but no program could be made (too large, too deep).
    #[error(transparent)]
    Codegen(#[from] codegen::CodegenError),
}

impl CompileError {
    /// The 1-based column the error is about (1 for the whole expression).
    pub fn column(&self) -> usize {
        match self {
            CompileError::Parse(e) => e.column,
            CompileError::Codegen(_) => 1,
        }
    }
}

/// Compiles `text` into a socket filter for `target` that returns `snaplen` for a packet it
/// accepts and 0 for one it does not.
pub fn compile(text: &str, target: Target, snaplen: u32) -> Result<Program, CompileError> {
    let expr = parse::parse(text)?;
    Ok(codegen::generate(&expr, target, snaplen)?)
}
