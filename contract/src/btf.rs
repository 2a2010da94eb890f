//! Kernel struct fields the generated programs read, whose offsets differ between kernels
//! (DESIGN.md §4): agents read them from the node's BTF and report them keyed
//! `"struct.member"`; the compiler patches them into the LSM programs.

/// One struct member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The key agents report the offset under (`KernelFeatures.btf_offsets`).
    pub key: &'static str,
    /// Struct name in BTF.
    pub struct_name: &'static str,
    /// Member name in BTF.
    pub member: &'static str,
}

/// `offsetof(struct socket, type)`: the LSM socket programs' protocol.
pub const SOCKET_TYPE: Field = Field { key: "socket.type", struct_name: "socket", member: "type" };
/// `offsetof(struct linux_binprm, file)`: the `exec` program's file.
pub const BINPRM_FILE: Field = Field { key: "linux_binprm.file", struct_name: "linux_binprm", member: "file" };
/// `offsetof(struct file, f_path)`: what `bpf_d_path` resolves.
pub const FILE_PATH: Field = Field { key: "file.f_path", struct_name: "file", member: "f_path" };
/// `offsetof(struct file, f_mode)`: the `files` program's access bits.
pub const FILE_MODE: Field = Field { key: "file.f_mode", struct_name: "file", member: "f_mode" };

/// `offsetof(struct sock, sk_cgrp_data)`: the sockops program's socket cgroup (its first
/// member is the `struct cgroup *`).
pub const SOCK_CGRP_DATA: Field = Field { key: "sock.sk_cgrp_data", struct_name: "sock", member: "sk_cgrp_data" };
/// `offsetof(struct sock, sk_uid)`: the socket's owner uid.
pub const SOCK_UID: Field = Field { key: "sock.sk_uid", struct_name: "sock", member: "sk_uid" };
/// `offsetof(struct cgroup, level)`: the cgroup's depth.
pub const CGROUP_LEVEL: Field = Field { key: "cgroup.level", struct_name: "cgroup", member: "level" };
/// `offsetof(struct cgroup, kn)`: its kernfs node, whose id is the cgroup id.
pub const CGROUP_KN: Field = Field { key: "cgroup.kn", struct_name: "cgroup", member: "kn" };
/// `offsetof(struct cgroup, ancestors)`: the ancestors by level (Linux 6.0 and later).
pub const CGROUP_ANCESTORS: Field = Field { key: "cgroup.ancestors", struct_name: "cgroup", member: "ancestors" };
/// `offsetof(struct kernfs_node, id)`: the cgroup id of a cgroup's node.
pub const KERNFS_NODE_ID: Field = Field { key: "kernfs_node.id", struct_name: "kernfs_node", member: "id" };

/// Every field, in the order agents report them.
pub const FIELDS: [Field; 10] = [
    SOCKET_TYPE,
    BINPRM_FILE,
    FILE_PATH,
    FILE_MODE,
    SOCK_CGRP_DATA,
    SOCK_UID,
    CGROUP_LEVEL,
    CGROUP_KN,
    CGROUP_ANCESTORS,
    KERNFS_NODE_ID,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_keys_are_struct_dot_member_and_unique() {
        for f in FIELDS {
            assert_eq!(f.key, format!("{}.{}", f.struct_name, f.member));
        }
        let mut keys: Vec<&str> = FIELDS.iter().map(|f| f.key).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), FIELDS.len());
    }
}
