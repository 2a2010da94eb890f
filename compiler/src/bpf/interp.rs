//! An interpreter for the eBPF the compiler emits, so the real programs run without root:
//! property tests compare them with the reference evaluator on every `cargo test`, and tools
//! can replay a bundle offline. The kernel stays the final oracle (the differential test as
//! root, the qemu guest for BPF-LSM); this runs the same instructions against in-memory maps
//! built from the bundle and helpers that return what the caller's [`Task`] says.
//!
//! Memory is a set of regions (stack, context, kernel objects, map values); a pointer is
//! `(region + 1) << 32 | offset`, so pointer arithmetic is plain arithmetic and every access
//! is bounds-checked against its region. Reading stack bytes the program never wrote is a
//! fault (the verifier rejects helper arguments that are not fully initialised), and so is
//! reading r1–r5 after a helper call clobbered them — they hold a poison value that makes any
//! use of them fail a bounds check.
//!
//! Supported: every ALU/ALU64 operation and byte swap, every jump, `ld_imm64` of constants
//! and map references, `LDX`/`ST`/`STX` memory access of every width, and the helpers
//! [`crate::bpf::insn::helper`] names, and the legacy packet loads (`LD_ABS`/`LD_IND`) of
//! socket filters over the packet [`Run::packet`] sets, as an `AF_PACKET` socket presents it:
//! offset 0 and `SKF_LL_OFF` both address the link-layer header, a load past the end (or
//! below `SKF_LL_OFF`) ends the run with r0 = 0, as the kernel's does. Not supported (a [`Fault::Unsupported`]): the
//! `SKF_NET_OFF` and ancillary (`SKF_AD_OFF`) ranges, atomics other than add, calls to other
//! helpers.

use std::collections::HashMap;

use palisade_contract::map::kind::{
    ARRAY as BPF_MAP_TYPE_ARRAY, HASH as BPF_MAP_TYPE_HASH, LPM_TRIE as BPF_MAP_TYPE_LPM_TRIE,
    RINGBUF as BPF_MAP_TYPE_RINGBUF,
};
use palisade_proto::v1;

use crate::bpf::{
    asm::Program,
    insn::{
        ATOMIC_ADD, Alu, BPF_PSEUDO_MAP_FD, CLASS_ALU, CLASS_ALU64, CLASS_JMP, CLASS_JMP32, CLASS_LD, CLASS_LDX,
        CLASS_ST, CLASS_STX, Insn, Jmp, MODE_ABS, MODE_ATOMIC, MODE_IMM, MODE_IND, MODE_MEM, OP_CALL, OP_END, OP_EXIT,
        OP_JA, SRC_X, Size, helper,
    },
};

/// The kernel's stack per program (`MAX_BPF_STACK`).
pub const STACK_SIZE: usize = 512;
/// Instructions one run may execute before it is stopped (the verifier bounds every path;
/// this bounds a buggy program in the interpreter).
pub const MAX_STEPS: usize = 1_000_000;
/// What r1–r5 hold after a helper call: an address in no region.
const CLOBBERED: u64 = 0xdead_0000_0000_0000;
/// `-EFAULT`.
const EFAULT: i64 = -14;
/// `-EAGAIN`: what `bpf_ringbuf_output` returns when the ring buffer has no room.
const EAGAIN: i64 = -11;
/// `-ENAMETOOLONG`.
const ENAMETOOLONG: i64 = -36;

/// Why a run stopped without reaching `exit`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// An access outside every region, or past the end of one.
    #[error("slot {slot}: {size}-byte access at {addr:#x} is outside every region")]
    OutOfBounds {
        /// Instruction slot.
        slot: usize,
        /// Address.
        addr: u64,
        /// Bytes accessed.
        size: usize,
    },
    /// A read of stack bytes nothing wrote.
    #[error("slot {slot}: read of uninitialised stack at r10{offset:+}")]
    Uninitialised {
        /// Instruction slot.
        slot: usize,
        /// Offset from r10.
        offset: i64,
    },
    /// A store into read-only memory (context, kernel objects, the frame pointer).
    #[error("slot {slot}: store into read-only memory at {addr:#x}")]
    ReadOnly {
        /// Instruction slot.
        slot: usize,
        /// Address.
        addr: u64,
    },
    /// An instruction or helper this interpreter does not implement.
    #[error("slot {slot}: unsupported {what}")]
    Unsupported {
        /// Instruction slot.
        slot: usize,
        /// What.
        what: String,
    },
    /// A map reference names a map the bundle does not have, or a helper got something that
    /// is not a map.
    #[error("slot {slot}: {what}")]
    Map {
        /// Instruction slot.
        slot: usize,
        /// What is wrong.
        what: String,
    },
    /// The program ran past its last instruction or jumped outside itself.
    #[error("jump to slot {slot}, outside the program")]
    Jump {
        /// Target slot.
        slot: i64,
    },
    /// More than [`MAX_STEPS`] instructions.
    #[error("stopped after {MAX_STEPS} instructions")]
    Steps,
}

