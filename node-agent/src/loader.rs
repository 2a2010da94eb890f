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
    fs::File,
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, OwnedFd, RawFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    EbpfLoader, VerifierLogLevel,
    maps::{Map, MapData, RingBuf},
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, links::FdLink},
};
use palisade_contract::{Attach, Operation, hook::HOOKS, map};
use palisade_proto::v1;
use prost::Message as _;

use crate::{events, sys};

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

    fn link(&self, program: &str) -> PathBuf {
        self.links().join(program)
    }

    fn state_file(&self) -> PathBuf {
        self.state_dir.join("active.bundle")
    }
}

/// Why a bundle was not (or not entirely) applied. The message is what the NACK carries.
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
    /// The content is not a `BundleContent` this agent understands.
    #[error("bundle content does not decode: {0}")]
    Decode(String),
    /// The kernel or aya refused the ELF or a map.
    #[error("loading the bundle failed: {0}")]
    Load(String),
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
    /// A pin, link or map operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The bundle needs something this node does not have.
    #[error("not enforceable on this node: {0}")]
    Unsupported(String),
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
    /// Per cgroups map (one per policy section): its fd and the ids it holds by path.
    cgroup_maps: BTreeMap<String, (OwnedFd, BTreeMap<String, u64>)>,
    events: Option<RingBuf<MapData>>,
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
    lsm: bool,
    public_key: Option<ed25519_dalek::VerifyingKey>,
    /// Whether the kernel lets BPF-LSM programs resolve paths (`exec`, `files`); without it
    /// only the network LSM programs are loaded.
    lsm_paths: bool,
    /// The kernel's BTF, parsed once (LSM loads need it for every program of every
    /// generation; parsing vmlinux BTF is the slowest part of a load).
    kernel_btf: std::sync::OnceLock<aya::Btf>,
    /// Array maps filled element by element because the kernel refused
    /// `BPF_MAP_UPDATE_BATCH` (for tests and diagnostics).
    batch_fallbacks: std::sync::atomic::AtomicU64,
}

/// The BPF-LSM programs of the hook table: (hook id, LSM hook name, whether it resolves
/// paths).
fn lsm_hooks() -> impl Iterator<Item = (i32, &'static str, bool)> {
    HOOKS.iter().filter_map(|h| match h.attach {
        Attach::Lsm { hook, resolves_paths } => Some((h.id as i32, hook, resolves_paths)),
        Attach::CgroupSockAddr(_) => None,
    })
}

/// The cgroup programs of the hook table, in attach order: (hook id, ELF section).
fn cgroup_hooks() -> impl Iterator<Item = (i32, &'static str)> {
    HOOKS.iter().filter(|h| matches!(h.attach, Attach::CgroupSockAddr(_))).map(|h| (h.id as i32, h.section))
}

