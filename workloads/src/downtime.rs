//! Client-seen downtime across one failure, and how long throughput took to
//! come back.
//!
//! * **Downtime**: from the end of the last correct answer that completed
//!   at or before the failure instant to the end of the first correct answer
//!   to a request sent at or after it. Without such an answer the service
//!   did not recover within the run: the downtime is unbounded and only its
//!   observed lower bound, up to the last record's end, is known.
//! * **Throughput recovery**: from the failure instant to the start of the
//!   first whole bin after it whose correct answers reach a fraction (90%)
//!   of the baseline, the mean correct answers per bin over a window of whole
//!   bins just before the failure. Its resolution is one bin.
//!
//! Why "sent at or after" and not merely "completed after": an answer the
//! server wrote before it failed can still be in socket buffers and finish
//! arriving after the failure instant. Counting it would end the downtime a
//! fraction of a millisecond after the failure, whatever the outage (the
//! test that stops a server mid-run saw exactly that). An answer to a
//! request sent before the failure proves nothing about recovery, so
//! requests straddling the failure instant count on neither side; the cost
//! is at most one request's duration of conservatism.
//!
//! The failure instant is the caller's: when the fault was injected or when
//! the crash was detected, in seconds since the run's origin. Both measures
//! assume the service is already failing at that instant: requests sent
//! after it that are still answered correctly (a fault that takes effect
//! late) end the downtime early, so pass the detection instant for such
//! faults.

use serde::{Deserialize, Serialize};

use crate::record::Record;
use crate::timeline::{Timeline, TimelineError, DEFAULT_BIN_SECS};

/// How throughput recovery is judged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DowntimeConfig {
    /// Bin width, seconds.
    pub bin_secs: f64,
    /// Length of the baseline window just before the failure, seconds; only
    /// bins wholly inside it count.
    pub baseline_secs: f64,
    /// Share of the baseline that counts as recovered, in (0, 1].
    pub recovered_fraction: f64,
}

impl Default for DowntimeConfig {
    fn default() -> Self {
        Self { bin_secs: DEFAULT_BIN_SECS, baseline_secs: 2.0, recovered_fraction: 0.9 }
    }
}

/// Whether correct answers came back after the failure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Recovery {
    /// A request sent after the failure got a correct answer.
    Recovered {
        /// End of the first correct answer to a request sent at or after the
        /// failure, seconds.
        first_correct_after: f64,
        /// Downtime, seconds.
        downtime: f64,
    },
    /// No request sent after the failure got a correct answer.
    NotRecovered {
        /// End of the last record of the run, seconds.
        run_end: f64,
        /// Downtime observed so far, up to `run_end`: the true downtime is
        /// at least this.
        lower_bound: f64,
    },
}

/// Client-seen downtime across one failure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Downtime {
    /// The failure instant it was measured across, seconds.
    pub failure_at: f64,
    /// End of the last correct answer at or before the failure, seconds.
    pub last_correct_before: f64,
    /// What happened after.
    pub recovery: Recovery,
}

impl Downtime {
    /// The downtime in seconds, or `None` if the service did not recover.
    pub fn seconds(&self) -> Option<f64> {
        match self.recovery {
            Recovery::Recovered { downtime, .. } => Some(downtime),
            Recovery::NotRecovered { .. } => None,
        }
    }

    /// The least the downtime can be: itself when recovered, the observed
    /// lower bound when not.
    pub fn at_least(&self) -> f64 {
        match self.recovery {
            Recovery::Recovered { downtime, .. } => downtime,
            Recovery::NotRecovered { lower_bound, .. } => lower_bound,
        }
    }
}

/// How throughput came back after the failure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ThroughputRecovery {
    /// Mean correct answers per bin over the baseline window.
    pub baseline_per_bin: f64,
    /// Correct answers per bin that count as recovered.
    pub threshold_per_bin: f64,
    /// Seconds from the failure instant to the start of the first bin that
    /// reached the threshold; `None` if none did before the run ended.
    pub after: Option<f64>,
}

/// Downtime and throughput recovery of one failure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DowntimeReport {
    /// Time without correct answers.
    pub downtime: Downtime,
    /// Time until throughput was back.
    pub throughput: ThroughputRecovery,
}

