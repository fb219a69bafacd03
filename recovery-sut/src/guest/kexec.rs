//! The guest's `kexec` for the kexec-reboot strategy: Debian's kexec-tools
//! binary with every shared library it needs, fetched once into the cache.
//!
//! Debian builds kexec-tools against libxenctrl (its Xen support, unused in
//! a KVM or TCG guest), and the dynamic loader refuses to start it without
//! that library and its own dependencies, so the Xen runtime packages come
//! along. Libraries the host already has (glibc, zlib, ...) are taken from
//! the host, which is what the packages were built against on Debian 12.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{GuestError, Profile};
use crate::cache::{Cache, CacheError, Manifest, PartialDir};
use crate::tools;

/// kexec-tools and the packages that provide the libraries it links that a
/// host without Xen lacks.
pub(crate) const PACKAGES: &[&str] = &[
    "kexec-tools",
    "libxenmisc4.17",
    "libxencall1",
    "libxendevicemodel1",
    "libxenevtchn1",
    "libxenforeignmemory1",
    "libxengnttab1",
    "libxenhypfs1",
    "libxenstore4",
    "libxentoolcore1",
    "libxentoollog1",
    "libyajl2",
];

/// Where the host keeps its shared libraries.
const HOST_LIB_DIRS: &[&str] = &["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64"];

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KexecMeta {
    /// The kexec-tools version.
    version: String,
    /// Guest path -> file in the cache directory.
    files: BTreeMap<String, String>,
}

/// `kexec` and its libraries, as guest paths and files on the host.
#[derive(Debug, Clone)]
pub(crate) struct KexecFiles {
    /// The kexec-tools version, for the image recipe.
    pub version: String,
    /// Guest path (without a leading `/`) -> file in the cache.
    pub files: Vec<(String, PathBuf)>,
}

/// The current kexec-tools version apt offers.
fn candidate_version() -> Result<String, GuestError> {
    let show = tools::APT_CACHE.run(["show", "--no-all-versions", "kexec-tools"], None)?;
    show.lines().find_map(|l| l.strip_prefix("Version: ")).map(str::to_string).ok_or_else(|| {
        GuestError::build(
            Profile::Tiny,
            "resolving kexec-tools",
            "apt knows no `kexec-tools` package: run `apt-get update` as root",
        )
    })
}

/// Fetches (once) and returns the guest's kexec with its libraries.
pub(crate) fn ensure(cache: &Cache, progress: &dyn Fn(&str)) -> Result<KexecFiles, GuestError> {
    let version = candidate_version()?;
    let dir = cache.subdir("tools")?.join(format!("kexec-tools-{}", version.replace([':', '/'], "_")));
    let _lock = crate::cache::BuildLock::acquire(&dir)?;
    let manifest = match Manifest::<KexecMeta>::load(&dir)? {
        Some(m) if m.meta.version == version => {
            m.verify(&dir, "the guest kexec", "remove that directory and build the image again")?;
            m
        }
        _ => {
            progress(&format!("fetching kexec-tools {version} and the libraries it links"));
            fetch(cache, &dir, &version)?
        }
    };
    Ok(KexecFiles {
        version,
        files: manifest.meta.files.iter().map(|(guest, file)| (guest.clone(), dir.join(file))).collect(),
    })
}

fn fetch(cache: &Cache, dir: &Path, version: &str) -> Result<Manifest<KexecMeta>, GuestError> {
    let scratch =
        tempfile::tempdir_in(cache.root()).map_err(|e| CacheError::io("create scratch in", cache.root(), e))?;
    let mut args = vec!["-q".to_string(), "-o".into(), "APT::Sandbox::User=root".into(), "download".into()];
    args.push(format!("kexec-tools={version}"));
    args.extend(PACKAGES[1..].iter().map(|p| p.to_string()));
    tools::APT_GET.run(&args, Some(scratch.path()))?;
    let tree = scratch.path().join("x");
    for entry in fs::read_dir(scratch.path()).map_err(|e| CacheError::io("list", scratch.path(), e))? {
        let deb = entry.map_err(|e| CacheError::io("list", scratch.path(), e))?.path();
        if deb.extension().is_some_and(|x| x == "deb") {
            tools::DPKG_DEB.run(["-x".as_ref(), deb.as_os_str(), tree.as_os_str()], None)?;
        }
    }
    let kexec = tree.join("sbin/kexec");
    let search: Vec<PathBuf> = ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"]
        .iter()
        .map(|d| tree.join(d))
        .chain(HOST_LIB_DIRS.iter().map(PathBuf::from))
        .collect();
    let closure = library_closure(&kexec, &search)?;

    let partial = PartialDir::begin(dir)?;
    let out = partial.path();
    let mut files = BTreeMap::new();
    let mut names = Vec::new();
    let mut put = |guest: String, from: &Path, name: String| -> Result<(), GuestError> {
        // fs::copy follows the symlinks soname -> real file.
        fs::copy(from, out.join(&name)).map_err(|e| CacheError::io("copy", from, e))?;
        files.insert(guest, name.clone());
        names.push(name);
        Ok(())
    };
    put("sbin/kexec".into(), &kexec, "kexec".into())?;
    for (guest, from) in closure {
        let name = Path::new(&guest).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        put(guest, &from, name)?;
    }
    let names_ref: Vec<&str> = names.iter().map(String::as_str).collect();
    let manifest = Manifest::build(out, KexecMeta { version: version.to_string(), files }, &names_ref)?;
    manifest.store(out)?;
    partial.commit()?;
    Ok(manifest)
}

/// Every shared library `binary` needs, transitively, plus its ELF
/// interpreter: guest path -> host file.
fn library_closure(binary: &Path, search: &[PathBuf]) -> Result<BTreeMap<String, PathBuf>, GuestError> {
    let step = "collecting the libraries of kexec";
    let mut found: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut todo = vec![binary.to_path_buf()];
    while let Some(file) = todo.pop() {
        let bytes = fs::read(&file).map_err(|e| CacheError::io("read", &file, e))?;
        let elf = goblin::elf::Elf::parse(&bytes).map_err(|e| GuestError::build(Profile::Tiny, step, e))?;
        if let Some(interp) = elf.interpreter {
            found.entry(interp.trim_start_matches('/').to_string()).or_insert_with(|| PathBuf::from(interp));
        }
        for lib in elf.libraries {
            let guest = format!("lib/x86_64-linux-gnu/{lib}");
            if found.contains_key(&guest) {
                continue;
            }
            let from = search.iter().map(|d| d.join(lib)).find(|p| p.exists()).ok_or_else(|| {
                GuestError::build(
                    Profile::Tiny,
                    step,
                    format!(
                        "{} needs {lib}, which neither the downloaded packages nor the host provide; install the Debian package that has it",
                        file.display()
                    ),
                )
            })?;
            found.insert(guest, from.clone());
            todo.push(from);
        }
    }
    Ok(found)
}
