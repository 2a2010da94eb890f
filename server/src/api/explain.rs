//! `ExplainService`: what the kernel would decide for one operation on one node, and why,
//! by the reference evaluator over exactly the policy revisions in the node's bundle.

use std::net::IpAddr;

use palisade_compiler::policy::{
    eval::{self, Decision, ReportKind, RuleName},
    model::{self, ACCESS_READ, ACCESS_WRITE, Operation, PolicySet},
};
use palisade_contract::hook::Hook;
use palisade_proto::v1::{self, explain_request::Operation as Op, explain_service_server::ExplainService};
use tonic::{Request, Response, Status};

use crate::{
    auth::{Auth, Role},
    bundler,
    error::{ApiError, Violation},
    store::Store,
    validate,
};

/// Longest path an explain request may carry (the kernel's `PATH_MAX`).
const MAX_PATH: usize = 4096;

/// Explains decisions over the store.
#[derive(Debug, Clone)]
pub struct ExplainApi {
    store: Store,
    auth: Auth,
}

impl ExplainApi {
    /// Serves explanations from `store` to callers `auth` admits as viewers.
    pub fn new(store: Store, auth: Auth) -> Self {
        Self { store, auth }
    }
}

/// A checked request: the operation as the evaluator takes it.
#[derive(Debug)]
enum Checked {
    Network(eval::Attempt),
    Path(eval::PathAttempt),
}

impl Checked {
    fn operation(&self) -> Operation {
        match self {
            Self::Network(a) => a.operation,
            Self::Path(a) => a.operation,
        }
    }
}

fn check_path(violations: &mut Vec<Violation>, field: &str, path: &str) {
    if path.is_empty() {
        violations.push(Violation::new(field, "must not be empty"));
    } else if !path.starts_with('/') {
        violations.push(Violation::new(field, format!("{path:?} must be absolute")));
    } else if path.len() > MAX_PATH {
        violations.push(Violation::new(field, format!("is {} bytes, the limit is {MAX_PATH}", path.len())));
    } else if path.contains('\0') {
        violations.push(Violation::new(field, "must not contain NUL bytes"));
    }
}

/// Checks the request, with every problem's field path.
fn check(request: &v1::ExplainRequest) -> Result<Checked, Vec<Violation>> {
    let mut violations = validate::node_name("node", &request.node).err().unwrap_or_default();
    let cgroup = match validate::cgroup("cgroup", &request.cgroup) {
        Ok(path) => model::cgroup_components(&path),
        Err(v) => {
            violations.extend(v);
            Vec::new()
        }
    };
    let uid = request.uid;
    let checked = match &request.operation {
        None => {
            violations.push(Violation::new("operation", "give one of connect, bind, exec, open"));
            None
        }
        Some(Op::Connect(n) | Op::Bind(n)) => {
            let (operation, field) = match &request.operation {
                Some(Op::Connect(_)) => (Operation::Connect, "connect"),
                _ => (Operation::Bind, "bind"),
            };
            let protocol = match v1::Protocol::try_from(n.protocol) {
                Ok(v1::Protocol::Tcp) => Some(model::Protocol::Tcp),
                Ok(v1::Protocol::Udp) => Some(model::Protocol::Udp),
                _ => {
                    violations.push(Violation::new(format!("{field}.protocol"), "must be tcp or udp"));
                    None
                }
            };
            let addr = n.address.parse::<IpAddr>().ok();
            if addr.is_none() {
                let what = format!("{:?} is not an IPv4 or IPv6 address", n.address);
                violations.push(Violation::new(format!("{field}.address"), what));
            }
            let port = u16::try_from(n.port).ok();
            if port.is_none() {
                violations.push(Violation::new(format!("{field}.port"), format!("{} is above 65535", n.port)));
            }
            match (protocol, addr, port) {
                (Some(protocol), Some(addr), Some(port)) => Some(Checked::Network(eval::Attempt {
                    operation,
                    cgroup: cgroup.clone(),
                    uid,
                    addr,
                    port,
                    protocol,
                })),
                _ => None,
            }
        }
        Some(Op::Exec(e)) => {
            check_path(&mut violations, "exec.path", &e.path);
            Some(Checked::Path(eval::PathAttempt {
                operation: Operation::Exec,
                cgroup: cgroup.clone(),
                uid,
                path: e.path.as_bytes().to_vec(),
                access: ACCESS_READ,
            }))
        }
        Some(Op::Open(o)) => {
            check_path(&mut violations, "open.path", &o.path);
            if o.access.len() > 2 {
                violations.push(Violation::new(
                    "open.access",
                    format!("{} entries; give read, write or both", o.access.len()),
                ));
            }
            let mut access = 0;
            for (i, a) in o.access.iter().enumerate().take(2) {
                match v1::FileAccess::try_from(*a) {
                    Ok(v1::FileAccess::Read) => access |= ACCESS_READ,
                    Ok(v1::FileAccess::Write) => access |= ACCESS_WRITE,
                    _ => violations.push(Violation::new(format!("open.access[{i}]"), "must be read or write")),
                }
            }
            if o.access.is_empty() {
                violations.push(Violation::new("open.access", "give read, write or both"));
            }
            Some(Checked::Path(eval::PathAttempt {
                operation: Operation::Files,
                cgroup: cgroup.clone(),
                uid,
                path: o.path.as_bytes().to_vec(),
                access,
            }))
        }
    };
    match checked {
        Some(c) if violations.is_empty() => Ok(c),
        _ => Err(violations),
    }
}

