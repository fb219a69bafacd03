//! The on-disk cache of kernels and guest images, and the atomic-build and
//! integrity rules every cached artefact follows.
//!
//! Every artefact lives in its own directory with a `manifest.json` that lists
//! each file's size and SHA-256. A directory is built under a `.partial-*`
//! name and renamed into place only once complete, so an interrupted build
//! never leaves something that looks finished.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Files up to this size are re-hashed on every use; larger ones only when
/// their size or modification time differs from the manifest.
const ALWAYS_HASH_BELOW: u64 = 64 << 20;

const MANIFEST: &str = "manifest.json";

/// Errors about the cache and what is stored in it.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache root cannot be found or made.
    #[error("cannot use cache directory {path}: {source} (set KFI_CACHE to a writable directory)")]
    Root {
        /// The directory that failed.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// An I/O error on a named path.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// A cached artefact no longer matches its manifest.
    #[error("cached {what} at {dir} is corrupt: {detail}; rebuild it with `{fix}`")]
    Corrupt {
        /// Which artefact ("tiny guest image", "kernel 6.1.0-56-amd64").
        what: String,
        /// Its directory.
        dir: PathBuf,
        /// Which file and how it differs.
        detail: String,
        /// The command that rebuilds it.
        fix: String,
    },
    /// A manifest cannot be parsed.
    #[error("manifest {path} is unreadable: {source}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
}

impl CacheError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        CacheError::Io { action, path: path.into(), source }
    }
}

/// The cache root (`$KFI_CACHE`, else `$XDG_CACHE_HOME/kfi`, else `~/.cache/kfi`).
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Opens the cache named by the environment, creating it if needed.
    pub fn from_env() -> Result<Self, CacheError> {
        let root = if let Some(dir) = std::env::var_os("KFI_CACHE") {
            PathBuf::from(dir)
        } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
            PathBuf::from(dir).join("kfi")
        } else {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
            PathBuf::from(home).join(".cache").join("kfi")
        };
        Self::at(root)
    }

    /// Opens (and creates) a cache at an explicit directory.
    pub fn at(root: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|source| CacheError::Root { path: root.clone(), source })?;
        Ok(Cache { root })
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A subdirectory of the cache, created if missing.
    pub fn subdir(&self, name: &str) -> Result<PathBuf, CacheError> {
        let dir = self.root.join(name);
        fs::create_dir_all(&dir).map_err(|e| CacheError::io("create", &dir, e))?;
        Ok(dir)
    }
}

/// One file's identity in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
    /// Modification time (ns since the epoch) when hashed.
    pub mtime_ns: i128,
}

/// The manifest of a cached artefact directory: metadata plus checked files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest<M> {
    /// Artefact-specific metadata (kernel version, recipe hash...).
    pub meta: M,
    /// Files relative to the artefact directory.
    pub files: BTreeMap<String, FileEntry>,
}

/// Hashes one file.
pub fn sha256_file(path: &Path) -> Result<String, CacheError> {
    let mut file = fs::File::open(path).map_err(|e| CacheError::io("open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| CacheError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn mtime_ns(meta: &fs::Metadata) -> i128 {
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

fn entry_for(path: &Path) -> Result<FileEntry, CacheError> {
    let meta = fs::metadata(path).map_err(|e| CacheError::io("stat", path, e))?;
    Ok(FileEntry { size: meta.len(), sha256: sha256_file(path)?, mtime_ns: mtime_ns(&meta) })
}

impl<M: Serialize + for<'de> Deserialize<'de>> Manifest<M> {
    /// Builds a manifest by hashing the listed files under `dir`.
    pub fn build(dir: &Path, meta: M, files: &[&str]) -> Result<Self, CacheError> {
        let mut entries = BTreeMap::new();
        for name in files {
            entries.insert((*name).to_string(), entry_for(&dir.join(name))?);
        }
        Ok(Manifest { meta, files: entries })
    }

    /// Reads `dir/manifest.json`; `Ok(None)` when there is none.
    pub fn load(dir: &Path) -> Result<Option<Self>, CacheError> {
        let path = dir.join(MANIFEST);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CacheError::io("read", path, e)),
        };
        serde_json::from_str(&text).map(Some).map_err(|source| CacheError::Manifest { path, source })
    }

    /// Writes `dir/manifest.json`.
    pub fn store(&self, dir: &Path) -> Result<(), CacheError> {
        let path = dir.join(MANIFEST);
        let text =
            serde_json::to_string_pretty(self).map_err(|source| CacheError::Manifest { path: path.clone(), source })?;
        fs::write(&path, text).map_err(|e| CacheError::io("write", path, e))
    }

    /// Checks every file against the manifest. Small files are always
    /// re-hashed; a large file is re-hashed when its size or mtime moved, so a
    /// truncation or an in-place edit is caught without hashing gigabytes on
    /// every boot.
    pub fn verify(&self, dir: &Path, what: &str, fix: &str) -> Result<(), CacheError> {
        self.check(dir, what, fix, false)
    }

    /// Checks every file by full hash, whatever its size or mtime.
    pub fn verify_full(&self, dir: &Path, what: &str, fix: &str) -> Result<(), CacheError> {
        self.check(dir, what, fix, true)
    }

    fn check(&self, dir: &Path, what: &str, fix: &str, full: bool) -> Result<(), CacheError> {
        let corrupt = |detail: String| CacheError::Corrupt {
            what: what.to_string(),
            dir: dir.to_path_buf(),
            detail,
            fix: fix.to_string(),
        };
        for (name, want) in &self.files {
            let path = dir.join(name);
            let meta = match fs::metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(corrupt(format!("{name} is missing"))),
                Err(e) => return Err(CacheError::io("stat", path, e)),
            };
            if meta.len() != want.size {
                return Err(corrupt(format!("{name} is {} bytes, the manifest says {}", meta.len(), want.size)));
            }
            if full || meta.len() < ALWAYS_HASH_BELOW || mtime_ns(&meta) != want.mtime_ns {
                let got = sha256_file(&path)?;
                if got != want.sha256 {
                    return Err(corrupt(format!("{name} has SHA-256 {got}, the manifest says {}", want.sha256)));
                }
            }
        }
        Ok(())
    }
}

