//! Semantic validation and normalisation of policies: what the server applies and what
//! `palisade compile --offline` checks, so both refuse exactly the same policies.
//!
//! Every problem is reported with its field path relative to the policy (the same paths the
//! document parser uses), all at once, so an author fixes a policy in one round trip.
//! Normalisation fills defaults so stored policies are explicit and digests are canonical.

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
};

use ipnet::IpNet;
use palisade_proto::v1;

/// One invalid field: its path relative to the request's policy (or the request field) and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Field path, e.g. `network.connect.rules[2].cidrs[0]`.
    pub field: String,
    /// Why the value is rejected.
    pub description: String,
}

impl Violation {
    /// Builds a violation.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }
}

/// Most labels a policy (or selector) may carry.
pub const MAX_LABELS: usize = 64;
/// Most rules in one section.
pub const MAX_RULES: usize = 65_536;
/// Most CIDRs in one rule.
pub const MAX_CIDRS: usize = 4096;
/// Most port entries in one rule.
pub const MAX_PORTS: usize = 1024;
/// Most path patterns in one rule.
pub const MAX_PATHS: usize = 4096;
/// Longest path pattern (the kernel programs resolve paths of up to this many bytes).
pub const MAX_PATH: usize = crate::policy::model::MAX_PATH;
/// Longest description.
pub const MAX_DESCRIPTION: usize = 1024;
/// Longest cgroup path.
pub const MAX_CGROUP_PATH: usize = 4096;
/// Reported violations are capped so a pathological document cannot produce a huge error.
pub const MAX_VIOLATIONS: usize = 100;
/// Rule id reserved for section defaults in events.
pub const DEFAULT_RULE_ID: &str = "default";

/// Validates `policy` and returns its normalised form, or every violation found (at most
/// [`MAX_VIOLATIONS`]).
pub fn policy(policy: &v1::Policy) -> Result<v1::Policy, Vec<Violation>> {
    let mut v = Violations::default();
    check_name(&mut v, "name", &policy.name, 63, "a DNS label");
    check_labels(&mut v, "labels", &policy.labels);
    check_description(&mut v, "description", &policy.description);
    let mut out = policy.clone();
    out.mode = match v1::Mode::try_from(policy.mode) {
        Ok(v1::Mode::Unspecified) => v1::Mode::Enforce as i32,
        Ok(m) => m as i32,
        Err(_) => {
            v.push("mode", format!("unknown mode {}", policy.mode));
            policy.mode
        }
    };
    if let Some(selector) = &policy.node_selector {
        check_labels(&mut v, "node_selector.match_labels", &selector.match_labels);
    }
    if let Some(workload) = &mut out.workload {
        workload.cgroup = check_cgroup(&mut v, "workload.cgroup", &workload.cgroup);
        if workload.uid == Some(u32::MAX) {
            v.push("workload.uid", "4294967295 is (uid_t)-1, not a user");
        }
    }
    // Empty sub-messages mean the same as absent ones: store one form so digests agree.
    if out.workload.as_ref().is_some_and(|w| w.cgroup.is_empty() && w.uid.is_none()) {
        out.workload = None;
    }
    if out.network.as_ref().is_some_and(|n| n.connect.is_none() && n.bind.is_none()) {
        out.network = None;
    }
    let mut rule_ids = HashSet::new();
    if let Some(connect) = out.network.as_mut().and_then(|n| n.connect.as_mut()) {
        check_section(&mut v, "network.connect", connect, &mut rule_ids);
    }
    if let Some(bind) = out.network.as_mut().and_then(|n| n.bind.as_mut()) {
        check_section(&mut v, "network.bind", bind, &mut rule_ids);
    }
    if let Some(exec) = out.exec.as_mut() {
        check_path_section(&mut v, "exec", exec, &mut rule_ids);
    }
    if let Some(files) = out.files.as_mut() {
        check_path_section(&mut v, "files", files, &mut rule_ids);
    }
    if out.connections.as_ref().is_some_and(|c| c.observe.is_none() && c.tune.is_none()) {
        out.connections = None;
    }
    if let Some(connections) = out.connections.as_mut() {
        check_connections(&mut v, connections, &mut rule_ids);
    }
    v.finish().map(|()| out)
}

