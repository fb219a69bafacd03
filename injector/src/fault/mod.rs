//! Fault models, targets and triggers: what a fault is, as a serde value
//! that names everything needed to apply it again and says in one line
//! what it does.
//!
//! A [`FaultSpec`] holds a [`FaultModel`] (what is corrupted and how), a
//! [`Target`] (where), a [`Trigger`] (when) and a [`Persistence`]. Not
//! every combination makes sense (a NOP needs an instruction, a data flip
//! an address); [`FaultSpec::new`] refuses the others and deserialization
//! goes through it, so a `FaultSpec` value is always applicable.
//!
//! - [`mutate`]: the code mutations, decoded and re-encoded with iced-x86;
//! - [`generate`]: fault number `i` of a campaign as a pure function of
//!   the seed, `i` and the kernel image.

pub mod generate;
pub mod mutate;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::gdb::Reg;

pub use generate::{generate, GenerateError, Generator, Guide, TargetSelection, Weighting};

/// Bytes that travel as a hex string in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HexBytes(pub Vec<u8>);

impl Serialize for HexBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::gdb::hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for HexBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        crate::gdb::hex::decode(text.as_bytes()).map(HexBytes).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for HexBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|b| format!("{b:02x}")).collect();
        f.write_str(&parts.join(" "))
    }
}

/// A register a register bit flip may hit: the general-purpose registers,
/// RSP, RIP and RFLAGS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlipReg {
    /// rax
    Rax,
    /// rbx
    Rbx,
    /// rcx
    Rcx,
    /// rdx
    Rdx,
    /// rsi
    Rsi,
    /// rdi
    Rdi,
    /// rbp
    Rbp,
    /// rsp
    Rsp,
    /// r8
    R8,
    /// r9
    R9,
    /// r10
    R10,
    /// r11
    R11,
    /// r12
    R12,
    /// r13
    R13,
    /// r14
    R14,
    /// r15
    R15,
    /// rip
    Rip,
    /// rflags (gdb's `eflags`)
    Rflags,
}

impl FlipReg {
    /// Every register, in encoding order, then RIP and RFLAGS.
    pub const ALL: [FlipReg; 18] = [
        FlipReg::Rax,
        FlipReg::Rcx,
        FlipReg::Rdx,
        FlipReg::Rbx,
        FlipReg::Rsp,
        FlipReg::Rbp,
        FlipReg::Rsi,
        FlipReg::Rdi,
        FlipReg::R8,
        FlipReg::R9,
        FlipReg::R10,
        FlipReg::R11,
        FlipReg::R12,
        FlipReg::R13,
        FlipReg::R14,
        FlipReg::R15,
        FlipReg::Rip,
        FlipReg::Rflags,
    ];

    /// The general-purpose registers (RSP included).
    pub const GPRS: [FlipReg; 16] = {
        let mut out = [FlipReg::Rax; 16];
        let mut i = 0;
        while i < 16 {
            out[i] = FlipReg::ALL[i];
            i += 1;
        }
        out
    };

    /// The gdb register.
    pub fn gdb(self) -> Reg {
        match self {
            FlipReg::Rax => Reg::Rax,
            FlipReg::Rbx => Reg::Rbx,
            FlipReg::Rcx => Reg::Rcx,
            FlipReg::Rdx => Reg::Rdx,
            FlipReg::Rsi => Reg::Rsi,
            FlipReg::Rdi => Reg::Rdi,
            FlipReg::Rbp => Reg::Rbp,
            FlipReg::Rsp => Reg::Rsp,
            FlipReg::R8 => Reg::R8,
            FlipReg::R9 => Reg::R9,
            FlipReg::R10 => Reg::R10,
            FlipReg::R11 => Reg::R11,
            FlipReg::R12 => Reg::R12,
            FlipReg::R13 => Reg::R13,
            FlipReg::R14 => Reg::R14,
            FlipReg::R15 => Reg::R15,
            FlipReg::Rip => Reg::Rip,
            FlipReg::Rflags => Reg::Eflags,
        }
    }

