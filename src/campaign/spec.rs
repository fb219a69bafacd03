//! Experiment files: the declarative TOML a campaign is made from, its
//! validation, and its expansion into a stable, numbered list of
//! experiments.
//!
//! The expansion is the campaign's identity: experiment `i` is the same
//! experiment on every run, resume and shard, because it depends only on
//! the file's content (and, for injected faults, on the seed and the kernel
//! image, through the injector's generator).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use recovery_sut::{AccelChoice, Profile, Strategy};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use workloads::rubis::Mix;

pub mod restore;

use self::restore::{RestorePoint, RestoreSpec};
pub use crate::crash::Crash;
pub use crate::workload_run::WorkloadKind;

/// The most experiments one file may expand to.
pub const MAX_EXPERIMENTS: u64 = 1_000_000;

/// Why an experiment file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentFileError {
    /// The file cannot be read.
    #[error("cannot read experiment file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, a wrong type or an unknown name; the
    /// message carries the line, column and key.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message: line, column, the offending key and what was expected.
        message: String,
    },
    /// A value that parses but makes no sense, at a known line.
    #[error("{path}: line {line}: key `{key}`: {problem}")]
    InvalidAt {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key.
        line: usize,
        /// Dotted key path.
        key: String,
        /// What is wrong and what would be right.
        problem: String,
    },
    /// A value that parses but makes no sense.
    #[error("{path}: key `{key}`: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted key path.
        key: String,
        /// What is wrong and what would be right.
        problem: String,
    },
}

/// Guest profile, as experiment files and `--guest` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum GuestProfile {
    /// Busybox initramfs with busybox httpd (boots in seconds).
    Tiny,
    /// Debian bookworm: systemd, Apache, PHP, MariaDB on ext4.
    Debian,
}

impl From<GuestProfile> for Profile {
    fn from(p: GuestProfile) -> Profile {
        match p {
            GuestProfile::Tiny => Profile::Tiny,
            GuestProfile::Debian => Profile::Debian,
        }
    }
}

/// Accelerator choice, as experiment files and `--accel` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AccelName {
    /// KVM when a short probe boot proves it works here, else TCG.
    #[default]
    Auto,
    /// Software emulation.
    Tcg,
    /// Hardware virtualisation, without probing.
    Kvm,
}

impl GuestProfile {
    /// The name experiment files and `--guest` use.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestProfile::Tiny => "tiny",
            GuestProfile::Debian => "debian",
        }
    }
}

impl AccelName {
    /// The name experiment files and `--accel` use.
    pub fn as_str(self) -> &'static str {
        match self {
            AccelName::Auto => "auto",
            AccelName::Tcg => "tcg",
            AccelName::Kvm => "kvm",
        }
    }
}

impl From<AccelName> for AccelChoice {
    fn from(a: AccelName) -> AccelChoice {
        match a {
            AccelName::Auto => AccelChoice::Auto,
            AccelName::Tcg => AccelChoice::Tcg,
            AccelName::Kvm => AccelChoice::Kvm,
        }
    }
}

/// `[guest]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestSpec {
    /// Guest profile.
    pub profile: GuestProfile,
    /// Guest RAM in MiB (default: 256 for tiny, 1024 for debian).
    pub memory_mb: Option<u32>,
    /// Accelerator.
    #[serde(default)]
    pub accel: AccelName,
    /// Attach the data disk to the tiny guest (debian always has one);
    /// needed to count acknowledged writes.
    #[serde(default)]
    pub data_disk: bool,
    /// The guest kernel: a release `kernel.lock` names (its default when
    /// absent), e.g. `6.1.0-56-amd64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
}

fn default_clients() -> usize {
    2
}

fn default_warmup() -> f64 {
    2.0
}

