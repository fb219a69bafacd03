//! x86-64 registers: where each lives in the `g` block (from the target
//! description, not hard-coded), and the block decoded into named fields.

use std::sync::Arc;

use super::hex;
use super::target_xml::{RegisterDesc, TargetDescription};

/// Why a register block could not be decoded or a register not found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The block ends before a register the typed view needs.
    #[error("the register block has {got} bytes; `{register}` needs bytes {offset}..{end}")]
    Short {
        /// Bytes received.
        got: usize,
        /// The register that does not fit.
        register: &'static str,
        /// Its offset.
        offset: usize,
        /// Its end.
        end: usize,
    },
    /// The target description has no such register.
    #[error("the target description has no register `{name}`")]
    Unknown {
        /// The name looked for.
        name: String,
    },
}

/// The registers with a typed accessor: general purpose, `rip`, `eflags`,
/// segment selectors, segment bases and control registers (QEMU's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reg {
    /// General-purpose register rax.
    Rax,
    /// General-purpose register rbx.
    Rbx,
    /// General-purpose register rcx.
    Rcx,
    /// General-purpose register rdx.
    Rdx,
    /// General-purpose register rsi.
    Rsi,
    /// General-purpose register rdi.
    Rdi,
    /// General-purpose register rbp (frame pointer).
    Rbp,
    /// General-purpose register rsp (stack pointer).
    Rsp,
    /// General-purpose register r8.
    R8,
    /// General-purpose register r9.
    R9,
    /// General-purpose register r10.
    R10,
    /// General-purpose register r11.
    R11,
    /// General-purpose register r12.
    R12,
    /// General-purpose register r13.
    R13,
    /// General-purpose register r14.
    R14,
    /// General-purpose register r15.
    R15,
    /// Instruction pointer.
    Rip,
    /// Flags (32 bits wide in QEMU's layout).
    Eflags,
    /// Code segment selector.
    Cs,
    /// Stack segment selector.
    Ss,
    /// Data segment selector.
    Ds,
    /// Extra segment selector.
    Es,
    /// FS selector.
    Fs,
    /// GS selector.
    Gs,
    /// FS base (user TLS in Linux).
    FsBase,
    /// GS base (the per-CPU area while in the kernel).
    GsBase,
    /// The swapped-out GS base (`swapgs`).
    KernelGsBase,
    /// Control register 0 (PE, WP, PG...).
    Cr0,
    /// Page-fault address.
    Cr2,
    /// Page-table root.
    Cr3,
    /// Control register 4 (PAE, SMEP, SMAP...).
    Cr4,
    /// Task priority.
    Cr8,
    /// Extended feature enables (LME, NXE...).
    Efer,
}

impl Reg {
    /// Every typed register, general-purpose registers first.
    pub const ALL: [Reg; 33] = [
        Reg::Rax,
        Reg::Rbx,
        Reg::Rcx,
        Reg::Rdx,
        Reg::Rsi,
        Reg::Rdi,
        Reg::Rbp,
        Reg::Rsp,
        Reg::R8,
        Reg::R9,
        Reg::R10,
        Reg::R11,
        Reg::R12,
        Reg::R13,
        Reg::R14,
        Reg::R15,
        Reg::Rip,
        Reg::Eflags,
        Reg::Cs,
        Reg::Ss,
        Reg::Ds,
        Reg::Es,
        Reg::Fs,
        Reg::Gs,
        Reg::FsBase,
        Reg::GsBase,
        Reg::KernelGsBase,
        Reg::Cr0,
        Reg::Cr2,
        Reg::Cr3,
        Reg::Cr4,
        Reg::Cr8,
        Reg::Efer,
    ];

    /// The name in the target description.
    pub fn name(self) -> &'static str {
        match self {
            Reg::Rax => "rax",
            Reg::Rbx => "rbx",
            Reg::Rcx => "rcx",
            Reg::Rdx => "rdx",
            Reg::Rsi => "rsi",
            Reg::Rdi => "rdi",
            Reg::Rbp => "rbp",
            Reg::Rsp => "rsp",
            Reg::R8 => "r8",
            Reg::R9 => "r9",
            Reg::R10 => "r10",
            Reg::R11 => "r11",
            Reg::R12 => "r12",
            Reg::R13 => "r13",
            Reg::R14 => "r14",
            Reg::R15 => "r15",
            Reg::Rip => "rip",
            Reg::Eflags => "eflags",
            Reg::Cs => "cs",
            Reg::Ss => "ss",
            Reg::Ds => "ds",
            Reg::Es => "es",
            Reg::Fs => "fs",
            Reg::Gs => "gs",
            Reg::FsBase => "fs_base",
            Reg::GsBase => "gs_base",
            Reg::KernelGsBase => "k_gs_base",
            Reg::Cr0 => "cr0",
            Reg::Cr2 => "cr2",
            Reg::Cr3 => "cr3",
            Reg::Cr4 => "cr4",
            Reg::Cr8 => "cr8",
            Reg::Efer => "efer",
        }
    }

    /// The register with this description name.
    pub fn from_name(name: &str) -> Option<Reg> {
        Reg::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// One register placed in the `g` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Its description.
    pub desc: RegisterDesc,
    /// Byte offset in the `g` block.
    pub offset: usize,
    /// Width in bytes.
    pub size: usize,
}

