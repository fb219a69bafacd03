//! `kfi campaign run|status|merge|slurm`, `kfi replay`, `kfi report` and
//! `kfi reproduce`: argument structs and their wiring.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::{Args, Subcommand};
use kfi::campaign::env::{RunOptions, Shard};
use kfi::campaign::ops::{self, CheckOptions, ReproduceOptions, Reproduced};
use kfi::campaign::slurm::SlurmOptions;
use kfi::campaign::spec::{AccelName, Campaign, GuestProfile};
use recovery_sut::Cache;

use super::Progress;

/// `kfi campaign ...`.
#[derive(Subcommand)]
pub enum CampaignCommand {
    /// Run (or resume) every experiment of an experiment file not yet stored.
    ///
    /// Exit status: 0 done, 3 some experiments are stored as harness-error
    /// (rerun them with --retry-errors), 130 interrupted (rerun to resume).
    Run(CampaignRunArgs),
    /// Show how far a campaign got and its outcome counts (per shard and
    /// Slurm job for a campaign run through `kfi campaign slurm`).
    Status(StatusArgs),
    /// Import the records of other results directories (`--shard` halves) into this one.
    Merge {
        /// The results directory to merge into.
        into: PathBuf,
        /// Results directories to import.
        #[arg(required = true)]
        from: Vec<PathBuf>,
        /// Merge records of different kernels, images, QEMUs or accelerators.
        #[arg(long)]
        allow_mixed: bool,
        /// Merge in a store in this node-local directory, then copy it complete into INTO (on a shared filesystem).
        #[arg(long)]
        scratch: Option<PathBuf>,
    },
    /// Run a campaign's shards on a Slurm cluster: write a job array (one
    /// task per shard, each with its store on node-local scratch) and a
    /// merge job that runs after it and writes the report.
    ///
    /// The results directory, the cache and this kfi must be on a
    /// filesystem every node sees. Submitting again runs only the shards
    /// that lack experiments.
    Slurm(SlurmArgs),
}

