//! Guest images: the profiles kfi can boot, how each is built into the
//! cache, and how a built image is found and checked again.

mod debian;
pub mod docset;
pub mod initramfs;
mod kexec;
mod site;
mod tiny;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cache::{Cache, CacheError, Manifest};
use crate::kernel::{Kernel, KernelError};
use crate::tools::ToolError;
pub use docset::{Doc, DocSet};
pub use site::{ServiceSite, SiteFile};

/// Bumped whenever a change to the build code changes what an image holds
/// without changing any of the embedded scripts.
///
/// 2: the document set is drawn through ChaCha8's `next_u64` alone.
const RECIPE_VERSION: u32 = 2;

/// The initramfs of a kexec-reboot boot, for profiles that have one.
const KEXEC_INITRAMFS: &str = "initramfs-kexec.cpio";

/// The initramfs a guest updated to its image's second kernel boots (every
/// update strategy boots the new kernel with it).
const UPDATE_NEXT_INITRAMFS: &str = "initramfs-next.cpio";

/// The guest agent, shared by every profile.
pub(crate) const AGENT_SH: &str = include_str!("../../guest-files/agent.sh");

/// Seed and size of the document set every profile serves.
pub(crate) const DOCSET_SEED: u64 = 1;
pub(crate) const DOCSET_COUNT: usize = 200;

/// A kind of guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Busybox initramfs with busybox httpd: boots in seconds, for tests
    /// and quick campaigns.
    Tiny,
    /// Debian bookworm with systemd, Apache, PHP and MariaDB on an ext4
    /// root, for the realistic experiments.
    Debian,
}

impl Profile {
    /// Every profile.
    pub const ALL: [Profile; 2] = [Profile::Tiny, Profile::Debian];

    /// The profile's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Tiny => "tiny",
            Profile::Debian => "debian",
        }
    }

    /// The phases the agent reports, in boot order. `data-mounted` only
    /// happens in `tiny` when a data disk is attached; `db-ready` (MariaDB
    /// serving) only in `debian`.
    pub fn phases(self) -> &'static [&'static str] {
        match self {
            Profile::Tiny => &["kernel", "userland", "data-mounted", "services-ready"],
            Profile::Debian => &["kernel", "userland", "data-mounted", "db-ready", "services-ready"],
        }
    }

    /// Where the boot holds for the phase snapshot (`kfi.hold=userland` on
    /// the kernel command line), as the profile declares it: everything
    /// that runs there is independent of the data disk, everything a phase
    /// restore starts afterwards depends on it. Its name is the phase
    /// snapshot's `phase` and goes into every campaign record.
    pub fn phase_boundary(self) -> PhaseBoundary {
        match self {
            Profile::Tiny => PhaseBoundary {
                name: "userland",
                running: "the kernel, init, the agent and busybox httpd",
                started_after: "the data disk's mount",
                admit_after: None,
            },
            // debian.rs orders kfi-data.service (the hold, then the mount)
            // after apache2.service and mariadb.service after kfi-data; a
            // unit test there checks the units against this.
            Profile::Debian => PhaseBoundary {
                name: "data-independent-services",
                running: "systemd, the agent, and Apache with PHP",
                started_after: "the data disk's mount (its journal replayed) and MariaDB (InnoDB crash recovery)",
                admit_after: Some("db-ready"),
            },
        }
    }

    /// The files the guest agent's safety monitor watches (written to
    /// `/etc/kfi/watched` in the image): what the snapshotted service
    /// depends on, so that a change to one invalidates the snapshots.
    /// A directory stands for its entries: renaming a file in it changes
    /// the directory's mtime.
    pub fn watched_files(self) -> &'static [&'static str] {
        match self {
            // The tiny guest's root is the initramfs: busybox is every
            // daemon, /www what httpd serves.
            Profile::Tiny => &["/bin/busybox", "/etc/kfi/agent", "/www", "/www/index.html"],
            Profile::Debian => &[
                "/usr/sbin/apache2",
                "/etc/apache2/apache2.conf",
                "/etc/apache2/sites-enabled",
                "/etc/apache2/mods-enabled",
                "/etc/php/8.2/apache2/php.ini",
                "/usr/sbin/mariadbd",
                "/etc/mysql/mariadb.conf.d",
                "/var/www/html",
                "/var/www/html/index.html",
                "/usr/local/sbin/kfi-agent",
            ],
        }
    }

    /// The content of the image's `/etc/kfi/watched`.
    pub(crate) fn watched_list(self) -> String {
        self.watched_files().iter().map(|f| format!("{f}\n")).collect()
    }
}

