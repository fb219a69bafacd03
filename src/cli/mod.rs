//! The command-line layer of `kfi`: argument structs, progress display
//! and printing, one module per command family. The work is the `kfi`
//! library's.

pub mod boot;
pub mod campaign;
pub mod faults;
pub mod inject;
pub mod profile;
pub mod recover;
pub mod update;
pub mod workload;

pub use kfi::progress::{say, spinner, stepper, Progress};

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use kfi::campaign::spec::{AccelName, GuestProfile};
use kfi::setup::{prepare_guest, Prepared};
use recovery_sut::{Cache, KernelChoice};

#[derive(Args, Clone)]
pub struct KernelArgs {
    /// Boot this bzImage instead of the kernel kernel.lock pins.
    #[arg(long, value_name = "BZIMAGE")]
    pub kernel: Option<PathBuf>,
    /// The ELF vmlinux (with DWARF) matching --kernel, for the injector.
    #[arg(long, requires = "kernel")]
    pub vmlinux: Option<PathBuf>,
    /// The lib/modules/<release> tree matching --kernel (omit if the drivers are built in).
    #[arg(long, requires = "kernel")]
    pub modules: Option<PathBuf>,
}

impl KernelArgs {
    /// The kernel these arguments name (the locked default without --kernel).
    pub fn choice(&self) -> Result<KernelChoice> {
        Ok(match &self.kernel {
            None => KernelChoice::Locked(kfi::setup::locked_kernel(None)?),
            Some(k) => {
                KernelChoice::User { kernel: k.clone(), vmlinux: self.vmlinux.clone(), modules: self.modules.clone() }
            }
        })
    }
}

/// What every command that runs a guest needs: which guest, on which
/// kernel, accelerator and RAM size.
#[derive(Args)]
pub struct GuestArgs {
    /// Guest profile.
    #[arg(long, value_enum, default_value = "tiny")]
    pub guest: GuestProfile,
    /// Accelerator.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelName,
    /// Guest RAM in MiB (default: 256 for tiny, 1024 for debian).
    #[arg(long)]
    pub memory: Option<u32>,
    #[command(flatten)]
    pub kernel: KernelArgs,
}

impl GuestArgs {
    /// The guest these arguments name, ready to start.
    pub fn prepare(&self, cache: &Cache, step: &dyn Fn(&str)) -> Result<Prepared> {
        prepare_guest(cache, self.guest.into(), &self.kernel.choice()?, self.accel.into(), self.memory, step)
    }
}

/// A clap value parser for a finite, non-negative number (`--tolerance`).
pub fn non_negative(name: &'static str) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |text| match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1e6).contains(&v) => Ok(v),
        _ => Err(format!("{name}: `{text}` is not a finite number between 0 and 1e6")),
    }
}
