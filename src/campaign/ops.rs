//! What the campaign commands do (`kfi campaign run|status|merge|slurm`,
//! `kfi replay`, `kfi report`, `kfi check`, `kfi reproduce`), as calls that
//! return what the binary prints.
//!
//! Every long call takes [`Steps`] (set-up progress, and a call once
//! before the experiments' own progress bar starts, so the caller can
//! clear its spinner) and a `stop` flag that ends the run after the
//! running experiments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use analysis::record::{ExperimentRecord, Provenance};
use analysis::report::ReportSummary;
use analysis::store::{MergeSummary, Store};
use anyhow::{bail, Context, Result};
use recovery_sut::{AccelChoice, Cache, KernelChoice, VmConfig};
use serde::Serialize;

use super::check::{self, Baseline};
use super::env::{self, store_path, Environment, RunOptions, RunSummary};
use super::experiment::{self, Shared};
use super::golden::{self, KeptGolden, Source};
use super::slurm::{self, SlurmOptions};
use super::spec::{AccelName, Campaign, GuestProfile, Planned, WorkloadKind};
use super::{compare, faults, restore, runner};
use crate::setup::{prepare_guest, Prepared};

/// How a long call reports its set-up.
pub trait Steps {
    /// One set-up step, as it starts.
    fn step(&self, msg: &str);
    /// Set-up is over; the experiments' progress bar starts.
    fn setup_done(&self);
}

/// The stop flag Ctrl-C sets: the first stops after the running
/// experiments (a resume reruns nothing stored), the second abandons them.
/// One handler per process, shared by every campaign a command runs.
pub fn interrupt_flag() -> Result<Arc<AtomicBool>> {
    static STOP: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    if let Some(stop) = STOP.get() {
        return Ok(Arc::clone(stop));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            // Second Ctrl-C: abandon the running experiments (their QEMUs
            // die with this process; they rerun on resume).
            std::process::exit(130);
        }
        eprintln!("kfi: stopping after the running experiments (Ctrl-C again to abandon them; they rerun on resume)");
    })
    .context("installing the Ctrl-C handler")?;
    Ok(Arc::clone(STOP.get_or_init(|| stop)))
}

/// Loads an experiment file, on another guest when asked (a campaign of
/// its own, `<name>-<guest>`).
pub fn load(file: &Path, guest: Option<GuestProfile>) -> Result<Campaign> {
    let campaign = Campaign::load(file)?;
    Ok(match guest {
        Some(g) => campaign.on_guest(g),
        None => campaign,
    })
}

/// The results directory: the one given, or `results/<campaign name>`.
pub fn results_dir(campaign: &Campaign, given: Option<&Path>) -> PathBuf {
    given.map(Path::to_path_buf).unwrap_or_else(|| Path::new("results").join(&campaign.file.name))
}

/// The guest, VM settings and provenance of a campaign.
/// The debian image's package list, kept in the store under the hash the
/// provenance names.
type Packages = Option<String>;

/// The kernel a campaign runs on: the one its file names, else the
/// lock's default.
pub fn kernel_choice(campaign: &Campaign) -> Result<KernelChoice> {
    Ok(KernelChoice::Locked(crate::setup::locked_kernel(campaign.file.guest.kernel.as_deref())?))
}

fn prepare(
    cache: &Cache,
    campaign: &Campaign,
    step: &dyn Fn(&str),
) -> Result<(Prepared, VmConfig, Provenance, Packages)> {
    let g = &campaign.file.guest;
    let accel = AccelChoice::from(g.accel);
    let kernel = kernel_choice(campaign)?;
    let prepared = prepare_guest(cache, g.profile.into(), &kernel, accel, g.memory_mb, step)?;
    let mut config = VmConfig {
        accel: prepared.decision.accel,
        memory_mib: prepared.memory_mib,
        data_disk: g.data_disk,
        ..VmConfig::default()
    };
    // A crash that needs kernel arguments (the NMI panic) gets them.
    let args: BTreeSet<&str> =
        campaign.file.inject.iter().filter_map(|i| i.crash).flat_map(|c| c.kernel_args()).copied().collect();
    config.extra_cmdline.extend(args.into_iter().map(str::to_string));
    let (provenance, packages) = crate::provenance::of(&prepared, campaign.file.seed)?;
    Ok((prepared, config, provenance, packages))
}

