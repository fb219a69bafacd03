//! The shadow VM of a ShadowReboot: the new kernel booted beside the
//! serving primary, with the primary's devices but cut off the network and
//! on disks of its own, held at the phase boundary and snapshotted there,
//! then discarded. A standby QEMU is launched on its snapshot (with a RAM
//! copy of its own, so the switched guest can be snapshotted again) before
//! the primary stops.
//!
//! The clone route: a fresh boot of the new kernel on copy-on-write
//! overlays of the primary's disks, not a live clone of the primary
//! rebooted (a live clone would copy the primary's RAM only for the reboot
//! to throw it away). The tiny guest's root is its initramfs, which a reboot
//! unpacks afresh too. A guest with a root disk (debian) has it frozen at
//! the clone ([`RootClone`]: QMP `blockdev-snapshot-sync` moves the
//! primary's writes to a new layer), and the shadow boots on an overlay of
//! the frozen state; that overlay, with the shadow's own writes, becomes
//! the switched guest's root disk, and what the primary wrote to its root
//! disk after the clone is lost with the switch (its size is recorded).
//! The data disk is attached (the restored guest needs the device) as a
//! throwaway overlay of the pristine template and is never mounted: the
//! guest holds before its mount.

use std::path::{Path, PathBuf};
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
    /// The switched guest's VM settings: the primary's, on the clone's
    /// disk directory where there is a root disk.
    config: Option<VmConfig>,
    /// The primary's root disk frozen for this shadow, if it has one.
    pub(super) root: Option<RootClone>,
}

/// How often the shadow's boot is checked for a panic or a dead QEMU.
const POLL: Duration = Duration::from_millis(100);

/// The primary's root disk frozen at a shadow's clone: the frozen state
/// and the primary's data disk are linked into a new disk directory, where
/// the shadow's root overlay joins them for the switched guest.
pub(super) struct RootClone {
    /// The switched guest's disk directory.
    pub(super) dir: tempfile::TempDir,
    /// The primary's active root layer since the clone (lost with the switch).
    live: PathBuf,
    /// The primary's disk directory.
    primary: PathBuf,
}

/// The frozen root state in a [`RootClone`]'s directory.
const ROOT_BASE: &str = "root-base.qcow2";

impl RootClone {
    /// Freezes the root disk of the primary `vm`, whose disks live in
    /// `disk_dir`: its writes go to a new layer from now on.
    pub(super) fn freeze(vm: &mut Vm, disk_dir: &Path) -> Result<RootClone, String> {
        let dir = crate::private::tempdir("kfi-disks-").map_err(|e| format!("cannot create a disk directory: {e}"))?;
        let live = disk_dir.join("root-live.qcow2");
        vm.qmp()
            .execute(
                "blockdev-snapshot-sync",
                Some(serde_json::json!({ "device": "root", "snapshot-file": live, "format": "qcow2" })),
            )
            .map_err(|e| format!("QEMU could not freeze the primary's root disk: {e}"))?;
        // Links, not moves: the primary's chain keeps its names.
        for (from, to) in [("root.qcow2", ROOT_BASE), ("data.qcow2", "data.qcow2")] {
            std::fs::hard_link(disk_dir.join(from), dir.path().join(to))
                .map_err(|e| format!("cannot link {from} into the new disk directory: {e}"))?;
        }
        Ok(RootClone { dir, live, primary: disk_dir.to_path_buf() })
    }

    /// Makes the shadow's root overlay (on the frozen state) in `shadow_disks`.
    fn overlay_for(&self, shadow_disks: &Path) -> Result<(), String> {
        let base = self.dir.path().join(ROOT_BASE);
        crate::vm::create_overlay(&base, "qcow2", &shadow_disks.join("root.qcow2"))
            .map_err(|e| format!("cannot make the shadow's root overlay: {e}"))
    }

    /// The clone's disk directory, for the switched guest to keep.
    pub(super) fn into_dir(self) -> tempfile::TempDir {
        self.dir
    }

