//! The verdict on one traced error: did it stay in the process context that
//! activated it?
//!
//! Definition (Yoshimura, Yamada and Kono): an error is *process-local* if
//! the erroneous value is not propagated outside the process context that
//! activated it, *kernel-global* otherwise. Here "propagated outside" means
//! observed: another context read tainted data. Reads by the kernel's own
//! failure reporting (oops, panic, printk, stack dumping: see
//! [`is_failure_reporting`]) are no propagation: they are listed apart.
//! Whether an interrupt taken on the activating task is another context is
//! [`InterruptContext`]'s choice.
//!
//! The verdicts, in the order [`classify`] decides them:
//! - `kernel-global`: another context read tainted data (settled however
//!   short the watch);
//! - `unknown`: the step budget ran out with taint live, tainted shared
//!   memory was left unwatched, or tainted memory was watched for less
//!   than the minimum (`TraceConfig::min_watch_s`);
//! - `masked`: nothing read the error: its registers' taint died with no
//!   memory tainted, or every tainted cell was overwritten first;
//! - `latent`: tainted memory that nothing read in the window, some still
//!   holding the error when it ended;
//! - `process-local`: only the activating context read tainted data, or
//!   its taint went back to user mode or crashed it with no memory tainted.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::tracer::{PropagationReport, ShortEnd};

/// How far an error went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Nothing read the error: the taint died in registers, or every
    /// tainted cell was overwritten before a read.
    Masked,
    /// Tainted memory that nothing read while it was watched, still
    /// holding the error when the window ended.
    Latent,
    /// Only the activating context read tainted data (its registers, its
    /// kernel stack, its task, its user memory, or shared memory nobody
    /// else read while it was watched), or the taint went back to user
    /// mode or crashed that context with no memory tainted.
    ProcessLocal,
    /// Another context read tainted data.
    KernelGlobal,
    /// Not settled: the budget ran out, shared memory went unwatched, or
    /// the watch was shorter than the minimum.
    Unknown,
}

impl Scope {
    /// Every scope, in table order.
    pub const ALL: [Scope; 5] =
        [Scope::Masked, Scope::Latent, Scope::ProcessLocal, Scope::KernelGlobal, Scope::Unknown];

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Masked => "masked",
            Scope::Latent => "latent",
            Scope::ProcessLocal => "process-local",
            Scope::KernelGlobal => "kernel-global",
            Scope::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether an interrupt handler that runs on the activating task is a
/// context of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InterruptContext {
    /// A hard or soft interrupt is another context even on the task it
    /// interrupted: it serves someone else (the default).
    #[default]
    Separate,
    /// An interrupt taken on a task counts as that task's context: it runs
    /// on its kernel stack.
    Task,
}

impl InterruptContext {
    /// The experiment-file name.
    pub fn name(self) -> &'static str {
        match self {
            InterruptContext::Separate => "separate",
            InterruptContext::Task => "task",
        }
    }

    /// The rule in words, as reports state it.
    pub fn describe(self) -> &'static str {
        match self {
            InterruptContext::Separate => {
                "an interrupt handler is a context of its own, also on the task it interrupted"
            }
            InterruptContext::Task => "an interrupt taken on a task counts as that task's context",
        }
    }
}

/// Function names (a trailing `_`: prefixes) of the kernel's failure
/// reporting: the oops and panic paths, register and stack dumping and
/// unwinding, and printk's ring buffer and consoles. Their reads copy a
/// value into a report; they do not compute with it. The generic
/// formatters (`vsnprintf`, `number`...) are not listed: `/proc` and
/// `seq_printf` readers use them too, and a value formatted there did
/// propagate.
pub const FAILURE_REPORTING: &[&str] = &[
    "__die",
    "__die_",
    "die",
    "die_",
    "oops_",
    "page_fault_oops",
    "kernelmode_fixup_or_oops",
    "panic",
    "panic_",
    "nmi_panic",
    "__show_regs",
    "show_regs",
    "show_iret_regs",
    "show_opcodes",
    "show_ip",
    "show_stack",
    "show_trace_log_lvl",
    "show_regs_print_info",
    "dump_stack",
    "dump_stack_",
    "print_modules",
    "unwind_",
    "__unwind_start",
    "stack_access_ok",
    "update_stack_state",
    "_printk",
    "printk",
    "vprintk",
    "vprintk_",
    "prb_",
    "data_alloc",
    "data_push_tail",
    "desc_",
    "get_data",
    "copy_data",
    "console_",
    "serial8250_console",
    "record_print_text",
    "info_print_prefix",
    "bust_spinlocks",
];

