//! The capture filter language against libpcap itself: for random expressions built from
//! the language's primitives, qualifiers, repetitions and operators — and broken on purpose
//! now and then — our parser accepts exactly what `tcpdump -d` compiles. (The meaning of an
//! accepted expression is held to libpcap over packets once filters are compiled.)
//!
//! `PALISADE_CAPTURE_CASES` sets the number of expressions (default 400),
//! `PALISADE_CAPTURE_SEED` replays a run. tcpdump comes from Debian's package
//! (`scripts/test.sh` installs it when missing); without it the test fails under CI.
#![allow(clippy::print_stderr, reason = "the test reports its seed and figures")]

use std::{collections::BTreeSet, path::Path, process::Command};

use palisade_agent::capture::offline::{Engine, Filter, context, interpret, read_frames};
use palisade_compiler::capture::{DEFAULT_SNAPLEN, Link, Target, compile, compile_for, parse::parse};
use palisade_integration::{
    capture::{
        Rng, empty_pcap, expression, frame, maybe_broken, sll2_frame, tcpdump_available, write_pcap, write_pcap_link,
    },
    cbpf::{parse_ddd, translate},
    kernel_tests_enabled,
};

/// Whether libpcap compiles `text` (`tcpdump -O -d -r EMPTY EXPR`). `-O` turns the optimizer
/// off: with it, tcpdump also fails for expressions it proves match nothing ("expression
/// rejects all packets", e.g. `src 10 and 20`), which parsed fine.
fn libpcap_accepts(file: &Path, text: &str) -> bool {
    let out = Command::new("tcpdump").args(["-O", "-d", "-r"]).arg(file).arg(text).output().expect("tcpdump runs");
    out.status.success() || String::from_utf8_lossy(&out.stderr).contains("expression rejects all packets")
}

#[test]
fn the_parser_accepts_exactly_what_libpcap_compiles() {
    if !tcpdump_available("capture language differential") {
        return;
    }
    let cases: usize = std::env::var("PALISADE_CAPTURE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400);
    let seed: u64 = std::env::var("PALISADE_CAPTURE_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
    });
    eprintln!("capture language differential: {cases} expressions, PALISADE_CAPTURE_SEED={seed}");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = empty_pcap(dir.path());
    assert!(libpcap_accepts(&file, "tcp"), "tcpdump compiles a plain filter against the empty file");
    let mut r = Rng(seed);
    let (mut accepted, mut rejected) = (0, 0);
    for _ in 0..cases {
        let text = expression(&mut r, 0);
        let text = maybe_broken(&mut r, text);
        if text.trim().is_empty() {
            // libpcap takes an empty filter as "everything"; ours refuses it by design
            // (leave the filter out instead).
            continue;
        }
        let ours = parse(&text);
        let theirs = libpcap_accepts(&file, &text);
        assert_eq!(ours.is_ok(), theirs, "seed {seed}: {text:?}: ours {ours:?}, libpcap accepts: {theirs}");
        if let Err(e) = &ours {
            assert!((1..=text.len() + 1).contains(&e.column), "seed {seed}: {text:?}: column {e}");
        }
        if theirs { accepted += 1 } else { rejected += 1 }
    }
    eprintln!("capture language differential: {accepted} accepted and {rejected} rejected by both, 0 mismatches");
    assert!(accepted > cases / 5 && rejected > cases / 10, "the run covered both sides: {accepted} / {rejected}");
}

