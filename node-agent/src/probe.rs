//! Kernel feature probe: what this node can enforce, found by trying (DESIGN.md §5).

use std::path::{Path, PathBuf};

use palisade_contract::insn::{self, Alu, R0, R1, R2, R3, R10, Size, helper};
use palisade_proto::v1;

use crate::{btf, sys};

/// Where cgroup2 is mounted, from `/proc/self/mountinfo` (never assumed: these machines
/// use the hybrid layout with cgroup2 at /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_cgroup2_mount(&text)
}

/// Parses mountinfo text; prefers a mount of the hierarchy root.
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mut candidates = mountinfo.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        let root = *fields.get(3)?;
        let mount_point = unescape(fields.get(4)?);
        Some((root == "/", PathBuf::from(mount_point)))
    });
    let first = candidates.next()?;
    if first.0 {
        return Some(first.1);
    }
    candidates.find(|(root, _)| *root).map(|(_, p)| p).or(Some(first.1))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(v) = u8::from_str_radix(&code, 8) {
                out.push(char::from(v));
                continue;
            }
            out.push('\\');
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    out
}

fn kernel_release() -> String {
    // SAFETY: utsname is plain old data and uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    if unsafe { libc::uname(&raw mut uts) } != 0 {
        return String::new();
    }
    let bytes: Vec<u8> = uts.release.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn lsm_list() -> String {
    let path = Path::new("/sys/kernel/security/lsm");
    if !path.exists() {
        // securityfs is not always mounted; mounting it is harmless and lets us read the list.
        // SAFETY: static NUL-terminated strings; mount(2) copies them.
        let _ = unsafe {
            libc::mount(
                c"securityfs".as_ptr(),
                c"/sys/kernel/security".as_ptr(),
                c"securityfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
    }
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Whether BPF-LSM programs can be loaded: `bpf` must be an active LSM and a trivial
/// `socket_connect` program must load (the project's hosts list `bpf` yet refuse with EPERM).
fn bpf_lsm(btf_available: bool) -> bool {
    if !btf_available || !lsm_list().split(',').any(|l| l.trim() == "bpf") {
        return false;
    }
    let Ok(btf) = aya::Btf::from_sys_fs() else { return false };
    let Ok(id) = btf.id_by_type_name_kind("bpf_lsm_socket_connect", aya_obj::btf::BtfKind::Func) else { return false };
    match sys::trial_load(sys::prog_type::LSM, sys::ATTACH_LSM_MAC, id, 0) {
        Ok(()) => true,
        Err(error) => {
            tracing::info!(%error, "BPF-LSM is listed but the kernel refuses LSM programs");
            false
        }
    }
}

/// Whether BPF-LSM programs on the path hooks may resolve paths: a `file_open` program that
/// calls `bpf_d_path` on `&file->f_path` must load, as the `exec` and `files` programs do
/// (older kernels refuse the helper in LSM programs).
fn bpf_lsm_paths(f_path: Option<u32>) -> bool {
    let (Some(f_path), Ok(btf)) = (f_path, aya::Btf::from_sys_fs()) else { return false };
    let Ok(id) = btf.id_by_type_name_kind("bpf_lsm_file_open", aya_obj::btf::BtfKind::Func) else { return false };
    let Ok(f_path) = i32::try_from(f_path) else { return false };
    let program = insn::encode_all(&[
        // r1 = &file->f_path (the hook's first argument, a BTF-typed struct file *)
        insn::ldx(Size::DW, R1, R1, 0),
        insn::alu64_imm(Alu::Add, R1, f_path),
        // a zeroed 16-byte buffer at r10 - 16
        insn::st(Size::DW, R10, -16, 0),
        insn::st(Size::DW, R10, -8, 0),
        insn::mov64_reg(R2, R10),
        insn::alu64_imm(Alu::Add, R2, -16),
        insn::mov64_imm(R3, 16),
        insn::call(helper::D_PATH),
        insn::mov64_imm(R0, 0),
        insn::exit(),
    ]);
    match sys::trial_load_insns(sys::prog_type::LSM, sys::ATTACH_LSM_MAC, id, &program) {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, "BPF-LSM cannot resolve paths here: exec and files sections are not enforceable");
            false
        }
    }
}

/// Probes the running kernel.
pub fn probe() -> v1::KernelFeatures {
    let btf_blob = std::fs::read("/sys/kernel/btf/vmlinux").ok();
    let btf_offsets = btf_blob
        .as_deref()
        .map(|b| {
            btf::member_offsets(b, &btf::FIELDS).unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot read struct offsets from kernel BTF");
                std::collections::BTreeMap::default()
            })
        })
        .unwrap_or_default();
    let ok = |r: std::io::Result<()>| r.is_ok();
    let lsm = bpf_lsm(btf_blob.is_some());
    v1::KernelFeatures {
        kernel_release: kernel_release(),
        bpf_lsm: lsm,
        bpf_lsm_paths: lsm && bpf_lsm_paths(btf_offsets.get(palisade_contract::btf::FILE_PATH.key).copied()),
        cgroup_sock_addr: cgroup2_mount().is_some()
            && ok(sys::trial_load(sys::prog_type::CGROUP_SOCK_ADDR, sys::ATTACH_INET4_CONNECT, 0, 1)),
        sock_ops: ok(sys::trial_load(sys::prog_type::SOCK_OPS, 0, 0, 1)),
        socket_filter: ok(sys::trial_load(sys::prog_type::SOCKET_FILTER, 0, 0, 0)),
        ring_buffer: ok(sys::trial_map(27, 0, 0, 4096)),
        btf: btf_blob.is_some(),
        // Cgroup links (and BPF_LINK_UPDATE on them) arrived with bpf_link_create in 5.7;
        // the loader relies on it and reports a NACK if it fails.
        link_update: cgroup2_mount().is_some(),
        btf_offsets,
        tcp_congestion: tcp_congestion(),
    }
}

/// The congestion control algorithms the kernel offers (loaded or built in): what a tune rule
/// may name on this node.
fn tcp_congestion() -> Vec<String> {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
        .map(|text| text.split_whitespace().take(64).filter(|n| n.len() <= 15).map(str::to_owned).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_cgroup2_mount_finds_the_unified_hierarchy() {
        let text = "24 31 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs ro\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_cgroup2_mount(text), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(parse_cgroup2_mount("24 31 0:22 / /x rw - tmpfs tmpfs ro\n"), None);
        let escaped = "41 31 0:38 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_cgroup2_mount(escaped), Some(PathBuf::from("/mnt/with space")));
    }
}
