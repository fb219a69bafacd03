//! The recovery VMM's control loop: a system under test that keeps a guest's
//! service up, notices kernel failures by itself, and brings the service
//! back with a chosen strategy, timing each step.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::guest::GuestImage;
use crate::probe;
use crate::snapshot::{self, Snapshot, SnapshotError};
use crate::vm::{Vm, VmConfig, VmError};

/// How the service is brought back after a kernel failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Reset the VM and boot firmware, kernel, init and services from
    /// scratch: the baseline the published results compare against.
    FullReboot,
    /// Restore the snapshot taken at the boundary "userland up, data disk
    /// not yet mounted", then mount the data disk as it is now and start
    /// the services: no stale cache can disagree with the disk.
    PhaseRestore,
    /// Restore the snapshot taken with the services running, in a fresh
    /// QEMU on the same ports, with RAM mapped lazily. Valid only while the
    /// data disk is unchanged since the snapshot.
    ServiceRestore,
}

impl Strategy {
    /// Every strategy, baseline first.
    pub const ALL: [Strategy; 3] = [Strategy::FullReboot, Strategy::PhaseRestore, Strategy::ServiceRestore];

    /// Its name on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::FullReboot => "full-reboot",
            Strategy::PhaseRestore => "phase-restore",
            Strategy::ServiceRestore => "service-restore",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown strategy name.
#[derive(Debug, thiserror::Error)]
#[error("unknown recovery strategy `{0}`: the strategies are full-reboot, phase-restore and service-restore")]
pub struct UnknownStrategy(String);

impl FromStr for Strategy {
    type Err = UnknownStrategy;
    fn from_str(s: &str) -> Result<Self, UnknownStrategy> {
        Strategy::ALL.into_iter().find(|x| x.name() == s).ok_or_else(|| UnknownStrategy(s.to_string()))
    }
}

/// What gave the failure away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureCause {
    /// pvpanic raised GUEST_PANICKED.
    GuestPanicked,
    /// The agent's heartbeat stopped.
    HeartbeatLost,
    /// The QEMU process died.
    QemuExited,
}

/// A detected failure.
#[derive(Debug, Clone, Copy)]
pub struct Failure {
    /// Its cause.
    pub cause: FailureCause,
    /// When the VMM noticed it.
    pub detected_at: Instant,
}

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
    /// From detection to the first correct service answer.
    pub service_s: f64,
}

/// Errors of the recovery loop.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// QEMU failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// No failure was seen in time.
    #[error("no failure detected within {0:?}")]
    NoFailure(Duration),
    /// The service did not come back.
    #[error("the service did not come back within {timeout:?} after {strategy}: {last}")]
    NotRecovered {
        /// Strategy.
        strategy: Strategy,
        /// How long it waited.
        timeout: Duration,
        /// The last probe failure.
        last: String,
    },
    /// A file operation failed.
    #[error("cannot create {what}: {source}")]
    Io {
        /// What.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// How long the service may take to come back before recovery counts as
/// failed (a full reboot under TCG takes seconds, the debian guest tens).
const SERVICE_TIMEOUT: Duration = Duration::from_secs(180);

/// A campaign's frozen starting point (see [`Sut::freeze`]): every
/// experiment restores it instead of booting, so experiments are
/// independent and cost a restore, not a boot.
#[derive(Debug, Clone)]
pub struct Golden {
    /// The running service, with its disks.
    pub service: Snapshot,
    /// The userland-boundary snapshot, for phase-restore.
    pub phase: Option<Snapshot>,
    image: GuestImage,
    config: VmConfig,
}

impl Golden {
    /// The guest image it was made from.
    pub fn image(&self) -> &GuestImage {
        &self.image
    }
}

/// A SUT's own disk and snapshot directories, removed with it.
fn sut_dirs() -> Result<(tempfile::TempDir, tempfile::TempDir), RecoveryError> {
    let dir = |prefix: &str, what: &'static str| {
        tempfile::Builder::new().prefix(prefix).tempdir().map_err(|source| RecoveryError::Io { what, source })
    };
    Ok((dir("kfi-disks-", "the disk directory")?, dir("kfi-snapshots-", "the snapshot directory")?))
}

