//! Packet capture on the node (issue 12). Built so far: [`offline`], running a compiled
//! capture filter over a capture file — through the kernel (`BPF_PROG_TEST_RUN`) as root, or
//! through the compiler's interpreter without privileges. Not built yet: live capture on
//! `AF_PACKET` rings and capture sessions.

pub mod offline;
