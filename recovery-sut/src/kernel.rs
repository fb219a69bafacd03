//! Guest kernels: a Debian kernel pinned in `kernel.lock` ([`lock`]: image
//! and `-dbg` packages by version and SHA-256, fetched with `apt-get
//! download` into the cache and checked against the lock before they are
//! unpacked) or a kernel the user supplies.

pub mod lock;

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use self::lock::{KernelLock, LockError, LockedDeb, LockedKernel, FROM_COMMAND, UPDATE_COMMAND};
use crate::cache::{Cache, CacheError, Manifest, PartialDir};
use crate::modinfo::{self, ModuleError};
use crate::tools::{self, ToolError};

/// The modules both guest profiles load: virtio devices, the agent's
/// serial port, ext4 for disks, pvpanic for GUEST_PANICKED, the watchdog and
/// the balloon. Dependencies are added automatically.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_console",
    "virtio_balloon",
    "ext4",
    "crc32c_generic",
    "pvpanic_mmio",
    "i6300esb",
];

/// Errors while resolving, fetching or reading a kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A host program failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A module could not be resolved.
    #[error(transparent)]
    Module(#[from] ModuleError),
    /// The kernel lock cannot be used.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// apt knows no kernel package.
    #[error("apt knows no `linux-image-amd64` package: run `apt-get update` as root (a fresh Debian has empty package lists), or pass --kernel with a kernel of your own")]
    NoPackage,
    /// A `.deb` whose SHA-256 is not the one the lock names.
    #[error("{file} ({apt_name}) has SHA-256 {got}, but the kernel lock {} names {want}: refusing to unpack it. If the cached file is damaged, remove it and fetch again; if Debian rebuilt the package, lock what apt has now with `{UPDATE_COMMAND}`, or put a copy with the locked hash in the cache with `{FROM_COMMAND}`", lock_file.display())]
    DebMismatch {
        /// The lock file.
        lock_file: PathBuf,
        /// `package=version`.
        apt_name: String,
        /// The file that was checked.
        file: PathBuf,
        /// The locked SHA-256.
        want: String,
        /// The file's SHA-256.
        got: String,
    },
    /// A locked package version that apt cannot download.
    #[error("apt knows no {apt_name}, which the kernel lock {} names (Debian drops old kernels from its archive; `apt-get update` if the package lists are stale): put a copy of the locked .deb in the cache with `{FROM_COMMAND}`, or lock the current Debian kernel with `{UPDATE_COMMAND}`", lock_file.display())]
    NotInArchive {
        /// The lock file.
        lock_file: PathBuf,
        /// `package=version`.
        apt_name: String,
    },
    /// A `--from` file that no lock entry names.
    #[error("{file} has SHA-256 {sha256}, which no kernel (image or -dbg package) in the kernel lock {} names; locked: {locked}", lock_file.display())]
    NotLocked {
        /// The file given.
        file: PathBuf,
        /// Its SHA-256.
        sha256: String,
        /// The lock file.
        lock_file: PathBuf,
        /// What the lock names, `package=version sha256` each.
        locked: String,
    },
    /// A user-supplied file is missing.
    #[error("{what} {path} does not exist")]
    MissingFile {
        /// Which option.
        what: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// A file is not a Linux bzImage.
    #[error("{path} is not a Linux x86 boot image (bzImage): {detail}; pass the vmlinuz file, not the ELF vmlinux")]
    NotBzImage {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The package did not contain an expected file.
    #[error("the kernel package has no {0}; is it a Debian linux-image package?")]
    PackageLayout(String),
    /// The debug kernel was asked for where none can be fetched.
    #[error("no debug vmlinux for kernel {0}: pass --vmlinux with the ELF image (with DWARF) that matches --kernel")]
    NoDebug(String),
}

/// Where a kernel came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum KernelOrigin {
    /// A Debian package, by name, version and the `.deb`'s hash.
    Debian {
        /// e.g. `linux-image-6.1.0-56-amd64`.
        package: String,
        /// e.g. `6.1.192-2`.
        version: String,
        /// SHA-256 of the `.deb` it was unpacked from (the lock's).
        #[serde(default)]
        deb_sha256: String,
    },
    /// Files given on the command line.
    User {
        /// SHA-256 of the bzImage, which names it in image recipes.
        sha256: String,
    },
}

impl KernelOrigin {
    fn locked(deb: &LockedDeb) -> Self {
        KernelOrigin::Debian {
            package: deb.package().into(),
            version: deb.version().into(),
            deb_sha256: deb.sha256().into(),
        }
    }
}

/// How to choose the kernel.
#[derive(Debug, Clone)]
pub enum KernelChoice {
    /// A Debian kernel the lock file names (see [`lock`]).
    Locked(LockedKernel),
    /// Files of the user's own.
    User {
        /// The bzImage (`vmlinuz`).
        kernel: PathBuf,
        /// The matching ELF `vmlinux` with DWARF, for the injector.
        vmlinux: Option<PathBuf>,
        /// A `lib/modules/<release>` tree; without it every driver must be built in.
        modules: Option<PathBuf>,
    },
}

impl KernelChoice {
    /// The locked kernel `release` names (the lock's default when `None`),
    /// from the lock file `$KFI_KERNEL_LOCK` or else `default_lock` (the
    /// caller's repository's `kernel.lock`).
    pub fn locked(default_lock: &Path, release: Option<&str>) -> Result<KernelChoice, LockError> {
        let lock = KernelLock::load(&lock::lock_path(default_lock))?;
        Ok(KernelChoice::Locked(lock.select(release)?))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KernelMeta {
    release: String,
    origin: KernelOrigin,
    module_order: Vec<String>,
}

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// Where it came from.
    pub origin: KernelOrigin,
    /// The compressed boot image (bzImage) as packaged.
    pub vmlinuz: PathBuf,
    /// What QEMU boots: the uncompressed ELF with a PVH entry point when the
    /// kernel has one (decompressing 8 MB of XZ under TCG costs about 3 s of
    /// every boot), else the bzImage.
    pub boot_image: PathBuf,
    /// Modules to `insmod`, in load order.
    pub modules: Vec<(String, PathBuf)>,
    /// The debug ELF image, when known.
    pub vmlinux: Option<PathBuf>,
    /// The full symbol map, when known.
    pub system_map: Option<PathBuf>,
    /// The lock entry it was fetched by (`None` for a user's kernel).
    pub locked: Option<LockedKernel>,
}

impl Kernel {
    /// A one-line description: release and package or hash.
    pub fn describe(&self) -> String {
        match &self.origin {
            KernelOrigin::Debian { package, version, .. } => format!("{} (Debian {package} {version})", self.release),
            KernelOrigin::User { sha256 } => format!("{} (user-supplied, sha256 {})", self.release, &sha256[..12]),
        }
    }

    /// A string that changes whenever the kernel does, for image recipes.
    pub fn identity(&self) -> String {
        match &self.origin {
            KernelOrigin::Debian { package, version, .. } => format!("debian:{package}={version}"),
            KernelOrigin::User { sha256 } => format!("user:{sha256}"),
        }
    }
}

/// The uncompressed kernel ELF kept beside the bzImage for PVH boots.
const PVH_ELF: &str = "vmlinux-pvh";

/// ELF note type of the PVH 32-bit entry point (`XEN_ELFNOTE_PHYS32_ENTRY`).
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Unpacks the ELF kernel from an XZ-compressed bzImage payload, if it has
/// a PVH entry note QEMU can boot directly. `None` for other compressions
/// or kernels without PVH.
pub fn pvh_elf(bzimage: &[u8]) -> Result<Option<Vec<u8>>, KernelError> {
    use std::io::Read;
    let (Some(&sects), Some(off), Some(len)) =
        (bzimage.get(0x1f1), bzimage.get(0x248..0x24c), bzimage.get(0x24c..0x250))
    else {
        return Ok(None);
    };
    let sects = if sects == 0 { 4 } else { sects as usize };
    let start = (sects + 1) * 512 + u32::from_le_bytes([off[0], off[1], off[2], off[3]]) as usize;
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let Some(payload) = bzimage.get(start..start.saturating_add(len)) else { return Ok(None) };
    if !payload.starts_with(b"\xfd7zXZ\0") {
        return Ok(None);
    }
    let mut elf = Vec::new();
    if liblzma::read::XzDecoder::new(payload).read_to_end(&mut elf).is_err() {
        return Ok(None);
    }
    let Ok(parsed) = goblin::elf::Elf::parse(&elf) else { return Ok(None) };
    let has_pvh = parsed
        .iter_note_headers(&elf)
        .into_iter()
        .flatten()
        .flatten()
        .any(|n| n.name == "Xen" && n.n_type == XEN_ELFNOTE_PHYS32_ENTRY);
    Ok(has_pvh.then_some(elf))
}

/// ELF note type of the GNU build id.
const NT_GNU_BUILD_ID: u32 = 3;

/// The kernel's GNU build id (hex): from the uncompressed boot image when
/// it is an ELF, else from the debug `vmlinux`; `None` when neither has one.
pub fn build_id(kernel: &Kernel) -> Option<String> {
    [Some(&kernel.boot_image), kernel.vmlinux.as_ref()].into_iter().flatten().find_map(|path| {
        let bytes = fs::read(path).ok()?;
        let elf = goblin::elf::Elf::parse(&bytes).ok()?;
        let note = elf
            .iter_note_headers(&bytes)
            .into_iter()
            .flatten()
            .flatten()
            .find(|n| n.name == "GNU" && n.n_type == NT_GNU_BUILD_ID)?;
        Some(note.desc.iter().map(|b| format!("{b:02x}")).collect())
    })
}

/// Reads the version string a bzImage carries in its setup header.
pub fn bzimage_version(path: &Path) -> Result<String, KernelError> {
    let bad = |detail: &str| KernelError::NotBzImage { path: path.into(), detail: detail.into() };
    let bytes = fs::read(path).map_err(|e| CacheError::io("read", path, e))?;
    if bytes.get(0x202..0x206) != Some(b"HdrS") {
        return Err(bad("no `HdrS` setup-header magic at 0x202"));
    }
    let ptr = bytes.get(0x20e..0x210).ok_or_else(|| bad("file too short"))?;
    let ptr = u16::from_le_bytes([ptr[0], ptr[1]]) as usize + 0x200;
    let text = bytes.get(ptr..).ok_or_else(|| bad("version pointer lies outside the file"))?;
    let end = text.iter().position(|b| *b == 0).unwrap_or(text.len()).min(256);
    let version = String::from_utf8_lossy(&text[..end]);
    version.split_whitespace().next().map(str::to_string).ok_or_else(|| bad("empty version string"))
}

/// Resolves (and fetches, if needed) the kernel for a choice.
pub fn resolve(cache: &Cache, choice: &KernelChoice, progress: &dyn Fn(&str)) -> Result<Kernel, KernelError> {
    match choice {
        KernelChoice::Locked(locked) => locked_kernel(cache, locked, progress),
        KernelChoice::User { kernel, vmlinux, modules } => user_kernel(kernel, vmlinux.as_deref(), modules.as_deref()),
    }
}

fn user_kernel(kernel: &Path, vmlinux: Option<&Path>, modules: Option<&Path>) -> Result<Kernel, KernelError> {
    for (what, path) in [("--kernel", Some(kernel)), ("--vmlinux", vmlinux), ("--modules", modules)] {
        if let Some(path) = path {
            if !path.exists() {
                return Err(KernelError::MissingFile { what, path: path.into() });
            }
        }
    }
    let release = bzimage_version(kernel)?;
    let module_list = match modules {
        None => Vec::new(),
        Some(tree) => {
            let builtin = fs::read_to_string(tree.join("modules.builtin")).unwrap_or_default();
            let builtin: Vec<String> = builtin
                .lines()
                .filter_map(|l| Path::new(l).file_stem().and_then(|s| s.to_str()).map(modinfo::canonical_name))
                .collect();
            let wanted: Vec<String> =
                GUEST_MODULES.iter().map(|m| m.to_string()).filter(|m| !builtin.contains(m)).collect();
            modinfo::resolve_in_tree(tree, &wanted)?
        }
    };
    Ok(Kernel {
        release,
        origin: KernelOrigin::User { sha256: crate::cache::sha256_file(kernel)? },
        vmlinuz: kernel.to_path_buf(),
        boot_image: kernel.to_path_buf(),
        modules: module_list,
        vmlinux: vmlinux.map(Path::to_path_buf),
        system_map: None,
        locked: None,
    })
}

/// The package name and version `linux-image-amd64` points at now.
pub fn current_debian_package() -> Result<(String, String), KernelError> {
    let deps = tools::APT_CACHE.run(["depends", "linux-image-amd64"], None)?;
    let package = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .ok_or(KernelError::NoPackage)?;
    let show = tools::APT_CACHE.run(["show", "--no-all-versions", &package], None)?;
    let version =
        show.lines().find_map(|l| l.strip_prefix("Version: ")).map(str::to_string).ok_or(KernelError::NoPackage)?;
    Ok((package, version))
}

/// What apt's package lists say of one package version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptRecord {
    /// The archive path (`Filename:`).
    pub filename: String,
    /// The archive's SHA-256 of the `.deb` (`SHA256:`), when listed.
    pub sha256: Option<String>,
}

/// What apt knows of `package=version`; `None` where apt does not know
/// that version.
pub fn apt_record(package: &str, version: &str) -> Result<Option<AptRecord>, KernelError> {
    match tools::APT_CACHE.run(["show", "--no-all-versions", &format!("{package}={version}")], None) {
        // An unknown package fails; a known package's unknown version prints nothing.
        Err(ToolError::Failed { .. }) => Ok(None),
        Err(e) => Err(e.into()),
        Ok(show) => {
            let field = |name: &str| show.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string());
            Ok(field("Filename: ").map(|filename| AptRecord { filename, sha256: field("SHA256: ") }))
        }
    }
}

