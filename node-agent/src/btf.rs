//! Struct member offsets from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Offsets differ between kernels, so LSM adapters never hard-code them (DESIGN.md §4): the
//! agent reads them here and reports them in its hello; the server compiles with them.
//! aya-obj keeps BTF members private, so this is a minimal reader of the format documented in
//! the kernel's Documentation/bpf/btf.rst: a header, a type section of `btf_type` records
//! with kind-specific trailers, and a string section.

use std::collections::BTreeMap;

use palisade_contract::btf::Field;

/// The fields the compiler's adapters need.
pub use palisade_contract::btf::FIELDS;

/// A BTF blob that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    /// Not BTF or a version we do not know.
    #[error("not a BTF blob (bad magic or header)")]
    Header,
    /// A record runs past the end of the type section.
    #[error("truncated BTF type section at byte {0}")]
    Truncated(usize),
    /// A kind this reader does not know, so later records cannot be found.
    #[error("unknown BTF kind {kind} at byte {at}")]
    UnknownKind {
        /// Kind number.
        kind: u32,
        /// Offset.
        at: usize,
    },
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn string(strings: &[u8], off: u32) -> &str {
    let start = off as usize;
    let Some(rest) = strings.get(start..) else { return "" };
    let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).unwrap_or("")
}

/// Byte offsets of the requested fields, keyed by [`Field::key`] (`"struct.member"`).
/// Members that are not found (or are bitfields) are left out.
pub fn member_offsets(blob: &[u8], wanted: &[Field]) -> Result<BTreeMap<String, u32>, BtfError> {
    if blob.len() < 24 || blob[0..2] != [0x9f, 0xeb] {
        return Err(BtfError::Header);
    }
    let hdr_len = u32_at(blob, 4).ok_or(BtfError::Header)? as usize;
    let type_off = u32_at(blob, 8).ok_or(BtfError::Header)? as usize;
    let type_len = u32_at(blob, 12).ok_or(BtfError::Header)? as usize;
    let str_off = u32_at(blob, 16).ok_or(BtfError::Header)? as usize;
    let str_len = u32_at(blob, 20).ok_or(BtfError::Header)? as usize;
    let types = blob.get(hdr_len + type_off..hdr_len + type_off + type_len).ok_or(BtfError::Header)?;
    let strings = blob.get(hdr_len + str_off..hdr_len + str_off + str_len).ok_or(BtfError::Header)?;
    // Every type's record: (kind, name offset, members as (name offset, type id, offset bits,
    // bitfield)). Type ids start at 1.
    let mut records: Vec<Record> = vec![(0, 0, Vec::new())];
    let mut at = 0;
    while at < types.len() {
        let name_off = u32_at(types, at).ok_or(BtfError::Truncated(at))?;
        let info = u32_at(types, at + 4).ok_or(BtfError::Truncated(at))?;
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let kind_flag = info >> 31 == 1;
        let body = at + 12;
        let trailer = match kind {
            1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
            3 => 12,                      // ARRAY
            4 | 5 | 15 | 19 => vlen * 12, // STRUCT, UNION, DATASEC, ENUM64
            6 | 13 => vlen * 8,           // ENUM, FUNC_PROTO
            2 | 7..=12 | 16 | 18 => 0,    // PTR, FWD, TYPEDEF, modifiers, FUNC, FLOAT, TYPE_TAG
            _ => return Err(BtfError::UnknownKind { kind, at }),
        };
        if body + trailer > types.len() {
            return Err(BtfError::Truncated(at));
        }
        let mut members = Vec::new();
        if kind == 4 || kind == 5 {
            for i in 0..vlen {
                let member = body + i * 12;
                let truncated = || BtfError::Truncated(member);
                let name = u32_at(types, member).ok_or_else(truncated)?;
                let type_id = u32_at(types, member + 4).ok_or_else(truncated)?;
                let raw = u32_at(types, member + 8).ok_or_else(truncated)?;
                // With kind_flag the top 8 bits are a bitfield size; 0 means a plain member.
                let (bits, bitfield) = if kind_flag { (raw & 0x00ff_ffff, raw >> 24 != 0) } else { (raw, false) };
                members.push((name, type_id, bits, bitfield));
            }
        }
        records.push((kind, name_off, members));
        at = body + trailer;
    }
    let mut found = BTreeMap::new();
    for field in wanted {
        let structs =
            records.iter().filter(|(kind, name, _)| *kind == 4 && string(strings, *name) == field.struct_name);
        for (_, _, members) in structs {
            if let Some(bits) = find_member(&records, strings, members, field.member, 0) {
                found.insert(field.key.to_owned(), bits / 8);
                break;
            }
        }
    }
    Ok(found)
}

