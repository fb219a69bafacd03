//! One experiment's durable record: what the campaign runner writes and
//! every table, figure and report reads.
//!
//! Every field that holds one of a fixed set of values is an enum of this
//! module (`Recorded*`), stored as its kebab-case name. They mirror the
//! producing crates' enums (the injector's outcomes, fault models and
//! scopes, the VMM's strategies and failure causes) instead of reusing them,
//! so that analysis never needs a VM crate to compile; the runner converts
//! with exhaustive matches, so a new producer variant does not compile until
//! it has a stored name here. A store holding a name this build does not
//! know is refused when read, naming the value, rather than misread.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A closed set of stored names: the enum, its serde names, `ALL` in table
/// order, `name()`, `Display` and `FromStr`.
macro_rules! recorded_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $stored:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        $vis enum $name {
            $( $(#[$vmeta])* #[serde(rename = $stored)] $variant, )+
        }

        impl $name {
            /// Every value, in table order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored (kebab-case) name.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $stored,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $name::ALL.iter().copied().find(|v| v.name() == s).ok_or_else(|| {
                    let known: Vec<&str> = $name::ALL.iter().map(|v| v.name()).collect();
                    format!("`{s}` is not {} (known: {})", $what, known.join(", "))
                })
            }
        }
    };
}

recorded_enum! {
    /// What an experiment came to, as stored: the injector's outcomes (its
    /// `Outcome`, same kebab-case names), plus the two a campaign records
    /// itself.
    pub enum RecordedOutcome ("an outcome") {
        /// A crash forced on purpose (sysrq, NMI), not an injected fault.
        ForcedCrash = "forced-crash",
        /// The kernel panicked (GUEST_PANICKED or a panic in the console).
        Panic = "panic",
        /// The virtual machine went away without a panic report: QEMU
        /// exited, or the guest reset itself.
        VmExit = "vm-exit",
        /// An oops, BUG or general-protection fault that did not panic.
        Oops = "oops",
        /// No heartbeat and no service answer for the hang timeout.
        Hang = "hang",
        /// The kernel stayed alive and the service answered wrongly, or not
        /// at all for at least the campaign's `observe.min_outage_s`.
        ServiceError = "service-error",
        /// The fault ran and nothing visible happened.
        Benign = "benign",
        /// The faulty instruction or data was never reached in the window,
        /// or the flipped bit was overwritten before anything read it.
        NotActivated = "not-activated",
        /// Nothing visible happened, and whether the fault was activated
        /// could not be decided (see the injection's `activation_unknown`).
        ActivationUnknown = "activation-unknown",
        /// A restore measurement that brought the service back.
        Restored = "restored",
        /// The harness failed, not the guest: QEMU refused to start, a
        /// gdbstub or QMP timeout, a port race. The experiment was retried
        /// from the golden snapshot and failed every time; nothing about
        /// the fault is known (see [`ExperimentRecord::harness_error`]).
        HarnessError = "harness-error",
    }
}

recorded_enum! {
    /// The accelerator QEMU ran the guest with.
    pub enum RecordedAccel ("an accelerator") {
        /// Hardware virtualisation.
        Kvm = "kvm",
        /// Software emulation.
        Tcg = "tcg",
    }
}

recorded_enum! {
    /// The guest profile.
    pub enum RecordedProfile ("a guest profile") {
        /// Busybox initramfs with busybox httpd.
        Tiny = "tiny",
        /// Debian bookworm with systemd, Apache, PHP and MariaDB.
        Debian = "debian",
    }
}

recorded_enum! {
    /// The workload that drove the guest.
    pub enum RecordedWorkload ("a workload") {
        /// Static files over HTTP.
        Apache = "apache",
        /// The RUBiS auction site.
        Rubis = "rubis",
    }
}

recorded_enum! {
    /// A crash forced on purpose.
    pub enum RecordedCrash ("a crash kind") {
        /// sysrq-trigger `c` through the guest agent.
        Sysrq = "sysrq",
        /// An NMI with `unknown_nmi_panic`.
        Panic = "panic",
        /// The vCPUs stopped.
        Hang = "hang",
    }
}

