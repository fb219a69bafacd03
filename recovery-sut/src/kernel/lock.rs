//! `kernel.lock`: the guest kernels a checkout may boot, each named
//! exactly (release, Debian package and version, pool file name and the
//! SHA-256 of the image and `-dbg` packages), one of them the default.
//!
//! Fault lists are a pure function of seed, index and kernel image, so
//! the kernel must not move when Debian's `linux-image-amd64` does. The
//! lock is found at run time: `$KFI_KERNEL_LOCK` if set, else the path the
//! caller passes (the repository's `kernel.lock`; this crate does not
//! guess where the repository is).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The environment variable that names another lock file.
pub const LOCK_ENV: &str = "KFI_KERNEL_LOCK";

/// The command that records the current Debian kernel in the lock.
pub const UPDATE_COMMAND: &str = "kfi kernel lock --update";

/// The command that puts a local copy of a locked `.deb` in the cache.
pub const FROM_COMMAND: &str = "kfi kernel fetch --from FILE";

/// The header every written lock file starts with.
const HEADER: &str = "\
# kernel.lock: the guest kernels kfi boots, pinned exactly (Debian package,
# version, pool file and the SHA-256 of the image and -dbg .deb files).
# Fault lists are a function of seed, index and kernel image: keep this file
# under version control. `kfi kernel lock --update` adds what Debian's
# linux-image-amd64 points at now and makes it the default; `--add RELEASE`
# locks another release (a kernel to update to) without changing the
# default; an experiment file may name any locked release in
# `[guest] kernel = \"...\"`.
";

/// Why a lock file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The file cannot be read.
    #[error("cannot read kernel lock {path}: {source} (set ${LOCK_ENV} to use another lock file)")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file cannot be written.
    #[error("cannot write kernel lock {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown or missing key, a wrong type.
    #[error("kernel lock {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message with its line and key.
        message: String,
    },
    /// A value that parses but is not a valid lock.
    #[error("kernel lock {path}: key `{key}`: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted key path, e.g. `kernel[0].image.sha256`.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// A release that the lock does not name.
    #[error("kernel {release} is not in the kernel lock {path}, which locks: {}; run `{UPDATE_COMMAND}` to lock the current Debian kernel, or `kfi kernel lock --add {release}` to lock this one beside it", known.join(", "))]
    UnknownRelease {
        /// The file.
        path: PathBuf,
        /// The release asked for.
        release: String,
        /// The releases the lock names.
        known: Vec<String>,
    },
}

/// One locked `.deb`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedDeb {
    package: String,
    version: String,
    filename: String,
    sha256: String,
}

impl LockedDeb {
    /// A package to lock; [`LockedKernel::new`] checks it.
    pub(crate) fn new(package: &str, version: &str, filename: &str, sha256: &str) -> Self {
        LockedDeb { package: package.into(), version: version.into(), filename: filename.into(), sha256: sha256.into() }
    }

    /// The package name, e.g. `linux-image-6.1.0-56-amd64`.
    pub fn package(&self) -> &str {
        &self.package
    }

    /// The Debian version, e.g. `6.1.192-2`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The archive path apt reports (`Filename:`).
    pub fn filename(&self) -> &str {
        &self.filename
    }

    /// The `.deb`'s SHA-256, lowercase hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// `package=version`, as apt names it.
    pub fn apt_name(&self) -> String {
        format!("{}={}", self.package, self.version)
    }

    /// The file name in the deb cache: the pool file's base name.
    pub fn cache_name(&self) -> &str {
        self.filename.rsplit('/').next().unwrap_or(&self.filename)
    }

