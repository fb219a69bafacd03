//! The activation rule for register flips: a flipped bit is activated
//! when an instruction reads it before any instruction overwrites it,
//! as a code fault is when its instruction executes and a memory flip when
//! its byte is read. This module judges one instruction; the injector
//! single-steps the guest from the flip and asks it at every step.
//!
//! The judgement is per bit: reading `eax` does not read bit 40 of `rax`,
//! writing `al` overwrites bits 0-7 only, and a 32-bit write overwrites the
//! whole register (the CPU zero-extends it). An address register of a
//! memory operand is read (a flipped pointer accesses the wrong place), and
//! so is RSP when a push, pop, call or return uses it implicitly.

use iced_x86::{Instruction, InstructionInfoFactory, Mnemonic, OpAccess, Register, RflagsBits};

use crate::fault::FlipReg;

/// What one instruction does to a flipped register bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitUse {
    /// It reads the bit: the flip is activated.
    Read,
    /// It overwrites the bit without reading it: the flip is masked.
    Overwritten,
    /// Neither.
    Untouched,
}

/// What `instr` does to bit `bit` of `reg` (RIP is not asked: the next
/// fetch reads it).
pub fn bit_use(factory: &mut InstructionInfoFactory, instr: &Instruction, reg: FlipReg, bit: u8) -> BitUse {
    if reg == FlipReg::Rflags {
        return flags_use(instr, bit);
    }
    let Some(full) = full_register(reg) else { return BitUse::Untouched };
    if crate::trace::taint::zeroing_idiom(instr) {
        // `xor eax, eax` names eax as a source, but its result does not
        // depend on it.
        let zeroed = instr.op0_register();
        return if zeroed.full_register() == full && (zeroed.is_gpr32() || covers(zeroed, full, bit)) {
            BitUse::Overwritten
        } else {
            BitUse::Untouched
        };
    }
    let info = factory.info(instr);
    let mut overwritten = false;
    for used in info.used_registers() {
        let r = used.register();
        if r.full_register() != full {
            continue;
        }
        match used.access() {
            OpAccess::Read | OpAccess::CondRead | OpAccess::ReadWrite | OpAccess::ReadCondWrite
                if covers(r, full, bit) =>
            {
                return BitUse::Read;
            }
            OpAccess::Write => overwritten |= r.is_gpr64() || r.is_gpr32() || covers(r, full, bit),
            _ => {}
        }
    }
    for mem in info.used_memory() {
        if [mem.base(), mem.index()].iter().any(|r| *r != Register::None && covers(*r, full, bit)) {
            return BitUse::Read;
        }
    }
    if overwritten {
        BitUse::Overwritten
    } else {
        BitUse::Untouched
    }
}

/// The flags: what the instruction reads or writes of the one flag at
/// `bit`. Bits decoders do not model (TF, IOPL, NT, RF, ...) are read by
/// `pushf` and written by `popf` and `iret`, and left alone otherwise.
fn flags_use(instr: &Instruction, bit: u8) -> BitUse {
    let Some(flag) = flag_of(bit) else {
        return match instr.mnemonic() {
            Mnemonic::Pushf | Mnemonic::Pushfq | Mnemonic::Pushfd => BitUse::Read,
            Mnemonic::Popf | Mnemonic::Popfq | Mnemonic::Popfd | Mnemonic::Iretq | Mnemonic::Iretd => {
                BitUse::Overwritten
            }
            _ => BitUse::Untouched,
        };
    };
    if instr.rflags_read() & flag != 0 {
        BitUse::Read
    } else if instr.rflags_modified() & flag != 0 {
        BitUse::Overwritten
    } else {
        BitUse::Untouched
    }
}

/// The decoder's flag for architectural RFLAGS bit `bit`.
fn flag_of(bit: u8) -> Option<u32> {
    Some(match bit {
        0 => RflagsBits::CF,
        2 => RflagsBits::PF,
        4 => RflagsBits::AF,
        6 => RflagsBits::ZF,
        7 => RflagsBits::SF,
        9 => RflagsBits::IF,
        10 => RflagsBits::DF,
        11 => RflagsBits::OF,
        18 => RflagsBits::AC,
        _ => return None,
    })
}

/// The decoder's name of a general-purpose register (none for RIP and
/// RFLAGS).
pub(crate) fn full_register(reg: FlipReg) -> Option<Register> {
    use Register as R;
    Some(match reg {
        FlipReg::Rax => R::RAX,
        FlipReg::Rbx => R::RBX,
        FlipReg::Rcx => R::RCX,
        FlipReg::Rdx => R::RDX,
        FlipReg::Rsi => R::RSI,
        FlipReg::Rdi => R::RDI,
        FlipReg::Rbp => R::RBP,
        FlipReg::Rsp => R::RSP,
        FlipReg::R8 => R::R8,
        FlipReg::R9 => R::R9,
        FlipReg::R10 => R::R10,
        FlipReg::R11 => R::R11,
        FlipReg::R12 => R::R12,
        FlipReg::R13 => R::R13,
        FlipReg::R14 => R::R14,
        FlipReg::R15 => R::R15,
        FlipReg::Rip | FlipReg::Rflags => return None,
    })
}

