//! The compiler's view of a policy set: validated protobuf policies turned into typed,
//! parsed values (networks, port ranges, protocol sets), in the order the semantics need.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use palisade_proto::v1;

/// Why a policy cannot enter the model (it was not validated by the server).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("policy {policy:?}: {field}: {reason}")]
pub struct ModelError {
    /// Policy name.
    pub policy: String,
    /// Field path.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// Policy mode (disabled policies never enter a set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// Decides.
    Enforce,
    /// Only reports.
    Audit,
}

/// Rule action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Allow.
    Allow,
    /// Deny.
    Deny,
    /// Report.
    Audit,
}

/// Transport protocol of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// Both protocols, in a fixed order.
    pub const ALL: [Self; 2] = [Self::Tcp, Self::Udp];
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ports {
    /// First port.
    pub first: u16,
    /// Last port.
    pub last: u16,
}

impl Ports {
    /// Whether `port` is in the range.
    pub fn contains(self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

/// One network rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Stable id.
    pub id: String,
    /// Action.
    pub action: Action,
    /// Destination networks; empty matches every address.
    pub nets: Vec<IpNet>,
    /// Destination ports; empty matches every port (including 0).
    pub ports: Vec<Ports>,
    /// Protocols; empty matches both.
    pub protocols: Vec<Protocol>,
}

impl Rule {
    /// Whether the rule matches the protocol (§3.6).
    pub fn matches_protocol(&self, protocol: Protocol) -> bool {
        self.protocols.is_empty() || self.protocols.contains(&protocol)
    }

    /// Whether the rule matches the port (§3.5).
    pub fn matches_port(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.iter().any(|p| p.contains(port))
    }

    /// Whether the rule matches the destination address (§3.3, §3.4).
    pub fn matches_address(&self, addr: IpAddr) -> bool {
        if self.nets.is_empty() {
            return true;
        }
        let mapped = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.nets.iter().any(|net| net.contains(&addr) || mapped.is_some_and(|m| net.contains(&m)))
    }
}

/// Section default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Default {
    /// Allow unmatched operations.
    Allow,
    /// Deny unmatched operations.
    Deny,
    /// Allow them and report.
    Audit,
}

/// A rule section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Default for operations no allow or deny rule matches.
    pub default: Default,
    /// Rules in order.
    pub rules: Vec<Rule>,
}

/// Longest path the kernel programs resolve (the lookup key holds
/// [`palisade_contract::record::PATH_BYTES`] with the NUL).
pub const MAX_PATH: usize = palisade_contract::record::PATH_BYTES - 1;

/// Access bits: opened for reading, for writing (the same bits records carry).
pub use palisade_contract::record::{ACCESS_READ, ACCESS_WRITE};

/// A path pattern (§12.3).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathPattern {
    /// `/usr/bin/curl`: exactly this path.
    Exact(String),
    /// `/etc/ssh/`: the directory (stored without the trailing '/', "/" for the root) and
    /// everything below it.
    Subtree(String),
    /// `/usr/bin/python*`: every path starting with the text before the '*'.
    Prefix(String),
}

impl PathPattern {
    /// Parses a validated pattern.
    pub fn parse(text: &str) -> Self {
        if let Some(prefix) = text.strip_suffix('*') {
            Self::Prefix(prefix.to_owned())
        } else if text == "/" {
            Self::Subtree("/".to_owned())
        } else if let Some(dir) = text.strip_suffix('/') {
            Self::Subtree(dir.to_owned())
        } else {
            Self::Exact(text.to_owned())
        }
    }

    /// Whether the pattern matches a resolved path.
    pub fn matches(&self, path: &[u8]) -> bool {
        match self {
            Self::Exact(p) => path == p.as_bytes(),
            Self::Subtree(d) if d == "/" => path.starts_with(b"/"),
            Self::Subtree(d) => path.starts_with(d.as_bytes()) && matches!(path.get(d.len()), None | Some(b'/')),
            Self::Prefix(p) => path.starts_with(p.as_bytes()),
        }
    }