    fn check(&self) -> Result<(), (&'static str, String)> {
        let plain = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "+-.~:_".contains(c));
        if !plain(&self.package) {
            return Err(("package", format!("`{}` is not a Debian package name", self.package)));
        }
        if !plain(&self.version) {
            return Err(("version", format!("`{}` is not a Debian version", self.version)));
        }
        let base = self.cache_name();
        if !base.ends_with(".deb") || base.starts_with('.') || !plain(base) {
            return Err(("filename", format!("`{}` does not end in a plain `<name>.deb`", self.filename)));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(("sha256", format!("`{}` is not 64 lowercase hex digits", self.sha256)));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    release: String,
    image: LockedDeb,
    debug: LockedDeb,
}

impl Entry {
    fn check(&self) -> Result<(), (String, String)> {
        let plain = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "+-.~_".contains(c));
        if !plain(&self.release) {
            return Err(("release".into(), format!("`{}` is not a kernel release", self.release)));
        }
        for (name, deb, want) in [
            ("image", &self.image, format!("linux-image-{}", self.release)),
            ("debug", &self.debug, format!("linux-image-{}-dbg", self.release)),
        ] {
            deb.check().map_err(|(key, problem)| (format!("{name}.{key}"), problem))?;
            if deb.package != want {
                return Err((format!("{name}.package"), format!("release {} needs package `{want}`", self.release)));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockFile {
    default: String,
    #[serde(rename = "kernel")]
    kernels: Vec<Entry>,
}

/// One locked kernel, as a lock file names it: only a [`KernelLock`] (or
/// [`LockedKernel::new`], which checks the same rules) makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedKernel {
    lock_file: PathBuf,
    entry: Entry,
}

impl LockedKernel {
    /// A new lock entry for `release` (checked as a parsed one is).
    pub fn new(lock_file: &Path, release: &str, image: LockedDeb, debug: LockedDeb) -> Result<Self, LockError> {
        let entry = Entry { release: release.into(), image, debug };
        entry.check().map_err(|(key, problem)| LockError::Invalid { path: lock_file.into(), key, problem })?;
        Ok(LockedKernel { lock_file: lock_file.into(), entry })
    }

    /// The lock file that names it.
    pub fn lock_file(&self) -> &Path {
        &self.lock_file
    }

    /// `uname -r`, e.g. `6.1.0-56-amd64`.
    pub fn release(&self) -> &str {
        &self.entry.release
    }

    /// The image package (vmlinuz, modules).
    pub fn image(&self) -> &LockedDeb {
        &self.entry.image
    }

    /// The `-dbg` package (debug vmlinux, System.map).
    pub fn debug(&self) -> &LockedDeb {
        &self.entry.debug
    }
}

impl fmt::Display for LockedKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, locked in {})", self.release(), self.image().apt_name(), self.lock_file.display())
    }
}

/// A parsed, valid lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelLock {
    path: PathBuf,
    file: LockFile,
}

/// The lock file to use: `$KFI_KERNEL_LOCK` if set, else `default`.
pub fn lock_path(default: &Path) -> PathBuf {
    match std::env::var_os(LOCK_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => default.to_path_buf(),
    }
}

impl KernelLock {
    /// Reads and checks a lock file.
    pub fn load(path: &Path) -> Result<Self, LockError> {
        let text = std::fs::read_to_string(path).map_err(|source| LockError::Read { path: path.into(), source })?;
        KernelLock::parse(path, &text)
    }

    /// Parses and checks lock-file text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, LockError> {
        let file: LockFile = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_string();
            let message = match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: {message}")
                }
                None => message,
            };
            LockError::Parse { path: path.into(), message }
        })?;
        let invalid = |key: String, problem: String| LockError::Invalid { path: path.into(), key, problem };
        if file.kernels.is_empty() {
            return Err(invalid("kernel".into(), "no `[[kernel]]` entry".into()));
        }
        for (i, entry) in file.kernels.iter().enumerate() {
            entry.check().map_err(|(key, problem)| invalid(format!("kernel[{i}].{key}"), problem))?;
            if file.kernels[..i].iter().any(|e| e.release == entry.release) {
                return Err(invalid(format!("kernel[{i}].release"), format!("{} is locked twice", entry.release)));
            }
        }
        if !file.kernels.iter().any(|e| e.release == file.default) {
            let known: Vec<&str> = file.kernels.iter().map(|e| e.release.as_str()).collect();
            let problem = format!("`{}` is not a locked release (locked: {})", file.default, known.join(", "));
            return Err(invalid("default".into(), problem));
        }
        Ok(KernelLock { path: path.into(), file })
    }

    /// A lock with one kernel, the default, to be written to `path`.
    pub fn new(kernel: LockedKernel) -> Self {
        let file = LockFile { default: kernel.entry.release.clone(), kernels: vec![kernel.entry] };
        KernelLock { path: kernel.lock_file, file }
    }

    /// The file it was read from (or will be written to).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The default release.
    pub fn default_release(&self) -> &str {
        &self.file.default
    }

    /// Every locked release, in file order.
    pub fn releases(&self) -> Vec<&str> {
        self.file.kernels.iter().map(|e| e.release.as_str()).collect()
    }

    /// The kernel `release` names, or the default one.
    pub fn select(&self, release: Option<&str>) -> Result<LockedKernel, LockError> {
        let want = release.unwrap_or(&self.file.default);
        match self.file.kernels.iter().find(|e| e.release == want) {
            Some(entry) => Ok(LockedKernel { lock_file: self.path.clone(), entry: entry.clone() }),
            None => Err(LockError::UnknownRelease {
                path: self.path.clone(),
                release: want.into(),
                known: self.releases().into_iter().map(str::to_string).collect(),
            }),
        }
    }

    /// Every locked kernel.
    pub fn kernels(&self) -> Vec<LockedKernel> {
        self.file.kernels.iter().map(|e| LockedKernel { lock_file: self.path.clone(), entry: e.clone() }).collect()
    }

    /// The locked kernel and package (image or `-dbg`) whose `.deb` has this SHA-256.
    pub fn find_deb(&self, sha256: &str) -> Option<(LockedKernel, LockedDeb)> {
        self.kernels().into_iter().find_map(|k| {
            [k.image().clone(), k.debug().clone()].into_iter().find(|d| d.sha256 == sha256).map(|d| (k.clone(), d))
        })
    }

    /// Adds `kernel` (replacing an entry of the same release) and makes
    /// it the default.
    pub fn set_default(&mut self, kernel: LockedKernel) {
        let entry = kernel.entry;
        self.file.default = entry.release.clone();
        match self.file.kernels.iter_mut().find(|e| e.release == entry.release) {
            Some(old) => *old = entry,
            None => self.file.kernels.push(entry),
        }
    }

    /// Adds `kernel` (replacing an entry of the same release), leaving the
    /// default as it is.
    pub fn add(&mut self, kernel: LockedKernel) {
        let entry = kernel.entry;
        match self.file.kernels.iter_mut().find(|e| e.release == entry.release) {
            Some(old) => *old = entry,
            None => self.file.kernels.push(entry),
        }
    }

    /// The file's text: the header comment, then the TOML.
    pub fn render(&self) -> String {
        let body = toml::to_string(&self.file).expect("a lock file is plain strings and tables");
        format!("{HEADER}\n{body}")
    }

    /// Writes the lock file (atomically: a temporary file renamed over it).
    pub fn store(&self) -> Result<(), LockError> {
        let write = |source| LockError::Write { path: self.path.clone(), source };
        let dir = self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(write)?;
        std::io::Write::write_all(&mut tmp, self.render().as_bytes()).map_err(write)?;
        // A temporary file is private; a lock file is for everyone to read.
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o644);
        tmp.as_file().set_permissions(mode).map_err(write)?;
        tmp.persist(&self.path).map_err(|e| write(e.error))?;
        Ok(())
    }
}

