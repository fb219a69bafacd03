//! The one duration parser of every flag and experiment-file key.
//!
//! A duration is bare seconds (`2.5`, as the flags always took) or a
//! humantime span (`10s`, `1500ms`, `2m`, `1h 30m`). Anything that is not
//! a finite, non-negative span of at most [`MAX`] is an error naming the
//! flag or key, never a panic: `Duration::from_secs_f64` panics on
//! infinities, NaN and values past `u64::MAX` seconds, so no value reaches
//! it unchecked.

use std::time::Duration;

/// The longest duration any flag or key accepts: a week, longer than any
/// campaign's single experiment, and far from `Duration`'s overflow.
pub const MAX: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why a duration was refused, with the flag or key it was given for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: `{value}` {problem}")]
pub struct DurationError {
    /// The flag (`--window`) or key (`observe.window_s`).
    pub name: String,
    /// The value as given.
    pub value: String,
    /// What is wrong and what would be right.
    pub problem: String,
}

/// Parses `text` (bare seconds or a humantime span) given for `name`.
pub fn parse(name: &str, text: &str) -> Result<Duration, DurationError> {
    let err = |problem: &str| DurationError { name: name.into(), value: text.into(), problem: problem.into() };
    let t = text.trim();
    if t.is_empty() {
        return Err(err("is empty: write e.g. 10s, 500ms, 2m or a number of seconds"));
    }
    // Bare seconds, including what Rust's float parser accepts beyond
    // digits (`inf`, `NaN`, `1e30`), so those get the checks below.
    if let Ok(v) = t.parse::<f64>() {
        return from_secs_f64(name, v).map_err(|e| DurationError { value: text.into(), ..e });
    }
    let d = humantime::parse_duration(t)
        .map_err(|e| err(&format!("is not a duration ({e}): write e.g. 10s, 500ms, 2m or a number of seconds")))?;
    if d > MAX {
        return Err(err(&format!("is longer than the longest accepted duration, {}", humantime::format_duration(MAX))));
    }
    Ok(d)
}

/// Checks a number of seconds given for `name` (an experiment-file key
/// such as `observe.window_s`, or a numeric flag).
pub fn from_secs_f64(name: &str, seconds: f64) -> Result<Duration, DurationError> {
    let err = |problem: String| DurationError { name: name.into(), value: seconds.to_string(), problem };
    if !seconds.is_finite() {
        return Err(err("is not a finite number of seconds".into()));
    }
    if seconds < 0.0 {
        return Err(err("is negative: durations are zero or more seconds".into()));
    }
    if seconds > MAX.as_secs_f64() {
        return Err(err(format!("seconds is more than the longest accepted duration, {} s", MAX.as_secs())));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A clap value parser for a flag: `value_parser = duration::flag("--window")`.
pub fn flag(name: &'static str) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |text| parse(name, text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bare_seconds_and_humantime_units() {
        assert_eq!(parse("--w", "10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("--w", "1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("--w", "2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse("--w", "2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("--w", "1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("--w", "0"), Ok(Duration::ZERO));
    }

    #[test]
    fn refusals_name_the_flag_and_say_why() {
        for bad in ["inf", "-inf", "NaN", "nan", "-1", "-1s", "1e30", "soon", "3d5", "", "1e400"] {
            let e = parse("--warmup", bad).unwrap_err().to_string();
            assert!(e.starts_with("--warmup: "), "{bad}: {e}");
        }
        assert!(parse("--warmup", "inf").unwrap_err().problem.contains("finite"));
        assert!(parse("--warmup", "-1").unwrap_err().problem.contains("negative"));
        assert!(parse("--warmup", "1e30").unwrap_err().problem.contains("longest"));
        assert!(parse("--warmup", "400weeks").unwrap_err().problem.contains("longest"));
        let e = from_secs_f64("observe.window_s", 1e30).unwrap_err().to_string();
        assert!(e.contains("observe.window_s") && e.contains("longest"), "{e}");
    }

    proptest! {
        #[test]
        fn any_text_parses_or_errs_without_panicking(text in any::<String>()) {
            let _ = parse("--x", &text);
        }

        #[test]
        fn any_float_is_checked_without_panicking(v in any::<f64>()) {
            match from_secs_f64("k", v) {
                Ok(d) => prop_assert!(v >= 0.0 && d <= MAX),
                Err(e) => prop_assert!(e.to_string().starts_with("k: ")),
            }
        }

        #[test]
        fn bare_seconds_round_trip(ms in 0u64..MAX.as_millis() as u64) {
            let text = format!("{}.{:03}", ms / 1000, ms % 1000);
            prop_assert_eq!(parse("--x", &text), Ok(Duration::from_millis(ms)));
        }
    }
}
