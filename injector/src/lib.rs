//! Fault injection into a guest kernel running under QEMU.
//!
//! This crate owns the host's side of reaching into a guest kernel: a
//! client for QEMU's gdbstub ([`gdb`]) to halt the guest, read and write its
//! registers and memory, set breakpoints and resume it; and a model of the
//! kernel image ([`image`]) to turn symbol names into addresses and
//! addresses back into `function+0xoff`, with each function's source file
//! and subsystem. Fault models, triggers, outcome detection and
//! propagation tracing will build on these.
//!
//! It does not start, snapshot or restore VMs (`recovery-sut` does), fetch
//! kernels (`recovery-sut::kernel`), or generate load (`workloads`).

pub mod gdb;
pub mod image;

pub use gdb::{GdbClient, GdbError};
pub use image::{KernelImage, LoadReport};
