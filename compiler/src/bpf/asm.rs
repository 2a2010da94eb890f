//! Label-based eBPF assembler: jumps to forward/backward labels, map references that become ELF
//! relocations, and comments that the disassembler prints next to the code they explain.

use crate::bpf::insn::{self, Insn, Jmp};

/// A jump target inside one [`Asm`]; create with [`Asm::label`], place with [`Asm::bind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Label(usize);

/// Why a program could not be assembled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsmError {
    /// A jump targets a label that was never bound (or belongs to another assembler).
    #[error("label {label} is the target of the jump at slot {slot} but was never bound")]
    UnboundLabel {
        /// Index of the label.
        label: usize,
        /// Slot of the first jump to it.
        slot: usize,
    },
    /// [`Asm::bind`] was called twice for the same label.
    #[error("label {label} is bound twice, at slots {first} and {second}")]
    LabelBoundTwice {
        /// Index of the label.
        label: usize,
        /// Slot of the first binding.
        first: usize,
        /// Slot of the second binding.
        second: usize,
    },
    /// [`Asm::bind`] got a label this assembler did not create.
    #[error("label {label} was not created by this assembler")]
    ForeignLabel {
        /// Index of the label.
        label: usize,
    },
    /// A jump distance does not fit the signed 16-bit `off` field.
    #[error("jump at slot {slot} to slot {target} needs offset {offset}, outside the 16-bit range")]
    JumpOutOfRange {
        /// Slot of the jump.
        slot: usize,
        /// Slot the label is bound to.
        target: usize,
        /// The offset that would be needed.
        offset: i64,
    },
}

/// An ELF relocation request: the `ld_imm64` at `slot` loads the map named `map`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Relocation {
    /// Slot index of the first half of the `ld_imm64`.
    pub slot: usize,
    /// Map (ELF symbol) name.
    pub map: String,
}

/// An assembled program: instruction slots, map relocations and comments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Program {
    /// Instruction slots (an `ld_imm64` occupies two).
    pub insns: Vec<Insn>,
    /// Map references, in slot order.
    pub relocations: Vec<Relocation>,
    /// Comments, each attached to the slot it precedes (a slot equal to `insns.len()` means the
    /// comment trails the program). Several comments may share a slot; their order is kept.
    pub comments: Vec<(usize, String)>,
}

impl Program {
    /// Upper bound of the conditional jumps on any path: the number of conditional jump
    /// instructions. The verifier rejects a path with more than 8192 of them.
    pub fn max_path_jumps(&self) -> u64 {
        let mut count = 0;
        let mut slot = 0;
        while let Some(i) = self.insns.get(slot) {
            if i.is_conditional_jump() {
                count += 1;
            }
            slot += if i.is_wide() { 2 } else { 1 };
        }
        count
    }

    /// The most conditional jumps on one path from the first slot to an exit, for a program
    /// whose jumps all go forward (`None` otherwise): the verifier keeps one pending state per
    /// conditional jump on the path it walks and gives up past 8192 ("the sequence of 8193
    /// jumps is too complex"), so this is what to hold to that limit. Linear in the program.
    pub fn longest_path_jumps(&self) -> Option<u64> {
        let n = self.insns.len();
        let mut most = vec![0_u64; n + 1];
        for slot in (0..n).rev() {
            let i = self.insns[slot];
            let width = if i.is_wide() { 2 } else { 1 };
            let next = most.get(slot + width).copied().unwrap_or(0);
            let target = || {
                let t = slot as i64 + 1 + i64::from(i.off);
                usize::try_from(t).ok().filter(|&t| t > slot && t <= n)
            };
            most[slot] = if i.code == insn::CLASS_JMP | insn::OP_EXIT {
                0
            } else if i.is_conditional_jump() {
                1 + next.max(most[target()?])
            } else if i.is_branch() {
                most[target()?]
            } else {
                next
            };
        }
        most.first().copied()
    }

    /// Number of instruction slots.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// Whether the program has no instructions.
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// The encoded instruction bytes (8 per slot, little endian).
    pub fn bytes(&self) -> Vec<u8> {
        insn::encode_all(&self.insns)
    }
}

/// Builds one program slot by slot; jumps name [`Label`]s that [`Asm::finish`] resolves.
#[derive(Debug, Default)]
pub struct Asm {
    insns: Vec<Insn>,
    /// Bound slot of each label, by label index.
    labels: Vec<Option<usize>>,
    /// Jumps whose `off` is filled in by `finish`: (slot, target).
    fixups: Vec<(usize, Label)>,
    relocations: Vec<Relocation>,
    comments: Vec<(usize, String)>,
    /// First misuse of `bind`, reported by `finish` so emitting code stays infallible.
    bind_error: Option<AsmError>,
}