    /// The byte prefixes whose paths the pattern matches, as the programs' lookup keys see
    /// them: a path is its bytes followed by a NUL.
    pub fn key_prefixes(&self) -> Vec<Vec<u8>> {
        let with = |s: &str, tail: &[u8]| [s.as_bytes(), tail].concat();
        match self {
            Self::Exact(p) => vec![with(p, b"\0")],
            Self::Subtree(d) if d == "/" => vec![b"/".to_vec()],
            Self::Subtree(d) => vec![with(d, b"\0"), with(d, b"/")],
            Self::Prefix(p) => vec![p.as_bytes().to_vec()],
        }
    }
}

/// One `exec` or `files` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRule {
    /// Stable id.
    pub id: String,
    /// Action.
    pub action: Action,
    /// Patterns; empty matches every path, including one that could not be resolved.
    pub paths: Vec<PathPattern>,
    /// `ACCESS_*` bits the rule matches (both for `exec` rules and empty lists).
    pub access: u8,
}

impl PathRule {
    /// Whether the rule matches a path (`None`: not resolved, §12.2) for one access bit.
    pub fn matches(&self, path: Option<&[u8]>, access: u8) -> bool {
        self.access & access != 0
            && (self.paths.is_empty() || path.is_some_and(|p| self.paths.iter().any(|pat| pat.matches(p))))
    }
}

/// An `exec` or `files` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathSection {
    /// Default for operations no allow or deny rule matches.
    pub default: Default,
    /// Rules in order.
    pub rules: Vec<PathRule>,
}

/// One policy of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Name.
    pub name: String,
    /// Stored revision.
    pub revision: u64,
    /// Mode.
    pub mode: Mode,
    /// Workload cgroup path components (empty: every process).
    pub cgroup: Vec<String>,
    /// Required uid.
    pub uid: Option<u32>,
    /// `network.connect`.
    pub connect: Option<Section>,
    /// `network.bind`.
    pub bind: Option<Section>,
    /// `exec`.
    pub exec: Option<PathSection>,
    /// `files`.
    pub files: Option<PathSection>,
    /// `connections.observe`: rules are peer filters (action audit); the default is audit
    /// (record every connection) when the section has no rules, allow otherwise.
    pub observe: Option<Section>,
    /// `connections.tune`: rules are peer filters (action audit), default allow.
    pub tune: Option<Section>,
    /// The settings of each `tune` rule, by rule index.
    pub tune_settings: Vec<TuneSettings>,
}

/// What a `connections.tune` rule sets on a matching connection (§13.4).
#[derive(Debug, Clone, PartialEq, Eq, Hash, std::default::Default)]
pub struct TuneSettings {
    /// Congestion control algorithm (empty: unchanged).
    pub congestion: String,
    /// Initial congestion window in segments (0: unchanged).
    pub initial_cwnd: u32,
    /// `TCP_NODELAY`.
    pub no_delay: bool,
}

pub use palisade_contract::Operation;

impl Policy {
    /// The network section governing `op`, if the policy has it (`None` for path operations).
    pub fn section(&self, op: Operation) -> Option<&Section> {
        match op {
            Operation::Connect => self.connect.as_ref(),
            Operation::Bind => self.bind.as_ref(),
            Operation::Observe => self.observe.as_ref(),
            Operation::Tune => self.tune.as_ref(),
            Operation::Exec | Operation::Files => None,
        }
    }

    /// The path section governing `op`, if the policy has it (`None` for network operations).
    pub fn path_section(&self, op: Operation) -> Option<&PathSection> {
        match op {
            Operation::Exec => self.exec.as_ref(),
            Operation::Files => self.files.as_ref(),
            Operation::Connect | Operation::Bind | Operation::Observe | Operation::Tune => None,
        }
    }

    /// The default of the section governing `op`, if the policy has that section.
    pub fn default_of(&self, op: Operation) -> Option<Default> {
        self.section(op).map(|s| s.default).or_else(|| self.path_section(op).map(|s| s.default))
    }

    /// The id of rule `index` of the section governing `op`.
    pub fn rule_id(&self, op: Operation, index: usize) -> Option<&str> {
        match self.section(op) {
            Some(s) => s.rules.get(index).map(|r| r.id.as_str()),
            None => self.path_section(op).and_then(|s| s.rules.get(index)).map(|r| r.id.as_str()),
        }
    }

    /// Whether the workload selector covers a process in `cgroup` (components) with `uid`
    /// (§2.1 items 3–4).
    pub fn selects(&self, cgroup: &[String], uid: u32) -> bool {
        cgroup.starts_with(&self.cgroup) && self.uid.is_none_or(|u| u == uid)
    }
}