/// `kfi campaign slurm`.
#[derive(Args)]
pub struct SlurmArgs {
    /// Experiment file (TOML).
    pub file: PathBuf,
    /// Array tasks, one per shard (1 to the number of experiments).
    #[arg(long)]
    pub shards: u64,
    /// Shared results directory (default: results/<campaign name>).
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Slurm partition (default: the cluster's).
    #[arg(long)]
    pub partition: Option<String>,
    /// Time limit of each job, as Slurm writes it (e.g. 4:00:00).
    #[arg(long)]
    pub time: Option<String>,
    /// CPUs per task; each task runs that many VMs at once.
    #[arg(long, default_value_t = 2)]
    pub cpus_per_task: u32,
    /// Run on this guest instead of the file's.
    #[arg(long, value_enum)]
    pub guest: Option<GuestProfile>,
    /// Pin every task to this accelerator (default: the file's, else what this host chooses).
    #[arg(long, value_enum)]
    pub accel: Option<AccelName>,
    /// Submit with sbatch and print the job ids (default: print the command).
    #[arg(long)]
    pub submit: bool,
}

/// `kfi campaign run`.
#[derive(Args)]
pub struct CampaignRunArgs {
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
    /// Runs again of an experiment that failed through a harness error
    /// (QEMU refused to start, a gdbstub timeout), before it is stored as
    /// harness-error and the campaign goes on.
    #[arg(long, default_value_t = kfi::campaign::env::DEFAULT_RETRIES)]
    pub retries: u32,
    /// Rerun only the experiments stored as harness-error.
    #[arg(long)]
    pub retry_errors: bool,
    /// Keep the golden snapshots in the cache and start from kept ones of the same key (shards, replays); kexec-reboot's experiments have one of their own (crash kernel reserved).
    #[arg(long)]
    pub keep_golden: bool,
    /// Resume even where the kernel, image, QEMU or accelerator differ from the stored records'.
    #[arg(long)]
    pub allow_mixed: bool,
    /// Pin the accelerator of a file that says `auto` (a cluster task's shards must agree).
    #[arg(long, value_enum)]
    pub accel: Option<AccelName>,
    /// Keep the store and golden snapshot in this node-local directory and copy the store, complete, into
    /// the results directory after every experiment (for results on a shared filesystem).
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Where a profile-guided campaign's golden-run profile is kept, or made when missing (default: the results
    /// directory; a Slurm shard names its campaign's).
    #[arg(long)]
    pub profile: Option<PathBuf>,
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
    /// Exit with status 1 unless every experiment is stored (the Slurm merge job's check).
    #[arg(long)]
    pub complete: bool,
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
    #[arg(required_unless_present = "sample")]
    pub id: Option<u64>,
    /// Results directory holding the stored record to compare with.
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Run on this guest instead of the file's (as the campaign was run).
    #[arg(long, value_enum)]
    pub guest: Option<GuestProfile>,
    /// Instead of one: replay this many stored activated fault experiments and count those that agree.
    #[arg(long, conflicts_with = "id")]
    pub sample: Option<usize>,
    /// Seed of the --sample draw.
    #[arg(long, default_value_t = 0, requires = "sample")]
    pub seed: u64,
    /// Print both records in full (or the agreement), as JSON.
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
    /// Allowed relative growth of a strategy's downtime ratio to the full reboots of its failure class.
    #[arg(long, default_value = "0.5", value_parser = super::non_negative("--tolerance"))]
    pub tolerance: f64,
    /// Growth of the ratio (absolute, e.g. 0.02 = 2 points) always tolerated: tiny ratios are noisy.
    #[arg(long, default_value = "0.02", value_parser = super::non_negative("--slack"))]
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

/// Runs (or resumes) a campaign and prints its summary.
pub fn run(cache: &Cache, args: CampaignRunArgs) -> Result<ExitCode> {
    let campaign = ops::load(&args.file, args.guest)?;
    let campaign = match args.accel {
        Some(accel) => campaign.pinned_to(accel)?,
        None => campaign,
    };
    let opts = RunOptions {
        results: ops::results_dir(&campaign, args.results.as_deref()),
        jobs: args.jobs,
        shard: args.shard,
        limit: args.limit,
        retries: args.retries,
        retry_errors: args.retry_errors,
        keep_golden: args.keep_golden,
        allow_mixed: args.allow_mixed,
        scratch: args.scratch,
        profile: args.profile,
    };
    let progress = Progress::new();
    let summary = ops::run_campaign(cache, &campaign, &opts, ops::interrupt_flag()?, &progress)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.describe(&campaign.file.name));
    }
    Ok(if summary.interrupted {
        ExitCode::from(130)
    } else if !summary.harness_errors.is_empty() {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints how far a campaign got.
pub fn status(args: StatusArgs) -> Result<ExitCode> {
    let campaign = ops::load(&args.file, args.guest)?;
    let s = ops::status(&campaign, &ops::results_dir(&campaign, args.results.as_deref()), &args.file)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", s.describe(&args.file));
    }
    if args.complete && !s.complete() {
        eprintln!("kfi: {} of {} experiments are missing", s.total - s.done, s.total);
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes (and with --submit, submits) a campaign's Slurm jobs.
pub fn slurm(cache: &Cache, args: SlurmArgs) -> Result<ExitCode> {
    let campaign = ops::load(&args.file, args.guest)?;
    let campaign = match args.accel {
        Some(accel) => campaign.pinned_to(accel)?,
        None => campaign,
    };
    let opts = SlurmOptions {
        shards: args.shards,
        results: ops::results_dir(&campaign, args.results.as_deref()),
        partition: args.partition,
        time: args.time,
        cpus_per_task: args.cpus_per_task,
        guest: args.guest,
        submit: args.submit,
    };
    let progress = Progress::new();
    let prepared = ops::slurm(cache, &campaign, &args.file, &opts, &progress)?;
    drop(progress);
    print!("{}", prepared.describe(&campaign.file.name, &opts.results));
    Ok(ExitCode::SUCCESS)
}

/// Imports shard stores into one.
pub fn merge(into: &std::path::Path, from: &[PathBuf], allow_mixed: bool, scratch: Option<&Path>) -> Result<ExitCode> {
    for (dir, m) in ops::merge(into, from, allow_mixed, scratch)? {
        println!("{}: {} records imported, {} already present", dir.display(), m.imported, m.already_present);
    }
    Ok(ExitCode::SUCCESS)
}

/// Re-runs one experiment and prints it next to the stored record.
pub fn replay(cache: &Cache, args: ReplayArgs) -> Result<ExitCode> {
    let campaign = ops::load(&args.file, args.guest)?;
    let results = ops::results_dir(&campaign, args.results.as_deref());
    let (progress, stop) = (Progress::new(), ops::interrupt_flag()?);
    let step = |m: &str| progress.step(m);
    let shown: Box<dyn ops::Printed> = match args.sample {
        Some(n) => Box::new(ops::agreement(cache, &campaign, &results, n, args.seed, stop, &step)?),
        None => Box::new(ops::replay(cache, &campaign, args.id.unwrap_or_default(), &results, stop, &step)?),
    };
    drop(progress);
    let out = if args.json { serde_json::to_string_pretty(&shown.json())? + "\n" } else { shown.describe() };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// Regenerates tables, figures and report.md from a results directory.
pub fn report(args: ReportArgs) -> Result<ExitCode> {
    if args.results.join(analysis::update::UPDATE_STORE_FILE).exists() {
        let report = kfi::update::campaign::report(&args.results)?;
        println!("{}", report.headline);
        println!("report: {}", report.path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let summary = ops::report(&args.results)?;
    println!("{}", summary.headline);
    println!("report: {}", args.results.join("report.md").display());
    Ok(ExitCode::SUCCESS)
}

/// Runs the regression campaign afresh and compares it with the baseline.
pub fn check(cache: &Cache, args: CheckArgs) -> Result<ExitCode> {
    let campaign = Campaign::load(&args.file)?;
    let opts = CheckOptions {
        baseline: args.baseline.clone().unwrap_or_else(|| ops::default_baseline(&campaign)),
        update_baseline: args.update_baseline,
        tolerance: args.tolerance,
        slack: args.slack,
        jobs: args.jobs,
    };
    let progress = Progress::new();
    let r = ops::check(cache, &campaign, &opts, ops::interrupt_flag()?, &progress)?;
    drop(progress);
    if r.interrupted {
        return Ok(ExitCode::from(130));
    }
    for (strategy, median) in &r.measured.median_downtime_s {
        let ratio = r
            .measured
            .ratio_to_full_reboot
            .get(strategy)
            .map_or(String::new(), |x| format!(", {:.1}% of full reboot", x * 100.0));
        println!("  {strategy:<32} median downtime {median:.3} s{ratio}");
    }
    let Some(baseline) = &r.baseline else {
        println!("baseline written to {}", opts.baseline.display());
        return Ok(ExitCode::SUCCESS);
    };
    if r.problems.is_empty() {
        println!(
            "check passed: {} experiments, all recovered, no acknowledged write lost, no ratio beyond {} (baseline: {})",
            r.experiments,
            opts.baseline.display(),
            baseline.provenance
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &r.problems {
            println!("FAIL {p}");
        }
        println!("check failed: {} problems against {}", r.problems.len(), opts.baseline.display());
        Ok(ExitCode::FAILURE)
    }
}

/// `kfi reproduce`: the downtime campaign (or all of them) and its report.
pub fn reproduce(cache: &Cache, args: ReproduceArgs) -> Result<ExitCode> {
    let stop = ops::interrupt_flag()?;
    let opts = ReproduceOptions { guest: args.guest, results_root: args.results.clone(), jobs: args.jobs };
    for file in ops::reproduction_files(&args.experiments, args.all)? {
        if kfi::update::spec::is_update_file(&file) {
            let progress = Progress::new();
            let step = |m: &str| progress.step(m);
            let done = kfi::update::campaign::reproduce(cache, &file, &args.results, args.guest.into(), &stop, &step)?;
            drop(progress);
            match done {
                Err(why) => println!("{}: skipped, {why}", file.display()),
                Ok((run, results)) => {
                    println!("{}: {} updates run now, {} stored before", file.display(), run.ran, run.resumed);
                    let Some(report) = run.report else { return Ok(ExitCode::from(130)) };
                    println!("{}", report.headline);
                    println!("report: {}", results.join("report.md").display());
                }
            }
            continue;
        }
        let progress = Progress::new();
        let done = ops::reproduce(cache, &file, &opts, Arc::clone(&stop), &progress)?;
        drop(progress);
        match done {
            Reproduced::Skipped(why) => println!("{}: skipped, {why}", file.display()),
            Reproduced::Ran(r) => {
                let ops::Reproduction { campaign, results, summary, report, measured_anew } = *r;
                if measured_anew {
                    eprintln!(
                        "kfi: {} held a complete (or differently defined) `{}` campaign; measured anew (the previous data stays in git history)",
                        results.display(),
                        campaign.file.name
                    );
                }
                print!("{}", summary.describe(&campaign.file.name));
                let Some(report) = report else { return Ok(ExitCode::from(130)) };
                println!("{}", report.headline);
                println!("report: {}", results.join("report.md").display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
