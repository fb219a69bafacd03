//! Kernel updates of a running SUT ([`Sut::update`]): a reboot into the
//! new kernel (the baseline), a kexec into it, and ShadowReboot (Yamada and
//! Kono, VEE 2013): a shadow VM boots the new kernel while the old one
//! serves, is snapshotted at the phase boundary and discarded, and the
//! primary switches to that snapshot.
//!
//! The image names both kernels ([`GuestImage::updated`]); every strategy
//! ends in a QEMU whose guest runs the new kernel, checked by the release
//! its agent reports. The old kernel's snapshots are kept until the new
//! kernel serves: a switch that fails rolls back to them.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::error::RecoveryError;
use super::shadow::{self, RootClone, Shadow};
use super::snapshots::Which;
use super::sut::{Sut, RETAKE_READY, RETAKE_SETTLE, SERVICE_TIMEOUT};
use crate::agent::RequestError;
use crate::guest::GuestImage;
use crate::snapshot::Snapshot;
use crate::vm::{Vm, VmError};

/// How a kernel update is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateStrategy {
    /// The guest reboots; QEMU starts again with the new kernel (what a
    /// reboot loads is QEMU's `-kernel`, not the guest's `/boot`).
    Reboot,
    /// The guest loads the new kernel with `kexec -l` while it serves,
    /// then jumps into it: no firmware, no QEMU restart.
    Kexec,
    /// A shadow VM boots the new kernel to the phase boundary while the
    /// primary serves; the primary then restores the shadow's snapshot.
    ShadowReboot,
}

impl UpdateStrategy {
    /// Every strategy, baseline first.
    pub const ALL: [UpdateStrategy; 3] = [UpdateStrategy::Reboot, UpdateStrategy::Kexec, UpdateStrategy::ShadowReboot];

    /// The strategy's name on the command line and in records.
    pub fn name(self) -> &'static str {
        match self {
            UpdateStrategy::Reboot => "reboot",
            UpdateStrategy::Kexec => "kexec",
            UpdateStrategy::ShadowReboot => "shadow-reboot",
        }
    }
}

impl fmt::Display for UpdateStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is no update strategy.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown update strategy `{0}`: expected reboot, kexec or shadow-reboot")]
pub struct UnknownUpdateStrategy(String);

impl FromStr for UpdateStrategy {
    type Err = UnknownUpdateStrategy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UpdateStrategy::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| UnknownUpdateStrategy(s.to_string()))
    }
}

/// Why an update did not end with the new kernel serving.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The image carries one kernel.
    #[error("the {profile} guest image carries no second kernel to update to; boot one built for an update (`kfi update --to RELEASE` builds it)")]
    NoSecondKernel {
        /// The image's profile.
        profile: crate::guest::Profile,
    },
    /// The SUT's guest cannot be updated this way.
    #[error("cannot update by {strategy}: {why}")]
    Unsupported {
        /// The strategy.
        strategy: UpdateStrategy,
        /// Why.
        why: String,
    },
    /// The shadow VM did not reach its phase boundary; the primary was
    /// not touched and serves the old kernel.
    #[error("the shadow VM could not boot {release}: {why}; the primary still serves the old kernel")]
    ShadowFailed {
        /// The new kernel.
        release: String,
        /// Why (QEMU's error, a panic, a timeout), with the shadow's console.
        why: String,
    },
    /// Watched files changed on the primary after the shadow was cloned,
    /// twice: switching would bring back a system that disagrees with them.
    #[error("switch refused: {0}")]
    Refused(String),
    /// The guest refused or failed a step before the switch; the old kernel
    /// still serves.
    #[error("the guest could not {step}: {why}; the old kernel still serves")]
    Guest {
        /// The step.
        step: &'static str,
        /// The guest's words.
        why: String,
    },
    /// The switch failed after the old kernel stopped; the SUT rolled back
    /// to the old kernel's snapshots and serves again.
    #[error("the update by {strategy} failed ({why}); rolled back to {release}, which serves again")]
    RolledBack {
        /// The strategy.
        strategy: UpdateStrategy,
        /// What went wrong.
        why: String,
        /// The old kernel, serving again.
        release: String,
    },
    /// The switch failed and so did the rollback.
    #[error("the update by {strategy} failed ({why}) and rolling back failed too: {rollback}")]
    Lost {
        /// The strategy.
        strategy: UpdateStrategy,
        /// What went wrong.
        why: String,
        /// Why the rollback failed.
        rollback: String,
    },
    /// The recovery machinery failed.
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
}