/// A profile's phase-snapshot boundary (see [`Profile::phase_boundary`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PhaseBoundary {
    /// Its name: the phase snapshot's `phase`, a record's `phase_boundary`.
    pub name: &'static str,
    /// What already runs at the boundary.
    pub running: &'static str,
    /// What a phase restore starts after it: what depends on the data disk.
    pub started_after: &'static str,
    /// The agent phase after which a recovery that starts those services
    /// (a phase restore, a reboot) forwards clients to the guest again:
    /// debian's Apache runs at the boundary, and requests it would take
    /// while MariaDB starts only wait for the database and take the one
    /// vCPU from its start. `None`: forwarded as soon as the guest runs.
    pub admit_after: Option<&'static str>,
}

impl PhaseBoundary {
    /// The phase after which clients that need `need` are forwarded again
    /// by a recovery or update that starts the data-dependent services;
    /// `None`: as soon as the guest runs.
    pub fn admit_for(&self, need: ClientsNeed) -> Option<&'static str> {
        match need {
            ClientsNeed::DataServices => self.admit_after,
            ClientsNeed::BoundaryServices => None,
        }
    }
}

/// What the clients' requests need of the guest, which decides when they
/// are forwarded again after a recovery or update that starts the
/// data-dependent services ([`PhaseBoundary::admit_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientsNeed {
    /// The data-dependent services too (RUBiS's pages need MariaDB): held
    /// at the host until the profile's `admit_after` phase. The default:
    /// a caller that does not know its clients is not answered with
    /// database errors.
    #[default]
    DataServices,
    /// Only what already runs at the phase boundary (static pages, which
    /// the web server answers without the database): forwarded at once.
    BoundaryServices,
}

/// An image to build or open: its profile and what the caller hands in for
/// it. Only the debian image serves a site, so only it takes one; the
/// tiny image cannot depend on one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipe {
    /// The busybox guest: nothing from the caller.
    Tiny,
    /// The Debian guest serving `ServiceSite` (installed under
    /// `/var/www/html`, its database loaded onto the data disk).
    Debian(ServiceSite),
}

impl Recipe {
    /// The profile this recipe builds.
    pub fn profile(&self) -> Profile {
        match self {
            Recipe::Tiny => Profile::Tiny,
            Recipe::Debian(_) => Profile::Debian,
        }
    }

    /// Hash of everything that goes into the image on `kernel`: kfi's own
    /// scripts and build code, the kernel, and the caller's inputs byte for
    /// byte. Images are stored under it.
    pub fn hash(&self, kernel: &Kernel) -> String {
        self.hash_with(kernel, None)
    }

    /// [`Recipe::hash`] of an image that also carries `update_to`, a
    /// second kernel to update to.
    pub fn hash_with(&self, kernel: &Kernel, update_to: Option<&Kernel>) -> String {
        let profile = self.profile();
        let mut h = Sha256::new();
        h.update(format!("recipe {RECIPE_VERSION}\nprofile {profile}\nkernel {}\n", kernel.identity()));
        for (name, _) in &kernel.modules {
            h.update(format!("module {name}\n"));
        }
        if let Some(next) = update_to {
            h.update(format!("update-to {} {}\n", next.identity(), UPDATE_NEXT_INITRAMFS));
            for (name, _) in &next.modules {
                h.update(format!("module {name}\n"));
            }
        }
        h.update(format!("docset {DOCSET_SEED} {DOCSET_COUNT}\n"));
        h.update(AGENT_SH);
        h.update(profile.watched_list());
        match self {
            Recipe::Tiny => {
                h.update(tiny::RECIPE);
                h.update(format!("kexec {KEXEC_INITRAMFS} {}\n", kexec::PACKAGES.join(" ")));
            }
            Recipe::Debian(site) => {
                h.update(debian::RECIPE);
                site.hash_into(&mut h);
            }
        }
        hex::encode(h.finalize())
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Profile {
    type Err = GuestError;
    fn from_str(s: &str) -> Result<Self, GuestError> {
        Profile::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| GuestError::UnknownProfile(s.to_string()))
    }
}

/// Errors while building or opening guest images.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// No such profile.
    #[error("unknown guest profile `{0}`: the profiles are `tiny` and `debian`")]
    UnknownProfile(String),
    /// The image was never built.
    #[error("the {profile} guest image for kernel {kernel} is not built: run `kfi guest build {profile}`")]
    NotBuilt {
        /// Profile.
        profile: Profile,
        /// Kernel release.
        kernel: String,
    },
    /// The kernel could not be had.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A host program failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// A build step failed.
    #[error("building the {profile} guest failed while {step}: {detail}")]
    Build {
        /// Profile.
        profile: Profile,
        /// What it was doing.
        step: &'static str,
        /// Why it failed.
        detail: String,
    },
}

