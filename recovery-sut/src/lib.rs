//! The recovery VMM under test, and the machinery every experiment stands
//! on: guest kernels and images in a cache, QEMU processes with QMP, the
//! guest agent's phase and heartbeat channel, and service probes.
//!
//! It owns starting, watching and stopping guests. It does not inject
//! faults (`injector`), generate load (`workloads`) or analyse results
//! (`analysis`).

pub mod accel;
pub mod accel_probe;
pub mod agent;
pub mod cache;
pub mod doctor;
pub mod guest;
pub mod kernel;
pub mod memory;
pub mod modinfo;
pub mod ports;
pub mod probe;
pub mod qmp;
pub mod recovery;
pub mod snapshot;
pub mod storage;
pub mod tools;
pub mod vm;

pub use accel::{Accel, AccelChoice, AccelDecision};
pub use cache::Cache;
pub use guest::{GuestImage, Profile};
pub use kernel::{Kernel, KernelChoice};
pub use recovery::{Golden, Strategy, Sut};
pub use vm::{BootReport, Standby, Vm, VmConfig, VmError};