/// `[workload]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Which workload.
    pub kind: WorkloadKind,
    /// Closed-loop clients.
    #[serde(default = "default_clients")]
    pub clients: usize,
    /// Think time between a client's requests, milliseconds.
    #[serde(default)]
    pub think_ms: u64,
    /// Seconds of load before the injection.
    #[serde(default = "default_warmup")]
    pub warmup_s: f64,
    /// Data-disk writes the guest acknowledges (after `fdatasync`) before
    /// each injection; every one must be there after recovery. Any write
    /// makes the service snapshot stale, so service-restore then falls
    /// back to phase-restore, as a VMM must.
    #[serde(default)]
    pub acked_writes: u64,
    /// RUBiS only: which transition table the sessions walk (default
    /// browsing, read-only; bidding writes about 15% of its pages, and
    /// every write the site acknowledged is looked up after recovery).
    #[serde(default)]
    pub mix: Option<Mix>,
    /// A request without an answer for this long counts as failed,
    /// milliseconds (default 1000 for the static workload, 5000 for RUBiS,
    /// whose PHP pages are slower under emulation).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl WorkloadSpec {
    /// The client timeout in force.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.unwrap_or(match self.kind {
            WorkloadKind::Apache => 1000,
            WorkloadKind::Rubis => 5000,
        }))
    }

    /// `warmup_s` as a duration.
    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_s)
    }

    /// `think_ms` as a duration.
    pub fn think(&self) -> Duration {
        Duration::from_millis(self.think_ms)
    }

    /// The RUBiS mix in force (browsing unless the file says otherwise).
    pub fn rubis_mix(&self) -> Mix {
        self.mix.unwrap_or(Mix::Browsing)
    }
}

fn default_window() -> f64 {
    10.0
}

fn default_tail() -> f64 {
    1.0
}

fn default_hang() -> f64 {
    5.0
}

/// `[observe]`: how long an experiment watches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObserveSpec {
    /// After the injection, how long to wait for a failure, seconds.
    #[serde(default = "default_window")]
    pub window_s: f64,
    /// Load kept running after the service is back, seconds (the
    /// throughput-recovery measurement needs some).
    #[serde(default = "default_tail")]
    pub tail_s: f64,
    /// No heartbeat for this long counts as a hang, seconds.
    #[serde(default = "default_hang")]
    pub hang_timeout_s: f64,
    /// The shortest outage that makes a `service-error`: a failed request
    /// after which no correct answer came for this long, seconds (a wrong
    /// answer always does).
    #[serde(default = "default_min_outage")]
    pub min_outage_s: f64,
}

fn default_min_outage() -> f64 {
    injector::outcome::DEFAULT_MIN_OUTAGE_S
}

// Validation has checked every seconds key with `duration::from_secs_f64`,
// so these conversions cannot panic on a loaded file.
impl ObserveSpec {
    /// `window_s` as a duration.
    pub fn window(&self) -> Duration {
        Duration::from_secs_f64(self.window_s)
    }

    /// `tail_s` as a duration.
    pub fn tail(&self) -> Duration {
        Duration::from_secs_f64(self.tail_s)
    }

    /// `hang_timeout_s` as a duration.
    pub fn hang_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.hang_timeout_s)
    }

    /// When the service counts as failed.
    pub fn service_criterion(&self) -> injector::outcome::ServiceCriterion {
        injector::outcome::ServiceCriterion { min_outage_s: self.min_outage_s }
    }
}

impl Default for ObserveSpec {
    fn default() -> Self {
        ObserveSpec {
            window_s: default_window(),
            tail_s: default_tail(),
            hang_timeout_s: default_hang(),
            min_outage_s: default_min_outage(),
        }
    }
}

fn default_count() -> u64 {
    1
}

/// Injected faults: `count` faults drawn by the injector's generator from
/// the campaign seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsSpec {
    /// Fault models to draw from (the injector's names, e.g. `reg-flip`,
    /// `text-flip`, `nop`); empty: all.
    #[serde(default)]
    pub models: Vec<String>,
    /// Subsystems to target (`kernel`, `mm`, `fs`, `net`, `drivers`, ...); empty: all.
    #[serde(default)]
    pub subsystems: Vec<String>,
    /// Functions to target by name; empty: any in the subsystems.
    #[serde(default)]
    pub functions: Vec<String>,
    /// Number of faults.
    #[serde(default = "default_count")]
    pub count: u64,
    /// Put original bytes back after the first activation (code faults).
    #[serde(default)]
    pub transient: bool,
    /// Where targets are drawn from: `image` (any function or variable of
    /// the kernel image, applied after a delay) or `profile` (what the
    /// campaign's golden-run profile saw run, applied at one of its
    /// executions; `kfi profile` makes it, `kfi campaign run` too when it
    /// is missing).
    #[serde(default)]
    pub targets: TargetSource,
    /// With `targets = "profile"`: `executions` (hot code drawn more often)
    /// or `uniform` (every executed instruction alike).
    #[serde(default)]
    pub weighting: injector::fault::Weighting,
}

