//! Records the programs write to the events ring buffer, and the decision flag bits.
//!
//! A decision record is a 72-byte header (little endian unless noted):
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | `bpf_ktime_get_ns()` (`CLOCK_MONOTONIC`) |
//! | 8 | 8 | cgroup id of the task |
//! | 16 | 4 | tgid |
//! | 20 | 4 | uid |
//! | 24 | 4 | rule index into `BundleContent.rules` (never 0) |
//! | 28 | 4 | [`flags`] |
//! | 32 | 16 | address (IPv4 in the first 4 bytes, network order) |
//! | 48 | 2 | port, **network order** |
//! | 50 | 1 | address family: [`FAMILY_V4`], [`FAMILY_V6`]; 0 in path records |
//! | 51 | 1 | detail: [`PROTO_TCP`]/[`PROTO_UDP`], or [`ACCESS_READ`]/[`ACCESS_WRITE`] bits of an open |
//! | 52 | 4 | hook id (`palisade.v1.Hook`) |
//! | 56 | 16 | `comm` of the task, NUL-padded |
//!
//! A path record (`exec`, `files`) is the header with address, port and family zero, then the
//! 8-byte lookup-key header (prefix length, workload) and [`PATH_BYTES`] of the resolved path,
//! NUL-terminated (bytes after the NUL are not ours).

use crate::hook::Hook;

/// Decision flag bits: the second word of every decision value, copied into records.
pub mod flags {
    /// Deny.
    pub const DENY: u32 = 1;
    /// Emit a record.
    pub const EVENT: u32 = 2;
    /// The record is an audit report.
    pub const AUDIT: u32 = 4;
    /// The audit report is a would-deny of an audit-mode policy.
    pub const WOULD_DENY: u32 = 8;
}

/// Header size, and the size of a network decision record.
pub const HEADER_SIZE: usize = 72;
/// Path bytes a path record (and the path lookup key) holds, NUL included.
pub const PATH_BYTES: usize = 252;
/// Where the path starts in a path record: after the header and the key header.
pub const PATH_OFFSET: usize = HEADER_SIZE + 8;
/// Size of a path record.
pub const PATH_RECORD_SIZE: usize = PATH_OFFSET + PATH_BYTES;

/// Field offsets in the header.
pub mod offset {
    /// Monotonic time, u64.
    pub const TIME: usize = 0;
    /// cgroup id, u64.
    pub const CGROUP: usize = 8;
    /// tgid, u32.
    pub const TGID: usize = 16;
    /// uid, u32.
    pub const UID: usize = 20;
    /// Rule index, u32.
    pub const RULE: usize = 24;
    /// Flags, u32.
    pub const FLAGS: usize = 28;
    /// Address, 16 bytes.
    pub const ADDR: usize = 32;
    /// Port, u16 in network order.
    pub const PORT: usize = 48;
    /// Address family, u8.
    pub const FAMILY: usize = 50;
    /// Protocol or access bits, u8.
    pub const DETAIL: usize = 51;
    /// Hook id, u32.
    pub const HOOK: usize = 52;
    /// `comm`, 16 bytes.
    pub const COMM: usize = 56;
}

/// `comm` bytes (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;
/// Family byte of an IPv4 address.
pub const FAMILY_V4: u8 = 4;
/// Family byte of an IPv6 address.
pub const FAMILY_V6: u8 = 6;
/// Detail byte of a TCP operation.
pub const PROTO_TCP: u8 = 1;
/// Detail byte of a UDP operation.
pub const PROTO_UDP: u8 = 2;
/// Access bit of an open for reading (also the policy model's bit).
pub const ACCESS_READ: u8 = 1;
/// Access bit of an open for writing.
pub const ACCESS_WRITE: u8 = 2;

/// The kinds of record a program writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A network decision: the header alone.
    Decision,
    /// A path decision: the header, the key header and the path.
    PathDecision,
    /// A closed TCP connection ([`flow`]).
    Flow,
}

impl RecordKind {
    /// Bytes the program outputs for one record.
    pub const fn size(self) -> usize {
        match self {
            Self::Decision => HEADER_SIZE,
            Self::PathDecision => PATH_RECORD_SIZE,
            Self::Flow => flow::SIZE,
        }
    }
}