/// Where every register lives in the `g` block: registers in `regnum`
/// order, each `bitsize / 8` bytes, target (little-endian) byte order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterLayout {
    slots: Vec<Slot>,
}

impl RegisterLayout {
    /// Lays out the registers of a description.
    pub fn new(desc: &TargetDescription) -> RegisterLayout {
        let mut regs = desc.registers.clone();
        regs.sort_by_key(|r| r.regnum);
        let mut offset = 0;
        let slots = regs
            .into_iter()
            .map(|desc| {
                let size = (desc.bitsize as usize).div_ceil(8);
                let slot = Slot { desc, offset, size };
                offset += size;
                slot
            })
            .collect();
        RegisterLayout { slots }
    }

    /// A register by name.
    pub fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.desc.name == name)
    }

    /// A register by number.
    pub fn by_regnum(&self, regnum: u32) -> Option<&Slot> {
        self.slots.iter().find(|s| s.desc.regnum == regnum)
    }

    /// All registers in block order.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Size of the whole block in bytes.
    pub fn len(&self) -> usize {
        self.slots.last().map_or(0, |s| s.offset + s.size)
    }

    /// Whether the layout has no registers.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// The register block of one vCPU, with the commonly used registers as
/// fields. Fields changed here are written back by
/// [`GdbClient::write_registers`](super::GdbClient::write_registers); every
/// other register travels unchanged in the raw block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registers {
    /// General-purpose register rax.
    pub rax: u64,
    /// General-purpose register rbx.
    pub rbx: u64,
    /// General-purpose register rcx.
    pub rcx: u64,
    /// General-purpose register rdx.
    pub rdx: u64,
    /// General-purpose register rsi.
    pub rsi: u64,
    /// General-purpose register rdi.
    pub rdi: u64,
    /// General-purpose register rbp (frame pointer).
    pub rbp: u64,
    /// General-purpose register rsp (stack pointer).
    pub rsp: u64,
    /// General-purpose register r8.
    pub r8: u64,
    /// General-purpose register r9.
    pub r9: u64,
    /// General-purpose register r10.
    pub r10: u64,
    /// General-purpose register r11.
    pub r11: u64,
    /// General-purpose register r12.
    pub r12: u64,
    /// General-purpose register r13.
    pub r13: u64,
    /// General-purpose register r14.
    pub r14: u64,
    /// General-purpose register r15.
    pub r15: u64,
    /// Instruction pointer.
    pub rip: u64,
    /// Flags (32 bits wide in QEMU's layout).
    pub eflags: u32,
    /// Code segment selector.
    pub cs: u32,
    /// Stack segment selector.
    pub ss: u32,
    /// Data segment selector.
    pub ds: u32,
    /// Extra segment selector.
    pub es: u32,
    /// FS selector.
    pub fs: u32,
    /// GS selector.
    pub gs: u32,
    layout: Arc<RegisterLayout>,
    raw: Vec<u8>,
}

/// The registers kept as fields, in field order: the first 24 of
/// [`Reg::ALL`] (general-purpose, rip, eflags, segment selectors).
const FIELDS: [Reg; 24] = {
    let mut fields = [Reg::Rax; 24];
    let mut i = 0;
    while i < fields.len() {
        fields[i] = Reg::ALL[i];
        i += 1;
    }
    fields
};