/// Runs (or resumes) a campaign into `opts.results`.
pub fn run_campaign(
    cache: &Cache,
    campaign: &Campaign,
    opts: &RunOptions,
    stop: Arc<AtomicBool>,
    steps: &dyn Steps,
) -> Result<RunSummary> {
    let step = |m: &str| steps.step(m);
    let (prepared, config, provenance, image_packages) = prepare(cache, campaign, &step)?;
    let site = faults::ProfileSite { prepared: &prepared, config: &config, dir: opts.profile_dir() };
    let faults = faults::runner_for(cache, campaign, Some(site), &step)?;
    step(&format!("golden run: booting the {} guest and freezing its service", prepared.profile));
    steps.setup_done();
    let env =
        Environment { image: &prepared.image, config, provenance, image_packages, faults: faults.as_deref(), stop };
    opts.seed_scratch()?;
    let ran = runner::run(campaign, &env, opts, opts.keep_golden.then_some(cache));
    // Whether it ended, stopped or failed: what it stored reaches the results directory.
    if let Some(scratch) = &opts.scratch {
        env::finish_scratch(scratch, &opts.results)?;
    }
    ran
}

/// A campaign's golden-run profile and whether this call made it.
pub struct ProfileUse {
    /// The profile.
    pub profile: injector::profile::Profile,
    /// Made now (not found in the results directory).
    pub made: bool,
    /// Where it is kept.
    pub dir: PathBuf,
}

/// What `kfi profile` asks for.
#[derive(Debug, Clone, Copy)]
pub struct ProfileRequest {
    /// The load's duration (default: the campaign's observation window).
    pub window: Option<std::time::Duration>,
    /// Make it anew even if one is kept.
    pub remake: bool,
    /// Count `.data`/`.bss` accesses too (data flips draw from them).
    pub memory: bool,
}

impl Default for ProfileRequest {
    fn default() -> Self {
        ProfileRequest { window: None, remake: false, memory: true }
    }
}

/// The profile kept in `dir` for this campaign, checked against its
/// kernel, image and workload; made there first when missing, or when
/// `request.remake`; with its summary against the kernel image.
pub fn profile(
    cache: &Cache,
    campaign: &Campaign,
    dir: &Path,
    request: ProfileRequest,
    step: &dyn Fn(&str),
) -> Result<(ProfileUse, injector::profile::Summary)> {
    let (prepared, config, _, _) = prepare(cache, campaign, step)?;
    let model = crate::setup::load_kernel_model(cache, &kernel_choice(campaign)?, step)?;
    let used = obtain_profile(campaign, &prepared, &config, &model.image, dir, request, step)?;
    let summary = used.profile.summary(&model.image);
    Ok((used, summary))
}

/// [`profile`] for a caller that has prepared the guest and loaded the
/// kernel's image.
pub fn obtain_profile(
    campaign: &Campaign,
    prepared: &Prepared,
    config: &VmConfig,
    image: &injector::KernelImage,
    dir: &Path,
    request: ProfileRequest,
    step: &dyn Fn(&str),
) -> Result<ProfileUse> {
    use injector::profile::Profile;
    let expected = super::profile::expected_meta(campaign, image, prepared);
    if Profile::exists(dir) && !request.remake {
        let profile = Profile::load(dir).with_context(|| format!("reading the profile in {}", dir.display()))?;
        profile.check_kernel(image)?;
        super::profile::check_matches(&profile.meta, &expected).with_context(|| {
            format!(
                "the profile {} in {} is not this campaign's: make it anew with `kfi profile {} --remake`",
                profile.id(),
                dir.display(),
                campaign.path.display()
            )
        })?;
        return Ok(ProfileUse { profile, made: false, dir: dir.to_path_buf() });
    }
    let window = request.window.unwrap_or_else(|| campaign.file.observe.window());
    let profile = super::profile::make(campaign, prepared, config, image, window, request.memory, dir, step)?;
    Ok(ProfileUse { profile, made: true, dir: dir.to_path_buf() })
}