/// Expressions every run checks: each primitive and qualifier, libpcap's quirks (`vlan`
/// shifting what follows it, loads past the end rejecting the packet, 32-bit index wrap), and
/// the seed's "IPv4 TCP to port N that is not a fragment".
const CORPUS: &[&str] = &[
    "ip and tcp and dst port 22 and ip[6:2] & 0x1fff = 0",
    "ip and tcp dst port 80",
    "tcp port 80",
    "udp port 53 or icmp6",
    "port 80",
    "src port 443",
    "src and dst port 80",
    "portrange 20-80",
    "tcp src portrange 1-1024",
    "sctp port 80",
    "host 10.0.0.1",
    "src host 10.0.0.1 and dst host 192.168.1.20",
    "host 10.1",
    "host 10",
    "net 10.1",
    "net 10.0.0.0/8",
    "src net 192.168 and not dst net 10",
    "net 10.1.0.0 mask 255.255.0.0",
    "ip host 10.0.0.1",
    "arp host 10.0.0.1",
    "rarp host 10.0.0.1",
    "host ::1",
    "ip6 net 2001:db8::/32",
    "net ::/0",
    "host ::ffff:10.0.0.1",
    "src or dst host 2001:db8::5",
    "src and dst net 2001:db8::/32",
    "ether host 00:11:22:33:44:55",
    "ether src 00:11:22:33:44:55 and not ether dst 00:1b:21:0a:0b:0c",
    "ether proto 0x86dd",
    "ether proto 0x9100",
    "ip",
    "ip6",
    "arp",
    "rarp",
    "tcp",
    "udp",
    "icmp",
    "icmp6",
    "sctp",
    "proto 17",
    "ip proto 44",
    "ip6 proto 6",
    "ip proto 300",
    "vlan",
    "vlan 10",
    "vlan and ip",
    "vlan 10 and vlan 20 and tcp",
    "vlan or ip",
    "not vlan and tcp port 80",
    "ip or vlan and ip",
    "vlan and host 10.0.0.1",
    "vlan and ether host 00:11:22:33:44:55",
    "less 60",
    "greater 100",
    "len > 64 and len < 200",
    "ip[0] & 0xf > 5",
    "tcp[tcpflags] & (tcp-syn|tcp-ack) != 0",
    "tcp[13] = 2",
    "icmp[icmptype] = icmp-echo",
    "icmp6[0] = 128",
    "udp[0:2] = 53",
    "ip6[6] = 44",
    "ip[100] = 1 or tcp",
    "not ip[40:4] = 0",
    "ether[0] & 1 = 0 or len > 10",
    "ether[60] = 0",
    "tcp[100:4] = 0 or udp",
    "ip[2:2] / (ip[1] & 0x10) > 2",
    "ip[2:2] % 3 = 1",
    "ip[0] << ip[1] = 0",
    "ip[9] >> (ip[8] & 0x3f) = 0",
    "(-ip[0]) > 100",
    "ip[0] > -100",
    "ip[6:2] * 3 + 1 > ip[2:2] ^ 0xff | 4",
    "ip[0xfffffff2] = 0",
    "ether[0xfffffffe:2] = 0",
    "tcp[0xffffffff] = 1",
    "arp[7] = 2",
    "ip6[40] = 6 and not ip6 proto 6",
    "host 10.0.0.1 or host 192.168.1.20 or host 10.0.0.2 or host 10.1.2.3 or host 172.16.0.1",
    "not (host 10.0.0.9 or host 192.168.1.20 or host 10.0.0.2 or host 10.1.2.3 or host 0.0.0.10 or host 1.2.3.4)",
    "src host 10.0.0.1 or 192.168.1.20 or 10.0.0.2 or 10.1.2.3 or 172.16.0.1 or 10.1.0.5",
    "tcp and (dst host 10.0.0.1 or dst host 10.0.0.2 or dst host 10.1.0.5 or dst host 192.168.7.7)",
    "arp host 10.0.0.1 or arp host 10.0.0.2 or arp host 10.1.2.3 or arp host 192.168.1.20",
    "ip host 9.9.9.9 or ip host 10.0.0.2 or ip host 10.1.2.3 or ip host 192.168.1.20 or udp",
    "vlan and (host 10.0.0.1 or host 10.0.0.2 or host 10.1.2.3 or host 192.168.1.20)",
    "host 10.0.0.1 or host 10.0.0.2 or net 10.1.2.3/32 or host 10.1.0.5 or host ::1 or host 192.168.1.20",
    "port 22 or port 80 or port 443 or port 53 or port 8",
    "not (tcp dst port 80 or 443 or 22 or 1024 or 10)",
    "udp src port 53 or 7 or 20 or 65535 or 8 or tcp",
    "ip6 and (port 80 or port 22 or port 53 or port 443)",
    "net 10.0.0.0/8 or net 192.168.1.0/24 or host 172.16.0.1 or net 10.1.0.0/16 or net 0.0.0.0/32",
    "not (src net 10.0.0.0/30 or src net 192.168.0.0/16 or src host 9.9.9.9 or src net 128.0.0.0/1)",
    "portrange 20-80 or port 443 or portrange 1000-2000 or port 53 or portrange 60000-65535",
];

