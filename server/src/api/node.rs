//! `NodeService`.

use palisade_proto::v1::{self, node_service_server::NodeService};
use tonic::{Request, Response, Status};

use palisade_compiler::policy::model;

use super::{decode_token, encode_token, page_size};
use crate::{
    auth::{Auth, Role},
    error::ApiError,
    store::Store,
    validate,
};

/// Why a node cannot run the sockops program, if it cannot: it must have reported the kernel
/// struct offsets the program walks from a socket to its cgroup.
fn sockops_reason(features: Option<&v1::KernelFeatures>) -> Option<String> {
    match features {
        None => Some("the node has not reported its kernel features".to_owned()),
        Some(f) if !f.sock_ops => Some(format!("sock_ops programs are not available (kernel {})", f.kernel_release)),
        Some(f) if crate::bundler::offsets(Some(f)).sock.is_none() => Some(format!(
            "the node did not report the struct offsets the sockops program needs (kernel BTF; kernel {})",
            f.kernel_release
        )),
        Some(_) => None,
    }
}

/// The sections of `policies` selecting `node` that it cannot enforce: `exec` and `files`
/// need BPF-LSM (semantics §12.5); `connections` sections need the sockops program (§13.5).
pub fn not_enforceable(node: &v1::Node, policies: &[(v1::Policy, u64)]) -> Vec<v1::UnenforceableSection> {
    let features = node.features.as_ref();
    let path_reason = match features {
        Some(f) if f.bpf_lsm && f.bpf_lsm_paths => None,
        Some(f) if f.bpf_lsm => Some(format!(
            "this kernel's BPF-LSM cannot resolve paths (bpf_d_path refused; kernel {})",
            f.kernel_release
        )),
        Some(f) => Some(format!("BPF-LSM is not available on this node (kernel {})", f.kernel_release)),
        None => Some("the node has not reported its kernel features".to_owned()),
    };
    let sockops = sockops_reason(features);
    let labels = node.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut out = Vec::new();
    for (policy, revision) in policies {
        if policy.mode == v1::Mode::Disabled as i32 || !model::node_selected(policy, &labels) {
            continue;
        }
        let connections = policy.connections.as_ref();
        let sections = [
            ("exec", policy.exec.is_some(), path_reason.as_deref()),
            ("files", policy.files.is_some(), path_reason.as_deref()),
            ("connections.observe", connections.is_some_and(|c| c.observe.is_some()), sockops.as_deref()),
            ("connections.tune", connections.is_some_and(|c| c.tune.is_some()), sockops.as_deref()),
        ];
        for (section, present, reason) in sections {
            if let (true, Some(reason)) = (present, reason) {
                out.push(v1::UnenforceableSection {
                    policy: policy.name.clone(),
                    revision: *revision,
                    section: section.to_owned(),
                    reason: reason.to_owned(),
                });
            }
        }
        // A tune rule naming an algorithm the node does not offer (semantics §13.5).
        let offered = features.map_or(&[][..], |f| f.tcp_congestion.as_slice());
        let rules = connections.and_then(|c| c.tune.as_ref()).map_or(&[][..], |t| t.rules.as_slice());
        if sockops.is_none() && !offered.is_empty() {
            for (i, rule) in rules.iter().enumerate() {
                if !rule.congestion.is_empty() && !offered.contains(&rule.congestion) {
                    out.push(v1::UnenforceableSection {
                        policy: policy.name.clone(),
                        revision: *revision,
                        section: format!("connections.tune.rules[{i}].congestion"),
                        reason: format!(
                            "congestion control {:?} is not offered by this node (it offers {}); its connections keep the default algorithm, the rule's other settings apply",
                            rule.congestion,
                            offered.join(" ")
                        ),
                    });
                }
            }
        }
    }
    out
}

/// Node reads over the store.
#[derive(Debug, Clone)]
pub struct NodeApi {
    store: Store,
    auth: Auth,
}