    /// Lower-case name (`rax`, `rflags`).
    pub fn name(self) -> &'static str {
        match self {
            FlipReg::Rflags => "rflags",
            other => other.gdb().name(),
        }
    }

    /// Bits a flip may choose: all 64, except in RFLAGS, where only the
    /// architectural status and control flags (CF PF AF ZF SF TF IF DF OF)
    /// mean anything: the rest are reserved or system bits QEMU keeps.
    pub fn bits(self) -> &'static [u8] {
        const ALL: [u8; 64] = {
            let mut out = [0u8; 64];
            let mut i = 0;
            while i < 64 {
                out[i] = i as u8;
                i += 1;
            }
            out
        };
        match self {
            FlipReg::Rflags => &[0, 2, 4, 6, 7, 8, 9, 10, 11],
            _ => &ALL,
        }
    }
}

impl fmt::Display for FlipReg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An instruction rewritten in place: replacement bytes, as long as the
/// original instruction, and their disassembly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Patch {
    /// The bytes written over the instruction.
    pub bytes: HexBytes,
    /// What the first replaced instruction now reads as (AT&T syntax).
    pub asm: String,
}

/// What a fault corrupts, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FaultModel {
    /// Flip one bit of a register when the trigger fires.
    RegFlip {
        /// The register.
        reg: FlipReg,
        /// The bit (0 = least significant).
        bit: u8,
    },
    /// Flip one bit of a byte in kernel `.data`/`.bss`.
    DataFlip {
        /// The bit of the byte (0-7).
        bit: u8,
    },
    /// Flip one bit of a byte on the current task's kernel stack.
    StackFlip {
        /// The bit of the byte (0-7).
        bit: u8,
    },
    /// Flip one bit of a byte in the heap object a register points to.
    HeapFlip {
        /// The bit of the byte (0-7).
        bit: u8,
    },
    /// Flip one bit of a kernel function's code.
    TextFlip {
        /// The bit within the instruction (0 = bit 0 of its first byte).
        bit: u16,
        /// The flipped instruction bytes.
        patch: Patch,
    },
    /// Delete an instruction (NOPs of the same length).
    Nop {
        /// The NOPs.
        patch: Patch,
    },
    /// Delete a conditional branch: the fall-through path is always taken.
    Branch {
        /// The NOPs.
        patch: Patch,
    },
    /// Invert a conditional branch's condition.
    Inverse {
        /// The inverted branch.
        patch: Patch,
    },
    /// Delete a store into the stack frame (a local left uninitialized).
    Init {
        /// The NOPs.
        patch: Patch,
    },
    /// Change a comparison's immediate bound by one.
    OffByOne {
        /// +1 or -1.
        delta: i8,
        /// The changed comparison.
        patch: Patch,
    },
    /// Replace a `call rel32` by `xor %eax,%eax` and NOPs: the callee is
    /// skipped and "returns" zero.
    RetZero {
        /// The replacement.
        patch: Patch,
    },
    /// Flip a bit of the register the instruction writes, right after it
    /// executed.
    Dst {
        /// The destination register.
        reg: FlipReg,
        /// The bit.
        bit: u8,
    },
    /// Flip a bit of a register the instruction reads, for that execution
    /// only (restored after it unless the instruction wrote it).
    Src {
        /// The source register.
        reg: FlipReg,
        /// The bit.
        bit: u8,
    },
    /// Flip a bit of the base register of the instruction's memory operand,
    /// for that execution only: the access goes to a wrong address.
    Ptr {
        /// The base register.
        reg: FlipReg,
        /// The bit.
        bit: u8,
    },
}

/// Names of the fault models, for selection on the command line and as the
/// `model` of stored results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// [`FaultModel::RegFlip`]
    RegFlip,
    /// [`FaultModel::DataFlip`]
    DataFlip,
    /// [`FaultModel::StackFlip`]
    StackFlip,
    /// [`FaultModel::HeapFlip`]
    HeapFlip,
    /// [`FaultModel::TextFlip`]
    TextFlip,
    /// [`FaultModel::Nop`]
    Nop,
    /// [`FaultModel::Branch`]
    Branch,
    /// [`FaultModel::Inverse`]
    Inverse,
    /// [`FaultModel::Init`]
    Init,
    /// [`FaultModel::OffByOne`]
    OffByOne,
    /// [`FaultModel::RetZero`]
    RetZero,
    /// [`FaultModel::Dst`]
    Dst,
    /// [`FaultModel::Src`]
    Src,
    /// [`FaultModel::Ptr`]
    Ptr,
}

