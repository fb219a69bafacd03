//! A workload run (`kfi workload run`): boot a guest, drive the Apache
//! static workload or RUBiS against it for a while, and sum up throughput,
//! latency, errors and (for RUBiS) per-interaction statistics; the
//! timeline and every request's record go to a JSON file for the analysis.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use recovery_sut::{Profile, Vm, VmConfig};
use serde::Serialize;
use workloads::rubis::{self, InteractionStats, Mix, VerifyReport};
use workloads::{DocList, Record, RequestOutcome, Timeline};

use analysis::record::TimelineBin;

use crate::load::{ClientLoad, Clients};
use crate::setup::Prepared;

/// Width of the timeline's bins: the resolution downtime is measured at.
const BIN_S: f64 = 0.1;

/// Which workload drives the guest (`kfi workload run --kind`, an
/// experiment file's `[workload] kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// Static files with a realistic size mix over HTTP (the guest's
    /// document set; busybox httpd in tiny, Apache in debian).
    Apache,
    /// The RUBiS auction site (debian guest only).
    Rubis,
}

impl WorkloadKind {
    /// What its requests need of the guest: static pages only the web
    /// server, RUBiS's pages the database too (whether a recovery holds
    /// its clients until the data-dependent services run).
    pub fn clients_need(self) -> recovery_sut::ClientsNeed {
        match self {
            WorkloadKind::Apache => recovery_sut::ClientsNeed::BoundaryServices,
            WorkloadKind::Rubis => recovery_sut::ClientsNeed::DataServices,
        }
    }
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WorkloadKind::Apache => "apache",
            WorkloadKind::Rubis => "rubis",
        })
    }
}

/// Latency of the correct answers, seconds; quantiles are type 7
/// (`kfi-stats`), as in every kfi summary.
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
pub struct LoadSummary {
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

fn outcome_name(o: RequestOutcome) -> String {
    match o {
        RequestOutcome::Ok => "ok".into(),
        RequestOutcome::WrongContent => "wrong_content".into(),
        RequestOutcome::HttpStatus(s) => format!("http_{s}"),
        RequestOutcome::ConnectError => "connect_error".into(),
        RequestOutcome::Timeout => "timeout".into(),
        RequestOutcome::IoError => "io_error".into(),
    }
}

/// Sums up `records` of a run that offered load for `seconds`.
pub fn summarize(records: &[Record], seconds: f64) -> LoadSummary {
    let lat: Vec<f64> = records.iter().filter(|r| r.is_correct()).map(Record::latency).collect();
    let sorted = kfi_stats::Sorted::new(lat.iter().copied());
    let mut errors_by_kind = std::collections::BTreeMap::new();
    for r in records.iter().filter(|r| !r.is_correct()) {
        *errors_by_kind.entry(outcome_name(r.outcome)).or_insert(0) += 1;
    }
    let q = |p| sorted.as_ref().map(|s| s.quantile(p));
    LoadSummary {
        requests: records.len(),
        correct: lat.len(),
        errors: records.len() - lat.len(),
        errors_by_kind,
        throughput_rps: if seconds > 0.0 { lat.len() as f64 / seconds } else { 0.0 },
        bytes: records.iter().map(|r| r.bytes).sum(),
        latency: Latency {
            mean_s: kfi_stats::mean(lat.iter().copied()),
            p50_s: q(0.5),
            p90_s: q(0.9),
            p95_s: q(0.95),
            p99_s: q(0.99),
            max_s: sorted.as_ref().and_then(|s| s.as_slice().last().copied()),
        },
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct WorkloadPlan {
    /// Which workload.
    pub kind: WorkloadKind,
    /// How long load is offered.
    pub duration: Duration,
    /// Closed-loop clients (RUBiS: concurrent sessions).
    pub clients: usize,
    /// RUBiS transition table.
    pub mix: Mix,
    /// Think time (RUBiS: negative-exponential mean, default 7 s; apache:
    /// fixed, default none).
    pub think: Option<Duration>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Seed of the clients' choices.
    pub seed: u64,
    /// Where the run file goes (default: `results/workload-<kind>-<guest>-<unix time>.json`).
    pub out: Option<PathBuf>,
}

/// The file a run writes.
#[derive(Debug, Serialize)]
pub struct RunFile {
    /// Which workload.
    pub workload: WorkloadKind,
    /// Guest profile.
    pub guest: &'static str,
    /// RUBiS mix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mix: Option<&'static str>,
    /// Clients.
    pub clients: usize,
    /// Seconds of load.
    pub duration_s: f64,
    /// Think time, seconds.
    pub think_s: f64,
    /// Seed.
    pub seed: u64,
    /// Accelerator.
    pub accel: &'static str,
    /// Guest kernel release.
    pub kernel_version: String,
    /// QEMU's version.
    pub qemu_version: String,
    /// What the clients saw, in sum.
    pub summary: LoadSummary,
    /// RUBiS per-interaction statistics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interactions: Option<Vec<InteractionStats>>,
    /// RUBiS acknowledged writes, checked after the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<VerifyReport>,
    /// Timeline bin width, seconds.
    pub bin_s: f64,
    /// The timeline.
    pub timeline: Vec<TimelineBin>,
    /// Every request.
    pub records: Vec<Record>,
}

impl RunFile {
    /// Whether an acknowledged write went missing.
    pub fn lost_writes(&self) -> bool {
        self.acknowledged.as_ref().is_some_and(|v| !v.all_present())
    }
}

fn default_out(kind: WorkloadKind, guest: Profile) -> PathBuf {
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let kind = match kind {
        WorkloadKind::Apache => "apache",
        WorkloadKind::Rubis => "rubis",
    };
    Path::new("results").join(format!("workload-{kind}-{guest}-{unix}.json"))
}

/// Boots the prepared guest, offers the load, writes the run file and
/// returns it with its path.
pub fn run(prepared: &Prepared, plan: &WorkloadPlan, step: &dyn Fn(&str)) -> Result<(RunFile, PathBuf)> {
    let profile = prepared.profile;
    if plan.kind == WorkloadKind::Rubis && profile != Profile::Debian {
        bail!("RUBiS runs only on the debian guest (PHP and MariaDB): add --guest debian");
    }
    if plan.clients == 0 {
        bail!("--clients must be at least 1");
    }
    step(&format!("booting the {profile} guest ({})", prepared.decision.accel.name()));
    let config = VmConfig {
        accel: prepared.decision.accel,
        memory_mib: prepared.memory_mib,
        data_disk: true,
        ..VmConfig::default()
    };
    let vm = Vm::start(&prepared.image, &config)?;
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
        plan.kind.label(),
        plan.duration,
        plan.clients
    ));
    let (clients, think, failure_pause) = match plan.kind {
        WorkloadKind::Apache => (
            Clients::Static(DocList::load(&prepared.image.dir.join("docs.json"))?),
            plan.think.unwrap_or(Duration::ZERO),
            crate::load::DOWNTIME_FAILURE_PAUSE,
        ),
        WorkloadKind::Rubis => {
            (Clients::Rubis(plan.mix), plan.think.unwrap_or(Duration::from_secs(7)), Duration::from_millis(100))
        }
    };
    let load = ClientLoad {
        clients,
        count: plan.clients,
        think,
        failure_pause,
        timeout: plan.timeout,
        duration: plan.duration,
        seed: plan.seed,
    };
    let run = crate::load::run(addr, &load, Instant::now(), Arc::new(AtomicBool::new(false)))?;
    let (interactions, acknowledged) = match plan.kind {
        WorkloadKind::Apache => (None, None),
        WorkloadKind::Rubis => {
            step(&format!("checking the {} writes the site acknowledged", run.acks.len()));
            let verified = rubis::verify_acks(addr, &run.acks, plan.timeout).context("checking acknowledged writes")?;
            (Some(rubis::stats(&run.records)), Some(verified))
        }
    };
    let elapsed = plan.duration.as_secs_f64();
    vm.shutdown(Duration::ZERO);

    let records = run.records;
    let timeline = Timeline::build(&records, BIN_S).context("binning the records")?;
    let file = RunFile {
        workload: plan.kind,
        guest: profile.name(),
        mix: (plan.kind == WorkloadKind::Rubis).then(|| plan.mix.name()),
        clients: plan.clients,
        duration_s: elapsed,
        think_s: think.as_secs_f64(),
        seed: plan.seed,
        accel: prepared.decision.accel.name(),
        kernel_version: prepared.kernel.release.clone(),
        qemu_version: recovery_sut::vm::qemu_version().unwrap_or_default(),
        summary: summarize(&records, elapsed),
        interactions,
        acknowledged,
        bin_s: BIN_S,
        timeline: timeline
            .bins
            .iter()
            .map(|b| TimelineBin { t_s: b.start, correct: b.correct, failed: b.failed, p50_s: b.p50 })
            .collect(),
        records,
    };
    let out = plan.out.clone().unwrap_or_else(|| default_out(plan.kind, profile));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_vec(&file)?).with_context(|| format!("writing {}", out.display()))?;
    Ok((file, out))
}

