//! The report's tables, computed from records in plain Rust (statistics
//! defined in [`crate::stats`]) and rendered as Markdown or turned into
//! polars DataFrames.

use std::collections::{BTreeMap, BTreeSet};

use polars::prelude::{Column as PlColumn, DataFrame, PolarsResult};

use crate::record::{
    ExperimentRecord, Injection, Propagation, RecordedOutcome, RecordedScope, RecordedStrategy, RecordedWorkload,
    RecoveryRecord, RecoveryStages,
};
use crate::stats::Summary;

/// The reduction of downtime the paper reports for its restore strategies
/// against a full reboot.
pub const PUBLISHED_REDUCTION: f64 = 0.90;

/// Outcomes in which a fault became visible.
const MANIFESTED: [RecordedOutcome; 6] = [
    RecordedOutcome::ForcedCrash,
    RecordedOutcome::Panic,
    RecordedOutcome::VmExit,
    RecordedOutcome::Oops,
    RecordedOutcome::Hang,
    RecordedOutcome::ServiceError,
];

/// One table cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Text.
    Text(String),
    /// A count.
    Count(u64),
    /// A number (seconds unless the header says otherwise), 3 decimals.
    Num(Option<f64>),
    /// A percentage (0-100), one decimal.
    Pct(Option<f64>),
    /// A count and its share of the row (0-100); two DataFrame columns
    /// (`id`, `id_pct`).
    CountPct(u64, f64),
    /// An interval; two DataFrame columns (`id_lo`, `id_hi`).
    Range(Option<(f64, f64)>),
}

impl Cell {
    fn markdown(&self) -> String {
        match self {
            Cell::Text(s) => s.replace('|', "\\|"),
            Cell::Count(n) => n.to_string(),
            Cell::Num(Some(x)) => format!("{x:.3}"),
            Cell::Pct(Some(p)) => format!("{p:.1}%"),
            Cell::CountPct(n, p) => format!("{n} ({p:.1}%)"),
            Cell::Range(Some((lo, hi))) => format!("{lo:.3} – {hi:.3}"),
            Cell::Num(None) | Cell::Pct(None) | Cell::Range(None) => "–".into(),
        }
    }
}

/// A table column: an identifier for DataFrames and a header for Markdown.
#[derive(Debug, Clone, PartialEq)]
pub struct Col {
    /// snake_case identifier (DataFrame column name).
    pub id: String,
    /// Markdown header, with units.
    pub header: String,
}

fn col(id: &str, header: &str) -> Col {
    Col { id: id.into(), header: header.into() }
}

/// A rendered table.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Heading.
    pub title: String,
    /// Columns.
    pub columns: Vec<Col>,
    /// Rows, one cell per column.
    pub rows: Vec<Vec<Cell>>,
    /// What the numbers mean, printed under the table.
    pub note: String,
}

impl Table {
    /// GitHub-flavoured Markdown: the table and its note (no heading).
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "| {} |\n",
            self.columns.iter().map(|c| c.header.as_str()).collect::<Vec<_>>().join(" | ")
        ));
        let align: Vec<&str> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let text = self.rows.iter().all(|r| matches!(r.get(i), Some(Cell::Text(_))));
                if text {
                    "---"
                } else {
                    "---:"
                }
            })
            .collect();
        s.push_str(&format!("| {} |\n", align.join(" | ")));
        for row in &self.rows {
            s.push_str(&format!("| {} |\n", row.iter().map(Cell::markdown).collect::<Vec<_>>().join(" | ")));
        }
        if !self.note.is_empty() {
            s.push('\n');
            s.push_str(&self.note);
            s.push('\n');
        }
        s
    }

    /// The table as a DataFrame: a column per table column (two for counts
    /// with shares and for intervals), typed by its cells.
    pub fn to_dataframe(&self) -> PolarsResult<DataFrame> {
        let mut cols = Vec::new();
        for (i, c) in self.columns.iter().enumerate() {
            let cells: Vec<&Cell> = self.rows.iter().filter_map(|r| r.get(i)).collect();
            let first = cells.first().copied();
            let id = c.id.as_str();
            match first {
                Some(Cell::Count(_)) => {
                    let v: Vec<Option<u64>> =
                        cells.iter().map(|c| if let Cell::Count(n) = c { Some(*n) } else { None }).collect();
                    cols.push(PlColumn::new(id.into(), v));
                }
                Some(Cell::Num(_)) | Some(Cell::Pct(_)) => {
                    let v: Vec<Option<f64>> = cells
                        .iter()
                        .map(|c| match c {
                            Cell::Num(x) | Cell::Pct(x) => *x,
                            _ => None,
                        })
                        .collect();
                    cols.push(PlColumn::new(id.into(), v));
                }
                Some(Cell::CountPct(..)) => {
                    let (n, p): (Vec<Option<u64>>, Vec<Option<f64>>) = cells
                        .iter()
                        .map(|c| if let Cell::CountPct(n, p) = c { (Some(*n), Some(*p)) } else { (None, None) })
                        .unzip();
                    cols.push(PlColumn::new(id.into(), n));
                    cols.push(PlColumn::new(format!("{id}_pct").into(), p));
                }
                Some(Cell::Range(_)) => {
                    let (lo, hi): (Vec<Option<f64>>, Vec<Option<f64>>) = cells
                        .iter()
                        .map(|c| match c {
                            Cell::Range(Some((lo, hi))) => (Some(*lo), Some(*hi)),
                            _ => (None, None),
                        })
                        .unzip();
                    cols.push(PlColumn::new(format!("{id}_lo").into(), lo));
                    cols.push(PlColumn::new(format!("{id}_hi").into(), hi));
                }
                Some(Cell::Text(_)) | None => {
                    let v: Vec<Option<String>> =
                        cells.iter().map(|c| if let Cell::Text(s) = c { Some(s.clone()) } else { None }).collect();
                    cols.push(PlColumn::new(id.into(), v));
                }
            }
        }
        DataFrame::new(self.rows.len(), cols)
    }
}

