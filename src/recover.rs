//! `kfi recover`: crash a guest again and again under client load and
//! measure, per recovery strategy, the downtime the clients saw.
//!
//! This wires `recovery-sut` (the SUT and its strategies) to `workloads`
//! (load and downtime); the campaign runner will take it over.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use recovery_sut::recovery::{RecoveryTiming, Strategy, Sut};
use recovery_sut::{GuestImage, VmConfig};
use serde::Serialize;
use workloads::downtime::{analyze, DowntimeConfig};
use workloads::{seconds_since, ClosedLoop, DocList, LoadSpec, Mode};

/// How the guest is crashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Crash {
    /// `echo c > /proc/sysrq-trigger` in the guest, sent through the agent:
    /// the kernel panics as if an administrator forced a crash dump.
    Sysrq,
    /// A kernel panic from outside: an NMI from the monitor with
    /// `unknown_nmi_panic` on the kernel command line (no guest helper).
    Panic,
}

impl Crash {
    fn kernel_args(self) -> Vec<String> {
        match self {
            Crash::Sysrq => Vec::new(),
            Crash::Panic => vec!["unknown_nmi_panic".into()],
        }
    }
}

/// Knobs of one `kfi recover` run.
pub struct RecoverPlan {
    /// Strategies, in order.
    pub strategies: Vec<Strategy>,
    /// Crashes per strategy.
    pub repeat: usize,
    /// How to crash.
    pub crash: Crash,
    /// Load before the crash, seconds.
    pub warmup: Duration,
    /// Load after the service is back, seconds.
    pub tail: Duration,
    /// Closed-loop clients.
    pub clients: usize,
    /// Seed of the request mix.
    pub seed: u64,
}

/// One crash and its recovery.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    /// Strategy asked for.
    pub strategy: Strategy,
    /// Repetition number.
    pub rep: usize,
    /// Client-seen downtime, seconds (None: not recovered in the window).
    pub downtime_s: Option<f64>,
    /// Time until throughput was back to 90% of the baseline, seconds.
    pub throughput_back_s: Option<f64>,
    /// From the crash to its detection, seconds.
    pub detect_s: f64,
    /// The VMM's own timing breakdown.
    pub timing: RecoveryTiming,
    /// Requests sent and correct answers.
    pub requests: usize,
    /// Correct answers.
    pub correct: usize,
}

/// Downtime statistics of one strategy.
#[derive(Debug, Clone, Serialize)]
pub struct StrategySummary {
    /// Strategy.
    pub strategy: Strategy,
    /// Trials that recovered.
    pub recovered: usize,
    /// Trials where the strategy could not run and another one did.
    pub fallbacks: usize,
    /// Trials run.
    pub trials: usize,
    /// Median downtime, seconds.
    pub downtime_median_s: Option<f64>,
    /// 95th percentile downtime (nearest rank), seconds.
    pub downtime_p95_s: Option<f64>,
    /// Mean downtime, seconds.
    pub downtime_mean_s: Option<f64>,
    /// Median detection time, seconds.
    pub detect_median_s: Option<f64>,
    /// Median reset/restore time, seconds.
    pub restart_median_s: Option<f64>,
    /// 1 - median / median(full-reboot).
    pub reduction_vs_full_reboot: Option<f64>,
}

