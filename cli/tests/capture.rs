//! `palisade capture filter`, the real binary over a generated capture file: what it writes
//! is read back by `tcpdump -r`, with the count tcpdump itself keeps; both engines agree;
//! bad input is refused with the column (or the flag) and writes nothing.

use std::process::Command;

use palisade_integration::capture::{Rng, frame, sll2_frame, tcpdump_available, write_pcap, write_pcap_link};

/// How many frames `tcpdump -r FILE -w - EXPR` keeps (records of its pcap output, not lines
/// of its text: some frames print on several).
fn tcpdump_count(file: &std::path::Path, expr: &str) -> usize {
    let out =
        Command::new("tcpdump").args(["-r"]).arg(file).args(["-w", "-"]).arg(expr).output().expect("tcpdump runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pcap = out.stdout;
    let (mut at, mut records) = (24, 0);
    while at + 16 <= pcap.len() {
        let caplen = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().expect("4 bytes")) as usize;
        at += 16 + caplen;
        records += 1;
    }
    assert_eq!(at, pcap.len(), "whole records");
    records
}

#[test]
fn capture_filter_writes_what_tcpdump_reads_back_with_its_count() {
    if !tcpdump_available("capture filter CLI") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.pcap");
    let mut r = Rng(0x5eed);
    let frames: Vec<_> = (0..400).map(|_| frame(&mut r)).collect();
    write_pcap(&input, &frames);
    let expr = "tcp or arp or vlan and udp";
    let expected = tcpdump_count(&input, expr);
    assert!(expected > 10 && expected < 390, "the corpus splits: {expected}");

    let mut engines = vec!["interpreter"];
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        engines.push("kernel");
    } else {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
    }
    for engine in engines {
        let output = dir.path().join(format!("{engine}.pcap"));
        let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["capture", "filter", expr, "--engine", engine, "-r"])
            .arg(&input)
            .arg("-w")
            .arg(&output)
            .output()
            .expect("palisade runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{engine}: {stderr}");
        assert!(stderr.contains(&format!("{expected} of 400 frames accepted")), "{engine}: {stderr}");
        assert_eq!(tcpdump_count(&output, ""), expected, "{engine}: tcpdump reads back what we wrote");
        assert_eq!(tcpdump_count(&output, expr), expected, "{engine}: and every frame matches");

        let count = Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["capture", "filter", "--count", "--engine", engine, "-r"])
            .arg(&input)
            .args(["tcp", "or", "arp", "or", "vlan", "and", "udp"])
            .output()
            .expect("palisade runs");
        assert_eq!(String::from_utf8_lossy(&count.stdout).trim(), expected.to_string(), "{engine}: --count");
    }

    // A `tcpdump -i any` file (LINUX_SLL2): the filter is compiled for its framing, the
    // output keeps it, and what SLL2 has no fields for is refused.
    let any = dir.path().join("any.pcap");
    let frames: Vec<_> = (0..300).map(|_| sll2_frame(&mut r)).collect();
    write_pcap_link(&any, 276, &frames);
    let sll2_out = dir.path().join("any-out.pcap");
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["capture", "filter", "ip6 or udp", "-r"])
        .arg(&any)
        .arg("-w")
        .arg(&sll2_out)
        .output()
        .expect("palisade runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = tcpdump_count(&any, "ip6 or udp");
    assert!(expected > 0, "the SLL2 frames split");
    assert_eq!(tcpdump_count(&sll2_out, "ip6 or udp"), expected, "SLL2 frames written as SLL2");
    let vlan = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["capture", "filter", "tcp and vlan", "-r"])
        .arg(&any)
        .output()
        .expect("palisade runs");
    let stderr = String::from_utf8_lossy(&vlan.stderr);
    assert!(!vlan.status.success() && stderr.contains("column 9") && stderr.contains("LINUX_SLL2"), "{stderr}");

    // A pipe: `-r /dev/stdin` reads the file once (its header sniffed from memory).
    let mut piped = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["capture", "filter", "ip6 or udp", "--count", "-r", "/dev/stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("palisade runs");
    let bytes = std::fs::read(&any).expect("the SLL2 file");
    std::io::Write::write_all(&mut piped.stdin.take().expect("stdin"), &bytes).expect("pipe the file");
    let piped = piped.wait_with_output().expect("palisade finishes");
    assert_eq!(String::from_utf8_lossy(&piped.stdout).trim(), expected.to_string(), "a piped file");

    let refused = dir.path().join("refused.pcap");
    let bad = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["capture", "filter", "tcp port x80", "-r"])
        .arg(&input)
        .arg("-w")
        .arg(&refused)
        .output()
        .expect("palisade runs");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && stderr.contains("column 10"), "{stderr}");
    assert!(!refused.exists(), "nothing is written for a refused expression");
    let snap = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["capture", "filter", "tcp", "-s", "0", "-r"])
        .arg(&input)
        .output()
        .expect("palisade runs");
    assert!(!snap.status.success() && String::from_utf8_lossy(&snap.stderr).contains("--snaplen 0"));
}