/// The frames (by index) `tcpdump -r FILE -w OUT EXPR` keeps, with libpcap's optimizer
/// (`optimize`, as operators run it) or without (`-O`). `Ok(None)`: the expression does not
/// compile that way but does the other way (the optimizer folds a division by a constant
/// zero the parser cannot see).
fn libpcap_keeps(file: &Path, out: &Path, text: &str, optimize: bool) -> Result<Option<BTreeSet<u64>>, String> {
    let mut cmd = Command::new("tcpdump");
    if !optimize {
        cmd.arg("-O");
    }
    let run = cmd.arg("-r").arg(file).arg("-w").arg(out).arg(text).output().expect("tcpdump runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    if !run.status.success() {
        if stderr.contains("expression rejects all packets") {
            return Ok(Some(BTreeSet::new()));
        }
        if optimize && libpcap_accepts(file, text) {
            return Ok(None);
        }
        return Err(stderr.into_owned());
    }
    let mut kept = BTreeSet::new();
    read_frames(std::fs::File::open(out).expect("tcpdump's output"), |f| {
        kept.insert(f.timestamp.as_secs());
        Ok(())
    })
    .expect("read tcpdump's output");
    Ok(Some(kept))
}

/// A long `or` of IPv4 hosts or of ports (what becomes a set), sometimes negated or and-ed.
fn set_chain(r: &mut Rng) -> String {
    const HOSTS: &[&str] = &[
        "10.0.0.1",
        "192.168.1.20",
        "10.1.2.3",
        "10.1.0.5",
        "0.0.0.10",
        "10.0.0.2",
        "192.168.7.7",
        "9.9.9.9",
        "1.2.3.4",
    ];
    const PORTS: &[&str] = &["22", "80", "443", "53", "8", "10", "1024", "65535", "20", "7"];
    let dir = r.pick(&["", "", "src ", "dst "]);
    let (prefix, values) = if r.below(2) == 0 {
        (format!("{}{dir}port ", r.pick(&["", "", "tcp ", "udp ", "sctp "])), PORTS)
    } else {
        (format!("{}{dir}host ", r.pick(&["", "", "ip ", "arp "])), HOSTS)
    };
    let n = 4 + r.below(8);
    let members: Vec<String> = (0..n)
        .map(|i| {
            // Now and then a network or a port range in the run.
            if r.below(4) == 0 {
                return if values == PORTS {
                    format!("{dir}portrange {}", r.pick(&["20-80", "1-10", "443-1024", "53-53", "60000-65535"]))
                } else {
                    format!(
                        "{dir}net {}",
                        r.pick(&["10.0.0.0/8", "10.1", "192.168.1.0/24", "10.0.0.0/30", "0.0.0.0/1", "172.16.0.0/12"])
                    )
                };
            }
            format!("{}{}", if i == 0 || r.below(2) == 0 { prefix.as_str() } else { "" }, r.pick(values))
        })
        .collect();
    let chain = members.join(" or ");
    match r.below(4) {
        0 => format!("not ({chain})"),
        1 => format!("{} and ({chain})", r.pick(&["tcp", "vlan", "udp port 53", "ip"])),
        _ => chain,
    }
}

