//! The recovery VMM's control loop: a system under test that keeps a guest's
//! service up, notices kernel failures by itself, and brings the service
//! back with a chosen strategy, timing each step.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::guest::GuestImage;
use crate::probe;
use crate::snapshot::{self, Snapshot, SnapshotError};
use crate::vm::{Vm, VmConfig, VmError};

/// How the service is brought back after a kernel failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Reset the VM and boot firmware, kernel, init and services from
    /// scratch: the baseline the published results compare against.
    FullReboot,
    /// Restore the snapshot taken with the services running, in a fresh
    /// QEMU on the same ports, with RAM mapped lazily.
    ServiceRestore,
}

impl Strategy {
    /// Every strategy, baseline first.
    pub const ALL: [Strategy; 2] = [Strategy::FullReboot, Strategy::ServiceRestore];

    /// Its name on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::FullReboot => "full-reboot",
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
#[error("unknown recovery strategy `{0}`: the strategies are full-reboot and service-restore")]
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

/// A guest whose service the VMM keeps up.
pub struct Sut {
    image: GuestImage,
    config: VmConfig,
    vm: Option<Vm>,
    // Disks outlive every VM of the SUT: they are never rolled back.
    _disks: tempfile::TempDir,
    snapshots: tempfile::TempDir,
    service_snapshot: Option<Snapshot>,
}

impl Sut {
    /// Boots the guest (RAM file-backed, so snapshots are lazy) and waits for
    /// the first correct answer. Later VMs reuse its ports.
    pub fn boot(image: &GuestImage, config: &VmConfig) -> Result<Sut, RecoveryError> {
        let disks = tempfile::Builder::new()
            .prefix("kfi-disks-")
            .tempdir()
            .map_err(|source| RecoveryError::Io { what: "the disk directory", source })?;
        let snapshots = tempfile::Builder::new()
            .prefix("kfi-snapshots-")
            .tempdir()
            .map_err(|source| RecoveryError::Io { what: "the snapshot directory", source })?;
        let config = VmConfig { shared_ram: true, disk_dir: Some(disks.path().to_path_buf()), ..config.clone() };
        let vm = Vm::start(image, &config)?;
        vm.wait_http(SERVICE_TIMEOUT)?;
        let config = vm.config();
        Ok(Sut { image: image.clone(), config, vm: Some(vm), _disks: disks, snapshots, service_snapshot: None })
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
        Ok(self.service_snapshot.insert(snap))
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

    /// Brings the service back after `failure` with `strategy` (falling back
    /// to a full reboot when no valid snapshot exists) and waits for the
    /// first correct answer.
    pub fn recover(&mut self, strategy: Strategy, failure: &Failure) -> Result<RecoveryTiming, RecoveryError> {
        let mut used = strategy;
        let mut fallback_reason = None;
        let started = Instant::now();
        if strategy == Strategy::ServiceRestore {
            match self.service_snapshot.as_ref().map(|s| Snapshot::open(&s.dir)) {
                None => fallback_reason = Some("no service snapshot was taken".to_string()),
                Some(Err(e)) => fallback_reason = Some(format!("the service snapshot is unusable: {e}")),
                Some(Ok(snap)) => match self.restore(&snap) {
                    Ok(()) => {}
                    Err(e) => fallback_reason = Some(format!("restoring the snapshot failed: {e}")),
                },
            }
            if let Some(reason) = &fallback_reason {
                tracing::warn!("service-restore falls back to full-reboot: {reason}");
                used = Strategy::FullReboot;
            }
        }
        if used == Strategy::FullReboot {
            self.full_reboot()?;
        }
        debug_assert!(self.vm.is_some());
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
        Ok(RecoveryTiming {
            strategy: used,
            requested: strategy,
            fallback_reason,
            cause: failure.cause,
            restart_s,
            service_s: ready.duration_since(failure.detected_at).as_secs_f64(),
        })
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
        self.vm = Some(vm);
        Ok(())
    }

    fn restore(&mut self, snap: &Snapshot) -> Result<(), RecoveryError> {
        if let Some(old) = self.vm.take() {
            old.kill();
        }
        match Vm::restore(&self.image, &self.config, snap) {
            Ok(vm) => {
                self.vm = Some(vm);
                Ok(())
            }
            // No VM left: the fallback's full reboot starts a cold one.
            Err(e) => Err(e.into()),
        }
    }
}
