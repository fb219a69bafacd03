//! Applying a [`FaultSpec`] to a running guest through its gdbstub, and
//! watching whether the fault is activated.
//!
//! [`FaultInFlight`] is a small state machine driven by [`FaultInFlight::poll`]:
//! it waits for the trigger (a delay, or the k-th hit of a breakpoint on
//! the target instruction), halts the guest, applies the fault, resumes,
//! and then watches with a breakpoint on a mutated instruction or read and
//! write watchpoints on a flipped byte. [`run`] drives it for a window.
//! Starting, observing and recovering the VM is the caller's business.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::fault::mutate::{self, Decoded};
use crate::fault::{FaultModel, FaultSpec, FlipReg, Persistence, Target, Trigger};
use crate::gdb::{
    BreakpointKind, GdbClient, GdbError, Reg, Registers, StopEvent, StopReason, WatchKind, SIGINT, SIGTRAP,
};
use crate::image::{KernelImage, SymbolKind};
use crate::reg_use::BitUse;
use crate::trace::taint::condition_holds;
use crate::trace::tracer::{decode_at, outputs, previous_instruction};
use crate::trace::{PropagationReport, Seed, Tracer};

/// Why a fault could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The gdbstub failed.
    #[error("{during}: {source}")]
    Gdb {
        /// What the injector was doing.
        during: &'static str,
        /// Why.
        source: GdbError,
    },
    /// The guest's code is not the vmlinux's.
    #[error("the guest's bytes at {place} ({address:#x}) are {found}, the vmlinux has {expected}: the kernel patched this instruction at boot (alternatives, static keys, ftrace, retpolines) or the vmlinux is not the guest kernel's; pick another fault")]
    CodeMismatch {
        /// `function+0xoff`.
        place: String,
        /// The address.
        address: u64,
        /// The vmlinux's bytes (hex).
        expected: String,
        /// The guest's bytes (hex).
        found: String,
    },
    /// The CPU never stopped in kernel mode (or with a heap pointer in a
    /// register) within the attempts.
    #[error("no usable halt after {attempts} tries: {why}; the guest may be idle in user space, give it load")]
    NoUsableHalt {
        /// Tries.
        attempts: u32,
        /// What was missing.
        why: &'static str,
    },
    /// The spec's instruction cannot be decoded.
    #[error("the target bytes {bytes} do not decode as one instruction")]
    Undecodable {
        /// Hex.
        bytes: String,
    },
}

/// What was changed, for the record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// Where RIP was when the fault was applied (`function+0xoff`).
    pub at: Option<String>,
    /// The kernel function executing there (none in a module).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Its subsystem (the top source directory of its compilation unit):
    /// where a register, stack or heap flip lands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subsystem: Option<String>,
    /// The memory address changed, for memory and code faults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<u64>,
    /// The register changed, for register faults (for heap flips, the
    /// register whose pointer was followed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reg: Option<FlipReg>,
    /// The value before (register or byte).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// The value after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
}

/// What an injection did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InjectionReport {
    /// The trigger fired and the fault was applied.
    pub injected: bool,
    /// Seconds from the start of the run to the application.
    pub injected_after_s: Option<f64>,
    /// Halt (or breakpoint stop), apply, resume: milliseconds.
    pub latency_ms: Option<f64>,
    /// The fault was executed (code), or its flipped bit read before it
    /// was overwritten (memory and register flips; a flipped RIP at once).
    pub activated: bool,
    /// Why activation could not be decided, when it could not: a flipped
    /// register neither read nor overwritten before the CPU went idle, left
    /// the kernel, or the step budget ran out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation_unknown: Option<String>,
    /// Instructions executed from a register flip to the one that read
    /// (or overwrote) the flipped bit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub register_steps: Option<u64>,
    /// Seconds from the application to the first activation.
    pub activation_after_s: Option<f64>,
    /// A flipped byte or register bit was overwritten before anything read it.
    pub masked: bool,
    /// Executions of the target instruction seen (breakpoint hits).
    pub hits: u32,
    /// Executions corrupted (DST/SRC/PTR).
    pub corruptions: u32,
    /// Details of the change.
    pub applied: Option<Applied>,
    /// Why the guest stopped on its own (a panic pauses the VM), if it did.
    pub guest_stopped: Option<String>,
    /// How far the error went, when the injection was traced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propagation: Option<PropagationReport>,
    /// Seconds from the start of the run to when the tracer stopped the
    /// guest to single-step it, if it did.
    pub held_from_s: Option<f64>,
    /// Seconds the tracer held the guest (clients and the heartbeat saw it
    /// stand still: that is the harness, not the fault).
    pub held_s: f64,
}

