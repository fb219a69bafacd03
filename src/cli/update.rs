//! `kfi update`.

use std::process::ExitCode;
use std::time::Duration;

use analysis::update::{summarize, PUBLISHED_REDUCTION};
use anyhow::{Context, Result};
use clap::Args;
use kfi::setup::{prepare_updatable_guest, Prepared};
use kfi::update::spec::UpdateCampaign;
use kfi::{duration, update};
use recovery_sut::recovery::UpdateStrategy;
use recovery_sut::{Cache, VmConfig};

use super::{say, spinner, stepper, GuestArgs, Progress};

/// `kfi update`.
#[derive(Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    vm: GuestArgs,
    /// The locked kernel release to update to (kernel.lock; `kfi kernel lock --add RELEASE` locks one).
    #[arg(long, value_name = "RELEASE", required_unless_present = "experiment")]
    to: Option<String>,
    /// Run an update campaign instead (experiments/update.toml): resumable, stored in --results with report.md and figures.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["to", "strategy", "repeat", "clients", "warmup", "seed", "json"])]
    experiment: Option<std::path::PathBuf>,
    /// Where the campaign's results go (default results/<name>).
    #[arg(long, value_name = "DIR", requires = "experiment")]
    results: Option<std::path::PathBuf>,
    /// Strategies to compare, comma-separated: reboot (the baseline), kexec, shadow-reboot.
    #[arg(long, value_delimiter = ',', default_value = "reboot,kexec,shadow-reboot")]
    strategy: Vec<UpdateStrategy>,
    /// Updates per strategy, each on a freshly booted guest.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Closed-loop HTTP clients.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Load before each update: seconds (`2.5`) or a span (`2s`); at least 1 s.
    #[arg(long, default_value = "2", value_parser = duration::flag("--warmup"))]
    warmup: Duration,
    /// Seed of the request mix.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object (trials and per-strategy summary).
    #[arg(long)]
    json: bool,
}

/// Runs an update campaign and prints where its report is.
fn campaign(cache: &Cache, file: &std::path::Path, results: Option<std::path::PathBuf>) -> Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let campaign = UpdateCampaign::parse(file, &text)?;
    let results = results.unwrap_or_else(|| std::path::Path::new("results").join(&campaign.name));
    let stop = kfi::campaign::ops::interrupt_flag()?;
    let progress = Progress::new();
    let step = |m: &str| progress.step(m);
    let run = kfi::update::campaign::run(cache, &campaign, &text, &results, &stop, &step)?;
    drop(progress);
    say(&format!("{} updates run now, {} stored before", run.ran, run.resumed));
    if run.interrupted {
        say(&format!("interrupted: run the same command again to resume ({})", results.display()));
        return Ok(ExitCode::from(130));
    }
    if let Some(report) = run.report {
        println!("{}", report.headline);
        println!("report: {}", report.path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs and prints `kfi update`.
pub fn update(cache: &Cache, args: UpdateArgs) -> Result<ExitCode> {
    if let Some(file) = &args.experiment {
        return campaign(cache, file, args.results.clone());
    }
    let to = args.to.clone().context("--to RELEASE names the kernel to update to")?;
    let spinner = spinner(!args.json);
    let step = stepper(&spinner);
    let kernel_choice = args.vm.kernel.choice()?;
    let Prepared { profile, kernel: k, image, decision, memory_mib } = prepare_updatable_guest(
        cache,
        args.vm.guest.into(),
        &kernel_choice,
        &to,
        args.vm.accel.into(),
        args.vm.memory,
        &step,
    )?;
    let config = VmConfig { accel: decision.accel, memory_mib, data_disk: true, ..VmConfig::default() };
    let plan = update::UpdatePlan {
        strategies: args.strategy.clone(),
        repeat: args.repeat.max(1),
        warmup: args.warmup.max(Duration::from_secs(1)),
        tail: Duration::from_millis(500),
        clients: args.clients.max(1),
        seed: args.seed,
    };
    let show = |t: &update::UpdateTrial| {
        step(&format!(
            "{} #{}: downtime {}",
            t.strategy,
            t.rep + 1,
            t.downtime_s.map_or("not measured".into(), |d| format!("{d:.3} s"))
        ))
    };
    step(&format!("updating the {profile} guest ({}) from {} to {to}", decision.accel.name(), k.release));
    let trials = update::run(&image, &config, &plan, &show)?;
    if let Some(s) = &spinner {
        s.finish();
    }
    let prepared =
        Prepared { profile, kernel: k.clone(), image: image.clone(), decision: decision.clone(), memory_mib };
    let (provenance, _) = kfi::provenance::of(&prepared, args.seed)?;
    let next = image.update_to.clone().context("the image carries no kernel to update to")?;
    let records: Vec<_> = trials
        .iter()
        .enumerate()
        .map(|(i, t)| {
            update::campaign::to_record(i as u64, t.strategy, t.rep as u32, Ok(t.clone()), &next, &provenance)
        })
        .collect();
    let summary = summarize(&records);
    let failed = summary.iter().any(|s| s.served < s.trials || s.writes_lost > 0)
        || trials.iter().any(|t| t.downtime_s.is_none());
    if args.json {
        let value = serde_json::json!({
            "downtime_definition": kfi_stats::definitions::UPDATE_DOWNTIME,
            "published_reduction": PUBLISHED_REDUCTION,
            "repeat": plan.repeat,
            "clients": plan.clients,
            "strategies": summary,
            "updates": records,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "{profile} guest, kernel {} -> {to}, {} updates per strategy, accel {}",
            k.release,
            plan.repeat,
            decision.accel.name()
        );
        println!(
            "{:<14} {:>7} {:>10} {:>10} {:>10} {:>10} {:>11} {:>10} {:>11} {:>6} {:>10}",
            "strategy",
            "served",
            "median s",
            "p95 s",
            "probe s",
            "prepare s",
            "prep. rate",
            "switch s",
            "all svc. s",
            "lost",
            "vs reboot"
        );
        for s in &summary {
            let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
            let d = s.downtime.as_ref();
            println!(
                "{:<14} {:>7} {:>10} {:>10} {:>10} {:>10} {:>11} {:>10} {:>11} {:>6} {:>10}",
                s.strategy.name(),
                format!("{}/{}", s.served, s.trials),
                f(d.map(|d| d.median)),
                f(d.map(|d| d.p95)),
                f(s.probe_outage_median_s),
                f(s.prepare_median_s),
                s.prepare_throughput_ratio.map_or("-".into(), |r| format!("{:.0}%", r * 100.0)),
                f(s.switch_median_s),
                f(s.all_services_median_s),
                s.writes_lost,
                if s.strategy.name() == "reboot" {
                    "baseline".to_string()
                } else {
                    s.reduction_vs_reboot.map_or("-".into(), |r| format!("{:+.1}%", -r * 100.0))
                }
            );
        }
        let (lo, hi) = PUBLISHED_REDUCTION;
        println!(
            "published (Yamada and Kono, VEE 2013; VirtualBox on hardware): ShadowReboot {:.0}-{:.0}% below a reboot",
            lo * 100.0,
            hi * 100.0
        );
        println!("downtime: {}", kfi_stats::definitions::UPDATE_DOWNTIME);
        println!("prep. rate: correct answers per second while the old kernel served during the preparation, over the warm-up's");
        println!("all svc. s: from the switch until the guest reported every service running (debian: MariaDB too); the static clients do not wait for the database");
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
