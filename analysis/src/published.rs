//! The published results kfi's fault campaigns are compared with, each next
//! to the same measure computed from the records, with the differences of
//! setup named: a comparison, never a claim of agreement.
//!
//! - Gu, Kalbarczyk, Iyer and Yang, "Characterization of Linux Kernel
//!   Behavior under Errors" (DSN 2003): bit errors in the instruction
//!   stream of the most used functions of four subsystems (arch, fs,
//!   kernel, mm) of Linux 2.4 on physical x86 hardware. 95% of crashes had
//!   one of four causes (NULL pointer, paging request, invalid opcode,
//!   general protection fault); under 10% involved propagation to another
//!   subsystem; nearly 40% of crash latencies were within 10 cycles. Only
//!   kfi's code-fault models compare: its register and memory flips are
//!   left out of these measures.
//! - Yoshimura, Yamada and Kono, "Is Linux Kernel Oops Useful or Not?"
//!   (HotDep 2012; extended in IPSJ TACS 2013), Linux 2.6.38: the error
//!   propagation scope is mostly process-local, and Linux stays consistent
//!   after an oops in most cases.

use crate::record::{ExperimentRecord, Injection, RecordedModel, RecordedOutcome, RecordedScope};
use crate::stats;
use crate::tables::{propagation, Cell, Col, Table};

fn col(id: &str, header: &str) -> Col {
    Col { id: id.into(), header: header.into() }
}

/// Code-fault models: what Gu et al.'s instruction-stream errors compare with.
fn is_code_model(m: RecordedModel) -> bool {
    !matches!(m, RecordedModel::RegFlip | RecordedModel::DataFlip | RecordedModel::StackFlip | RecordedModel::HeapFlip)
}

/// A code fault's record that crashed the kernel: an oops or a panic among
/// its events (or as its outcome, in records without events).
fn code_crashes(records: &[ExperimentRecord]) -> Vec<&ExperimentRecord> {
    records
        .iter()
        .filter(|r| matches!(&r.injection, Injection::Fault { model, .. } if is_code_model(*model)))
        .filter(|r| {
            let crash = |o: RecordedOutcome| matches!(o, RecordedOutcome::Oops | RecordedOutcome::Panic);
            r.events.iter().any(|e| crash(e.outcome)) || (r.events.is_empty() && crash(r.outcome))
        })
        .collect()
}

/// The crash cause of a record: its first oops's kind, in Gu et al.'s
/// words where it is one of their four.
fn cause(r: &ExperimentRecord) -> &'static str {
    let kind = r.outcome_detail.as_ref().and_then(|d| d.get("kind")).and_then(|k| k.as_str());
    match kind {
        Some("null-pointer") => "NULL pointer dereference",
        Some("page-fault") => "bad paging request",
        Some("invalid-opcode") | Some("bug") => "invalid opcode (BUG() included)",
        Some("general-protection") => "general protection fault",
        Some("double-fault") => "double fault",
        Some("stack-segment") => "stack segment fault",
        Some("divide-error") => "divide error",
        Some("int3") => "int3",
        Some("lockup") => "soft lockup or RCU stall",
        Some(_) => "other BUG: report",
        None => "panic without an oops report",
    }
}

const FOUR: [&str; 4] =
    ["NULL pointer dereference", "bad paging request", "invalid opcode (BUG() included)", "general protection fault"];

/// One measure's row: its label, `k` of `n` (the count column shows `n`),
/// and the published figure.
fn measure(label: &str, k: usize, n: usize, published: &str) -> Vec<Cell> {
    shares_row(label, n, k, n, published)
}

/// A row of a shares table: its label, the count shown, the share `k` of
/// `n` with its interval, and the published figure.
fn shares_row(label: &str, shown: usize, k: usize, n: usize, published: &str) -> Vec<Cell> {
    vec![Cell::Text(label.into()), Cell::Count(shown as u64), share(k, n), ci(k, n), Cell::Text(published.into())]
}

/// The columns of a measures table.
fn measure_columns() -> Vec<Col> {
    vec![
        col("measure", "measure"),
        col("n", "n"),
        col("share_pct", "kfi"),
        col("ci95_pct", "95% CI (Wilson, %)"),
        col("published", "published"),
    ]
}

fn share(k: usize, n: usize) -> Cell {
    Cell::Pct((n > 0).then(|| 100.0 * k as f64 / n as f64))
}

