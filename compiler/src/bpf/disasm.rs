//! Disassembler: renders programs as readable eBPF assembly (the syntax of the kernel verifier
//! log and `llvm-objdump`), with map names from relocations and the assembler's comments.
//!
//! Only the encodings [`crate::bpf::insn`] produces are decoded; anything else (including fields our
//! encoder always leaves zero being non-zero) prints as `.insn 0x<the 8 bytes in hex>`, so a
//! corrupted program never renders as something plausible.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::bpf::asm::Program;
use crate::bpf::insn::{
    ATOMIC_ADD, Alu, BPF_PSEUDO_MAP_FD, CLASS_ALU, CLASS_ALU64, CLASS_JMP, CLASS_JMP32, CLASS_LD, CLASS_LDX, CLASS_ST,
    CLASS_STX, Insn, Jmp, MODE_ABS, MODE_ATOMIC, MODE_IMM, MODE_IND, MODE_MEM, OP_CALL, OP_END, OP_EXIT, OP_JA, SRC_X,
    Size, helper,
};

/// Renders a whole program, one slot per line (`  12: r1 = *(u32 *)(r6 + 24)`), the two slots of
/// an `ld_imm64` on one line. Jumps show their absolute target (`goto +5 <18>`), map loads the
/// relocated map's name (`map[pal_events]`), and each comment is printed as `; text` before the
/// instruction it is attached to.
pub fn disassemble(program: &Program) -> String {
    let maps: BTreeMap<usize, &str> = program.relocations.iter().map(|r| (r.slot, r.map.as_str())).collect();
    let mut comments: Vec<&(usize, String)> = program.comments.iter().collect();
    // Stable: comments sharing a slot keep their order.
    comments.sort_by_key(|(slot, _)| *slot);
    let mut comments = comments.into_iter().peekable();

    let mut out = String::new();
    let mut slot = 0;
    while let Some(i) = program.insns.get(slot) {
        while let Some((_, text)) = comments.next_if(|(at, _)| *at <= slot) {
            push_comment(&mut out, text);
        }
        let next = program.insns.get(slot + 1);
        let mut line = render(i, next, maps.get(&slot).copied());
        if i.is_branch() {
            let target = slot as i64 + 1 + i64::from(i.off);
            let _ = write!(line, " <{target}>");
        }
        let _ = writeln!(out, "  {slot}: {line}");
        slot += if i.is_wide() && next.is_some() { 2 } else { 1 };
    }
    for (_, text) in comments {
        push_comment(&mut out, text);
    }
    out
}

/// `imm - SKF_LL_OFF` when `imm` is in the link-layer range.
fn ll_offset(imm: i32) -> Option<i32> {
    (-0x20_0000..-0x10_0000).contains(&imm).then(|| imm + 0x20_0000)
}

/// Renders one instruction without its slot number. `next` is the following slot, needed for
/// the second half of an `ld_imm64`; a map load without a known name prints as `map[fd:N]`.
pub fn disassemble_insn(i: &Insn, next: Option<&Insn>) -> String {
    render(i, next, None)
}

fn push_comment(out: &mut String, text: &str) {
    for line in text.lines() {
        let _ = writeln!(out, "; {line}");
    }
    if text.is_empty() {
        out.push_str(";\n");
    }
}

fn render(i: &Insn, next: Option<&Insn>, map: Option<&str>) -> String {
    let text = match i.class() {
        CLASS_ALU | CLASS_ALU64 => alu(i),
        CLASS_LDX => ldx(i),
        CLASS_ST | CLASS_STX => store(i),
        CLASS_LD => ld(i, next, map),
        CLASS_JMP | CLASS_JMP32 => jump(i),
        _ => None,
    };
    text.unwrap_or_else(|| raw(i))
}