/// The flow record the sockops program writes when an observed connection closes. It shares
/// the header's first 56 bytes (the hook id stays at 52, so readers tell records apart):
///
/// | offset | size | field |
/// |---:|---:|---|
/// | 0 | 8 | close time, `bpf_ktime_get_ns()` |
/// | 8 | 8 | cgroup id of the socket |
/// | 16 | 4 | 0 (no task runs a close in softirq; see semantics §13.8) |
/// | 20 | 4 | uid of the socket (`sk_uid`) |
/// | 24 | 4 | observe rule index into the establishing generation's rule table |
/// | 28 | 4 | [`flow::flags`] |
/// | 32 | 16 | peer address (IPv4 in the first 4 bytes) |
/// | 48 | 2 | peer port, **network order** |
/// | 50 | 1 | family ([`FAMILY_V4`]/[`FAMILY_V6`]) |
/// | 51 | 1 | [`PROTO_TCP`] |
/// | 52 | 4 | hook id |
/// | 56 | 16 | local address |
/// | 72 | 2 | local port, host order |
/// | 76 | 4 | tune rule index (0: none) |
/// | 80 | 8 | establishment time, `bpf_ktime_get_ns()` |
/// | 88 | 8 | bytes sent and acknowledged (`bytes_acked`) |
/// | 96 | 8 | bytes received (`bytes_received`) |
/// | 104 | 4 | data segments out |
/// | 108 | 4 | data segments in |
/// | 112 | 4 | retransmitted segments (`total_retrans`) |
/// | 116 | 4 | smoothed RTT, µs × 8 (`srtt_us` as the kernel keeps it) |
/// | 120 | 4 | rule-table tag of the establishing generation |
/// | 124 | 4 | minimum RTT, µs (`rtt_min`) |
pub mod flow {
    /// Record size.
    pub const SIZE: usize = 128;
    /// Local address.
    pub const LOCAL_ADDR: usize = 56;
    /// Local port (host order).
    pub const LOCAL_PORT: usize = 72;
    /// Tune rule.
    pub const TUNE_RULE: usize = 76;
    /// Establishment time.
    pub const START: usize = 80;
    /// Bytes acknowledged.
    pub const BYTES_ACKED: usize = 88;
    /// Bytes received.
    pub const BYTES_RECEIVED: usize = 96;
    /// Data segments out.
    pub const SEGS_OUT: usize = 104;
    /// Data segments in.
    pub const SEGS_IN: usize = 108;
    /// Retransmits.
    pub const RETRANS: usize = 112;
    /// srtt × 8.
    pub const SRTT: usize = 116;
    /// Rule-table tag.
    pub const TAG: usize = 120;
    /// Minimum RTT.
    pub const RTT_MIN: usize = 124;

    /// Flag bits of a flow record (and of the per-connection state).
    pub mod flags {
        /// The connection was accepted (passive open); else the node connected.
        pub const INBOUND: u32 = 1;
        /// A tuning profile was applied.
        pub const TUNED: u32 = 2;
        /// The deciding tune rule belongs to an audit-mode policy: nothing was set.
        pub const WOULD_TUNE: u32 = 4;
        /// The kernel refused at least one setting of the profile.
        pub const TUNE_REFUSED: u32 = 8;
    }
}

/// The per-connection state in `pal_flows`, written at establishment.
pub mod flow_state {
    /// Establishment time, u64.
    pub const START: usize = 0;
    /// Observe rule, u32.
    pub const OBSERVE_RULE: usize = 8;
    /// Tune rule, u32.
    pub const TUNE_RULE: usize = 12;
    /// [`super::flow::flags`], u32.
    pub const FLAGS: usize = 16;
    /// Rule-table tag, u32.
    pub const TAG: usize = 20;
    /// cgroup id of the socket, u64.
    pub const CGROUP: usize = 24;
    /// uid of the socket, u32.
    pub const UID: usize = 32;
}

/// Flag bits of a tuning profile (`palt_profiles`).
pub mod profile {
    /// The rule's policy is in audit mode: choose the profile, set nothing.
    pub const AUDIT: u32 = 1;
}

/// The 32-bit tag of a bundle's rule table (FNV-1a over the policies' names and revisions
/// and the rules' policy indices and ids), which the sockops program writes into every
/// connection's state: a flow record written after a swap is attributed with the table of
/// the generation that decided it, found by this tag.
pub fn rules_tag(policies: &[palisade_proto::v1::BundlePolicy], rules: &[palisade_proto::v1::BundleRule]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
        }
    };
    for p in policies {
        eat(p.name.as_bytes());
        eat(&[0]);
        eat(&p.revision.to_le_bytes());
    }
    for r in rules {
        eat(&r.policy.to_le_bytes());
        eat(r.rule_id.as_bytes());
        eat(&[0]);
    }
    h
}

