//! Assembling a bundle: programs, ELF, map contents and attribution tables, encoded as
//! `palisade.v1.BundleContent` and addressed by SHA-256.

use std::fmt::Write as _;

use palisade_contract::map::kind::{
    ARRAY as BPF_MAP_TYPE_ARRAY, HASH as BPF_MAP_TYPE_HASH, LPM_TRIE as BPF_MAP_TYPE_LPM_TRIE,
    RINGBUF as BPF_MAP_TYPE_RINGBUF,
};
use palisade_proto::v1;
use prost::Message as _;

use palisade_contract::map::{FLOW_STAT_COUNT, FLOW_STATE_SIZE, FLOWS_MAX, PROFILE_SIZE};

use crate::{
    bpf::{
        asm::Program,
        elf::{self, ElfProgram, MapDef},
    },
    policy::{
        eval::RuleName,
        model::{Operation, PolicySet},
        partition::{self, Plan, layout},
    },
    program::{self, Hook, KernelOffsets, maps},
};

/// `BundleContent.format` this compiler writes.
pub const FORMAT: u32 = palisade_contract::format::WRITTEN;
pub use palisade_contract::map::EVENTS_BYTES;

/// LPM tries must not be preallocated (`kernel/bpf/lpm_trie.c`).
const BPF_F_NO_PREALLOC: u32 = 1;

/// Why a policy set could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// A program could not be assembled (a compiler bug).
    #[error("assembling {hook:?}")]
    Assemble {
        /// Hook.
        hook: Hook,
        /// Cause.
        #[source]
        source: crate::bpf::asm::AsmError,
    },
    /// The ELF writer failed (a compiler bug).
    #[error("writing the ELF object")]
    Elf(#[source] elf::ElfError),
}

/// A compiled bundle.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The structured content.
    pub content: v1::BundleContent,
    /// Its canonical encoding (what is signed, shipped and hashed).
    pub bytes: Vec<u8>,
    /// Hex SHA-256 of `bytes`.
    pub digest: String,
    /// The partition of each operation, in [`Operation::ALL`] order (for tools and tests).
    pub plans: Vec<Plan>,
    /// Generated programs, with comments, in [`Hook::ALL`] order.
    pub programs: Vec<(Hook, Program)>,
}

fn lpm_key(prefixlen: u32, id: u32, data: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + data.len());
    key.extend_from_slice(&prefixlen.to_le_bytes());
    key.extend_from_slice(&id.to_le_bytes());
    key.extend_from_slice(data);
    key
}

fn pair(a: u32, b: u32) -> Vec<u8> {
    let mut v = a.to_le_bytes().to_vec();
    v.extend_from_slice(&b.to_le_bytes());
    v
}

fn entry(key: Vec<u8>, value: Vec<u8>) -> v1::MapEntry {
    v1::MapEntry { key, value }
}

/// A bundle map sized for its entries (at least one slot).
pub fn map(
    name: &str,
    role: v1::MapRole,
    map_type: u32,
    key_size: u32,
    value_size: u32,
    entries: Vec<v1::MapEntry>,
) -> v1::BundleMap {
    v1::BundleMap {
        name: name.to_owned(),
        role: role as i32,
        map_type,
        key_size,
        value_size,
        max_entries: u32::try_from(entries.len()).unwrap_or(u32::MAX).max(1),
        entries,
        indices: Vec::new(),
        values: Vec::new(),
    }
}

/// The packed contents of an array map (`BundleMap.indices` and `values`).
struct Packed {
    value_size: u32,
    indices: Vec<u32>,
    values: Vec<u8>,
}

impl Packed {
    fn new(value_size: u32, capacity: usize) -> Self {
        Self {
            value_size,
            indices: Vec::with_capacity(capacity),
            values: Vec::with_capacity(capacity * value_size as usize),
        }
    }

    fn index(&mut self, i: usize) {
        self.indices.push(i as u32);
    }

    fn words(&mut self, words: &[u32]) {
        for w in words {
            self.values.extend_from_slice(&w.to_le_bytes());
        }
    }

    fn push(&mut self, index: u32, words: &[u32]) {
        self.indices.push(index);
        self.words(words);
    }

    /// A static array map of `slots` elements (at least one) holding these.
    fn map(self, name: &str, slots: u32) -> v1::BundleMap {
        debug_assert_eq!(self.values.len(), self.indices.len() * self.value_size as usize);
        v1::BundleMap {
            name: name.to_owned(),
            role: v1::MapRole::Static as i32,
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: self.value_size,
            max_entries: slots.max(1),
            entries: Vec::new(),
            indices: self.indices,
            values: self.values,
        }
    }
}