impl GuestError {
    pub(crate) fn build(profile: Profile, step: &'static str, detail: impl fmt::Display) -> Self {
        GuestError::Build { profile, step, detail: detail.to_string() }
    }
}

/// What a built image records about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageMeta {
    /// Profile.
    pub profile: Profile,
    /// Hash of everything that went into the image.
    pub recipe: String,
    /// Kernel release the image's modules belong to.
    pub kernel_release: String,
    /// Kernel identity (package and version, or hash).
    pub kernel_identity: String,
    /// When it was built (seconds since the epoch).
    pub built_unix: u64,
    /// How long the build took.
    pub build_seconds: f64,
    /// Extra kernel command line this profile needs.
    pub cmdline: String,
    /// Root disk image, if the profile boots from one.
    pub rootfs: Option<String>,
    /// Minimum guest RAM in MiB.
    pub min_memory_mib: u32,
    /// The second kernel the image carries, to update to (release and
    /// identity); `None` for an image of one kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_to: Option<(String, String)>,
}

/// The `<package> <version>` list of a debian image, in its directory.
pub const PACKAGES_FILE: &str = "packages.txt";

/// A built, checked guest image and the kernel it boots.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// Directory in the cache.
    pub dir: PathBuf,
    /// Its metadata.
    pub meta: ImageMeta,
    /// The kernel.
    pub kernel: Kernel,
    /// The document set its web server serves.
    pub docs: DocSet,
    /// The second kernel the image carries, to update to.
    pub update_to: Option<Kernel>,
    /// Whether `kernel` is that second kernel: the image as a guest
    /// updated to it boots ([`GuestImage::updated`]).
    pub updated: bool,
}

impl GuestImage {
    /// The packages debootstrap installed (`<package> <version>` lines),
    /// for debian images built since kfi records them.
    pub fn packages(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join(PACKAGES_FILE)).ok()
    }

    /// Profile.
    pub fn profile(&self) -> Profile {
        self.meta.profile
    }
    /// The initramfs `kernel` boots.
    pub fn initramfs(&self) -> PathBuf {
        self.dir.join(if self.updated { UPDATE_NEXT_INITRAMFS } else { "initramfs.cpio" })
    }
    /// The image as a guest updated to its second kernel boots it: that
    /// kernel with the initramfs that carries its modules. `None` for an
    /// image of one kernel.
    pub fn updated(&self) -> Option<GuestImage> {
        let next = self.update_to.clone()?;
        Some(GuestImage { kernel: next, update_to: None, updated: true, ..self.clone() })
    }
    /// The initramfs that loads a crash kernel at boot (kexec-reboot), for
    /// profiles that have one.
    pub fn kexec_initramfs(&self) -> Option<PathBuf> {
        let path = self.dir.join(KEXEC_INITRAMFS);
        path.exists().then_some(path)
    }
    /// Whether the guest can load a crash kernel (kexec-reboot): tiny
    /// boots its kexec initramfs for that, debian keeps kexec, the kernel
    /// and its initramfs on its root disk.
    pub fn can_kexec(&self) -> bool {
        self.kexec_initramfs().is_some() || self.profile() == Profile::Debian
    }
    /// The root disk, for profiles that have one.
    pub fn rootfs(&self) -> Option<PathBuf> {
        self.meta.rootfs.as_ref().map(|r| self.dir.join(r))
    }
    /// The pristine data disk every VM gets a copy-on-write overlay of.
    pub fn data_template(&self) -> PathBuf {
        self.dir.join("data.img")
    }
    /// Total size of the image's files.
    pub fn size_bytes(&self) -> u64 {
        Manifest::<ImageMeta>::load(&self.dir)
            .ok()
            .flatten()
            .map(|m| m.files.values().map(|f| f.size).sum())
            .unwrap_or(0)
    }
}

