//! Directories only kfi's user can read. A VM's run directory holds the
//! guest's whole memory (`guest.ram`), its QMP, agent and gdbstub sockets
//! (whoever connects to them controls the guest); disk and snapshot
//! directories hold its disks and memory too. The default mode (0755 under
//! the usual umask) would let every local user read all of it. Each such
//! temporary directory names its owner (pid and start time), so that the
//! next kfi removes what a killed one left, and nothing of a live one.

use std::fs::Permissions;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Mode of every directory [`tempdir`] and [`make`] create.
pub const MODE: u32 = 0o700;

/// A new temporary directory in the system's temporary directory, mode
/// 0700, removed when dropped, with an owner file naming this process.
/// The first call of a process sweeps the directories dead kfi processes
/// left there (see [`sweep_dead`]). `prefix` starts with [`PREFIX`].
pub fn tempdir(prefix: &str) -> io::Result<tempfile::TempDir> {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    let parent = std::env::temp_dir();
    SWEPT.call_once(|| {
        sweep_dead(&parent);
    });
    tempdir_in(prefix, &parent)
}

/// Like [`tempdir`], inside `parent`, without the sweep.
pub fn tempdir_in(prefix: &str, parent: &Path) -> io::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix(prefix).permissions(Permissions::from_mode(MODE)).tempdir_in(parent)?;
    if let Some(line) = owner_line(std::process::id()) {
        std::fs::write(dir.path().join(OWNER), line + "\n")?;
    }
    Ok(dir)
}

/// Creates `dir` (and missing parents) and makes it mode 0700, also when it
/// existed.
pub fn make(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(MODE))
}

/// The file in each directory [`tempdir`] makes that names its owner: the
/// pid and the process's start time (a pid alone can be reused).
const OWNER: &str = ".kfi-owner";

/// Prefix of every temporary directory kfi makes; [`sweep_dead`] looks at
/// no others.
pub const PREFIX: &str = "kfi-";

/// This process as `pid start-time` (start time in clock ticks since boot,
/// `/proc/<pid>/stat` field 22).
fn owner_line(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // Fields after the command start at field 3 (the state).
    let start = rest.split_whitespace().nth(22 - 3)?;
    Some(format!("{pid} {start}"))
}

/// Whether the process an owner file names is still the one that wrote it.
fn owner_alive(line: &str) -> bool {
    let Some(pid) = line.split_whitespace().next().and_then(|p| p.parse::<u32>().ok()) else { return true };
    owner_line(pid).is_some_and(|now| now == line.trim())
}

/// Makes a directory [`tempdir`] made one that outlives its process on
/// purpose (`--keep-run-dir`): without an owner no sweep removes it.
pub fn disown(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(OWNER));
}

/// Removes the directories under `parent` that kfi made (named
/// [`PREFIX`]`*`, with an owner file) whose owning process is gone: a
/// `kill -9` leaves them, with a guest's memory and disks inside. A
/// directory without an owner file (being made, or by an older kfi) and
/// one whose owner lives are left alone. Returns the removed ones.
pub fn sweep_dead(parent: &Path) -> Vec<std::path::PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(parent) else { return removed };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_name().to_string_lossy().starts_with(PREFIX) || !path.is_dir() {
            continue;
        }
        let Ok(line) = std::fs::read_to_string(path.join(OWNER)) else { continue };
        if !owner_alive(&line) && std::fs::remove_dir_all(&path).is_ok() {
            tracing::info!("removed {} (its kfi, {}, is gone)", path.display(), line.trim());
            removed.push(path);
        }
    }
    removed
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

    #[test]
    fn only_the_directories_of_dead_owners_are_swept() {
        let parent = tempfile::tempdir().unwrap();
        let live = tempdir_in("kfi-vm-", parent.path()).unwrap();
        // A process that has exited: its pid names nobody (or, reused,
        // someone with another start time).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let dead = parent.path().join("kfi-vm-dead");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(OWNER), format!("{dead_pid} 1\n")).unwrap();
        std::fs::write(dead.join("guest.ram"), b"memory").unwrap();
        // This process's pid with another start time: a reused pid.
        let reused = parent.path().join("kfi-disks-reused");
        std::fs::create_dir(&reused).unwrap();
        std::fs::write(reused.join(OWNER), format!("{} 1\n", std::process::id())).unwrap();
        // No owner file, or not kfi's: left alone.
        let unowned = parent.path().join("kfi-vm-unowned");
        std::fs::create_dir(&unowned).unwrap();
        let other = parent.path().join("other-dir");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join(OWNER), format!("{dead_pid} 1\n")).unwrap();

        let mut removed = sweep_dead(parent.path());
        removed.sort();
        assert_eq!(removed, vec![reused.clone(), dead.clone()]);
        assert!(!dead.exists() && !reused.exists());
        assert!(live.path().exists() && unowned.exists() && other.exists());
    }
}
