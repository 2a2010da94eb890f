//! Runs operations through a compiled bundle's real programs in the [`crate::bpf::interp`]
//! interpreter, with the contexts the kernel would hand them: a `struct bpf_sock_addr` for
//! the cgroup hooks, the LSM hooks' argument arrays with the kernel objects they point to
//! (`struct socket`, a `sockaddr`, `struct linux_binprm`, `struct file`). No root needed:
//! property tests and tools replay attempts against the bytecode itself.
//!
//! cgroup ids are synthetic ([`cgroup_id`]); the cgroups maps are filled with them as the agent
//! fills them with inode numbers.

use std::net::IpAddr;

use palisade_contract::{Attach, Hook, SockAddrHook, record};

use crate::{
    bpf::interp::{Fault, Maps, MapsError, Run, Task},
    bundle::Compiled,
    policy::{
        eval::{Attempt, PathAttempt, Verdict},
        model::{Operation, Protocol, cgroup_components},
    },
    program::{KernelOffsets, Returns as _},
};

/// What one program run decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Simulated {
    /// The hook that ran.
    pub hook: Hook,
    /// The verdict its return value means.
    pub verdict: Verdict,
    /// Records it wrote to the events ring buffer.
    pub records: Vec<Vec<u8>>,
}

/// Why a simulated run failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimulateError {
    /// The bundle's maps could not be built.
    #[error("building the maps")]
    Maps(#[source] MapsError),
    /// The program faulted.
    #[error("{hook:?} faulted")]
    Fault {
        /// Hook.
        hook: Hook,
        /// Fault.
        #[source]
        source: Fault,
    },
    /// The program returned something that is neither its allow nor its deny value.
    #[error("{hook:?} returned {ret}, neither its allow nor its deny value")]
    Return {
        /// Hook.
        hook: Hook,
        /// Return value.
        ret: u64,
    },
    /// The bundle has no program for the hook.
    #[error("the bundle has no {0:?} program")]
    NoProgram(Hook),
}

/// The synthetic cgroup id of a cgroup path (components from the cgroup2 root): never 0.
pub fn cgroup_id(components: &[String]) -> u64 {
    // FNV-1a over "/a/b"; the root is "/".
    let path = format!("/{}", components.join("/"));
    path.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)) | 1
}

/// What the helpers say about a task in cgroup `components` running as `uid`.
pub fn task(components: &[String], uid: u32) -> Task {
    let mut comm = [0; 16];
    comm[..4].copy_from_slice(b"test");
    Task {
        time_ns: 1_000_000_007,
        tgid: 4242,
        pid: 4243,
        uid,
        gid: 100,
        comm,
        cgroups: (0..=components.len()).map(|level| cgroup_id(&components[..level])).collect(),
    }
}

/// The hooks that decide a network attempt: the cgroup program of its address family and the
/// LSM program of its operation.
pub fn network_hooks(attempt: &Attempt) -> [Hook; 2] {
    match (attempt.operation, attempt.addr) {
        (Operation::Bind, IpAddr::V4(_)) => [Hook::Bind4, Hook::LsmSocketBind],
        (Operation::Bind, IpAddr::V6(_)) => [Hook::Bind6, Hook::LsmSocketBind],
        (_, IpAddr::V4(_)) => [Hook::Connect4, Hook::LsmSocketConnect],
        (_, IpAddr::V6(_)) => [Hook::Connect6, Hook::LsmSocketConnect],
    }
}

/// A bundle ready to run.
#[derive(Debug)]
pub struct Simulation<'c> {
    compiled: &'c Compiled,
    offsets: KernelOffsets,
    maps: Maps,
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

fn put(bytes: &mut [u8], at: usize, value: &[u8]) {
    bytes[at..at + value.len()].copy_from_slice(value);
}

impl<'c> Simulation<'c> {
    /// The bundle's maps as the agent fills them (selected cgroups by [`cgroup_id`]).
    pub fn new(compiled: &'c Compiled, offsets: KernelOffsets) -> Result<Self, SimulateError> {
        let mut maps = Maps::from_bundle(&compiled.content.maps).map_err(SimulateError::Maps)?;
        for c in &compiled.content.cgroups {
            let id = cgroup_id(&cgroup_components(&c.path));
            maps.update(&c.map, &id.to_le_bytes(), &c.class.to_le_bytes()).map_err(SimulateError::Maps)?;
        }
        Ok(Self { compiled, offsets, maps })
    }