/// Validates a node name as agents report it (DNS subdomain: up to 253 characters).
pub fn node_name(field: &str, name: &str) -> Result<(), Vec<Violation>> {
    let mut v = Violations::default();
    check_name(&mut v, field, name, 253, "a DNS subdomain");
    v.finish()
}

/// Validates a label map used as a selector in a list request.
pub fn selector(field: &str, labels: &BTreeMap<String, String>) -> Result<(), Vec<Violation>> {
    let mut v = Violations::default();
    check_labels(&mut v, field, labels);
    v.finish()
}

#[derive(Default)]
struct Violations(Vec<Violation>);

impl Violations {
    fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        if self.0.len() < MAX_VIOLATIONS {
            self.0.push(Violation::new(field, description));
        }
    }

    fn finish(self) -> Result<(), Vec<Violation>> {
        if self.0.is_empty() { Ok(()) } else { Err(self.0) }
    }
}

/// Checks a cgroup path as policies spell it (absolute, below the cgroup2 mount) and
/// returns it normalised ("/" and "" are the root).
pub fn cgroup(field: &str, path: &str) -> Result<String, Vec<Violation>> {
    let mut v = Violations(Vec::new());
    let normalised = check_cgroup(&mut v, field, path);
    v.finish().map(|()| normalised)
}

fn check_name(v: &mut Violations, field: &str, name: &str, max: usize, what: &str) {
    if name.is_empty() {
        v.push(field, "must not be empty");
    } else if name.len() > max {
        v.push(field, format!("is {} characters, the limit is {max}", name.len()));
    } else {
        let dots_allowed = max > 63;
        let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots_allowed && c == '.');
        let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !name.chars().all(ok_char) || !edge_ok(name.chars().next()) || !edge_ok(name.chars().last()) {
            let chars = if dots_allowed { "[a-z0-9.-]" } else { "[a-z0-9-]" };
            v.push(field, format!("{name:?} is not {what}: use {chars}, starting and ending with a letter or digit"));
        }
    }
}

fn check_labels(v: &mut Violations, field: &str, labels: &BTreeMap<String, String>) {
    if labels.len() > MAX_LABELS {
        v.push(field, format!("has {} labels, the limit is {MAX_LABELS}", labels.len()));
    }
    for (key, value) in labels {
        let path = format!("{field}.{key}");
        let key_ok = !key.is_empty()
            && key.len() <= 63
            && key.starts_with(|c: char| c.is_ascii_alphanumeric())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
        if !key_ok {
            v.push(&path, "label keys are 1–63 characters of [A-Za-z0-9._/-], starting with a letter or digit");
        }
        let value_ok =
            value.len() <= 63 && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !value_ok {
            v.push(&path, "label values are at most 63 characters of [A-Za-z0-9._-]");
        }
    }
}

fn check_description(v: &mut Violations, field: &str, description: &str) {
    if description.len() > MAX_DESCRIPTION {
        v.push(field, format!("is {} bytes, the limit is {MAX_DESCRIPTION}", description.len()));
    } else if description.contains('\0') {
        // PostgreSQL text cannot hold it: refuse here rather than fail as Internal.
        v.push(field, "contains a NUL byte");
    }
}

/// Returns the normalised path (no trailing '/', except for the root).
fn check_cgroup(v: &mut Violations, field: &str, path: &str) -> String {
    if path.is_empty() {
        return String::new();
    }
    if path.len() > MAX_CGROUP_PATH {
        v.push(field, format!("is {} bytes, the limit is {MAX_CGROUP_PATH}", path.len()));
        return path.to_owned();
    }
    if !path.starts_with('/') {
        v.push(field, format!("{path:?} must be absolute (start with '/'), relative to the cgroup2 mount"));
        return path.to_owned();
    }
    if path.contains('\0') {
        v.push(field, "must not contain NUL bytes");
        return path.to_owned();
    }
    let trimmed = path.trim_end_matches('/');
    for component in trimmed.split('/').skip(1) {
        if component.is_empty() || component == "." || component == ".." {
            v.push(field, format!("{path:?} has an empty, '.' or '..' component"));
            break;
        }
    }
    // "/" and "" both mean every process: store one spelling so digests agree.
    trimmed.to_owned()
}