impl ModelKind {
    /// Every model.
    pub const ALL: [ModelKind; 14] = [
        ModelKind::RegFlip,
        ModelKind::DataFlip,
        ModelKind::StackFlip,
        ModelKind::HeapFlip,
        ModelKind::TextFlip,
        ModelKind::Nop,
        ModelKind::Branch,
        ModelKind::Inverse,
        ModelKind::Init,
        ModelKind::OffByOne,
        ModelKind::RetZero,
        ModelKind::Dst,
        ModelKind::Src,
        ModelKind::Ptr,
    ];

    /// The kebab-case name (`reg-flip`, `off-by-one`).
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::RegFlip => "reg-flip",
            ModelKind::DataFlip => "data-flip",
            ModelKind::StackFlip => "stack-flip",
            ModelKind::HeapFlip => "heap-flip",
            ModelKind::TextFlip => "text-flip",
            ModelKind::Nop => "nop",
            ModelKind::Branch => "branch",
            ModelKind::Inverse => "inverse",
            ModelKind::Init => "init",
            ModelKind::OffByOne => "off-by-one",
            ModelKind::RetZero => "ret-zero",
            ModelKind::Dst => "dst",
            ModelKind::Src => "src",
            ModelKind::Ptr => "ptr",
        }
    }

    /// Whether the model rewrites code bytes (and so has a [`Patch`]).
    pub fn patches_code(self) -> bool {
        matches!(
            self,
            ModelKind::TextFlip
                | ModelKind::Nop
                | ModelKind::Branch
                | ModelKind::Inverse
                | ModelKind::Init
                | ModelKind::OffByOne
                | ModelKind::RetZero
        )
    }

    /// Whether the model acts on one instruction (a patch, or a register
    /// corrupted when that instruction executes).
    pub fn needs_instruction(self) -> bool {
        self.patches_code() || matches!(self, ModelKind::Dst | ModelKind::Src | ModelKind::Ptr)
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown model name.
#[derive(Debug, thiserror::Error)]
#[error("unknown fault model `{0}`: the models are reg-flip, data-flip, stack-flip, heap-flip, text-flip, nop, branch, inverse, init, off-by-one, ret-zero, dst, src, ptr")]
pub struct UnknownModel(String);

impl std::str::FromStr for ModelKind {
    type Err = UnknownModel;
    fn from_str(s: &str) -> Result<Self, UnknownModel> {
        ModelKind::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| UnknownModel(s.to_string()))
    }
}

impl FaultModel {
    /// Its kind.
    pub fn kind(&self) -> ModelKind {
        match self {
            FaultModel::RegFlip { .. } => ModelKind::RegFlip,
            FaultModel::DataFlip { .. } => ModelKind::DataFlip,
            FaultModel::StackFlip { .. } => ModelKind::StackFlip,
            FaultModel::HeapFlip { .. } => ModelKind::HeapFlip,
            FaultModel::TextFlip { .. } => ModelKind::TextFlip,
            FaultModel::Nop { .. } => ModelKind::Nop,
            FaultModel::Branch { .. } => ModelKind::Branch,
            FaultModel::Inverse { .. } => ModelKind::Inverse,
            FaultModel::Init { .. } => ModelKind::Init,
            FaultModel::OffByOne { .. } => ModelKind::OffByOne,
            FaultModel::RetZero { .. } => ModelKind::RetZero,
            FaultModel::Dst { .. } => ModelKind::Dst,
            FaultModel::Src { .. } => ModelKind::Src,
            FaultModel::Ptr { .. } => ModelKind::Ptr,
        }
    }

