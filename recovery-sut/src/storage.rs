//! Where a restore reads its snapshot from, and how fast: emulated storage
//! devices (HDD, SATA SSD, NVMe) in front of a snapshot file, the host's
//! own disk, and the host page cache, cold or warm.
//!
//! An emulated device is a bandwidth limit on the reads that miss the host
//! page cache; the bytes behind it stay in host memory, so the limit and
//! not this machine's disk (about 420 MB/s here) sets the speed. A
//! streamed restore gets the limit from the thread that feeds QEMU the
//! stream ([`feed`]); a lazy restore, whose pages fault in from a mapped
//! file on demand, maps the snapshot through a loop device
//! ([`LoopDevice`]) and puts QEMU in a cgroup whose block-I/O read limit
//! applies to that device ([`ReadThrottle`]). Cold means the device must
//! be read (its cache dropped); warm means the host page cache holds the
//! data, so the device is never asked, whatever its speed.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A storage kind a snapshot is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Storage {
    /// The host page cache: no device read at all.
    PageCache,
    /// This machine's own disk, unthrottled (cold reads really hit it).
    Disk,
    /// A spinning disk, about 150 MB/s sequential.
    Hdd,
    /// A SATA SSD, about 500 MB/s.
    SataSsd,
    /// An NVMe SSD, about 3 GB/s.
    Nvme,
    /// A device of this many MB/s (10^6 bytes per second).
    Rate(u64),
}

impl Storage {
    /// The emulated read bandwidth in bytes/s; `None` for the page cache
    /// and the host's disk, which are not emulated.
    pub fn bytes_per_s(self) -> Option<u64> {
        let mb = match self {
            Storage::PageCache | Storage::Disk => return None,
            Storage::Hdd => 150,
            Storage::SataSsd => 500,
            Storage::Nvme => 3000,
            Storage::Rate(mb) => mb,
        };
        Some(mb * 1_000_000)
    }

    /// Whether a restore from it can be cold (the page cache cannot).
    pub fn can_be_cold(self) -> bool {
        self != Storage::PageCache
    }
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Storage::PageCache => f.write_str("page-cache"),
            Storage::Disk => f.write_str("disk"),
            Storage::Hdd => f.write_str("hdd"),
            Storage::SataSsd => f.write_str("sata-ssd"),
            Storage::Nvme => f.write_str("nvme"),
            Storage::Rate(mb) => write!(f, "{mb}"),
        }
    }
}

/// A storage name that is none of the known ones.
#[derive(Debug, thiserror::Error)]
#[error("unknown storage `{0}`: use page-cache, disk, hdd, sata-ssd, nvme, or a read speed in MB/s such as \"200\"")]
pub struct UnknownStorage(String);

impl FromStr for Storage {
    type Err = UnknownStorage;
    fn from_str(s: &str) -> Result<Storage, UnknownStorage> {
        Ok(match s {
            "page-cache" => Storage::PageCache,
            "disk" => Storage::Disk,
            "hdd" => Storage::Hdd,
            "sata-ssd" => Storage::SataSsd,
            "nvme" => Storage::Nvme,
            other => match other.parse::<u64>() {
                Ok(mb) if mb > 0 => Storage::Rate(mb),
                _ => return Err(UnknownStorage(s.to_string())),
            },
        })
    }
}

/// Errors setting up emulated storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file or device operation failed.
    #[error("cannot {action} {path}: {source}{hint}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
        /// How to fix it, when known.
        hint: &'static str,
    },
    /// No cgroup hierarchy with a block-I/O controller.
    #[error(
        "no cgroup block-I/O controller (neither /sys/fs/cgroup/blkio nor cgroup v2 with `io`): a lazy restore \
         from emulated storage needs one; measure the streamed path or storage = \"page-cache\"/\"disk\" instead"
    )]
    NoIoController,
}

fn io_err(action: &'static str, path: &Path, hint: &'static str) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::Io { action, path, source, hint }
}

