//! VM snapshots for recovery: device state as a migration stream plus the
//! guest RAM as a plain file, checksummed and written atomically.
//!
//! Guest RAM stays out of the stream (`x-ignore-shared` with file-backed,
//! shared RAM): saving is a pause, a few hundred KB of device state and a
//! file copy; restoring maps the RAM file copy-on-write, so pages load on
//! first touch and the file stays reusable for the next restore.
//!
//! This module knows a snapshot's files and manifest: their names, how a
//! new one is written and committed ([`NewSnapshot`]), how one is opened
//! and verified. It knows nothing of QEMU: taking a snapshot of a running
//! VM is [`crate::vm::save`], restoring one is [`crate::vm::Vm::restore`]
//! and its siblings, both above this module.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::agent::FileState;
use crate::cache::{CacheError, Manifest, PartialDir};

const STATE: &str = "state";
const RAM: &str = "ram";
/// Copies of disk overlays taken with a snapshot (see [`NewSnapshot::copy_disks`]).
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
    /// before the snapshot: the snapshot is valid only while they stay so,
    /// and not at all when one is missing (the recovery loop's safety
    /// monitor fails closed).
    #[serde(default)]
    pub watched: BTreeMap<String, FileState>,
}

/// Errors taking or opening snapshots.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The VM cannot be snapshotted.
    #[error("cannot snapshot: {0}")]
    Unsupported(String),
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

    /// Disk overlays saved with the snapshot (empty unless it was taken
    /// with disks, see [`crate::vm::save::take_with_disks`]), as paths
    /// inside the snapshot.
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

    /// Checks the RAM file against its manifest by full SHA-256, which
    /// [`Snapshot::open`] does only when the file's size or mtime moved
    /// (bit rot, or a write that kept the mtime, would pass it). Hashing
    /// hundreds of megabytes takes a fraction of a second, so it is done
    /// once per file and process, ahead of a restore (while a standby is
    /// prepared, off the downtime path): a later call costs a `stat` while
    /// the file's device, inode, size and mtime are those it had when it
    /// was hashed (and its ctime, which any write moves), and its manifest
    /// names the same hash.
    pub fn verify_ram(&self) -> Result<RamCheck, SnapshotError> {
        let (path, identity) = self.ram_identity()?;
        let mut verified = VERIFIED_RAM.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if verified.get(&path) == Some(&identity) {
            return Ok(RamCheck::Remembered);
        }
        let got = crate::cache::sha256_file(&path)?;
        if got != identity.sha256 {
            verified.remove(&path);
            return Err(CacheError::Corrupt {
                what: "snapshot".into(),
                dir: self.dir.clone(),
                detail: format!("{RAM} has SHA-256 {got}, the manifest says {}", identity.sha256),
                fix: "take a new snapshot".into(),
            }
            .into());
        }
        // The identity read before hashing: a write during the hash moves
        // the mtime, and the next call hashes again.
        verified.insert(path, identity);
        Ok(RamCheck::Hashed)
    }

    /// Whether [`Snapshot::verify_ram`] has passed for the RAM file as it
    /// is now (a restore then needs no hashing).
    pub fn ram_verified(&self) -> bool {
        let Ok((path, identity)) = self.ram_identity() else { return false };
        VERIFIED_RAM.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&path) == Some(&identity)
    }

    /// The RAM file and its identity now, with the hash its manifest names.
    fn ram_identity(&self) -> Result<(PathBuf, RamIdentity), SnapshotError> {
        let manifest =
            Manifest::<SnapshotMeta>::load(&self.dir)?.ok_or_else(|| SnapshotError::Missing(self.dir.clone()))?;
        let want = manifest.files.get(RAM).ok_or_else(|| SnapshotError::Missing(self.ram_file()))?;
        let path = self.ram_file();
        let identity = RamIdentity::of(&path, &want.sha256)?;
        Ok((path, identity))
    }

    /// Bytes the snapshot occupies on disk: the device state plus the RAM
    /// file's allocated blocks (its holes are pages that were zero).
    pub fn stored_bytes(&self) -> std::io::Result<u64> {
        Ok(allocated_bytes(&self.state_file())? + allocated_bytes(&self.ram_file())?)
    }
}

/// How [`Snapshot::verify_ram`] passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamCheck {
    /// The file was hashed by an earlier call and has not changed since.
    Remembered,
    /// The file was hashed now.
    Hashed,
}

/// RAM files whose full hash matched their manifest in this process.
static VERIFIED_RAM: std::sync::Mutex<BTreeMap<PathBuf, RamIdentity>> = std::sync::Mutex::new(BTreeMap::new());

/// What identifies a RAM file's content without reading it, and the hash
/// its manifest names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RamIdentity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    /// Moves on every write, also one that sets the mtime back.
    ctime_ns: i128,
    sha256: String,
}