    /// The code patch, for models that rewrite code.
    pub fn patch(&self) -> Option<&Patch> {
        match self {
            FaultModel::TextFlip { patch, .. }
            | FaultModel::Nop { patch }
            | FaultModel::Branch { patch }
            | FaultModel::Inverse { patch }
            | FaultModel::Init { patch }
            | FaultModel::OffByOne { patch, .. }
            | FaultModel::RetZero { patch } => Some(patch),
            _ => None,
        }
    }
}

/// Where a fault lands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Target {
    /// Whatever the CPU runs when the trigger fires (register flips).
    Cpu,
    /// One instruction of a kernel function.
    Instruction {
        /// The function.
        function: String,
        /// Offset of the instruction in the function.
        offset: u64,
        /// Its address (link-time = run-time: `nokaslr`).
        address: u64,
        /// The instruction's bytes in the vmlinux, checked against the
        /// guest's before anything is written.
        original: HexBytes,
        /// Its disassembly (AT&T syntax).
        asm: String,
        /// Subsystem of the function's source file (`net`, `mm`...).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subsystem: Option<String>,
    },
    /// A byte of a kernel variable in `.data` or `.bss`.
    Data {
        /// The variable.
        symbol: String,
        /// Offset of the byte in it.
        offset: u64,
        /// The byte's address.
        address: u64,
    },
    /// A byte on the kernel stack of the task running at the trigger.
    Stack {
        /// Bytes above the stack pointer (into the callers' frames).
        offset: u64,
    },
    /// A byte of the heap object a register points to at the trigger.
    Heap {
        /// The register looked at first; when it does not hold a
        /// direct-map pointer, the others are tried in [`FlipReg::GPRS`]
        /// order after it and the one used is reported.
        reg: FlipReg,
        /// Offset of the byte from the pointer.
        offset: u64,
    },
}

/// When a fault is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Trigger {
    /// After this many milliseconds of the observation window, with the
    /// CPU in kernel mode.
    Delay {
        /// Milliseconds.
        ms: u64,
    },
    /// At the `count`-th execution (1 = the first) of the target
    /// instruction, counted by a breakpoint.
    Hit {
        /// Which execution.
        count: u32,
    },
    /// At the `count`-th execution of the instruction at `address`, before
    /// it runs: a point a golden-run profile names (for a memory flip, an
    /// instruction that reads the byte; for a heap flip, one whose base
    /// register points at the object), counted by a breakpoint.
    Reach {
        /// The instruction (link-time = run-time: `nokaslr`).
        address: u64,
        /// Which execution.
        count: u32,
    },
}

/// Whether a code fault stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Persistence {
    /// Stays until the guest is restarted (code rewritten for good; DST,
    /// SRC and PTR corrupt every execution in the window).
    #[default]
    Permanent,
    /// Acts once: original bytes put back after the first execution of the
    /// mutated instruction, registers corrupted for the first execution.
    Transient,
}

/// A fault spec that cannot be applied as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The model needs another kind of target.
    #[error("a {model} fault needs {needs} target, not {got}")]
    Target {
        /// The model.
        model: ModelKind,
        /// What it needs.
        needs: &'static str,
        /// What it got.
        got: &'static str,
    },
    /// A hit trigger needs an instruction to put the breakpoint on.
    #[error(
        "a hit trigger counts executions of an instruction: give an `instruction` target, or use a `delay` trigger"
    )]
    HitWithoutInstruction,
    /// `count` is 0.
    #[error("a hit trigger counts from 1 (the first execution), not 0")]
    ZeroHits,
    /// A reach trigger on a fault that has an instruction of its own.
    #[error("a fault on an instruction is triggered by its own executions: use a `hit` trigger, not `reach`")]
    ReachOnInstruction,
    /// A bit outside its register or byte.
    #[error("bit {bit} is outside {what} (bits 0-{max})")]
    Bit {
        /// The bit.
        bit: u16,
        /// Of what.
        what: String,
        /// The highest valid bit.
        max: u16,
    },
    /// A patch that does not replace the instruction exactly.
    #[error("the patch is {patch} bytes but the instruction is {original}: code faults keep the length (NOP padding)")]
    PatchLength {
        /// Patch length.
        patch: usize,
        /// Instruction length.
        original: usize,
    },
    /// A patch that changes nothing.
    #[error("the patch equals the original bytes: the fault would change nothing")]
    PatchUnchanged,
    /// An instruction target without bytes.
    #[error("the instruction target has no original bytes")]
    EmptyInstruction,
    /// An off-by-one that is not ±1.
    #[error("off-by-one changes the bound by +1 or -1, not {0}")]
    Delta(i8),
}

