//! `kfi workload run`: boot a guest, drive the Apache static workload or
//! RUBiS against it for a while, and report throughput, latency, errors and
//! (for RUBiS) per-interaction statistics; the timeline and every request's
//! record go to a JSON file for the analysis.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use recovery_sut::{Cache, Profile, Vm, VmConfig};
use serde::Serialize;
use workloads::rubis::{self, InteractionStats, Mix, RubisSpec, VerifyReport};
use workloads::{ClosedLoop, DocList, LoadSpec, Mode, Outcome, Record, Timeline};

/// Width of the timeline's bins: the resolution downtime is measured at.
const BIN_S: f64 = 0.1;

/// `kfi workload ...`
#[derive(clap::Subcommand)]
pub enum WorkloadCommand {
    /// Boot a guest, offer load to it for a while, report what the clients saw.
    Run(RunArgs),
}

/// Which workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Static files with a realistic size mix (the guest's document set).
    Apache,
    /// The RUBiS auction site (debian guest only).
    Rubis,
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
pub struct RunArgs {
    /// Workload to run.
    #[arg(value_enum)]
    kind: Kind,
    #[command(flatten)]
    vm: crate::GuestArgs,
    /// How long load is offered: `30s`, `2m`, `500ms`, or plain seconds.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    duration: Duration,
    /// Closed-loop clients (RUBiS: concurrent sessions).
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// RUBiS transition table.
    #[arg(long, value_enum, default_value = "bidding")]
    mix: MixArg,
    /// Mean think time between requests (RUBiS: negative exponential,
    /// default 7s; apache: fixed, default none).
    #[arg(long, value_parser = parse_duration)]
    think: Option<Duration>,
    /// Per-request timeout.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
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

/// A duration: a number with `ms`, `s`, `m` or `h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => t.split_at(at),
        None => (t, "s"),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a duration: write e.g. 30s, 2m, 500ms or a number of seconds"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit `{unit}` in `{text}`: use ms, s, m or h")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("`{text}` is not a duration of zero or more"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Latency percentiles of the correct answers, seconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Mean.
    pub mean_s: Option<f64>,
    /// Median.
    pub p50_s: Option<f64>,
    /// 90th percentile.
    pub p90_s: Option<f64>,
    /// 95th percentile.
    pub p95_s: Option<f64>,
    /// 99th percentile.
    pub p99_s: Option<f64>,
    /// Slowest.
    pub max_s: Option<f64>,
}

/// What a run's clients saw, in sum.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Requests sent.
    pub requests: usize,
    /// Correct answers.
    pub correct: usize,
    /// Requests without a correct answer.
    pub errors: usize,
    /// Errors by kind (`http_503`, `connect_error`, ...).
    pub errors_by_kind: std::collections::BTreeMap<String, usize>,
    /// Correct answers per second of load.
    pub throughput_rps: f64,
    /// Body bytes received.
    pub bytes: u64,
    /// Latency of correct answers.
    pub latency: Latency,
}

fn outcome_name(o: Outcome) -> String {
    match o {
        Outcome::Ok => "ok".into(),
        Outcome::WrongContent => "wrong_content".into(),
        Outcome::HttpStatus(s) => format!("http_{s}"),
        Outcome::ConnectError => "connect_error".into(),
        Outcome::Timeout => "timeout".into(),
        Outcome::IoError => "io_error".into(),
    }
}

/// Sums up `records` of a run that offered load for `seconds`.
pub fn summarize(records: &[Record], seconds: f64) -> Summary {
    let mut lat: Vec<f64> = records.iter().filter(|r| r.is_correct()).map(Record::latency).collect();
    lat.sort_by(f64::total_cmp);
    let mut errors_by_kind = std::collections::BTreeMap::new();
    for r in records.iter().filter(|r| !r.is_correct()) {
        *errors_by_kind.entry(outcome_name(r.outcome)).or_insert(0) += 1;
    }
    let q = |p| rubis::percentile(&lat, p);
    Summary {
        requests: records.len(),
        correct: lat.len(),
        errors: records.len() - lat.len(),
        errors_by_kind,
        throughput_rps: if seconds > 0.0 { lat.len() as f64 / seconds } else { 0.0 },
        bytes: records.iter().map(|r| r.bytes).sum(),
        latency: Latency {
            mean_s: (!lat.is_empty()).then(|| lat.iter().sum::<f64>() / lat.len() as f64),
            p50_s: q(0.5),
            p90_s: q(0.9),
            p95_s: q(0.95),
            p99_s: q(0.99),
            max_s: lat.last().copied(),
        },
    }
}