impl Registers {
    /// Decodes a `g` block. The typed fields must all be present; registers
    /// past the end of a short block read as absent.
    pub fn from_block(layout: Arc<RegisterLayout>, raw: Vec<u8>) -> Result<Registers, RegisterError> {
        let mut values = [0u64; FIELDS.len()];
        for (value, reg) in values.iter_mut().zip(FIELDS) {
            let slot = layout.slot(reg.name()).ok_or(RegisterError::Unknown { name: reg.name().to_string() })?;
            let end = slot.offset + slot.size;
            let bytes = raw.get(slot.offset..end).ok_or(RegisterError::Short {
                got: raw.len(),
                register: reg.name(),
                offset: slot.offset,
                end,
            })?;
            *value = hex::le_u64(bytes);
        }
        let [rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8, r9, r10, r11, r12, r13, r14, r15, rip, eflags, cs, ss, ds, es, fs, gs] =
            values;
        // The 32-bit registers hold at most 32 bits: the truncation is exact.
        let w = |v: u64| v as u32;
        Ok(Registers {
            rax,
            rbx,
            rcx,
            rdx,
            rsi,
            rdi,
            rbp,
            rsp,
            r8,
            r9,
            r10,
            r11,
            r12,
            r13,
            r14,
            r15,
            rip,
            eflags: w(eflags),
            cs: w(cs),
            ss: w(ss),
            ds: w(ds),
            es: w(es),
            fs: w(fs),
            gs: w(gs),
            layout,
            raw,
        })
    }

    fn field(&self, reg: Reg) -> Option<u64> {
        Some(match reg {
            Reg::Rax => self.rax,
            Reg::Rbx => self.rbx,
            Reg::Rcx => self.rcx,
            Reg::Rdx => self.rdx,
            Reg::Rsi => self.rsi,
            Reg::Rdi => self.rdi,
            Reg::Rbp => self.rbp,
            Reg::Rsp => self.rsp,
            Reg::R8 => self.r8,
            Reg::R9 => self.r9,
            Reg::R10 => self.r10,
            Reg::R11 => self.r11,
            Reg::R12 => self.r12,
            Reg::R13 => self.r13,
            Reg::R14 => self.r14,
            Reg::R15 => self.r15,
            Reg::Rip => self.rip,
            Reg::Eflags => self.eflags.into(),
            Reg::Cs => self.cs.into(),
            Reg::Ss => self.ss.into(),
            Reg::Ds => self.ds.into(),
            Reg::Es => self.es.into(),
            Reg::Fs => self.fs.into(),
            Reg::Gs => self.gs.into(),
            _ => return None,
        })
    }

    fn field_mut64(&mut self, reg: Reg) -> Option<&mut u64> {
        Some(match reg {
            Reg::Rax => &mut self.rax,
            Reg::Rbx => &mut self.rbx,
            Reg::Rcx => &mut self.rcx,
            Reg::Rdx => &mut self.rdx,
            Reg::Rsi => &mut self.rsi,
            Reg::Rdi => &mut self.rdi,
            Reg::Rbp => &mut self.rbp,
            Reg::Rsp => &mut self.rsp,
            Reg::R8 => &mut self.r8,
            Reg::R9 => &mut self.r9,
            Reg::R10 => &mut self.r10,
            Reg::R11 => &mut self.r11,
            Reg::R12 => &mut self.r12,
            Reg::R13 => &mut self.r13,
            Reg::R14 => &mut self.r14,
            Reg::R15 => &mut self.r15,
            Reg::Rip => &mut self.rip,
            _ => return None,
        })
    }

    fn field_mut32(&mut self, reg: Reg) -> Option<&mut u32> {
        Some(match reg {
            Reg::Eflags => &mut self.eflags,
            Reg::Cs => &mut self.cs,
            Reg::Ss => &mut self.ss,
            Reg::Ds => &mut self.ds,
            Reg::Es => &mut self.es,
            Reg::Fs => &mut self.fs,
            Reg::Gs => &mut self.gs,
            _ => return None,
        })
    }

    /// A typed register (its low 64 bits); `None` when the block lacks it.
    pub fn get(&self, reg: Reg) -> Option<u64> {
        self.field(reg).or_else(|| self.value(reg.name()))
    }

    /// Sets a typed register in this copy (written by `write_registers`).
    pub fn set(&mut self, reg: Reg, value: u64) -> Result<(), RegisterError> {
        if let Some(f) = self.field_mut64(reg) {
            *f = value;
            return Ok(());
        }
        if let Some(f) = self.field_mut32(reg) {
            // Deliberate truncation: the register is 32 bits wide.
            *f = value as u32;
            return Ok(());
        }
        let slot = self.layout.slot(reg.name()).ok_or(RegisterError::Unknown { name: reg.name().into() })?;
        let (offset, size, got) = (slot.offset, slot.size, self.raw.len());
        let dest = self.raw.get_mut(offset..offset + size).ok_or(RegisterError::Short {
            got,
            register: reg.name(),
            offset,
            end: offset + size,
        })?;
        let bytes = value.to_le_bytes();
        let n = size.min(8);
        dest[..n].copy_from_slice(&bytes[..n]);
        Ok(())
    }

    /// The raw bytes of any register by description name (`xmm0`, `st0`...),
    /// as received (fields changed since are not reflected).
    pub fn raw(&self, name: &str) -> Option<&[u8]> {
        let slot = self.layout.slot(name)?;
        self.raw.get(slot.offset..slot.offset + slot.size)
    }