/// A complete fault: model, target, trigger and persistence, checked to fit
/// together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawSpec", into = "RawSpec")]
pub struct FaultSpec {
    model: FaultModel,
    target: Target,
    trigger: Trigger,
    persistence: Persistence,
}

/// The serialized shape of a [`FaultSpec`], checked on the way in.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RawSpec {
    model: FaultModel,
    target: Target,
    trigger: Trigger,
    #[serde(default)]
    persistence: Persistence,
}

impl TryFrom<RawSpec> for FaultSpec {
    type Error = SpecError;
    fn try_from(raw: RawSpec) -> Result<FaultSpec, SpecError> {
        FaultSpec::new(raw.model, raw.target, raw.trigger, raw.persistence)
    }
}

impl From<FaultSpec> for RawSpec {
    fn from(spec: FaultSpec) -> RawSpec {
        RawSpec { model: spec.model, target: spec.target, trigger: spec.trigger, persistence: spec.persistence }
    }
}

fn target_name(target: &Target) -> &'static str {
    match target {
        Target::Cpu => "a cpu",
        Target::Instruction { .. } => "an instruction",
        Target::Data { .. } => "a data",
        Target::Stack { .. } => "a stack",
        Target::Heap { .. } => "a heap",
    }
}

impl FaultSpec {
    /// Checks that the parts fit together.
    pub fn new(
        model: FaultModel,
        target: Target,
        trigger: Trigger,
        persistence: Persistence,
    ) -> Result<FaultSpec, SpecError> {
        let kind = model.kind();
        let needs = match kind {
            k if k.needs_instruction() => "an instruction",
            ModelKind::RegFlip => "a cpu or an instruction",
            ModelKind::DataFlip => "a data",
            ModelKind::StackFlip => "a stack",
            ModelKind::HeapFlip => "a heap",
            _ => unreachable!("every model is listed"),
        };
        let fits = match (&target, kind) {
            (Target::Instruction { .. }, k) => k.needs_instruction() || k == ModelKind::RegFlip,
            (Target::Cpu, ModelKind::RegFlip) => true,
            (Target::Data { .. }, ModelKind::DataFlip) => true,
            (Target::Stack { .. }, ModelKind::StackFlip) => true,
            (Target::Heap { .. }, ModelKind::HeapFlip) => true,
            _ => false,
        };
        if !fits {
            return Err(SpecError::Target { model: kind, needs, got: target_name(&target) });
        }
        match trigger {
            Trigger::Hit { count: 0 } | Trigger::Reach { count: 0, .. } => return Err(SpecError::ZeroHits),
            Trigger::Hit { .. } if !matches!(target, Target::Instruction { .. }) => {
                return Err(SpecError::HitWithoutInstruction)
            }
            Trigger::Reach { .. } if matches!(target, Target::Instruction { .. }) => {
                return Err(SpecError::ReachOnInstruction)
            }
            _ => {}
        }
        match &model {
            FaultModel::RegFlip { reg, bit }
            | FaultModel::Dst { reg, bit }
            | FaultModel::Src { reg, bit }
            | FaultModel::Ptr { reg, bit }
                if !reg.bits().contains(bit) =>
            {
                let max = u16::from(reg.bits().last().copied().unwrap_or(63));
                return Err(SpecError::Bit { bit: u16::from(*bit), what: reg.to_string(), max });
            }
            FaultModel::DataFlip { bit } | FaultModel::StackFlip { bit } | FaultModel::HeapFlip { bit } if *bit > 7 => {
                return Err(SpecError::Bit { bit: u16::from(*bit), what: "a byte".into(), max: 7 });
            }
            FaultModel::OffByOne { delta, .. } if delta.abs() != 1 => return Err(SpecError::Delta(*delta)),
            _ => {}
        }
        if let Target::Instruction { original, .. } = &target {
            if original.0.is_empty() {
                return Err(SpecError::EmptyInstruction);
            }
            if let FaultModel::TextFlip { bit, .. } = &model {
                let max = (original.0.len() * 8 - 1) as u16;
                if *bit > max {
                    return Err(SpecError::Bit { bit: *bit, what: "the instruction".into(), max });
                }
            }
            if let Some(patch) = model.patch() {
                if patch.bytes.0.len() != original.0.len() {
                    return Err(SpecError::PatchLength { patch: patch.bytes.0.len(), original: original.0.len() });
                }
                if patch.bytes == *original {
                    return Err(SpecError::PatchUnchanged);
                }
            }
        }
        Ok(FaultSpec { model, target, trigger, persistence })
    }