/// The failure class a downtime is grouped by: `crash:<kind>` for forced
/// crashes, `injected fault` for faults, `none` otherwise.
pub fn failure_class(r: &ExperimentRecord) -> String {
    match &r.injection {
        Injection::Fault { .. } => "injected fault".into(),
        other => other.label(),
    }
}

/// Downtime of one strategy in one (workload, failure class) group.
#[derive(Debug, Clone, PartialEq)]
pub struct DowntimeStats {
    /// Workload.
    pub workload: RecordedWorkload,
    /// Failure class ([`failure_class`]).
    pub failure: String,
    /// Strategy requested.
    pub strategy: RecordedStrategy,
    /// Experiments with a recovery in the group.
    pub experiments: usize,
    /// Summary of the downtimes that were measured (recovered experiments).
    pub summary: Option<Summary>,
    /// `1 - median / median(full-reboot)` in the same group.
    pub reduction: Option<f64>,
    /// Summary of the availability probe's outages of the recovered
    /// experiments (records made before the probe have none).
    pub probe: Option<Summary>,
    /// The same reduction by the probe's outages.
    pub probe_reduction: Option<f64>,
    /// Experiments whose service did not come back in the window.
    pub not_recovered: usize,
    /// Experiments where another strategy ran (fallback).
    pub fallbacks: usize,
}

/// Downtime per (workload, failure class, strategy) over the records with
/// a recovery, in table order.
pub fn downtime_stats(records: &[ExperimentRecord]) -> Vec<DowntimeStats> {
    let mut groups: BTreeMap<(RecordedWorkload, String), BTreeMap<RecordedStrategy, Vec<&ExperimentRecord>>> =
        BTreeMap::new();
    for r in records {
        if let Some(rec) = &r.recovery {
            groups.entry((r.workload, failure_class(r))).or_default().entry(rec.requested).or_default().push(r);
        }
    }
    let mut out = Vec::new();
    for ((workload, failure), by_strategy) in groups {
        let summarize = |rs: &[&ExperimentRecord]| {
            Summary::of(&rs.iter().filter_map(|r| r.downtime_s.filter(|_| recovered(r))).collect::<Vec<_>>())
        };
        let probed = |rs: &[&ExperimentRecord]| {
            Summary::of(&rs.iter().filter(|r| recovered(r)).filter_map(|r| r.probe_outage_s).collect::<Vec<_>>())
        };
        let full = by_strategy.get(&RecordedStrategy::FullReboot);
        let reference = full.and_then(|rs| summarize(rs)).map(|s| s.median);
        let probe_reference = full.and_then(|rs| probed(rs)).map(|s| s.median);
        let reduce = |s: Option<Summary>, m: Option<f64>| match (s, m) {
            (Some(s), Some(m)) if m > 0.0 => Some(1.0 - s.median / m),
            _ => None,
        };
        for (strategy, rs) in by_strategy {
            let summary = summarize(&rs);
            let reduction = reduce(summary, reference);
            let probe = probed(&rs);
            let probe_reduction = reduce(probe, probe_reference);
            out.push(DowntimeStats {
                workload,
                failure: failure.clone(),
                experiments: rs.len(),
                summary,
                reduction,
                probe,
                probe_reduction,
                not_recovered: rs.iter().filter(|r| !recovered(r)).count(),
                fallbacks: rs.iter().filter(|r| r.recovery.as_ref().is_some_and(|x| x.used != x.requested)).count(),
                strategy,
            });
        }
    }
    out
}

/// How far client-seen downtime and the probe's outage may differ, as a
/// share of the probe's, before a report explains the gap.
pub const GAP_SHARE: f64 = 0.10;
/// The span before the failure in which clients without a single correct
/// answer count as stalled already (whole timeline bins only).
const STALL_SPAN_S: f64 = 0.5;

/// One paragraph on how client-seen downtime and the availability probe's
/// outage compare over the recovered experiments that have both, naming the
/// experiments that differ by more than [`GAP_SHARE`] and how many of them
/// had their clients stalled before the failure: the client-seen measure
/// starts at the clients' last correct answer, so a stall before the
/// failure counts in it, while the probe (a new request every 10 ms) sees
/// only the outage. `None` without such experiments.
pub fn downtime_gaps(records: &[ExperimentRecord]) -> Option<String> {
    let both: Vec<(&ExperimentRecord, f64, f64)> = records
        .iter()
        .filter(|r| recovered(r))
        .filter_map(|r| Some((r, r.downtime_s?, r.probe_outage_s?)))
        .filter(|&(_, _, p)| p > 0.0)
        .collect();
    if both.is_empty() {
        return None;
    }
    let differing: Vec<&(&ExperimentRecord, f64, f64)> =
        both.iter().filter(|(_, d, p)| (d - p).abs() > GAP_SHARE * p).collect();
    let mut text = format!(
        "Client-seen downtime and the probe's outage agree within {:.0}% in {} of {} recovered experiments.",
        GAP_SHARE * 100.0,
        both.len() - differing.len(),
        both.len()
    );
    if differing.is_empty() {
        return Some(text);
    }
    let stalled: Vec<&str> =
        differing.iter().filter(|(r, d, p)| d > p && stalled_before(r)).map(|(r, _, _)| r.key.as_str()).collect();
    let listed: Vec<String> =
        differing.iter().map(|(r, d, p)| format!("{} ({d:.3} s against {p:.3} s)", r.key)).collect();
    text += &format!(" They differ in {}: {}.", differing.len(), listed.join("; "));
    if !stalled.is_empty() {
        text += &format!(
            " In {} of these ({}) the workload's clients had no correct answer in the {STALL_SPAN_S} s before the \
             failure: they were already waiting on requests the guest had not answered, and the client-seen measure, \
             which starts at their last correct answer, counts that wait; the probe does not.",
            stalled.len(),
            stalled.join("; ")
        );
    }
    Some(text)
}

