//! The few raw `bpf(2)` commands aya 0.14 has no public API for: map updates with runtime
//! key/value sizes, opening pins, and `BPF_LINK_UPDATE` (KERNEL.md "Links, pins, swaps").
//! Attribute layouts are the UAPI's (`include/uapi/linux/bpf.h`, `union bpf_attr`).
//!
//! Pinned objects come back typed ([`ProgFd`], [`LinkFd`], [`MapFd`]), so a link update
//! cannot be handed a map, nor a map write a program.

use palisade_contract::insn;
use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// `BPF_F_REPLACE`: the update fails unless the link holds `old_prog_fd`.
const BPF_F_REPLACE: u32 = 1 << 2;

#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
struct GetFdByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is a live, properly sized #[repr(C)] prefix of `union bpf_attr` for
    // `cmd`; the kernel reads (and for some commands writes) at most `size_of::<T>()` bytes.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// `BPF_MAP_UPDATE_ELEM` with `BPF_ANY`. Key and value lengths must match the map.
pub fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// `union bpf_attr` for the `BPF_MAP_*_BATCH` commands.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `keys.len() / key_size` elements with one `BPF_MAP_UPDATE_BATCH` call per slice the
/// kernel accepts (it reports how many it wrote); falls back to one `BPF_MAP_UPDATE_ELEM` per
/// element on kernels without batch support for the map type. `Ok(false)` means it fell back.
pub fn map_update_batch(
    map: BorrowedFd<'_>,
    key_size: usize,
    keys: &[u8],
    value_size: usize,
    values: &[u8],
) -> io::Result<bool> {
    let count = keys.len() / key_size.max(1);
    let mut done = 0;
    while done < count {
        let mut attr = BatchAttr {
            in_batch: 0,
            out_batch: 0,
            keys: keys[done * key_size..].as_ptr() as u64,
            values: values[done * value_size..].as_ptr() as u64,
            count: (count - done).min(u32::MAX as usize) as u32,
            map_fd: map.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        match bpf(BPF_MAP_UPDATE_BATCH, &mut attr) {
            Ok(_) => done += attr.count as usize,
            Err(e) if done == 0 && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP | 524)) => {
                // 524 = ENOTSUPP (kernel-internal, returned for map types without batch ops).
                for i in 0..count {
                    map_update(
                        map,
                        &keys[i * key_size..(i + 1) * key_size],
                        &values[i * value_size..(i + 1) * value_size],
                    )?;
                }
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        if attr.count == 0 {
            return Err(io::Error::other("BPF_MAP_UPDATE_BATCH wrote no element"));
        }
    }
    Ok(true)
}

/// `BPF_MAP_DELETE_ELEM`; a missing key is not an error.
pub fn map_delete(map: BorrowedFd<'_>, key: &[u8]) -> io::Result<()> {
    let mut attr =
        MapElemAttr { map_fd: map.as_raw_fd() as u32, _pad: 0, key: key.as_ptr() as u64, value: 0, flags: 0 };
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other.map(drop),
    }
}

/// `BPF_OBJ_GET`: opens a pinned program, map or link.
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pin path contains NUL"))?;
    let mut attr = ObjGetAttr { pathname: c.as_ptr() as u64, bpf_fd: 0, file_flags: 0 };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A loaded program.
#[derive(Debug)]
pub struct ProgFd(OwnedFd);

impl ProgFd {
    /// Opens the program pinned at `pin`.
    pub fn open(pin: &Path) -> io::Result<Self> {
        obj_get(pin).map(Self)
    }

    /// Opens the program with kernel id `id` (`BPF_PROG_GET_FD_BY_ID`).
    pub fn by_id(id: u32) -> io::Result<Self> {
        let mut attr = GetFdByIdAttr { id, next_id: 0, open_flags: 0 };
        let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?;
        // SAFETY: BPF_PROG_GET_FD_BY_ID returned a new file descriptor that nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Its kernel id (`BPF_OBJ_GET_INFO_BY_FD`; `struct bpf_prog_info` starts with `type`,
    /// then `id`).
    pub fn id(&self) -> io::Result<u32> {
        let mut info = [0_u32; 2];
        let mut attr = InfoByFdAttr { bpf_fd: self.0.as_raw_fd() as u32, info_len: 8, info: info.as_mut_ptr() as u64 };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        Ok(info[1])
    }
}

/// A BPF link.
#[derive(Debug)]
pub struct LinkFd(OwnedFd);

impl LinkFd {
    /// Opens the link pinned at `pin`.
    pub fn open(pin: &Path) -> io::Result<Self> {
        obj_get(pin).map(Self)
    }

    /// The id of the program the link runs now (`struct bpf_link_info` starts with `type`,
    /// `id`, `prog_id`).
    pub fn prog_id(&self) -> io::Result<u32> {
        let mut info = [0_u32; 3];
        let mut attr = InfoByFdAttr { bpf_fd: self.0.as_raw_fd() as u32, info_len: 12, info: info.as_mut_ptr() as u64 };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        Ok(info[2])
    }