    /// What is corrupted, and how.
    pub fn model(&self) -> &FaultModel {
        &self.model
    }

    /// Where.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// When.
    pub fn trigger(&self) -> Trigger {
        self.trigger
    }

    /// Whether a code fault stays.
    pub fn persistence(&self) -> Persistence {
        self.persistence
    }

    /// The same fault with another trigger (checked again).
    pub fn with_trigger(&self, trigger: Trigger) -> Result<FaultSpec, SpecError> {
        FaultSpec::new(self.model.clone(), self.target.clone(), trigger, self.persistence)
    }

    /// The same fault with another persistence.
    pub fn with_persistence(&self, persistence: Persistence) -> FaultSpec {
        FaultSpec { persistence, ..self.clone() }
    }

    /// The target function, when the fault has one.
    pub fn function(&self) -> Option<&str> {
        match &self.target {
            Target::Instruction { function, .. } => Some(function),
            _ => None,
        }
    }

    /// The target function's subsystem, when known.
    pub fn subsystem(&self) -> Option<&str> {
        match &self.target {
            Target::Instruction { subsystem, .. } => subsystem.as_deref(),
            _ => None,
        }
    }

    /// The subsystem of the target as `image` knows it: a code fault's
    /// function's, a data flip's variable's (the source file of the unit
    /// that defines it). Register, stack and heap flips have none before
    /// they land (see `inject::Applied::subsystem`).
    pub fn subsystem_in<'i>(&'i self, image: &'i crate::image::KernelImage) -> Option<&'i str> {
        match (&self.target, self.trigger) {
            (Target::Instruction { subsystem, .. }, _) => subsystem.as_deref(),
            (Target::Data { address, .. }, _) => image.symbol_at(*address).and_then(|s| s.subsystem()),
            (_, Trigger::Reach { address, .. }) => image.symbol_at(address).and_then(|s| s.subsystem()),
            _ => None,
        }
    }

    /// The function a fault lands in when that is known before it is
    /// applied: a code fault's, or the one holding a reach trigger's
    /// instruction (where a register, stack or heap flip is applied).
    pub fn function_in<'i>(&'i self, image: &'i crate::image::KernelImage) -> Option<&'i str> {
        match (&self.target, self.trigger) {
            (Target::Instruction { function, .. }, _) => Some(function),
            (Target::Data { .. }, _) => None,
            (_, Trigger::Reach { address, .. }) => {
                image.symbol_at(address).filter(|s| s.kind == crate::image::SymbolKind::Function).map(|s| s.name)
            }
            _ => None,
        }
    }

    /// [`describe`](Self::describe) with a reach trigger's instruction
    /// named as `function+0xoff`.
    pub fn describe_in(&self, image: &crate::image::KernelImage) -> String {
        let text = self.describe();
        match self.trigger {
            Trigger::Reach { address, .. } => match image.symbolize(address) {
                Some(place) => text.replace(&format!("{address:#x}"), &place),
                None => text,
            },
            _ => text,
        }
    }

