//! `kfi check`: regression mode for the recovery VMM's own CI. A short,
//! fixed campaign runs; the check fails when any failure was not
//! recovered, any acknowledged write was lost, a strategy it lists never
//! ran as itself (every one of its experiments fell back), or a strategy's
//! downtime ratio to full reboot grew beyond a tolerance over the stored
//! baseline.

use std::collections::BTreeMap;
use std::path::Path;

use analysis::record::{ExperimentRecord, RecordedStrategy};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Per-strategy medians of a check run; the baseline is one of these.
/// Figures are keyed by failure class and strategy (`crash:sysrq
/// service-restore`): each strategy is compared with the full reboots of
/// the same failure class, never pooled across classes whose detection
/// alone differs by seconds (a hang waits for the heartbeat timeout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Layout of the file ([`BASELINE_FORMAT`]; absent in the first one,
    /// whose keys were strategies pooled over failure classes).
    #[serde(default)]
    pub format: u32,
    /// Campaign it was measured on.
    pub campaign: String,
    /// Accelerator, QEMU and kernel it was measured with.
    pub provenance: String,
    /// Median client-seen downtime per failure class and strategy, seconds.
    pub median_downtime_s: BTreeMap<String, f64>,
    /// Median downtime of each divided by the same failure class's full
    /// reboot's.
    pub ratio_to_full_reboot: BTreeMap<String, f64>,
}

/// The baseline layout this build writes and reads.
pub const BASELINE_FORMAT: u32 = 2;

/// One thing that went wrong.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    /// A failure the VMM did not bring back.
    NotRecovered {
        /// Experiment key.
        key: String,
        /// Why, as recorded.
        why: String,
    },
    /// Acknowledged writes missing after recovery.
    LostWrites {
        /// Experiment key.
        key: String,
        /// How many.
        lost: u64,
    },
    /// Every experiment of a strategy fell back to another one: the check
    /// measured nothing of it.
    NeverRanAsItself {
        /// Strategy.
        strategy: String,
        /// Its experiments.
        experiments: usize,
        /// The strategies that ran instead, `/`-joined.
        fell_back_to: String,
        /// The first recorded reason.
        why: String,
    },
    /// The harness failed to run an experiment (stored as `harness-error`
    /// after its retries): nothing about it is known.
    HarnessError {
        /// The experiment's key.
        key: String,
        /// The last attempt's error chain.
        error: String,
    },
    /// The baseline has a figure this run did not measure (nothing of it
    /// recovered, or the experiment file no longer runs it).
    NotMeasured {
        /// Failure class and strategy.
        key: String,
    },
    /// A strategy's downtime ratio grew beyond the tolerance.
    Regressed {
        /// Strategy.
        strategy: String,
        /// Baseline ratio to full reboot.
        baseline: f64,
        /// Measured ratio.
        measured: f64,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::NotRecovered { key, why } => write!(f, "not recovered: {key}: {why}"),
            Problem::LostWrites { key, lost } => write!(f, "{lost} acknowledged writes lost: {key}"),
            Problem::NeverRanAsItself { strategy, experiments, fell_back_to, why } => write!(
                f,
                "{strategy} never ran as itself: all {experiments} of its experiments fell back to {fell_back_to} \
                 ({why}), so this check measured nothing of it: change the experiment file so that it can run \
                 (a service restore falls back whenever acknowledged writes changed the data disk)"
            ),
            Problem::HarnessError { key, error } => write!(
                f,
                "harness-error: {key}: the harness failed, not the guest, so this check knows nothing of it; run \
                 the check again ({error})"
            ),
            Problem::NotMeasured { key } => write!(
                f,
                "{key}: the baseline has a downtime ratio for it, this run measured none (nothing of it recovered, \
                 or the experiment file no longer runs it)"
            ),
            Problem::Regressed { strategy, baseline, measured } => write!(
                f,
                "{strategy} regressed: downtime is {:.1}% of full reboot's, baseline {:.1}% (+{:.1} points, {:+.0}%)",
                measured * 100.0,
                baseline * 100.0,
                (measured - baseline) * 100.0,
                (measured / baseline - 1.0) * 100.0
            ),
        }
    }
}

