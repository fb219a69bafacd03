//! The system under test: a guest whose service the VMM keeps up, with
//! its disks (never rolled back), its recovery snapshots and its standby
//! QEMU; booting it or restoring it from a campaign's golden snapshot,
//! taking the service snapshot, and watching for failures. Bringing the
//! service back, [`Sut::recover`], is the `recover` module's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::detect::{Detectors, Failure};
use super::error::RecoveryError;
use super::snapshots::{
    copy_snapshot, data_writes, quiesce_data_disk, wait_manifest, SnapshotSet, Which, QUIESCE_TIMEOUT,
};
use super::standby::StandbySlot;
use super::strategy::Strategy;
use crate::guest::{ClientsNeed, GuestImage};
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
    /// The phase-boundary snapshot, for phase-restore.
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
/// snapshots are lazy), disks in `disks`, held at the phase boundary.
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
    pub(super) disks: tempfile::TempDir,
    pub(super) snapshots: SnapshotSet,
    /// A QEMU launched ahead of the next restore.
    pub(super) standby: StandbySlot,
    /// The strategy the next recovery will most likely ask for: the
    /// standby is launched on the snapshot it restores.
    pub(super) expected: Strategy,
    /// A recovery that did not restore the service snapshot left it to be
    /// taken again once the service runs and the data disk is quiet.
    pub(super) service_due: bool,
    /// The guest kexec'd into a kernel other than the one QEMU's
    /// `-kernel` names (an update by kexec): a reset would boot the old
    /// kernel, so a full reboot starts a new QEMU.
    pub(super) qemu_boots_old_kernel: bool,
    /// What the clients need, which decides whether a recovery or update
    /// holds them at the host until the data-dependent services run.
    pub(super) clients_need: ClientsNeed,
}

/// How long a service snapshot retaken right after a recovery waits for
/// the services to run and for the data disk to settle, and how long
/// [`Sut::maintain`] waits for the disk (it does not wait for services).
pub(super) const RETAKE_READY: Duration = Duration::from_secs(60);
pub(super) const RETAKE_SETTLE: Duration = Duration::from_secs(5);
const MAINTAIN_SETTLE: Duration = Duration::from_secs(3);

/// A heartbeat at most this old says the guest is healthy enough to be
/// snapshotted as the service (the agent beats every second).
const HEALTHY_HEARTBEAT_AGE: Duration = Duration::from_millis(2500);

impl Sut {
    /// Boots the guest (RAM file-backed, so snapshots are lazy), takes the
    /// phase snapshot at the profile's phase boundary on the way up, and waits for
    /// the first correct answer. Later VMs reuse its ports.
    pub fn boot(image: &GuestImage, config: &VmConfig) -> Result<Sut, RecoveryError> {
        let (disks, snapshots) = sut_dirs()?;
        // Both profiles hold at their phase boundary, data disk not mounted,
        // when asked to (tiny in its init, debian before kfi-data.service): the
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
        let mut sut = Sut {
            image: image.clone(),
            config,
            vm: Some(vm),
            disks,
            snapshots,
            standby: StandbySlot::default(),
            expected: Strategy::ServiceRestore,
            service_due: false,
            qemu_boots_old_kernel: false,
            clients_need: ClientsNeed::default(),
        };
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
        quiesce_data_disk(vm, QUIESCE_TIMEOUT);
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
    /// The standby is launched for `expected`, the strategy its first
    /// recovery will ask for (see [`Sut::prepare_for`]).
    pub fn from_golden(golden: &Golden, expected: Strategy) -> Result<Sut, RecoveryError> {
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
            expected,
            service_due: false,
            qemu_boots_old_kernel: false,
            clients_need: ClientsNeed::default(),
        };
        sut.prepare_standby();
        Ok(sut)
    }

    /// Says what the clients' requests need of the guest (default:
    /// [`ClientsNeed::DataServices`]): clients of static pages are not held
    /// at the host while the database starts.
    pub fn set_clients_need(&mut self, need: ClientsNeed) {
        self.clients_need = need;
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
        self.take_service_snapshot(Some(QUIESCE_TIMEOUT))
    }

    fn take_service_snapshot(&mut self, settle: Option<Duration>) -> Result<&Snapshot, RecoveryError> {
        // The standby maps the old snapshot's RAM file.
        self.standby.clear();
        let watched = self.image.profile().watched_files();
        let vm = self.vm.as_mut().expect("the SUT always holds a VM between calls");
        self.snapshots.take_service(vm, watched, settle)?;
        self.service_due = false;
        self.prepare_standby();
        Ok(self.snapshots.get(Which::Service).expect("just taken"))
    }

