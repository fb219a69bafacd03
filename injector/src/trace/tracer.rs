//! Following an error through the guest: short-range taint tracking by
//! single-stepping from the activation, then long-range read watchpoints on
//! the memory it left tainted while the workload runs on.
//!
//! Short range: every step reads the registers (`g`), decodes the
//! instruction at RIP (bytes read from the guest once per address, so the
//! injected patch is what is decoded) and propagates taint with
//! [`Taint::step`]. The steps run with QEMU's default single-step flags (no
//! interrupts, no timers), so they follow the activating context until it
//! schedules away, returns to user mode, or crashes. Control-flow faults
//! (a changed or inverted branch, a jump through a tainted value) taint
//! every write of the faulty frame until it returns: the values the wrong
//! path computed are all suspect, though some may be right by chance (an
//! upper bound, as control dependence always is).
//!
//! Long range: up to [`TraceConfig::max_watchpoints`] aligned 8-byte cells
//! of tainted memory get read and write watchpoints, cells the activating
//! task does not own first, then the most recently tainted. Each read
//! records the reading context and function. A write cleans the bytes the
//! writing instruction covered (decoded from the code before the stop; a
//! write whose instruction cannot be found, after a call say, cleans the
//! cell): a stack slot an interrupt or a later task reuses is overwritten
//! before it is read, and reading it then is no propagation. The long
//! range does not follow a read further (what the reader computes from the
//! value is not tracked).

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Register};
use serde::{Deserialize, Serialize};

use super::context::{Context, ContextReader};
use super::layout::KernelLayout;
use super::scope::{classify, is_failure_reporting, InterruptContext, Scope};
use super::taint::{MemRange, RegValues, Taint, Unit};
use crate::gdb::{BreakpointKind, GdbClient, GdbError, Reg, Registers, StopReason, WatchKind, SIGTRAP};
use crate::image::KernelImage;

/// Bounds of one trace, and the rules its verdict follows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TraceConfig {
    /// Single steps in the short range.
    pub max_steps: u64,
    /// Read watchpoints in the long range.
    pub max_watchpoints: usize,
    /// Watchpoint hits handled before the long range stops watching (each
    /// hit halts the guest for a round trip).
    pub max_hits: u32,
    /// Distinct foreign readers after which the scope is settled and the
    /// watchpoints come off.
    pub max_readers: usize,
    /// Tainted memory watched for less than this (seconds) and not all
    /// overwritten gives `unknown`, unless another context read it.
    pub min_watch_s: f64,
    /// Whether an interrupt on the activating task is another context.
    pub interrupts: InterruptContext,
}

/// The default minimum watch, seconds.
pub const DEFAULT_MIN_WATCH_S: f64 = 1.0;

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            max_steps: 20_000,
            max_watchpoints: 32,
            max_hits: 400,
            max_readers: 4,
            min_watch_s: DEFAULT_MIN_WATCH_S,
            interrupts: InterruptContext::Separate,
        }
    }
}

/// Where the error starts: what the fault made wrong, at the stop where
/// tracing begins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seed {
    /// Corrupted registers.
    pub regs: Vec<Register>,
    /// Corrupted flags.
    pub flags: bool,
    /// Corrupted memory.
    pub mem: Vec<MemRange>,
    /// Control flow left the right path here: the current frame's writes
    /// are all suspect until it returns.
    pub wrong_path: bool,
}

impl Seed {
    /// Nothing to follow.
    pub fn is_empty(&self) -> bool {
        self.regs.is_empty() && !self.flags && self.mem.is_empty() && !self.wrong_path
    }
}

/// Why the short range stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShortEnd {
    /// No register carries taint any more (memory may).
    Died,
    /// The activating context went back to user mode: what registers still
    /// carry is the process's own.
    ReturnedToUser,
    /// The step budget was spent with tainted registers.
    Budget,
    /// The CPU entered the kernel's crash path (`oops_begin`, `panic`...).
    Crashed {
        /// The function entered.
        function: String,
    },
    /// The guest stopped on its own (a panic pauses it).
    GuestStopped,
}

