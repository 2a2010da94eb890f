//! The human policy format: strict YAML/JSON documents that convert to and from
//! [`crate::v1::Policy`].
//!
//! Parsing is syntactic and strict — unknown fields, wrong enum names and malformed port
//! specs are errors naming their field path — while semantic validation (CIDR syntax, port
//! bounds, id uniqueness, …) is the server's job, so that documents and protobuf clients get
//! exactly the same checks.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::v1;

/// Largest document the parser accepts, in bytes. The server applies the same limit.
pub const MAX_DOCUMENT_BYTES: usize = 8 * 1024 * 1024;

/// A document that could not be turned into a policy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{path}: {message}")]
pub struct DocumentError {
    /// Field path in the document (`network.connect.rules[0].action`), or `.` for the whole
    /// document.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl DocumentError {
    fn whole(message: impl Into<String>) -> Self {
        Self { path: ".".to_owned(), message: message.into() }
    }
}

/// A policy document (see `docs/policy-reference.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// Policy name.
    pub name: String,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Human description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// enforce | audit | disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Which nodes get the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<NodeSelector>,
    /// Which processes it applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    /// Network sections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Program execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<PathSection>,
    /// File opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<PathSection>,
    /// TCP connections: flow records and tuning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<Connections>,
}

/// Policy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Decisions are enforced.
    Enforce,
    /// Would-deny decisions are reported, nothing is denied.
    Audit,
    /// Stored but not compiled.
    Disabled,
}

/// Rule or default action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Allow.
    Allow,
    /// Deny.
    Deny,
    /// Report, do not decide.
    Audit,
}

/// Transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// Node selector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSelector {
    /// Labels every selected node must carry.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// Workload selector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// cgroup v2 subtree.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cgroup: String,
    /// Effective uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
}

/// Network sections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Outgoing connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<Section>,
    /// Local endpoints (bind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<Section>,
}

/// A rule section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    /// Action for operations no rule decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Action>,
    /// Rules in order.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// A network rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Stable rule id.
    pub id: String,
    /// What a match does.
    pub action: Action,
    /// Destination CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidrs: Vec<String>,
    /// Destination ports and ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Ports>,
    /// Protocols.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocols: Vec<Protocol>,
    /// Human description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// File access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Opened for reading.
    Read,
    /// Opened for writing.
    Write,
}

/// An `exec` or `files` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathSection {
    /// Action for operations no rule decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Action>,
    /// Rules in order.
    #[serde(default)]
    pub rules: Vec<PathRule>,
}

/// A path rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRule {
    /// Stable rule id.
    pub id: String,
    /// What a match does.
    pub action: Action,
    /// Path patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Accesses (`files` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<Access>,
    /// Human description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// The `connections` sections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connections {
    /// Flow records (`observe: {}` records every connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observe: Option<Observe>,
    /// TCP settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tune: Option<Tune>,
}

/// `connections.observe`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observe {
    /// Peer filters; empty records every connection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<PeerRule>,
}

/// A peer filter of `connections.observe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRule {
    /// Stable rule id.
    pub id: String,
    /// Peer CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidrs: Vec<String>,
    /// Peer ports and ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Ports>,
    /// Human description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// `connections.tune`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tune {
    /// Rules in order.
    #[serde(default)]
    pub rules: Vec<TuneRule>,
}

/// A tuning rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuneRule {
    /// Stable rule id.
    pub id: String,
    /// Peer CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidrs: Vec<String>,
    /// Peer ports and ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Ports>,
    /// Congestion control algorithm.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub congestion: String,
    /// Initial congestion window in segments.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub initial_cwnd: u32,
    /// `TCP_NODELAY`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_delay: bool,
    /// Human description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

#[allow(clippy::trivially_copy_pass_by_ref, reason = "serde's skip_serializing_if passes a reference")]
fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn ports_to_proto(ports: &[Ports]) -> Vec<v1::PortRange> {
    ports.iter().map(|p| v1::PortRange { first: p.first, last: if p.last == p.first { 0 } else { p.last } }).collect()
}

fn ports_from_proto(ports: &[v1::PortRange]) -> Vec<Ports> {
    ports.iter().map(|p| Ports { first: p.first, last: if p.last == 0 { p.first } else { p.last } }).collect()
}