/// The clients completed no correct answer in the whole timeline bins of
/// the [`STALL_SPAN_S`] before the failure.
fn stalled_before(r: &ExperimentRecord) -> bool {
    let width = r.timeline.windows(2).map(|w| w[1].t_s - w[0].t_s).next().unwrap_or(0.1);
    let before: Vec<_> = r.timeline.iter().filter(|b| b.t_s >= -STALL_SPAN_S - 1e-9 && b.t_s + width <= 1e-9).collect();
    !before.is_empty() && before.iter().all(|b| b.correct == 0)
}

/// Recovered: the recovery says so and a downtime was measured.
pub(crate) fn recovered(r: &ExperimentRecord) -> bool {
    r.recovery.as_ref().is_some_and(|x| x.recovered) && r.downtime_s.is_some()
}

/// Downtime per strategy and workload.
pub fn downtime(records: &[ExperimentRecord]) -> Table {
    let rows = downtime_stats(records)
        .into_iter()
        .map(|d| {
            let s = d.summary;
            vec![
                Cell::Text(d.workload.to_string()),
                Cell::Text(d.failure),
                Cell::Text(d.strategy.to_string()),
                Cell::Count(s.map_or(0, |s| s.n as u64)),
                Cell::Num(s.map(|s| s.mean)),
                Cell::Num(s.map(|s| s.median)),
                Cell::Num(s.map(|s| s.p95)),
                Cell::Range(s.and_then(|s| s.ci95)),
                Cell::Pct(d.reduction.map(|x| 100.0 * x)),
                Cell::Num(d.probe.map(|s| s.median)),
                Cell::Pct(d.probe_reduction.map(|x| 100.0 * x)),
                Cell::Count(d.not_recovered as u64),
                Cell::Count(d.fallbacks as u64),
            ]
        })
        .collect();
    Table {
        title: "Client-seen downtime per recovery strategy".into(),
        columns: vec![
            col("workload", "workload"),
            col("failure", "failure"),
            col("strategy", "strategy"),
            col("n", "n"),
            col("mean_s", "mean (s)"),
            col("median_s", "median (s)"),
            col("p95_s", "p95 (s)"),
            col("ci95_mean_s", "95% CI of mean (s)"),
            col("reduction_pct", "reduction vs full reboot (median)"),
            col("probe_median_s", "probe outage median (s)"),
            col("probe_reduction_pct", "probe reduction vs full reboot"),
            col("not_recovered", "not recovered"),
            col("fallbacks", "fallbacks"),
        ],
        rows,
        note: "n counts recovered experiments, whose downtime was measured; strategies are the requested ones \
               (fallbacks counted). Downtime is client-seen: from the end of the last correct answer completed at \
               or before the failure to the end of the first correct answer to a request sent at or after it, over \
               the workload's clients. The probe outage is the same measure over the availability probe's own \
               requests (the index page every 10 ms, not counted as the workload's); empty for records made \
               before the probe. Reduction = 1 − median(strategy) / median(full-reboot) in the same workload \
               and failure class. CI: Student's t on the mean. p95: linear interpolation (type 7)."
            .into(),
    }
}

/// Distribution of a class (the outcome, the propagation scope) per group:
/// counts and shares of each class, classes in their table order (`Ord`).
fn class_table<C: Ord + Copy + std::fmt::Display>(
    records: &[ExperimentRecord],
    (title, id, header): (&str, &str, &str),
    group: impl Fn(&ExperimentRecord) -> Option<String>,
    class: impl Fn(&ExperimentRecord) -> Option<C>,
) -> Table {
    let mut groups: BTreeMap<String, BTreeMap<C, u64>> = BTreeMap::new();
    let mut classes = BTreeSet::new();
    for r in records {
        if let (Some(g), Some(c)) = (group(r), class(r)) {
            *groups.entry(g).or_default().entry(c).or_default() += 1;
            classes.insert(c);
        }
    }
    let mut columns = vec![col(id, header), col("n", "n")];
    columns.extend(classes.iter().map(|o| col(&o.to_string().replace('-', "_"), &o.to_string())));
    let rows = groups
        .into_iter()
        .map(|(g, counts)| {
            let n: u64 = counts.values().sum();
            let mut row = vec![Cell::Text(g), Cell::Count(n)];
            row.extend(classes.iter().map(|o| {
                let c = counts.get(o).copied().unwrap_or(0);
                Cell::CountPct(c, 100.0 * c as f64 / n as f64)
            }));
            row
        })
        .collect();
    Table { title: title.into(), columns, rows, note: "Counts, with the share of the row in parentheses.".into() }
}

fn outcome_table(
    records: &[ExperimentRecord],
    title: &str,
    id: &str,
    header: &str,
    group: impl Fn(&ExperimentRecord) -> Option<String>,
) -> Table {
    class_table(records, (title, id, header), group, |r| Some(r.outcome))
}

/// Outcome distribution per fault model (forced crashes as `crash:<kind>`).
pub fn outcomes_by_model(records: &[ExperimentRecord]) -> Table {
    outcome_table(records, "Outcomes per fault model", "fault_model", "fault model", |r| {
        (!matches!(r.injection, Injection::None)).then(|| r.injection.label())
    })
}

/// Outcome distribution per subsystem of the injected faults' targets.
pub fn outcomes_by_subsystem(records: &[ExperimentRecord]) -> Table {
    outcome_table(records, "Outcomes per subsystem", "subsystem", "subsystem", |r| match &r.injection {
        Injection::Fault { subsystem, .. } => Some(subsystem.clone().unwrap_or_else(|| "(unknown)".into())),
        _ => None,
    })
}

