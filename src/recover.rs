//! `kfi recover`: crash a guest again and again under client load and
//! measure, per recovery strategy, the downtime the clients saw.
//!
//! This wires `recovery-sut` (the SUT and its strategies) to `workloads`
//! (load and downtime) without a campaign store: one booted guest per
//! strategy, crashed `repeat` times. Statistics are `kfi-stats`' (type-7
//! quantiles), the same as the campaign reports'.

use std::time::{Duration, Instant};

use crate::workload_run::WorkloadKind;
use anyhow::{Context, Result};
use recovery_sut::recovery::{RecoveryTiming, Strategy, Sut};
use recovery_sut::{GuestImage, VmConfig};
use serde::Serialize;
use workloads::downtime::{analyze, DowntimeConfig};
use workloads::{seconds_since, DocList};

pub use crate::crash::Crash;
use crate::load::{ClientLoad, Clients, RunningLoad};

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
    /// The availability probe's outage by the same measure (the index page
    /// every 10 ms, independent of the clients), seconds.
    pub probe_outage_s: Option<f64>,
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
    /// 95th percentile downtime (type 7), seconds.
    pub downtime_p95_s: Option<f64>,
    /// Mean downtime, seconds.
    pub downtime_mean_s: Option<f64>,
    /// Median of the availability probe's outages, seconds.
    pub probe_outage_median_s: Option<f64>,
    /// Median detection time, seconds.
    pub detect_median_s: Option<f64>,
    /// Median reset/restore time, seconds.
    pub restart_median_s: Option<f64>,
    /// 1 - median / median(full-reboot).
    pub reduction_vs_full_reboot: Option<f64>,
}