/// The medians and ratios of a run's records.
pub fn measure(campaign: &str, records: &[ExperimentRecord]) -> Baseline {
    let mut by_key: BTreeMap<(String, RecordedStrategy), Vec<f64>> = BTreeMap::new();
    for r in records {
        if let (Some(rec), Some(d)) = (&r.recovery, r.downtime_s) {
            by_key.entry((analysis::tables::failure_class(r), rec.requested)).or_default().push(d);
        }
    }
    let medians: BTreeMap<(String, RecordedStrategy), f64> =
        by_key.into_iter().filter_map(|(k, v)| kfi_stats::median(v).map(|m| (k, m))).collect();
    let name = |(class, strategy): &(String, RecordedStrategy)| format!("{class} {strategy}");
    let median_downtime_s = medians.iter().map(|(k, &m)| (name(k), m)).collect();
    let ratio_to_full_reboot = medians
        .iter()
        .filter_map(|(k, &m)| {
            let full = *medians.get(&(k.0.clone(), RecordedStrategy::FullReboot))?;
            (full > 0.0).then(|| (name(k), m / full))
        })
        .collect();
    let provenance = records
        .first()
        .map(|r| {
            let p = &r.provenance;
            let commit = match (&p.kfi_commit, p.kfi_dirty) {
                (Some(c), Some(true)) => format!(", kfi {} (dirty)", &c[..c.len().min(12)]),
                (Some(c), _) => format!(", kfi {}", &c[..c.len().min(12)]),
                (None, _) => String::new(),
            };
            format!("{} guest, {}{commit}", p.profile, p.environment_label())
        })
        .unwrap_or_default();
    Baseline {
        format: BASELINE_FORMAT,
        campaign: campaign.to_string(),
        provenance,
        median_downtime_s,
        ratio_to_full_reboot,
    }
}

/// Everything wrong with a run against `baseline`. A ratio regresses when
/// it exceeds the baseline's by more than `tolerance` (relative) *and* by
/// more than `slack` (absolute): tiny ratios are noisy in relative terms.
pub fn problems(records: &[ExperimentRecord], baseline: &Baseline, tolerance: f64, slack: f64) -> Vec<Problem> {
    let mut out = Vec::new();
    for r in records {
        if let Some(rec) = &r.recovery {
            if !rec.recovered {
                out.push(Problem::NotRecovered {
                    key: r.key.clone(),
                    why: rec.fallback_reason.clone().unwrap_or_else(|| "no correct answer in the window".into()),
                });
            }
        }
        if let Some(lost) = r.lost_writes.filter(|&l| l > 0) {
            out.push(Problem::LostWrites { key: r.key.clone(), lost });
        }
        if let Some(h) = &r.harness_error {
            let error = h.errors.last().cloned().unwrap_or_else(|| "no error recorded".into());
            out.push(Problem::HarnessError { key: r.key.clone(), error });
        }
    }
    out.extend(never_ran_as_themselves(records));
    let measured = measure(&baseline.campaign, records);
    for (strategy, &base) in &baseline.ratio_to_full_reboot {
        let Some(&now) = measured.ratio_to_full_reboot.get(strategy) else {
            out.push(Problem::NotMeasured { key: strategy.clone() });
            continue;
        };
        if now > base * (1.0 + tolerance) && now - base > slack {
            out.push(Problem::Regressed { strategy: strategy.clone(), baseline: base, measured: now });
        }
    }
    out
}

/// The strategies every one of whose experiments fell back to another.
fn never_ran_as_themselves(records: &[ExperimentRecord]) -> Vec<Problem> {
    let mut by_strategy: BTreeMap<RecordedStrategy, Vec<&analysis::record::RecoveryRecord>> = BTreeMap::new();
    for rec in records.iter().filter_map(|r| r.recovery.as_ref()) {
        by_strategy.entry(rec.requested).or_default().push(rec);
    }
    by_strategy
        .into_iter()
        .filter(|(_, recs)| recs.iter().all(|r| r.used != r.requested))
        .map(|(strategy, recs)| {
            let used: std::collections::BTreeSet<&str> = recs.iter().map(|r| r.used.name()).collect();
            Problem::NeverRanAsItself {
                strategy: strategy.to_string(),
                experiments: recs.len(),
                fell_back_to: used.into_iter().collect::<Vec<_>>().join("/"),
                why: recs.iter().find_map(|r| r.fallback_reason.clone()).unwrap_or_else(|| "no reason recorded".into()),
            }
        })
        .collect()
}

