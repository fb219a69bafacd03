//! A replayed experiment next to its stored record (`kfi replay`): what a
//! maintainer needs to see at a glance is whether the experiment behaved
//! the same way (injection, outcome, recovery path) and how far its timings
//! moved.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use analysis::record::{ExperimentRecord, Injection};
use serde::Serialize;
use sha2::{Digest, Sha256};

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
        ("probe outage (s)".into(), Value::Number(r.probe_outage_s)),
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

/// The stored fault experiments whose fault activated.
pub fn activated_faults(records: &[ExperimentRecord]) -> Vec<&ExperimentRecord> {
    records.iter().filter(|r| matches!(r.injection, Injection::Fault { activated: true, .. })).collect()
}

/// `n` of `indices` drawn by `seed` (each index ranked by the SHA-256 of
/// the seed and the index, so the draw depends on nothing else), in order.
pub fn sample(indices: &[u64], n: usize, seed: u64) -> Vec<u64> {
    let rank = |i: u64| Sha256::digest([seed.to_le_bytes(), i.to_le_bytes()].concat());
    let mut ranked: Vec<u64> = indices.to_vec();
    ranked.sort_by_cached_key(|&i| rank(i));
    ranked.truncate(n);
    ranked.sort_unstable();
    ranked
}

/// The fault trigger's kind (`delay`, `hit`) of a fault record.
fn trigger(r: &ExperimentRecord) -> String {
    match &r.injection {
        Injection::Fault { spec, .. } => spec["trigger"]["kind"].as_str().unwrap_or("-").to_string(),
        _ => "-".into(),
    }
}

fn activation(r: &ExperimentRecord) -> (Option<bool>, Option<f64>) {
    match &r.injection {
        Injection::Fault { activated, activation_s, .. } => (Some(*activated), *activation_s),
        _ => (None, None),
    }
}

/// A sampled experiment whose replay did not agree with its record.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// Experiment index.
    pub experiment: u64,
    /// The fault, in one line.
    pub fault: String,
    /// Its trigger's kind.
    pub trigger: String,
    /// Stored outcome.
    pub stored_outcome: String,
    /// Replayed outcome (`error` when the replay failed).
    pub replayed_outcome: String,
    /// Stored activation and seconds from injection to it.
    pub stored_activation: (Option<bool>, Option<f64>),
    /// Replayed activation.
    pub replayed_activation: (Option<bool>, Option<f64>),
    /// The replay's error, when it failed.
    pub error: Option<String>,
}

/// How many replays of stored experiments agree with their records.
#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    /// Campaign name.
    pub campaign: String,
    /// Where the replays started from.
    pub golden: String,
    /// Stored experiments with an activated fault (the population sampled).
    pub activated: usize,
    /// Replayed.
    pub replayed: usize,
    /// Replays with the stored outcome.
    pub same_outcome: usize,
    /// Replays with the stored activation (activated or not).
    pub same_activation: usize,
    /// Replays with both.
    pub same_both: usize,
    /// Per trigger kind: (replayed, with both the same).
    pub by_trigger: BTreeMap<String, (usize, usize)>,
    /// The replays that differ.
    pub differing: Vec<Difference>,
}

impl Agreement {
    /// Compares each stored record with its replay (or the replay's error).
    pub fn new(
        campaign: &str,
        golden: String,
        activated: usize,
        pairs: &[(ExperimentRecord, Result<ExperimentRecord, String>)],
    ) -> Agreement {
        let mut a = Agreement {
            campaign: campaign.to_string(),
            golden,
            activated,
            replayed: pairs.len(),
            same_outcome: 0,
            same_activation: 0,
            same_both: 0,
            by_trigger: BTreeMap::new(),
            differing: Vec::new(),
        };
        for (stored, replayed) in pairs {
            let outcome = replayed.as_ref().is_ok_and(|r| r.outcome == stored.outcome);
            let act = replayed.as_ref().is_ok_and(|r| activation(r).0 == activation(stored).0);
            a.same_outcome += usize::from(outcome);
            a.same_activation += usize::from(act);
            a.same_both += usize::from(outcome && act);
            let t = a.by_trigger.entry(trigger(stored)).or_default();
            t.0 += 1;
            t.1 += usize::from(outcome && act);
            if !(outcome && act) {
                a.differing.push(Difference {
                    experiment: stored.experiment,
                    fault: injection(stored),
                    trigger: trigger(stored),
                    stored_outcome: stored.outcome.to_string(),
                    replayed_outcome: replayed.as_ref().map_or("error".into(), |r| r.outcome.to_string()),
                    stored_activation: activation(stored),
                    replayed_activation: replayed.as_ref().map_or((None, None), activation),
                    error: replayed.as_ref().err().cloned(),
                });
            }
        }
        a
    }