/// Where a `faults` table's targets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSource {
    /// The whole kernel image.
    #[default]
    Image,
    /// The campaign's golden-run profile.
    Profile,
}

/// One `[[inject]]` table: exactly one of `crash`, `faults` or `none`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectSpec {
    /// Force a crash.
    pub crash: Option<Crash>,
    /// Inject faults.
    pub faults: Option<FaultsSpec>,
}

/// What one planned experiment does to the guest, once validated: one
/// `[[inject]]` table's crash or fault, or one `[restore]` point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Force a crash.
    Crash(Crash),
    /// Fault number `index` of the campaign's generator.
    Fault {
        /// Index passed to the generator (unique across the campaign).
        index: u64,
        /// Which `[[inject]]` table it came from.
        group: usize,
    },
    /// No injection: a restore measured under the given conditions
    /// (`[restore]`, see `campaign::restore`).
    Restore(RestorePoint),
}

/// `[recovery]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverySpec {
    /// Strategies, each run for every injection and repetition.
    pub strategies: Vec<Strategy>,
}

fn default_reps() -> u32 {
    1
}

/// A whole experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentFile {
    /// Campaign name (results go to `results/<name>/`).
    pub name: String,
    /// One line saying what it measures.
    #[serde(default)]
    pub description: String,
    /// Seed of fault lists and request mixes.
    pub seed: u64,
    /// Repetitions of every (injection, strategy) pair.
    #[serde(default = "default_reps")]
    pub repetitions: u32,
    /// The guest.
    pub guest: GuestSpec,
    /// The load.
    pub workload: WorkloadSpec,
    /// Observation window.
    #[serde(default)]
    pub observe: ObserveSpec,
    /// What is done to the guest.
    #[serde(default)]
    pub inject: Vec<InjectSpec>,
    /// How it is brought back.
    #[serde(default)]
    pub recovery: RecoverySpec,
    /// Trace each activated fault's error (propagation scope), when set.
    #[serde(default)]
    pub trace: Option<TraceSpec>,
    /// Restore measurements instead of injections (no `[[inject]]` or
    /// `[recovery]` then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreSpec>,
}

/// `[trace]`: follow each activated fault's error to find how far it went.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceSpec {
    /// Single steps of the short range (about 700 a second under TCG).
    #[serde(default = "default_trace_steps")]
    pub max_steps: u64,
    /// Read watchpoints on tainted memory in the long range.
    #[serde(default = "default_trace_watchpoints")]
    pub max_watchpoints: usize,
    /// Watchpoint hits handled before watching stops.
    #[serde(default = "default_trace_hits")]
    pub max_hits: u32,
    /// Tainted memory watched for less than this, seconds, makes the
    /// verdict `unknown` (unless another context read it, or every tainted
    /// cell was overwritten).
    #[serde(default = "default_trace_min_watch")]
    pub min_watch_s: f64,
    /// Whether an interrupt taken on the activating task is another
    /// context (`separate`) or that task's (`task`).
    #[serde(default)]
    pub interrupts: injector::trace::InterruptContext,
}

fn default_trace_min_watch() -> f64 {
    injector::trace::tracer::DEFAULT_MIN_WATCH_S
}

fn default_trace_steps() -> u64 {
    injector::trace::TraceConfig::default().max_steps
}
fn default_trace_watchpoints() -> usize {
    injector::trace::TraceConfig::default().max_watchpoints
}
fn default_trace_hits() -> u32 {
    injector::trace::TraceConfig::default().max_hits
}

impl TraceSpec {
    /// The tracer's bounds.
    pub fn config(&self) -> injector::trace::TraceConfig {
        injector::trace::TraceConfig {
            max_steps: self.max_steps,
            max_watchpoints: self.max_watchpoints,
            max_hits: self.max_hits,
            min_watch_s: self.min_watch_s,
            interrupts: self.interrupts,
            ..injector::trace::TraceConfig::default()
        }
    }
}