/// Failures of fault experiments by how they showed first and what they
/// became: an oops in one process that later panicked the kernel counts
/// under oops (first manifestation) and panic (final outcome).
pub fn failure_progression(records: &[ExperimentRecord]) -> Table {
    let mut t = class_table(
        records,
        ("Failures by first manifestation and final outcome", "first_manifestation", "first manifestation"),
        |r| {
            (matches!(r.injection, Injection::Fault { .. }) && MANIFESTED.contains(&r.outcome))
                .then(|| r.first_manifestation().to_string())
        },
        |r| Some(r.outcome),
    );
    t.note = "Fault experiments that failed, by the class of their first event (rows) and their final outcome \
              (columns). Counts, with the row's share."
        .into();
    t
}

/// Failures with no evidence that their fault caused them (neither its
/// activation nor an undecided activation was seen).
pub fn unattributed(records: &[ExperimentRecord]) -> Vec<&ExperimentRecord> {
    records.iter().filter(|r| r.unattributed).collect()
}

/// Fault experiments that needed recovery: those whose failure a recovery
/// acted on, those of them the service did not come back from, and those
/// no recovery acted on although the service was failing when the watch
/// ended (an oops or a service error with the kernel alive, which no
/// detector of a campaign acts on: no correct answer after the failure).
pub struct NeedingRecovery<'a> {
    /// Recovered or not, a recovery ran.
    pub acted_on: usize,
    /// Of those, not back.
    pub not_back: Vec<&'a ExperimentRecord>,
    /// No recovery ran, and the service was still failing.
    pub left_failing: Vec<&'a ExperimentRecord>,
}

/// See [`NeedingRecovery`].
pub fn needing_recovery(records: &[ExperimentRecord]) -> NeedingRecovery<'_> {
    let faults = || records.iter().filter(|r| matches!(r.injection, Injection::Fault { .. }));
    let acted: Vec<&ExperimentRecord> = faults().filter(|r| r.recovery.is_some()).collect();
    let not_back = acted.iter().copied().filter(|r| r.recovery.as_ref().is_some_and(|x| !x.recovered)).collect();
    let left_failing = faults()
        .filter(|r| r.recovery.is_none() && matches!(r.outcome, RecordedOutcome::Oops | RecordedOutcome::ServiceError))
        .filter(|r| r.metrics.get(crate::figures::names::CORRECT_AFTER_FAILURE).is_some_and(|&c| c == 0.0))
        .collect();
    NeedingRecovery { acted_on: acted.len(), not_back, left_failing }
}

/// The propagation verdict of a traced fault (activated, or masked before
/// use).
pub fn propagation(r: &ExperimentRecord) -> Option<&Propagation> {
    match &r.injection {
        Injection::Fault { propagation: Some(p), .. } => Some(p),
        _ => None,
    }
}

/// Error propagation scope per fault model (traced, activated faults).
pub fn scope_by_model(records: &[ExperimentRecord]) -> Table {
    let mut t = class_table(
        records,
        ("Error propagation scope per fault model", "fault_model", "fault model"),
        |r| propagation(r).map(|_| r.injection.label()),
        |r| propagation(r).map(|p| p.scope),
    );
    t.note = SCOPE_NOTE.into();
    t
}

/// Error propagation scope per subsystem of the target.
pub fn scope_by_subsystem(records: &[ExperimentRecord]) -> Table {
    let mut t = class_table(
        records,
        ("Error propagation scope per subsystem", "subsystem", "subsystem"),
        |r| match (&r.injection, propagation(r)) {
            (Injection::Fault { subsystem, .. }, Some(_)) => {
                Some(subsystem.clone().unwrap_or_else(|| "(unknown)".into()))
            }
            _ => None,
        },
        |r| propagation(r).map(|p| p.scope),
    );
    t.note = SCOPE_NOTE.into();
    t
}

const SCOPE_NOTE: &str = "Traced faults (activated, or overwritten before use); the verdicts' definitions are in the \
     method section. Counts, with the row's share.";

/// The scope summary: settled errors, how many stayed process-local, and
/// how many failures surfaced in another subsystem than the injected one.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopeSummary {
    /// Traced activated faults.
    pub traced: usize,
    /// Per scope.
    pub counts: BTreeMap<RecordedScope, usize>,
    /// process-local / (process-local + kernel-global).
    pub local_share: Option<f64>,
    /// Failures with a known surfacing subsystem.
    pub surfaced_known: usize,
    /// Of those, in another subsystem.
    pub surfaced_elsewhere: usize,
}

/// Summarizes the traced faults.
pub fn scope_summary(records: &[ExperimentRecord]) -> ScopeSummary {
    let mut counts: BTreeMap<RecordedScope, usize> = BTreeMap::new();
    let (mut traced, mut known, mut elsewhere) = (0, 0, 0);
    for p in records.iter().filter_map(propagation) {
        traced += 1;
        *counts.entry(p.scope).or_default() += 1;
        if let Some(e) = p.surfaced_elsewhere {
            known += 1;
            elsewhere += usize::from(e);
        }
    }
    let local = counts.get(&RecordedScope::ProcessLocal).copied().unwrap_or(0);
    let global = counts.get(&RecordedScope::KernelGlobal).copied().unwrap_or(0);
    ScopeSummary {
        traced,
        counts,
        local_share: (local + global > 0).then(|| local as f64 / (local + global) as f64),
        surfaced_known: known,
        surfaced_elsewhere: elsewhere,
    }
}

/// Fault experiments whose record names no subsystem, and all fault
/// experiments.
pub fn unknown_subsystems(records: &[ExperimentRecord]) -> (usize, usize) {
    let faults: Vec<&Option<String>> = records
        .iter()
        .filter_map(|r| match &r.injection {
            Injection::Fault { subsystem, .. } => Some(subsystem),
            _ => None,
        })
        .collect();
    (faults.iter().filter(|s| s.is_none()).count(), faults.len())
}

