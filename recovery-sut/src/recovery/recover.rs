//! The recovery loop: after a failure, [`Sut::recover`] runs the chosen
//! strategy, falls back (service-restore to phase-restore to a full
//! reboot) when the snapshot it needs is missing, corrupt, stale or
//! forbidden by the safety monitor, holds clients at the host until a
//! restarted guest's data-dependent services run (where the profile asks
//! for it), waits for the first correct answer, times each step, and
//! afterwards takes the service snapshot again and readies the standby.

use std::time::Instant;

use serde::Serialize;

use super::detect::{Failure, FailureCause};
use super::error::RecoveryError;
use super::snapshots::Which;
use super::standby;
use super::strategy::Strategy;
use super::sut::{Sut, RETAKE_READY, RETAKE_SETTLE, SERVICE_TIMEOUT};
use crate::probe;
use crate::snapshot::{RamCheck, Snapshot};
use crate::vm::{save, Vm, VmError};

/// How one recovery went, in seconds.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryTiming {
    /// The strategy that ran.
    pub strategy: Strategy,
    /// The strategy asked for, when it fell back to another one.
    pub requested: Strategy,
    /// Why it fell back, if it did.
    pub fallback_reason: Option<String>,
    /// What gave the failure away.
    pub cause: FailureCause,
    /// Reset or restore until the guest runs again.
    pub restart_s: f64,
    /// When the guest ran again (`restart_s` after the recovery began): a
    /// phase restore's or reboot's later stages (data disk mounted,
    /// database ready) count from here.
    #[serde(skip)]
    pub running_at: Instant,
    /// From detection to the first correct service answer.
    pub service_s: f64,
    /// The restore ran on a QEMU launched beforehand ([`Vm::standby`]).
    pub standby: bool,
}

