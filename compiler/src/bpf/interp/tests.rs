//! The interpreter's own semantics, instruction by instruction and helper by helper.

use super::*;
use crate::bpf::{
    asm::Asm,
    insn::{self, R0, R1, R2, R3, R4, R6, R10},
};

fn run(build: impl FnOnce(&mut Asm)) -> Result<Outcome, Fault> {
    run_with(&mut Maps::default(), Task::default(), build)
}

fn run_with(maps: &mut Maps, task: Task, build: impl FnOnce(&mut Asm)) -> Result<Outcome, Fault> {
    let mut a = Asm::new();
    build(&mut a);
    a.push(insn::exit());
    let program = a.finish().expect("assembles");
    Run::new(maps, task).exec(&program, 0)
}

fn ret(build: impl FnOnce(&mut Asm)) -> u64 {
    run(build).expect("runs").ret
}

fn map(name: &str, map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> v1::BundleMap {
    v1::BundleMap { name: name.into(), map_type, key_size, value_size, max_entries, ..Default::default() }
}

#[test]
fn alu_wraps_and_32_bit_operations_zero_the_upper_half() {
    assert_eq!(
        ret(|a| {
            a.push(insn::mov64_imm(R0, -1));
            a.push(insn::alu64_imm(Alu::Add, R0, 2));
        }),
        1
    );
    assert_eq!(
        ret(|a| {
            a.push(insn::mov64_imm(R0, -1));
            a.push(insn::alu32_imm(Alu::Add, R0, 0));
        }),
        0xffff_ffff
    );
    assert_eq!(
        ret(|a| {
            a.push(insn::mov64_imm(R0, -16));
            a.push(insn::alu64_imm(Alu::Arsh, R0, 2));
        }),
        (-4_i64) as u64
    );
    assert_eq!(
        ret(|a| {
            a.push(insn::mov64_imm(R0, i32::MIN));
            a.push(insn::alu32_imm(Alu::Arsh, R0, 4));
        }),
        0xf800_0000,
        "32-bit arithmetic shift from bit 31, upper half zeroed"
    );
    assert_eq!(
        ret(|a| {
            a.push(insn::mov64_imm(R0, 1));
            a.push(insn::alu32_imm(Alu::Lsh, R0, 33));
        }),
        2,
        "32-bit shifts count modulo 32"
    );
    assert_eq!(
        ret(|a| {
            a.push(insn::mov64_imm(R0, 7));
            a.push(insn::mov64_imm(R1, 0));
            a.push(insn::alu64_reg(Alu::Div, R0, R1));
        }),
        0,
        "division by zero yields 0"
    );
    assert_eq!(
        ret(|a| {
            a.push_wide(insn::ld_imm64(R0, 0x1122_3344_5566_7788));
            a.push(insn::endian_be(R0, 16));
        }),
        0x8877
    );
}

#[test]
fn jumps_compare_signed_unsigned_and_32_bit() {
    // r0 = 1 if the jump is taken, else 0.
    let taken = |op: Jmp, a_val: i32, b_val: i32, wide: bool| {
        ret(|a| {
            let yes = a.label();
            let done = a.label();
            a.push(insn::mov64_imm(R1, a_val));
            if wide {
                a.jmp_imm(op, R1, b_val, yes);
            } else {
                a.jmp32_imm(op, R1, b_val, yes);
            }
            a.push(insn::mov64_imm(R0, 0));
            a.ja(done);
            a.bind(yes);
            a.push(insn::mov64_imm(R0, 1));
            a.bind(done);
        }) == 1
    };
    assert!(taken(Jmp::Jgt, -1, 1, true), "unsigned: 0xffff… > 1");
    assert!(!taken(Jmp::Jsgt, -1, 1, true), "signed: -1 < 1");
    assert!(taken(Jmp::Jslt, -1, 0, false));
    assert!(taken(Jmp::Jset, 6, 2, true));
    assert!(!taken(Jmp::Jeq, 6, 2, true));
    // 32-bit compare ignores the upper half.
    assert_eq!(
        ret(|a| {
            let yes = a.label();
            a.push_wide(insn::ld_imm64(R1, 0x7_0000_0005));
            a.push(insn::mov64_imm(R0, 1));
            a.jmp32_imm(Jmp::Jeq, R1, 5, yes);
            a.push(insn::mov64_imm(R0, 0));
            a.bind(yes);
        }),
        1
    );
}

#[test]
fn stack_reads_need_writes_first_and_stay_inside_the_frame() {
    assert_eq!(
        ret(|a| {
            a.push(insn::st(Size::W, R10, -8, 0x1234));
            a.push(insn::ldx(Size::H, R0, R10, -8));
        }),
        0x1234
    );
    assert!(matches!(run(|a| a.push(insn::ldx(Size::W, R0, R10, -8))), Err(Fault::Uninitialised { offset: -8, .. })));
    assert!(matches!(run(|a| a.push(insn::st(Size::W, R10, 0, 1))), Err(Fault::OutOfBounds { .. })));
    assert!(matches!(run(|a| a.push(insn::st(Size::DW, R10, -516, 1))), Err(Fault::OutOfBounds { .. })));
    assert!(matches!(run(|a| a.push(insn::ldx(Size::W, R0, R0, 0))), Err(Fault::OutOfBounds { .. })), "NULL");
}

#[test]
fn helper_calls_clobber_r1_to_r5() {
    let r = run(|a| {
        a.push(insn::mov64_reg(R6, R10));
        a.push(insn::call(helper::KTIME_GET_NS));
        a.push(insn::ldx(Size::W, R0, R1, 0));
    });
    assert!(matches!(r, Err(Fault::OutOfBounds { .. })), "{r:?}");
}

#[test]
fn helpers_report_the_task() {
    let task = Task {
        time_ns: 9,
        tgid: 40,
        pid: 41,
        uid: 1000,
        gid: 100,
        comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
        cgroups: vec![1, 20, 300],
    };
    let ask = |helper: i32, arg: i32| {
        run_with(&mut Maps::default(), task.clone(), |a| {
            a.push(insn::mov64_imm(R1, arg));
            a.push(insn::call(helper));
        })
        .expect("runs")
        .ret
    };
    assert_eq!(ask(helper::KTIME_GET_NS, 0), 9);
    assert_eq!(ask(helper::GET_CURRENT_PID_TGID, 0), (40 << 32) + 41);
    assert_eq!(ask(helper::GET_CURRENT_UID_GID, 0), (100 << 32) + 1000);
    assert_eq!(ask(helper::GET_CURRENT_CGROUP_ID, 0), 300);
    assert_eq!(ask(helper::GET_CURRENT_ANCESTOR_CGROUP_ID, 1), 20);
    assert_eq!(ask(helper::GET_CURRENT_ANCESTOR_CGROUP_ID, 5), 0, "deeper than the task");
    let comm = run_with(&mut Maps::default(), task, |a| {
        a.push(insn::mov64_reg(R1, R10));
        a.push(insn::alu64_imm(Alu::Add, R1, -16));
        a.push(insn::mov64_imm(R2, 16));
        a.push(insn::call(helper::GET_CURRENT_COMM));
        a.push(insn::ldx(Size::W, R0, R10, -16));
    })
    .expect("runs");
    assert_eq!(comm.ret, u64::from(u32::from_le_bytes(*b"curl")));
}

/// Looks `key` (a u32 on the stack) up in map `name`; r0 = the value's first word or 0xffff.
fn lookup_word(maps: &mut Maps, name: &str, key: &[u8]) -> u64 {
    let key = key.to_vec();
    run_with(maps, Task::default(), |a| {
        let missing = a.label();
        let done = a.label();
        for (i, chunk) in key.chunks(4).enumerate() {
            let mut w = [0; 4];
            w[..chunk.len()].copy_from_slice(chunk);
            a.push(insn::st(Size::W, R10, -64 + 4 * i as i16, i32::from_le_bytes(w)));
        }
        a.ld_map(R1, name);
        a.push(insn::mov64_reg(R2, R10));
        a.push(insn::alu64_imm(Alu::Add, R2, -64));
        a.push(insn::call(helper::MAP_LOOKUP_ELEM));
        a.jmp_imm(Jmp::Jeq, R0, 0, missing);
        a.push(insn::ldx(Size::W, R0, R0, 0));
        a.ja(done);
        a.bind(missing);
        a.push(insn::mov64_imm(R0, 0xffff));
        a.bind(done);
    })
    .expect("runs")
    .ret
}

#[test]
fn map_lookups_follow_each_map_types_semantics() {
    let mut array = map("arr", 2, 4, 8, 4);
    array.indices = vec![2];
    array.values = [7_u32, 0].iter().flat_map(|w| w.to_le_bytes()).collect();
    let mut hash = map("h", 1, 8, 4, 4);
    hash.entries = vec![v1::MapEntry { key: 5_u64.to_le_bytes().to_vec(), value: 50_u32.to_le_bytes().to_vec() }];
    let mut lpm = map("lpm", 11, 8, 4, 4);
    let lpm_key = |len: u32, data: [u8; 4]| [len.to_le_bytes(), data].concat();
    lpm.entries = vec![
        v1::MapEntry { key: lpm_key(8, [10, 0, 0, 0]), value: 8_u32.to_le_bytes().to_vec() },
        v1::MapEntry { key: lpm_key(20, [10, 1, 0, 0]), value: 20_u32.to_le_bytes().to_vec() },
    ];
    let mut maps = Maps::from_bundle(&[array, hash, lpm]).expect("maps");
    assert_eq!(lookup_word(&mut maps, "arr", &2_u32.to_le_bytes()), 7);
    assert_eq!(lookup_word(&mut maps, "arr", &1_u32.to_le_bytes()), 0, "unset array elements are zero");
    assert_eq!(lookup_word(&mut maps, "arr", &4_u32.to_le_bytes()), 0xffff, "past max_entries");
    assert_eq!(lookup_word(&mut maps, "h", &5_u64.to_le_bytes()), 50);
    assert_eq!(lookup_word(&mut maps, "h", &6_u64.to_le_bytes()), 0xffff);
    assert_eq!(lookup_word(&mut maps, "lpm", &lpm_key(32, [10, 1, 15, 1])), 20, "longest prefix");
    assert_eq!(lookup_word(&mut maps, "lpm", &lpm_key(32, [10, 1, 16, 1])), 8, "/20 ends before .16");
    assert_eq!(lookup_word(&mut maps, "lpm", &lpm_key(32, [11, 0, 0, 0])), 0xffff);
    assert_eq!(lookup_word(&mut maps, "lpm", &lpm_key(4, [10, 0, 0, 0])), 0xffff, "key shorter than every prefix");
    maps.update("h", &6_u64.to_le_bytes(), &60_u32.to_le_bytes()).expect("update");
    assert_eq!(lookup_word(&mut maps, "h", &6_u64.to_le_bytes()), 60);
    assert!(maps.update("h", &[0; 4], &[0; 4]).is_err(), "wrong key size");
    assert!(maps.update("nope", &[0; 8], &[0; 4]).is_err());
}

#[test]
fn from_bundle_rejects_contents_that_do_not_fit() {
    let mut array = map("arr", 2, 4, 8, 4);
    array.indices = vec![4];
    array.values = vec![0; 8];
    assert!(matches!(Maps::from_bundle(&[array.clone()]), Err(MapsError::Shape { .. })), "index past the slots");
    array.indices = vec![0];
    array.values = vec![0; 7];
    assert!(matches!(Maps::from_bundle(&[array]), Err(MapsError::Shape { .. })));
    assert!(matches!(Maps::from_bundle(&[map("q", 22, 0, 4, 4)]), Err(MapsError::Shape { .. })), "queue maps");
}

#[test]
fn ringbuf_output_records_bytes_and_unknown_maps_fault() {
    let mut maps = Maps::from_bundle(&[map("ev", 27, 0, 0, 4096), map("arr", 2, 4, 8, 1)]).expect("maps");
    let out = run_with(&mut maps, Task::default(), |a| {
        a.push(insn::st(Size::DW, R10, -8, 0x0102));
        a.ld_map(R1, "ev");
        a.push(insn::mov64_reg(R2, R10));
        a.push(insn::alu64_imm(Alu::Add, R2, -8));
        a.push(insn::mov64_imm(R3, 8));
        a.push(insn::mov64_imm(R4, 0));
        a.push(insn::call(helper::RINGBUF_OUTPUT));
    })
    .expect("runs");
    assert_eq!(out.records, vec![("ev".to_owned(), vec![2, 1, 0, 0, 0, 0, 0, 0])]);
    let not_ring = run_with(&mut maps, Task::default(), |a| {
        a.ld_map(R1, "arr");
        a.push(insn::mov64_reg(R2, R10));
        a.push(insn::mov64_imm(R3, 0));
        a.push(insn::call(helper::RINGBUF_OUTPUT));
    });
    assert!(matches!(not_ring, Err(Fault::Map { .. })), "{not_ring:?}");
    let missing = run_with(&mut maps, Task::default(), |a| a.ld_map(R1, "nope"));
    assert!(matches!(missing, Err(Fault::Map { .. })), "{missing:?}");
}

#[test]
fn kernel_memory_is_read_only_and_probe_read_faults_softly() {
    let mut maps = Maps::default();
    let mut run = Run::new(&mut maps, Task::default());
    let object = run.object(vec![1, 2, 3, 4, 5, 6, 7, 8]);
    let mut a = Asm::new();
    // r0 = probe_read_kernel(r10 - 8, 8, object + 0) + *(u8 *)(r10 - 8)
    a.push(insn::mov64_reg(R1, R10));
    a.push(insn::alu64_imm(Alu::Add, R1, -8));
    a.push(insn::mov64_imm(R2, 8));
    a.push_wide(insn::ld_imm64(R3, object));
    a.push(insn::call(helper::PROBE_READ_KERNEL));
    a.push(insn::ldx(Size::B, R1, R10, -8));
    a.push(insn::alu64_reg(Alu::Add, R0, R1));
    a.push(insn::exit());
    let program = a.finish().expect("assembles");
    assert_eq!(run.exec(&program, 0).expect("runs").ret, 1);
    // Past the object's end: -EFAULT, destination zeroed.
    let mut run = Run::new(&mut maps, Task::default());
    let object = run.object(vec![1; 4]);
    let mut a = Asm::new();
    a.push(insn::mov64_reg(R1, R10));
    a.push(insn::alu64_imm(Alu::Add, R1, -8));
    a.push(insn::mov64_imm(R2, 8));
    a.push_wide(insn::ld_imm64(R3, object));
    a.push(insn::call(helper::PROBE_READ_KERNEL));
    a.push(insn::exit());
    let program = a.finish().expect("assembles");
    assert_eq!(run.exec(&program, 0).expect("runs").ret as i64, EFAULT);
    // Stores into the context fault.
    let mut run = Run::new(&mut maps, Task::default());
    let ctx = run.object(vec![0; 8]);
    let mut a = Asm::new();
    a.push(insn::st(Size::W, R1, 0, 1));
    a.push(insn::exit());
    let program = a.finish().expect("assembles");
    assert!(matches!(run.exec(&program, ctx), Err(Fault::ReadOnly { .. })));
}

#[test]
fn d_path_writes_the_path_with_its_nul_or_says_it_is_too_long() {
    let resolve = |path: &[u8], size: i32| {
        let mut maps = Maps::default();
        let mut run = Run::new(&mut maps, Task::default());
        let file = run.object(vec![0; 64]);
        run.resolve(file + 16, path);
        let mut a = Asm::new();
        for off in (-32..0).step_by(8) {
            a.push(insn::st(Size::DW, R10, off, 0));
        }
        a.push_wide(insn::ld_imm64(R1, file + 16));
        a.push(insn::mov64_reg(R2, R10));
        a.push(insn::alu64_imm(Alu::Add, R2, -32));
        a.push(insn::mov64_imm(R3, size));
        a.push(insn::call(helper::D_PATH));
        a.push(insn::ldx(Size::B, R1, R10, -32 + 4));
        a.push(insn::alu64_imm(Alu::Lsh, R0, 8));
        a.push(insn::alu64_reg(Alu::Or, R0, R1));
        a.push(insn::exit());
        run.exec(&a.finish().expect("assembles"), 0).expect("runs").ret
    };
    assert_eq!(resolve(b"/etc/x", 32), (7 << 8) | u64::from(b'/'), "7 bytes with the NUL; byte 4 is '/'");
    assert_eq!((resolve(&[b'a'; 40], 32) as i64) >> 8, ENAMETOOLONG);
}

#[test]
fn a_program_that_never_exits_is_stopped() {
    let mut a = Asm::new();
    let top = a.label();
    a.bind(top);
    a.ja(top);
    let program = a.finish().expect("assembles");
    assert_eq!(Run::new(&mut Maps::default(), Task::default()).exec(&program, 0), Err(Fault::Steps));
    let mut a = Asm::new();
    a.push(insn::mov64_imm(R0, 0));
    let falls_off = a.finish().expect("assembles");
    assert!(matches!(Run::new(&mut Maps::default(), Task::default()).exec(&falls_off, 0), Err(Fault::Jump { .. })));
}
