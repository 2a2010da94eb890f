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
    bundle::{Compiled, compile},
    codegen::KernelOffsets,
    model::{self, Failsafe, PolicySet},
};
use palisade_proto::v1;
use prost::Message as _;

use crate::{
    error::ApiError,
    store::{NodeContext, Store},
};

/// Most distinct compiled bundles kept in memory.
const CACHE_ENTRIES: usize = 256;

/// Offsets used when a node did not report its own (only LSM programs read them; these are
/// the values of every kernel since 2.6 for `socket.type`).
pub const DEFAULT_OFFSETS: KernelOffsets = KernelOffsets { socket_type: 4 };

/// Lets a test change a bundle after compilation (to hand an agent a bundle its kernel
/// rejects). Never set in production.
pub type BundleMutator = Arc<dyn Fn(&mut v1::BundleContent) + Send + Sync>;

/// A bundle ready to push.
#[derive(Debug)]
pub struct Built {
    /// Hex SHA-256 of `bytes`.
    pub digest: String,
    /// Encoded `BundleContent`.
    pub bytes: Vec<u8>,
}

/// Compiles and caches bundles.
#[derive(Clone)]
pub struct Bundler {
    store: Store,
    cache: Arc<Mutex<HashMap<String, Arc<Built>>>>,
    mutator: Option<BundleMutator>,
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
    let reported = features.and_then(|f| f.btf_offsets.get(KernelOffsets::SOCKET_TYPE)).copied();
    KernelOffsets { socket_type: reported.unwrap_or(DEFAULT_OFFSETS.socket_type) }
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
            "name": m.name, "entries": m.entries.len(), "max_entries": m.max_entries,
        })).collect::<Vec<_>>(),
        "elf_bytes": compiled.content.elf.len(),
    })
}

impl Bundler {
    /// A bundler over `store`.
    pub fn new(store: Store, mutator: Option<BundleMutator>) -> Self {
        Self { store, cache: Arc::new(Mutex::new(HashMap::new())), mutator }
    }

    /// The bundle `node` should run now.
    pub async fn for_node(&self, node: &str) -> Result<Arc<Built>, ApiError> {
        let context = self.store.node_context(node).await?;
        let (_generation, policies) = self.store.live_policies().await?;
        let held: Vec<(v1::Policy, u64)> =
            policies.into_iter().filter(|(p, _)| model::node_selected(p, &context.labels)).collect();
        let failsafe = failsafe(&context);
        let offsets = offsets(context.features.as_ref());
        let mut key = format!("{offsets:?}|{failsafe:?}");
        for (p, revision) in &held {
            let _ = write!(key, "|{}@{revision}", p.name);
        }
        if let Some(built) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(built);
        }
        let mutator = self.mutator.clone();
        let (built, stats) = tokio::task::spawn_blocking(move || {
            let (_, compiled) = compile_set(&held, failsafe, offsets)?;
            let stats = stats(&compiled);
            let mut mutated = compiled.content;
            let bytes = match mutator {
                Some(mutate) => {
                    mutate(&mut mutated);
                    mutated.encode_to_vec()
                }
                None => compiled.bytes,
            };
            Ok::<_, ApiError>((Built { digest: palisade_proto::sha256_hex(&bytes), bytes }, stats))
        })
        .await
        .map_err(|e| ApiError::FailedPrecondition(format!("compiler task failed: {e}")))??;
        self.store.save_bundle(&built.digest, &built.bytes, stats).await?;
        let built = Arc::new(built);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key, built.clone());
        }
        Ok(built)
    }
}
