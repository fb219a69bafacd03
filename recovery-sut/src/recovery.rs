//! The recovery VMM's control loop: a system under test that keeps a guest's
//! service up, notices kernel failures by itself, and brings the service
//! back with a chosen strategy, timing each step.
//!
//! The safety monitor decides whether a snapshot may be restored: the guest
//! agent reports the watched files (see [`crate::guest::Profile::watched_files`])
//! and their changes; a snapshot whose recorded manifest no longer matches,
//! or that was taken before a reported change, is invalid, and recovery
//! falls back to a full reboot that takes fresh snapshots on the way up.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::agent::{FileChange, FileState};
use crate::guest::GuestImage;
use crate::probe;
use crate::snapshot::{Snapshot, SnapshotError};
use crate::vm::{save, Standby, Vm, VmConfig, VmError};

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
    /// The guest loaded a crash kernel once its services ran (`kexec -p`
    /// into a `crashkernel=` reservation) and a panic jumps straight into
    /// it, skipping firmware; it mounts the disks and starts the services
    /// (tiny: its init; debian: systemd). The VMM only watches. Needs a VM with
    /// [`VmConfig::crash_kernel_mib`]; the crash kernel has none of its
    /// own, so the next panic falls back to a full reboot.
    KexecReboot,
}

impl Strategy {
    /// Every strategy, baseline first.
    pub const ALL: [Strategy; 4] =
        [Strategy::FullReboot, Strategy::PhaseRestore, Strategy::ServiceRestore, Strategy::KexecReboot];

    /// Its name on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::FullReboot => "full-reboot",
            Strategy::PhaseRestore => "phase-restore",
            Strategy::ServiceRestore => "service-restore",
            Strategy::KexecReboot => "kexec-reboot",
        }
    }
}

/// The crash kernel reservation of kexec-reboot for `profile`: the tiny
/// guest's crash kernel has about 58 MiB free in 128, enough for its init
/// and services; debian's runs systemd, Apache, PHP and MariaDB (a 64 MiB
/// buffer pool), which its `min_memory_mib` of 384 is sized for.
pub fn kexec_crash_kernel_mib(profile: crate::Profile) -> u32 {
    match profile {
        crate::Profile::Tiny => 128,
        crate::Profile::Debian => 448,
    }
}

impl Strategy {
    /// The VM configuration a SUT of `profile` recovering with this
    /// strategy boots with: kexec-reboot reserves a crash kernel, and
    /// enough RAM besides for the running system.
    pub fn vm_config(self, base: &VmConfig, profile: crate::Profile) -> VmConfig {
        match self {
            Strategy::KexecReboot => {
                let crash = kexec_crash_kernel_mib(profile);
                let host = crate::vm::CRASH_KERNEL_HOST_MIB.max(crate::guest::min_memory_mib(profile));
                VmConfig {
                    crash_kernel_mib: Some(crash),
                    memory_mib: base.memory_mib.max(crash + host),
                    ..base.clone()
                }
            }
            _ => base.clone(),
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
#[error(
    "unknown recovery strategy `{0}`: the strategies are full-reboot, phase-restore, service-restore and kexec-reboot"
)]
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
    /// pvpanic raised GUEST_CRASHLOADED: the kernel panicked with a crash
    /// kernel loaded and goes on into it (QEMU does not pause it).
    GuestCrashLoaded,
    /// The agent's heartbeat stopped.
    HeartbeatLost,
    /// The QEMU process died.
    QemuExited,
    /// The guest stopped feeding its i6300esb watchdog (QMP `WATCHDOG`).
    Watchdog,
    /// The host's periodic probe of the service failed several times in a
    /// row (no answer, or a wrong one).
    ServiceProbe,
}

impl FailureCause {
    /// Its name in results.
    pub fn name(self) -> &'static str {
        match self {
            FailureCause::GuestPanicked => "guest-panicked",
            FailureCause::GuestCrashLoaded => "guest-crash-loaded",
            FailureCause::HeartbeatLost => "heartbeat-lost",
            FailureCause::QemuExited => "qemu-exited",
            FailureCause::Watchdog => "watchdog",
            FailureCause::ServiceProbe => "service-probe",
        }
    }
}

