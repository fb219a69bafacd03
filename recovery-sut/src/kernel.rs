//! Guest kernels: the current Debian `linux-image-amd64` (image and debug
//! packages, fetched with `apt-get download` into the cache) or a kernel the
//! user supplies.

pub mod lock;

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    /// apt knows no kernel package.
    #[error("apt knows no `linux-image-amd64` package: run `apt-get update` as root (a fresh Debian has empty package lists), or pass --kernel with a kernel of your own")]
    NoPackage,
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
    /// A Debian package, by name and version.
    Debian {
        /// e.g. `linux-image-6.1.0-56-amd64`.
        package: String,
        /// e.g. `6.1.192-2`.
        version: String,
    },
    /// Files given on the command line.
    User {
        /// SHA-256 of the bzImage, which names it in image recipes.
        sha256: String,
    },
}

/// How to choose the kernel.
#[derive(Debug, Clone, Default)]
pub enum KernelChoice {
    /// The current Debian `linux-image-amd64`.
    #[default]
    Debian,
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
}

impl Kernel {
    /// A one-line description: release and package or hash.
    pub fn describe(&self) -> String {
        match &self.origin {
            KernelOrigin::Debian { package, version } => format!("{} (Debian {package} {version})", self.release),
            KernelOrigin::User { sha256 } => format!("{} (user-supplied, sha256 {})", self.release, &sha256[..12]),
        }
    }

    /// A string that changes whenever the kernel does, for image recipes.
    pub fn identity(&self) -> String {
        match &self.origin {
            KernelOrigin::Debian { package, version } => format!("debian:{package}={version}"),
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
        KernelChoice::Debian => debian_kernel(cache, progress),
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

fn debian_kernel(cache: &Cache, progress: &dyn Fn(&str)) -> Result<Kernel, KernelError> {
    let (package, version) = current_debian_package()?;
    let release = package.trim_start_matches("linux-image-").to_string();
    let dir = cache.subdir("kernels")?.join(&release);
    let fix = "kfi kernel fetch --force";
    let _lock = crate::cache::BuildLock::acquire(&dir)?;
    let manifest = match Manifest::<KernelMeta>::load(&dir)? {
        Some(m) if m.meta.origin == (KernelOrigin::Debian { package: package.clone(), version: version.clone() }) => {
            m.verify(&dir, &format!("kernel {release}"), fix)?;
            m
        }
        _ => {
            progress(&format!("fetching {package} {version}"));
            fetch_debian(cache, &dir, &package, &version, &release)?
        }
    };
    let dbg = cache.root().join("kernels").join(format!("{release}-dbg"));
    let has_dbg = Manifest::<KernelMeta>::load(&dbg)?.is_some();
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
    })
}

/// Drops the cached kernel so the next use fetches it again.
pub fn forget_debian(cache: &Cache) -> Result<(), KernelError> {
    let (package, _) = current_debian_package()?;
    let release = package.trim_start_matches("linux-image-");
    for name in [release.to_string(), format!("{release}-dbg")] {
        let dir = cache.root().join("kernels").join(name);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| CacheError::io("remove", &dir, e))?;
        }
    }
    Ok(())
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

fn fetch_debian(
    cache: &Cache,
    dir: &Path,
    package: &str,
    version: &str,
    release: &str,
) -> Result<Manifest<KernelMeta>, KernelError> {
    let scratch =
        tempfile::tempdir_in(cache.root()).map_err(|e| CacheError::io("create scratch in", cache.root(), e))?;
    let deb = download(package, version, scratch.path())?;
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
    let meta = KernelMeta {
        release: release.to_string(),
        origin: KernelOrigin::Debian { package: package.into(), version: version.into() },
        module_order: order.into_iter().map(|(n, _)| n).collect(),
    };
    let names: Vec<&str> = files.iter().map(String::as_str).collect();
    let manifest = Manifest::build(out, meta, &names)?;
    manifest.store(out)?;
    partial.commit()?;
    Ok(manifest)
}

/// Fetches the `-dbg` package of a Debian kernel (850 MB) and keeps only
/// the debug `vmlinux` and the real `System.map`.
pub fn fetch_debug(cache: &Cache, kernel: &Kernel, progress: &dyn Fn(&str)) -> Result<Kernel, KernelError> {
    let KernelOrigin::Debian { package, version } = &kernel.origin else {
        return if kernel.vmlinux.is_some() {
            Ok(kernel.clone())
        } else {
            Err(KernelError::NoDebug(kernel.release.clone()))
        };
    };
    let dir = cache.subdir("kernels")?.join(format!("{}-dbg", kernel.release));
    let fix = "kfi kernel fetch --debug --force";
    let _lock = crate::cache::BuildLock::acquire(&dir)?;
    match Manifest::<KernelMeta>::load(&dir)? {
        Some(m) if m.meta.origin == kernel.origin => {
            m.verify(&dir, &format!("debug kernel {}", kernel.release), fix)?
        }
        _ => {
            progress(&format!("fetching {package}-dbg {version} (about 850 MB)"));
            let scratch =
                tempfile::tempdir_in(cache.root()).map_err(|e| CacheError::io("create scratch in", cache.root(), e))?;
            let deb = download(&format!("{package}-dbg"), version, scratch.path())?;
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
            let meta =
                KernelMeta { release: kernel.release.clone(), origin: kernel.origin.clone(), module_order: Vec::new() };
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

    #[test]
    fn an_elf_file_is_not_a_bzimage() {
        let file = tempfile::NamedTempFile::new().unwrap();
        fs::write(file.path(), b"\x7fELF\x02\x01\x01\0").unwrap();
        let err = bzimage_version(file.path()).unwrap_err().to_string();
        assert!(err.contains("not a Linux x86 boot image"), "{err}");
    }
}
