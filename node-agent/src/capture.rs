//! Packet capture on the node (issue 12). Built so far: [`offline`], running a compiled
//! capture filter over a capture file — through the kernel (`BPF_PROG_TEST_RUN`) as root, or
//! through the compiler's interpreter without privileges — and [`live`], a filtered
//! `AF_PACKET` socket with a memory-mapped ring on one interface. Not built yet: capture
//! sessions (the server's `CaptureService`, streaming to it, limits).

pub mod live;
pub mod offline;
