//! The system under test: a guest whose service the VMM keeps up, with
//! its disks (never rolled back), its recovery snapshots and its standby
//! QEMU; booting it or restoring it from a campaign's golden snapshot,
//! taking the service snapshot, and watching for failures. Bringing the
//! service back, [`Sut::recover`], is the `recover` module's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::detect::{Detectors, Failure};
use super::error::RecoveryError;
use super::snapshots::{copy_snapshot, data_writes, quiesce_data_disk, wait_manifest, SnapshotSet, Which};
use super::standby::StandbySlot;
use crate::guest::GuestImage;
use crate::snapshot::{Snapshot, SnapshotError};
use crate::vm::{save, Vm, VmConfig};

/// How long the service may take to come back before recovery counts as
/// failed (a full reboot under TCG takes seconds, the debian guest tens).
pub(super) const SERVICE_TIMEOUT: Duration = Duration::from_secs(180);

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

    /// The VM settings its guest booted with (a crash kernel reserved for
    /// kexec-reboot, say).
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Reopens a golden snapshot that [`Sut::freeze`] wrote into `dir` and
    /// that outlived its run (a kept one), for a guest booted from `image`
    /// with `config` (as given to [`Sut::boot`]). Every file is checked
    /// against its snapshot's manifest, and the snapshot's profile, kernel,
    /// accelerator and RAM against `image` and `config`; whoever keeps
    /// golden snapshots names them by everything else (QEMU, workload).
    pub fn open(dir: &Path, image: &GuestImage, config: &VmConfig) -> Result<Golden, RecoveryError> {
        let service = Snapshot::open(&dir.join(SERVICE))?;
        let phase_dir = dir.join(PHASE);
        let phase = if phase_dir.exists() { Some(Snapshot::open(&phase_dir)?) } else { None };
        let want = (image.profile().to_string(), image.kernel.identity(), config.accel.name().to_string());
        for snapshot in std::iter::once(&service).chain(phase.as_ref()) {
            let meta = &snapshot.meta;
            let have = (meta.profile.clone(), meta.kernel.clone(), meta.accel.clone());
            if have != want || meta.memory_mib != config.memory_mib {
                return Err(SnapshotError::Mismatch {
                    dir: snapshot.dir.clone(),
                    detail: format!(
                        "snapshot is {have:?} with {} MiB, the guest is {want:?} with {} MiB",
                        meta.memory_mib, config.memory_mib
                    ),
                }
                .into());
            }
        }
        let disks = service.disk_files();
        let has = |name: &str| disks.iter().any(|d| d.file_name().is_some_and(|n| n == name));
        if config.data_disk && !has("data.qcow2") {
            return Err(SnapshotError::Missing(dir.join(SERVICE).join("disks/data.qcow2")).into());
        }
        Ok(Golden { service, phase, image: image.clone(), config: boot_config(config, None) })
    }
}

impl Golden {
    /// Checks the golden snapshot's files against their manifests again
    /// (see [`Snapshot::open`]): a campaign asks this after an experiment
    /// failed to start from it.
    pub fn verify(&self) -> Result<(), RecoveryError> {
        Snapshot::open(&self.service.dir)?;
        if let Some(phase) = &self.phase {
            Snapshot::open(&phase.dir)?;
        }
        Ok(())
    }
}

/// The service snapshot's and the phase snapshot's directories in a golden one.
const SERVICE: &str = "service";
const PHASE: &str = "phase";

/// How [`Sut::boot`] starts the guest given `config`: RAM file-backed (so
/// snapshots are lazy), disks in `disks`, held at the userland boundary.
fn boot_config(config: &VmConfig, disks: Option<&Path>) -> VmConfig {
    let mut config = VmConfig { shared_ram: true, disk_dir: disks.map(Path::to_path_buf), ..config.clone() };
    config.extra_cmdline.push("kfi.hold=userland".into());
    config
}

/// A SUT's own disk and snapshot directories, removed with it.
fn sut_dirs() -> Result<(tempfile::TempDir, tempfile::TempDir), RecoveryError> {
    let dir = |prefix: &str, what: &'static str| {
        crate::private::tempdir(prefix).map_err(|source| RecoveryError::Io { what, source })
    };
    Ok((dir("kfi-disks-", "the disk directory")?, dir("kfi-snapshots-", "the snapshot directory")?))
}