/// A read or write of tainted data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// `read` or `write`.
    pub kind: AccessKind,
    /// The first byte.
    pub address: u64,
    /// The context.
    pub context: Context,
    /// The function (for watchpoint hits: of the instruction after).
    pub function: Option<String>,
    /// In the short range (stepping) or the long one (watchpoints).
    pub long_range: bool,
    /// The activating task owns the address.
    pub local: bool,
    /// A read by the kernel's failure reporting (oops, printk...), which
    /// is no propagation.
    #[serde(default)]
    pub reporting: bool,
}

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessKind {
    /// A read.
    Read,
    /// A write.
    Write,
}

/// How far one error went, with the evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PropagationReport {
    /// The verdict.
    pub scope: Scope,
    /// Why, in one line.
    pub why: String,
    /// The context that activated the fault.
    pub activating: Context,
    /// Steps in the short range.
    pub steps: u64,
    /// Seconds the short range took.
    pub short_s: f64,
    /// Steps per second.
    pub steps_per_s: f64,
    /// Why the short range ended.
    pub short_end: ShortEnd,
    /// Tainted memory bytes when the short range ended.
    pub tainted_bytes: usize,
    /// Tainted registers when it ended (`rax`, `flags`).
    pub tainted_regs: Vec<String>,
    /// Control flow went through a tainted value or a tainted branch.
    pub control_flow: bool,
    /// Tainted-data writes by the short range.
    pub writes: u64,
    /// Tainted-data reads (both ranges), failure reporting's left out.
    pub reads: u64,
    /// Reads of tainted data by the kernel's failure reporting.
    #[serde(default)]
    pub reporting_reads: u64,
    /// Who they were (`comm[pid] in function`).
    #[serde(default)]
    pub reporting_readers: Vec<String>,
    /// Cells of 8 bytes watched in the long range.
    pub watched: usize,
    /// Watched cells overwritten (cleaned) before the window ended.
    #[serde(default)]
    pub overwritten: usize,
    /// Tainted cells outside the activating task that got no watchpoint.
    pub unwatched_shared: usize,
    /// Watchpoint hits.
    pub hits: u32,
    /// Seconds of long-range watching.
    pub long_s: f64,
    /// Contexts other than the activating one that read tainted data.
    pub foreign_readers: Vec<String>,
    /// The first accesses (bounded), the evidence.
    pub accesses: Vec<Access>,
    /// The minimum watch the verdict was held to, seconds.
    #[serde(default)]
    pub min_watch_s: f64,
    /// The interrupt rule the verdict followed.
    #[serde(default)]
    pub interrupts: InterruptContext,
}

/// Accesses kept as evidence per report.
const MAX_ACCESSES: usize = 48;
/// Functions whose entry means the CPU is on the crash path.
const CRASH_FUNCTIONS: &[&str] = &["oops_begin", "panic", "__die", "make_task_dead", "exc_double_fault", "nmi_panic"];

/// One error being followed.
#[derive(Debug)]
pub struct Tracer {
    config: TraceConfig,
    contexts: ContextReader,
    factory: InstructionInfoFactory,
    code: HashMap<u64, Instruction>,
    crash: HashMap<u64, String>,
    taint: Taint,
    activating: Option<Context>,
    steps: u64,
    short_s: f64,
    short_end: Option<ShortEnd>,
    tainted_bytes: usize,
    tainted_regs: Vec<String>,
    control_flow: bool,
    writes: u64,
    reads: u64,
    reporting_reads: u64,
    reporting: BTreeSet<String>,
    watched: Vec<u64>,
    armed: usize,
    overwritten: usize,
    unwatched_shared: usize,
    hits: u32,
    long_started: Option<Instant>,
    long_s: f64,
    foreign: BTreeSet<String>,
    accesses: Vec<Access>,
}

struct GdbRegs<'a>(&'a Registers);

impl RegValues for GdbRegs<'_> {
    fn value(&self, reg: Register) -> Option<u64> {
        let r = &self.0;
        Some(match reg {
            Register::RAX => r.rax,
            Register::RBX => r.rbx,
            Register::RCX => r.rcx,
            Register::RDX => r.rdx,
            Register::RSI => r.rsi,
            Register::RDI => r.rdi,
            Register::RBP => r.rbp,
            Register::RSP => r.rsp,
            Register::R8 => r.r8,
            Register::R9 => r.r9,
            Register::R10 => r.r10,
            Register::R11 => r.r11,
            Register::R12 => r.r12,
            Register::R13 => r.r13,
            Register::R14 => r.r14,
            Register::R15 => r.r15,
            Register::RIP => r.rip,
            _ => return None,
        })
    }

    fn segment_base(&self, seg: Register) -> u64 {
        match seg {
            Register::FS => self.0.get(Reg::FsBase).unwrap_or(0),
            Register::GS => self.0.get(Reg::GsBase).unwrap_or(0),
            _ => 0,
        }
    }
}

