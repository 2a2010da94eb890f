//! How each family of programs reaches its hooks. The datapath picks the strategies once,
//! at start, from what the kernel offers ([`Enforcement`]); staging and swapping then ask
//! each strategy, never a flag.
//!
//! - [`CgroupLinks`]: one stable link per hook, pinned under `links/`, moved between
//!   generations with `BPF_LINK_UPDATE` (atomic per hook, no gap, no overlap). Today the
//!   `sock_addr` fallback; sock_ops programs attach to cgroups the same way.
//! - [`LsmGenerations`]: BPF-LSM links cannot change program, so each generation attaches
//!   its own and pins them in its directory; the old generation is detached by removing its
//!   pins (make-before-break: during the overlap denies are the union).
//!
//! A socket-filter family (capture on `AF_PACKET` sockets) is a third implementation: it
//! stages like the others and commits by attaching to sockets it owns.

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use aya::programs::{CgroupAttachMode, CgroupSockAddr, SockOps, links::FdLink};
use palisade_contract::{Attach, HookSpec, SockAddrHook, hook::HOOKS};
use palisade_proto::v1;

use super::{LoadError, load_retrying, prog_pin};
use crate::sys::{LinkFd, ProgFd};

/// Which family enforces the decision hooks on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// cgroup `sock_addr` hooks (connect and bind only).
    Cgroup,
    /// BPF-LSM programs.
    Lsm {
        /// Whether the kernel lets them resolve paths (`exec`, `files`); without it only
        /// the network LSM programs are loaded.
        resolve_paths: bool,
    },
}

impl Enforcement {
    /// BPF-LSM where the kernel allows it, else cgroup hooks.
    pub fn for_kernel(features: &v1::KernelFeatures) -> Self {
        if features.bpf_lsm { Self::Lsm { resolve_paths: features.bpf_lsm_paths } } else { Self::Cgroup }
    }

    /// The strategies that attach this enforcement's programs.
    pub(super) fn strategies(self, attach_cgroup: &Path) -> Vec<Box<dyn Strategy>> {
        match self {
            Self::Cgroup => vec![Box::new(CgroupLinks { cgroup: attach_cgroup.to_owned(), sock_addr: true })],
            // sockops programs attach to the cgroup whatever enforces the decisions.
            Self::Lsm { resolve_paths } => vec![
                Box::new(LsmGenerations { resolve_paths, btf: OnceLock::new() }),
                Box::new(CgroupLinks { cgroup: attach_cgroup.to_owned(), sock_addr: false }),
            ],
        }
    }
}

/// How to put the previous generation back if a later step of a swap fails.
#[derive(Debug, Default)]
#[must_use]
pub(super) struct Undo {
    /// Links moved to a new program: (link, new program, previous program).
    moved: Vec<(LinkFd, ProgFd, ProgFd)>,
    /// Links created by this swap (no previous program): their pins.
    created: Vec<PathBuf>,
}

impl Undo {
    /// Adds what `other` undoes (undone after this one's own steps, in reverse).
    pub(super) fn extend(&mut self, other: Self) {
        self.moved.extend(other.moved);
        self.created.extend(other.created);
    }

    /// Moves every link back and removes the links this swap created.
    pub(super) fn undo(self) {
        for (link, new, old) in self.moved.into_iter().rev() {
            if let Err(error) = link.update(&old, Some(&new)) {
                tracing::error!(%error, "could not move a link back to the previous generation");
            }
        }
        for pin in self.created {
            if let Err(error) = std::fs::remove_file(&pin) {
                tracing::error!(%error, pin = %pin.display(), "could not remove a link this swap created");
            }
        }
    }
}

/// One family's way of loading and attaching its programs.
pub(super) trait Strategy: std::fmt::Debug + Send {
    /// Whether this strategy attaches programs of `hook`.
    fn handles(&self, hook: &HookSpec) -> bool;

    /// Loads `program` from the ELF and pins it at [`prog_pin`]; a strategy whose links
    /// cannot move between programs also attaches it and pins the link in `gen_dir`.
    fn stage(
        &self,
        ebpf: &mut aya::Ebpf,
        program: &v1::BundleProgram,
        hook: &HookSpec,
        gen_dir: &Path,
    ) -> Result<(), LoadError>;