/// How far a campaign got.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Campaign name.
    pub campaign: String,
    /// Experiments in the campaign.
    pub total: usize,
    /// Stored (in the results directory's store or, for a campaign run
    /// through `kfi campaign slurm`, in any shard's).
    pub done: usize,
    /// Stored records by outcome.
    pub outcomes: BTreeMap<String, u64>,
    /// The next few pending experiments.
    pub next: Vec<u64>,
    /// Experiments stored as `harness-error`, with the last attempt's
    /// error (`kfi campaign run --retry-errors` reruns them).
    pub harness_errors: Vec<(u64, String)>,
    /// The store.
    pub store: PathBuf,
    /// Each shard of a campaign run through `kfi campaign slurm`.
    pub shards: Vec<slurm::ShardProgress>,
}

impl Status {
    /// Whether every experiment is stored.
    pub fn complete(&self) -> bool {
        self.done == self.total
    }

    /// What `kfi campaign status` prints (`file`: the experiment file, for
    /// the commands it suggests).
    pub fn describe(&self, file: &Path) -> String {
        let mut out =
            format!("{}: {}/{} experiments stored in {}\n", self.campaign, self.done, self.total, self.store.display());
        for (outcome, n) in &self.outcomes {
            out += &format!("  {outcome:<14} {n}\n");
        }
        if !self.next.is_empty() {
            out += &format!("  next: {}\n", self.next.iter().map(u64::to_string).collect::<Vec<_>>().join(", "));
        }
        for (i, error) in &self.harness_errors {
            out += &format!("  harness-error {i}: {error}\n");
        }
        if !self.harness_errors.is_empty() {
            out += &format!("  rerun them with `kfi campaign run {} --retry-errors`\n", file.display());
        }
        for p in &self.shards {
            out += &format!(
                "  shard {}/{}: {} of {} stored, {} pending, {} harness-error{}\n",
                p.shard,
                p.of,
                p.stored,
                p.total,
                p.pending(),
                p.harness_errors,
                p.job.as_deref().map(|j| format!(", job {j}")).unwrap_or_default()
            );
        }
        let unfinished: Vec<String> =
            self.shards.iter().filter(|p| p.pending() > 0).map(|p| p.shard.to_string()).collect();
        if !unfinished.is_empty() && self.shards.iter().all(|p| p.job.is_none()) {
            out += &format!(
                "  shards {} have experiments to run: `kfi campaign slurm {} --shards {} --submit` runs only those\n",
                unfinished.join(", "),
                file.display(),
                self.shards.len()
            );
        }
        out
    }
}

/// How far a campaign got, from the results directory's store and, for a
/// campaign run through `kfi campaign slurm`, its shards' stores (read
/// only: they may sit on a shared filesystem).
pub fn status(campaign: &Campaign, results: &Path, file: &Path) -> Result<Status> {
    let shards = slurm::progress(campaign, results)?;
    let path = store_path(results);
    // The merged store first: a record there is the one the report uses.
    let mut stores = vec![path.clone()];
    stores.extend(
        (1..=shards.len() as u64).map(|index| {
            store_path(&slurm::shard_dir(results, super::env::Shard { index, count: shards.len() as u64 }))
        }),
    );
    stores.retain(|p| p.exists());
    if stores.is_empty() {
        bail!(
            "no results for campaign `{}` in {}: start it with `kfi campaign run {}`{}",
            campaign.file.name,
            results.display(),
            file.display(),
            if shards.is_empty() { "" } else { " (or wait: no shard has stored an experiment yet)" }
        );
    }
    let mut records = BTreeMap::new();
    for store in &stores {
        for r in Store::open_read_only(store)?.records(&campaign.file.name)? {
            records.entry(r.experiment).or_insert(r);
        }
    }
    let mut outcomes = BTreeMap::<String, u64>::new();
    for r in records.values() {
        *outcomes.entry(r.outcome.to_string()).or_default() += 1;
    }
    let harness_errors = records
        .values()
        .filter_map(|r| r.harness_error.as_ref().map(|h| (r.experiment, h.errors.last().cloned().unwrap_or_default())))
        .collect();
    let all = campaign.expand();
    let next: Vec<u64> = all.iter().map(|p| p.index).filter(|i| !records.contains_key(i)).take(5).collect();
    Ok(Status {
        campaign: campaign.file.name.clone(),
        total: all.len(),
        done: records.len(),
        outcomes,
        next,
        harness_errors,
        store: path,
        shards,
    })
}

