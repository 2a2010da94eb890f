//! `RolloutService`: which selected nodes enforce a policy revision, read from the policy
//! revisions inside each node's acknowledged bundle (not inferred from generations).

use std::collections::HashMap;

use palisade_compiler::policy::model;
use palisade_proto::v1::{self, rollout_service_server::RolloutService};
use tonic::{Request, Response, Status};

use crate::{
    auth::{Auth, Role},
    error::ApiError,
    signing::BundleSigner,
    store::Store,
};

/// Nodes read per page while computing a rollout.
const NODE_PAGE: u32 = 1000;

/// Rollout progress over the store.
#[derive(Debug, Clone)]
pub struct RolloutApi {
    store: Store,
    auth: Auth,
    public_key: String,
    secure: bool,
}

impl RolloutApi {
    /// Serves rollouts from `store` to callers `auth` admits as viewers.
    pub fn new(store: Store, auth: Auth, signer: &BundleSigner, secure: bool) -> Self {
        Self { store, auth, public_key: signer.public_key_hex(), secure }
    }

    async fn all_nodes(&self) -> Result<Vec<v1::Node>, ApiError> {
        let mut nodes = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (page, more) =
                self.store.list_nodes(&std::collections::BTreeMap::new(), after.as_deref(), NODE_PAGE).await?;
            after = page.last().map(|n| n.name.clone());
            nodes.extend(page);
            if !more {
                return Ok(nodes);
            }
        }
    }
}

/// Policy revisions in bundles, decoded once per digest.
#[derive(Default)]
struct Bundles(HashMap<String, HashMap<String, u64>>);

impl Bundles {
    async fn revision_of(&mut self, store: &Store, digest: &str, policy: &str) -> Result<u64, ApiError> {
        if digest.is_empty() {
            return Ok(0);
        }
        if !self.0.contains_key(digest) {
            let content = store.bundle_content(digest).await?;
            let held = content.policies.into_iter().map(|p| (p.name, p.revision)).collect();
            self.0.insert(digest.to_owned(), held);
        }
        Ok(self.0.get(digest).and_then(|h| h.get(policy)).copied().unwrap_or(0))
    }
}

/// The rollout of `name` at `revision`: `target` is its spec (`None`: a deletion) and
/// `selector` decides which nodes it concerns.
async fn rollout(
    store: &Store,
    nodes: &[v1::Node],
    bundles: &mut Bundles,
    name: &str,
    revision: u64,
    target: Option<&v1::Policy>,
    selector: &v1::Policy,
) -> Result<v1::PolicyRollout, ApiError> {
    let present = target.is_some_and(|p| p.mode != v1::Mode::Disabled as i32);
    let mut out =
        v1::PolicyRollout { policy: name.to_owned(), revision, deleted: target.is_none(), ..Default::default() };
    for node in nodes {
        let labels = node.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let selects = model::node_selected(selector, &labels);
        let enforced = bundles.revision_of(store, &node.applied_digest, name).await?;
        // A node the revision does not select but that still holds the policy must drop it.
        if !selects && enforced == 0 {
            continue;
        }
        let wanted = selects && present;
        let done = if wanted { enforced >= revision } else { enforced == 0 };
        let error = node.last_error.as_ref().map(|e| e.message.clone());
        let state = match (done, &error, node.connected) {
            (true, _, _) => v1::RolloutState::Applied,
            (false, Some(_), _) => v1::RolloutState::Failed,
            (false, None, false) => v1::RolloutState::Disconnected,
            (false, None, true) => v1::RolloutState::Pending,
        };
        out.selected += 1;
        match state {
            v1::RolloutState::Applied => out.applied += 1,
            v1::RolloutState::Failed => out.failed += 1,
            v1::RolloutState::Disconnected => out.disconnected += 1,
            _ => out.pending += 1,
        }
        out.nodes.push(v1::NodeRollout {
            node: node.name.clone(),
            state: state as i32,
            enforced_revision: enforced,
            applied_generation: node.applied_generation,
            desired_generation: node.desired_generation,
            error: if state == v1::RolloutState::Failed { error.unwrap_or_default() } else { String::new() },
        });
    }
    Ok(out)
}

#[tonic::async_trait]
impl RolloutService for RolloutApi {
    async fn get_rollout(
        &self,
        request: Request<v1::GetRolloutRequest>,
    ) -> Result<Response<v1::GetRolloutResponse>, Status> {
        self.auth.check(&request, Role::Viewer).await?;
        let request = request.into_inner();
        if request.policy.is_empty() && request.revision.is_some() {
            return Err(ApiError::invalid("revision", "only with policy").into());
        }
        let nodes = self.all_nodes().await?;
        let mut bundles = Bundles::default();
        let mut policies = Vec::new();
        if request.policy.is_empty() {
            let (_, live) = self.store.live_policies().await?;
            for (policy, revision) in &live {
                let mut r =
                    rollout(&self.store, &nodes, &mut bundles, &policy.name, *revision, Some(policy), policy).await?;
                r.nodes.clear();
                policies.push(r);
            }
        } else {
            let (revision, target, selector) = self.store.rollout_target(&request.policy, request.revision).await?;
            policies.push(
                rollout(&self.store, &nodes, &mut bundles, &request.policy, revision, target.as_ref(), &selector)
                    .await?,
            );
        }
        Ok(Response::new(v1::GetRolloutResponse { policies }))
    }

    async fn get_server_info(
        &self,
        request: Request<v1::GetServerInfoRequest>,
    ) -> Result<Response<v1::ServerInfo>, Status> {
        self.auth.check(&request, Role::Viewer).await?;
        Ok(Response::new(v1::ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            bundle_public_key: self.public_key.clone(),
            secure: self.secure,
        }))
    }
}