impl Sut {
    /// Brings the service back after `failure` with `strategy` and waits for
    /// the first correct answer. A service snapshot that is missing, corrupt
    /// or stale (the data disk was written since) falls back to
    /// phase-restore, and a phase snapshot that cannot be used to a full
    /// reboot; the timing says which ran and why. Except after a service
    /// restore, clients that need the data-dependent services
    /// ([`Sut::set_clients_need`]) are forwarded to the guest only once it
    /// reports its profile's `admit_after` phase (debian: MariaDB active).
    pub fn recover(&mut self, strategy: Strategy, failure: &Failure) -> Result<RecoveryTiming, RecoveryError> {
        let started = Instant::now();
        self.absorb_agent();
        // The crashed QEMU still counts the data disk's writes.
        let vm = self.vm.as_mut().expect("the SUT always holds a VM between calls");
        self.snapshots.note_data_writes(vm);
        let mut fallback_reason = None;
        let mut used = strategy;
        // Whether the restore, if one ran, ran on the standby.
        let mut on_standby = false;
        if strategy == Strategy::KexecReboot {
            match failure.cause {
                // Already on its way into the crash kernel: phases from
                // here on are the crash kernel's.
                FailureCause::GuestCrashLoaded => {
                    self.vm().agent().reset();
                    if self.holds_clients() {
                        self.vm().close_port()?;
                    }
                }
                FailureCause::GuestPanicked => {
                    used = Strategy::FullReboot;
                    fallback_reason = Some(
                        "the kernel panicked with no crash kernel loaded (booted without one, not loaded yet, or already running it)"
                            .to_string(),
                    );
                }
                other => {
                    used = Strategy::FullReboot;
                    fallback_reason = Some(format!(
                        "the failure ({}) was no panic: only a panic enters the crash kernel",
                        other.name()
                    ));
                }
            }
        }
        if strategy == Strategy::ServiceRestore {
            let reason = if self.snapshots.data_dirty() {
                Some(
                    "the data disk was written since the service snapshot; its page cache would disagree with the disk"
                        .to_string(),
                )
            } else if let Some(reason) = self.snapshots.unsafe_reason(Which::Service) {
                Some(reason)
            } else {
                match self.try_restore(Which::Service) {
                    Ok(standby) => {
                        on_standby = standby;
                        None
                    }
                    Err(reason) => Some(reason),
                }
            };
            if let Some(reason) = reason {
                used = if self.snapshots.get(Which::Phase).is_some() {
                    Strategy::PhaseRestore
                } else {
                    Strategy::FullReboot
                };
                fallback_reason = Some(reason);
            }
        }
        if used == Strategy::PhaseRestore {
            let restored = match self.snapshots.unsafe_reason(Which::Phase) {
                Some(reason) => Err(reason),
                None => self.try_restore(Which::Phase),
            };
            match restored {
                Ok(standby) => {
                    on_standby = standby;
                    self.vm()
                        .agent()
                        .send("continue")
                        .map_err(|source| RecoveryError::Io { what: "the agent command", source })?
                }
                Err(reason) => {
                    used = Strategy::FullReboot;
                    fallback_reason = Some(fallback_reason.map_or(reason.clone(), |r| format!("{r}; then {reason}")));
                }
            }
        }
        if let Some(reason) = &fallback_reason {
            tracing::warn!("{strategy} falls back to {used}: {reason}");
        }
        if used == Strategy::FullReboot {
            self.full_reboot()?;
        }
        let running_at = Instant::now();
        let restart_s = running_at.duration_since(started).as_secs_f64();
        // Every strategy but a service restore starts the data-dependent
        // services again; where the profile says so, clients are forwarded
        // only once they run, as they were before the failure.
        if used != Strategy::ServiceRestore {
            self.admit_clients(&used)?;
        }
        let ready = self.first_correct_answer().map_err(|e| RecoveryError::NotRecovered {
            strategy: used,
            timeout: SERVICE_TIMEOUT,
            last: e.to_string(),
        })?;
        let service_s = ready.duration_since(failure.detected_at).as_secs_f64();
        let vm = self.vm.as_mut().expect("the SUT always holds a VM between calls");
        match used {
            Strategy::ServiceRestore => self.snapshots.data_restored(vm),
            Strategy::PhaseRestore | Strategy::FullReboot | Strategy::KexecReboot => self.snapshots.data_remounted(vm),
        }
        // A recovery that did not restore the service snapshot leaves it
        // stale (the data disk remounted) or invalid: a fresh one is taken
        // once the service runs again and the data disk is quiet, here if
        // it settles soon, else by a later `maintain`. The guest can be
        // snapshotted after a reboot in the same QEMU and after a phase
        // restore on a standby with RAM of its own.
        if matches!(used, Strategy::FullReboot | Strategy::PhaseRestore) && self.snapshots.get(Which::Service).is_some()
        {
            self.service_due = true;
            self.retake_service(RETAKE_READY, RETAKE_SETTLE)?;
        }
        // Commands sent while the guest has the agent port closed are lost;
        // the agent reads commands from before its first heartbeat on.
        if self.vm().agent().wait_heartbeat(0, SERVICE_TIMEOUT).is_none() {
            tracing::warn!("no agent heartbeat after {used}");
        }
        if used == Strategy::FullReboot {
            self.wait_crash_kernel()?;
        }
        // The standby the restore took (or one on a snapshot gone stale)
        // is replaced now, off the downtime path.
        self.prepare_for(strategy);
        Ok(RecoveryTiming {
            strategy: used,
            requested: strategy,
            fallback_reason,
            cause: failure.cause,
            restart_s,
            running_at,
            service_s,
            standby: on_standby,
        })
    }

    /// Replaces the VM by one restored from the `which` snapshot; `Err`
    /// carries why it could not, for the fallback's reason.
    /// `Ok(true)`: the restore ran on the standby QEMU.
    pub(super) fn try_restore(&mut self, which: Which) -> Result<bool, String> {
        let name = which.name();
        let snap = self.snapshots.get(which).ok_or_else(|| format!("no {name} snapshot was taken"))?;
        let snap = Snapshot::open(&snap.dir).map_err(|e| format!("the {name} snapshot is unusable: {e}"))?;
        if let Some(vm) = &self.vm {
            save::check_matches(&snap, vm).map_err(|e| format!("the {name} snapshot is unusable: {e}"))?;
        }
        let check = snap.verify_ram().map_err(|e| format!("the {name} snapshot is unusable: {e}"))?;
        if check == RamCheck::Hashed {
            tracing::info!(
                "the {name} snapshot's RAM was not checked ahead of this restore; it was hashed on the restore path"
            );
        }
        #[cfg(feature = "test-knobs")]
        test_knobs::restore_delay();
        let standby = self.standby.take_for(&snap);
        if let Some(old) = self.vm.take() {
            old.kill();
        }
        // On failure no VM is left: the fallback's full reboot starts one.
        // A phase restore starts the data-dependent services: clients wait
        // at the host until they run (see `PhaseBoundary::admit_after`).
        let open = which == Which::Service || !self.holds_clients();
        let (vm, on_standby) = standby::restore(standby, &self.image, &self.config, &snap, name, open)
            .map_err(|e| format!("restoring the {name} snapshot failed: {e}"))?;
        self.vm = Some(vm);
        Ok(on_standby)
    }