    /// The maps the programs read and write (to fill a ring buffer, or read a counter).
    pub fn maps_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }

    fn program(&self, hook: Hook) -> Result<&'c crate::bpf::asm::Program, SimulateError> {
        self.compiled.programs.iter().find(|(h, _)| *h == hook).map(|(_, p)| p).ok_or(SimulateError::NoProgram(hook))
    }

    fn finish(hook: Hook, out: Result<crate::bpf::interp::Outcome, Fault>) -> Result<Simulated, SimulateError> {
        let out = out.map_err(|source| SimulateError::Fault { hook, source })?;
        let verdict = match out.ret as i64 {
            r if r == i64::from(hook.allow()) => Verdict::Allow,
            r if r == i64::from(hook.deny()) => Verdict::Deny,
            _ => return Err(SimulateError::Return { hook, ret: out.ret }),
        };
        Ok(Simulated { hook, verdict, records: out.records.into_iter().map(|(_, r)| r).collect() })
    }

    /// Runs a connect or bind attempt through `hook` (one of [`network_hooks`]).
    pub fn network(&mut self, hook: Hook, attempt: &Attempt) -> Result<Simulated, SimulateError> {
        let program = self.program(hook)?;
        let mut run = Run::new(&mut self.maps, task(&attempt.cgroup, attempt.uid));
        let port = attempt.port.to_be_bytes();
        let ctx = match hook.spec().attach {
            Attach::CgroupSockAddr(which) => {
                // struct bpf_sock_addr (include/uapi/linux/bpf.h): user_family 0, user_ip4 4,
                // user_ip6 8, user_port 24 (network order in the low 16 bits), family 28,
                // type 32, protocol 36.
                let mut ctx = vec![0_u8; 80];
                let v6 = matches!(which, SockAddrHook::Connect6 | SockAddrHook::Bind6);
                let family = if v6 { AF_INET6 } else { AF_INET };
                put(&mut ctx, 0, &u32::from(family).to_le_bytes());
                match attempt.addr {
                    IpAddr::V4(a) => put(&mut ctx, 4, &a.octets()),
                    IpAddr::V6(a) => put(&mut ctx, 8, &a.octets()),
                }
                put(&mut ctx, 24, &port);
                put(&mut ctx, 28, &u32::from(family).to_le_bytes());
                let (sock_type, protocol) = if attempt.protocol == Protocol::Tcp { (1_u32, 6_u32) } else { (2, 17) };
                put(&mut ctx, 32, &sock_type.to_le_bytes());
                put(&mut ctx, 36, &protocol.to_le_bytes());
                run.object(ctx)
            }
            Attach::CgroupSockOps => return Err(SimulateError::NoProgram(hook)),
            Attach::Lsm { .. } => {
                // socket_connect / socket_bind(struct socket *, struct sockaddr *, int): the
                // sockaddr lives in a kernel sockaddr_storage (128 bytes).
                let mut socket = vec![0_u8; 64];
                let sock_type: u16 = if attempt.protocol == Protocol::Tcp { 1 } else { 2 };
                put(&mut socket, self.offsets.socket_type as usize, &sock_type.to_le_bytes());
                let mut sockaddr = vec![0_u8; 128];
                match attempt.addr {
                    IpAddr::V4(a) => {
                        put(&mut sockaddr, 0, &AF_INET.to_le_bytes());
                        put(&mut sockaddr, 4, &a.octets());
                    }
                    IpAddr::V6(a) => {
                        put(&mut sockaddr, 0, &AF_INET6.to_le_bytes());
                        put(&mut sockaddr, 8, &a.octets());
                    }
                }
                put(&mut sockaddr, 2, &port);
                let len: u64 = if attempt.addr.is_ipv4() { 16 } else { 28 };
                let args = [run.object(socket), run.object(sockaddr), len];
                run.object(args.iter().flat_map(|a| a.to_le_bytes()).collect())
            }
        };
        Self::finish(hook, run.exec(program, ctx))
    }

    /// Runs an `exec` or `files` attempt through its LSM program.
    pub fn path(&mut self, attempt: &PathAttempt) -> Result<Simulated, SimulateError> {
        let hook = if attempt.operation == Operation::Files { Hook::LsmFileOpen } else { Hook::LsmExec };
        let program = self.program(hook)?;
        let offsets = self.offsets;
        let mut run = Run::new(&mut self.maps, task(&attempt.cgroup, attempt.uid));
        let mut file = vec![0_u8; 256];
        // FMODE_READ and FMODE_WRITE are the access bits.
        put(&mut file, offsets.file_mode as usize, &u32::from(attempt.access).to_le_bytes());
        let file = run.object(file);
        run.resolve(file + u64::from(offsets.file_path), &attempt.path);
        let arg = if hook == Hook::LsmExec {
            let mut bprm = vec![0_u8; 256];
            put(&mut bprm, offsets.binprm_file as usize, &file.to_le_bytes());
            run.object(bprm)
        } else {
            file
        };
        let ctx = run.object(arg.to_le_bytes().to_vec());
        Self::finish(hook, run.exec(program, ctx))
    }
}

/// The record fields a network attempt must produce, for comparing with a decoded record.
pub fn expected_network_fields(hook: Hook, attempt: &Attempt) -> record::DecisionRecord {
    let (addr, family) = match attempt.addr {
        IpAddr::V4(a) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&a.octets());
            (b, record::FAMILY_V4)
        }
        IpAddr::V6(a) => (a.octets(), record::FAMILY_V6),
    };
    let t = task(&attempt.cgroup, attempt.uid);
    record::DecisionRecord {
        time_ns: t.time_ns,
        cgroup_id: t.cgroups.last().copied().unwrap_or(0),
        tgid: t.tgid,
        uid: t.uid,
        addr,
        port: attempt.port,
        family,
        detail: if attempt.protocol == Protocol::Tcp { record::PROTO_TCP } else { record::PROTO_UDP },
        hook: hook.id() as u32,
        comm: {
            let mut c = t.comm;
            c[15] = 0;
            c
        },
        ..record::DecisionRecord::default()
    }
}
