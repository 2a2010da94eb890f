//! The generated programs in the interpreter, on hand-built frames (the differential against
//! libpcap, in `integration/tests/capture.rs`, covers the language at large).

use super::{SKB_CB0, SKB_SIZE, Target};
use crate::{
    bpf::interp::{Maps, Run, Task},
    capture::compile,
};

/// Ethernet + IPv4 + TCP from 10.0.0.1:1234 to 10.0.0.2:`dport`, optionally VLAN-tagged.
fn tcp_frame(dport: u16, vlan: Option<u16>) -> Vec<u8> {
    let mut f = vec![0, 0x11, 0x22, 0x33, 0x44, 0x55, 2, 0, 0, 0, 0, 1];
    if let Some(id) = vlan {
        f.extend([0x81, 0x00]);
        f.extend(id.to_be_bytes());
    }
    f.extend([0x08, 0x00]);
    f.extend([0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend(1234_u16.to_be_bytes());
    f.extend(dport.to_be_bytes());
    f.extend([0; 8]);
    f.extend([0x50, 0x02, 0, 0, 0, 0, 0, 0]);
    f
}

fn run(text: &str, frame: &[u8]) -> u32 {
    let program = compile(text, Target::File, 96).expect("compiles");
    let mut ctx = vec![0_u8; SKB_SIZE];
    ctx[SKB_CB0..SKB_CB0 + 4].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    let mut maps = Maps::default();
    let mut r = Run::new(&mut maps, Task::default());
    let ctx = r.object(ctx);
    r.packet(frame);
    r.exec(&program, ctx).expect("runs").ret as u32
}

#[test]
fn a_match_returns_the_snap_length_and_a_miss_zero() {
    let frame = tcp_frame(80, None);
    assert_eq!(run("tcp dst port 80", &frame), 96);
    assert_eq!(run("tcp dst port 81", &frame), 0);
    assert_eq!(run("host 10.0.0.2 and tcp[tcpflags] & tcp-syn != 0", &frame), 96);
    assert_eq!(run("ip6 or arp", &frame), 0);
}

#[test]
fn a_load_past_the_end_rejects_the_packet_even_under_not() {
    let frame = tcp_frame(80, None);
    assert_eq!(run("ip[100] = 1", &frame), 0);
    assert_eq!(run("not ip[100] = 1", &frame), 0, "the load ends the filter, as libpcap's does");
    assert_eq!(run("tcp or ip[100] = 1", &frame), 96, "a test never reached loads nothing");
    assert_eq!(run("ip[0xfffffff2] = 0", &frame), 0, "the index does not wrap to byte 0");
}

#[test]
fn vlan_shifts_the_offsets_of_everything_after_it() {
    let plain = tcp_frame(80, None);
    let tagged = tcp_frame(80, Some(10));
    assert_eq!(run("vlan 10 and tcp port 80", &tagged), 96);
    assert_eq!(run("vlan 20 and tcp port 80", &tagged), 0);
    assert_eq!(run("tcp port 80", &tagged), 0);
    // libpcap's quirk: `ip` after `vlan` reads the type 4 bytes later even across `or`.
    assert_eq!(run("vlan or ip", &plain), 0);
    assert_eq!(run("ip or vlan", &plain), 96);
}

#[test]
fn division_by_zero_at_run_time_rejects_and_wide_shifts_give_zero() {
    let frame = tcp_frame(80, None);
    // ip[1] is 0 in this frame.
    assert_eq!(run("ip[2:2] / ip[1] = 0", &frame), 0);
    assert_eq!(run("not ip[2:2] / ip[1] = 0", &frame), 0);
    // ip[8] is 64: shifting by it gives 0.
    assert_eq!(run("ip[2:2] << ip[8] = 0", &frame), 96);
    assert_eq!(run("len = 54 and len - 54 = 0", &frame), 96);
}

#[test]
fn live_programs_read_the_stripped_vlan_tag_from_the_skb() {
    let program = compile("vlan 10 and tcp", Target::Live, 96).expect("compiles");
    let frame = tcp_frame(80, None);
    // (vlan_present, vlan_tci) in `__sk_buff`: VLAN 10 matches; VLAN 20 and no tag do not.
    let run = |present: u32, tci: u32| {
        let mut ctx = vec![0_u8; SKB_SIZE];
        ctx[20..24].copy_from_slice(&present.to_ne_bytes());
        ctx[24..28].copy_from_slice(&tci.to_ne_bytes());
        let mut maps = Maps::default();
        let mut r = Run::new(&mut maps, Task::default());
        let addr = r.object(ctx);
        r.packet(&frame);
        r.exec(&program, addr).expect("runs").ret
    };
    assert_eq!(run(1, 0x2000 | 0x0a), 96);
    assert_eq!(run(1, 0x2000 | 0x14), 0);
    assert_eq!(run(0, 0), 0);
}

#[test]
fn the_longest_expressions_compile_on_a_small_stack() {
    // 64 KiB of alternating `and`/`or` is ~9,000 nested operators: the parser, the code
    // generator and the tree's drop must not recurse that deep on a 2 MiB thread (tokio's
    // worker size) — they either compile it or refuse it.
    let alternating: Vec<&str> = (0..9_000).map(|i| if i % 2 == 0 { "ip or" } else { "ip and" }).collect();
    let mut alternating = alternating.join(" ");
    alternating.push_str(" ip");
    let chain = vec!["ip"; 16_000].join(" or ");
    let chain = &chain[..chain.len().min(65_530)];
    let chain = chain.trim_end_matches(|c: char| c != 'p').to_owned();
    for text in [alternating, chain] {
        let worker = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || compile(&text, Target::File, 96).map(|p| p.len()).map_err(|e| e.to_string()))
            .expect("spawn");
        let result = worker.join().expect("no stack overflow");
        assert!(result.is_ok() || result.as_ref().is_err_and(|e| e.contains("tests")), "{result:?}");
    }
}