/// What the helpers report about the calling task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Task {
    /// `bpf_ktime_get_ns`.
    pub time_ns: u64,
    /// tgid (upper half of `bpf_get_current_pid_tgid`).
    pub tgid: u32,
    /// pid (lower half).
    pub pid: u32,
    /// uid (lower half of `bpf_get_current_uid_gid`).
    pub uid: u32,
    /// gid (upper half).
    pub gid: u32,
    /// `bpf_get_current_comm`.
    pub comm: [u8; 16],
    /// cgroup ids from the root (level 0) down to the task's own cgroup (the last one):
    /// `bpf_get_current_ancestor_cgroup_id(level)` is `cgroups[level]` (0 past the task's
    /// depth), `bpf_get_current_cgroup_id` the last.
    pub cgroups: Vec<u64>,
}

/// One map's contents.
#[derive(Debug, Clone)]
struct MapState {
    name: String,
    map_type: u32,
    key_size: usize,
    value_size: usize,
    max_entries: u32,
    /// Key bytes → value bytes (arrays: the little-endian index; missing elements are zero).
    entries: HashMap<Vec<u8>, Vec<u8>>,
}

/// The maps of a bundle, filled as the agent fills them.
#[derive(Debug, Clone, Default)]
pub struct Maps {
    maps: Vec<MapState>,
    /// Ring buffers refuse every record, as a full one does (`bpf_ringbuf_output` returns
    /// `-EAGAIN`).
    ring_full: bool,
}

/// Why a bundle's maps could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapsError {
    /// An entry or packed element that does not fit its map.
    #[error("map {map}: {what}")]
    Shape {
        /// Map name.
        map: String,
        /// What does not fit.
        what: String,
    },
    /// No map of that name.
    #[error("no map named {0}")]
    Unknown(String),
}

impl Maps {
    /// The maps of a bundle with the contents it ships (cgroups maps stay empty: the agent
    /// fills them; see [`Maps::update`]).
    pub fn from_bundle(maps: &[v1::BundleMap]) -> Result<Self, MapsError> {
        let mut out = Self::default();
        for m in maps {
            let shape = |what: String| MapsError::Shape { map: m.name.clone(), what };
            if !matches!(
                m.map_type,
                BPF_MAP_TYPE_HASH | BPF_MAP_TYPE_ARRAY | BPF_MAP_TYPE_LPM_TRIE | BPF_MAP_TYPE_RINGBUF
            ) {
                return Err(shape(format!("map type {} is not modelled", m.map_type)));
            }
            let mut state = MapState {
                name: m.name.clone(),
                map_type: m.map_type,
                key_size: m.key_size as usize,
                value_size: m.value_size as usize,
                max_entries: m.max_entries,
                entries: HashMap::new(),
            };
            for e in &m.entries {
                state.check(&e.key, &e.value).map_err(shape)?;
                state.entries.insert(e.key.clone(), e.value.clone());
            }
            if m.values.len() != m.indices.len() * state.value_size {
                return Err(shape(format!("{} packed values of {} bytes", m.indices.len(), state.value_size)));
            }
            for (i, value) in m.indices.iter().zip(m.values.chunks(state.value_size.max(1))) {
                let key = i.to_le_bytes();
                state.check(&key, value).map_err(shape)?;
                state.entries.insert(key.to_vec(), value.to_vec());
            }
            out.maps.push(state);
        }
        Ok(out)
    }

    /// Makes every ring buffer full (or not): records are refused, not stored.
    pub fn set_ring_full(&mut self, full: bool) {
        self.ring_full = full;
    }

