//! The datapath: loads bundles into the kernel, swaps generations without a gap, keeps the
//! cgroup map current and reads decision events.
//!
//! Everything it creates is pinned under the bpffs directory, so enforcement survives the
//! agent: `links/<program>` are the stable cgroup links, `gen-<generation>-<digest>/` holds a
//! generation's programs and maps, and `<state_dir>/active.bundle` records which generation
//! the links run. A restarted agent adopts that state instead of reloading anything.
//! All calls here are blocking syscalls: run them on the datapath thread.

use std::{
    collections::BTreeMap,
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, RawFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    EbpfLoader, VerifierLogLevel,
    maps::{Map, MapData, RingBuf},
    programs::ProgramError,
};
use palisade_contract::{HookSpec, Operation, map};
use palisade_proto::v1;
use prost::Message as _;

use crate::{
    error_chain, events,
    sys::{self, MapFd, ProgFd},
};

mod attach;
mod recover;
mod verify;

pub use attach::Enforcement;
use attach::Strategy;
pub use verify::{Malformed, verify};

/// Where the datapath keeps things.
#[derive(Debug, Clone)]
pub struct Paths {
    /// bpffs directory for pins (e.g. /sys/fs/bpf/palisade).
    pub bpffs: PathBuf,
    /// Directory for the agent's state file.
    pub state_dir: PathBuf,
    /// cgroup2 mount point.
    pub cgroup2: PathBuf,
    /// cgroup directory the cgroup programs attach to (its subtree is covered).
    pub attach: PathBuf,
}

impl Paths {
    fn links(&self) -> PathBuf {
        self.bpffs.join("links")
    }

    /// Maps every generation shares (role `Shared`), pinned by name.
    fn shared(&self) -> PathBuf {
        self.bpffs.join("shared")
    }

    fn state_file(&self) -> PathBuf {
        self.state_dir.join("active.bundle")
    }

    /// Where each staged generation's bundle is recorded.
    fn generations(&self) -> PathBuf {
        self.state_dir.join("generations")
    }

    /// The recorded bundle of generation directory `gen_dir`.
    fn bundle_file(&self, gen_dir: &Path) -> PathBuf {
        let mut name = gen_dir.file_name().unwrap_or_default().to_owned();
        name.push(".bundle");
        self.generations().join(name)
    }
}