/// The golden-run profiles fault experiments were drawn from, with how
/// many experiments each, and the experiments drawn from the whole image.
pub fn fault_sources(records: &[ExperimentRecord]) -> (std::collections::BTreeMap<String, usize>, usize) {
    let mut profiles = std::collections::BTreeMap::new();
    let mut image = 0;
    for r in records {
        if let Injection::Fault { profile, .. } = &r.injection {
            match profile {
                Some(p) => *profiles.entry(p.clone()).or_insert(0) += 1,
                None => image += 1,
            }
        }
    }
    (profiles, image)
}

/// Activation rate per fault model, and how often an activated fault
/// became visible.
pub fn activation(records: &[ExperimentRecord]) -> Table {
    #[derive(Default)]
    struct Acc {
        n: u64,
        activated: u64,
        unknown: u64,
        manifested: u64,
        latency: Vec<f64>,
    }
    // By name, as every per-model table orders its rows.
    let mut by_model: BTreeMap<&str, Acc> = BTreeMap::new();
    for r in records {
        // A harness error observed nothing: neither activated nor not.
        if r.outcome == RecordedOutcome::HarnessError {
            continue;
        }
        if let Injection::Fault { model, activated, activation_unknown, activation_s, .. } = &r.injection {
            let a = by_model.entry(model.name()).or_default();
            a.n += 1;
            a.unknown += u64::from(activation_unknown.is_some());
            if *activated {
                a.activated += 1;
                a.manifested += u64::from(MANIFESTED.contains(&r.outcome));
                a.latency.extend(activation_s);
            }
        }
    }
    let rows = by_model
        .into_iter()
        .map(|(model, a)| {
            let decided = a.n - a.unknown;
            vec![
                Cell::Text(model.to_string()),
                Cell::Count(a.n),
                Cell::Count(a.activated),
                Cell::Count(a.unknown),
                Cell::Pct((decided > 0).then(|| 100.0 * a.activated as f64 / decided as f64)),
                Cell::Pct((a.activated > 0).then(|| 100.0 * a.manifested as f64 / a.activated as f64)),
                Cell::Num(Summary::of(&a.latency).map(|s| s.median)),
            ]
        })
        .collect();
    Table {
        title: "Fault activation per model".into(),
        columns: vec![
            col("fault_model", "fault model"),
            col("n", "n"),
            col("activated", "activated"),
            col("activation_unknown", "activation unknown"),
            col("activation_rate_pct", "activation rate"),
            col("manifested_pct", "manifested when activated"),
            col("median_activation_s", "median time to activation (s)"),
        ],
        rows,
        note: "Activated: a code fault's instruction executed; a data, stack or heap flip's byte read (a read \
               watchpoint) before it was written; a register flip's bit read by an instruction before one \
               overwrote it (single-stepped from the flip; records made before this rule count a register \
               flip as activated when it was written). Activation unknown: a register flip neither read nor \
               overwritten before the CPU went idle, left the kernel or the step budget ran out; the \
               activation rate is over the experiments whose activation was decided. Manifested: outcome vm-exit, \
               panic, oops, hang or service-error. Experiments stored as harness-error (the harness failed, \
               not the guest) are left out."
            .into(),
    }
}

/// Recovery success per requested strategy, with fallbacks and lost writes.
pub fn recovery_success(records: &[ExperimentRecord]) -> Table {
    #[derive(Default)]
    struct Acc {
        n: u64,
        ok: u64,
        fallbacks: u64,
        lost: u64,
        with_loss: u64,
    }
    let mut by: BTreeMap<RecordedStrategy, Acc> = BTreeMap::new();
    for r in records {
        if let Some(x) = &r.recovery {
            let a = by.entry(x.requested).or_default();
            a.n += 1;
            a.ok += u64::from(x.recovered);
            a.fallbacks += u64::from(x.used != x.requested);
            let lost = r.lost_writes.unwrap_or(0);
            a.lost += lost;
            a.with_loss += u64::from(lost > 0);
        }
    }
    Table {
        title: "Recovery success per strategy".into(),
        columns: vec![
            col("strategy", "strategy"),
            col("n", "n"),
            col("recovered", "recovered"),
            col("success_pct", "success rate"),
            col("fallbacks", "fallbacks"),
            col("lost_writes", "lost acknowledged writes"),
            col("experiments_losing_writes", "experiments losing writes"),
        ],
        rows: by
            .into_iter()
            .map(|(s, a)| {
                vec![
                    Cell::Text(s.to_string()),
                    Cell::Count(a.n),
                    Cell::Count(a.ok),
                    Cell::Pct(Some(100.0 * a.ok as f64 / a.n as f64)),
                    Cell::Count(a.fallbacks),
                    Cell::Count(a.lost),
                    Cell::Count(a.with_loss),
                ]
            })
            .collect(),
        note: "Recovered: the service answered correctly again within the observation window.".into(),
    }
}

/// The median stages of the recoveries that ran in one (workload, failure
/// class, strategy that ran) group (see [`crate::record::RecoveryStages`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StageMedians {
    /// Workload.
    pub workload: RecordedWorkload,
    /// Failure class ([`failure_class`]).
    pub failure: String,
    /// The strategy that ran (a fallback counts as what it fell back to).
    pub strategy: RecordedStrategy,
    /// Recovered experiments with stages in the group.
    pub n: usize,
    /// Medians, seconds, in stage order: detection, reset or restore, data
    /// disk mount, database start, first correct answer (`None`: the
    /// stage never happened in the group).
    pub stages: [Option<f64>; 5],
    /// Median client-seen downtime.
    pub downtime_s: Option<f64>,
}

/// The stages' names, in order, as tables and figures show them.
pub const STAGE_NAMES: [&str; 5] =
    ["detection", "reset or restore", "data disk mount", "database start", "first correct answer"];

