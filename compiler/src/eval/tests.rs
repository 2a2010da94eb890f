//! The worked examples of docs/policy-semantics.md, run against the reference evaluator, plus
//! focused cases.

use std::{collections::BTreeMap, net::SocketAddr};

use palisade_proto::document;

use super::*;
use crate::model::{self, Failsafe};

const SEMANTICS: &str = include_str!("../../../docs/policy-semantics.md");

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

fn run_row(example: &Example, row: &[String]) -> (Decision, PolicySet) {
    let mut parts = row[0].split_whitespace();
    let protocol = match parts.next() {
        Some("tcp") => Protocol::Tcp,
        Some("udp") => Protocol::Udp,
        other => panic!("{}: bad protocol {other:?}", example.name),
    };
    let destination: SocketAddr = parts.next().expect("destination").parse().expect("socket address");
    let mut context = example.context.clone();
    context.extend(parse_assignments(&parts.collect::<Vec<_>>().join(" ")));
    let labels = node_labels(&context["node"]);
    let held = example.policies.iter().filter(|p| model::node_selected(p, &labels)).map(|p| (p, 1));
    let set = PolicySet::new(held, Vec::new()).expect("model");
    let attempt = Attempt {
        operation: crate::model::Operation::Connect,
        cgroup: model::cgroup_components(&context["cgroup"]),
        uid: context["uid"].parse().expect("uid"),
        addr: destination.ip(),
        port: destination.port(),
        protocol,
    };
    (evaluate(&set, &attempt), set)
}

#[test]
fn evaluate_matches_every_worked_example_in_the_semantics_doc() {
    let examples = examples();
    assert!(examples.len() >= 6, "found {} examples", examples.len());
    let mut rows = 0;
    for example in &examples {
        for row in &example.rows {
            rows += 1;
            let (decision, set) = run_row(example, row);
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
                        RuleName::Rule(i) => p.connect.as_ref().expect("section").rules[i].id.clone(),
                    };
                    let kind = match r.kind {
                        ReportKind::Deny => "DENY",
                        ReportKind::WouldDeny => "AUDIT would_deny",
                        ReportKind::Audit => "AUDIT",
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
    assert!(rows >= 30, "only {rows} rows checked");
}

fn set(yaml: &str) -> PolicySet {
    let docs: Vec<_> = document::parse_all(yaml).into_iter().map(|d| d.expect("parses").to_proto()).collect();
    PolicySet::new(docs.iter().map(|p| (p, 3)), Vec::new()).expect("model")
}

fn attempt(addr: &str, port: u16) -> Attempt {
    Attempt {
        operation: crate::model::Operation::Connect,
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
