//! Getting a guest ready: its kernel resolved and fetched, its image built
//! or checked, the accelerator chosen; and the kernel model (symbols,
//! subsystems, code bytes) every fault command needs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use injector::image::{KernelImage, LoadOptions};
use injector::KernelCode;
use recovery_sut::{
    accel_probe, guest, kernel, AccelChoice, AccelDecision, Cache, GuestImage, Kernel, KernelChoice, Profile,
};

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
    step("choosing the accelerator (the first KVM probe boot takes up to 15 s)");
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