/// DST/SRC/PTR corrupt at most this many executions when permanent:
/// beyond it the breakpoint round trips would slow the guest more than
/// the fault does.
const MAX_CORRUPTIONS: u32 = 64;
/// Instructions single-stepped after a register flip, at most, to see it
/// read or overwritten (each step is a gdbstub round trip: about a
/// millisecond under TCG).
const REGISTER_STEPS: u64 = 5_000;
/// Halts tried for one that fits (kernel mode, a heap pointer).
const MAX_HALTS: u32 = 500;
/// Executions after a reach trigger's count at which a heap flip may still
/// find its base register holding a heap pointer, before it gives up.
const MAX_REACH_EXTRA: u32 = 16;
/// A stop the injector did not cause: QEMU reports a panic pause as
/// GDB_SIGNAL_UNKNOWN (143), a QMP `stop` as SIGINT. `interrupted`: the
/// injector sent the interrupt, so SIGINT is its own.
fn is_external(stop: &StopReason, interrupted: bool) -> bool {
    match stop {
        StopReason::Signal(s) => !(s.signal == SIGTRAP || (interrupted && s.signal == SIGINT)),
        _ => true,
    }
}

/// Kernel direct map (`PAGE_OFFSET` with 4-level paging, nokaslr) through
/// the end of the vmalloc area: where slab objects and task stacks live.
const HEAP_RANGE: (u64, u64) = (0xffff_8880_0000_0000, 0xffff_e900_0000_0000);
/// THREAD_SIZE on x86-64 (16 KiB).
const THREAD_SIZE: u64 = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the trigger.
    Waiting,
    /// Applied; the breakpoint or watchpoints are still armed.
    Watching,
    /// Nothing armed any more.
    Done,
}

/// One fault on its way into the guest.
#[derive(Debug)]
pub struct FaultInFlight {
    spec: FaultSpec,
    insn: Option<Decoded>,
    started: Instant,
    phase: Phase,
    /// A breakpoint is set at the target instruction.
    bp: bool,
    /// The delay trigger has fired (the fault may still wait for its
    /// instruction's next execution).
    delay_done: bool,
    /// Watchpoints on this byte.
    watch: Option<u64>,
    injected_at: Option<Instant>,
    activated_at: Option<Instant>,
    report: InjectionReport,
    /// Follows the error from its activation, when set.
    tracer: Option<Tracer>,
    /// Executions of a deleted branch that took the same path as the
    /// original would have (a traced fault waits for one that deviates).
    same_path: u32,
}

impl FaultInFlight {
    /// Prepares the fault; for a hit trigger sets the breakpoint. The guest
    /// must be stopped (as it is right after [`GdbClient::connect`]); it is
    /// resumed.
    pub fn start(gdb: &mut GdbClient, spec: &FaultSpec) -> Result<FaultInFlight, InjectError> {
        let insn = match spec.target() {
            Target::Instruction { address, original, .. } => Some(
                mutate::decode_one(*address, &original.0)
                    .filter(|d| d.bytes.len() == original.0.len())
                    .ok_or_else(|| InjectError::Undecodable { bytes: original.to_string() })?,
            ),
            _ => None,
        };
        gdb.interrupt().map_err(gdb_err("halting the guest to prepare"))?;
        let mut inj = FaultInFlight {
            spec: spec.clone(),
            insn,
            started: Instant::now(),
            phase: Phase::Waiting,
            bp: false,
            delay_done: false,
            watch: None,
            injected_at: None,
            activated_at: None,
            report: InjectionReport::default(),
            tracer: None,
            same_path: 0,
        };
        if let Some(d) = &inj.insn {
            // Catch a wrong vmlinux or a boot-time patch before any wait.
            inj.verify_code(gdb, d.address())?;
        }
        if let Trigger::Hit { .. } | Trigger::Reach { .. } = spec.trigger() {
            inj.arm_bp(gdb)?;
        }
        gdb.resume().map_err(gdb_err("resuming the guest"))?;
        inj.started = Instant::now();
        Ok(inj)
    }

    /// The report so far.
    pub fn report(&self) -> &InjectionReport {
        &self.report
    }

    /// When the fault was applied.
    pub fn injected_at(&self) -> Option<Instant> {
        self.injected_at
    }

    /// When the fault was first activated.
    pub fn activated_at(&self) -> Option<Instant> {
        self.activated_at
    }

    /// Whether nothing is left to do: applied and nothing armed, or the
    /// guest stopped on its own.
    pub fn is_done(&self) -> bool {
        (self.phase == Phase::Done && !self.tracer.as_ref().is_some_and(Tracer::watching))
            || self.report.guest_stopped.is_some()
    }

    /// Traces the error from the fault's first activation (propagation
    /// scope); the report's `propagation` holds the verdict.
    pub fn set_tracer(&mut self, tracer: Tracer) {
        self.tracer = Some(tracer);
    }

    /// Whether a tracer waits for the activation.
    fn tracing(&self) -> bool {
        self.tracer.as_ref().is_some_and(|t| !t.started())
    }

