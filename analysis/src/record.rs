//! One experiment's durable record: what the campaign runner writes and
//! every table, figure and report reads.
//!
//! The types hold plain strings for fault models, outcomes and strategies
//! instead of the producing crates' enums, so that analysis reads stores
//! written by older and newer `kfi` builds alike and never needs a VM crate
//! to compile. The runner converts its typed values with their `Display`
//! (kebab-case) names, listed here as constants where analysis relies on
//! them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What an experiment came to, as stored: the injector's outcomes (its
/// `Outcome`, same kebab-case names), plus the two a campaign records
/// itself. Stored as its name, so stores of older builds read the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordedOutcome {
    /// The kernel panicked (GUEST_PANICKED or a panic in the console).
    Panic,
    /// An oops, BUG or general-protection fault that did not panic.
    Oops,
    /// No heartbeat and no service answer for the hang timeout.
    Hang,
    /// The service answered wrongly or not at all with the kernel alive.
    ServiceError,
    /// The fault ran and nothing visible happened.
    Benign,
    /// The faulty instruction or data was never reached in the window.
    NotActivated,
    /// A crash forced on purpose (sysrq, NMI), not an injected fault.
    ForcedCrash,
    /// A restore measurement that brought the service back.
    Restored,
}

impl RecordedOutcome {
    /// Every outcome, in table order.
    pub const ALL: [RecordedOutcome; 8] = [
        RecordedOutcome::ForcedCrash,
        RecordedOutcome::Panic,
        RecordedOutcome::Oops,
        RecordedOutcome::Hang,
        RecordedOutcome::ServiceError,
        RecordedOutcome::Benign,
        RecordedOutcome::NotActivated,
        RecordedOutcome::Restored,
    ];

    /// The stored (kebab-case) name.
    pub const fn name(self) -> &'static str {
        match self {
            RecordedOutcome::Panic => "panic",
            RecordedOutcome::Oops => "oops",
            RecordedOutcome::Hang => "hang",
            RecordedOutcome::ServiceError => "service-error",
            RecordedOutcome::Benign => "benign",
            RecordedOutcome::NotActivated => "not-activated",
            RecordedOutcome::ForcedCrash => "forced-crash",
            RecordedOutcome::Restored => "restored",
        }
    }
}

impl std::fmt::Display for RecordedOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for RecordedOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RecordedOutcome::ALL.into_iter().find(|o| o.name() == s).ok_or_else(|| format!("`{s}` is not an outcome"))
    }
}

/// Outcome names as tables and figures group by them ([`RecordedOutcome::name`]).
pub mod outcome {
    use super::RecordedOutcome;
    /// See [`RecordedOutcome::Panic`].
    pub const PANIC: &str = RecordedOutcome::Panic.name();
    /// See [`RecordedOutcome::Oops`].
    pub const OOPS: &str = RecordedOutcome::Oops.name();
    /// See [`RecordedOutcome::Hang`].
    pub const HANG: &str = RecordedOutcome::Hang.name();
    /// See [`RecordedOutcome::ServiceError`].
    pub const SERVICE_ERROR: &str = RecordedOutcome::ServiceError.name();
    /// See [`RecordedOutcome::Benign`].
    pub const BENIGN: &str = RecordedOutcome::Benign.name();
    /// See [`RecordedOutcome::NotActivated`].
    pub const NOT_ACTIVATED: &str = RecordedOutcome::NotActivated.name();
    /// See [`RecordedOutcome::ForcedCrash`].
    pub const FORCED_CRASH: &str = RecordedOutcome::ForcedCrash.name();
}

/// How the results were obtained; the same for every experiment of a run,
/// stored with each so that merged shards stay self-describing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// `kvm` or `tcg`.
    pub accel: String,
    /// `qemu-system-x86_64 --version`, first line's version number.
    pub qemu_version: String,
    /// The guest kernel's release, e.g. `6.1.0-56-amd64`.
    pub kernel_version: String,
    /// Guest profile: `tiny` or `debian`.
    pub profile: String,
    /// Guest RAM in MiB.
    pub ram_mb: u32,
    /// The campaign seed (fault lists and request mixes derive from it).
    pub seed: u64,
    /// `kfi` version (crate version, plus git commit when known).
    pub kfi_version: String,
    /// Host name of the machine that ran the experiment.
    pub host: String,
}

/// What was done to the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Injection {
    /// Nothing: a golden run or a measurement (restore time vs RAM size).
    None,
    /// A crash forced on purpose.
    Crash {
        /// `sysrq`, `panic` or `hang`.
        crash: String,
    },
    /// A fault from the injector.
    Fault {
        /// Fault model name, e.g. `reg-flip`, `text-flip`, `nop`.
        model: String,
        /// Subsystem of the target (`kernel`, `mm`, `fs`, `net`, ...),
        /// when the target has a source file.
        subsystem: Option<String>,
        /// Target function, when there is one.
        function: Option<String>,
        /// One-line description of the fault.
        description: String,
        /// The full fault spec as the injector serialized it.
        spec: serde_json::Value,
        /// Whether the fault was executed (code) or read (data) in the
        /// observation window.
        activated: bool,
        /// Seconds from injection to the first activation.
        activation_s: Option<f64>,
        /// How far the error went, when the campaign traced it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        propagation: Option<Box<Propagation>>,
    },
}