impl Asm {
    /// An empty assembler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates a label, to be bound later with [`Asm::bind`] (before or after jumps to it).
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Binds `l` to the current position: the next instruction pushed is its target. Binding a
    /// label twice, or a label from another assembler, makes [`Asm::finish`] fail.
    pub fn bind(&mut self, l: Label) {
        let here = self.insns.len();
        let error = match self.labels.get_mut(l.0) {
            Some(slot @ None) => {
                *slot = Some(here);
                return;
            }
            Some(Some(first)) => AsmError::LabelBoundTwice { label: l.0, first: *first, second: here },
            None => AsmError::ForeignLabel { label: l.0 },
        };
        self.bind_error.get_or_insert(error);
    }

    /// Appends one instruction slot.
    pub fn push(&mut self, i: Insn) {
        self.insns.push(i);
    }

    /// Appends a two-slot instruction (`ld_imm64`).
    pub fn push_wide(&mut self, i: [Insn; 2]) {
        self.insns.extend(i);
    }

    /// `if dst op imm goto target` (64-bit comparison).
    pub fn jmp_imm(&mut self, op: Jmp, dst: u8, imm: i32, target: Label) {
        self.jump(insn::jmp_imm(op, dst, imm, 0), target);
    }

    /// `if wdst op imm goto target` (32-bit comparison).
    pub fn jmp32_imm(&mut self, op: Jmp, dst: u8, imm: i32, target: Label) {
        self.jump(insn::jmp32_imm(op, dst, imm, 0), target);
    }

    /// `if dst op src goto target` (64-bit comparison).
    pub fn jmp_reg(&mut self, op: Jmp, dst: u8, src: u8, target: Label) {
        self.jump(insn::jmp_reg(op, dst, src, 0), target);
    }

    /// `if wdst op wsrc goto target` (32-bit comparison).
    pub fn jmp32_reg(&mut self, op: Jmp, dst: u8, src: u8, target: Label) {
        self.jump(insn::jmp32_reg(op, dst, src, 0), target);
    }

    /// `goto target`.
    pub fn ja(&mut self, target: Label) {
        self.jump(insn::ja(0), target);
    }

    /// `dst = &map`: an `ld_imm64` placeholder plus a relocation naming the map.
    pub fn ld_map(&mut self, dst: u8, map: &str) {
        self.relocations.push(Relocation { slot: self.insns.len(), map: map.to_owned() });
        self.push_wide(insn::ld_map_fd(dst));
    }

    /// Attaches a comment to the next instruction pushed (or to the end of the program).
    pub fn comment(&mut self, text: impl Into<String>) {
        self.comments.push((self.insns.len(), text.into()));
    }

    /// Number of slots emitted so far (the slot index of the next instruction).
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// Whether nothing has been emitted yet.
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// Resolves every jump to its label and returns the program.
    pub fn finish(mut self) -> Result<Program, AsmError> {
        if let Some(error) = self.bind_error {
            return Err(error);
        }
        for &(slot, label) in &self.fixups {
            let target =
                self.labels.get(label.0).copied().flatten().ok_or(AsmError::UnboundLabel { label: label.0, slot })?;
            // Jump offsets count slots from the instruction after the jump.
            let offset = target as i64 - slot as i64 - 1;
            let off = i16::try_from(offset).map_err(|_| AsmError::JumpOutOfRange { slot, target, offset })?;
            self.insns[slot].off = off;
        }
        Ok(Program { insns: self.insns, relocations: self.relocations, comments: self.comments })
    }