    /// Runs the tracer's short range from this stop (the guest is stopped
    /// and resumed by the caller).
    fn begin_trace(&mut self, gdb: &mut GdbClient, image: &KernelImage, seed: &Seed) -> Result<(), InjectError> {
        let Some(tracer) = self.tracer.as_mut().filter(|t| !t.started()) else { return Ok(()) };
        let held = Instant::now();
        tracer.start(gdb, image, seed).map_err(gdb_err("tracing the error's propagation"))?;
        self.report.held_from_s = Some(held.saturating_duration_since(self.started).as_secs_f64());
        self.report.held_s = held.elapsed().as_secs_f64();
        if tracer.guest_stopped() {
            self.report.guest_stopped = Some("the guest stopped while the error was traced".into());
        }
        Ok(())
    }

    /// After a register flip: single-steps the guest until an instruction
    /// reads the flipped bit (activated; the tracer, if any, starts there,
    /// before that instruction runs), overwrites it (masked), or the
    /// evidence runs out (activation unknown, with the reason). A flipped
    /// RIP is read by the very next fetch.
    fn follow_register(
        &mut self,
        gdb: &mut GdbClient,
        image: &KernelImage,
        reg: FlipReg,
        bit: u8,
        flipped: Instant,
    ) -> Result<(), InjectError> {
        if reg == FlipReg::Rip {
            self.activate(flipped);
            self.report.register_steps = Some(0);
            return self.begin_trace(gdb, image, &reg_seed(reg));
        }
        let held = Instant::now();
        let mut factory = iced_x86::InstructionInfoFactory::new();
        let mut code: std::collections::HashMap<u64, iced_x86::Instruction> = std::collections::HashMap::new();
        let mut steps = 0u64;
        let verdict = loop {
            let regs = gdb.read_registers().map_err(gdb_err("reading the registers after a step"))?;
            if regs.cs & 3 == 3 {
                break Err(
                    "the CPU returned to user mode with the flipped register neither read nor overwritten".to_string()
                );
            }
            let instr = match code.get(&regs.rip) {
                Some(i) => *i,
                None => match decode_at(gdb, regs.rip) {
                    Some(i) => *code.entry(regs.rip).or_insert(i),
                    None => break Err("the CPU reached code the injector cannot read or decode".to_string()),
                },
            };
            if instr.mnemonic() == iced_x86::Mnemonic::Hlt {
                // Stepping a halt with interrupts held off would never end.
                break Err("the CPU went idle (hlt) with the flipped register neither read nor overwritten".to_string());
            }
            match crate::reg_use::bit_use(&mut factory, &instr, reg, bit) {
                BitUse::Untouched => {}
                decided => break Ok(decided),
            }
            if steps >= REGISTER_STEPS {
                break Err(format!(
                    "the flipped register was neither read nor overwritten within the step budget ({REGISTER_STEPS} \
                     instructions)"
                ));
            }
            let stop = gdb.step().map_err(gdb_err("stepping after a register flip"))?;
            steps += 1;
            if is_external(&stop, false) {
                self.report.guest_stopped = Some(format!("{stop:?}"));
                break Err("the guest stopped before the flipped register was read or overwritten".to_string());
            }
        };
        self.report.register_steps = Some(steps);
        match verdict {
            Ok(BitUse::Read) => {
                self.activate(Instant::now());
                self.begin_trace(gdb, image, &reg_seed(reg))?;
            }
            Ok(_) => self.report.masked = true,
            Err(why) => self.report.activation_unknown = Some(why),
        }
        // The clients saw the guest stand still for all of it.
        self.report.held_from_s = Some(held.saturating_duration_since(self.started).as_secs_f64());
        self.report.held_s = held.elapsed().as_secs_f64();
        Ok(())
    }

    fn place(&self) -> String {
        match self.spec.target() {
            Target::Instruction { function, offset, .. } => format!("{function}+{offset:#x}"),
            _ => "?".into(),
        }
    }

    fn verify_code(&self, gdb: &mut GdbClient, address: u64) -> Result<(), InjectError> {
        let Target::Instruction { original, .. } = self.spec.target() else { return Ok(()) };
        let live = gdb.read_memory(address, original.0.len()).map_err(gdb_err("reading the target instruction"))?;
        if live != original.0 {
            return Err(InjectError::CodeMismatch {
                place: self.place(),
                address,
                expected: original.to_string(),
                found: crate::fault::HexBytes(live).to_string(),
            });
        }
        Ok(())
    }

    /// Where the breakpoint goes: the target instruction, or the point a
    /// reach trigger names.
    fn address(&self) -> u64 {
        match self.spec.trigger() {
            Trigger::Reach { address, .. } => address,
            _ => self.insn.as_ref().map_or(0, Decoded::address),
        }
    }

    fn arm_bp(&mut self, gdb: &mut GdbClient) -> Result<(), InjectError> {
        if !self.bp {
            gdb.set_breakpoint(BreakpointKind::Hardware, self.address(), 1)
                .map_err(gdb_err("setting the breakpoint on the target instruction"))?;
            self.bp = true;
        }
        Ok(())
    }