/// An operation that is never denied (§8): destination network and/or port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Failsafe {
    /// Destination network; `None` matches every address.
    pub net: Option<IpNet>,
    /// Destination port; `None` matches every port.
    pub port: Option<u16>,
}

impl Failsafe {
    /// Whether the failsafe covers the destination.
    pub fn covers(&self, addr: IpAddr, port: u16) -> bool {
        let mapped = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.port.is_none_or(|p| p == port)
            && self.net.is_none_or(|n| n.contains(&addr) || mapped.is_some_and(|m| n.contains(&m)))
    }
}

/// The policies one node holds, sorted by name (§1.3), plus the failsafe list.
#[derive(Debug, Clone, PartialEq, Eq, std::default::Default)]
pub struct PolicySet {
    /// Policies sorted by name; disabled ones are not included.
    pub policies: Vec<Policy>,
    /// Failsafe destinations.
    pub failsafe: Vec<Failsafe>,
}

/// Splits a validated cgroup path into components ("" and "/" → none).
pub fn cgroup_components(path: &str) -> Vec<String> {
    path.split('/').filter(|c| !c.is_empty()).map(str::to_owned).collect()
}

/// Whether a node selector matches node labels (§2.1 item 2).
pub fn node_selected(policy: &v1::Policy, node_labels: &BTreeMap<String, String>) -> bool {
    policy.node_selector.as_ref().is_none_or(|s| s.match_labels.iter().all(|(k, v)| node_labels.get(k) == Some(v)))
}

fn err(policy: &str, field: impl Into<String>, reason: impl Into<String>) -> ModelError {
    ModelError { policy: policy.to_owned(), field: field.into(), reason: reason.into() }
}

fn action(policy: &str, path: &str, value: i32) -> Result<Action, ModelError> {
    match v1::Action::try_from(value) {
        Ok(v1::Action::Allow) => Ok(Action::Allow),
        Ok(v1::Action::Deny) => Ok(Action::Deny),
        Ok(v1::Action::Audit) => Ok(Action::Audit),
        _ => Err(err(policy, format!("{path}.action"), "not allow, deny or audit")),
    }
}

fn path_rule(policy: &str, path: &str, r: &v1::PathRule, files: bool) -> Result<PathRule, ModelError> {
    let mut access = 0;
    for (i, a) in r.access.iter().enumerate() {
        access |= match v1::FileAccess::try_from(*a) {
            Ok(v1::FileAccess::Read) if files => ACCESS_READ,
            Ok(v1::FileAccess::Write) if files => ACCESS_WRITE,
            _ => return Err(err(policy, format!("{path}.access[{i}]"), "not read or write in a files rule")),
        };
    }
    Ok(PathRule {
        id: r.id.clone(),
        action: action(policy, path, r.action)?,
        paths: r.paths.iter().map(|p| PathPattern::parse(p)).collect(),
        access: if access == 0 { ACCESS_READ | ACCESS_WRITE } else { access },
    })
}