fn locked_kernel(cache: &Cache, locked: &LockedKernel, progress: &dyn Fn(&str)) -> Result<Kernel, KernelError> {
    let release = locked.release();
    let origin = KernelOrigin::locked(locked.image());
    let dir = cache.subdir("kernels")?.join(release);
    let fix = "kfi kernel fetch --force";
    let _lock = crate::cache::BuildLock::acquire(&dir)?;
    let manifest = match Manifest::<KernelMeta>::load(&dir)? {
        Some(m) if m.meta.origin == origin => {
            m.verify(&dir, &format!("kernel {release}"), fix)?;
            m
        }
        _ => {
            let deb = locked_deb(cache, locked, locked.image(), progress)?;
            progress(&format!("unpacking {}", locked.image().apt_name()));
            unpack_image(cache, &dir, &deb, origin, release)?
        }
    };
    let dbg = cache.root().join("kernels").join(format!("{release}-dbg"));
    let has_dbg =
        Manifest::<KernelMeta>::load(&dbg)?.is_some_and(|m| m.meta.origin == KernelOrigin::locked(locked.debug()));
    let pvh = dir.join(PVH_ELF);
    Ok(Kernel {
        release: manifest.meta.release.clone(),
        origin: manifest.meta.origin.clone(),
        boot_image: if manifest.files.contains_key(PVH_ELF) { pvh } else { dir.join("vmlinuz") },
        vmlinuz: dir.join("vmlinuz"),
        modules: manifest
            .meta
            .module_order
            .iter()
            .map(|m| (m.clone(), dir.join("modules").join(format!("{m}.ko"))))
            .collect(),
        vmlinux: has_dbg.then(|| dbg.join("vmlinux")),
        system_map: has_dbg.then(|| dbg.join("System.map")),
        locked: Some(locked.clone()),
    })
}