impl Connections {
    fn to_proto(&self) -> v1::ConnectionsPolicy {
        v1::ConnectionsPolicy {
            observe: self.observe.as_ref().map(|o| v1::ObserveSection {
                rules: o
                    .rules
                    .iter()
                    .map(|r| v1::PeerRule {
                        id: r.id.clone(),
                        cidrs: r.cidrs.clone(),
                        ports: ports_to_proto(&r.ports),
                        description: r.description.clone(),
                    })
                    .collect(),
            }),
            tune: self.tune.as_ref().map(|t| v1::TuneSection {
                rules: t
                    .rules
                    .iter()
                    .map(|r| v1::TuneRule {
                        id: r.id.clone(),
                        cidrs: r.cidrs.clone(),
                        ports: ports_to_proto(&r.ports),
                        congestion: r.congestion.clone(),
                        initial_cwnd: r.initial_cwnd,
                        no_delay: r.no_delay,
                        description: r.description.clone(),
                    })
                    .collect(),
            }),
        }
    }

    fn from_proto(c: &v1::ConnectionsPolicy) -> Self {
        Self {
            observe: c.observe.as_ref().map(|o| Observe {
                rules: o
                    .rules
                    .iter()
                    .map(|r| PeerRule {
                        id: r.id.clone(),
                        cidrs: r.cidrs.clone(),
                        ports: ports_from_proto(&r.ports),
                        description: r.description.clone(),
                    })
                    .collect(),
            }),
            tune: c.tune.as_ref().map(|t| Tune {
                rules: t
                    .rules
                    .iter()
                    .map(|r| TuneRule {
                        id: r.id.clone(),
                        cidrs: r.cidrs.clone(),
                        ports: ports_from_proto(&r.ports),
                        congestion: r.congestion.clone(),
                        initial_cwnd: r.initial_cwnd,
                        no_delay: r.no_delay,
                        description: r.description.clone(),
                    })
                    .collect(),
            }),
        }
    }
}

/// A port (`443`) or an inclusive range (`"8000-8080"`). Bounds are checked by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// First port.
    pub first: u32,
    /// Last port (equal to `first` for a single port).
    pub last: u32,
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last { write!(f, "{}", self.first) } else { write!(f, "{}-{}", self.first, self.last) }
    }
}

impl Serialize for Ports {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.first == self.last { s.serialize_u32(self.first) } else { s.collect_str(self) }
    }
}

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PortsVisitor;
        impl de::Visitor<'_> for PortsVisitor {
            type Value = Ports;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a range \"FIRST-LAST\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ports, E> {
                let port = u32::try_from(v).map_err(|_| E::custom(format!("port {v} is above 65535")))?;
                Ok(Ports { first: port, last: port })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ports, E> {
                u64::try_from(v).map_err(|_| E::custom(format!("port {v} is negative"))).and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ports, E> {
                let parse = |s: &str| {
                    s.trim().parse::<u32>().map_err(|_| E::custom(format!("{v:?} is not a port or a range FIRST-LAST")))
                };
                match v.split_once('-') {
                    // "N-0" would read back as the single port N: reject it here.
                    Some((_, last)) if last.trim() == "0" => {
                        Err(E::custom(format!("{v:?}: a range cannot end at port 0")))
                    }
                    Some((first, last)) => Ok(Ports { first: parse(first)?, last: parse(last)? }),
                    None => parse(v).map(|p| Ports { first: p, last: p }),
                }
            }
        }
        d.deserialize_any(PortsVisitor)
    }
}

/// Parses one YAML or JSON document (JSON is YAML).
///
/// Anchors and aliases are refused: an alias repeats its anchor's text without a byte budget,
/// which is how a small document becomes gigabytes (a 1.6 MB document of aliases to a 1 MB
/// anchor). Documents larger than [`MAX_DOCUMENT_BYTES`] are refused before parsing.
///
/// ```
/// let doc = palisade_proto::document::parse("name: web\nmode: audit\n")?;
/// assert_eq!(doc.mode, Some(palisade_proto::document::Mode::Audit));
/// let err = palisade_proto::document::parse("name: web\nmode: loud\n").unwrap_err();
/// assert_eq!(err.path, "mode");
/// # Ok::<(), palisade_proto::document::DocumentError>(())
/// ```
pub fn parse(text: &str) -> Result<PolicyDocument, DocumentError> {
    let mut documents = parse_all(text);
    match documents.len() {
        1 => documents.remove(0),
        0 => Err(DocumentError::whole("the document is empty")),
        n => Err(DocumentError::whole(format!("expected one document, found {n}"))),
    }
}