/// Whether `function` (a bare name or `name+0x1a`) belongs to the kernel's
/// failure reporting ([`FAILURE_REPORTING`]).
pub fn is_failure_reporting(function: &str) -> bool {
    let name = function.split('+').next().unwrap_or(function);
    FAILURE_REPORTING.iter().any(|p| {
        if p.ends_with('_') {
            name.starts_with(p)
        } else {
            // A whole name, or one of its compiler clones (`.isra.0`).
            name == *p || name.strip_prefix(p).is_some_and(|rest| rest.starts_with('.'))
        }
    })
}

/// Classifies a trace watched against `min_watch_s`; returns the scope and
/// a one-line reason.
///
#[doc = kfi_stats::scope_definition!()]
pub fn classify(r: &PropagationReport, min_watch_s: f64) -> (Scope, String) {
    if !r.foreign_readers.is_empty() {
        return (Scope::KernelGlobal, format!("read by {}", r.foreign_readers.join(", ")));
    }
    if r.short_end == ShortEnd::Budget {
        let live = if r.tainted_regs.is_empty() {
            "the faulty frame's wrong path still running".to_string()
        } else {
            format!("{} still tainted", r.tainted_regs.join(", "))
        };
        return (Scope::Unknown, format!("{} steps spent with {live}", r.steps));
    }
    if r.unwatched_shared > 0 {
        return (Scope::Unknown, format!("{} shared cells of tainted memory were left unwatched", r.unwatched_shared));
    }
    if r.short_end == ShortEnd::GuestStopped && r.tainted_bytes == 0 {
        return (Scope::Unknown, "the guest stopped while the registers' taint was live".into());
    }
    let reporting = if r.reporting_readers.is_empty() {
        String::new()
    } else {
        format!("; read by failure reporting only in {}", r.reporting_readers.join(", "))
    };
    let end = match &r.short_end {
        ShortEnd::Died => "the registers' taint died".to_string(),
        ShortEnd::ReturnedToUser => "it returned to user mode".to_string(),
        ShortEnd::Crashed { function } => format!("it crashed in {function}"),
        ShortEnd::GuestStopped => "the guest stopped".to_string(),
        ShortEnd::Budget => unreachable!("handled above"),
    };
    if r.tainted_bytes == 0 {
        // Nothing left in memory to watch: the short range decides.
        return match r.short_end {
            ShortEnd::Died => {
                (Scope::Masked, format!("the taint died in registers (overwritten or unused){reporting}"))
            }
            _ => (Scope::ProcessLocal, format!("only {} held the taint before {end}{reporting}", r.activating)),
        };
    }
    if r.long_s < min_watch_s && r.overwritten < r.watched {
        return (
            Scope::Unknown,
            format!(
                "{} tainted bytes watched {:.2} s, under the {min_watch_s} s minimum ({} reads){reporting}",
                r.tainted_bytes, r.long_s, r.reads
            ),
        );
    }
    if r.reads == 0 {
        return if r.watched > 0 && r.overwritten == r.watched {
            (Scope::Masked, format!("every tainted cell ({}) was overwritten before a read{reporting}", r.watched))
        } else {
            (
                Scope::Latent,
                format!(
                    "nothing read the {} tainted bytes in {:.1} s ({} of {} cells overwritten){reporting}",
                    r.tainted_bytes, r.long_s, r.overwritten, r.watched
                ),
            )
        };
    }
    (
        Scope::ProcessLocal,
        format!(
            "only {} read tainted data ({} reads, {} writes) before {end}; {} tainted bytes, {} cells watched {:.1} s{reporting}",
            r.activating, r.reads, r.writes, r.tainted_bytes, r.watched, r.long_s
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::context::{Context, IrqState};

    fn report() -> PropagationReport {
        PropagationReport {
            scope: Scope::Unknown,
            why: String::new(),
            activating: context(1, IrqState::Task),
            steps: 10,
            short_s: 0.01,
            steps_per_s: 1000.0,
            short_end: ShortEnd::Died,
            tainted_bytes: 0,
            tainted_regs: vec![],
            control_flow: false,
            writes: 0,
            reads: 0,
            reporting_reads: 0,
            reporting_readers: vec![],
            watched: 0,
            overwritten: 0,
            unwatched_shared: 0,
            hits: 0,
            long_s: 0.0,
            foreign_readers: vec![],
            accesses: vec![],
            min_watch_s: 1.0,
            interrupts: InterruptContext::Separate,
        }
    }

    fn context(task: u64, irq: IrqState) -> Context {
        Context { task, pid: task as i32, tgid: task as i32, comm: "agent".into(), kthread: false, irq, user: false }
    }

    fn scope(r: &PropagationReport) -> Scope {
        classify(r, 1.0).0
    }

    #[test]
    fn verdicts() {
        assert_eq!(scope(&report()), Scope::Masked);
        // Memory tainted, watched long enough, read by its own context.
        let local = PropagationReport { tainted_bytes: 8, writes: 1, watched: 1, reads: 2, long_s: 2.0, ..report() };
        assert_eq!(scope(&local), Scope::ProcessLocal);
        let global = PropagationReport { foreign_readers: vec!["kworker/0:1[12]".into()], ..local.clone() };
        let (s, why) = classify(&global, 1.0);
        assert_eq!(s, Scope::KernelGlobal);
        assert!(why.contains("kworker/0:1[12]"), "{why}");
        // Another context's read settles it however short the watch.
        assert_eq!(scope(&PropagationReport { long_s: 0.01, ..global }), Scope::KernelGlobal);
        let budget = PropagationReport { short_end: ShortEnd::Budget, tainted_regs: vec!["rax".into()], ..report() };
        assert_eq!(scope(&budget), Scope::Unknown);
        let unwatched = PropagationReport { unwatched_shared: 3, ..local.clone() };
        assert_eq!(scope(&unwatched), Scope::Unknown);
        // No memory tainted: the short range decides.
        let to_user =
            PropagationReport { short_end: ShortEnd::ReturnedToUser, tainted_regs: vec!["rax".into()], ..report() };
        assert_eq!(scope(&to_user), Scope::ProcessLocal);
        let crashed = PropagationReport { short_end: ShortEnd::Crashed { function: "oops_begin".into() }, ..report() };
        assert_eq!(scope(&crashed), Scope::ProcessLocal);
    }

    /// A flip nothing read is latent, or masked once every cell holding it
    /// was overwritten, never process-local; one watched under the minimum
    /// is unknown.
    #[test]
    fn an_error_nothing_read_is_latent_or_masked_and_a_short_watch_is_unknown() {
        let unread = PropagationReport { tainted_bytes: 8, watched: 1, long_s: 3.0, ..report() };
        let (s, why) = classify(&unread, 1.0);
        assert_eq!(s, Scope::Latent, "{why}");
        let overwritten = PropagationReport { overwritten: 1, long_s: 0.01, ..unread.clone() };
        assert_eq!(scope(&overwritten), Scope::Masked);
        let brief = PropagationReport { long_s: 0.04, ..unread.clone() };
        let (s, why) = classify(&brief, 1.0);
        assert_eq!(s, Scope::Unknown);
        assert!(why.contains("under the 1 s minimum"), "{why}");
        // The minimum is the caller's: 0 accepts any watch.
        assert_eq!(classify(&brief, 0.0).0, Scope::Latent);
        let read_briefly = PropagationReport { reads: 3, ..brief };
        assert_eq!(scope(&read_briefly), Scope::Unknown);
    }

    /// Reads by the oops printer are listed apart and make no verdict: a
    /// flip read only by `__show_regs` in softirq is not kernel-global.
    #[test]
    fn reads_by_failure_reporting_are_no_propagation() {
        for f in [
            "__show_regs+0x1a",
            "__die_header",
            "oops_begin",
            "prb_reserve",
            "data_alloc",
            "vprintk_emit",
            "show_trace_log_lvl.isra.0",
            "dump_stack_lvl",
            "console_unlock",
        ] {
            assert!(is_failure_reporting(f), "{f}");
        }
        for f in ["tcp_v4_rcv", "vsnprintf", "number", "seq_printf", "string_escape_mem", "diediedie", "panicky"] {
            assert!(!is_failure_reporting(f), "{f}");
        }
        let only_the_printer = PropagationReport {
            tainted_bytes: 8,
            watched: 1,
            long_s: 2.0,
            reporting_reads: 2,
            reporting_readers: vec!["swapper/0[0] in softirq in __show_regs".into()],
            ..report()
        };
        let (s, why) = classify(&only_the_printer, 1.0);
        assert_eq!(s, Scope::Latent, "{why}");
        assert!(why.contains("failure reporting only in swapper/0[0] in softirq in __show_regs"), "{why}");
    }

    /// The interrupt switch, both ways: a softirq on the activating task is
    /// another context by default and the same one under `task`; another
    /// task is another context either way.
    #[test]
    fn an_interrupt_on_the_activating_task_is_another_context_only_when_separate() {
        let task = context(7, IrqState::Task);
        let softirq = context(7, IrqState::Softirq);
        let other = context(8, IrqState::Task);
        assert!(!softirq.same_under(&task, InterruptContext::Separate));
        assert!(softirq.same_under(&task, InterruptContext::Task));
        assert!(!other.same_under(&task, InterruptContext::Separate));
        assert!(!other.same_under(&task, InterruptContext::Task));
        assert_eq!(serde_json::to_string(&InterruptContext::Task).unwrap(), "\"task\"");
        assert_eq!(InterruptContext::default(), InterruptContext::Separate);
    }
}