impl From<VmError> for UpdateError {
    fn from(e: VmError) -> Self {
        UpdateError::Recovery(e.into())
    }
}

/// The shadow's part of a ShadowReboot.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowTiming {
    /// How the shadow got the primary's state.
    pub clone: &'static str,
    /// From the shadow QEMU's start to its guest held at the boundary.
    pub boot_s: f64,
    /// Taking its snapshot.
    pub snapshot_s: f64,
    /// Launching the standby QEMU the primary switches to.
    pub standby_s: f64,
    /// How many times the shadow was booted (again after watched files
    /// changed on the primary meanwhile).
    pub boots: u32,
    /// Bytes the primary wrote to its root disk after the clone, lost with
    /// the switch (`None`: no root disk, as on the tiny guest).
    pub root_writes_lost_bytes: Option<u64>,
}

/// How one update went, in seconds.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateTiming {
    /// The strategy.
    pub strategy: UpdateStrategy,
    /// The kernel before (`uname -r`, as the agent reported it).
    pub from_release: String,
    /// The kernel after, as the agent reported it.
    pub to_release: String,
    /// Work done while the old kernel still served: kexec's load, the
    /// shadow's boot, snapshot and standby (0 for a reboot).
    pub prepare_s: f64,
    /// The shadow's steps, for a ShadowReboot.
    pub shadow: Option<ShadowTiming>,
    /// Stopping the data disk's writers (the switch's first step: on
    /// debian MariaDB's orderly stop), while the old kernel still serves
    /// what needs no database.
    pub quiesce_s: f64,
    /// From the end of the quiesce until the guest runs the new kernel (a
    /// reboot: the new QEMU started; kexec: the new kernel's first phase; a
    /// ShadowReboot: restored).
    pub switch_s: f64,
    /// From the switch until the VMM's probe got the first correct answer
    /// (the release check after it not counted).
    pub service_s: f64,
    /// From the switch until the guest reported every service running
    /// (`services-ready`; debian: MariaDB included), whether or not the
    /// clients waited for it; `None` where it did not within the service
    /// timeout.
    pub all_services_s: Option<f64>,
    /// Whether clients were held at the host until the data-dependent
    /// services ran ([`crate::ClientsNeed`]; only debian holds them).
    pub clients_held: bool,
    /// The restore ran on a QEMU launched beforehand.
    pub standby: bool,
    /// Whether a phase snapshot of the new kernel exists afterwards.
    pub phase_snapshot: bool,
    /// When the preparation began (the old kernel serving).
    #[serde(skip)]
    pub prepare_at: Instant,
    /// When the switch began.
    #[serde(skip)]
    pub switch_at: Instant,
    /// When the VMM's probe got the new kernel's first correct answer.
    #[serde(skip)]
    pub served_at: Instant,
}

/// How long the guest gets to go down for a reboot (systemd's orderly
/// shutdown under TCG on a loaded host takes tens of seconds).
const REBOOT_TIMEOUT: Duration = SERVICE_TIMEOUT;
/// How long an agent command may take (`kexec -l` of a bzImage under TCG
/// takes seconds, MariaDB's orderly stop in a quiesce tens of seconds).
const COMMAND_TIMEOUT: Duration = SERVICE_TIMEOUT;