/// The capture bench measures libpcap's optimized program translated to eBPF: it must keep
/// what tcpdump keeps.
fn translated_libpcap_keeps(file: &Path, text: &str, frames: &[(Vec<u8>, u32)], kept: &BTreeSet<u64>) {
    let ddd = Command::new("tcpdump").args(["-ddd", "-r"]).arg(file).arg(text).output().expect("tcpdump -ddd");
    let classic = parse_ddd(&String::from_utf8_lossy(&ddd.stdout)).expect("-ddd output");
    let translated = translate(&classic).expect("translates");
    for (index, (data, wire)) in frames.iter().enumerate() {
        let keep = interpret(&translated, data, &context(*wire)).expect("libpcap's program runs");
        assert_eq!(keep != 0, kept.contains(&(index as u64)), "{text:?}: translated libpcap, frame {index}");
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// One link type's side of the differential: frames, their file, and what the run counted.
struct Side {
    link: Link,
    frames: Vec<(Vec<u8>, u32)>,
    file: std::path::PathBuf,
    checked: usize,
    refused_by_both: usize,
    kept_some: usize,
    interpreted: u64,
    optimizer_differs: usize,
    optimizer_only: usize,
}

impl Side {
    fn new(dir: &Path, link: Link, frames: Vec<(Vec<u8>, u32)>) -> Side {
        let file = dir.join(format!("frames-{}.pcap", link.dlt()));
        write_pcap_link(&file, link.dlt(), &frames);
        Side {
            link,
            frames,
            file,
            checked: 0,
            refused_by_both: 0,
            kept_some: 0,
            interpreted: 0,
            optimizer_differs: 0,
            optimizer_only: 0,
        }
    }

    /// Holds `text` to libpcap over this side's frames, in every engine.
    fn check(&mut self, text: &str, fixed: bool, kernel: bool, out: &Path, seed: u64) {
        let program = match compile_for(text, Target::File, self.link, DEFAULT_SNAPLEN) {
            Ok(p) => p,
            Err(e) => {
                // Refused for this framing (`vlan`, `ether host` on LINUX_SLL2): so is it by
                // libpcap. Other refusals are the language differential's.
                if self.link != Link::Ethernet {
                    assert!(
                        !libpcap_accepts(&self.file, text),
                        "{text:?}: libpcap compiles it for {:?}, we say {e}",
                        self.link
                    );
                    self.refused_by_both += 1;
                }
                assert!(!fixed || self.link != Link::Ethernet, "{text:?} does not compile: {e}");
                return;
            }
        };
        let plain = libpcap_keeps(&self.file, out, text, false)
            .unwrap_or_else(|e| {
                panic!("seed {seed}: we compile {text:?} for {:?} but libpcap does not: {e}", self.link)
            })
            .expect("-O compiles what the parser accepts");
        let Some(optimized) = libpcap_keeps(&self.file, out, text, true)
            .unwrap_or_else(|e| panic!("seed {seed}: we compile {text:?} but optimized libpcap does not: {e}"))
        else {
            self.optimizer_only += 1;
            return;
        };
        // Where libpcap's optimizer changes libpcap's own answer — it drops a load past the
        // end of a short frame when the load's outcome cannot matter — the unoptimized answer
        // (every test in text order) is the one we give; everywhere else both agree with us.
        self.optimizer_differs += plain.symmetric_difference(&optimized).count();
        if fixed {
            translated_libpcap_keeps(&self.file, text, &self.frames, &optimized);
        }
        let mut engines =
            vec![Filter::for_link(program.clone(), Target::File, self.link, Engine::Interpreter).expect("interpreter")];
        if kernel {
            engines.push(
                Filter::for_link(program, Target::File, self.link, Engine::Kernel)
                    .unwrap_or_else(|e| panic!("seed {seed}: the kernel refuses {text:?}: {e}")),
            );
        }
        for (n, engine) in engines.iter().enumerate() {
            for (index, (data, wire)) in self.frames.iter().enumerate() {
                let verdict = engine.run(index as u64, data, *wire).unwrap_or_else(|e| panic!("{text:?}: {e}"));
                if n == 1 && verdict.engine == Engine::Interpreter {
                    self.interpreted += 1;
                }
                let ours = verdict.keep != 0;
                let libpcap = plain.contains(&(index as u64));
                assert_eq!(
                    ours,
                    libpcap,
                    "seed {seed}: {text:?} on {:?} frame {index} ({} of {wire} bytes: {}), {:?} engine: ours {ours}, libpcap {libpcap}",
                    self.link,
                    data.len(),
                    hex(data),
                    verdict.engine,
                );
            }
        }
        self.checked += 1;
        if !plain.is_empty() && plain.len() < self.frames.len() {
            self.kept_some += 1;
        }
    }
}

#[test]
fn compiled_filters_accept_exactly_the_packets_libpcap_accepts() {
    if !tcpdump_available("capture filter differential") {
        return;
    }
    let kernel = kernel_tests_enabled("capture filters in BPF_PROG_TEST_RUN");
    let cases: usize = std::env::var("PALISADE_CAPTURE_FILTER_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let seed: u64 = std::env::var("PALISADE_CAPTURE_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
    });
    let mut r = Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let ethernet = (0..500).map(|_| frame(&mut r)).collect();
    let sll2 = (0..300).map(|_| sll2_frame(&mut r)).collect();
    let mut sides = [Side::new(dir.path(), Link::Ethernet, ethernet), Side::new(dir.path(), Link::LinuxSll2, sll2)];
    let out = dir.path().join("kept.pcap");
    eprintln!(
        "capture filter differential: {} fixed + {cases} random expressions over 500 Ethernet and 300 LINUX_SLL2 frames, \
         PALISADE_CAPTURE_SEED={seed}, kernel engine: {kernel}",
        CORPUS.len()
    );
    // Random expressions that compile for Ethernet (the language differential covers the
    // refusals).
    let mut random = Vec::new();
    for _ in 0..cases * 20 {
        if random.len() == cases {
            break;
        }
        let text = if r.below(8) == 0 { set_chain(&mut r) } else { expression(&mut r, 0) };
        if compile(&text, Target::File, DEFAULT_SNAPLEN).is_ok() {
            random.push(text);
        }
    }
    for (i, text) in CORPUS.iter().map(|s| (*s).to_owned()).chain(random).enumerate() {
        for side in &mut sides {
            side.check(&text, i < CORPUS.len(), kernel, &out, seed);
        }
    }
    for side in &sides {
        eprintln!(
            "capture filter differential, {:?}: {} expressions agree on every frame ({} kept some but not all), {} refused \
             for this framing by both, {} refused only by libpcap's optimizer, {} (expression, frame) pairs where libpcap's \
             optimizer changes its own answer, {} frame runs outside BPF_PROG_TEST_RUN's sizes",
            side.link,
            side.checked,
            side.kept_some,
            side.refused_by_both,
            side.optimizer_only,
            side.optimizer_differs,
            side.interpreted,
        );
        assert!(
            side.kept_some > side.checked / 3,
            "the frames exercise the filters: {} of {}",
            side.kept_some,
            side.checked
        );
    }
    assert!(sides[0].checked + sides[0].optimizer_only >= CORPUS.len() + cases, "enough random expressions compiled");
    assert!(sides[1].checked > cases / 2 && sides[1].refused_by_both > 0, "LINUX_SLL2 covered both ways");
}

/// Runs `capture-worker replay` (its own network namespace, a veth pair) and returns the
/// frames it captured.
fn live_replay(dir: &Path, expr: &str, frames: &[(Vec<u8>, u32)]) -> Vec<Vec<u8>> {
    worker_replay(dir, "replay", expr, frames)
}

/// `capture-worker MODE EXPR` over `frames`: the frames captured.
fn worker_replay(dir: &Path, mode: &str, expr: &str, frames: &[(Vec<u8>, u32)]) -> Vec<Vec<u8>> {
    let input = dir.join("live-in.pcap");
    let output = dir.join("live-out.pcap");
    write_pcap(&input, frames);
    let out = Command::new(env!("CARGO_BIN_EXE_capture-worker"))
        .args([mode, expr])
        .arg(&input)
        .arg(&output)
        .output()
        .expect("capture-worker runs");
    assert!(out.status.success(), "{expr:?}: {}", String::from_utf8_lossy(&out.stderr));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("dropped 0"), "{expr:?}: {report}");
    let mut captured = Vec::new();
    read_frames(std::fs::File::open(&output).expect("the worker's output"), |f| {
        captured.push(f.data.clone());
        Ok(())
    })
    .expect("read the capture");
    captured
}