/// Drops the unpacked kernel (and its debug files) so the next use
/// unpacks it again; the `.deb` files stay in the deb cache (they are
/// checked against the lock on every use).
pub fn forget(cache: &Cache, locked: &LockedKernel) -> Result<(), KernelError> {
    let release = locked.release();
    for name in [release.to_string(), format!("{release}-dbg")] {
        let dir = cache.root().join("kernels").join(name);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| CacheError::io("remove", &dir, e))?;
        }
    }
    Ok(())
}

/// The deb cache, `$KFI_CACHE/debs`.
fn deb_dir(cache: &Cache) -> Result<PathBuf, KernelError> {
    Ok(cache.subdir("debs")?)
}

/// Checks a `.deb` against its lock entry.
fn check_deb(locked: &LockedKernel, deb: &LockedDeb, file: &Path) -> Result<(), KernelError> {
    let got = crate::cache::sha256_file(file)?;
    if got == deb.sha256() {
        return Ok(());
    }
    Err(KernelError::DebMismatch {
        lock_file: locked.lock_file().into(),
        apt_name: deb.apt_name(),
        file: file.into(),
        want: deb.sha256().into(),
        got,
    })
}

/// The locked `.deb`, from the deb cache or downloaded (exactly
/// `package=version`) into it; either way its SHA-256 is the lock's.
pub fn locked_deb(
    cache: &Cache,
    locked: &LockedKernel,
    deb: &LockedDeb,
    progress: &dyn Fn(&str),
) -> Result<PathBuf, KernelError> {
    let debs = deb_dir(cache)?;
    let path = debs.join(deb.cache_name());
    if path.exists() {
        check_deb(locked, deb, &path)?;
        return Ok(path);
    }
    if apt_record(deb.package(), deb.version())?.is_none() {
        return Err(KernelError::NotInArchive { lock_file: locked.lock_file().into(), apt_name: deb.apt_name() });
    }
    progress(&format!("downloading {}", deb.apt_name()));
    let scratch = tempfile::tempdir_in(&debs).map_err(|e| CacheError::io("create scratch in", &debs, e))?;
    let file = download(deb.package(), deb.version(), scratch.path())?;
    check_deb(locked, deb, &file)?;
    fs::rename(&file, &path).map_err(|e| CacheError::io("move", &file, e))?;
    Ok(path)
}