fn ci(k: usize, n: usize) -> Cell {
    Cell::Range(stats::proportion_ci95(k, n).map(|(lo, hi)| (100.0 * lo, 100.0 * hi)))
}

/// Crash causes of the code faults, against Gu et al.'s four.
pub fn crash_causes(records: &[ExperimentRecord]) -> Option<Table> {
    let crashes = code_crashes(records);
    if crashes.is_empty() {
        return None;
    }
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for r in &crashes {
        *counts.entry(cause(r)).or_default() += 1;
    }
    let n = crashes.len();
    let four: usize = FOUR.iter().map(|c| counts.get(c).copied().unwrap_or(0)).sum();
    let mut rows: Vec<(&str, usize)> = counts.into_iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    // A cause's row shows its own crashes, and their share of all n.
    let mut out: Vec<Vec<Cell>> = rows.into_iter().map(|(c, k)| shares_row(c, k, k, n, "–")).collect();
    out.push(shares_row("the four causes together", four, four, n, "95% of crashes"));
    Some(Table {
        title: "Crash causes of code faults, beside Gu et al. (DSN 2003)".into(),
        columns: vec![
            col("cause", "cause (first oops report)"),
            col("crashes", "crashes"),
            col("share_pct", "share"),
            col("ci95_pct", "95% CI (Wilson, %)"),
            col("published", "published"),
        ],
        rows: out,
        note: format!(
            "{n} code-fault experiments whose kernel crashed (an oops or a panic among their events); the cause is \
             the kind of the first oops report on the console. Gu et al. injected bit errors into the instruction \
             stream of Linux 2.4's most used functions in four subsystems on physical hardware; kfi's code models \
             (bit flips and mutations of executed instructions in the net, fs, mm and kernel subsystems of Linux \
             6.1 under QEMU) are the closest, its register and memory flips are left out."
        ),
    })
}

/// Crash latency: from the activation to the first oops or panic, in
/// instructions where the tracer counted them (single steps from the
/// activation to the crash path), and in seconds from the events.
pub fn crash_measures(records: &[ExperimentRecord]) -> Option<Table> {
    let crashes = code_crashes(records);
    if crashes.is_empty() {
        return None;
    }
    let mut rows = Vec::new();
    // Propagation to another subsystem: the first oops's function in
    // another subsystem than the fault's target.
    let known: Vec<bool> = crashes
        .iter()
        .filter_map(|r| match &r.injection {
            Injection::Fault { subsystem: Some(s), surfaced_in: Some(t), .. } => Some(s != t),
            _ => None,
        })
        .collect();
    let elsewhere = known.iter().filter(|&&e| e).count();
    rows.push(measure(
        "crashes that surfaced in another subsystem",
        elsewhere,
        known.len(),
        "under 10% of crashes involved propagation",
    ));
    // Latency in instructions: traced crashes whose short range reached
    // the crash path counted every instruction on the way.
    let steps: Vec<u64> = crashes
        .iter()
        .filter_map(|r| propagation(r))
        .filter(|p| p.short_end.contains("crashed"))
        .map(|p| p.steps)
        .collect();
    let within = steps.iter().filter(|&&s| s <= 10).count();
    rows.push(measure("crash latency within 10 instructions", within, steps.len(), "nearly 40% within 10 cycles"));
    // Latency in time: activation to the first crash event.
    let seconds: Vec<f64> = crashes.iter().filter_map(|r| crash_latency_s(r)).collect();
    let fast = seconds.iter().filter(|&&s| s < 0.01).count();
    rows.push(measure("crash latency under 10 ms", fast, seconds.len(), "–"));
    let median = stats::median(seconds.iter().copied());
    Some(Table {
        title: "Crash propagation and latency of code faults, beside Gu et al. (DSN 2003)".into(),
        columns: measure_columns(),
        rows,
        note: format!(
            "n: crashes for which the measure is known. Another subsystem: the function of the first oops's RIP \
             is in another subsystem than the fault's target (both from the kernel's DWARF source files). \
             Instructions: single steps of the propagation tracer from the activation to the kernel's crash path \
             (only traced campaigns count them); Gu et al. counted CPU cycles with hardware counters, so a few \
             instructions compare with their 10 cycles only roughly. Seconds: from the activation to the first \
             oops or panic event (console events placed by the kernel's timestamps; median {}).",
            median.map_or("–".to_string(), |m| format!("{m:.3} s"))
        ),
    })
}