/// Whole generated frames whose outer type is not a tag the kernel strips on receive.
fn live_frames(seed: u64, n: usize) -> Vec<(Vec<u8>, u32)> {
    let mut r = Rng(seed);
    std::iter::repeat_with(|| frame(&mut r))
        .filter(|(data, wire)| {
            data.len() as u32 == *wire
                && data.len() >= 14
                && !matches!(u16::from_be_bytes([data[12], data[13]]), 0x8100 | 0x88a8)
        })
        .take(n)
        .collect()
}

/// Live capture on `any`: a `SOCK_DGRAM` socket on every interface of a namespace, the filter
/// compiled for `LINUX_SLL2` sockets (protocol from the skb, loads from the network header).
/// What it keeps is exactly what the file filter keeps of everything `any` sees (each
/// injected frame leaving one veth end and arriving at the other), header and all.
#[test]
fn live_capture_on_any_keeps_exactly_what_the_file_filter_keeps_of_the_cooked_frames() {
    if !kernel_tests_enabled("live capture on any") {
        return;
    }
    let frames = live_frames(0x5112, 300);
    let dir = tempfile::tempdir().expect("tempdir");
    let all = worker_replay(dir.path(), "any", "", &frames);
    assert_eq!(all.len(), 2 * frames.len(), "every frame leaving one end and arriving at the other");
    let (mut checked, mut refused, mut partial) = (0, 0, 0);
    for expr in CORPUS.iter().copied().step_by(2) {
        if let Err(e) = compile_for(expr, Target::Live, Link::LinuxSll2, DEFAULT_SNAPLEN) {
            // `vlan`, `ether host` (refused by libpcap on SLL2) and link-layer accessors.
            let file = compile_for(expr, Target::File, Link::LinuxSll2, DEFAULT_SNAPLEN);
            assert!(file.is_err() || expr.contains("ether["), "{expr:?}: {e}");
            refused += 1;
            continue;
        }
        let file = Filter::for_link(
            compile_for(expr, Target::File, Link::LinuxSll2, DEFAULT_SNAPLEN).expect("compiles for files"),
            Target::File,
            Link::LinuxSll2,
            Engine::Interpreter,
        )
        .expect("filter");
        let mut expected: Vec<Vec<u8>> = all
            .iter()
            .enumerate()
            .filter(|(i, f)| file.run(*i as u64, f, f.len() as u32).expect("runs").keep != 0)
            .map(|(_, f)| f.clone())
            .collect();
        let mut captured = worker_replay(dir.path(), "any", expr, &frames);
        expected.sort();
        captured.sort();
        assert_eq!(captured.len(), expected.len(), "{expr:?}: frames captured on any");
        assert!(captured == expected, "{expr:?}: the frames captured on any are the ones the file filter keeps");
        checked += 1;
        partial += usize::from(!captured.is_empty() && captured.len() < all.len());
    }
    assert!(checked > 20 && refused > 0, "{checked} checked, {refused} refused");
    assert!(partial > checked / 2, "most expressions keep some frames and not others: {partial} of {checked}");
    eprintln!("live capture on any: {checked} expressions over {} cooked frames agree with the file filter", all.len());
}

