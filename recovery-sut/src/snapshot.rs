//! VM snapshots for recovery: device state as a migration stream plus the
//! guest RAM as a plain file, checksummed and written atomically.
//!
//! Guest RAM stays out of the stream (`x-ignore-shared` with file-backed,
//! shared RAM): saving is a pause, a few hundred KB of device state and a
//! file copy; restoring maps the RAM file copy-on-write, so pages load on
//! first touch and the file stays reusable for the next restore.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::agent::FileState;
use crate::cache::{CacheError, Manifest, PartialDir};
use crate::vm::{Vm, VmError};

const STATE: &str = "state";
const RAM: &str = "ram";
/// Copies of disk overlays taken with a snapshot (see [`take_with_disks`]).
const DISKS: &str = "disks";

/// What a snapshot records about how it was made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotMeta {
    /// Guest profile.
    pub profile: String,
    /// Kernel identity.
    pub kernel: String,
    /// QEMU version that wrote it.
    pub qemu_version: String,
    /// Accelerator.
    pub accel: String,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// The boot phase it was taken at.
    pub phase: String,
    /// How long the guest was paused to take it, in seconds.
    pub pause_s: f64,
    /// The safety monitor's watched files as the agent last reported them
    /// before the snapshot: the snapshot is valid only while they stay so.
    /// Empty for snapshots of older kfi versions (nothing to check).
    #[serde(default)]
    pub watched: BTreeMap<String, FileState>,
}

/// Errors taking or opening snapshots.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The VM cannot be snapshotted.
    #[error("cannot snapshot: {0}")]
    Unsupported(String),
    /// QEMU failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Files failed or do not match their manifest.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The migration did not complete.
    #[error("saving the device state failed: {0}")]
    Migration(String),
    /// No snapshot at the path.
    #[error("no snapshot at {0}")]
    Missing(PathBuf),
    /// The snapshot belongs to another guest, kernel or QEMU.
    #[error("snapshot {dir} does not match this VM: {detail}")]
    Mismatch {
        /// Snapshot directory.
        dir: PathBuf,
        /// What differs.
        detail: String,
    },
}

/// A snapshot on disk, checked against its manifest when opened.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Its directory.
    pub dir: PathBuf,
    /// How it was made.
    pub meta: SnapshotMeta,
}

impl Snapshot {
    /// The device-state migration stream.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join(STATE)
    }

    /// The guest RAM image.
    pub fn ram_file(&self) -> PathBuf {
        self.dir.join(RAM)
    }

    /// Disk overlays saved with the snapshot (empty unless it was taken by
    /// [`take_with_disks`]), as paths inside the snapshot.
    pub fn disk_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.join(DISKS))
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Opens a snapshot and checks every file against the manifest (sizes
    /// always; content of the small state stream always, of the RAM file
    /// when its size or mtime moved).
    pub fn open(dir: &Path) -> Result<Snapshot, SnapshotError> {
        let manifest = Manifest::<SnapshotMeta>::load(dir)?.ok_or_else(|| SnapshotError::Missing(dir.to_path_buf()))?;
        manifest.verify(dir, "snapshot", "take a new snapshot")?;
        Ok(Snapshot { dir: dir.to_path_buf(), meta: manifest.meta })
    }

    /// Bytes the snapshot occupies on disk: the device state plus the RAM
    /// file's allocated blocks (its holes are pages that were zero).
    pub fn stored_bytes(&self) -> std::io::Result<u64> {
        Ok(allocated_bytes(&self.state_file())? + allocated_bytes(&self.ram_file())?)
    }

    /// Checks that this snapshot can restore `vm`'s guest on this QEMU.
    pub fn check_matches(&self, vm: &Vm) -> Result<(), SnapshotError> {
        let want = (vm.image().profile().to_string(), vm.image().kernel.identity(), vm.qmp_version());
        let have = (self.meta.profile.clone(), self.meta.kernel.clone(), self.meta.qemu_version.clone());
        if want != have {
            return Err(SnapshotError::Mismatch {
                dir: self.dir.clone(),
                detail: format!("snapshot is {have:?}, VM is {want:?}"),
            });
        }
        Ok(())
    }
}

/// Snapshots a running VM into `dir` (replacing what is there). The guest
/// is paused for the duration and resumed afterwards.
pub fn take(vm: &mut Vm, dir: &Path, phase: &str) -> Result<Snapshot, SnapshotError> {
    take_with_disks(vm, dir, phase, &[])
}

/// As [`take`], and also copies the given disk overlays while the guest is
/// paused (QEMU flushes its block devices on `stop`, so the copies match
/// the saved RAM's page cache). A campaign's golden snapshot needs them:
/// every experiment restores RAM *and* disks to the same instant, which a
/// recovery snapshot must never do to the data disk.
pub fn take_with_disks(vm: &mut Vm, dir: &Path, phase: &str, disks: &[PathBuf]) -> Result<Snapshot, SnapshotError> {
    let ram = vm.run_dir().join("guest.ram");
    if !vm.snapshottable() || !ram.exists() {
        return Err(SnapshotError::Unsupported(
            "the VM's RAM is not a shared file of its own (started without shared_ram, or restored from a snapshot)"
                .into(),
        ));
    }
    let partial = PartialDir::begin(dir)?;
    let qmp = vm.qmp();
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
    )
    .map_err(VmError::from)?;
    // The default cap (about 128 MiB/s) would make even the small stream slow.
    qmp.execute("migrate-set-parameters", Some(json!({"max-bandwidth": 1u64 << 40}))).map_err(VmError::from)?;
    let paused = Instant::now();
    qmp.execute("stop", None).map_err(VmError::from)?;
    let result = save_while_paused(vm, &ram, partial.path()).and_then(|()| copy_disks(disks, partial.path()));
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
    let disk_names: Vec<String> =
        disks.iter().filter_map(|d| d.file_name().map(|n| format!("{DISKS}/{}", n.to_string_lossy()))).collect();
    let mut files = vec![STATE, RAM];
    files.extend(disk_names.iter().map(String::as_str));
    Manifest::build(partial.path(), meta, &files)?.store(partial.path())?;
    partial.commit()?;
    Snapshot::open(dir)
}