fn copy_snapshot(snap: &Snapshot, dir: &Path) -> Result<Snapshot, RecoveryError> {
    std::fs::create_dir_all(dir).map_err(|source| RecoveryError::Io { what: "a snapshot copy", source })?;
    for entry in std::fs::read_dir(&snap.dir).map_err(|source| RecoveryError::Io { what: "a snapshot copy", source })? {
        let entry = entry.map_err(|source| RecoveryError::Io { what: "a snapshot copy", source })?;
        if entry.path().is_file() {
            std::fs::copy(entry.path(), dir.join(entry.file_name()))
                .map_err(|source| RecoveryError::Io { what: "a snapshot copy", source })?;
        }
    }
    Ok(Snapshot::open(dir)?)
}

/// A guest whose service the VMM keeps up.
pub struct Sut {
    image: GuestImage,
    config: VmConfig,
    vm: Option<Vm>,
    // Disks outlive every VM of the SUT: they are never rolled back.
    _disks: tempfile::TempDir,
    snapshots: tempfile::TempDir,
    service_snapshot: Option<Snapshot>,
    phase_snapshot: Option<Snapshot>,
    /// Data-disk writes the current QEMU had counted when the disk last
    /// matched the service snapshot's view of it.
    data_baseline: Option<u64>,
    /// The data disk changed since the service snapshot: restoring it
    /// would bring back a page cache that disagrees with the disk.
    data_dirty: bool,
}

/// Write requests QEMU has counted on the data disk, if there is one.
fn data_writes(vm: &mut Vm) -> Option<u64> {
    let stats = vm.qmp().execute("query-blockstats", None).ok()?;
    stats.as_array()?.iter().find(|d| d["device"] == "data")?["stats"]["wr_operations"].as_u64()
}

impl Sut {
    /// Boots the guest (RAM file-backed, so snapshots are lazy), takes the
    /// phase snapshot at the userland boundary on the way up, and waits for
    /// the first correct answer. Later VMs reuse its ports.
    pub fn boot(image: &GuestImage, config: &VmConfig) -> Result<Sut, RecoveryError> {
        let (disks, snapshots) = sut_dirs()?;
        // Both profiles hold at "userland up, data disk not mounted" when
        // asked to (tiny in its init, debian before kfi-data.service): the
        // phase snapshot is taken there on the way up.
        let mut config = VmConfig { shared_ram: true, disk_dir: Some(disks.path().to_path_buf()), ..config.clone() };
        config.extra_cmdline.push("kfi.hold=userland".into());
        let mut vm = Vm::start(image, &config)?;
        vm.wait_phase("held", SERVICE_TIMEOUT)?;
        let phase_snapshot = Some(snapshot::take(&mut vm, &snapshots.path().join("phase"), "userland")?);
        vm.agent().send("continue").map_err(|source| RecoveryError::Io { what: "the agent command", source })?;
        vm.wait_http(SERVICE_TIMEOUT)?;
        let config = vm.config();
        Ok(Sut {
            image: image.clone(),
            config,
            vm: Some(vm),
            _disks: disks,
            snapshots,
            service_snapshot: None,
            phase_snapshot,
            data_baseline: None,
            data_dirty: false,
        })
    }

    /// Freezes the running service as a campaign's starting point: a
    /// service snapshot with copies of the disk overlays, and a copy of the
    /// phase snapshot, all under `dir` (which outlives this SUT).
    pub fn freeze(&mut self, dir: &Path) -> Result<Golden, RecoveryError> {
        let disks: Vec<PathBuf> = ["root.qcow2", "data.qcow2"]
            .iter()
            .map(|name| self._disks.path().join(name))
            .filter(|p| p.exists())
            .collect();
        let service = snapshot::take_with_disks(self.vm(), &dir.join("service"), "services-ready", &disks)?;
        let phase = match &self.phase_snapshot {
            Some(phase) => Some(copy_snapshot(phase, &dir.join("phase"))?),
            None => None,
        };
        Ok(Golden { service, phase, image: self.image.clone(), config: self.config.clone() })
    }

