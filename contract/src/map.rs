//! Map names (ELF symbols, kernel names and pin names, ≤ 15 bytes) and what each holds.
//!
//! The agent finds maps by role (`BundleMap.role`): it fills `Cgroups` maps with the ids of
//! the selected cgroups, reads `Events`, and loads `Static` maps as the bundle ships them.

use crate::hook::Operation;

/// Ring buffer of records (shared by every program).
pub const EVENTS: &str = "pal_events";

/// Size of [`EVENTS`]: 256 KiB holds ~3,600 decision records (or ~1,900 flow records)
/// while the agent is away.
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// Records the programs could not write because [`EVENTS`] was full: an array of one `u64`
/// (role `Counters`) the programs add to atomically and the agent reads.
pub const LOST: &str = "pal_lost";

/// Per-connection state of observed connections (role `Shared`, kept across generations):
/// socket cookie (u64) → [`FLOW_STATE_SIZE`] bytes (see [`crate::record::flow_state`]).
pub const FLOWS: &str = "pal_flows";

/// Observed connections open at once, at most (a connection beyond it is counted in
/// [`FLOW_STATS`] as untracked instead of recorded).
pub const FLOWS_MAX: u32 = 65_536;

/// Size of a [`FLOWS`] value.
pub const FLOW_STATE_SIZE: u32 = 40;

/// Tuning profiles by rule-table index (array, role `Static`): congestion name (16 bytes,
/// NUL-padded), initial window u32, `TCP_NODELAY` u32, [`crate::record::profile`] flags u32,
/// padding u32.
pub const PROFILES: &str = "palt_profiles";

/// Size of a [`PROFILES`] value.
pub const PROFILE_SIZE: u32 = 32;

/// Counters of the sockops program (array of [`FLOW_STAT_COUNT`] u64, role `Counters`):
/// index [`FLOW_STAT_TUNE_REFUSED`], [`FLOW_STAT_UNTRACKED`].
pub const FLOW_STATS: &str = "pal_flowstat";

/// Counters in [`FLOW_STATS`].
pub const FLOW_STAT_COUNT: u32 = 2;
/// A setting of a tuning profile the kernel refused for one connection.
pub const FLOW_STAT_TUNE_REFUSED: u32 = 0;
/// An observed connection not recorded because [`FLOWS`] was full.
pub const FLOW_STAT_UNTRACKED: u32 = 1;

/// The kernel map types bundles use (UAPI `enum bpf_map_type`).
pub mod kind {
    /// `BPF_MAP_TYPE_HASH`.
    pub const HASH: u32 = 1;
    /// `BPF_MAP_TYPE_ARRAY`.
    pub const ARRAY: u32 = 2;
    /// `BPF_MAP_TYPE_LPM_TRIE`.
    pub const LPM_TRIE: u32 = 11;
    /// `BPF_MAP_TYPE_RINGBUF`.
    pub const RINGBUF: u32 = 27;

    /// A short name for a map type, for listings (`other` for types bundles do not use).
    pub fn name(map_type: u32) -> &'static str {
        match map_type {
            HASH => "hash",
            ARRAY => "array",
            LPM_TRIE => "lpm_trie",
            RINGBUF => "ringbuf",
            _ => "other",
        }
    }
}

/// The maps of one operation's partition ("" where the operation has no such map).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Names {
    /// cgroup id → selected-cgroup class (role `Cgroups`).
    pub cgroups: &'static str,
    /// (class, uid) → workload class.
    pub workloads: &'static str,
    /// Address trie nodes (array of 256-cell nodes).
    pub nodes: &'static str,
    /// Address tails (array).
    pub tails: &'static str,
    /// Regions: port tables and their defaults (array).
    pub regions: &'static str,
    /// Port tables, 256 cells each (array).
    pub ports: &'static str,
    /// Port nodes (array).
    pub port_nodes: &'static str,
    /// Decisions by value id (array).
    pub values: &'static str,
    /// (workload, path prefix) → decision (`exec`, `files`).
    pub paths: &'static str,
}

/// `network.connect`.
pub const CONNECT: Names = Names {
    cgroups: "pal_cgroups",
    workloads: "pal_workloads",
    nodes: "pal_nodes",
    tails: "pal_tails",
    regions: "pal_regions",
    ports: "pal_ports",
    port_nodes: "pal_pnodes",
    values: "pal_values",
    paths: "",
};

/// `network.bind`.
pub const BIND: Names = Names {
    cgroups: "palb_cgroups",
    workloads: "palb_workloads",
    nodes: "palb_nodes",
    tails: "palb_tails",
    regions: "palb_regions",
    ports: "palb_ports",
    port_nodes: "palb_pnodes",
    values: "palb_values",
    paths: "",
};

/// `connections.observe`.
pub const OBSERVE: Names = Names {
    cgroups: "palo_cgroups",
    workloads: "palo_workloads",
    nodes: "palo_nodes",
    tails: "palo_tails",
    regions: "palo_regions",
    ports: "palo_ports",
    port_nodes: "palo_pnodes",
    values: "palo_values",
    paths: "",
};

/// `connections.tune`.
pub const TUNE: Names = Names {
    cgroups: "palt_cgroups",
    workloads: "palt_workloads",
    nodes: "palt_nodes",
    tails: "palt_tails",
    regions: "palt_regions",
    ports: "palt_ports",
    port_nodes: "palt_pnodes",
    values: "palt_values",
    paths: "",
};

/// `exec`.
pub const EXEC: Names = Names { cgroups: "pale_cgroups", workloads: "pale_workloads", paths: "pale_paths", ..NONE };

/// `files`.
pub const FILES: Names = Names { cgroups: "palf_cgroups", workloads: "palf_workloads", paths: "palf_paths", ..NONE };

const NONE: Names = Names {
    cgroups: "",
    workloads: "",
    nodes: "",
    tails: "",
    regions: "",
    ports: "",
    port_nodes: "",
    values: "",
    paths: "",
};

/// The maps of `op`.
pub fn of(op: Operation) -> Names {
    match op {
        Operation::Connect => CONNECT,
        Operation::Bind => BIND,
        Operation::Exec => EXEC,
        Operation::Files => FILES,
        Operation::Observe => OBSERVE,
        Operation::Tune => TUNE,
    }
}

/// The operation whose partition map `name` belongs to (None for the events map and names
/// this contract does not know).
pub fn operation_of(name: &str) -> Option<Operation> {
    Operation::ALL.into_iter().find(|&op| {
        let n = of(op);
        !name.is_empty()
            && [n.cgroups, n.workloads, n.nodes, n.tails, n.regions, n.ports, n.port_nodes, n.values, n.paths]
                .contains(&name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_and_belong_to_one_operation() {
        for op in Operation::ALL {
            let n = of(op);
            for name in [n.cgroups, n.workloads, n.nodes, n.tails, n.regions, n.ports, n.port_nodes, n.values, n.paths]
            {
                if name.is_empty() {
                    continue;
                }
                assert!(name.len() <= 15, "{name}");
                assert_eq!(operation_of(name), Some(op), "{name}");
            }
            assert!(!n.cgroups.is_empty() && !n.workloads.is_empty());
            assert_eq!(n.paths.is_empty(), !op.is_path());
        }
        assert_eq!(operation_of(EVENTS), None);
        assert_eq!(operation_of(""), None);
    }
}