/// Checks and normalises a section default (unset → allow).
fn check_default(v: &mut Violations, field: &str, default: &mut i32) {
    *default = match v1::Action::try_from(*default) {
        Ok(v1::Action::Unspecified) => v1::Action::Allow as i32,
        Ok(a) => a as i32,
        Err(_) => {
            v.push(format!("{field}.default"), format!("unknown action {default}"));
            *default
        }
    };
}

/// Checks a section's rule count; false when there are too many to look at.
fn check_rule_count(v: &mut Violations, field: &str, count: usize) -> bool {
    if count > MAX_RULES {
        v.push(format!("{field}.rules"), format!("has {count} rules, the limit is {MAX_RULES}"));
        return false;
    }
    true
}

fn check_section(v: &mut Violations, field: &str, section: &mut v1::RuleSection, ids: &mut HashSet<String>) {
    check_default(v, field, &mut section.default);
    if !check_rule_count(v, field, section.rules.len()) {
        return;
    }
    for (i, rule) in section.rules.iter_mut().enumerate() {
        check_rule(v, &format!("{field}.rules[{i}]"), rule, ids);
    }
}

fn check_path_section(v: &mut Violations, field: &str, section: &mut v1::PathSection, ids: &mut HashSet<String>) {
    check_default(v, field, &mut section.default);
    if !check_rule_count(v, field, section.rules.len()) {
        return;
    }
    for (i, rule) in section.rules.iter_mut().enumerate() {
        let rule_field = format!("{field}.rules[{i}]");
        check_rule_head(v, &rule_field, &rule.id, rule.action, ids);
        if rule.paths.len() > MAX_PATHS {
            v.push(
                format!("{rule_field}.paths"),
                format!("has {} entries, the limit is {MAX_PATHS}", rule.paths.len()),
            );
        } else {
            for (j, path) in rule.paths.iter().enumerate() {
                if let Err(reason) = check_path_pattern(path) {
                    v.push(format!("{rule_field}.paths[{j}]"), reason);
                }
            }
        }
        if field != "files" && !rule.access.is_empty() {
            v.push(format!("{rule_field}.access"), "only files rules have an access list");
        }
        let known = |a| matches!(v1::FileAccess::try_from(a), Ok(v1::FileAccess::Read | v1::FileAccess::Write));
        check_enum_list(v, &format!("{rule_field}.access"), &rule.access, known, "access", "read or write");
        check_description(v, &format!("{rule_field}.description"), &rule.description);
    }
}

/// Largest initial congestion window a tune rule may ask for, in segments.
pub const MAX_INITIAL_CWND: u32 = 1024;
/// Longest congestion control name (`TCP_CA_NAME_MAX` is 16 with the NUL).
pub const MAX_CONGESTION_NAME: usize = 15;