/// Seconds from a fault's activation to its first oops or panic event.
fn crash_latency_s(r: &ExperimentRecord) -> Option<f64> {
    let Injection::Fault { activation_s: Some(activated), .. } = &r.injection else { return None };
    let first = r.events.iter().find(|e| matches!(e.outcome, RecordedOutcome::Oops | RecordedOutcome::Panic))?;
    Some((first.at_s - activated).max(0.0))
}

/// The process-local share of settled propagation verdicts and the
/// oops-then-continue rate, beside Yoshimura et al.
pub fn oops_and_scope(records: &[ExperimentRecord]) -> Option<Table> {
    let scopes: Vec<RecordedScope> = records.iter().filter_map(propagation).map(|p| p.scope).collect();
    let local = scopes.iter().filter(|&&s| s == RecordedScope::ProcessLocal).count();
    let global = scopes.iter().filter(|&&s| s == RecordedScope::KernelGlobal).count();
    let oops_first: Vec<&ExperimentRecord> = records
        .iter()
        .filter(|r| matches!(r.injection, Injection::Fault { .. }))
        .filter(|r| r.events.first().is_some_and(|e| e.outcome == RecordedOutcome::Oops))
        .collect();
    if local + global == 0 && oops_first.is_empty() {
        return None;
    }
    let continued = oops_first
        .iter()
        .filter(|r| r.outcome == RecordedOutcome::Oops)
        .filter(|r| r.metrics.get(crate::figures::names::CORRECT_AFTER_FAILURE).is_some_and(|&c| c > 0.0))
        .count();
    let escalated = oops_first.iter().filter(|r| r.outcome != RecordedOutcome::Oops).count();
    let n = oops_first.len();
    let rows = vec![
        measure("settled errors that stayed process-local", local, local + global, "mostly process-local"),
        measure(
            "oopses after which the kernel kept serving correctly",
            continued,
            n,
            "Linux stays consistent after an oops in most cases",
        ),
        measure("oopses that escalated (panic, hang or VM exit)", escalated, n, "–"),
    ];
    Some(Table {
        title: "Propagation scope and life after an oops, beside Yoshimura et al. (HotDep 2012)".into(),
        columns: measure_columns(),
        rows,
        note: "Settled: process-local or kernel-global (masked, latent and unknown verdicts left out). Oopses: \
               fault experiments whose failure showed first as an oops; kept serving: no panic, hang or VM exit \
               followed in the watch (3 s after the oops in campaigns) and requests sent after the oops were \
               answered correctly. Yoshimura et al. injected faults into Linux 2.6.38 and followed errors by \
               their own tracing; kfi traces taint by single-stepping and watchpoints in Linux 6.1 under QEMU \
               TCG, with the rules of its method section."
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;
    use crate::record::{FailureEvent, Propagation};

    fn event(outcome: RecordedOutcome, at_s: f64) -> FailureEvent {
        FailureEvent { outcome, at_s, kernel_s: None, what: String::new(), function: None, process: None }
    }

    /// A code fault (`nop` unless `model` says otherwise) in `mm` that
    /// ended in `outcome` after `events`, its first oops of `kind`.
    fn fault(
        i: u64,
        model: RecordedModel,
        outcome: RecordedOutcome,
        kind: Option<&str>,
        events: Vec<FailureEvent>,
    ) -> ExperimentRecord {
        let mut r = fixture::blank(i, &format!("fault={i}"));
        r.injection = Injection::Fault {
            model,
            subsystem: Some("mm".into()),
            function: None,
            description: String::new(),
            spec: serde_json::Value::Null,
            activated: true,
            activation_unknown: None,
            activation_s: Some(0.5),
            propagation: None,
            profile: None,
            class_weight: None,
            surfaced_in: Some(if i.is_multiple_of(4) { "net" } else { "mm" }.into()),
        };
        r.outcome = outcome;
        r.outcome_detail = kind.map(|k| serde_json::json!({ "kind": k }));
        r.events = events;
        r
    }

    fn cell_text(c: &Cell) -> String {
        match c {
            Cell::Text(s) => s.clone(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn crash_causes_and_measures_count_code_faults_only() {
        let kinds = ["null-pointer", "page-fault", "general-protection", "bug", "double-fault"];
        let mut records: Vec<ExperimentRecord> = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let events =
                    vec![event(RecordedOutcome::Oops, 0.5 + 0.001 * i as f64), event(RecordedOutcome::Panic, 0.6)];
                fault(i as u64, RecordedModel::Nop, RecordedOutcome::Panic, Some(k), events)
            })
            .collect();
        // A register flip's crash and a benign code fault are not counted.
        records.push(fault(
            9,
            RecordedModel::RegFlip,
            RecordedOutcome::Panic,
            Some("null-pointer"),
            vec![event(RecordedOutcome::Panic, 1.0)],
        ));
        records.push(fault(10, RecordedModel::Nop, RecordedOutcome::Benign, None, vec![]));
        let t = crash_causes(&records).unwrap();
        let four = t.rows.last().unwrap();
        assert_eq!(cell_text(&four[0]), "the four causes together");
        assert_eq!((&four[1], &four[2]), (&Cell::Count(4), &Cell::Pct(Some(80.0))));
        assert!(matches!(four[3], Cell::Range(Some((lo, hi))) if lo < 80.0 && hi > 80.0));
        assert_eq!(cell_text(&four[4]), "95% of crashes");
        assert!(t.rows.iter().any(|r| cell_text(&r[0]) == "double fault" && r[1] == Cell::Count(1)));

        let m = crash_measures(&records).unwrap();
        // Experiments 0 and 4 surfaced in `net`, the others in their own `mm`.
        assert_eq!((&m.rows[0][1], &m.rows[0][2]), (&Cell::Count(5), &Cell::Pct(Some(40.0))));
        // No traced record: no instruction counts.
        assert_eq!(m.rows[1][1], Cell::Count(0));
        // Activation at 0.5 s; oopses 0-4 ms later: all under 10 ms.
        assert_eq!((&m.rows[2][1], &m.rows[2][2]), (&Cell::Count(5), &Cell::Pct(Some(100.0))));
        t.to_dataframe().unwrap();
        m.to_dataframe().unwrap();
        assert!(crash_causes(&records[5..]).is_none(), "no code-fault crash, no table");
    }

    #[test]
    fn oops_then_continue_and_the_process_local_share() {
        let oops = vec![event(RecordedOutcome::Oops, 0.5)];
        let mut kept = fault(0, RecordedModel::Nop, RecordedOutcome::Oops, Some("page-fault"), oops.clone());
        kept.metrics.insert(crate::figures::names::CORRECT_AFTER_FAILURE.into(), 40.0);
        let mut silent = fault(1, RecordedModel::Nop, RecordedOutcome::Oops, Some("page-fault"), oops.clone());
        silent.metrics.insert(crate::figures::names::CORRECT_AFTER_FAILURE.into(), 0.0);
        let mut panicked = oops;
        panicked.push(event(RecordedOutcome::Panic, 0.6));
        let escalated = fault(2, RecordedModel::Nop, RecordedOutcome::Panic, Some("page-fault"), panicked);
        let mut traced = Vec::new();
        for (i, scope) in [
            RecordedScope::ProcessLocal,
            RecordedScope::ProcessLocal,
            RecordedScope::ProcessLocal,
            RecordedScope::KernelGlobal,
            RecordedScope::Latent,
        ]
        .into_iter()
        .enumerate()
        {
            let mut r = fault(10 + i as u64, RecordedModel::DataFlip, RecordedOutcome::Benign, None, vec![]);
            if let Injection::Fault { propagation, .. } = &mut r.injection {
                *propagation = Some(Box::new(Propagation {
                    scope,
                    why: String::new(),
                    activating: None,
                    foreign_readers: vec![],
                    reads: 1,
                    reporting_readers: vec![],
                    steps: 0,
                    short_s: 0.0,
                    long_s: 2.0,
                    short_end: "died".into(),
                    surfaced_in: None,
                    surfaced_elsewhere: None,
                    detail: serde_json::Value::Null,
                }));
            }
            traced.push(r);
        }
        let mut records = vec![kept, silent, escalated];
        records.extend(traced);
        let t = oops_and_scope(&records).unwrap();
        // 3 of 4 settled (the latent one is not).
        assert_eq!((&t.rows[0][1], &t.rows[0][2]), (&Cell::Count(4), &Cell::Pct(Some(75.0))));
        // Of 3 oopses first: one kept serving, one escalated.
        assert_eq!((&t.rows[1][1], &t.rows[1][2]), (&Cell::Count(3), &Cell::Pct(Some(100.0 / 3.0))));
        assert_eq!(t.rows[2][2], Cell::Pct(Some(100.0 / 3.0)));
        t.to_dataframe().unwrap();
        assert!(oops_and_scope(&records[..0]).is_none());
    }
}