/// A guest whose service the VMM keeps up.
pub struct Sut {
    pub(super) image: GuestImage,
    pub(super) config: VmConfig,
    pub(super) vm: Option<Vm>,
    // Disks outlive every VM of the SUT: they are never rolled back.
    disks: tempfile::TempDir,
    pub(super) snapshots: SnapshotSet,
    /// A QEMU launched ahead of the next service restore.
    pub(super) standby: StandbySlot,
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
        let config = boot_config(config, Some(disks.path()));
        let mut vm = Vm::start(image, &config)?;
        vm.wait_phase("held", SERVICE_TIMEOUT)?;
        let snapshots = SnapshotSet::at_boot(snapshots, &mut vm)?;
        vm.agent().send("continue").map_err(|source| RecoveryError::Io { what: "the agent command", source })?;
        vm.wait_http(SERVICE_TIMEOUT)?;
        let config = vm.config();
        // Commands sent before the agent's heartbeat loop holds its port
        // are lost (see `recover`).
        if vm.agent().wait_heartbeat(0, SERVICE_TIMEOUT).is_none() {
            tracing::warn!("no agent heartbeat after the boot");
        }
        let mut sut =
            Sut { image: image.clone(), config, vm: Some(vm), disks, snapshots, standby: StandbySlot::default() };
        sut.wait_crash_kernel()?;
        Ok(sut)
    }

    /// Freezes the running service as a campaign's starting point: a
    /// service snapshot with copies of the disk overlays, and a copy of the
    /// phase snapshot, all under `dir` (which outlives this SUT).
    pub fn freeze(&mut self, dir: &Path) -> Result<Golden, RecoveryError> {
        let disks: Vec<PathBuf> = ["root.qcow2", "data.qcow2"]
            .iter()
            .map(|name| self.disks.path().join(name))
            .filter(|p| p.exists())
            .collect();
        let watched = self.image.profile().watched_files();
        let vm = self.vm();
        wait_manifest(vm, watched);
        quiesce_data_disk(vm);
        let service = save::take_with_disks(vm, &dir.join(SERVICE), "services-ready", &disks)?;
        let phase = match self.snapshots.get(Which::Phase) {
            Some(phase) => Some(copy_snapshot(phase, &dir.join(PHASE))?),
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
        let config = VmConfig { disk_dir: Some(disks.path().to_path_buf()), http_port: None, ..golden.config.clone() };
        let mut vm = Vm::restore(&golden.image, &config, &service)?;
        let data_baseline = data_writes(&mut vm);
        let config = vm.config();
        let watched = golden.image.profile().watched_files();
        let snapshots = SnapshotSet::adopted(snapshots, service, golden.phase.clone(), data_baseline, watched);
        let mut sut = Sut {
            image: golden.image.clone(),
            config,
            vm: Some(vm),
            disks,
            snapshots,
            standby: StandbySlot::default(),
        };
        sut.prepare_standby();
        Ok(sut)
    }

    /// The running VM.
    pub fn vm(&mut self) -> &mut Vm {
        self.vm.as_mut().expect("the SUT always holds a VM between calls")
    }

    /// The current service snapshot, if one was taken.
    pub fn service_snapshot(&self) -> Option<&Snapshot> {
        self.snapshots.get(Which::Service)
    }

    /// The phase snapshot, if the guest could hold for one.
    pub fn phase_snapshot(&self) -> Option<&Snapshot> {
        self.snapshots.get(Which::Phase)
    }

    /// Takes the service-restore snapshot now (services must be running).
    pub fn snapshot_service(&mut self) -> Result<&Snapshot, RecoveryError> {
        // The standby maps the old snapshot's RAM file.
        self.standby.clear();
        let watched = self.image.profile().watched_files();
        let vm = self.vm.as_mut().expect("the SUT always holds a VM between calls");
        self.snapshots.take_service(vm, watched)?;
        self.prepare_standby();
        Ok(self.snapshots.get(Which::Service).expect("just taken"))
    }

    /// Waits for a failure: a GUEST_PANICKED event, a heartbeat older than
    /// `heartbeat_timeout`, or QEMU gone.
    pub fn wait_failure(&mut self, timeout: Duration, heartbeat_timeout: Duration) -> Result<Failure, RecoveryError> {
        self.wait_failure_with(timeout, &Detectors::heartbeat(heartbeat_timeout))
    }

    /// Waits for a failure seen by any of `detectors` (and always a
    /// GUEST_PANICKED event or QEMU gone); the first one to fire names the
    /// cause.
    pub fn wait_failure_with(&mut self, timeout: Duration, detectors: &Detectors) -> Result<Failure, RecoveryError> {
        detectors.watch(self.vm(), Some(Instant::now() + timeout), &|| false).ok_or(RecoveryError::NoFailure(timeout))
    }

    /// Watches as [`Sut::wait_failure_with`] does, with no time limit,
    /// until a failure (`Some`) or until `stop` returns true (`None`;
    /// polled every few milliseconds).
    pub fn watch_until(
        &mut self,
        detectors: &Detectors,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<Failure>, RecoveryError> {
        Ok(detectors.watch(self.vm(), None, stop))
    }

    /// With a crash kernel configured, waits until the guest has loaded it
    /// (the init does so in the background once services run): until then
    /// a panic cannot kexec.
    pub(super) fn wait_crash_kernel(&mut self) -> Result<(), RecoveryError> {
        if self.config.crash_kernel_mib.is_some() {
            self.vm().wait_phase("kexec-loaded", SERVICE_TIMEOUT)?;
        }
        Ok(())
    }

    /// Launches a QEMU ahead of the next service restore, replacing any
    /// standby there is.
    pub(super) fn prepare_standby(&mut self) {
        self.standby.prepare(&self.image, &self.config, self.snapshots.get(Which::Service));
        // Off the downtime path: the next restore of either snapshot then
        // finds its RAM file checked (see `Snapshot::verify_ram`).
        for which in [Which::Service, Which::Phase] {
            if let Some(snap) = self.snapshots.get(which) {
                if let Err(e) = snap.verify_ram() {
                    tracing::warn!("the {} snapshot's RAM file is corrupt; it will not be restored: {e}", which.name());
                }
            }
        }
    }

    /// Takes the watched-file reports of the current VM's agent into the
    /// SUT's own view, which outlives the VM.
    pub(super) fn absorb_agent(&mut self) {
        let Some(vm) = self.vm.as_ref() else { return };
        self.snapshots.absorb(vm.agent());
    }
}
