//! The worked examples of docs/policy-semantics.md, run against the reference evaluator, plus
//! focused cases.

use std::{collections::BTreeMap, net::SocketAddr};

use palisade_proto::document;

use super::*;
use crate::policy::model::{self, Failsafe};

const SEMANTICS: &str = include_str!("../../../../docs/policy-semantics.md");

struct Example {
    name: String,
    policies: Vec<palisade_proto::v1::Policy>,
    context: BTreeMap<String, String>,
    rows: Vec<Vec<String>>,
}

/// Parses every `<!-- doctest: EN policies -->` / `Context:` / `<!-- doctest: EN table -->`
/// triple out of the semantics document.
fn examples() -> Vec<Example> {
    let mut out = Vec::new();
    let lines: Vec<&str> = SEMANTICS.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(name) = line.strip_prefix("<!-- doctest: ").and_then(|l| l.strip_suffix(" policies -->")) {
            let start = i + 2; // skip the ```yaml fence
            let end = start + lines[start..].iter().position(|l| l.starts_with("```")).expect("closing fence");
            let yaml = lines[start..end].join("\n");
            let policies =
                document::parse_all(&yaml).into_iter().map(|d| d.expect("example policy parses").to_proto()).collect();
            let context_line = lines[end..].iter().find(|l| l.starts_with("Context: ")).expect("context line");
            let context = parse_assignments(context_line.trim_start_matches("Context: ").trim_matches('`'));
            let table = end + lines[end..].iter().position(|l| l.contains(" table -->")).expect("table marker");
            let rows = lines[table + 3..]
                .iter()
                .take_while(|l| l.starts_with('|'))
                .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().trim_matches('`').to_owned()).collect())
                .collect();
            out.push(Example { name: name.to_owned(), policies, context, rows });
            i = table;
        }
        i += 1;
    }
    out
}