impl RamIdentity {
    fn of(path: &Path, sha256: &str) -> Result<RamIdentity, CacheError> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(|e| CacheError::io("stat", path, e))?;
        Ok(RamIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            sha256: sha256.to_string(),
        })
    }
}

/// A snapshot being written: its files go into a partial directory
/// that becomes the snapshot at its final path only on
/// [`NewSnapshot::commit`]; dropped before that, it leaves nothing behind.
#[derive(Debug)]
pub struct NewSnapshot {
    partial: PartialDir,
    dir: PathBuf,
}

impl NewSnapshot {
    /// Starts writing the snapshot that will be at `dir` (replacing what is
    /// there once committed).
    pub fn begin(dir: &Path) -> Result<NewSnapshot, SnapshotError> {
        Ok(NewSnapshot { partial: PartialDir::begin(dir)?, dir: dir.to_path_buf() })
    }

    /// Where the device-state migration stream goes.
    pub fn state_file(&self) -> PathBuf {
        self.partial.path().join(STATE)
    }

    /// Where the guest RAM image goes.
    pub fn ram_file(&self) -> PathBuf {
        self.partial.path().join(RAM)
    }

    /// Copies disk overlays into the snapshot.
    pub fn copy_disks(&self, disks: &[PathBuf]) -> Result<(), SnapshotError> {
        if disks.is_empty() {
            return Ok(());
        }
        let dir = self.partial.path().join(DISKS);
        std::fs::create_dir_all(&dir).map_err(|e| CacheError::io("create", &dir, e))?;
        for disk in disks {
            let name = disk.file_name().ok_or_else(|| SnapshotError::Missing(disk.clone()))?;
            let target = dir.join(name);
            std::fs::copy(disk, &target).map_err(|e| CacheError::io("copy a disk overlay to", &target, e))?;
        }
        Ok(())
    }

    /// Writes the manifest over the state, the RAM and the `disks` copied
    /// with [`NewSnapshot::copy_disks`], makes the snapshot visible at its
    /// final path and opens it there.
    pub fn commit(self, meta: SnapshotMeta, disks: &[PathBuf]) -> Result<Snapshot, SnapshotError> {
        let disk_names: Vec<String> =
            disks.iter().filter_map(|d| d.file_name().map(|n| format!("{DISKS}/{}", n.to_string_lossy()))).collect();
        let mut files = vec![STATE, RAM];
        files.extend(disk_names.iter().map(String::as_str));
        Manifest::build(self.partial.path(), meta, &files)?.store(self.partial.path())?;
        self.partial.commit()?;
        Snapshot::open(&self.dir)
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn snapshot(dir: &Path) -> Snapshot {
        let new = NewSnapshot::begin(dir).unwrap();
        std::fs::write(new.state_file(), b"device state").unwrap();
        // Larger than the manifest's always-hash limit, so `open` checks
        // it by size and mtime only.
        std::fs::write(new.ram_file(), vec![7u8; 65 << 20]).unwrap();
        let meta = SnapshotMeta {
            profile: "tiny".into(),
            kernel: "k".into(),
            qemu_version: "7.2".into(),
            accel: "tcg".into(),
            memory_mib: 8,
            phase: "services-ready".into(),
            pause_s: 0.0,
            watched: BTreeMap::new(),
        };
        new.commit(meta, &[]).unwrap()
    }

    #[test]
    fn a_ram_file_changed_in_place_behind_its_mtime_is_refused_by_the_full_check() {
        let tmp = tempfile::tempdir().unwrap();
        let snap = snapshot(&tmp.path().join("snap"));
        assert!(!snap.ram_verified());
        assert_eq!(snap.verify_ram().unwrap(), RamCheck::Hashed);
        assert!(snap.ram_verified(), "a passed check is remembered");
        assert_eq!(snap.verify_ram().unwrap(), RamCheck::Remembered);

        // One byte flipped, the mtime set back: the size-and-mtime check
        // of `open` cannot see it, the full hash does.
        let ram = snap.ram_file();
        let mtime = std::fs::metadata(&ram).unwrap().modified().unwrap();
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new().write(true).open(&ram).unwrap();
            f.seek(SeekFrom::Start(4096)).unwrap();
            f.write_all(&[8]).unwrap();
            f.set_modified(mtime).unwrap();
        }
        let reopened = Snapshot::open(&snap.dir).unwrap();
        assert!(!reopened.ram_verified(), "the write moved the ctime");
        let err = reopened.verify_ram().unwrap_err().to_string();
        assert!(err.contains("ram has SHA-256") && err.contains("the manifest says"), "{err}");
        assert!(reopened.verify_ram().is_err(), "a failed check is not remembered as passed");
    }
}
