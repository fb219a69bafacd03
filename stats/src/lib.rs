//! `kfi-stats`: the summary statistics of every kfi command and report,
//! with their definitions fixed in one place so that `kfi recover`,
//! `kfi check`, `kfi workload run`, the RUBiS client statistics and the
//! campaign reports give the same numbers for the same samples, and the
//! reports can state how they were computed.
//!
//! - median: the middle value, or the mean of the two middle values
//!   (the type-7 quantile at 0.5);
//! - quantiles (p50, p90, p95, p99): linear interpolation between order
//!   statistics, Hyndman and Fan's type 7 (the default of R, NumPy and
//!   polars);
//! - mean, and the sample standard deviation with n - 1;
//! - 95% confidence interval of the mean: Student's t,
//!   `mean ± t(0.975, n-1) · s/√n`, the t quantile from `statrs`;
//!   undefined for n < 2;
//! - 95% confidence interval of a proportion k/n: Wilson's score interval
//!   with the normal quantile z(0.975) from `statrs` (it stays inside
//!   [0, 1] and is sound for small n and shares near 0 or 1); undefined
//!   for n = 0.
//!
//! [`definitions`] holds the measures' definitions in words (downtime,
//! outcomes, propagation scope), which the code's documentation and the
//! reports share.
//!
//! Non-finite values are ignored everywhere. This crate owns the
//! definitions only; which samples are summarised is the caller's.
//! The one deliberate exception lives elsewhere: the per-bin latency of
//! `workloads::timeline` is a nearest-rank percentile (documented there),
//! so that a bin's figure is always a latency that was measured.

pub mod definitions;

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

/// Summary of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Sample size.
    pub n: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub median: f64,
    /// 95th percentile (type 7).
    pub p95: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Sample standard deviation (n-1); `None` for n < 2.
    pub sd: Option<f64>,
    /// 95% t confidence interval of the mean; `None` for n < 2.
    pub ci95: Option<(f64, f64)>,
}

impl Summary {
    /// Summarises `values`; `None` when no finite value is left.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let v = Sorted::new(values.iter().copied())?;
        let s = v.as_slice();
        let n = s.len();
        let mean = s.iter().sum::<f64>() / n as f64;
        let sd = (n >= 2).then(|| (s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
        let ci95 = sd.and_then(|sd| {
            let half = t_975(n - 1)? * sd / (n as f64).sqrt();
            Some((mean - half, mean + half))
        });
        Some(Summary { n, mean, median: v.quantile(0.5), p95: v.quantile(0.95), min: s[0], max: s[n - 1], sd, ci95 })
    }
}

/// A non-empty sample of finite values, sorted once so that several
/// quantiles can be read from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sorted(Vec<f64>);

impl Sorted {
    /// Sorts the finite values of `values`; `None` when there are none.
    pub fn new(values: impl IntoIterator<Item = f64>) -> Option<Sorted> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Sorted(v))
    }

    /// The values, ascending.
    pub fn as_slice(&self) -> &[f64] {
        &self.0
    }

    /// Quantile `q` (clamped to 0..=1), type 7.
    pub fn quantile(&self, q: f64) -> f64 {
        let v = &self.0;
        let h = (v.len() - 1) as f64 * if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
        let lo = h.floor() as usize;
        let hi = h.ceil() as usize;
        v[lo] + (h - lo as f64) * (v[hi] - v[lo])
    }
}

/// Quantile `q` of `values` (type 7); `None` when no finite value is given.
pub fn quantile(values: impl IntoIterator<Item = f64>, q: f64) -> Option<f64> {
    Sorted::new(values).map(|s| s.quantile(q))
}

/// Median of `values`; `None` when no finite value is given.
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    quantile(values, 0.5)
}

/// Mean of `values`; `None` when no finite value is given.
pub fn mean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.into_iter().filter(|x| x.is_finite()).fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom (the
/// two-sided 95% critical value); `None` for df = 0.
pub fn t_975(df: usize) -> Option<f64> {
    let t = StudentsT::new(0.0, 1.0, df as f64).ok()?;
    Some(t.inverse_cdf(0.975))
}

/// Wilson's score interval for the proportion `k` of `n` at 95%.
pub fn proportion_ci95(k: usize, n: usize) -> Option<(f64, f64)> {
    if n == 0 || k > n {
        return None;
    }
    let z = statrs::distribution::Normal::standard().inverse_cdf(0.975);
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    /// Known values: 0 of 10 gives [0, 0.2775]; 81 of 263 gives
    /// [0.2553, 0.3662] (Newcombe 1998's worked examples, 4 decimals).
    #[test]
    fn wilson_interval_of_known_proportions() {
        let (lo, hi) = proportion_ci95(0, 10).unwrap();
        assert!(lo.abs() < 1e-12 && (hi - 0.2775).abs() < 1e-4, "{lo} {hi}");
        let (lo, hi) = proportion_ci95(81, 263).unwrap();
        assert!((lo - 0.2553).abs() < 1e-4 && (hi - 0.3662).abs() < 1e-4, "{lo} {hi}");
        let (lo, hi) = proportion_ci95(10, 10).unwrap();
        assert!((lo - 0.7225).abs() < 1e-4 && (hi - 1.0).abs() < 1e-12, "{lo} {hi}");
        assert_eq!(proportion_ci95(0, 0), None);
        assert_eq!(proportion_ci95(3, 2), None);
    }

    #[test]
    fn median_and_quantiles_follow_type_7() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!((s.median, s.mean, s.min, s.max), (3.0, 3.0, 1.0, 5.0));
        assert!((s.p95 - 4.8).abs() < 1e-12);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median([f64::NAN]), None);
        assert_eq!(median([]), None);
        // Type 7 on 1..=20: h = 19 * 0.95 = 18.05, between 19 and 20.
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert!((quantile(v.iter().copied(), 0.95).unwrap() - 19.05).abs() < 1e-12);
        assert_eq!(quantile([7.0], 0.99), Some(7.0));
        assert_eq!(mean([1.0, f64::INFINITY, 3.0]), Some(2.0));
    }

    #[test]
    fn t_interval_matches_hand_computation() {
        // mean 3, s = sqrt(2.5), t(4) = 2.776445: half width 1.963243
        let (lo, hi) = Summary::of(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap().ci95.unwrap();
        assert!((lo - 1.036_757).abs() < 1e-5 && (hi - 4.963_243).abs() < 1e-5, "{lo} {hi}");
        assert!(Summary::of(&[1.0]).unwrap().ci95.is_none());
    }

    #[test]
    fn t_quantile_matches_published_tables() {
        for (df, t) in [(1, 12.706_205), (4, 2.776_445), (30, 2.042_272), (60, 2.000_298), (120, 1.979_930)] {
            assert!((t_975(df).unwrap() - t).abs() < 1e-5, "df {df}: {:?}", t_975(df));
        }
        assert_eq!(t_975(0), None);
    }

    proptest! {
        #[test]
        fn quantiles_are_ordered_and_within_the_sample(v in proptest::collection::vec(-1e9f64..1e9, 1..50)) {
            let s = Sorted::new(v.iter().copied()).unwrap();
            let (p50, p90, p95, p99) = (s.quantile(0.5), s.quantile(0.9), s.quantile(0.95), s.quantile(0.99));
            prop_assert!(p50 <= p90 && p90 <= p95 && p95 <= p99);
            prop_assert!(s.as_slice()[0] <= p50 && p99 <= s.as_slice()[v.len() - 1]);
        }
    }
}
