//! Getting a guest ready: its kernel resolved and fetched, its image built
//! or checked, the accelerator chosen; and the kernel model (symbols,
//! subsystems, code bytes) every fault command needs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use injector::image::{KernelImage, LoadOptions};
use injector::KernelCode;
use recovery_sut::{
    accel, guest, kernel, AccelChoice, AccelDecision, Cache, GuestImage, Kernel, KernelChoice, Profile,
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
    let image = guest::ensure(cache, profile, &kernel, step)?;
    step("choosing the accelerator (the first KVM probe boot takes up to 15 s)");
    let decision = accel::decide(accel_choice, cache, &image)?;
    let memory_mib = memory.unwrap_or(default_memory_mib(profile));
    Ok(Prepared { profile, kernel, image, decision, memory_mib })
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
