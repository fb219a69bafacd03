//! Code mutations of the Rio/Nooks/SWIFI family on x86-64 instructions,
//! decoded and re-encoded with iced-x86. Every patch has exactly the length
//! of the instruction it replaces (NOP padding), so the code after it is
//! untouched.

use iced_x86::{
    Code, Decoder, DecoderOptions, Encoder, FlowControl, Formatter, GasFormatter, Instruction, InstructionInfoFactory,
    Mnemonic, OpAccess, OpKind, Register,
};

use super::{FlipReg, HexBytes, Patch};

/// One decoded instruction of a function.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// The decoded instruction (its `ip()` is its address).
    pub instr: Instruction,
}

impl Decoded {
    /// Its address.
    pub fn address(&self) -> u64 {
        self.instr.ip()
    }

    /// AT&T disassembly.
    pub fn asm(&self) -> String {
        format_instr(&self.instr)
    }
}

/// Disassembles one instruction in AT&T syntax, as the kernel's own
/// objdump output reads.
pub fn format_instr(instr: &Instruction) -> String {
    let mut out = String::new();
    let mut f = GasFormatter::new();
    f.options_mut().set_space_after_operand_separator(false);
    f.options_mut().set_uppercase_hex(false);
    f.format(instr, &mut out);
    out
}

/// Decodes a function's code, stopping at the first undecodable byte.
pub fn decode_function(address: u64, bytes: &[u8]) -> Vec<Decoded> {
    let mut decoder = Decoder::with_ip(64, bytes, address, DecoderOptions::NONE);
    let mut out = Vec::new();
    let mut instr = Instruction::default();
    while decoder.can_decode() {
        let at = decoder.position();
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            break;
        }
        out.push(Decoded { bytes: bytes[at..at + instr.len()].to_vec(), instr });
    }
    out
}

/// Disassembles patch bytes at `address`: every instruction, `; `-joined;
/// `(bad)` where the bytes do not decode.
pub fn disassemble(address: u64, bytes: &[u8]) -> String {
    let mut decoder = Decoder::with_ip(64, bytes, address, DecoderOptions::NONE);
    let mut parts = Vec::new();
    let mut instr = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            parts.push("(bad)".to_string());
            break;
        }
        parts.push(format_instr(&instr));
    }
    parts.join("; ")
}

/// Disassembles only the first instruction of `bytes` (a flipped bit may
/// make it longer than the bytes given: then it is `(bad)` here).
pub fn first_instruction(address: u64, bytes: &[u8]) -> String {
    let mut decoder = Decoder::with_ip(64, bytes, address, DecoderOptions::NONE);
    let instr = decoder.decode();
    if instr.is_invalid() {
        "(bad)".into()
    } else {
        format_instr(&instr)
    }
}