/// The least guest RAM `profile` runs its services in.
pub fn min_memory_mib(profile: Profile) -> u32 {
    match profile {
        Profile::Tiny => tiny::MIN_MEMORY_MIB,
        Profile::Debian => debian::MIN_MEMORY_MIB,
    }
}

fn image_dir(
    cache: &Cache,
    recipe: &Recipe,
    kernel: &Kernel,
    update_to: Option<&Kernel>,
) -> Result<PathBuf, CacheError> {
    let hash = recipe.hash_with(kernel, update_to);
    // The second kernel in the name keeps the image of one kernel from
    // being pruned as an older recipe (and the other way round).
    let kernels = match update_to {
        Some(next) => format!("{}-to-{}", kernel.release, next.release),
        None => kernel.release.clone(),
    };
    Ok(cache.subdir("guests")?.join(format!("{}-{kernels}-{}", recipe.profile(), &hash[..12])))
}

fn fix_command(profile: Profile) -> String {
    format!("kfi guest build {profile} --force")
}

/// Opens a built image, checking it against its manifest.
pub fn open(cache: &Cache, recipe: &Recipe, kernel: &Kernel) -> Result<GuestImage, GuestError> {
    open_with(cache, recipe, kernel, None)
}

fn open_with(
    cache: &Cache,
    recipe: &Recipe,
    kernel: &Kernel,
    update_to: Option<&Kernel>,
) -> Result<GuestImage, GuestError> {
    let profile = recipe.profile();
    let dir = image_dir(cache, recipe, kernel, update_to)?;
    let Some(manifest) = Manifest::<ImageMeta>::load(&dir)? else {
        return Err(GuestError::NotBuilt { profile, kernel: kernel.release.clone() });
    };
    manifest.verify(&dir, &format!("{profile} guest image"), &fix_command(profile))?;
    let docs_path = dir.join("docs.json");
    let docs_text = std::fs::read_to_string(&docs_path).map_err(|e| CacheError::io("read", &docs_path, e))?;
    let docs = serde_json::from_str(&docs_text).map_err(|source| CacheError::Manifest { path: docs_path, source })?;
    Ok(GuestImage {
        dir,
        meta: manifest.meta,
        kernel: kernel.clone(),
        docs,
        update_to: update_to.cloned(),
        updated: false,
    })
}

/// Checks every file of a built image by full hash.
pub fn verify_full(image: &GuestImage) -> Result<(), GuestError> {
    let manifest = Manifest::<ImageMeta>::load(&image.dir)?
        .ok_or_else(|| GuestError::NotBuilt { profile: image.profile(), kernel: image.kernel.release.clone() })?;
    manifest.verify_full(&image.dir, &format!("{} guest image", image.profile()), &fix_command(image.profile()))?;
    Ok(())
}

/// Builds an image (even if one exists when `force`), atomically.
pub fn build(
    cache: &Cache,
    recipe: &Recipe,
    kernel: &Kernel,
    force: bool,
    progress: &dyn Fn(&str),
) -> Result<GuestImage, GuestError> {
    build_with(cache, recipe, kernel, None, force, progress)
}

