//! Capacity limits: a bundle that would not load on a node is rejected when the policy is
//! applied, with the numbers, instead of failing in the kernel later.

use std::fmt;

use crate::bundle::Compiled;

/// Limits a bundle must stay within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most filled entries in any one map (load time and bundle size grow with this).
    pub max_map_entries: u32,
    /// Most kernel memory any one map may take, as estimated by [`map_bytes`] (arrays are
    /// preallocated whole, however few entries are filled).
    pub max_map_bytes: u64,
    /// Most instruction slots in one program (the verifier's hard limit is 1,000,000
    /// processed instructions; ours are straight-line apart from a few branches).
    pub max_instructions: u32,
    /// Largest encoded bundle (it travels in one gRPC message).
    pub max_bundle_bytes: usize,
}

impl Limits {
    /// The defaults the server enforces.
    pub const DEFAULT: Self = Self {
        max_map_entries: 1 << 20,
        max_map_bytes: 256 << 20,
        max_instructions: 100_000,
        max_bundle_bytes: 128 << 20,
    };
}

impl std::default::Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One exceeded limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excess {
    /// What (a map or program name, or "bundle").
    pub what: String,
    /// The measured value.
    pub value: u64,
    /// The limit.
    pub limit: u64,
    /// Unit ("entries", "instructions", "bytes").
    pub unit: &'static str,
}

/// Every limit a bundle exceeds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CapacityError(pub Vec<Excess>);

impl fmt::Display for CapacityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|e| format!("{} needs {} {}, the limit is {}", e.what, e.value, e.unit, e.limit))
            .collect();
        write!(f, "bundle exceeds capacity: {}", parts.join("; "))
    }
}

/// Kernel memory a map takes, estimated from its type and sizes: an array preallocates every
/// slot (values rounded up to 8 bytes); hash and LPM maps take about one element (key, value
/// and ~48 bytes of bookkeeping) per entry; a ring buffer its data pages.
pub fn map_bytes(m: &palisade_proto::v1::BundleMap) -> u64 {
    let round = |n: u32| u64::from(n).div_ceil(8) * 8;
    match m.map_type {
        2 => u64::from(m.max_entries) * round(m.value_size),
        27 => u64::from(m.max_entries),
        _ => u64::from(m.max_entries) * (round(m.key_size) + round(m.value_size) + 48),
    }
}

/// Checks a compiled bundle against `limits`.
pub fn check(compiled: &Compiled, limits: &Limits) -> Result<(), CapacityError> {
    let mut excess = Vec::new();
    for m in &compiled.content.maps {
        let entries = m.filled() as u64;
        if entries > u64::from(limits.max_map_entries) {
            excess.push(Excess {
                what: format!("map {}", m.name),
                value: entries,
                limit: u64::from(limits.max_map_entries),
                unit: "entries",
            });
        }
        // Array indices are 32 bits; the compiler saturates slot counts that do not fit.
        if m.map_type == 2 && m.max_entries == u32::MAX {
            excess.push(Excess {
                what: format!("map {}", m.name),
                value: u64::from(m.max_entries),
                limit: u64::from(u32::MAX - 1),
                unit: "array slots (32-bit indices)",
            });
        }
        let bytes = map_bytes(m);
        if bytes > limits.max_map_bytes {
            excess.push(Excess {
                what: format!("map {}", m.name),
                value: bytes,
                limit: limits.max_map_bytes,
                unit: "bytes of kernel memory",
            });
        }
    }
    for (hook, program) in &compiled.programs {
        let n = program.insns.len() as u64;
        if n > u64::from(limits.max_instructions) {
            excess.push(Excess {
                what: format!("program {}", hook.symbol()),
                value: n,
                limit: u64::from(limits.max_instructions),
                unit: "instructions",
            });
        }
    }
    if compiled.bytes.len() > limits.max_bundle_bytes {
        excess.push(Excess {
            what: "bundle".to_owned(),
            value: compiled.bytes.len() as u64,
            limit: limits.max_bundle_bytes as u64,
            unit: "bytes",
        });
    }
    if excess.is_empty() { Ok(()) } else { Err(CapacityError(excess)) }
}

#[cfg(test)]
mod tests {
    use palisade_proto::document;

    use super::*;
    use crate::{bundle::compile, policy::model::PolicySet, program::KernelOffsets};

    #[test]
    fn check_reports_every_exceeded_limit_with_numbers() {
        let doc = document::parse(
            "name: p\nnetwork: {connect: {rules: [{id: r, action: deny, cidrs: [10.0.0.0/8, 10.1.0.0/16, \"::1\"], ports: [\"1000-2000\"]}]}}",
        )
        .expect("parses")
        .to_proto();
        let set = PolicySet::new([(&doc, 1)], Vec::new()).expect("model");
        let compiled = compile(&set, KernelOffsets::LINUX_6_12).expect("compiles");
        assert_eq!(check(&compiled, &Limits::DEFAULT), Ok(()));
        let tight = Limits { max_map_entries: 2, max_map_bytes: 1 << 20, max_instructions: 150, max_bundle_bytes: 100 };
        let err = check(&compiled, &tight).expect_err("over the tight limits");
        let whats: Vec<&str> = err.0.iter().map(|e| e.what.as_str()).collect();
        assert!(whats.contains(&"map pal_ports"), "{whats:?}");
        assert!(whats.contains(&"program pal_lsm_connect"), "{whats:?}");
        assert!(whats.contains(&"bundle"), "{whats:?}");
        assert!(err.to_string().contains("the limit is 2"), "{err}");
        // A table is 128 eight-byte elements of two cells; a byte under the map is refused.
        let ports = compiled.content.maps.iter().find(|m| m.name == "pal_ports").expect("ports map");
        assert_eq!(map_bytes(ports), u64::from(ports.max_entries) * 8);
        let small = Limits { max_map_bytes: map_bytes(ports) - 1, ..Limits::DEFAULT };
        let err = check(&compiled, &small).expect_err("over the byte limit");
        assert!(err.0.iter().any(|e| e.what == "map pal_ports" && e.unit == "bytes of kernel memory"), "{err}");
    }
}
