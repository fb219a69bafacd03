//! The recovery VMM under test, and the machinery every experiment stands
//! on: guest kernels and images in a cache, QEMU processes with QMP, the
//! guest agent's phase and heartbeat channel, service probes, snapshots
//! and their restore paths, and the recovery loop.
//!
//! It owns starting, watching, snapshotting, restoring and stopping
//! guests, and bringing a failed guest's service back. It does not inject
//! faults (`injector`), generate load (`workloads`), analyse results
//! (`analysis`) or run campaigns (the `kfi` binary).
//!
//! # Layers
//!
//! Each module uses only those of the layers below it; none imports one
//! above (doc links aside):
//!
//! 1. Plain parts with no VM: [`tools`] (host programs), [`ports`],
//!    [`qmp`], [`agent`] (the guest agent's channel), [`storage`]
//!    (emulated storage, the stream feeder), [`cache`] (the cache and its
//!    integrity rules), [`modinfo`], [`kernel`], [`guest`] (images),
//!    [`probe`] (service probes), [`accel`] (the accelerator names, not
//!    the probe boot), [`snapshot`] (a snapshot's files and manifest: open,
//!    verify, write, sparse copies; no QEMU).
//! 2. [`vm`]: one QEMU process, its command line, QMP and agent; its
//!    restore paths (`vm/restore.rs`: lazy, on a [`Standby`], streamed) and
//!    taking snapshots of it ([`vm::save`]).
//! 3. Users of a VM: [`accel_probe`] (the KVM probe boot that decides the
//!    accelerator), [`memory`] (page-cache fill and drop, free-page
//!    reporting), [`doctor`].
//! 4. [`recovery`]: the system under test ([`Sut`]) and its recovery loop,
//!    split by concern into strategies, failure detectors, the snapshot
//!    set and its validity rules, the standby QEMU, and the loop itself
//!    (see its module doc for their own order).
//!
//! # Features
//!
//! - `test-knobs`: compiles in knobs that let a test make the harness
//!   misbehave on purpose (`KFI_TEST_RESTORE_DELAY_MS` slows every recovery
//!   restore down, for `kfi check` to catch). Without it those variables
//!   are never read; with it, a set one is logged as a warning. Only test
//!   builds enable it (`kfi`'s own `test-knobs` forwards it).

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
pub mod private;
pub mod probe;
pub mod qmp;
pub mod recovery;
pub mod snapshot;
pub mod storage;
pub mod tools;
pub mod vm;

pub use accel::{Accel, AccelChoice, AccelDecision};
pub use cache::Cache;
pub use guest::{ClientsNeed, GuestImage, Profile};
pub use kernel::{Kernel, KernelChoice};
pub use recovery::{Golden, Strategy, Sut, UpdateStrategy};
pub use vm::{BootReport, Plugin, Standby, Vm, VmConfig, VmError};