fn build_with(
    cache: &Cache,
    recipe: &Recipe,
    kernel: &Kernel,
    update_to: Option<&Kernel>,
    force: bool,
    progress: &dyn Fn(&str),
) -> Result<GuestImage, GuestError> {
    let profile = recipe.profile();
    if let Some(next) = update_to {
        check_update_target(profile, kernel, next)?;
    }
    let dir = image_dir(cache, recipe, kernel, update_to)?;
    // Under the lock, a builder that waited finds the other's result.
    let _lock = crate::cache::BuildLock::acquire(&dir)?;
    if !force {
        match open_with(cache, recipe, kernel, update_to) {
            Err(GuestError::NotBuilt { .. }) => {}
            other => return other,
        }
    }
    let started = Instant::now();
    let partial = crate::cache::PartialDir::begin(&dir)?;
    let out = partial.path();
    let (docs, files) = docset::generate(DOCSET_SEED, DOCSET_COUNT);
    let spec = match recipe {
        Recipe::Tiny => tiny::build(cache, out, kernel, update_to, &files, progress)?,
        Recipe::Debian(site) => debian::build(cache, out, kernel, update_to, &files, site, progress)?,
    };
    let docs_path = out.join("docs.json");
    let docs_json =
        serde_json::to_string_pretty(&docs).map_err(|e| GuestError::build(profile, "writing docs.json", e))?;
    std::fs::write(&docs_path, docs_json).map_err(|e| CacheError::io("write", &docs_path, e))?;
    let meta = ImageMeta {
        profile,
        recipe: recipe.hash_with(kernel, update_to),
        kernel_release: kernel.release.clone(),
        kernel_identity: kernel.identity(),
        built_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        build_seconds: started.elapsed().as_secs_f64(),
        cmdline: spec.cmdline,
        rootfs: spec.rootfs,
        min_memory_mib: spec.min_memory_mib,
        update_to: update_to.map(|k| (k.release.clone(), k.identity())),
    };
    let rootfs = meta.rootfs.clone();
    let mut names = vec!["initramfs.cpio", "data.img", "docs.json"];
    if let Some(root) = &rootfs {
        names.push(root.as_str());
    }
    names.extend(spec.extra_files.iter().map(String::as_str));
    progress("hashing the image");
    Manifest::build(out, meta, &names)?.store(out)?;
    partial.commit()?;
    prune_other_recipes(&dir);
    open_with(cache, recipe, kernel, update_to)
}

/// Removes images of the same profile and kernel built from other recipes
/// (older kfi versions): nothing opens them any more, and a debian image
/// is half a gigabyte.
fn prune_other_recipes(current: &Path) {
    let (Some(parent), Some(name)) = (current.parent(), current.file_name().and_then(|n| n.to_str())) else { return };
    let Some((stem, _recipe)) = name.rsplit_once('-') else { return };
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let other = entry.file_name().to_string_lossy().into_owned();
        let Some(other_recipe) = other.strip_prefix(stem).and_then(|r| r.strip_prefix('-')) else { continue };
        if other != name && other_recipe.len() == 12 && other_recipe.chars().all(|c| c.is_ascii_hexdigit()) {
            tracing::info!(image = %other, "removing an image built from an older recipe");
            let _ = std::fs::remove_dir_all(entry.path());
            let _ = std::fs::remove_file(parent.join(format!("{other}.lock")));
        }
    }
}

/// Opens the image, building it first if it was never built.
pub fn ensure(
    cache: &Cache,
    recipe: &Recipe,
    kernel: &Kernel,
    progress: &dyn Fn(&str),
) -> Result<GuestImage, GuestError> {
    match open(cache, recipe, kernel) {
        Err(GuestError::NotBuilt { .. }) => {
            progress(&format!("building the {} guest image (first use)", recipe.profile()));
            build(cache, recipe, kernel, false, progress)
        }
        other => other,
    }
}

/// Refuses a second kernel an image cannot carry.
fn check_update_target(profile: Profile, kernel: &Kernel, next: &Kernel) -> Result<(), GuestError> {
    if next.release == kernel.release {
        return Err(GuestError::build(
            profile,
            "choosing the kernel to update to",
            format!("{} is the kernel the guest boots already; name another locked release", next.release),
        ));
    }
    if profile == Profile::Debian && next.locked.is_none() {
        return Err(GuestError::build(
            profile,
            "choosing the kernel to update to",
            format!(
                "{} is no locked Debian kernel; the debian image installs the kernel to update to from its package",
                next.release
            ),
        ));
    }
    Ok(())
}

/// Opens the image that boots `kernel` and carries `update_to`, a second
/// kernel to update to, building it first if it was never built.
pub fn ensure_updatable(
    cache: &Cache,
    recipe: &Recipe,
    kernel: &Kernel,
    update_to: &Kernel,
    progress: &dyn Fn(&str),
) -> Result<GuestImage, GuestError> {
    check_update_target(recipe.profile(), kernel, update_to)?;
    match open_with(cache, recipe, kernel, Some(update_to)) {
        Err(GuestError::NotBuilt { .. }) => {
            progress(&format!(
                "building the {} guest image that can update to {} (first use)",
                recipe.profile(),
                update_to.release
            ));
            build_with(cache, recipe, kernel, Some(update_to), false, progress)
        }
        other => other,
    }
}