/// Puts a local `.deb` into the deb cache if its SHA-256 is one the lock
/// names (image or `-dbg`); returns the kernel and package it is.
pub fn import_deb(cache: &Cache, lock: &KernelLock, file: &Path) -> Result<(LockedKernel, LockedDeb), KernelError> {
    if !file.exists() {
        return Err(KernelError::MissingFile { what: "--from", path: file.into() });
    }
    let sha256 = crate::cache::sha256_file(file)?;
    let Some((kernel, deb)) = lock.find_deb(&sha256) else {
        let locked = lock
            .kernels()
            .iter()
            .flat_map(|k| [k.image().clone(), k.debug().clone()])
            .map(|d| format!("{} {}", d.apt_name(), d.sha256()))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(KernelError::NotLocked { file: file.into(), sha256, lock_file: lock.path().into(), locked });
    };
    let debs = deb_dir(cache)?;
    let path = debs.join(deb.cache_name());
    let tmp = tempfile::NamedTempFile::new_in(&debs).map_err(|e| CacheError::io("create scratch in", &debs, e))?;
    fs::copy(file, tmp.path()).map_err(|e| CacheError::io("copy", file, e))?;
    // The copy is what the cache keeps: check it, not the original.
    check_deb(&kernel, &deb, tmp.path())?;
    tmp.persist(&path).map_err(|e| CacheError::io("move into place", &path, e.error))?;
    Ok((kernel, deb))
}