recorded_enum! {
    /// An injector fault model (the injector's `ModelKind`).
    pub enum RecordedModel ("a fault model") {
        /// One bit of a register when the trigger fires.
        RegFlip = "reg-flip",
        /// One bit of a byte in kernel `.data`/`.bss`.
        DataFlip = "data-flip",
        /// One bit on the current task's kernel stack.
        StackFlip = "stack-flip",
        /// One bit of the heap object a register points to.
        HeapFlip = "heap-flip",
        /// One bit of a kernel function's code.
        TextFlip = "text-flip",
        /// An instruction deleted (NOPs of the same length).
        Nop = "nop",
        /// A conditional branch deleted.
        Branch = "branch",
        /// A conditional branch's condition inverted.
        Inverse = "inverse",
        /// A store into the stack frame deleted.
        Init = "init",
        /// A comparison's immediate bound changed by one.
        OffByOne = "off-by-one",
        /// A call replaced by "returns zero".
        RetZero = "ret-zero",
        /// A bit of the register an instruction writes.
        Dst = "dst",
        /// A bit of a register an instruction reads.
        Src = "src",
        /// A bit of the base register of a memory operand.
        Ptr = "ptr",
    }
}

recorded_enum! {
    /// How far an error propagated (the injector's `trace::Scope`).
    pub enum RecordedScope ("a propagation scope") {
        /// Nothing read the error: its registers' taint died, or every
        /// tainted cell was overwritten before a read.
        Masked = "masked",
        /// Tainted memory nothing read while it was watched, some still
        /// holding the error at the end.
        Latent = "latent",
        /// Only the activating process context touched tainted data.
        ProcessLocal = "process-local",
        /// Another task, a kernel thread or an interrupt handler read it.
        KernelGlobal = "kernel-global",
        /// Not settled: the step budget ran out, shared memory went
        /// unwatched, or the watch was shorter than `trace.min_watch_s`.
        Unknown = "unknown",
    }
}

recorded_enum! {
    /// A recovery strategy (the VMM's `Strategy`).
    pub enum RecordedStrategy ("a recovery strategy") {
        /// Reset and boot from scratch: the baseline.
        FullReboot = "full-reboot",
        /// Jump into a loaded crash kernel.
        KexecReboot = "kexec-reboot",
        /// Restore the pre-data-disk snapshot, then mount and start.
        PhaseRestore = "phase-restore",
        /// Restore the snapshot taken with the services running.
        ServiceRestore = "service-restore",
    }
}

recorded_enum! {
    /// What gave a failure away (the VMM's `FailureCause`).
    pub enum RecordedCause ("a failure cause") {
        /// pvpanic raised GUEST_PANICKED.
        GuestPanicked = "guest-panicked",
        /// pvpanic raised GUEST_CRASHLOADED.
        GuestCrashLoaded = "guest-crash-loaded",
        /// The agent's heartbeat stopped.
        HeartbeatLost = "heartbeat-lost",
        /// The QEMU process died.
        QemuExited = "qemu-exited",
        /// The guest reset itself (a triple fault does that).
        GuestReset = "guest-reset",
        /// The i6300esb watchdog fired.
        Watchdog = "watchdog",
        /// The host's service probe failed several times in a row.
        ServiceProbe = "service-probe",
    }
}

/// How the results were obtained; the same for every experiment of a run,
/// stored with each so that merged shards stay self-describing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The accelerator.
    pub accel: RecordedAccel,
    /// `qemu-system-x86_64 --version`, first line's version number.
    pub qemu_version: String,
    /// The guest kernel's release, e.g. `6.1.0-56-amd64`.
    pub kernel_version: String,
    /// Guest profile.
    pub profile: RecordedProfile,
    /// Guest RAM in MiB.
    pub ram_mb: u32,
    /// The campaign seed (fault lists and request mixes derive from it).
    pub seed: u64,
    /// `kfi` version (crate version, plus git commit when known).
    pub kfi_version: String,
    /// Host name of the machine that ran the experiment.
    pub host: String,
    /// The kfi git commit the experiment ran on (`None`: not built from a
    /// git checkout, or a record of a build before schema 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kfi_commit: Option<String>,
    /// Whether that checkout had uncommitted changes to tracked files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kfi_dirty: Option<bool>,
    /// Where the kernel came from: `debian:<package>=<version>` or
    /// `user:<sha256 of the bzImage>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_origin: Option<String>,
    /// The kernel's GNU build id (hex), from its ELF image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_build_id: Option<String>,
    /// Hash of everything the guest image was built from (its recipe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_recipe: Option<String>,
    /// SHA-256 of the package list debootstrap installed into a debian
    /// image (`<package> <version>` lines; the list itself is in the
    /// store's `image_packages` table). Its userland comes from the mirror
    /// of the day, so it is recorded because it cannot be pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_packages: Option<String>,
    /// The host CPU (`model name` of /proc/cpuinfo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cpu: Option<String>,
    /// Host CPU cores available to the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cores: Option<u32>,
}