/// One decoded flow record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlowRecord {
    /// Close time, `CLOCK_MONOTONIC` ns.
    pub end_ns: u64,
    /// Establishment time.
    pub start_ns: u64,
    /// cgroup id of the socket.
    pub cgroup_id: u64,
    /// uid of the socket.
    pub uid: u32,
    /// Observe rule index (establishing generation).
    pub rule: u32,
    /// Tune rule index (0: none).
    pub tune_rule: u32,
    /// [`flow::flags`].
    pub flags: u32,
    /// Peer address bytes.
    pub peer: [u8; 16],
    /// Peer port, host order.
    pub peer_port: u16,
    /// Local address bytes.
    pub local: [u8; 16],
    /// Local port.
    pub local_port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Bytes sent (acknowledged by the peer).
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Data segments out.
    pub segs_out: u32,
    /// Data segments in.
    pub segs_in: u32,
    /// Retransmitted segments.
    pub retransmits: u32,
    /// Smoothed RTT in µs.
    pub srtt_us: u32,
    /// Minimum RTT in µs.
    pub rtt_min_us: u32,
    /// Rule-table tag of the establishing generation.
    pub tag: u32,
}

impl FlowRecord {
    /// Decodes a flow record.
    pub fn decode(b: &[u8]) -> Result<Self, RecordError> {
        if b.len() < flow::SIZE {
            return Err(RecordError::Size { len: b.len(), expected: flow::SIZE });
        }
        let mut r = Self {
            end_ns: u64_at(b, offset::TIME),
            start_ns: u64_at(b, flow::START),
            cgroup_id: u64_at(b, offset::CGROUP),
            uid: u32_at(b, offset::UID),
            rule: u32_at(b, offset::RULE),
            tune_rule: u32_at(b, flow::TUNE_RULE),
            flags: u32_at(b, offset::FLAGS),
            peer_port: u16::from_be_bytes([b[offset::PORT], b[offset::PORT + 1]]),
            local_port: u16::from_le_bytes([b[flow::LOCAL_PORT], b[flow::LOCAL_PORT + 1]]),
            family: b[offset::FAMILY],
            bytes_sent: u64_at(b, flow::BYTES_ACKED),
            bytes_received: u64_at(b, flow::BYTES_RECEIVED),
            segs_out: u32_at(b, flow::SEGS_OUT),
            segs_in: u32_at(b, flow::SEGS_IN),
            retransmits: u32_at(b, flow::RETRANS),
            srtt_us: u32_at(b, flow::SRTT) >> 3,
            rtt_min_us: u32_at(b, flow::RTT_MIN),
            tag: u32_at(b, flow::TAG),
            ..Self::default()
        };
        r.peer.copy_from_slice(&b[offset::ADDR..offset::ADDR + 16]);
        r.local.copy_from_slice(&b[flow::LOCAL_ADDR..flow::LOCAL_ADDR + 16]);
        Ok(r)
    }

    /// The hook id a record carries at offset 52, if it is long enough to have one.
    pub fn hook_of(b: &[u8]) -> Option<u32> {
        (b.len() >= HEADER_SIZE).then(|| u32_at(b, offset::HOOK))
    }
}

/// A record that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Shorter than its kind.
    #[error("event record is {len} bytes, expected {expected}")]
    Size {
        /// Bytes received.
        len: usize,
        /// Bytes the record's kind has.
        expected: usize,
    },
}

