//! The verdict on one traced error: did it stay in the process context that
//! activated it?
//!
//! Definition (Yoshimura, Yamada and Kono): an error is *process-local* if
//! the erroneous value is not propagated outside the process context that
//! activated it, *kernel-global* otherwise. Here "propagated outside" means
//! observed: another task, a kernel thread or an interrupt handler read
//! tainted data.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::tracer::{PropagationReport, ShortEnd};

/// How far an error went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// The taint died before anything read it from memory: overwritten or
    /// never used.
    Masked,
    /// Only the activating context touched tainted data (its registers,
    /// its kernel stack, its task, its user memory, or shared memory
    /// nobody else read while it was watched).
    ProcessLocal,
    /// Another context read tainted data.
    KernelGlobal,
    /// The budget ran out before the question was settled.
    Unknown,
}

impl Scope {
    /// Every scope, in table order.
    pub const ALL: [Scope; 4] = [Scope::Masked, Scope::ProcessLocal, Scope::KernelGlobal, Scope::Unknown];

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Masked => "masked",
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

/// Classifies a trace; returns the scope and a one-line reason.
pub fn classify(r: &PropagationReport) -> (Scope, String) {
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
    let died = r.short_end == ShortEnd::Died;
    if died && r.tainted_bytes == 0 && r.reads == 0 {
        return (Scope::Masked, "the taint died in registers (overwritten or unused)".into());
    }
    let end = match &r.short_end {
        ShortEnd::Died => "the registers' taint died".to_string(),
        ShortEnd::ReturnedToUser => "it returned to user mode".to_string(),
        ShortEnd::Crashed { function } => format!("it crashed in {function}"),
        ShortEnd::GuestStopped => "the guest stopped".to_string(),
        ShortEnd::Budget => unreachable!("handled above"),
    };
    (
        Scope::ProcessLocal,
        format!(
            "only {} touched tainted data ({} reads, {} writes) before {end}; {} tainted bytes, {} cells watched {:.1} s",
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
            activating: Context {
                task: 0xffff_8880_0100_0000,
                pid: 1,
                tgid: 1,
                comm: "agent".into(),
                kthread: false,
                irq: IrqState::Task,
                user: false,
            },
            steps: 10,
            short_s: 0.01,
            steps_per_s: 1000.0,
            short_end: ShortEnd::Died,
            tainted_bytes: 0,
            tainted_regs: vec![],
            control_flow: false,
            writes: 0,
            reads: 0,
            watched: 0,
            overwritten: 0,
            unwatched_shared: 0,
            hits: 0,
            long_s: 0.0,
            foreign_readers: vec![],
            accesses: vec![],
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(classify(&report()).0, Scope::Masked);
        let local = PropagationReport { tainted_bytes: 8, writes: 1, watched: 1, ..report() };
        assert_eq!(classify(&local).0, Scope::ProcessLocal);
        let global = PropagationReport { foreign_readers: vec!["kworker/0:1[12]".into()], ..local.clone() };
        let (scope, why) = classify(&global);
        assert_eq!(scope, Scope::KernelGlobal);
        assert!(why.contains("kworker/0:1[12]"), "{why}");
        let budget = PropagationReport { short_end: ShortEnd::Budget, tainted_regs: vec!["rax".into()], ..report() };
        assert_eq!(classify(&budget).0, Scope::Unknown);
        let unwatched = PropagationReport { unwatched_shared: 3, ..local };
        assert_eq!(classify(&unwatched).0, Scope::Unknown);
    }
}