/// Error propagation scope names (see the injector's `trace::Scope`).
pub mod scope {
    /// The taint died before anything read it from memory.
    pub const MASKED: &str = "masked";
    /// Only the activating process context touched tainted data.
    pub const PROCESS_LOCAL: &str = "process-local";
    /// Another task, a kernel thread or an interrupt handler read it.
    pub const KERNEL_GLOBAL: &str = "kernel-global";
    /// The tracing budget ran out first.
    pub const UNKNOWN: &str = "unknown";
    /// Table order.
    pub const ORDER: [&str; 4] = [MASKED, PROCESS_LOCAL, KERNEL_GLOBAL, UNKNOWN];
}

/// How far an activated fault's error propagated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Propagation {
    /// See [`scope`].
    pub scope: String,
    /// Why, in one line.
    pub why: String,
    /// The activating context (`comm[pid]`, with its interrupt state).
    pub activating: Option<String>,
    /// Other contexts that read tainted data.
    pub foreign_readers: Vec<String>,
    /// Single steps of the short range.
    pub steps: u64,
    /// Seconds the guest was held for the short range.
    pub short_s: f64,
    /// Seconds of long-range watching.
    pub long_s: f64,
    /// Why the short range ended.
    pub short_end: String,
    /// Subsystem of the function the failure surfaced in (the first oops),
    /// when the kernel reported one.
    pub surfaced_in: Option<String>,
    /// The failure surfaced in another subsystem than the one injected.
    pub surfaced_elsewhere: Option<bool>,
    /// The tracer's full report (accesses, contexts, counts).
    pub detail: serde_json::Value,
}

impl Injection {
    /// The fault model, `crash:<kind>` for forced crashes, `none` otherwise.
    pub fn label(&self) -> String {
        match self {
            Injection::None => "none".into(),
            Injection::Crash { crash } => format!("crash:{crash}"),
            Injection::Fault { model, .. } => model.clone(),
        }
    }
}

/// What the recovery VMM did after a failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryRecord {
    /// Strategy the experiment asked for (`full-reboot`, `kexec-reboot`,
    /// `phase-restore`, `service-restore`).
    pub requested: String,
    /// Strategy that actually ran (differs after a fallback).
    pub used: String,
    /// Why the strategy fell back, when it did.
    pub fallback_reason: Option<String>,
    /// How the failure was detected (`guest-panicked`, `heartbeat`, ...).
    pub cause: String,
    /// Whether the service answered correctly again within the window.
    pub recovered: bool,
    /// From the failure to its detection, seconds.
    pub detect_s: f64,
    /// Restore or reboot until the guest runs again, seconds.
    pub restart_s: f64,
    /// From running again to the first correct service answer, seconds.
    pub service_s: f64,
}

/// One 100 ms (or other width) bin of client-seen service, relative to the
/// failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineBin {
    /// Bin start, seconds relative to the failure (negative before it).
    pub t_s: f64,
    /// Correct answers that ended in the bin.
    pub correct: u64,
    /// Failed or wrong answers that ended in the bin.
    pub failed: u64,
    /// Median latency of the answers in the bin, seconds.
    pub p50_s: Option<f64>,
}

/// One experiment of a campaign, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentRecord {
    /// Campaign name (the experiment file's `name`).
    pub campaign: String,
    /// Index of the experiment in the campaign's expansion: stable, so a
    /// resumed or sharded campaign names the same experiment the same way.
    pub experiment: u64,
    /// Human-readable identity, unique in the campaign, e.g.
    /// `strategy=service-restore crash=sysrq rep=3`.
    pub key: String,
    /// Workload that ran (`apache`, `rubis`, `none`).
    pub workload: String,
    /// What was done.
    pub injection: Injection,
    /// What the experiment came to.
    pub outcome: RecordedOutcome,
    /// Structured detail of the outcome (a parsed oops), when any.
    pub outcome_detail: Option<serde_json::Value>,
    /// The recovery, when one ran.
    pub recovery: Option<RecoveryRecord>,
    /// Client-seen downtime, seconds; `None` when there was no failure or
    /// the service never came back in the window.
    pub downtime_s: Option<f64>,
    /// Time until throughput was back to 90% of the pre-failure baseline.
    pub throughput_back_s: Option<f64>,
    /// Requests sent in the experiment.
    pub requests: u64,
    /// Correct answers.
    pub correct: u64,
    /// Writes the guest acknowledged before the failure.
    pub acked_writes: Option<u64>,
    /// Acknowledged writes missing after recovery (must be 0).
    pub lost_writes: Option<u64>,
    /// Parameters the experiment varied beyond the above, e.g.
    /// `ram_mb=1024`, `storage=nvme`, `reduction=on`.
    pub params: BTreeMap<String, String>,
    /// Measurements beyond the above, e.g. `snapshot_bytes`, `restore_s`.
    pub metrics: BTreeMap<String, f64>,
    /// The client-seen timeline around the failure (may be empty).
    pub timeline: Vec<TimelineBin>,
    /// How the result was obtained.
    pub provenance: Provenance,
    /// When the experiment started, RFC 3339 UTC.
    pub started_at: String,
    /// Wall-clock time of the whole experiment, seconds.
    pub wall_s: f64,
    /// Length of the observation window, seconds (campaign overhead is
    /// `wall_s - window_s`).
    pub window_s: f64,
}