/// What a profile's builder hands back besides its files.
pub(crate) struct BuildSpec {
    pub cmdline: String,
    pub rootfs: Option<String>,
    pub min_memory_mib: u32,
    /// Further files of the image, for its manifest.
    pub extra_files: Vec<String>,
}

/// Makes an ext4 image of `size_mib` from a directory, without mounting.
pub(crate) fn make_ext4(image: &Path, from: &Path, label: &str, size_mib: u64) -> Result<(), ToolError> {
    crate::tools::MKE2FS
        .run(
            [
                "-q".as_ref(),
                "-F".as_ref(),
                "-t".as_ref(),
                "ext4".as_ref(),
                "-L".as_ref(),
                label.as_ref(),
                // No background inode-table and journal initialisation after
                // mount: those writes would make an untouched disk look
                // written to, and invalidate snapshots for nothing.
                "-E".as_ref(),
                "lazy_itable_init=0,lazy_journal_init=0".as_ref(),
                "-d".as_ref(),
                from.as_os_str(),
                image.as_os_str(),
                format!("{size_mib}M").as_ref(),
            ],
            None,
        )
        .map(|_| ())
}

/// Writes the data disk template: an ext4 filesystem with a marker file.
pub(crate) fn make_data_disk(out: &Path, size_mib: u64) -> Result<(), GuestError> {
    let content = tempfile::tempdir().map_err(|e| CacheError::io("create temp dir", std::env::temp_dir(), e))?;
    let marker = content.path().join("KFI-DATA-DISK");
    std::fs::write(&marker, b"kfi data disk: writes here survive every recovery strategy\n")
        .map_err(|e| CacheError::io("write", &marker, e))?;
    make_ext4(&out.join("data.img"), content.path(), "kfi-data", size_mib)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clients_that_need_the_database_wait_for_it() {
        let debian = Profile::Debian.phase_boundary();
        assert_eq!(debian.admit_for(ClientsNeed::DataServices), Some("db-ready"));
        assert_eq!(debian.admit_for(ClientsNeed::BoundaryServices), None);
        assert!(Profile::Debian.phases().contains(&"db-ready"));
        for need in [ClientsNeed::DataServices, ClientsNeed::BoundaryServices] {
            assert_eq!(Profile::Tiny.phase_boundary().admit_for(need), None, "tiny has no database");
        }
        assert_eq!(ClientsNeed::default(), ClientsNeed::DataServices, "unknown clients are held");
    }

    #[test]
    fn profile_names_round_trip_and_unknown_is_named() {
        for p in Profile::ALL {
            assert_eq!(p.name().parse::<Profile>().unwrap(), p);
        }
        let err = "ubuntu".parse::<Profile>().unwrap_err().to_string();
        assert!(err.contains("`ubuntu`") && err.contains("tiny"), "{err}");
    }

    fn kernel() -> Kernel {
        Kernel {
            release: "6.1.0-1-amd64".into(),
            origin: crate::kernel::KernelOrigin::User { sha256: "ab".repeat(32) },
            vmlinuz: PathBuf::from("/vmlinuz"),
            boot_image: PathBuf::from("/vmlinux"),
            modules: vec![("virtio_blk".into(), PathBuf::from("/virtio_blk.ko"))],
            vmlinux: None,
            system_map: None,
            locked: None,
        }
    }

    #[test]
    fn the_debian_recipe_hashes_the_site_it_is_given() {
        let k = kernel();
        let site = ServiceSite {
            files: vec![SiteFile { path: "shop/Home.php".into(), data: b"<?php".to_vec(), mode: 0o644 }],
            database_sql: "CREATE DATABASE shop;".into(),
        };
        let debian = Recipe::Debian(site.clone());
        assert_eq!(debian.profile(), Profile::Debian);
        assert_eq!(debian.hash(&k), Recipe::Debian(site.clone()).hash(&k));
        let mut page = site.clone();
        page.files[0].data.push(b'\n');
        let mut sql = site.clone();
        sql.database_sql.push(' ');
        let empty = ServiceSite { files: Vec::new(), database_sql: String::new() };
        for other in [page, sql, empty] {
            assert_ne!(Recipe::Debian(other).hash(&k), debian.hash(&k));
        }
        assert_ne!(Recipe::Tiny.hash(&k), debian.hash(&k));
        assert_eq!(Recipe::Tiny.profile(), Profile::Tiny);
    }
}