/// Parses a stream of YAML documents separated by `---` (empty documents are skipped). A
/// document with a syntax error ends the stream: what follows it cannot be located.
pub fn parse_all(text: &str) -> Vec<Result<PolicyDocument, DocumentError>> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return vec![Err(DocumentError::whole(format!(
            "document is {} bytes, the limit is {MAX_DOCUMENT_BYTES}",
            text.len()
        )))];
    }
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_aliases: 0,
            max_anchors: 0,
            max_reader_input_bytes: Some(MAX_DOCUMENT_BYTES),
        },
    };
    let mut out = Vec::new();
    for value in serde_saphyr::read_with_options::<_, serde_json::Value>(&mut text.as_bytes(), options) {
        match value {
            Ok(serde_json::Value::Null) => {}
            Ok(value @ serde_json::Value::Object(_)) => out.push(from_deserializer(value)),
            Ok(other) => out.push(Err(DocumentError::whole(format!(
                "a policy document is a mapping of fields, not {}",
                match other {
                    serde_json::Value::Array(_) => "a sequence",
                    serde_json::Value::String(_) => "a string",
                    _ => "a scalar",
                }
            )))),
            Err(e) => {
                out.push(Err(DocumentError::whole(syntax_message(&e))));
                break;
            }
        }
    }
    out
}

/// A parser error in words a policy author can act on.
fn syntax_message(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    if text.contains("alias") || text.contains("anchor") {
        format!("YAML anchors and aliases are not accepted in policy documents ({text})")
    } else {
        text
    }
}

fn from_deserializer<'de, D>(d: D) -> Result<PolicyDocument, DocumentError>
where
    D: Deserializer<'de>,
    D::Error: fmt::Display,
{
    serde_path_to_error::deserialize(d).map_err(|e| {
        let path = e.path().to_string();
        DocumentError { path, message: e.into_inner().to_string() }
    })
}

impl PolicyDocument {
    /// Converts to the wire message. Lossless.
    pub fn to_proto(&self) -> v1::Policy {
        v1::Policy {
            name: self.name.clone(),
            labels: self.labels.clone(),
            mode: self.mode.map_or(v1::Mode::Unspecified, |m| match m {
                Mode::Enforce => v1::Mode::Enforce,
                Mode::Audit => v1::Mode::Audit,
                Mode::Disabled => v1::Mode::Disabled,
            }) as i32,
            node_selector: self
                .node_selector
                .as_ref()
                .map(|s| v1::NodeSelector { match_labels: s.match_labels.clone() }),
            workload: self.workload.as_ref().map(|w| v1::WorkloadSelector { cgroup: w.cgroup.clone(), uid: w.uid }),
            network: self.network.as_ref().map(|n| v1::NetworkPolicy {
                connect: n.connect.as_ref().map(Section::to_proto),
                bind: n.bind.as_ref().map(Section::to_proto),
            }),
            description: self.description.clone(),
            exec: self.exec.as_ref().map(PathSection::to_proto),
            files: self.files.as_ref().map(PathSection::to_proto),
            connections: self.connections.as_ref().map(Connections::to_proto),
        }
    }

    /// Converts from the wire message. Fails only on enum values this version does not know.
    pub fn from_proto(p: &v1::Policy) -> Result<Self, DocumentError> {
        let mode = match v1::Mode::try_from(p.mode) {
            Ok(v1::Mode::Unspecified) => None,
            Ok(v1::Mode::Enforce) => Some(Mode::Enforce),
            Ok(v1::Mode::Audit) => Some(Mode::Audit),
            Ok(v1::Mode::Disabled) => Some(Mode::Disabled),
            Err(_) => return Err(unknown_enum("mode", p.mode)),
        };
        Ok(Self {
            name: p.name.clone(),
            labels: p.labels.clone(),
            description: p.description.clone(),
            mode,
            node_selector: p.node_selector.as_ref().map(|s| NodeSelector { match_labels: s.match_labels.clone() }),
            workload: p.workload.as_ref().map(|w| Workload { cgroup: w.cgroup.clone(), uid: w.uid }),
            network: match &p.network {
                None => None,
                Some(n) => Some(Network {
                    connect: n.connect.as_ref().map(|s| Section::from_proto(s, "network.connect")).transpose()?,
                    bind: n.bind.as_ref().map(|s| Section::from_proto(s, "network.bind")).transpose()?,
                }),
            },
            exec: p.exec.as_ref().map(|s| PathSection::from_proto(s, "exec")).transpose()?,
            files: p.files.as_ref().map(|s| PathSection::from_proto(s, "files")).transpose()?,
            connections: p.connections.as_ref().map(Connections::from_proto),
        })
    }

