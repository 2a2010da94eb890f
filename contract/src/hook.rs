//! The hook table: every program the compiler generates, as the agent must know it.
//!
//! A new program family is a row here (and a module in the compiler's program layer), not a
//! new branch in every `match`: the compiler reads section, symbol and record kind from the
//! row, the agent its attach kind, and event decoding its id and section.

use palisade_proto::v1;

use crate::record::RecordKind;

/// The kinds of operation policies govern, one policy section each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Operation {
    /// connect(2): `network.connect`, matched on the destination.
    #[default]
    Connect,
    /// bind(2): `network.bind`, matched on the local address and port.
    Bind,
    /// execve(2): `exec`, matched on the executable's path.
    Exec,
    /// open(2): `files`, matched on the file's path and the access asked for.
    Files,
    /// An established TCP connection: `connections.observe`, matched on the peer.
    Observe,
    /// An established TCP connection: `connections.tune`, matched on the peer.
    Tune,
}

impl Operation {
    /// Every operation, in bundle order.
    pub const ALL: [Self; 6] = [Self::Connect, Self::Bind, Self::Exec, Self::Files, Self::Observe, Self::Tune];

    /// The section's field path.
    pub fn section_path(self) -> &'static str {
        match self {
            Self::Connect => "network.connect",
            Self::Bind => "network.bind",
            Self::Exec => "exec",
            Self::Files => "files",
            Self::Observe => "connections.observe",
            Self::Tune => "connections.tune",
        }
    }

    /// Whether the operation's rules match paths (else addresses and ports).
    pub fn is_path(self) -> bool {
        matches!(self, Self::Exec | Self::Files)
    }
}

/// The cgroup `sock_addr` attach points (`BPF_CGROUP_INET{4,6}_{CONNECT,BIND}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SockAddrHook {
    /// `BPF_CGROUP_INET4_CONNECT`.
    Connect4,
    /// `BPF_CGROUP_INET6_CONNECT`.
    Connect6,
    /// `BPF_CGROUP_INET4_BIND`.
    Bind4,
    /// `BPF_CGROUP_INET6_BIND`.
    Bind6,
}

/// How the agent attaches a program: this decides its attach strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Attach {
    /// A cgroup `sock_addr` program on the agent's attach cgroup, through a pinned link that
    /// `BPF_LINK_UPDATE` moves atomically between generations.
    CgroupSockAddr(SockAddrHook),
    /// A BPF-LSM program on `hook` (`lsm/<hook>`). LSM links cannot be updated in place, so
    /// each generation attaches its own (make-before-break).
    Lsm {
        /// The LSM hook name (`socket_connect`, …).
        hook: &'static str,
        /// Whether the program calls `bpf_d_path`, which some kernels refuse to LSM programs.
        resolves_paths: bool,
    },
    /// A `sockops` program on the agent's attach cgroup (`BPF_CGROUP_SOCK_OPS`), through a
    /// pinned link moved with `BPF_LINK_UPDATE`, on every node whatever its enforcement.
    CgroupSockOps,
}

/// One generated program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HookSpec {
    /// Its identity.
    pub hook: Hook,
    /// `palisade.v1.Hook`, also written into every record the program emits.
    pub id: v1::Hook,
    /// ELF section: the program type as aya parses it.
    pub section: &'static str,
    /// ELF symbol and pin name (≤ 15 bytes: the kernel's program name limit).
    pub symbol: &'static str,
    /// How the agent attaches it.
    pub attach: Attach,
    /// The policy section it decides.
    pub operation: Operation,
    /// The records it writes to the events ring buffer.
    pub record: RecordKind,
}

/// The hooks the compiler generates programs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// `cgroup/connect4`.
    Connect4,
    /// `cgroup/connect6`.
    Connect6,
    /// `lsm/socket_connect`.
    LsmSocketConnect,
    /// `cgroup/bind4`.
    Bind4,
    /// `cgroup/bind6`.
    Bind6,
    /// `lsm/socket_bind`.
    LsmSocketBind,
    /// `lsm/bprm_check_security`.
    LsmExec,
    /// `lsm/file_open`.
    LsmFileOpen,
    /// `sockops`.
    SockOps,
}