    /// The value stored under `key` in map `name` (an array's unset slots read as zeros).
    pub fn get(&self, name: &str, key: &[u8]) -> Option<Vec<u8>> {
        let map = self.maps.iter().find(|m| m.name == name)?;
        map.entries.get(key).cloned().or_else(|| {
            let index = u32::from_le_bytes(key.try_into().ok()?);
            (map.map_type == BPF_MAP_TYPE_ARRAY && index < map.max_entries).then(|| vec![0; map.value_size])
        })
    }

    /// Writes one element, as `BPF_MAP_UPDATE_ELEM` would.
    pub fn update(&mut self, name: &str, key: &[u8], value: &[u8]) -> Result<(), MapsError> {
        let map = self.maps.iter_mut().find(|m| m.name == name).ok_or_else(|| MapsError::Unknown(name.to_owned()))?;
        map.check(key, value).map_err(|what| MapsError::Shape { map: name.to_owned(), what })?;
        map.entries.insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.maps.iter().position(|m| m.name == name)
    }
}

impl MapState {
    fn check(&self, key: &[u8], value: &[u8]) -> Result<(), String> {
        if key.len() != self.key_size || value.len() != self.value_size {
            return Err(format!(
                "element of {}+{} bytes, the map has {}+{}",
                key.len(),
                value.len(),
                self.key_size,
                self.value_size
            ));
        }
        if self.map_type == BPF_MAP_TYPE_ARRAY
            && u32::from_le_bytes(key.try_into().unwrap_or([0xff; 4])) >= self.max_entries
        {
            return Err(format!("index beyond {} slots", self.max_entries));
        }
        Ok(())
    }

    /// The key of the element a lookup finds, if any.
    fn find(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self.map_type {
            BPF_MAP_TYPE_ARRAY => {
                let index = u32::from_le_bytes(key.get(..4)?.try_into().ok()?);
                (index < self.max_entries).then(|| key[..4].to_vec())
            }
            BPF_MAP_TYPE_LPM_TRIE => {
                // Longest stored prefix whose first `prefixlen` bits match the key's data.
                let want = u32::from_le_bytes(key.get(..4)?.try_into().ok()?);
                let data = &key[4..];
                self.entries
                    .keys()
                    .filter(|k| {
                        let len = u32::from_le_bytes([k[0], k[1], k[2], k[3]]);
                        len <= want && prefix_matches(&k[4..], data, len as usize)
                    })
                    .max_by_key(|k| u32::from_le_bytes([k[0], k[1], k[2], k[3]]))
                    .cloned()
            }
            _ => self.entries.contains_key(key).then(|| key.to_vec()),
        }
    }
}

fn prefix_matches(a: &[u8], b: &[u8], bits: usize) -> bool {
    let whole = bits / 8;
    if a.len() < bits.div_ceil(8) || b.len() < bits.div_ceil(8) || a[..whole] != b[..whole] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || (a[whole] ^ b[whole]) & (0xff_u8 << (8 - rest)) == 0
}

/// What a region is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stack,
    ReadOnly,
    /// A map element's value: (map, writes go back to the map).
    Value(usize),
    /// The map itself (what `ld_imm64` of a map reference yields).
    Map(usize),
}

#[derive(Debug, Clone)]
struct Region {
    kind: Kind,
    bytes: Vec<u8>,
    /// Stack only: which bytes were written.
    init: Vec<bool>,
    /// Value only: the element's key.
    key: Vec<u8>,
}

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// r0 at `exit`.
    pub ret: u64,
    /// Records output to ring buffers: (map name, bytes).
    pub records: Vec<(String, Vec<u8>)>,
    /// Instructions executed.
    pub steps: usize,
}

/// One program invocation being set up: its memory and what the helpers return.
#[derive(Debug)]
pub struct Run<'m> {
    maps: &'m mut Maps,
    regions: Vec<Region>,
    task: Task,
    /// `bpf_d_path`: the path of the `struct path` at each address.
    paths: HashMap<u64, Vec<u8>>,
    /// What `LD_ABS`/`LD_IND` read: the frame from its link-layer header.
    packet: Vec<u8>,
}

/// `SKF_LL_OFF`: a packet load offset from here addresses the link-layer header.
pub const SKF_LL_OFF: i32 = -0x20_0000;
/// `SKF_NET_OFF`: from here, the network header.
pub const SKF_NET_OFF: i32 = -0x10_0000;