/// `.insn 0x…`: the slot's 8 bytes in memory order.
fn raw(i: &Insn) -> String {
    let mut s = String::from(".insn 0x");
    for b in i.encode() {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn size_name(size: Size) -> &'static str {
    match size {
        Size::B => "u8",
        Size::H => "u16",
        Size::W => "u32",
        Size::DW => "u64",
    }
}

/// `(r6 + 24)`, `(r10 - 8)`.
fn address(reg: u8, off: i16) -> String {
    match off {
        0.. => format!("(r{reg} + {off})"),
        _ => format!("(r{reg} - {})", i32::from(off).unsigned_abs()),
    }
}

fn valid_reg(r: u8) -> bool {
    r <= 10
}

fn alu(i: &Insn) -> Option<String> {
    let (r, wide) = if i.class() == CLASS_ALU64 { ('r', true) } else { ('w', false) };
    let dst = i.dst;
    let by_reg = i.code & SRC_X != 0;
    if !valid_reg(dst) || i.off != 0 {
        return None;
    }
    if i.code & 0xf0 == OP_END {
        if i.src != 0 || !matches!(i.imm, 16 | 32 | 64) {
            return None;
        }
        let bits = i.imm;
        // BPF_ALU64 | BPF_END is the unconditional byte swap (instruction set v4).
        let op = match (wide, by_reg) {
            (false, true) => "be",
            (false, false) => "le",
            (true, false) => "bswap",
            (true, true) => return None,
        };
        return Some(format!("r{dst} = {op}{bits} r{dst}"));
    }
    let op = Alu::from_code(i.code)?;
    if op == Alu::Neg {
        return (!by_reg && i.src == 0 && i.imm == 0).then(|| format!("{r}{dst} = -{r}{dst}"));
    }
    let operand = operand(i, by_reg, r, i.imm.to_string())?;
    let sym = match op {
        Alu::Add => "+=",
        Alu::Sub => "-=",
        Alu::Mul => "*=",
        Alu::Div => "/=",
        Alu::Or => "|=",
        Alu::And => "&=",
        Alu::Lsh => "<<=",
        Alu::Rsh => ">>=",
        Alu::Mod => "%=",
        Alu::Xor => "^=",
        Alu::Mov => "=",
        Alu::Arsh => "s>>=",
        Alu::Neg => return None,
    };
    Some(format!("{r}{dst} {sym} {operand}"))
}

fn ldx(i: &Insn) -> Option<String> {
    if i.code & 0xe0 != MODE_MEM || i.imm != 0 || !valid_reg(i.dst) || !valid_reg(i.src) {
        return None;
    }
    let size = size_name(Size::from_code(i.code));
    Some(format!("r{} = *({size} *){}", i.dst, address(i.src, i.off)))
}

fn store(i: &Insn) -> Option<String> {
    if i.class() == CLASS_STX && i.code & 0xe0 == MODE_ATOMIC && i.imm == ATOMIC_ADD {
        if !valid_reg(i.dst) || !valid_reg(i.src) {
            return None;
        }
        let size = size_name(Size::from_code(i.code));
        return Some(format!("lock *({size} *){} += r{}", address(i.dst, i.off), i.src));
    }
    if i.code & 0xe0 != MODE_MEM || !valid_reg(i.dst) {
        return None;
    }
    let size = size_name(Size::from_code(i.code));
    let value = if i.class() == CLASS_STX {
        if i.imm != 0 || !valid_reg(i.src) {
            return None;
        }
        format!("r{}", i.src)
    } else {
        if i.src != 0 {
            return None;
        }
        i.imm.to_string()
    };
    Some(format!("*({size} *){} = {value}", address(i.dst, i.off)))
}

fn ld(i: &Insn, next: Option<&Insn>, map: Option<&str>) -> Option<String> {
    let size = Size::from_code(i.code);
    match i.code & 0xe0 {
        MODE_IMM if size == Size::DW => {
            let next = next.filter(|n| n.code == 0 && n.dst == 0 && n.src == 0 && n.off == 0)?;
            if !valid_reg(i.dst) || i.off != 0 {
                return None;
            }
            match i.src {
                0 => {
                    let value = u64::from(next.imm as u32) << 32 | u64::from(i.imm as u32);
                    Some(format!("r{} = {value:#x} ll", i.dst))
                }
                BPF_PSEUDO_MAP_FD if next.imm == 0 => Some(match map {
                    Some(name) => format!("r{} = map[{name}] ll", i.dst),
                    None => format!("r{} = map[fd:{}] ll", i.dst, i.imm),
                }),
                _ => None,
            }
        }
        // Offsets from SKF_LL_OFF (-0x200000) address the link-layer header: `skb[ll + N]`.
        MODE_ABS if size != Size::DW && i.dst == 0 && i.src == 0 && i.off == 0 => match ll_offset(i.imm) {
            Some(n) => Some(format!("r0 = *({} *)skb[ll + {n}]", size_name(size))),
            None => Some(format!("r0 = *({} *)skb[{}]", size_name(size), i.imm)),
        },
        MODE_IND if size != Size::DW && i.dst == 0 && valid_reg(i.src) && i.off == 0 => {
            if let Some(n) = ll_offset(i.imm) {
                return Some(format!("r0 = *({} *)skb[ll + r{} + {n}]", size_name(size), i.src));
            }
            let sign = if i.imm < 0 { '-' } else { '+' };
            Some(format!("r0 = *({} *)skb[r{} {sign} {}]", size_name(size), i.src, i.imm.unsigned_abs()))
        }
        _ => None,
    }
}

fn jump(i: &Insn) -> Option<String> {
    let by_reg = i.code & SRC_X != 0;
    let jmp64 = i.class() == CLASS_JMP;
    let op = i.code & 0xf0;
    if jmp64 && !by_reg && i.dst == 0 && i.src == 0 {
        match op {
            OP_JA if i.imm == 0 => return Some(format!("goto {:+}", i.off)),
            OP_CALL if i.off == 0 => {
                return Some(match helper::name(i.imm) {
                    Some(name) => format!("call {name}#{}", i.imm),
                    None => format!("call helper#{}", i.imm),
                });
            }
            OP_EXIT if i.off == 0 && i.imm == 0 => return Some("exit".to_owned()),
            _ => {}
        }
    }
    let cmp = match Jmp::from_code(i.code)? {
        Jmp::Jeq => "==",
        Jmp::Jgt => ">",
        Jmp::Jge => ">=",
        Jmp::Jset => "&",
        Jmp::Jne => "!=",
        Jmp::Jsgt => "s>",
        Jmp::Jsge => "s>=",
        Jmp::Jlt => "<",
        Jmp::Jle => "<=",
        Jmp::Jslt => "s<",
        Jmp::Jsle => "s<=",
    };
    let r = if jmp64 { 'r' } else { 'w' };
    if !valid_reg(i.dst) {
        return None;
    }
    let operand = operand(i, by_reg, r, format!("{:#x}", i.imm))?;
    Some(format!("if {r}{} {cmp} {operand} goto {:+}", i.dst, i.off))
}

/// The source operand of an ALU or jump instruction: register `{r}N` (imm must be 0) or the
/// immediate as `imm_text` (src must be 0); `None` for encodings the encoder never emits.
fn operand(i: &Insn, by_reg: bool, r: char, imm_text: String) -> Option<String> {
    if by_reg {
        (valid_reg(i.src) && i.imm == 0).then(|| format!("{r}{}", i.src))
    } else {
        (i.src == 0).then_some(imm_text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::asm::Asm;
    use crate::bpf::insn::{
        self, R0, R1, R2, R3, R6, R10, alu32_imm, alu32_reg, alu64_imm, alu64_reg, call, endian_be, endian_le, exit,
        ja, jmp_imm, jmp_reg, jmp32_imm, jmp32_reg, ld_abs, ld_imm64, ld_ind, ld_map_fd, ldx, mov32_imm, mov64_imm,
        mov64_reg, st, stx,
    };

    fn one(i: Insn) -> String {
        disassemble_insn(&i, None)
    }

    #[test]
    fn disassemble_insn_alu_renders_every_operation() {
        let cases = [
            (mov64_imm(R0, 0), "r0 = 0"),
            (mov64_imm(R1, -1), "r1 = -1"),
            (mov64_reg(R6, R1), "r6 = r1"),
            (mov32_imm(R0, 1), "w0 = 1"),
            (alu64_imm(Alu::Add, R1, 5), "r1 += 5"),
            (alu64_imm(Alu::Sub, R1, 5), "r1 -= 5"),
            (alu64_imm(Alu::Mul, R1, 5), "r1 *= 5"),
            (alu64_imm(Alu::Div, R1, 5), "r1 /= 5"),
            (alu64_imm(Alu::Or, R1, 5), "r1 |= 5"),
            (alu64_imm(Alu::And, R1, 255), "r1 &= 255"),
            (alu64_imm(Alu::Lsh, R1, 32), "r1 <<= 32"),
            (alu64_imm(Alu::Rsh, R1, 32), "r1 >>= 32"),
            (alu64_imm(Alu::Neg, R1, 0), "r1 = -r1"),
            (alu64_imm(Alu::Mod, R1, 5), "r1 %= 5"),
            (alu64_imm(Alu::Xor, R1, 5), "r1 ^= 5"),
            (alu64_imm(Alu::Arsh, R3, 2), "r3 s>>= 2"),
            (alu64_reg(Alu::Add, R2, R3), "r2 += r3"),
            (alu32_imm(Alu::Add, R2, 5), "w2 += 5"),
            (alu32_reg(Alu::Mov, R1, R2), "w1 = w2"),
            (alu32_imm(Alu::Neg, R1, 0), "w1 = -w1"),
            (endian_be(R1, 16), "r1 = be16 r1"),
            (endian_le(R1, 32), "r1 = le32 r1"),
        ];
        for (i, text) in cases {
            assert_eq!(one(i), text, "{i:?}");
        }
    }

    #[test]
    fn disassemble_insn_memory_renders_loads_and_stores() {
        assert_eq!(one(ldx(Size::W, R1, R6, 24)), "r1 = *(u32 *)(r6 + 24)");
        assert_eq!(one(ldx(Size::B, R1, R6, 0)), "r1 = *(u8 *)(r6 + 0)");
        assert_eq!(one(stx(Size::DW, R10, R1, -8)), "*(u64 *)(r10 - 8) = r1");
        assert_eq!(one(stx(Size::H, R10, R1, -32768)), "*(u16 *)(r10 - 32768) = r1");
        assert_eq!(one(st(Size::W, R10, -4, 7)), "*(u32 *)(r10 - 4) = 7");
        assert_eq!(one(ld_abs(Size::H, 12)), "r0 = *(u16 *)skb[12]");
        assert_eq!(one(ld_abs(Size::W, -0x10_0000 + 12)), "r0 = *(u32 *)skb[-1048564]");
        assert_eq!(one(ld_abs(Size::H, -0x20_0000 + 12)), "r0 = *(u16 *)skb[ll + 12]");
        assert_eq!(one(ld_ind(Size::B, 8, -0x20_0000 + 14)), "r0 = *(u8 *)skb[ll + r8 + 14]");
        assert_eq!(one(ld_ind(Size::B, R1, 4)), "r0 = *(u8 *)skb[r1 + 4]");
        assert_eq!(one(ld_ind(Size::B, R1, -0x10_0000)), "r0 = *(u8 *)skb[r1 - 1048576]");
    }

    #[test]
    fn disassemble_insn_wide_loads_use_next_slot() {
        let [lo, hi] = ld_imm64(R1, 0x5566_7788_1122_3344);
        assert_eq!(disassemble_insn(&lo, Some(&hi)), "r1 = 0x5566778811223344 ll");
        let [lo, hi] = ld_map_fd(R2);
        assert_eq!(disassemble_insn(&lo, Some(&hi)), "r2 = map[fd:0] ll");
        // Without its second half the slot is not a valid instruction.
        assert_eq!(disassemble_insn(&lo, None), ".insn 0x1812000000000000");
    }

    #[test]
    fn disassemble_insn_jumps_render_comparisons_calls_and_exit() {
        let cases = [
            (jmp_imm(Jmp::Jeq, R0, 0, 5), "if r0 == 0x0 goto +5"),
            (jmp_imm(Jmp::Jgt, R1, 16, 1), "if r1 > 0x10 goto +1"),
            (jmp_imm(Jmp::Jge, R1, 1, 1), "if r1 >= 0x1 goto +1"),
            (jmp_imm(Jmp::Jset, R1, 4, 1), "if r1 & 0x4 goto +1"),
            (jmp_imm(Jmp::Jne, R1, -1, 1), "if r1 != 0xffffffff goto +1"),
            (jmp_imm(Jmp::Jsgt, R1, 1, 1), "if r1 s> 0x1 goto +1"),
            (jmp_imm(Jmp::Jsge, R1, 1, 1), "if r1 s>= 0x1 goto +1"),
            (jmp_imm(Jmp::Jlt, R1, 1, 1), "if r1 < 0x1 goto +1"),
            (jmp_imm(Jmp::Jle, R1, 1, 1), "if r1 <= 0x1 goto +1"),
            (jmp_imm(Jmp::Jslt, R1, 1, 1), "if r1 s< 0x1 goto +1"),
            (jmp_imm(Jmp::Jsle, R1, 1, 1), "if r1 s<= 0x1 goto +1"),
            (jmp_reg(Jmp::Jslt, R1, R2, 1), "if r1 s< r2 goto +1"),
            (jmp32_imm(Jmp::Jgt, R1, 3, -2), "if w1 > 0x3 goto -2"),
            (jmp32_reg(Jmp::Jne, R1, R2, 0), "if w1 != w2 goto +0"),
            (ja(3), "goto +3"),
            (ja(-1), "goto -1"),
            (call(insn::helper::MAP_LOOKUP_ELEM), "call bpf_map_lookup_elem#1"),
            (call(insn::helper::GET_CURRENT_ANCESTOR_CGROUP_ID), "call bpf_get_current_ancestor_cgroup_id#123"),
            (call(9999), "call helper#9999"),
            (exit(), "exit"),
        ];
        for (i, text) in cases {
            assert_eq!(one(i), text, "{i:?}");
        }
    }

    #[test]
    fn disassemble_insn_unknown_encoding_prints_raw_bytes() {
        let raw = |code: u8, dst: u8, src: u8, off: i16, imm: i32| one(Insn { code, dst, src, off, imm });
        // BPF_STX | BPF_ATOMIC: not produced by the encoder.
        assert_eq!(raw(0xdb, 1, 2, 0, 1), ".insn 0xdb21000001000000");
        // Register 11 does not exist.
        assert_eq!(raw(0xb7, 11, 0, 0, 0), ".insn 0xb70b000000000000");
        // ALU with a non-zero offset (signed division/movsx in newer ISAs).
        assert_eq!(raw(0x3f, 1, 2, 1, 0), ".insn 0x3f21010000000000");
        // BPF_JMP | 0xe0 is not an operation.
        assert_eq!(raw(0xe5, 1, 0, 1, 0), ".insn 0xe501010000000000");
        // A pseudo call (bpf-to-bpf) is not produced either.
        assert_eq!(raw(0x85, 0, 1, 0, 4), ".insn 0x8510000004000000");
        // An endian swap of a width that does not exist.
        assert_eq!(raw(0xdc, 1, 0, 0, 8), ".insn 0xdc01000008000000");
        // The lone second slot of a wide load.
        assert_eq!(raw(0, 0, 0, 0, 0), ".insn 0x0000000000000000");
        // 64-bit packet loads do not exist.
        assert_eq!(one(ld_abs(Size::DW, 0)), ".insn 0x3800000000000000");
    }

    #[test]
    fn disassemble_program_prints_slots_targets_maps_and_comments() {
        let mut a = Asm::new();
        let allow = a.label();
        a.comment("rule web-egress");
        a.push(ldx(Size::W, R1, R6, 24));
        a.jmp_imm(Jmp::Jeq, R1, 0, allow);
        a.ld_map(R1, "pal_events");
        a.push(call(insn::helper::RINGBUF_OUTPUT));
        a.bind(allow);
        a.comment("allow\nreturn 1");
        a.push(mov64_imm(R0, 1));
        a.push(exit());
        a.comment("end");
        let program = a.finish().expect("assembles");
        let expected = "\
; rule web-egress
  0: r1 = *(u32 *)(r6 + 24)
  1: if r1 == 0x0 goto +3 <5>
  2: r1 = map[pal_events] ll
  4: call bpf_ringbuf_output#130
; allow
; return 1
  5: r0 = 1
  6: exit
; end
";
        assert_eq!(disassemble(&program), expected);
    }

    #[test]
    fn disassemble_program_backward_jump_shows_target() {
        let mut a = Asm::new();
        let top = a.label();
        a.bind(top);
        a.push(mov64_imm(R0, 0));
        a.ja(top);
        let text = disassemble(&a.finish().expect("assembles"));
        assert_eq!(text, "  0: r0 = 0\n  1: goto -2 <0>\n");
    }

    #[test]
    fn disassemble_program_truncated_wide_load_prints_raw() {
        let [lo, _] = ld_imm64(R1, 1);
        let program = Program { insns: vec![lo], ..Program::default() };
        assert_eq!(disassemble(&program), "  0: .insn 0x1801000001000000\n");
        assert_eq!(disassemble(&Program::default()), "");
    }
}