/// One way two runs' environments differ (see
/// [`Provenance::environment_differences`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentDifference {
    /// Which property (`kernel`, `kernel build id`, `image recipe`, `QEMU`,
    /// `accelerator`, `image packages`).
    pub what: &'static str,
    /// Its value in the stored records.
    pub stored: String,
    /// Its value now (or in the other store).
    pub current: String,
}

impl std::fmt::Display for EnvironmentDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: stored {}, now {}", self.what, self.stored, self.current)
    }
}

impl Provenance {
    /// How the environment that produced `self` (stored) differs from
    /// `current` in what makes results comparable: kernel, image, QEMU and
    /// accelerator. A property one side did not record (an older record)
    /// is not a difference.
    pub fn environment_differences(&self, current: &Provenance) -> Vec<EnvironmentDifference> {
        let mut out = Vec::new();
        let mut cmp = |what: &'static str, a: Option<&str>, b: Option<&str>| {
            if let (Some(a), Some(b)) = (a, b) {
                if a != b {
                    out.push(EnvironmentDifference { what, stored: a.to_string(), current: b.to_string() });
                }
            }
        };
        cmp("kernel", Some(&self.kernel_version), Some(&current.kernel_version));
        cmp("kernel package", self.kernel_origin.as_deref(), current.kernel_origin.as_deref());
        cmp("kernel build id", self.kernel_build_id.as_deref(), current.kernel_build_id.as_deref());
        cmp("image recipe", self.image_recipe.as_deref(), current.image_recipe.as_deref());
        cmp("image packages", self.image_packages.as_deref(), current.image_packages.as_deref());
        cmp("QEMU", Some(&self.qemu_version), Some(&current.qemu_version));
        cmp("accelerator", Some(self.accel.name()), Some(current.accel.name()));
        out
    }

    /// A one-line name of the environment (kernel, image, QEMU,
    /// accelerator), for reports of mixed campaigns.
    pub fn environment_label(&self) -> String {
        format!(
            "kernel {}{}, image {}, QEMU {}, {}",
            self.kernel_version,
            self.kernel_build_id
                .as_deref()
                .map(|b| format!(" (build id {})", &b[..b.len().min(12)]))
                .unwrap_or_default(),
            self.image_recipe.as_deref().map(|r| &r[..r.len().min(12)]).unwrap_or("unrecorded"),
            self.qemu_version,
            self.accel
        )
    }
}

/// What was done to the guest.
// Almost every record of a fault campaign is a `Fault`: boxing it would
// save nothing and put a box in every match on a record.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Injection {
    /// Nothing: a golden run or a measurement (restore time vs RAM size).
    None,
    /// A crash forced on purpose.
    Crash {
        /// Which crash.
        crash: RecordedCrash,
    },
    /// A fault from the injector.
    Fault {
        /// The fault model.
        model: RecordedModel,
        /// Subsystem of the target (`kernel`, `mm`, `fs`, `net`, ...),
        /// when the target has a source file (a data flip: the unit that
        /// defines the variable); for a register, stack or heap flip, of
        /// the kernel function executing where it landed.
        subsystem: Option<String>,
        /// Target function, when there is one; for a register, stack or
        /// heap flip, the kernel function executing where it landed.
        function: Option<String>,
        /// One-line description of the fault.
        description: String,
        /// The full fault spec as the injector serialized it.
        spec: serde_json::Value,
        /// Whether the fault was executed (code), or its flipped bit read
        /// before it was overwritten (data, stack, heap, register), in the
        /// observation window.
        activated: bool,
        /// Why activation could not be decided, when it could not (a
        /// flipped register neither read nor overwritten before the CPU went
        /// idle or left the kernel); `activated` is then false and says
        /// nothing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        activation_unknown: Option<String>,
        /// Seconds from injection to the first activation.
        activation_s: Option<f64>,
        /// How far the error went, when the campaign traced it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        propagation: Option<Box<Propagation>>,
        /// The golden-run profile the fault was drawn from (its id), when
        /// the campaign's targets came from one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        profile: Option<String>,
        /// With a profile: executions, in the profile's window, of the
        /// instruction the fault is applied at: how many dynamic instances
        /// its class stands for, to weigh records by when extrapolating to
        /// every executed instruction.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        class_weight: Option<u64>,
        /// Subsystem of the function the failure surfaced in (the first
        /// oops's RIP), when the kernel reported one with a known source.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        surfaced_in: Option<String>,
    },
}

