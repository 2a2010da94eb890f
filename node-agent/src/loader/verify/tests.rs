use ed25519_dalek::{Signer as _, SigningKey};
use palisade_compiler::{compile, policy::model::PolicySet, program::KernelOffsets};
use palisade_proto::document;
use prost::Message as _;

use super::*;

/// A map-only content whose ELF defines `maps`.
fn content(maps: Vec<v1::BundleMap>, format: u32) -> v1::BundleContent {
    let elf = palisade_compiler::bpf::elf::write(&[], &palisade_compiler::bundle::map_defs(&maps)).expect("elf");
    v1::BundleContent { format, elf, maps, ..Default::default() }
}

fn signed(content: &v1::BundleContent, key: &SigningKey) -> v1::Bundle {
    let content = content.encode_to_vec();
    let mut bundle = v1::Bundle {
        generation: 1,
        digest: palisade_proto::sha256_hex(&content),
        content: content.into(),
        node: "node-a".into(),
        issued_at: Some(prost_types::Timestamp { seconds: 1_800_000_000, nanos: 0 }),
        ..Default::default()
    };
    bundle.signature = key.sign(&palisade_proto::envelope(&bundle)).to_bytes().to_vec();
    bundle
}

fn unsigned(content: &v1::BundleContent) -> v1::Bundle {
    let content = content.encode_to_vec();
    v1::Bundle {
        generation: 1,
        digest: palisade_proto::sha256_hex(&content),
        content: content.into(),
        ..Default::default()
    }
}

#[test]
fn verify_accepts_only_bundles_signed_by_the_pinned_key() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let other = SigningKey::from_bytes(&[8; 32]);
    let pinned = Some(key.verifying_key());
    let bundle = signed(&content(Vec::new(), 1), &key);
    assert!(verify(&bundle, pinned.as_ref(), Some("node-a")).is_ok());
    assert!(matches!(verify(&bundle, Some(&other.verifying_key()), None), Err(LoadError::Signature)));
    let mut tampered = bundle.clone();
    tampered.content = [&tampered.content[..], &[0]].concat().into();
    tampered.digest = palisade_proto::sha256_hex(&tampered.content);
    assert!(matches!(verify(&tampered, pinned.as_ref(), None), Err(LoadError::Signature)));
    let unsigned = v1::Bundle { signature: Vec::new(), ..bundle.clone() };
    assert!(matches!(verify(&unsigned, pinned.as_ref(), None), Err(LoadError::Signature)));
    assert!(verify(&unsigned, None, None).is_ok(), "no pinned key: only the digest is checked");
    let wrong_digest = v1::Bundle { digest: "00".into(), ..bundle.clone() };
    assert!(matches!(verify(&wrong_digest, pinned.as_ref(), None), Err(LoadError::Signature)), "the digest is signed");
    let wrong_digest = v1::Bundle { digest: "00".into(), ..unsigned };
    assert!(matches!(verify(&wrong_digest, None, None), Err(LoadError::Digest { .. })));
}

#[test]
fn the_signature_binds_the_node_and_the_generation() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let pinned = Some(key.verifying_key());
    let bundle = signed(&content(Vec::new(), 1), &key);
    // A bundle signed for node-a, offered to node-b.
    let err = verify(&bundle, pinned.as_ref(), Some("node-b")).expect_err("another node's bundle");
    assert!(matches!(&err, LoadError::WrongNode { bundle, node } if bundle == "node-a" && node == "node-b"), "{err}");
    // Relabelled for node-b, or renumbered: the signature no longer verifies.
    let relabelled = v1::Bundle { node: "node-b".into(), ..bundle.clone() };
    assert!(matches!(verify(&relabelled, pinned.as_ref(), Some("node-b")), Err(LoadError::Signature)));
    let renumbered = v1::Bundle { generation: 99, ..bundle.clone() };
    assert!(matches!(verify(&renumbered, pinned.as_ref(), Some("node-a")), Err(LoadError::Signature)));
    let reissued = v1::Bundle { issued_at: None, ..bundle };
    assert!(matches!(verify(&reissued, pinned.as_ref(), Some("node-a")), Err(LoadError::Signature)));
}