    fn disarm_bp(&mut self, gdb: &mut GdbClient) -> Result<(), InjectError> {
        if self.bp {
            gdb.remove_breakpoint(BreakpointKind::Hardware, self.address(), 1)
                .map_err(gdb_err("removing the breakpoint"))?;
            self.bp = false;
        }
        Ok(())
    }

    fn disarm_watch(&mut self, gdb: &mut GdbClient) -> Result<(), InjectError> {
        if let Some(addr) = self.watch.take() {
            for kind in [BreakpointKind::Read, BreakpointKind::Write] {
                gdb.remove_breakpoint(kind, addr, 1).map_err(gdb_err("removing a watchpoint"))?;
            }
        }
        Ok(())
    }

    /// Waits up to `slice` for the guest to stop at a breakpoint or
    /// watchpoint, and handles it; applies a delay trigger when due.
    pub fn poll(&mut self, gdb: &mut GdbClient, image: &KernelImage, slice: Duration) -> Result<(), InjectError> {
        if self.report.guest_stopped.is_some() {
            std::thread::sleep(slice);
            return Ok(());
        }
        let mut wait = slice;
        if self.phase == Phase::Waiting && !self.delay_done {
            if let Trigger::Delay { ms } = self.spec.trigger() {
                let due = self.started + Duration::from_millis(ms);
                let now = Instant::now();
                if now >= due {
                    return self.apply_on_halt(gdb, image);
                }
                wait = wait.min(due - now);
            }
        }
        match gdb.wait_stop(wait) {
            Ok(stop) => self.on_stop(gdb, image, stop, Instant::now()),
            Err(GdbError::Transport { source: crate::gdb::conn::ConnError::Timeout { .. }, .. }) => Ok(()),
            Err(e) => Err(InjectError::Gdb { during: "watching the guest", source: e }),
        }
    }

    fn on_stop(
        &mut self,
        gdb: &mut GdbClient,
        image: &KernelImage,
        stop: StopReason,
        at: Instant,
    ) -> Result<(), InjectError> {
        if is_external(&stop, false) {
            tracing::info!(?stop, "injector: the guest stopped on its own");
            self.report.guest_stopped = Some(format!("{stop:?}"));
            return Ok(());
        }
        if let StopReason::Signal(s) = &stop {
            if let Some(StopEvent::Watchpoint { kind, address }) = s.event {
                if self.watch.is_none() {
                    if let Some(tracer) = self.tracer.as_mut().filter(|t| t.owns_watch(address)) {
                        tracer
                            .on_watch(gdb, image, address, kind)
                            .map_err(gdb_err("recording an access to tainted data"))?;
                        return gdb.resume().map_err(gdb_err("resuming after a tainted read"));
                    }
                }
                return self.on_watch(gdb, image, kind, at);
            }
        }
        let rip = gdb.read_register(Reg::Rip).map_err(gdb_err("reading RIP at a stop"))?;
        if self.bp && rip == self.address() {
            return self.on_hit(gdb, image, at);
        }
        // A trap that is not ours (a step left over, a stale breakpoint).
        tracing::debug!(rip = format_args!("{rip:#x}"), "injector: unexpected trap; resuming");
        gdb.resume().map_err(gdb_err("resuming after an unexpected trap"))
    }

    fn on_watch(
        &mut self,
        gdb: &mut GdbClient,
        image: &KernelImage,
        kind: WatchKind,
        at: Instant,
    ) -> Result<(), InjectError> {
        let flipped = self.watch;
        match kind {
            WatchKind::Write => self.report.masked = true,
            WatchKind::Read | WatchKind::Access => self.activate(at),
        }
        self.disarm_watch(gdb)?;
        if let (true, Some(address), WatchKind::Read | WatchKind::Access) = (self.tracing(), flipped, kind) {
            // The flipped byte was just read: it is still wrong, and so is
            // whatever the reading instruction wrote.
            let regs = gdb.read_registers().map_err(gdb_err("reading the registers after the read"))?;
            let mut seed = Seed { mem: vec![crate::trace::MemRange::new(address, 1)], ..Seed::default() };
            if let Some(reader) = previous_instruction(gdb, image, regs.rip) {
                seed = seed.merge(outputs(&reader, &regs));
            }
            self.begin_trace(gdb, image, &seed)?;
        }
        self.phase = Phase::Done;
        gdb.resume().map_err(gdb_err("resuming after the watchpoint"))
    }

    fn activate(&mut self, at: Instant) {
        if self.activated_at.is_none() {
            self.activated_at = Some(at);
            self.report.activated = true;
            self.report.activation_after_s = self.injected_at.map(|i| at.saturating_duration_since(i).as_secs_f64());
        }
    }

    fn mark_injected(&mut self, halted: Instant, applied: Applied) {
        self.injected_at = Some(halted);
        self.report.injected = true;
        self.report.injected_after_s = Some(halted.saturating_duration_since(self.started).as_secs_f64());
        self.report.applied = Some(applied);
    }

    fn finish_latency(&mut self, halted: Instant) {
        self.report.latency_ms = Some(halted.elapsed().as_secs_f64() * 1e3);
    }