    /// Makes the programs staged in `next` the ones that run, whatever the hooks run now
    /// (the kernel says what that is, not the agent's memory). On error nothing changed; on
    /// success the result undoes it.
    fn commit(
        &self,
        programs: &[(&v1::BundleProgram, &'static HookSpec)],
        next: &Path,
        links: &Path,
    ) -> Result<Undo, LoadError>;

    /// Checks with the kernel that every hook of `programs` runs the program pinned in
    /// `gen_dir`.
    fn confirm(
        &self,
        programs: &[(&v1::BundleProgram, &'static HookSpec)],
        gen_dir: &Path,
        links: &Path,
    ) -> Result<(), LoadError> {
        for (p, _) in programs {
            let pin = self.link_pin(links, gen_dir, &p.name);
            let running = LinkFd::open(&pin)
                .and_then(|link| link.prog_id())
                .map_err(super::io_err(format!("reading link {}", pin.display())))?;
            let staged = ProgFd::open(&prog_pin(gen_dir, &p.name))
                .and_then(|prog| prog.id())
                .map_err(super::io_err(format!("reading pinned program {}", p.name)))?;
            if running != staged {
                return Err(LoadError::NotEnforcing { program: p.name.clone(), running, staged });
            }
        }
        Ok(())
    }

    /// Where the link of `program` is pinned (`links`: the stable links directory).
    fn link_pin(&self, links: &Path, gen_dir: &Path, program: &str) -> PathBuf;

    /// Whether a generation keeps running until its directory's pins are removed, so that
    /// releasing it must wait for the kernel to detach it.
    fn overlaps(&self) -> bool;
}

/// The hooks of the table a set of strategies attaches, in table order.
pub(super) fn hooks_of(strategies: &[Box<dyn Strategy>]) -> impl Iterator<Item = &'static HookSpec> + '_ {
    HOOKS.iter().filter(|h| strategies.iter().any(|s| s.handles(h)))
}

/// An aya refusal while doing `what` to program `name`.
fn program_error(what: &'static str, name: &str) -> impl FnOnce(aya::programs::ProgramError) -> LoadError {
    let program = name.to_owned();
    move |source| LoadError::Program { what, program, source }
}

/// Stable cgroup links moved with `BPF_LINK_UPDATE`.
#[derive(Debug)]
pub(super) struct CgroupLinks {
    /// The cgroup the programs attach to (its subtree is covered).
    cgroup: PathBuf,
    /// Whether it attaches the `sock_addr` programs too (else only sockops).
    sock_addr: bool,
}

/// The owned link aya handed over, as a pinnable fd link.
fn fd_link<L: TryInto<FdLink, Error = aya::programs::links::LinkError>>(
    taken: Result<L, aya::programs::ProgramError>,
    name: &str,
) -> Result<FdLink, LoadError> {
    taken
        .map_err(program_error("taking the link of", name))?
        .try_into()
        .map_err(|source| LoadError::Link { program: name.to_owned(), source })
}

impl CgroupLinks {
    /// Creates and pins the cgroup link for a program that has none yet.
    fn attach(&self, p: &v1::BundleProgram, hook: Attach, gen_dir: &Path, pin: &Path) -> Result<(), LoadError> {
        use aya::programs::cgroup_sock_addr::CgroupSockAddrAttachType as T;
        let program_error = |what| program_error(what, &p.name);
        let cgroup = File::open(&self.cgroup).map_err(super::io_err(format!("opening {}", self.cgroup.display())))?;
        let link: FdLink = match hook {
            Attach::CgroupSockAddr(hook) => {
                let attach_type = match hook {
                    SockAddrHook::Connect4 => T::Connect4,
                    SockAddrHook::Connect6 => T::Connect6,
                    SockAddrHook::Bind4 => T::Bind4,
                    SockAddrHook::Bind6 => T::Bind6,
                };
                let mut program = CgroupSockAddr::from_pin(prog_pin(gen_dir, &p.name), attach_type)
                    .map_err(program_error("reopening pinned program"))?;
                // aya 0.14 passes the mode as link flags; only Single is accepted by link_create.
                let id = program.attach(&cgroup, CgroupAttachMode::Single).map_err(program_error("attaching"))?;
                fd_link(program.take_link(id), &p.name)?
            }
            Attach::CgroupSockOps => {
                let mut program =
                    SockOps::from_pin(prog_pin(gen_dir, &p.name)).map_err(program_error("reopening pinned program"))?;
                let id = program.attach(&cgroup, CgroupAttachMode::Single).map_err(program_error("attaching"))?;
                fd_link(program.take_link(id), &p.name)?
            }
            Attach::Lsm { .. } => return Ok(()),
        };
        link.pin(pin).map_err(|source| LoadError::Pin { what: format!("link {}", pin.display()), source })?;
        Ok(())
    }
}

impl Strategy for CgroupLinks {
    fn handles(&self, hook: &HookSpec) -> bool {
        match hook.attach {
            Attach::CgroupSockAddr(_) => self.sock_addr,
            Attach::CgroupSockOps => true,
            Attach::Lsm { .. } => false,
        }
    }

    fn stage(
        &self,
        ebpf: &mut aya::Ebpf,
        p: &v1::BundleProgram,
        hook: &HookSpec,
        gen_dir: &Path,
    ) -> Result<(), LoadError> {
        let pin = prog_pin(gen_dir, &p.name);
        let pinned = if matches!(hook.attach, Attach::CgroupSockOps) {
            let program: &mut SockOps = super::program_mut(ebpf, &p.name)?;
            load_retrying(&p.name, || program.load())?;
            program.pin(pin)
        } else {
            let program: &mut CgroupSockAddr = super::program_mut(ebpf, &p.name)?;
            load_retrying(&p.name, || program.load())?;
            program.pin(pin)
        };
        pinned.map_err(|source| LoadError::Pin { what: format!("program {}", p.name), source })
    }

    fn commit(
        &self,
        programs: &[(&v1::BundleProgram, &'static HookSpec)],
        next: &Path,
        links: &Path,
    ) -> Result<Undo, LoadError> {
        std::fs::create_dir_all(links).map_err(super::io_err("creating the links directory"))?;
        let mut undo = Undo::default();
        for &(p, hook) in programs {
            if !matches!(hook.attach, Attach::CgroupSockAddr(_) | Attach::CgroupSockOps) {
                continue;
            }
            let step = (|| {
                let new = ProgFd::open(&prog_pin(next, &p.name))
                    .map_err(super::io_err(format!("opening pinned program {}", p.name)))?;
                let pin = self.link_pin(links, next, &p.name);
                if !pin.exists() {
                    self.attach(p, hook.attach, next, &pin)?;
                    undo.created.push(pin);
                    return Ok(());
                }
                let link = LinkFd::open(&pin).map_err(super::io_err(format!("opening link {}", pin.display())))?;
                // What the link runs according to the kernel: after a crash mid-swap that
                // need not be the generation the agent last recorded.
                let old = link.prog().map_err(super::io_err(format!("reading link {}", pin.display())))?;
                let ids = (old.id(), new.id());
                if let (Ok(old), Ok(new)) = ids
                    && old == new
                {
                    return Ok(());
                }
                link.update(&new, Some(&old)).map_err(super::io_err(format!("BPF_LINK_UPDATE on {}", p.name)))?;
                undo.moved.push((link, new, old));
                super::fault_point("hook");
                Ok(())
            })();
            if let Err(e) = step {
                undo.undo();
                return Err(e);
            }
        }
        Ok(undo)
    }

    fn link_pin(&self, links: &Path, _gen_dir: &Path, program: &str) -> PathBuf {
        links.join(program)
    }

    fn overlaps(&self) -> bool {
        false
    }
}

/// BPF-LSM links, one set per generation.
#[derive(Debug)]
pub(super) struct LsmGenerations {
    resolve_paths: bool,
    /// The kernel's BTF, parsed once (every LSM load needs it; parsing vmlinux BTF is the
    /// slowest part of a load).
    btf: OnceLock<aya::Btf>,
}

impl Strategy for LsmGenerations {
    fn handles(&self, hook: &HookSpec) -> bool {
        matches!(hook.attach, Attach::Lsm { resolves_paths, .. } if self.resolve_paths || !resolves_paths)
    }

    fn stage(
        &self,
        ebpf: &mut aya::Ebpf,
        p: &v1::BundleProgram,
        hook: &HookSpec,
        gen_dir: &Path,
    ) -> Result<(), LoadError> {
        let Attach::Lsm { hook: lsm_hook, .. } = hook.attach else { return Ok(()) };
        let btf = if let Some(btf) = self.btf.get() {
            btf
        } else {
            let parsed = aya::Btf::from_sys_fs().map_err(LoadError::KernelBtf)?;
            self.btf.get_or_init(|| parsed)
        };
        let program: &mut aya::programs::Lsm = super::program_mut(ebpf, &p.name)?;
        load_retrying(&p.name, || program.load(lsm_hook, btf))?;
        program
            .pin(prog_pin(gen_dir, &p.name))
            .map_err(|source| LoadError::Pin { what: format!("program {}", p.name), source })?;
        let program_error = |what| program_error(what, &p.name);
        let id = program.attach().map_err(program_error("attaching"))?;
        let link: FdLink = program.take_link(id).map_err(program_error("taking the link of"))?.into();
        let pin = self.link_pin(Path::new(""), gen_dir, &p.name);
        link.pin(&pin).map_err(|source| LoadError::Pin { what: format!("link {}", pin.display()), source })?;
        Ok(())
    }

    fn commit(
        &self,
        _programs: &[(&v1::BundleProgram, &'static HookSpec)],
        _next: &Path,
        _links: &Path,
    ) -> Result<Undo, LoadError> {
        // Attached in `stage`; removing the old generation's pins detaches it.
        Ok(Undo::default())
    }

    fn link_pin(&self, _links: &Path, gen_dir: &Path, program: &str) -> PathBuf {
        gen_dir.join(format!("link_{program}"))
    }

    fn overlaps(&self) -> bool {
        true
    }
}
