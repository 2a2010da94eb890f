//! Decoding ring-buffer records into `DecisionEvent`s: the layout is
//! [`palisade_contract::record`]; this adds what the bundle's tables say (policy, revision,
//! rule) and the wall-clock time.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use palisade_contract::{
    Hook,
    record::{self, DecisionRecord, RecordError, flags},
};
use palisade_proto::v1;

/// Size of one network record (the header every record starts with).
pub const RECORD_SIZE: usize = record::HEADER_SIZE;
/// Where the path starts in `exec` and `files` records.
pub const PATH_OFFSET: usize = record::PATH_OFFSET;

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

/// Unix nanoseconds as the wire's timestamp.
pub fn unix_timestamp(ns: i128) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(ns.div_euclid(1_000_000_000)).unwrap_or_default(),
        nanos: i32::try_from(ns.rem_euclid(1_000_000_000)).unwrap_or_default(),
    }
}

/// A record that does not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Wrong length.
    #[error("event record of {0} bytes is shorter than its layout")]
    Size(usize),
    /// The rule index is outside the bundle's table.
    #[error("event names rule {0}, which the bundle does not have")]
    Rule(u32),
}

/// Decodes one record using the bundle's attribution tables.
pub fn decode(
    bytes: &[u8],
    content: &v1::BundleContent,
    digest: &str,
    clock_offset: i128,
) -> Result<v1::DecisionEvent, DecodeError> {
    let r = DecisionRecord::decode(bytes).map_err(|RecordError::Size { len, .. }| DecodeError::Size(len))?;
    let rule = content.rules.get(r.rule as usize).filter(|_| r.rule != 0).ok_or(DecodeError::Rule(r.rule))?;
    let policy = content.policies.get(rule.policy as usize).ok_or(DecodeError::Rule(r.rule))?;
    let hook = i32::try_from(r.hook).ok().and_then(Hook::from_id);
    let address: IpAddr = if r.family == record::FAMILY_V6 {
        IpAddr::V6(Ipv6Addr::from(r.addr))
    } else {
        IpAddr::V4(Ipv4Addr::new(r.addr[0], r.addr[1], r.addr[2], r.addr[3]))
    };
    let time = unix_timestamp(i128::from(r.time_ns) + clock_offset);
    let verdict = if r.flags & flags::DENY != 0 {
        v1::Verdict::Deny
    } else if r.flags & flags::AUDIT != 0 {
        v1::Verdict::Audit
    } else {
        v1::Verdict::Allow
    };
    let is_path = r.path.is_some();
    Ok(v1::DecisionEvent {
        policy: policy.name.clone(),
        revision: policy.revision,
        rule_id: rule.rule_id.clone(),
        verdict: verdict as i32,
        hook: hook.map_or("unknown", Hook::section).to_owned(),
        pid: r.tgid,
        comm: String::from_utf8_lossy(r.comm()).into_owned(),
        uid: r.uid,
        cgroup_id: r.cgroup_id,
        address: if is_path { String::new() } else { address.to_string() },
        port: u32::from(r.port),
        protocol: match r.detail {
            record::PROTO_TCP if !is_path => v1::Protocol::Tcp,
            record::PROTO_UDP if !is_path => v1::Protocol::Udp,
            _ => v1::Protocol::Unspecified,
        } as i32,
        path: r.path.as_deref().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default(),
        access: if hook == Some(Hook::LsmFileOpen) {
            [(record::ACCESS_READ, v1::FileAccess::Read), (record::ACCESS_WRITE, v1::FileAccess::Write)]
                .into_iter()
                .filter(|(bit, _)| r.detail & bit != 0)
                .map(|(_, a)| a as i32)
                .collect()
        } else {
            Vec::new()
        },
        bundle_digest: digest.to_owned(),
        time: Some(time),
        would_deny: r.flags & flags::WOULD_DENY != 0,
        ..Default::default()
    })
}

/// One closed TCP connection, attributed (semantics §13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// The observing policy, its revision and the rule that named the record ("default" for
    /// `observe: {}`).
    pub policy: Arc<str>,
    /// Its revision.
    pub revision: u64,
    /// The observe rule id.
    pub rule_id: Arc<str>,
    /// The deciding tune rule as `policy/rule`, if any.
    pub tune: Option<Arc<str>>,
    /// The decoded record.
    pub record: record::FlowRecord,
    /// Peer address.
    pub peer: IpAddr,
    /// Local address.
    pub local: IpAddr,
    /// Close time, Unix ns.
    pub end_unix_ns: i128,
}

impl Flow {
    /// Whether the node accepted the connection (else it connected).
    pub fn inbound(&self) -> bool {
        self.record.flags & record::flow::flags::INBOUND != 0
    }
}

/// The attribution tables of one generation, for flow records: per rule index its names,
/// made once per generation and shared by every record (decoding allocates nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleTable {
    names: Vec<Option<RuleNames>>,
}

/// The names of one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RuleNames {
    policy: Arc<str>,
    revision: u64,
    rule_id: Arc<str>,
    /// `policy/rule`, as a tune rule is named.
    qualified: Arc<str>,
}

impl RuleTable {
    /// The tables of `content` and their tag.
    pub fn of(content: &v1::BundleContent) -> (u32, Self) {
        let policies: Vec<(Arc<str>, u64)> =
            content.policies.iter().map(|p| (Arc::from(p.name.as_str()), p.revision)).collect();
        let names = content
            .rules
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                let (policy, revision) = policies.get(rule.policy as usize).filter(|_| index != 0)?;
                Some(RuleNames {
                    policy: policy.clone(),
                    revision: *revision,
                    rule_id: Arc::from(rule.rule_id.as_str()),
                    qualified: Arc::from(format!("{policy}/{}", rule.rule_id)),
                })
            })
            .collect();
        (record::rules_tag(&content.policies, &content.rules), Self { names })
    }

    /// The names of rule `index` (0: none).
    fn name(&self, index: u32) -> Option<&RuleNames> {
        self.names.get(index as usize)?.as_ref()
    }
}

fn ip(family: u8, bytes: [u8; 16]) -> IpAddr {
    if family == record::FAMILY_V6 {
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

/// Decodes a flow record with the rule table whose tag it carries.
pub fn decode_flow(
    bytes: &[u8],
    table: impl Fn(u32) -> Option<Arc<RuleTable>>,
    clock_offset: i128,
) -> Result<Flow, DecodeError> {
    let r = record::FlowRecord::decode(bytes).map_err(|RecordError::Size { len, .. }| DecodeError::Size(len))?;
    let table = table(r.tag).ok_or(DecodeError::Rule(r.rule))?;
    let names = table.name(r.rule).ok_or(DecodeError::Rule(r.rule))?;
    Ok(Flow {
        policy: names.policy.clone(),
        revision: names.revision,
        rule_id: names.rule_id.clone(),
        tune: table.name(r.tune_rule).map(|t| t.qualified.clone()),
        peer: ip(r.family, r.peer),
        local: ip(r.family, r.local),
        end_unix_ns: i128::from(r.end_ns) + clock_offset,
        record: r,
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