    /// One line for a researcher: what, where, when. For example
    /// `text bit 3 of tcp_v4_rcv+0x40: push %rax -> pop %rax`.
    pub fn describe(&self) -> String {
        let place = match &self.target {
            Target::Cpu => String::new(),
            Target::Instruction { function, offset, .. } => format!("{function}+{offset:#x}"),
            Target::Data { symbol, offset, .. } => format!("{symbol}+{offset:#x}"),
            Target::Stack { offset } => format!("[rsp+{offset:#x}]"),
            Target::Heap { reg, offset } => format!("[{reg}+{offset:#x}]"),
        };
        let asm = match &self.target {
            Target::Instruction { asm, .. } => asm.as_str(),
            _ => "",
        };
        let what = match &self.model {
            FaultModel::RegFlip { reg, bit } if place.is_empty() => format!("register {reg} bit {bit}"),
            FaultModel::RegFlip { reg, bit } => format!("register {reg} bit {bit} at {place} ({asm})"),
            FaultModel::DataFlip { bit } => format!("data bit {bit} of {place}"),
            FaultModel::StackFlip { bit } => format!("stack bit {bit} of {place}"),
            FaultModel::HeapFlip { bit } => format!("heap bit {bit} of {place}"),
            FaultModel::TextFlip { bit, patch } => format!("text bit {bit} of {place}: {asm} -> {}", patch.asm),
            FaultModel::Nop { patch } => format!("nop {place}: {asm} -> {}", patch.asm),
            FaultModel::Branch { patch } => format!("branch deleted at {place}: {asm} -> {}", patch.asm),
            FaultModel::Inverse { patch } => format!("branch inverted at {place}: {asm} -> {}", patch.asm),
            FaultModel::Init { patch } => format!("init store deleted at {place}: {asm} -> {}", patch.asm),
            FaultModel::OffByOne { delta, patch } => {
                format!("off-by-one ({delta:+}) at {place}: {asm} -> {}", patch.asm)
            }
            FaultModel::RetZero { patch } => format!("ret-zero at {place}: {asm} -> {}", patch.asm),
            FaultModel::Dst { reg, bit } => format!("dst {reg} bit {bit} after {place}: {asm}"),
            FaultModel::Src { reg, bit } => format!("src {reg} bit {bit} at {place}: {asm}"),
            FaultModel::Ptr { reg, bit } => format!("ptr {reg} bit {bit} at {place}: {asm}"),
        };
        let when = match self.trigger {
            Trigger::Delay { ms } => format!("after {ms} ms"),
            Trigger::Hit { count: 1 } => "at the first execution".to_string(),
            Trigger::Hit { count } => format!("at execution {count}"),
            Trigger::Reach { address, count } => format!("at execution {count} of {address:#x}"),
        };
        let transient = self.persistence == Persistence::Transient && self.model.kind().needs_instruction();
        format!("{what}, {when}{}", if transient { ", transient" } else { "" })
    }
}