impl Sut {
    /// Updates the guest's kernel to the image's second kernel by
    /// `strategy` while clients are served, and waits for the first correct
    /// answer from the new kernel. The old kernel's snapshots are kept
    /// until then; afterwards the phase snapshot is the new kernel's and
    /// the service snapshot is taken again once the data disk is quiet.
    pub fn update(&mut self, strategy: UpdateStrategy) -> Result<UpdateTiming, UpdateError> {
        let next = self.image.updated().ok_or(UpdateError::NoSecondKernel { profile: self.image.profile() })?;
        if self.config.crash_kernel_mib.is_some() {
            return Err(UpdateError::Unsupported {
                strategy,
                why: "the guest reserves a crash kernel (kexec-reboot); boot it without one".into(),
            });
        }
        let from_release = self.vm().agent().release().unwrap_or_else(|| self.image.kernel.release.clone());
        self.absorb_agent();
        self.listening()?;
        let prepare_at = Instant::now();
        let mut shadow = None;
        match strategy {
            UpdateStrategy::Reboot => {}
            UpdateStrategy::Kexec => {
                let release = &next.kernel.release;
                self.command(&format!("kexec-load {{seq}} {release}"), "load the new kernel with kexec")?;
            }
            UpdateStrategy::ShadowReboot => shadow = Some(self.prepared_shadow(&next)?),
        }
        let prepare_s = prepare_at.elapsed().as_secs_f64();
        // Writers stop before the old kernel goes: what was acknowledged is
        // on the disk, and nothing writes it until the new kernel mounts it.
        let switch_at = Instant::now();
        if let Err(e) = self.command("quiesce {seq}", "remount the data disk read-only") {
            undo_root(shadow.as_mut());
            return Err(e);
        }
        let quiesced_at = Instant::now();
        // The old kernel's standby maps an old snapshot: no use any more.
        self.standby.clear();
        let switched = match self.switch(strategy, &next, shadow.as_mut()) {
            Ok(switched) => switched,
            Err(why) => {
                undo_root(shadow.as_mut());
                return Err(self.roll_back(strategy, why));
            }
        };
        let running_at = Instant::now();
        let served_at = match self.admit_and_check(&next, strategy) {
            Ok(at) => at,
            Err(why) => {
                if let Some(vm) = self.vm.take() {
                    vm.kill();
                }
                undo_root(shadow.as_mut());
                return Err(self.roll_back(strategy, why));
            }
        };
        let all_services_at = self
            .vm()
            .wait_phase("services-ready", SERVICE_TIMEOUT)
            .ok()
            .and_then(|_| self.vm().phase_instant("services-ready"));
        // The switched guest's disks: the clone's directory, where there is
        // a root disk; the primary's root writes since the clone go with it.
        if let Some(root) = shadow.as_mut().and_then(|s| s.root.take()) {
            if let Some(s) = shadow.as_mut() {
                s.timing.root_writes_lost_bytes = Some(root.lost_bytes());
            }
            self.config.disk_dir = Some(root.dir.path().to_path_buf());
            self.disks = root.into_dir();
        }
        let to_release = self.vm().agent().release().unwrap_or_default();
        let phase = match switched.phase {
            Some(phase) => Some(phase),
            None => self.phase_by_shadow(&next),
        };
        // The new kernel serves: its phase snapshot replaces the old one.
        self.qemu_boots_old_kernel = strategy == UpdateStrategy::Kexec;
        self.image = next;
        let phase_snapshot = phase.is_some();
        let vm = self.vm.as_mut().expect("the SUT always holds a VM between calls");
        let old = self.snapshots.updated(phase, vm);
        for snap in old {
            if snap.dir.starts_with(self.snapshots.path_of("")) {
                let _ = std::fs::remove_dir_all(&snap.dir);
            }
        }
        self.service_due = true;
        self.retake_service(RETAKE_READY, RETAKE_SETTLE)?;
        self.prepare_for(self.expected);
        Ok(UpdateTiming {
            strategy,
            from_release,
            to_release,
            prepare_s,
            shadow: shadow.map(|s| s.timing),
            quiesce_s: quiesced_at.duration_since(switch_at).as_secs_f64(),
            switch_s: running_at.duration_since(quiesced_at).as_secs_f64(),
            service_s: served_at.duration_since(switch_at).as_secs_f64(),
            all_services_s: all_services_at.map(|at| at.saturating_duration_since(switch_at).as_secs_f64()),
            clients_held: self.holds_clients(),
            standby: switched.standby,
            phase_snapshot,
            prepare_at,
            switch_at,
            served_at,
        })
    }

    /// Sends `command` (`{seq}` replaced by a fresh number) and waits for
    /// its acknowledgement.
    fn command(&mut self, command: &str, step: &'static str) -> Result<(), UpdateError> {
        match self.vm().agent().request(command, COMMAND_TIMEOUT) {
            Ok(()) => Ok(()),
            Err(RequestError::Send { source, .. }) => {
                Err(RecoveryError::Io { what: "the agent command", source }.into())
            }
            Err(RequestError::Refused { why, .. }) => Err(UpdateError::Guest { step, why }),
            Err(e @ RequestError::NoAnswer { .. }) => Err(UpdateError::Guest { step, why: e.to_string() }),
        }
    }

    /// The agent reads commands only once its heartbeat loop runs.
    fn listening(&mut self) -> Result<(), UpdateError> {
        match self.vm().agent().wait_heartbeat(0, SERVICE_TIMEOUT) {
            Some(_) => Ok(()),
            None => Err(UpdateError::Guest {
                step: "take commands",
                why: format!("no agent heartbeat within {SERVICE_TIMEOUT:?}"),
            }),
        }
    }