fn copy_disks(disks: &[PathBuf], out: &Path) -> Result<(), SnapshotError> {
    if disks.is_empty() {
        return Ok(());
    }
    let dir = out.join(DISKS);
    std::fs::create_dir_all(&dir).map_err(|e| CacheError::io("create", &dir, e))?;
    for disk in disks {
        let name = disk.file_name().ok_or_else(|| SnapshotError::Missing(disk.clone()))?;
        let target = dir.join(name);
        std::fs::copy(disk, &target).map_err(|e| CacheError::io("copy a disk overlay to", &target, e))?;
    }
    Ok(())
}

fn save_while_paused(vm: &mut Vm, ram: &Path, out: &Path) -> Result<(), SnapshotError> {
    let uri = format!("exec:cat > {}", out.join(STATE).display());
    vm.qmp().execute("migrate", Some(json!({ "uri": uri }))).map_err(VmError::from)?;
    wait_migration(vm, Duration::from_secs(120))?;
    let target = out.join(RAM);
    copy_sparse(ram, &target).map_err(|e| CacheError::io("copy guest RAM to", &target, e))?;
    Ok(())
}

/// Size of the pages [`copy_sparse`] compares against zero.
const PAGE: usize = 4096;

/// Copies a RAM image leaving every all-zero page a hole: pages the guest
/// never touched, and those free-page reporting punched out, cost no
/// disk. (`std::fs::copy` would write the holes of a sparse file as
/// zeros.) Returns the bytes written.
pub fn copy_sparse(from: &Path, to: &Path) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom, Write};
    let mut src = std::fs::File::open(from)?;
    let len = src.metadata()?.len();
    let mut dst = std::fs::File::create(to)?;
    let mut buf = vec![0u8; 256 * PAGE];
    let mut written = 0u64;
    let mut pos = 0u64;
    while pos < len {
        // Jump over holes without reading them.
        let data = seek_data(&src, pos)?.unwrap_or(len);
        if data >= len {
            break;
        }
        pos = data - data % PAGE as u64;
        src.seek(SeekFrom::Start(pos))?;
        let want = buf.len().min((len - pos) as usize);
        let n = read_full(&mut src, &mut buf[..want])?;
        if n == 0 {
            break;
        }
        for (i, page) in buf[..n].chunks(PAGE).enumerate() {
            if page.iter().any(|&b| b != 0) {
                dst.seek(SeekFrom::Start(pos + (i * PAGE) as u64))?;
                dst.write_all(page)?;
                written += page.len() as u64;
            }
        }
        pos += n as u64;
    }
    dst.set_len(len)?;
    dst.sync_all()?;
    Ok(written)
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The next data offset at or after `pos` (`None`: only a hole follows).
fn seek_data(file: &std::fs::File, pos: u64) -> std::io::Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    // SAFETY: lseek on an open descriptor has no memory-safety preconditions.
    let off = unsafe { libc::lseek(file.as_raw_fd(), pos as libc::off_t, libc::SEEK_DATA) };
    if off < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            // A file system without SEEK_DATA: treat everything as data.
            Some(libc::EINVAL) => Ok(Some(pos)),
            _ => Err(e),
        };
    }
    Ok(Some(off as u64))
}

/// Bytes a file occupies on disk (allocated blocks, holes excluded).
pub fn allocated_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.blocks() * 512)
}

/// Saves the paused-for-the-purpose guest as one migration stream holding
/// device state *and* RAM (zero pages only flagged), the classic snapshot
/// a streamed restore ([`Vm::restore_streamed`]) reads. The guest is paused
/// for the duration and resumed; returns the stream's size in bytes.
pub fn take_stream(vm: &mut Vm, file: &Path) -> Result<u64, SnapshotError> {
    let qmp = vm.qmp();
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": false}]})),
    )
    .map_err(VmError::from)?;
    // The default cap (about 128 MiB/s) would make the stream, not the
    // guest, the thing measured.
    qmp.execute("migrate-set-parameters", Some(json!({"max-bandwidth": 1u64 << 40}))).map_err(VmError::from)?;
    qmp.execute("stop", None).map_err(VmError::from)?;
    let uri = format!("exec:cat > {}", file.display());
    let result = vm
        .qmp()
        .execute("migrate", Some(json!({ "uri": uri })))
        .map_err(|e| SnapshotError::from(VmError::from(e)))
        .and_then(|_| wait_migration(vm, Duration::from_secs(600)));
    let resumed = vm.cont();
    result?;
    resumed?;
    let size = std::fs::metadata(file).map_err(|e| CacheError::io("read the size of", file, e))?.len();
    Ok(size)
}

fn wait_migration(vm: &mut Vm, timeout: Duration) -> Result<(), SnapshotError> {
    let deadline = Instant::now() + timeout;
    loop {
        let info = vm.qmp().execute("query-migrate", None).map_err(VmError::from)?;
        match info.get("status").and_then(|s| s.as_str()).unwrap_or("none") {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                let why = info.get("error-desc").and_then(|s| s.as_str()).unwrap_or("no reason given");
                return Err(SnapshotError::Migration(why.to_string()));
            }
            _ if Instant::now() > deadline => {
                return Err(SnapshotError::Migration(format!("no completion in {} s", timeout.as_secs())))
            }
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}