impl Tracer {
    /// A tracer for a kernel of this layout.
    pub fn new(layout: KernelLayout, image: &KernelImage, config: TraceConfig) -> Tracer {
        let crash = CRASH_FUNCTIONS
            .iter()
            .filter_map(|name| image.function(name).map(|s| (s.address, (*name).to_string())))
            .collect();
        Tracer {
            config,
            contexts: ContextReader::new(layout),
            factory: InstructionInfoFactory::new(),
            code: HashMap::new(),
            crash,
            taint: Taint::new(),
            activating: None,
            steps: 0,
            short_s: 0.0,
            short_end: None,
            tainted_bytes: 0,
            tainted_regs: Vec::new(),
            control_flow: false,
            writes: 0,
            reads: 0,
            reporting_reads: 0,
            reporting: BTreeSet::new(),
            watched: Vec::new(),
            armed: 0,
            overwritten: 0,
            unwatched_shared: 0,
            hits: 0,
            long_started: None,
            long_s: 0.0,
            foreign: BTreeSet::new(),
            accesses: Vec::new(),
        }
    }

    /// Whether the short range has run.
    pub fn started(&self) -> bool {
        self.activating.is_some()
    }

    /// Whether long-range watchpoints are armed.
    pub fn watching(&self) -> bool {
        !self.watched.is_empty()
    }

    /// Follows the error from the stopped guest: single-steps the short
    /// range, then arms the long-range watchpoints. The guest is left
    /// stopped (the caller resumes it), unless it stopped on its own.
    pub fn start(&mut self, gdb: &mut GdbClient, image: &KernelImage, seed: &Seed) -> Result<(), GdbError> {
        let mut regs = gdb.read_registers()?;
        let activating = self.contexts.read(gdb, &regs)?;
        self.activating = Some(activating.clone());
        for &r in &seed.regs {
            self.taint.taint_reg(r);
        }
        if seed.flags {
            self.taint.taint_flags();
        }
        for &m in &seed.mem {
            self.taint.taint_mem(m);
        }
        // Wrong-path depth: calls made on the wrong path run with their
        // own data flow (their arguments carry the taint).
        let mut wrong_depth: Option<i64> = seed.wrong_path.then_some(0);
        let started = Instant::now();
        let end = loop {
            if !self.taint.any_reg() && wrong_depth.is_none() {
                break ShortEnd::Died;
            }
            if let Some(function) = self.crash.get(&regs.rip) {
                break ShortEnd::Crashed { function: function.clone() };
            }
            if regs.cs & 3 == 3 && self.steps > 0 {
                break ShortEnd::ReturnedToUser;
            }
            if self.steps >= self.config.max_steps {
                break ShortEnd::Budget;
            }
            let Some(instr) = self.decode(gdb, regs.rip)? else {
                // Unreadable code: the CPU is about to fault; let it.
                break ShortEnd::Crashed { function: format!("{:#x} (unreadable code)", regs.rip) };
            };
            let force = wrong_depth == Some(0);
            let effect = self.taint.step(&mut self.factory, &instr, &GdbRegs(&regs), force);
            if !effect.tainted_reads.is_empty() || !effect.tainted_writes.is_empty() {
                let ctx = self.contexts.read(gdb, &regs)?;
                let function = image.symbolize(regs.rip);
                for r in &effect.tainted_reads {
                    self.note(AccessKind::Read, r.address, &ctx, function.clone(), false);
                }
                for w in &effect.tainted_writes {
                    self.note(AccessKind::Write, w.address, &ctx, function.clone(), false);
                }
            }
            if effect.tainted_branch || effect.tainted_jump {
                self.control_flow = true;
                if wrong_depth.is_none() {
                    // A jump through a tainted value lands wherever it
                    // lands: what follows in this frame is suspect.
                    wrong_depth = Some(if instr.flow_control() == FlowControl::Return { -1 } else { 0 });
                }
            }
            if let Some(depth) = wrong_depth.as_mut() {
                match instr.flow_control() {
                    FlowControl::Call | FlowControl::IndirectCall => *depth += 1,
                    FlowControl::Return => *depth -= 1,
                    _ => {}
                }
                if *depth < 0 {
                    wrong_depth = None;
                }
            }
            let stop = gdb.step()?;
            self.steps += 1;
            if !matches!(&stop, StopReason::Signal(s) if s.signal == SIGTRAP) {
                break ShortEnd::GuestStopped;
            }
            regs = gdb.read_registers()?;
        };
        self.short_s = started.elapsed().as_secs_f64();
        self.tainted_bytes = self.taint.mem_len();
        self.tainted_regs = self
            .taint
            .regs()
            .map(|u| match u {
                Unit::Reg(r) => format!("{r:?}").to_lowercase(),
                Unit::Flags => "flags".into(),
            })
            .collect();
        let stopped = end == ShortEnd::GuestStopped;
        self.short_end = Some(end);
        if !stopped {
            self.arm(gdb)?;
        }
        Ok(())
    }

