//! `kfi recover` and `kfi sut run`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use kfi::setup::Prepared;
use kfi::{duration, recover, service};
use recovery_sut::recovery::Strategy;
use recovery_sut::{Cache, VmConfig};

use super::{say, spinner, stepper, GuestArgs, Progress};

/// `kfi recover`.
#[derive(Args)]
pub struct RecoverArgs {
    #[command(flatten)]
    vm: GuestArgs,
    /// How to crash the guest.
    #[arg(long, value_enum, default_value = "sysrq")]
    crash: recover::Crash,
    /// Strategies to compare, comma-separated: full-reboot (the baseline), phase-restore, service-restore, kexec-reboot.
    #[arg(long, value_delimiter = ',', default_value = "full-reboot,phase-restore,service-restore")]
    strategy: Vec<String>,
    /// Crashes per strategy.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Closed-loop HTTP clients.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Load before each crash: seconds (`2.5`) or a span (`2s`, `500ms`); at least 0.5 s.
    #[arg(long, default_value = "2", value_parser = duration::flag("--warmup"))]
    warmup: Duration,
    /// Seed of the request mix.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object (trials and per-strategy summary).
    #[arg(long)]
    json: bool,
}

/// `kfi sut ...`.
#[derive(Subcommand)]
pub enum SutCommand {
    /// Boot the guest and recover it with one strategy after every failure, logging each, until Ctrl-C.
    Run(SutRunArgs),
}

