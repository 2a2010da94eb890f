//! Table tests for policy validation.

use palisade_proto::document;

use super::*;

fn doc(yaml: &str) -> v1::Policy {
    document::parse(yaml).expect("test document parses").to_proto()
}

fn rule_doc(rule: &str) -> v1::Policy {
    doc(&format!("name: p\nnetwork:\n  connect:\n    rules:\n      - {rule}\n"))
}

fn fields(result: Result<v1::Policy, Vec<Violation>>) -> Vec<String> {
    result.expect_err("policy must be rejected").into_iter().map(|v| v.field).collect()
}

#[test]
fn policy_valid_is_normalised_with_defaults() {
    let p =
        policy(&rule_doc("{id: r1, action: deny, cidrs: [10.0.0.0/8, \"::1\"], ports: [80, 80-80]}")).expect("valid");
    assert_eq!(p.mode, v1::Mode::Enforce as i32);
    let connect = p.network.and_then(|n| n.connect).expect("connect");
    assert_eq!(connect.default, v1::Action::Allow as i32);
    assert_eq!(connect.rules[0].ports[1], v1::PortRange { first: 80, last: 0 });
}

#[test]
fn policy_bad_fields_are_reported_with_paths() {
    let cases: &[(&str, &str)] = &[
        ("{id: r, action: deny, cidrs: [10.0.0.300/8]}", "network.connect.rules[0].cidrs[0]"),
        ("{id: r, action: deny, cidrs: [10.0.0.1/8]}", "network.connect.rules[0].cidrs[0]"),
        ("{id: r, action: deny, cidrs: [\"2001:db8::/129\"]}", "network.connect.rules[0].cidrs[0]"),
        ("{id: r, action: deny, cidrs: [example.com]}", "network.connect.rules[0].cidrs[0]"),
        ("{id: r, action: deny, ports: [70000]}", "network.connect.rules[0].ports[0]"),
        ("{id: r, action: deny, ports: [0]}", "network.connect.rules[0].ports[0]"),
        ("{id: r, action: deny, ports: [80, 9000-8000]}", "network.connect.rules[0].ports[1]"),
        ("{id: r, action: deny, ports: [1-70000]}", "network.connect.rules[0].ports[0]"),
        ("{id: r, action: deny, protocols: [tcp, tcp]}", "network.connect.rules[0].protocols[1]"),
        ("{id: \"\", action: deny}", "network.connect.rules[0].id"),
        ("{id: Upper, action: deny}", "network.connect.rules[0].id"),
        ("{id: default, action: deny}", "network.connect.rules[0].id"),
    ];
    for (rule, field) in cases {
        assert_eq!(fields(policy(&rule_doc(rule))), vec![(*field).to_owned()], "rule {rule}");
    }
}

#[test]
fn policy_bad_names_and_labels_are_rejected() {
    let long = "a".repeat(64);
    for name in ["", "Web", "-web", "web-", "we b", long.as_str()] {
        let mut p = doc("name: ok");
        p.name = name.to_owned();
        assert_eq!(fields(policy(&p)), vec!["name"], "name {name:?}");
    }
    let p = doc("name: ok\nlabels: {\"bad key!\": v}");
    assert_eq!(fields(policy(&p)), vec!["labels.bad key!"]);
    let p = doc("name: ok\nnode_selector: {match_labels: {k: \"spaces are bad\"}}");
    assert_eq!(fields(policy(&p)), vec!["node_selector.match_labels.k"]);
}

#[test]
fn policy_duplicate_rule_ids_are_rejected() {
    let p = doc(
        "name: p\nnetwork: {connect: {rules: [{id: a, action: deny}, {id: b, action: allow}, {id: a, action: allow}]}}",
    );
    assert_eq!(fields(policy(&p)), vec!["network.connect.rules[2].id"]);
}

