//! The KVM probe boot that decides the accelerator (see [`crate::accel`]
//! for the types): it boots a VM, so it sits above [`crate::vm`], which
//! itself only needs the plain [`Accel`].

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::accel::{kvm_device, Accel, AccelChoice, AccelDecision};
use crate::cache::Cache;
use crate::guest::GuestImage;
use crate::vm::{Vm, VmConfig, VmError};

/// How long the probe waits for the agent's `kernel` phase under KVM. A
/// working KVM gets there in about a second; TCG needs several.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// Errors choosing an accelerator.
#[derive(Debug, thiserror::Error)]
pub enum AccelError {
    /// KVM was demanded but cannot be opened.
    #[error("--accel kvm was asked for, but /dev/kvm cannot be opened ({0}); use --accel tcg or auto")]
    KvmUnavailable(String),
    /// The probe VM could not even start.
    #[error("the KVM probe could not start a VM: {0}")]
    Probe(#[from] VmError),
}

#[derive(Debug, Serialize, Deserialize)]
struct ProbeRecord {
    key: String,
    decision: AccelDecision,
}

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Decides the accelerator for an image. The probe's verdict is cached per
/// (QEMU version, host kernel, guest kernel), so it costs one boot at most.
pub fn decide(choice: AccelChoice, cache: &Cache, image: &GuestImage) -> Result<AccelDecision, AccelError> {
    match choice {
        AccelChoice::Tcg => Ok(AccelDecision { accel: Accel::Tcg, reason: "--accel tcg".into() }),
        AccelChoice::Kvm => {
            kvm_device().map_err(AccelError::KvmUnavailable)?;
            Ok(AccelDecision { accel: Accel::Kvm, reason: "--accel kvm".into() })
        }
        AccelChoice::Auto => {
            if let Err(e) = kvm_device() {
                return Ok(AccelDecision { accel: Accel::Tcg, reason: format!("/dev/kvm unusable: {e}") });
            }
            let qemu = crate::vm::qemu_version().unwrap_or_default();
            let key = format!("qemu {qemu}; host {}; guest {}", host_release(), image.kernel.identity());
            let record_path = cache.root().join("kvm-probe.json");
            if let Some(record) = read_record(&record_path).filter(|r| r.key == key) {
                return Ok(record.decision);
            }
            let decision = probe_kvm(image)?;
            let record = ProbeRecord { key, decision: decision.clone() };
            if let Ok(text) = serde_json::to_string_pretty(&record) {
                let _ = std::fs::write(&record_path, text);
            }
            Ok(decision)
        }
    }
}

fn read_record(path: &Path) -> Option<ProbeRecord> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn probe_kvm(image: &GuestImage) -> Result<AccelDecision, AccelError> {
    // The default RAM is below what the debian guest needs.
    let defaults = VmConfig::default();
    let memory_mib = defaults.memory_mib.max(image.meta.min_memory_mib);
    let config = VmConfig { accel: Accel::Kvm, memory_mib, ..defaults };
    let vm = match Vm::start(image, &config) {
        Ok(vm) => vm,
        Err(VmError::Exited { stderr, .. }) => {
            return Ok(AccelDecision { accel: Accel::Tcg, reason: format!("KVM probe: QEMU refused KVM: {stderr}") })
        }
        Err(e) => return Err(e.into()),
    };
    let decision = match vm.wait_phase("kernel", PROBE_TIMEOUT) {
        Ok(p) => AccelDecision { accel: Accel::Kvm, reason: format!("KVM probe booted to init in {:.2} s", p.at_s) },
        Err(_) => AccelDecision {
            accel: Accel::Tcg,
            reason: format!("KVM probe: the guest did not reach init within {} s under KVM", PROBE_TIMEOUT.as_secs()),
        },
    };
    vm.kill();
    Ok(decision)
}
