//! Records binned over time: how many correct answers and failures ended in
//! each bin, and the latency percentiles of the answers.
//!
//! A request belongs to the bin in which it *ended*: throughput is
//! completions per unit of time, and an outage shows as bins without
//! correct completions however long the requests that span it were in
//! flight. Bins are aligned to the run's origin: bin `k` covers
//! `[k * width, (k + 1) * width)` seconds.

use serde::{Deserialize, Serialize};

use crate::record::Record;

/// Bin width used unless a caller asks otherwise: fine enough to resolve
/// the sub-second restores the project aims at.
pub const DEFAULT_BIN_SECS: f64 = 0.1;

/// A timeline longer than this many bins is refused: a stray timestamp (a
/// clock from another origin) would otherwise allocate without bound.
pub const MAX_BINS: usize = 10_000_000;

/// One bin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bin {
    /// Start of the bin, seconds since the origin.
    pub start: f64,
    /// Correct answers that ended in this bin.
    pub correct: u64,
    /// Other requests that ended in this bin: wrong content, other status,
    /// connection errors, timeouts, I/O errors.
    pub failed: u64,
    /// Median latency (seconds) of the complete HTTP answers, right or
    /// wrong, that ended here; `None` without any.
    pub p50: Option<f64>,
    /// 95th percentile latency, as `p50`.
    pub p95: Option<f64>,
    /// 99th percentile latency, as `p50`.
    pub p99: Option<f64>,
}

/// Consecutive bins from the one holding the first completion to the one
/// holding the last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// Width of every bin, seconds.
    pub bin_secs: f64,
    /// The bins, in time order, without gaps.
    pub bins: Vec<Bin>,
}

/// Why records could not be binned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TimelineError {
    /// A bin width that is zero, negative or not finite.
    #[error("bin width must be a positive, finite number of seconds, not {0}")]
    BadBinWidth(f64),
    /// A record whose end is not a finite number.
    #[error("record {index} ({path}) ends at {end}, which is not a finite time")]
    BadTime {
        /// Position of the record.
        index: usize,
        /// Its path.
        path: String,
        /// Its end.
        end: f64,
    },
    /// Records spread over more than [`MAX_BINS`] bins.
    #[error("records span {span_secs} s, over {MAX_BINS} bins of {bin_secs} s")]
    TooLong {
        /// Time from the first end to the last.
        span_secs: f64,
        /// The bin width asked for.
        bin_secs: f64,
    },
}