    /// The guest is stopped at the target instruction (breakpoint).
    fn on_hit(&mut self, gdb: &mut GdbClient, image: &KernelImage, at: Instant) -> Result<(), InjectError> {
        self.report.hits += 1;
        if self.phase == Phase::Waiting {
            // A delay trigger arms the breakpoint only once the delay has
            // passed, so any hit is due; a hit trigger waits for its count.
            let due = match self.spec.trigger() {
                Trigger::Hit { count } | Trigger::Reach { count, .. } => self.report.hits >= count,
                Trigger::Delay { .. } => true,
            };
            if !due {
                return self.step_over(gdb);
            }
            if let Trigger::Reach { count, .. } = self.spec.trigger() {
                return self.on_reach(gdb, image, at, count);
            }
            // Apply now, before this execution runs.
            let rip = self.address();
            let mut applied = Applied { at: image.symbolize(rip), ..Applied::default() };
            match self.spec.model().clone() {
                FaultModel::RegFlip { reg, bit } => {
                    let (before, after) = flip_register(gdb, reg, bit)?;
                    applied = Applied { reg: Some(reg), before: Some(before), after: Some(after), ..applied };
                    self.mark_injected(at, applied);
                    self.disarm_bp(gdb)?;
                    self.follow_register(gdb, image, reg, bit, at)?;
                    self.phase = Phase::Done;
                    self.finish_latency(at);
                    return gdb.resume().map_err(gdb_err("resuming after the fault"));
                }
                model if model.patch().is_some() => {
                    let patch = model.patch().expect("checked").bytes.0.clone();
                    gdb.write_memory(rip, &patch).map_err(gdb_err("writing the mutated instruction"))?;
                    applied.address = Some(rip);
                    self.mark_injected(at, applied);
                    self.phase = Phase::Watching;
                }
                _ => {
                    // DST/SRC/PTR: corrupting starts with this execution.
                    self.mark_injected(at, applied);
                    self.phase = Phase::Watching;
                }
            }
        }
        // Watching: this execution activates the fault.
        self.activate(at);
        match self.spec.model().clone() {
            FaultModel::Dst { reg, bit } => {
                self.disarm_bp(gdb)?;
                gdb.step().map_err(gdb_err("stepping the target instruction"))?;
                let (before, after) = flip_register(gdb, reg, bit)?;
                self.note_corruption(reg, before, after);
                self.begin_trace(gdb, image, &reg_seed(reg))?;
                self.after_corruption(gdb, at)
            }
            FaultModel::Src { reg, bit } | FaultModel::Ptr { reg, bit } => {
                let (before, after) = flip_register(gdb, reg, bit)?;
                self.note_corruption(reg, before, after);
                // What this execution writes is wrong; for a store through a
                // corrupted pointer, so is the place it should have written.
                let seed = match (self.tracing(), self.insn.clone()) {
                    (true, Some(d)) => {
                        let mut regs = gdb.read_registers().map_err(gdb_err("reading the registers"))?;
                        let wrong = outputs(&d.instr, &regs);
                        regs.set(reg.gdb(), before).map_err(|e| InjectError::Gdb {
                            during: "computing the intended destination",
                            source: GdbError::Registers { packet: "g".into(), source: e },
                        })?;
                        let intended = outputs(&d.instr, &regs);
                        Some(wrong.merge(Seed { mem: intended.mem, ..Seed::default() }))
                    }
                    _ => None,
                };
                self.disarm_bp(gdb)?;
                gdb.step().map_err(gdb_err("stepping the target instruction"))?;
                let written = self.insn.as_ref().is_some_and(|d| mutate::writes_reg(d, reg));
                if !written {
                    // Only this execution saw the corrupted value.
                    let now = gdb.read_register(reg.gdb()).map_err(gdb_err("reading the register back"))?;
                    if now == after {
                        gdb.write_register(reg.gdb(), before).map_err(gdb_err("restoring the register"))?;
                    }
                }
                if let Some(seed) = seed {
                    self.begin_trace(gdb, image, &seed)?;
                }
                self.after_corruption(gdb, at)
            }
            _ => {
                // A code patch ran (or is about to run) for the first time.
                let seed = if self.tracing() { self.patch_seed(gdb)? } else { None };
                if self.tracing() && seed.is_none() {
                    // A deleted branch that would not have been taken: this
                    // execution took the right path; wait for one that
                    // does not, a bounded number of times.
                    self.same_path += 1;
                    if self.same_path < MAX_CORRUPTIONS {
                        return self.step_over(gdb);
                    }
                    // Never deviated: the error never formed.
                    self.report.masked = true;
                }
                self.disarm_bp(gdb)?;
                if seed.is_some() || self.spec.persistence() == Persistence::Transient {
                    gdb.step().map_err(gdb_err("stepping the mutated instruction"))?;
                }
                if self.spec.persistence() == Persistence::Transient {
                    let Target::Instruction { original, .. } = self.spec.target() else { unreachable!() };
                    let original = original.0.clone();
                    gdb.write_memory(self.address(), &original).map_err(gdb_err("restoring the original bytes"))?;
                }
                if let Some(seed) = seed {
                    self.begin_trace(gdb, image, &seed)?;
                }
                self.phase = Phase::Done;
                if self.report.latency_ms.is_none() {
                    self.finish_latency(at);
                }
                gdb.resume().map_err(gdb_err("resuming after the first execution"))
            }
        }
    }

