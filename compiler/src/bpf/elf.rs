//! Deterministic BPF ELF writer: the relocatable object shape aya loads without BTF (see
//! `KERNEL.md`, "The ELF that aya 0.14 accepts from us").
//!
//! Layout: `ET_REL`, `EM_BPF`, 64-bit little endian; a `license` section holding "GPL\0"; a
//! legacy `maps` section of 28-byte `struct bpf_map_def` records, one `STT_OBJECT` symbol per
//! map; one executable section per distinct program section name, each program an `STT_FUNC`
//! symbol in it; an `R_BPF_64_64` relocation against the map symbol at every map-loading `ld_imm64`.

use object::write::{Object, Relocation, SectionId, Symbol, SymbolId, SymbolSection};
use object::{
    Architecture, BinaryFormat, Endianness, RelocationFlags, SectionKind, SymbolFlags, SymbolKind, SymbolScope,
};

use crate::bpf::asm::Program;
use crate::bpf::insn::BPF_PSEUDO_MAP_FD;

/// Map type numbers (`enum bpf_map_type` in the kernel's `include/uapi/linux/bpf.h`).
pub mod map_types {
    /// `BPF_MAP_TYPE_HASH`.
    pub const HASH: u32 = 1;
    /// `BPF_MAP_TYPE_ARRAY`.
    pub const ARRAY: u32 = 2;
    /// `BPF_MAP_TYPE_LPM_TRIE` (requires [`super::BPF_F_NO_PREALLOC`]).
    pub const LPM_TRIE: u32 = 11;
    /// `BPF_MAP_TYPE_RINGBUF` (key and value size 0; `max_entries` is the byte size, a
    /// power-of-two multiple of the page size).
    pub const RINGBUF: u32 = 27;
}

/// `BPF_F_NO_PREALLOC` map flag (`include/uapi/linux/bpf.h`); mandatory for LPM tries.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// Size of a legacy `struct bpf_map_def` record as written: 7 × u32.
pub const MAP_DEF_SIZE: usize = 28;

const LICENSE: &[u8] = b"GPL\0";
const LICENSE_SECTION: &str = "license";
const MAPS_SECTION: &str = "maps";
const INSN_SIZE: u64 = 8;

/// One map definition, written as a `struct bpf_map_def` record in the `maps` section.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MapDef {
    /// Symbol name; programs refer to the map by it.
    pub name: String,
    /// Map type (see [`map_types`]).
    pub map_type: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Maximum number of entries (bytes for a ring buffer).
    pub max_entries: u32,
    /// Map flags, e.g. [`BPF_F_NO_PREALLOC`].
    pub flags: u32,
}

impl MapDef {
    /// The record `{type, key_size, value_size, max_entries, flags, id = 0, pinning = 0}`,
    /// each a little-endian u32.
    pub fn encode(&self) -> [u8; MAP_DEF_SIZE] {
        let fields = [self.map_type, self.key_size, self.value_size, self.max_entries, self.flags, 0, 0];
        let mut out = [0; MAP_DEF_SIZE];
        for (chunk, field) in out.chunks_exact_mut(4).zip(fields) {
            chunk.copy_from_slice(&field.to_le_bytes());
        }
        out
    }
}

/// One program to place in the ELF.
#[derive(Debug, Clone, Copy)]
pub struct ElfProgram<'a> {
    /// Symbol name (aya's program name).
    pub name: &'a str,
    /// Section name, which tells aya the program type: `cgroup/connect4`, `lsm/socket_connect`,
    /// `sockops`, `socket`, … Programs sharing a section are laid out one after another.
    pub section: &'a str,
    /// The assembled code.
    pub program: &'a Program,
}

/// Why an ELF could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// A program has no instructions (a symbol of size 0 fails to load with E2BIG).
    #[error("program `{name}` has no instructions")]
    EmptyProgram {
        /// Program name.
        name: String,
    },
    /// A map or program name is empty or contains a NUL byte.
    #[error("invalid symbol name {name:?}: it must be non-empty and contain no NUL byte")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// A program section name is empty, contains a NUL byte, or is one this writer reserves.
    #[error("program `{program}` has invalid section name {section:?}")]
    InvalidSection {
        /// Program name.
        program: String,
        /// The rejected section name.
        section: String,
    },
    /// Two maps or programs share a symbol name.
    #[error("symbol `{name}` is defined twice")]
    DuplicateSymbol {
        /// The repeated name.
        name: String,
    },
    /// A program loads a map that is not in the map list.
    #[error("program `{program}` references unknown map `{map}`")]
    UnknownMap {
        /// Program name.
        program: String,
        /// The missing map name.
        map: String,
    },
    /// A relocation does not point at a map-loading `ld_imm64` inside the program.
    #[error("program `{program}` has a map relocation at slot {slot}, which is not a map load")]
    BadRelocation {
        /// Program name.
        program: String,
        /// The relocation's slot.
        slot: usize,
    },
    /// The `object` crate failed to lay out or serialise the file.
    #[error("writing the ELF object failed")]
    Object {
        /// The underlying error.
        #[source]
        source: object::write::Error,
    },
}