fn rule(policy: &str, path: &str, r: &v1::NetworkRule) -> Result<Rule, ModelError> {
    let action = action(policy, path, r.action)?;
    let nets = r
        .cidrs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            c.parse::<IpNet>()
                .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| err(policy, format!("{path}.cidrs[{i}]"), "not a CIDR"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ports = r
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let last = if p.last == 0 { p.first } else { p.last };
            match (u16::try_from(p.first), u16::try_from(last)) {
                (Ok(first @ 1..), Ok(last)) if first <= last => Ok(Ports { first, last }),
                _ => Err(err(policy, format!("{path}.ports[{i}]"), "not a port range within 1–65535")),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let protocols = r
        .protocols
        .iter()
        .enumerate()
        .map(|(i, p)| match v1::Protocol::try_from(*p) {
            Ok(v1::Protocol::Tcp) => Ok(Protocol::Tcp),
            Ok(v1::Protocol::Udp) => Ok(Protocol::Udp),
            _ => Err(err(policy, format!("{path}.protocols[{i}]"), "not tcp or udp")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Rule { id: r.id.clone(), action, nets, ports, protocols })
}

/// Builds the model of one validated policy at a revision; `None` if it is disabled.
pub fn policy(p: &v1::Policy, revision: u64) -> Result<Option<Policy>, ModelError> {
    let mode = match v1::Mode::try_from(p.mode) {
        Ok(v1::Mode::Enforce | v1::Mode::Unspecified) => Mode::Enforce,
        Ok(v1::Mode::Audit) => Mode::Audit,
        Ok(v1::Mode::Disabled) => return Ok(None),
        Err(_) => return Err(err(&p.name, "mode", "unknown mode")),
    };
    let default = |value: i32, path: &str| match v1::Action::try_from(value) {
        Ok(v1::Action::Allow | v1::Action::Unspecified) => Ok(Default::Allow),
        Ok(v1::Action::Deny) => Ok(Default::Deny),
        Ok(v1::Action::Audit) => Ok(Default::Audit),
        Err(_) => Err(err(&p.name, format!("{path}.default"), "unknown action")),
    };
    let section = |s: Option<&v1::RuleSection>, path: &str| -> Result<Option<Section>, ModelError> {
        let Some(s) = s else { return Ok(None) };
        Ok(Some(Section {
            default: default(s.default, path)?,
            rules: s
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| rule(&p.name, &format!("{path}.rules[{i}]"), r))
                .collect::<Result<_, _>>()?,
        }))
    };
    let network = p.network.as_ref();
    let connect = section(network.and_then(|n| n.connect.as_ref()), "network.connect")?;
    let bind = section(network.and_then(|n| n.bind.as_ref()), "network.bind")?;
    let path_section = |s: Option<&v1::PathSection>, path: &str| -> Result<Option<PathSection>, ModelError> {
        let Some(s) = s else { return Ok(None) };
        Ok(Some(PathSection {
            default: default(s.default, path)?,
            rules: s
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| path_rule(&p.name, &format!("{path}.rules[{i}]"), r, path == "files"))
                .collect::<Result<_, _>>()?,
        }))
    };
    let exec = path_section(p.exec.as_ref(), "exec")?;
    let files = path_section(p.files.as_ref(), "files")?;
    let connections = p.connections.as_ref();
    let peer = |path: String, id: &str, cidrs: &[String], ports: &[v1::PortRange]| {
        let r = v1::NetworkRule {
            id: id.to_owned(),
            action: v1::Action::Audit as i32,
            cidrs: cidrs.to_vec(),
            ports: ports.to_vec(),
            protocols: vec![v1::Protocol::Tcp as i32],
            description: String::new(),
        };
        rule(&p.name, &path, &r)
    };
    let observe = connections
        .and_then(|c| c.observe.as_ref())
        .map(|o| -> Result<Section, ModelError> {
            let rules = o
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| peer(format!("connections.observe.rules[{i}]"), &r.id, &r.cidrs, &r.ports))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Section { default: if rules.is_empty() { Default::Audit } else { Default::Allow }, rules })
        })
        .transpose()?;
    let tune_rules = connections.and_then(|c| c.tune.as_ref()).map(|t| t.rules.as_slice());
    let tune = tune_rules
        .map(|rules| -> Result<Section, ModelError> {
            let rules = rules
                .iter()
                .enumerate()
                .map(|(i, r)| peer(format!("connections.tune.rules[{i}]"), &r.id, &r.cidrs, &r.ports))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Section { default: Default::Allow, rules })
        })
        .transpose()?;
    let tune_settings = tune_rules
        .unwrap_or_default()
        .iter()
        .map(|r| TuneSettings { congestion: r.congestion.clone(), initial_cwnd: r.initial_cwnd, no_delay: r.no_delay })
        .collect();
    let workload = p.workload.as_ref();
    Ok(Some(Policy {
        name: p.name.clone(),
        revision,
        mode,
        cgroup: workload.map(|w| cgroup_components(&w.cgroup)).unwrap_or_default(),
        uid: workload.and_then(|w| w.uid),
        connect,
        bind,
        exec,
        files,
        observe,
        tune,
        tune_settings,
    }))
}

impl PolicySet {
    /// Builds a set from (policy, revision) pairs, dropping disabled policies and sorting by
    /// name.
    pub fn new<'a>(
        policies: impl IntoIterator<Item = (&'a v1::Policy, u64)>,
        failsafe: Vec<Failsafe>,
    ) -> Result<Self, ModelError> {
        let mut out = Vec::new();
        for (p, revision) in policies {
            if let Some(p) = policy(p, revision)? {
                out.push(p);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self { policies: out, failsafe })
    }
}
