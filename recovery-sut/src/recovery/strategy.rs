//! The recovery strategies and the VM configuration each one needs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::guest::{min_memory_mib, Profile};
use crate::vm::{VmConfig, CRASH_KERNEL_HOST_MIB};

/// How the service is brought back after a kernel failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Reset the VM and boot firmware, kernel, init and services from
    /// scratch: the baseline the published results compare against.
    FullReboot,
    /// Restore the snapshot taken at the profile's phase boundary
    /// ([`crate::Profile::phase_boundary`]: tiny at "userland up", debian
    /// with Apache and PHP running), then mount the data disk as it is now
    /// and start what depends on it (debian: MariaDB, which recovers its
    /// tables from the disk): no stale cache can disagree with the disk.
    PhaseRestore,
    /// Restore the snapshot taken with the services running, in a fresh
    /// QEMU on the same ports, with RAM mapped lazily. Valid only while the
    /// data disk is unchanged since the snapshot.
    ServiceRestore,
    /// The guest loaded a crash kernel once its services ran (`kexec -p`
    /// into a `crashkernel=` reservation) and a panic jumps straight into
    /// it, skipping firmware; it mounts the disks and starts the services
    /// (tiny: its init; debian: systemd). The VMM only watches. Needs a VM with
    /// [`VmConfig::crash_kernel_mib`]; the crash kernel has none of its
    /// own, so the next panic falls back to a full reboot.
    KexecReboot,
}

impl Strategy {
    /// Every strategy, baseline first.
    pub const ALL: [Strategy; 4] =
        [Strategy::FullReboot, Strategy::PhaseRestore, Strategy::ServiceRestore, Strategy::KexecReboot];

    /// Its name on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::FullReboot => "full-reboot",
            Strategy::PhaseRestore => "phase-restore",
            Strategy::ServiceRestore => "service-restore",
            Strategy::KexecReboot => "kexec-reboot",
        }
    }
}

/// The crash kernel reservation of kexec-reboot for `profile`: the tiny
/// guest's crash kernel has about 58 MiB free in 128, enough for its init
/// and services; debian's runs systemd, Apache, PHP and MariaDB (a 64 MiB
/// buffer pool), which its `min_memory_mib` of 384 is sized for.
pub fn kexec_crash_kernel_mib(profile: Profile) -> u32 {
    match profile {
        Profile::Tiny => 128,
        Profile::Debian => 448,
    }
}

impl Strategy {
    /// The VM configuration a SUT of `profile` recovering with this
    /// strategy boots with: kexec-reboot reserves a crash kernel, and
    /// enough RAM besides for the running system.
    pub fn vm_config(self, base: &VmConfig, profile: Profile) -> VmConfig {
        match self {
            Strategy::KexecReboot => {
                let crash = kexec_crash_kernel_mib(profile);
                let host = CRASH_KERNEL_HOST_MIB.max(min_memory_mib(profile));
                VmConfig {
                    crash_kernel_mib: Some(crash),
                    memory_mib: base.memory_mib.max(crash + host),
                    ..base.clone()
                }
            }
            _ => base.clone(),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown strategy name.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown recovery strategy `{0}`: the strategies are full-reboot, phase-restore, service-restore and kexec-reboot"
)]
pub struct UnknownStrategy(String);

impl FromStr for Strategy {
    type Err = UnknownStrategy;
    fn from_str(s: &str) -> Result<Self, UnknownStrategy> {
        Strategy::ALL.into_iter().find(|x| x.name() == s).ok_or_else(|| UnknownStrategy(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_names_match_their_serialized_form() {
        for s in Strategy::ALL {
            assert_eq!(s.name().parse::<Strategy>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
        }
        assert_eq!("kexec-reboot".parse::<Strategy>().unwrap(), Strategy::KexecReboot);
        let err = "warp".parse::<Strategy>().unwrap_err().to_string();
        assert!(err.contains("`warp`") && err.contains("kexec-reboot"), "{err}");
    }

    #[test]
    fn kexec_reboot_reserves_a_crash_kernel_with_room_besides() {
        let base = VmConfig { memory_mib: 256, ..VmConfig::default() };
        let kexec = Strategy::KexecReboot.vm_config(&base, Profile::Tiny);
        assert_eq!((kexec.crash_kernel_mib, kexec.memory_mib), (Some(128), 384));
        let debian = VmConfig { memory_mib: 1024, ..VmConfig::default() };
        let kexec = Strategy::KexecReboot.vm_config(&debian, Profile::Debian);
        assert_eq!((kexec.crash_kernel_mib, kexec.memory_mib), (Some(448), 1024));
        assert_eq!(Strategy::ServiceRestore.vm_config(&base, Profile::Tiny).crash_kernel_mib, None);
        assert_eq!(Strategy::FullReboot.vm_config(&base, Profile::Tiny).memory_mib, 256);
    }
}
