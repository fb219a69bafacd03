//! `kfi workload run`: arguments and printing of a workload run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use kfi::duration;
use kfi::workload_run::{self, RunFile, WorkloadKind, WorkloadPlan};
use recovery_sut::Cache;
use workloads::rubis::Mix;

use super::{spinner, stepper, GuestArgs};

/// `kfi workload ...`
#[derive(clap::Subcommand)]
pub enum WorkloadCommand {
    /// Boot a guest, offer load to it for a while, report what the clients saw.
    Run(WorkloadRunArgs),
}

/// RUBiS mix on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MixArg {
    /// Read-only sessions.
    Browsing,
    /// About 15% writes.
    Bidding,
}

impl From<MixArg> for Mix {
    fn from(m: MixArg) -> Self {
        match m {
            MixArg::Browsing => Mix::Browsing,
            MixArg::Bidding => Mix::Bidding,
        }
    }
}

/// Arguments of `kfi workload run`.
#[derive(clap::Args)]
pub struct WorkloadRunArgs {
    /// Workload to run.
    #[arg(value_enum)]
    kind: WorkloadKind,
    #[command(flatten)]
    vm: GuestArgs,
    /// How long load is offered: `30s`, `2m`, `500ms`, or plain seconds.
    #[arg(long, value_parser = duration::flag("--duration"), default_value = "30s")]
    duration: Duration,
    /// Closed-loop clients (RUBiS: concurrent sessions).
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// RUBiS transition table.
    #[arg(long, value_enum, default_value = "bidding")]
    mix: MixArg,
    /// Mean think time between requests (RUBiS: negative exponential,
    /// default 7s; apache: fixed, default none).
    #[arg(long, value_parser = duration::flag("--think"))]
    think: Option<Duration>,
    /// Per-request timeout.
    #[arg(long, value_parser = duration::flag("--timeout"), default_value = "10s")]
    timeout: Duration,
    /// Seed of the clients' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the timeline and records go (default:
    /// results/workload-<kind>-<guest>-<unix time>.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// `kfi workload ...`
pub fn cmd(cache: &Cache, command: WorkloadCommand) -> Result<ExitCode> {
    let WorkloadCommand::Run(args) = command;
    let spinner = spinner(!args.json);
    let step = stepper(&spinner);
    let prepared = args.vm.prepare(cache, &step)?;
    let plan = WorkloadPlan {
        kind: args.kind,
        duration: args.duration,
        clients: args.clients,
        mix: args.mix.into(),
        think: args.think,
        timeout: args.timeout,
        seed: args.seed,
        out: args.out.clone(),
    };
    let (file, out) = workload_run::run(&prepared, &plan, &step)?;
    if let Some(s) = &spinner {
        s.finish();
    }
    if args.json {
        let mut value = serde_json::to_value(&file)?;
        if let Some(o) = value.as_object_mut() {
            // The terminal gets the summary; the file has the bulk.
            o.remove("records");
            o.remove("timeline");
            o.insert("out".into(), out.display().to_string().into());
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_text(&file, &out);
    }
    Ok(if file.lost_writes() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn print_text(file: &RunFile, out: &Path) {
    let s = &file.summary;
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.1}", v * 1000.0));
    println!(
        "{} on {} ({}), {} clients, {:.0} s{}",
        file.workload.label(),
        file.guest,
        file.accel,
        file.clients,
        file.duration_s,
        file.mix.map(|m| format!(", {m} mix")).unwrap_or_default()
    );
    println!(
        "requests {}  correct {}  errors {}  throughput {:.2}/s",
        s.requests, s.correct, s.errors, s.throughput_rps
    );
    println!(
        "latency ms: mean {}  p50 {}  p90 {}  p95 {}  p99 {}  max {}",
        f(s.latency.mean_s),
        f(s.latency.p50_s),
        f(s.latency.p90_s),
        f(s.latency.p95_s),
        f(s.latency.p99_s),
        f(s.latency.max_s)
    );
    for (kind, n) in &s.errors_by_kind {
        println!("  error {kind}: {n}");
    }
    if let Some(stats) = &file.interactions {
        println!(
            "{:<26} {:>8} {:>8} {:>7} {:>9} {:>9}",
            "interaction", "requests", "correct", "errors", "p50 ms", "p90 ms"
        );
        for i in stats.iter().filter(|i| i.requests > 0) {
            println!(
                "{:<26} {:>8} {:>8} {:>7} {:>9} {:>9}",
                i.interaction.name(),
                i.requests,
                i.correct,
                i.errors,
                f(i.p50_s),
                f(i.p90_s)
            );
        }
    }
    if let Some(v) = &file.acknowledged {
        println!(
            "acknowledged writes: {} checked, {} missing, {} not checkable",
            v.checked,
            v.missing.len(),
            v.unchecked.len()
        );
    }
    println!("timeline and records: {}", out.display());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: WorkloadCommand,
    }

    #[test]
    fn run_arguments_parse_with_their_defaults() {
        use clap::Parser as _;
        let cli =
            Cli::try_parse_from(["kfi", "run", "rubis", "--guest", "debian", "--duration", "45s", "--json"]).unwrap();
        let WorkloadCommand::Run(args) = cli.command;
        assert_eq!(args.kind, WorkloadKind::Rubis);
        assert_eq!(args.duration, Duration::from_secs(45));
        assert_eq!((args.clients, args.mix, args.think, args.json), (2, MixArg::Bidding, None, true));
        let cli = Cli::try_parse_from(["kfi", "run", "apache", "--mix", "browsing", "--think", "1s", "--clients", "4"])
            .unwrap();
        let WorkloadCommand::Run(args) = cli.command;
        assert_eq!((args.kind, args.mix, args.clients), (WorkloadKind::Apache, MixArg::Browsing, 4));
        assert_eq!(args.think, Some(Duration::from_secs(1)));
        assert!(Cli::try_parse_from(["kfi", "run", "tpcc"]).is_err());
        assert!(Cli::try_parse_from(["kfi", "run", "rubis", "--duration", "soon"]).is_err());
    }
}