/// A struct or union member: name offset, type id, offset in bits, whether a bitfield.
type Member = (u32, u32, u32, bool);
type Members = [Member];
/// A type record: kind, name offset, members (structs and unions only).
type Record = (u32, u32, Vec<Member>);

/// The bit offset of member `wanted` among `members`, looking inside anonymous struct and
/// union members (a kernel may move a field into one, e.g. `struct file`'s `f_path`).
fn find_member(records: &[Record], strings: &[u8], members: &Members, wanted: &str, depth: u32) -> Option<u32> {
    for &(name, type_id, bits, bitfield) in members {
        let member_name = string(strings, name);
        if member_name == wanted {
            return (!bitfield && bits % 8 == 0).then_some(bits);
        }
        if member_name.is_empty()
            && depth < 8
            && let Some((4 | 5, _, inner)) = records.get(type_id as usize)
            && let Some(found) = find_member(records, strings, inner, wanted, depth + 1)
        {
            return Some(bits + found);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built blob: INT "int", STRUCT "socket" { int state @0; short type @32 bits }.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0socket\0state\0type\0".to_vec();
        let mut types = Vec::new();
        let push = |t: &mut Vec<u8>, v: u32| t.extend_from_slice(&v.to_le_bytes());
        // [1] INT "int": name_off 1, info kind 1, size 4, trailer encoding.
        push(&mut types, 1);
        push(&mut types, 1 << 24);
        push(&mut types, 4);
        push(&mut types, 32);
        // [2] STRUCT "socket" with 2 members, size 8.
        push(&mut types, 5);
        push(&mut types, (4 << 24) | 2);
        push(&mut types, 8);
        for (name, offset_bits) in [(12_u32, 0_u32), (18, 32)] {
            push(&mut types, name);
            push(&mut types, 1);
            push(&mut types, offset_bits);
        }
        let mut b = vec![0x9f, 0xeb, 1, 0];
        for v in [24_u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&types);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn member_offsets_finds_struct_members_in_bytes() {
        let offsets = member_offsets(&blob(), &FIELDS).expect("parses");
        assert_eq!(offsets.get("socket.type"), Some(&4));
    }

    #[test]
    fn member_offsets_rejects_garbage_and_truncation() {
        assert_eq!(member_offsets(b"not btf at all, really not", &FIELDS), Err(BtfError::Header));
        let mut b = blob();
        b.truncate(b.len() - 30);
        assert!(member_offsets(&b, &FIELDS).is_err());
    }

    #[test]
    fn member_offsets_reads_the_running_kernel() {
        let Ok(blob) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            assert!(std::env::var_os("CI").is_none(), "CI machines have kernel BTF");
            return;
        };
        let offsets = member_offsets(&blob, &FIELDS).expect("kernel BTF parses");
        // struct socket { socket_state state; short type; ... } on every kernel since 2.6.
        assert_eq!(offsets.get("socket.type"), Some(&4));
        // The exec and file adapters' fields exist on every kernel we support.
        for key in ["linux_binprm.file", "file.f_path", "file.f_mode"] {
            assert!(offsets.contains_key(key), "{key} missing from {offsets:?}");
        }
    }
}
