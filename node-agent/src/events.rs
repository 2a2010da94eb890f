//! Decoding ring-buffer event records into `DecisionEvent`s (record layout: bundle.proto).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use palisade_proto::v1;

/// Size of one record.
pub const RECORD_SIZE: usize = 72;
/// Where the path starts in `exec` and `files` records.
pub const PATH_OFFSET: usize = 80;

const FLAG_DENY: u32 = 1;
const FLAG_AUDIT: u32 = 4;
const FLAG_WOULD_DENY: u32 = 8;

/// Offset to add to `CLOCK_MONOTONIC` nanoseconds (what `bpf_ktime_get_ns` returns) to get
/// Unix time in nanoseconds, measured now.
pub fn monotonic_to_unix_offset() -> i128 {
    let read = |clock| {
        // SAFETY: timespec is plain old data.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: valid clock id and out-pointer.
        unsafe { libc::clock_gettime(clock, &raw mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A record that does not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Wrong length.
    #[error("event record is {0} bytes, expected {RECORD_SIZE}")]
    Size(usize),
    /// The rule index is outside the bundle's table.
    #[error("event names rule {0}, which the bundle does not have")]
    Rule(u32),
}

/// Decodes one record using the bundle's attribution tables.
pub fn decode(
    record: &[u8],
    content: &v1::BundleContent,
    digest: &str,
    clock_offset: i128,
) -> Result<v1::DecisionEvent, DecodeError> {
    if record.len() < RECORD_SIZE {
        return Err(DecodeError::Size(record.len()));
    }
    let rule_index = u32_at(record, 24);
    let rule =
        content.rules.get(rule_index as usize).filter(|_| rule_index != 0).ok_or(DecodeError::Rule(rule_index))?;
    let policy = content.policies.get(rule.policy as usize).ok_or(DecodeError::Rule(rule_index))?;
    let flags = u32_at(record, 28);
    let address: IpAddr = if record[50] == 6 {
        let mut a = [0; 16];
        a.copy_from_slice(&record[32..48]);
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        IpAddr::V4(Ipv4Addr::new(record[32], record[33], record[34], record[35]))
    };
    let hook_id = u32_at(record, 52);
    let hook = match hook_id {
        1 => "cgroup/connect4",
        2 => "cgroup/connect6",
        3 => "lsm/socket_connect",
        4 => "cgroup/bind4",
        5 => "cgroup/bind6",
        6 => "lsm/socket_bind",
        7 => "lsm/bprm_check_security",
        8 => "lsm/file_open",
        _ => "unknown",
    };
    // exec and files records carry the path after the header (bundle.proto).
    let is_path = matches!(hook_id, 7 | 8);
    let path = match record.get(PATH_OFFSET..).filter(|_| is_path) {
        Some(bytes) => {
            let end = bytes.iter().position(|&c| c == 0).unwrap_or(bytes.len());
            String::from_utf8_lossy(&bytes[..end]).into_owned()
        }
        None => String::new(),
    };
    let comm_bytes = &record[56..72];
    let comm_end = comm_bytes.iter().position(|&c| c == 0).unwrap_or(comm_bytes.len());
    let nanos = i128::from(u64_at(record, 0)) + clock_offset;
    let time = prost_types::Timestamp {
        seconds: i64::try_from(nanos.div_euclid(1_000_000_000)).unwrap_or_default(),
        nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or_default(),
    };
    let verdict = if flags & FLAG_DENY != 0 {
        v1::Verdict::Deny
    } else if flags & FLAG_AUDIT != 0 {
        v1::Verdict::Audit
    } else {
        v1::Verdict::Allow
    };
    Ok(v1::DecisionEvent {
        policy: policy.name.clone(),
        revision: policy.revision,
        rule_id: rule.rule_id.clone(),
        verdict: verdict as i32,
        hook: hook.to_owned(),
        pid: u32_at(record, 16),
        comm: String::from_utf8_lossy(&comm_bytes[..comm_end]).into_owned(),
        uid: u32_at(record, 20),
        cgroup_id: u64_at(record, 8),
        address: if is_path { String::new() } else { address.to_string() },
        port: u32::from(u16::from_be_bytes([record[48], record[49]])),
        protocol: match record[51] {
            1 if !is_path => v1::Protocol::Tcp,
            2 if !is_path => v1::Protocol::Udp,
            _ => v1::Protocol::Unspecified,
        } as i32,
        path,
        access: if hook_id == 8 {
            [(1, v1::FileAccess::Read), (2, v1::FileAccess::Write)]
                .into_iter()
                .filter(|(bit, _)| record[51] & bit != 0)
                .map(|(_, a)| a as i32)
                .collect()
        } else {
            Vec::new()
        },
        bundle_digest: digest.to_owned(),
        time: Some(time),
        would_deny: flags & FLAG_WOULD_DENY != 0,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content() -> v1::BundleContent {
        v1::BundleContent {
            policies: vec![v1::BundlePolicy { name: "web".into(), revision: 4 }],
            rules: vec![v1::BundleRule::default(), v1::BundleRule { policy: 0, rule_id: "block".into() }],
            ..Default::default()
        }
    }

    fn record() -> Vec<u8> {
        let mut r = vec![0_u8; RECORD_SIZE];
        r[0..8].copy_from_slice(&5_000_000_000_u64.to_le_bytes());
        r[8..16].copy_from_slice(&77_u64.to_le_bytes());
        r[16..20].copy_from_slice(&1234_u32.to_le_bytes());
        r[20..24].copy_from_slice(&1000_u32.to_le_bytes());
        r[24..28].copy_from_slice(&1_u32.to_le_bytes());
        r[28..32].copy_from_slice(&3_u32.to_le_bytes());
        r[32..36].copy_from_slice(&[127, 0, 0, 1]);
        r[48..50].copy_from_slice(&9999_u16.to_be_bytes());
        r[50] = 4;
        r[51] = 1;
        r[52..56].copy_from_slice(&1_u32.to_le_bytes());
        r[56..60].copy_from_slice(b"curl");
        r
    }

    #[test]
    fn decode_reads_the_path_and_access_of_a_file_record() {
        let mut r = record();
        r[32..52].fill(0);
        r[51] = 2;
        r[52..56].copy_from_slice(&8_u32.to_le_bytes());
        r.resize(332, 0);
        r[PATH_OFFSET..PATH_OFFSET + 11].copy_from_slice(b"/etc/shadow");
        // bpf_d_path leaves bytes after the NUL that are not ours.
        r[PATH_OFFSET + 12..PATH_OFFSET + 15].copy_from_slice(b"xyz");
        let e = decode(&r, &content(), "d1", 0).expect("decodes");
        assert_eq!((e.hook.as_str(), e.path.as_str()), ("lsm/file_open", "/etc/shadow"));
        assert_eq!(e.access, vec![v1::FileAccess::Write as i32]);
        assert_eq!((e.address.as_str(), e.protocol), ("", v1::Protocol::Unspecified as i32));
    }

    #[test]
    fn decode_maps_a_record_to_policy_revision_and_rule() {
        let e = decode(&record(), &content(), "d1", 1_000_000_000).expect("decodes");
        assert_eq!((e.policy.as_str(), e.revision, e.rule_id.as_str()), ("web", 4, "block"));
        assert_eq!(e.verdict, v1::Verdict::Deny as i32);
        assert_eq!((e.address.as_str(), e.port, e.comm.as_str()), ("127.0.0.1", 9999, "curl"));
        assert_eq!((e.pid, e.uid, e.cgroup_id), (1234, 1000, 77));
        assert_eq!(e.time.map(|t| t.seconds), Some(6));
        assert_eq!(e.hook, "cgroup/connect4");
    }

    #[test]
    fn decode_rejects_short_records_and_unknown_rules() {
        assert_eq!(decode(&[0; 10], &content(), "d", 0), Err(DecodeError::Size(10)));
        let mut r = record();
        r[24..28].copy_from_slice(&9_u32.to_le_bytes());
        assert_eq!(decode(&r, &content(), "d", 0), Err(DecodeError::Rule(9)));
    }
}