/// One experiment of the expansion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Planned {
    /// Stable index.
    pub index: u64,
    /// What is done.
    pub action: Action,
    /// Recovery strategy.
    pub strategy: Strategy,
    /// Repetition number.
    pub rep: u32,
}

impl Planned {
    /// Human-readable identity, unique within the campaign.
    pub fn key(&self) -> String {
        let what = match &self.action {
            Action::Crash(c) => format!("crash={c}"),
            Action::Fault { index, .. } => format!("fault={index}"),
            Action::Restore(point) => point.key(),
        };
        format!("{what} strategy={} rep={}", self.strategy, self.rep)
    }
}

/// A parsed, validated experiment file.
#[derive(Debug, Clone)]
pub struct Campaign {
    /// Where it was read from.
    pub path: PathBuf,
    /// SHA-256 of the file's bytes: a campaign resumes only with the same file.
    pub sha256: String,
    /// Its content.
    pub file: ExperimentFile,
}

impl Campaign {
    /// Whether a `faults` table draws its targets from the golden-run
    /// profile.
    pub fn needs_profile(&self) -> bool {
        self.file.inject.iter().filter_map(|i| i.faults.as_ref()).any(|f| f.targets == TargetSource::Profile)
    }

    /// Reads and validates an experiment file.
    pub fn load(path: &Path) -> Result<Campaign, ExperimentFileError> {
        let bytes =
            std::fs::read(path).map_err(|source| ExperimentFileError::Read { path: path.to_path_buf(), source })?;
        let text = String::from_utf8_lossy(&bytes);
        Campaign::parse(path, &text).map(|mut c| {
            c.sha256 = hex::encode(Sha256::digest(&bytes));
            c
        })
    }

    /// Parses and validates experiment-file text; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Campaign, ExperimentFileError> {
        let file: ExperimentFile = toml::from_str(text)
            .map_err(|e| ExperimentFileError::Parse { path: path.to_path_buf(), message: parse_message(text, &e) })?;
        validate(path, &file)?;
        if let Some(restore) = &file.restore {
            restore::validate(path, text, &file, restore)?;
        }
        Ok(Campaign { path: path.to_path_buf(), sha256: hex::encode(Sha256::digest(text.as_bytes())), file })
    }

    /// The same campaign on another guest profile: a campaign of its own
    /// (`<name>-<profile>`, its own identity hash) unless the file already
    /// names that profile.
    pub fn on_guest(mut self, profile: GuestProfile) -> Campaign {
        if self.file.guest.profile == profile {
            return self;
        }
        let name = profile.as_str();
        self.file.guest.profile = profile;
        self.file.guest.memory_mb = None;
        self.file.name = format!("{}-{name}", self.file.name);
        self.sha256 = hex::encode(Sha256::digest(format!("{}:{name}", self.sha256).as_bytes()));
        self
    }

    /// The campaign on accelerator `accel` (`--accel` of a cluster task):
    /// it settles a file's `auto`, and refuses to contradict a file that
    /// names one. The campaign stays the same one (records name their
    /// accelerator, and a store refuses records of another).
    pub fn pinned_to(mut self, accel: AccelName) -> Result<Campaign, ExperimentFileError> {
        match (self.file.guest.accel, accel) {
            (_, AccelName::Auto) => {}
            (AccelName::Auto, pinned) => self.file.guest.accel = pinned,
            (named, pinned) if named == pinned => {}
            (named, pinned) => {
                return Err(ExperimentFileError::Invalid {
                    path: self.path.clone(),
                    key: "guest.accel".into(),
                    problem: format!(
                        "the file runs on {} but --accel {} was given; drop --accel or change the file (every shard \
                         of a campaign must use one accelerator)",
                        named.as_str(),
                        pinned.as_str()
                    ),
                });
            }
        }
        Ok(self)
    }

    /// The numbered experiments, in a fixed order: inject tables in file
    /// order, faults in generator order, then strategies, then repetitions.
    pub fn expand(&self) -> Vec<Planned> {
        let f = &self.file;
        if let Some(restore) = &f.restore {
            return restore::expand(restore, f.repetitions);
        }
        let mut out = Vec::new();
        let mut next_fault = 0u64;
        for (group, inject) in f.inject.iter().enumerate() {
            let injections: Vec<Action> = match (&inject.crash, &inject.faults) {
                (Some(c), _) => vec![Action::Crash(*c)],
                (None, Some(faults)) => {
                    let range = next_fault..next_fault + faults.count;
                    next_fault += faults.count;
                    range.map(|index| Action::Fault { index, group }).collect()
                }
                (None, None) => Vec::new(),
            };
            for injection in injections {
                for &strategy in &f.recovery.strategies {
                    for rep in 0..f.repetitions {
                        out.push(Planned { index: out.len() as u64, action: injection.clone(), strategy, rep });
                    }
                }
            }
        }
        out
    }
}

