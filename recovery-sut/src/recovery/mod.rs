//! The recovery VMM's control loop: a system under test that keeps a guest's
//! service up, notices kernel failures by itself, and brings the service
//! back with a chosen strategy, timing each step.
//!
//! The safety monitor decides whether a snapshot may be restored: the guest
//! agent reports the watched files (see [`crate::guest::Profile::watched_files`])
//! and their changes; a snapshot whose recorded manifest no longer matches,
//! or that was taken before a reported change, is invalid, and recovery
//! falls back to a full reboot that takes fresh snapshots on the way up.
//!
//! One concern per module, each using only those listed before it:
//!
//! - `strategy`: [`Strategy`] and the VM configuration each one needs;
//! - `error`: [`RecoveryError`];
//! - `detect`: the failure detectors ([`Detectors`], [`ServiceProbe`], the
//!   probe thread) and the watch loop that returns a [`Failure`];
//! - `snapshots`: the phase and service snapshots and their validity (the
//!   safety monitor's verdict, the data disk's write count), letting the
//!   data disk settle before a service snapshot;
//! - `standby`: the standby QEMU launched ahead of a service restore;
//! - `sut`: [`Sut`] (boot, golden restore, freeze, snapshots, watching)
//!   and [`Golden`];
//! - `recover`: the recovery loop, [`Sut::recover`] with its fallbacks,
//!   and [`RecoveryTiming`];
//! - `shadow`: an update's shadow VM (the new kernel booted beside the
//!   primary, snapshotted at the boundary, discarded);
//! - `update`: kernel updates, [`Sut::update`] by [`UpdateStrategy`]
//!   (reboot, kexec, ShadowReboot), [`UpdateTiming`], [`UpdateError`].
//!
//! This module only declares them and re-exports their public items; none
//! of them imports it.

mod detect;
mod error;
mod recover;
mod shadow;
mod snapshots;
mod standby;
mod strategy;
mod sut;
mod update;

pub use detect::{Detectors, Failure, FailureCause, ServiceProbe};
pub use error::RecoveryError;
pub use recover::RecoveryTiming;
pub use strategy::{kexec_crash_kernel_mib, Strategy, UnknownStrategy};
pub use sut::{Golden, Sut};
pub use update::{ShadowTiming, UnknownUpdateStrategy, UpdateError, UpdateStrategy, UpdateTiming};