/// Live capture: our filter compiled for sockets, attached to an `AF_PACKET` ring on a veth,
/// keeps exactly the injected frames the file filter keeps (held to libpcap above), and a
/// VLAN tag the kernel strips on receive is read from the skb and put back in the output.
#[test]
fn live_capture_keeps_exactly_what_the_file_filter_keeps() {
    if !kernel_tests_enabled("live capture on a veth pair") {
        return;
    }
    // (A stripped tag is the VLAN case below.)
    let frames = live_frames(0x11fe, 300);
    let dir = tempfile::tempdir().expect("tempdir");
    let exprs: Vec<&str> = CORPUS.iter().copied().filter(|e| !e.contains("vlan")).step_by(3).collect();
    for expr in &exprs {
        let file = Filter::new(
            compile(expr, Target::File, DEFAULT_SNAPLEN).expect("compiles"),
            Target::File,
            Engine::Interpreter,
        )
        .expect("filter");
        let mut expected: Vec<Vec<u8>> = frames
            .iter()
            .enumerate()
            .filter(|(i, (data, wire))| file.run(*i as u64, data, *wire).expect("runs").keep != 0)
            .map(|(_, (data, _))| data.clone())
            .collect();
        let mut captured = live_replay(dir.path(), expr, &frames);
        expected.sort();
        captured.sort();
        assert_eq!(captured.len(), expected.len(), "{expr:?}: frames captured");
        assert!(captured == expected, "{expr:?}: the captured frames are the ones the file filter keeps");
    }
    // VLAN: tagged frames of VLANs 10 and 20 and untagged ones; `vlan 10 and tcp` keeps the
    // first, tag and all.
    let tcp = |vlan: Option<u16>| {
        let mut f = vec![0, 0x11, 0x22, 0x33, 0x44, 0x55, 2, 0, 0, 0, 0, 1];
        if let Some(id) = vlan {
            f.extend([0x81, 0x00]);
            f.extend((0x2000 | id).to_be_bytes());
        }
        f.extend([0x08, 0x00, 0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend([0x04, 0xd2, 0, 80, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02, 0, 0, 0, 0, 0, 0]);
        let len = f.len() as u32;
        (f, len)
    };
    let tagged: Vec<(Vec<u8>, u32)> = (0..30).map(|i| tcp([Some(10), Some(20), None][i % 3])).collect();
    let captured = live_replay(dir.path(), "vlan 10 and tcp", &tagged);
    assert_eq!(captured.len(), 10, "the VLAN 10 frames");
    assert!(captured.iter().all(|f| *f == tagged[0].0), "written with their tag back in place");
    // Loopback (in a namespace of its own): each datagram once, though it passes lo twice.
    for (expr, kept, to53) in [("udp dst port 53", 500, 500), ("not udp port 53", 500, 0), ("udp", 1000, 500)] {
        let out = Command::new(env!("CARGO_BIN_EXE_capture-worker"))
            .args(["loopback", expr, "500"])
            .output()
            .expect("capture-worker runs");
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{expr:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(report.trim(), format!("kept {kept} to-53 {to53} dropped 0"), "{expr:?} on lo");
    }
    eprintln!(
        "live capture: {} expressions over {} injected frames agree with the file filter; VLAN tags restored; \
         loopback counts exact",
        exprs.len(),
        frames.len()
    );
}