/// Median stages per (workload, failure class, strategy that ran) over the
/// recovered experiments whose records keep stages, in table order.
pub fn stage_medians(records: &[ExperimentRecord]) -> Vec<StageMedians> {
    type Key = (RecordedWorkload, String, RecordedStrategy);
    let mut groups: BTreeMap<Key, Vec<(&ExperimentRecord, &RecoveryRecord, &RecoveryStages)>> = BTreeMap::new();
    for r in records {
        let Some(rec) = r.recovery.as_ref().filter(|x| x.recovered) else { continue };
        let Some(stages) = &rec.stages else { continue };
        groups.entry((r.workload, failure_class(r), rec.used)).or_default().push((r, rec, stages));
    }
    groups
        .into_iter()
        .map(|((workload, failure, strategy), g)| {
            let of = |f: &dyn Fn(&RecoveryRecord, &RecoveryStages) -> Option<f64>| {
                crate::stats::median(g.iter().filter_map(|(_, rec, st)| f(rec, st)))
            };
            StageMedians {
                workload,
                failure,
                strategy,
                n: g.len(),
                stages: [
                    of(&|rec, _| Some(rec.detect_s)),
                    of(&|rec, _| Some(rec.restart_s)),
                    of(&|_, st| st.data_mount_s),
                    of(&|_, st| st.database_s),
                    of(&|_, st| st.first_correct_s),
                ],
                downtime_s: crate::stats::median(g.iter().filter_map(|(r, _, _)| r.downtime_s)),
            }
        })
        .collect()
}

/// The stages of the recoveries that ran ([`stage_medians`]) beside the
/// median client-seen downtime. `None` when no record keeps stages.
pub fn recovery_stages(records: &[ExperimentRecord]) -> Option<Table> {
    let medians = stage_medians(records);
    if medians.is_empty() {
        return None;
    }
    let rows = medians
        .into_iter()
        .map(|m| {
            let mut row = vec![
                Cell::Text(m.workload.to_string()),
                Cell::Text(m.failure),
                Cell::Text(m.strategy.to_string()),
                Cell::Count(m.n as u64),
            ];
            row.extend(m.stages.iter().map(|s| Cell::Num(*s)));
            row.push(Cell::Num(m.downtime_s));
            row
        })
        .collect();
    Some(Table {
        title: "Recovery stages per strategy that ran".into(),
        columns: [
            col("workload", "workload"),
            col("failure", "failure"),
            col("strategy", "strategy that ran"),
            col("n", "n"),
        ]
        .into_iter()
        .chain(
            ["detect_s", "restart_s", "data_mount_s", "database_s", "first_correct_s"]
                .iter()
                .zip(STAGE_NAMES)
                .map(|(id, name)| col(id, &format!("{name} (s)"))),
        )
        .chain([col("downtime_s", "downtime (s)")])
        .collect(),
        rows,
        note: format!(
            "Medians over the recovered experiments of each strategy that ran (fallbacks counted under the \
               strategy they fell back to). Stages follow one another: detection runs from the injection to the \
               VMM's detection; reset or restore until the guest runs again (a full reboot: until its boot reached \
               the phase boundary); data disk mount until the guest agent reported the data disk mounted (its \
               journal replayed); database start until mariadb.service turned active (MariaDB told systemd it \
               serves: InnoDB crash recovery included); first correct answer until the end of the workload's first correct \
               answer to a request sent after the failure (RUBiS: a database page), 0 when it came at most {lag} s before the agent's \
               report of the stage before it (the agent polls). Agent phases are dated on the host. A dash: the stage \
               did not happen (a service restore mounts nothing, the tiny guest has no database), or ended more than \
               {lag} s after the first correct answer and so is no part of the downtime (static pages are answered \
               while the data disk is mounted and MariaDB starts: clients that need no database are not held). Downtime \
               (client-seen, as above) starts at the last correct answer before the failure, so it need not \
               equal the stages' sum.",
            lag = crate::record::AGENT_REPORT_LAG_S
        ),
    })
}

/// A parameter's value for an experiment (`params`).
pub fn param<'a>(r: &'a ExperimentRecord, name: &str) -> Option<&'a str> {
    r.params.get(name).map(String::as_str)
}

/// Orders parameter values numerically when they all parse as numbers,
/// else by first appearance.
pub(crate) fn order_values(values: Vec<String>) -> Vec<String> {
    let mut seen = Vec::new();
    for v in values {
        if !seen.contains(&v) {
            seen.push(v);
        }
    }
    if seen.iter().all(|v| v.parse::<f64>().is_ok()) {
        seen.sort_by(|a, b| a.parse::<f64>().unwrap_or(0.0).total_cmp(&b.parse::<f64>().unwrap_or(0.0)));
    }
    seen
}

/// Points of a metric against a parameter, optionally split into series by
/// a second parameter: `(series, value, metric values)` in table order.
/// A comma-separated list of parameters splits by those of them that vary
/// among the records, each series named `name=value, name=value` (the
/// restore measurements vary path, cache and reduction at once).
pub fn metric_points(
    records: &[ExperimentRecord],
    metric: &str,
    param_name: &str,
    series: Option<&str>,
) -> Vec<(String, String, Vec<f64>)> {
    let with: Vec<&ExperimentRecord> = records
        .iter()
        .filter(|r| r.metrics.get(metric).is_some_and(|m| m.is_finite()) && param(r, param_name).is_some())
        .collect();
    let varying: Vec<&str> = series
        .filter(|s| s.contains(','))
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|n| {
                    let values: std::collections::BTreeSet<Option<&str>> = with.iter().map(|r| param(r, n)).collect();
                    values.len() > 1
                })
                .collect()
        })
        .unwrap_or_default();
    let series_of = |r: &ExperimentRecord| match series {
        Some(s) if s.contains(',') => {
            let parts: Vec<String> = varying.iter().map(|n| format!("{n}={}", param(r, n).unwrap_or("–"))).collect();
            if parts.is_empty() {
                "–".to_string()
            } else {
                parts.join(", ")
            }
        }
        Some(s) => param(r, s).unwrap_or("–").to_string(),
        None => String::new(),
    };
    let values = order_values(with.iter().filter_map(|r| param(r, param_name).map(String::from)).collect());
    let series_values = order_values(with.iter().map(|r| series_of(r)).collect());
    let mut out = Vec::new();
    for s in &series_values {
        for v in &values {
            let ms: Vec<f64> = with
                .iter()
                .filter(|r| &series_of(r) == s && param(r, param_name) == Some(v.as_str()))
                .filter_map(|r| r.metrics.get(metric).copied())
                .collect();
            if !ms.is_empty() {
                out.push((s.clone(), v.clone(), ms));
            }
        }
    }
    out
}

