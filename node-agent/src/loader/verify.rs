//! Everything checked about a bundle before any `bpf()` call reads it: the signature, the
//! digest, the format, and that its maps and programs are the ones its ELF defines. The raw
//! map commands hand the kernel pointers and let it read `key_size`/`value_size` bytes, so a
//! length that disagrees with the map would read past our buffers; names become pin paths,
//! so they must be single path components.

use std::collections::BTreeSet;

use aya_obj::ProgramSection;
use palisade_contract::{Attach, HookSpec, hook::HOOKS};
use palisade_proto::v1;
use prost::Message as _;

use super::LoadError;

use palisade_contract::map::kind::{ARRAY as MAP_ARRAY, HASH as MAP_HASH, RINGBUF as MAP_RINGBUF};

/// How a bundle's content contradicts itself or its ELF.
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    /// The ELF does not parse as a BPF object.
    #[error("the ELF does not parse")]
    Elf(#[source] aya_obj::ParseError),
    /// The ELF parser panicked on it (aya-obj 0.3 indexes some section data unchecked; found
    /// by `integration/tests/fuzz.rs`). Caught, so a malformed bundle is a NACK, not a crash.
    #[error("the ELF parser failed on this object: {0}")]
    ElfPanic(String),
    /// A map or program name that cannot be a pin name.
    #[error("{kind} name {name:?} is not 1–15 bytes of [A-Za-z0-9_]")]
    Name {
        /// `map` or `program`.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A map or program listed twice.
    #[error("{kind} {name} is listed twice")]
    Duplicate {
        /// `map` or `program`.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A listed map or program the ELF does not define.
    #[error("{kind} {name} is not in the ELF")]
    Missing {
        /// `map` or `program`.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A map whose listed definition differs from the ELF's.
    #[error("map {map}: the bundle says {field} {listed}, the ELF {elf}")]
    Definition {
        /// Map name.
        map: String,
        /// `map_type`, `key_size`, `value_size` or `max_entries`.
        field: &'static str,
        /// The bundle's value.
        listed: u32,
        /// The ELF's value.
        elf: u32,
    },
    /// A map entry whose key or value does not have the map's size.
    #[error("map {map}: entry {index} has a {len}-byte {part}; the map's are {size} bytes")]
    Entry {
        /// Map name.
        map: String,
        /// Entry index.
        index: usize,
        /// `key` or `value`.
        part: &'static str,
        /// Its length.
        len: usize,
        /// The map's size.
        size: u32,
    },
    /// Packed array contents that do not fit the map.
    #[error(
        "map {map}: {count} packed elements of {value_size} bytes do not fit {bytes} value bytes and {slots} slots"
    )]
    Packed {
        /// Map name.
        map: String,
        /// Number of indices.
        count: usize,
        /// The map's value size.
        value_size: u32,
        /// Length of `values`.
        bytes: usize,
        /// The map's capacity.
        slots: u32,
    },
    /// A map whose role needs a different shape.
    #[error("map {map}: role {role} needs {needs}")]
    Role {
        /// Map name.
        map: String,
        /// Its role.
        role: &'static str,
        /// What the role needs.
        needs: &'static str,
    },
    /// A program for a hook this agent does not know.
    #[error("program {program}: hook {hook} is not in this agent's hook table")]
    UnknownHook {
        /// Program name.
        program: String,
        /// The hook id.
        hook: i32,
    },
    /// A program whose section is not its hook's.
    #[error("program {program}: section {section:?}, but hook {hook} runs programs of section {expected:?}")]
    Section {
        /// Program name.
        program: String,
        /// Its section (as listed, or as the ELF parses it).
        section: String,
        /// Its hook.
        hook: &'static str,
        /// The hook's section.
        expected: &'static str,
    },
    /// Two programs for one hook.
    #[error("hook {0} has two programs")]
    DuplicateHook(&'static str),
    /// A selected cgroup whose map is not a cgroups map of the bundle.
    #[error("cgroup {path} names map {map}, which is not a cgroups map of this bundle")]
    CgroupMap {
        /// Selected path.
        path: String,
        /// Map name.
        map: String,
    },
}

/// Checks the signature of the bundle's envelope (when a key is pinned), that it was issued
/// for `node` (when given), the digest, the format and the content's consistency with its
/// ELF, and decodes the content. Generations are the caller's to compare.
pub fn verify(
    bundle: &v1::Bundle,
    key: Option<&ed25519_dalek::VerifyingKey>,
    node: Option<&str>,
) -> Result<v1::BundleContent, LoadError> {
    if let Some(key) = key {
        let signature = ed25519_dalek::Signature::from_slice(&bundle.signature).map_err(|_| LoadError::Signature)?;
        key.verify_strict(&palisade_proto::envelope(bundle), &signature).map_err(|_| LoadError::Signature)?;
    }
    if let Some(node) = node
        && bundle.node != node
    {
        return Err(LoadError::WrongNode { bundle: bundle.node.clone(), node: node.to_owned() });
    }
    let actual = palisade_proto::sha256_hex(&bundle.content);
    if actual != bundle.digest {
        return Err(LoadError::Digest { expected: bundle.digest.clone(), actual });
    }
    let content = v1::BundleContent::decode(&bundle.content[..]).map_err(LoadError::Decode)?;
    if !palisade_contract::format::readable(content.format) {
        return Err(LoadError::Format { format: content.format, readable: &palisade_contract::format::READ });
    }
    check(&content)?;
    Ok(content)
}

/// [`verify`] for a bundle this agent recorded in its own state directory. Agents from
/// before bundle envelopes recorded bundles signed over their content, with no node and no
/// issue time; such a bundle is accepted here (never from the server), so an upgraded agent
/// adopts what runs instead of replacing it, and the next bundle from the server carries an
/// envelope.
pub fn verify_recorded(
    bundle: &v1::Bundle,
    key: Option<&ed25519_dalek::VerifyingKey>,
    node: Option<&str>,
) -> Result<v1::BundleContent, LoadError> {
    match verify(bundle, key, node) {
        Err(LoadError::Signature | LoadError::WrongNode { .. })
            if bundle.node.is_empty() && bundle.issued_at.is_none() =>
        {
            if let Some(key) = key {
                let signature =
                    ed25519_dalek::Signature::from_slice(&bundle.signature).map_err(|_| LoadError::Signature)?;
                key.verify_strict(&bundle.content, &signature).map_err(|_| LoadError::Signature)?;
            }
            verify(bundle, None, None)
        }
        other => other,
    }
}

/// Whether `name` is a safe pin-path component and a valid kernel object name.
fn pin_name(name: &str) -> bool {
    (1..=15).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The content agrees with its ELF and with itself.
fn check(content: &v1::BundleContent) -> Result<(), Malformed> {
    let words = super::aligned(&content.elf);
    let bytes = super::as_bytes(&words, content.elf.len());
    let elf = std::panic::catch_unwind(|| aya_obj::Object::parse(bytes))
        .map_err(|panic| {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()));
            Malformed::ElfPanic(text.unwrap_or_else(|| "no message".into()))
        })?
        .map_err(Malformed::Elf)?;
    let mut names = BTreeSet::new();
    for m in &content.maps {
        if !pin_name(&m.name) {
            return Err(Malformed::Name { kind: "map", name: m.name.clone() });
        }
        if !names.insert(m.name.as_str()) {
            return Err(Malformed::Duplicate { kind: "map", name: m.name.clone() });
        }
        let def = elf.maps.get(&m.name).ok_or_else(|| Malformed::Missing { kind: "map", name: m.name.clone() })?;
        for (field, listed, elf) in [
            ("map_type", m.map_type, def.map_type()),
            ("key_size", m.key_size, def.key_size()),
            ("value_size", m.value_size, def.value_size()),
            ("max_entries", m.max_entries, def.max_entries()),
        ] {
            if listed != elf {
                return Err(Malformed::Definition { map: m.name.clone(), field, listed, elf });
            }
        }
        check_contents(m)?;
        check_role(m)?;
    }
    let mut hooks = BTreeSet::new();
    let mut programs = BTreeSet::new();
    for p in &content.programs {
        if !pin_name(&p.name) {
            return Err(Malformed::Name { kind: "program", name: p.name.clone() });
        }
        if !programs.insert(p.name.as_str()) {
            return Err(Malformed::Duplicate { kind: "program", name: p.name.clone() });
        }
        let hook = HOOKS
            .iter()
            .find(|h| h.id as i32 == p.hook)
            .ok_or(Malformed::UnknownHook { program: p.name.clone(), hook: p.hook })?;
        let wrong_section = |section: String| Malformed::Section {
            program: p.name.clone(),
            section,
            hook: hook.symbol,
            expected: hook.section,
        };
        if p.section != hook.section {
            return Err(wrong_section(p.section.clone()));
        }
        let parsed =
            elf.programs.get(&p.name).ok_or_else(|| Malformed::Missing { kind: "program", name: p.name.clone() })?;
        if !section_fits(&parsed.section, hook) {
            return Err(wrong_section(format!("{:?}", parsed.section)));
        }
        if !hooks.insert(hook.hook) {
            return Err(Malformed::DuplicateHook(hook.symbol));
        }
    }
    for c in &content.cgroups {
        if !content.maps.iter().any(|m| m.name == c.map && m.role == v1::MapRole::Cgroups as i32) {
            return Err(Malformed::CgroupMap { path: c.path.clone(), map: c.map.clone() });
        }
    }
    Ok(())
}

/// Whether the ELF parsed a program as the kind its hook attaches.
fn section_fits(section: &ProgramSection, hook: &HookSpec) -> bool {
    match hook.attach {
        Attach::CgroupSockAddr(_) => matches!(section, ProgramSection::CgroupSockAddr { .. }),
        Attach::Lsm { .. } => matches!(section, ProgramSection::Lsm { sleepable: false }),
        Attach::CgroupSockOps => matches!(section, ProgramSection::SockOps),
    }
}

/// Entries have the map's key and value sizes; packed arrays fit the map.
fn check_contents(m: &v1::BundleMap) -> Result<(), Malformed> {
    for (index, e) in m.entries.iter().enumerate() {
        for (part, len, size) in [("key", e.key.len(), m.key_size), ("value", e.value.len(), m.value_size)] {
            if len != size as usize {
                return Err(Malformed::Entry { map: m.name.clone(), index, part, len, size });
            }
        }
    }
    if m.indices.is_empty() {
        return Ok(());
    }
    let fits = m.values.len() as u64 == m.indices.len() as u64 * u64::from(m.value_size)
        && m.key_size == 4
        && m.map_type == MAP_ARRAY
        && m.indices.iter().all(|&i| i < m.max_entries);
    if fits {
        Ok(())
    } else {
        Err(Malformed::Packed {
            map: m.name.clone(),
            count: m.indices.len(),
            value_size: m.value_size,
            bytes: m.values.len(),
            slots: m.max_entries,
        })
    }
}

/// The shapes the agent relies on for the maps it writes or reads itself.
fn check_role(m: &v1::BundleMap) -> Result<(), Malformed> {
    let role = |role, needs| Err(Malformed::Role { map: m.name.clone(), role, needs });
    match v1::MapRole::try_from(m.role) {
        Ok(v1::MapRole::Cgroups)
            if m.map_type != MAP_HASH || m.key_size != 8 || m.value_size != 4 || !m.entries.is_empty() =>
        {
            role("cgroups", "an empty hash map of u64 cgroup ids to u32 classes")
        }
        Ok(v1::MapRole::Events) if m.map_type != MAP_RINGBUF || !m.entries.is_empty() || !m.indices.is_empty() => {
            role("events", "an empty ring buffer")
        }
        Ok(v1::MapRole::Counters)
            if m.map_type != MAP_ARRAY
                || m.key_size != 4
                || m.value_size != 8
                || !m.entries.is_empty()
                || !m.indices.is_empty() =>
        {
            role("counters", "an empty array of u64 counters")
        }
        // Shared maps are reused across generations by name: only the one this agent knows.
        Ok(v1::MapRole::Shared)
            if m.name != palisade_contract::map::FLOWS
                || m.map_type != MAP_HASH
                || m.key_size != 8
                || m.value_size != palisade_contract::map::FLOW_STATE_SIZE
                || m.max_entries != palisade_contract::map::FLOWS_MAX
                || !m.entries.is_empty()
                || !m.indices.is_empty() =>
        {
            role("shared", "pal_flows: an empty hash of u64 cookies to connection states, as this agent defines it")
        }
        Ok(_) => Ok(()),
        Err(_) => role("unknown", "a role this agent knows"),
    }
}

#[cfg(test)]
mod tests;