/// Imports the stores of the results directories `from` into the one of
/// `into`. With `scratch`, the merge works on a store in that (node-local)
/// directory and copies it, complete, into `into` at the end: `into` may
/// be on a shared filesystem, where SQLite's WAL does not work.
pub fn merge(
    into: &Path,
    from: &[PathBuf],
    allow_mixed: bool,
    scratch: Option<&Path>,
) -> Result<Vec<(PathBuf, MergeSummary)>> {
    std::fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
    if let Some(scratch) = scratch {
        env::seed_scratch(scratch, into)?;
    }
    let merged = (|| {
        let store = Store::open(store_path(scratch.unwrap_or(into)))?;
        from.iter().map(|dir| Ok((dir.clone(), store.merge_from(store_path(dir), allow_mixed)?))).collect()
    })();
    if let Some(scratch) = scratch {
        env::finish_scratch(scratch, into)?;
    }
    merged
}

/// `kfi campaign slurm`: refuses bad input, prepares the guest once in
/// the cache the tasks share (kernel, image, and for fault campaigns the
/// symbol index), pins the accelerator, writes the job scripts, and
/// submits the shards that have experiments to run when asked.
pub fn slurm(
    cache: &Cache,
    campaign: &Campaign,
    file: &Path,
    opts: &SlurmOptions,
    steps: &dyn Steps,
) -> Result<slurm::Prepared> {
    slurm::check(campaign, opts)?;
    let step = |m: &str| steps.step(m);
    let (prepared, config, ..) = prepare(cache, campaign, &step)?;
    // Every shard draws from the one profile, made here when missing.
    let site = faults::ProfileSite { prepared: &prepared, config: &config, dir: &opts.results };
    faults::runner_for(cache, campaign, Some(site), &step)?;
    steps.setup_done();
    let absolute = |p: &Path| std::path::absolute(p).with_context(|| format!("resolving {}", p.display()));
    let launch = slurm::Launch {
        kfi: std::env::current_exe().context("finding the kfi binary the tasks run")?,
        workdir: std::env::current_dir().context("reading the working directory")?,
        file: absolute(file)?,
        cache: absolute(cache.root())?,
        kernel_lock: absolute(&crate::setup::kernel_lock_path())?,
        accel: match prepared.decision.accel {
            recovery_sut::Accel::Tcg => AccelName::Tcg,
            recovery_sut::Accel::Kvm => AccelName::Kvm,
        },
    };
    let opts = SlurmOptions { results: absolute(&opts.results)?, ..opts.clone() };
    let scripts = slurm::write(campaign, &opts, &launch)?;
    let pending = slurm::pending_shards(campaign, &opts.results)?;
    let submission = match opts.submit {
        true => Some(slurm::submit(&scripts, &pending, &opts.results)?),
        false => None,
    };
    Ok(slurm::Prepared {
        submit_command: slurm::submit_command(&scripts, &pending)?,
        scripts,
        accel: launch.accel,
        pending_shards: pending,
        submission,
    })
}