/// Locks what `linux-image-amd64` points at now: downloads its image and
/// `-dbg` packages (kept in the deb cache), hashes them and writes them
/// to the lock at `lock_path` as a new default entry (creating the file if
/// there is none).
pub fn lock_current(cache: &Cache, lock_path: &Path, progress: &dyn Fn(&str)) -> Result<KernelLock, KernelError> {
    let (package, version) = current_debian_package()?;
    lock_package(cache, lock_path, &package, &version, LockAs::Default, progress)
}

/// Adds kernel `release` at the version Debian's archive carries now to
/// the lock at `lock_path`, leaving the default as it is: a second kernel
/// to update to. The image is downloaded and hashed; the 850 MB `-dbg`
/// package is locked by the SHA-256 the archive's signed package list
/// gives it (and checked against it whenever it is fetched).
pub fn lock_release(
    cache: &Cache,
    lock_path: &Path,
    release: &str,
    progress: &dyn Fn(&str),
) -> Result<KernelLock, KernelError> {
    // Adding to a lock needs one: its absence is the read error that says so.
    KernelLock::load(lock_path)?;
    let package = format!("linux-image-{release}");
    let show = tools::APT_CACHE
        .run(["show", "--no-all-versions", &package], None)
        .map_err(|_| KernelError::NotInArchive { lock_file: lock_path.into(), apt_name: package.clone() })?;
    let version = show
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .map(str::to_string)
        .ok_or_else(|| KernelError::NotInArchive { lock_file: lock_path.into(), apt_name: package.clone() })?;
    lock_package(cache, lock_path, &package, &version, LockAs::Additional, progress)
}

/// Whether a newly locked kernel becomes the lock's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LockAs {
    /// The new default: both packages downloaded and hashed.
    Default,
    /// Another locked kernel: the `-dbg` package locked by the archive's hash.
    Additional,
}

fn lock_package(
    cache: &Cache,
    lock_path: &Path,
    package: &str,
    version: &str,
    lock_as: LockAs,
    progress: &dyn Fn(&str),
) -> Result<KernelLock, KernelError> {
    let existing = if lock_path.exists() { Some(KernelLock::load(lock_path)?) } else { None };
    let release = package.trim_start_matches("linux-image-").to_string();
    let debs = deb_dir(cache)?;
    let fetch = |package: String, download_it: bool| -> Result<LockedDeb, KernelError> {
        let apt_name = format!("{package}={version}");
        let record = apt_record(&package, version)?
            .ok_or_else(|| KernelError::NotInArchive { lock_file: lock_path.into(), apt_name: apt_name.clone() })?;
        let cached = debs.join(record.filename.rsplit('/').next().unwrap_or(&record.filename));
        // A cached copy counts only if it is the file the archive lists.
        if cached.exists() && record.sha256.as_deref() == Some(crate::cache::sha256_file(&cached)?.as_str()) {
            let sha256 = record.sha256.unwrap_or_default();
            return Ok(LockedDeb::new(&package, version, &record.filename, &sha256));
        }
        if let (false, Some(sha256)) = (download_it, &record.sha256) {
            return Ok(LockedDeb::new(&package, version, &record.filename, sha256));
        }
        progress(&format!("downloading {apt_name}"));
        let scratch = tempfile::tempdir_in(&debs).map_err(|e| CacheError::io("create scratch in", &debs, e))?;
        let file = download(&package, version, scratch.path())?;
        let deb = LockedDeb::new(&package, version, &record.filename, &crate::cache::sha256_file(&file)?);
        fs::rename(&file, debs.join(deb.cache_name())).map_err(|e| CacheError::io("move", &file, e))?;
        Ok(deb)
    };
    let image = fetch(package.to_string(), true)?;
    let debug = fetch(format!("{package}-dbg"), lock_as == LockAs::Default)?;
    let kernel = LockedKernel::new(lock_path, &release, image, debug)?;
    let lock = match (existing, lock_as) {
        (Some(mut lock), LockAs::Default) => {
            lock.set_default(kernel);
            lock
        }
        (Some(mut lock), LockAs::Additional) => {
            lock.add(kernel);
            lock
        }
        (None, _) => KernelLock::new(kernel),
    };
    lock.store()?;
    Ok(lock)
}

