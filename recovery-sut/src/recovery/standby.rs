//! The standby QEMU: launched ahead of the next restore on the snapshot it
//! will restore ([`Vm::standby`]; on the phase snapshot with a RAM copy of
//! its own, [`Vm::standby_owned`]), so that a recovery does not wait for
//! QEMU to start; a restore without one (or whose standby fails) launches
//! its own.

use crate::guest::GuestImage;
use crate::snapshot::Snapshot;
use crate::vm::{Standby, Vm, VmConfig, VmError};

/// The SUT's standby QEMU, if one is launched.
#[derive(Default)]
pub(super) struct StandbySlot(Option<Standby>);

impl StandbySlot {
    /// Replaces the standby by one launched on `snapshot` (none without a
    /// snapshot, or if it cannot start). `owned`: the restored guest gets
    /// a copy of the RAM file of its own ([`Vm::standby_owned`]), so that it
    /// can be snapshotted again.
    pub(super) fn prepare(&mut self, image: &GuestImage, config: &VmConfig, snapshot: Option<&Snapshot>, owned: bool) {
        self.0 = None;
        let Some(snap) = snapshot else { return };
        let launched = if owned { Vm::standby_owned(image, config, snap) } else { Vm::standby(image, config, snap) };
        match launched {
            Ok(standby) => self.0 = Some(standby),
            Err(e) => tracing::warn!("no standby QEMU for the next restore: {e}"),
        }
    }

    /// Stops the standby (it maps the RAM file of a snapshot about to be
    /// replaced).
    pub(super) fn clear(&mut self) {
        self.0 = None;
    }

    /// The snapshot directory the standby was launched on, if there is one.
    pub(super) fn snapshot_dir(&self) -> Option<&std::path::Path> {
        self.0.as_ref().map(|s| s.snapshot().dir.as_path())
    }

    /// The standby, if it was launched on `snapshot`.
    pub(super) fn take_for(&mut self, snapshot: &Snapshot) -> Option<Standby> {
        match &self.0 {
            Some(s) if s.snapshot().dir == snapshot.dir => self.0.take(),
            _ => None,
        }
    }
}

/// Restores `snapshot` on `standby`, or in a QEMU launched now without one
/// or when the standby fails (`which` names the snapshot in the warning).
/// The VM it replaces must be gone. `open`: forward the service port at
/// once (else the caller opens it). `true`: it ran on the standby.
pub(super) fn restore(
    standby: Option<Standby>,
    image: &GuestImage,
    config: &VmConfig,
    snapshot: &Snapshot,
    which: &str,
    open: bool,
) -> Result<(Vm, bool), VmError> {
    let launch =
        || if open { Vm::restore(image, config, snapshot) } else { Vm::restore_closed(image, config, snapshot) };
    match standby {
        Some(standby) => {
            let restored = if open { Vm::restore_on(standby) } else { Vm::restore_on_closed(standby) };
            match restored {
                Ok(vm) => Ok((vm, true)),
                Err(e) => {
                    tracing::warn!("the standby QEMU could not restore the {which} snapshot ({e}); launching another");
                    launch().map(|vm| (vm, false))
                }
            }
        }
        None => launch().map(|vm| (vm, false)),
    }
}
