//! A replayed experiment next to its stored record (`kfi replay`): what a
//! maintainer needs to see at a glance is whether the experiment behaved
//! the same way (injection, outcome, recovery path) and how far its timings
//! moved.

use std::fmt::Write as _;

use analysis::record::{ExperimentRecord, Injection};

/// One compared quantity.
enum Value {
    /// Must match for the replay to count as the same experiment.
    Label(String),
    /// Measured; compared by relative change.
    Number(Option<f64>),
}

fn injection(r: &ExperimentRecord) -> String {
    match &r.injection {
        Injection::None => "none".into(),
        Injection::Crash { crash } => format!("crash {crash}"),
        Injection::Fault { description, .. } => description.clone(),
    }
}

fn activated(r: &ExperimentRecord) -> String {
    match &r.injection {
        Injection::Fault { activated, .. } => activated.to_string(),
        _ => "-".into(),
    }
}

fn rows(r: &ExperimentRecord) -> Vec<(String, Value)> {
    let rec = r.recovery.as_ref();
    let text = |v: Option<String>| Value::Label(v.unwrap_or_else(|| "-".into()));
    let mut rows = vec![
        ("injection".to_string(), Value::Label(injection(r))),
        ("activated".into(), Value::Label(activated(r))),
        ("outcome".into(), Value::Label(r.outcome.to_string())),
        ("detected by".into(), text(rec.map(|x| x.cause.to_string()))),
        ("strategy used".into(), text(rec.map(|x| x.used.to_string()))),
        ("fallback".into(), text(rec.and_then(|x| x.fallback_reason.clone()))),
        ("recovered".into(), text(rec.map(|x| x.recovered.to_string()))),
        ("lost writes".into(), text(r.lost_writes.map(|n| n.to_string()))),
        ("downtime (s)".into(), Value::Number(r.downtime_s)),
        ("detect (s)".into(), Value::Number(rec.map(|x| x.detect_s))),
        ("restart (s)".into(), Value::Number(rec.map(|x| x.restart_s))),
        ("service back (s)".into(), Value::Number(rec.map(|x| x.service_s))),
        ("throughput back (s)".into(), Value::Number(r.throughput_back_s)),
        ("acked writes".into(), Value::Number(r.acked_writes.map(|n| n as f64))),
    ];
    for (k, v) in &r.metrics {
        rows.push((k.clone(), Value::Number(Some(*v))));
    }
    rows
}

fn show(v: &Value) -> String {
    match v {
        Value::Label(s) => s.clone(),
        Value::Number(Some(x)) => format!("{x:.3}"),
        Value::Number(None) => "-".into(),
    }
}

/// The comparison, one line per quantity, then a verdict line: the
/// replay is the same experiment when every label matches.
pub fn table(stored: &ExperimentRecord, replayed: &ExperimentRecord) -> String {
    let (a, b) = (rows(stored), rows(replayed));
    let mut out = String::new();
    let _ = writeln!(out, "{:<28} {:>18} {:>18}  change", "", "stored", "replayed");
    let mut differs = Vec::new();
    for (name, old) in &a {
        let new = b.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        let change = match (old, new) {
            (Value::Label(x), Some(Value::Label(y))) if x == y => "same".to_string(),
            (Value::Label(_), _) => {
                differs.push(name.clone());
                "DIFFERS".to_string()
            }
            (Value::Number(Some(x)), Some(Value::Number(Some(y)))) if *x != 0.0 => {
                format!("{:+.1}%", (y - x) / x * 100.0)
            }
            _ => String::new(),
        };
        let new = new.map(show).unwrap_or_else(|| "-".into());
        let _ = writeln!(out, "{:<28} {:>18} {:>18}  {change}", name, clip(&show(old)), clip(&new));
    }
    for (name, v) in b.iter().filter(|(k, _)| !a.iter().any(|(j, _)| j == k)) {
        let _ = writeln!(out, "{:<28} {:>18} {:>18}", name, "-", clip(&show(v)));
    }
    if differs.is_empty() {
        let _ = writeln!(out, "same experiment: injection, outcome and recovery path match");
    } else {
        let _ = writeln!(out, "differs in: {}", differs.join(", "));
    }
    out
}

/// Long labels (fault descriptions, fallback reasons) shortened to fit.
fn clip(s: &str) -> String {
    const WIDTH: usize = 18;
    if s.chars().count() <= WIDTH {
        s.to_string()
    } else {
        let head: String = s.chars().take(WIDTH - 1).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use analysis::fixture;
    use analysis::record::RecordedStrategy;

    #[test]
    fn same_run_is_the_same_experiment() {
        let r = fixture::crash(3, RecordedStrategy::ServiceRestore, 0, 0.4);
        let t = table(&r, &r);
        assert!(t.contains("same experiment"), "{t}");
        assert!(t.contains("downtime (s)") && t.contains("0.400") && t.contains("+0.0%"), "{t}");
    }

    #[test]
    fn a_different_outcome_and_timing_are_named() {
        let stored = fixture::crash(3, RecordedStrategy::ServiceRestore, 0, 0.4);
        let mut replayed = fixture::crash(3, RecordedStrategy::ServiceRestore, 0, 0.5);
        replayed.outcome = analysis::record::RecordedOutcome::Hang;
        let t = table(&stored, &replayed);
        assert!(t.contains("differs in: outcome"), "{t}");
        assert!(t.contains("+25.0%"), "{t}");
    }
}