fn ptr(region: usize, offset: usize) -> u64 {
    ((region as u64 + 1) << 32) | offset as u64
}

impl<'m> Run<'m> {
    /// A run against `maps` for `task`.
    pub fn new(maps: &'m mut Maps, task: Task) -> Self {
        let stack =
            Region { kind: Kind::Stack, bytes: vec![0; STACK_SIZE], init: vec![false; STACK_SIZE], key: Vec::new() };
        let regions = std::iter::once(stack)
            .chain((0..maps.maps.len()).map(|i| Region {
                kind: Kind::Map(i),
                bytes: Vec::new(),
                init: Vec::new(),
                key: Vec::new(),
            }))
            .collect();
        Self { maps, regions, task, paths: HashMap::new(), packet: Vec::new() }
    }

    /// Sets the frame `LD_ABS`/`LD_IND` read (from its link-layer header).
    pub fn packet(&mut self, frame: &[u8]) {
        self.packet = frame.to_vec();
    }

    /// Places read-only memory (a context, a kernel struct) and returns its address.
    pub fn object(&mut self, bytes: Vec<u8>) -> u64 {
        self.regions.push(Region { kind: Kind::ReadOnly, bytes, init: Vec::new(), key: Vec::new() });
        ptr(self.regions.len() - 1, 0)
    }

    /// Makes `bpf_d_path(addr, …)` resolve to `path` (without its NUL).
    pub fn resolve(&mut self, addr: u64, path: &[u8]) {
        self.paths.insert(addr, path.to_vec());
    }

    /// Runs `program` with r1 = `ctx` until it exits.
    pub fn exec(mut self, program: &Program, ctx: u64) -> Result<Outcome, Fault> {
        let maps_at = self.map_slots(program)?;
        let mut reg = [0_u64; 11];
        reg[1] = ctx;
        reg[10] = ptr(0, STACK_SIZE);
        let mut records = Vec::new();
        let mut pc = 0_usize;
        for steps in 1..=MAX_STEPS {
            let i = *program.insns.get(pc).ok_or(Fault::Jump { slot: pc as i64 })?;
            let next = pc + 1;
            let dst = usize::from(i.dst & 0x0f);
            let src = usize::from(i.src & 0x0f);
            let operand = if i.code & SRC_X != 0 { reg[src] } else { i64::from(i.imm) as u64 };
            match i.class() {
                class @ (CLASS_ALU64 | CLASS_ALU) => {
                    let wide = class == CLASS_ALU64;
                    if i.code & 0xf0 == OP_END {
                        reg[dst] =
                            swap(reg[dst], i.imm, i.code & SRC_X != 0, wide).ok_or_else(|| unsupported(pc, &i))?;
                    } else {
                        let op = Alu::from_code(i.code).ok_or_else(|| unsupported(pc, &i))?;
                        reg[dst] = alu(op, reg[dst], operand, wide);
                    }
                    if dst == 10 {
                        return Err(Fault::ReadOnly { slot: pc, addr: reg[10] });
                    }
                }
                class @ (CLASS_JMP | CLASS_JMP32) => match i.code & 0xf0 {
                    OP_EXIT if class == CLASS_JMP => return Ok(Outcome { ret: reg[0], records, steps }),
                    OP_CALL if class == CLASS_JMP => {
                        reg[0] = self.call(pc, i.imm, &reg, &mut records)?;
                        reg[1..=5].fill(CLOBBERED);
                    }
                    OP_JA if class == CLASS_JMP => {
                        pc = jump(next, i.off, program.insns.len())?;
                        continue;
                    }
                    _ => {
                        let op = Jmp::from_code(i.code).ok_or_else(|| unsupported(pc, &i))?;
                        if compare(op, reg[dst], operand, class == CLASS_JMP) {
                            pc = jump(next, i.off, program.insns.len())?;
                            continue;
                        }
                    }
                },
                CLASS_LD if i.code == CLASS_LD | MODE_IMM | Size::DW.code() => {
                    let high = program.insns.get(next).ok_or(Fault::Jump { slot: next as i64 })?;
                    reg[dst] = if i.src == BPF_PSEUDO_MAP_FD {
                        let map = maps_at.get(&pc).ok_or_else(|| Fault::Map {
                            slot: pc,
                            what: "map reference without a relocation".to_owned(),
                        })?;
                        ptr(1 + map, 0)
                    } else {
                        u64::from(i.imm as u32) | (u64::from(high.imm as u32) << 32)
                    };
                    pc += 2;
                    continue;
                }
                CLASS_LD if matches!(i.code & 0xe0, MODE_ABS | MODE_IND) && i.code & 0x18 != Size::DW.code() => {
                    match self.packet_load(pc, &i, &reg, ctx)? {
                        Some(value) => reg[0] = value,
                        // Past the end: the rewritten load returns 0 from the program.
                        None => return Ok(Outcome { ret: 0, records, steps }),
                    }
                    reg[1..=5].fill(CLOBBERED);
                }
                CLASS_LDX if i.code & 0xe0 == MODE_MEM => {
                    let size = Size::from_code(i.code).bytes() as usize;
                    let bytes = self.read(pc, reg[src].wrapping_add(i64::from(i.off) as u64), size)?;
                    let mut word = [0_u8; 8];
                    word[..size].copy_from_slice(&bytes);
                    reg[dst] = u64::from_le_bytes(word);
                }
                class @ (CLASS_ST | CLASS_STX) if i.code & 0xe0 == MODE_MEM => {
                    let size = Size::from_code(i.code).bytes() as usize;
                    let value = if class == CLASS_STX { reg[src] } else { i64::from(i.imm) as u64 };
                    self.write(pc, reg[dst].wrapping_add(i64::from(i.off) as u64), &value.to_le_bytes()[..size])?;
                }
                CLASS_STX if i.code & 0xe0 == MODE_ATOMIC && i.imm == ATOMIC_ADD => {
                    // One thread of execution: the atomic add is a load, an add and a store.
                    let size = Size::from_code(i.code).bytes() as usize;
                    if size < 4 {
                        return Err(unsupported(pc, &i));
                    }
                    let addr = reg[dst].wrapping_add(i64::from(i.off) as u64);
                    let mut word = [0_u8; 8];
                    word[..size].copy_from_slice(&self.read(pc, addr, size)?);
                    let sum = u64::from_le_bytes(word).wrapping_add(reg[src]);
                    self.write(pc, addr, &sum.to_le_bytes()[..size])?;
                }
                _ => return Err(unsupported(pc, &i)),
            }
            pc = next;
        }
        Err(Fault::Steps)
    }

