//! Taint propagation over one x86-64 instruction, as a pure function of the
//! instruction, the register values before it and the taint so far.
//!
//! Granularity: whole architectural registers (a write to `al` merges into
//! `rax`'s taint, a write to `eax` replaces it, as the CPU zero-extends),
//! RFLAGS as one unit, memory by byte. An instruction whose inputs (read
//! registers, read memory, the base and index of any memory operand, read
//! flags) carry taint taints everything it writes; one with clean inputs
//! cleans what it overwrites completely. Implicit stack-pointer updates
//! (push, pop, call, ret) keep RSP's own taint: otherwise one tainted push
//! would taint the stack pointer and with it every later stack access.

use std::collections::{BTreeMap, BTreeSet};

use iced_x86::{ConditionCode, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register};

/// A byte range of guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct MemRange {
    /// First byte.
    pub address: u64,
    /// Bytes.
    pub len: u64,
}

impl MemRange {
    /// `len` bytes from `address`.
    pub fn new(address: u64, len: u64) -> MemRange {
        MemRange { address, len }
    }

    fn bytes(self) -> impl Iterator<Item = u64> {
        (0..self.len).map(move |i| self.address.wrapping_add(i))
    }
}

/// Register values the engine needs to compute memory addresses.
pub trait RegValues {
    /// The 64-bit value of a full general-purpose register (or RIP).
    fn value(&self, reg: Register) -> Option<u64>;
    /// The base of FS or GS (0 for the other segments in 64-bit mode).
    fn segment_base(&self, seg: Register) -> u64;
}

/// The engine's unit for a register: the full register, or RFLAGS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unit {
    /// A full architectural register (`Register::RAX`, `Register::ZMM3`...).
    Reg(Register),
    /// The arithmetic flags.
    Flags,
}

/// What one instruction did to the taint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepEffect {
    /// Tainted memory the instruction read.
    pub tainted_reads: Vec<MemRange>,
    /// Memory it tainted.
    pub tainted_writes: Vec<MemRange>,
    /// Tainted memory it overwrote with clean data.
    pub cleaned: Vec<MemRange>,
    /// It jumps through a tainted value (a tainted return address, a
    /// tainted function pointer): control flow itself is corrupted.
    pub tainted_jump: bool,
    /// A conditional branch decided on tainted flags.
    pub tainted_branch: bool,
    /// Its inputs carried taint.
    pub inputs_tainted: bool,
}

/// Registers and memory bytes that carry the error.
#[derive(Debug, Clone, Default)]
pub struct Taint {
    regs: BTreeSet<Unit>,
    /// Tainted bytes, with the step that last tainted each.
    mem: BTreeMap<u64, u64>,
    step: u64,
}

impl Taint {
    /// Nothing tainted.
    pub fn new() -> Taint {
        Taint::default()
    }

    /// Taints a register (any width names its full register).
    pub fn taint_reg(&mut self, reg: Register) {
        self.regs.insert(unit_of(reg));
    }

    /// Cleans a register.
    pub fn clean_reg(&mut self, reg: Register) {
        self.regs.remove(&unit_of(reg));
    }

    /// Taints the flags.
    pub fn taint_flags(&mut self) {
        self.regs.insert(Unit::Flags);
    }

    /// Taints memory.
    pub fn taint_mem(&mut self, range: MemRange) {
        for b in range.bytes() {
            self.mem.insert(b, self.step);
        }
    }

    /// Cleans memory.
    pub fn clean_mem(&mut self, range: MemRange) {
        for b in range.bytes() {
            self.mem.remove(&b);
        }
    }

    /// Whether a register (any width) is tainted.
    pub fn reg_tainted(&self, reg: Register) -> bool {
        self.regs.contains(&unit_of(reg))
    }

    /// Whether any byte of `range` is tainted.
    pub fn mem_tainted(&self, range: MemRange) -> bool {
        let end = range.address.saturating_add(range.len);
        self.mem.range(range.address..end).next().is_some()
    }

