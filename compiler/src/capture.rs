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

/// The link-layer framing a filter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Ethernet (`DLT_EN10MB`), with VLAN tags.
    Ethernet,
    /// Linux cooked capture v2 (`DLT_LINUX_SLL2`), what the `any` pseudo-interface records: a
    /// 20-byte header (protocol, interface index, ARPHRD type, packet type, address) before
    /// the network layer, no Ethernet addresses and no VLAN tags.
    LinuxSll2,
}

impl Link {
    /// The pcap link-layer type number.
    pub fn dlt(self) -> u32 {
        match self {
            Link::Ethernet => 1,
            Link::LinuxSll2 => 276,
        }
    }
}

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

/// Compiles `text` into a socket filter for Ethernet frames and `target` that returns
/// `snaplen` for a packet it accepts and 0 for one it does not.
pub fn compile(text: &str, target: Target, snaplen: u32) -> Result<Program, CompileError> {
    compile_for(text, target, Link::Ethernet, snaplen)
}

/// The filter of a capture with no expression: every packet, cut to `snaplen` (libpcap's
/// empty filter).
pub fn accept_all(snaplen: u32) -> Result<Program, CompileError> {
    let mut asm = crate::bpf::asm::Asm::new();
    asm.push(crate::bpf::insn::mov32_imm(0, snaplen as i32));
    asm.push(crate::bpf::insn::exit());
    Ok(asm.finish().map_err(codegen::CodegenError::from)?)
}

/// [`compile`] for frames of `link`.
pub fn compile_for(text: &str, target: Target, link: Link, snaplen: u32) -> Result<Program, CompileError> {
    let expr = parse::parse_for(text, link)?;
    Ok(codegen::generate(&expr, target, link, snaplen)?)
}