fn evaluate(set: &PolicySet, checked: &Checked) -> Decision {
    match checked {
        Checked::Network(a) => eval::evaluate(set, a),
        Checked::Path(a) => eval::evaluate_path(set, a),
    }
}

fn rule_id(policy: &model::Policy, op: Operation, rule: RuleName) -> String {
    match rule {
        RuleName::Rule(i) => policy.rule_id(op, i).unwrap_or("unknown").to_owned(),
        RuleName::Default => "default".to_owned(),
    }
}

/// Why `policy` takes no part in `checked`, if it does not.
fn not_applying(policy: &model::Policy, checked: &Checked) -> Option<String> {
    let op = checked.operation();
    if policy.default_of(op).is_none() {
        return Some(format!("no {} section", op.section_path()));
    }
    let (cgroup, uid) = match checked {
        Checked::Network(a) => (&a.cgroup, a.uid),
        Checked::Path(a) => (&a.cgroup, a.uid),
    };
    if !cgroup.starts_with(&policy.cgroup) {
        return Some(format!("cgroup not selected (the policy selects /{})", policy.cgroup.join("/")));
    }
    if policy.uid.is_some_and(|u| u != uid) {
        return Some(format!("uid not selected (the policy selects uid {})", policy.uid.unwrap_or_default()));
    }
    None
}

/// The hook that would make the decision on a node with `features`.
fn hook(features: Option<&v1::KernelFeatures>, checked: &Checked) -> Hook {
    let lsm = features.is_some_and(|f| f.bpf_lsm);
    match checked {
        Checked::Network(a) => match (a.operation, lsm, a.addr.is_ipv4()) {
            (Operation::Connect, true, _) => Hook::LsmSocketConnect,
            (Operation::Connect, false, true) => Hook::Connect4,
            (Operation::Connect, false, false) => Hook::Connect6,
            (_, true, _) => Hook::LsmSocketBind,
            (_, false, true) => Hook::Bind4,
            (_, false, false) => Hook::Bind6,
        },
        Checked::Path(a) if a.operation == Operation::Exec => Hook::LsmExec,
        Checked::Path(_) => Hook::LsmFileOpen,
    }
}

fn verdict_of(decision: &Decision) -> (v1::Verdict, bool) {
    match decision.report.map(|r| r.kind) {
        _ if decision.verdict == eval::Verdict::Deny => (v1::Verdict::Deny, false),
        Some(ReportKind::WouldDeny) => (v1::Verdict::Audit, true),
        Some(ReportKind::Audit) => (v1::Verdict::Audit, false),
        Some(ReportKind::Deny) | None => (v1::Verdict::Allow, false),
    }
}