/// One experiment run again, next to its stored record.
pub struct Replayed {
    /// The experiment.
    pub planned: Planned,
    /// The new record (not stored).
    pub record: ExperimentRecord,
    /// The stored one, when the results directory has it.
    pub stored: Option<ExperimentRecord>,
    /// The store looked in.
    pub store: PathBuf,
    /// Where it started from (`from the kept golden snapshot <key>`, `from
    /// a new golden run`; a restore measurement boots its own guest).
    pub golden: String,
}

/// What `kfi replay` prints: text, or JSON with `--json`.
pub trait Printed {
    /// The JSON.
    fn json(&self) -> serde_json::Value;
    /// The text.
    fn describe(&self) -> String;
}

impl Printed for compare::Agreement {
    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    fn describe(&self) -> String {
        compare::Agreement::describe(self)
    }
}

impl Printed for Replayed {
    /// Both records and where the replay started from.
    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "replayed": self.record, "stored": self.stored, "golden": self.golden })
    }

    /// The replay next to the stored record.
    fn describe(&self) -> String {
        let (p, name) = (&self.planned, &self.record.campaign);
        let mut out = format!("experiment {} of {name} ({}), replayed {}:\n", p.index, p.key(), self.golden);
        match &self.stored {
            Some(stored) => out += &compare::table(stored, &self.record),
            None => {
                out += &format!("(no stored record in {}: the replay alone)\n", self.store.display());
                out += &compare::table(&self.record, &self.record);
            }
        }
        out
    }
}

/// Re-runs experiment `id` exactly (same fault spec or restore point, same
/// seeds), from the campaign's kept golden snapshot when there is one (see
/// `kfi campaign run --keep-golden`), else from a new golden run; nothing
/// is stored.
pub fn replay(
    cache: &Cache,
    campaign: &Campaign,
    id: u64,
    results: &Path,
    stop: Arc<AtomicBool>,
    step: &dyn Fn(&str),
) -> Result<Replayed> {
    let all = campaign.expand();
    let planned = all.iter().find(|p| p.index == id).cloned().with_context(|| {
        format!(
            "{} has no experiment {id} (it has 0 to {}; `kfi campaign status {}` lists them)",
            campaign.path.display(),
            all.len().saturating_sub(1),
            campaign.path.display()
        )
    })?;
    let store = store_path(results);
    let stored = if store.exists() {
        Store::open(&store)?.records(&campaign.file.name)?.into_iter().find(|r| r.experiment == id)
    } else {
        None
    };
    let (prepared, config, provenance, image_packages) = prepare(cache, campaign, step)?;
    let site = faults::ProfileSite { prepared: &prepared, config: &config, dir: results };
    let faults = faults::runner_for(cache, campaign, Some(site), step)?;
    let env =
        Environment { image: &prepared.image, config, provenance, image_packages, faults: faults.as_deref(), stop };
    if campaign.file.restore.is_some() {
        step(&format!("experiment {} ({}): preparing its guest", planned.index, planned.key()));
        let record = restore::replay(campaign, &env, &planned)?;
        return Ok(Replayed { planned, record, stored, store, golden: "from a guest booted for it".into() });
    }
    let docs = workloads::DocList::load(&prepared.image.dir.join("docs.json"))?;
    // kexec-reboot's experiments start from their own golden snapshot.
    let env = env.for_strategy(planned.strategy);
    let kept = KeptGolden::new(cache, &prepared.image, &env.config, campaign)?;
    let start = GoldenStart::open(&kept, &env, &docs, campaign, step)?;
    step(&format!("experiment {} ({}) {}", planned.index, planned.key(), start.source));
    let shared = Shared { campaign, docs: &docs, provenance: &env.provenance, faults: env.faults };
    let record = experiment::run(&shared, &start.golden, &planned)?;
    Ok(Replayed { planned, record, stored, store, golden: start.source.to_string() })
}