    fn decode(&mut self, gdb: &mut GdbClient, rip: u64) -> Result<Option<Instruction>, GdbError> {
        if let Some(i) = self.code.get(&rip) {
            return Ok(Some(*i));
        }
        let Some(instr) = decode_at(gdb, rip) else { return Ok(None) };
        self.code.insert(rip, instr);
        Ok(Some(instr))
    }

    fn note(&mut self, kind: AccessKind, address: u64, ctx: &Context, function: Option<String>, long_range: bool) {
        let activating = self.activating.as_ref().expect("tracing started");
        let local = activating.owns(address, self.contexts.stack_of(activating.task), self.contexts.layout());
        let foreign = !ctx.same_under(activating, self.config.interrupts);
        let reporting = kind == AccessKind::Read && function.as_deref().is_some_and(is_failure_reporting);
        let who = || match &function {
            Some(f) => format!("{ctx} in {}", f.split('+').next().unwrap_or(f)),
            None => ctx.to_string(),
        };
        match kind {
            AccessKind::Read if reporting => {
                self.reporting_reads += 1;
                self.reporting.insert(who());
            }
            AccessKind::Read => {
                self.reads += 1;
                if foreign {
                    self.foreign.insert(who());
                }
            }
            AccessKind::Write => self.writes += 1,
        }
        // Keep the first accesses, and every foreign read while there is
        // room: they are the evidence of the verdict.
        if self.accesses.len() < MAX_ACCESSES
            && (self.accesses.len() < MAX_ACCESSES / 2 || (foreign && kind == AccessKind::Read))
        {
            self.accesses.push(Access { kind, address, context: ctx.clone(), function, long_range, local, reporting });
        }
    }

    /// Arms read watchpoints on the tainted cells.
    fn arm(&mut self, gdb: &mut GdbClient) -> Result<(), GdbError> {
        let activating = self.activating.clone().expect("tracing started");
        let stack = self.contexts.stack_of(activating.task);
        let layout = *self.contexts.layout();
        let mut cells = self.taint.cells(8);
        // Shared cells first: only they can carry the error elsewhere.
        cells.sort_by_key(|&c| activating.owns(c, stack, &layout));
        let shared = cells.iter().filter(|&&c| !activating.owns(c, stack, &layout)).count();
        for &cell in cells.iter().take(self.config.max_watchpoints) {
            if gdb.set_breakpoint(BreakpointKind::Read, cell, 8).is_err() {
                break;
            }
            if gdb.set_breakpoint(BreakpointKind::Write, cell, 8).is_err() {
                gdb.remove_breakpoint(BreakpointKind::Read, cell, 8)?;
                break;
            }
            self.watched.push(cell);
        }
        let watched_shared = self.watched.iter().filter(|&&c| !activating.owns(c, stack, &layout)).count();
        self.unwatched_shared = shared - watched_shared;
        self.armed = self.watched.len();
        if !self.watched.is_empty() {
            self.long_started = Some(Instant::now());
        }
        Ok(())
    }