#[test]
fn policy_wrong_enum_values_on_the_wire_are_rejected() {
    let mut p = rule_doc("{id: r, action: deny, protocols: [tcp]}");
    p.mode = 9;
    let connect = p.network.as_mut().and_then(|n| n.connect.as_mut()).expect("connect");
    connect.default = 7;
    connect.rules[0].action = 0;
    connect.rules[0].protocols[0] = 5;
    assert_eq!(
        fields(policy(&p)),
        vec![
            "mode",
            "network.connect.default",
            "network.connect.rules[0].action",
            "network.connect.rules[0].protocols[0]"
        ]
    );
}

#[test]
fn policy_cgroup_paths_are_checked_and_normalised() {
    for bad in ["relative", "/a/../b", "/a//b", "/./a"] {
        let p = doc(&format!("name: p\nworkload: {{cgroup: \"{bad}\"}}"));
        assert_eq!(fields(policy(&p)), vec!["workload.cgroup"], "cgroup {bad:?}");
    }
    let p = policy(&doc("name: p\nworkload: {cgroup: /demo/}")).expect("valid");
    assert_eq!(p.workload.map(|w| w.cgroup).as_deref(), Some("/demo"));
    let root = policy(&doc("name: p\nworkload: {cgroup: /}")).expect("valid");
    let none = policy(&doc("name: p\nnetwork: {}")).expect("valid");
    assert_eq!(root, none, "every-process spellings normalise to one form");
    assert_eq!(root.workload, None);
}

#[test]
fn policy_violations_are_capped() {
    let rules: Vec<String> = (0..500).map(|i| format!("{{id: r{i}, action: deny, ports: [0]}}")).collect();
    let p = doc(&format!("name: p\nnetwork: {{connect: {{rules: [{}]}}}}", rules.join(",")));
    assert_eq!(fields(policy(&p)).len(), MAX_VIOLATIONS);
}

#[test]
fn node_name_allows_dns_subdomains_only() {
    assert!(node_name("node_name", "node-1.example").is_ok());
    assert!(node_name("node_name", "Node_1").is_err());
    assert!(node_name("node_name", "").is_err());
}

#[test]
fn policy_bind_section_is_validated_like_connect_and_shares_rule_ids() {
    let p = doc(
        "name: p\nnetwork:\n  connect: {rules: [{id: a, action: deny}]}\n  bind: {rules: [{id: a, action: deny}, {id: b, action: deny, ports: [70000]}]}",
    );
    assert_eq!(fields(policy(&p)), vec!["network.bind.rules[0].id", "network.bind.rules[1].ports[0]"]);
    let ok = policy(&doc("name: p\nnetwork: {bind: {default: deny, rules: [{id: web, action: allow, ports: [443]}]}}"))
        .expect("valid");
    assert_eq!(ok.network.and_then(|n| n.bind).map(|b| b.default), Some(v1::Action::Deny as i32));
}