/// Per-strategy statistics, with the reduction against full reboot.
pub fn summarize(trials: &[Trial], strategies: &[Strategy]) -> Vec<StrategySummary> {
    let mut out: Vec<StrategySummary> = strategies
        .iter()
        .map(|&strategy| {
            let mine: Vec<&Trial> = trials.iter().filter(|t| t.strategy == strategy).collect();
            let downtimes: Vec<f64> = mine.iter().filter_map(|t| t.downtime_s).collect();
            let sorted = kfi_stats::Sorted::new(downtimes.iter().copied());
            StrategySummary {
                strategy,
                recovered: downtimes.len(),
                fallbacks: mine.iter().filter(|t| t.timing.strategy != strategy).count(),
                trials: mine.len(),
                downtime_median_s: sorted.as_ref().map(|s| s.quantile(0.5)),
                downtime_p95_s: sorted.as_ref().map(|s| s.quantile(0.95)),
                downtime_mean_s: kfi_stats::mean(downtimes.iter().copied()),
                probe_outage_median_s: kfi_stats::median(mine.iter().filter_map(|t| t.probe_outage_s)),
                detect_median_s: kfi_stats::median(mine.iter().map(|t| t.detect_s)),
                restart_median_s: kfi_stats::median(mine.iter().map(|t| t.timing.restart_s)),
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
    config.extra_cmdline.extend(plan.crash.kernel_args().iter().map(|a| a.to_string()));
    let mut trials = Vec::new();
    for &strategy in &plan.strategies {
        // A fresh system per strategy: no strategy inherits the disk or
        // snapshots another one left behind.
        // kexec-reboot boots with a crash kernel reserved (and more RAM).
        let config = strategy.vm_config(&config, image.profile());
        let mut sut = Sut::boot(image, &config).context("booting the system under test")?;
        sut.set_clients_need(WorkloadKind::Apache.clients_need());
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
    let load = ClientLoad {
        clients: Clients::Static(docs.clone()),
        count: plan.clients,
        think: Duration::ZERO,
        failure_pause: crate::load::DOWNTIME_FAILURE_PAUSE,
        timeout: Duration::from_secs(1),
        // An upper bound only: the run is stopped once the service is back.
        duration: Duration::from_secs(600),
        seed: plan.seed.wrapping_add(rep as u64),
    };
    // The standby goes to the snapshot this trial's recovery restores
    // before the clients start.
    sut.prepare_for(strategy);
    let origin = Instant::now();
    let probe = RunningLoad::start(sut.vm().http_addr(), ClientLoad::probe(docs, Duration::from_secs(600)), origin);
    let load = RunningLoad::start(sut.vm().http_addr(), load, origin);
    std::thread::sleep(plan.warmup);
    load.wait_answered(origin, crate::load::ANSWER_GATE_TIMEOUT)?;
    let crashed_at = Instant::now();
    plan.crash.trigger(sut.vm())?;
    let outcome = sut
        .wait_failure(Duration::from_secs(30), Duration::from_secs(5))
        .context("waiting for the crash to be detected")
        .and_then(|failure| {
            let timing = sut.recover(strategy, &failure).context("recovering")?;
            Ok((failure, timing))
        });
    if outcome.is_ok() {
        // Probe requests that went out during the outage end only at their
        // timeout: the tail outlasts it.
        std::thread::sleep(plan.tail.max(crate::load::PROBE_TAIL));
    }
    let records = load.finish()?.records;
    let probed = probe.finish()?.records;
    let (failure, timing) = outcome?;
    // The failure instant is when the VMM saw it, not when the crash was
    // asked for: a request answered between the two (the crash takes a few
    // milliseconds to reach the kernel) would otherwise "end" the downtime.
    // A pvpanic report arrives within milliseconds of the panic.
    let failure_at = seconds_since(origin, failure.detected_at);
    let report = analyze(&records, failure_at, &DowntimeConfig::default())
        .context("computing the downtime from the client records")?;
    let probe_outage_s = crate::load::probe_outage(&probed, failure_at);
    Ok(Trial {
        strategy,
        rep,
        downtime_s: report.downtime.seconds(),
        probe_outage_s,
        throughput_back_s: report.throughput.after,
        detect_s: failure.detected_at.saturating_duration_since(crashed_at).as_secs_f64(),
        timing,
        requests: records.len(),
        correct: records.iter().filter(|r| r.is_correct()).count(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use recovery_sut::recovery::{FailureCause, RecoveryTiming};

    fn trial(strategy: Strategy, downtime_s: f64) -> Trial {
        Trial {
            strategy,
            rep: 0,
            downtime_s: Some(downtime_s),
            probe_outage_s: None,
            throughput_back_s: None,
            detect_s: 0.01,
            timing: RecoveryTiming {
                requested: strategy,
                strategy,
                fallback_reason: None,
                cause: FailureCause::GuestPanicked,
                restart_s: 0.1,
                running_at: std::time::Instant::now(),
                service_s: 0.1,
                standby: false,
            },
            requests: 10,
            correct: 9,
        }
    }

    #[test]
    fn summaries_use_the_shared_type_7_statistics() {
        let reboot = [6.0, 5.0, 7.0, 9.0, 6.5];
        let restore = [0.3, 0.2, 0.4, 0.25, 0.35];
        let mut trials: Vec<Trial> = reboot.iter().map(|&d| trial(Strategy::FullReboot, d)).collect();
        trials.extend(restore.iter().map(|&d| trial(Strategy::ServiceRestore, d)));
        let s = summarize(&trials, &[Strategy::FullReboot, Strategy::ServiceRestore]);
        let full = kfi_stats::Summary::of(&reboot).unwrap();
        assert_eq!(s[0].downtime_median_s, Some(full.median));
        assert_eq!(s[0].downtime_p95_s, Some(full.p95));
        assert_eq!(s[0].downtime_mean_s, Some(full.mean));
        let svc = kfi_stats::Summary::of(&restore).unwrap();
        assert_eq!(s[1].downtime_p95_s, Some(svc.p95));
        assert!((s[1].reduction_vs_full_reboot.unwrap() - (1.0 - svc.median / full.median)).abs() < 1e-12);
    }
}