/// Lock-file text for tests: one kernel, `release`, at version `version`.
#[cfg(test)]
pub(crate) fn sample(release: &str, version: &str, img_sha: &str, dbg_sha: &str) -> String {
    format!(
        "default = \"{release}\"\n\n[[kernel]]\nrelease = \"{release}\"\n\n[kernel.image]\n\
         package = \"linux-image-{release}\"\nversion = \"{version}\"\n\
         filename = \"pool/updates/main/l/linux-signed-amd64/linux-image-{release}_{version}_amd64.deb\"\n\
         sha256 = \"{img_sha}\"\n\n[kernel.debug]\npackage = \"linux-image-{release}-dbg\"\n\
         version = \"{version}\"\nfilename = \"pool/updates/main/l/linux/linux-image-{release}-dbg_{version}_amd64.deb\"\n\
         sha256 = \"{dbg_sha}\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const IMG: &str = "a86e2049672f52354c4536a089203b6c82639420424d31c91cf31a181fd4d8f1";
    const DBG: &str = "e481662ac62dbecc5fa23cc8eff199d140aea356e411ee80f8d9e34c455da7ce";

    fn text(release: &str, img_sha: &str) -> String {
        sample(release, "6.1.192-2", img_sha, DBG)
    }

    fn parse(t: &str) -> Result<KernelLock, LockError> {
        KernelLock::parse(Path::new("/repo/kernel.lock"), t)
    }

    #[test]
    fn the_repository_lock_parses_and_pins_6_1_0_56() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel.lock");
        let lock = KernelLock::load(&path).unwrap();
        let k = lock.select(None).unwrap();
        assert_eq!(k.release(), "6.1.0-56-amd64");
        assert_eq!(k.image().apt_name(), "linux-image-6.1.0-56-amd64=6.1.192-2");
        assert_eq!(k.image().sha256(), IMG);
        assert_eq!(k.debug().sha256(), DBG);
        assert_eq!(k.image().cache_name(), "linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb");
        // The checked-in file is what `kfi kernel lock --update` writes.
        assert_eq!(lock.render(), std::fs::read_to_string(&path).unwrap());
    }

    #[test]
    fn a_lock_round_trips_through_its_rendering_with_the_header() {
        let lock = parse(&text("6.1.0-56-amd64", IMG)).unwrap();
        let rendered = lock.render();
        assert!(rendered.starts_with("# kernel.lock:"), "{rendered}");
        assert_eq!(parse(&rendered).unwrap(), lock);
    }

    #[test]
    fn store_writes_a_readable_file_that_loads_back() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("kernel.lock");
        let k = parse(&text("6.1.0-57-amd64", IMG)).unwrap().select(None).unwrap();
        let k = LockedKernel::new(&path, k.release(), k.image().clone(), k.debug().clone()).unwrap();
        KernelLock::new(k).store().unwrap();
        let lock = KernelLock::load(&path).unwrap();
        assert_eq!((lock.path(), lock.default_release()), (path.as_path(), "6.1.0-57-amd64"));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
        let bad = LockedDeb::new("linux-image-6.1.0-57-amd64", "1", "x.deb", "nothex");
        let e = LockedKernel::new(&path, "6.1.0-57-amd64", bad, k_debug(&lock)).unwrap_err().to_string();
        assert!(e.contains("image.sha256"), "{e}");
    }

    fn k_debug(lock: &KernelLock) -> LockedDeb {
        lock.select(None).unwrap().debug().clone()
    }

    #[test]
    fn set_default_adds_an_entry_and_keeps_the_old_one() {
        let mut lock = parse(&text("6.1.0-56-amd64", IMG)).unwrap();
        let other = parse(&text("6.1.0-57-amd64", IMG)).unwrap().select(None).unwrap();
        lock.set_default(other.clone());
        assert_eq!(lock.default_release(), "6.1.0-57-amd64");
        assert_eq!(lock.releases(), ["6.1.0-56-amd64", "6.1.0-57-amd64"]);
        let again = parse(&lock.render()).unwrap();
        assert_eq!(again.select(Some("6.1.0-56-amd64")).unwrap().release(), "6.1.0-56-amd64");
        assert_eq!(again.select(None).unwrap().entry, other.entry);
        lock.set_default(other);
        assert_eq!(lock.releases().len(), 2, "the same release replaces its entry");
    }

    #[test]
    fn an_unknown_release_lists_the_locked_ones() {
        let lock = parse(&text("6.1.0-56-amd64", IMG)).unwrap();
        let e = lock.select(Some("6.12.0-1-amd64")).unwrap_err().to_string();
        assert!(e.contains("6.12.0-1-amd64") && e.contains("locks: 6.1.0-56-amd64"), "{e}");
        assert!(e.contains("/repo/kernel.lock") && e.contains(UPDATE_COMMAND), "{e}");
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let e = parse(&text("6.1.0-56-amd64", "abc")).unwrap_err().to_string();
        assert!(e.contains("/repo/kernel.lock") && e.contains("kernel[0].image.sha256"), "{e}");
        let upper = IMG.to_uppercase();
        let e = parse(&text("6.1.0-56-amd64", &upper)).unwrap_err().to_string();
        assert!(e.contains("kernel[0].image.sha256"), "{e}");
        let e = parse(&text("6.1.0-56-amd64", IMG).replace("sha256 = \"e4", "sha257 = \"e4")).unwrap_err().to_string();
        assert!(e.contains("/repo/kernel.lock") && e.contains("sha257") && e.contains("line 16"), "{e}");
        let e = parse(&text("6.1.0-56-amd64", IMG).replacen("default = \"6.1.0-56", "default = \"6.1.0-57", 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`default`") && e.contains("6.1.0-57-amd64"), "{e}");
        let e = parse(&text("6.1.0-56-amd64", IMG).replace("-dbg\"\n", "\"\n")).unwrap_err().to_string();
        assert!(e.contains("kernel[0].debug.package"), "{e}");
        let one = text("6.1.0-56-amd64", IMG);
        let twice = format!("{one}\n{}", &one[one.find("[[kernel]]").unwrap()..]);
        let e = parse(&twice).unwrap_err().to_string();
        assert!(e.contains("kernel[1].release") && e.contains("twice"), "{e}");
        let e = parse("default = \"x\"\nkernel = []\n").unwrap_err().to_string();
        assert!(e.contains("`kernel`"), "{e}");
    }

    #[test]
    fn find_deb_knows_image_and_debug_hashes() {
        let lock = parse(&text("6.1.0-56-amd64", IMG)).unwrap();
        assert_eq!(lock.find_deb(IMG).unwrap().1.package(), "linux-image-6.1.0-56-amd64");
        assert_eq!(lock.find_deb(DBG).unwrap().1.package(), "linux-image-6.1.0-56-amd64-dbg");
        assert!(lock.find_deb(&"0".repeat(64)).is_none());
    }

    proptest! {
        #[test]
        fn parsing_never_panics(t in any::<String>()) {
            let _ = parse(&t);
        }

        #[test]
        fn mutated_locks_never_panic(i in 0usize..600, c in any::<char>()) {
            let mut t = text("6.1.0-56-amd64", IMG);
            let i = i.min(t.len() - 1);
            if t.is_char_boundary(i) {
                t.insert(i, c);
            }
            let _ = parse(&t);
        }
    }
}
