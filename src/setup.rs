//! Getting a guest ready: its kernel resolved and fetched, its image built
//! or checked, the accelerator chosen; and the kernel model (symbols,
//! subsystems, code bytes) every fault command needs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use injector::image::{KernelImage, LoadOptions};
use injector::KernelCode;
use recovery_sut::kernel::lock::{self, KernelLock, LockedKernel};
use recovery_sut::{
    accel_probe, guest, kernel, AccelChoice, AccelDecision, Cache, GuestImage, Kernel, KernelChoice, Profile,
};

/// The kernel lock in use: `$KFI_KERNEL_LOCK`, else this checkout's `kernel.lock`.
pub fn kernel_lock_path() -> PathBuf {
    lock::lock_path(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/kernel.lock")))
}

/// The kernel lock in use, parsed.
pub fn kernel_lock() -> Result<KernelLock> {
    Ok(KernelLock::load(&kernel_lock_path())?)
}

/// The locked kernel `release` names (an experiment file's `[guest]
/// kernel`), or the lock's default.
pub fn locked_kernel(release: Option<&str>) -> Result<LockedKernel> {
    Ok(kernel_lock()?.select(release)?)
}

/// `kfi kernel fetch`: the default locked kernel in the cache (unpacked
/// again with `force`; with `debug` its debug vmlinux too).
pub fn fetch_kernel(cache: &Cache, debug: bool, force: bool, step: &dyn Fn(&str)) -> Result<Kernel> {
    let locked = locked_kernel(None)?;
    if force {
        kernel::forget(cache, &locked)?;
    }
    let k = kernel::resolve(cache, &KernelChoice::Locked(locked), step)?;
    Ok(if debug { kernel::fetch_debug(cache, &k, step)? } else { k })
}

/// `kfi kernel fetch --from FILE`: a local `.deb` the lock names, put in
/// the deb cache; says which package it is.
pub fn import_kernel_deb(cache: &Cache, file: &Path) -> Result<String> {
    let (k, deb) = kernel::import_deb(cache, &kernel_lock()?, file)?;
    Ok(format!("{} is {} of kernel {}: cached, `kfi kernel fetch` will use it", file.display(), deb.apt_name(), k))
}

/// `kfi kernel lock --update`: locks what `linux-image-amd64` points at
/// now as the new default.
pub fn update_kernel_lock(cache: &Cache, step: &dyn Fn(&str)) -> Result<KernelLock> {
    Ok(kernel::lock_current(cache, &kernel_lock_path(), step)?)
}

/// `kfi kernel lock --add RELEASE`: locks another release (a kernel to
/// update to) beside the default.
pub fn add_to_kernel_lock(cache: &Cache, release: &str, step: &dyn Fn(&str)) -> Result<KernelLock> {
    Ok(kernel::lock_release(cache, &kernel_lock_path(), release, step)?)
}

/// A kernel lock, as `kfi kernel lock` prints it.
pub fn describe_lock(lock: &KernelLock) -> String {
    let mut out = format!("kernel lock {} (default {})", lock.path().display(), lock.default_release());
    for k in lock.kernels() {
        for deb in [k.image(), k.debug()] {
            out += &format!("\n  {:<16} {} sha256 {}", k.release(), deb.apt_name(), deb.sha256());
        }
    }
    out
}

/// A fetched kernel, as `kfi kernel fetch` prints it.
pub fn describe_kernel(k: &Kernel) -> String {
    let names: Vec<&str> = k.modules.iter().map(|m| m.0.as_str()).collect();
    let mut out = format!("kernel {}\n  vmlinuz     {}", k.describe(), k.vmlinuz.display());
    out += &format!("\n  modules     {} ({})", names.len(), names.join(" "));
    if let (Some(v), Some(m)) = (&k.vmlinux, &k.system_map) {
        out += &format!("\n  vmlinux     {}\n  System.map  {}", v.display(), m.display());
    }
    out
}

/// A guest ready to start: its image, kernel, accelerator and RAM size.
pub struct Prepared {
    /// The profile.
    pub profile: Profile,
    /// The kernel it boots.
    pub kernel: Kernel,
    /// The built image.
    pub image: GuestImage,
    /// The accelerator and why.
    pub decision: AccelDecision,
    /// Guest RAM, MiB.
    pub memory_mib: u32,
}

/// The RAM a profile gets unless told otherwise.
pub fn default_memory_mib(profile: Profile) -> u32 {
    match profile {
        Profile::Tiny => 256,
        Profile::Debian => 1024,
    }
}

/// Resolves the kernel, builds the image if needed and picks the
/// accelerator, reporting each step.
pub fn prepare_guest(
    cache: &Cache,
    profile: Profile,
    kernel_choice: &KernelChoice,
    accel_choice: AccelChoice,
    memory: Option<u32>,
    step: &dyn Fn(&str),
) -> Result<Prepared> {
    let kernel = kernel::resolve(cache, kernel_choice, step)?;
    let image = guest::ensure(cache, &guest_recipe(profile), &kernel, step)?;
    if accel_choice == AccelChoice::Auto {
        step("choosing the accelerator (the first KVM probe boot takes up to 15 s)");
    }
    let decision = accel_probe::decide(accel_choice, cache, &image)?;
    let memory_mib = memory.unwrap_or(default_memory_mib(profile));
    Ok(Prepared { profile, kernel, image, decision, memory_mib })
}

/// Like [`prepare_guest`], for a kernel update: the image boots
/// `kernel_choice` and carries the locked kernel `to` (its modules, and
/// what a kexec into it needs), built on first use.
pub fn prepare_updatable_guest(
    cache: &Cache,
    profile: Profile,
    kernel_choice: &KernelChoice,
    to: &str,
    accel_choice: AccelChoice,
    memory: Option<u32>,
    step: &dyn Fn(&str),
) -> Result<Prepared> {
    let kernel = kernel::resolve(cache, kernel_choice, step)?;
    let next = kernel::resolve(cache, &KernelChoice::Locked(locked_kernel(Some(to))?), step)
        .with_context(|| format!("fetching {to}, the kernel to update to"))?;
    let image = guest::ensure_updatable(cache, &guest_recipe(profile), &kernel, &next, step)?;
    if accel_choice == AccelChoice::Auto {
        step("choosing the accelerator (the first KVM probe boot takes up to 15 s)");
    }
    let decision = accel_probe::decide(accel_choice, cache, &image)?;
    let memory_mib = memory.unwrap_or(default_memory_mib(profile));
    Ok(Prepared { profile, kernel, image, decision, memory_mib })
}

/// What `profile`'s image is built from: the one place that hands the
/// workloads' guest side (the RUBiS site and its data) to the image
/// builder, for every command that builds or opens an image.
pub fn guest_recipe(profile: Profile) -> guest::Recipe {
    match profile {
        Profile::Tiny => guest::Recipe::Tiny,
        Profile::Debian => {
            let site = workloads::rubis::guest_site();
            guest::Recipe::Debian(guest::ServiceSite {
                files: site.files.into_iter().map(|(path, data, mode)| guest::SiteFile { path, data, mode }).collect(),
                database_sql: site.database_sql,
            })
        }
    }
}

/// The guest kernel as the injector sees it.
pub struct KernelModel {
    /// The kernel that boots.
    pub kernel: Kernel,
    /// Symbols, sections, subsystems.
    pub image: KernelImage,
    /// Code bytes and boot-time patch sites.
    pub code: KernelCode,
    /// The debug vmlinux (DWARF for propagation tracing).
    pub vmlinux: PathBuf,
}

/// Resolves the kernel, fetches its debug vmlinux (once; cached) and loads
/// its symbol index and code.
pub fn load_kernel_model(cache: &Cache, choice: &KernelChoice, step: &dyn Fn(&str)) -> Result<KernelModel> {
    let k = kernel::resolve(cache, choice, step)?;
    step("loading the debug vmlinux (the first fetch downloads about 850 MB)");
    let debug = kernel::fetch_debug(cache, &k, step).context("fetching the debug vmlinux for symbols")?;
    let vmlinux = debug.vmlinux.clone().context("the debug kernel has no vmlinux: pass --vmlinux with --kernel")?;
    step("loading the kernel symbol index (built once, seconds)");
    let (image, _) = KernelImage::load_with(&vmlinux, &LoadOptions::default())
        .with_context(|| format!("loading the symbols of {}", vmlinux.display()))?;
    let code = KernelCode::open(&vmlinux).with_context(|| format!("reading the code of {}", vmlinux.display()))?;
    Ok(KernelModel { kernel: k, image, code, vmlinux })
}

/// Waits until `vm` serves a correct index page (then, briefly, for the
/// agent's `services-ready`), calling `on_phase` with each boot phase as
/// it arrives; returns the time to the first correct answer. `stop` ends
/// the wait early (an error: the guest was not ready).
pub fn wait_ready(
    vm: &recovery_sut::Vm,
    timeout: std::time::Duration,
    stop: &std::sync::atomic::AtomicBool,
    on_phase: &mut dyn FnMut(&recovery_sut::agent::PhaseEvent),
) -> Result<std::time::Duration> {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + timeout;
    let mut shown = 0;
    let mut show_phases = |on_phase: &mut dyn FnMut(&recovery_sut::agent::PhaseEvent)| {
        let phases = vm.agent().phases();
        phases[shown..].iter().for_each(&mut *on_phase);
        shown = phases.len();
    };
    // Phases are reported as they arrive; the readiness verdict is the
    // HTTP probe's.
    let http = loop {
        show_phases(on_phase);
        if stop.load(Ordering::SeqCst) {
            anyhow::bail!("interrupted before the guest was ready");
        }
        match vm.wait_http(Duration::from_millis(200)) {
            Ok(at) => break at,
            Err(recovery_sut::VmError::HttpTimeout { last, console, .. }) if Instant::now() >= deadline => {
                anyhow::bail!(
                    "the {} guest gave no correct HTTP answer within {timeout:?} (last attempt: {last}); console log: {}",
                    vm.image().profile(),
                    console.display()
                )
            }
            Err(recovery_sut::VmError::HttpTimeout { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    };
    // The agent reports services-ready right after its own local check,
    // which can reach the host a moment after the first correct answer.
    // (In debian, Apache answers before MariaDB is up.)
    if let Err(e) =
        vm.wait_phase("services-ready", deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(5)))
    {
        tracing::warn!("{e}");
    }
    show_phases(on_phase);
    Ok(http)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::spec::Campaign;

    const FILE: &str = "name = \"k\"\nseed = 1\n\n[guest]\nprofile = \"tiny\"\nkernel = \"6.1.0-56-amd64\"\n\n\
                        [workload]\nkind = \"apache\"\n\n[[inject]]\ncrash = \"sysrq\"\n\n[recovery]\nstrategies = [\"full-reboot\"]\n";

    #[test]
    fn an_experiment_file_names_a_locked_kernel() {
        let c = Campaign::parse(Path::new("exp.toml"), FILE).unwrap();
        let release = c.file.guest.kernel.as_deref();
        assert_eq!(locked_kernel(release).unwrap().release(), "6.1.0-56-amd64");
        let other = FILE.replace("6.1.0-56-amd64", "6.12.0-1-amd64");
        let c = Campaign::parse(Path::new("exp.toml"), &other).unwrap();
        let e = locked_kernel(c.file.guest.kernel.as_deref()).unwrap_err().to_string();
        assert!(e.contains("6.12.0-1-amd64 is not in the kernel lock") && e.contains("locks: 6.1.0-56-amd64"), "{e}");
        assert!(e.contains("kernel.lock") && e.contains("kfi kernel lock --update"), "{e}");
    }

    #[test]
    fn the_default_is_the_lock_default() {
        assert_eq!(locked_kernel(None).unwrap().release(), kernel_lock().unwrap().default_release());
    }
}