fn download(package: &str, version: &str, into: &Path) -> Result<PathBuf, KernelError> {
    // The sandbox user cannot write into a root-owned temporary directory.
    tools::APT_GET
        .run(["-q", "-o", "APT::Sandbox::User=root", "download", &format!("{package}={version}")], Some(into))?;
    fs::read_dir(into)
        .map_err(|e| CacheError::io("list", into, e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| KernelError::PackageLayout(format!("downloaded .deb for {package}")))
}

fn unpack_image(
    cache: &Cache,
    dir: &Path,
    deb: &Path,
    origin: KernelOrigin,
    release: &str,
) -> Result<Manifest<KernelMeta>, KernelError> {
    let scratch =
        tempfile::tempdir_in(cache.root()).map_err(|e| CacheError::io("create scratch in", cache.root(), e))?;
    let tree = scratch.path().join("x");
    tools::DPKG_DEB.run(["-x".as_ref(), deb.as_os_str(), tree.as_os_str()], None)?;

    let partial = PartialDir::begin(dir)?;
    let out = partial.path();
    let copy = |from: PathBuf, to: PathBuf| -> Result<(), KernelError> {
        if !from.exists() {
            return Err(KernelError::PackageLayout(from.strip_prefix(&tree).unwrap_or(&from).display().to_string()));
        }
        fs::copy(&from, &to).map_err(|e| CacheError::io("copy", &from, e))?;
        Ok(())
    };
    copy(tree.join(format!("boot/vmlinuz-{release}")), out.join("vmlinuz"))?;
    copy(tree.join(format!("boot/config-{release}")), out.join("config"))?;
    let wanted: Vec<String> = GUEST_MODULES.iter().map(|m| m.to_string()).collect();
    let order = modinfo::resolve_in_tree(&tree.join(format!("lib/modules/{release}")), &wanted)?;
    fs::create_dir_all(out.join("modules")).map_err(|e| CacheError::io("create", out, e))?;
    let mut files = vec!["vmlinuz".to_string(), "config".to_string()];
    let bzimage = fs::read(out.join("vmlinuz")).map_err(|e| CacheError::io("read", out.join("vmlinuz"), e))?;
    if let Some(elf) = pvh_elf(&bzimage)? {
        fs::write(out.join(PVH_ELF), elf).map_err(|e| CacheError::io("write", out.join(PVH_ELF), e))?;
        files.push(PVH_ELF.to_string());
    }
    for (name, path) in &order {
        copy(path.clone(), out.join("modules").join(format!("{name}.ko")))?;
        files.push(format!("modules/{name}.ko"));
    }
    let meta =
        KernelMeta { release: release.to_string(), origin, module_order: order.into_iter().map(|(n, _)| n).collect() };
    let names: Vec<&str> = files.iter().map(String::as_str).collect();
    let manifest = Manifest::build(out, meta, &names)?;
    manifest.store(out)?;
    partial.commit()?;
    Ok(manifest)
}

/// Fetches the `-dbg` package of a locked kernel (850 MB, through the same
/// deb cache and lock check as the image) and keeps only the debug
/// `vmlinux` and the real `System.map`.
pub fn fetch_debug(cache: &Cache, kernel: &Kernel, progress: &dyn Fn(&str)) -> Result<Kernel, KernelError> {
    let Some(locked) = &kernel.locked else {
        return if kernel.vmlinux.is_some() {
            Ok(kernel.clone())
        } else {
            Err(KernelError::NoDebug(kernel.release.clone()))
        };
    };
    let origin = KernelOrigin::locked(locked.debug());
    let dir = cache.subdir("kernels")?.join(format!("{}-dbg", kernel.release));
    let fix = "kfi kernel fetch --debug --force";
    let _lock = crate::cache::BuildLock::acquire(&dir)?;
    match Manifest::<KernelMeta>::load(&dir)? {
        Some(m) if m.meta.origin == origin => m.verify(&dir, &format!("debug kernel {}", kernel.release), fix)?,
        _ => {
            progress(&format!("fetching {} (about 850 MB)", locked.debug().apt_name()));
            let deb = locked_deb(cache, locked, locked.debug(), progress)?;
            progress(&format!("unpacking the debug vmlinux of {}", locked.debug().apt_name()));
            let scratch =
                tempfile::tempdir_in(cache.root()).map_err(|e| CacheError::io("create scratch in", cache.root(), e))?;
            let tar = scratch.path().join("fs.tar");
            // Only boot/ is wanted; unpacking the module debug info would
            // cost gigabytes, so go through tar with a member filter.
            let tar_out = fs::File::create(&tar).map_err(|e| CacheError::io("create", &tar, e))?;
            let dpkg = tools::DPKG_DEB.find()?;
            duct::cmd(dpkg, [std::ffi::OsStr::new("--fsys-tarfile"), deb.as_os_str()])
                .stdout_file(tar_out)
                .run()
                .map_err(|source| ToolError::Spawn { command: "dpkg-deb --fsys-tarfile".into(), source })?;
            let x = scratch.path().join("x");
            fs::create_dir_all(&x).map_err(|e| CacheError::io("create", &x, e))?;
            tools::TAR.run(
                [
                    "-x".as_ref(),
                    "-f".as_ref(),
                    tar.as_os_str(),
                    "-C".as_ref(),
                    x.as_os_str(),
                    "--wildcards".as_ref(),
                    "./usr/lib/debug/boot/*".as_ref(),
                ],
                None,
            )?;
            let partial = PartialDir::begin(&dir)?;
            for (from, to) in [("vmlinux", "vmlinux"), ("System.map", "System.map")] {
                let src = x.join(format!("usr/lib/debug/boot/{from}-{}", kernel.release));
                if !src.exists() {
                    return Err(KernelError::PackageLayout(format!("usr/lib/debug/boot/{from}-{}", kernel.release)));
                }
                fs::rename(&src, partial.path().join(to)).map_err(|e| CacheError::io("move", &src, e))?;
            }
            let meta = KernelMeta { release: kernel.release.clone(), origin, module_order: Vec::new() };
            Manifest::build(partial.path(), meta, &["vmlinux", "System.map"])?.store(partial.path())?;
            partial.commit()?;
        }
    }
    Ok(Kernel { vmlinux: Some(dir.join("vmlinux")), system_map: Some(dir.join("System.map")), ..kernel.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bzimage_version_is_read_from_setup_header() {
        let mut image = vec![0u8; 0x1000];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x20e..0x210].copy_from_slice(&0x0300u16.to_le_bytes());
        let version = b"6.1.0-56-amd64 (debian@x) #1\0";
        image[0x500..0x500 + version.len()].copy_from_slice(version);
        let file = tempfile::NamedTempFile::new().unwrap();
        fs::write(file.path(), &image).unwrap();
        assert_eq!(bzimage_version(file.path()).unwrap(), "6.1.0-56-amd64");
    }

    const RELEASE: &str = "6.1.0-56-amd64";

    /// A lock naming `version` of the 6.1.0-56 packages with these hashes.
    fn lock(dir: &Path, version: &str, img: &str, dbg: &str) -> KernelLock {
        KernelLock::parse(&dir.join("kernel.lock"), &lock::sample(RELEASE, version, img, dbg)).unwrap()
    }

    fn sha(bytes: &[u8]) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(bytes))
    }

    fn refusal_names_the_lock_and_the_fixes(e: &str, lock_file: &Path) {
        assert!(e.contains(&lock_file.display().to_string()), "{e}");
        assert!(e.contains("kfi kernel lock --update") && e.contains("kfi kernel fetch --from FILE"), "{e}");
    }

    #[test]
    fn a_cached_deb_with_the_wrong_hash_is_refused_before_unpacking() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::at(tmp.path().join("cache")).unwrap();
        let locked = lock(tmp.path(), "6.1.192-2", &"1".repeat(64), &"2".repeat(64)).select(None).unwrap();
        let debs = cache.subdir("debs").unwrap();
        fs::write(debs.join(locked.image().cache_name()), b"not the locked package").unwrap();
        let e = resolve(&cache, &KernelChoice::Locked(locked.clone()), &|_| {}).unwrap_err();
        assert!(matches!(e, KernelError::DebMismatch { .. }), "{e:?}");
        let e = e.to_string();
        refusal_names_the_lock_and_the_fixes(&e, locked.lock_file());
        assert!(e.contains(&sha(b"not the locked package")) && e.contains(&"1".repeat(64)), "{e}");
        assert!(!cache.root().join("kernels").join(RELEASE).exists(), "nothing was unpacked");
    }

    #[test]
    fn a_cached_deb_with_the_locked_hash_is_used_without_apt() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::at(tmp.path().join("cache")).unwrap();
        // apt knows no version `0.0-0`: finding the file proves apt was not asked.
        let locked = lock(tmp.path(), "0.0-0", &sha(b"image"), &sha(b"dbg")).select(None).unwrap();
        let path = cache.subdir("debs").unwrap().join(locked.debug().cache_name());
        fs::write(&path, b"dbg").unwrap();
        assert_eq!(locked_deb(&cache, &locked, locked.debug(), &|_| {}).unwrap(), path);
    }

    #[test]
    fn a_version_apt_does_not_know_is_refused() {
        if tools::APT_CACHE.find().is_err() {
            eprintln!("skipped: no apt-cache on this host");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::at(tmp.path().join("cache")).unwrap();
        let locked = lock(tmp.path(), "0.0-0", &sha(b"image"), &sha(b"dbg")).select(None).unwrap();
        let e = resolve(&cache, &KernelChoice::Locked(locked.clone()), &|_| {}).unwrap_err();
        assert!(matches!(e, KernelError::NotInArchive { .. }), "{e:?}");
        let e = e.to_string();
        refusal_names_the_lock_and_the_fixes(&e, locked.lock_file());
        assert!(e.contains("linux-image-6.1.0-56-amd64=0.0-0"), "{e}");
    }

    #[test]
    fn from_accepts_only_a_file_the_lock_names() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::at(tmp.path().join("cache")).unwrap();
        let lock = lock(tmp.path(), "0.0-0", &sha(b"image"), &sha(b"dbg"));
        let other = tmp.path().join("other.deb");
        fs::write(&other, b"something else").unwrap();
        let e = import_deb(&cache, &lock, &other).unwrap_err();
        assert!(matches!(e, KernelError::NotLocked { .. }), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("other.deb") && e.contains(&sha(b"something else")), "{e}");
        assert!(e.contains(&lock.path().display().to_string()) && e.contains("=0.0-0"), "{e}");
        let debs = cache.root().join("debs");
        assert!(!debs.exists() || fs::read_dir(&debs).unwrap().count() == 0, "nothing was cached");

        let dbg = tmp.path().join("dbg.deb");
        fs::write(&dbg, b"dbg").unwrap();
        let (kernel, deb) = import_deb(&cache, &lock, &dbg).unwrap();
        assert_eq!((kernel.release(), deb.package()), (RELEASE, "linux-image-6.1.0-56-amd64-dbg"));
        assert_eq!(fs::read(cache.root().join("debs").join(deb.cache_name())).unwrap(), b"dbg");
    }

    #[test]
    fn an_unpacked_kernel_of_another_lock_entry_is_not_served() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::at(tmp.path().join("cache")).unwrap();
        let dir = cache.subdir("kernels").unwrap().join(RELEASE);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("vmlinuz"), b"old").unwrap();
        let old = KernelOrigin::Debian {
            package: format!("linux-image-{RELEASE}"),
            version: "6.1.192-1".into(),
            deb_sha256: sha(b"old"),
        };
        let meta = KernelMeta { release: RELEASE.into(), origin: old, module_order: Vec::new() };
        Manifest::build(&dir, meta, &["vmlinuz"]).unwrap().store(&dir).unwrap();
        // The lock names another version: the stale directory is not used,
        // the (wrong) cached .deb is checked instead and refused.
        let locked = lock(tmp.path(), "6.1.192-2", &sha(b"image"), &sha(b"dbg")).select(None).unwrap();
        fs::write(cache.subdir("debs").unwrap().join(locked.image().cache_name()), b"stale").unwrap();
        let e = resolve(&cache, &KernelChoice::Locked(locked), &|_| {}).unwrap_err();
        assert!(matches!(e, KernelError::DebMismatch { .. }), "{e:?}");
    }

    #[test]
    fn an_elf_file_is_not_a_bzimage() {
        let file = tempfile::NamedTempFile::new().unwrap();
        fs::write(file.path(), b"\x7fELF\x02\x01\x01\0").unwrap();
        let err = bzimage_version(file.path()).unwrap_err().to_string();
        assert!(err.contains("not a Linux x86 boot image"), "{err}");
    }
}
