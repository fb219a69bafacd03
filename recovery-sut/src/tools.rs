//! The host programs kfi drives, where they come from, and how to run them
//! with errors that say what failed and how to fix it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// A host program kfi needs, with the Debian package that provides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    /// Program name as found in `PATH`.
    pub program: &'static str,
    /// Debian package that installs it.
    pub package: &'static str,
    /// What kfi uses it for.
    pub purpose: &'static str,
}

/// QEMU's PC emulator, overridable by `KFI_QEMU`.
pub const QEMU: Tool = Tool { program: "qemu-system-x86_64", package: "qemu-system-x86", purpose: "runs every guest" };
/// Creates copy-on-write disk overlays.
pub const QEMU_IMG: Tool = Tool { program: "qemu-img", package: "qemu-utils", purpose: "per-VM disk overlays" };
/// The guests' userland in the tiny profile and the initramfs of both.
pub const BUSYBOX: Tool =
    Tool { program: "busybox", package: "busybox-static", purpose: "tiny guest userland and initramfs" };
/// Builds the Debian guest root filesystem.
pub const DEBOOTSTRAP: Tool =
    Tool { program: "debootstrap", package: "debootstrap", purpose: "builds the debian guest" };
/// Makes ext4 images from directories without mounting.
pub const MKE2FS: Tool = Tool { program: "mke2fs", package: "e2fsprogs", purpose: "ext4 root and data disks" };
/// Downloads kernel packages.
pub const APT_GET: Tool = Tool { program: "apt-get", package: "apt", purpose: "downloads guest kernels" };
/// Resolves the current kernel package.
pub const APT_CACHE: Tool =
    Tool { program: "apt-cache", package: "apt", purpose: "resolves the current Debian kernel" };
/// Unpacks kernel packages.
pub const DPKG_DEB: Tool = Tool { program: "dpkg-deb", package: "dpkg", purpose: "unpacks kernel packages" };
/// Unpacks the debug kernel selectively.
pub const DPKG_QUERY: Tool =
    Tool { program: "dpkg-query", package: "dpkg", purpose: "lists the debian guest's packages" };
/// `tar`.
pub const TAR: Tool = Tool { program: "tar", package: "tar", purpose: "unpacks the debug kernel" };

/// Every tool, in the order `kfi doctor` lists them.
pub const ALL: &[Tool] = &[QEMU, QEMU_IMG, BUSYBOX, MKE2FS, DEBOOTSTRAP, APT_GET, APT_CACHE, DPKG_DEB, DPKG_QUERY, TAR];

/// Errors from running host programs.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The program is not installed.
    #[error("`{program}` is not installed; it {purpose}: install it with `apt-get install {package}`")]
    Missing {
        /// Program name.
        program: &'static str,
        /// What it is for.
        purpose: &'static str,
        /// Package to install.
        package: &'static str,
    },
    /// The program could not be started.
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The program ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of what it printed on stderr.
        stderr: String,
    },
}

impl Tool {
    /// The program's path, honouring `KFI_QEMU` for QEMU.
    pub fn find(&self) -> Result<PathBuf, ToolError> {
        if self.program == QEMU.program {
            if let Some(path) = std::env::var_os("KFI_QEMU") {
                let path = PathBuf::from(path);
                return if path.is_file() { Ok(path) } else { Err(self.missing()) };
            }
        }
        which::which(self.program).or_else(|_| {
            // root's tools live in sbin, which a user's PATH may lack.
            ["/usr/sbin", "/sbin"]
                .iter()
                .map(|d| Path::new(d).join(self.program))
                .find(|p| p.is_file())
                .ok_or_else(|| self.missing())
        })
    }

    fn missing(&self) -> ToolError {
        ToolError::Missing { program: self.program, purpose: self.purpose, package: self.package }
    }

    /// Runs the tool to completion and returns its stdout; a non-zero exit
    /// is an error carrying the tail of stderr.
    pub fn run<I, S>(&self, args: I, cwd: Option<&Path>) -> Result<String, ToolError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let path = self.find()?;
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_os_string()).collect();
        let command =
            format!("{} {}", self.program, args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));
        let mut cmd = duct::cmd(path, &args).stdout_capture().stderr_capture().unchecked();
        if let Some(dir) = cwd {
            cmd = cmd.dir(dir);
        }
        let out = cmd.run().map_err(|source| ToolError::Spawn { command: command.clone(), source })?;
        if !out.status.success() {
            return Err(ToolError::Failed { command, status: out.status.to_string(), stderr: tail(&out.stderr, 2000) });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The last `max` bytes of a program's output, as text.
pub fn tail(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}
