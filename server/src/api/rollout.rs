//! `RolloutService`: which selected nodes enforce a policy revision, read from the policy
//! revisions inside each node's acknowledged bundle (not inferred from generations).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use chrono::{DateTime, Utc};

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
/// Bundles whose policy revisions are kept decoded (bundles are content-addressed: an entry
/// never goes stale).
const BUNDLE_CACHE: usize = 4096;

/// Rollout progress over the store.
#[derive(Debug, Clone)]
pub struct RolloutApi {
    store: Store,
    auth: Auth,
    bundles: Bundles,
    public_key: String,
    secure: bool,
}

impl RolloutApi {
    /// Serves rollouts from `store` to callers `auth` admits as viewers.
    pub fn new(store: Store, auth: Auth, signer: &BundleSigner, secure: bool) -> Self {
        Self { store, auth, bundles: Bundles::default(), public_key: signer.public_key_hex(), secure }
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

/// The policy revisions inside bundles, decoded once per digest and shared by requests.
#[derive(Debug, Clone, Default)]
struct Bundles(Arc<Mutex<HashMap<String, Held>>>);

/// Policy name → revision held in one bundle.
type Held = Arc<HashMap<String, u64>>;

impl Bundles {
    /// The policies bundle `digest` holds; empty for no bundle, and for one the server does
    /// not have (a node restored from elsewhere reports a digest this database never
    /// stored: it holds nothing this rollout knows of).
    async fn held(&self, store: &Store, digest: &str) -> Result<Arc<HashMap<String, u64>>, ApiError> {
        if digest.is_empty() {
            return Ok(Arc::default());
        }
        if let Some(held) = self.0.lock().ok().and_then(|c| c.get(digest).cloned()) {
            return Ok(held);
        }
        let held: Arc<HashMap<String, u64>> = match store.bundle_content(digest).await {
            Ok(content) => Arc::new(content.policies.into_iter().map(|p| (p.name, p.revision)).collect()),
            Err(ApiError::NotFound { .. }) => return Ok(Arc::default()),
            Err(e) => return Err(e),
        };
        if let Ok(mut cache) = self.0.lock() {
            if cache.len() >= BUNDLE_CACHE {
                cache.clear();
            }
            cache.insert(digest.to_owned(), held.clone());
        }
        Ok(held)
    }
}

/// One revision to report on.
struct Target<'a> {
    name: &'a str,
    revision: u64,
    /// Its spec; `None` for a deletion.
    spec: Option<&'a v1::Policy>,
    /// Whose node selector says which nodes it concerns.
    selector: &'a v1::Policy,
    /// When it was committed: a rejection recorded before then is about an older bundle.
    committed: DateTime<Utc>,
}

/// The rollout of `target` over `nodes`.
async fn rollout(
    store: &Store,
    nodes: &[v1::Node],
    bundles: &Bundles,
    target: &Target<'_>,
) -> Result<v1::PolicyRollout, ApiError> {
    let present = target.spec.is_some_and(|p| p.mode != v1::Mode::Disabled as i32);
    let mut out = v1::PolicyRollout {
        policy: target.name.to_owned(),
        revision: target.revision,
        deleted: target.spec.is_none(),
        ..Default::default()
    };
    for node in nodes {
        let selects = model::node_selected(target.selector, &node.labels);
        let enforced = bundles.held(store, &node.applied_digest).await?.get(target.name).copied().unwrap_or(0);
        // A node the revision does not select but that still holds the policy must drop it.
        if !selects && enforced == 0 {
            continue;
        }
        let wanted = selects && present;
        let done = if wanted { enforced >= target.revision } else { enforced == 0 };
        let error = node
            .last_error
            .as_ref()
            .filter(|e| e.at.as_ref().and_then(crate::store::from_timestamp).is_some_and(|at| at >= target.committed));
        let state = match (done, error, node.connected) {
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
        let not_enforced = match target.spec {
            Some(spec) if wanted => super::node::not_enforceable(node, &[(spec.clone(), target.revision)])
                .into_iter()
                .map(|u| format!("{}: {}", u.section, u.reason))
                .collect::<Vec<_>>()
                .join("; "),
            _ => String::new(),
        };
        out.nodes.push(v1::NodeRollout {
            node: node.name.clone(),
            state: state as i32,
            enforced_revision: enforced,
            applied_generation: node.applied_generation,
            desired_generation: node.desired_generation,
            error: if state == v1::RolloutState::Failed {
                error.map(|e| e.message.clone()).unwrap_or_default()
            } else {
                String::new()
            },
            not_enforced,
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
        let mut policies = Vec::new();
        if request.policy.is_empty() {
            let (_, live) = self.store.live_policies().await?;
            let times = self.store.current_revision_times().await?;
            for (policy, revision) in &live {
                let target = Target {
                    name: &policy.name,
                    revision: *revision,
                    spec: Some(policy),
                    selector: policy,
                    committed: times.get(&policy.name).copied().unwrap_or_else(Utc::now),
                };
                let mut r = rollout(&self.store, &nodes, &self.bundles, &target).await?;
                r.nodes.clear();
                policies.push(r);
            }
        } else {
            let (revision, spec, selector, committed) =
                self.store.rollout_target(&request.policy, request.revision).await?;
            let target =
                Target { name: &request.policy, revision, spec: spec.as_ref(), selector: &selector, committed };
            policies.push(rollout(&self.store, &nodes, &self.bundles, &target).await?);
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