/// Replays `n` of the stored activated fault experiments of `results`
/// (drawn by `seed`), one after another from the campaign's kept golden
/// snapshot when there is one (else from one new golden run), and counts
/// how many come to the stored outcome and activation. Nothing is stored.
pub fn agreement(
    cache: &Cache,
    campaign: &Campaign,
    results: &Path,
    n: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    step: &dyn Fn(&str),
) -> Result<compare::Agreement> {
    let path = store_path(results);
    if !path.exists() {
        bail!("{} holds no campaign.sqlite: give the results directory of a campaign", results.display());
    }
    let records = Store::open(&path)?.records(&campaign.file.name)?;
    let activated = compare::activated_faults(&records);
    if activated.is_empty() {
        bail!("{} holds no fault experiment whose fault activated", path.display());
    }
    let chosen = compare::sample(&activated.iter().map(|r| r.experiment).collect::<Vec<_>>(), n, seed);
    let all = campaign.expand();
    let (prepared, config, provenance, image_packages) = prepare(cache, campaign, step)?;
    let site = faults::ProfileSite { prepared: &prepared, config: &config, dir: results };
    let faults = faults::runner_for(cache, campaign, Some(site), step)?;
    let env =
        Environment { image: &prepared.image, config, provenance, image_packages, faults: faults.as_deref(), stop };
    let docs = workloads::DocList::load(&prepared.image.dir.join("docs.json"))?;
    // Golden snapshots per strategy group (kexec-reboot's guests reserve a
    // crash kernel), opened when a replay first needs one.
    let mut starts: Vec<(bool, Environment<'_>, GoldenStart)> = Vec::new();
    let mut pairs = Vec::new();
    for (done, index) in chosen.iter().enumerate() {
        if env.stop.load(Ordering::SeqCst) {
            break;
        }
        let stored = activated.iter().find(|r| r.experiment == *index).map(|r| (*r).clone());
        let planned = all.iter().find(|p| p.index == *index);
        let (Some(stored), Some(planned)) = (stored, planned) else {
            bail!("experiment {index} is stored but not in {}: was the file changed?", campaign.path.display())
        };
        let kexec = planned.strategy == recovery_sut::Strategy::KexecReboot;
        let at = match starts.iter().position(|s| s.0 == kexec) {
            Some(at) => at,
            None => {
                let genv = env.for_strategy(planned.strategy);
                let kept = KeptGolden::new(cache, &prepared.image, &genv.config, campaign)?;
                let start = GoldenStart::open(&kept, &genv, &docs, campaign, step)?;
                starts.push((kexec, genv, start));
                starts.len() - 1
            }
        };
        let (_, genv, start) = &starts[at];
        step(&format!(
            "replaying {}/{}: experiment {index} ({}) {}",
            done + 1,
            chosen.len(),
            planned.key(),
            start.source
        ));
        let shared = Shared { campaign, docs: &docs, provenance: &genv.provenance, faults: genv.faults };
        let replayed = experiment::run(&shared, &start.golden, planned).map_err(|e| format!("{e:#}"));
        pairs.push((stored, replayed));
    }
    let sources: Vec<String> = starts.iter().map(|s| s.2.source.to_string()).collect();
    Ok(compare::Agreement::new(&campaign.file.name, sources.join("; "), activated.len(), &pairs))
}

/// A replay's golden snapshot: the kept one, or a new golden run's in a
/// temporary directory (removed with it).
struct GoldenStart {
    golden: recovery_sut::Golden,
    source: Source,
    _dir: Option<tempfile::TempDir>,
}

impl GoldenStart {
    fn open(
        kept: &KeptGolden,
        env: &Environment<'_>,
        docs: &workloads::DocList,
        campaign: &Campaign,
        step: &dyn Fn(&str),
    ) -> Result<GoldenStart> {
        if let Some(golden) = kept.open(env.image, &env.config) {
            return Ok(GoldenStart {
                golden,
                source: Source::Kept { key: kept.key.clone(), reused: true },
                _dir: None,
            });
        }
        step(&format!("golden run (no kept golden snapshot {})", kept.key));
        let dir = recovery_sut::private::tempdir("kfi-golden-")?;
        let golden = golden::golden_run(env, docs, dir.path(), campaign)?;
        Ok(GoldenStart { golden, source: Source::New, _dir: Some(dir) })
    }
}

/// Regenerates tables, figures and report.md of a results directory.
pub fn report(results: &Path) -> Result<ReportSummary> {
    let path = store_path(results);
    if !path.exists() {
        bail!("{} holds no campaign.sqlite: give the results directory of a campaign", results.display());
    }
    Ok(analysis::report::report_from_store(&path, None, results)?)
}

/// How `kfi check` judges a run.
pub struct CheckOptions {
    /// The baseline file.
    pub baseline: PathBuf,
    /// Write this run's medians as the new baseline instead of comparing.
    pub update_baseline: bool,
    /// Allowed relative growth of a strategy's downtime ratio to full reboot.
    pub tolerance: f64,
    /// Growth of the ratio always tolerated (absolute).
    pub slack: f64,
    /// VMs at once.
    pub jobs: usize,
}

/// What `kfi check` found.
pub struct CheckResult {
    /// This run's medians and ratios.
    pub measured: Baseline,
    /// The baseline compared with (`None`: a new one was written).
    pub baseline: Option<Baseline>,
    /// Records of the run.
    pub experiments: usize,
    /// What regressed; empty when the check passed.
    pub problems: Vec<check::Problem>,
    /// Ctrl-C stopped the run.
    pub interrupted: bool,
}

/// The default baseline of a regression campaign.
pub fn default_baseline(campaign: &Campaign) -> PathBuf {
    Path::new("results").join(&campaign.file.name).join("baseline.json")
}

/// Runs the regression campaign afresh (a scratch store: every check runs
/// every experiment) and compares it with the baseline, or writes it.
pub fn check(
    cache: &Cache,
    campaign: &Campaign,
    opts: &CheckOptions,
    stop: Arc<AtomicBool>,
    steps: &dyn Steps,
) -> Result<CheckResult> {
    let baseline = if opts.update_baseline { None } else { Some(check::load_baseline(&opts.baseline)?) };
    let scratch = recovery_sut::private::tempdir("kfi-check-")?;
    let run = RunOptions::all(scratch.path().to_path_buf(), opts.jobs);
    let summary = run_campaign(cache, campaign, &run, stop, steps)?;
    let records = Store::open(store_path(scratch.path()))?.records(&campaign.file.name)?;
    let measured = check::measure(&campaign.file.name, &records);
    let problems = match &baseline {
        Some(b) if !summary.interrupted => check::problems(&records, b, opts.tolerance, opts.slack),
        _ => Vec::new(),
    };
    if baseline.is_none() && !summary.interrupted {
        if let Some(dir) = opts.baseline.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&opts.baseline, serde_json::to_string_pretty(&measured)? + "\n")
            .with_context(|| format!("writing {}", opts.baseline.display()))?;
    }
    Ok(CheckResult { measured, baseline, experiments: records.len(), problems, interrupted: summary.interrupted })
}

