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

/// Every field, in the order agents report them.
pub const FIELDS: [Field; 4] = [SOCKET_TYPE, BINPRM_FILE, FILE_PATH, FILE_MODE];

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