    /// The program the link runs now.
    pub fn prog(&self) -> io::Result<ProgFd> {
        ProgFd::by_id(self.prog_id()?)
    }

    /// `BPF_LINK_UPDATE`: atomically swaps the link's program to `new`. With `expected`
    /// (`BPF_F_REPLACE`) the update fails with EPERM unless the link holds exactly that
    /// program.
    pub fn update(&self, new: &ProgFd, expected: Option<&ProgFd>) -> io::Result<()> {
        let mut attr = LinkUpdateAttr {
            link_fd: self.0.as_raw_fd() as u32,
            new_prog_fd: new.0.as_raw_fd() as u32,
            flags: if expected.is_some() { BPF_F_REPLACE } else { 0 },
            old_prog_fd: expected.map_or(0, |f| f.0.as_raw_fd() as u32),
        };
        bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
    }
}

/// A map, for the element commands above.
#[derive(Debug)]
pub struct MapFd(OwnedFd);

impl MapFd {
    /// Opens the map pinned at `pin`.
    pub fn open(pin: &Path) -> io::Result<Self> {
        obj_get(pin).map(Self)
    }

    /// `BPF_MAP_LOOKUP_ELEM` of a `u32` key in a map of `u64` values; `Ok(None)` when the key
    /// is absent.
    pub fn lookup_u64(&self, key: u32) -> io::Result<Option<u64>> {
        let key = key.to_le_bytes();
        let mut value = [0_u8; 8];
        let mut attr = MapElemAttr {
            map_fd: self.0.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            flags: 0,
        };
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(_) => Ok(Some(u64::from_le_bytes(value))),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl AsFd for MapFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Whether a program with this id still exists (`BPF_PROG_GET_FD_BY_ID`). A program is freed
/// only after every link that ran it has been released and detached.
pub fn prog_exists(id: u32) -> io::Result<bool> {
    match ProgFd::by_id(id) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Mounts bpffs at `dir` unless a bpffs is already mounted there.
pub fn ensure_bpffs(dir: &Path) -> io::Result<()> {
    if is_bpffs(dir)? {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let target = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: all arguments are valid NUL-terminated strings or null; mount(2) copies them.
    let ret = unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `dir` is on a bpffs (statfs magic `BPF_FS_MAGIC`).
pub fn is_bpffs(dir: &Path) -> io::Result<bool> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Ok(c) = CString::new(dir.as_os_str().as_encoded_bytes()) else { return Ok(false) };
    // SAFETY: statfs is plain old data; zeroed is a valid initial value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid out-pointer.
    let ret = unsafe { libc::statfs(c.as_ptr(), &raw mut st) };
    if ret != 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::NotFound { Ok(false) } else { Err(e) };
    }
    Ok(st.f_type == BPF_FS_MAGIC)
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;

/// `BPF_PROG_TYPE_*` values used by the feature probe.
pub mod prog_type {
    /// Socket filter.
    pub const SOCKET_FILTER: u32 = 1;
    /// cgroup sock_addr.
    pub const CGROUP_SOCK_ADDR: u32 = 18;
    /// sock_ops.
    pub const SOCK_OPS: u32 = 13;
    /// BPF-LSM.
    pub const LSM: u32 = 29;
}

/// `BPF_CGROUP_INET4_CONNECT`.
pub const ATTACH_INET4_CONNECT: u32 = 10;
/// `BPF_LSM_MAC`.
pub const ATTACH_LSM_MAC: u32 = 27;

#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
}

/// Loads `r0 = ret; exit` as a program of `prog_type` and closes it: the feature probe. An
/// error means the kernel refuses the type (e.g. EPERM for BPF-LSM on kernels without it).
pub fn trial_load(prog_type: u32, expected_attach_type: u32, attach_btf_id: u32, ret: i32) -> io::Result<()> {
    let insns = insn::encode_all(&[insn::mov64_imm(insn::R0, ret), insn::exit()]);
    trial_load_insns(prog_type, expected_attach_type, attach_btf_id, &insns)
}

/// Loads encoded instructions as a program of `prog_type` and closes it.
pub fn trial_load_insns(prog_type: u32, expected_attach_type: u32, attach_btf_id: u32, insns: &[u8]) -> io::Result<()> {
    prog_load(prog_type, expected_attach_type, attach_btf_id, insns, &mut []).map(drop)
}

/// `BPF_PROG_LOAD`; the verifier's log goes to `log` when it is not empty.
fn prog_load(
    prog_type: u32,
    expected_attach_type: u32,
    attach_btf_id: u32,
    insns: &[u8],
    log: &mut [u8],
) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: (insns.len() / 8) as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: u32::from(!log.is_empty()),
        log_size: log.len() as u32,
        log_buf: if log.is_empty() { 0 } else { log.as_mut_ptr() as u64 },
        kern_version: 0,
        prog_flags: 0,
        prog_name: *b"palisade_probe\0\0",
        prog_ifindex: 0,
        expected_attach_type,
        prog_btf_fd: 0,
        func_info_rec_size: 0,
        func_info: 0,
        func_info_cnt: 0,
        line_info_rec_size: 0,
        line_info: 0,
        line_info_cnt: 0,
        attach_btf_id,
    };
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_PROG_TYPE_SOCKET_FILTER`.
pub const PROG_SOCKET_FILTER: u32 = 1;
const BPF_PROG_TEST_RUN: libc::c_long = 10;

#[repr(C)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// A socket filter the verifier refused, with its log.
#[derive(Debug, thiserror::Error)]
#[error("the kernel refused the socket filter: {source}{}", if log.is_empty() { String::new() } else { format!("\n{log}") })]
pub struct SocketFilterRefused {
    /// What `BPF_PROG_LOAD` returned.
    #[source]
    pub source: io::Error,
    /// The verifier's log (its last lines).
    pub log: String,
}

/// What one `BPF_PROG_TEST_RUN` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestRun {
    /// The program's return value (of the last repetition).
    pub retval: u32,
    /// Mean nanoseconds per repetition, as the kernel measured it.
    pub duration_ns: u32,
}

impl ProgFd {
    /// The raw descriptor, for `SO_ATTACH_BPF` (borrowed: `self` keeps owning it).
    pub fn as_raw(&self) -> i32 {
        self.0.as_raw_fd()
    }

    /// Loads `insns` as a socket filter (`BPF_PROG_TYPE_SOCKET_FILTER`).
    pub fn load_socket_filter(insns: &[u8]) -> Result<Self, SocketFilterRefused> {
        prog_load(PROG_SOCKET_FILTER, 0, 0, insns, &mut []).map(Self).or_else(|first| {
            // Again with the log, only to explain the refusal.
            let mut log = vec![0_u8; 1 << 20];
            match prog_load(PROG_SOCKET_FILTER, 0, 0, insns, &mut log) {
                Ok(fd) => Ok(Self(fd)),
                Err(again) => {
                    let text = String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(log.len())])
                        .into_owned();
                    let tail: Vec<&str> = text.lines().rev().take(20).collect();
                    let mut log = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
                    // Since Linux 6.4 a log that fills the buffer turns the error into ENOSPC:
                    // the first attempt's error is the verifier's.
                    if again.raw_os_error() == Some(libc::ENOSPC) {
                        log.push_str("\n(verifier log truncated)");
                    }
                    Err(SocketFilterRefused { source: first, log })
                }
            }
        })
    }

    /// Runs the program `repeat` times over `data` with context `ctx`
    /// (`BPF_PROG_TEST_RUN`); for a socket filter the context is a `struct __sk_buff` prefix.
    pub fn test_run(&self, data: &[u8], ctx: &[u8], repeat: u32) -> io::Result<TestRun> {
        let mut attr = TestRunAttr {
            prog_fd: self.0.as_raw_fd() as u32,
            retval: 0,
            data_size_in: data.len() as u32,
            data_size_out: 0,
            data_in: data.as_ptr() as u64,
            data_out: 0,
            repeat,
            duration: 0,
            ctx_size_in: ctx.len() as u32,
            ctx_size_out: 0,
            ctx_in: if ctx.is_empty() { 0 } else { ctx.as_ptr() as u64 },
            ctx_out: 0,
            flags: 0,
            cpu: 0,
            batch_size: 0,
            _pad: 0,
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        Ok(TestRun { retval: attr.retval, duration_ns: attr.duration })
    }
}

#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

/// Creates and closes a map of `map_type`: the feature probe for ring buffers.
pub fn trial_map(map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> io::Result<()> {
    let mut attr = MapCreateAttr { map_type, key_size, value_size, max_entries };
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new fd we own.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Ok(())
}

/// Makes every thread allocate from glibc's main arena instead of an arena per thread:
/// freed memory in per-thread arenas stays mapped, fragmented, and `malloc_trim` cannot give
/// most of it back. Measured on 6.18 (release build, idle, one bundle enforced): 20 MB RSS
/// with an arena per thread, 8.7 MB with one. The agent allocates little and rarely in
/// parallel, so one arena costs it no throughput. Call before any thread is spawned; a no-op
/// on other C libraries.
pub fn limit_allocator_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; it has no memory preconditions.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Hands memory the allocator keeps after frees back to the kernel. glibc keeps what a
/// thread freed in that thread's arena; after a probe or a bundle load (kernel BTF, decoded
/// bundles: tens of MB of short-lived allocations) an idle agent would otherwise hold them
/// for ever. A no-op on other C libraries.
pub fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own arenas; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