/// A measured metric against a parameter (e.g. `restore_s` vs `ram_mb`,
/// split by `reduction`): n, mean, median, min, max per value. `None` when
/// no record has both.
pub fn metric_vs_param(
    records: &[ExperimentRecord],
    metric: &str,
    metric_header: &str,
    param_name: &str,
    series: Option<&str>,
) -> Option<Table> {
    let points = metric_points(records, metric, param_name, series);
    if points.is_empty() {
        return None;
    }
    // A series parameter no record has is left out.
    let series = series.filter(|_| points.iter().any(|p| p.0 != "–"));
    let mut columns = Vec::new();
    if let Some(s) = series {
        // A composite series names its parameters in every cell.
        let s = if s.contains(',') { "condition" } else { s };
        columns.push(col(s, s));
    }
    columns.push(col(param_name, param_name));
    columns.extend([
        col("n", "n"),
        col("mean", &format!("mean {metric_header}")),
        col("median", &format!("median {metric_header}")),
        col("min", &format!("min {metric_header}")),
        col("max", &format!("max {metric_header}")),
    ]);
    let rows = points
        .into_iter()
        .filter_map(|(s, v, ms)| {
            let sum = Summary::of(&ms)?;
            let mut row = Vec::new();
            if series.is_some() {
                row.push(Cell::Text(s));
            }
            row.extend([
                Cell::Text(v),
                Cell::Count(sum.n as u64),
                Cell::Num(Some(sum.mean)),
                Cell::Num(Some(sum.median)),
                Cell::Num(Some(sum.min)),
                Cell::Num(Some(sum.max)),
            ]);
            Some(row)
        })
        .collect();
    Some(Table { title: format!("{metric} vs {param_name}"), columns, rows, note: String::new() })
}

/// Campaign overhead: time per experiment beyond its observation window.
pub fn overhead(records: &[ExperimentRecord]) -> Table {
    let mut by: BTreeMap<String, Vec<&ExperimentRecord>> = BTreeMap::new();
    for r in records {
        by.entry(r.campaign.clone()).or_default().push(r);
    }
    let rows = by
        .into_iter()
        .map(|(c, rs)| {
            let wall: Vec<f64> = rs.iter().map(|r| r.wall_s).collect();
            let over: Vec<f64> = rs.iter().map(|r| r.wall_s - r.window_s).collect();
            let window: f64 = rs.iter().map(|r| r.window_s).sum();
            let total_over: f64 = over.iter().sum();
            let wall_sum: f64 = wall.iter().sum();
            vec![
                Cell::Text(c),
                Cell::Count(rs.len() as u64),
                Cell::Num(Summary::of(&wall).map(|s| s.mean)),
                Cell::Num(Summary::of(&over).map(|s| s.mean)),
                Cell::Pct((window > 0.0).then(|| 100.0 * total_over / window)),
                Cell::Num((wall_sum > 0.0).then(|| 3600.0 * rs.len() as f64 / wall_sum)),
            ]
        })
        .collect();
    Table {
        title: "Campaign overhead".into(),
        columns: vec![
            col("campaign", "campaign"),
            col("n", "experiments"),
            col("mean_wall_s", "mean wall time (s)"),
            col("mean_overhead_s", "mean overhead (s)"),
            col("overhead_pct", "overhead / window"),
            col("experiments_per_hour", "experiments per hour (one job)"),
        ],
        rows,
        note: "Overhead = wall time − observation window, per experiment (restore, setup, teardown, storing). \
               Experiments per hour assume one job; --jobs runs several at once."
            .into(),
    }
}