    /// The map each relocated `ld_imm64` slot loads.
    fn map_slots(&self, program: &Program) -> Result<HashMap<usize, usize>, Fault> {
        program
            .relocations
            .iter()
            .map(|r| {
                self.maps
                    .index(&r.map)
                    .map(|m| (r.slot, m))
                    .ok_or(Fault::Map { slot: r.slot, what: format!("no map named {}", r.map) })
            })
            .collect()
    }

    /// `LD_ABS`/`LD_IND`: the big-endian value, or `None` past the end of the packet.
    fn packet_load(&self, slot: usize, i: &Insn, reg: &[u64; 11], ctx: u64) -> Result<Option<u64>, Fault> {
        // The verifier's rewrite: r2 = src + imm in 64 bits; the helper takes an int.
        if reg[6] != ctx {
            return Err(Fault::Unsupported { slot, what: "packet load without r6 = context".to_owned() });
        }
        let base = if i.code & 0xe0 == MODE_IND { reg[usize::from(i.src & 0x0f)] } else { 0 };
        let offset = base.wrapping_add(i64::from(i.imm) as u64) as i32;
        let at = if offset >= 0 {
            offset as usize
        } else if (SKF_LL_OFF..SKF_NET_OFF).contains(&offset) {
            (offset - SKF_LL_OFF) as usize
        } else if offset < SKF_LL_OFF {
            // Below every range: the kernel's load fails, and so the program returns 0.
            return Ok(None);
        } else {
            return Err(Fault::Unsupported { slot, what: format!("packet load at offset {offset}") });
        };
        let size = Size::from_code(i.code).bytes() as usize;
        Ok(self.packet.get(at..at.saturating_add(size)).map(|b| b.iter().fold(0, |v, b| (v << 8) | u64::from(*b))))
    }

