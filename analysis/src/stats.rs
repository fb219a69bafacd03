//! Summary statistics the tables use, with their definitions fixed here so
//! the report can state them.
//!
//! - median: the middle value, or the mean of the two middle values;
//! - quantiles (p95): linear interpolation between order statistics
//!   (Hyndman-Fan type 7, the default of R, NumPy and polars);
//! - 95% confidence interval of the mean: Student's t, `mean ± t(0.975,
//!   n-1) · s/√n` with the sample standard deviation `s`; undefined for
//!   n < 2.

/// Summary of one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
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
    /// Summarises `values` (non-finite values are ignored); `None` when
    /// nothing is left.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let sd = (n >= 2).then(|| (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
        let ci95 = sd.map(|sd| {
            let half = t_975(n - 1) * sd / (n as f64).sqrt();
            (mean - half, mean + half)
        });
        Some(Summary {
            n,
            mean,
            median: quantile_sorted(&v, 0.5),
            p95: quantile_sorted(&v, 0.95),
            min: v[0],
            max: v[n - 1],
            sd,
            ci95,
        })
    }
}

/// Quantile `q` (0..=1) of sorted, non-empty `v`, type 7.
pub fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    let h = (v.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    v[lo] + (h - lo as f64) * (v[hi] - v[lo])
}

/// Median of `values` (non-finite ignored); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    Summary::of(values).map(|s| s.median)
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom (the
/// two-sided 95% critical value). Exact table values to df = 30, a
/// Cornish-Fisher expansion beyond (error below 1e-4).
pub fn t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706_205, 4.302_653, 3.182_446, 2.776_445, 2.570_582, 2.446_912, 2.364_624, 2.306_004, 2.262_157, 2.228_139,
        2.200_985, 2.178_813, 2.160_369, 2.144_787, 2.131_450, 2.119_905, 2.109_816, 2.100_922, 2.093_024, 2.085_963,
        2.079_614, 2.073_873, 2.068_658, 2.063_899, 2.059_539, 2.055_529, 2.051_831, 2.048_407, 2.045_230, 2.042_272,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => TABLE[df - 1],
        _ => {
            let z: f64 = 1.959_963_985;
            let d = df as f64;
            z + (z.powi(3) + z) / (4.0 * d)
                + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * d * d)
                + (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / (384.0 * d * d * d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quantiles_follow_type_7() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!(s.median, 3.0);
        assert_eq!(s.mean, 3.0);
        assert!((s.p95 - 4.8).abs() < 1e-12);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN]), None);
    }

    #[test]
    fn t_interval_matches_hand_computation() {
        // mean 3, s = sqrt(2.5), t(4) = 2.776445: half width 1.963243
        let (lo, hi) = Summary::of(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap().ci95.unwrap();
        assert!((lo - 1.036_757).abs() < 1e-5 && (hi - 4.963_243).abs() < 1e-5, "{lo} {hi}");
        assert!(Summary::of(&[1.0]).unwrap().ci95.is_none());
    }

    #[test]
    fn t_quantile_is_continuous_past_the_table() {
        assert!((t_975(31) - 2.039_513).abs() < 1e-4);
        assert!((t_975(60) - 2.000_298).abs() < 1e-4);
        assert!((t_975(120) - 1.979_930).abs() < 1e-4);
    }
}