/// Where the numbers come from: distinct provenance with its experiments;
/// a campaign whose records come from more than one environment (kernel,
/// image, QEMU, accelerator) is named in the note.
pub fn provenance(records: &[ExperimentRecord]) -> Table {
    let short = |v: Option<&str>| v.map_or("unrecorded".to_string(), |v| v[..v.len().min(12)].to_string());
    let mut by: BTreeMap<Vec<String>, u64> = BTreeMap::new();
    let mut environments: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for r in records {
        let p = &r.provenance;
        environments.entry(&r.campaign).or_default().insert(p.environment_label());
        let kfi = match (&p.kfi_commit, p.kfi_dirty) {
            (Some(c), dirty) => format!(
                "{} {}{}",
                p.kfi_version,
                &c[..c.len().min(12)],
                if dirty == Some(true) { "+dirty" } else { "" }
            ),
            (None, _) => p.kfi_version.clone(),
        };
        let host = match (&p.host_cpu, p.host_cores) {
            (Some(cpu), Some(n)) => format!("{} ({cpu}, {n} cores)", p.host),
            _ => p.host.clone(),
        };
        let k = vec![
            r.campaign.clone(),
            p.accel.to_string(),
            p.qemu_version.clone(),
            p.kernel_version.clone(),
            p.kernel_origin.clone().unwrap_or_else(|| "unrecorded".into()),
            short(p.kernel_build_id.as_deref()),
            short(p.image_recipe.as_deref()),
            short(p.image_packages.as_deref()),
            p.profile.to_string(),
            p.ram_mb.to_string(),
            p.seed.to_string(),
            kfi,
            host,
        ];
        *by.entry(k).or_default() += 1;
    }
    let ids = [
        ("campaign", "campaign"),
        ("accel", "accel"),
        ("qemu", "qemu"),
        ("kernel", "kernel"),
        ("kernel_package", "kernel package"),
        ("kernel_build_id", "kernel build id"),
        ("image_recipe", "image recipe"),
        ("image_packages", "image packages"),
        ("profile", "profile"),
        ("ram_mb", "guest RAM (MiB)"),
        ("seed", "seed"),
        ("kfi", "kfi (commit)"),
        ("host", "host"),
    ];
    let mut columns: Vec<Col> = ids.iter().map(|(i, h)| col(i, h)).collect();
    columns.push(col("n", "experiments"));
    let mixed: Vec<String> = environments
        .iter()
        .filter(|(_, e)| e.len() > 1)
        .map(|(c, e)| {
            format!(
                "campaign `{c}` mixes {} environments ({})",
                e.len(),
                e.iter().cloned().collect::<Vec<_>>().join("; ")
            )
        })
        .collect();
    let mut note = "Hashes and build ids are shortened to 12 digits (the records hold them whole); image packages: \
                    hash of the debian image's installed package list, kept in the store; unrecorded: a record of \
                    a kfi that did not record it."
        .to_string();
    if !mixed.is_empty() {
        note = format!("Mixed results (run with --allow-mixed): {}. {note}", mixed.join("; "));
    }
    Table {
        title: "Provenance".into(),
        columns,
        rows: by
            .into_iter()
            .map(|(k, n)| {
                let mut row: Vec<Cell> = k.into_iter().map(Cell::Text).collect();
                row.push(Cell::Count(n));
                row
            })
            .collect(),
        note,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;

    #[test]
    fn stage_medians_group_by_the_strategy_that_ran_and_leave_out_stages_that_never_happened() {
        let mut records = fixture::records();
        assert!(recovery_stages(&records).is_none(), "the fixture keeps no stages");
        let mut with = 0;
        for (i, r) in records.iter_mut().enumerate() {
            let Some(rec) = r.recovery.as_mut().filter(|x| x.recovered) else { continue };
            let restored = rec.used == RecordedStrategy::ServiceRestore;
            rec.stages = Some(RecoveryStages {
                data_mount_s: (!restored).then_some(0.5 + i as f64 * 0.01),
                database_s: None,
                first_correct_s: Some(0.25),
            });
            with += 1;
        }
        let medians = stage_medians(&records);
        assert_eq!(medians.iter().map(|m| m.n).sum::<usize>(), with);
        for m in &medians {
            assert_eq!(m.stages[3], None, "no database in the fixture: {m:?}");
            assert_eq!(m.stages[4], Some(0.25));
            assert_eq!(m.stages[2].is_none(), m.strategy == RecordedStrategy::ServiceRestore, "{m:?}");
        }
        let table = recovery_stages(&records).unwrap();
        assert_eq!(table.rows.len(), medians.len());
        assert!(table.columns.iter().any(|c| c.header == "database start (s)"));
        assert!(table.to_markdown().contains('–'), "a stage that never happened shows a dash");
    }

    #[test]
    fn the_provenance_table_says_when_a_campaign_is_mixed() {
        let mut records = fixture::records();
        assert!(!provenance(&records).note.contains("Mixed"));
        records[3].provenance.kernel_version = "6.1.0-57-amd64".into();
        let note = provenance(&records).note;
        assert!(note.contains("campaign `fixture` mixes 2 environments"), "{note}");
        assert!(note.contains("kernel 6.1.0-57-amd64"), "{note}");
    }
}

#[cfg(test)]
mod needing_recovery_tests {
    use super::needing_recovery;
    use crate::fixture;
    use crate::record::{Injection, RecordedCause, RecordedModel, RecordedOutcome, RecordedStrategy, RecoveryRecord};

    /// Failures a recovery acted on are counted, those not back named;
    /// an oops that left the service failing with no recovery is named
    /// too, one after which the service answered is not.
    #[test]
    fn failures_needing_recovery_are_recovered_or_named() {
        let fault = |i: u64, outcome: RecordedOutcome, recovered: Option<bool>, correct_after: f64| {
            let mut r = fixture::blank(i, &format!("fault={i} strategy=service-restore rep=0"));
            r.injection = Injection::Fault {
                model: RecordedModel::Nop,
                subsystem: None,
                function: None,
                description: String::new(),
                spec: serde_json::Value::Null,
                activated: true,
                activation_unknown: None,
                activation_s: Some(0.0),
                propagation: None,
                profile: None,
                class_weight: None,
                surfaced_in: None,
            };
            r.outcome = outcome;
            r.recovery = recovered.map(|recovered| RecoveryRecord {
                requested: RecordedStrategy::ServiceRestore,
                used: RecordedStrategy::ServiceRestore,
                fallback_reason: None,
                cause: RecordedCause::GuestPanicked,
                recovered,
                detect_s: 0.0,
                restart_s: 0.0,
                service_s: 0.0,
                on_standby: None,
                stages: None,
            });
            r.metrics.insert(crate::figures::names::CORRECT_AFTER_FAILURE.into(), correct_after);
            r
        };
        let records = [
            fault(0, RecordedOutcome::Panic, Some(true), 0.0),
            fault(1, RecordedOutcome::Panic, Some(false), 0.0),
            fault(2, RecordedOutcome::Oops, None, 0.0),
            fault(3, RecordedOutcome::Oops, None, 12.0),
            fault(4, RecordedOutcome::Benign, None, 0.0),
        ];
        let n = needing_recovery(&records);
        assert_eq!(n.acted_on, 2);
        assert_eq!(n.not_back.iter().map(|r| r.experiment).collect::<Vec<_>>(), [1]);
        assert_eq!(n.left_failing.iter().map(|r| r.experiment).collect::<Vec<_>>(), [2]);
    }
}
