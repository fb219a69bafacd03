//! `kfi campaign run|status|merge`, `kfi replay`, `kfi report` and
//! `kfi reproduce`: argument structs and their wiring.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use analysis::record::Provenance;
use analysis::store::Store;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use recovery_sut::{AccelChoice, Cache, KernelChoice, VmConfig};

use super::experiment::{self, Shared};
use super::runner::{self, Environment, RunOptions, RunSummary, Shard};
use super::spec::{AccelName, Campaign, GuestProfile, WorkloadKind};
use crate::{prepare_guest, Prepared, Progress};

/// `kfi campaign ...`.
#[derive(Subcommand)]
pub enum CampaignCommand {
    /// Run (or resume) every experiment of an experiment file not yet stored.
    Run(RunArgs),
    /// Show how far a campaign got and its outcome counts.
    Status(StatusArgs),
    /// Import the records of other results directories (`--shard` halves) into this one.
    Merge {
        /// The results directory to merge into.
        into: PathBuf,
        /// Results directories to import.
        #[arg(required = true)]
        from: Vec<PathBuf>,
    },
}

/// `kfi campaign run`.
#[derive(Args)]
pub struct RunArgs {
    /// Experiment file (TOML), e.g. experiments/downtime.toml.
    pub file: PathBuf,
    /// Results directory (default: results/<campaign name>).
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// VMs at once (each takes one core under TCG).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Run only shard i of N (1-based), e.g. 1/2; merge the halves with `kfi campaign merge`.
    #[arg(long)]
    pub shard: Option<Shard>,
    /// Stop after this many new experiments.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Run the campaign on this guest instead of the file's (results go to results/<name>-<guest>).
    #[arg(long, value_enum)]
    pub guest: Option<GuestProfile>,
    /// Print the run summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `kfi campaign status`.
#[derive(Args)]
pub struct StatusArgs {
    /// Experiment file.
    pub file: PathBuf,
    /// Results directory (default: results/<campaign name>).
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// The guest the campaign was run on, if not the file's (`--guest` of
    /// `kfi campaign run`).
    #[arg(long, value_enum)]
    pub guest: Option<GuestProfile>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `kfi replay`.
#[derive(Args)]
pub struct ReplayArgs {
    /// Experiment file.
    pub file: PathBuf,
    /// Experiment index (see `kfi campaign status`).
    pub id: u64,
    /// Results directory holding the stored record to compare with.
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Run on this guest instead of the file's (as the campaign was run).
    #[arg(long, value_enum)]
    pub guest: Option<GuestProfile>,
    /// Print both records in full, as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `kfi report`.
#[derive(Args)]
pub struct ReportArgs {
    /// A results directory (holding campaign.sqlite).
    pub results: PathBuf,
}

/// `kfi check`.
#[derive(Args)]
pub struct CheckArgs {
    /// The regression experiment file, e.g. experiments/regression.toml.
    pub file: PathBuf,
    /// Baseline to compare with (default: results/<name>/baseline.json).
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Allowed relative growth of a strategy's downtime ratio to full reboot.
    #[arg(long, default_value_t = 0.5)]
    pub tolerance: f64,
    /// Growth of the ratio (absolute, e.g. 0.02 = 2 points) always tolerated: tiny ratios are noisy.
    #[arg(long, default_value_t = 0.02)]
    pub slack: f64,
    /// Write this run's medians as the new baseline instead of comparing.
    #[arg(long)]
    pub update_baseline: bool,
    /// VMs at once.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
}

/// `kfi reproduce`.
#[derive(Args)]
pub struct ReproduceArgs {
    /// Guest profile.
    #[arg(long, value_enum, default_value = "tiny")]
    pub guest: GuestProfile,
    /// Run every experiment file in experiments/ instead of the downtime one.
    #[arg(long)]
    pub all: bool,
    /// Where experiment files are.
    #[arg(long, default_value = "experiments")]
    pub experiments: PathBuf,
    /// Where results go (one directory per campaign).
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// VMs at once.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
}

fn load(file: &Path, guest: Option<GuestProfile>) -> Result<Campaign> {
    let campaign = Campaign::load(file)?;
    Ok(match guest {
        Some(g) => campaign.on_guest(g),
        None => campaign,
    })
}

fn results_dir(campaign: &Campaign, given: Option<&Path>) -> PathBuf {
    given.map(Path::to_path_buf).unwrap_or_else(|| Path::new("results").join(&campaign.file.name))
}

/// The stop flag Ctrl-C sets; one handler per process, shared by every
/// campaign a command runs.
fn stop_flag() -> Result<Arc<AtomicBool>> {
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

/// The guest, VM settings and provenance of a campaign.
fn prepare(cache: &Cache, campaign: &Campaign, step: &dyn Fn(&str)) -> Result<(Prepared, VmConfig, Provenance)> {
    let g = &campaign.file.guest;
    let accel = match g.accel {
        AccelName::Auto => AccelChoice::Auto,
        AccelName::Tcg => AccelChoice::Tcg,
        AccelName::Kvm => AccelChoice::Kvm,
    };
    let prepared = prepare_guest(cache, g.profile.into(), &KernelChoice::Debian, accel, g.memory_mb, step)?;
    let mut config = VmConfig {
        accel: prepared.decision.accel,
        memory_mib: prepared.memory_mib,
        data_disk: g.data_disk,
        ..VmConfig::default()
    };
    // The NMI crash needs the kernel to panic on an unknown NMI.
    if campaign.file.inject.iter().any(|i| i.crash == Some(super::spec::CrashKind::Panic)) {
        config.extra_cmdline.push("unknown_nmi_panic".into());
    }
    let provenance = Provenance {
        accel: prepared.decision.accel.name().to_string(),
        qemu_version: recovery_sut::vm::qemu_version().context("asking QEMU for its version")?,
        kernel_version: prepared.kernel.release.clone(),
        profile: prepared.profile.name().to_string(),
        ram_mb: prepared.memory_mib,
        seed: campaign.file.seed,
        kfi_version: env!("CARGO_PKG_VERSION").to_string(),
        host: std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string(),
    };
    Ok((prepared, config, provenance))
}

/// Runs (or resumes) a campaign and prints its summary.
pub fn run(cache: &Cache, args: RunArgs) -> Result<ExitCode> {
    let campaign = load(&args.file, args.guest)?;
    let results = results_dir(&campaign, args.results.as_deref());
    let summary = run_campaign(cache, &campaign, &results, args.jobs, args.shard, args.limit)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&campaign, &summary);
    }
    Ok(if summary.interrupted { ExitCode::from(130) } else { ExitCode::SUCCESS })
}

fn run_campaign(
    cache: &Cache,
    campaign: &Campaign,
    results: &Path,
    jobs: usize,
    shard: Option<Shard>,
    limit: Option<usize>,
) -> Result<RunSummary> {
    let progress = Progress::new();
    let step = |m: &str| progress.step(m);
    let (prepared, config, provenance) = prepare(cache, campaign, &step)?;
    let faults = super::faults::runner_for(cache, campaign, &prepared, &step)?;
    step(&format!("golden run: booting the {} guest and freezing its service", prepared.profile));
    drop(progress);
    let env = Environment { image: &prepared.image, config, provenance, faults: faults.as_deref(), stop: stop_flag()? };
    let opts = RunOptions { results: results.to_path_buf(), jobs, shard, limit };
    runner::run(campaign, &env, &opts)
}

fn print_summary(campaign: &Campaign, s: &RunSummary) {
    println!(
        "{}: {} of {} experiments stored ({} before this run, {} now) in {}",
        campaign.file.name,
        s.already_done + s.ran,
        s.total,
        s.already_done,
        s.ran,
        s.store.display()
    );
    if s.ran > 0 {
        let outcomes: Vec<String> = s.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  outcomes: {}", outcomes.join(", "));
        println!(
            "  golden run {:.1} s, total {:.1} s, overhead beyond the observation windows {}",
            s.golden_s,
            s.wall_s,
            s.overhead.map_or("n/a".into(), |o| format!("{:.0}%", o * 100.0))
        );
    }
    if s.interrupted {
        println!("  interrupted: rerun the same command to resume");
    }
}

/// Prints how far a campaign got.
pub fn status(args: StatusArgs) -> Result<ExitCode> {
    let campaign = load(&args.file, args.guest)?;
    let results = results_dir(&campaign, args.results.as_deref());
    let path = runner::store_path(&results);
    if !path.exists() {
        bail!(
            "no results for campaign `{}` in {}: start it with `kfi campaign run {}`",
            campaign.file.name,
            results.display(),
            args.file.display()
        );
    }
    let store = Store::open(&path)?;
    let records = store.records(&campaign.file.name)?;
    let total = campaign.expand().len();
    let mut by_outcome = std::collections::BTreeMap::<String, u64>::new();
    for r in &records {
        *by_outcome.entry(r.outcome.clone()).or_default() += 1;
    }
    let done: std::collections::BTreeSet<u64> = records.iter().map(|r| r.experiment).collect();
    let next: Vec<u64> = campaign.expand().iter().map(|p| p.index).filter(|i| !done.contains(i)).take(5).collect();
    if args.json {
        let value = serde_json::json!({
            "campaign": campaign.file.name, "total": total, "done": records.len(),
            "outcomes": by_outcome, "next": next, "store": path,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{}: {}/{} experiments stored in {}", campaign.file.name, records.len(), total, path.display());
        for (outcome, n) in &by_outcome {
            println!("  {outcome:<14} {n}");
        }
        if !next.is_empty() {
            println!("  next: {}", next.iter().map(u64::to_string).collect::<Vec<_>>().join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Imports shard stores into one.
pub fn merge(into: &Path, from: &[PathBuf]) -> Result<ExitCode> {
    std::fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
    let store = Store::open(runner::store_path(into))?;
    for dir in from {
        let m = store.merge_from(runner::store_path(dir))?;
        println!("{}: {} records imported, {} already present", dir.display(), m.imported, m.already_present);
    }
    Ok(ExitCode::SUCCESS)
}

/// Re-runs one experiment exactly (same fault spec or restore point, same
/// seeds, from a fresh golden run) and compares it with the stored record;
/// nothing is stored.
pub fn replay(cache: &Cache, args: ReplayArgs) -> Result<ExitCode> {
    let campaign = load(&args.file, args.guest)?;
    let planned = campaign.expand().into_iter().find(|p| p.index == args.id).with_context(|| {
        format!(
            "{} has no experiment {} (it has 0 to {}; `kfi campaign status {}` lists them)",
            args.file.display(),
            args.id,
            campaign.expand().len().saturating_sub(1),
            args.file.display()
        )
    })?;
    let results = results_dir(&campaign, args.results.as_deref());
    let stored = if runner::store_path(&results).exists() {
        Store::open(runner::store_path(&results))?
            .records(&campaign.file.name)?
            .into_iter()
            .find(|r| r.experiment == args.id)
    } else {
        None
    };
    let progress = Progress::new();
    let step = |m: &str| progress.step(m);
    let (prepared, config, provenance) = prepare(cache, &campaign, &step)?;
    let faults = super::faults::runner_for(cache, &campaign, &prepared, &step)?;
    let env = Environment { image: &prepared.image, config, provenance, faults: faults.as_deref(), stop: stop_flag()? };
    let record = if campaign.file.restore.is_some() {
        step(&format!("experiment {} ({}): preparing its guest", planned.index, planned.key()));
        super::restore::replay(&campaign, &env, &planned)?
    } else {
        step("golden run");
        let docs = workloads::DocList::load(&prepared.image.dir.join("docs.json"))?;
        let dir = tempfile::Builder::new().prefix("kfi-golden-").tempdir()?;
        let golden = runner::golden_run(&env, &docs, dir.path(), &campaign)?;
        step(&format!("experiment {} ({})", planned.index, planned.key()));
        let shared = Shared {
            campaign: &campaign,
            golden: &golden,
            docs: &docs,
            provenance: &env.provenance,
            faults: env.faults,
        };
        experiment::run(&shared, &planned)?
    };
    drop(progress);
    if args.json {
        let value = serde_json::json!({ "replayed": record, "stored": stored });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("experiment {} of {} ({}), replayed:", planned.index, campaign.file.name, planned.key());
    match &stored {
        Some(stored) => print!("{}", super::compare::table(stored, &record)),
        None => {
            println!("(no stored record in {}: the replay alone)", runner::store_path(&results).display());
            print!("{}", super::compare::table(&record, &record));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Regenerates tables, figures and report.md from a results directory.
pub fn report(args: ReportArgs) -> Result<ExitCode> {
    let path = runner::store_path(&args.results);
    if !path.exists() {
        bail!("{} holds no campaign.sqlite: give the results directory of a campaign", args.results.display());
    }
    let summary = analysis::report::report_from_store(&path, None, &args.results)?;
    println!("{}", summary.headline);
    println!("report: {}", args.results.join("report.md").display());
    Ok(ExitCode::SUCCESS)
}

/// Runs the regression campaign afresh and compares it with the baseline.
pub fn check(cache: &Cache, args: CheckArgs) -> Result<ExitCode> {
    let campaign = Campaign::load(&args.file)?;
    let baseline_path =
        args.baseline.clone().unwrap_or_else(|| Path::new("results").join(&campaign.file.name).join("baseline.json"));
    let baseline = if args.update_baseline { None } else { Some(super::check::load_baseline(&baseline_path)?) };
    // Every check runs every experiment: a fresh store each time.
    let scratch = tempfile::Builder::new().prefix("kfi-check-").tempdir()?;
    let summary = run_campaign(cache, &campaign, scratch.path(), args.jobs, None, None)?;
    if summary.interrupted {
        return Ok(ExitCode::from(130));
    }
    let records = Store::open(runner::store_path(scratch.path()))?.records(&campaign.file.name)?;
    let measured = super::check::measure(&campaign.file.name, &records);
    for (strategy, median) in &measured.median_downtime_s {
        let ratio = measured
            .ratio_to_full_reboot
            .get(strategy)
            .map_or(String::new(), |r| format!(", {:.1}% of full reboot", r * 100.0));
        println!("  {strategy:<16} median downtime {median:.3} s{ratio}");
    }
    let Some(baseline) = baseline else {
        if let Some(dir) = baseline_path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&baseline_path, serde_json::to_string_pretty(&measured)? + "\n")
            .with_context(|| format!("writing {}", baseline_path.display()))?;
        println!("baseline written to {}", baseline_path.display());
        return Ok(ExitCode::SUCCESS);
    };
    let problems = super::check::problems(&records, &baseline, args.tolerance, args.slack);
    if problems.is_empty() {
        println!(
            "check passed: {} experiments, all recovered, no acknowledged write lost, no ratio beyond {} (baseline: {})",
            records.len(),
            baseline_path.display(),
            baseline.provenance
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            println!("FAIL {p}");
        }
        println!("check failed: {} problems against {}", problems.len(), baseline_path.display());
        Ok(ExitCode::FAILURE)
    }
}

/// A reproduction measures: a complete stored campaign (the committed
/// reference, or an earlier run) is replaced, while an interrupted one
/// resumes.
fn measure_anew_if_complete(campaign: &Campaign, results: &Path) -> Result<()> {
    let path = runner::store_path(results);
    if !path.exists() {
        return Ok(());
    }
    let store = Store::open(&path)?;
    let done = store.done(&campaign.file.name)?;
    let total = campaign.expand().len();
    let same_file = store.campaign(&campaign.file.name)?.is_none_or(|m| m.file_sha256 == campaign.sha256);
    if done.len() == total || !same_file {
        store.forget_campaign(&campaign.file.name)?;
        eprintln!(
            "kfi: {} held a complete (or differently defined) `{}` campaign; measuring anew (the previous data stays in git history)",
            results.display(),
            campaign.file.name
        );
    }
    Ok(())
}

/// `kfi reproduce`: the downtime campaign (or all of them) and its report.
pub fn reproduce(cache: &Cache, args: ReproduceArgs) -> Result<ExitCode> {
    let mut files: Vec<PathBuf> = if args.all {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&args.experiments)
            .with_context(|| format!("reading {}", args.experiments.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        v.sort();
        v
    } else {
        vec![args.experiments.join("downtime.toml")]
    };
    // The regression set is for `kfi check`, not part of the reproduction.
    files.retain(|f| f.file_stem().is_none_or(|s| s != "regression"));
    for file in files {
        let campaign = load(&file, Some(args.guest))?;
        if campaign.file.workload.kind == WorkloadKind::Rubis && args.guest == GuestProfile::Tiny {
            println!("{}: skipped, RUBiS needs the debian guest (`--guest debian`)", file.display());
            continue;
        }
        let results = args.results.join(&campaign.file.name);
        measure_anew_if_complete(&campaign, &results)?;
        let summary = run_campaign(cache, &campaign, &results, args.jobs, None, None)?;
        print_summary(&campaign, &summary);
        if summary.interrupted {
            return Ok(ExitCode::from(130));
        }
        let report = analysis::report::report_from_store(&runner::store_path(&results), None, &results)?;
        println!("{}", report.headline);
        println!("report: {}", results.join("report.md").display());
    }
    Ok(ExitCode::SUCCESS)
}