/// Holds an exclusive lock on `<target>.lock` so that two builders (threads
/// or processes) of the same artefact take turns; the second then finds the
/// first one's result instead of building again.
#[derive(Debug)]
pub struct BuildLock {
    _file: fs::File,
}

impl BuildLock {
    /// Blocks until the lock for `target` is held.
    pub fn acquire(target: &Path) -> Result<Self, CacheError> {
        let path = with_suffix(target, ".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| CacheError::io("open", &path, e))?;
        file.lock().map_err(|e| CacheError::io("lock", &path, e))?;
        Ok(BuildLock { _file: file })
    }
}

/// A directory being built: it lives under a temporary sibling name and
/// becomes visible at `final_dir` only through [`PartialDir::commit`].
/// Dropping it uncommitted removes it.
#[derive(Debug)]
pub struct PartialDir {
    path: PathBuf,
    final_dir: PathBuf,
    committed: bool,
}

impl PartialDir {
    /// Starts building `final_dir`. Leftovers of builds whose process is gone
    /// (a `kill -9` mid-build) are removed first.
    pub fn begin(final_dir: &Path) -> Result<Self, CacheError> {
        let parent = final_dir.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(|e| CacheError::io("create", parent, e))?;
        let base = final_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        remove_stale_partials(parent, &base);
        // pid first (stale detection), then a per-process counter so two
        // threads never share a directory.
        static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = parent.join(format!(".{base}.partial-{}-{serial}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).map_err(|e| CacheError::io("remove", &path, e))?;
        }
        fs::create_dir_all(&path).map_err(|e| CacheError::io("create", &path, e))?;
        Ok(PartialDir { path, final_dir: final_dir.to_path_buf(), committed: false })
    }

    /// Where to write the artefact's files.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the build visible, replacing any older directory at the target.
    pub fn commit(mut self) -> Result<PathBuf, CacheError> {
        if self.final_dir.exists() {
            let old = with_suffix(&self.path, ".old");
            fs::rename(&self.final_dir, &old).map_err(|e| CacheError::io("move aside", &self.final_dir, e))?;
            let _ = fs::remove_dir_all(&old);
        }
        fs::rename(&self.path, &self.final_dir).map_err(|e| CacheError::io("rename into place", &self.path, e))?;
        self.committed = true;
        Ok(self.final_dir.clone())
    }
}

impl Drop for PartialDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn remove_stale_partials(parent: &Path, base: &str) {
    let prefix = format!(".{base}.partial-");
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) =
            name.strip_prefix(&prefix).and_then(|p| p.split('-').next()).and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if !process_alive(pid) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// `path` with `suffix` appended to its file name (not replacing an
/// "extension": names like `tiny-6.1.0-56-amd64` are full of dots).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Whether a process with this pid exists (signal 0 probe).
pub fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_detects_truncation_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), b"hello world").unwrap();
        let manifest = Manifest::build(dir.path(), "meta".to_string(), &["a"]).unwrap();
        manifest.verify(dir.path(), "test", "fix").unwrap();

        fs::write(dir.path().join("a"), b"hello").unwrap();
        let err = manifest.verify(dir.path(), "test", "fix").unwrap_err().to_string();
        assert!(err.contains("is 5 bytes"), "{err}");

        fs::write(dir.path().join("a"), b"hellO world").unwrap();
        let err = manifest.verify(dir.path(), "test", "fix").unwrap_err().to_string();
        assert!(err.contains("SHA-256"), "{err}");

        fs::remove_file(dir.path().join("a")).unwrap();
        let err = manifest.verify(dir.path(), "test", "fix").unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn partial_dir_is_invisible_until_commit_and_removed_on_drop() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("img");
        {
            let partial = PartialDir::begin(&target).unwrap();
            fs::write(partial.path().join("f"), b"x").unwrap();
            assert!(!target.exists());
        }
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0, "dropped build left files");
        let partial = PartialDir::begin(&target).unwrap();
        fs::write(partial.path().join("f"), b"y").unwrap();
        partial.commit().unwrap();
        assert_eq!(fs::read(target.join("f")).unwrap(), b"y");
    }

    #[test]
    fn stale_partial_of_dead_process_is_removed() {
        let root = tempfile::tempdir().unwrap();
        // pid 0x3fffffff is above pid_max, so no process has it.
        let stale = root.path().join(".img.partial-1073741823");
        fs::create_dir_all(&stale).unwrap();
        let _partial = PartialDir::begin(&root.path().join("img")).unwrap();
        assert!(!stale.exists());
    }
}