    /// Boots the shadow (again, if watched files changed on the primary
    /// while it booted) and launches the standby the switch restores on.
    fn prepared_shadow(&mut self, next: &GuestImage) -> Result<Shadow, UpdateError> {
        let mut boots = 0;
        loop {
            boots += 1;
            let cloned_at = Instant::now();
            let dir = self.snapshots.path_of(&format!("shadow-{}-{boots}", next.kernel.release));
            let root = match self.image.rootfs() {
                Some(_) => {
                    let disk_dir = self.config.disk_dir.clone().expect("a SUT's disks live in its disk directory");
                    let vm = self.vm.as_mut().expect("the SUT always holds a VM between calls");
                    Some(
                        RootClone::freeze(vm, &disk_dir)
                            .map_err(|why| UpdateError::ShadowFailed { release: next.kernel.release.clone(), why })?,
                    )
                }
                None => None,
            };
            let has_root = root.is_some();
            let mut shadow = shadow::boot(next, &self.config, &dir, root)
                .map_err(|why| UpdateError::ShadowFailed { release: next.kernel.release.clone(), why })?;
            shadow.timing.boots = boots;
            shadow.launch_standby(next, &self.config)?;
            // Up to the switch: what changed after this is the switch's own.
            self.absorb_agent();
            let changed = self.snapshots.changed_since(cloned_at);
            if changed.is_empty() {
                return Ok(shadow);
            }
            if let Some(root) = shadow.root.take() {
                root.undo().map_err(|why| UpdateError::ShadowFailed { release: next.kernel.release.clone(), why })?;
            }
            drop(shadow);
            let why = format!(
                "watched files changed on the primary while the shadow booted ({}); the shadow's state would disagree with them",
                changed.join(", ")
            );
            let _ = std::fs::remove_dir_all(&dir);
            // A root disk is frozen once per update: no second shadow.
            if boots >= 2 || has_root {
                return Err(UpdateError::Refused(why));
            }
            tracing::warn!("{why}: booting the shadow again");
        }
    }