/// Why a bundle was not (or not entirely) applied. The NACK carries its message with every
/// source ([`crate::error_chain`]).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The content does not hash to the digest.
    #[error("bundle digest mismatch: content hashes to {actual}, bundle says {expected}")]
    Digest {
        /// Announced digest.
        expected: String,
        /// Computed digest.
        actual: String,
    },
    /// The signature does not verify against the pinned public key.
    #[error("bundle signature does not verify against the pinned public key")]
    Signature,
    /// The bundle was issued for another node.
    #[error("bundle was issued for node {bundle:?}, this is node {node:?}")]
    WrongNode {
        /// The node the bundle names.
        bundle: String,
        /// This node.
        node: String,
    },
    /// The bundle is older than the generation enforced (a replay or a downgrade), or has
    /// the enforced generation's number with other content.
    #[error(
        "bundle generation {generation} ({digest}) is not newer than the enforced generation {enforced} ({enforced_digest})"
    )]
    Stale {
        /// The bundle's generation.
        generation: u64,
        /// Its digest.
        digest: String,
        /// The generation enforced.
        enforced: u64,
        /// Its digest.
        enforced_digest: String,
    },
    /// The content is not a `BundleContent`.
    #[error("bundle content does not decode")]
    Decode(#[source] prost::DecodeError),
    /// The content is a format this agent does not read.
    #[error("bundle format {format} (this agent reads formats {readable:?})")]
    Format {
        /// The bundle's format.
        format: u32,
        /// The formats this agent reads.
        readable: &'static [u32],
    },
    /// The content contradicts itself or its ELF (found before any `bpf()` call).
    #[error("bundle is malformed")]
    Malformed(#[from] Malformed),
    /// aya could not create the ELF's maps or relocate its programs.
    #[error("loading the bundle's ELF failed")]
    Elf(#[source] aya::EbpfError),
    /// aya refused an operation on a program.
    #[error("{what} {program}")]
    Program {
        /// What was being done.
        what: &'static str,
        /// Program name.
        program: String,
        /// Cause.
        #[source]
        source: ProgramError,
    },
    /// An attached program's link is not a `bpf_link`.
    #[error("the link of {program} is not a bpf_link")]
    Link {
        /// Program name.
        program: String,
        /// Cause.
        #[source]
        source: aya::programs::links::LinkError,
    },
    /// Pinning a program, map or link failed.
    #[error("pinning {what}")]
    Pin {
        /// What was pinned.
        what: String,
        /// Cause.
        #[source]
        source: aya::pin::PinError,
    },
    /// Reopening the pinned events map failed.
    #[error("opening the events map")]
    Events(#[source] aya::maps::MapError),
    /// The kernel's BTF, which BPF-LSM programs need, cannot be read.
    #[error("not enforceable on this node: kernel BTF")]
    KernelBtf(#[source] aya::BtfError),
    /// The verifier rejected a program.
    #[error("the kernel rejected program {program}: {error}\nverifier log:\n{log}")]
    Verifier {
        /// Program name.
        program: String,
        /// Syscall error.
        error: String,
        /// Verifier log.
        log: String,
    },
    /// The active generation's pins are gone (bpffs unmounted or the pins removed).
    #[error("the pins of the active generation ({}) are gone", dir.display())]
    Vanished {
        /// Its directory.
        dir: PathBuf,
    },
    /// After a swap, a hook does not run the program the agent put there.
    #[error("the kernel runs program id {running} on {program}, not the staged {staged}")]
    NotEnforcing {
        /// Program name.
        program: String,
        /// What the link runs.
        running: u32,
        /// What was staged.
        staged: u32,
    },
    /// A pin, link or map operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LoadError {
    let what = what.into();
    move |source| LoadError::Io { what, source }
}

/// The generation the links currently run.
pub struct Active {
    /// The bundle as received.
    pub bundle: v1::Bundle,
    /// Its decoded content.
    pub content: v1::BundleContent,
    gen_dir: PathBuf,
    /// Per cgroups map (one per policy section): the map and the ids it holds by path.
    cgroup_maps: BTreeMap<String, (MapFd, BTreeMap<String, u64>)>,
    events: Option<RingBuf<MapData>>,
    /// `pal_lost`: records the ring buffer had no room for.
    lost: Option<MapFd>,
    /// `pal_flowstat`: the sockops program's counters.
    flow_stats: Option<MapFd>,
    /// Its rule table and tag, to attribute flow records.
    table: (u32, std::sync::Arc<events::RuleTable>),
}

impl Active {
    /// A generation whose maps are not opened yet.
    fn new(bundle: v1::Bundle, content: v1::BundleContent, gen_dir: PathBuf) -> Self {
        let (tag, table) = events::RuleTable::of(&content);
        Self {
            bundle,
            content,
            gen_dir,
            cgroup_maps: BTreeMap::new(),
            events: None,
            lost: None,
            flow_stats: None,
            table: (tag, std::sync::Arc::new(table)),
        }
    }

    /// Its sockops counters: `[tune refused, untracked]`.
    fn flow_stats(&self) -> [u64; 2] {
        let read = |i| self.flow_stats.as_ref().and_then(|m| m.lookup_u64(i).ok().flatten()).unwrap_or(0);
        [read(map::FLOW_STAT_TUNE_REFUSED), read(map::FLOW_STAT_UNTRACKED)]
    }

    /// Records this generation's programs could not write to its ring buffer so far.
    fn lost(&self) -> u64 {
        self.lost.as_ref().and_then(|m| m.lookup_u64(0).ok().flatten()).unwrap_or(0)
    }
}

impl std::fmt::Debug for Active {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Active")
            .field("generation", &self.bundle.generation)
            .field("digest", &self.bundle.digest)
            .field("gen_dir", &self.gen_dir)
            .finish_non_exhaustive()
    }
}

/// The datapath state.
#[derive(Debug)]
pub struct Datapath {
    paths: Paths,
    active: Option<Active>,
    clock_offset: i128,
    /// How each family's programs reach their hooks (chosen once, from [`Enforcement`]).
    strategies: Vec<Box<dyn Strategy>>,
    public_key: Option<ed25519_dalek::VerifyingKey>,
    /// The node bundles must be issued for (`None`: not checked).
    node: Option<String>,
    /// Array maps filled element by element because the kernel refused
    /// `BPF_MAP_UPDATE_BATCH` (for tests and diagnostics).
    batch_fallbacks: std::sync::atomic::AtomicU64,
    /// Ring-buffer records that did not decode.
    undecodable: std::sync::atomic::AtomicU64,
    /// Records released generations could not write to their ring buffers.
    lost_retired: std::sync::atomic::AtomicU64,
    /// Closed connections decoded from the ring buffers, until [`Datapath::take_flows`].
    flows: FlowSink,
    /// `pal_flowstat` counters of released generations (tune refused, untracked).
    flow_stats_retired: [std::sync::atomic::AtomicU64; 2],
}

/// Most decoded flow records the datapath holds before the agent takes them; beyond it they
/// are counted in [`FlowSink::dropped`].
pub const MAX_PENDING_FLOWS: usize = 8192;

/// Rule tables of generations recently run, by tag (flow records of connections opened under
/// an earlier generation carry its tag).
const FLOW_TABLES: usize = 16;

/// Decoded flow records and what attributes them.
#[derive(Debug, Default)]
struct FlowSink {
    tables: std::collections::VecDeque<(u32, std::sync::Arc<events::RuleTable>)>,
    pending: Vec<events::Flow>,
    /// Records not kept because `pending` was full.
    dropped: u64,
}

impl FlowSink {
    fn remember(&mut self, (tag, table): &(u32, std::sync::Arc<events::RuleTable>)) {
        if self.tables.front().is_some_and(|(t, _)| t == tag) {
            return;
        }
        self.tables.retain(|(t, _)| t != tag);
        self.tables.push_front((*tag, table.clone()));
        self.tables.truncate(FLOW_TABLES);
    }

    fn table(&self, tag: u32) -> Option<std::sync::Arc<events::RuleTable>> {
        self.tables.iter().find(|(t, _)| *t == tag).map(|(_, table)| table.clone())
    }
}

/// What an enforcing generation keeps of its content: everything but the ELF and the map
/// elements, which are in the kernel once loaded (a restore decodes the bundle again). For
/// 10,000 rules that is ~200,000 elements the agent no longer holds.
fn retained(content: &v1::BundleContent) -> v1::BundleContent {
    v1::BundleContent {
        format: content.format,
        elf: Vec::new(),
        programs: content.programs.clone(),
        maps: content
            .maps
            .iter()
            .map(|m| v1::BundleMap {
                name: m.name.clone(),
                role: m.role,
                map_type: m.map_type,
                key_size: m.key_size,
                value_size: m.value_size,
                max_entries: m.max_entries,
                entries: Vec::new(),
                indices: Vec::new(),
                values: Vec::new(),
            })
            .collect(),
        policies: content.policies.clone(),
        rules: content.rules.clone(),
        cgroups: content.cgroups.clone(),
    }
}

/// Where a generation pins its program `name`.
fn prog_pin(gen_dir: &Path, name: &str) -> PathBuf {
    gen_dir.join(format!("prog_{name}"))
}

/// Where a generation pins its map `name`.
fn map_pin(gen_dir: &Path, name: &str) -> PathBuf {
    gen_dir.join(format!("map_{name}"))
}

/// The program `name` of the loaded ELF, as the program type `T` its strategy attaches.
fn program_mut<'a, T>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| Malformed::Missing { kind: "program", name: name.to_owned() })?
        .try_into()
        .map_err(|source| LoadError::Program {
            what: "the ELF's program type does not fit",
            program: name.to_owned(),
            source,
        })
}

/// The fd of an ELF map the agent fills (hash, LPM trie, array) or reads (ring buffer).
fn map_fd(map: &Map) -> Option<BorrowedFd<'_>> {
    match map {
        Map::HashMap(m) | Map::LpmTrie(m) | Map::RingBuf(m) | Map::Array(m) => Some(m.fd().as_fd()),
        _ => None,
    }
}

fn aligned(bytes: &[u8]) -> Vec<u64> {
    // aya parses the ELF in place and wants it aligned; a Vec<u64> is 8-aligned.
    let mut words = vec![0_u64; bytes.len().div_ceil(8)];
    for (i, chunk) in bytes.chunks(8).enumerate() {
        let mut w = [0_u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        words[i] = u64::from_ne_bytes(w);
    }
    words
}

fn as_bytes(words: &[u64], len: usize) -> &[u8] {
    // SAFETY: u64 has no padding and any byte pattern is a valid u8; `len` ≤ words * 8.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), len) }
}

/// Resolves a selected cgroup path to its cgroup id (the inode number of its directory on
/// cgroup2, which is what `bpf_get_current_ancestor_cgroup_id` returns).
pub fn cgroup_id(cgroup2: &Path, path: &str) -> Option<u64> {
    std::fs::metadata(cgroup2.join(path.trim_start_matches('/')))
        .ok()
        .filter(std::fs::Metadata::is_dir)
        .map(|m| m.ino())
}

/// Writes the cgroup map so it matches the paths that exist now; returns the new id table.
fn sync_cgroup_map(
    cgroup2: &Path,
    map: BorrowedFd<'_>,
    selected: &[v1::BundleCgroup],
    current: &BTreeMap<String, u64>,
) -> io::Result<BTreeMap<String, u64>> {
    let mut next = BTreeMap::new();
    for c in selected {
        let old = current.get(&c.path).copied();
        let new = cgroup_id(cgroup2, &c.path);
        if old != new {
            if let Some(old) = old {
                sys::map_delete(map, &old.to_le_bytes())?;
            }
            if let Some(new) = new {
                sys::map_update(map, &new.to_le_bytes(), &c.class.to_le_bytes())?;
            }
        }
        if let Some(new) = new {
            next.insert(c.path.clone(), new);
        }
    }
    Ok(next)
}

impl Datapath {
    /// A datapath with nothing loaded yet, enforcing through cgroup hooks until
    /// [`Self::with_enforcement`] says otherwise.
    pub fn new(paths: Paths) -> Self {
        let strategies = Enforcement::Cgroup.strategies(&paths.attach);
        Self {
            paths,
            active: None,
            clock_offset: events::monotonic_to_unix_offset(),
            strategies,
            public_key: None,
            node: None,
            batch_fallbacks: std::sync::atomic::AtomicU64::new(0),
            undecodable: std::sync::atomic::AtomicU64::new(0),
            lost_retired: std::sync::atomic::AtomicU64::new(0),
            flows: FlowSink::default(),
            flow_stats_retired: Default::default(),
        }
    }

    /// How many records the programs could not write because the ring buffer was full (the
    /// agent did not drain it in time), over every generation this datapath ran.
    pub fn ring_lost(&self) -> u64 {
        self.lost_retired.load(std::sync::atomic::Ordering::Relaxed) + self.active.as_ref().map_or(0, Active::lost)
    }

    /// How many ring-buffer records did not decode (dropped, with a warning).
    pub fn undecodable(&self) -> u64 {
        self.undecodable.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many array maps were filled element by element because the kernel refused
    /// `BPF_MAP_UPDATE_BATCH`.
    pub fn batch_fallbacks(&self) -> u64 {
        self.batch_fallbacks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Verifies every bundle's ed25519 signature against `key` before loading it (and before
    /// adopting pinned state). Without a key, signatures are not checked.
    #[must_use]
    pub fn with_public_key(mut self, key: Option<ed25519_dalek::VerifyingKey>) -> Self {
        self.public_key = key;
        self
    }

    /// Refuses every bundle not issued for node `name` (the envelope's node, which the
    /// signature covers).
    #[must_use]
    pub fn for_node(mut self, name: impl Into<String>) -> Self {
        self.node = Some(name.into());
        self
    }

    /// Which family enforces the decision hooks (the probe's [`Enforcement::for_kernel`]).
    /// Call it before anything is loaded or adopted: the strategies are fixed from here on.
    #[must_use]
    pub fn with_enforcement(mut self, enforcement: Enforcement) -> Self {
        self.strategies = enforcement.strategies(&self.paths.attach);
        self
    }

    /// The hooks this datapath attaches, each with its strategy.
    fn hooks(&self) -> impl Iterator<Item = (&'static HookSpec, &dyn Strategy)> + '_ {
        attach::hooks_of(&self.strategies)
            .filter_map(|h| self.strategies.iter().find(|s| s.handles(h)).map(|s| (h, s.as_ref())))
    }

    /// The programs of `content` this datapath attaches, with their hooks, in table order.
    fn programs<'s, 'c>(
        &'s self,
        content: &'c v1::BundleContent,
    ) -> impl Iterator<Item = (&'c v1::BundleProgram, &'static HookSpec, &'s dyn Strategy)> {
        self.hooks().filter_map(|(h, s)| content.programs.iter().find(|p| p.hook == h.id as i32).map(|p| (p, h, s)))
    }

    /// The active generation and digest, if any.
    pub fn active(&self) -> Option<(u64, &str)> {
        self.active.as_ref().map(|a| (a.bundle.generation, a.bundle.digest.as_str()))
    }

    /// The bpffs directory holding the active generation's pins.
    pub fn active_dir(&self) -> Option<&Path> {
        self.active.as_ref().map(|a| a.gen_dir.as_path())
    }

    /// Adopts what a previous agent left, as the kernel runs it: finds the generation the
    /// links run (newest first, the one `active.bundle` names when it runs), moves any link
    /// a crash left on another generation to it, records it, releases every other
    /// generation, and reopens the maps it needs. Returns false when nothing that enforces
    /// can be adopted (then generations that never enforced are removed, and whatever the
    /// links run keeps running until the next bundle replaces it).
    pub fn adopt(&mut self) -> Result<bool, LoadError> {
        let pinned = recover::pinned_generations(&self.paths.bpffs);
        let linked = recover::linked_programs(&self.paths.links());
        let state = std::fs::read(self.paths.state_file()).ok().and_then(|b| v1::Bundle::decode(b.as_slice()).ok());
        let runs = |p: &recover::Pinned| p.has_links || p.programs.iter().any(|id| linked.contains(id));
        let mut chosen: Option<(PathBuf, v1::Bundle, v1::BundleContent)> = None;
        for p in pinned.iter().rev().filter(|p| runs(p)) {
            let Some(bundle) = self.bundle_of(&p.dir, state.as_ref()) else {
                tracing::warn!(dir = %p.dir.display(), "a running generation has no recorded bundle");
                continue;
            };
            let content = match verify::verify_recorded(&bundle, self.public_key.as_ref(), self.node.as_deref()) {
                Ok(content) => content,
                Err(error) => {
                    tracing::warn!(dir = %p.dir.display(), error = error_chain(&error), "recorded bundle does not verify");
                    continue;
                }
            };
            if !self.complete(&content, &p.dir) {
                tracing::warn!(dir = %p.dir.display(), "a running generation's pins are incomplete");
                continue;
            }
            let named = state.as_ref().is_some_and(|s| s.digest == bundle.digest);
            if chosen.is_none() || named {
                chosen = Some((p.dir.clone(), bundle, content));
            }
            if named {
                break;
            }
        }
        let Some((gen_dir, bundle, content)) = chosen else {
            for p in pinned.iter().filter(|p| !runs(p)) {
                tracing::info!(dir = %p.dir.display(), "removing a generation that never enforced");
                let _ = std::fs::remove_dir_all(&p.dir);
                let _ = std::fs::remove_file(self.paths.bundle_file(&p.dir));
            }
            return Ok(false);
        };
        // A crash between two hooks' updates leaves links on two generations.
        let _undo = self.commit(&content, &gen_dir)?;
        self.confirm(&content, &gen_dir)?;
        if state.as_ref() != Some(&bundle) {
            tracing::warn!(
                generation = bundle.generation,
                "the state file disagreed with the kernel; recorded what runs"
            );
            write_state(&self.paths, &bundle.encode_to_vec())?;
        }
        self.remove_stale_links(&content);
        let content = retained(&content);
        let mut active = Active::new(bundle, content, gen_dir);
        self.open_maps(&mut active)?;
        self.release_others(&active.gen_dir, None, &mut Vec::new());
        tracing::info!(generation = active.bundle.generation, digest = active.bundle.digest, "adopted pinned bundle");
        self.active = Some(active);
        Ok(true)
    }

    /// The bundle recorded for a generation directory: its own file, or the state file when
    /// that names the same digest (state written by agents before per-generation files).
    fn bundle_of(&self, dir: &Path, state: Option<&v1::Bundle>) -> Option<v1::Bundle> {
        recover::recorded_bundle(&self.paths.bundle_file(dir)).or_else(|| {
            let name = dir.file_name()?.to_string_lossy().into_owned();
            state.filter(|s| name.ends_with(&format!("-{}", short_digest(&s.digest)))).cloned()
        })
    }

    /// Whether every program the strategies attach is pinned in `gen_dir`, with its link
    /// when links live in the generation.
    fn complete(&self, content: &v1::BundleContent, gen_dir: &Path) -> bool {
        self.programs(content).all(|(p, _, s)| {
            prog_pin(gen_dir, &p.name).exists()
                && (!s.overlaps() || s.link_pin(&self.paths.links(), gen_dir, &p.name).exists())
        })
    }

    fn gen_dir(&self, bundle: &v1::Bundle) -> PathBuf {
        self.paths.bpffs.join(format!("gen-{}-{}", bundle.generation, short_digest(&bundle.digest)))
    }

    /// Opens the cgroup map and ring buffer of `active` from their pins.
    fn open_maps(&self, active: &mut Active) -> Result<(), LoadError> {
        for m in &active.content.maps {
            let pin = map_pin(&active.gen_dir, &m.name);
            if m.role == v1::MapRole::Cgroups as i32 {
                let map = MapFd::open(&pin).map_err(io_err(format!("opening pinned map {}", pin.display())))?;
                // Read the ids from the cgroups themselves.
                let selected: Vec<v1::BundleCgroup> =
                    active.content.cgroups.iter().filter(|c| c.map == m.name).cloned().collect();
                let ids = sync_cgroup_map(&self.paths.cgroup2, map.as_fd(), &selected, &BTreeMap::new())
                    .map_err(io_err("filling the cgroup map"))?;
                active.cgroup_maps.insert(m.name.clone(), (map, ids));
            } else if m.role == v1::MapRole::Counters as i32 && m.name == map::LOST {
                active.lost = Some(MapFd::open(&pin).map_err(io_err(format!("opening pinned map {}", pin.display())))?);
            } else if m.role == v1::MapRole::Counters as i32 && m.name == map::FLOW_STATS {
                active.flow_stats =
                    Some(MapFd::open(&pin).map_err(io_err(format!("opening pinned map {}", pin.display())))?);
            } else if m.role == v1::MapRole::Events as i32 {
                let data = MapData::from_pin(&pin).map_err(LoadError::Events)?;
                let map = Map::from_map_data(data).map_err(LoadError::Events)?;
                active.events = Some(RingBuf::try_from(map).map_err(LoadError::Events)?);
            }
        }
        Ok(())
    }

    /// Applies a bundle: record it, load, fill maps, pin, point every hook at the new
    /// programs (each strategy's commit, confirmed with the kernel), record the state, then
    /// release every other generation. Until the state is recorded any error undoes the
    /// swap, so the previous generation keeps enforcing and the NACK is true; a crash at any
    /// step is resolved from the kernel by [`Self::adopt`]. Events still queued in the
    /// previous generation's ring buffer are drained into `drained`.
    pub fn apply(&mut self, bundle: v1::Bundle, drained: &mut Vec<v1::DecisionEvent>) -> Result<(), LoadError> {
        let content = verify(&bundle, self.public_key.as_ref(), self.node.as_deref())?;
        if let Some(active) = &self.active {
            let enforced = &active.bundle;
            if bundle.generation < enforced.generation
                || (bundle.generation == enforced.generation && bundle.digest != enforced.digest)
            {
                return Err(LoadError::Stale {
                    generation: bundle.generation,
                    digest: bundle.digest,
                    enforced: enforced.generation,
                    enforced_digest: enforced.digest.clone(),
                });
            }
        }
        if let Some(active) = &mut self.active
            && active.bundle.digest == bundle.digest
        {
            // Same content under a new generation number: nothing to load. The new envelope
            // (generation, signature) is recorded, so a restart adopts what it verifies.
            let encoded = bundle.encode_to_vec();
            recover::write_atomic(&self.paths.bundle_file(&active.gen_dir), &encoded)
                .map_err(io_err("recording the bundle"))?;
            write_state(&self.paths, &encoded)?;
            active.bundle = bundle;
            return Ok(());
        }
        let gen_dir = self.gen_dir(&bundle);
        let discard = |paths: &Paths| {
            let _ = std::fs::remove_dir_all(&gen_dir);
            let _ = std::fs::remove_file(paths.bundle_file(&gen_dir));
        };
        let mut active = match self.stage(&bundle, &content, &gen_dir) {
            Ok(active) => active,
            Err(e) => {
                discard(&self.paths);
                return Err(e);
            }
        };
        let undo = match self.commit(&content, &gen_dir).and_then(|undo| {
            fault_point("committed");
            match self.confirm(&content, &gen_dir) {
                Ok(()) => Ok(undo),
                Err(e) => {
                    undo.undo();
                    Err(e)
                }
            }
        }) {
            Ok(undo) => undo,
            Err(e) => {
                discard(&self.paths);
                return Err(e);
            }
        };
        if let Err(e) = write_state(&self.paths, &bundle.encode_to_vec()) {
            // The kernel and the state file must agree: put the previous generation back.
            undo.undo();
            discard(&self.paths);
            return Err(e);
        }
        drop(undo);
        fault_point("state");
        self.remove_stale_links(&content);
        self.drain(drained);
        let old = self.active.take();
        self.release_others(&gen_dir, old, drained);
        fault_point("released");
        active.bundle = bundle;
        tracing::info!(generation = active.bundle.generation, digest = active.bundle.digest, "bundle enforcing");
        self.warn_not_enforceable(&content);
        self.active = Some(active);
        Ok(())
    }

    /// Removes every generation but `keep` (the one the hooks run now) with its recorded
    /// bundle: the previous one and any a crash left behind. Where generations overlap
    /// (make-before-break), waits until the kernel has detached them, so that an
    /// acknowledged generation is exactly what enforces, then drains the decisions `old`
    /// made during the overlap.
    fn release_others(&mut self, keep: &Path, old: Option<Active>, drained: &mut Vec<v1::DecisionEvent>) {
        let others: Vec<recover::Pinned> =
            recover::pinned_generations(&self.paths.bpffs).into_iter().filter(|p| p.dir != keep).collect();
        let overlapping: Vec<u32> = if self.strategies.iter().any(|s| s.overlaps()) {
            others.iter().flat_map(|p| p.programs.iter().copied()).collect()
        } else {
            Vec::new()
        };
        for p in &others {
            if let Err(error) = std::fs::remove_dir_all(&p.dir) {
                tracing::warn!(%error, dir = %p.dir.display(), "could not remove a previous generation's pins");
            }
        }
        wait_released(&overlapping);
        if let Some(mut old) = old {
            drain_active(&mut old, self.clock_offset, &self.undecodable, drained, &mut self.flows);
            self.lost_retired.fetch_add(old.lost(), std::sync::atomic::Ordering::Relaxed);
            for (retired, now) in self.flow_stats_retired.iter().zip(old.flow_stats()) {
                retired.fetch_add(now, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let kept = self.paths.bundle_file(keep);
        if let Ok(files) = std::fs::read_dir(self.paths.generations()) {
            for f in files.flatten().filter(|f| f.path() != kept) {
                let _ = std::fs::remove_file(f.path());
            }
        }
    }

    /// Checks with the kernel that the active generation still enforces: its pins are there
    /// and every hook runs its programs. Unmounting bpffs or removing the pins under the agent
    /// detaches them.
    pub fn check(&self) -> Result<(), LoadError> {
        let Some(active) = &self.active else { return Ok(()) };
        if !active.gen_dir.exists() {
            return Err(LoadError::Vanished { dir: active.gen_dir.clone() });
        }
        self.confirm(&active.content, &active.gen_dir)
    }

    /// Loads the active generation again after [`Self::check`] found it gone: bpffs mounted
    /// again if needed, the same bundle staged and attached anew.
    pub fn restore(&mut self, drained: &mut Vec<v1::DecisionEvent>) -> Result<(), LoadError> {
        let Some(mut vanished) = self.active.take() else { return Ok(()) };
        drain_active(&mut vanished, self.clock_offset, &self.undecodable, drained, &mut self.flows);
        self.lost_retired.fetch_add(vanished.lost(), std::sync::atomic::Ordering::Relaxed);
        let bundle = vanished.bundle.clone();
        drop(vanished);
        let root = self.paths.bpffs.parent().unwrap_or(&self.paths.bpffs).to_owned();
        sys::ensure_bpffs(&root).map_err(io_err(format!("mounting bpffs at {}", root.display())))?;
        self.apply(bundle, drained)
    }

    /// Logs the sections with rules that no strategy here can enforce (exec and files need
    /// BPF-LSM with path resolution). The server lists them per policy as not enforceable on
    /// this node (`GetNode`); the node's log says so too.
    fn warn_not_enforceable(&self, content: &v1::BundleContent) {
        let enforced: Vec<Operation> = self.hooks().map(|(h, _)| h.operation).collect();
        let missing: Vec<&str> = content
            .maps
            .iter()
            .filter(|m| m.role == v1::MapRole::Static as i32 && m.filled() > 0)
            .filter_map(|m| map::operation_of(&m.name).filter(|op| op.is_path() && m.name == map::of(*op).paths))
            .filter(|op| !enforced.contains(op))
            .map(Operation::section_path)
            .collect();
        if !missing.is_empty() {
            tracing::warn!(sections = ?missing, "policies have sections this kernel cannot enforce without BPF-LSM");
        }
    }

    /// Loads and pins a generation; strategies that cannot move links attach it here.
    fn stage(&self, bundle: &v1::Bundle, content: &v1::BundleContent, gen_dir: &Path) -> Result<Active, LoadError> {
        // Recorded before anything is loaded, so that whatever a crash leaves pinned can be
        // matched to its bundle (a full or read-only state directory fails here, harmlessly).
        recover::write_atomic(&self.paths.bundle_file(gen_dir), &bundle.encode_to_vec())
            .map_err(io_err("recording the bundle in the state directory"))?;
        fault_point("recorded");
        let _ = std::fs::remove_dir_all(gen_dir);
        std::fs::create_dir_all(gen_dir).map_err(io_err(format!("creating {}", gen_dir.display())))?;
        let words = aligned(&content.elf);
        // No CO-RE relocations in our objects (the compiler resolves offsets from the node's
        // BTF itself), so none are attempted. aya 0.14 still parses the kernel's BTF in
        // `EbpfLoader::new` (~20 MB for a moment on 6.18); the trim after each apply gives
        // that memory back.
        // Shared maps (pal_flows) are opened from their pin under `shared/` when an earlier
        // generation created them, and created and pinned there otherwise.
        let shared: Vec<(&str, PathBuf)> = content
            .maps
            .iter()
            .filter(|m| m.role == v1::MapRole::Shared as i32)
            .map(|m| (m.name.as_str(), self.paths.shared().join(&m.name)))
            .collect();
        if !shared.is_empty() {
            std::fs::create_dir_all(self.paths.shared()).map_err(io_err("creating the shared maps directory"))?;
        }
        let mut loader = EbpfLoader::new();
        loader.btf(None).verifier_log_level(VerifierLogLevel::DEBUG | VerifierLogLevel::STATS);
        for (name, pin) in &shared {
            loader.map_pin_path(name, pin.as_path());
        }
        let mut ebpf = loader.load(as_bytes(&words, content.elf.len())).map_err(LoadError::Elf)?;
        for m in &content.maps {
            let map = ebpf.map(&m.name).ok_or_else(|| Malformed::Missing { kind: "map", name: m.name.clone() })?;
            let fd = map_fd(map).ok_or_else(|| Malformed::Role {
                map: m.name.clone(),
                role: "any",
                needs: "a hash, LPM trie, array or ring buffer",
            })?;
            // `verify` checked every length against the map's definition.
            for e in &m.entries {
                sys::map_update(fd, &e.key, &e.value).map_err(io_err(format!("filling map {}", m.name)))?;
            }
            if !m.indices.is_empty() {
                let keys: Vec<u8> = m.indices.iter().flat_map(|i| i.to_le_bytes()).collect();
                let batched = sys::map_update_batch(fd, 4, &keys, m.value_size as usize, &m.values)
                    .map_err(io_err(format!("filling map {}", m.name)))?;
                if !batched {
                    self.batch_fallbacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(map = m.name, "BPF_MAP_UPDATE_BATCH refused; filled element by element");
                }
            }
            map.pin(map_pin(gen_dir, &m.name))
                .map_err(|source| LoadError::Pin { what: format!("map {}", m.name), source })?;
        }
        fault_point("filled");
        for (p, hook, strategy) in self.programs(content) {
            strategy.stage(&mut ebpf, p, hook, gen_dir)?;
        }
        fault_point("staged");
        let mut active = Active::new(bundle.clone(), retained(content), gen_dir.to_owned());
        self.open_maps(&mut active)?;
        Ok(active)
    }

    /// Points every hook at the programs staged in `gen_dir`, strategy by strategy; when one
    /// fails, the ones already committed are undone.
    fn commit(&self, content: &v1::BundleContent, gen_dir: &Path) -> Result<attach::Undo, LoadError> {
        let mut done = attach::Undo::default();
        for strategy in &self.strategies {
            let programs: Vec<_> =
                self.programs(content).filter(|(_, h, _)| strategy.handles(h)).map(|(p, h, _)| (p, h)).collect();
            match strategy.commit(&programs, gen_dir, &self.paths.links()) {
                Ok(undo) => done.extend(undo),
                Err(e) => {
                    done.undo();
                    return Err(e);
                }
            }
        }
        Ok(done)
    }

    /// Checks with the kernel that every hook runs the program staged in `gen_dir`.
    fn confirm(&self, content: &v1::BundleContent, gen_dir: &Path) -> Result<(), LoadError> {
        for strategy in &self.strategies {
            let programs: Vec<_> =
                self.programs(content).filter(|(_, h, _)| strategy.handles(h)).map(|(p, h, _)| (p, h)).collect();
            strategy.confirm(&programs, gen_dir, &self.paths.links())?;
        }
        Ok(())
    }

    /// Brings the cgroup map in line with the cgroups that exist now (new cgroups under a
    /// selected path, or a selected cgroup created after the policy arrived).
    pub fn sync_cgroups(&mut self) -> Result<(), LoadError> {
        let Some(active) = &mut self.active else { return Ok(()) };
        for (name, (map, ids)) in &mut active.cgroup_maps {
            let selected: Vec<v1::BundleCgroup> =
                active.content.cgroups.iter().filter(|c| c.map == *name).cloned().collect();
            *ids = sync_cgroup_map(&self.paths.cgroup2, map.as_fd(), &selected, ids)
                .map_err(io_err("updating the cgroup map"))?;
        }
        Ok(())
    }

    /// The cgroup2 mount.
    pub fn cgroup2(&self) -> &Path {
        &self.paths.cgroup2
    }

    /// Paths of every selected cgroup of the active bundle.
    pub fn selected_cgroups(&self) -> Vec<String> {
        self.active.as_ref().map(|a| a.content.cgroups.iter().map(|c| c.path.clone()).collect()).unwrap_or_default()
    }

    /// The ring buffer's fd, to poll for readability.
    pub fn events_fd(&self) -> Option<RawFd> {
        self.active.as_ref().and_then(|a| a.events.as_ref()).map(|r| r.as_fd().as_raw_fd())
    }

    /// Moves every queued event record into `out`.
    pub fn drain(&mut self, out: &mut Vec<v1::DecisionEvent>) {
        if let Some(active) = &mut self.active {
            drain_active(active, self.clock_offset, &self.undecodable, out, &mut self.flows);
        }
    }

    /// Removes the stable links of hooks `content` has no program for (a generation without
    /// `connections` sections has no sockops program): the kernel detaches them. Runs once the
    /// generation is recorded; after a crash before it, [`Self::adopt`] does it.
    fn remove_stale_links(&self, content: &v1::BundleContent) {
        // Shared maps no program of this generation uses (pal_flows once no sockops program
        // runs): their connections will never be closed by a program, so the state goes too.
        if let Ok(entries) = std::fs::read_dir(self.paths.shared()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !content.maps.iter().any(|m| m.role == v1::MapRole::Shared as i32 && m.name == name) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let Ok(entries) = std::fs::read_dir(self.paths.links()) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let known = palisade_contract::hook::HOOKS.iter().any(|h| h.symbol == name);
            if known && !content.programs.iter().any(|p| p.name == name) {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => {
                        tracing::info!(program = name, "detached a hook the enforced generation has no program for");
                    }
                    Err(error) => tracing::warn!(%error, program = name, "could not remove a stale link"),
                }
            }
        }
    }

    /// Takes the closed connections decoded so far (call [`Self::drain`] first).
    pub fn take_flows(&mut self) -> Vec<events::Flow> {
        std::mem::take(&mut self.flows.pending)
    }

    /// Flow records dropped because the agent did not take them in time.
    pub fn flows_dropped(&self) -> u64 {
        self.flows.dropped
    }

    /// The sockops program's counters over every generation this datapath ran: tune
    /// settings the kernel refused, and observed connections not recorded because
    /// `pal_flows` was full.
    pub fn flow_stats(&self) -> (u64, u64) {
        let now = self.active.as_ref().map_or([0, 0], Active::flow_stats);
        let retired = |i: usize| self.flow_stats_retired[i].load(std::sync::atomic::Ordering::Relaxed);
        (retired(0) + now[0], retired(1) + now[1])
    }

    /// Detaches everything this agent attached and removes its pins and state (used by tests
    /// and `palisade-agent --uninstall`).
    pub fn remove_all(&mut self) -> io::Result<()> {
        // Every pinned generation's programs, also when nothing was adopted (`--uninstall`).
        self.active = None;
        let programs = pinned_program_ids(&self.paths.bpffs);
        match std::fs::remove_dir_all(&self.paths.bpffs) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        // Detaching completes asynchronously once the last pin is gone.
        wait_released(&programs);
        match std::fs::remove_file(self.paths.state_file()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Moves the events queued in a generation's ring buffer into `out`.
fn drain_active(
    active: &mut Active,
    clock_offset: i128,
    undecodable: &std::sync::atomic::AtomicU64,
    out: &mut Vec<v1::DecisionEvent>,
    flows: &mut FlowSink,
) {
    flows.remember(&active.table);
    let Some(ring) = &mut active.events else { return };
    let sockops = palisade_contract::Hook::SockOps.id() as u32;
    while let Some(item) = ring.next() {
        if palisade_contract::record::FlowRecord::hook_of(&item) == Some(sockops) {
            match events::decode_flow(&item, |tag| flows.table(tag), clock_offset) {
                Ok(flow) if flows.pending.len() < MAX_PENDING_FLOWS => flows.pending.push(flow),
                Ok(_) => flows.dropped += 1,
                Err(error) => {
                    undecodable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(%error, "dropping an undecodable flow record");
                }
            }
            continue;
        }
        match events::decode(&item, &active.content, &active.bundle.digest, clock_offset) {
            Ok(event) => out.push(event),
            Err(error) => {
                undecodable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(%error, "dropping an undecodable event record");
            }
        }
    }
}

/// The kernel ids of every program pinned in any generation directory under `bpffs`.
fn pinned_program_ids(bpffs: &Path) -> Vec<u32> {
    let Ok(dirs) = std::fs::read_dir(bpffs) else { return Vec::new() };
    dirs.flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with("gen-"))
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .flat_map(Iterator::flatten)
        .filter(|e| e.file_name().to_string_lossy().starts_with("prog_"))
        .filter_map(|e| ProgFd::open(&e.path()).ok())
        .filter_map(|prog| prog.id().ok())
        .collect()
}

/// Waits (up to 5 s) until the programs are freed, which the kernel does only after their
/// links were released and detached.
fn wait_released(ids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pending: Vec<u32> = ids.to_vec();
    while !pending.is_empty() {
        pending.retain(|&id| sys::prog_exists(id).unwrap_or(false));
        if pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            tracing::warn!(?pending, "previous generation's programs are still attached after 5 s");
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Loads a program, trying again when the verifier gave up because a signal was pending: it
/// returns EAGAIN then (`kernel/bpf/verifier.c`, `do_check`), which a busy agent — child
/// processes, timers — meets on large programs. libbpf retries the same way. Attempts back
/// off (1, 2, … ms): five immediate retries were all interrupted once in CI while a test
/// spawned a process every few milliseconds.
fn load_retrying(name: &str, mut load: impl FnMut() -> Result<(), ProgramError>) -> Result<(), LoadError> {
    const ATTEMPTS: u64 = 20;
    let mut attempt = 1;
    loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < ATTEMPTS =>
            {
                tracing::debug!(program = name, attempt, "verifier interrupted by a signal; loading again");
                std::thread::sleep(Duration::from_millis(attempt));
                attempt += 1;
            }
            other => return other.map_err(|e| program_error(name, e)),
        }
    }
}

fn program_error(name: &str, e: ProgramError) -> LoadError {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            LoadError::Verifier { program: name.to_owned(), error: io_error.to_string(), log: verifier_log.to_string() }
        }
        source => LoadError::Program { what: "loading", program: name.to_owned(), source },
    }
}

fn write_state(paths: &Paths, encoded: &[u8]) -> Result<(), LoadError> {
    recover::write_atomic(&paths.state_file(), encoded).map_err(io_err("writing the state file"))
}

/// The digest prefix in a generation directory's name.
fn short_digest(digest: &str) -> &str {
    digest.get(..16).unwrap_or(digest)
}

/// A step of a swap where a test makes the agent die at once: `PALISADE_FAULT_AT=<step>`
/// aborts the process when the datapath reaches it. Steps, in order: `recorded` (bundle
/// written to the state directory), `filled` (maps filled), `staged` (programs loaded and
/// pinned; BPF-LSM ones attached), `hook` (the first cgroup link moved), `committed` (every
/// hook moved), `state` (state file written), `released` (previous generations released;
/// the ACK is next).
pub const FAULT_STEPS: [&str; 7] = ["recorded", "filled", "staged", "hook", "committed", "state", "released"];

/// Aborts the process if `PALISADE_FAULT_AT` names `step` (see [`FAULT_STEPS`]).
pub(crate) fn fault_point(step: &'static str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("PALISADE_FAULT_AT").ok().filter(|s| !s.is_empty()));
    if at.as_deref() == Some(step) {
        tracing::error!(step, "PALISADE_FAULT_AT: aborting");
        std::process::abort();
    }
}
