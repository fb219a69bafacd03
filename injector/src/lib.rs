//! Fault injection into a guest kernel running under QEMU.
//!
//! This crate owns the host's side of reaching into a guest kernel: a
//! client for QEMU's gdbstub ([`gdb`]) to halt the guest, read and write its
//! registers and memory, set breakpoints and resume it; and a model of the
//! kernel image ([`image`]) to turn symbol names into addresses and
//! addresses back into `function+0xoff`, with each function's source file
//! and subsystem; on these, fault models and their deterministic
//! generation ([`fault`]), applying a fault and watching its activation
//! ([`inject`]), and classifying what followed ([`outcome`]). Propagation
//! tracing is still to come.
//!
//! It does not start, snapshot or restore VMs (`recovery-sut` does), fetch
//! kernels (`recovery-sut::kernel`), or generate load (`workloads`).

pub mod fault;
pub mod gdb;
pub mod image;
pub mod inject;
pub mod outcome;
pub mod profile;
pub mod reg_use;
pub mod trace;

pub use fault::{FaultModel, FaultSpec, ModelKind, Persistence, Target, TargetSelection, Trigger};
pub use gdb::{GdbClient, GdbError};
pub use image::code::KernelCode;
pub use image::{KernelImage, LoadReport};
pub use inject::{InjectError, InjectionReport};
pub use outcome::{ConsoleReport, OopsRecord, Outcome};