    /// A SUT restored from `golden`: its own copies of the golden disks,
    /// its own ports, and the golden snapshots as its recovery snapshots
    /// (they are only read; a new service snapshot goes to its own dir).
    pub fn from_golden(golden: &Golden) -> Result<Sut, RecoveryError> {
        let (disks, snapshots) = sut_dirs()?;
        let service = Snapshot::open(&golden.service.dir)?;
        for disk in service.disk_files() {
            let target = disks.path().join(disk.file_name().unwrap_or_default());
            std::fs::copy(&disk, &target).map_err(|source| RecoveryError::Io { what: "a golden disk copy", source })?;
        }
        let config = VmConfig {
            disk_dir: Some(disks.path().to_path_buf()),
            http_port: None,
            gdb_port: None,
            ..golden.config.clone()
        };
        let mut vm = Vm::restore(&golden.image, &config, &service)?;
        let data_baseline = data_writes(&mut vm);
        let config = vm.config();
        Ok(Sut {
            image: golden.image.clone(),
            config,
            vm: Some(vm),
            _disks: disks,
            snapshots,
            service_snapshot: Some(service),
            phase_snapshot: golden.phase.clone(),
            data_baseline,
            data_dirty: false,
        })
    }

    /// The running VM.
    pub fn vm(&mut self) -> &mut Vm {
        self.vm.as_mut().expect("the SUT always holds a VM between calls")
    }

    /// The current service snapshot, if one was taken.
    pub fn service_snapshot(&self) -> Option<&Snapshot> {
        self.service_snapshot.as_ref()
    }

    /// Takes the service-restore snapshot now (services must be running).
    pub fn snapshot_service(&mut self) -> Result<&Snapshot, RecoveryError> {
        let dir = self.snapshots.path().join("service");
        let snap = snapshot::take(self.vm(), &dir, "services-ready")?;
        self.data_baseline = data_writes(self.vm());
        self.data_dirty = false;
        Ok(self.service_snapshot.insert(snap))
    }

    /// The phase snapshot, if the guest could hold for one.
    pub fn phase_snapshot(&self) -> Option<&Snapshot> {
        self.phase_snapshot.as_ref()
    }

    /// Waits for a failure: a GUEST_PANICKED event, a heartbeat older than
    /// `heartbeat_timeout`, or QEMU gone.
    pub fn wait_failure(&mut self, timeout: Duration, heartbeat_timeout: Duration) -> Result<Failure, RecoveryError> {
        let deadline = Instant::now() + timeout;
        let vm = self.vm();
        let watch_from = Instant::now();
        loop {
            if let Some(event) = vm.qmp().wait_event("GUEST_PANICKED", Duration::from_millis(2)) {
                return Ok(Failure { cause: FailureCause::GuestPanicked, detected_at: event.at });
            }
            let now = Instant::now();
            if vm.check_alive().is_err() {
                return Ok(Failure { cause: FailureCause::QemuExited, detected_at: now });
            }
            let last_beat = vm.agent().last_heartbeat().map(|h| h.at).unwrap_or(watch_from).max(watch_from);
            if now.duration_since(last_beat) > heartbeat_timeout {
                return Ok(Failure { cause: FailureCause::HeartbeatLost, detected_at: now });
            }
            if now >= deadline {
                return Err(RecoveryError::NoFailure(timeout));
            }
        }
    }