    /// Tainted registers and flags.
    pub fn regs(&self) -> impl Iterator<Item = Unit> + '_ {
        self.regs.iter().copied()
    }

    /// Whether any register (or the flags) is tainted.
    pub fn any_reg(&self) -> bool {
        !self.regs.is_empty()
    }

    /// Tainted bytes.
    pub fn mem_len(&self) -> usize {
        self.mem.len()
    }

    /// Whether nothing is tainted any more.
    pub fn is_empty(&self) -> bool {
        self.regs.is_empty() && self.mem.is_empty()
    }

    /// Tainted memory as aligned cells of `cell` bytes (a power of two),
    /// most recently tainted first.
    pub fn cells(&self, cell: u64) -> Vec<u64> {
        let mut latest: BTreeMap<u64, u64> = BTreeMap::new();
        for (&b, &step) in &self.mem {
            let c = b & !(cell - 1);
            let e = latest.entry(c).or_insert(step);
            *e = (*e).max(step);
        }
        let mut cells: Vec<(u64, u64)> = latest.into_iter().collect();
        cells.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        cells.into_iter().map(|(c, _)| c).collect()
    }

    /// Propagates taint through `instr`, executed with register values
    /// `regs` (as they are before it). `force` taints everything it writes
    /// whatever its inputs: an instruction on a path the fault chose.
    pub fn step(
        &mut self,
        factory: &mut InstructionInfoFactory,
        instr: &Instruction,
        regs: &dyn RegValues,
        force: bool,
    ) -> StepEffect {
        self.step += 1;
        let mut effect = StepEffect::default();
        if zeroing_idiom(instr) {
            let r = instr.op0_register();
            self.regs.remove(&unit_of(r));
            if instr.rflags_modified() != 0 {
                self.regs.remove(&Unit::Flags);
            }
            return effect;
        }
        let info = factory.info(instr);
        let explicit_rsp = (0..instr.op_count())
            .any(|i| instr.op_kind(i) == OpKind::Register && instr.op_register(i).full_register() == Register::RSP);
        let mut inputs = force;
        let mut written_regs: Vec<(Register, bool)> = Vec::new();
        for used in info.used_registers() {
            let reg = used.register();
            if is_segment(reg) {
                continue;
            }
            let implicit_rsp = reg.full_register() == Register::RSP && !explicit_rsp;
            match used.access() {
                OpAccess::Read | OpAccess::CondRead => inputs |= !implicit_rsp && self.reg_tainted(reg),
                OpAccess::ReadWrite | OpAccess::ReadCondWrite => {
                    inputs |= !implicit_rsp && self.reg_tainted(reg);
                    if !implicit_rsp {
                        written_regs.push((reg, used.access() == OpAccess::ReadWrite));
                    }
                }
                OpAccess::Write => {
                    if !implicit_rsp {
                        written_regs.push((reg, true));
                    }
                }
                OpAccess::CondWrite => {
                    if !implicit_rsp {
                        written_regs.push((reg, false));
                    }
                }
                OpAccess::None | OpAccess::NoMemAccess => {}
            }
        }
        if instr.rflags_read() != 0 && self.regs.contains(&Unit::Flags) {
            inputs = true;
            if instr.flow_control() == FlowControl::ConditionalBranch {
                effect.tainted_branch = true;
            }
        }
        let mut written_mem: Vec<(MemRange, bool)> = Vec::new();
        for mem in info.used_memory() {
            let len = mem.memory_size().size() as u64;
            if len == 0 || mem.access() == OpAccess::NoMemAccess {
                continue;
            }
            // The address registers count as inputs (a corrupted pointer
            // reads or writes the wrong place), except the implicit RSP of
            // a push or pop.
            for r in [mem.base(), mem.index()] {
                if r != Register::None && (explicit_rsp || r.full_register() != Register::RSP) {
                    inputs |= self.reg_tainted(r);
                }
            }
            let Some(address) = mem.virtual_address(0, |reg, _, _| {
                if is_segment(reg) {
                    Some(regs.segment_base(reg))
                } else {
                    regs.value(reg.full_register()).map(|v| truncate(v, reg))
                }
            }) else {
                continue;
            };
            let range = MemRange::new(address, len);
            match mem.access() {
                OpAccess::Read | OpAccess::CondRead => {
                    if self.mem_tainted(range) {
                        inputs = true;
                        effect.tainted_reads.push(range);
                    }
                }
                OpAccess::ReadWrite | OpAccess::ReadCondWrite => {
                    if self.mem_tainted(range) {
                        inputs = true;
                        effect.tainted_reads.push(range);
                    }
                    written_mem.push((range, mem.access() == OpAccess::ReadWrite));
                }
                OpAccess::Write => written_mem.push((range, true)),
                OpAccess::CondWrite => written_mem.push((range, false)),
                OpAccess::None | OpAccess::NoMemAccess => {}
            }
        }
        effect.inputs_tainted = inputs;
        for (reg, certain) in written_regs {
            let full = unit_of(reg);
            if full == Unit::Reg(Register::RIP) {
                continue;
            }
            if inputs {
                self.regs.insert(full);
            } else if certain && replaces_whole(reg) {
                self.regs.remove(&full);
            }
        }
        if instr.rflags_modified() != 0 {
            if inputs {
                self.regs.insert(Unit::Flags);
            } else {
                self.regs.remove(&Unit::Flags);
            }
        }
        for (range, certain) in written_mem {
            if inputs {
                self.taint_mem(range);
                effect.tainted_writes.push(range);
            } else if certain && self.mem_tainted(range) {
                self.clean_mem(range);
                effect.cleaned.push(range);
            }
        }
        // Control flow through a tainted value: an indirect jump or call on
        // a tainted register, or a return through a tainted slot.
        let indirect = matches!(
            instr.flow_control(),
            FlowControl::IndirectBranch | FlowControl::IndirectCall | FlowControl::Return
        );
        if indirect && inputs && !force {
            effect.tainted_jump = true;
        }
        effect
    }
}