/// `connections.observe` and `connections.tune` (semantics §13).
fn check_connections(v: &mut Violations, c: &mut v1::ConnectionsPolicy, ids: &mut HashSet<String>) {
    if let Some(observe) = c.observe.as_mut() {
        let field = "connections.observe";
        if check_rule_count(v, field, observe.rules.len()) {
            for (i, rule) in observe.rules.iter_mut().enumerate() {
                let field = format!("{field}.rules[{i}]");
                check_peer(v, &field, &rule.id, &rule.cidrs, &mut rule.ports, ids);
                check_description(v, &format!("{field}.description"), &rule.description);
            }
        }
    }
    if let Some(tune) = c.tune.as_mut() {
        let field = "connections.tune";
        if check_rule_count(v, field, tune.rules.len()) {
            for (i, rule) in tune.rules.iter_mut().enumerate() {
                let field = format!("{field}.rules[{i}]");
                check_peer(v, &field, &rule.id, &rule.cidrs, &mut rule.ports, ids);
                check_description(v, &format!("{field}.description"), &rule.description);
                if let Err(reason) = check_congestion(&rule.congestion) {
                    v.push(format!("{field}.congestion"), reason);
                }
                if rule.initial_cwnd > MAX_INITIAL_CWND {
                    v.push(
                        format!("{field}.initial_cwnd"),
                        format!("{} segments is above the limit of {MAX_INITIAL_CWND}", rule.initial_cwnd),
                    );
                }
                if rule.congestion.is_empty() && rule.initial_cwnd == 0 && !rule.no_delay {
                    v.push(&field, "sets nothing: give congestion, initial_cwnd or no_delay");
                }
            }
        }
    }
}

/// The id and peer filter of an observe or tune rule.
fn check_peer(
    v: &mut Violations,
    field: &str,
    id: &str,
    cidrs: &[String],
    ports: &mut [v1::PortRange],
    ids: &mut HashSet<String>,
) {
    let id_field = format!("{field}.id");
    check_rule_id(v, &id_field, id);
    if !ids.insert(id.to_owned()) && !id.is_empty() {
        v.push(&id_field, format!("duplicate rule id {id:?}: ids must be unique within the policy"));
    }
    check_cidrs(v, field, cidrs);
    check_port_list(v, field, ports);
}

/// A congestion control name as `tcp_available_congestion_control` lists them.
fn check_congestion(name: &str) -> Result<(), String> {
    if name.len() > MAX_CONGESTION_NAME {
        return Err(format!("is {} characters, the limit is {MAX_CONGESTION_NAME}", name.len()));
    }
    if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')) {
        return Err(format!("{name:?} is not a congestion control name ([a-z0-9_-], e.g. cubic, bbr, reno)"));
    }
    Ok(())
}

/// A path pattern (semantics §12.3): absolute, canonical, at most one trailing `*`.
fn check_path_pattern(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} is not absolute: paths start with '/'"));
    }
    if path.len() > MAX_PATH {
        return Err(format!("is {} bytes, the limit is {MAX_PATH}", path.len()));
    }
    if path.contains('\0') {
        return Err("contains a NUL byte".to_owned());
    }
    let body = path.strip_suffix('*').unwrap_or(path);
    if body.contains('*') {
        return Err(format!("{path:?} has a '*' before the end: only one trailing '*' is supported"));
    }
    if let Some(c) = body.chars().find(|c| matches!(c, '?' | '[' | ']')) {
        return Err(format!("{path:?} contains {c:?}: the only wildcard is a trailing '*'"));
    }
    // Components between the leading '/' and a trailing '/' or '*' must be real names.
    let inner = body.trim_start_matches('/');
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    if body.starts_with("//") || (!inner.is_empty() && inner.split('/').any(str::is_empty)) {
        return Err(format!("{path:?} has an empty component (\"//\"): the kernel reports canonical paths"));
    }
    let mut components: Vec<&str> = inner.split('/').collect();
    if path.ends_with('*') && !body.ends_with('/') {
        // The last component is the start of a name ("/home/.*"), not a name.
        components.pop();
    }
    if components.iter().any(|c| *c == "." || *c == "..") {
        return Err(format!("{path:?} has a \".\" or \"..\" component: the kernel reports canonical paths"));
    }
    Ok(())
}

fn check_rule_head(v: &mut Violations, field: &str, id: &str, action: i32, ids: &mut HashSet<String>) {
    let id_field = format!("{field}.id");
    check_rule_id(v, &id_field, id);
    if !ids.insert(id.to_owned()) && !id.is_empty() {
        v.push(&id_field, format!("duplicate rule id {id:?}: ids must be unique within the policy"));
    }
    match v1::Action::try_from(action) {
        Ok(v1::Action::Unspecified) => v.push(format!("{field}.action"), "is required: allow, deny or audit"),
        Ok(_) => {}
        Err(_) => v.push(format!("{field}.action"), format!("unknown action {action}")),
    }
}