/// One timeline bin in the analysis's shape (`analysis::record::TimelineBin`),
/// times since the start of the load.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineBin {
    /// Bin start, seconds since the load started.
    pub t_s: f64,
    /// Correct answers that ended in the bin.
    pub correct: u64,
    /// Other requests that ended in the bin.
    pub failed: u64,
    /// Median latency of the answers in the bin, seconds.
    pub p50_s: Option<f64>,
}

/// The file a run writes.
#[derive(Serialize)]
struct RunFile<'a> {
    workload: Kind,
    guest: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mix: Option<&'a str>,
    clients: usize,
    duration_s: f64,
    think_s: f64,
    seed: u64,
    accel: &'a str,
    kernel_version: &'a str,
    qemu_version: String,
    summary: &'a Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    interactions: Option<&'a [InteractionStats]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    acknowledged: Option<&'a VerifyReport>,
    bin_s: f64,
    timeline: &'a [TimelineBin],
    records: &'a [Record],
}

fn default_out(kind: Kind, guest: Profile) -> PathBuf {
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let kind = match kind {
        Kind::Apache => "apache",
        Kind::Rubis => "rubis",
    };
    Path::new("results").join(format!("workload-{kind}-{guest}-{unix}.json"))
}

/// `kfi workload ...`
pub fn cmd(cache: &Cache, command: WorkloadCommand) -> Result<ExitCode> {
    match command {
        WorkloadCommand::Run(args) => run(cache, args),
    }
}

fn run(cache: &Cache, args: RunArgs) -> Result<ExitCode> {
    let profile: Profile = args.vm.guest.into();
    if args.kind == Kind::Rubis && profile != Profile::Debian {
        bail!("RUBiS runs only on the debian guest (PHP and MariaDB): add --guest debian");
    }
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let spinner = (!args.json).then(crate::Progress::new);
    let step = |m: &str| {
        if let Some(s) = &spinner {
            s.step(m)
        }
    };
    let crate::Prepared { kernel: k, image, decision, memory_mib, .. } = args.vm.prepare(cache, &step)?;
    step(&format!("booting the {profile} guest ({})", decision.accel.name()));
    let config = VmConfig { accel: decision.accel, memory_mib, data_disk: true, ..VmConfig::default() };
    let vm = Vm::start(&image, &config)?;
    let boot_limit = Duration::from_secs(match profile {
        Profile::Tiny => 120,
        Profile::Debian => 300,
    });
    vm.wait_http(boot_limit).context("waiting for the guest's web server")?;
    if profile == Profile::Debian {
        // Apache answers before MariaDB is up; RUBiS needs both.
        vm.wait_phase("services-ready", boot_limit).context("waiting for the guest's services")?;
    }
    let addr = vm.http_addr();
    step(&format!(
        "{} load for {:?} with {} clients on http://{addr}/",
        kind_name(args.kind),
        args.duration,
        args.clients
    ));
    let origin = Instant::now();
    let (records, interactions, acknowledged, think) = match args.kind {
        Kind::Apache => {
            let docs = DocList::load(&image.dir.join("docs.json"))?;
            let think = args.think.unwrap_or(Duration::ZERO);
            let spec = LoadSpec {
                mode: Mode::Closed(ClosedLoop {
                    clients: args.clients,
                    think,
                    failure_pause: Duration::from_millis(10),
                }),
                duration: args.duration,
                timeout: args.timeout,
                seed: args.seed,
            };
            (workloads::run_blocking(addr, &docs, &spec, origin)?, None, None, think)
        }
        Kind::Rubis => {
            let spec = RubisSpec {
                think_mean: args.think.unwrap_or(Duration::from_secs(7)),
                timeout: args.timeout,
                seed: args.seed,
                ..RubisSpec::new(args.mix.into(), args.clients, args.duration)
            };
            let run = rubis::run_blocking(addr, &spec, origin)?;
            step(&format!("checking the {} writes the site acknowledged", run.acks.len()));
            let verified = rubis::verify_acks(addr, &run.acks, args.timeout).context("checking acknowledged writes")?;
            let stats = rubis::stats(&run.records);
            (run.records, Some(stats), Some(verified), spec.think_mean)
        }
    };
    let elapsed = args.duration.as_secs_f64();
    vm.shutdown(Duration::ZERO);
    drop(spinner);

    let summary = summarize(&records, elapsed);
    let timeline = Timeline::build(&records, BIN_S).context("binning the records")?;
    let bins: Vec<TimelineBin> = timeline
        .bins
        .iter()
        .map(|b| TimelineBin { t_s: b.start, correct: b.correct, failed: b.failed, p50_s: b.p50 })
        .collect();
    let mix = Mix::from(args.mix);
    let file = RunFile {
        workload: args.kind,
        guest: profile.name(),
        mix: (args.kind == Kind::Rubis).then(|| mix.name()),
        clients: args.clients,
        duration_s: elapsed,
        think_s: think.as_secs_f64(),
        seed: args.seed,
        accel: decision.accel.name(),
        kernel_version: &k.release,
        qemu_version: recovery_sut::vm::qemu_version().unwrap_or_default(),
        summary: &summary,
        interactions: interactions.as_deref(),
        acknowledged: acknowledged.as_ref(),
        bin_s: BIN_S,
        timeline: &bins,
        records: &records,
    };
    let out = args.out.clone().unwrap_or_else(|| default_out(args.kind, profile));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_vec(&file)?).with_context(|| format!("writing {}", out.display()))?;

    let lost = acknowledged.as_ref().is_some_and(|v| !v.all_present());
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
    Ok(if lost { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Apache => "apache",
        Kind::Rubis => "RUBiS",
    }
}

