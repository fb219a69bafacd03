//! The one way kfi forces a crash on a running guest, for `kfi recover`,
//! `kfi sut run --crash-every` and campaign `crash = ...` experiments.
//!
//! Forcing crashes is the harness's business, not the recovery VMM's: the
//! VMM under test only sees the failure its detectors report.

use std::fmt;

use recovery_sut::Vm;
use serde::{Deserialize, Serialize};

/// A crash forced on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Crash {
    /// `echo c > /proc/sysrq-trigger` in the guest, sent through the agent:
    /// the kernel panics as if an administrator forced a crash dump.
    Sysrq,
    /// A kernel panic from outside: an NMI from the monitor with
    /// `unknown_nmi_panic` on the kernel command line (no guest helper).
    Panic,
    /// The vCPUs stop (QMP `stop`): no panic report, only the missing
    /// heartbeat tells.
    Hang,
}

/// Why a crash could not be forced.
#[derive(Debug, thiserror::Error)]
pub enum CrashError {
    /// The agent channel refused the sysrq request.
    #[error("asking the guest agent for a sysrq crash: {0}")]
    Agent(#[source] std::io::Error),
    /// QMP refused the NMI or the stop.
    #[error("{action} through QMP: {source}")]
    Qmp {
        /// What was asked.
        action: &'static str,
        /// Why it failed.
        #[source]
        source: recovery_sut::qmp::QmpError,
    },
}

impl Crash {
    /// Kernel command-line arguments the guest must boot with for this
    /// crash to work.
    pub fn kernel_args(self) -> &'static [&'static str] {
        match self {
            Crash::Panic => &["unknown_nmi_panic"],
            Crash::Sysrq | Crash::Hang => &[],
        }
    }

    /// The name experiment files and records use.
    pub fn name(self) -> &'static str {
        match self {
            Crash::Sysrq => "sysrq",
            Crash::Panic => "panic",
            Crash::Hang => "hang",
        }
    }

    /// Forces the crash on `vm` now; the failure is the VMM's to detect.
    pub fn trigger(self, vm: &mut Vm) -> Result<(), CrashError> {
        match self {
            Crash::Sysrq => vm.agent().send("sysrq c").map_err(CrashError::Agent),
            Crash::Panic => vm
                .qmp()
                .execute("inject-nmi", None)
                .map(drop)
                .map_err(|source| CrashError::Qmp { action: "injecting the NMI", source }),
            Crash::Hang => vm
                .qmp()
                .execute("stop", None)
                .map(drop)
                .map_err(|source| CrashError::Qmp { action: "stopping the vCPUs", source }),
        }
    }
}

impl fmt::Display for Crash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_serialized_form() {
        for c in [Crash::Sysrq, Crash::Panic, Crash::Hang] {
            assert_eq!(serde_json::to_value(c).ok(), Some(serde_json::Value::String(c.name().into())));
        }
        assert_eq!(Crash::Panic.kernel_args(), ["unknown_nmi_panic"]);
    }
}