/// How far an activated fault's error propagated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Propagation {
    /// How far it went.
    pub scope: RecordedScope,
    /// Why, in one line.
    pub why: String,
    /// The activating context (`comm[pid]`, with its interrupt state).
    pub activating: Option<String>,
    /// Other contexts that read tainted data.
    pub foreign_readers: Vec<String>,
    /// Reads of tainted data, the kernel's failure reporting's left out.
    #[serde(default)]
    pub reads: u64,
    /// Contexts whose reads were the kernel's failure reporting (oops,
    /// printk, stack dumping): listed, not counted as propagation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reporting_readers: Vec<String>,
    /// Single steps of the short range.
    pub steps: u64,
    /// Seconds the guest was held for the short range.
    pub short_s: f64,
    /// Seconds of long-range watching: how long the verdict watched
    /// tainted memory.
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
            Injection::Fault { model, .. } => model.name().to_string(),
        }
    }
}

/// What the recovery VMM did after a failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryRecord {
    /// Strategy the experiment asked for.
    pub requested: RecordedStrategy,
    /// Strategy that actually ran (differs after a fallback).
    pub used: RecordedStrategy,
    /// Why the strategy fell back, when it did.
    pub fallback_reason: Option<String>,
    /// How the failure was detected.
    pub cause: RecordedCause,
    /// Whether the service answered correctly again within the window.
    pub recovered: bool,
    /// From the failure to its detection, seconds.
    pub detect_s: f64,
    /// Restore or reboot until the guest runs again, seconds.
    pub restart_s: f64,
    /// From running again to the first correct service answer, seconds.
    pub service_s: f64,
    /// Whether the restore ran on the standby QEMU launched ahead of it
    /// (false: a QEMU launched during the recovery, or no restore);
    /// `None` when not recovered, and in records made before it was kept.
    #[serde(default)]
    pub on_standby: Option<bool>,
    /// The stages after the guest ran again; `None` when not recovered,
    /// and in records made before they were kept.
    #[serde(default)]
    pub stages: Option<RecoveryStages>,
}

/// The stages of a recovery after the guest runs again (the end of
/// `restart_s`), seconds each, timed by the guest agent's phases (dated on
/// the host) and the workload's client records. Stages follow one another:
/// each runs from the end of the one before that happened. `None`: the
/// stage did not happen in this recovery (a service restore mounts
/// nothing; the tiny guest has no database).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecoveryStages {
    /// Until the data disk was mounted (its journal replayed): the agent's
    /// `data-mounted` phase; a reboot's boot up to it included.
    pub data_mount_s: Option<f64>,
    /// Until the database served (MariaDB's start and InnoDB crash
    /// recovery, until `mariadb.service` turned active): the agent's
    /// `db-ready` phase.
    pub database_s: Option<f64>,
    /// Until the end of the workload's first correct answer to a request
    /// sent at or after the failure.
    pub first_correct_s: Option<f64>,
}

/// How late the guest agent may report a phase after it happened (it polls
/// systemd every 50 ms, then writes to its port): a stage reported this soon
/// after the first correct answer still came before it.
pub const AGENT_REPORT_LAG_S: f64 = 0.5;