    /// Forwards clients to a guest whose data-dependent services were
    /// started again (by `after`), once they run, where the profile holds
    /// them until then (`PhaseBoundary::admit_for` the clients' need); a guest that never
    /// reports that phase gets them anyway, with a warning.
    pub(super) fn admit_clients(&mut self, after: &dyn std::fmt::Display) -> Result<(), VmError> {
        if let Some(phase) = self.image.profile().phase_boundary().admit_for(self.clients_need) {
            let vm = self.vm();
            if let Err(e) = vm.wait_phase(phase, SERVICE_TIMEOUT) {
                tracing::warn!("the guest never reported `{phase}` after {after}: {e}; forwarding clients anyway");
            }
            vm.open_port()?;
        }
        Ok(())
    }

    /// Waits (at most [`SERVICE_TIMEOUT`], while QEMU lives) for the
    /// service's first correct answer; returns when it came.
    pub(super) fn first_correct_answer(&mut self) -> Result<Instant, probe::ProbeError> {
        let vm = self.vm();
        probe::wait_correct(vm.http_addr(), vm.image().docs.index(), Instant::now() + SERVICE_TIMEOUT, || {
            vm.check_alive().is_ok()
        })
    }

    /// Whether a recovery that restarts the data-dependent services holds
    /// clients at the host until they run (`PhaseBoundary::admit_for`).
    pub(super) fn holds_clients(&self) -> bool {
        self.image.profile().phase_boundary().admit_for(self.clients_need).is_some()
    }

    fn full_reboot(&mut self) -> Result<(), RecoveryError> {
        // Snapshots the safety monitor has invalidated are taken again on
        // the way up, which needs RAM of the VM's own: a restored QEMU maps
        // a snapshot's RAM privately, so it makes way for a cold start.
        let retake = self.snapshots.unsafe_reason(Which::Service).is_some()
            || self.snapshots.unsafe_reason(Which::Phase).is_some();
        let vm = match self.vm.take() {
            Some(mut vm)
                if vm.check_alive().is_ok() && (vm.snapshottable() || !retake) && !self.qemu_boots_old_kernel =>
            {
                vm.agent().reset();
                if self.holds_clients() {
                    vm.close_port()?;
                }
                vm.qmp().execute("system_reset", None).map_err(VmError::from)?;
                // A watchdog or panic event of the old boot must not count
                // as a failure of the new one.
                vm.qmp().drain_events();
                // A panicked guest stays paused across the reset.
                if vm.status()? != "running" {
                    vm.cont()?;
                }
                vm
            }
            // QEMU itself is gone (or must go): a cold start on the same
            // ports and disks, once the old one has released them.
            old => {
                if let Some(old) = old {
                    old.kill();
                }
                let mut vm = Vm::start(&self.image, &self.config)?;
                self.qemu_boots_old_kernel = false;
                if self.holds_clients() {
                    vm.close_port()?;
                }
                vm
            }
        };
        self.vm = Some(vm);
        // The boot stops at the phase boundary it was told to hold at.
        if self.snapshots.get(Which::Phase).is_some() {
            self.vm().wait_phase("held", SERVICE_TIMEOUT)?;
            self.absorb_agent();
            let vm = self.vm.as_mut().expect("the SUT always holds a VM between calls");
            self.snapshots.retake_phase_if_unsafe(vm)?;
            self.vm()
                .agent()
                .send("continue")
                .map_err(|source| RecoveryError::Io { what: "the agent command", source })?;
        }
        Ok(())
    }
}

/// Knobs a test build turns to prove that the checks catch a regression;
/// compiled only with the `test-knobs` feature, so that a release build
/// never reads them.
#[cfg(feature = "test-knobs")]
mod test_knobs {
    use std::time::Duration;

    /// Makes a restore slower on purpose by `KFI_TEST_RESTORE_DELAY_MS`
    /// (`kfi check` must catch it).
    pub(super) fn restore_delay() {
        let Ok(value) = std::env::var("KFI_TEST_RESTORE_DELAY_MS") else { return };
        match value.parse::<u64>() {
            Ok(ms) => {
                tracing::warn!(
                    "KFI_TEST_RESTORE_DELAY_MS={ms}: this restore is slowed down on purpose (a test-knobs build)"
                );
                std::thread::sleep(Duration::from_millis(ms));
            }
            Err(_) => tracing::warn!("KFI_TEST_RESTORE_DELAY_MS={value:?} is no number of milliseconds; ignored"),
        }
    }
}