/// toml's message already names line, column and key; make sure the file
/// is named too and the message is one paragraph.
fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let src = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line}: {message} (at `{src}`)")
        }
        None => message,
    }
}

fn validate(path: &Path, f: &ExperimentFile) -> Result<(), ExperimentFileError> {
    let invalid = |key: &str, problem: String| ExperimentFileError::Invalid {
        path: path.to_path_buf(),
        key: key.into(),
        problem,
    };
    if f.name.is_empty() || !f.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(invalid(
            "name",
            format!("`{}` must be non-empty letters, digits, `-` or `_` (it names the results directory)", f.name),
        ));
    }
    if f.repetitions == 0 {
        return Err(invalid("repetitions", "must be at least 1".into()));
    }
    if f.restore.is_none() && f.recovery.strategies.is_empty() {
        return Err(invalid("recovery.strategies", "name at least one strategy, e.g. [\"full-reboot\"]".into()));
    }
    let unique: BTreeSet<_> = f.recovery.strategies.iter().map(|s| s.name()).collect();
    if unique.len() != f.recovery.strategies.len() {
        return Err(invalid("recovery.strategies", "a strategy is listed twice".into()));
    }
    if f.restore.is_none() && f.inject.is_empty() {
        return Err(invalid(
            "inject",
            "add at least one [[inject]] table with `crash = \"sysrq\"` or `faults = {...}`".into(),
        ));
    }
    for (i, inject) in f.inject.iter().enumerate() {
        let key = format!("inject[{i}]");
        match (&inject.crash, &inject.faults) {
            (Some(_), Some(_)) => {
                return Err(invalid(&key, "has both `crash` and `faults`: use one [[inject]] table for each".into()))
            }
            (None, None) => {
                return Err(invalid(&key, "needs `crash = \"sysrq\"|\"panic\"|\"hang\"` or `faults = { ... }`".into()))
            }
            (None, Some(faults)) if faults.count == 0 => {
                return Err(invalid(&format!("{key}.faults.count"), "must be at least 1".into()))
            }
            _ => {}
        }
    }
    // The expansion is held in memory and numbered: bound it before
    // anything expands it.
    let injections = f.inject.iter().try_fold(0u64, |n, i| n.checked_add(i.faults.as_ref().map_or(1, |f| f.count)));
    let total = injections
        .and_then(|n| n.checked_mul(f.recovery.strategies.len().max(1) as u64))
        .and_then(|n| n.checked_mul(u64::from(f.repetitions)));
    if total.is_none_or(|n| n > MAX_EXPERIMENTS) {
        return Err(invalid(
            "repetitions",
            format!(
                "injections x strategies x repetitions is more than {MAX_EXPERIMENTS} experiments: split the campaign \
                 into several files or use fewer faults (`count`) or repetitions"
            ),
        ));
    }
    if f.workload.kind == WorkloadKind::Rubis && f.guest.profile == GuestProfile::Tiny {
        return Err(invalid(
            "workload.kind",
            "rubis needs PHP and MariaDB: use `profile = \"debian\"` in [guest]".into(),
        ));
    }
    if f.workload.kind != WorkloadKind::Rubis && f.workload.mix.is_some() {
        return Err(invalid("workload.mix", "is a RUBiS setting: use it with `kind = \"rubis\"`".into()));
    }
    if f.workload.timeout_ms == Some(0) {
        return Err(invalid("workload.timeout_ms", "must be at least 1".into()));
    }
    if f.workload.acked_writes > 0 && !f.guest.data_disk && f.guest.profile == GuestProfile::Tiny {
        return Err(invalid(
            "workload.acked_writes",
            "acknowledged writes go to the data disk: set `data_disk = true` in [guest]".into(),
        ));
    }
    if f.workload.acked_writes > 999 {
        return Err(invalid("workload.acked_writes", "at most 999 per experiment".into()));
    }
    if f.workload.clients == 0 {
        return Err(invalid("workload.clients", "must be at least 1".into()));
    }
    for (key, v) in [
        ("workload.warmup_s", f.workload.warmup_s),
        ("observe.window_s", f.observe.window_s),
        ("observe.tail_s", f.observe.tail_s),
        ("observe.hang_timeout_s", f.observe.hang_timeout_s),
        ("observe.min_outage_s", f.observe.min_outage_s),
    ] {
        crate::duration::from_secs_f64(key, v).map_err(|e| invalid(key, format!("{} {}", e.value, e.problem)))?;
    }
    for (key, ms) in [("workload.think_ms", Some(f.workload.think_ms)), ("workload.timeout_ms", f.workload.timeout_ms)]
    {
        if let Some(ms) = ms {
            let seconds = ms as f64 / 1000.0;
            crate::duration::from_secs_f64(key, seconds)
                .map_err(|e| invalid(key, format!("{ms} ms: {} {}", e.value, e.problem)))?;
        }
    }
    if let Some(t) = &f.trace {
        if f.inject.iter().all(|i| i.faults.is_none()) {
            return Err(invalid(
                "trace",
                "traces injected faults: add an [[inject]] table with `faults = {...}`".into(),
            ));
        }
        if !(1..=1_000_000).contains(&t.max_steps) {
            return Err(invalid("trace.max_steps", format!("{} is outside 1..=1000000", t.max_steps)));
        }
        if !(1..=256).contains(&t.max_watchpoints) {
            return Err(invalid("trace.max_watchpoints", format!("{} is outside 1..=256", t.max_watchpoints)));
        }
        if !(t.min_watch_s >= 0.0 && t.min_watch_s < f.observe.window_s) {
            return Err(invalid(
                "trace.min_watch_s",
                format!(
                    "{} s must be at least 0 and shorter than observe.window_s ({} s)",
                    t.min_watch_s, f.observe.window_s
                ),
            ));
        }
    }
    if f.observe.window_s <= f.observe.hang_timeout_s {
        return Err(invalid(
            "observe.window_s",
            format!(
                "{} s leaves no room to see a hang of {} s (observe.hang_timeout_s): make the window longer",
                f.observe.window_s, f.observe.hang_timeout_s
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GOOD: &str = r#"
name = "downtime"
seed = 7
repetitions = 2

[guest]
profile = "tiny"

[workload]
kind = "apache"

[[inject]]
crash = "sysrq"

[[inject]]
faults = { models = ["nop"], count = 3 }

[recovery]
strategies = ["full-reboot", "service-restore"]
"#;

    fn parse(text: &str) -> Result<Campaign, ExperimentFileError> {
        Campaign::parse(Path::new("exp.toml"), text)
    }

    #[test]
    fn expansion_is_numbered_and_keyed_uniquely() {
        let c = parse(GOOD).unwrap();
        let planned = c.expand();
        // (1 crash + 3 faults) x 2 strategies x 2 reps.
        assert_eq!(planned.len(), 16);
        assert!(planned.iter().enumerate().all(|(i, p)| p.index == i as u64));
        let keys: BTreeSet<String> = planned.iter().map(Planned::key).collect();
        assert_eq!(keys.len(), planned.len());
        assert_eq!(planned[0].key(), "crash=sysrq strategy=full-reboot rep=0");
        assert_eq!(planned[15].key(), "fault=2 strategy=service-restore rep=1");
        assert_eq!(c.file.observe, ObserveSpec::default());
    }

    #[test]
    fn accel_pins_an_auto_file_and_refuses_to_contradict_a_named_one() {
        let auto = parse(GOOD).unwrap();
        assert_eq!(auto.file.guest.accel, AccelName::Auto);
        let (name, sha) = (auto.file.name.clone(), auto.sha256.clone());
        let pinned = auto.pinned_to(AccelName::Tcg).unwrap();
        assert_eq!(pinned.file.guest.accel, AccelName::Tcg);
        assert_eq!((pinned.file.name.clone(), pinned.sha256.clone()), (name, sha), "the same campaign");
        assert_eq!(pinned.clone().pinned_to(AccelName::Tcg).unwrap().file.guest.accel, AccelName::Tcg);
        assert_eq!(pinned.clone().pinned_to(AccelName::Auto).unwrap().file.guest.accel, AccelName::Tcg);
        let err = pinned.pinned_to(AccelName::Kvm).unwrap_err().to_string();
        assert!(err.contains("guest.accel") && err.contains("runs on tcg but --accel kvm"), "{err}");
    }

    #[test]
    fn a_faults_table_draws_from_the_image_unless_it_names_the_profile() {
        let c = parse(GOOD).unwrap();
        assert!(!c.needs_profile());
        let guided = GOOD.replace("count = 3 }", "count = 3, targets = \"profile\", weighting = \"uniform\" }");
        let c = parse(&guided).unwrap();
        assert!(c.needs_profile());
        let f = c.file.inject[1].faults.as_ref().unwrap();
        assert_eq!((f.targets, f.weighting), (TargetSource::Profile, injector::fault::Weighting::Uniform));
        let e = parse(&GOOD.replace("count = 3 }", "count = 3, targets = \"trace\" }")).unwrap_err().to_string();
        assert!(e.contains("targets") || e.contains("trace"), "{e}");
    }

    #[test]
    fn a_trace_table_is_checked() {
        let traced = format!("{GOOD}\n[trace]\nmax_steps = 500\n");
        let c = parse(&traced).unwrap();
        let t = c.file.trace.unwrap();
        assert_eq!((t.max_steps, t.max_watchpoints), (500, injector::trace::TraceConfig::default().max_watchpoints));
        let e = parse(&format!("{GOOD}\n[trace]\nmax_steps = 0\n")).unwrap_err().to_string();
        assert!(e.contains("trace.max_steps"), "{e}");
        let e = parse(&format!("{GOOD}\n[trace]\nmax_step = 10\n")).unwrap_err().to_string();
        assert!(e.contains("max_step") && e.contains("line"), "{e}");
        let crashes_only = GOOD.replace("[[inject]]\nfaults = { models = [\"nop\"], count = 3 }\n", "");
        let e = parse(&format!("{crashes_only}\n[trace]\n")).unwrap_err().to_string();
        assert!(e.contains("trace") && e.contains("faults"), "{e}");

        // The verdict's rules: defaults, both interrupt rules, bad values.
        let config = t.config();
        assert_eq!((config.min_watch_s, config.interrupts), (1.0, injector::trace::InterruptContext::Separate));
        let c = parse(&format!("{GOOD}\n[trace]\nmin_watch_s = 0.5\ninterrupts = \"task\"\n")).unwrap();
        let config = c.file.trace.unwrap().config();
        assert_eq!((config.min_watch_s, config.interrupts), (0.5, injector::trace::InterruptContext::Task));
        let e = parse(&format!("{GOOD}\n[trace]\ninterrupts = \"irq\"\n")).unwrap_err().to_string();
        assert!(e.contains("irq") && e.contains("separate") && e.contains("task"), "{e}");
        let e = parse(&format!("{GOOD}\n[trace]\nmin_watch_s = 99\n")).unwrap_err().to_string();
        assert!(e.contains("trace.min_watch_s"), "{e}");
    }

    #[test]
    fn the_service_outage_threshold_is_a_key() {
        assert_eq!(parse(GOOD).unwrap().file.observe.service_criterion().min_outage_s, 2.0);
        let c = parse(&format!("{GOOD}\n[observe]\nmin_outage_s = 3.5\n")).unwrap();
        assert_eq!(c.file.observe.service_criterion().min_outage_s, 3.5);
        let e = parse(&format!("{GOOD}\n[observe]\nmin_outage_s = -1\n")).unwrap_err().to_string();
        assert!(e.contains("observe.min_outage_s"), "{e}");
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let bad = GOOD.replace("\"service-restore\"", "\"service-restor\"");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("exp.toml") && e.contains("line 19") && e.contains("service-restor"), "{e}");

        let bad = GOOD.replace("seed = 7", "seed = 7\nsed = 3");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("sed"), "{e}");

        let bad = GOOD.replace("crash = \"sysrq\"", "crash = \"sysrq\"\nfaults = { count = 1 }");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("inject[0]") && e.contains("both"), "{e}");

        let bad = GOOD.replace("kind = \"apache\"", "kind = \"rubis\"");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("workload.kind") && e.contains("debian"), "{e}");
        let rubis = bad.replace("profile = \"tiny\"", "profile = \"debian\"");
        let c = parse(&rubis.replace("kind = \"rubis\"", "kind = \"rubis\"\nmix = \"bidding\"")).unwrap();
        assert_eq!((c.file.workload.rubis_mix(), c.file.workload.timeout()), (Mix::Bidding, Duration::from_secs(5)));
        let e = parse(&rubis.replace("kind = \"rubis\"", "kind = \"rubis\"\nmix = \"buying\"")).unwrap_err();
        assert!(e.to_string().contains("buying"), "{e}");
        let e = parse(&GOOD.replace("kind = \"apache\"", "kind = \"apache\"\nmix = \"browsing\"")).unwrap_err();
        assert!(e.to_string().contains("workload.mix"), "{e}");

        for (value, why) in [("1e30", "longest"), ("-1.0", "negative"), ("inf", "finite"), ("nan", "finite")] {
            let bad = GOOD.replace("[recovery]", &format!("[observe]\nwindow_s = {value}\n\n[recovery]"));
            let e = parse(&bad).unwrap_err().to_string();
            assert!(e.contains("observe.window_s") && e.contains(why), "{value}: {e}");
        }

        let bad = GOOD.replace("name = \"downtime\"", "name = \"down time\"");
        assert!(parse(&bad).unwrap_err().to_string().contains("key `name`"));
    }

    #[test]
    fn the_shipped_experiment_files_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                if crate::update::spec::is_update_file(&path) {
                    let u = crate::update::spec::UpdateCampaign::load(&path).unwrap_or_else(|e| panic!("{e}"));
                    assert!(!u.experiments().is_empty(), "{}", path.display());
                    seen += 1;
                    continue;
                }
                let c = Campaign::load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!(!c.expand().is_empty(), "{}", path.display());
                seen += 1;
            }
        }
        assert!(seen >= 1, "no experiment files in {}", dir.display());
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        // Any value, of any TOML type, at any key of a valid file gives a
        // campaign or an error naming the problem, never a panic (the
        // seconds keys once reached `Duration::from_secs_f64` unchecked).
        #[test]
        fn any_value_at_any_key_parses_or_errs(
            key in proptest::sample::select(vec![
                "seed", "repetitions", "window_s", "tail_s", "hang_timeout_s", "warmup_s", "think_ms",
                "timeout_ms", "clients", "acked_writes", "memory_mb", "count",
            ]),
            value in proptest::prop_oneof![
                proptest::num::f64::ANY.prop_map(|v| format!("{v:?}")),
                proptest::num::i64::ANY.prop_map(|v| v.to_string()),
                proptest::strategy::Just("inf".to_string()),
                proptest::strategy::Just("nan".to_string()),
                "[a-z0-9\\. ]{0,8}".prop_map(|v| format!("\"{v}\"")),
            ],
        ) {
            let table = match key {
                "window_s" | "tail_s" | "hang_timeout_s" => "observe",
                "warmup_s" | "think_ms" | "timeout_ms" | "clients" | "acked_writes" => "workload",
                "memory_mb" => "guest",
                "count" => "faults",
                _ => "",
            };
            let text = match table {
                "" => GOOD.replace(&format!("\n{key} = "), &format!("\n{key} = {value}\nold_{key} = ")),
                "faults" => GOOD.replace("count = 3", &format!("count = {value}")),
                "observe" => GOOD.replace("[recovery]", &format!("[observe]\n{key} = {value}\n\n[recovery]")),
                t => GOOD.replace(&format!("[{t}]\n"), &format!("[{t}]\n{key} = {value}\n")),
            };
            if let Ok(c) = parse(&text) {
                let _ = c.expand();
                let _ = (c.file.observe.window(), c.file.observe.tail(), c.file.observe.hang_timeout());
                let _ = (c.file.workload.warmup(), c.file.workload.think(), c.file.workload.timeout());
            }
        }
    }
}
