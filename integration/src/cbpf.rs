//! Classic BPF (libpcap's programs, as `tcpdump -ddd` prints them) translated to eBPF that
//! uses the same legacy packet loads as our capture filters, so the capture bench measures
//! libpcap's program and ours the same way: both loaded as socket filters, both run by
//! `BPF_PROG_TEST_RUN` over the same frame. A = r0, X = r7, scratch memory on the stack; the
//! translation is instruction for instruction, as the kernel's own `bpf_convert_filter`.

use palisade_compiler::{
    bpf::{
        asm::{Asm, Label, Program},
        insn::{self, Alu, Jmp, R0, R1, R6, R7, R8, R10, Size},
        interp::SKF_LL_OFF,
    },
    capture::codegen::SKB_CB0,
};

/// One classic instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classic {
    /// Opcode.
    pub code: u16,
    /// Jump offset when true.
    pub jt: u8,
    /// Jump offset when false.
    pub jf: u8,
    /// Constant.
    pub k: u32,
}

/// Parses `tcpdump -ddd` output: a count line, then `code jt jf k` per instruction.
pub fn parse_ddd(text: &str) -> anyhow::Result<Vec<Classic>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let count: usize = lines.next().ok_or_else(|| anyhow::anyhow!("empty -ddd output"))?.trim().parse()?;
    let program: Vec<Classic> = lines
        .map(|l| {
            let f: Vec<u32> = l.split_whitespace().map(str::parse).collect::<Result<_, _>>()?;
            anyhow::ensure!(f.len() == 4, "bad -ddd line {l:?}");
            Ok(Classic { code: f[0] as u16, jt: f[1] as u8, jf: f[2] as u8, k: f[3] })
        })
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(program.len() == count, "-ddd announced {count} instructions, gave {}", program.len());
    Ok(program)
}

fn scratch(k: u32) -> i16 {
    -4 * (16 - k as i16)
}

/// A classic ALU operation: the same opcode bits as eBPF's, without `mov`/`arsh`.
fn alu(code: u16) -> anyhow::Result<Alu> {
    match Alu::from_code(code as u8) {
        Some(Alu::Mov | Alu::Arsh) | None => anyhow::bail!("classic ALU op {:#x}", code & 0xf0),
        Some(op) => Ok(op),
    }
}

/// A classic ALU instruction; returns whether it may jump to `reject` (a division by X = 0).
fn alu_insn(a: &mut Asm, code: u16, k: u32, reject: Label) -> anyhow::Result<bool> {
    let op = alu(code)?;
    if code & 0x08 == 0 {
        a.push(insn::alu32_imm(op, R0, k as i32));
        return Ok(false);
    }
    if matches!(op, Alu::Lsh | Alu::Rsh) {
        // libpcap's bpf_filter: a shift by 32 or more gives 0.
        let (shift, done) = (a.label(), a.label());
        a.jmp32_imm(Jmp::Jlt, R7, 32, shift);
        a.push(insn::mov32_imm(R0, 0));
        a.ja(done);
        a.bind(shift);
        a.push(insn::alu32_reg(op, R0, R7));
        a.bind(done);
        return Ok(false);
    }
    let divides = matches!(op, Alu::Div | Alu::Mod);
    if divides {
        a.jmp32_imm(Jmp::Jeq, R7, 0, reject);
    }
    a.push(insn::alu32_reg(op, R0, R7));
    Ok(divides)
}