impl RecoveryStages {
    /// The stages from instants on one clock (seconds): the guest running
    /// again, the data disk mounted, the database ready and the first
    /// correct answer. A stage whose instant is missing, or lies before
    /// `running` (a phase of the guest before the failure), did not happen;
    /// one that ended after the first correct answer (clients of static
    /// pages are answered while the data disk is mounted and the database
    /// starts) is no part of the downtime's split: `None` too.
    pub fn from_instants(running: f64, mounted: Option<f64>, database: Option<f64>, first: Option<f64>) -> Self {
        let first_at = first.filter(|&t| t >= running);
        let mut last = running;
        let mut stage = |at: Option<f64>| {
            let at = at.filter(|&t| t >= running)?;
            if first_at.is_some_and(|f| at > f + AGENT_REPORT_LAG_S) {
                return None;
            }
            let s = (at - last).max(0.0);
            last = last.max(at);
            Some(s)
        };
        let data_mount_s = stage(mounted);
        let database_s = stage(database);
        let first_correct_s = stage(first);
        RecoveryStages { data_mount_s, database_s, first_correct_s }
    }
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
    /// Workload that ran.
    pub workload: RecordedWorkload,
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
    /// The availability probe's outage, seconds: the same definition as
    /// `downtime_s` (last correct answer before the failure to the first
    /// correct answer to a request sent after it) over the probe's own
    /// requests, the index page every 10 ms, which are not counted in
    /// `requests`; `None` as for `downtime_s`, and in records made before
    /// the probe existed.
    #[serde(default)]
    pub probe_outage_s: Option<f64>,
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
    /// Why the harness could not run the experiment, when the outcome is
    /// `harness-error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harness_error: Option<HarnessFailure>,
    /// The failure's steps in order (an oops in `httpd`, then the panic
    /// that killed init): the first is the first manifestation, the
    /// outcome the final one. Empty without a failure, and in records made
    /// before events were kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<FailureEvent>,
    /// A failure with no evidence that the fault caused it (neither its
    /// activation nor an undecided activation was seen): kept, counted
    /// apart, never credited to the fault.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unattributed: bool,
}

/// One step of a failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureEvent {
    /// The failure class of this step (`oops`, `panic`, `hang`, `vm-exit`,
    /// `service-error`).
    pub outcome: RecordedOutcome,
    /// Seconds from the injection to when it happened (console events:
    /// placed by the kernel's own timestamps; others: when the harness saw
    /// them).
    pub at_s: f64,
    /// The kernel's timestamp of the console line, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_s: Option<f64>,
    /// What it was: the oops headline, the panic reason, how QEMU ended.
    pub what: String,
    /// The function it surfaced in (an oops's RIP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// The process it surfaced in, `comm[pid]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
}

impl ExperimentRecord {
    /// The failure class that showed first: the first event's, or the
    /// outcome itself in records without events.
    pub fn first_manifestation(&self) -> RecordedOutcome {
        self.events.first().map_or(self.outcome, |e| e.outcome)
    }
}

/// What a record says before anything is measured: which experiment, what
/// was done, what it came to and how it was obtained.
#[derive(Debug, Clone)]
pub struct RecordIdentity {
    /// See [`ExperimentRecord::campaign`].
    pub campaign: String,
    /// See [`ExperimentRecord::experiment`].
    pub experiment: u64,
    /// See [`ExperimentRecord::key`].
    pub key: String,
    /// See [`ExperimentRecord::workload`].
    pub workload: RecordedWorkload,
    /// See [`ExperimentRecord::injection`].
    pub injection: Injection,
    /// See [`ExperimentRecord::outcome`].
    pub outcome: RecordedOutcome,
    /// See [`ExperimentRecord::provenance`].
    pub provenance: Provenance,
    /// See [`ExperimentRecord::started_at`].
    pub started_at: String,
}

impl ExperimentRecord {
    /// A record of `id` with nothing measured (no recovery, downtime,
    /// requests, writes, parameters, metrics or timeline; zero times), for
    /// records that fill in only what they measured.
    pub fn unmeasured(id: RecordIdentity) -> ExperimentRecord {
        ExperimentRecord {
            campaign: id.campaign,
            experiment: id.experiment,
            key: id.key,
            workload: id.workload,
            injection: id.injection,
            outcome: id.outcome,
            outcome_detail: None,
            recovery: None,
            downtime_s: None,
            probe_outage_s: None,
            throughput_back_s: None,
            requests: 0,
            correct: 0,
            acked_writes: None,
            lost_writes: None,
            params: BTreeMap::new(),
            metrics: BTreeMap::new(),
            timeline: Vec::new(),
            provenance: id.provenance,
            started_at: id.started_at,
            wall_s: 0.0,
            window_s: 0.0,
            harness_error: None,
            events: Vec::new(),
            unattributed: false,
        }
    }
}