    /// Readies the SUT for a failure it will recover from with `strategy`:
    /// notes what the running guest did since the last look (data-disk
    /// writes, watched-file changes) and moves the standby QEMU to the
    /// snapshot that recovery will restore. A service restore that can
    /// no longer restore the service snapshot (the data disk was written)
    /// will fall back to the phase snapshot: known before the failure, that
    /// fallback then costs no QEMU launch. Cheap when nothing changed.
    pub fn prepare_for(&mut self, strategy: Strategy) {
        self.expected = strategy;
        self.absorb_agent();
        let vm = self.vm.as_mut().expect("the SUT always holds a VM between calls");
        if vm.check_alive().is_ok() {
            self.snapshots.note_data_writes(vm);
        }
        let want = self.standby_target().map(|(which, _)| which);
        let have = self.standby.snapshot_dir();
        let want_dir = want.and_then(|w| self.snapshots.get(w)).map(|s| s.dir.as_path());
        if want_dir.is_some() && have != want_dir {
            self.prepare_standby();
        }
    }

    /// Upkeep between failures, for a VMM that runs for long: takes the
    /// service snapshot again when a recovery left it due and the data disk
    /// has gone quiet (waiting at most a few seconds for that), then
    /// readies the standby ([`Sut::prepare_for`] the last strategy).
    /// Returns whether a service snapshot was taken.
    pub fn maintain(&mut self) -> Result<bool, RecoveryError> {
        let taken = self.retake_service(Duration::ZERO, MAINTAIN_SETTLE)?;
        self.prepare_for(self.expected);
        Ok(taken)
    }

    /// Whether a recovery left the service snapshot to be taken again.
    pub fn service_snapshot_due(&self) -> bool {
        self.service_due
    }

    /// Takes the service snapshot again if it is due and the running guest
    /// can be snapshotted (its RAM its own), once its services run and the
    /// data disk settles within `settle`; services not running within
    /// `ready_within`, or a disk still written, leave it due. Returns
    /// whether it was taken.
    pub(super) fn retake_service(&mut self, ready_within: Duration, settle: Duration) -> Result<bool, RecoveryError> {
        if !self.service_due || !self.vm().snapshottable() {
            return Ok(false);
        }
        if self.vm().agent().wait_phase("services-ready", ready_within).is_none() {
            return Ok(false);
        }
        // The agent's heartbeat loop must run (its first beat, the manifest)
        // before the health check below can see a beat.
        let watched = self.image.profile().watched_files();
        let vm = self.vm();
        wait_manifest(vm, watched);
        if !quiesce_data_disk(vm, settle) {
            tracing::info!("the service snapshot stays due: the data disk is still being written");
            return Ok(false);
        }
        // Never snapshot a guest that failed meanwhile: it must run and
        // its agent must have beaten just now.
        let beating = vm.agent().last_heartbeat().is_some_and(|hb| hb.at.elapsed() < HEALTHY_HEARTBEAT_AGE);
        if vm.status()? != "running" || !beating {
            tracing::warn!("the service snapshot stays due: the guest is not running healthily");
            return Ok(false);
        }
        self.take_service_snapshot(None)?;
        tracing::info!("service snapshot taken again after a recovery that did not restore it");
        Ok(true)
    }

    /// The snapshot the next restore will use, given the expected strategy
    /// and what may be restored now, and whether its guest should own its
    /// RAM: a restored phase snapshot must be able to take a fresh service
    /// snapshot once the service runs again.
    fn standby_target(&self) -> Option<(Which, bool)> {
        let phase = self.snapshots.get(Which::Phase).is_some() && self.snapshots.unsafe_reason(Which::Phase).is_none();
        match self.expected {
            Strategy::ServiceRestore if self.snapshots.service_usable() => Some((Which::Service, false)),
            Strategy::ServiceRestore | Strategy::PhaseRestore if phase => Some((Which::Phase, true)),
            // A reboot restores nothing: keep a standby for the likeliest
            // restore of a later recovery anyway.
            Strategy::FullReboot | Strategy::KexecReboot if self.snapshots.service_usable() => {
                Some((Which::Service, false))
            }
            _ => None,
        }
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

    /// Launches a QEMU ahead of the next restore (see
    /// [`Sut::standby_target`]), replacing any standby there is.
    pub(super) fn prepare_standby(&mut self) {
        let target = self.standby_target();
        let snapshot = target.and_then(|(which, _)| self.snapshots.get(which));
        let owned = target.is_some_and(|(_, owned)| owned);
        self.standby.prepare(&self.image, &self.config, snapshot, owned);
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