/// Translates a classic program for capture files (loads relative to `SKF_LL_OFF`, `len`
/// from `__sk_buff.cb[0]`, as [`palisade_compiler::capture::Target::File`]).
pub fn translate(program: &[Classic]) -> anyhow::Result<Program> {
    let mut a = Asm::new();
    let labels: Vec<Label> = (0..=program.len()).map(|_| a.label()).collect();
    let reject = a.label();
    let mut rejects = false;
    a.push(insn::mov64_reg(R6, R1));
    // A, X and scratch memory start zeroed, as the kernel's conversion leaves them.
    a.push(insn::mov64_imm(R0, 0));
    a.push(insn::mov64_imm(R7, 0));
    for k in 0..16 {
        a.push(insn::st(Size::W, R10, scratch(k), 0));
    }
    let ll = |k: u32| SKF_LL_OFF + k as i32;
    let size = |code: u16| match code & 0x18 {
        0x00 => Size::W,
        0x08 => Size::H,
        _ => Size::B,
    };
    for (pc, c) in program.iter().enumerate() {
        a.bind(labels[pc]);
        let target = |off: u8| labels[(pc + 1 + usize::from(off)).min(program.len())];
        match c.code {
            0x00 => a.push(insn::mov32_imm(R0, c.k as i32)),
            0x20 | 0x28 | 0x30 | 0x40 | 0x48 | 0x50 if c.k > 0xf_ffff => {
                // Past any frame (and past the link-layer offset range): reject.
                a.ja(reject);
                rejects = true;
            }
            0x20 | 0x28 | 0x30 => a.push(insn::ld_abs(size(c.code), ll(c.k))),
            0x40 | 0x48 | 0x50 => {
                // x + k past any frame rejects (without wrapping into another offset range).
                a.push(insn::mov64_reg(R8, R7));
                a.push(insn::alu64_imm(Alu::Add, R8, c.k as i32));
                a.jmp_imm(Jmp::Jgt, R8, 0xf_ffff, reject);
                rejects = true;
                a.push(insn::ld_ind(size(c.code), R8, ll(0)));
            }
            0x80 => a.push(insn::ldx(Size::W, R0, R6, SKB_CB0 as i16)),
            0x60 => a.push(insn::ldx(Size::W, R0, R10, scratch(c.k))),
            0x01 => a.push(insn::mov32_imm(R7, c.k as i32)),
            0x81 => a.push(insn::ldx(Size::W, R7, R6, SKB_CB0 as i16)),
            0x61 => a.push(insn::ldx(Size::W, R7, R10, scratch(c.k))),
            0xb1 => {
                // X = 4 * (P[k] & 0xf), A kept.
                a.push(insn::mov64_reg(R8, R0));
                a.push(insn::ld_abs(Size::B, ll(c.k)));
                a.push(insn::alu32_imm(Alu::And, R0, 0xf));
                a.push(insn::alu32_imm(Alu::Lsh, R0, 2));
                a.push(insn::mov64_reg(R7, R0));
                a.push(insn::mov64_reg(R0, R8));
            }
            0x02 => a.push(insn::stx(Size::W, R10, R0, scratch(c.k))),
            0x03 => a.push(insn::stx(Size::W, R10, R7, scratch(c.k))),
            0x84 => a.push(insn::alu32_imm(Alu::Neg, R0, 0)),
            code if code & 0x07 == 0x04 => rejects |= alu_insn(&mut a, code, c.k, reject)?,
            0x05 => a.ja(labels[(pc + 1 + c.k as usize).min(program.len())]),
            code if code & 0x07 == 0x05 => {
                // Classic jumps share eBPF's opcode bits; only these four exist.
                let Some(op @ (Jmp::Jeq | Jmp::Jgt | Jmp::Jge | Jmp::Jset)) = Jmp::from_code(code as u8) else {
                    anyhow::bail!("classic jump {:#x}", code & 0xf0)
                };
                if code & 0x08 != 0 {
                    a.jmp32_reg(op, R0, R7, target(c.jt));
                } else {
                    a.jmp32_imm(op, R0, c.k as i32, target(c.jt));
                }
                if c.jf != 0 {
                    a.ja(target(c.jf));
                }
            }
            0x06 => {
                a.push(insn::mov32_imm(R0, c.k as i32));
                a.push(insn::exit());
            }
            0x16 => a.push(insn::exit()),
            0x07 => a.push(insn::mov64_reg(R7, R0)),
            0x87 => a.push(insn::mov64_reg(R0, R7)),
            other => anyhow::bail!("classic opcode {other:#x}"),
        }
    }
    // A division by zero or a wild index returns 0 (classic programs end in `ret`, so nothing
    // falls through).
    a.bind(labels[program.len()]);
    if rejects {
        a.bind(reject);
        a.push(insn::mov64_imm(R0, 0));
        a.push(insn::exit());
    }
    Ok(a.finish()?)
}