    /// At the point a reach trigger names, before its instruction runs:
    /// flips there, so that instruction is the first to see the flip.
    fn on_reach(
        &mut self,
        gdb: &mut GdbClient,
        image: &KernelImage,
        at: Instant,
        count: u32,
    ) -> Result<(), InjectError> {
        let regs = gdb.read_registers().map_err(gdb_err("reading the registers at the trigger"))?;
        let applied = applied_at(image, regs.rip);
        if !self.apply_flip(gdb, image, &regs, at, applied, true)? {
            // A heap flip whose base register holds no heap pointer in this
            // execution: try the next ones, a bounded number of times.
            if self.report.hits < count + MAX_REACH_EXTRA {
                return self.step_over(gdb);
            }
            self.phase = Phase::Done;
        }
        self.disarm_bp(gdb)?;
        if self.injected_at.is_some() {
            self.finish_latency(at);
        }
        gdb.resume().map_err(gdb_err("resuming after the fault"))
    }

    fn note_corruption(&mut self, reg: FlipReg, before: u64, after: u64) {
        self.report.corruptions += 1;
        if let Some(a) = &mut self.report.applied {
            if a.reg.is_none() {
                a.reg = Some(reg);
                a.before = Some(before);
                a.after = Some(after);
            }
        }
    }

    fn after_corruption(&mut self, gdb: &mut GdbClient, at: Instant) -> Result<(), InjectError> {
        let again = self.spec.persistence() == Persistence::Permanent && self.report.corruptions < MAX_CORRUPTIONS;
        if again {
            self.arm_bp(gdb)?;
        } else {
            self.phase = Phase::Done;
        }
        if self.report.latency_ms.is_none() {
            self.finish_latency(at);
        }
        gdb.resume().map_err(gdb_err("resuming after the corruption"))
    }

    /// At the breakpoint but not acting: execute the instruction with the
    /// breakpoint lifted, put it back, go on.
    fn step_over(&mut self, gdb: &mut GdbClient) -> Result<(), InjectError> {
        self.disarm_bp(gdb)?;
        gdb.step().map_err(gdb_err("stepping over the breakpoint"))?;
        self.arm_bp(gdb)?;
        gdb.resume().map_err(gdb_err("resuming after a counted hit"))
    }