    /// Stops the old kernel and starts the new one by `strategy`, up to
    /// its guest running (held at the boundary and snapshotted, or
    /// restored and told to go on). `Err`: why, for the rollback.
    fn switch(
        &mut self,
        strategy: UpdateStrategy,
        next: &GuestImage,
        shadow: Option<&mut Shadow>,
    ) -> Result<Switched, String> {
        let holds = self.holds_clients();
        match strategy {
            UpdateStrategy::Reboot => {
                let mut old = self.vm.take().expect("the SUT always holds a VM between calls");
                // A guest reboot ends this QEMU; the new one names the new kernel.
                old.qmp()
                    .execute("set-action", Some(serde_json::json!({ "reboot": "shutdown" })))
                    .map_err(|e| format!("QEMU refused set-action reboot=shutdown: {e}"))?;
                old.agent().send("reboot").map_err(|e| format!("cannot send the reboot: {e}"))?;
                let deadline = Instant::now() + REBOOT_TIMEOUT;
                while old.check_alive().is_ok() {
                    if Instant::now() > deadline {
                        old.kill();
                        return Err(format!("the guest did not reboot within {REBOOT_TIMEOUT:?}"));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                old.kill();
                // A plain reboot: no hold for a snapshot on the way up (the
                // new phase snapshot is taken off the downtime path).
                let mut vm = Vm::start(next, &without_hold(&self.config))
                    .map_err(|e| format!("starting {}: {e}", next.kernel.release))?;
                if holds {
                    vm.close_port().map_err(|e| e.to_string())?;
                }
                self.vm = Some(vm);
                Ok(Switched { phase: None, standby: false })
            }
            UpdateStrategy::Kexec => {
                let mut vm = self.vm.take().expect("the SUT always holds a VM between calls");
                vm.agent().reset();
                if holds {
                    vm.close_port().map_err(|e| e.to_string())?;
                }
                vm.agent().send("kexec").map_err(|e| format!("cannot send the kexec: {e}"))?;
                vm.now_runs(next);
                // The new kernel's first phase: the old one no longer answers.
                let booted = vm.wait_phase("kernel", SERVICE_TIMEOUT);
                self.vm = Some(vm);
                booted.map_err(|e| format!("{} never booted after the kexec: {e}", next.kernel.release))?;
                Ok(Switched { phase: None, standby: false })
            }
            UpdateStrategy::ShadowReboot => {
                let shadow = shadow.expect("a ShadowReboot has its shadow");
                if let Some(old) = self.vm.take() {
                    old.kill();
                }
                let (vm, standby) = shadow.restore(next, &self.config, !holds).map_err(|e| e.to_string())?;
                self.vm = Some(vm);
                self.vm().agent().send("continue").map_err(|e| format!("cannot tell the guest to go on: {e}"))?;
                Ok(Switched { phase: Some(shadow.snapshot.clone()), standby })
            }
        }
    }

    /// The new kernel's phase snapshot after a reboot or kexec, taken off
    /// the downtime path from a shadow boot of it (isolated, on disks of
    /// its own); `None`, with a warning, where that boot fails.
    fn phase_by_shadow(&mut self, next: &GuestImage) -> Option<Snapshot> {
        let dir = self.snapshots.path_of(&format!("phase-{}", next.kernel.release));
        match shadow::boot(next, &self.config, &dir, None) {
            Ok(shadow) => Some(shadow.snapshot),
            Err(why) => {
                tracing::warn!("no phase snapshot of {}: its shadow boot failed: {why}", next.kernel.release);
                None
            }
        }
    }

    /// Forwards clients once the data-dependent services run (where the
    /// profile holds them), waits for the first correct answer, and checks
    /// that the guest runs the new kernel. Returns when that answer came.
    fn admit_and_check(&mut self, next: &GuestImage, strategy: UpdateStrategy) -> Result<Instant, String> {
        self.admit_clients(&strategy).map_err(|e| e.to_string())?;
        let served_at = self.first_correct_answer().map_err(|e| {
            let console = self.vm().console_tail();
            format!("no correct answer within {SERVICE_TIMEOUT:?}: {e}; the guest's console ended: {console}")
        })?;
        let release = self.vm().agent().wait_release(SERVICE_TIMEOUT);
        match release {
            Some(r) if r == next.kernel.release => Ok(served_at),
            Some(r) => Err(format!("the guest runs {r}, not {}", next.kernel.release)),
            None => Err(format!("the agent never reported its kernel release within {SERVICE_TIMEOUT:?}")),
        }
    }

    /// After a failed switch: the old kernel's phase snapshot restored (or
    /// a cold boot of the old kernel), serving again.
    fn roll_back(&mut self, strategy: UpdateStrategy, why: String) -> UpdateError {
        tracing::warn!("the update by {strategy} failed ({why}); rolling back to {}", self.image.kernel.release);
        let release = self.image.kernel.release.clone();
        let result = (|| -> Result<(), String> {
            if let Some(vm) = self.vm.take() {
                vm.kill();
            }
            if self.try_restore(Which::Phase).is_ok() {
                self.vm().agent().send("continue").map_err(|e| e.to_string())?;
            } else {
                let vm = Vm::start(&self.image, &self.config).map_err(|e| e.to_string())?;
                self.vm = Some(vm);
                self.vm().wait_phase("held", SERVICE_TIMEOUT).map_err(|e| e.to_string())?;
                self.vm().agent().send("continue").map_err(|e| e.to_string())?;
            }
            self.admit_clients(&"the rollback").map_err(|e| e.to_string())?;
            self.first_correct_answer().map_err(|e| e.to_string())?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.service_due = self.snapshots.get(Which::Service).is_some();
                self.prepare_for(self.expected);
                UpdateError::RolledBack { strategy, why, release }
            }
            Err(rollback) => UpdateError::Lost { strategy, why, rollback },
        }
    }
}

/// `config` without the kernel command line's hold for the phase snapshot.
fn without_hold(config: &crate::vm::VmConfig) -> crate::vm::VmConfig {
    let mut config = config.clone();
    config.extra_cmdline.retain(|w| !w.starts_with("kfi.hold="));
    config
}

/// Makes the primary's disk directory whole again after a ShadowReboot
/// that froze its root disk and did not switch.
fn undo_root(shadow: Option<&mut Shadow>) {
    if let Some(root) = shadow.and_then(|s| s.root.take()) {
        if let Err(e) = root.undo() {
            tracing::error!("the primary's root disk could not be made whole again after a failed update: {e}");
        }
    }
}

/// What a switch left: the new kernel's phase snapshot, if one could be
/// taken, and whether it ran on a standby.
struct Switched {
    phase: Option<Snapshot>,
    standby: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_names_round_trip_and_unknown_ones_are_named() {
        for s in UpdateStrategy::ALL {
            assert_eq!(s.name().parse::<UpdateStrategy>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.name()));
        }
        let err = "shadow".parse::<UpdateStrategy>().unwrap_err().to_string();
        assert!(err.contains("`shadow`") && err.contains("shadow-reboot"), "{err}");
    }
}