    /// Renders as YAML.
    pub fn to_yaml(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_saphyr::to_string(self).unwrap_or_default()
    }

    /// Renders as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

impl Section {
    fn to_proto(&self) -> v1::RuleSection {
        v1::RuleSection {
            default: self.default.map_or(v1::Action::Unspecified, Action::to_proto) as i32,
            rules: self
                .rules
                .iter()
                .map(|r| v1::NetworkRule {
                    id: r.id.clone(),
                    action: r.action.to_proto() as i32,
                    cidrs: r.cidrs.clone(),
                    ports: ports_to_proto(&r.ports),
                    protocols: r
                        .protocols
                        .iter()
                        .map(|p| match p {
                            Protocol::Tcp => v1::Protocol::Tcp as i32,
                            Protocol::Udp => v1::Protocol::Udp as i32,
                        })
                        .collect(),
                    description: r.description.clone(),
                })
                .collect(),
        }
    }

    fn from_proto(s: &v1::RuleSection, path: &str) -> Result<Self, DocumentError> {
        let default = section_default(s.default, path)?;
        let rules = s
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let rule_path = format!("{path}.rules[{i}]");
                let action = rule_action(r.action, &rule_path)?;
                let protocols = r
                    .protocols
                    .iter()
                    .enumerate()
                    .map(|(j, p)| match v1::Protocol::try_from(*p) {
                        Ok(v1::Protocol::Tcp) => Ok(Protocol::Tcp),
                        Ok(v1::Protocol::Udp) => Ok(Protocol::Udp),
                        _ => Err(unknown_enum(&format!("{rule_path}.protocols[{j}]"), *p)),
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Rule {
                    id: r.id.clone(),
                    action,
                    cidrs: r.cidrs.clone(),
                    ports: ports_from_proto(&r.ports),
                    protocols,
                    description: r.description.clone(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { default, rules })
    }
}

impl PathSection {
    fn to_proto(&self) -> v1::PathSection {
        v1::PathSection {
            default: self.default.map_or(v1::Action::Unspecified, Action::to_proto) as i32,
            rules: self
                .rules
                .iter()
                .map(|r| v1::PathRule {
                    id: r.id.clone(),
                    action: r.action.to_proto() as i32,
                    paths: r.paths.clone(),
                    access: r
                        .access
                        .iter()
                        .map(|a| match a {
                            Access::Read => v1::FileAccess::Read as i32,
                            Access::Write => v1::FileAccess::Write as i32,
                        })
                        .collect(),
                    description: r.description.clone(),
                })
                .collect(),
        }
    }

    fn from_proto(s: &v1::PathSection, path: &str) -> Result<Self, DocumentError> {
        let rules = s
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let rule_path = format!("{path}.rules[{i}]");
                let access = r
                    .access
                    .iter()
                    .enumerate()
                    .map(|(j, a)| match v1::FileAccess::try_from(*a) {
                        Ok(v1::FileAccess::Read) => Ok(Access::Read),
                        Ok(v1::FileAccess::Write) => Ok(Access::Write),
                        _ => Err(unknown_enum(&format!("{rule_path}.access[{j}]"), *a)),
                    })
                    .collect::<Result<_, _>>()?;
                Ok(PathRule {
                    id: r.id.clone(),
                    action: rule_action(r.action, &rule_path)?,
                    paths: r.paths.clone(),
                    access,
                    description: r.description.clone(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { default: section_default(s.default, path)?, rules })
    }
}

fn section_default(value: i32, path: &str) -> Result<Option<Action>, DocumentError> {
    match v1::Action::try_from(value) {
        Ok(v1::Action::Unspecified) => Ok(None),
        Ok(a) => Ok(Some(Action::from_proto(a))),
        Err(_) => Err(unknown_enum(&format!("{path}.default"), value)),
    }
}

fn rule_action(value: i32, rule_path: &str) -> Result<Action, DocumentError> {
    match v1::Action::try_from(value) {
        Ok(v1::Action::Unspecified) | Err(_) => Err(unknown_enum(&format!("{rule_path}.action"), value)),
        Ok(a) => Ok(Action::from_proto(a)),
    }
}

impl Action {
    fn to_proto(self) -> v1::Action {
        match self {
            Self::Allow => v1::Action::Allow,
            Self::Deny => v1::Action::Deny,
            Self::Audit => v1::Action::Audit,
        }
    }

    fn from_proto(a: v1::Action) -> Self {
        match a {
            v1::Action::Deny => Self::Deny,
            v1::Action::Audit => Self::Audit,
            v1::Action::Allow | v1::Action::Unspecified => Self::Allow,
        }
    }
}

fn unknown_enum(path: &str, value: i32) -> DocumentError {
    DocumentError { path: path.to_owned(), message: format!("unknown enum value {value}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
name: web
labels: {team: web}
mode: audit
node_selector: {match_labels: {role: edge}}
workload: {cgroup: /demo, uid: 1000}
network:
  connect:
    default: deny
    rules:
      - id: dns
        action: allow
        cidrs: [10.0.0.53/32, "2001:db8::/32"]
        ports: [53, "8000-8080"]
        protocols: [udp, tcp]
"#;

    #[test]
    fn parse_full_document_round_trips_through_proto() {
        let doc = parse(FULL).expect("valid document");
        let proto = doc.to_proto();
        assert_eq!(proto.network.as_ref().and_then(|n| n.connect.as_ref()).map(|c| c.rules[0].ports.len()), Some(2));
        assert_eq!(
            proto.network.as_ref().and_then(|n| n.connect.as_ref()).map(|c| c.rules[0].ports[1].last),
            Some(8080)
        );
        let back = PolicyDocument::from_proto(&proto).expect("known enums");
        assert_eq!(back, doc);
        assert_eq!(parse(&back.to_yaml()).expect("own yaml parses"), doc);
        assert_eq!(parse(&back.to_json()).expect("own json parses"), doc);
    }

    #[test]
    fn parse_unknown_field_reports_its_path() {
        let err = parse("name: a\nnetwork:\n  connect:\n    rules:\n      - {id: r, action: deny, portz: [1]}\n")
            .expect_err("unknown field");
        assert_eq!(err.path, "network.connect.rules[0].portz");
        assert!(err.message.contains("portz"), "{err}");
    }

    #[test]
    fn parse_wrong_enum_reports_its_path() {
        let err = parse("name: a\nmode: enforcing\n").expect_err("bad enum");
        assert_eq!(err.path, "mode");
        let err = parse("name: a\nnetwork: {connect: {rules: [{id: r, action: permit}]}}").expect_err("bad enum");
        assert_eq!(err.path, "network.connect.rules[0].action");
        let err = parse("name: a\nfiles: {rules: [{id: r, action: deny, access: [execute]}]}").expect_err("bad enum");
        assert_eq!(err.path, "files.rules[0].access[0]");
        let err = parse("name: a\nexec: {rules: [{id: r, action: deny, pathz: [/x]}]}").expect_err("unknown field");
        assert_eq!(err.path, "exec.rules[0].pathz");
    }

    #[test]
    fn connections_round_trip_and_observe_all_stays_present() {
        let text = "name: a\nconnections:\n  observe: {}\n  tune:\n    rules:\n    - id: wan\n      cidrs:\n      - 0.0.0.0/0\n      ports:\n      - 443\n      - 8000-8099\n      congestion: cubic\n      initial_cwnd: 20\n      no_delay: true\n";
        let doc = parse(text).expect("parses");
        let proto = doc.to_proto();
        let c = proto.connections.as_ref().expect("connections");
        assert_eq!(c.observe, Some(v1::ObserveSection { rules: Vec::new() }), "observe: {{}} is not absent");
        let tune = &c.tune.as_ref().expect("tune").rules[0];
        assert_eq!((tune.congestion.as_str(), tune.initial_cwnd, tune.no_delay), ("cubic", 20, true));
        assert_eq!(tune.ports, [v1::PortRange { first: 443, last: 0 }, v1::PortRange { first: 8000, last: 8099 }]);
        let back = PolicyDocument::from_proto(&proto).expect("from proto");
        assert_eq!(back, doc);
        assert_eq!(parse(&back.to_yaml()).expect("rendered yaml parses"), doc);
        let err = parse("name: a\nconnections: {tune: {rules: [{id: t, congestion: cubic, action: deny}]}}")
            .expect_err("no action");
        assert_eq!(err.path, "connections.tune.rules[0].action");
    }

    #[test]
    fn parse_path_sections_round_trip_through_proto() {
        let text = "name: a\nexec:\n  default: deny\n  rules:\n  - id: e\n    action: allow\n    paths:\n    - /usr/bin/\nfiles:\n  rules:\n  - id: f\n    action: deny\n    paths:\n    - /etc/shadow\n    access:\n    - write\n";
        let doc = parse(text).expect("parses");
        let proto = doc.to_proto();
        assert_eq!(proto.files.as_ref().map(|f| f.rules[0].access.clone()), Some(vec![v1::FileAccess::Write as i32]));
        assert_eq!(PolicyDocument::from_proto(&proto).expect("back"), doc);
        let mut bad = proto;
        bad.files.as_mut().expect("files").rules[0].access = vec![7];
        assert_eq!(PolicyDocument::from_proto(&bad).expect_err("unknown").path, "files.rules[0].access[0]");
    }

    #[test]
    fn parse_bad_port_spec_reports_its_path() {
        let err = parse("name: a\nnetwork: {connect: {rules: [{id: r, action: deny, ports: [80, http]}]}}")
            .expect_err("bad port");
        assert_eq!(err.path, "network.connect.rules[0].ports[1]");
        let err = parse("name: a\nnetwork: {connect: {rules: [{id: r, action: deny, ports: [\"8000-0\"]}]}}")
            .expect_err("range ending at 0");
        assert_eq!(err.path, "network.connect.rules[0].ports[0]");
        let err = parse("name: a\nnetwork: {connect: {rules: [{id: r, action: deny, ports: [-1]}]}}")
            .expect_err("negative port");
        assert!(err.message.contains("negative"), "{err}");
    }

    #[test]
    fn parse_oversized_document_is_rejected() {
        let big = format!("name: a\ndescription: \"{}\"\n", "x".repeat(MAX_DOCUMENT_BYTES));
        let err = parse(&big).expect_err("too big");
        assert!(err.message.contains("limit"), "{err}");
    }

    #[test]
    fn parse_all_splits_documents_and_skips_empty_ones() {
        let docs = parse_all("name: a\n---\nname: b\nmode: nope\n---\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].as_ref().map(|d| d.name.as_str()), Ok("a"));
        assert_eq!(docs[1].as_ref().map_err(|e| e.path.as_str()), Err("mode"));
    }

    #[test]
    fn anchors_and_aliases_are_refused_quickly_however_large_the_expansion() {
        let err = parse("name: &n a\ndescription: *n\n").expect_err("alias");
        assert!(err.message.contains("anchors and aliases are not accepted"), "{err}");
        // The document that made serde_yaml allocate past 4 GB: a 1 MB anchor, 1.6 MB of aliases.
        let bomb = format!(
            "name: a\nlabels: {{k: &a \"{}\"}}\ndescription: [{}]\n",
            "x".repeat(1 << 20),
            vec!["*a"; 530_000].join(",")
        );
        let started = std::time::Instant::now();
        let err = parse(&bomb).expect_err("alias bomb");
        assert!(err.message.contains("anchors and aliases"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
    }

    #[test]
    fn one_document_is_expected_by_parse() {
        assert!(parse("").expect_err("empty").message.contains("empty"));
        assert!(parse("name: a\n---\nname: b\n").expect_err("two").message.contains("found 2"));
    }

    #[test]
    fn from_proto_rejects_unknown_enum_values() {
        let mut p = parse(FULL).expect("valid").to_proto();
        p.network.as_mut().and_then(|n| n.connect.as_mut()).expect("section").rules[0].action = 42;
        let err = PolicyDocument::from_proto(&p).expect_err("unknown action");
        assert_eq!(err.path, "network.connect.rules[0].action");
    }
}
