//! Compiling bundles for nodes: the node's policy set (node selector applied), its failsafe
//! list and its kernel's struct offsets go into the compiler; identical inputs share one
//! compiled bundle (compile cache), and every bundle is stored content-addressed.

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use palisade_compiler::{
    Compiled, compile,
    limits::{self, Limits},
    policy::model::{self, Failsafe, PolicySet},
    program::KernelOffsets,
};
use palisade_proto::v1;
use prost::Message as _;

use crate::{
    error::ApiError,
    store::{NodeContext, Store},
};

/// Most distinct compiled bundles kept in memory.
const CACHE_ENTRIES: usize = 256;

/// Offsets used when a node did not report its own (only LSM programs read them).
pub const DEFAULT_OFFSETS: KernelOffsets = KernelOffsets::LINUX_6_12;

/// Lets a test change a bundle after compilation (to hand an agent a bundle its kernel
/// rejects). Never set in production.
pub type BundleMutator = Arc<dyn Fn(&mut v1::BundleContent) + Send + Sync>;

/// A bundle ready to push.
#[derive(Debug)]
pub struct Built {
    /// Hex SHA-256 of `bytes`.
    pub digest: String,
    /// Encoded `BundleContent`, shared by every push of it (reference-counted).
    pub bytes: bytes::Bytes,
}

/// The live policies at one policy generation, shared by every session that builds from it.
#[derive(Debug)]
struct Snapshot {
    generation: u64,
    policies: Arc<Vec<(v1::Policy, u64)>>,
}

/// One cache slot: filled once by whichever caller gets there first; the others wait for it.
type Slot = Arc<tokio::sync::OnceCell<Arc<Built>>>;

/// New policies that share one node selector, checked together.
type Group<'a> = (Option<&'a v1::NodeSelector>, Vec<(v1::Policy, u64)>);

/// A policy set to check: (what it is, policies, failsafe, offsets).
type CheckTarget = (String, Vec<(v1::Policy, u64)>, Vec<Failsafe>, KernelOffsets);

/// Compiles and caches bundles.
#[derive(Clone)]
pub struct Bundler {
    store: Store,
    cache: Arc<Mutex<HashMap<String, Slot>>>,
    /// The newest policy set read, so a generation change costs one read, not one per node.
    snapshot: Arc<tokio::sync::Mutex<Option<Snapshot>>>,
    mutator: Option<BundleMutator>,
    limits: Limits,
    signer: crate::signing::BundleSigner,
}

impl std::fmt::Debug for Bundler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundler").field("mutator", &self.mutator.is_some()).finish_non_exhaustive()
    }
}