impl WorkloadKind {
    /// The name progress and reports show.
    pub fn label(self) -> &'static str {
        match self {
            WorkloadKind::Apache => "apache",
            WorkloadKind::Rubis => "RUBiS",
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn summary_counts_errors_by_kind_and_throughput_of_correct_answers() {
        let rec = |outcome, end: f64| Record { start: 0.0, end, path: "/".into(), outcome, bytes: 10 };
        let records = [
            rec(RequestOutcome::Ok, 0.1),
            rec(RequestOutcome::Ok, 0.3),
            rec(RequestOutcome::HttpStatus(503), 0.2),
            rec(RequestOutcome::Timeout, 1.0),
        ];
        let s = summarize(&records, 2.0);
        assert_eq!((s.requests, s.correct, s.errors), (4, 2, 2));
        assert_eq!(s.throughput_rps, 1.0);
        assert_eq!(s.errors_by_kind["http_503"], 1);
        assert_eq!(s.errors_by_kind["timeout"], 1);
        // Type 7 between 0.1 and 0.3.
        assert!((s.latency.p50_s.unwrap() - 0.2).abs() < 1e-12);
        assert_eq!(s.latency.max_s, Some(0.3));
        assert_eq!(s.bytes, 40);
    }

    #[test]
    fn latency_quantiles_are_the_shared_statistics() {
        let latencies = [0.012, 0.3, 0.05, 0.07, 0.9, 0.011, 0.2, 0.04];
        let records: Vec<Record> = latencies
            .iter()
            .map(|&l| Record { start: 1.0, end: 1.0 + l, path: "/".into(), outcome: RequestOutcome::Ok, bytes: 1 })
            .collect();
        let s = summarize(&records, 1.0).latency;
        let shared = kfi_stats::Summary::of(&latencies).unwrap();
        let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-9;
        assert!(close(s.p50_s, shared.median) && close(s.p95_s, shared.p95) && close(s.mean_s, shared.mean));
        assert!(close(s.p90_s, kfi_stats::quantile(latencies, 0.9).unwrap()));
    }
}