/// Reads a baseline file.
pub fn load_baseline(path: &Path) -> Result<Baseline> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!("no baseline at {}: record one with `kfi check FILE --update-baseline`", path.display())
    })?;
    let baseline: Baseline =
        serde_json::from_str(&text).with_context(|| format!("{} is not a kfi check baseline", path.display()))?;
    anyhow::ensure!(
        baseline.format >= BASELINE_FORMAT,
        "{} was recorded by an older kfi check, which pooled the failure classes of each strategy: record a new one \
         with `kfi check FILE --update-baseline`",
        path.display()
    );
    Ok(baseline)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use analysis::record::{
        Injection, Provenance, RecordedAccel, RecordedCause, RecordedCrash, RecordedProfile, RecordedWorkload,
        RecoveryRecord,
    };

    fn record(i: u64, strategy: &str, downtime: f64, recovered: bool, lost: u64) -> ExperimentRecord {
        ExperimentRecord {
            campaign: "regression".into(),
            experiment: i,
            key: format!("crash=sysrq strategy={strategy} rep={i}"),
            workload: RecordedWorkload::Apache,
            injection: Injection::Crash { crash: RecordedCrash::Sysrq },
            outcome: analysis::record::RecordedOutcome::Panic,
            outcome_detail: None,
            recovery: Some(RecoveryRecord {
                requested: strategy.parse().unwrap(),
                used: strategy.parse().unwrap(),
                fallback_reason: None,
                cause: RecordedCause::GuestPanicked,
                recovered,
                detect_s: 0.01,
                restart_s: 0.1,
                service_s: 0.2,
                on_standby: None,
                stages: None,
            }),
            downtime_s: recovered.then_some(downtime),
            probe_outage_s: None,
            throughput_back_s: None,
            requests: 10,
            correct: 9,
            acked_writes: Some(5),
            lost_writes: Some(lost),
            params: Default::default(),
            metrics: Default::default(),
            timeline: Vec::new(),
            provenance: Provenance {
                accel: RecordedAccel::Tcg,
                qemu_version: "7.2.22".into(),
                kernel_version: "6.1.0".into(),
                profile: RecordedProfile::Tiny,
                ram_mb: 256,
                seed: 1,
                kfi_version: "0".into(),
                host: "h".into(),
                kfi_commit: None,
                kfi_dirty: None,
                kernel_origin: None,
                kernel_build_id: None,
                image_recipe: None,
                image_packages: None,
                host_cpu: None,
                host_cores: None,
            },
            started_at: String::new(),
            harness_error: None,
            events: Vec::new(),
            unattributed: false,
            wall_s: 1.0,
            window_s: 1.0,
        }
    }

    fn run(service: f64) -> Vec<ExperimentRecord> {
        vec![
            record(0, "full-reboot", 6.0, true, 0),
            record(1, "full-reboot", 6.4, true, 0),
            record(2, "service-restore", service, true, 0),
            record(3, "service-restore", service + 0.02, true, 0),
        ]
    }

    #[test]
    fn the_baseline_passes_and_a_slower_strategy_fails_with_its_numbers() {
        let baseline = measure("regression", &run(0.5));
        assert_eq!(baseline.median_downtime_s["crash:sysrq full-reboot"], 6.2);
        assert!((baseline.ratio_to_full_reboot["crash:sysrq service-restore"] - 0.51 / 6.2).abs() < 1e-12);
        assert!(problems(&run(0.5), &baseline, 0.5, 0.02).is_empty());
        // Noise inside the tolerance passes.
        assert!(problems(&run(0.6), &baseline, 0.5, 0.02).is_empty());
        let found = problems(&run(2.0), &baseline, 0.5, 0.02);
        assert_eq!(found.len(), 1, "{found:?}");
        let text = found[0].to_string();
        assert!(text.starts_with("crash:sysrq service-restore regressed") && text.contains("baseline 8.2%"), "{text}");
    }

    #[test]
    fn each_failure_class_is_compared_with_its_own_full_reboots() {
        let mut records = run(0.5);
        // Hangs: seconds of detection for every strategy.
        for (i, (strategy, d)) in [("full-reboot", 9.0), ("service-restore", 3.2)].into_iter().enumerate() {
            let mut r = record(10 + i as u64, strategy, d, true, 0);
            r.injection = Injection::Crash { crash: RecordedCrash::Hang };
            records.push(r);
        }
        let baseline = measure("regression", &records);
        assert!((baseline.ratio_to_full_reboot["crash:hang service-restore"] - 3.2 / 9.0).abs() < 1e-12);
        assert!((baseline.ratio_to_full_reboot["crash:sysrq service-restore"] - 0.51 / 6.2).abs() < 1e-12);
        // Twice as slow after a panic is caught, whatever the hangs do.
        let mut slower = records.clone();
        for r in slower.iter_mut().filter(|r| r.key.contains("service-restore") && r.experiment < 10) {
            r.downtime_s = r.downtime_s.map(|d| d * 2.0);
        }
        let found = problems(&slower, &baseline, 0.5, 0.02);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].to_string().starts_with("crash:sysrq service-restore regressed"), "{}", found[0]);
        // A figure the run no longer measures is a problem, not a pass.
        let found = problems(&records[..4], &baseline, 0.5, 0.02);
        assert!(found.iter().any(|p| p.to_string().starts_with("crash:hang service-restore: the baseline has")));
    }

    #[test]
    fn a_baseline_of_the_pooled_format_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baseline.json");
        let old = r#"{"campaign":"regression","provenance":"p","median_downtime_s":{"full-reboot":4.0},
                     "ratio_to_full_reboot":{"full-reboot":1.0}}"#;
        std::fs::write(&path, old).unwrap();
        let err = format!("{:#}", load_baseline(&path).unwrap_err());
        assert!(err.contains("older kfi check") && err.contains("--update-baseline"), "{err}");
        std::fs::write(&path, serde_json::to_string(&measure("regression", &run(0.5))).unwrap()).unwrap();
        assert_eq!(load_baseline(&path).unwrap().format, BASELINE_FORMAT);
    }

    #[test]
    fn the_baseline_names_the_commit_and_environment_it_was_measured_on() {
        let mut records = run(0.5);
        records[0].provenance.kfi_commit = Some("d626ed1a2b3c4d5e6f".into());
        records[0].provenance.kfi_dirty = Some(true);
        records[0].provenance.image_recipe = Some("79ff26979d5e0123".into());
        let text = measure("regression", &records).provenance;
        assert!(text.starts_with("tiny guest, kernel 6.1.0, image 79ff26979d5e, QEMU 7.2.22, tcg"), "{text}");
        assert!(text.ends_with("kfi d626ed1a2b3c (dirty)"), "{text}");
    }

    #[test]
    fn a_strategy_that_only_ever_fell_back_fails_the_check_and_says_so() {
        let baseline = measure("regression", &run(0.5));
        let mut records = run(0.5);
        for r in records.iter_mut().filter(|r| r.key.contains("service-restore")) {
            let rec = r.recovery.as_mut().unwrap();
            rec.used = RecordedStrategy::PhaseRestore;
            rec.fallback_reason = Some("the data disk was written since the service snapshot".into());
        }
        let found = problems(&records, &baseline, 0.5, 10.0);
        assert_eq!(found.len(), 1, "{found:?}");
        let text = found[0].to_string();
        assert!(
            text.starts_with(
                "service-restore never ran as itself: all 2 of its experiments fell back to phase-restore"
            ) && text.contains("data disk was written"),
            "{text}"
        );
        // One experiment that ran as itself is enough.
        records[2].recovery.as_mut().unwrap().used = RecordedStrategy::ServiceRestore;
        assert!(problems(&records, &baseline, 0.5, 10.0).is_empty());
    }

    #[test]
    fn lost_writes_and_unrecovered_failures_always_fail() {
        let baseline = measure("regression", &run(0.5));
        let mut records = run(0.5);
        records.push(record(4, "phase-restore", 0.0, false, 0));
        records.push(record(5, "service-restore", 0.5, true, 2));
        let found = problems(&records, &baseline, 0.5, 0.02);
        assert!(found.iter().any(|p| matches!(p, Problem::NotRecovered { .. })), "{found:?}");
        assert!(found.iter().any(|p| matches!(p, Problem::LostWrites { lost: 2, .. })), "{found:?}");
    }

    #[test]
    fn a_harness_error_is_named_with_its_error_not_only_as_a_missing_figure() {
        let baseline = measure("regression", &run(0.5));
        let mut records = run(0.5);
        let failed =
            records.iter_mut().find(|r| r.recovery.as_ref().is_some_and(|x| x.requested.name() == "full-reboot"));
        let failed = failed.unwrap();
        failed.outcome = analysis::record::RecordedOutcome::HarnessError;
        failed.recovery = None;
        failed.downtime_s = None;
        failed.harness_error =
            Some(analysis::record::HarnessFailure { attempts: 3, errors: vec!["a gdbstub timeout".into()] });
        let found = problems(&records, &baseline, 0.5, 0.02);
        let text: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert!(text.iter().any(|t| t.starts_with("harness-error: ") && t.contains("a gdbstub timeout")), "{text:?}");
    }
}
