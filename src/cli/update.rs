//! `kfi update`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use kfi::setup::{prepare_updatable_guest, Prepared};
use kfi::{duration, update};
use recovery_sut::recovery::UpdateStrategy;
use recovery_sut::{Cache, VmConfig};

use super::{spinner, stepper, GuestArgs};

/// `kfi update`.
#[derive(Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    vm: GuestArgs,
    /// The locked kernel release to update to (kernel.lock; `kfi kernel lock --add RELEASE` locks one).
    #[arg(long, value_name = "RELEASE")]
    to: String,
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

/// Runs and prints `kfi update`.
pub fn update(cache: &Cache, args: UpdateArgs) -> Result<ExitCode> {
    let spinner = spinner(!args.json);
    let step = stepper(&spinner);
    let kernel_choice = args.vm.kernel.choice()?;
    let Prepared { profile, kernel: k, image, decision, memory_mib } = prepare_updatable_guest(
        cache,
        args.vm.guest.into(),
        &kernel_choice,
        &args.to,
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
    step(&format!("updating the {profile} guest ({}) from {} to {}", decision.accel.name(), k.release, args.to));
    let trials = update::run(&image, &config, &plan, &show)?;
    if let Some(s) = &spinner {
        s.finish();
    }
    let summary = update::summarize(&trials, &plan.strategies);
    let failed = summary.iter().any(|s| s.served < s.trials || s.writes_lost > 0);
    if args.json {
        let value = serde_json::json!({
            "guest": profile.name(),
            "from_kernel": k.describe(),
            "to_kernel": image.update_to.as_ref().map(|n| n.describe()),
            "accel": decision.accel.name(),
            "accel_reason": decision.reason,
            "qemu_version": recovery_sut::vm::qemu_version().unwrap_or_default(),
            "repeat": plan.repeat,
            "clients": plan.clients,
            "seed": args.seed,
            "downtime_definition": kfi_stats::definitions::UPDATE_DOWNTIME,
            "published_reduction": update::PUBLISHED_REDUCTION,
            "strategies": summary,
            "trials": trials,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "{profile} guest, kernel {} -> {}, {} updates per strategy, accel {}",
            k.release,
            args.to,
            plan.repeat,
            decision.accel.name()
        );
        println!(
            "{:<14} {:>7} {:>10} {:>10} {:>10} {:>10} {:>11} {:>10} {:>6} {:>10}",
            "strategy",
            "served",
            "median s",
            "p95 s",
            "probe s",
            "prepare s",
            "prep. rate",
            "switch s",
            "lost",
            "vs reboot"
        );
        for s in &summary {
            let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
            println!(
                "{:<14} {:>7} {:>10} {:>10} {:>10} {:>10} {:>11} {:>10} {:>6} {:>10}",
                s.strategy.name(),
                format!("{}/{}", s.served, s.trials),
                f(s.downtime_median_s),
                f(s.downtime_p95_s),
                f(s.probe_outage_median_s),
                f(s.prepare_median_s),
                s.prepare_throughput_ratio.map_or("-".into(), |r| format!("{:.0}%", r * 100.0)),
                f(s.switch_median_s),
                s.writes_lost,
                if s.strategy == UpdateStrategy::Reboot {
                    "baseline".to_string()
                } else {
                    s.reduction_vs_reboot.map_or("-".into(), |r| format!("{:+.1}%", -r * 100.0))
                }
            );
        }
        let (lo, hi) = update::PUBLISHED_REDUCTION;
        println!(
            "published (Yamada and Kono, VEE 2013; VirtualBox on hardware): ShadowReboot {:.0}-{:.0}% below a reboot",
            lo * 100.0,
            hi * 100.0
        );
        println!("downtime: {}", kfi_stats::definitions::UPDATE_DOWNTIME);
        println!("prep. rate: correct answers per second while the old kernel served during the preparation, over the warm-up's");
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