/// Whether `reg`, a part of `full`, holds bit `bit` of it.
fn covers(reg: Register, full: Register, bit: u8) -> bool {
    if reg.full_register() != full {
        return false;
    }
    let bits = match reg {
        Register::AH | Register::BH | Register::CH | Register::DH => 8..16,
        r if r.is_gpr8() => 0..8,
        r if r.is_gpr16() => 0..16,
        r if r.is_gpr32() => 0..32,
        _ => 0..64,
    };
    bits.contains(&bit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{code_asm::*, Decoder, DecoderOptions};

    fn assemble(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Instruction {
        let mut a = CodeAssembler::new(64).unwrap();
        f(&mut a).unwrap();
        let bytes = a.assemble(0xffff_ffff_8100_0000).unwrap();
        Decoder::with_ip(64, &bytes, 0xffff_ffff_8100_0000, DecoderOptions::NONE).decode()
    }

    fn judge(reg: FlipReg, bit: u8, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> BitUse {
        bit_use(&mut InstructionInfoFactory::new(), &assemble(f), reg, bit)
    }

    #[test]
    fn reads_and_overwrites_are_judged_per_bit() {
        use BitUse::*;
        let flipped = FlipReg::Rax;
        assert_eq!(judge(flipped, 40, |a| a.mov(rbx, rax)), Read);
        assert_eq!(judge(flipped, 40, |a| a.mov(ebx, eax)), Untouched, "eax holds bits 0-31 only");
        assert_eq!(judge(flipped, 3, |a| a.mov(ebx, eax)), Read);
        assert_eq!(judge(flipped, 40, |a| a.mov(eax, 1u32)), Overwritten, "a 32-bit write zero-extends");
        assert_eq!(judge(flipped, 40, |a| a.mov(al, 1u32)), Untouched, "al is bits 0-7");
        assert_eq!(judge(flipped, 5, |a| a.mov(al, 1u32)), Overwritten);
        assert_eq!(judge(flipped, 9, |a| a.mov(ah, 1u32)), Overwritten);
        assert_eq!(judge(flipped, 9, |a| a.add(rax, 1)), Read, "read-modify-write reads");
        assert_eq!(judge(flipped, 9, |a| a.xor(eax, eax)), Overwritten, "the zeroing idiom does not read");
        assert_eq!(judge(flipped, 9, |a| a.xor(ebx, ebx)), Untouched);
        assert_eq!(judge(flipped, 9, |a| a.mov(rbx, qword_ptr(rax + 8))), Read, "a pointer");
        assert_eq!(judge(flipped, 9, |a| a.pop(rax)), Overwritten);
        assert_eq!(judge(flipped, 9, |a| a.push(rax)), Read, "saving it copies it");
        assert_eq!(judge(flipped, 9, |a| a.mov(rbx, rcx)), Untouched);
    }

    #[test]
    fn rsp_is_read_by_pushes_and_returns() {
        assert_eq!(judge(FlipReg::Rsp, 12, |a| a.push(rbx)), BitUse::Read);
        assert_eq!(judge(FlipReg::Rsp, 12, |a| a.ret()), BitUse::Read);
        assert_eq!(judge(FlipReg::Rsp, 12, |a| a.mov(rbx, rcx)), BitUse::Untouched);
    }

    #[test]
    fn flags_are_read_by_branches_and_overwritten_by_compares() {
        use BitUse::*;
        let zf = 6;
        assert_eq!(judge(FlipReg::Rflags, zf, |a| a.cmp(rax, 3)), Overwritten);
        assert_eq!(judge(FlipReg::Rflags, zf, |a| a.sete(al)), Read);
        assert_eq!(judge(FlipReg::Rflags, 0, |a| a.stc()), Overwritten, "CF");
        assert_eq!(judge(FlipReg::Rflags, 0, |a| a.adc(rax, rbx)), Read, "CF");
        assert_eq!(judge(FlipReg::Rflags, zf, |a| a.mov(rax, rbx)), Untouched);
        assert_eq!(judge(FlipReg::Rflags, 8, |a| a.pushfq()), Read, "TF saved by pushf");
        assert_eq!(judge(FlipReg::Rflags, 8, |a| a.popfq()), Overwritten);
        assert_eq!(judge(FlipReg::Rflags, 8, |a| a.cmp(rax, 3)), Untouched);
    }
}