    /// Whether a watchpoint stop at `address` is one of this tracer's.
    pub fn owns_watch(&self, address: u64) -> bool {
        self.watched.contains(&(address & !7))
    }

    /// Handles a stop at one of the tracer's watchpoints (the guest is
    /// stopped after the accessing instruction); the caller resumes.
    pub fn on_watch(
        &mut self,
        gdb: &mut GdbClient,
        image: &KernelImage,
        address: u64,
        kind: WatchKind,
    ) -> Result<(), GdbError> {
        self.hits += 1;
        let cell = address & !7;
        let regs = gdb.read_registers()?;
        if kind == WatchKind::Write {
            let written = previous_instruction(gdb, image, regs.rip).map(|i| written_by(&i, &regs));
            for r in written.filter(|w| !w.is_empty()).unwrap_or_else(|| vec![MemRange::new(cell, 8)]) {
                self.taint.clean_mem(r);
            }
            if !self.taint.mem_tainted(MemRange::new(cell, 8)) {
                self.unwatch(gdb, cell)?;
                self.overwritten += 1;
            }
        } else {
            let ctx = self.contexts.read(gdb, &regs)?;
            self.note(AccessKind::Read, address, &ctx, image.symbolize(regs.rip), true);
        }
        if self.hits >= self.config.max_hits || self.foreign.len() >= self.config.max_readers {
            self.disarm(gdb)?;
        }
        Ok(())
    }

    fn unwatch(&mut self, gdb: &mut GdbClient, cell: u64) -> Result<(), GdbError> {
        gdb.remove_breakpoint(BreakpointKind::Read, cell, 8)?;
        gdb.remove_breakpoint(BreakpointKind::Write, cell, 8)?;
        self.watched.retain(|&c| c != cell);
        if self.watched.is_empty() {
            if let Some(t) = self.long_started.take() {
                self.long_s += t.elapsed().as_secs_f64();
            }
        }
        Ok(())
    }

    /// Removes the watchpoints (the guest must be stopped).
    pub fn disarm(&mut self, gdb: &mut GdbClient) -> Result<(), GdbError> {
        for cell in std::mem::take(&mut self.watched) {
            gdb.remove_breakpoint(BreakpointKind::Read, cell, 8)?;
            gdb.remove_breakpoint(BreakpointKind::Write, cell, 8)?;
        }
        if let Some(t) = self.long_started.take() {
            self.long_s += t.elapsed().as_secs_f64();
        }
        Ok(())
    }

    /// The verdict and its evidence; `None` when tracing never started.
    /// Call [`disarm`](Self::disarm) first while the guest can still be
    /// halted.
    pub fn report(&self) -> Option<PropagationReport> {
        let activating = self.activating.clone()?;
        let short_end = self.short_end.clone().unwrap_or(ShortEnd::GuestStopped);
        let long_s = self.long_s + self.long_started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let mut report = PropagationReport {
            scope: Scope::Unknown,
            why: String::new(),
            activating,
            steps: self.steps,
            short_s: self.short_s,
            steps_per_s: if self.short_s > 0.0 { self.steps as f64 / self.short_s } else { 0.0 },
            short_end,
            tainted_bytes: self.tainted_bytes,
            tainted_regs: self.tainted_regs.clone(),
            control_flow: self.control_flow,
            writes: self.writes,
            reads: self.reads,
            reporting_reads: self.reporting_reads,
            reporting_readers: self.reporting.iter().cloned().collect(),
            watched: self.armed,
            overwritten: self.overwritten,
            unwatched_shared: self.unwatched_shared,
            hits: self.hits,
            long_s,
            foreign_readers: self.foreign.iter().cloned().collect(),
            accesses: self.accesses.clone(),
            min_watch_s: self.config.min_watch_s,
            interrupts: self.config.interrupts,
        };
        let (scope, why) = classify(&report, self.config.min_watch_s);
        report.scope = scope;
        report.why = why;
        Some(report)
    }
}

impl Tracer {
    /// Whether the short range ended because the guest stopped on its own.
    pub fn guest_stopped(&self) -> bool {
        self.short_end == Some(ShortEnd::GuestStopped)
    }