fn print_text(file: &RunFile<'_>, out: &Path) {
    let s = file.summary;
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.1}", v * 1000.0));
    println!(
        "{} on {} ({}), {} clients, {:.0} s{}",
        kind_name(file.workload),
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
    if let Some(stats) = file.interactions {
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
    if let Some(v) = file.acknowledged {
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
        assert_eq!(args.kind, Kind::Rubis);
        assert_eq!(args.duration, Duration::from_secs(45));
        assert_eq!((args.clients, args.mix, args.think, args.json), (2, MixArg::Bidding, None, true));
        let cli = Cli::try_parse_from(["kfi", "run", "apache", "--mix", "browsing", "--think", "1s", "--clients", "4"])
            .unwrap();
        let WorkloadCommand::Run(args) = cli.command;
        assert_eq!((args.kind, args.mix, args.clients), (Kind::Apache, MixArg::Browsing, 4));
        assert_eq!(args.think, Some(Duration::from_secs(1)));
        assert!(Cli::try_parse_from(["kfi", "run", "tpcc"]).is_err());
        assert!(Cli::try_parse_from(["kfi", "run", "rubis", "--duration", "soon"]).is_err());
    }

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").unwrap_err().contains("30s"));
        assert!(parse_duration("3d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn summary_counts_errors_by_kind_and_throughput_of_correct_answers() {
        let rec = |outcome, end: f64| Record { start: 0.0, end, path: "/".into(), outcome, bytes: 10 };
        let records = [
            rec(Outcome::Ok, 0.1),
            rec(Outcome::Ok, 0.3),
            rec(Outcome::HttpStatus(503), 0.2),
            rec(Outcome::Timeout, 1.0),
        ];
        let s = summarize(&records, 2.0);
        assert_eq!((s.requests, s.correct, s.errors), (4, 2, 2));
        assert_eq!(s.throughput_rps, 1.0);
        assert_eq!(s.errors_by_kind["http_503"], 1);
        assert_eq!(s.errors_by_kind["timeout"], 1);
        assert_eq!(s.latency.p50_s, Some(0.1));
        assert_eq!(s.latency.max_s, Some(0.3));
        assert_eq!(s.bytes, 40);
    }
}
