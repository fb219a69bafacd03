//! Error propagation scope: where an injected error goes after activation,
//! and whether it stays in the process context that activated it.
//!
//! - [`layout`]: the kernel's per-CPU and `task_struct` offsets (DWARF);
//! - [`context`]: the running task and interrupt state at a stop;
//! - [`taint`]: taint propagation over one instruction (pure);
//! - [`tracer`]: single-stepping the short range, watchpoints for the long
//!   range;
//! - [`scope`]: the verdict (`masked`, `process-local`, `kernel-global`,
//!   `unknown`).

pub mod context;
pub mod layout;
pub mod scope;
pub mod taint;
pub mod tracer;

pub use context::{Context, ContextReader, IrqState};
pub use layout::KernelLayout;
pub use scope::{is_failure_reporting, InterruptContext, Scope, FAILURE_REPORTING};
pub use taint::MemRange;
pub use tracer::{PropagationReport, Seed, ShortEnd, TraceConfig, Tracer};