    /// Brings the service back after `failure` with `strategy` and waits for
    /// the first correct answer. A service snapshot that is missing, corrupt
    /// or stale (the data disk was written since) falls back to
    /// phase-restore, and a phase snapshot that cannot be used to a full
    /// reboot; the timing says which ran and why.
    pub fn recover(&mut self, strategy: Strategy, failure: &Failure) -> Result<RecoveryTiming, RecoveryError> {
        let started = Instant::now();
        // The crashed QEMU still counts the data disk's writes.
        if let (Some(baseline), Some(now)) = (self.data_baseline, data_writes(self.vm())) {
            if now > baseline {
                self.data_dirty = true;
            }
        }
        let mut fallback_reason = None;
        let mut used = strategy;
        if strategy == Strategy::ServiceRestore {
            let reason = if self.data_dirty {
                Some(
                    "the data disk was written since the service snapshot; its page cache would disagree with the disk"
                        .to_string(),
                )
            } else {
                self.try_restore(self.service_snapshot.clone(), "service").err()
            };
            if let Some(reason) = reason {
                used = if self.phase_snapshot.is_some() { Strategy::PhaseRestore } else { Strategy::FullReboot };
                fallback_reason = Some(reason);
            }
        }
        if used == Strategy::PhaseRestore {
            match self.try_restore(self.phase_snapshot.clone(), "phase") {
                Ok(()) => self
                    .vm()
                    .agent()
                    .send("continue")
                    .map_err(|source| RecoveryError::Io { what: "the agent command", source })?,
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
        let restart_s = started.elapsed().as_secs_f64();
        let vm = self.vm();
        let ready =
            probe::wait_correct(vm.http_addr(), vm.image().docs.index(), Instant::now() + SERVICE_TIMEOUT, || {
                vm.check_alive().is_ok()
            })
            .map_err(|e| RecoveryError::NotRecovered {
                strategy: used,
                timeout: SERVICE_TIMEOUT,
                last: e.to_string(),
            })?;
        let service_s = ready.duration_since(failure.detected_at).as_secs_f64();
        match used {
            // The restored guest's view of the disk is the snapshot's, and
            // the new QEMU counts writes from zero.
            Strategy::ServiceRestore => self.data_baseline = data_writes(self.vm()),
            // The data disk, if any, was mounted anew (journal replay included).
            Strategy::PhaseRestore | Strategy::FullReboot => {
                if data_writes(self.vm()).is_some() {
                    self.data_dirty = true;
                }
            }
        }
        // After a reboot in the same QEMU (RAM still file-backed and
        // shared) a fresh service snapshot restores validity.
        if used == Strategy::FullReboot && self.service_snapshot.is_some() && self.vm().snapshottable() {
            let vm = self.vm();
            if vm.wait_phase("services-ready", SERVICE_TIMEOUT).is_ok() {
                self.snapshot_service()?;
            }
        }
        // Commands sent while the guest has the agent port closed are lost;
        // the agent reads commands from before its first heartbeat on.
        if self.vm().agent().wait_heartbeat(0, SERVICE_TIMEOUT).is_none() {
            tracing::warn!("no agent heartbeat after {used}");
        }
        Ok(RecoveryTiming {
            strategy: used,
            requested: strategy,
            fallback_reason,
            cause: failure.cause,
            restart_s,
            service_s,
        })
    }

    /// Replaces the VM by one restored from `snap`; `Err` carries why it
    /// could not, for the fallback's reason.
    fn try_restore(&mut self, snap: Option<Snapshot>, which: &str) -> Result<(), String> {
        let snap = snap.ok_or_else(|| format!("no {which} snapshot was taken"))?;
        let snap = Snapshot::open(&snap.dir).map_err(|e| format!("the {which} snapshot is unusable: {e}"))?;
        // Lets a test build make restores slower on purpose, to prove that
        // `kfi check` catches a regression; unset in real use.
        if let Some(ms) = std::env::var("KFI_TEST_RESTORE_DELAY_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        if let Some(old) = self.vm.take() {
            old.kill();
        }
        // On failure no VM is left: the fallback's full reboot starts one.
        let vm = Vm::restore(&self.image, &self.config, &snap)
            .map_err(|e| format!("restoring the {which} snapshot failed: {e}"))?;
        self.vm = Some(vm);
        Ok(())
    }

    fn full_reboot(&mut self) -> Result<(), RecoveryError> {
        let vm = match self.vm.take() {
            Some(mut vm) if vm.check_alive().is_ok() => {
                vm.agent().reset();
                vm.qmp().execute("system_reset", None).map_err(VmError::from)?;
                // A panicked guest stays paused across the reset.
                if vm.status()? != "running" {
                    vm.cont()?;
                }
                vm
            }
            // QEMU itself is gone: a cold start on the same ports and disks.
            _ => Vm::start(&self.image, &self.config)?,
        };
        // The boot stops at the phase boundary it was told to hold at.
        if self.phase_snapshot.is_some() {
            vm.wait_phase("held", SERVICE_TIMEOUT)?;
            vm.agent().send("continue").map_err(|source| RecoveryError::Io { what: "the agent command", source })?;
        }
        self.vm = Some(vm);
        Ok(())
    }
}