/// The experiment files `kfi reproduce` runs: `downtime.toml`, or every
/// file but the regression set (that one is `kfi check`'s).
pub fn reproduction_files(experiments: &Path, all: bool) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = if all {
        let mut v: Vec<PathBuf> = std::fs::read_dir(experiments)
            .with_context(|| format!("reading {}", experiments.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        v.sort();
        v
    } else {
        vec![experiments.join("downtime.toml")]
    };
    files.retain(|f| f.file_stem().is_none_or(|s| s != "regression"));
    Ok(files)
}

/// One experiment file reproduced.
pub enum Reproduced {
    /// Not run, and why.
    Skipped(String),
    /// Run; the report is written unless the run was interrupted.
    Ran(Box<Reproduction>),
}

/// A reproduction that ran.
pub struct Reproduction {
    /// The campaign.
    pub campaign: Campaign,
    /// Its results directory.
    pub results: PathBuf,
    /// The run.
    pub summary: RunSummary,
    /// The report's headline (none when interrupted).
    pub report: Option<ReportSummary>,
    /// A complete (or differently defined) stored campaign was forgotten
    /// first: the previous data stays in git history only.
    pub measured_anew: bool,
}

/// Where and how `kfi reproduce` runs.
pub struct ReproduceOptions {
    /// The guest every file runs on.
    pub guest: GuestProfile,
    /// One results directory per campaign goes here.
    pub results_root: PathBuf,
    /// VMs at once.
    pub jobs: usize,
}

/// Runs one experiment file for `kfi reproduce`: a complete stored
/// campaign (the committed reference, or an earlier run) is measured anew,
/// an interrupted one resumed; then the report is written.
pub fn reproduce(
    cache: &Cache,
    file: &Path,
    opts: &ReproduceOptions,
    stop: Arc<AtomicBool>,
    steps: &dyn Steps,
) -> Result<Reproduced> {
    let guest = opts.guest;
    let own = Campaign::load(file)?.file.guest.profile;
    let campaign = load(file, Some(guest))?;
    if campaign.file.workload.kind == WorkloadKind::Rubis && guest == GuestProfile::Tiny {
        return Ok(Reproduced::Skipped("RUBiS needs the debian guest (`--guest debian`)".into()));
    }
    // A file written for the debian guest is that guest's campaign: on tiny
    // it would repeat a tiny file's under another name.
    if own == GuestProfile::Debian && guest != own {
        return Ok(Reproduced::Skipped("written for the debian guest (`--guest debian` runs it)".into()));
    }
    let results = opts.results_root.join(&campaign.file.name);
    let measured_anew = measure_anew_if_complete(&campaign, &results)?;
    let run = RunOptions::all(results.clone(), opts.jobs);
    let summary = run_campaign(cache, &campaign, &run, stop, steps)?;
    let report = if summary.interrupted { None } else { Some(report(&results)?) };
    Ok(Reproduced::Ran(Box::new(Reproduction { campaign, results, summary, report, measured_anew })))
}

/// Forgets a complete (or differently defined) stored campaign; returns
/// whether it did.
fn measure_anew_if_complete(campaign: &Campaign, results: &Path) -> Result<bool> {
    let path = store_path(results);
    if !path.exists() {
        return Ok(false);
    }
    let store = Store::open(&path)?;
    let done = store.done(&campaign.file.name)?;
    let same_file = store.campaign(&campaign.file.name)?.is_none_or(|m| m.file_sha256 == campaign.sha256);
    if done.len() == campaign.expand().len() || !same_file {
        store.forget_campaign(&campaign.file.name)?;
        return Ok(true);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    struct Quiet;

    impl Steps for Quiet {
        fn step(&self, _: &str) {}
        fn setup_done(&self) {}
    }

    /// `kfi reproduce --all` on tiny skips a file written for the debian
    /// guest before preparing anything (on tiny it would repeat a tiny
    /// file's campaign under another name).
    #[test]
    fn reproduce_on_tiny_skips_a_file_written_for_debian() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("outcomes-debian.toml");
        let text = "name = \"outcomes-debian\"\nseed = 1\n\n[guest]\nprofile = \"debian\"\n\n[workload]\nkind = \
                    \"apache\"\n\n[[inject]]\ncrash = \"sysrq\"\n\n[recovery]\nstrategies = [\"full-reboot\"]\n";
        std::fs::write(&file, text).unwrap();
        let cache = Cache::at(dir.path().join("cache")).unwrap();
        let opts = ReproduceOptions { guest: GuestProfile::Tiny, results_root: dir.path().join("results"), jobs: 1 };
        let done = reproduce(&cache, &file, &opts, Arc::new(AtomicBool::new(false)), &Quiet).unwrap();
        let Reproduced::Skipped(why) = done else { panic!("a debian file ran on tiny") };
        assert!(why.contains("--guest debian"), "{why}");
        assert!(!dir.path().join("results").exists(), "nothing was run or written");
    }
}