impl fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn() -> Target {
        Target::Instruction {
            function: "tcp_v4_rcv".into(),
            offset: 0x40,
            address: 0xffff_ffff_8190_0040,
            original: HexBytes(vec![0x50]),
            asm: "push %rax".into(),
            subsystem: Some("net".into()),
        }
    }

    #[test]
    fn describes_in_one_line() {
        let spec = FaultSpec::new(
            FaultModel::TextFlip { bit: 3, patch: Patch { bytes: HexBytes(vec![0x58]), asm: "pop %rax".into() } },
            insn(),
            Trigger::Delay { ms: 500 },
            Persistence::Permanent,
        )
        .unwrap();
        assert_eq!(spec.describe(), "text bit 3 of tcp_v4_rcv+0x40: push %rax -> pop %rax, after 500 ms");
        let reg = FaultSpec::new(
            FaultModel::RegFlip { reg: FlipReg::Rsp, bit: 12 },
            Target::Cpu,
            Trigger::Delay { ms: 10 },
            Persistence::Permanent,
        )
        .unwrap();
        assert_eq!(reg.describe(), "register rsp bit 12, after 10 ms");
    }

    #[test]
    fn a_reach_trigger_names_a_point_for_a_flip_and_never_for_a_code_fault() {
        let data = Target::Data { symbol: "jiffies_64".into(), offset: 7, address: 0xffff_ffff_8260_5007 };
        let reach = Trigger::Reach { address: 0xffff_ffff_8115_4c09, count: 2 };
        let flip =
            FaultSpec::new(FaultModel::DataFlip { bit: 2 }, data.clone(), reach, Persistence::Permanent).unwrap();
        assert_eq!(flip.describe(), "data bit 2 of jiffies_64+0x7, at execution 2 of 0xffffffff81154c09");
        let json = serde_json::to_string(&flip).unwrap();
        assert_eq!(serde_json::from_str::<FaultSpec>(&json).unwrap(), flip);
        assert!(FaultSpec::new(
            FaultModel::StackFlip { bit: 0 },
            Target::Stack { offset: 8 },
            reach,
            Persistence::Permanent
        )
        .is_ok());
        assert_eq!(
            FaultSpec::new(
                FaultModel::DataFlip { bit: 2 },
                data,
                Trigger::Reach { address: 1, count: 0 },
                Persistence::Permanent
            ),
            Err(SpecError::ZeroHits)
        );
        let nop = FaultModel::Nop { patch: Patch { bytes: HexBytes(vec![0x90]), asm: "nop".into() } };
        assert_eq!(FaultSpec::new(nop, insn(), reach, Persistence::Permanent), Err(SpecError::ReachOnInstruction));
    }

    #[test]
    fn wrong_combinations_are_refused() {
        let nop = FaultModel::Nop { patch: Patch { bytes: HexBytes(vec![0x90]), asm: "nop".into() } };
        assert!(matches!(
            FaultSpec::new(nop.clone(), Target::Cpu, Trigger::Delay { ms: 1 }, Persistence::Permanent),
            Err(SpecError::Target { .. })
        ));
        assert_eq!(
            FaultSpec::new(
                FaultModel::DataFlip { bit: 1 },
                Target::Data { symbol: "x".into(), offset: 0, address: 1 },
                Trigger::Hit { count: 1 },
                Persistence::Permanent
            ),
            Err(SpecError::HitWithoutInstruction)
        );
        assert!(matches!(
            FaultSpec::new(
                FaultModel::RegFlip { reg: FlipReg::Rflags, bit: 1 },
                Target::Cpu,
                Trigger::Delay { ms: 1 },
                Persistence::Permanent
            ),
            Err(SpecError::Bit { .. })
        ));
        let long = FaultModel::Nop { patch: Patch { bytes: HexBytes(vec![0x66, 0x90]), asm: "xchg %ax,%ax".into() } };
        assert!(matches!(
            FaultSpec::new(long, insn(), Trigger::Delay { ms: 1 }, Persistence::Permanent),
            Err(SpecError::PatchLength { .. })
        ));
    }

    #[test]
    fn json_round_trips_and_is_checked_on_the_way_in() {
        let spec = FaultSpec::new(
            FaultModel::Nop { patch: Patch { bytes: HexBytes(vec![0x90]), asm: "nop".into() } },
            insn(),
            Trigger::Hit { count: 2 },
            Persistence::Transient,
        )
        .unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains(r#""kind":"nop""#) && json.contains(r#""original":"50""#), "{json}");
        assert_eq!(serde_json::from_str::<FaultSpec>(&json).unwrap(), spec);
        let bad = json.replace(r#""kind":"instruction""#, r#""kind":"cpu""#);
        let err = serde_json::from_str::<FaultSpec>(&bad).unwrap_err().to_string();
        assert!(err.contains("needs an instruction"), "{err}");
        let names: Vec<&str> = ModelKind::ALL.iter().map(|m| m.name()).collect();
        for name in names {
            assert_eq!(name.parse::<ModelKind>().unwrap().name(), name);
            assert_eq!(serde_json::to_string(&name.parse::<ModelKind>().unwrap()).unwrap(), format!("\"{name}\""));
        }
    }
}
