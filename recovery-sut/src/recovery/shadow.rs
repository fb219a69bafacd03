//! The shadow VM of a ShadowReboot: the new kernel booted beside the
//! serving primary, with the primary's devices but cut off the network and
//! on disks of its own, held at the phase boundary and snapshotted there,
//! then discarded. A standby QEMU is launched on its snapshot (with a RAM
//! copy of its own, so the switched guest can be snapshotted again) before
//! the primary stops.
//!
//! The clone route: a fresh boot of the new kernel on copy-on-write
//! overlays of the image's disks, not a live clone of the primary rebooted.
//! The tiny guest's root is its initramfs, which a reboot unpacks afresh
//! too, so the fresh boot reaches the same state the primary's reboot
//! would; a live clone would copy the primary's RAM only for the reboot to
//! throw it away. The data disk is attached (the restored guest needs the
//! device) as a throwaway overlay of the pristine template and is never
//! mounted: the guest holds before its mount.

use std::path::Path;
use std::time::{Duration, Instant};

use super::sut::SERVICE_TIMEOUT;
use super::update::ShadowTiming;
use crate::guest::GuestImage;
use crate::snapshot::Snapshot;
use crate::vm::{save, Standby, Vm, VmConfig, VmError};

/// A shadow's result: its snapshot and the standby the primary switches to.
pub(super) struct Shadow {
    pub(super) snapshot: Snapshot,
    pub(super) timing: ShadowTiming,
    standby: Option<Standby>,
}

/// How often the shadow's boot is checked for a panic or a dead QEMU.
const POLL: Duration = Duration::from_millis(100);

/// Boots `next` (the image as updated) as a shadow of a primary started
/// with `primary`, holds it at the phase boundary and snapshots it into
/// `dir`. `Err`: why it could not, with the end of its console.
pub(super) fn boot(next: &GuestImage, primary: &VmConfig, dir: &Path) -> Result<Shadow, String> {
    let disks =
        crate::private::tempdir("kfi-shadow-disks-").map_err(|e| format!("cannot create its disk directory: {e}"))?;
    let config = VmConfig {
        disk_dir: Some(disks.path().to_path_buf()),
        http_port: None,
        isolated: true,
        keep_run_dir: false,
        ..primary.clone()
    };
    let started = Instant::now();
    let mut vm = Vm::start(next, &config).map_err(|e| format!("QEMU did not start it: {e}"))?;
    let deadline = started + SERVICE_TIMEOUT;
    loop {
        if vm.agent().wait_phase("held", POLL).is_some() {
            break;
        }
        let failed = match vm.check_alive() {
            Err(e) => Some(format!("its QEMU ended: {e}")),
            Ok(()) => match vm.status() {
                Ok(status) if status == "guest-panicked" => Some("its kernel panicked".to_string()),
                Ok(_) if Instant::now() > deadline => {
                    Some(format!("it did not reach the phase boundary within {SERVICE_TIMEOUT:?}"))
                }
                Ok(_) => None,
                Err(e) => Some(format!("QMP failed: {e}")),
            },
        };
        if let Some(why) = failed {
            let console = console_tail(&vm);
            vm.kill();
            return Err(format!("{why}; its console ended with: {console}"));
        }
    }
    let boot_s = started.elapsed().as_secs_f64();
    let snapped = Instant::now();
    let boundary = next.profile().phase_boundary().name;
    let snapshot = save::take(&mut vm, dir, boundary).map_err(|e| format!("its snapshot failed: {e}"))?;
    let snapshot_s = snapped.elapsed().as_secs_f64();
    vm.kill();
    Ok(Shadow {
        snapshot,
        timing: ShadowTiming { clone: CLONE_ROUTE, boot_s, snapshot_s, standby_s: 0.0, boots: 1 },
        standby: None,
    })
}

/// The clone route, in records.
pub(super) const CLONE_ROUTE: &str = "fresh-boot-on-overlays";

impl Shadow {
    /// Launches the QEMU the primary will switch to, on the shadow's
    /// snapshot with the primary's ports and disks and a RAM copy of its
    /// own, while the primary still serves.
    pub(super) fn launch_standby(&mut self, next: &GuestImage, primary: &VmConfig) -> Result<(), VmError> {
        let started = Instant::now();
        self.standby = Some(Vm::standby_owned(next, primary, &self.snapshot)?);
        self.timing.standby_s = started.elapsed().as_secs_f64();
        Ok(())
    }

    /// Restores the shadow's snapshot for the primary (the old primary
    /// must be gone): on the standby, or a QEMU launched now if it failed.
    /// `open`: forward the service port at once. `true`: on the standby.
    pub(super) fn restore(&mut self, next: &GuestImage, primary: &VmConfig, open: bool) -> Result<(Vm, bool), VmError> {
        super::standby::restore(self.standby.take(), next, primary, &self.snapshot, "shadow", open)
    }
}

/// The last lines of a VM's console, for an error message.
fn console_tail(vm: &Vm) -> String {
    let text = std::fs::read_to_string(vm.console_log()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(6).collect();
    if lines.is_empty() {
        return "(nothing)".into();
    }
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