/// One decoded decision record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DecisionRecord {
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub time_ns: u64,
    /// cgroup id of the task.
    pub cgroup_id: u64,
    /// tgid of the task.
    pub tgid: u32,
    /// uid of the task.
    pub uid: u32,
    /// Index into the bundle's rule table.
    pub rule: u32,
    /// [`flags`] bits.
    pub flags: u32,
    /// Address bytes (IPv4 in the first four).
    pub addr: [u8; 16],
    /// Port, host order.
    pub port: u16,
    /// [`FAMILY_V4`], [`FAMILY_V6`] or 0.
    pub family: u8,
    /// Protocol or access bits.
    pub detail: u8,
    /// Hook id (`palisade.v1.Hook`).
    pub hook: u32,
    /// `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// The resolved path up to its NUL, in path records.
    pub path: Option<Vec<u8>>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl DecisionRecord {
    /// The record's kind, from its hook (a hook this contract does not know writes the
    /// plain header).
    pub fn kind(&self) -> RecordKind {
        i32::try_from(self.hook).ok().and_then(Hook::from_id).map_or(RecordKind::Decision, |h| h.spec().record)
    }

    /// Decodes one record as the programs write it.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() < HEADER_SIZE {
            return Err(RecordError::Size { len: bytes.len(), expected: HEADER_SIZE });
        }
        let mut record = Self {
            time_ns: u64_at(bytes, offset::TIME),
            cgroup_id: u64_at(bytes, offset::CGROUP),
            tgid: u32_at(bytes, offset::TGID),
            uid: u32_at(bytes, offset::UID),
            rule: u32_at(bytes, offset::RULE),
            flags: u32_at(bytes, offset::FLAGS),
            addr: [0; 16],
            port: u16::from_be_bytes([bytes[offset::PORT], bytes[offset::PORT + 1]]),
            family: bytes[offset::FAMILY],
            detail: bytes[offset::DETAIL],
            hook: u32_at(bytes, offset::HOOK),
            comm: [0; COMM_LEN],
            path: None,
        };
        record.addr.copy_from_slice(&bytes[offset::ADDR..offset::ADDR + 16]);
        record.comm.copy_from_slice(&bytes[offset::COMM..offset::COMM + COMM_LEN]);
        if record.kind() == RecordKind::PathDecision {
            let path = bytes
                .get(PATH_OFFSET..PATH_RECORD_SIZE)
                .ok_or(RecordError::Size { len: bytes.len(), expected: PATH_RECORD_SIZE })?;
            let end = path.iter().position(|&c| c == 0).unwrap_or(path.len());
            record.path = Some(path[..end].to_vec());
        }
        Ok(record)
    }

    /// Encodes the record as a program would (for tests and tools; the key header of a path
    /// record is zero).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0_u8; self.kind().size()];
        b[offset::TIME..offset::TIME + 8].copy_from_slice(&self.time_ns.to_le_bytes());
        b[offset::CGROUP..offset::CGROUP + 8].copy_from_slice(&self.cgroup_id.to_le_bytes());
        for (at, word) in [
            (offset::TGID, self.tgid),
            (offset::UID, self.uid),
            (offset::RULE, self.rule),
            (offset::FLAGS, self.flags),
            (offset::HOOK, self.hook),
        ] {
            b[at..at + 4].copy_from_slice(&word.to_le_bytes());
        }
        b[offset::ADDR..offset::ADDR + 16].copy_from_slice(&self.addr);
        b[offset::PORT..offset::PORT + 2].copy_from_slice(&self.port.to_be_bytes());
        b[offset::FAMILY] = self.family;
        b[offset::DETAIL] = self.detail;
        b[offset::COMM..offset::COMM + COMM_LEN].copy_from_slice(&self.comm);
        if let Some(path) = self.path.as_ref().filter(|_| self.kind() == RecordKind::PathDecision) {
            let n = path.len().min(PATH_BYTES - 1);
            b[PATH_OFFSET..PATH_OFFSET + n].copy_from_slice(&path[..n]);
        }
        b
    }

    /// `comm` up to its NUL.
    pub fn comm(&self) -> &[u8] {
        let end = self.comm.iter().position(|&c| c == 0).unwrap_or(COMM_LEN);
        &self.comm[..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network() -> DecisionRecord {
        let mut comm = [0; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        DecisionRecord {
            time_ns: 5,
            cgroup_id: 77,
            tgid: 1234,
            uid: 1000,
            rule: 1,
            flags: flags::DENY | flags::EVENT,
            addr,
            port: 9999,
            family: FAMILY_V4,
            detail: PROTO_TCP,
            hook: Hook::Connect4.id() as u32,
            comm,
            path: None,
        }
    }

    #[test]
    fn decode_inverts_encode_for_both_kinds() {
        let r = network();
        let bytes = r.encode();
        assert_eq!(bytes.len(), HEADER_SIZE);
        assert_eq!(&bytes[offset::PORT..offset::PORT + 2], &9999_u16.to_be_bytes(), "port in network order");
        assert_eq!(DecisionRecord::decode(&bytes), Ok(r.clone()));
        assert_eq!(r.comm(), b"curl");
        let p = DecisionRecord {
            hook: Hook::LsmFileOpen.id() as u32,
            family: 0,
            detail: ACCESS_WRITE,
            path: Some(b"/etc/shadow".to_vec()),
            ..r
        };
        let mut bytes = p.encode();
        assert_eq!(bytes.len(), PATH_RECORD_SIZE);
        // bpf_d_path leaves bytes after the NUL that are not ours.
        bytes[PATH_OFFSET + 12..PATH_OFFSET + 15].copy_from_slice(b"xyz");
        assert_eq!(DecisionRecord::decode(&bytes), Ok(p));
    }

    #[test]
    fn decode_rejects_records_shorter_than_their_kind() {
        assert_eq!(DecisionRecord::decode(&[0; 10]), Err(RecordError::Size { len: 10, expected: HEADER_SIZE }));
        let mut bytes = DecisionRecord { hook: Hook::LsmExec.id() as u32, ..network() }.encode();
        bytes.truncate(HEADER_SIZE + 20);
        assert_eq!(
            DecisionRecord::decode(&bytes),
            Err(RecordError::Size { len: HEADER_SIZE + 20, expected: PATH_RECORD_SIZE })
        );
    }
}
