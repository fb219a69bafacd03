//! `kfi doctor`: what this host can do, and the exact commands that fix
//! what is missing.

use std::path::Path;

use serde::Serialize;

use crate::cache::Cache;
use crate::tools;

/// One checked host program.
#[derive(Debug, Clone, Serialize)]
pub struct ToolStatus {
    /// Program.
    pub program: &'static str,
    /// Where it is, if installed.
    pub path: Option<String>,
    /// What it is for.
    pub purpose: &'static str,
    /// Package that provides it.
    pub package: &'static str,
}

/// Everything `kfi doctor` reports.
#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    /// QEMU's version, if installed.
    pub qemu_version: Option<String>,
    /// Usable accelerators: `tcg` always (with QEMU), `kvm` if /dev/kvm opens.
    pub accelerators: Vec<String>,
    /// Why KVM is not usable, if it is not.
    pub kvm_note: Option<String>,
    /// The cached KVM probe verdict, if a probe ran.
    pub kvm_probe: Option<serde_json::Value>,
    /// Cache directory.
    pub cache_dir: String,
    /// Bytes the cache holds.
    pub cache_bytes: u64,
    /// Free bytes on the cache's filesystem.
    pub free_bytes: u64,
    /// The Debian kernel `linux-image-amd64` points at now, or why not
    /// known: what `kfi kernel lock --update` would pin (guests boot the
    /// kernel the lock pins, not this one).
    pub debian_kernel: Result<String, String>,
    /// Host programs.
    pub tools: Vec<ToolStatus>,
    /// One `apt-get install` line for everything missing, if anything is.
    pub install_command: Option<String>,
}

impl DoctorReport {
    /// Whether everything needed for the tiny guest is present.
    pub fn ready_for_tiny(&self) -> bool {
        let needed = [tools::QEMU.program, tools::QEMU_IMG.program, tools::BUSYBOX.program, tools::MKE2FS.program];
        self.tools.iter().filter(|t| needed.contains(&t.program)).all(|t| t.path.is_some())
    }
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn free_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return 0 };
    // SAFETY: statvfs writes into the zeroed struct we own; c is NUL-terminated.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) == 0 {
            s.f_bavail as u64 * s.f_frsize as u64
        } else {
            0
        }
    }
}

/// Inspects the host.
pub fn examine(cache: &Cache) -> DoctorReport {
    let tools: Vec<ToolStatus> = tools::ALL
        .iter()
        .map(|t| ToolStatus {
            program: t.program,
            path: t.find().ok().map(|p| p.display().to_string()),
            purpose: t.purpose,
            package: t.package,
        })
        .collect();
    let mut missing: Vec<&str> = tools.iter().filter(|t| t.path.is_none()).map(|t| t.package).collect();
    missing.dedup();
    let qemu_version = crate::vm::qemu_version().ok();
    let mut accelerators = Vec::new();
    if qemu_version.is_some() {
        accelerators.push("tcg".to_string());
    }
    let kvm = crate::accel::kvm_device();
    if kvm.is_ok() {
        accelerators.push("kvm".to_string());
    }
    DoctorReport {
        qemu_version,
        accelerators,
        kvm_note: kvm.err(),
        kvm_probe: std::fs::read_to_string(cache.root().join("kvm-probe.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok()),
        cache_dir: cache.root().display().to_string(),
        cache_bytes: dir_size(cache.root()),
        free_bytes: free_bytes(cache.root()),
        debian_kernel: crate::kernel::current_debian_package()
            .map(|(p, v)| format!("{p} {v}"))
            .map_err(|e| e.to_string()),
        tools,
        install_command: (!missing.is_empty()).then(|| format!("apt-get install -y {}", missing.join(" "))),
    }
}
