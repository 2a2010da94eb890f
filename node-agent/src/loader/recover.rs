//! What enforces, according to the kernel, and bringing the agent's files in line with it.
//!
//! Every generation the agent stages leaves three things: its pins (`gen-<g>-<digest>/` under
//! bpffs), its bundle (`generations/gen-<g>-<digest>.bundle` under the state directory,
//! written before anything is loaded) and, once it enforces, the links that run its
//! programs. After a crash at any step those can disagree with each other and with
//! `active.bundle`; [`Datapath::adopt`](super::Datapath::adopt) asks the kernel which
//! programs the links run, picks the generation that enforces, moves stray links to it,
//! records it, and releases every other generation.

use std::{
    collections::BTreeSet,
    io,
    path::{Path, PathBuf},
};

use palisade_proto::v1;
use prost::Message as _;

use crate::sys::{LinkFd, ProgFd};

/// One generation directory found under bpffs.
#[derive(Debug)]
pub(super) struct Pinned {
    /// `gen-<g>-<digest prefix>`.
    pub dir: PathBuf,
    /// Its generation number (from the name).
    pub generation: u64,
    /// Kernel ids of its pinned programs.
    pub programs: BTreeSet<u32>,
    /// Whether it holds links of its own (LSM generations).
    pub has_links: bool,
}

/// Every `gen-*` directory under `bpffs`.
pub(super) fn pinned_generations(bpffs: &Path) -> Vec<Pinned> {
    let Ok(dirs) = std::fs::read_dir(bpffs) else { return Vec::new() };
    let mut out: Vec<Pinned> = dirs
        .flatten()
        .filter_map(|d| {
            let name = d.file_name().to_string_lossy().into_owned();
            let generation = name.strip_prefix("gen-")?.split('-').next()?.parse().ok()?;
            let entries: Vec<String> = std::fs::read_dir(d.path())
                .ok()?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            let programs = entries
                .iter()
                .filter(|e| e.starts_with("prog_"))
                .filter_map(|e| ProgFd::open(&d.path().join(e)).and_then(|p| p.id()).ok())
                .collect();
            let has_links = entries.iter().any(|e| e.starts_with("link_"));
            Some(Pinned { dir: d.path(), generation, programs, has_links })
        })
        .collect();
    out.sort_by_key(|p| p.generation);
    out
}

/// The ids of the programs the stable links under `links` run now.
pub(super) fn linked_programs(links: &Path) -> BTreeSet<u32> {
    let Ok(entries) = std::fs::read_dir(links) else { return BTreeSet::new() };
    entries.flatten().filter_map(|e| LinkFd::open(&e.path()).and_then(|l| l.prog_id()).ok()).collect()
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new content: a
/// temporary file, fsync, rename over `path`, fsync of the directory.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The bundle recorded for a generation directory, if it is there and decodes.
pub(super) fn recorded_bundle(file: &Path) -> Option<v1::Bundle> {
    let bytes = std::fs::read(file).ok()?;
    v1::Bundle::decode(bytes.as_slice()).ok()
}