fn map_fd(map: &Map) -> Option<RawFd> {
    match map {
        Map::HashMap(m) | Map::LpmTrie(m) | Map::RingBuf(m) | Map::Array(m) => Some(m.fd().as_fd().as_raw_fd()),
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
    map: std::os::fd::BorrowedFd<'_>,
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
    /// A datapath with nothing loaded yet.
    pub fn new(paths: Paths) -> Self {
        Self {
            paths,
            active: None,
            clock_offset: events::monotonic_to_unix_offset(),
            lsm: false,
            public_key: None,
            lsm_paths: true,
            kernel_btf: std::sync::OnceLock::new(),
            batch_fallbacks: std::sync::atomic::AtomicU64::new(0),
        }
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

    /// Enforces through BPF-LSM programs instead of cgroup hooks (for kernels where the probe
    /// found BPF-LSM). LSM links cannot be updated in place, so each generation's links are
    /// pinned in its own directory: the new generation attaches before the old one's pins
    /// are removed (make-before-break; during the overlap denies are the union).
    #[must_use]
    pub fn with_lsm(mut self, lsm: bool) -> Self {
        self.lsm = lsm;
        self
    }

    /// Whether BPF-LSM programs may resolve paths here (the probe's `bpf_lsm_paths`); when
    /// not, the `exec` and `files` programs are not loaded (default: they are).
    #[must_use]
    pub fn with_lsm_paths(mut self, lsm_paths: bool) -> Self {
        self.lsm_paths = lsm_paths;
        self
    }

    /// The LSM hooks this datapath loads.
    fn lsm_hooks(&self) -> impl Iterator<Item = (i32, &'static str)> + '_ {
        lsm_hooks().filter(|(_, _, paths)| self.lsm_paths || !paths).map(|(id, hook, _)| (id, hook))
    }

    /// Whether programs are pinned link-per-generation (LSM) or swapped in stable links.
    fn link_pin(&self, gen_dir: &Path, program: &str) -> PathBuf {
        if self.lsm { gen_dir.join(format!("link_{program}")) } else { self.paths.link(program) }
    }

    /// The active generation and digest, if any.
    pub fn active(&self) -> Option<(u64, &str)> {
        self.active.as_ref().map(|a| (a.bundle.generation, a.bundle.digest.as_str()))
    }

    /// Adopts the pinned state of a previous agent: the links keep running; this only
    /// reopens the maps it needs. Returns false when there is nothing (consistent) to adopt.
    pub fn adopt(&mut self) -> Result<bool, LoadError> {
        let Ok(bytes) = std::fs::read(self.paths.state_file()) else { return Ok(false) };
        let bundle = v1::Bundle::decode(bytes.as_slice()).map_err(|e| LoadError::Decode(e.to_string()))?;
        let content = verify(&bundle, self.public_key.as_ref())?;
        let gen_dir = self.gen_dir(&bundle);
        let hooks: Vec<i32> = if self.lsm {
            self.lsm_hooks().map(|(h, _)| h).collect()
        } else {
            cgroup_hooks().map(|(h, _)| h).collect()
        };
        for hook in hooks {
            let Some(program) = content.programs.iter().find(|p| p.hook == hook) else { continue };
            if !self.link_pin(&gen_dir, &program.name).exists()
                || !gen_dir.join(format!("prog_{}", program.name)).exists()
            {
                tracing::warn!(program = program.name, "pinned state is incomplete; not adopting");
                return Ok(false);
            }
        }
        let mut active = Active { bundle, content, gen_dir, cgroup_maps: BTreeMap::new(), events: None };
        self.open_maps(&mut active)?;
        tracing::info!(generation = active.bundle.generation, digest = active.bundle.digest, "adopted pinned bundle");
        self.active = Some(active);
        Ok(true)
    }

    fn gen_dir(&self, bundle: &v1::Bundle) -> PathBuf {
        let short: String = bundle.digest.chars().take(16).collect();
        self.paths.bpffs.join(format!("gen-{}-{short}", bundle.generation))
    }

    /// Opens the cgroup map and ring buffer of `active` from their pins.
    fn open_maps(&self, active: &mut Active) -> Result<(), LoadError> {
        for m in &active.content.maps {
            let pin = active.gen_dir.join(format!("map_{}", m.name));
            if m.role == v1::MapRole::Cgroups as i32 {
                let fd = sys::obj_get(&pin).map_err(io_err(format!("opening pinned map {}", pin.display())))?;
                // Read the ids from the cgroups themselves.
                let selected: Vec<v1::BundleCgroup> =
                    active.content.cgroups.iter().filter(|c| c.map == m.name).cloned().collect();
                let ids = sync_cgroup_map(&self.paths.cgroup2, fd.as_fd(), &selected, &BTreeMap::new())
                    .map_err(io_err("filling the cgroup map"))?;
                active.cgroup_maps.insert(m.name.clone(), (fd, ids));
            } else if m.role == v1::MapRole::Events as i32 {
                let data = MapData::from_pin(&pin).map_err(|e| LoadError::Load(format!("events map: {e}")))?;
                let map = Map::from_map_data(data).map_err(|e| LoadError::Load(format!("events map: {e}")))?;
                active.events = Some(RingBuf::try_from(map).map_err(|e| LoadError::Load(format!("events map: {e}")))?);
            }
        }
        Ok(())
    }

    /// Applies a bundle: load, fill maps, pin, then swap every link to the new programs
    /// (`BPF_LINK_UPDATE`, atomic per hook). On any error nothing the links run changes and
    /// the previous generation keeps enforcing. Events still queued in the previous
    /// generation's ring buffer are drained into `drained` first.
    pub fn apply(&mut self, bundle: v1::Bundle, drained: &mut Vec<v1::DecisionEvent>) -> Result<(), LoadError> {
        let content = verify(&bundle, self.public_key.as_ref())?;
        if let Some(active) = &mut self.active
            && active.bundle.digest == bundle.digest
        {
            // Same content under a new generation number: nothing to load.
            active.bundle.generation = bundle.generation;
            let encoded = active.bundle.encode_to_vec();
            write_state(&self.paths, &encoded)?;
            return Ok(());
        }
        let gen_dir = self.gen_dir(&bundle);
        let staged = self.stage(&bundle, &content, &gen_dir);
        let mut active = match staged {
            Ok(active) => active,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&gen_dir);
                return Err(e);
            }
        };
        if let Err(e) = self.swap(&content, &gen_dir) {
            let _ = std::fs::remove_dir_all(&gen_dir);
            return Err(e);
        }
        write_state(&self.paths, &bundle.encode_to_vec())?;
        self.drain(drained);
        if let Some(mut old) = self.active.take()
            && old.gen_dir != gen_dir
        {
            // LSM generations overlap (make-before-break): the old programs run until their
            // links are released, which the kernel finishes asynchronously. Wait for it, so
            // that an acknowledged generation is exactly what enforces.
            let old_programs = if self.lsm { lsm_program_ids(&old) } else { Vec::new() };
            match std::fs::remove_dir_all(&old.gen_dir) {
                Ok(()) => {
                    wait_released(&old_programs);
                    // Decisions the old programs made during the overlap.
                    drain_active(&mut old, self.clock_offset, drained);
                }
                Err(error) => {
                    tracing::warn!(%error, dir = %old.gen_dir.display(), "could not remove the previous generation's pins");
                }
            }
        }
        active.bundle = bundle;
        tracing::info!(generation = active.bundle.generation, digest = active.bundle.digest, "bundle enforcing");
        if !self.lsm || !self.lsm_paths {
            // exec and files decisions need BPF-LSM with path resolution; the server lists them per policy as not
            // enforceable on this node (GetNode), and the node's log says so too.
            let lsm_only: Vec<&str> = active
                .content
                .maps
                .iter()
                .filter(|m| m.role == v1::MapRole::Static as i32 && m.filled() > 0)
                .filter_map(|m| map::operation_of(&m.name).filter(|op| op.is_path() && m.name == map::of(*op).paths))
                .map(Operation::section_path)
                .collect();
            if !lsm_only.is_empty() {
                tracing::warn!(sections = ?lsm_only, "policies have sections this kernel cannot enforce without BPF-LSM");
            }
        }
        self.active = Some(active);
        Ok(())
    }

    /// Loads and pins a generation without touching the links.
    fn stage(&self, bundle: &v1::Bundle, content: &v1::BundleContent, gen_dir: &Path) -> Result<Active, LoadError> {
        let _ = std::fs::remove_dir_all(gen_dir);
        std::fs::create_dir_all(gen_dir).map_err(io_err(format!("creating {}", gen_dir.display())))?;
        let words = aligned(&content.elf);
        let mut ebpf = EbpfLoader::new()
            .verifier_log_level(VerifierLogLevel::DEBUG | VerifierLogLevel::STATS)
            .load(as_bytes(&words, content.elf.len()))
            .map_err(|e| LoadError::Load(format!("{e}")))?;
        for m in &content.maps {
            let map =
                ebpf.map(&m.name).ok_or_else(|| LoadError::Load(format!("map {} missing from the ELF", m.name)))?;
            let fd = map_fd(map).ok_or_else(|| LoadError::Load(format!("map {} has an unexpected type", m.name)))?;
            // SAFETY: `fd` belongs to `map`, which outlives this borrow.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
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
            map.pin(gen_dir.join(format!("map_{}", m.name)))
                .map_err(|e| LoadError::Load(format!("pinning {}: {e}", m.name)))?;
        }
        if self.lsm {
            self.stage_lsm(&mut ebpf, content, gen_dir)?;
        }
        for (_, section) in cgroup_hooks().filter(|_| !self.lsm) {
            let Some(p) = content.programs.iter().find(|p| p.section == section) else { continue };
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(&p.name)
                .ok_or_else(|| LoadError::Load(format!("program {} missing from the ELF", p.name)))?
                .try_into()
                .map_err(|e: ProgramError| LoadError::Load(format!("{}: {e}", p.name)))?;
            load_retrying(&p.name, || program.load())?;
            program
                .pin(gen_dir.join(format!("prog_{}", p.name)))
                .map_err(|e| LoadError::Load(format!("pinning {}: {e}", p.name)))?;
        }
        let mut active = Active {
            bundle: bundle.clone(),
            content: content.clone(),
            gen_dir: gen_dir.to_owned(),
            cgroup_maps: BTreeMap::new(),
            events: None,
        };
        self.open_maps(&mut active)?;
        Ok(active)
    }

    /// Loads, attaches and pins the LSM programs of a generation (they enforce from here on,
    /// alongside the previous generation until its pins are removed).
    fn stage_lsm(&self, ebpf: &mut aya::Ebpf, content: &v1::BundleContent, gen_dir: &Path) -> Result<(), LoadError> {
        let btf = if let Some(btf) = self.kernel_btf.get() {
            btf
        } else {
            let parsed = aya::Btf::from_sys_fs().map_err(|e| LoadError::Unsupported(format!("kernel BTF: {e}")))?;
            self.kernel_btf.get_or_init(|| parsed)
        };
        for (hook, name) in self.lsm_hooks() {
            let Some(p) = content.programs.iter().find(|p| p.hook == hook) else { continue };
            let program: &mut aya::programs::Lsm = ebpf
                .program_mut(&p.name)
                .ok_or_else(|| LoadError::Load(format!("program {} missing from the ELF", p.name)))?
                .try_into()
                .map_err(|e: ProgramError| LoadError::Load(format!("{}: {e}", p.name)))?;
            load_retrying(&p.name, || program.load(name, btf))?;
            program
                .pin(gen_dir.join(format!("prog_{}", p.name)))
                .map_err(|e| LoadError::Load(format!("pinning {}: {e}", p.name)))?;
            let id = program.attach().map_err(|e| LoadError::Load(format!("attaching {}: {e}", p.name)))?;
            let link: FdLink = program.take_link(id).map_err(|e| LoadError::Load(format!("{}: {e}", p.name)))?.into();
            link.pin(self.link_pin(gen_dir, &p.name))
                .map_err(|e| LoadError::Load(format!("pinning the {} link: {e}", p.name)))?;
        }
        Ok(())
    }

    /// Points every link at the programs pinned in `gen_dir`, creating links that do not
    /// exist yet. On failure, links already moved are moved back.
    fn swap(&self, content: &v1::BundleContent, gen_dir: &Path) -> Result<(), LoadError> {
        if self.lsm {
            // LSM links were attached in `stage_lsm`; removing the old generation detaches.
            return Ok(());
        }
        std::fs::create_dir_all(self.paths.links()).map_err(io_err("creating the links directory"))?;
        let mut moved: Vec<(OwnedFd, OwnedFd, Option<OwnedFd>)> = Vec::new();
        let result = (|| {
            for (hook, section) in cgroup_hooks() {
                let Some(p) = content.programs.iter().find(|p| p.section == section && p.hook == hook) else {
                    continue;
                };
                let new_prog = sys::obj_get(&gen_dir.join(format!("prog_{}", p.name)))
                    .map_err(io_err(format!("opening pinned program {}", p.name)))?;
                let link_pin = self.paths.link(&p.name);
                if link_pin.exists() {
                    let link =
                        sys::obj_get(&link_pin).map_err(io_err(format!("opening link {}", link_pin.display())))?;
                    let old_prog = self
                        .active
                        .as_ref()
                        .and_then(|a| sys::obj_get(&a.gen_dir.join(format!("prog_{}", p.name))).ok());
                    sys::link_update(link.as_fd(), new_prog.as_fd(), old_prog.as_ref().map(|f| f.as_fd()))
                        .map_err(io_err(format!("BPF_LINK_UPDATE on {}", p.name)))?;
                    moved.push((link, new_prog, old_prog));
                } else {
                    self.attach(p, gen_dir, &link_pin)?;
                }
            }
            Ok(())
        })();
        if result.is_err() {
            for (link, new_prog, old_prog) in moved.into_iter().rev() {
                if let Some(old) = old_prog
                    && let Err(error) = sys::link_update(link.as_fd(), old.as_fd(), Some(new_prog.as_fd()))
                {
                    tracing::error!(%error, "could not move a link back to the previous generation");
                }
            }
        }
        result
    }

    /// Creates and pins the cgroup link for a program that has none yet.
    fn attach(&self, p: &v1::BundleProgram, gen_dir: &Path, link_pin: &Path) -> Result<(), LoadError> {
        use aya::programs::cgroup_sock_addr::CgroupSockAddrAttachType as T;
        let attach_type = match v1::Hook::try_from(p.hook) {
            Ok(v1::Hook::CgroupConnect4) => T::Connect4,
            Ok(v1::Hook::CgroupConnect6) => T::Connect6,
            Ok(v1::Hook::CgroupBind4) => T::Bind4,
            Ok(v1::Hook::CgroupBind6) => T::Bind6,
            _ => return Err(LoadError::Unsupported(format!("program {} has no cgroup hook", p.name))),
        };
        let mut program = CgroupSockAddr::from_pin(gen_dir.join(format!("prog_{}", p.name)), attach_type)
            .map_err(|e| LoadError::Load(format!("reopening {}: {e}", p.name)))?;
        let cgroup =
            File::open(&self.paths.attach).map_err(io_err(format!("opening {}", self.paths.attach.display())))?;
        // aya 0.14 passes the mode as link flags; only Single is accepted by link_create.
        let id = program
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(|e| LoadError::Load(format!("attaching {}: {e}", p.name)))?;
        let link: FdLink = program
            .take_link(id)
            .map_err(|e| LoadError::Load(format!("{}: {e}", p.name)))?
            .try_into()
            .map_err(|e| LoadError::Load(format!("{}: not a bpf_link: {e}", p.name)))?;
        link.pin(link_pin).map_err(|e| LoadError::Load(format!("pinning link {}: {e}", link_pin.display())))?;
        Ok(())
    }

    /// Brings the cgroup map in line with the cgroups that exist now (new cgroups under a
    /// selected path, or a selected cgroup created after the policy arrived).
    pub fn sync_cgroups(&mut self) -> Result<(), LoadError> {
        let Some(active) = &mut self.active else { return Ok(()) };
        for (name, (fd, ids)) in &mut active.cgroup_maps {
            let selected: Vec<v1::BundleCgroup> =
                active.content.cgroups.iter().filter(|c| c.map == *name).cloned().collect();
            *ids = sync_cgroup_map(&self.paths.cgroup2, fd.as_fd(), &selected, ids)
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
            drain_active(active, self.clock_offset, out);
        }
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
fn drain_active(active: &mut Active, clock_offset: i128, out: &mut Vec<v1::DecisionEvent>) {
    let Some(ring) = &mut active.events else { return };
    while let Some(item) = ring.next() {
        match events::decode(&item, &active.content, &active.bundle.digest, clock_offset) {
            Ok(event) => out.push(event),
            Err(error) => tracing::warn!(%error, "dropping an undecodable event record"),
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
        .filter_map(|e| sys::obj_get(&e.path()).ok())
        .filter_map(|fd| sys::prog_id(fd.as_fd()).ok())
        .collect()
}

/// The kernel ids of a generation's pinned LSM programs.
fn lsm_program_ids(active: &Active) -> Vec<u32> {
    let lsm_hooks: Vec<i32> = lsm_hooks().map(|(hook, _, _)| hook).collect();
    active
        .content
        .programs
        .iter()
        .filter(|p| lsm_hooks.contains(&p.hook))
        .filter_map(|p| sys::obj_get(&active.gen_dir.join(format!("prog_{}", p.name))).ok())
        .filter_map(|fd| sys::prog_id(fd.as_fd()).ok())
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

/// A program load failure, with the verifier log when the verifier refused it.
/// Loads a program, trying again when the verifier gave up because a signal was pending: it
/// returns EAGAIN then (`kernel/bpf/verifier.c`, `do_check`), which a busy agent — child
/// processes, timers — meets on large programs. libbpf retries the same way.
fn load_retrying(name: &str, mut load: impl FnMut() -> Result<(), ProgramError>) -> Result<(), LoadError> {
    const ATTEMPTS: usize = 5;
    let mut attempt = 1;
    loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < ATTEMPTS =>
            {
                tracing::debug!(program = name, attempt, "verifier interrupted by a signal; loading again");
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
        other => LoadError::Load(format!("{name}: {other}")),
    }
}

/// Checks the signature (when a key is pinned) and the digest, and decodes the content.
pub fn verify(bundle: &v1::Bundle, key: Option<&ed25519_dalek::VerifyingKey>) -> Result<v1::BundleContent, LoadError> {
    if let Some(key) = key {
        let signature = ed25519_dalek::Signature::from_slice(&bundle.signature).map_err(|_| LoadError::Signature)?;
        key.verify_strict(&bundle.content, &signature).map_err(|_| LoadError::Signature)?;
    }
    let actual = palisade_proto::sha256_hex(&bundle.content);
    if actual != bundle.digest {
        return Err(LoadError::Digest { expected: bundle.digest.clone(), actual });
    }
    let content = v1::BundleContent::decode(bundle.content.as_slice()).map_err(|e| LoadError::Decode(e.to_string()))?;
    if !palisade_contract::format::readable(content.format) {
        let read: Vec<String> = palisade_contract::format::READ.iter().map(u32::to_string).collect();
        return Err(LoadError::Unsupported(format!(
            "bundle format {} (this agent reads formats {})",
            content.format,
            read.join(" and ")
        )));
    }
    for m in &content.maps {
        if m.values.len() != m.indices.len() * m.value_size as usize
            || (!m.indices.is_empty() && (m.key_size != 4 || m.indices.iter().any(|&i| i >= m.max_entries)))
        {
            return Err(LoadError::Decode(format!(
                "map {}: {} packed elements of {} bytes do not fit {} value bytes and {} slots",
                m.name,
                m.indices.len(),
                m.value_size,
                m.values.len(),
                m.max_entries
            )));
        }
    }
    Ok(content)
}

fn write_state(paths: &Paths, encoded: &[u8]) -> Result<(), LoadError> {
    std::fs::create_dir_all(&paths.state_dir).map_err(io_err(format!("creating {}", paths.state_dir.display())))?;
    let tmp = paths.state_dir.join("active.bundle.tmp");
    std::fs::write(&tmp, encoded).map_err(io_err("writing the state file"))?;
    std::fs::rename(&tmp, paths.state_file()).map_err(io_err("replacing the state file"))
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer as _, SigningKey};

    use super::*;

    fn signed(content: &[u8], key: &SigningKey) -> v1::Bundle {
        let content = v1::BundleContent { format: 1, ..Default::default() }
            .encode_to_vec()
            .into_iter()
            .chain(content.iter().copied())
            .collect::<Vec<u8>>();
        v1::Bundle {
            generation: 1,
            digest: palisade_proto::sha256_hex(&content),
            signature: key.sign(&content).to_bytes().to_vec(),
            content,
        }
    }

    #[test]
    fn verify_accepts_only_bundles_signed_by_the_pinned_key() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let bundle = signed(b"", &key);
        assert!(verify(&bundle, Some(&key.verifying_key())).is_ok());
        assert!(matches!(verify(&bundle, Some(&other.verifying_key())), Err(LoadError::Signature)));
        let mut tampered = bundle.clone();
        tampered.content.push(0);
        tampered.digest = palisade_proto::sha256_hex(&tampered.content);
        assert!(matches!(verify(&tampered, Some(&key.verifying_key())), Err(LoadError::Signature)));
        let unsigned = v1::Bundle { signature: Vec::new(), ..bundle.clone() };
        assert!(matches!(verify(&unsigned, Some(&key.verifying_key())), Err(LoadError::Signature)));
        assert!(verify(&unsigned, None).is_ok(), "no pinned key: only the digest is checked");
        let wrong_digest = v1::Bundle { digest: "00".into(), ..bundle };
        assert!(matches!(verify(&wrong_digest, Some(&key.verifying_key())), Err(LoadError::Digest { .. })));
    }

    fn unsigned(content: &v1::BundleContent) -> v1::Bundle {
        let content = content.encode_to_vec();
        v1::Bundle { generation: 1, digest: palisade_proto::sha256_hex(&content), signature: Vec::new(), content }
    }

    #[test]
    fn verify_rejects_unknown_formats_and_packed_contents_that_do_not_fit() {
        let array = |indices: Vec<u32>, values: Vec<u8>| v1::BundleMap {
            name: "pal_ports".into(),
            map_type: 2,
            key_size: 4,
            value_size: 8,
            max_entries: 4,
            indices,
            values,
            ..Default::default()
        };
        let content = |maps: Vec<v1::BundleMap>, format: u32| v1::BundleContent { format, maps, ..Default::default() };
        assert!(verify(&unsigned(&content(vec![array(vec![0, 3], vec![1; 16])], 2)), None).is_ok());
        assert!(verify(&unsigned(&content(Vec::new(), 1)), None).is_ok(), "format 1 is still read");
        let bad = [
            (content(Vec::new(), 3), "bundle format 3"),
            (content(vec![array(vec![0, 3], vec![1; 15])], 2), "do not fit"),
            (content(vec![array(vec![0, 4], vec![1; 16])], 2), "do not fit"),
            (content(vec![v1::BundleMap { key_size: 8, ..array(vec![0], vec![1; 8]) }], 2), "do not fit"),
        ];
        for (content, reason) in bad {
            let err = verify(&unsigned(&content), None).expect_err("rejected");
            assert!(err.to_string().contains(reason) || format!("{err:?}").contains(reason), "{err:?}");
        }
    }
}