    fn jump(&mut self, i: Insn, target: Label) {
        self.fixups.push((self.insns.len(), target));
        self.insns.push(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::insn::{R0, R1, exit, mov64_imm};

    #[test]
    fn finish_forward_label_resolves_offset_past_jump() {
        let mut a = Asm::new();
        let out = a.label();
        a.jmp_imm(Jmp::Jeq, R0, 0, out); // slot 0
        a.push(mov64_imm(R0, 1)); // slot 1
        a.push(mov64_imm(R0, 2)); // slot 2
        a.bind(out);
        a.push(exit()); // slot 3
        let p = a.finish().expect("assembles");
        assert_eq!(p.insns[0].off, 2);
        assert_eq!(p.insns[0], insn::jmp_imm(Jmp::Jeq, R0, 0, 2));
    }

    #[test]
    fn finish_backward_label_resolves_negative_offset() {
        let mut a = Asm::new();
        let top = a.label();
        a.bind(top);
        a.push(mov64_imm(R0, 0)); // slot 0
        a.push_wide(insn::ld_imm64(R1, 7)); // slots 1-2
        a.jmp32_imm(Jmp::Jne, R1, 0, top); // slot 3
        a.ja(top); // slot 4
        let p = a.finish().expect("assembles");
        assert_eq!(p.insns[3].off, -4);
        assert_eq!(p.insns[4].off, -5);
    }

    #[test]
    fn finish_jump_to_next_slot_has_zero_offset() {
        let mut a = Asm::new();
        let next = a.label();
        a.jmp_reg(Jmp::Jgt, R0, R1, next);
        a.bind(next);
        a.push(exit());
        assert_eq!(a.finish().expect("assembles").insns[0].off, 0);
    }

    #[test]
    fn finish_unbound_label_is_error() {
        let mut a = Asm::new();
        a.push(mov64_imm(R0, 0));
        let nowhere = a.label();
        a.ja(nowhere);
        assert_eq!(a.finish(), Err(AsmError::UnboundLabel { label: 0, slot: 1 }));
    }

    #[test]
    fn finish_label_bound_twice_is_error() {
        let mut a = Asm::new();
        let l = a.label();
        a.bind(l);
        a.push(exit());
        a.bind(l);
        assert_eq!(a.finish(), Err(AsmError::LabelBoundTwice { label: 0, first: 0, second: 1 }));
    }

    #[test]
    fn bind_foreign_label_is_error() {
        let mut other = Asm::new();
        other.label();
        let foreign = other.label();
        let mut a = Asm::new();
        a.bind(foreign);
        assert_eq!(a.finish(), Err(AsmError::ForeignLabel { label: 1 }));
    }

    #[test]
    fn finish_forward_offset_overflow_is_error() {
        let mut a = Asm::new();
        let far = a.label();
        a.ja(far);
        for _ in 0..=i16::MAX {
            a.push(mov64_imm(R0, 0));
        }
        a.bind(far);
        a.push(exit());
        assert_eq!(a.finish(), Err(AsmError::JumpOutOfRange { slot: 0, target: 32769, offset: 32768 }));
    }

    #[test]
    fn finish_largest_offsets_fit() {
        let mut a = Asm::new();
        let top = a.label();
        let far = a.label();
        a.bind(top);
        a.ja(far); // slot 0: offset +32767
        for _ in 0..i16::MAX - 1 {
            a.push(mov64_imm(R0, 0));
        }
        a.ja(top); // slot 32767: offset -32768
        a.bind(far);
        a.push(exit());
        let p = a.finish().expect("assembles");
        assert_eq!(p.insns[0].off, i16::MAX);
        assert_eq!(p.insns[32767].off, i16::MIN);
    }

    #[test]
    fn finish_backward_offset_overflow_is_error() {
        let mut a = Asm::new();
        let top = a.label();
        a.bind(top);
        for _ in 0..=i16::MAX {
            a.push(mov64_imm(R0, 0));
        }
        a.ja(top);
        assert_eq!(a.finish(), Err(AsmError::JumpOutOfRange { slot: 32768, target: 0, offset: -32769 }));
    }

    #[test]
    fn ld_map_records_relocation_at_first_slot() {
        let mut a = Asm::new();
        a.push(mov64_imm(R0, 0));
        a.ld_map(R1, "pal_events");
        a.push(exit());
        assert_eq!(a.len(), 4);
        let p = a.finish().expect("assembles");
        assert_eq!(p.relocations, vec![Relocation { slot: 1, map: "pal_events".into() }]);
        assert_eq!(&p.insns[1..3], &insn::ld_map_fd(R1));
    }

    #[test]
    fn comment_attaches_to_next_slot() {
        let mut a = Asm::new();
        assert!(a.is_empty());
        a.comment("first");
        a.comment("second");
        a.push(mov64_imm(R0, 0));
        a.comment(String::from("trailer"));
        let p = a.finish().expect("assembles");
        assert_eq!(p.comments, vec![(0, "first".into()), (0, "second".into()), (1, "trailer".into())]);
    }

    #[test]
    fn max_path_jumps_counts_conditional_jumps_only() {
        let mut a = Asm::new();
        let end = a.label();
        a.jmp_imm(Jmp::Jeq, R0, 0, end);
        a.jmp32_imm(Jmp::Jset, R0, 1, end);
        a.jmp_reg(Jmp::Jne, R0, R1, end);
        a.ja(end);
        a.push(insn::call(insn::helper::KTIME_GET_NS));
        // The second slot of a wide load is skipped, not decoded.
        a.push_wide(insn::ld_imm64(R1, 0x15));
        a.bind(end);
        a.push(exit());
        let p = a.finish().expect("assembles");
        assert_eq!(p.max_path_jumps(), 3);
        assert_eq!(p.len(), 8);
        assert_eq!(p.bytes().len(), 64);
        assert_eq!(Program::default().max_path_jumps(), 0);
    }
}