/// Whether a conditional instruction's condition holds for `rflags`.
pub fn condition_holds(cc: ConditionCode, rflags: u64) -> bool {
    let f = |bit: u32| rflags & (1 << bit) != 0;
    let (cf, pf, zf, sf, of) = (f(0), f(2), f(6), f(7), f(11));
    match cc {
        ConditionCode::None => true,
        ConditionCode::o => of,
        ConditionCode::no => !of,
        ConditionCode::b => cf,
        ConditionCode::ae => !cf,
        ConditionCode::e => zf,
        ConditionCode::ne => !zf,
        ConditionCode::be => cf || zf,
        ConditionCode::a => !cf && !zf,
        ConditionCode::s => sf,
        ConditionCode::ns => !sf,
        ConditionCode::p => pf,
        ConditionCode::np => !pf,
        ConditionCode::l => sf != of,
        ConditionCode::ge => sf == of,
        ConditionCode::le => zf || sf != of,
        ConditionCode::g => !zf && sf == of,
    }
}

fn unit_of(reg: Register) -> Unit {
    Unit::Reg(reg.full_register())
}

fn is_segment(reg: Register) -> bool {
    reg.is_segment_register()
}

/// `xor r,r`, `sub r,r` and their vector forms produce zero whatever the
/// register held.
pub(crate) fn zeroing_idiom(instr: &Instruction) -> bool {
    matches!(
        instr.mnemonic(),
        Mnemonic::Xor | Mnemonic::Sub | Mnemonic::Pxor | Mnemonic::Xorps | Mnemonic::Xorpd | Mnemonic::Vpxor
    ) && instr.op_count() >= 2
        && instr.op0_kind() == OpKind::Register
        && instr.op1_kind() == OpKind::Register
        && instr.op0_register() == instr.op1_register()
}

/// A write to this register leaves nothing of the old full register: the
/// 64-bit registers, and the 32-bit ones, which the CPU zero-extends.
fn replaces_whole(reg: Register) -> bool {
    reg.is_gpr64() || reg.is_gpr32() || reg == reg.full_register()
}