const ROOT_HINT: &str = " (emulated storage needs root: loop devices and cgroups)";

/// Writes `file` into the unix socket QEMU listens on for an incoming
/// migration, at no more than `rate` bytes/s. Returns the bytes written.
pub fn feed(file: &Path, socket: &Path, rate: Option<u64>) -> std::io::Result<u64> {
    let mut src = File::open(file)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    // Small chunks keep a throttled stream smooth: QEMU sees a steady
    // device, not bursts and pauses.
    let mut buf = vec![0u8; 256 << 10];
    let started = Instant::now();
    let mut sent = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        sent += n as u64;
        if let Some(rate) = rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
    out.flush()?;
    Ok(sent)
}

/// Drops a file's (or block device's) pages from the host page cache, so
/// the next read goes to the device. Dirty pages are written first: only
/// clean pages can be dropped.
pub fn drop_cached(path: &Path) -> Result<(), StorageError> {
    let file = std::fs::OpenOptions::new().read(true).open(path).map_err(io_err("open", path, ""))?;
    let fd = file.as_raw_fd();
    if file.metadata().map(|m| m.is_file()).unwrap_or(false) {
        file.sync_all().map_err(io_err("sync", path, ""))?;
    } else {
        const BLKFLSBUF: libc::c_ulong = 0x1261;
        // SAFETY: BLKFLSBUF takes no argument; fd is an open block device.
        if unsafe { libc::ioctl(fd, BLKFLSBUF as _, 0) } != 0 {
            return Err(io_err("flush the buffers of", path, ROOT_HINT)(std::io::Error::last_os_error()));
        }
    }
    // SAFETY: fadvise on an open descriptor only affects caching.
    let rc = unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(io_err("drop from the page cache", path, "")(std::io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}

/// Reads a file (or block device) through the page cache, so that later
/// reads are served from memory.
pub fn warm(path: &Path) -> Result<(), StorageError> {
    let mut file = File::open(path).map_err(io_err("open", path, ""))?;
    let mut buf = vec![0u8; 1 << 20];
    while file.read(&mut buf).map_err(io_err("read", path, ""))? > 0 {}
    Ok(())
}

/// The fraction of a file's pages the host page cache holds (mincore).
pub fn resident_fraction(path: &Path) -> Result<f64, StorageError> {
    let file = File::open(path).map_err(io_err("open", path, ""))?;
    let len = device_or_file_len(&file).map_err(io_err("read the size of", path, ""))?;
    if len == 0 {
        return Ok(1.0);
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    let pages = (len as usize).div_ceil(page);
    // SAFETY: a read-only shared mapping of an open file of `len` bytes,
    // never dereferenced here, unmapped below.
    let map = unsafe {
        libc::mmap(std::ptr::null_mut(), len as usize, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0)
    };
    if map == libc::MAP_FAILED {
        return Err(io_err("map", path, "")(std::io::Error::last_os_error()));
    }
    let mut vec = vec![0u8; pages];
    // SAFETY: `vec` has one byte per page of the mapping.
    let rc = unsafe { libc::mincore(map, len as usize, vec.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(map, len as usize) };
    if rc != 0 {
        return Err(io_err("ask the residency of", path, "")(err));
    }
    Ok(vec.iter().filter(|&&b| b & 1 == 1).count() as f64 / pages as f64)
}

fn device_or_file_len(file: &File) -> std::io::Result<u64> {
    use std::io::Seek;
    let mut f = file;
    let len = f.seek(std::io::SeekFrom::End(0))?;
    f.seek(std::io::SeekFrom::Start(0))?;
    Ok(len)
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` of <linux/loop.h>.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// A loop device over a file. It detaches by itself once its last user
/// (this value, and QEMU mapping it) closes it, so even `kill -9` leaves
/// no device behind.
#[derive(Debug)]
pub struct LoopDevice {
    device: File,
    path: PathBuf,
    rdev: u64,
}

impl LoopDevice {
    /// Attaches `backing` (opened read-write: QEMU opens its RAM path so,
    /// though a private mapping never writes it).
    pub fn attach(backing: &Path) -> Result<LoopDevice, StorageError> {
        let file =
            std::fs::OpenOptions::new().read(true).write(true).open(backing).map_err(io_err("open", backing, ""))?;
        let control_path = Path::new("/dev/loop-control");
        let control = File::open(control_path).map_err(io_err("open", control_path, ROOT_HINT))?;
        // Another process may take the free device between the two calls.
        for _ in 0..20 {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument.
            let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
            if n < 0 {
                return Err(io_err("get a free loop device from", control_path, ROOT_HINT)(
                    std::io::Error::last_os_error(),
                ));
            }
            let path = PathBuf::from(format!("/dev/loop{n}"));
            let device = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err("open", &path, ROOT_HINT))?;
            // SAFETY: LOOP_SET_FD takes the backing file's descriptor.
            if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_FD as _, file.as_raw_fd()) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EBUSY) {
                    continue;
                }
                return Err(io_err("attach a loop device to", backing, ROOT_HINT)(e));
            }
            // SAFETY: an all-zero loop_info64 is valid.
            let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
            info.flags = LO_FLAGS_AUTOCLEAR;
            let name = backing.as_os_str().as_encoded_bytes();
            let len = name.len().min(63);
            info.file_name[..len].copy_from_slice(&name[..len]);
            // SAFETY: `info` is a valid loop_info64 that outlives the call.
            if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_STATUS64 as _, &info as *const LoopInfo64) } != 0 {
                let e = std::io::Error::last_os_error();
                // Without autoclear the device would stay: detach now.
                // SAFETY: LOOP_CLR_FD takes no argument.
                unsafe { libc::ioctl(device.as_raw_fd(), 0x4C01 as _, 0) };
                return Err(io_err("set autoclear on", &path, ROOT_HINT)(e));
            }
            use std::os::unix::fs::MetadataExt;
            let rdev = device.metadata().map_err(io_err("stat", &path, ""))?.rdev();
            return Ok(LoopDevice { device, path, rdev });
        }
        Err(io_err("attach a loop device to", backing, ROOT_HINT)(std::io::Error::from_raw_os_error(libc::EBUSY)))
    }

    /// Its device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `MAJOR:MINOR`, as cgroup files name devices.
    pub fn dev_id(&self) -> String {
        let major = ((self.rdev >> 8) & 0xfff) | ((self.rdev >> 32) & !0xfff);
        let minor = (self.rdev & 0xff) | ((self.rdev >> 12) & !0xff);
        format!("{major}:{minor}")
    }

    /// Keeps the descriptor (and so the device) alive; for symmetry with
    /// the other handles a restore holds.
    pub fn fd(&self) -> &File {
        &self.device
    }
}

/// A cgroup that limits its members' read bandwidth from one device. The
/// directory is removed on drop (its processes must be gone by then); a
/// directory left by a killed run is removed by the next one.
#[derive(Debug)]
pub struct ReadThrottle {
    dir: PathBuf,
    device: String,
    v1: bool,
}

const V1_ROOT: &str = "/sys/fs/cgroup/blkio";
const V2_ROOT: &str = "/sys/fs/cgroup";
const PREFIX: &str = "kfi-throttle-";

impl ReadThrottle {
    /// A new cgroup reading `device` (`MAJOR:MINOR`) at `bytes_per_s`.
    pub fn new(device: &str, bytes_per_s: u64) -> Result<ReadThrottle, StorageError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (root, v1) = if Path::new(V1_ROOT).join("blkio.throttle.read_bps_device").exists() {
            (Path::new(V1_ROOT), true)
        } else if std::fs::read_to_string(Path::new(V2_ROOT).join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "io"))
        {
            (Path::new(V2_ROOT), false)
        } else {
            return Err(StorageError::NoIoController);
        };
        sweep_stale(root);
        let dir = root.join(format!("{PREFIX}{}-{n}", std::process::id()));
        std::fs::create_dir(&dir).map_err(io_err("create the cgroup", &dir, ROOT_HINT))?;
        let throttle = ReadThrottle { dir, device: device.to_string(), v1 };
        let (file, line) = if v1 {
            ("blkio.throttle.read_bps_device", format!("{device} {bytes_per_s}"))
        } else {
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+io");
            ("io.max", format!("{device} rbps={bytes_per_s}"))
        };
        let path = throttle.dir.join(file);
        std::fs::write(&path, line).map_err(io_err("write", &path, ROOT_HINT))?;
        Ok(throttle)
    }

    /// Bytes the cgroup's members have read from the device (what got
    /// past the page cache).
    pub fn read_bytes(&self) -> Result<u64, StorageError> {
        let (file, parse): (&str, fn(&str) -> Option<u64>) = if self.v1 {
            ("blkio.throttle.io_service_bytes", |rest| rest.strip_prefix("Read ")?.trim().parse().ok())
        } else {
            ("io.stat", |rest| {
                rest.split_whitespace().find_map(|kv| kv.strip_prefix("rbytes=")).and_then(|v| v.parse().ok())
            })
        };
        let path = self.dir.join(file);
        let text = std::fs::read_to_string(&path).map_err(io_err("read", &path, ""))?;
        Ok(text.lines().filter_map(|l| l.strip_prefix(self.device.as_str()).and_then(|r| parse(r.trim_start()))).sum())
    }

    /// Moves a process (all its threads) into the cgroup.
    pub fn add(&self, pid: u32) -> Result<(), StorageError> {
        let path = self.dir.join("cgroup.procs");
        std::fs::write(&path, pid.to_string()).map_err(io_err("write", &path, ROOT_HINT))
    }
}

impl Drop for ReadThrottle {
    fn drop(&mut self) {
        // A killed process leaves the cgroup a moment after its exit.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!("cannot remove the cgroup {}", self.dir.display());
    }
}

/// Removes throttle cgroups of processes that no longer exist.
fn sweep_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else { continue };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn storage_names_round_trip_and_speeds_order() {
        for name in ["page-cache", "disk", "hdd", "sata-ssd", "nvme", "200"] {
            assert_eq!(name.parse::<Storage>().unwrap().to_string(), name);
        }
        assert!("ssd".parse::<Storage>().unwrap_err().to_string().contains("sata-ssd"));
        assert!("0".parse::<Storage>().is_err());
        let speed = |s: &str| s.parse::<Storage>().unwrap().bytes_per_s().unwrap();
        assert!(speed("hdd") < speed("sata-ssd") && speed("sata-ssd") < speed("nvme"));
        assert_eq!(Storage::PageCache.bytes_per_s(), None);
        assert!(!Storage::PageCache.can_be_cold());
    }

    #[test]
    fn feed_honours_the_rate_and_delivers_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stream");
        std::fs::write(&file, vec![7u8; 2_000_000]).unwrap();
        let socket = dir.path().join("sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got.len()
        });
        let started = Instant::now();
        // 2 MB at 10 MB/s: about 0.2 s.
        assert_eq!(feed(&file, &socket, Some(10_000_000)).unwrap(), 2_000_000);
        assert!(started.elapsed() >= Duration::from_millis(150), "{:?}", started.elapsed());
        assert_eq!(reader.join().unwrap(), 2_000_000);
    }

    #[test]
    fn residency_follows_warm_and_drop() {
        let dir = tempfile::tempdir_in(std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| ".".into())).unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, vec![1u8; 1 << 20]).unwrap();
        drop_cached(&file).unwrap();
        let cold = resident_fraction(&file).unwrap();
        warm(&file).unwrap();
        assert_eq!(resident_fraction(&file).unwrap(), 1.0);
        // tmpfs cannot drop a file's pages: only check where it can.
        assert!(cold <= 1.0);
    }
}