/// The ELF map definitions of a bundle's maps.
pub fn map_defs(maps: &[v1::BundleMap]) -> Vec<MapDef> {
    maps.iter()
        .map(|m| MapDef {
            name: m.name.clone(),
            map_type: m.map_type,
            key_size: m.key_size,
            value_size: m.value_size,
            max_entries: m.max_entries,
            flags: if m.map_type == BPF_MAP_TYPE_LPM_TRIE { BPF_F_NO_PREALLOC } else { 0 },
        })
        .collect()
}

/// The maps of one operation's partition; rule indices are shifted by `shift` into the
/// bundle's rule table.
fn plan_maps(plan: &Plan, shift: u32) -> Vec<v1::BundleMap> {
    let names = maps::of(plan.operation);
    let workloads =
        plan.workloads.iter().map(|((s, uid), w)| entry(pair(*s, *uid), w.to_le_bytes().to_vec())).collect();
    // Rule 0 is "no rule" in every table.
    let rule = |v: &partition::Value| if v.rule == 0 { 0 } else { v.rule + shift };
    let shifted = |v: &partition::Value| pair(rule(v), v.flags);
    let mut cgroup_map = map(names.cgroups, v1::MapRole::Cgroups, BPF_MAP_TYPE_HASH, 8, 4, Vec::new());
    cgroup_map.max_entries = u32::try_from(plan.cgroups.len()).unwrap_or(u32::MAX).max(1);
    let mut maps_out = vec![cgroup_map, map(names.workloads, v1::MapRole::Static, BPF_MAP_TYPE_HASH, 8, 4, workloads)];
    if plan.operation.is_path() {
        let values = if plan.operation == Operation::Files { 3 } else { 1 };
        let entries = plan
            .paths
            .iter()
            .map(|e| {
                // Key data: the prefix, zero-padded to the key size (only prefixlen bits count).
                let mut data = e.prefix.clone();
                data.resize(program::PATH_BYTES as usize, 0);
                let value = e.values.iter().flat_map(&shifted).collect();
                entry(lpm_key(32 + 8 * e.prefix.len() as u32, e.workload, &data), value)
            })
            .collect();
        maps_out.push(map(
            names.paths,
            v1::MapRole::Static,
            BPF_MAP_TYPE_LPM_TRIE,
            8 + program::PATH_BYTES as u32,
            8 * values,
            entries,
        ));
        return maps_out;
    }
    let l = &plan.layout;
    let mut nodes = Packed::new(8, l.cells.len());
    for c in &l.cells {
        nodes.push(c.index, &[c.region, c.child]);
    }
    let mut tails = Packed::new(40, l.tails.len());
    for (i, t) in l.tails.iter().enumerate() {
        tails.index(i);
        tails.values.extend_from_slice(&t.addr);
        tails.values.extend_from_slice(&t.mask);
        tails.words(&[t.region, 0]);
    }
    let mut regions = Packed::new(16, l.regions.len());
    for (i, r) in l.regions.iter().enumerate().skip(1) {
        regions.index(i);
        regions.words(r);
    }
    // Two cells an element: the kernel rounds array values up to 8 bytes anyway.
    let mut ports = Packed::new(8, l.ports.len());
    for pair in l.ports.chunk_by(|a, b| a.0 / 2 == b.0 / 2) {
        let mut cells = [0; 2];
        for &(i, c) in pair {
            cells[(i % 2) as usize] = c;
        }
        ports.push(pair[0].0 / 2, &cells);
    }
    let node_size = layout::PORT_SLOTS as u32 * 5;
    let mut port_nodes = Packed::new(node_size, l.port_nodes.len());
    for (i, n) in l.port_nodes.iter().enumerate().skip(1) {
        port_nodes.index(i);
        port_nodes.values.extend_from_slice(&n.bounds);
        port_nodes.words(&n.slots);
    }
    let mut values = Packed::new(8, l.values.len());
    for (i, v) in l.values.iter().enumerate().skip(1) {
        values.index(i);
        values.words(&[rule(v), v.flags]);
    }
    maps_out.extend([
        // Saturating: a set too large for 32-bit indices then fails the capacity check.
        nodes.map(names.nodes, l.nodes.saturating_mul(layout::NODE_CELLS)),
        tails.map(names.tails, l.tails.len() as u32),
        regions.map(names.regions, l.regions.len() as u32),
        ports.map(names.ports, l.tables.saturating_mul(layout::TABLE_CELLS / 2)),
        port_nodes.map(names.port_nodes, l.port_nodes.len() as u32),
        values.map(names.values, l.values.len() as u32),
    ]);
    maps_out
}

