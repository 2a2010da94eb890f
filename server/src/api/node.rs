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

/// The sections of `policies` selecting `node` that its kernel cannot enforce: `exec` and
/// `files` need BPF-LSM (semantics §12.5).
pub fn not_enforceable(node: &v1::Node, policies: &[(v1::Policy, u64)]) -> Vec<v1::UnenforceableSection> {
    let features = node.features.as_ref();
    let reason = match features {
        Some(f) if f.bpf_lsm && f.bpf_lsm_paths => return Vec::new(),
        Some(f) if f.bpf_lsm => {
            format!("this kernel's BPF-LSM cannot resolve paths (bpf_d_path refused; kernel {})", f.kernel_release)
        }
        Some(f) => format!("BPF-LSM is not available on this node (kernel {})", f.kernel_release),
        None => "the node has not reported its kernel features".to_owned(),
    };
    let labels = node.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut out = Vec::new();
    for (policy, revision) in policies {
        if policy.mode == v1::Mode::Disabled as i32 || !model::node_selected(policy, &labels) {
            continue;
        }
        for (section, present) in [("exec", policy.exec.is_some()), ("files", policy.files.is_some())] {
            if present {
                out.push(v1::UnenforceableSection {
                    policy: policy.name.clone(),
                    revision: *revision,
                    section: section.to_owned(),
                    reason: reason.clone(),
                });
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
        ];
        let listed = |n: &v1::Node| -> Vec<(String, u64, String)> {
            not_enforceable(n, &policies).into_iter().map(|u| (u.policy, u.revision, u.section)).collect()
        };
        assert!(listed(&node(true, true)).is_empty());
        assert_eq!(listed(&node(false, false)), [("a".to_owned(), 3, "exec".to_owned())]);
        let partial = not_enforceable(&node(true, false), &policies);
        assert_eq!(partial.len(), 1);
        assert!(partial[0].reason.contains("cannot resolve paths"), "{}", partial[0].reason);
    }
}