    fn locate(&self, slot: usize, addr: u64, size: usize) -> Result<(usize, usize), Fault> {
        let out = Fault::OutOfBounds { slot, addr, size };
        let region = ((addr >> 32) as usize).checked_sub(1).ok_or_else(|| out.clone())?;
        let offset = (addr & 0xffff_ffff) as usize;
        let r = self.regions.get(region).ok_or_else(|| out.clone())?;
        if offset + size > r.bytes.len() {
            return Err(out);
        }
        Ok((region, offset))
    }

    fn read(&self, slot: usize, addr: u64, size: usize) -> Result<Vec<u8>, Fault> {
        let (region, offset) = self.locate(slot, addr, size)?;
        let r = &self.regions[region];
        if r.kind == Kind::Stack && r.init[offset..offset + size].contains(&false) {
            return Err(Fault::Uninitialised { slot, offset: offset as i64 - STACK_SIZE as i64 });
        }
        Ok(r.bytes[offset..offset + size].to_vec())
    }

    fn write(&mut self, slot: usize, addr: u64, bytes: &[u8]) -> Result<(), Fault> {
        let (region, offset) = self.locate(slot, addr, bytes.len())?;
        let r = &mut self.regions[region];
        match r.kind {
            Kind::Stack => r.init[offset..offset + bytes.len()].fill(true),
            Kind::Value(map) => {
                r.bytes[offset..offset + bytes.len()].copy_from_slice(bytes);
                let value = r.bytes.clone();
                self.maps.maps[map].entries.insert(r.key.clone(), value);
                return Ok(());
            }
            Kind::ReadOnly | Kind::Map(_) => return Err(Fault::ReadOnly { slot, addr }),
        }
        r.bytes[offset..offset + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    fn map_of(&self, slot: usize, addr: u64) -> Result<usize, Fault> {
        let not_a_map = || Fault::Map { slot, what: format!("{addr:#x} is not a map") };
        let region = ((addr >> 32) as usize).checked_sub(1).ok_or_else(not_a_map)?;
        match self.regions.get(region).map(|r| r.kind) {
            Some(Kind::Map(m)) if addr as u32 == 0 => Ok(m),
            _ => Err(not_a_map()),
        }
    }

    fn call(
        &mut self,
        slot: usize,
        id: i32,
        reg: &[u64; 11],
        records: &mut Vec<(String, Vec<u8>)>,
    ) -> Result<u64, Fault> {
        let t = &self.task;
        Ok(match id {
            helper::MAP_LOOKUP_ELEM => {
                let map = self.map_of(slot, reg[1])?;
                let key = self.read(slot, reg[2], self.maps.maps[map].key_size)?;
                let state = &self.maps.maps[map];
                match state.find(&key) {
                    None => 0,
                    Some(found) => {
                        let bytes = state.entries.get(&found).cloned().unwrap_or_else(|| vec![0; state.value_size]);
                        self.regions.push(Region { kind: Kind::Value(map), bytes, init: Vec::new(), key: found });
                        ptr(self.regions.len() - 1, 0)
                    }
                }
            }
            helper::KTIME_GET_NS => t.time_ns,
            helper::GET_CURRENT_PID_TGID => (u64::from(t.tgid) << 32) | u64::from(t.pid),
            helper::GET_CURRENT_UID_GID => (u64::from(t.gid) << 32) | u64::from(t.uid),
            helper::GET_CURRENT_CGROUP_ID => t.cgroups.last().copied().unwrap_or(0),
            helper::GET_CURRENT_ANCESTOR_CGROUP_ID => {
                usize::try_from(reg[1] as i32).ok().and_then(|level| t.cgroups.get(level)).copied().unwrap_or(0)
            }
            helper::GET_CURRENT_COMM => {
                let size = reg[2] as usize;
                let mut comm = t.comm.to_vec();
                comm.resize(size, 0);
                if let Some(last) = comm.last_mut() {
                    *last = 0;
                }
                self.write(slot, reg[1], &comm)?;
                0
            }
            helper::PROBE_READ_KERNEL => {
                let size = reg[2] as usize;
                if let Ok(bytes) = self.read(slot, reg[3], size) {
                    self.write(slot, reg[1], &bytes)?;
                    0
                } else {
                    // The kernel zeroes the destination when the read faults.
                    self.write(slot, reg[1], &vec![0; size])?;
                    EFAULT as u64
                }
            }
            helper::RINGBUF_OUTPUT => {
                let map = self.map_of(slot, reg[1])?;
                if self.maps.maps[map].map_type != BPF_MAP_TYPE_RINGBUF {
                    return Err(Fault::Map {
                        slot,
                        what: format!("{} is not a ring buffer", self.maps.maps[map].name),
                    });
                }
                let bytes = self.read(slot, reg[2], reg[3] as usize)?;
                if self.maps.ring_full {
                    EAGAIN as u64
                } else {
                    records.push((self.maps.maps[map].name.clone(), bytes));
                    0
                }
            }
            helper::D_PATH => {
                let size = reg[3] as usize;
                match self.paths.get(&reg[1]).cloned() {
                    Some(path) if path.len() < size => {
                        let mut out = path.clone();
                        out.push(0);
                        self.write(slot, reg[2], &out)?;
                        out.len() as u64
                    }
                    Some(_) => ENAMETOOLONG as u64,
                    None => {
                        return Err(Fault::Map { slot, what: format!("bpf_d_path of {:#x}, no path there", reg[1]) });
                    }
                }
            }
            _ => return Err(Fault::Unsupported { slot, what: format!("helper {id}") }),
        })
    }
}

fn unsupported(slot: usize, i: &Insn) -> Fault {
    Fault::Unsupported {
        slot,
        what: format!("instruction {:#04x} ({})", i.code, crate::bpf::disasm::disassemble_insn(i, None)),
    }
}

fn jump(next: usize, off: i16, len: usize) -> Result<usize, Fault> {
    let target = next as i64 + i64::from(off);
    usize::try_from(target).ok().filter(|&t| t < len).ok_or(Fault::Jump { slot: target })
}

fn alu(op: Alu, a: u64, b: u64, wide: bool) -> u64 {
    // A 32-bit operation works on the zero-extended low halves, shifts by at most 31, shifts
    // arithmetically from bit 31, and zeroes the upper half of its result.
    let (a, b, bits) = if wide { (a, b, 64) } else { (u64::from(a as u32), u64::from(b as u32), 32) };
    let shift = (b & (bits - 1)) as u32;
    let r = match op {
        Alu::Add => a.wrapping_add(b),
        Alu::Sub => a.wrapping_sub(b),
        Alu::Mul => a.wrapping_mul(b),
        Alu::Div => a.checked_div(b).unwrap_or(0),
        Alu::Mod => a.checked_rem(b).unwrap_or(a),
        Alu::Or => a | b,
        Alu::And => a & b,
        Alu::Xor => a ^ b,
        Alu::Lsh => a.wrapping_shl(shift),
        Alu::Rsh => a.wrapping_shr(shift),
        Alu::Arsh if wide => (a as i64).wrapping_shr(shift) as u64,
        Alu::Arsh => u64::from((a as u32 as i32).wrapping_shr(shift) as u32),
        Alu::Neg => a.wrapping_neg(),
        Alu::Mov => b,
    };
    if wide { r } else { u64::from(r as u32) }
}

/// `BPF_END`: to big or little endian (`to_be`), or an unconditional swap in ALU64.
fn swap(v: u64, bits: i32, to_be: bool, wide: bool) -> Option<u64> {
    let swap_now = wide || to_be;
    Some(match bits {
        16 => u64::from(if swap_now { (v as u16).swap_bytes() } else { v as u16 }),
        32 => u64::from(if swap_now { (v as u32).swap_bytes() } else { v as u32 }),
        64 => {
            if swap_now {
                v.swap_bytes()
            } else {
                v
            }
        }
        _ => return None,
    })
}

fn compare(op: Jmp, a: u64, b: u64, wide: bool) -> bool {
    let (ua, ub, sa, sb) = if wide {
        (a, b, a as i64, b as i64)
    } else {
        (u64::from(a as u32), u64::from(b as u32), i64::from(a as i32), i64::from(b as i32))
    };
    match op {
        Jmp::Jeq => ua == ub,
        Jmp::Jne => ua != ub,
        Jmp::Jgt => ua > ub,
        Jmp::Jge => ua >= ub,
        Jmp::Jlt => ua < ub,
        Jmp::Jle => ua <= ub,
        Jmp::Jset => ua & ub != 0,
        Jmp::Jsgt => sa > sb,
        Jmp::Jsge => sa >= sb,
        Jmp::Jslt => sa < sb,
        Jmp::Jsle => sa <= sb,
    }
}

#[cfg(test)]
mod tests;