/// `kfi sut run`.
#[derive(Args)]
pub struct SutRunArgs {
    #[command(flatten)]
    vm: GuestArgs,
    /// Recovery strategy: full-reboot, phase-restore, service-restore or kexec-reboot.
    #[arg(long, default_value = "service-restore")]
    strategy: String,
    /// No agent heartbeat for this long counts as a hang: seconds or a span (`5s`); at least 0.5 s.
    #[arg(long, default_value = "5", value_parser = duration::flag("--heartbeat-timeout"))]
    heartbeat_timeout: Duration,
    /// Give the guest an i6300esb watchdog with this timeout (seconds) and watch it.
    #[arg(long, value_name = "SECONDS")]
    watchdog: Option<u32>,
    /// Do not probe the service from the host (3 failed probes in a row count as a failure).
    #[arg(long)]
    no_probe: bool,
    /// Crash the guest (sysrq through the agent) this often, seconds or a span (`30s`; at least 1 s): a soak test.
    #[arg(long, value_name = "DURATION", value_parser = duration::flag("--crash-every"))]
    crash_every: Option<Duration>,
    /// Print one JSON object per recovery instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs and prints `kfi recover`.
pub fn recover(cache: &Cache, args: RecoverArgs) -> Result<ExitCode> {
    let strategies = args.strategy.iter().map(|s| s.parse::<Strategy>()).collect::<Result<Vec<_>, _>>()?;
    let spinner = spinner(!args.json);
    let step = stepper(&spinner);
    let Prepared { profile, kernel: k, image, decision, memory_mib } = args.vm.prepare(cache, &step)?;
    step(&format!("booting the {profile} guest ({}) and taking the service snapshot", decision.accel.name()));
    // The data disk is attached, as in production: phase-restore remounts
    // it, and service-restore must prove it unchanged.
    let config = VmConfig { accel: decision.accel, memory_mib, data_disk: true, ..VmConfig::default() };
    let plan = recover::RecoverPlan {
        strategies: strategies.clone(),
        repeat: args.repeat,
        crash: args.crash,
        warmup: args.warmup.max(Duration::from_millis(500)),
        tail: Duration::from_millis(500),
        clients: args.clients.max(1),
        seed: args.seed,
    };
    let show = |t: &recover::Trial| {
        step(&format!(
            "{} #{}: downtime {}",
            t.strategy,
            t.rep + 1,
            t.downtime_s.map_or("not recovered".into(), |d| format!("{d:.3} s"))
        ))
    };
    let trials = recover::run(&image, &config, &plan, &show)?;
    if let Some(s) = &spinner {
        s.finish();
    }
    let summary = recover::summarize(&trials, &strategies);
    let unrecovered = summary.iter().any(|s| s.recovered < s.trials);
    if args.json {
        let value = serde_json::json!({
            "guest": profile.name(),
            "kernel_version": k.release,
            "kernel": k.describe(),
            "accel": decision.accel.name(),
            "accel_reason": decision.reason,
            "qemu_version": recovery_sut::vm::qemu_version().unwrap_or_default(),
            "crash": args.crash,
            "repeat": args.repeat,
            "clients": plan.clients,
            "seed": args.seed,
            "strategies": summary,
            "trials": trials,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "{profile} guest, {} crashes, {} per strategy, accel {}, kernel {}",
            args.crash.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default(),
            args.repeat,
            decision.accel.name(),
            k.release
        );
        println!(
            "{:<16} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>11}",
            "strategy", "recovered", "fallbacks", "median s", "p95 s", "probe s", "detect s", "restart s", "vs reboot"
        );
        for s in &summary {
            let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
            println!(
                "{:<16} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>11}",
                s.strategy.name(),
                format!("{}/{}", s.recovered, s.trials),
                s.fallbacks,
                f(s.downtime_median_s),
                f(s.downtime_p95_s),
                f(s.probe_outage_median_s),
                f(s.detect_median_s),
                f(s.restart_median_s),
                if s.strategy == Strategy::FullReboot {
                    "baseline".to_string()
                } else {
                    s.reduction_vs_full_reboot.map_or("-".into(), |r| format!("{:+.1}%", -r * 100.0))
                }
            );
        }
    }
    Ok(if unrecovered { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Runs `kfi sut run`, printing each recovery.
pub fn sut_run(cache: &Cache, args: SutRunArgs) -> Result<ExitCode> {
    let strategy: Strategy = args.strategy.parse()?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    }
    let spinner = Progress::new();
    let step = |m: &str| spinner.step(m);
    let Prepared { profile, image, decision, memory_mib, .. } = args.vm.prepare(cache, &step)?;
    step(&format!("booting the {profile} guest ({}) and taking its snapshots", decision.accel.name()));
    let config = VmConfig {
        accel: decision.accel,
        memory_mib,
        data_disk: true,
        watchdog_s: args.watchdog,
        ..VmConfig::default()
    };
    let plan = service::SutPlan {
        strategy,
        detectors: service::SutPlan::detectors(
            args.heartbeat_timeout.max(Duration::from_millis(500)),
            args.watchdog.is_some(),
            !args.no_probe,
        ),
        crash_every: args.crash_every.map(|d| d.max(Duration::from_secs(1))),
    };
    let mut spinner = Some(spinner);
    let json = args.json;
    let mut ready = |sut: &mut recovery_sut::Sut| {
        spinner.take();
        if !json {
            println!(
                "{profile} guest up: http://{}/ , recovering with {strategy}; Ctrl-C stops it",
                sut.vm().http_addr()
            );
        }
    };
    let mut log = |entry: &service::RecoveryLog| {
        if json {
            if let Ok(line) = serde_json::to_string(entry) {
                println!("{line}");
            }
        } else {
            let t = &entry.timing;
            println!(
                "#{} at {:.1} s: {}{}, {} ran{}; service back {:.3} s after detection",
                entry.n,
                entry.at_s,
                t.cause.name(),
                if entry.injected { " (injected sysrq crash)" } else { "" },
                t.strategy,
                t.fallback_reason.as_deref().map_or(String::new(), |r| format!(" instead of {} ({r})", t.requested)),
                t.service_s
            );
        }
    };
    let n = service::run(&image, &config, &plan, &stop, &mut log, &mut ready)?;
    if !json {
        say(&format!("stopped after {n} recoveries"));
    }
    Ok(ExitCode::SUCCESS)
}