    /// Halts (until the CPU is somewhere the fault can land), applies a
    /// delay-triggered fault, arms its watch, resumes.
    fn apply_on_halt(&mut self, gdb: &mut GdbClient, image: &KernelImage) -> Result<(), InjectError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let halted = Instant::now();
            let stop = gdb.interrupt().map_err(gdb_err("halting the guest for the trigger"))?;
            if is_external(&stop, true) {
                self.report.guest_stopped = Some(format!("{stop:?}"));
                return Ok(());
            }
            let regs = gdb.read_registers().map_err(gdb_err("reading the registers"))?;
            let kernel = regs.cs & 3 == 0;
            let applied = applied_at(image, regs.rip);
            let ready = if self.apply_flip(gdb, image, &regs, halted, applied.clone(), false)? {
                true
            } else if let Target::Instruction { address, .. } = *self.spec.target() {
                self.verify_code(gdb, address)?;
                if let Some(patch) = self.spec.model().patch() {
                    let patch = patch.bytes.0.clone();
                    gdb.write_memory(address, &patch).map_err(gdb_err("writing the mutated instruction"))?;
                    self.mark_injected(halted, Applied { address: Some(address), ..applied });
                    // The next execution activates the patch.
                    self.phase = Phase::Watching;
                }
                // Register faults on an instruction act at its next
                // execution: the breakpoint hit applies them.
                self.arm_bp(gdb)?;
                true
            } else {
                false
            };
            if ready {
                self.delay_done = true;
                gdb.resume().map_err(gdb_err("resuming after the fault"))?;
                if self.injected_at.is_some() {
                    self.finish_latency(halted);
                }
                return Ok(());
            }
            gdb.resume().map_err(gdb_err("resuming to retry the trigger"))?;
            if attempts >= MAX_HALTS {
                let why = if kernel { "no register held a heap pointer" } else { "the CPU was always in user mode" };
                return Err(InjectError::NoUsableHalt { attempts, why });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Applies a register, data, stack or heap flip with the guest halted
    /// at `regs`; `false` when it cannot land here (user mode, no heap
    /// pointer) or the fault is not one of these. `exact`: a heap flip uses
    /// only its own base register (at a reach trigger, the instruction's).
    fn apply_flip(
        &mut self,
        gdb: &mut GdbClient,
        image: &KernelImage,
        regs: &Registers,
        halted: Instant,
        applied: Applied,
        exact: bool,
    ) -> Result<bool, InjectError> {
        let kernel = regs.cs & 3 == 0;
        Ok(match (self.spec.model().clone(), self.spec.target().clone()) {
            (FaultModel::RegFlip { reg, bit }, _) if kernel => {
                let (before, after) = flip_register(gdb, reg, bit)?;
                let applied = Applied { reg: Some(reg), before: Some(before), after: Some(after), ..applied };
                self.mark_injected(halted, applied);
                self.follow_register(gdb, image, reg, bit, halted)?;
                self.phase = Phase::Done;
                true
            }
            (FaultModel::DataFlip { bit }, Target::Data { address, .. }) => {
                self.flip_and_watch(gdb, address, bit, halted, applied)?;
                true
            }
            (FaultModel::StackFlip { bit }, Target::Stack { offset }) if kernel => {
                let top = (regs.rsp | (THREAD_SIZE - 1)) + 1;
                let room = top.saturating_sub(regs.rsp).max(1);
                let address = regs.rsp + offset % room;
                self.flip_and_watch(gdb, address, bit, halted, applied)?;
                true
            }
            (FaultModel::HeapFlip { bit }, Target::Heap { reg, offset }) if kernel => {
                match heap_pointer(gdb, regs, reg, offset, exact)? {
                    Some((used, address)) => {
                        self.flip_and_watch(gdb, address, bit, halted, Applied { reg: Some(used), ..applied })?;
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        })
    }

    fn flip_and_watch(
        &mut self,
        gdb: &mut GdbClient,
        address: u64,
        bit: u8,
        halted: Instant,
        mut applied: Applied,
    ) -> Result<(), InjectError> {
        let byte = gdb.read_memory(address, 1).map_err(gdb_err("reading the target byte"))?[0];
        let flipped = byte ^ (1 << bit);
        gdb.write_memory(address, &[flipped]).map_err(gdb_err("writing the flipped byte"))?;
        applied.address = Some(address);
        applied.before = Some(u64::from(byte));
        applied.after = Some(u64::from(flipped));
        self.mark_injected(halted, applied);
        // A read shows the flip was consumed; a write first masks it.
        for kind in [BreakpointKind::Read, BreakpointKind::Write] {
            gdb.set_breakpoint(kind, address, 1).map_err(gdb_err("setting a watchpoint on the flipped byte"))?;
        }
        self.watch = Some(address);
        self.phase = Phase::Watching;
        Ok(())
    }

    /// Removes whatever is still armed; the guest is left running unless
    /// it stopped on its own.
    pub fn finish(mut self, gdb: &mut GdbClient) -> Result<InjectionReport, InjectError> {
        let traced = self.tracer.as_ref().is_some_and(Tracer::watching);
        if self.report.guest_stopped.is_none() && (self.bp || self.watch.is_some() || traced) {
            let stop = gdb.interrupt().map_err(gdb_err("halting the guest to clean up"))?;
            if is_external(&stop, true) {
                self.report.guest_stopped = Some(format!("{stop:?}"));
            } else {
                self.disarm_bp(gdb)?;
                self.disarm_watch(gdb)?;
                if let Some(t) = self.tracer.as_mut() {
                    t.disarm(gdb).map_err(gdb_err("removing the tracer's watchpoints"))?;
                }
                gdb.resume().map_err(gdb_err("resuming after clean-up"))?;
            }
        }
        self.report.propagation = self.tracer.as_ref().and_then(Tracer::report);
        if self.report.propagation.is_none() && self.tracer.is_some() && self.same_path > 0 {
            // A deleted branch executed only where it would not have been
            // taken: the error never formed.
            self.report.masked = true;
        }
        Ok(self.report)
    }

    /// The seed of a code patch about to execute for the first time (the
    /// guest is stopped at it): the outputs of the original instruction
    /// (stale when the patch deletes it) and of the mutated one, and a
    /// wrong path when control flow changes. `None` for a deleted branch
    /// whose condition is false here (no deviation).
    fn patch_seed(&mut self, gdb: &mut GdbClient) -> Result<Option<Seed>, InjectError> {
        let (Some(original), Some(patch)) = (self.insn.clone(), self.spec.model().patch().cloned()) else {
            return Ok(None);
        };
        let regs = gdb.read_registers().map_err(gdb_err("reading the registers"))?;
        let mutated = mutate::decode_one(original.address(), &patch.bytes.0);
        let flow = |i: &iced_x86::Instruction| i.flow_control() != iced_x86::FlowControl::Next;
        let mut seed = outputs(&original.instr, &regs);
        match self.spec.model() {
            FaultModel::Branch { .. } => {
                if !condition_holds(original.instr.condition_code(), u64::from(regs.eflags)) {
                    return Ok(None);
                }
                seed.wrong_path = true;
            }
            FaultModel::Inverse { .. } => seed.wrong_path = true,
            _ => {
                if let Some(m) = &mutated {
                    seed = seed.merge(outputs(&m.instr, &regs));
                    let same_flow = m.bytes.len() == original.bytes.len()
                        && m.instr.flow_control() == original.instr.flow_control()
                        && m.instr.near_branch_target() == original.instr.near_branch_target();
                    seed.wrong_path |= (flow(&original.instr) || flow(&m.instr)) && !same_flow;
                } else {
                    seed.wrong_path |= flow(&original.instr);
                }
            }
        }
        Ok(Some(seed))
    }
}

/// What is known of a halt at `rip` before anything is changed.
fn applied_at(image: &KernelImage, rip: u64) -> Applied {
    let here = image.symbol_at(rip).filter(|s| s.kind == SymbolKind::Function);
    Applied {
        at: image.symbolize(rip),
        function: here.map(|s| s.name.to_string()),
        subsystem: here.and_then(|s| s.subsystem()).map(str::to_string),
        ..Applied::default()
    }
}

fn gdb_err(during: &'static str) -> impl FnOnce(GdbError) -> InjectError {
    move |source| InjectError::Gdb { during, source }
}

/// The seed of a flipped register.
fn reg_seed(reg: FlipReg) -> Seed {
    match reg {
        FlipReg::Rip => Seed { wrong_path: true, ..Seed::default() },
        FlipReg::Rflags => Seed { flags: true, ..Seed::default() },
        other => Seed { regs: vec![iced_reg(other)], ..Seed::default() },
    }
}

fn iced_reg(reg: FlipReg) -> iced_x86::Register {
    match reg {
        FlipReg::Rip => iced_x86::Register::RIP,
        other => crate::reg_use::full_register(other).unwrap_or(iced_x86::Register::None),
    }
}

/// Flips one bit of a register; returns (before, after).
fn flip_register(gdb: &mut GdbClient, reg: FlipReg, bit: u8) -> Result<(u64, u64), InjectError> {
    let before = gdb.read_register(reg.gdb()).map_err(gdb_err("reading the register"))?;
    let after = before ^ (1u64 << bit);
    gdb.write_register(reg.gdb(), after).map_err(gdb_err("writing the flipped register"))?;
    Ok((before, after))
}

/// The first register, from `first` on in [`FlipReg::GPRS`] order (only
/// `first` with `only_first`), that holds a readable kernel heap pointer;
/// returns it and `pointer + offset`.
fn heap_pointer(
    gdb: &mut GdbClient,
    regs: &Registers,
    first: FlipReg,
    offset: u64,
    only_first: bool,
) -> Result<Option<(FlipReg, u64)>, InjectError> {
    let start = FlipReg::GPRS.iter().position(|r| *r == first).unwrap_or(0);
    let tried = if only_first { 1 } else { FlipReg::GPRS.len() };
    for i in 0..tried {
        let reg = FlipReg::GPRS[(start + i) % FlipReg::GPRS.len()];
        if reg == FlipReg::Rsp {
            continue;
        }
        let Some(value) = regs.get(reg.gdb()) else { continue };
        if value < HEAP_RANGE.0 || value >= HEAP_RANGE.1 {
            continue;
        }
        let address = value.wrapping_add(offset);
        if gdb.read_memory(address, 1).is_ok() {
            return Ok(Some((reg, address)));
        }
    }
    Ok(None)
}

/// Applies `spec` and watches it for `window` (from now), calling `tick`
/// about every 20 ms; `tick` returning `true` ends the watch early (the
/// caller saw a panic, say). The guest must be stopped at the start (as
/// after [`GdbClient::connect`]) and is left running, unless it stopped on
/// its own.
pub fn run(
    gdb: &mut GdbClient,
    image: &KernelImage,
    spec: &FaultSpec,
    window: Duration,
    tick: &mut dyn FnMut(&InjectionReport) -> bool,
) -> Result<InjectionReport, InjectError> {
    run_traced(gdb, image, spec, None, window, tick)
}

/// [`run`], with the error traced from its activation when `tracer` is
/// given (the report's `propagation`).
pub fn run_traced(
    gdb: &mut GdbClient,
    image: &KernelImage,
    spec: &FaultSpec,
    tracer: Option<Tracer>,
    window: Duration,
    tick: &mut dyn FnMut(&InjectionReport) -> bool,
) -> Result<InjectionReport, InjectError> {
    let mut inj = FaultInFlight::start(gdb, spec)?;
    if let Some(t) = tracer {
        inj.set_tracer(t);
    }
    let end = inj.started + window;
    loop {
        let now = Instant::now();
        if now >= end || tick(inj.report()) {
            break;
        }
        let slice = (end - now).min(Duration::from_millis(20));
        if inj.is_done() {
            std::thread::sleep(slice);
        } else {
            inj.poll(gdb, image, slice)?;
        }
    }
    inj.finish(gdb)
}