fn array(indices: Vec<u32>, values: Vec<u8>) -> v1::BundleMap {
    v1::BundleMap {
        name: "pal_ports".into(),
        role: v1::MapRole::Static as i32,
        map_type: 2,
        key_size: 4,
        value_size: 8,
        max_entries: 4,
        indices,
        values,
        ..Default::default()
    }
}

#[test]
fn verify_rejects_unknown_formats_and_packed_contents_that_do_not_fit() {
    assert!(verify(&unsigned(&content(vec![array(vec![0, 3], vec![1; 16])], 2)), None, None).is_ok());
    assert!(verify(&unsigned(&content(Vec::new(), 1)), None, None).is_ok(), "format 1 is still read");
    let bad = [
        (content(Vec::new(), 3), "bundle format 3"),
        (content(vec![array(vec![0, 3], vec![1; 15])], 2), "do not fit"),
        (content(vec![array(vec![0, 4], vec![1; 16])], 2), "do not fit"),
        (content(vec![v1::BundleMap { key_size: 8, ..array(vec![0], vec![1; 8]) }], 2), "do not fit"),
    ];
    for (content, reason) in bad {
        let err = verify(&unsigned(&content), None, None).expect_err("rejected");
        assert!(chain(&err).contains(reason), "{err:?}");
    }
}

fn chain(e: &LoadError) -> String {
    crate::error_chain(e)
}

/// A real bundle: every hook, every map role.
fn compiled() -> v1::BundleContent {
    let yaml = "\
name: web
workload: {cgroup: /web}
network:
  connect:
    rules:
      - {id: block, action: deny, cidrs: [10.0.0.0/8], ports: [9999]}
files:
  rules:
    - {id: ro-etc, action: deny, access: [write], paths: [/etc/]}
";
    let docs: Vec<v1::Policy> = document::parse_all(yaml).into_iter().map(|d| d.expect("parses").to_proto()).collect();
    let set = PolicySet::new(docs.iter().zip([1]), Vec::new()).expect("model");
    let compiled = compile(&set, KernelOffsets::LINUX_6_12).expect("compiles");
    v1::BundleContent::decode(compiled.bytes.as_slice()).expect("decodes")
}

fn map<'a>(c: &'a mut v1::BundleContent, name: &str) -> &'a mut v1::BundleMap {
    c.maps.iter_mut().find(|m| m.name == name).expect("map")
}

#[test]
fn verify_checks_every_map_and_program_against_the_elf_before_any_bpf_call() {
    type Edit = fn(&mut v1::BundleContent);
    let good = compiled();
    assert!(verify(&unsigned(&good), None, None).is_ok(), "the compiler's bundles verify");
    let cases: [(&str, Edit, &str); 14] = [
        ("value size", |c| map(c, "pal_values").value_size += 4, "the bundle says value_size"),
        ("key size", |c| map(c, "pal_workloads").key_size = 4, "the bundle says key_size"),
        ("capacity", |c| map(c, "pal_nodes").max_entries *= 2, "the bundle says max_entries"),
        ("map type", |c| map(c, "pal_workloads").map_type = 2, "the bundle says map_type"),
        (
            "short key",
            |c| {
                let m = c.maps.iter_mut().find(|m| !m.entries.is_empty()).expect("a map with entries");
                m.entries[0].key.pop();
            },
            "-byte key",
        ),
        (
            "long value",
            |c| {
                let m = c.maps.iter_mut().find(|m| !m.entries.is_empty()).expect("a map with entries");
                m.entries[0].value.push(0);
            },
            "-byte value",
        ),
        ("map not in the ELF", |c| map(c, "pal_values").name = "pal_other".into(), "map pal_other is not in the ELF"),
        ("pin path", |c| c.programs[0].name = "../x".into(), "program name \"../x\""),
        ("map pin path", |c| map(c, "pal_values").name = "a/b".into(), "map name \"a/b\""),
        ("program not in the ELF", |c| c.programs[0].name = "pal_nothing".into(), "program pal_nothing is not"),
        ("section", |c| c.programs[0].section = "lsm/file_open".into(), "section \"lsm/file_open\""),
        ("unknown hook", |c| c.programs[0].hook = 99, "hook 99 is not in this agent's hook table"),
        ("cgroups map shape", |c| map(c, "pal_cgroups").value_size = 8, "the bundle says value_size"),
        (
            "cgroup map name",
            |c| {
                c.cgroups.push(v1::BundleCgroup {
                    path: "/x".into(),
                    map: "pal_values".into(),
                    class: 1,
                    ..Default::default()
                });
            },
            "not a cgroups map",
        ),
    ];
    for (what, edit, reason) in cases {
        let mut bad = good.clone();
        edit(&mut bad);
        let err = verify(&unsigned(&bad), None, None).expect_err(what);
        assert!(matches!(err, LoadError::Malformed(_)), "{what}: {err:?}");
        assert!(chain(&err).contains(reason), "{what}: {}", chain(&err));
    }
    // Two programs for one hook, both in the ELF.
    let mut twice = good.clone();
    let first = twice.programs[0].clone();
    twice.programs[1].hook = first.hook;
    twice.programs[1].section = first.section;
    let err = verify(&unsigned(&twice), None, None).expect_err("two programs");
    assert!(chain(&err).contains("hook pal_connect4 has two programs"), "{}", chain(&err));
}