    /// Bytes the primary wrote to its root disk since the clone, as its
    /// new layer holds them (lost with the switch).
    pub(super) fn lost_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.live).map(|m| m.blocks() * 512).unwrap_or(0)
    }

    /// After a failed switch: the primary's disk directory made whole again
    /// for a cold start of the old kernel (its active layer, the new one,
    /// named `root.qcow2` over the frozen state).
    pub(super) fn undo(self) -> Result<(), String> {
        let base = self.primary.join(ROOT_BASE);
        std::fs::rename(self.primary.join("root.qcow2"), &base)
            .map_err(|e| format!("renaming the frozen root: {e}"))?;
        crate::tools::QEMU_IMG
            .run(
                [
                    "rebase".as_ref(),
                    "-u".as_ref(),
                    "-F".as_ref(),
                    "qcow2".as_ref(),
                    "-b".as_ref(),
                    base.as_os_str(),
                    self.live.as_os_str(),
                ],
                None,
            )
            .map_err(|e| format!("rebasing the primary's root layer: {e}"))?;
        std::fs::rename(&self.live, self.primary.join("root.qcow2"))
            .map_err(|e| format!("renaming the root layer: {e}"))
    }
}

/// Boots `next` (the image as updated) as a shadow of a primary started
/// with `primary`, holds it at the phase boundary and snapshots it into
/// `dir`; with `root`, on an overlay of the primary's frozen root disk,
/// which then joins the clone's disk directory. `Err`: why it could not,
/// with the end of its console.
pub(super) fn boot(
    next: &GuestImage,
    primary: &VmConfig,
    dir: &Path,
    root: Option<RootClone>,
) -> Result<Shadow, String> {
    match boot_held(next, primary, dir, root.as_ref()) {
        Ok((snapshot, timing)) => Ok(Shadow { snapshot, timing, standby: None, config: None, root }),
        Err(why) => Err(match root.map(RootClone::undo) {
            Some(Err(undo)) => format!("{why}; and the primary's root disk could not be made whole again: {undo}"),
            _ => why,
        }),
    }
}

fn boot_held(
    next: &GuestImage,
    primary: &VmConfig,
    dir: &Path,
    root: Option<&RootClone>,
) -> Result<(Snapshot, ShadowTiming), String> {
    let disks =
        crate::private::tempdir("kfi-shadow-disks-").map_err(|e| format!("cannot create its disk directory: {e}"))?;
    if let Some(root) = root {
        root.overlay_for(disks.path())?;
    }
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
            let console = vm.console_tail();
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
    if let Some(root) = root {
        let from = disks.path().join("root.qcow2");
        std::fs::rename(&from, root.dir.path().join("root.qcow2"))
            .map_err(|e| format!("cannot move the shadow's root disk to the switched guest's: {e}"))?;
    }
    let timing =
        ShadowTiming { clone: CLONE_ROUTE, boot_s, snapshot_s, standby_s: 0.0, boots: 1, root_writes_lost_bytes: None };
    Ok((snapshot, timing))
}

/// The clone route, in records.
pub(super) const CLONE_ROUTE: &str = "fresh-boot-on-overlays";

impl Shadow {
    /// Launches the QEMU the primary will switch to, on the shadow's
    /// snapshot with the primary's ports and disks and a RAM copy of its
    /// own, while the primary still serves.
    pub(super) fn launch_standby(&mut self, next: &GuestImage, primary: &VmConfig) -> Result<(), VmError> {
        let started = Instant::now();
        let config = match &self.root {
            Some(root) => VmConfig { disk_dir: Some(root.dir.path().to_path_buf()), ..primary.clone() },
            None => primary.clone(),
        };
        self.standby = Some(Vm::standby_owned(next, &config, &self.snapshot)?);
        self.config = Some(config);
        self.timing.standby_s = started.elapsed().as_secs_f64();
        Ok(())
    }

    /// Restores the shadow's snapshot for the primary (the old primary
    /// must be gone): on the standby, or a QEMU launched now if it failed.
    /// `open`: forward the service port at once. `true`: on the standby.
    pub(super) fn restore(&mut self, next: &GuestImage, primary: &VmConfig, open: bool) -> Result<(Vm, bool), VmError> {
        let config = self.config.clone().unwrap_or_else(|| primary.clone());
        super::standby::restore(self.standby.take(), next, &config, &self.snapshot, "shadow", open)
    }
}