/// The host's periodic probe of the service as a failure detector.
#[derive(Debug, Clone, Copy)]
pub struct ServiceProbe {
    /// Time between the starts of two probes.
    pub interval: Duration,
    /// How long one probe may take.
    pub timeout: Duration,
    /// Consecutive failed probes that make a failure.
    pub failures: u32,
}

impl Default for ServiceProbe {
    /// Tolerant enough for a TCG guest under load: 3 failures of 1 s
    /// probes every 0.5 s.
    fn default() -> Self {
        ServiceProbe { interval: Duration::from_millis(500), timeout: Duration::from_secs(1), failures: 3 }
    }
}

/// Which failure detectors watch the guest. pvpanic (GUEST_PANICKED,
/// GUEST_CRASHLOADED) and QEMU's exit are always watched.
#[derive(Debug, Clone, Copy)]
pub struct Detectors {
    /// A heartbeat older than this is a failure; `None`: not watched.
    pub heartbeat_timeout: Option<Duration>,
    /// Watch for QMP `WATCHDOG` events (needs [`VmConfig::watchdog_s`]).
    pub watchdog: bool,
    /// Probe the service from the host; `None`: no probe.
    pub probe: Option<ServiceProbe>,
}

impl Detectors {
    /// Only the heartbeat (with pvpanic and QEMU's exit).
    pub fn heartbeat(timeout: Duration) -> Detectors {
        Detectors { heartbeat_timeout: Some(timeout), watchdog: false, probe: None }
    }
}

/// Probes the service on its own thread, so that a slow probe never delays
/// the other detectors; says when the last of `failures` consecutive
/// failures happened. It stops when dropped.
struct ProbeThread {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    failed_at: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
}

impl ProbeThread {
    fn start(vm: &Vm, probe: ServiceProbe) -> ProbeThread {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let stop = Arc::new(AtomicBool::new(false));
        let failed_at = Arc::new(Mutex::new(None));
        let (addr, doc) = (vm.http_addr(), vm.image().docs.index().clone());
        let (thread_stop, thread_failed) = (stop.clone(), failed_at.clone());
        let body = move || {
            let mut failures = 0;
            while !thread_stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                match probe::check_doc(addr, &doc, probe.timeout) {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        tracing::debug!("service probe {failures}/{} failed: {e}", probe.failures);
                        if failures >= probe.failures {
                            *thread_failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                            return;
                        }
                    }
                }
                std::thread::sleep(probe.interval.saturating_sub(started.elapsed()));
            }
        };
        if let Err(e) = std::thread::Builder::new().name("service-probe".into()).spawn(body) {
            tracing::warn!("cannot start the service probe thread: {e}");
        }
        ProbeThread { stop, failed_at }
    }

    fn failed_at(&self) -> Option<Instant> {
        *self.failed_at.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ProbeThread {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
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
    /// The restore ran on a QEMU launched beforehand ([`Vm::standby`]).
    pub standby: bool,
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
    /// The watched files as the agents last reported them, across VMs.
    files: BTreeMap<String, FileState>,
    /// Every watched-file change reported since the older snapshot.
    changes: Vec<FileChange>,
    /// When the service and phase snapshots were taken (or, for golden
    /// ones, adopted): a change reported later invalidates them.
    service_taken: Instant,
    phase_taken: Instant,
    /// A QEMU launched ahead of the next service restore.
    standby: Option<Standby>,
}

/// Which recovery snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Service,
    Phase,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Service => "service",
            Which::Phase => "phase",
        }
    }
}

