//! The accelerator a VM runs with, what the user asked for, and what was
//! chosen. TCG always works; KVM is used only when a short probe boot
//! proves it works on this host (under nested virtualisation /dev/kvm can
//! exist while guests hang after decompression).
//!
//! This module only names accelerators, so that [`crate::vm`] can use them;
//! the probe boot that decides between them starts a VM and therefore
//! lives above `vm`, in [`crate::accel_probe`].

use std::fs::OpenOptions;

use serde::{Deserialize, Serialize};

/// An accelerator QEMU runs the guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Accel {
    /// Software emulation.
    Tcg,
    /// Hardware virtualisation.
    Kvm,
}

impl Accel {
    /// Name as QEMU and reports spell it.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }

    /// The CPU model to use with it.
    pub fn cpu_model(self) -> &'static str {
        match self {
            Accel::Tcg => "max",
            Accel::Kvm => "host",
        }
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// KVM if the probe passes, else TCG.
    #[default]
    Auto,
    /// Always TCG.
    Tcg,
    /// KVM, without probing; an error if /dev/kvm is unusable.
    Kvm,
}

/// The accelerator chosen and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccelDecision {
    /// The accelerator.
    pub accel: Accel,
    /// Why it was chosen.
    pub reason: String,
}

/// Whether /dev/kvm can be opened read-write; the error text if not.
pub fn kvm_device() -> Result<(), String> {
    OpenOptions::new().read(true).write(true).open("/dev/kvm").map(drop).map_err(|e| e.to_string())
}
