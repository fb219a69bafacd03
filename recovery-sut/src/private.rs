//! Directories only kfi's user can read. A VM's run directory holds the
//! guest's whole memory (`guest.ram`), its QMP, agent and gdbstub sockets
//! (whoever connects to them controls the guest); disk and snapshot
//! directories hold its disks and memory too. The default mode (0755 under
//! the usual umask) would let every local user read all of it.

use std::fs::Permissions;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Mode of every directory [`tempdir`] and [`make`] create.
pub const MODE: u32 = 0o700;

/// A new temporary directory in the system's temporary directory, mode
/// 0700, removed when dropped.
pub fn tempdir(prefix: &str) -> io::Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix(prefix).permissions(Permissions::from_mode(MODE)).tempdir()
}

/// Like [`tempdir`], inside `parent`.
pub fn tempdir_in(prefix: &str, parent: &Path) -> io::Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix(prefix).permissions(Permissions::from_mode(MODE)).tempdir_in(parent)
}

/// Creates `dir` (and missing parents) and makes it mode 0700, also when it
/// existed.
pub fn make(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(MODE))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_directories_are_closed_to_other_users() {
        let dir = tempdir("kfi-private-").unwrap();
        assert_eq!(std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777, MODE);
        let inner = tempdir_in("inner-", dir.path()).unwrap();
        assert_eq!(std::fs::metadata(inner.path()).unwrap().permissions().mode() & 0o777, MODE);
        let made = dir.path().join("a/b");
        std::fs::create_dir_all(&made).unwrap();
        std::fs::set_permissions(&made, Permissions::from_mode(0o755)).unwrap();
        make(&made).unwrap();
        assert_eq!(std::fs::metadata(&made).unwrap().permissions().mode() & 0o777, MODE);
    }
}
