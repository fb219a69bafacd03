//! The `tiny` profile: one uncompressed initramfs holding static busybox,
//! the guest kernel's driver modules, the agent and the document set; and
//! its kexec-reboot variant, which adds what the init needs to load a crash
//! kernel (the kernel, the plain initramfs as the crash kernel's, and
//! `kexec` with its libraries). An image built to be updated to a second
//! kernel carries that kernel's modules too, and boots an initramfs that
//! holds what a kexec into it needs (see [`build`]).

use std::path::Path;

use super::initramfs::Initramfs;
use super::{kexec, BuildSpec, GuestError, Profile, AGENT_SH};
use crate::cache::{Cache, CacheError};
use crate::kernel::Kernel;
use crate::tools;

/// PID 1 of the tiny guest.
const INIT_SH: &str = include_str!("../../guest-files/tiny-init.sh");

/// What, besides the shared inputs, decides the tiny image's content.
pub(crate) const RECIPE: &str = INIT_SH;

/// Size of the tiny guest's data disk.
const DATA_DISK_MIB: u64 = 64;
/// The least guest RAM the services run in.
pub(crate) const MIN_MEMORY_MIB: u32 = 128;

/// Checks that a binary is statically linked (no ELF interpreter): the
/// initramfs has no shared libraries.
pub(crate) fn require_static(profile: Profile, path: &Path) -> Result<Vec<u8>, GuestError> {
    let bytes = std::fs::read(path).map_err(|e| CacheError::io("read", path, e))?;
    let elf = goblin::elf::Elf::parse(&bytes).map_err(|e| GuestError::build(profile, "reading busybox", e))?;
    if elf.interpreter.is_some() {
        return Err(GuestError::build(
            profile,
            "checking busybox",
            format!(
                "{} is dynamically linked; install the static one with `apt-get install busybox-static`",
                path.display()
            ),
        ));
    }
    Ok(bytes)
}

/// Adds what every kfi initramfs holds: busybox, device nodes, the agent and
/// each kernel's modules with their load order, under
/// `lib/modules/<release>/` (the init loads those of `uname -r`).
pub(crate) fn base_initramfs(profile: Profile, kernels: &[&Kernel]) -> Result<Initramfs, GuestError> {
    let busybox = require_static(profile, &tools::BUSYBOX.find()?)?;
    let mut fs = Initramfs::default();
    for dir in ["bin", "dev", "proc", "sys", "tmp", "run", "etc/kfi", "lib/modules"] {
        fs.dir(dir);
    }
    fs.file("bin/busybox", busybox, 0o755);
    fs.symlink("bin/sh", "busybox");
    fs.char_dev("dev/console", 5, 1);
    fs.char_dev("dev/null", 1, 3);
    fs.file("etc/kfi/agent", AGENT_SH.as_bytes().to_vec(), 0o755);
    fs.file("etc/kfi/watched", profile.watched_list().into_bytes(), 0o644);
    for kernel in kernels {
        let dir = format!("lib/modules/{}", kernel.release);
        fs.dir(&dir);
        let mut order = String::new();
        for (name, path) in &kernel.modules {
            fs.copy_from(&format!("{dir}/{name}.ko"), path).map_err(|e| CacheError::io("read", path, e))?;
            order.push_str(name);
            order.push('\n');
        }
        fs.file(&format!("{dir}/load-order"), order.into_bytes(), 0o644);
    }
    Ok(fs)
}

/// Builds the tiny image. With `update_to`, the plain initramfs carries
/// both kernels' modules and is written as [`UPDATE_NEXT_INITRAMFS`] (what
/// the new kernel boots, by every update strategy); `initramfs.cpio`, what
/// the old kernel boots, adds `kexec` with its libraries, the new kernel as
/// `/boot/vmlinuz-<release>` and that next initramfs, so the guest can
/// kexec into it as an administrator would.
pub(crate) fn build(
    cache: &Cache,
    out: &Path,
    kernel: &Kernel,
    update_to: Option<&Kernel>,
    docs: &[(String, Vec<u8>)],
    progress: &dyn Fn(&str),
) -> Result<BuildSpec, GuestError> {
    progress("assembling the tiny initramfs");
    let kernels: Vec<&Kernel> = std::iter::once(kernel).chain(update_to).collect();
    let mut fs = base_initramfs(Profile::Tiny, &kernels)?;
    fs.file("init", INIT_SH.as_bytes().to_vec(), 0o755);
    fs.dir("data");
    // The data disk's files are readable over HTTP (/data/acked holds the
    // acknowledged writes), so a recovery can be checked from outside.
    fs.symlink("www/data", "/data");
    for (url, data) in docs {
        fs.file(&format!("www{url}"), data.clone(), 0o644);
    }
    let mut extra_files = vec![super::KEXEC_INITRAMFS.to_string()];
    let kexec = kexec::ensure(cache, progress)?;
    let path = out.join("initramfs.cpio");
    match update_to {
        None => fs.write_file(&path).map_err(|e| CacheError::io("write", &path, e))?,
        Some(next) => {
            let next_path = out.join(super::UPDATE_NEXT_INITRAMFS);
            fs.write_file(&next_path).map_err(|e| CacheError::io("write", &next_path, e))?;
            extra_files.push(super::UPDATE_NEXT_INITRAMFS.to_string());
            progress(&format!("assembling the initramfs that can kexec into {}", next.release));
            let mut primary = fs.clone();
            let vmlinuz = format!("boot/vmlinuz-{}", next.release);
            primary.copy_from(&vmlinuz, &next.vmlinuz).map_err(|e| CacheError::io("read", &next.vmlinuz, e))?;
            primary
                .copy_from(&format!("boot/{}", super::UPDATE_NEXT_INITRAMFS), &next_path)
                .map_err(|e| CacheError::io("read", &next_path, e))?;
            for (guest, file) in &kexec.files {
                primary.copy_from(guest, file).map_err(|e| CacheError::io("read", file, e))?;
            }
            primary.write_file(&path).map_err(|e| CacheError::io("write", &path, e))?;
        }
    }

    // A separate file, so that other boots do not pay for unpacking twice
    // the size.
    progress(&format!("assembling the kexec-reboot initramfs (kexec-tools {})", kexec.version));
    fs.copy_from("boot/vmlinuz", &kernel.vmlinuz).map_err(|e| CacheError::io("read", &kernel.vmlinuz, e))?;
    let plain = if update_to.is_some() { out.join(super::UPDATE_NEXT_INITRAMFS) } else { path.clone() };
    fs.copy_from("boot/initramfs.cpio", &plain).map_err(|e| CacheError::io("read", &plain, e))?;
    for (guest, file) in &kexec.files {
        fs.copy_from(guest, file).map_err(|e| CacheError::io("read", file, e))?;
    }
    let kexec_path = out.join(super::KEXEC_INITRAMFS);
    fs.write_file(&kexec_path).map_err(|e| CacheError::io("write", &kexec_path, e))?;

    progress("making the data disk");
    super::make_data_disk(out, DATA_DISK_MIB)?;
    Ok(BuildSpec { cmdline: String::new(), rootfs: None, min_memory_mib: MIN_MEMORY_MIB, extra_files })
}