fn truncate(value: u64, reg: Register) -> u64 {
    if reg.is_gpr32() {
        value & 0xffff_ffff
    } else if reg.is_gpr16() {
        value & 0xffff
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{code_asm::*, Decoder, DecoderOptions};

    struct Regs(Vec<(Register, u64)>);
    impl RegValues for Regs {
        fn value(&self, reg: Register) -> Option<u64> {
            self.0.iter().find(|(r, _)| *r == reg).map(|(_, v)| *v).or(Some(0))
        }
        fn segment_base(&self, seg: Register) -> u64 {
            if seg == Register::GS {
                0x1000_0000
            } else {
                0
            }
        }
    }

    fn assemble(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<Instruction> {
        let mut a = CodeAssembler::new(64).unwrap();
        f(&mut a).unwrap();
        let bytes = a.assemble(0xffff_ffff_8100_0000).unwrap();
        let mut d = Decoder::with_ip(64, &bytes, 0xffff_ffff_8100_0000, DecoderOptions::NONE);
        let mut out = Vec::new();
        while d.can_decode() {
            out.push(d.decode());
        }
        out
    }

    fn run(taint: &mut Taint, instrs: &[Instruction], regs: &Regs) -> Vec<StepEffect> {
        let mut f = InstructionInfoFactory::new();
        instrs.iter().map(|i| taint.step(&mut f, i, regs, false)).collect()
    }

    #[test]
    fn a_move_carries_taint_and_an_overwrite_removes_it() {
        let mut t = Taint::new();
        t.taint_reg(Register::RAX);
        let code = assemble(|a| {
            a.mov(rbx, rax)?;
            a.mov(rax, 5u64)?;
            a.mov(ecx, ebx)?;
            a.mov(rbx, rdx)
        });
        run(&mut t, &code, &Regs(vec![]));
        assert!(!t.reg_tainted(Register::RAX), "rax overwritten by a constant");
        assert!(!t.reg_tainted(Register::RBX), "rbx overwritten by clean rdx");
        assert!(t.reg_tainted(Register::RCX), "ecx took rbx's taint");
    }

    #[test]
    fn stores_and_loads_go_through_memory_by_byte() {
        let mut t = Taint::new();
        t.taint_reg(Register::RSI);
        let regs = Regs(vec![(Register::RDI, 0x5000)]);
        let code = assemble(|a| {
            a.mov(dword_ptr(rdi + 8), esi)?;
            a.mov(al, byte_ptr(rdi + 11))?;
            a.mov(rdx, qword_ptr(rdi + 16))
        });
        let effects = run(&mut t, &code, &regs);
        assert_eq!(effects[0].tainted_writes, vec![MemRange::new(0x5008, 4)]);
        assert_eq!(effects[1].tainted_reads, vec![MemRange::new(0x500b, 1)]);
        assert!(t.reg_tainted(Register::RAX));
        assert!(!t.reg_tainted(Register::RDX), "bytes 0x5010.. were never tainted");
        assert_eq!(t.mem_len(), 4);
    }

    #[test]
    fn a_partial_register_write_keeps_the_old_taint() {
        let mut t = Taint::new();
        t.taint_reg(Register::RAX);
        run(&mut t, &assemble(|a| a.mov(al, 1u32)), &Regs(vec![]));
        assert!(t.reg_tainted(Register::RAX), "the upper 56 bits still carry the error");
        run(&mut t, &assemble(|a| a.mov(eax, 1u32)), &Regs(vec![]));
        assert!(!t.reg_tainted(Register::RAX), "a 32-bit write zero-extends");
    }

    #[test]
    fn push_and_pop_move_taint_through_the_stack_without_tainting_rsp() {
        let mut t = Taint::new();
        t.taint_reg(Register::RBX);
        let code = assemble(|a| a.push(rbx));
        let effects = run(&mut t, &code, &Regs(vec![(Register::RSP, 0x8000)]));
        assert_eq!(effects[0].tainted_writes, vec![MemRange::new(0x7ff8, 8)]);
        assert!(!t.reg_tainted(Register::RSP));
        let code = assemble(|a| a.pop(r12));
        run(&mut t, &code, &Regs(vec![(Register::RSP, 0x7ff8)]));
        assert!(t.reg_tainted(Register::R12));
        assert!(!t.reg_tainted(Register::RSP));
    }

    #[test]
    fn a_corrupted_pointer_taints_what_it_loads_and_where_it_stores() {
        let mut t = Taint::new();
        t.taint_reg(Register::RDI);
        let code = assemble(|a| {
            a.mov(rax, qword_ptr(rdi))?;
            a.mov(qword_ptr(rdi + 8), rcx)
        });
        let effects = run(&mut t, &code, &Regs(vec![(Register::RDI, 0x9000)]));
        assert!(t.reg_tainted(Register::RAX));
        assert_eq!(effects[1].tainted_writes, vec![MemRange::new(0x9008, 8)]);
    }

    #[test]
    fn zeroing_idioms_and_flags() {
        let mut t = Taint::new();
        t.taint_reg(Register::RAX);
        let code = assemble(|a| {
            a.cmp(rax, 3)?;
            a.xor(eax, eax)
        });
        let effects = run(&mut t, &code, &Regs(vec![]));
        assert!(effects[0].inputs_tainted);
        assert!(!t.reg_tainted(Register::RAX));
        assert!(!t.regs().any(|u| u == Unit::Flags), "xor rewrites the flags from nothing");
    }

    #[test]
    fn a_branch_on_tainted_flags_and_a_return_through_a_tainted_slot_are_reported() {
        let mut t = Taint::new();
        t.taint_reg(Register::RAX);
        let mut a = CodeAssembler::new(64).unwrap();
        let mut l = a.create_label();
        a.cmp(rax, 3).unwrap();
        a.jne(l).unwrap();
        a.set_label(&mut l).unwrap();
        a.ret().unwrap();
        let bytes = a.assemble(0x1000).unwrap();
        let mut d = Decoder::with_ip(64, &bytes, 0x1000, DecoderOptions::NONE);
        let code: Vec<Instruction> = std::iter::from_fn(|| d.can_decode().then(|| d.decode())).collect();
        t.taint_mem(MemRange::new(0x8000, 8));
        let effects = run(&mut t, &code, &Regs(vec![(Register::RSP, 0x8000)]));
        assert!(effects[1].tainted_branch);
        assert!(effects[2].tainted_jump);
        assert_eq!(effects[2].tainted_reads, vec![MemRange::new(0x8000, 8)]);
    }

    #[test]
    fn per_cpu_accesses_use_the_gs_base() {
        let mut t = Taint::new();
        t.taint_mem(MemRange::new(0x1000_0040, 8));
        let code = assemble(|a| a.mov(rax, qword_ptr(0x40).gs()));
        let effects = run(&mut t, &code, &Regs(vec![]));
        assert_eq!(effects[0].tainted_reads, vec![MemRange::new(0x1000_0040, 8)]);
        assert!(t.reg_tainted(Register::RAX));
    }

    #[test]
    fn cells_are_aligned_and_most_recent_first() {
        let mut t = Taint::new();
        t.taint_mem(MemRange::new(0x100, 2));
        t.step = 5;
        t.taint_mem(MemRange::new(0x20f, 2));
        assert_eq!(t.cells(8), vec![0x208, 0x210, 0x100]);
    }

    #[test]
    fn conditions() {
        assert!(condition_holds(ConditionCode::e, 1 << 6));
        assert!(!condition_holds(ConditionCode::ne, 1 << 6));
        assert!(condition_holds(ConditionCode::l, 1 << 7));
        assert!(!condition_holds(ConditionCode::l, (1 << 7) | (1 << 11)));
        assert!(condition_holds(ConditionCode::a, 0));
    }
}
