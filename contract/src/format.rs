//! Bundle format versions (`BundleContent.format`).
//!
//! - 1: every map's contents as key/value entries.
//! - 2: array maps travel packed (`BundleMap.indices` + `values`), filled with one
//!   `BPF_MAP_UPDATE_BATCH` per map.

/// The format the compiler writes.
pub const WRITTEN: u32 = 2;

/// The formats the agent reads, oldest first.
pub const READ: [u32; 2] = [1, 2];

/// Whether the agent reads `format`.
pub fn readable(format: u32) -> bool {
    READ.contains(&format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_includes_what_the_compiler_writes_and_nothing_newer() {
        assert!(readable(WRITTEN));
        assert!(readable(1), "agents keep reading format 1 bundles of older servers");
        assert!(!readable(WRITTEN + 1));
        assert!(!readable(0));
    }
}
