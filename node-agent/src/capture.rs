//! Packet capture on the node (issue 12): [`offline`] runs a compiled capture filter over a
//! capture file — through the kernel (`BPF_PROG_TEST_RUN`) as root, or through the
//! compiler's interpreter without privileges; [`live`] is a filtered `AF_PACKET` socket with a
//! memory-mapped ring on one interface; [`session`] runs the server's capture sessions on
//! those sockets and streams what they keep.

pub mod live;
pub mod offline;
pub mod session;