/// Writes `programs` and `maps` as one relocatable BPF ELF. The output depends only on the
/// arguments (their order included): the same input gives the same bytes.
pub fn write(programs: &[ElfProgram<'_>], maps: &[MapDef]) -> Result<Vec<u8>, ElfError> {
    validate(programs, maps)?;

    let mut obj = Object::new(BinaryFormat::Elf, Architecture::Bpf, Endianness::Little);
    let license = add_section(&mut obj, LICENSE_SECTION, SectionKind::Data);
    obj.set_section_data(license, LICENSE, 1);

    // aya rejects a `maps` section without symbols, so only emit it when there are maps.
    let mut map_symbols: Vec<(&str, SymbolId)> = Vec::with_capacity(maps.len());
    if !maps.is_empty() {
        let section = add_section(&mut obj, MAPS_SECTION, SectionKind::Data);
        for map in maps {
            let symbol = obj.add_symbol(Symbol {
                name: map.name.as_bytes().to_vec(),
                value: 0,
                size: 0,
                kind: SymbolKind::Data,
                scope: SymbolScope::Dynamic,
                weak: false,
                section: SymbolSection::Undefined,
                flags: SymbolFlags::None,
            });
            obj.add_symbol_data(symbol, section, &map.encode(), 4);
            map_symbols.push((map.name.as_str(), symbol));
        }
    }

    // Sections in order of first use, so the layout follows the caller's order.
    let mut sections: Vec<(&str, SectionId)> = Vec::new();
    let mut placed = Vec::with_capacity(programs.len());
    for p in programs {
        let section = if let Some(&(_, id)) = sections.iter().find(|(name, _)| *name == p.section) {
            id
        } else {
            let id = add_section(&mut obj, p.section, SectionKind::Text);
            sections.push((p.section, id));
            id
        };
        let code = p.program.bytes();
        let offset = obj.append_section_data(section, &code, INSN_SIZE);
        obj.add_symbol(Symbol {
            name: p.name.as_bytes().to_vec(),
            value: offset,
            size: code.len() as u64,
            kind: SymbolKind::Text,
            scope: SymbolScope::Dynamic,
            weak: false,
            section: SymbolSection::Section(section),
            flags: SymbolFlags::None,
        });
        placed.push((p, section, offset));
    }

    // Relocations last: `object` requires the target symbols to be defined already.
    for (p, section, offset) in placed {
        for r in &p.program.relocations {
            let symbol = map_symbols
                .iter()
                .find(|(name, _)| *name == r.map)
                .map(|&(_, id)| id)
                .ok_or_else(|| ElfError::UnknownMap { program: p.name.to_owned(), map: r.map.clone() })?;
            let relocation = Relocation {
                offset: offset + r.slot as u64 * INSN_SIZE,
                symbol,
                addend: 0,
                flags: RelocationFlags::Elf { r_type: object::elf::R_BPF_64_64 },
            };
            obj.add_relocation(section, relocation).map_err(|source| ElfError::Object { source })?;
        }
    }

    obj.write().map_err(|source| ElfError::Object { source })
}

fn add_section(obj: &mut Object<'_>, name: &str, kind: SectionKind) -> SectionId {
    // ELF has no segment names in relocatable files.
    obj.add_section(Vec::new(), name.as_bytes().to_vec(), kind)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('\0')
}

fn validate(programs: &[ElfProgram<'_>], maps: &[MapDef]) -> Result<(), ElfError> {
    let mut names = std::collections::BTreeSet::new();
    for name in maps.iter().map(|m| m.name.as_str()).chain(programs.iter().map(|p| p.name)) {
        if !valid_name(name) {
            return Err(ElfError::InvalidName { name: name.to_owned() });
        }
        if !names.insert(name) {
            return Err(ElfError::DuplicateSymbol { name: name.to_owned() });
        }
    }
    for p in programs {
        let reserved = [LICENSE_SECTION, MAPS_SECTION, ".maps"].contains(&p.section) || p.section.starts_with(".rel");
        if !valid_name(p.section) || reserved {
            return Err(ElfError::InvalidSection { program: p.name.to_owned(), section: p.section.to_owned() });
        }
        if p.program.is_empty() {
            return Err(ElfError::EmptyProgram { name: p.name.to_owned() });
        }
        for r in &p.program.relocations {
            let is_map_load = p.program.insns.get(r.slot).is_some_and(|i| i.is_wide() && i.src == BPF_PSEUDO_MAP_FD)
                && r.slot + 1 < p.program.len();
            if !is_map_load {
                return Err(ElfError::BadRelocation { program: p.name.to_owned(), slot: r.slot });
            }
            if !maps.iter().any(|m| m.name == r.map) {
                return Err(ElfError::UnknownMap { program: p.name.to_owned(), map: r.map.clone() });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use aya_obj::{Object as AyaObject, ProgramSection};
    use object::read::elf::{ElfFile64, FileHeader as _};
    use object::{LittleEndian, Object as _, ObjectSection as _, ObjectSymbol as _};

    use super::*;
    use crate::bpf::asm::{Asm, Relocation as AsmRelocation};
    use crate::bpf::insn::{self, Jmp, R0, R1, R2, R6, Size};

    fn connect4() -> Program {
        let mut a = Asm::new();
        let deny = a.label();
        a.push(insn::ldx(Size::W, R2, R1, 24));
        a.push(insn::mov64_reg(R6, R1));
        a.ld_map(R1, "pal_rules");
        a.push(insn::call(insn::helper::MAP_LOOKUP_ELEM));
        a.jmp_imm(Jmp::Jne, R0, 0, deny);
        a.ld_map(R1, "pal_nets");
        a.push(insn::mov64_imm(R0, 1));
        a.push(insn::exit());
        a.bind(deny);
        a.ld_map(R1, "pal_events");
        a.push(insn::mov64_imm(R0, 0));
        a.push(insn::exit());
        a.finish().expect("assembles")
    }

    fn lsm() -> Program {
        let mut a = Asm::new();
        a.ld_map(R1, "pal_events");
        a.push(insn::mov64_imm(R0, 0));
        a.push(insn::exit());
        a.finish().expect("assembles")
    }

    fn maps() -> Vec<MapDef> {
        vec![
            MapDef {
                name: "pal_rules".into(),
                map_type: map_types::HASH,
                key_size: 8,
                value_size: 4,
                max_entries: 1024,
                flags: 0,
            },
            MapDef {
                name: "pal_nets".into(),
                map_type: map_types::LPM_TRIE,
                key_size: 8,
                value_size: 4,
                max_entries: 256,
                flags: BPF_F_NO_PREALLOC,
            },
            MapDef {
                name: "pal_events".into(),
                map_type: map_types::RINGBUF,
                key_size: 0,
                value_size: 0,
                max_entries: 65536,
                flags: 0,
            },
        ]
    }

    #[test]
    fn write_two_programs_parses_with_aya() {
        let (c4, l) = (connect4(), lsm());
        let programs = [
            ElfProgram { name: "pal_connect4", section: "cgroup/connect4", program: &c4 },
            ElfProgram { name: "pal_socket_connect", section: "lsm/socket_connect", program: &l },
        ];
        let maps = maps();
        let bytes = write(&programs, &maps).expect("writes");
        assert_eq!(bytes, write(&programs, &maps).expect("writes"), "output must be deterministic");

        let mut obj = AyaObject::parse(&bytes).expect("aya parses");
        assert_eq!(obj.license.to_str(), Ok("GPL"));
        assert_eq!(obj.programs.len(), 2);
        let p = &obj.programs["pal_connect4"];
        assert!(matches!(p.section, ProgramSection::CgroupSockAddr { .. }), "{:?}", p.section);
        assert_eq!(obj.functions[&p.function_key()].instructions.len(), c4.len());
        let p = &obj.programs["pal_socket_connect"];
        assert!(matches!(p.section, ProgramSection::Lsm { sleepable: false }), "{:?}", p.section);
        assert_eq!(obj.functions[&p.function_key()].instructions.len(), l.len());

        assert_eq!(obj.maps.len(), 3);
        for def in &maps {
            let m = &obj.maps[&def.name];
            assert_eq!(
                (m.map_type(), m.key_size(), m.value_size(), m.max_entries(), m.map_flags()),
                (def.map_type, def.key_size, def.value_size, def.max_entries, def.flags),
                "{}",
                def.name
            );
        }

        // Let aya patch fake fds through our relocations, as the loader would.
        let fd_of = |name: &str| 100 + maps.iter().position(|m| m.name == name).expect("known map") as i32;
        let aya_maps = obj.maps.clone();
        obj.relocate_maps(aya_maps.iter().map(|(name, m)| (name.as_str(), fd_of(name), m)), &HashSet::new())
            .expect("relocates");
        for (name, program) in [("pal_connect4", &c4), ("pal_socket_connect", &l)] {
            let f = &obj.functions[&obj.programs[name].function_key()];
            for r in &program.relocations {
                let i = f.instructions[r.slot];
                assert_eq!((i.imm, i.src_reg()), (fd_of(&r.map), BPF_PSEUDO_MAP_FD), "{name} slot {}", r.slot);
            }
            let patched: Vec<usize> = (0..f.instructions.len()).filter(|&s| f.instructions[s].imm >= 100).collect();
            let expected: Vec<usize> = program.relocations.iter().map(|r| r.slot).collect();
            assert_eq!(patched, expected, "{name}");
        }
    }

    #[test]
    fn write_elf_header_symbols_and_relocations_have_expected_shape() {
        let (c4, l) = (connect4(), lsm());
        let programs = [
            ElfProgram { name: "first", section: "cgroup/connect4", program: &c4 },
            ElfProgram { name: "second", section: "cgroup/connect4", program: &l },
        ];
        let bytes = write(&programs, &maps()).expect("writes");
        let elf = ElfFile64::<LittleEndian>::parse(&*bytes).expect("parses");
        let header = elf.elf_header();
        assert_eq!(header.e_type(LittleEndian), object::elf::ET_REL);
        assert_eq!(header.e_machine(LittleEndian), object::elf::EM_BPF);

        let license = elf.section_by_name("license").expect("license section");
        assert_eq!(license.data().expect("data"), b"GPL\0");
        let maps_section = elf.section_by_name("maps").expect("maps section");
        assert_eq!(maps_section.size(), 3 * MAP_DEF_SIZE as u64);
        assert_eq!(&maps_section.data().expect("data")[..MAP_DEF_SIZE], &maps()[0].encode());

        let text = elf.section_by_name("cgroup/connect4").expect("program section");
        let flags = text.elf_section_header().sh_flags.get(LittleEndian);
        assert_eq!(flags, u64::from(object::elf::SHF_ALLOC | object::elf::SHF_EXECINSTR));
        let c4_bytes = c4.bytes();
        assert_eq!(text.data().expect("data"), [c4_bytes.as_slice(), &l.bytes()].concat());

        let symbols: Vec<_> = elf
            .symbols()
            .filter(object::ObjectSymbol::is_global)
            .map(|s| {
                let st_info = s.elf_symbol().st_info;
                (s.name().expect("name").to_owned(), s.address(), s.size(), st_info)
            })
            .collect();
        let global = |ty: u8| (object::elf::STB_GLOBAL << 4) | ty;
        assert_eq!(
            symbols,
            vec![
                ("pal_rules".into(), 0, 28, global(object::elf::STT_OBJECT)),
                ("pal_nets".into(), 28, 28, global(object::elf::STT_OBJECT)),
                ("pal_events".into(), 56, 28, global(object::elf::STT_OBJECT)),
                ("first".into(), 0, c4_bytes.len() as u64, global(object::elf::STT_FUNC)),
                ("second".into(), c4_bytes.len() as u64, 8 * l.len() as u64, global(object::elf::STT_FUNC)),
            ]
        );

        let relocations: Vec<_> = text
            .relocations()
            .map(|(offset, r)| {
                let object::RelocationTarget::Symbol(index) = r.target() else { panic!("symbol target") };
                let name = elf.symbol_by_index(index).expect("symbol").name().expect("name").to_owned();
                (offset, name, r.flags())
            })
            .collect();
        let mut expected: Vec<_> = c4.relocations.iter().map(|r| (r.slot as u64 * 8, r.map.clone())).collect();
        expected.extend(l.relocations.iter().map(|r| (c4_bytes.len() as u64 + r.slot as u64 * 8, r.map.clone())));
        assert_eq!(relocations.len(), expected.len());
        for ((offset, name, flags), (want_offset, want_name)) in relocations.into_iter().zip(expected) {
            assert_eq!((offset, name), (want_offset, want_name));
            assert_eq!(flags, RelocationFlags::Elf { r_type: object::elf::R_BPF_64_64 });
        }
        assert!(elf.section_by_name(".relcgroup/connect4").is_some());
    }

    #[test]
    fn write_without_maps_omits_maps_section() {
        let mut a = Asm::new();
        a.push(insn::mov64_imm(R0, 1));
        a.push(insn::exit());
        let p = a.finish().expect("assembles");
        let bytes = write(&[ElfProgram { name: "allow", section: "sockops", program: &p }], &[]).expect("writes");
        let obj = AyaObject::parse(&bytes).expect("aya parses");
        assert!(obj.maps.is_empty());
        assert!(matches!(obj.programs["allow"].section, ProgramSection::SockOps));
    }

    #[test]
    fn write_output_depends_on_input() {
        let (c4, l) = (connect4(), lsm());
        let one = write(&[ElfProgram { name: "a", section: "cgroup/connect4", program: &c4 }], &maps()).expect("ok");
        let two = write(&[ElfProgram { name: "a", section: "cgroup/connect4", program: &l }], &maps()).expect("ok");
        assert_ne!(one, two);
    }

    #[test]
    fn write_unknown_map_is_error() {
        let l = lsm();
        let err =
            write(&[ElfProgram { name: "p", section: "lsm/socket_connect", program: &l }], &[]).expect_err("must fail");
        assert!(matches!(err, ElfError::UnknownMap { ref map, .. } if map == "pal_events"), "{err}");
    }

    #[test]
    fn write_empty_program_is_error() {
        let empty = Program::default();
        let err = write(&[ElfProgram { name: "p", section: "socket", program: &empty }], &[]).expect_err("must fail");
        assert!(matches!(err, ElfError::EmptyProgram { ref name } if name == "p"), "{err}");
    }

    #[test]
    fn write_duplicate_symbol_is_error() {
        let l = lsm();
        let p = ElfProgram { name: "pal_events", section: "lsm/socket_connect", program: &l };
        let err = write(&[p], &maps()).expect_err("must fail");
        assert!(matches!(err, ElfError::DuplicateSymbol { ref name } if name == "pal_events"), "{err}");
        let twice = [maps(), maps()].concat();
        assert!(matches!(write(&[], &twice), Err(ElfError::DuplicateSymbol { .. })));
    }

    #[test]
    fn write_invalid_names_are_errors() {
        let l = lsm();
        let err = write(&[ElfProgram { name: "", section: "socket", program: &l }], &maps()).expect_err("must fail");
        assert!(matches!(err, ElfError::InvalidName { .. }), "{err}");
        let mut bad = maps();
        bad[0].name = "a\0b".into();
        assert!(matches!(write(&[], &bad), Err(ElfError::InvalidName { .. })));
        for section in ["", "maps", "license", ".relsocket"] {
            let err = write(&[ElfProgram { name: "p", section, program: &l }], &maps()).expect_err("must fail");
            assert!(matches!(err, ElfError::InvalidSection { .. }), "{section:?}: {err}");
        }
    }

    #[test]
    fn write_relocation_not_at_map_load_is_error() {
        let mut p = lsm();
        p.relocations.push(AsmRelocation { slot: 2, map: "pal_events".into() });
        let err = write(&[ElfProgram { name: "p", section: "socket", program: &p }], &maps()).expect_err("must fail");
        assert!(matches!(err, ElfError::BadRelocation { slot: 2, .. }), "{err}");
        let mut truncated = lsm();
        truncated.insns.truncate(1);
        let err =
            write(&[ElfProgram { name: "p", section: "socket", program: &truncated }], &maps()).expect_err("must fail");
        assert!(matches!(err, ElfError::BadRelocation { slot: 0, .. }), "{err}");
    }

    #[test]
    fn map_def_encode_is_seven_le_words() {
        let def = &maps()[1];
        let bytes = def.encode();
        assert_eq!(&bytes[..4], &11u32.to_le_bytes());
        assert_eq!(&bytes[12..16], &256u32.to_le_bytes());
        assert_eq!(&bytes[16..20], &1u32.to_le_bytes());
        assert_eq!(&bytes[20..], &[0; 8]);
    }
}