/// Compiles a policy set for kernels with the given struct offsets.
pub fn compile(set: &PolicySet, offsets: KernelOffsets) -> Result<Compiled, CompileError> {
    let plans: Vec<Plan> = Operation::ALL.iter().map(|&op| partition::plan(set, op)).collect();
    // One rule table for the bundle: entry 0 is "no rule", then every operation's rules; each
    // plan's rule indices are shifted into it.
    let mut rules = vec![v1::BundleRule { policy: u32::MAX, rule_id: String::new() }];
    let mut maps_out = Vec::new();
    let mut cgroups = Vec::new();
    let mut profiles = Packed::new(PROFILE_SIZE, 0);
    for plan in &plans {
        let names = maps::of(plan.operation);
        let shift = (rules.len() - 1) as u32;
        rules.extend(plan.rules.iter().skip(1).map(|r| {
            let rule_id = match (set.policies.get(r.policy), r.rule) {
                (Some(p), RuleName::Rule(i)) => p.rule_id(plan.operation, i).unwrap_or_default().to_owned(),
                (_, RuleName::Default) | (None, _) => "default".to_owned(),
            };
            v1::BundleRule { policy: r.policy as u32, rule_id }
        }));
        if plan.operation == Operation::Tune {
            for (i, r) in plan.rules.iter().enumerate().skip(1) {
                if let (Some(p), RuleName::Rule(rule)) = (set.policies.get(r.policy), r.rule) {
                    profiles.index(i + shift as usize);
                    profiles.values.extend_from_slice(&profile_bytes(p, rule));
                }
            }
        }
        maps_out.extend(plan_maps(plan, shift));
        cgroups.extend(plan.cgroups.iter().map(|c| v1::BundleCgroup {
            path: c.path.clone(),
            level: c.level,
            class: c.class,
            map: names.cgroups.to_owned(),
        }));
    }
    let policies: Vec<v1::BundlePolicy> =
        set.policies.iter().map(|p| v1::BundlePolicy { name: p.name.clone(), revision: p.revision }).collect();
    let rules_tag = palisade_contract::record::rules_tag(&policies, &rules);
    let inputs = program::Inputs { plans: &plans, offsets, rules_tag };
    let programs = Hook::ALL
        .iter()
        .filter_map(|&hook| {
            program::program(hook, inputs)
                .map(|p| p.map(|p| (hook, p)).map_err(|source| CompileError::Assemble { hook, source }))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut events = map(maps::EVENTS, v1::MapRole::Events, BPF_MAP_TYPE_RINGBUF, 0, 0, Vec::new());
    events.max_entries = EVENTS_BYTES;
    maps_out.push(events);
    maps_out.push(map(maps::LOST, v1::MapRole::Counters, BPF_MAP_TYPE_ARRAY, 4, 8, Vec::new()));
    if programs.iter().any(|(h, _)| *h == Hook::SockOps) {
        maps_out.push(profiles.map(maps::PROFILES, rules.len() as u32));
        let mut flows = map(maps::FLOWS, v1::MapRole::Shared, BPF_MAP_TYPE_HASH, 8, FLOW_STATE_SIZE, Vec::new());
        flows.max_entries = FLOWS_MAX;
        maps_out.push(flows);
        let mut stats = map(maps::FLOW_STATS, v1::MapRole::Counters, BPF_MAP_TYPE_ARRAY, 4, 8, Vec::new());
        stats.max_entries = FLOW_STAT_COUNT;
        maps_out.push(stats);
    }
    let defs = map_defs(&maps_out);
    let elf_programs: Vec<ElfProgram<'_>> = programs
        .iter()
        .map(|(hook, p)| ElfProgram { name: hook.symbol(), section: hook.section(), program: p })
        .collect();
    let elf = elf::write(&elf_programs, &defs).map_err(CompileError::Elf)?;
    let content = v1::BundleContent {
        format: FORMAT,
        elf,
        programs: programs
            .iter()
            .map(|(hook, p)| v1::BundleProgram {
                name: hook.symbol().to_owned(),
                section: hook.section().to_owned(),
                hook: hook.id(),
                instructions: p.insns.len() as u32,
            })
            .collect(),
        maps: maps_out,
        policies,
        rules,
        cgroups,
    };
    let bytes = content.encode_to_vec();
    let digest = palisade_proto::sha256_hex(&bytes);
    Ok(Compiled { content, bytes, digest, plans, programs })
}

/// A tuning profile as the sockops program reads it (`palisade_contract::map::PROFILES`).
fn profile_bytes(p: &crate::policy::model::Policy, rule: usize) -> [u8; PROFILE_SIZE as usize] {
    let mut out = [0_u8; PROFILE_SIZE as usize];
    let settings = p.tune_settings.get(rule).cloned().unwrap_or_default();
    let name = settings.congestion.as_bytes();
    // Validation keeps names at 15 bytes, so the NUL always fits.
    let n = name.len().min(15);
    out[..n].copy_from_slice(&name[..n]);
    out[16..20].copy_from_slice(&settings.initial_cwnd.to_le_bytes());
    out[20..24].copy_from_slice(&u32::from(settings.no_delay).to_le_bytes());
    let flags = if p.mode == crate::policy::model::Mode::Audit { palisade_contract::record::profile::AUDIT } else { 0 };
    out[24..28].copy_from_slice(&flags.to_le_bytes());
    out
}

impl Compiled {
    /// The partition of one operation.
    pub fn plan(&self, op: Operation) -> &Plan {
        self.plans.iter().find(|p| p.operation == op).unwrap_or(&self.plans[0])
    }
}

/// The `CompilePolicy` answer for a compiled set: instructions per program, map sizes and
/// kernel bytes, digest, and (with `disassemble`) [`render`]. The server and `palisade
/// compile --offline` both answer with it.
pub fn describe(compiled: &Compiled, set: &PolicySet, disassemble: bool) -> v1::CompilePolicyResponse {
    v1::CompilePolicyResponse {
        programs: compiled
            .programs
            .iter()
            .map(|(hook, p)| v1::ProgramStats {
                name: hook.symbol().to_owned(),
                section: hook.section().to_owned(),
                instructions: p.insns.len() as u64,
                max_path_jumps: p.max_path_jumps(),
            })
            .collect(),
        maps: compiled
            .content
            .maps
            .iter()
            .map(|m| v1::MapStats {
                name: m.name.clone(),
                kind: palisade_contract::map::kind::name(m.map_type).to_owned(),
                key_size: m.key_size,
                value_size: m.value_size,
                max_entries: m.max_entries,
                entries: m.filled() as u32,
                bytes: crate::limits::map_bytes(m),
            })
            .collect(),
        digest: compiled.digest.clone(),
        elf_size: compiled.content.elf.len() as u64,
        warnings: Vec::new(),
        disassembly: if disassemble { render(compiled, set) } else { String::new() },
    }
}

/// Renders a compiled bundle for humans: every program's assembly (with the generator's
/// comments), then the decision tables the programs look up, with each decision's rule named
/// as `policy@revision/rule`.
pub fn render(compiled: &Compiled, set: &PolicySet) -> String {
    let mut out = String::new();
    for (hook, program) in &compiled.programs {
        let _ = writeln!(out, "; ---- {} ({}), {} instructions", hook.symbol(), hook.section(), program.insns.len());
        out.push_str(&crate::bpf::disasm::disassemble(program));
        out.push('\n');
    }
    for plan in &compiled.plans {
        render_plan(&mut out, plan, set);
    }
    out
}

fn render_plan(out: &mut String, plan: &Plan, set: &PolicySet) {
    let names = maps::of(plan.operation);
    let op = plan.operation;
    let rule_name = |index: u32| -> String {
        match plan.rules.get(index as usize).and_then(|r| set.policies.get(r.policy).map(|p| (p, r.rule))) {
            Some((p, RuleName::Rule(i))) => format!("{}@{}/{}", p.name, p.revision, p.rule_id(op, i).unwrap_or("?")),
            Some((p, RuleName::Default)) => format!("{}@{}/default", p.name, p.revision),
            None => "-".to_owned(),
        }
    };
    let _ = writeln!(out, "; ==== {} ====", op.section_path());
    let _ = writeln!(out, "; ---- selected cgroups ({})", names.cgroups);
    for c in &plan.cgroups {
        let _ = writeln!(out, ";   {} (depth {}) -> class {}", c.path, c.level, c.class);
    }
    let _ = writeln!(out, "; ---- workload classes ({})", names.workloads);
    if plan.direct {
        let _ = writeln!(
            out,
            ";   direct: cgroup classes are workloads; no selected cgroup -> workload {}",
            plan.root_workload
        );
    }
    for ((s, uid), w) in &plan.workloads {
        let uid = if *uid == partition::ANY_UID { "any".to_owned() } else { uid.to_string() };
        let _ = writeln!(out, ";   class {s}, uid {uid} -> workload {w}");
    }
    let decision = |v: &partition::Value| {
        let verdict = if v.flags & partition::FLAG_DENY != 0 { "DENY" } else { "ALLOW" };
        let event = if v.flags & partition::FLAG_EVENT == 0 {
            String::new()
        } else if v.flags & partition::FLAG_WOULD_DENY != 0 {
            format!(", AUDIT would-deny event: {}", rule_name(v.rule))
        } else if v.flags & partition::FLAG_AUDIT != 0 {
            format!(", AUDIT event: {}", rule_name(v.rule))
        } else {
            format!(", DENY event: {}", rule_name(v.rule))
        };
        format!("{verdict}{event}")
    };
    if op.is_path() {
        let _ = writeln!(out, "; ---- path prefixes ({})", names.paths);
        for e in &plan.paths {
            let shown = String::from_utf8_lossy(&e.prefix).replace('\0', "<end>");
            let shown = if shown.is_empty() { "<any path>".to_owned() } else { format!("{shown:?}") };
            let values: Vec<String> = e.values.iter().map(decision).collect();
            let values = match values.as_slice() {
                [read, write, both] => format!("read: {read}; write: {write}; read+write: {both}"),
                _ => values.join("; "),
            };
            let _ = writeln!(out, ";   workload {} {shown} -> {values}", e.workload);
        }
        return;
    }
    let _ = writeln!(out, "; ---- address regions ({}, {}, {})", names.nodes, names.tails, names.regions);
    let region = |out: &mut String, w: u32, net: &dyn std::fmt::Display, tables: [u32; 2]| {
        let _ = writeln!(out, ";   workload {w} {net} -> tcp table {}, udp table {}", tables[0], tables[1]);
    };
    for r in &plan.regions4 {
        region(out, r.workload, &r.net, r.tables);
    }
    for r in &plan.regions6 {
        region(out, r.workload, &r.net, r.tables);
    }
    for w in &plan.mapped_shared {
        let _ = writeln!(out, ";   workload {w} ::ffff:a.b.c.d -> as a.b.c.d");
    }
    for r in &plan.regions_mapped {
        region(out, r.workload, &format!("::ffff:{}", r.net), r.tables);
    }
    let _ = writeln!(out, "; ---- port decisions ({}, {}, {})", names.ports, names.port_nodes, names.values);
    for (t, table) in plan.tables.iter().enumerate() {
        let _ = writeln!(out, ";   table {t} other ports -> {}", decision(&table.default));
        for (i, (first, v)) in table.intervals.iter().enumerate().filter(|(_, (_, v))| *v != table.default) {
            let last = table.intervals.get(i + 1).map_or(65_535, |(s, _)| s - 1);
            let _ = writeln!(out, ";   table {t} ports {first}-{last} -> {}", decision(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use palisade_proto::document;

    use super::*;
    use crate::{bpf::insn::R0, program::Returns as _};

    const OFFSETS: KernelOffsets = KernelOffsets::LINUX_6_12;

    fn set(yaml: &str) -> PolicySet {
        let docs: Vec<_> = document::parse_all(yaml).into_iter().map(|d| d.expect("parses").to_proto()).collect();
        PolicySet::new(docs.iter().map(|p| (p, 7)), Vec::new()).expect("model")
    }

    const DEMO: &str = "name: demo\nworkload: {cgroup: /palisade-demo}\nnetwork:\n  connect:\n    rules:\n      - {id: block, action: deny, cidrs: [127.0.0.0/8, \"::1\"], ports: [9999], protocols: [tcp]}\n";

    const FILES: &str = "name: files\nworkload: {cgroup: /x}\nexec:\n  rules:\n    - {id: no-curl, action: deny, paths: [/usr/bin/curl, /opt/tools/]}\nfiles:\n  default: audit\n  rules:\n    - {id: ro-etc, action: deny, access: [write], paths: [/etc/]}\n";

    #[test]
    fn compile_is_deterministic_and_parses_as_aya_expects() {
        let a = compile(&set(DEMO), OFFSETS).expect("compiles");
        let b = compile(&set(DEMO), OFFSETS).expect("compiles");
        assert_eq!(a.bytes, b.bytes);
        assert_eq!(a.digest, b.digest);
        let obj = aya_obj::Object::parse(&a.content.elf).expect("aya parses the ELF");
        // No connections section: no sockops program (and none without the node's offsets).
        for hook in Hook::ALL {
            assert_eq!(obj.programs.contains_key(hook.symbol()), hook != Hook::SockOps, "{hook:?}");
        }
        for m in &a.content.maps {
            assert!(obj.maps.contains_key(&m.name), "{}", m.name);
        }
        assert_eq!(a.content.cgroups.len(), 1);
        assert_eq!(a.content.cgroups[0].path, "/palisade-demo");
        let rule_ids: Vec<_> = a.content.rules.iter().map(|r| r.rule_id.as_str()).collect();
        assert!(rule_ids.contains(&"block"), "{rule_ids:?}");
        let text = render(&a, &set(DEMO));
        assert!(text.contains("demo@7/block"), "{text}");
        assert!(text.contains("ports 9999-9999 -> DENY"), "{text}");
        let other = compile(&set(&DEMO.replace("9999", "9998")), OFFSETS).expect("compiles");
        assert_ne!(other.digest, a.digest);
    }

    #[test]
    fn compile_every_exit_returns_the_hooks_allow_or_deny_constant() {
        for yaml in [DEMO, "name: e\nnetwork: {connect: {default: deny}}", "name: f", FILES] {
            let compiled = compile(&set(yaml), OFFSETS).expect("compiles");
            for (hook, program) in &compiled.programs {
                assert!(
                    !program.insns.contains(&crate::bpf::insn::ja(0)),
                    "{hook:?}: a jump to the next instruction is dead code"
                );
                let mut exits = 0;
                for (i, insn) in program.insns.iter().enumerate() {
                    if insn.code != crate::bpf::insn::exit().code {
                        continue;
                    }
                    exits += 1;
                    let prev = program.insns[i - 1];
                    let mov = crate::bpf::insn::mov64_imm(R0, prev.imm);
                    assert_eq!(prev, mov, "{hook:?}: exit at {i} not preceded by r0 = imm");
                    assert!(prev.imm == hook.allow() || prev.imm == hook.deny(), "{hook:?} returns {}", prev.imm);
                    if hook.is_lsm() {
                        assert!(prev.imm <= 0, "LSM programs return 0 or a negative errno, never {}", prev.imm);
                    }
                }
                assert_eq!(exits, 2, "{hook:?}");
            }
        }
    }

    #[test]
    fn connections_sections_add_the_sockops_program_and_its_maps_only_with_the_nodes_offsets() {
        let yaml = "name: c\nworkload: {cgroup: /web}\nconnections:\n  observe: {}\n  tune:\n    rules:\n      - {id: t, cidrs: [10.0.0.0/8], congestion: cubic, initial_cwnd: 10}\n";
        let sock = crate::program::SockOffsets {
            sk_cgrp_data: 640,
            sk_uid: 300,
            cgroup_level: 96,
            cgroup_kn: 256,
            cgroup_ancestors: 1000,
            kernfs_node_id: 88,
        };
        let with = compile(&set(yaml), KernelOffsets { sock: Some(sock), ..OFFSETS }).expect("compiles");
        let program = with.programs.iter().find(|(h, _)| *h == Hook::SockOps).map(|(_, p)| p).expect("sockops");
        let exits: Vec<_> =
            program.insns.windows(2).filter(|w| w[1] == crate::bpf::insn::exit()).map(|w| w[0]).collect();
        assert_eq!(exits, [crate::bpf::insn::mov64_imm(R0, 1)], "one exit, returning 1");
        let names: Vec<&str> = with.content.maps.iter().map(|m| m.name.as_str()).collect();
        for name in [maps::FLOWS, maps::PROFILES, maps::FLOW_STATS] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
        let profiles = with.content.maps.iter().find(|m| m.name == maps::PROFILES).expect("profiles");
        assert_eq!(profiles.indices.len(), 1, "one profile, at the tune rule's index");
        let at = profiles.indices[0] as usize;
        assert_eq!(with.content.rules[at].rule_id, "t");
        assert_eq!(&profiles.values[..6], b"cubic\0");
        assert_eq!(profiles.values[16..20], 10_u32.to_le_bytes());
        let without = compile(&set(yaml), OFFSETS).expect("compiles");
        assert!(without.programs.iter().all(|(h, _)| *h != Hook::SockOps), "no offsets, no sockops program");
        assert!(without.content.maps.iter().all(|m| m.name != maps::FLOWS));
    }
}