/// The explanation of `checked` over `set` on a node with `features`.
fn explain(set: &PolicySet, features: Option<&v1::KernelFeatures>, checked: &Checked) -> v1::ExplainResponse {
    let op = checked.operation();
    let decision = evaluate(set, checked);
    let failsafe = match checked {
        Checked::Network(a) => {
            a.operation == Operation::Connect && set.failsafe.iter().any(|f| f.covers(a.addr, a.port))
        }
        Checked::Path(_) => false,
    };
    let policies = set
        .policies
        .iter()
        .enumerate()
        .map(|(index, policy)| {
            let reason = not_applying(policy, checked);
            let alone = PolicySet { policies: vec![policy.clone()], failsafe: Vec::new() };
            let own = evaluate(&alone, checked);
            let (verdict, would_deny) = verdict_of(&own);
            v1::PolicyOutcome {
                policy: policy.name.clone(),
                revision: policy.revision,
                mode: match policy.mode {
                    model::Mode::Enforce => v1::Mode::Enforce,
                    model::Mode::Audit => v1::Mode::Audit,
                } as i32,
                applies: reason.is_none(),
                reason: reason.unwrap_or_default(),
                verdict: verdict as i32,
                rule_id: own.report.map(|r| rule_id(policy, op, r.rule)).unwrap_or_default(),
                would_deny,
                decides: decision.report.is_some_and(|r| r.policy == index),
            }
        })
        .collect();
    let (verdict, would_deny) = verdict_of(&decision);
    let hook = hook(features, checked);
    let lsm = features.is_some_and(|f| f.bpf_lsm);
    let paths = features.is_some_and(|f| f.bpf_lsm_paths);
    let not_enforced = match op {
        Operation::Exec | Operation::Files if !(lsm && paths) => {
            "this node does not enforce exec and files sections (they need BPF-LSM with path resolution)".to_owned()
        }
        _ => String::new(),
    };
    let event = decision.report.filter(|_| not_enforced.is_empty()).map(|report| {
        let policy = &set.policies[report.policy];
        let mut event = v1::DecisionEvent {
            policy: policy.name.clone(),
            revision: policy.revision,
            rule_id: rule_id(policy, op, report.rule),
            verdict: verdict as i32,
            hook: hook.section().to_owned(),
            would_deny,
            ..Default::default()
        };
        match checked {
            Checked::Network(a) => {
                event.address = a.addr.to_string();
                event.port = u32::from(a.port);
                event.protocol = match a.protocol {
                    model::Protocol::Tcp => v1::Protocol::Tcp,
                    model::Protocol::Udp => v1::Protocol::Udp,
                } as i32;
                event.uid = a.uid;
            }
            Checked::Path(a) => {
                event.path = String::from_utf8_lossy(&a.path).into_owned();
                event.uid = a.uid;
                if a.operation == Operation::Files {
                    for (bit, access) in [(ACCESS_READ, v1::FileAccess::Read), (ACCESS_WRITE, v1::FileAccess::Write)] {
                        if a.access & bit != 0 {
                            event.access.push(access as i32);
                        }
                    }
                }
            }
        }
        event
    });
    let verdict = if not_enforced.is_empty() { verdict } else { v1::Verdict::Allow };
    v1::ExplainResponse { verdict: verdict as i32, event, policies, failsafe, not_enforced, ..Default::default() }
}

#[tonic::async_trait]
impl ExplainService for ExplainApi {
    async fn explain(&self, request: Request<v1::ExplainRequest>) -> Result<Response<v1::ExplainResponse>, Status> {
        self.auth.check(&request, Role::Viewer).await?;
        let request = request.into_inner();
        let checked = check(&request).map_err(ApiError::Invalid)?;
        let node = self.store.get_node(&request.node).await?;
        let (generation, digest, acknowledged) = if node.applied_digest.is_empty() {
            (node.desired_generation, node.desired_digest.clone(), false)
        } else {
            (node.applied_generation, node.applied_digest.clone(), true)
        };
        if digest.is_empty() {
            return Err(ApiError::NotFound { kind: "bundle of node", name: request.node }.into());
        }
        let content = self.store.bundle_content(&digest).await?;
        let revisions: Vec<(String, u64)> = content.policies.iter().map(|p| (p.name.clone(), p.revision)).collect();
        let policies = self.store.policy_revisions(&revisions).await?;
        let node_context = self.store.node_context(&request.node).await?;
        let set = PolicySet::new(policies.iter().map(|(p, r)| (p, *r)), bundler::failsafe(&node_context))
            .map_err(|e| ApiError::Corrupt(format!("bundle {digest}: {e}")))?;
        let mut response = explain(&set, node.features.as_ref(), &checked);
        response.node = request.node;
        response.generation = generation;
        response.digest.clone_from(&digest);
        response.acknowledged = acknowledged;
        if let Some(event) = response.event.as_mut() {
            event.node.clone_from(&response.node);
            event.bundle_digest = digest;
        }
        Ok(Response::new(response))
    }
}