/// `node=K=V,K=V cgroup=/x uid=0` → map (the node value keeps its inner '=').
fn parse_assignments(text: &str) -> BTreeMap<String, String> {
    text.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

fn node_labels(spec: &str) -> BTreeMap<String, String> {
    spec.split(',').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

fn run_row(example: &Example, row: &[String]) -> (Decision, PolicySet, crate::policy::model::Operation) {
    use crate::policy::model::{ACCESS_READ, ACCESS_WRITE, Operation};
    let words: Vec<&str> = row[0].split_whitespace().collect();
    // `exec PATH`, `open ACCESS PATH` or `PROTOCOL DESTINATION`, then overrides.
    let (kind, rest) = match words.as_slice() {
        ["exec", path, rest @ ..] => ((Operation::Exec, (*path).to_owned(), 0), rest),
        ["open", access, path, rest @ ..] => {
            let bits = match *access {
                "read" => ACCESS_READ,
                "write" => ACCESS_WRITE,
                "read+write" => ACCESS_READ | ACCESS_WRITE,
                other => panic!("{}: bad access {other:?}", example.name),
            };
            ((Operation::Files, (*path).to_owned(), bits), rest)
        }
        ["observe", protocol, peer, rest @ ..] => ((Operation::Observe, format!("{protocol} {peer}"), 0), rest),
        ["tune", protocol, peer, rest @ ..] => ((Operation::Tune, format!("{protocol} {peer}"), 0), rest),
        [protocol, destination, rest @ ..] => ((Operation::Connect, format!("{protocol} {destination}"), 0), rest),
        _ => panic!("{}: bad attempt {:?}", example.name, row[0]),
    };
    let mut context = example.context.clone();
    context.extend(parse_assignments(&rest.join(" ")));
    let labels = node_labels(&context["node"]);
    let held = example.policies.iter().filter(|p| model::node_selected(p, &labels)).map(|p| (p, 1));
    let set = PolicySet::new(held, Vec::new()).expect("model");
    let cgroup = model::cgroup_components(&context["cgroup"]);
    let uid = context["uid"].parse().expect("uid");
    let (operation, target, access) = kind;
    let decision = if operation.is_path() {
        evaluate_path(&set, &PathAttempt { operation, cgroup, uid, path: target.into_bytes(), access })
    } else {
        let (protocol, destination) = target.split_once(' ').expect("protocol and destination");
        let protocol = match protocol {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => panic!("{}: bad protocol {other:?}", example.name),
        };
        let destination: SocketAddr = destination.parse().expect("socket address");
        evaluate(&set, &Attempt { operation, cgroup, uid, addr: destination.ip(), port: destination.port(), protocol })
    };
    (decision, set, operation)
}

#[test]
fn evaluate_matches_every_worked_example_in_the_semantics_doc() {
    let examples = examples();
    assert!(examples.len() >= 12, "found {} examples", examples.len());
    let mut rows = 0;
    for example in &examples {
        for row in &example.rows {
            rows += 1;
            let (decision, set, op) = run_row(example, row);
            let verdict = match decision.verdict {
                Verdict::Allow => "ALLOW",
                Verdict::Deny => "DENY",
            };
            let (event, policy, rule) = match decision.report {
                None => ("none".to_owned(), "-".to_owned(), "-".to_owned()),
                Some(r) => {
                    let p = &set.policies[r.policy];
                    let rule = match r.rule {
                        RuleName::Default => "default".to_owned(),
                        RuleName::Rule(i) => p.rule_id(op, i).expect("rule").to_owned(),
                    };
                    let kind = match (op, r.kind) {
                        (crate::policy::model::Operation::Observe, _) => "OBSERVE",
                        (crate::policy::model::Operation::Tune, _) => "TUNE",
                        (_, ReportKind::Deny) => "DENY",
                        (_, ReportKind::WouldDeny) => "AUDIT would_deny",
                        (_, ReportKind::Audit) => "AUDIT",
                    };
                    (kind.to_owned(), p.name.clone(), rule)
                }
            };
            assert_eq!(
                [verdict, event.as_str(), policy.as_str(), rule.as_str()],
                [row[1].as_str(), row[2].as_str(), row[3].as_str(), row[4].as_str()],
                "{} row `{}`",
                example.name,
                row[0]
            );
        }
    }
    assert!(rows >= 51, "only {rows} rows checked");
}

fn set(yaml: &str) -> PolicySet {
    let docs: Vec<_> = document::parse_all(yaml).into_iter().map(|d| d.expect("parses").to_proto()).collect();
    PolicySet::new(docs.iter().map(|p| (p, 3)), Vec::new()).expect("model")
}

fn attempt(addr: &str, port: u16) -> Attempt {
    Attempt {
        operation: crate::policy::model::Operation::Connect,
        cgroup: vec!["demo".into()],
        uid: 0,
        addr: addr.parse().expect("ip"),
        port,
        protocol: Protocol::Tcp,
    }
}

#[test]
fn evaluate_failsafe_wins_over_every_deny() {
    let mut s = set("name: p\nnetwork: {connect: {default: deny}}");
    assert_eq!(evaluate(&s, &attempt("10.0.0.1", 50051)).verdict, Verdict::Deny);
    s.failsafe.push(Failsafe { net: Some("10.0.0.1/32".parse().expect("net")), port: Some(50051) });
    assert_eq!(evaluate(&s, &attempt("10.0.0.1", 50051)), Decision::ALLOW);
    assert_eq!(evaluate(&s, &attempt("::ffff:10.0.0.1", 50051)), Decision::ALLOW, "mapped form too");
    assert_eq!(evaluate(&s, &attempt("10.0.0.1", 50052)).verdict, Verdict::Deny);
}

#[test]
fn evaluate_port_zero_matches_only_rules_without_ports() {
    let s = set("name: p\nnetwork: {connect: {rules: [{id: a, action: deny, ports: [1-65535]}]}}");
    assert_eq!(evaluate(&s, &attempt("10.0.0.1", 0)).verdict, Verdict::Allow);
    let s = set("name: p\nnetwork: {connect: {rules: [{id: a, action: deny}]}}");
    assert_eq!(evaluate(&s, &attempt("10.0.0.1", 0)).verdict, Verdict::Deny);
}

#[test]
fn decide_audit_rule_is_named_before_audit_default() {
    let s = set("name: p\nnetwork: {connect: {default: audit, rules: [{id: look, action: audit, ports: [80]}]}}");
    let d = evaluate(&s, &attempt("10.0.0.1", 80));
    assert_eq!(d.report, Some(Report { kind: ReportKind::Audit, policy: 0, rule: RuleName::Rule(0) }));
    let d = evaluate(&s, &attempt("10.0.0.1", 81));
    assert_eq!(d.report, Some(Report { kind: ReportKind::Audit, policy: 0, rule: RuleName::Default }));
}

fn path_attempt(op: crate::policy::model::Operation, path: &str, access: u8) -> PathAttempt {
    PathAttempt { operation: op, cgroup: vec!["demo".into()], uid: 0, path: path.as_bytes().to_vec(), access }
}

#[test]
fn evaluate_path_unresolved_paths_match_only_rules_without_paths() {
    use crate::policy::model::Operation;
    let s = set("name: p\nexec:\n  default: deny\n  rules:\n    - {id: all, action: allow, paths: [/]}\n");
    let long = format!("/{}", "a".repeat(MAX_PATH));
    assert_eq!(evaluate_path(&s, &path_attempt(Operation::Exec, "/bin/x", 0)).verdict, Verdict::Allow);
    let d = evaluate_path(&s, &path_attempt(Operation::Exec, &long, 0));
    assert_eq!(d.verdict, Verdict::Deny, "a path the programs cannot hold is unresolved");
    assert_eq!(d.report.map(|r| r.rule), Some(RuleName::Default));
    let s = set("name: p\nexec:\n  rules:\n    - {id: any, action: deny}\n");
    assert_eq!(evaluate_path(&s, &path_attempt(Operation::Exec, &long, 0)).verdict, Verdict::Deny);
}

#[test]
fn evaluate_path_reports_read_before_write_and_would_deny_before_audit() {
    use crate::policy::model::{ACCESS_READ, ACCESS_WRITE, Operation};
    let s = set(
        "name: p\nfiles:\n  rules:\n    - {id: r, action: deny, access: [read], paths: [/x]}\n    - {id: w, action: deny, access: [write], paths: [/x]}\n",
    );
    let d = evaluate_path(&s, &path_attempt(Operation::Files, "/x", ACCESS_READ | ACCESS_WRITE));
    assert_eq!(d.report.map(|r| r.rule), Some(RuleName::Rule(0)));
    let d = evaluate_path(&s, &path_attempt(Operation::Files, "/x", ACCESS_WRITE));
    assert_eq!(d.report.map(|r| r.rule), Some(RuleName::Rule(1)));
    let s = set(
        "name: a\nfiles:\n  rules:\n    - {id: look, action: audit, access: [read], paths: [/x]}\n---\nname: b\nmode: audit\nfiles:\n  rules:\n    - {id: w, action: deny, access: [write], paths: [/x]}\n",
    );
    let d = evaluate_path(&s, &path_attempt(Operation::Files, "/x", ACCESS_READ | ACCESS_WRITE));
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.report.map(|r| (r.kind, r.policy)), Some((ReportKind::WouldDeny, 1)));
}
