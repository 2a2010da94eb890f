//! Packet capture filters (issue 12): a documented subset of libpcap's filter language,
//! parsed here with libpcap's meaning, to be compiled into eBPF socket filters by the same
//! program layer as the policy hooks.
//!
//! Built so far: [`parse`], the language — lexer, parser and the checks libpcap makes at
//! compile time (host bits in a `net`, port and VLAN ranges, accessor sizes), every error
//! naming its column, every unsupported pcap-filter keyword refused by name. Its accept/reject
//! decisions are held to libpcap's (`integration/tests/capture.rs`, against `tcpdump -d`).
//! Not built yet: code generation, the offline runner and capture sessions.

pub mod parse;