    /// Runs the guest for `window` with the long-range watchpoints armed,
    /// handling their stops; returns early once they are off. The guest
    /// must be stopped and is left stopped.
    pub fn watch_for(
        &mut self,
        gdb: &mut GdbClient,
        image: &KernelImage,
        window: std::time::Duration,
    ) -> Result<(), GdbError> {
        let end = Instant::now() + window;
        while self.watching() {
            let now = Instant::now();
            if now >= end {
                break;
            }
            gdb.resume()?;
            let stop = match gdb.wait_stop(end - now) {
                Ok(stop) => stop,
                Err(GdbError::Transport { source: crate::gdb::conn::ConnError::Timeout { .. }, .. }) => {
                    gdb.interrupt()?;
                    break;
                }
                Err(e) => return Err(e),
            };
            match &stop {
                StopReason::Signal(s) => match s.event {
                    Some(crate::gdb::StopEvent::Watchpoint { address, kind }) if self.owns_watch(address) => {
                        self.on_watch(gdb, image, address, kind)?;
                    }
                    _ if s.signal == SIGTRAP => {}
                    _ => return Ok(()),
                },
                _ => return Ok(()),
            }
        }
        self.disarm(gdb)
    }
}

/// What `instr`, executed with register values `regs`, writes: its
/// destination registers, flags and memory, as a [`Seed`] (the outputs of
/// an instruction that ran with a corrupted input, or the stale
/// destinations of one the fault deleted).
pub fn outputs(instr: &Instruction, regs: &Registers) -> Seed {
    let mut scratch = Taint::new();
    let mut factory = InstructionInfoFactory::new();
    let effect = scratch.step(&mut factory, instr, &GdbRegs(regs), true);
    let mut seed = Seed { mem: effect.tainted_writes, ..Seed::default() };
    for unit in scratch.regs() {
        match unit {
            Unit::Reg(r) => seed.regs.push(r),
            Unit::Flags => seed.flags = true,
        }
    }
    seed
}

/// The memory an instruction that just executed wrote, from the registers
/// after it: a push or call wrote the slot RSP now points to.
fn written_by(instr: &Instruction, regs: &Registers) -> Vec<MemRange> {
    let pushes = matches!(instr.flow_control(), FlowControl::Call | FlowControl::IndirectCall)
        || matches!(instr.mnemonic(), iced_x86::Mnemonic::Push | iced_x86::Mnemonic::Pushfq);
    if pushes {
        return vec![MemRange::new(regs.rsp, 8)];
    }
    outputs(instr, regs).mem
}

impl Seed {
    /// Both seeds' corruption.
    pub fn merge(mut self, other: Seed) -> Seed {
        for r in other.regs {
            if !self.regs.contains(&r) {
                self.regs.push(r);
            }
        }
        self.flags |= other.flags;
        self.mem.extend(other.mem);
        self.wrong_path |= other.wrong_path;
        self
    }
}

/// The instruction at `rip`, read through the gdbstub; `None` where the
/// code cannot be read or decoded.
pub fn decode_at(gdb: &mut GdbClient, rip: u64) -> Option<Instruction> {
    // An instruction is at most 15 bytes; near the end of a mapping a
    // shorter read still holds it.
    let bytes = [16usize, 8, 4].iter().find_map(|len| gdb.read_memory(rip, *len).ok())?;
    let instr = Decoder::with_ip(64, &bytes, rip, DecoderOptions::NONE).decode();
    (!instr.is_invalid()).then_some(instr)
}

/// The instruction that ends right before `rip` in the function holding
/// it, decoded from the guest's own code: after a watchpoint stop (x86
/// reports it after the access) this is the instruction that read the
/// watched byte, unless a jump brought the CPU to `rip`.
pub fn previous_instruction(gdb: &mut GdbClient, image: &KernelImage, rip: u64) -> Option<Instruction> {
    let start = image.symbol_at(rip)?.address;
    let len = usize::try_from(rip.checked_sub(start)?).ok().filter(|&l| l > 0 && l <= 8192)?;
    let bytes = gdb.read_memory(start, len).ok()?;
    let mut decoder = Decoder::with_ip(64, &bytes, start, DecoderOptions::NONE);
    let mut last = None;
    while decoder.can_decode() {
        let i = decoder.decode();
        if i.is_invalid() {
            return None;
        }
        last = Some(i);
    }
    last.filter(|i| i.next_ip() == rip)
}