    /// The figure and the differing replays, as `kfi replay --sample` prints them.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "{}: {} of {} stored activated fault experiments replayed {}\n",
            self.campaign, self.replayed, self.activated, self.golden
        );
        let pct = |n: usize| if self.replayed == 0 { 0.0 } else { n as f64 * 100.0 / self.replayed as f64 };
        let _ = writeln!(
            out,
            "  same outcome:    {}/{} ({:.0}%)",
            self.same_outcome,
            self.replayed,
            pct(self.same_outcome)
        );
        let _ = writeln!(
            out,
            "  same activation: {}/{} ({:.0}%)",
            self.same_activation,
            self.replayed,
            pct(self.same_activation)
        );
        let _ = writeln!(out, "  both:            {}/{} ({:.0}%)", self.same_both, self.replayed, pct(self.same_both));
        for (trigger, (n, same)) in &self.by_trigger {
            let _ = writeln!(out, "  trigger {trigger}: {same}/{n} agree");
        }
        let act = |a: &(Option<bool>, Option<f64>)| match a {
            (Some(true), Some(s)) => format!("activated at {s:.3} s"),
            (Some(true), None) => "activated".into(),
            (Some(false), _) => "not activated".into(),
            (None, _) => "-".into(),
        };
        for d in &self.differing {
            let _ = writeln!(
                out,
                "  differs: {} [{}] {}: stored {}, {}; replayed {}, {}{}",
                d.experiment,
                d.trigger,
                d.fault,
                d.stored_outcome,
                act(&d.stored_activation),
                d.replayed_outcome,
                act(&d.replayed_activation),
                d.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
            );
        }
        out
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

    #[test]
    fn the_sample_depends_on_the_seed_only_and_is_sorted() {
        let all: Vec<u64> = (0..100).collect();
        let a = sample(&all, 10, 1);
        assert_eq!(a.len(), 10);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(a, sample(&all, 10, 1));
        assert_ne!(a, sample(&all, 10, 2));
        let mut reversed = all.clone();
        reversed.reverse();
        assert_eq!(a, sample(&reversed, 10, 1));
        assert_eq!(sample(&all[..5], 10, 1).len(), 5);
    }

    #[test]
    fn the_agreement_counts_and_lists_the_differing_replays() {
        let fault = |i: u64, activated: bool, trigger: &str| {
            let mut r = fixture::blank(i, &format!("fault={i}"));
            r.injection = Injection::Fault {
                model: analysis::record::RecordedModel::RegFlip,
                subsystem: None,
                function: None,
                description: format!("fault {i}"),
                spec: serde_json::json!({"trigger": {"kind": trigger}}),
                activated,
                activation_unknown: None,
                activation_s: activated.then_some(0.5),
                propagation: None,
                profile: None,
                class_weight: None,
                surfaced_in: None,
            };
            r
        };
        let records = [fault(0, true, "delay"), fault(1, false, "hit"), fault(2, true, "hit")];
        assert_eq!(activated_faults(&records).len(), 2);
        let mut other = fault(2, false, "hit");
        other.outcome = analysis::record::RecordedOutcome::Hang;
        let pairs = vec![(fault(0, true, "delay"), Ok(fault(0, true, "delay"))), (fault(2, true, "hit"), Ok(other))];
        let a = Agreement::new("c", "from the kept golden snapshot k".into(), 2, &pairs);
        assert_eq!((a.same_outcome, a.same_activation, a.same_both), (1, 1, 1));
        assert_eq!(a.by_trigger["delay"], (1, 1));
        assert_eq!(a.by_trigger["hit"], (1, 0));
        let text = a.describe();
        assert!(text.contains("same outcome:    1/2 (50%)"), "{text}");
        assert!(text.contains("differs: 2 [hit] fault 2") && text.contains("replayed hang, not activated"), "{text}");
        let failed = vec![(fault(0, true, "delay"), Err("QEMU refused".to_string()))];
        let a = Agreement::new("c", "x".into(), 1, &failed);
        assert_eq!(a.same_both, 0);
        assert!(a.describe().contains("replayed error, - (QEMU refused)"), "{}", a.describe());
    }
}