/// How long the agent gets to report the watched files before a snapshot
/// is taken without a complete manifest.
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the data disk must go without a write before a service
/// snapshot is taken, and how long the SUT waits for that at most.
const DATA_QUIET: Duration = Duration::from_secs(2);
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(60);

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
        // The agent reports the watched files just before `held`.
        let phase_snapshot = Some(save::take(&mut vm, &snapshots.path().join("phase"), "userland")?);
        let phase_taken = Instant::now();
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
            _disks: disks,
            snapshots,
            service_snapshot: None,
            phase_snapshot,
            data_baseline: None,
            data_dirty: false,
            files: BTreeMap::new(),
            changes: Vec::new(),
            service_taken: phase_taken,
            phase_taken,
            standby: None,
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
            .map(|name| self._disks.path().join(name))
            .filter(|p| p.exists())
            .collect();
        self.wait_manifest();
        self.quiesce_data_disk();
        let service = save::take_with_disks(self.vm(), &dir.join("service"), "services-ready", &disks)?;
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
        let now = Instant::now();
        let mut sut = Sut {
            image: golden.image.clone(),
            config,
            vm: Some(vm),
            _disks: disks,
            snapshots,
            service_snapshot: Some(service),
            phase_snapshot: golden.phase.clone(),
            data_baseline,
            data_dirty: false,
            files: BTreeMap::new(),
            changes: Vec::new(),
            service_taken: now,
            phase_taken: now,
            standby: None,
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
        self.service_snapshot.as_ref()
    }

    /// Takes the service-restore snapshot now (services must be running).
    pub fn snapshot_service(&mut self) -> Result<&Snapshot, RecoveryError> {
        let dir = self.snapshots.path().join("service");
        // The standby maps the old snapshot's RAM file.
        self.standby = None;
        self.wait_manifest();
        self.quiesce_data_disk();
        let snap = save::take(self.vm(), &dir, "services-ready")?;
        self.service_taken = Instant::now();
        self.absorb_agent();
        self.data_baseline = data_writes(self.vm());
        self.data_dirty = false;
        self.service_snapshot = Some(snap);
        self.prepare_standby();
        Ok(self.service_snapshot.as_ref().expect("just taken"))
    }

    /// With a crash kernel configured, waits until the guest has loaded it
    /// (the init does so in the background once services run): until then
    /// a panic cannot kexec.
    fn wait_crash_kernel(&mut self) -> Result<(), RecoveryError> {
        if self.config.crash_kernel_mib.is_some() {
            self.vm().wait_phase("kexec-loaded", SERVICE_TIMEOUT)?;
        }
        Ok(())
    }

    /// Waits until the agent has reported every watched file, so that a
    /// snapshot records the full manifest.
    fn wait_manifest(&mut self) {
        // The heartbeat loop's manifest (a boot's hold reported one
        // earlier): the service then runs with the agent in its loop, and
        // a guest restored from the snapshot obeys commands at once.
        if self.vm().agent().wait_heartbeat(0, MANIFEST_TIMEOUT).is_none() {
            tracing::warn!("no agent heartbeat within {MANIFEST_TIMEOUT:?} before the snapshot");
        }
        let watched = self.image.profile().watched_files();
        if !self.vm().agent().wait_watched(watched, MANIFEST_TIMEOUT) {
            tracing::warn!("the agent reported no manifest of the watched files within {MANIFEST_TIMEOUT:?}; the snapshot cannot be checked against file changes");
        }
    }

    /// Launches a QEMU ahead of the next service restore ([`Vm::standby`]),
    /// so that a recovery does not wait for QEMU to start; without one, a
    /// restore launches its own.
    fn prepare_standby(&mut self) {
        self.standby = None;
        let Some(snap) = &self.service_snapshot else { return };
        match Vm::standby(&self.image, &self.config, snap) {
            Ok(standby) => self.standby = Some(standby),
            Err(e) => tracing::warn!("no standby QEMU for the next restore: {e}"),
        }
    }

    /// Lets the data disk settle before a service snapshot: the guest
    /// writes its dirty pages back, then the SUT waits until QEMU counts no
    /// new write for [`DATA_QUIET`]. A snapshot taken with dirty pages, or
    /// with a database in the middle of background work, writes the data
    /// disk again after every restore, and that makes the next service
    /// restore unsafe (see [`Sut::recover`]). A disk that never settles
    /// (a workload writing) is snapshotted anyway, with a warning.
    fn quiesce_data_disk(&mut self) {
        let Some(mut last) = data_writes(self.vm()) else { return };
        let started = Instant::now();
        if let Err(e) = crate::memory::sync(self.vm()) {
            tracing::warn!("the guest did not sync before the service snapshot: {e}");
        }
        let mut quiet_since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = data_writes(self.vm()).unwrap_or(last);
            if now != last {
                last = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= DATA_QUIET {
                tracing::info!(seconds = started.elapsed().as_secs_f64(), "data disk quiet for the service snapshot");
                return;
            }
            if started.elapsed() >= QUIESCE_TIMEOUT {
                tracing::warn!(
                    "the data disk was still being written after {QUIESCE_TIMEOUT:?}; a service restore from this snapshot will fall back to phase-restore"
                );
                return;
            }
        }
    }

    /// Takes the watched-file reports of the current VM's agent into the
    /// SUT's own view, which outlives the VM.
    fn absorb_agent(&mut self) {
        let Some(vm) = self.vm.as_ref() else { return };
        let changes = vm.agent().take_changes();
        self.files.extend(vm.agent().watched_files());
        self.changes.extend(changes);
        // Changes older than both snapshots can no longer invalidate one.
        let oldest = self.service_taken.min(self.phase_taken);
        self.changes.retain(|c| c.at > oldest);
    }

    /// Why the safety monitor forbids restoring a snapshot, if it does:
    /// a watched file differs from the snapshot's manifest, or changed
    /// after the snapshot was taken.
    fn unsafe_reason(&self, which: Which) -> Option<String> {
        let (snap, taken) = match which {
            Which::Service => (self.service_snapshot.as_ref()?, self.service_taken),
            Which::Phase => (self.phase_snapshot.as_ref()?, self.phase_taken),
        };
        let mut changed: BTreeMap<&str, String> = BTreeMap::new();
        for (path, was) in &snap.meta.watched {
            match self.files.get(path) {
                Some(now) if now != was => {
                    changed.insert(path, format!("{path} (was {was}, now {now})"));
                }
                _ => {}
            }
        }
        for c in self.changes.iter().filter(|c| c.at > taken) {
            changed.entry(&c.path).or_insert_with(|| format!("{} (changed to {} after the snapshot)", c.path, c.state));
        }
        (!changed.is_empty()).then(|| {
            format!(
                "the safety monitor saw watched files change since the {} snapshot: {}; restoring it would bring back a system that disagrees with them",
                which.name(),
                changed.into_values().collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// The phase snapshot, if the guest could hold for one.
    pub fn phase_snapshot(&self) -> Option<&Snapshot> {
        self.phase_snapshot.as_ref()
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
        self.watch(detectors, Some(Instant::now() + timeout), &|| false)?.ok_or(RecoveryError::NoFailure(timeout))
    }

    /// Watches as [`Sut::wait_failure_with`] does, with no time limit,
    /// until a failure (`Some`) or until `stop` returns true (`None`;
    /// polled every few milliseconds).
    pub fn watch_until(
        &mut self,
        detectors: &Detectors,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<Failure>, RecoveryError> {
        self.watch(detectors, None, stop)
    }

    fn watch(
        &mut self,
        detectors: &Detectors,
        deadline: Option<Instant>,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<Failure>, RecoveryError> {
        let vm = self.vm();
        let probe = detectors.probe.map(|p| ProbeThread::start(vm, p));
        let events: &[&str] = if detectors.watchdog {
            &["GUEST_PANICKED", "GUEST_CRASHLOADED", "WATCHDOG"]
        } else {
            &["GUEST_PANICKED", "GUEST_CRASHLOADED"]
        };
        let watch_from = Instant::now();
        loop {
            if let Some(event) = vm.qmp().wait_any(events, Duration::from_millis(2)) {
                let cause = match event.name.as_str() {
                    "WATCHDOG" => FailureCause::Watchdog,
                    "GUEST_CRASHLOADED" => FailureCause::GuestCrashLoaded,
                    _ => FailureCause::GuestPanicked,
                };
                return Ok(Some(Failure { cause, detected_at: event.at }));
            }
            let now = Instant::now();
            if vm.check_alive().is_err() {
                return Ok(Some(Failure { cause: FailureCause::QemuExited, detected_at: now }));
            }
            if let Some(heartbeat_timeout) = detectors.heartbeat_timeout {
                let last_beat = vm.agent().last_heartbeat().map(|h| h.at).unwrap_or(watch_from).max(watch_from);
                if now.duration_since(last_beat) > heartbeat_timeout {
                    return Ok(Some(Failure { cause: FailureCause::HeartbeatLost, detected_at: now }));
                }
            }
            if let Some(at) = probe.as_ref().and_then(ProbeThread::failed_at) {
                return Ok(Some(Failure { cause: FailureCause::ServiceProbe, detected_at: at }));
            }
            if deadline.is_some_and(|d| now >= d) || stop() {
                return Ok(None);
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
        self.absorb_agent();
        // The crashed QEMU still counts the data disk's writes.
        if let (Some(baseline), Some(now)) = (self.data_baseline, data_writes(self.vm())) {
            if now > baseline {
                self.data_dirty = true;
            }
        }
        let mut fallback_reason = None;
        let mut used = strategy;
        // Whether the restore, if one ran, ran on the standby.
        let mut on_standby = false;
        if strategy == Strategy::KexecReboot {
            match failure.cause {
                // Already on its way into the crash kernel: phases from
                // here on are the crash kernel's.
                FailureCause::GuestCrashLoaded => self.vm().agent().reset(),
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
            let reason = if self.data_dirty {
                Some(
                    "the data disk was written since the service snapshot; its page cache would disagree with the disk"
                        .to_string(),
                )
            } else if let Some(reason) = self.unsafe_reason(Which::Service) {
                Some(reason)
            } else {
                match self.try_restore(self.service_snapshot.clone(), "service") {
                    Ok(standby) => {
                        on_standby = standby;
                        None
                    }
                    Err(reason) => Some(reason),
                }
            };
            if let Some(reason) = reason {
                used = if self.phase_snapshot.is_some() { Strategy::PhaseRestore } else { Strategy::FullReboot };
                fallback_reason = Some(reason);
            }
        }
        if used == Strategy::PhaseRestore {
            let restored = match self.unsafe_reason(Which::Phase) {
                Some(reason) => Err(reason),
                None => self.try_restore(self.phase_snapshot.clone(), "phase"),
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
            Strategy::PhaseRestore | Strategy::FullReboot | Strategy::KexecReboot => {
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
        if used == Strategy::FullReboot {
            self.wait_crash_kernel()?;
        }
        if self.standby.is_none() && !self.data_dirty {
            self.prepare_standby();
        }
        Ok(RecoveryTiming {
            strategy: used,
            requested: strategy,
            fallback_reason,
            cause: failure.cause,
            restart_s,
            service_s,
            standby: on_standby,
        })
    }

    /// Replaces the VM by one restored from `snap`; `Err` carries why it
    /// could not, for the fallback's reason.
    /// `Ok(true)`: the restore ran on the standby QEMU.
    fn try_restore(&mut self, snap: Option<Snapshot>, which: &str) -> Result<bool, String> {
        let snap = snap.ok_or_else(|| format!("no {which} snapshot was taken"))?;
        let snap = Snapshot::open(&snap.dir).map_err(|e| format!("the {which} snapshot is unusable: {e}"))?;
        // Lets a test build make restores slower on purpose, to prove that
        // `kfi check` catches a regression; unset in real use.
        if let Some(ms) = std::env::var("KFI_TEST_RESTORE_DELAY_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let standby = match &self.standby {
            Some(s) if s.snapshot().dir == snap.dir => self.standby.take(),
            _ => None,
        };
        if let Some(old) = self.vm.take() {
            old.kill();
        }
        // On failure no VM is left: the fallback's full reboot starts one.
        let restored = match standby {
            Some(standby) => match Vm::restore_on(standby) {
                Ok(vm) => Ok((vm, true)),
                Err(e) => {
                    tracing::warn!("the standby QEMU could not restore the {which} snapshot ({e}); launching another");
                    Vm::restore(&self.image, &self.config, &snap).map(|vm| (vm, false))
                }
            },
            None => Vm::restore(&self.image, &self.config, &snap).map(|vm| (vm, false)),
        };
        let (vm, on_standby) = restored.map_err(|e| format!("restoring the {which} snapshot failed: {e}"))?;
        self.vm = Some(vm);
        Ok(on_standby)
    }

    fn full_reboot(&mut self) -> Result<(), RecoveryError> {
        // Snapshots the safety monitor has invalidated are taken again on
        // the way up, which needs RAM of the VM's own: a restored QEMU maps
        // a snapshot's RAM privately, so it makes way for a cold start.
        let retake = self.unsafe_reason(Which::Service).is_some() || self.unsafe_reason(Which::Phase).is_some();
        let vm = match self.vm.take() {
            Some(mut vm) if vm.check_alive().is_ok() && (vm.snapshottable() || !retake) => {
                vm.agent().reset();
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
                Vm::start(&self.image, &self.config)?
            }
        };
        self.vm = Some(vm);
        // The boot stops at the phase boundary it was told to hold at.
        if self.phase_snapshot.is_some() {
            self.vm().wait_phase("held", SERVICE_TIMEOUT)?;
            self.absorb_agent();
            if let Some(reason) = self.unsafe_reason(Which::Phase) {
                if self.vm().snapshottable() {
                    tracing::info!("taking the phase snapshot again: {reason}");
                    let dir = self.snapshots.path().join("phase");
                    self.phase_snapshot = Some(save::take(self.vm(), &dir, "userland")?);
                    self.phase_taken = Instant::now();
                }
            }
            self.vm()
                .agent()
                .send("continue")
                .map_err(|source| RecoveryError::Io { what: "the agent command", source })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_and_cause_names_match_their_serialized_form() {
        for s in Strategy::ALL {
            assert_eq!(s.name().parse::<Strategy>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
        }
        assert_eq!("kexec-reboot".parse::<Strategy>().unwrap(), Strategy::KexecReboot);
        let err = "warp".parse::<Strategy>().unwrap_err().to_string();
        assert!(err.contains("`warp`") && err.contains("kexec-reboot"), "{err}");
        for cause in [
            FailureCause::GuestPanicked,
            FailureCause::GuestCrashLoaded,
            FailureCause::HeartbeatLost,
            FailureCause::QemuExited,
            FailureCause::Watchdog,
            FailureCause::ServiceProbe,
        ] {
            assert_eq!(serde_json::to_value(cause).unwrap(), cause.name());
        }
    }

    #[test]
    fn kexec_reboot_reserves_a_crash_kernel_with_room_besides() {
        let base = VmConfig { memory_mib: 256, ..VmConfig::default() };
        let kexec = Strategy::KexecReboot.vm_config(&base, crate::Profile::Tiny);
        assert_eq!((kexec.crash_kernel_mib, kexec.memory_mib), (Some(128), 384));
        let debian = VmConfig { memory_mib: 1024, ..VmConfig::default() };
        let kexec = Strategy::KexecReboot.vm_config(&debian, crate::Profile::Debian);
        assert_eq!((kexec.crash_kernel_mib, kexec.memory_mib), (Some(448), 1024));
        assert_eq!(Strategy::ServiceRestore.vm_config(&base, crate::Profile::Tiny).crash_kernel_mib, None);
        assert_eq!(Strategy::FullReboot.vm_config(&base, crate::Profile::Tiny).memory_mib, 256);
    }
}