#[test]
fn policy_bad_path_rules_are_reported_with_paths() {
    let long = format!("/{}", "a".repeat(251));
    let cases: Vec<(String, &str)> = vec![
        ("exec: {rules: [{id: r, action: deny, paths: [usr/bin/curl]}]}".into(), "exec.rules[0].paths[0]"),
        ("exec: {rules: [{id: r, action: deny, paths: [\"/usr//bin\"]}]}".into(), "exec.rules[0].paths[0]"),
        ("exec: {rules: [{id: r, action: deny, paths: [/usr/../bin]}]}".into(), "exec.rules[0].paths[0]"),
        ("exec: {rules: [{id: r, action: deny, paths: [/usr/./bin]}]}".into(), "exec.rules[0].paths[0]"),
        ("exec: {rules: [{id: r, action: deny, paths: [\"/usr/*/bin\"]}]}".into(), "exec.rules[0].paths[0]"),
        ("exec: {rules: [{id: r, action: deny, paths: [\"/usr/bin/py?\"]}]}".into(), "exec.rules[0].paths[0]"),
        (format!("exec: {{rules: [{{id: r, action: deny, paths: [{long}]}}]}}"), "exec.rules[0].paths[0]"),
        ("exec: {rules: [{id: r, action: deny, access: [read]}]}".into(), "exec.rules[0].access"),
        ("files: {rules: [{id: r, action: deny, access: [read, read]}]}".into(), "files.rules[0].access[1]"),
        ("files: {rules: [{id: r, action: deny, paths: [/x]}, {id: r, action: allow}]}".into(), "files.rules[1].id"),
        ("files: {rules: [{id: Bad, action: deny}]}".into(), "files.rules[0].id"),
    ];
    for (section, field) in &cases {
        let p = doc(&format!("name: p\n{section}\n"));
        assert_eq!(fields(policy(&p)), vec![(*field).to_owned()], "{section}");
    }
    // Unknown access values on the wire.
    let mut p = doc("name: p\nfiles: {rules: [{id: r, action: deny}]}");
    p.files.as_mut().expect("files").rules[0].access = vec![9];
    assert_eq!(fields(policy(&p)), vec!["files.rules[0].access[0]"]);
    // Rule ids are unique across network and path sections.
    let p =
        doc("name: p\nnetwork: {connect: {rules: [{id: r, action: deny}]}}\nexec: {rules: [{id: r, action: deny}]}");
    assert_eq!(fields(policy(&p)), vec!["exec.rules[0].id"]);
}

#[test]
fn policy_valid_path_rules_are_accepted_and_normalised() {
    let p = policy(&doc(
        "name: p\nexec: {rules: [{id: e, action: deny, paths: [/usr/bin/curl, /opt/, \"/usr/bin/py*\", /, \"/*\", \"/home/.*\"]}]}\nfiles: {rules: [{id: f, action: audit, access: [write], paths: [/etc/]}]}",
    ))
    .expect("valid");
    assert_eq!(p.exec.as_ref().map(|e| e.default), Some(v1::Action::Allow as i32));
    assert_eq!(p.files.as_ref().map(|f| f.rules[0].access.clone()), Some(vec![v1::FileAccess::Write as i32]));
}

#[test]
fn connections_are_validated_with_paths_and_normalised() {
    let p = policy(&doc(
        "name: p\nconnections:\n  observe: {}\n  tune:\n    rules:\n      - {id: wan, cidrs: [0.0.0.0/0], ports: [443-443], congestion: cubic, initial_cwnd: 20}\n",
    ))
    .expect("valid");
    let c = p.connections.expect("connections kept");
    assert!(c.observe.expect("observe: {} is kept").rules.is_empty(), "observe: {{}} means every connection");
    assert_eq!(c.tune.expect("tune").rules[0].ports[0], v1::PortRange { first: 443, last: 0 });
    assert_eq!(policy(&doc("name: p\nconnections: {}\n")).expect("valid").connections, None);
    let bad = doc(concat!(
        "name: p\nnetwork: {connect: {rules: [{id: dup, action: deny}]}}\nconnections:\n",
        "  observe: {rules: [{id: dup}, {id: o, cidrs: [10.0.0.1/8], ports: [0]}]}\n",
        "  tune:\n    rules:\n",
        "      - {id: t0}\n",
        "      - {id: t1, congestion: \"Cubic!\"}\n",
        "      - {id: t2, congestion: averyveryverylongname}\n",
        "      - {id: t3, initial_cwnd: 5000}\n",
        "      - {id: default, no_delay: true}\n",
    ));
    assert_eq!(
        fields(policy(&bad)),
        [
            "connections.observe.rules[0].id",
            "connections.observe.rules[1].cidrs[0]",
            "connections.observe.rules[1].ports[0]",
            "connections.tune.rules[0]",
            "connections.tune.rules[1].congestion",
            "connections.tune.rules[2].congestion",
            "connections.tune.rules[3].initial_cwnd",
            "connections.tune.rules[4].id",
        ]
    );
}