/// The attempts of an experiment the harness could not run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HarnessFailure {
    /// Attempts made (the first run plus the retries).
    pub attempts: u32,
    /// Each attempt's error chain, in order.
    pub errors: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_stages_follow_one_another_and_skip_what_did_not_happen() {
        // Phase restore on debian: running at 10, mounted 10.5, database 12, first page 12.25.
        let s = RecoveryStages::from_instants(10.0, Some(10.5), Some(12.0), Some(12.25));
        assert_eq!((s.data_mount_s, s.database_s, s.first_correct_s), (Some(0.5), Some(1.5), Some(0.25)));
        // Service restore: nothing mounted anew; the first answer counts from running again.
        let s = RecoveryStages::from_instants(10.0, None, None, Some(10.5));
        assert_eq!((s.data_mount_s, s.database_s, s.first_correct_s), (None, None, Some(0.5)));
        // A phase dated before the guest ran again belongs to the old boot.
        let s = RecoveryStages::from_instants(10.0, Some(3.0), Some(11.0), Some(11.5));
        assert_eq!((s.data_mount_s, s.database_s, s.first_correct_s), (None, Some(1.0), Some(0.5)));
        // A first answer the agent's report of the database lags a little counts as no wait.
        let s = RecoveryStages::from_instants(10.0, Some(10.5), Some(12.0), Some(11.8));
        assert_eq!((s.data_mount_s, s.database_s, s.first_correct_s), (Some(0.5), Some(1.5), Some(0.0)));
        // Static pages answered long before the data disk and the database
        // came up: those stages are no part of the downtime.
        let s = RecoveryStages::from_instants(10.0, Some(14.0), Some(22.0), Some(10.5));
        assert_eq!((s.data_mount_s, s.database_s, s.first_correct_s), (None, None, Some(0.5)));
    }

    /// The stored name of every value is its serde name, and parses back.
    fn names_round_trip<T>(all: &[T])
    where
        T: Copy + PartialEq + std::fmt::Debug + std::fmt::Display + std::str::FromStr + Serialize,
        T: for<'de> Deserialize<'de>,
    {
        for v in all {
            let json = serde_json::to_string(v).unwrap();
            assert_eq!(json, format!("\"{v}\""));
            assert_eq!(serde_json::from_str::<T>(&json).unwrap(), *v);
            assert_eq!(v.to_string().parse::<T>().ok(), Some(*v));
        }
    }

    #[test]
    fn every_recorded_name_round_trips() {
        names_round_trip(RecordedOutcome::ALL);
        names_round_trip(RecordedAccel::ALL);
        names_round_trip(RecordedProfile::ALL);
        names_round_trip(RecordedWorkload::ALL);
        names_round_trip(RecordedCrash::ALL);
        names_round_trip(RecordedModel::ALL);
        names_round_trip(RecordedScope::ALL);
        names_round_trip(RecordedStrategy::ALL);
        names_round_trip(RecordedCause::ALL);
    }

    #[test]
    fn an_unknown_stored_name_is_refused_naming_it() {
        let mut json = serde_json::to_value(crate::fixture::records().remove(0)).unwrap();
        json["workload"] = "tomcat".into();
        let err = serde_json::from_value::<ExperimentRecord>(json).unwrap_err().to_string();
        assert!(err.contains("tomcat") && err.contains("apache"), "{err}");
        let err = "warp".parse::<RecordedStrategy>().unwrap_err();
        assert_eq!(
            err,
            "`warp` is not a recovery strategy (known: full-reboot, kexec-reboot, phase-restore, service-restore)"
        );
    }

    #[test]
    fn table_order_is_declaration_order() {
        let mut sorted = RecordedStrategy::ALL.to_vec();
        sorted.sort();
        assert_eq!(sorted, RecordedStrategy::ALL);
        assert_eq!(RecordedStrategy::ALL[0], RecordedStrategy::FullReboot);
    }
}