fn check_rule(v: &mut Violations, field: &str, rule: &mut v1::NetworkRule, ids: &mut HashSet<String>) {
    check_rule_head(v, field, &rule.id, rule.action, ids);
    check_cidrs(v, field, &rule.cidrs);
    check_port_list(v, field, &mut rule.ports);
    let known = |p| matches!(v1::Protocol::try_from(p), Ok(v1::Protocol::Tcp | v1::Protocol::Udp));
    check_enum_list(v, &format!("{field}.protocols"), &rule.protocols, known, "protocol", "tcp or udp");
    check_description(v, &format!("{field}.description"), &rule.description);
}

/// A rule's `cidrs`.
fn check_cidrs(v: &mut Violations, field: &str, cidrs: &[String]) {
    if cidrs.len() > MAX_CIDRS {
        v.push(format!("{field}.cidrs"), format!("has {} entries, the limit is {MAX_CIDRS}", cidrs.len()));
        return;
    }
    for (j, cidr) in cidrs.iter().enumerate() {
        if let Err(reason) = check_cidr(cidr) {
            v.push(format!("{field}.cidrs[{j}]"), reason);
        }
    }
}

/// A rule's `ports` (normalised: a one-port range has `last` 0).
fn check_port_list(v: &mut Violations, field: &str, ports: &mut [v1::PortRange]) {
    if ports.len() > MAX_PORTS {
        v.push(format!("{field}.ports"), format!("has {} entries, the limit is {MAX_PORTS}", ports.len()));
        return;
    }
    for (j, range) in ports.iter_mut().enumerate() {
        if let Err(reason) = check_ports(range) {
            v.push(format!("{field}.ports[{j}]"), reason);
        }
    }
}

/// Checks a list of enum values: each one known, none twice.
fn check_enum_list(
    v: &mut Violations,
    field: &str,
    values: &[i32],
    known: impl Fn(i32) -> bool,
    what: &str,
    hint: &str,
) {
    let mut seen = HashSet::new();
    for (j, value) in values.iter().enumerate() {
        if !known(*value) {
            v.push(format!("{field}[{j}]"), format!("unknown {what} {value}: use {hint}"));
        } else if !seen.insert(*value) {
            v.push(format!("{field}[{j}]"), format!("duplicate {what}"));
        }
    }
}

fn check_rule_id(v: &mut Violations, field: &str, id: &str) {
    if id.is_empty() {
        v.push(field, "must not be empty");
    } else if id.len() > 63 {
        v.push(field, format!("is {} characters, the limit is 63", id.len()));
    } else if id == DEFAULT_RULE_ID {
        v.push(field, "\"default\" is reserved for section defaults");
    } else if !id.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        || !id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
    {
        v.push(field, format!("{id:?} must be [a-z0-9._-], starting with a letter or digit"));
    }
}

fn check_cidr(cidr: &str) -> Result<(), String> {
    if cidr.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let net: IpNet = cidr.parse().map_err(|_| format!("{cidr:?} is not an IPv4 or IPv6 address or CIDR"))?;
    if net.trunc() != net {
        return Err(format!("{cidr:?} has host bits set; did you mean {}?", net.trunc()));
    }
    Ok(())
}

fn check_ports(range: &mut v1::PortRange) -> Result<(), String> {
    let check = |p: u32| match p {
        0 => Err("port 0 cannot be connected to; ports are 1–65535".to_owned()),
        65_536.. => Err(format!("port {p} is above 65535")),
        _ => Ok(()),
    };
    check(range.first)?;
    if range.last == range.first {
        range.last = 0;
    }
    if range.last != 0 {
        check(range.last)?;
        if range.last < range.first {
            return Err(format!(
                "range {}-{} is inverted: the first port must not exceed the last",
                range.first, range.last
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
