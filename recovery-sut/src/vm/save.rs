//! Taking snapshots of a running VM: a VM operation (QMP migration, a
//! pause, RAM copied while paused) that writes what [`crate::snapshot`]
//! describes. Lazy snapshots (device state + sparse RAM file) are restored
//! by [`Vm::restore`], full migration streams by [`Vm::restore_streamed`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Vm, VmError};
use crate::cache::CacheError;
use crate::snapshot::{copy_sparse, NewSnapshot, Snapshot, SnapshotError, SnapshotMeta};

/// Snapshots a running VM into `dir` (replacing what is there). The guest
/// is paused for the duration and resumed afterwards.
pub fn take(vm: &mut Vm, dir: &Path, phase: &str) -> Result<Snapshot, VmError> {
    take_with_disks(vm, dir, phase, &[])
}

/// As [`take`], and also copies the given disk overlays while the guest is
/// paused (QEMU flushes its block devices on `stop`, so the copies match
/// the saved RAM's page cache). A campaign's golden snapshot needs them:
/// every experiment restores RAM *and* disks to the same instant, which a
/// recovery snapshot must never do to the data disk.
pub fn take_with_disks(vm: &mut Vm, dir: &Path, phase: &str, disks: &[PathBuf]) -> Result<Snapshot, VmError> {
    let ram = vm.run_dir().join("guest.ram");
    if !vm.snapshottable() || !ram.exists() {
        return Err(SnapshotError::Unsupported(
            "the VM's RAM is not a shared file of its own (started without shared_ram, or restored from a snapshot)"
                .into(),
        )
        .into());
    }
    let new = NewSnapshot::begin(dir)?;
    let qmp = vm.qmp();
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
    )?;
    // The default cap (about 128 MiB/s) would make even the small stream slow.
    qmp.execute("migrate-set-parameters", Some(json!({"max-bandwidth": 1u64 << 40})))?;
    let paused = Instant::now();
    qmp.execute("stop", None)?;
    let result = save_while_paused(vm, &ram, &new).and_then(|()| new.copy_disks(disks).map_err(VmError::from));
    // Resume whatever happened: a failed snapshot must not leave the
    // service down.
    let resumed = vm.cont();
    let pause_s = paused.elapsed().as_secs_f64();
    result?;
    resumed?;
    let meta = SnapshotMeta {
        profile: vm.image().profile().to_string(),
        kernel: vm.image().kernel.identity(),
        qemu_version: vm.qmp_version(),
        accel: vm.accel().name().to_string(),
        memory_mib: vm.config().memory_mib,
        phase: phase.to_string(),
        pause_s,
        watched: vm.agent().watched_files(),
    };
    new.commit(meta, disks).map_err(VmError::from)
}

fn save_while_paused(vm: &mut Vm, ram: &Path, new: &NewSnapshot) -> Result<(), VmError> {
    let uri = format!("exec:cat > {}", new.state_file().display());
    vm.qmp().execute("migrate", Some(json!({ "uri": uri })))?;
    wait_migration(vm, Duration::from_secs(120))?;
    let target = new.ram_file();
    copy_sparse(ram, &target).map_err(|e| SnapshotError::from(CacheError::io("copy guest RAM to", &target, e)))?;
    Ok(())
}

/// Saves the paused-for-the-purpose guest as one migration stream holding
/// device state *and* RAM (zero pages only flagged), the classic snapshot
/// a streamed restore ([`Vm::restore_streamed`]) reads. The guest is paused
/// for the duration and resumed; returns the stream's size in bytes.
pub fn take_stream(vm: &mut Vm, file: &Path) -> Result<u64, VmError> {
    let qmp = vm.qmp();
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": false}]})),
    )?;
    // The default cap (about 128 MiB/s) would make the stream, not the
    // guest, the thing measured.
    qmp.execute("migrate-set-parameters", Some(json!({"max-bandwidth": 1u64 << 40})))?;
    qmp.execute("stop", None)?;
    let uri = format!("exec:cat > {}", file.display());
    let result = vm
        .qmp()
        .execute("migrate", Some(json!({ "uri": uri })))
        .map_err(VmError::from)
        .and_then(|_| wait_migration(vm, Duration::from_secs(600)));
    let resumed = vm.cont();
    result?;
    resumed?;
    let size =
        std::fs::metadata(file).map_err(|e| SnapshotError::from(CacheError::io("read the size of", file, e)))?.len();
    Ok(size)
}

fn wait_migration(vm: &mut Vm, timeout: Duration) -> Result<(), VmError> {
    let deadline = Instant::now() + timeout;
    loop {
        let info = vm.qmp().execute("query-migrate", None)?;
        match info.get("status").and_then(|s| s.as_str()).unwrap_or("none") {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                let why = info.get("error-desc").and_then(|s| s.as_str()).unwrap_or("no reason given");
                return Err(SnapshotError::Migration(why.to_string()).into());
            }
            _ if Instant::now() > deadline => {
                return Err(SnapshotError::Migration(format!("no completion in {} s", timeout.as_secs())).into())
            }
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Checks that `snapshot` can restore `vm`'s guest on this QEMU.
pub fn check_matches(snapshot: &Snapshot, vm: &Vm) -> Result<(), SnapshotError> {
    let want = (vm.image().profile().to_string(), vm.image().kernel.identity(), vm.qmp_version());
    let meta = &snapshot.meta;
    let have = (meta.profile.clone(), meta.kernel.clone(), meta.qemu_version.clone());
    if want != have {
        return Err(SnapshotError::Mismatch {
            dir: snapshot.dir.clone(),
            detail: format!("snapshot is {have:?}, VM is {want:?}"),
        });
    }
    Ok(())
}