/// Sets every sized symbol of an ELF64 (little-endian) object to `size` bytes.
fn oversize_symbols(elf: &mut [u8], size: u64) {
    let u16_at = |b: &[u8], at: usize| usize::from(u16::from_le_bytes([b[at], b[at + 1]]));
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes")) as usize;
    let (shoff, shentsize, shnum) = (u64_at(elf, 0x28), u16_at(elf, 0x3a), u16_at(elf, 0x3c));
    for i in 0..shnum {
        let header = shoff + i * shentsize;
        if u32::from_le_bytes(elf[header + 4..header + 8].try_into().expect("4 bytes")) != 2 {
            continue; // not SHT_SYMTAB
        }
        let (offset, len) = (u64_at(elf, header + 0x18), u64_at(elf, header + 0x20));
        for symbol in (offset..offset + len).step_by(24) {
            if u64_at(elf, symbol + 16) != 0 {
                elf[symbol + 16..symbol + 24].copy_from_slice(&size.to_le_bytes());
            }
        }
    }
}

#[test]
fn an_elf_whose_symbols_overrun_their_sections_is_refused_not_a_panic() {
    // aya-obj 0.3 slices section data by symbol size unchecked; the fuzzer found it.
    let mut bad = content(vec![array(vec![0], vec![1; 8])], 2);
    oversize_symbols(&mut bad.elf, 1 << 32);
    let err = verify(&unsigned(&bad), None, None).expect_err("refused");
    assert!(matches!(err, LoadError::Malformed(Malformed::ElfPanic(_))), "{err:?}");
}

#[test]
fn a_content_signed_bundle_an_older_agent_recorded_is_adopted_but_never_accepted_from_the_server() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let pinned = Some(key.verifying_key());
    let mut legacy = unsigned(&content(Vec::new(), 1));
    legacy.signature = key.sign(&legacy.content).to_bytes().to_vec();
    assert!(
        matches!(verify(&legacy, pinned.as_ref(), Some("node-a")), Err(LoadError::Signature)),
        "not from the server"
    );
    assert!(verify_recorded(&legacy, pinned.as_ref(), Some("node-a")).is_ok(), "adopted from the state directory");
    let forged = v1::Bundle {
        signature: SigningKey::from_bytes(&[8; 32]).sign(&legacy.content).to_bytes().to_vec(),
        ..legacy.clone()
    };
    assert!(matches!(verify_recorded(&forged, pinned.as_ref(), Some("node-a")), Err(LoadError::Signature)));
    // An envelope bundle for another node gets no such leniency.
    let other = signed(&content(Vec::new(), 1), &key);
    assert!(matches!(verify_recorded(&other, pinned.as_ref(), Some("node-b")), Err(LoadError::WrongNode { .. })));
}