impl NodeApi {
    /// Serves nodes from `store` to callers `auth` admits as viewers.
    pub fn new(store: Store, auth: Auth) -> Self {
        Self { store, auth }
    }
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn list_nodes(
        &self,
        request: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        self.auth.check(&request, Role::Viewer).await?;
        let request = request.into_inner();
        let limit = page_size(request.page_size)?;
        validate::selector("label_selector", &request.label_selector).map_err(ApiError::Invalid)?;
        let after = decode_token("node", &request.page_token)?;
        let (mut nodes, more) = self.store.list_nodes(&request.label_selector, after.as_deref(), limit).await?;
        let (_, policies) = self.store.live_policies().await?;
        for node in &mut nodes {
            node.not_enforceable = not_enforceable(node, &policies);
        }
        let next_page_token = match (more, nodes.last()) {
            (true, Some(last)) => encode_token("node", &last.name),
            _ => String::new(),
        };
        Ok(Response::new(v1::ListNodesResponse { nodes, next_page_token }))
    }

    async fn get_node(&self, request: Request<v1::GetNodeRequest>) -> Result<Response<v1::GetNodeResponse>, Status> {
        self.auth.check(&request, Role::Viewer).await?;
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(ApiError::invalid("name", "must not be empty").into());
        }
        let mut node = self.store.get_node(&request.name).await?;
        let (_, policies) = self.store.live_policies().await?;
        node.not_enforceable = not_enforceable(&node, &policies);
        Ok(Response::new(v1::GetNodeResponse { node: Some(node) }))
    }
}

#[cfg(test)]
mod tests {
    use palisade_proto::document;

    use super::*;

    fn node(bpf_lsm: bool, bpf_lsm_paths: bool) -> v1::Node {
        v1::Node {
            name: "n".into(),
            labels: [("role".to_owned(), "edge".to_owned())].into(),
            features: Some(v1::KernelFeatures {
                kernel_release: "5.10.0".into(),
                bpf_lsm,
                bpf_lsm_paths,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn not_enforceable_lists_path_sections_without_lsm_path_support() {
        let doc = |yaml: &str| document::parse(yaml).expect("parses").to_proto();
        let policies = vec![
            (doc("name: a\nexec: {rules: [{id: e, action: deny, paths: [/x]}]}"), 3),
            (doc("name: b\nnetwork: {connect: {rules: [{id: c, action: deny}]}}"), 1),
            (doc("name: c\nnode_selector: {match_labels: {role: core}}\nfiles: {}"), 1),
            (doc("name: d\nmode: disabled\nfiles: {}"), 1),
            (doc("name: e\nconnections: {observe: {}}"), 2),
            (doc("name: f\nconnections: {tune: {rules: [{id: t, congestion: cubic}]}}"), 1),
        ];
        let listed = |n: &v1::Node| -> Vec<(String, u64, String)> {
            not_enforceable(n, &policies).into_iter().map(|u| (u.policy, u.revision, u.section)).collect()
        };
        let observe = ("e".to_owned(), 2, "connections.observe".to_owned());
        let tune = ("f".to_owned(), 1, "connections.tune".to_owned());
        // The test nodes report no struct offsets: tune cannot run either.
        assert_eq!(listed(&node(true, true)), [observe.clone(), tune.clone()]);
        assert_eq!(listed(&node(false, false)), [("a".to_owned(), 3, "exec".to_owned()), observe.clone(), tune]);
        let mut with_offsets = node(true, true);
        if let Some(f) = with_offsets.features.as_mut() {
            f.sock_ops = true;
            for (i, field) in palisade_contract::btf::FIELDS.iter().enumerate() {
                f.btf_offsets.insert(field.key.to_owned(), 8 * i as u32);
            }
        }
        assert!(not_enforceable(&with_offsets, &policies).is_empty(), "a node with sock_ops and offsets runs both");
        if let Some(f) = with_offsets.features.as_mut() {
            f.tcp_congestion = vec!["reno".to_owned(), "bbr".to_owned()];
        }
        let unoffered = not_enforceable(&with_offsets, &policies);
        let sections: Vec<&str> = unoffered.iter().map(|u| u.section.as_str()).collect();
        assert_eq!(sections, ["connections.tune.rules[0].congestion"]);
        assert!(unoffered[0].reason.contains("\"cubic\" is not offered") && unoffered[0].reason.contains("reno bbr"));
        let partial = not_enforceable(&node(true, false), &policies);
        assert_eq!(partial.len(), 3);
        assert!(partial[0].reason.contains("cannot resolve paths"), "{}", partial[0].reason);
    }
}