/// Why downtime could not be measured.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DowntimeError {
    /// The failure instant is not a finite number.
    #[error("failure instant {0} is not a finite time")]
    BadFailureInstant(f64),
    /// No correct answer completed before the failure, so there is nothing
    /// to measure from: the service was not up when the fault came.
    #[error("no correct answer completed at or before the failure at {failure_at} s; the service was never seen up")]
    NoCorrectBefore {
        /// The failure instant.
        failure_at: f64,
    },
    /// The baseline window holds no whole bin, or no correct answer.
    #[error("no correct answers in the {baseline_secs} s baseline window before the failure at {failure_at} s")]
    NoBaseline {
        /// The failure instant.
        failure_at: f64,
        /// The window length.
        baseline_secs: f64,
    },
    /// A configuration value out of range.
    #[error("invalid downtime configuration: {0}")]
    BadConfig(&'static str),
    /// The records could not be binned.
    #[error("cannot bin the records")]
    Timeline(#[from] TimelineError),
}

/// Downtime across the failure at `failure_at` (seconds since the origin).
///
#[doc = kfi_stats::downtime_definition!()]
pub fn downtime(records: &[Record], failure_at: f64) -> Result<Downtime, DowntimeError> {
    if !failure_at.is_finite() {
        return Err(DowntimeError::BadFailureInstant(failure_at));
    }
    let correct = || records.iter().filter(|r| r.is_correct());
    let last_correct_before = correct()
        .map(|r| r.end)
        .filter(|&end| end <= failure_at)
        .reduce(f64::max)
        .ok_or(DowntimeError::NoCorrectBefore { failure_at })?;
    // `end > failure_at` only matters for a zero-length request sent exactly
    // at the failure, which must not count on both sides.
    let sent_after = |r: &&Record| r.start >= failure_at && r.end > failure_at;
    let recovery = match correct().filter(sent_after).map(|r| r.end).reduce(f64::min) {
        Some(first_correct_after) => {
            Recovery::Recovered { first_correct_after, downtime: first_correct_after - last_correct_before }
        }
        None => {
            // The correct answer before the failure is itself a record, so
            // `run_end` exists and is not earlier than it.
            let run_end = records.iter().map(|r| r.end).fold(last_correct_before, f64::max);
            Recovery::NotRecovered { run_end, lower_bound: run_end - last_correct_before }
        }
    };
    Ok(Downtime { failure_at, last_correct_before, recovery })
}

#[doc = kfi_stats::update_downtime_definition!()]
/// `switch_at` and `served_at` are seconds since the records' origin.
/// `None` when no correct answer completed at or before `switch_at`, or
/// none after `served_at` closes the outage (the clients never saw the new
/// kernel serve in the run).
pub fn update_downtime(records: &[Record], switch_at: f64, served_at: f64) -> Option<f64> {
    let mut ends: Vec<f64> = records.iter().filter(|r| r.is_correct()).map(|r| r.end).collect();
    ends.sort_by(f64::total_cmp);
    let first = ends.iter().rposition(|&end| end <= switch_at)?;
    if *ends.last()? <= served_at {
        return None;
    }
    ends[first..].windows(2).filter(|w| w[0] <= served_at).map(|w| w[1] - w[0]).reduce(f64::max)
}

/// Time from the failure until correct answers per bin are back to
/// `config.recovered_fraction` of the pre-failure baseline.
pub fn throughput_recovery(
    timeline: &Timeline,
    failure_at: f64,
    config: &DowntimeConfig,
) -> Result<ThroughputRecovery, DowntimeError> {
    if !failure_at.is_finite() {
        return Err(DowntimeError::BadFailureInstant(failure_at));
    }
    if !(config.baseline_secs.is_finite() && config.baseline_secs > 0.0) {
        return Err(DowntimeError::BadConfig("the baseline window must be a positive, finite number of seconds"));
    }
    if !(config.recovered_fraction > 0.0 && config.recovered_fraction <= 1.0) {
        return Err(DowntimeError::BadConfig("the recovered fraction must be in (0, 1]"));
    }
    let no_baseline = DowntimeError::NoBaseline { failure_at, baseline_secs: config.baseline_secs };
    let first = timeline.first_index().ok_or(no_baseline.clone())?;
    let width = timeline.bin_secs;
    // Bin numbers, counted from the origin: the baseline is the whole bins in
    // [failure - window, failure), recovery is looked for from the first bin
    // starting at or after the failure. Bins that straddle the failure mix
    // both sides and belong to neither.
    let baseline_from = ((failure_at - config.baseline_secs) / width).ceil();
    let baseline_to = (failure_at / width).floor();
    let after_from = (failure_at / width).ceil();
    let number = |slot: usize| (first + slot as i64) as f64;

    let baseline: Vec<u64> = timeline
        .bins
        .iter()
        .enumerate()
        .filter(|&(slot, _)| (baseline_from..baseline_to).contains(&number(slot)))
        .map(|(_, b)| b.correct)
        .collect();
    let total: u64 = baseline.iter().sum();
    if total == 0 {
        return Err(no_baseline);
    }
    let baseline_per_bin = total as f64 / baseline.len() as f64;
    let threshold_per_bin = config.recovered_fraction * baseline_per_bin;
    let after = timeline
        .bins
        .iter()
        .enumerate()
        .find(|&(slot, b)| number(slot) >= after_from && b.correct as f64 >= threshold_per_bin)
        .map(|(_, b)| b.start - failure_at);
    Ok(ThroughputRecovery { baseline_per_bin, threshold_per_bin, after })
}

/// Downtime and throughput recovery across the failure at `failure_at`.
pub fn analyze(records: &[Record], failure_at: f64, config: &DowntimeConfig) -> Result<DowntimeReport, DowntimeError> {
    let downtime = downtime(records, failure_at)?;
    let timeline = Timeline::build(records, config.bin_secs)?;
    let throughput = throughput_recovery(&timeline, failure_at, config)?;
    Ok(DowntimeReport { downtime, throughput })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::record::RequestOutcome;

    fn rec(end: f64, outcome: RequestOutcome) -> Record {
        Record { start: end - 0.001, end, path: "/index.html".into(), outcome, bytes: 0 }
    }

    /// A correct answer every `step` seconds ending at `offset + k * step`,
    /// connection errors instead while `outage` returns true for the end.
    fn steady(step: f64, offset: f64, until: f64, outage: impl Fn(f64) -> bool) -> Vec<Record> {
        (0..)
            .map(|k| offset + k as f64 * step)
            .take_while(|&end| end < until)
            .map(|end| rec(end, if outage(end) { RequestOutcome::ConnectError } else { RequestOutcome::Ok }))
            .collect()
    }

    // Binary fractions (1/16 s steps, 1/4 s bins) keep every time below
    // exact, so the expected values are exact too.
    const STEP: f64 = 0.0625;
    const HALF: f64 = STEP / 2.0;
    const CONFIG: DowntimeConfig = DowntimeConfig { bin_secs: 0.25, baseline_secs: 1.0, recovered_fraction: 0.9 };

    #[test]
    fn an_update_outage_is_the_longest_gap_that_begins_before_the_new_kernel_served() {
        // The old kernel answers until 2.5 (after the switch at 2.0), the
        // new one from 3.5 on; the VMM saw it serve at 3.6; a stall from
        // 4.0 to 4.75 comes after and is not the update's.
        let records = steady(STEP, HALF, 6.0, |t| (2.5..3.5).contains(&t) || (4.0..4.75).contains(&t));
        let last_old = 2.5 - HALF;
        let first_new = 3.5 + HALF;
        assert_eq!(update_downtime(&records, 2.0, 3.6), Some(first_new - last_old));
        // Before the switch a longer gap does not count.
        let early = steady(STEP, HALF, 6.0, |t| (0.5..1.75).contains(&t) || (2.5..3.5).contains(&t));
        assert_eq!(update_downtime(&early, 2.0, 3.6), Some(first_new - last_old));
        // The clients never saw it serve.
        let never: Vec<Record> = records.iter().filter(|r| r.end < 3.5).cloned().collect();
        assert_eq!(update_downtime(&never, 2.0, 3.6), None);
        // Nothing correct before the switch.
        assert_eq!(update_downtime(&records, 0.0, 3.6), None);
    }

    #[test]
    fn step_outage_gives_exact_downtime_and_throughput_recovery() -> Result<(), DowntimeError> {
        let records = steady(STEP, HALF, 5.0, |t| (2.0..3.0).contains(&t));
        let report = analyze(&records, 2.0, &CONFIG)?;
        assert_eq!(report.downtime.last_correct_before, 2.0 - HALF);
        assert_eq!(
            report.downtime.recovery,
            Recovery::Recovered { first_correct_after: 3.0 + HALF, downtime: 1.0 + STEP }
        );
        assert_eq!(report.downtime.seconds(), Some(1.0625));
        assert_eq!(report.throughput.baseline_per_bin, 4.0);
        assert_eq!(report.throughput.threshold_per_bin, 3.6);
        assert_eq!(report.throughput.after, Some(1.0));
        Ok(())
    }

    #[test]
    fn slow_ramp_delays_throughput_recovery_but_not_downtime() -> Result<(), DowntimeError> {
        // After the outage, half the answers fail for one second: the first
        // correct one ends the downtime, throughput is back a second later.
        let mut records = steady(STEP, HALF, 6.0, |t| (2.0..3.0).contains(&t));
        for (i, r) in records.iter_mut().filter(|r| (3.0..4.0).contains(&r.end)).enumerate() {
            if i % 2 == 1 {
                r.outcome = RequestOutcome::HttpStatus(503);
            }
        }
        let report = analyze(&records, 2.0, &CONFIG)?;
        assert_eq!(report.downtime.seconds(), Some(1.0625));
        assert_eq!(report.throughput.after, Some(2.0));
        Ok(())
    }

    #[test]
    fn failure_mid_bin_uses_whole_bins_on_each_side() -> Result<(), DowntimeError> {
        // Failure at 2.1, outage [2.1, 3.1): the baseline is bins [1.25, 2.0)
        // (three whole bins in [1.1, 2.1)), recovery is looked for from 2.25,
        // and [3.25, 3.5) is the first full bin after the outage.
        let records = steady(STEP, HALF, 5.0, |t| (2.1..3.1).contains(&t));
        let report = analyze(&records, 2.1, &CONFIG)?;
        assert_eq!(report.throughput.baseline_per_bin, 4.0);
        assert_eq!(report.throughput.after, Some(3.25 - 2.1));
        // Last correct before: 2.09375 (= 33 steps + half); first after: 3.15625.
        assert_eq!(report.downtime.last_correct_before, 2.09375);
        assert_eq!(report.downtime.seconds(), Some(3.15625 - 2.09375));
        Ok(())
    }

    #[test]
    fn no_correct_answer_after_means_not_recovered_with_a_lower_bound() -> Result<(), DowntimeError> {
        let records = steady(STEP, HALF, 5.0, |t| t >= 2.0);
        let report = analyze(&records, 2.0, &CONFIG)?;
        let run_end = records.last().map_or(0.0, |r| r.end);
        assert_eq!(run_end, 4.96875);
        assert_eq!(report.downtime.recovery, Recovery::NotRecovered { run_end, lower_bound: run_end - (2.0 - HALF) });
        assert_eq!(report.downtime.seconds(), None);
        assert_eq!(report.downtime.at_least(), 3.0);
        assert_eq!(report.throughput.after, None);
        Ok(())
    }

    #[test]
    fn no_failure_means_the_gap_between_answers_and_no_throughput_loss() -> Result<(), DowntimeError> {
        let records = steady(STEP, HALF, 5.0, |_| false);
        let report = analyze(&records, 2.0, &CONFIG)?;
        assert_eq!(report.downtime.seconds(), Some(STEP));
        assert_eq!(report.throughput.after, Some(0.0));
        Ok(())
    }

    #[test]
    fn an_answer_ending_exactly_at_the_failure_is_before_it() -> Result<(), DowntimeError> {
        let records = [rec(1.0, RequestOutcome::Ok), rec(2.0, RequestOutcome::Ok), rec(3.5, RequestOutcome::Ok)];
        let d = downtime(&records, 2.0)?;
        assert_eq!((d.last_correct_before, d.seconds()), (2.0, Some(1.5)));
        Ok(())
    }

    #[test]
    fn an_answer_sent_before_the_failure_and_arriving_after_does_not_end_the_downtime() -> Result<(), DowntimeError> {
        // Written by the server just before it stopped, read by the client
        // just after: no evidence of recovery.
        let in_transit =
            Record { start: 1.99, end: 2.0005, path: "/big".into(), outcome: RequestOutcome::Ok, bytes: 9 };
        let records = [
            rec(1.5, RequestOutcome::Ok),
            in_transit,
            rec(2.2, RequestOutcome::ConnectError),
            rec(2.75, RequestOutcome::Ok),
        ];
        let d = downtime(&records, 2.0)?;
        assert_eq!(d.last_correct_before, 1.5);
        assert_eq!(d.recovery, Recovery::Recovered { first_correct_after: 2.75, downtime: 1.25 });
        // Without a later answer the service is not recovered, however close
        // to the failure the straddling answer ended.
        assert_eq!(downtime(&records[..3], 2.0)?.seconds(), None);
        Ok(())
    }

    #[test]
    fn wrong_answers_do_not_end_the_downtime() -> Result<(), DowntimeError> {
        let records = [
            rec(1.0, RequestOutcome::Ok),
            rec(2.5, RequestOutcome::WrongContent),
            rec(3.0, RequestOutcome::HttpStatus(500)),
            rec(4.0, RequestOutcome::Ok),
        ];
        assert_eq!(downtime(&records, 2.0)?.seconds(), Some(3.0));
        Ok(())
    }

    #[test]
    fn refuses_what_cannot_be_measured() {
        let up_late = [rec(3.0, RequestOutcome::Ok)];
        assert_eq!(downtime(&up_late, 2.0), Err(DowntimeError::NoCorrectBefore { failure_at: 2.0 }));
        assert!(matches!(downtime(&up_late, f64::NAN), Err(DowntimeError::BadFailureInstant(_))));
        // Up early on, then failing well before the baseline window starts.
        let failing_before = steady(STEP, HALF, 5.0, |t| t >= 0.5);
        assert!(matches!(analyze(&failing_before, 2.0, &CONFIG), Err(DowntimeError::NoBaseline { .. })));
        let bad = DowntimeConfig { recovered_fraction: 1.5, ..CONFIG };
        let records = steady(STEP, HALF, 5.0, |_| false);
        assert!(matches!(analyze(&records, 2.0, &bad), Err(DowntimeError::BadConfig(_))));
        let bad = DowntimeConfig { bin_secs: -1.0, ..CONFIG };
        assert!(matches!(analyze(&records, 2.0, &bad), Err(DowntimeError::Timeline(_))));
    }

    fn any_outcome() -> impl Strategy<Value = RequestOutcome> {
        prop_oneof![
            3 => Just(RequestOutcome::Ok),
            1 => Just(RequestOutcome::WrongContent),
            1 => Just(RequestOutcome::HttpStatus(503)),
            1 => Just(RequestOutcome::ConnectError),
            1 => Just(RequestOutcome::Timeout),
            1 => Just(RequestOutcome::IoError),
        ]
    }

    proptest! {
        #[test]
        fn downtime_is_never_negative_nor_longer_than_the_run(
            raw in prop::collection::vec((0.0f64..100.0, 0.0f64..5.0, any_outcome()), 1..200),
            failure_at in -5.0f64..110.0,
        ) {
            let records: Vec<Record> = raw
                .iter()
                .map(|&(start, latency, outcome)| Record {
                    start, end: start + latency, path: "/".into(), outcome, bytes: 0,
                })
                .collect();
            let run_start = records.iter().map(|r| r.start).fold(f64::INFINITY, f64::min);
            let run_end = records.iter().map(|r| r.end).fold(f64::NEG_INFINITY, f64::max);
            match downtime(&records, failure_at) {
                Ok(d) => {
                    prop_assert!(d.last_correct_before <= failure_at);
                    prop_assert!(d.at_least() >= 0.0);
                    prop_assert!(d.at_least() <= run_end - run_start);
                    if let Recovery::Recovered { first_correct_after, .. } = d.recovery {
                        prop_assert!(first_correct_after > failure_at);
                    }
                }
                Err(DowntimeError::NoCorrectBefore { .. }) => {
                    prop_assert!(!records.iter().any(|r| r.is_correct() && r.end <= failure_at));
                }
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }

        #[test]
        fn downtime_is_exact_on_step_shaped_timelines(
            step_ms in 1u32..100,
            ticks in 10usize..400,
            outage in (0.0f64..1.0, 0.0f64..1.0),
            where_failed in 0.0f64..0.999,
            failure_kind in any_outcome().prop_filter("a failure", |o| !o.is_correct()),
        ) {
            // Answers end at k * step for k in 0..ticks, each sent half a
            // step earlier; those at ticks [a, b) fail. The failure instant
            // lies after the last correct answer before the outage and
            // before the first correct one after it ends; when it falls while
            // that request is in flight, the next request ends the downtime.
            let step = f64::from(step_ms) / 1000.0;
            let a = 1 + (outage.0 * (ticks - 2) as f64) as usize;
            let b = (a + 1 + (outage.1 * (ticks - a) as f64) as usize).min(ticks);
            let end = |k: usize| k as f64 * step;
            let sent = |k: usize| end(k) - step / 2.0;
            let records: Vec<Record> = (0..ticks)
                .map(|k| Record {
                    start: sent(k),
                    end: end(k),
                    path: "/".into(),
                    outcome: if (a..b).contains(&k) { failure_kind } else { RequestOutcome::Ok },
                    bytes: 0,
                })
                .collect();
            let failure_at = end(a - 1) + where_failed * (end(b) - end(a - 1));
            prop_assume!(failure_at < end(b));
            let first_after = if failure_at <= sent(b) { b } else { b + 1 };

            let d = downtime(&records, failure_at).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(d.last_correct_before, end(a - 1));
            if first_after < ticks {
                let downtime = end(first_after) - end(a - 1);
                prop_assert_eq!(d.recovery, Recovery::Recovered { first_correct_after: end(first_after), downtime });
            } else {
                let run_end = end(ticks - 1);
                prop_assert_eq!(d.recovery, Recovery::NotRecovered { run_end, lower_bound: run_end - end(a - 1) });
            }
        }
    }
}