    /// The low 64 bits of any register by description name.
    pub fn value(&self, name: &str) -> Option<u64> {
        if let Some(v) = Reg::from_name(name).and_then(|r| self.field(r)) {
            return Some(v);
        }
        self.raw(name).map(hex::le_u64)
    }

    /// The layout the block was decoded with.
    pub fn layout(&self) -> &Arc<RegisterLayout> {
        &self.layout
    }

    /// The block to send with `G`: the raw block with the fields written in.
    pub fn to_block(&self) -> Vec<u8> {
        let mut raw = self.raw.clone();
        for reg in FIELDS {
            let (Some(slot), Some(value)) = (self.layout.slot(reg.name()), self.field(reg)) else { continue };
            if let Some(dest) = raw.get_mut(slot.offset..slot.offset + slot.size) {
                let bytes = value.to_le_bytes();
                let n = slot.size.min(8);
                dest[..n].copy_from_slice(&bytes[..n]);
            }
        }
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gdb::target_xml::{parse_document, TargetDescription};
    use std::collections::HashMap;

    fn qemu_layout() -> Arc<RegisterLayout> {
        let core = parse_document("i386-64bit.xml", include_str!("testdata/i386-64bit.xml")).unwrap();
        let desc = TargetDescription::assemble("i386-64bit.xml", &HashMap::from([("i386-64bit.xml".into(), core)]));
        Arc::new(RegisterLayout::new(&desc.unwrap()))
    }

    /// A `g` reply captured from QEMU 7.2 (tiny guest, interrupted in the
    /// syscall entry of write(2)), trimmed to the control registers.
    const BLOCK: &str = "010000000000000058bf5a0000c9ffff0000000000000000ffffffffffffffff010000000000000058bf5a0000c9ffff48bf5a0000c9ffff38be5a0000c9ffff0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000070773681ffffffff02020000100000001800000000000000000000000000000000000000c0732004000000000000e00e8088ffff0000000000000000330005800000000038c220040000000000808b0f00000000f00e7500000000000100000000000000010d000000000000";

    #[test]
    fn decodes_a_qemu_block() {
        let layout = qemu_layout();
        assert_eq!(layout.len(), 608);
        assert_eq!(layout.slot("rip").unwrap().offset, 128);
        assert_eq!(layout.slot("cr3").unwrap().offset, 128 + 8 + 4 + 24 + 24 + 16);
        let regs = Registers::from_block(layout, hex::decode(BLOCK.as_bytes()).unwrap()).unwrap();
        assert_eq!(regs.rip, 0xffff_ffff_8136_7770);
        assert_eq!(regs.rsp, 0xffff_c900_005a_be38);
        assert_eq!(regs.rcx, 0);
        assert_eq!(regs.rdx, u64::MAX);
        assert_eq!((regs.eflags, regs.cs, regs.ss), (0x202, 0x10, 0x18));
        assert_eq!(regs.get(Reg::GsBase), Some(0xffff_8880_0ee0_0000));
        assert_eq!(regs.get(Reg::Cr0), Some(0x8005_0033));
        assert_eq!(regs.get(Reg::Efer), Some(0xd01));
        // Past the end of the trimmed block.
        assert_eq!(regs.raw("xmm0"), None);
    }

    #[test]
    fn fields_and_raw_registers_are_written_back() {
        let mut regs = Registers::from_block(qemu_layout(), hex::decode(BLOCK.as_bytes()).unwrap()).unwrap();
        let before = regs.to_block();
        assert_eq!(hex::encode(&before), BLOCK);
        regs.rax = 0x1122_3344_5566_7788;
        regs.set(Reg::Eflags, 0x1_0000_0246).unwrap();
        regs.set(Reg::Cr2, 0xdead_beef).unwrap();
        let block = regs.to_block();
        let again = Registers::from_block(qemu_layout(), block).unwrap();
        assert_eq!(again.rax, 0x1122_3344_5566_7788);
        assert_eq!(again.eflags, 0x246);
        assert_eq!(again.get(Reg::Cr2), Some(0xdead_beef));
        assert_eq!(again.rip, regs.rip);
    }

    #[test]
    fn short_blocks_name_the_missing_register() {
        let err = Registers::from_block(qemu_layout(), vec![0; 100]).unwrap_err();
        assert_eq!(err.to_string(), "the register block has 100 bytes; `r12` needs bytes 96..104");
    }

    #[test]
    fn names_round_trip() {
        for reg in Reg::ALL {
            assert_eq!(Reg::from_name(reg.name()), Some(reg));
        }
    }
}