fn nearest_rank(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Per-strategy statistics, with the reduction against full reboot.
pub fn summarize(trials: &[Trial], strategies: &[Strategy]) -> Vec<StrategySummary> {
    let mut out: Vec<StrategySummary> = strategies
        .iter()
        .map(|&strategy| {
            let mine: Vec<&Trial> = trials.iter().filter(|t| t.strategy == strategy).collect();
            let mut downtimes: Vec<f64> = mine.iter().filter_map(|t| t.downtime_s).collect();
            downtimes.sort_by(f64::total_cmp);
            StrategySummary {
                strategy,
                recovered: downtimes.len(),
                fallbacks: mine.iter().filter(|t| t.timing.strategy != strategy).count(),
                trials: mine.len(),
                downtime_median_s: median(downtimes.iter().copied()),
                downtime_p95_s: nearest_rank(&downtimes, 0.95),
                downtime_mean_s: (!downtimes.is_empty())
                    .then(|| downtimes.iter().sum::<f64>() / downtimes.len() as f64),
                detect_median_s: median(mine.iter().map(|t| t.detect_s)),
                restart_median_s: median(mine.iter().map(|t| t.timing.restart_s)),
                reduction_vs_full_reboot: None,
            }
        })
        .collect();
    let baseline = out.iter().find(|s| s.strategy == Strategy::FullReboot).and_then(|s| s.downtime_median_s);
    for s in &mut out {
        s.reduction_vs_full_reboot = match (s.downtime_median_s, baseline) {
            (Some(m), Some(b)) if b > 0.0 => Some(1.0 - m / b),
            _ => None,
        };
    }
    out
}

/// Runs every trial; `progress` hears about each one.
pub fn run(image: &GuestImage, config: &VmConfig, plan: &RecoverPlan, progress: &dyn Fn(&Trial)) -> Result<Vec<Trial>> {
    let docs = DocList::load(&image.dir.join("docs.json"))?;
    let mut config = config.clone();
    config.extra_cmdline.extend(plan.crash.kernel_args());
    let mut trials = Vec::new();
    for &strategy in &plan.strategies {
        // A fresh system per strategy: no strategy inherits the disk or
        // snapshots another one left behind.
        // kexec-reboot boots with a crash kernel reserved (and more RAM).
        let config = strategy.vm_config(&config, image.profile());
        let mut sut = Sut::boot(image, &config).context("booting the system under test")?;
        sut.snapshot_service().context("taking the service snapshot")?;
        for rep in 0..plan.repeat {
            let trial =
                trial(&mut sut, &docs, strategy, rep, plan).with_context(|| format!("{strategy} trial {rep}"))?;
            progress(&trial);
            trials.push(trial);
        }
    }
    Ok(trials)
}

fn trial(sut: &mut Sut, docs: &DocList, strategy: Strategy, rep: usize, plan: &RecoverPlan) -> Result<Trial> {
    let addr = sut.vm().http_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let origin = Instant::now();
    let spec = LoadSpec {
        mode: Mode::Closed(ClosedLoop {
            clients: plan.clients,
            think: Duration::ZERO,
            failure_pause: Duration::from_millis(10),
        }),
        // An upper bound only: the run is stopped once the service is back.
        duration: Duration::from_secs(600),
        timeout: Duration::from_secs(1),
        seed: plan.seed.wrapping_add(rep as u64),
    };
    let load = {
        let docs = docs.clone();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || workloads::run_blocking_until(addr, &docs, &spec, origin, stop))
    };
    std::thread::sleep(plan.warmup);
    let crashed_at = Instant::now();
    match plan.crash {
        Crash::Sysrq => sut.vm().agent().send("sysrq c").context("asking the agent for a sysrq crash")?,
        Crash::Panic => {
            sut.vm().qmp().execute("inject-nmi", None).context("injecting the NMI")?;
        }
    }
    let outcome = sut
        .wait_failure(Duration::from_secs(30), Duration::from_secs(5))
        .context("waiting for the crash to be detected")
        .and_then(|failure| {
            let timing = sut.recover(strategy, &failure).context("recovering")?;
            Ok((failure, timing))
        });
    if outcome.is_ok() {
        std::thread::sleep(plan.tail);
    }
    stop.store(true, Ordering::SeqCst);
    let records = load.join().map_err(|_| anyhow::anyhow!("the load generator thread panicked"))??;
    let (failure, timing) = outcome?;
    // The failure instant is when the VMM saw it, not when the crash was
    // asked for: a request answered between the two (the crash takes a few
    // milliseconds to reach the kernel) would otherwise "end" the downtime.
    // A pvpanic report arrives within milliseconds of the panic.
    let report = analyze(&records, seconds_since(origin, failure.detected_at), &DowntimeConfig::default())
        .context("computing the downtime from the client records")?;
    Ok(Trial {
        strategy,
        rep,
        downtime_s: report.downtime.seconds(),
        throughput_back_s: report.throughput.after,
        detect_s: failure.detected_at.saturating_duration_since(crashed_at).as_secs_f64(),
        timing,
        requests: records.len(),
        correct: records.iter().filter(|r| r.is_correct()).count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_medians() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median([]), None);
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(nearest_rank(&v, 0.95), Some(19.0));
        assert_eq!(nearest_rank(&v[..1], 0.95), Some(1.0));
    }
}