/// The recommended multi-byte NOPs (Intel SDM, NOP), 1 to 9 bytes.
const NOPS: [&[u8]; 9] = [
    &[0x90],
    &[0x66, 0x90],
    &[0x0f, 0x1f, 0x00],
    &[0x0f, 0x1f, 0x40, 0x00],
    &[0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
    &[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
    &[0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
];

/// `len` bytes of NOPs, as few instructions as possible.
pub fn nops(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let n = (len - out.len()).min(NOPS.len());
        out.extend_from_slice(NOPS[n - 1]);
    }
    out
}

fn patch(address: u64, bytes: Vec<u8>) -> Patch {
    let asm = disassemble(address, &bytes);
    Patch { bytes: HexBytes(bytes), asm }
}

fn is_nop_like(d: &Decoded) -> bool {
    matches!(d.instr.mnemonic(), Mnemonic::Nop | Mnemonic::Endbr64 | Mnemonic::Int3 | Mnemonic::Ud2 | Mnemonic::Pause)
}

/// NOP: deletes any instruction except NOPs, `endbr64`, `int3` and `ud2`
/// (deleting those changes nothing or only moves a BUG()).
pub fn nop(d: &Decoded) -> Option<Patch> {
    (!is_nop_like(d)).then(|| patch(d.address(), nops(d.bytes.len())))
}

/// Whether the instruction is a conditional branch (`jcc`; not `jrcxz` or
/// `loop`, which have no inverse of the same length).
pub fn is_conditional_branch(d: &Decoded) -> bool {
    d.instr.flow_control() == FlowControl::ConditionalBranch && d.instr.is_jcc_short_or_near()
}

/// BRANCH: deletes a conditional branch (the fall-through is always taken).
pub fn branch(d: &Decoded) -> Option<Patch> {
    is_conditional_branch(d).then(|| patch(d.address(), nops(d.bytes.len())))
}

fn encode(instr: &Instruction) -> Option<Vec<u8>> {
    let mut encoder = Encoder::new(64);
    encoder.encode(instr, instr.ip()).ok()?;
    Some(encoder.take_buffer())
}

/// INVERSE: inverts a conditional branch's condition (`je` <-> `jne`),
/// same target, same encoding size.
pub fn inverse(d: &Decoded) -> Option<Patch> {
    if !is_conditional_branch(d) {
        return None;
    }
    let mut instr = d.instr;
    instr.negate_condition_code();
    let bytes = encode(&instr)?;
    (bytes.len() == d.bytes.len() && bytes != d.bytes).then(|| patch(d.address(), bytes))
}

/// Whether the instruction stores into the stack frame: `mov` to
/// `disp(%rsp)` or `disp(%rbp)`.
pub fn is_frame_store(d: &Decoded) -> bool {
    let i = &d.instr;
    matches!(i.mnemonic(), Mnemonic::Mov | Mnemonic::Movq | Mnemonic::Movd)
        && i.op_count() == 2
        && i.op0_kind() == OpKind::Memory
        && matches!(i.memory_base(), Register::RSP | Register::RBP)
        && i.memory_index() == Register::None
}

/// INIT: deletes a store into the stack frame (a local is left holding
/// whatever the stack had).
pub fn init(d: &Decoded) -> Option<Patch> {
    is_frame_store(d).then(|| patch(d.address(), nops(d.bytes.len())))
}

/// The immediate of a `cmp` against a constant, as a signed value in the
/// operand's own domain, with the domain's bounds.
fn cmp_immediate(i: &Instruction) -> Option<(i64, i64, i64)> {
    if i.mnemonic() != Mnemonic::Cmp || i.op_count() != 2 {
        return None;
    }
    Some(match i.op1_kind() {
        OpKind::Immediate8 => (i64::from(i.immediate8()), 0, 0xff),
        OpKind::Immediate16 => (i64::from(i.immediate16()), 0, 0xffff),
        OpKind::Immediate32 => (i64::from(i.immediate32()), 0, 0xffff_ffff),
        OpKind::Immediate8to16 | OpKind::Immediate8to32 | OpKind::Immediate8to64 => {
            (i64::from(i.immediate8() as i8), i64::from(i8::MIN), i64::from(i8::MAX))
        }
        OpKind::Immediate32to64 => (i64::from(i.immediate32() as i32), i64::from(i32::MIN), i64::from(i32::MAX)),
        _ => return None,
    })
}

/// Whether the instruction compares against a constant.
pub fn is_bounded_compare(d: &Decoded) -> bool {
    cmp_immediate(&d.instr).is_some()
}

/// OFFBYONE: `cmp $N, x` becomes `cmp $N±1, x`, when the new bound fits
/// the same encoding.
pub fn off_by_one(d: &Decoded, delta: i8) -> Option<Patch> {
    let (value, min, max) = cmp_immediate(&d.instr)?;
    let new = value + i64::from(delta);
    if new < min || new > max {
        return None;
    }
    let mut instr = d.instr;
    match instr.op1_kind() {
        OpKind::Immediate8 => instr.set_immediate8(new as u8),
        OpKind::Immediate16 => instr.set_immediate16(new as u16),
        OpKind::Immediate32 => instr.set_immediate32(new as u32),
        OpKind::Immediate8to16 | OpKind::Immediate8to32 | OpKind::Immediate8to64 => {
            instr.set_immediate8((new as i8) as u8)
        }
        OpKind::Immediate32to64 => instr.set_immediate32((new as i32) as u32),
        _ => return None,
    }
    let bytes = encode(&instr)?;
    (bytes.len() == d.bytes.len()).then(|| patch(d.address(), bytes))
}

/// Whether the instruction is a direct near call (`call rel32`).
pub fn is_direct_call(d: &Decoded) -> bool {
    d.instr.code() == Code::Call_rel32_64 && d.bytes.len() == 5
}

/// RETZERO: `call f` becomes `xor %eax,%eax` and a 3-byte NOP: the callee
/// is skipped and its result reads as 0 (success, or NULL).
pub fn ret_zero(d: &Decoded) -> Option<Patch> {
    if !is_direct_call(d) {
        return None;
    }
    let mut bytes = vec![0x31, 0xc0];
    bytes.extend(nops(3));
    Some(patch(d.address(), bytes))
}

/// Text flip: the instruction's bytes with one bit flipped.
pub fn text_flip(d: &Decoded, bit: u16) -> Option<Patch> {
    let mut bytes = d.bytes.clone();
    let byte = bytes.get_mut(usize::from(bit / 8))?;
    *byte ^= 1 << (bit % 8);
    let asm = first_instruction(d.address(), &bytes);
    Some(Patch { bytes: HexBytes(bytes), asm })
}

fn flip_reg(reg: Register) -> Option<FlipReg> {
    if !reg.is_gpr() {
        return None;
    }
    let full = reg.full_register();
    FlipReg::GPRS.into_iter().find(|r| r.name() == format!("{full:?}").to_lowercase())
}

/// [`flip_reg`] for a register whose bits the models draw from bit 0: not
/// `ah`-`dh` (bits 8-15), where a flip of bit 0-7 of the full register
/// would miss the bits the instruction uses.
fn low_flip_reg(reg: Register) -> Option<FlipReg> {
    if matches!(reg, Register::AH | Register::BH | Register::CH | Register::DH) {
        return None;
    }
    flip_reg(reg)
}

/// DST: the general-purpose register the instruction writes as its first
/// operand, and the width of that write in bits (not `ah`-`dh`, whose bits
/// are not the low ones).
pub fn dst_reg(d: &Decoded) -> Option<(FlipReg, u8)> {
    let i = &d.instr;
    if i.op_count() == 0 || i.op0_kind() != OpKind::Register {
        return None;
    }
    let mut factory = InstructionInfoFactory::new();
    let access = factory.info(i).op0_access();
    if !matches!(access, OpAccess::Write | OpAccess::ReadWrite | OpAccess::CondWrite | OpAccess::ReadCondWrite) {
        return None;
    }
    let reg = i.op0_register();
    let r = low_flip_reg(reg).filter(|r| *r != FlipReg::Rsp)?;
    Some((r, (reg.size() * 8) as u8))
}

/// SRC: general-purpose registers the instruction reads as explicit
/// register operands (not RSP, not address registers).
pub fn src_regs(d: &Decoded) -> Vec<(FlipReg, u8)> {
    let i = &d.instr;
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(i);
    let mut out: Vec<(FlipReg, u8)> = Vec::new();
    for op in 0..i.op_count() {
        if i.op_kind(op) != OpKind::Register {
            continue;
        }
        if !matches!(info.op_access(op), OpAccess::Read | OpAccess::ReadWrite | OpAccess::ReadCondWrite) {
            continue;
        }
        let reg = i.op_register(op);
        if let Some(r) = low_flip_reg(reg).filter(|r| *r != FlipReg::Rsp) {
            if !out.iter().any(|(o, _)| *o == r) {
                out.push((r, (reg.size() * 8) as u8));
            }
        }
    }
    out
}

/// PTR: the base register of the instruction's memory operand (not RIP).
pub fn ptr_reg(d: &Decoded) -> Option<FlipReg> {
    let i = &d.instr;
    let has_memory = (0..i.op_count()).any(|op| i.op_kind(op) == OpKind::Memory);
    if !has_memory || i.is_ip_rel_memory_operand() {
        return None;
    }
    flip_reg(i.memory_base())
}

/// A memory read through a base register and a displacement, as a
/// profile-guided stack or heap flip needs it: the byte it reads is known
/// from the registers at the instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseRead {
    /// The base register (RSP for the stack, explicit or implicit: `pop`,
    /// `ret`).
    pub base: FlipReg,
    /// The displacement from it.
    pub displacement: i64,
    /// Bytes read.
    pub size: u64,
}

/// The first memory read of the instruction through a general-purpose base
/// register with no index, in the default data or stack segment (not the
/// per-CPU `%gs` area).
pub fn base_read(d: &Decoded) -> Option<BaseRead> {
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(&d.instr);
    info.used_memory().iter().find_map(|m| {
        let reads =
            matches!(m.access(), OpAccess::Read | OpAccess::ReadWrite | OpAccess::ReadCondWrite | OpAccess::CondRead);
        let plain_segment = matches!(m.segment(), iced_x86::Register::DS | iced_x86::Register::SS);
        let size = m.memory_size().size() as u64;
        if !reads || !plain_segment || m.index() != iced_x86::Register::None || size == 0 {
            return None;
        }
        let base = flip_reg(m.base())?;
        Some(BaseRead { base, displacement: m.displacement() as i64, size })
    })
}

/// Whether the instruction writes `reg` (so a source corruption must not
/// be undone after it ran).
pub fn writes_reg(d: &Decoded, reg: FlipReg) -> bool {
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(&d.instr);
    info.used_registers().iter().any(|u| {
        flip_reg(u.register()) == Some(reg)
            && matches!(
                u.access(),
                OpAccess::Write | OpAccess::ReadWrite | OpAccess::CondWrite | OpAccess::ReadCondWrite
            )
    })
}

/// Whether the instruction waits for an interrupt (`hlt`, `mwait`): a
/// single step with interrupts masked, as the injector steps, would never
/// complete.
pub fn waits(d: &Decoded) -> bool {
    matches!(d.instr.mnemonic(), Mnemonic::Hlt | Mnemonic::Mwait | Mnemonic::Monitor)
}

/// Decodes exactly one instruction from `bytes` at `address`.
pub fn decode_one(address: u64, bytes: &[u8]) -> Option<Decoded> {
    let mut decoder = Decoder::with_ip(64, bytes, address, DecoderOptions::NONE);
    let instr = decoder.decode();
    (!instr.is_invalid() && instr.len() <= bytes.len()).then(|| Decoded { bytes: bytes[..instr.len()].to_vec(), instr })
}

#[cfg(test)]
mod tests {
    use super::*;

    trait NegateCopy {
        fn negate_condition_code_copy(&self) -> iced_x86::ConditionCode;
    }

    impl NegateCopy for Instruction {
        fn negate_condition_code_copy(&self) -> iced_x86::ConditionCode {
            let mut i = *self;
            i.negate_condition_code();
            i.condition_code()
        }
    }
    use proptest::prelude::*;

    const AT: u64 = 0xffff_ffff_8100_1000;

    fn one(bytes: &[u8]) -> Decoded {
        decode_one(AT, bytes).unwrap()
    }

    fn decoded(p: &Patch) -> Vec<Instruction> {
        decode_function(AT, &p.bytes.0).into_iter().map(|d| d.instr).collect()
    }

    #[test]
    fn nop_padding_decodes_as_nops_of_the_same_length() {
        for len in 1..=15 {
            let bytes = nops(len);
            assert_eq!(bytes.len(), len);
            let all = decode_function(AT, &bytes);
            assert_eq!(all.iter().map(|d| d.bytes.len()).sum::<usize>(), len, "{len}");
            assert!(all.iter().all(|d| d.instr.mnemonic() == Mnemonic::Nop), "{len}");
        }
    }

    #[test]
    fn each_mutation_decodes_to_what_it_intends() {
        // je +0x10; jne rel32
        let je = one(&[0x74, 0x10]);
        assert_eq!(je.asm(), "je 0xffffffff81001012");
        let inv = inverse(&je).unwrap();
        assert_eq!((inv.bytes.0.as_slice(), inv.asm.as_str()), (&[0x75, 0x10][..], "jne 0xffffffff81001012"));
        let near = one(&[0x0f, 0x84, 0x00, 0x01, 0x00, 0x00]);
        let inv = inverse(&near).unwrap();
        assert_eq!(inv.bytes.0, [0x0f, 0x85, 0x00, 0x01, 0x00, 0x00]);
        assert_eq!(decoded(&inv)[0].near_branch64(), near.instr.near_branch64());
        assert!(branch(&near).unwrap().asm.starts_with("nop"));
        assert!(branch(&one(&[0xc3])).is_none());

        // mov %rdi,0x8(%rsp): a frame store; mov %rdi,0x8(%rax) is not.
        let store = one(&[0x48, 0x89, 0x7c, 0x24, 0x08]);
        assert_eq!(store.asm(), "mov %rdi,8(%rsp)");
        let p = init(&store).unwrap();
        assert_eq!(p.bytes.0.len(), 5);
        assert!(init(&one(&[0x48, 0x89, 0x78, 0x08])).is_none());

        // cmp $0x10,%edi -> $0xf / $0x11; cmp $0x7f,%rdi cannot grow in imm8.
        let cmp = one(&[0x83, 0xff, 0x10]);
        assert_eq!(off_by_one(&cmp, -1).unwrap().asm, "cmp $0xf,%edi");
        assert_eq!(off_by_one(&cmp, 1).unwrap().asm, "cmp $0x11,%edi");
        assert!(off_by_one(&one(&[0x48, 0x83, 0xff, 0x7f]), 1).is_none());
        assert_eq!(off_by_one(&one(&[0x48, 0x83, 0xff, 0x7f]), -1).unwrap().asm, "cmp $0x7e,%rdi");

        // call rel32 -> xor %eax,%eax; nopl (%rax)
        let call = one(&[0xe8, 0x10, 0x00, 0x00, 0x00]);
        let rz = ret_zero(&call).unwrap();
        assert_eq!(rz.asm, "xor %eax,%eax; nopl (%rax)");
        assert!(ret_zero(&one(&[0xff, 0xd0])).is_none(), "indirect call");

        // push %rax, bit 3 -> pop %rax
        let push = one(&[0x50]);
        assert_eq!(text_flip(&push, 3).unwrap().asm, "pop %rax");

        // add %rsi,%rdi: dst rdi, srcs rdi and rsi; mov (%rbx),%eax: ptr rbx.
        let add = one(&[0x48, 0x01, 0xf7]);
        assert_eq!(dst_reg(&add), Some((FlipReg::Rdi, 64)));
        assert_eq!(src_regs(&add), vec![(FlipReg::Rdi, 64), (FlipReg::Rsi, 64)]);
        // test $2,%dh reads bits 8-15 of rdx, not the bits a flip draws.
        assert!(src_regs(&one(&[0xf6, 0xc6, 0x02])).is_empty());
        let load = one(&[0x8b, 0x03]);
        assert_eq!(ptr_reg(&load), Some(FlipReg::Rbx));
        assert_eq!(dst_reg(&load), Some((FlipReg::Rax, 32)));
        assert!(writes_reg(&load, FlipReg::Rax) && !writes_reg(&load, FlipReg::Rbx));
        assert_eq!(ptr_reg(&one(&[0x48, 0x8b, 0x05, 0, 0, 0, 0])), None, "rip-relative");
        assert!(nop(&one(&[0xf3, 0x0f, 0x1e, 0xfa])).is_none(), "endbr64");
    }

    proptest! {
        /// Whatever the bytes, every mutation that applies keeps the
        /// length, and NOP-style ones decode to the intended instructions.
        #[test]
        fn mutations_keep_length_and_intent(bytes in proptest::collection::vec(any::<u8>(), 1..16), bit in 0u16..120) {
            let Some(d) = decode_one(AT, &bytes) else { return Ok(()) };
            let len = d.bytes.len();
            for p in [nop(&d), branch(&d), init(&d)].into_iter().flatten() {
                prop_assert_eq!(p.bytes.0.len(), len);
                prop_assert!(decoded(&p).iter().all(|i| i.mnemonic() == Mnemonic::Nop));
            }
            if let Some(p) = inverse(&d) {
                prop_assert_eq!(p.bytes.0.len(), len);
                let i = decoded(&p)[0];
                prop_assert_eq!(i.condition_code(), d.instr.negate_condition_code_copy());
                prop_assert_eq!(i.near_branch_target(), d.instr.near_branch_target());
            }
            for delta in [-1i8, 1] {
                if let Some(p) = off_by_one(&d, delta) {
                    prop_assert_eq!(p.bytes.0.len(), len);
                    let i = decoded(&p)[0];
                    prop_assert_eq!(i.mnemonic(), Mnemonic::Cmp);
                    prop_assert_eq!(cmp_immediate(&i).unwrap().0 - cmp_immediate(&d.instr).unwrap().0, i64::from(delta));
                }
            }
            if let Some(p) = ret_zero(&d) {
                prop_assert_eq!(p.bytes.0.len(), 5);
                prop_assert_eq!(decoded(&p)[0].code(), Code::Xor_rm32_r32);
            }
            if let Some(p) = text_flip(&d, bit % (len as u16 * 8)) {
                prop_assert_eq!(p.bytes.0.len(), len);
                let diff: u32 = p.bytes.0.iter().zip(&d.bytes).map(|(a, b)| (a ^ b).count_ones()).sum();
                prop_assert_eq!(diff, 1);
            }
        }
    }
}