/// The table, in [`Hook`] order (which is bundle order).
pub const HOOKS: [HookSpec; 9] = [
    HookSpec {
        hook: Hook::Connect4,
        id: v1::Hook::CgroupConnect4,
        section: "cgroup/connect4",
        symbol: "pal_connect4",
        attach: Attach::CgroupSockAddr(SockAddrHook::Connect4),
        operation: Operation::Connect,
        record: RecordKind::Decision,
    },
    HookSpec {
        hook: Hook::Connect6,
        id: v1::Hook::CgroupConnect6,
        section: "cgroup/connect6",
        symbol: "pal_connect6",
        attach: Attach::CgroupSockAddr(SockAddrHook::Connect6),
        operation: Operation::Connect,
        record: RecordKind::Decision,
    },
    HookSpec {
        hook: Hook::LsmSocketConnect,
        id: v1::Hook::LsmSocketConnect,
        section: "lsm/socket_connect",
        symbol: "pal_lsm_connect",
        attach: Attach::Lsm { hook: "socket_connect", resolves_paths: false },
        operation: Operation::Connect,
        record: RecordKind::Decision,
    },
    HookSpec {
        hook: Hook::Bind4,
        id: v1::Hook::CgroupBind4,
        section: "cgroup/bind4",
        symbol: "pal_bind4",
        attach: Attach::CgroupSockAddr(SockAddrHook::Bind4),
        operation: Operation::Bind,
        record: RecordKind::Decision,
    },
    HookSpec {
        hook: Hook::Bind6,
        id: v1::Hook::CgroupBind6,
        section: "cgroup/bind6",
        symbol: "pal_bind6",
        attach: Attach::CgroupSockAddr(SockAddrHook::Bind6),
        operation: Operation::Bind,
        record: RecordKind::Decision,
    },
    HookSpec {
        hook: Hook::LsmSocketBind,
        id: v1::Hook::LsmSocketBind,
        section: "lsm/socket_bind",
        symbol: "pal_lsm_bind",
        attach: Attach::Lsm { hook: "socket_bind", resolves_paths: false },
        operation: Operation::Bind,
        record: RecordKind::Decision,
    },
    HookSpec {
        hook: Hook::LsmExec,
        id: v1::Hook::LsmBprmCheckSecurity,
        section: "lsm/bprm_check_security",
        symbol: "pal_lsm_exec",
        attach: Attach::Lsm { hook: "bprm_check_security", resolves_paths: true },
        operation: Operation::Exec,
        record: RecordKind::PathDecision,
    },
    HookSpec {
        hook: Hook::LsmFileOpen,
        id: v1::Hook::LsmFileOpen,
        section: "lsm/file_open",
        symbol: "pal_lsm_file",
        attach: Attach::Lsm { hook: "file_open", resolves_paths: true },
        operation: Operation::Files,
        record: RecordKind::PathDecision,
    },
    HookSpec {
        hook: Hook::SockOps,
        id: v1::Hook::SockOps,
        section: "sockops",
        symbol: "pal_sockops",
        attach: Attach::CgroupSockOps,
        // It decides `connections.tune` too (both partitions are its input).
        operation: Operation::Observe,
        record: RecordKind::Flow,
    },
];

impl Hook {
    /// Every hook, in bundle order.
    pub const ALL: [Self; 9] = [
        Self::Connect4,
        Self::Connect6,
        Self::LsmSocketConnect,
        Self::Bind4,
        Self::Bind6,
        Self::LsmSocketBind,
        Self::LsmExec,
        Self::LsmFileOpen,
        Self::SockOps,
    ];

    /// Its row of the table.
    pub fn spec(self) -> &'static HookSpec {
        &HOOKS[self as usize]
    }

    /// The hook with `palisade.v1.Hook` value `id`.
    pub fn from_id(id: i32) -> Option<Self> {
        HOOKS.iter().find(|h| h.id as i32 == id).map(|h| h.hook)
    }

    /// Value of `palisade.v1.Hook`, also written into records.
    pub fn id(self) -> i32 {
        self.spec().id as i32
    }

    /// ELF section (program type for aya).
    pub fn section(self) -> &'static str {
        self.spec().section
    }

    /// ELF symbol name.
    pub fn symbol(self) -> &'static str {
        self.spec().symbol
    }

    /// The operation (policy section) the hook decides.
    pub fn operation(self) -> Operation {
        self.spec().operation
    }

    /// Whether this is a BPF-LSM program.
    pub fn is_lsm(self) -> bool {
        matches!(self.spec().attach, Attach::Lsm { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows_are_in_hook_order_with_unique_ids_sections_and_symbols() {
        for (i, hook) in Hook::ALL.iter().enumerate() {
            assert_eq!(HOOKS[i].hook, *hook, "row {i}");
            assert_eq!(Hook::from_id(hook.id()), Some(*hook));
            assert!(hook.symbol().len() <= 15, "{} is longer than a kernel object name", hook.symbol());
        }
        for (i, a) in HOOKS.iter().enumerate() {
            for b in &HOOKS[i + 1..] {
                assert!(a.id != b.id && a.section != b.section && a.symbol != b.symbol, "{a:?} / {b:?}");
            }
        }
        assert_eq!(Hook::from_id(0), None);
        assert_eq!(Hook::from_id(99), None);
    }

    #[test]
    fn sections_name_the_attach_kind() {
        for h in HOOKS {
            match h.attach {
                Attach::Lsm { hook, resolves_paths } => {
                    assert_eq!(h.section, format!("lsm/{hook}"));
                    assert_eq!(resolves_paths, h.operation.is_path());
                    assert_eq!(h.record == RecordKind::PathDecision, h.operation.is_path());
                }
                Attach::CgroupSockAddr(_) => assert!(h.section.starts_with("cgroup/"), "{h:?}"),
                Attach::CgroupSockOps => assert_eq!((h.section, h.record), ("sockops", RecordKind::Flow)),
            }
        }
    }
}
