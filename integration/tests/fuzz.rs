//! Fuzzing, bounded in time for CI: the policy document parser and validator, the agent's
//! bundle decoder and verifier, and its event record decoder get random and mutated inputs.
//! None may panic, and none may allocate more than [`ALLOCATION_BOUND`] for one input (a
//! counting allocator measures every input). Each target prints how many inputs it ran.
//!
//! `PALISADE_FUZZ_SECONDS` sets each target's time budget (default 10); the seed is printed
//! and `PALISADE_FUZZ_SEED` replays it.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    panic::AssertUnwindSafe,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use palisade_compiler::{compile, policy::model::PolicySet, program::KernelOffsets};
use palisade_contract::record::DecisionRecord;
use palisade_proto::{document, v1};
use proptest::{
    collection::vec,
    prelude::any,
    strategy::{Strategy, ValueTree as _},
    test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
};
use prost::Message as _;

/// Most one input may make the code under test allocate (beyond what was live before it).
const ALLOCATION_BOUND: usize = 64 << 20;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(size: usize) {
    let now = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters move.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is the system allocator's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

/// Puts a panic hook back when dropped.
struct RestoreHook(Option<PanicHook>);

impl Drop for RestoreHook {
    fn drop(&mut self) {
        if let Some(hook) = self.0.take() {
            std::panic::set_hook(hook);
        }
    }
}

/// Runs `target` on inputs from `inputs` for the time budget; fails on a panic or an input
/// that allocates beyond the bound, naming the input. Returns how many inputs ran.
fn fuzz<T: std::fmt::Debug>(name: &str, inputs: impl Strategy<Value = T>, target: impl FnMut(&T)) -> u64 {
    let seconds = std::env::var("PALISADE_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    fuzz_for(name, seconds, inputs, target)
}

/// The start of an input's `Debug` form, to name it in a failure.
fn shown(input: &impl std::fmt::Debug) -> String {
    let text = format!("{input:?}");
    if text.len() <= 2_000 {
        text
    } else {
        format!("{}… ({} characters)", &text[..text.floor_char_boundary(2_000)], text.len())
    }
}

fn fuzz_for<T: std::fmt::Debug>(
    name: &str,
    seconds: u64,
    inputs: impl Strategy<Value = T>,
    mut target: impl FnMut(&T),
) -> u64 {
    // The counters and the panic hook belong to the process: one target at a time (nextest
    // runs each test in a process of its own; `cargo test` runs them as threads of one).
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let seed: u64 = std::env::var("PALISADE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand_seed);
    let mut bytes = [0; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let (deadline, mut runs, mut peak) = (Instant::now() + Duration::from_secs(seconds), 0_u64, 0);
    // Panics the code under test catches itself must not be printed (and symbolised, which
    // allocates far more than the code did); one that escapes is reported below. The hook
    // comes back however this function ends.
    let restore = RestoreHook(Some(std::panic::take_hook()));
    std::panic::set_hook(Box::new(|_| {}));
    let mut failure = None;
    while Instant::now() < deadline {
        let input = inputs.new_tree(&mut runner).expect("generate").current();
        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| target(&input)));
        let used = PEAK.load(Ordering::Relaxed).saturating_sub(before);
        if outcome.is_err() {
            failure = Some(format!("{name}: panicked on input {} (PALISADE_FUZZ_SEED={seed})", shown(&input)));
        } else if used > ALLOCATION_BOUND {
            failure = Some(format!(
                "{name}: one input allocated {used} bytes: {} (PALISADE_FUZZ_SEED={seed})",
                shown(&input)
            ));
        }
        if failure.is_some() {
            break;
        }
        peak = peak.max(used);
        runs += 1;
    }
    drop(restore);
    if let Some(failure) = failure {
        panic!("{failure}");
    }
    eprintln!(
        "fuzz {name}: {runs} inputs in {seconds} s, largest allocation for one input {peak} bytes, PALISADE_FUZZ_SEED={seed}"
    );
    runs
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
}

/// Byte edits: (kind, position, byte); kind 0 replaces, 1 inserts, 2 deletes, 3 inserts a
/// run of the byte (up to 64).
fn edits() -> impl Strategy<Value = Vec<(u8, usize, u8)>> {
    vec((0_u8..4, any::<usize>(), any::<u8>()), 1..12)
}

fn mutate(seed: &[u8], edits: &[(u8, usize, u8)], interesting: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for &(kind, at, byte) in edits {
        // Half the bytes come from the format's own punctuation.
        let byte = if byte & 1 == 0 && !interesting.is_empty() {
            interesting[usize::from(byte >> 1) % interesting.len()]
        } else {
            byte
        };
        let at = if out.is_empty() { 0 } else { at % (out.len() + 1) };
        match kind {
            0 if at < out.len() => out[at] = byte,
            2 if at < out.len() => {
                out.remove(at);
            }
            3 => out.splice(at..at, std::iter::repeat_n(byte, usize::from(byte % 64) + 1)).for_each(drop),
            _ => out.insert(at, byte),
        }
    }
    out
}

const DOCUMENTS: &[&str] = &[
    include_str!("../../examples/deny-demo-port.yaml"),
    include_str!("../../examples/observe-demo-connections.yaml"),
    "name: exec-guard\nworkload:\n  cgroup: /app\n  uid: 1000\nnode_selector:\n  match_labels: {zone: a}\nexec:\n  rules:\n    - id: no-net-tools\n      action: deny\n      paths: [/usr/bin/curl, /usr/bin/wget]\n    - {id: watch-python, action: audit, paths: [\"/usr/bin/python*\"]}\n",
    "name: files-guard\nmode: audit\nworkload: {cgroup: /app}\nfiles:\n  default: deny\n  rules:\n    - id: read-system\n      action: allow\n      access: [read]\n      paths: [/usr/, /etc/]\n---\nname: bind\nnetwork:\n  bind:\n    default: deny\n    rules:\n      - {id: dns, action: allow, cidrs: [0.0.0.0/0, \"::/0\"], ports: [53, \"8000-8099\"], protocols: [udp, tcp]}\n",
    "{\"name\": \"json\", \"network\": {\"connect\": {\"rules\": [{\"id\": \"x\", \"action\": \"deny\", \"ports\": [1]}]}}}",
];
const YAML_PUNCTUATION: &[u8] = b":-[]{},&*!|>'\"#\n %@`?\\0.~\t/";

/// Parses, converts and validates like `ApplyPolicy` with a document.
fn apply_document(text: &str) {
    for doc in document::parse_all(text).into_iter().flatten() {
        let _ = palisade_server::validate::policy(&doc.to_proto());
    }
}

#[test]
fn fuzz_the_policy_document_parser_and_validator() {
    let mutated = (0..DOCUMENTS.len(), edits()).prop_map(|(i, e)| {
        String::from_utf8_lossy(&mutate(DOCUMENTS[i].as_bytes(), &e, YAML_PUNCTUATION)).into_owned()
    });
    let random = "[ -~\n\t]{0,400}";
    let runs =
        fuzz("documents", proptest::prop_oneof![3 => mutated, 1 => random], |text: &String| apply_document(text));
    assert!(runs > 1_000, "only {runs} documents in the time budget");
}

/// Compiled bundles to start from.
fn bundles() -> Vec<Vec<u8>> {
    DOCUMENTS
        .iter()
        .map(|text| {
            let policies: Vec<v1::Policy> =
                document::parse_all(text).into_iter().map(|d| d.expect("seed parses").to_proto()).collect();
            let set = PolicySet::new(policies.iter().map(|p| (p, 1)), Vec::new()).expect("model");
            compile(&set, KernelOffsets::LINUX_6_12).expect("compiles").bytes
        })
        .collect()
}

/// Decodes and verifies like the agent does with a bundle from the server (no key pinned,
/// so the content is reached), and decodes a record against what verified.
fn verify_bundle(content: &[u8]) -> &'static str {
    let bundle = v1::Bundle {
        generation: 1,
        digest: palisade_proto::sha256_hex(content),
        content: content.to_vec().into(),
        node: "n".into(),
        ..Default::default()
    };
    match palisade_agent::loader::verify(&bundle, None, Some("n")) {
        Ok(content) => {
            let record = DecisionRecord { rule: 1, ..DecisionRecord::default() }.encode();
            let _ = palisade_agent::events::decode(&record, &content, &bundle.digest, 0);
            "verified"
        }
        Err(palisade_agent::loader::LoadError::Decode(_)) => "protobuf refused",
        Err(palisade_agent::loader::LoadError::Format { .. }) => "format refused",
        Err(palisade_agent::loader::LoadError::Malformed(palisade_agent::loader::Malformed::Elf(_))) => "ELF refused",
        Err(palisade_agent::loader::LoadError::Malformed(palisade_agent::loader::Malformed::ElfPanic(_))) => {
            "ELF parser panicked (caught)"
        }
        Err(palisade_agent::loader::LoadError::Malformed(_)) => "content refused",
        Err(_) => "other",
    }
}

#[test]
fn fuzz_the_agents_bundle_decoder_and_verifier() {
    let seeds = bundles();
    let n = seeds.len();
    // Protobuf and ELF punctuation: varint continuation, tags of the content's fields, ELF
    // magic and section types.
    let interesting: &[u8] =
        &[0x80, 0xff, 0x7f, 0x00, 0x01, 0x0a, 0x12, 0x1a, 0x22, 0x45, 0x4c, 0x46, 0x02, 0x03, 0x08];
    // Edits of the encoded content mostly break its protobuf framing; edits of the ELF alone,
    // re-encoded, reach the ELF parser and the consistency checks.
    let elf_mutated = {
        let seeds = seeds.clone();
        (0..n, edits()).prop_map(move |(i, e)| {
            let mut content = v1::BundleContent::decode(seeds[i].as_slice()).expect("seed decodes");
            content.elf = mutate(&content.elf, &e, interesting);
            content.encode_to_vec()
        })
    };
    let mutated = (0..n, edits()).prop_map(move |(i, e)| mutate(&seeds[i], &e, interesting));
    let random = vec(any::<u8>(), 0..512);
    let mut outcomes = std::collections::BTreeMap::<&str, u64>::new();
    let runs =
        fuzz("bundles", proptest::prop_oneof![3 => elf_mutated, 2 => mutated, 1 => random], |content: &Vec<u8>| {
            *outcomes.entry(verify_bundle(content)).or_default() += 1;
        });
    eprintln!("fuzz bundles: outcomes {outcomes:?}");
    assert!(runs > 200, "only {runs} bundles in the time budget");
    for depth in ["ELF refused", "content refused", "verified"] {
        assert!(outcomes.get(depth).copied().unwrap_or(0) > 0, "no mutated bundle reached {depth:?}: {outcomes:?}");
    }
    // The whole encoded Bundle message from the wire, too.
    let runs = fuzz("bundle messages", vec(any::<u8>(), 0..256), |bytes: &Vec<u8>| {
        if let Ok(bundle) = v1::Bundle::decode(bytes.as_slice()) {
            let _ = palisade_agent::loader::verify(&bundle, None, None);
        }
    });
    assert!(runs > 1_000, "only {runs} messages in the time budget");
}

#[test]
fn fuzz_the_agents_event_record_decoder() {
    let seed = &bundles()[0];
    let bundle =
        v1::Bundle { digest: palisade_proto::sha256_hex(seed), content: seed.clone().into(), ..Default::default() };
    let content = palisade_agent::loader::verify(&bundle, None, None).expect("seed verifies");
    let records: Vec<Vec<u8>> = [1_u32, 9, 17, 0, 99]
        .iter()
        .map(|&hook| DecisionRecord { rule: 1, hook, family: 10, ..DecisionRecord::default() }.encode())
        .collect();
    let n = records.len();
    let mutated = (0..n, edits()).prop_map(move |(i, e)| mutate(&records[i], &e, &[0, 1, 2, 10, 0xff]));
    let random = vec(any::<u8>(), 0..600);
    let offsets = proptest::prop_oneof![proptest::strategy::Just(0_i128), -(1_i128 << 80)..(1_i128 << 80)];
    let runs = fuzz(
        "records",
        (proptest::prop_oneof![3 => mutated, 1 => random], offsets),
        |(record, offset): &(Vec<u8>, i128)| {
            let _ = palisade_agent::events::decode(record, &content, &bundle.digest, *offset);
        },
    );
    assert!(runs > 10_000, "only {runs} records in the time budget");
}

#[test]
#[should_panic(expected = "panicked on input")]
fn the_fuzzer_fails_on_a_panic() {
    fuzz_for("self-check", 1, 0_u8..4, |n: &u8| assert_ne!(*n, 3, "a bug"));
}

#[test]
#[should_panic(expected = "allocated")]
fn the_fuzzer_fails_on_an_allocation_beyond_the_bound() {
    fuzz_for("self-check", 1, 0_u8..4, |n: &u8| {
        let size = if *n == 3 { ALLOCATION_BOUND + 1 } else { 16 };
        std::hint::black_box(vec![1_u8; size]);
    });
}