/// Nearest-rank percentile of sorted values: exact, no interpolation, so a
/// reported value is always one that was measured. This is deliberately
/// not the type-7 quantile every other kfi summary uses (`kfi-stats`): a
/// timeline bin holds few answers, and an interpolated latency between two
/// of them would be one no client saw.
fn percentile(sorted: &[f64], percent: usize) -> Option<f64> {
    let rank = (sorted.len() * percent).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

impl Timeline {
    /// Bins `records` by end time into bins `bin_secs` wide.
    pub fn build(records: &[Record], bin_secs: f64) -> Result<Self, TimelineError> {
        if !(bin_secs.is_finite() && bin_secs > 0.0) {
            return Err(TimelineError::BadBinWidth(bin_secs));
        }
        if let Some((index, r)) = records.iter().enumerate().find(|(_, r)| !r.end.is_finite()) {
            return Err(TimelineError::BadTime { index, path: r.path.clone(), end: r.end });
        }
        let ends = records.iter().map(|r| r.end);
        let (Some(first_end), Some(last_end)) = (ends.clone().reduce(f64::min), ends.reduce(f64::max)) else {
            return Ok(Self { bin_secs, bins: Vec::new() });
        };
        let first = Self::index_at(first_end, bin_secs);
        let last = Self::index_at(last_end, bin_secs);
        let count = last - first + 1.0;
        if count > MAX_BINS as f64 {
            return Err(TimelineError::TooLong { span_secs: last_end - first_end, bin_secs });
        }
        // `count` is integral and at most MAX_BINS, so the casts are exact.
        let count = count as usize;
        let mut correct = vec![0u64; count];
        let mut failed = vec![0u64; count];
        let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); count];
        for r in records {
            let slot = (Self::index_at(r.end, bin_secs) - first) as usize;
            if r.is_correct() {
                correct[slot] += 1;
            } else {
                failed[slot] += 1;
            }
            if r.outcome.is_response() {
                latencies[slot].push(r.latency());
            }
        }
        let bins = (0..count)
            .map(|slot| {
                let lat = &mut latencies[slot];
                lat.sort_by(f64::total_cmp);
                Bin {
                    start: (first + slot as f64) * bin_secs,
                    correct: correct[slot],
                    failed: failed[slot],
                    p50: percentile(lat, 50),
                    p95: percentile(lat, 95),
                    p99: percentile(lat, 99),
                }
            })
            .collect();
        Ok(Self { bin_secs, bins })
    }

    /// Bin number (counted from the origin, possibly negative) holding time
    /// `t`, as a float so that huge spans are caught before any cast.
    fn index_at(t: f64, bin_secs: f64) -> f64 {
        (t / bin_secs).floor()
    }

    /// Bin number, counted from the origin, of `self.bins[0]`; `None` when
    /// there are no bins.
    pub fn first_index(&self) -> Option<i64> {
        // Bin starts are whole multiples of the width, so rounding recovers
        // the integer exactly.
        self.bins.first().map(|b| (b.start / self.bin_secs).round() as i64)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::record::RequestOutcome;

    fn rec(start: f64, end: f64, outcome: RequestOutcome) -> Record {
        Record { start, end, path: "/".into(), outcome, bytes: 0 }
    }

    #[test]
    fn bins_by_end_time_with_counts_and_exact_percentiles() -> Result<(), TimelineError> {
        let mut records = Vec::new();
        // Bin [0.25, 0.5): 100 correct answers with latencies of 1 to 100
        // units of 1/1024 s (binary fractions, so end - start is exact).
        for i in 1..=100 {
            let end = 0.375;
            records.push(rec(end - i as f64 / 1024.0, end, RequestOutcome::Ok));
        }
        // A timeout that started in bin 0 and ended in bin 1 counts in bin 1
        // as a failure, without a latency.
        records.push(rec(0.0, 0.3, RequestOutcome::Timeout));
        // Bin [0.75, 1.0): a wrong answer has a latency but is a failure.
        records.push(rec(0.8, 0.875, RequestOutcome::WrongContent));
        let timeline = Timeline::build(&records, 0.25)?;
        assert_eq!(timeline.first_index(), Some(1));
        let starts: Vec<f64> = timeline.bins.iter().map(|b| b.start).collect();
        assert_eq!(starts, [0.25, 0.5, 0.75]);
        let b = &timeline.bins[0];
        assert_eq!((b.correct, b.failed), (100, 1));
        assert_eq!((b.p50, b.p95, b.p99), (Some(50.0 / 1024.0), Some(95.0 / 1024.0), Some(99.0 / 1024.0)));
        let empty = &timeline.bins[1];
        assert_eq!((empty.correct, empty.failed, empty.p50), (0, 0, None));
        let wrong = &timeline.bins[2];
        assert_eq!((wrong.correct, wrong.failed, wrong.p99), (0, 1, Some(0.875 - 0.8)));
        Ok(())
    }

    #[test]
    fn refuses_bad_widths_and_times_and_handles_no_records() {
        assert_eq!(Timeline::build(&[], 0.0), Err(TimelineError::BadBinWidth(0.0)));
        assert!(Timeline::build(&[], f64::NAN).is_err());
        assert!(matches!(
            Timeline::build(&[rec(0.0, f64::INFINITY, RequestOutcome::Ok)], 0.1),
            Err(TimelineError::BadTime { index: 0, .. })
        ));
        assert!(matches!(
            Timeline::build(&[rec(0.0, 0.0, RequestOutcome::Ok), rec(0.0, 1e9, RequestOutcome::Ok)], 0.001),
            Err(TimelineError::TooLong { .. })
        ));
        assert_eq!(Timeline::build(&[], 0.1).map(|t| t.bins.len()), Ok(0));
    }

    #[test]
    fn percentile_is_nearest_rank() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7.0], 99), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0], 50), Some(1.0));
        assert_eq!(percentile(&[1.0, 2.0], 51), Some(2.0));
    }

    proptest! {
        #[test]
        fn every_record_is_counted_once_and_percentiles_are_ordered(
            raw in prop::collection::vec((-5.0f64..50.0, 0.0f64..3.0, 0u8..4), 0..300),
            width in 0.01f64..2.0,
        ) {
            let outcomes = [RequestOutcome::Ok, RequestOutcome::WrongContent, RequestOutcome::Timeout, RequestOutcome::ConnectError];
            let records: Vec<Record> =
                raw.iter().map(|&(s, l, o)| rec(s, s + l, outcomes[usize::from(o)])).collect();
            let timeline = Timeline::build(&records, width).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let correct: u64 = timeline.bins.iter().map(|b| b.correct).sum();
            let failed: u64 = timeline.bins.iter().map(|b| b.failed).sum();
            prop_assert_eq!(correct as usize, records.iter().filter(|r| r.is_correct()).count());
            prop_assert_eq!((correct + failed) as usize, records.len());
            for pair in timeline.bins.windows(2) {
                prop_assert!(pair[1].start > pair[0].start);
            }
            for b in &timeline.bins {
                prop_assert!(b.p50 <= b.p95 && b.p95 <= b.p99);
            }
        }
    }
}