/// The failsafe list of a node (§8 of the semantics).
pub fn failsafe(node: &NodeContext) -> Vec<Failsafe> {
    let mut out: Vec<Failsafe> = node
        .endpoints
        .iter()
        .filter_map(|e| e.parse::<SocketAddr>().ok())
        .map(|a| Failsafe { net: Some(a.ip().into()), port: Some(a.port()) })
        .chain(node.ports.iter().filter_map(|p| u16::try_from(*p).ok()).map(|p| Failsafe { net: None, port: Some(p) }))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Kernel offsets reported by the node, or the defaults.
pub fn offsets(features: Option<&v1::KernelFeatures>) -> KernelOffsets {
    KernelOffsets::from_reported(|key| features.and_then(|f| f.btf_offsets.get(key)).copied(), DEFAULT_OFFSETS)
}

/// Compiles a policy set (blocking; call from `spawn_blocking` for large sets).
pub fn compile_set(
    policies: &[(v1::Policy, u64)],
    failsafe: Vec<Failsafe>,
    offsets: KernelOffsets,
) -> Result<(PolicySet, Compiled), ApiError> {
    let set = PolicySet::new(policies.iter().map(|(p, r)| (p, *r)), failsafe)
        .map_err(|e| ApiError::FailedPrecondition(format!("policy cannot be compiled: {e}")))?;
    let compiled =
        compile(&set, offsets).map_err(|e| ApiError::FailedPrecondition(format!("compilation failed: {e}")))?;
    Ok((set, compiled))
}

/// Statistics stored with a bundle.
pub fn stats(compiled: &Compiled) -> serde_json::Value {
    serde_json::json!({
        "programs": compiled.programs.iter().map(|(hook, p)| serde_json::json!({
            "name": hook.symbol(), "section": hook.section(), "instructions": p.insns.len(),
        })).collect::<Vec<_>>(),
        "maps": compiled.content.maps.iter().map(|m| serde_json::json!({
            "name": m.name, "entries": m.filled(), "max_entries": m.max_entries,
        })).collect::<Vec<_>>(),
        "elf_bytes": compiled.content.elf.len(),
    })
}

impl Bundler {
    /// A bundler over `store` enforcing `limits`.
    pub fn new(
        store: Store,
        mutator: Option<BundleMutator>,
        limits: Limits,
        signer: crate::signing::BundleSigner,
    ) -> Self {
        Self {
            store,
            cache: Arc::new(Mutex::new(HashMap::new())),
            snapshot: Arc::new(tokio::sync::Mutex::new(None)),
            mutator,
            limits,
            signer,
        }
    }

    /// `built` as generation `generation` of node `node`, issued now and signed for exactly
    /// that node and generation (the envelope of [`palisade_proto::envelope`]).
    pub fn issue(&self, built: &Built, node: &str, generation: u64) -> v1::Bundle {
        let mut bundle = v1::Bundle {
            generation,
            digest: built.digest.clone(),
            content: built.bytes.clone(),
            signature: Vec::new(),
            node: node.to_owned(),
            issued_at: Some(std::time::SystemTime::now().into()),
        };
        bundle.signature = self.signer.sign(&palisade_proto::envelope(&bundle));
        bundle
    }

    /// The capacity limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Rejects `policies` (one apply or one batch) if they, or the policy set of any
    /// registered node they would join, would compile to a bundle over capacity — so the
    /// failure happens at apply time, with the numbers, never on the node. Each distinct set
    /// is compiled once: the new policies grouped by node selector ("alone"), and each
    /// distinct node context they select.
    pub async fn check_apply(&self, policies: &[v1::Policy]) -> Result<(), ApiError> {
        // The stored policies are read only when a registered node's set must be checked,
        // and then through the per-generation snapshot the Sync streams share: an apply on
        // an empty fleet does not pay for the policies already stored.
        let mut stored: Option<Arc<Vec<(v1::Policy, u64)>>> = None;
        let new: std::collections::HashSet<&str> = policies.iter().map(|p| p.name.as_str()).collect();
        let mut sets: Vec<CheckTarget> = Vec::new();
        let mut groups: Vec<Group<'_>> = Vec::new();
        for policy in policies {
            match groups.iter_mut().find(|(selector, _)| *selector == policy.node_selector.as_ref()) {
                Some((_, members)) => members.push((policy.clone(), 0)),
                None => groups.push((policy.node_selector.as_ref(), vec![(policy.clone(), 0)])),
            }
        }
        for (_, members) in groups {
            let what = match members.as_slice() {
                [_] if policies.len() == 1 => "the policy alone".to_owned(),
                _ => format!("the {} new policies with the same node selector", members.len()),
            };
            sets.push((what, members, Vec::new(), DEFAULT_OFFSETS));
        }
        let mut seen = std::collections::HashSet::new();
        for (name, context) in self.store.node_contexts().await? {
            if !policies.iter().any(|p| model::node_selected(p, &context.labels)) {
                continue;
            }
            let failsafe = failsafe(&context);
            let offsets = offsets(context.features.as_ref());
            // Nodes with the same context hold the same set: check it once.
            if !seen.insert(format!("{:?}|{failsafe:?}|{offsets:?}", context.labels)) {
                continue;
            }
            let live = if let Some(live) = &stored {
                live.clone()
            } else {
                let live = self.policies(self.store.generation().await?).await?;
                stored = Some(live.clone());
                live
            };
            let held: Vec<(v1::Policy, u64)> = live
                .iter()
                .filter(|(p, _)| !new.contains(p.name.as_str()) && model::node_selected(p, &context.labels))
                .cloned()
                .chain(policies.iter().filter(|p| model::node_selected(p, &context.labels)).map(|p| (p.clone(), 0)))
                .collect();
            sets.push((format!("node {name}"), held, failsafe, offsets));
        }
        let limits = self.limits;
        tokio::task::spawn_blocking(move || {
            for (target, policies, failsafe, offsets) in sets {
                let (_, compiled) = compile_set(&policies, failsafe, offsets)?;
                limits::check(&compiled, &limits)
                    .map_err(|e| ApiError::FailedPrecondition(format!("for {target}: {e}")))?;
            }
            Ok(())
        })
        .await
        .map_err(ApiError::Task)?
    }

    /// The live policies at policy generation `at_least` or newer: read once per generation
    /// and shared (callers arriving while it is read wait for that read).
    async fn policies(&self, at_least: u64) -> Result<Arc<Vec<(v1::Policy, u64)>>, ApiError> {
        let mut snapshot = self.snapshot.lock().await;
        if let Some(s) = snapshot.as_ref()
            && s.generation >= at_least
        {
            return Ok(s.policies.clone());
        }
        let (generation, policies) = self.store.live_policies().await?;
        let policies = Arc::new(policies);
        *snapshot = Some(Snapshot { generation, policies: policies.clone() });
        Ok(policies)
    }

    /// The bundle a node with `context` should run at policy generation `at_least` or
    /// newer: compiled once per distinct (policy set, failsafe list, kernel offsets) and
    /// shared by every node with the same inputs, stored once.
    pub async fn for_context(&self, context: &NodeContext, at_least: u64) -> Result<Arc<Built>, ApiError> {
        let policies = self.policies(at_least).await?;
        let failsafe = failsafe(context);
        let offsets = offsets(context.features.as_ref());
        // The key names the inputs; the policies themselves are only copied by the one
        // caller that compiles them.
        let mut key = format!("{offsets:?}|{failsafe:?}");
        for (p, revision) in policies.iter().filter(|(p, _)| model::node_selected(p, &context.labels)) {
            let _ = write!(key, "|{}@{revision}", p.name);
        }
        let slot = {
            let mut cache = self.cache.lock().map_err(|_| ApiError::Corrupt("bundle cache poisoned".into()))?;
            if cache.len() >= CACHE_ENTRIES && !cache.contains_key(&key) {
                cache.clear();
            }
            cache.entry(key).or_default().clone()
        };
        let built = slot
            .get_or_try_init(|| {
                let held: Vec<(v1::Policy, u64)> =
                    policies.iter().filter(|(p, _)| model::node_selected(p, &context.labels)).cloned().collect();
                self.build(held, failsafe, offsets)
            })
            .await?;
        Ok(built.clone())
    }

    /// Compiles, checks and stores one bundle.
    async fn build(
        &self,
        held: Vec<(v1::Policy, u64)>,
        failsafe: Vec<Failsafe>,
        offsets: KernelOffsets,
    ) -> Result<Arc<Built>, ApiError> {
        let mutator = self.mutator.clone();
        let limits = self.limits;
        let (built, stats) = tokio::task::spawn_blocking(move || {
            let (_, compiled) = compile_set(&held, failsafe, offsets)?;
            limits::check(&compiled, &limits).map_err(|e| ApiError::FailedPrecondition(e.to_string()))?;
            let stats = stats(&compiled);
            let mut mutated = compiled.content;
            let bytes = match mutator {
                Some(mutate) => {
                    mutate(&mut mutated);
                    mutated.encode_to_vec()
                }
                None => compiled.bytes,
            };
            Ok::<_, ApiError>((Built { digest: palisade_proto::sha256_hex(&bytes), bytes: bytes.into() }, stats))
        })
        .await
        .map_err(ApiError::Task)??;
        self.store.save_bundle(&built.digest, &built.bytes, stats).await?;
        Ok(Arc::new(built))
    }
}
