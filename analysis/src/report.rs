//! `report.md`, data exports and figures for a set of records: what
//! `kfi reproduce` writes after a campaign and `kfi report RESULTS_DIR`
//! regenerates from the store alone.
//!
//! Layout under the output directory:
//! `report.md`, `data/experiments.csv`, `data/experiments.parquet`,
//! `data/timeline.csv` (when any record has a timeline), `figures/*.svg`
//! and `figures/*.png`. The output is a function of the records only (no
//! dates, no host paths), so regenerating it from the same store gives the
//! same files.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::figures::{self, Figure, FigureError};
use crate::frame::{self, DataFrameError};
use crate::record::{ExperimentRecord, RecordedProfile, RecordedScope, RecordedStrategy, RecordedWorkload};
use crate::stats::definitions::DEFAULT_MIN_OUTAGE_S;
use crate::stats::Summary;
use crate::store::{CampaignMeta, Store, StoreError, STORE_FILE};
use crate::tables::{self, DowntimeStats, Table, PUBLISHED_REDUCTION};

/// Errors writing a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Nothing to report on.
    #[error("no experiment records in {what}; run the campaign first (`kfi campaign run FILE`)")]
    NoRecords {
        /// Where records were looked for.
        what: String,
    },
    /// The store has no such campaign.
    #[error("campaign `{campaign}` is not in {store} (it holds: {available}); name one of those")]
    UnknownCampaign {
        /// Store file.
        store: PathBuf,
        /// Campaign asked for.
        campaign: String,
        /// Campaigns present.
        available: String,
    },
    /// There is no store where one was expected.
    #[error("no campaign store at {path}; pass a results directory that a campaign wrote (it holds {STORE_FILE})")]
    NoStore {
        /// Path looked at.
        path: PathBuf,
    },
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Exporting data failed.
    #[error(transparent)]
    Frame(#[from] DataFrameError),
    /// Drawing a figure failed.
    #[error(transparent)]
    Figure(#[from] FigureError),
    /// Building a DataFrame for a table failed.
    #[error("cannot build the DataFrame of table `{table}`")]
    Table {
        /// Table title.
        table: String,
        /// Underlying error.
        #[source]
        source: polars::error::PolarsError,
    },
    /// Writing a file or directory failed.
    #[error("cannot write {path}; check that the output directory is writable")]
    Io {
        /// Path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// The comparison the report's first line states.
#[derive(Debug, Clone, PartialEq)]
pub struct Headline {
    /// Strategy compared with full reboot.
    pub strategy: RecordedStrategy,
    /// Workload.
    pub workload: RecordedWorkload,
    /// Failure class (`crash:sysrq`, `injected fault`).
    pub failure: String,
    /// `1 - median(strategy) / median(full-reboot)`.
    pub reduction: f64,
    /// Recovered experiments of the strategy.
    pub n: usize,
    /// Recovered full-reboot experiments.
    pub n_reference: usize,
    /// Median downtime of the strategy, seconds.
    pub median_s: f64,
    /// Median downtime of full reboot, seconds.
    pub reference_median_s: f64,
    /// Guest profile(s) of these experiments.
    pub profile: String,
    /// Accelerator(s) of these experiments, upper case.
    pub accel: String,
    /// Experiments of the strategy that fell back to another one (the
    /// downtime then is the other strategy's): left out of the figure when
    /// some ran as the strategy itself, the whole figure when none did.
    pub fallbacks: usize,
    /// The strategies that ran instead, `/`-joined.
    pub fell_back_to: String,
    /// Some experiment ran as the strategy itself: the figure is its own.
    /// When none did, the figure is the fallback's and is credited to it.
    pub ran_as_itself: bool,
    /// The server that answered the workload (`busybox httpd` on tiny,
    /// Apache on debian), in words.
    pub server: String,
    /// The same reduction by the availability probe's outages, when the
    /// records have them.
    pub probe_reduction: Option<f64>,
}

/// What [`write_report`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSummary {
    /// The report's first line.
    pub headline: String,
    /// The numbers behind it, when the data has a comparison.
    pub comparison: Option<Headline>,
    /// Records reported on.
    pub experiments: usize,
    /// `report.md`.
    pub report: PathBuf,
    /// `data/experiments.csv`.
    pub csv: PathBuf,
    /// `data/experiments.parquet`.
    pub parquet: PathBuf,
    /// `data/timeline.csv`, when any record has a timeline.
    pub timeline_csv: Option<PathBuf>,
    /// Figures written.
    pub figures: Vec<Figure>,
}

/// Picks the comparison for the first line: `service-restore` if measured,
/// else the strategy with the largest reduction; crashes before injected
/// faults; then the group with most experiments.
pub fn headline(records: &[ExperimentRecord]) -> Option<Headline> {
    let stats = tables::downtime_stats(records);
    // The full-reboot row of a strategy's (workload, failure class) group.
    let full_reboot = |s: &DowntimeStats| {
        stats
            .iter()
            .find(|r| r.workload == s.workload && r.failure == s.failure && r.strategy == RecordedStrategy::FullReboot)
    };
    let rank = |a: &DowntimeStats, b: &DowntimeStats| {
        let key = |s: &DowntimeStats| {
            (
                s.strategy == RecordedStrategy::ServiceRestore,
                s.failure.starts_with("crash:"),
                s.summary.map_or(0, |x| x.n),
            )
        };
        key(a).cmp(&key(b)).then_with(|| a.reduction.unwrap_or(0.0).total_cmp(&b.reduction.unwrap_or(0.0)))
    };
    let mut best: Option<&DowntimeStats> = None;
    // Among equals the first in table order wins.
    for s in stats
        .iter()
        .filter(|s| s.strategy != RecordedStrategy::FullReboot && s.reduction.is_some() && s.summary.is_some())
    {
        if best.is_none_or(|b| rank(s, b) == std::cmp::Ordering::Greater) {
            best = Some(s);
        }
    }
    let best = best?;
    let reference = full_reboot(best).and_then(|r| r.summary)?;
    let summary = best.summary?;
    let in_group: Vec<&ExperimentRecord> = records
        .iter()
        .filter(|r| r.workload == best.workload && tables::failure_class(r) == best.failure)
        .filter(|r| {
            r.recovery
                .as_ref()
                .is_some_and(|x| x.requested == best.strategy || x.requested == RecordedStrategy::FullReboot)
        })
        .collect();
    let joined = |f: &dyn Fn(&ExperimentRecord) -> String| {
        in_group.iter().map(|r| f(r)).collect::<BTreeSet<_>>().into_iter().collect::<Vec<_>>().join("/")
    };
    let fell_back: BTreeSet<RecordedStrategy> = in_group
        .iter()
        .filter_map(|r| r.recovery.as_ref())
        .filter(|x| x.requested == best.strategy && x.used != x.requested)
        .map(|x| x.used)
        .collect();
    // The figure belongs to what ran: the experiments that ran as the
    // strategy itself, or, when every one fell back, the fallback's.
    let requested: Vec<&ExperimentRecord> = in_group
        .iter()
        .copied()
        .filter(|r| r.recovery.as_ref().is_some_and(|x| x.requested == best.strategy))
        .collect();
    let as_itself: Vec<&ExperimentRecord> =
        requested.iter().copied().filter(|r| r.recovery.as_ref().is_some_and(|x| x.used == x.requested)).collect();
    let ran_as_itself = !as_itself.is_empty();
    let credited = if ran_as_itself { as_itself } else { requested };
    let credited: Vec<&ExperimentRecord> = credited.into_iter().filter(|r| tables::recovered(r)).collect();
    let (summary, probe_reduction) = if ran_as_itself && best.fallbacks > 0 {
        let own = Summary::of(&credited.iter().filter_map(|r| r.downtime_s).collect::<Vec<_>>())?;
        let probe_reference = full_reboot(best).and_then(|r| r.probe);
        let probed = Summary::of(&credited.iter().filter_map(|r| r.probe_outage_s).collect::<Vec<_>>());
        let probe_reduction = match (probed, probe_reference) {
            (Some(p), Some(r)) if r.median > 0.0 => Some(1.0 - p.median / r.median),
            _ => None,
        };
        (own, probe_reduction)
    } else {
        (summary, best.probe_reduction)
    };
    if reference.median <= 0.0 {
        return None;
    }
    Some(Headline {
        probe_reduction,
        fallbacks: best.fallbacks,
        fell_back_to: fell_back.iter().map(|s| s.name()).collect::<Vec<_>>().join("/"),
        ran_as_itself,
        server: joined(&|r| server(r.provenance.profile, r.workload).to_string()),
        strategy: best.strategy,
        workload: best.workload,
        failure: best.failure.clone(),
        reduction: 1.0 - summary.median / reference.median,
        n: summary.n,
        n_reference: reference.n,
        median_s: summary.median,
        reference_median_s: reference.median,
        profile: joined(&|r| r.provenance.profile.to_string()),
        accel: joined(&|r| r.provenance.accel.name().to_uppercase()),
    })
}

/// The server that answered a workload on a guest profile, in words: the
/// tiny guest's "apache" workload is busybox httpd serving the static
/// document set (Apache runs only in the debian guest).
fn server(profile: RecordedProfile, workload: RecordedWorkload) -> &'static str {
    match (profile, workload) {
        (RecordedProfile::Tiny, RecordedWorkload::Apache) => "static documents from busybox httpd",
        (RecordedProfile::Debian, RecordedWorkload::Apache) => "static documents from Apache",
        (_, RecordedWorkload::Rubis) => "RUBiS on Apache, PHP and MariaDB",
    }
}

/// Whether the published figure (snapshot-based recovery, "about 90%")
/// measured the same thing as `strategies` (`/`-joined names): each a
/// restore from a phase or service snapshot, not a reboot of any kind.
fn published_compares(strategies: &str) -> bool {
    strategies.split('/').all(|s| {
        s.parse().is_ok_and(|s| matches!(s, RecordedStrategy::ServiceRestore | RecordedStrategy::PhaseRestore))
    })
}

/// The report's first line: the figure credited to the strategy that ran,
/// and the published figure beside it only where the same thing was
/// measured (a snapshot restore against a full reboot).
pub fn headline_line(h: Option<&Headline>, experiments: usize) -> String {
    let Some(h) = h else {
        return format!("Measured: no downtime comparison with full reboot in these {experiments} experiments.");
    };
    let verb = if h.reduction >= 0.0 { "cuts" } else { "raises" };
    let n = match (h.ran_as_itself && h.fallbacks > 0, h.n == h.n_reference) {
        // Fallbacks measured another strategy's downtime: left out, and said so.
        (true, _) => format!(
            "n={} that ran as {} vs {} full reboots; {} more fell back to {} and are left out",
            h.n, h.strategy, h.n_reference, h.fallbacks, h.fell_back_to
        ),
        (false, true) => format!("n={}", h.n),
        (false, false) => format!("n={} vs {} full reboots", h.n, h.n_reference),
    };
    let probe =
        h.probe_reduction.map_or(String::new(), |p| format!(", by the availability probe's outage {:.1}%", 100.0 * p));
    let setting = format!("{} guest, {}, {}, {}", h.profile, h.accel, h.server, h.failure);
    let published = |strategies: &str| {
        if published_compares(strategies) {
            format!("; published: about {:.0}%.", PUBLISHED_REDUCTION * 100.0)
        } else {
            ".".to_string()
        }
    };
    if !h.ran_as_itself {
        return format!(
            "Measured: {} never ran as itself: all {} of its experiments fell back to {}, which {verb} client-seen \
             downtime by {:.1}%{probe} vs full reboot (median, {n}, {setting}){}",
            h.strategy,
            h.fallbacks,
            h.fell_back_to,
            100.0 * h.reduction.abs(),
            published(&h.fell_back_to)
        );
    }
    format!(
        "Measured: {} {verb} client-seen downtime by {:.1}%{probe} vs full reboot (median, {n}, {setting}){}",
        h.strategy,
        100.0 * h.reduction.abs(),
        published(h.strategy.name())
    )
}

/// The report's method section: what its statistics are, and how the
/// downtimes, outcomes and propagation verdicts its records hold were
/// decided, in the words the code's documentation uses
/// ([`crate::stats::definitions`]); each part only when records have it.
fn method(records: &[ExperimentRecord], campaigns: &[CampaignMeta]) -> String {
    let mut text = "\n## Method\n\nMedians are middle values (mean of the two middle ones for even n); p95 \
                    interpolates linearly between order statistics (type 7); the 95% confidence interval of the \
                    mean uses Student's t with n−1 degrees of freedom."
        .to_string();
    text += " Shares come with Wilson's 95% score interval.";
    if records.iter().any(|r| r.recovery.is_some()) {
        text += " ";
        text += crate::stats::definitions::DOWNTIME;
        if records.iter().any(|r| {
            r.params.get(figures::names::DOWNTIME_ANSWERS).is_some_and(|v| v == figures::names::DATABASE_PAGES)
        }) {
            text += " ";
            text += crate::stats::definitions::RUBIS_DOWNTIME_ANSWERS;
        }
        text += " Experiments whose service did not come back are counted as not recovered and left out of the \
                 downtime statistics.";
        let gated = records
            .iter()
            .filter(|r| r.recovery.is_some())
            .all(|r| r.metrics.contains_key(figures::names::ANSWERED_BEFORE_INJECTION_S));
        if gated {
            text += " Every failure was injected within 0.1 s of a correct answer to the workload's clients, so a \
                     wait they were already in before it does not count as its downtime.";
        }
        text += if records.iter().any(|r| r.probe_outage_s.is_some()) {
            " The availability probe, independent of those clients, asks for the index page every 10 ms (open \
             loop, 1 s timeout) through every experiment and the golden run; its outage is the same measure over \
             its requests, which are not counted as the workload's."
        } else {
            " These records were made before the availability probe existed: they have no probe outage."
        };
    }
    text += &outcome_method(records, campaigns);
    text += &scope_method(records);
    text + "\n"
}

/// Which experiments' guests booted with a crash kernel reserved
/// (kexec-reboot's), and with how much RAM, against the others'.
fn crash_kernel_line(records: &[ExperimentRecord]) -> Option<String> {
    let name = figures::names::CRASH_KERNEL_MIB;
    let reserved: BTreeSet<(String, u32)> =
        records.iter().filter_map(|r| Some((r.params.get(name)?.clone(), r.provenance.ram_mb))).collect();
    if reserved.is_empty() {
        return None;
    }
    let others: BTreeSet<u32> =
        records.iter().filter(|r| !r.params.contains_key(name)).map(|r| r.provenance.ram_mb).collect();
    let with: Vec<String> = reserved.iter().map(|(mib, ram)| format!("{mib} MiB reserved of {ram} MiB")).collect();
    let without: Vec<String> = others.iter().map(|ram| format!("{ram} MiB")).collect();
    Some(format!(
        "kexec-reboot's guests booted with a crash kernel reservation (`crashkernel=`, {}) and the crash kernel \
         loaded, from a golden snapshot of their own; the other strategies' guests had none ({}).",
        with.join(", "),
        if without.is_empty() { "none ran".to_string() } else { without.join(", ") }
    ))
}

/// Where the phase restores of the records started from: each guest
/// profile's phase boundary as the records name it.
fn phase_boundary_line(records: &[ExperimentRecord]) -> Option<String> {
    let name = figures::names::PHASE_BOUNDARY;
    let phase_restored = |r: &&ExperimentRecord| {
        r.recovery.as_ref().is_some_and(|x| x.used == crate::record::RecordedStrategy::PhaseRestore)
    };
    let boundaries: BTreeSet<(String, String)> = records
        .iter()
        .filter(phase_restored)
        .filter_map(|r| Some((r.provenance.profile.to_string(), r.params.get(name)?.clone())))
        .collect();
    if boundaries.is_empty() {
        return None;
    }
    let named: Vec<String> = boundaries.iter().map(|(profile, b)| format!("`{b}` on the {profile} guest")).collect();
    Some(format!(
        "Phase restores started from the phase snapshot taken at the guest profile's boundary ({}): what runs \
         there does not depend on the data disk; the restore mounts the data disk as it is now and starts the \
         rest (on debian: Apache with PHP run at the boundary, MariaDB starts after it).",
        named.join(", ")
    ))
}

/// How the fault experiments' outcomes were decided.
fn outcome_method(records: &[ExperimentRecord], campaigns: &[CampaignMeta]) -> String {
    let faults: Vec<&ExperimentRecord> =
        records.iter().filter(|r| matches!(r.injection, crate::Injection::Fault { .. })).collect();
    if faults.is_empty() {
        return String::new();
    }
    let mut text = format!("\n\n{}", crate::stats::definitions::OUTCOMES);
    let judged = |r: &&ExperimentRecord| r.metrics.contains_key(figures::names::LONGEST_OUTAGE_S);
    let mut thresholds: Vec<f64> = campaigns
        .iter()
        .filter(|c| faults.iter().any(|r| r.campaign == c.name))
        .map(|c| {
            let t = c.definition.get("observe").and_then(|o| o.get("min_outage_s")).and_then(|v| v.as_f64());
            t.unwrap_or(DEFAULT_MIN_OUTAGE_S)
        })
        .collect();
    thresholds.sort_by(f64::total_cmp);
    thresholds.dedup();
    if faults.iter().all(judged) {
        let threshold = match thresholds[..] {
            [one] => one,
            _ => DEFAULT_MIN_OUTAGE_S,
        };
        let _ = write!(text, " The service-error rule: {}.", crate::stats::definitions::service_error(threshold));
        if thresholds.len() > 1 {
            let listed: Vec<String> = thresholds.iter().map(f64::to_string).collect();
            let _ = write!(text, " The campaigns used outage thresholds of {} s.", listed.join(", "));
        }
    } else {
        text += " Some of these records were made before that rule: in them any failed or wrong answer after the \
                 injection made a service error, and a QEMU exit was recorded as a panic.";
    }
    text
}

/// How the propagation verdicts were decided, with the minimum watch and
/// the interrupt rule the records state.
fn scope_method(records: &[ExperimentRecord]) -> String {
    let traced: Vec<&serde_json::Value> = records.iter().filter_map(tables::propagation).map(|p| &p.detail).collect();
    if traced.is_empty() {
        return String::new();
    }
    let mut text = format!("\n\n{}", crate::stats::definitions::SCOPES);
    let rules: BTreeSet<(String, String)> = traced
        .iter()
        .filter_map(|d| {
            let watch = d.get("min_watch_s")?.as_f64()?;
            let irq = d.get("interrupts")?.as_str()?;
            Some((format!("{watch}"), irq.to_string()))
        })
        .collect();
    for (watch, irq) in &rules {
        let rule = match irq.as_str() {
            "task" => "an interrupt taken on a task counted as that task's context",
            _ => "an interrupt handler was a context of its own, also on the task it interrupted",
        };
        let _ = write!(text, " Minimum watch: {watch} s; {rule} (`trace.interrupts = \"{irq}\"`).");
    }
    if rules.is_empty() {
        text += " These records were made before the minimum watch and the latent verdict existed: an error \
                 nothing read was then recorded process-local, and reads by the oops printer counted.";
    }
    text
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io { path: path.to_path_buf(), source }
}

fn rel(path: &Path, base: &Path) -> String {
    path.strip_prefix(base).unwrap_or(path).to_string_lossy().into_owned()
}

fn push_table(md: &mut String, t: &Table) {
    let _ = write!(md, "\n## {}\n\n{}", t.title, t.to_markdown());
}

fn check_tables(tables: &[&Table]) -> Result<(), ReportError> {
    for t in tables {
        t.to_dataframe().map_err(|source| ReportError::Table { table: t.title.clone(), source })?;
    }
    Ok(())
}

/// Writes the report, data exports and figures for `records` under
/// `out_dir` (created if needed); figures from an earlier run that the
/// data no longer supports are removed.
pub fn write_report(records: &[ExperimentRecord], out_dir: &Path) -> Result<ReportSummary, ReportError> {
    write_report_with(records, &[], out_dir)
}

/// [`write_report`] with the stored campaign descriptions (file hash, seed,
/// size), which let the report say whether each campaign is complete.
pub fn write_report_with(
    records: &[ExperimentRecord],
    campaigns: &[CampaignMeta],
    out_dir: &Path,
) -> Result<ReportSummary, ReportError> {
    if records.is_empty() {
        return Err(ReportError::NoRecords { what: "the records given".into() });
    }
    let data = out_dir.join("data");
    let figs_dir = out_dir.join("figures");
    std::fs::create_dir_all(&data).map_err(io_err(&data))?;
    std::fs::create_dir_all(&figs_dir).map_err(io_err(&figs_dir))?;

    let build = |what| move |source| DataFrameError::Build { what, source };
    let csv = data.join("experiments.csv");
    let parquet = data.join("experiments.parquet");
    let mut df = frame::records_frame(records).map_err(build("experiments"))?;
    frame::write_csv(&mut df, &csv)?;
    frame::write_parquet(&mut df, &parquet)?;
    let timeline_csv = if records.iter().any(|r| !r.timeline.is_empty()) {
        let path = data.join("timeline.csv");
        let mut tl = frame::timeline_frame(records).map_err(build("timeline"))?;
        frame::write_csv(&mut tl, &path)?;
        Some(path)
    } else {
        None
    };

    let figures = figures::write_figures(records, &figs_dir)?;
    remove_stale_figures(&figs_dir, &figures)?;

    let head = headline(records);
    let first = headline_line(head.as_ref(), records.len());
    let mut md = String::new();
    md.push_str(&first);
    md.push('\n');
    let names: BTreeSet<&str> = records.iter().map(|r| r.campaign.as_str()).collect();
    let _ = write!(
        md,
        "\n# Report: {}\n\n{} experiments. Generated from the stored records (regenerate with `kfi report RESULTS_DIR`); data in \
         [data/experiments.csv](data/experiments.csv) and [data/experiments.parquet](data/experiments.parquet)",
        names.iter().copied().collect::<Vec<_>>().join(", "),
        records.len()
    );
    if let Some(tl) = &timeline_csv {
        let _ = write!(md, ", timelines in [{0}]({0})", rel(tl, out_dir));
    }
    md.push_str(".\n");
    if let Some(h) = &head {
        let ran = if h.ran_as_itself { h.strategy.name() } else { h.fell_back_to.as_str() };
        let _ = write!(
            md,
            "\nHeadline numbers: median downtime {:.3} s with {ran} (n={}) against {:.3} s with full reboot (n={})",
            h.median_s, h.n, h.reference_median_s, h.n_reference,
        );
        let _ = if published_compares(ran) {
            writeln!(
                md,
                "; the paper reports about {:.0}% less downtime for its snapshot restores.",
                PUBLISHED_REDUCTION * 100.0
            )
        } else {
            writeln!(md, ".")
        };
    }
    if !campaigns.is_empty() {
        md.push_str("\n## Campaigns\n\n| campaign | experiment file sha256 | seed | stored | status |\n| --- | --- | ---: | ---: | --- |\n");
        for c in campaigns {
            let stored = records.iter().filter(|r| r.campaign == c.name).count() as u64;
            let status =
                if stored >= c.total { "complete".to_string() } else { format!("{} missing", c.total - stored) };
            let _ =
                writeln!(md, "| {} | `{}` | {} | {stored} of {} | {status} |", c.name, c.file_sha256, c.seed, c.total);
        }
    }

    let downtime = tables::downtime(records);
    let by_model = tables::outcomes_by_model(records);
    let by_subsystem = tables::outcomes_by_subsystem(records);
    let activation = tables::activation(records);
    let success = tables::recovery_success(records);
    let ram = tables::metric_vs_param(
        records,
        figures::names::RESTORE_S,
        "(s)",
        figures::names::RAM_MB,
        Some(figures::names::RESTORE_SERIES),
    )
    .map(|t| Table { title: "Restore time vs guest RAM".into(), ..t });
    let storage = tables::metric_vs_param(
        records,
        figures::names::RESTORE_S,
        "(s)",
        figures::names::STORAGE,
        Some(figures::names::RESTORE_SERIES),
    )
    .map(|t| Table { title: "Restore time vs storage".into(), ..t });
    let progression = tables::failure_progression(records);
    let published: Vec<Table> = [
        crate::published::crash_causes(records),
        crate::published::crash_measures(records),
        crate::published::oops_and_scope(records),
    ]
    .into_iter()
    .flatten()
    .collect();
    let scope_model = tables::scope_by_model(records);
    let scope_subsystem = tables::scope_by_subsystem(records);
    let overhead = tables::overhead(records);
    let provenance = tables::provenance(records);
    let stages = tables::recovery_stages(records);
    let mut all: Vec<&Table> = vec![
        &downtime,
        &by_model,
        &by_subsystem,
        &activation,
        &scope_model,
        &scope_subsystem,
        &success,
        &overhead,
        &provenance,
        &progression,
    ];
    all.extend(published.iter());
    all.extend(ram.iter());
    all.extend(storage.iter());
    all.extend(stages.iter());
    check_tables(&all)?;

    let link = |md: &mut String, prefix: &str| {
        for f in figures.iter().filter(|f| f.name.starts_with(prefix)) {
            let _ = write!(
                md,
                "\n![{}]({})\n\n[SVG]({}) · [PNG]({})\n",
                f.title,
                rel(&f.svg, out_dir),
                rel(&f.svg, out_dir),
                rel(&f.png, out_dir)
            );
        }
    };
    if !downtime.rows.is_empty() {
        push_table(&mut md, &downtime);
        if let Some(gaps) = tables::downtime_gaps(records) {
            let _ = writeln!(md, "\n{gaps}");
        }
        if let Some(line) = crash_kernel_line(records) {
            let _ = writeln!(md, "\n{line}");
        }
        if let Some(line) = phase_boundary_line(records) {
            let _ = writeln!(md, "\n{line}");
        }
        link(&mut md, "downtime-");
        if figures.iter().any(|f| f.name.starts_with("throughput-")) {
            md.push_str("\n## Throughput around the failure\n\nCorrect answers per second, mean over the experiments of each strategy, against time relative to the failure.\n");
            link(&mut md, "throughput-");
        }
        push_table(&mut md, &success);
        if let Some(stages) = &stages {
            push_table(&mut md, stages);
            link(&mut md, "stages-");
        }
    }
    if !by_model.rows.is_empty() {
        push_table(&mut md, &by_model);
        link(&mut md, "outcomes");
    }
    if !progression.rows.is_empty() {
        push_table(&mut md, &progression);
        let unattributed = tables::unattributed(records);
        if !unattributed.is_empty() {
            let keys: Vec<String> = unattributed.iter().map(|r| format!("{} ({})", r.key, r.outcome)).collect();
            let _ = writeln!(
                md,
                "\n{} failures had no evidence that their fault caused them (not activated, counted in the tables \
                 above but flagged unattributed): {}.",
                unattributed.len(),
                keys.join("; ")
            );
        }
        let needing = tables::needing_recovery(records);
        if needing.acted_on > 0 {
            let _ = write!(
                md,
                "\n{} fault experiments failed in a way the VMM detected (panic, hang, VM exit) and were recovered by \
                 their strategy; ",
                needing.acted_on
            );
            if needing.not_back.is_empty() {
                md.push_str("every one came back.\n");
            } else {
                let keys: Vec<String> = needing
                    .not_back
                    .iter()
                    .map(|r| {
                        let why = r.recovery.as_ref().and_then(|x| x.fallback_reason.clone()).unwrap_or_default();
                        let why = if why.is_empty() { String::new() } else { format!(": {why}") };
                        format!("{} ({}{why})", r.key, r.outcome)
                    })
                    .collect();
                let _ = writeln!(md, "{} did not come back: {}.", needing.not_back.len(), keys.join("; "));
            }
        }
        if !needing.left_failing.is_empty() {
            let keys: Vec<String> = needing
                .left_failing
                .iter()
                .map(|r| format!("{} ({})", r.key.split(' ').next().unwrap_or(&r.key), r.outcome))
                .collect();
            let _ = writeln!(
                md,
                "\n{} more failed with the kernel alive and the service still failing when the watch ended (no correct \
                 answer after the failure): a campaign's VMM acts on a panic, a hang or the VM gone, not on an oops or \
                 a service error, so none was recovered: {}.",
                needing.left_failing.len(),
                keys.join(", ")
            );
        }
    }
    if !by_subsystem.rows.is_empty() {
        push_table(&mut md, &by_subsystem);
        let (unknown, faults) = tables::unknown_subsystems(records);
        let _ = writeln!(
            md,
            "\nSubsystem unknown (no source file for the target, or a register, stack or heap flip that never landed): {unknown} of {faults} fault experiments ({:.1}%).",
            100.0 * unknown as f64 / faults.max(1) as f64
        );
    }
    if !activation.rows.is_empty() {
        push_table(&mut md, &activation);
        let (profiles, image) = tables::fault_sources(records);
        if !profiles.is_empty() {
            let named: Vec<String> = profiles.iter().map(|(p, n)| format!("`{p}` ({n} experiments)")).collect();
            let _ = writeln!(
                md,
                "\nTargets of {} experiments were drawn from the golden-run profile {} (`profile.json` beside the store: what the kernel executed under this workload, counted by kfi's TCG plugin): code faults and register flips on executed instructions, applied at one of their first executions (at most the 8th, at most half the profile's count); data, stack and heap flips on a byte an executed instruction read, flipped just before that instruction runs. Activation is still observed, not assumed: a breakpoint sees the patched instruction run, a watchpoint the flipped byte read first, single steps the flipped register read first. Each record's `class_weight` is its instruction's executions in the profile's window.{}",
                profiles.values().sum::<usize>(),
                named.join(", "),
                if image > 0 { format!(" {image} experiments drew from the whole kernel image.") } else { String::new() }
            );
        }
    }
    if !scope_model.rows.is_empty() {
        let sum = tables::scope_summary(records);
        let count = |s: RecordedScope| sum.counts.get(&s).copied().unwrap_or(0);
        let _ = write!(
            md,
            "\n## Error propagation scope\n\n{} faults were traced (activated, or overwritten before use): {} masked, {} latent, {} process-local, {} \
             kernel-global, {} unknown.",
            sum.traced,
            count(RecordedScope::Masked),
            count(RecordedScope::Latent),
            count(RecordedScope::ProcessLocal),
            count(RecordedScope::KernelGlobal),
            count(RecordedScope::Unknown),
        );
        if let Some(share) = sum.local_share {
            let settled = count(RecordedScope::ProcessLocal) + count(RecordedScope::KernelGlobal);
            let interval = crate::stats::proportion_ci95(count(RecordedScope::ProcessLocal), settled)
                .map_or(String::new(), |(lo, hi)| format!(" (95% CI {:.1}-{:.1}%)", lo * 100.0, hi * 100.0));
            let _ = write!(
                md,
                " Of the {settled} settled errors (process-local or kernel-global), {:.1}%{interval} stayed \
                 process-local; the published study (Yoshimura, Yamada and Kono) found propagation mostly \
                 process-local (see the side-by-side table below).",
                share * 100.0
            );
        }
        if sum.surfaced_known > 0 {
            let _ = write!(
                md,
                " {} of {} failures with an oops surfaced in another subsystem than the injected one.",
                sum.surfaced_elsewhere, sum.surfaced_known
            );
        }
        md.push('\n');
        push_table(&mut md, &scope_model);
        link(&mut md, "propagation-scope");
        push_table(&mut md, &scope_subsystem);
    }
    if !published.is_empty() {
        md.push_str(
            "\n## Published results side by side\n\nEach table puts a measure computed from these records next \
             to the published figure it corresponds to, with the setups' differences in its note; neither \
             claims agreement.\n",
        );
        for t in &published {
            let _ = write!(md, "\n### {}\n\n{}", t.title, t.to_markdown());
        }
    }
    if let Some(t) = &ram {
        push_table(&mut md, t);
        link(&mut md, "restore-vs-ram");
    }
    if let Some(t) = &storage {
        push_table(&mut md, t);
        link(&mut md, "restore-vs-storage");
    }
    push_table(&mut md, &overhead);
    push_table(&mut md, &provenance);
    md.push_str(&method(records, campaigns));

    let report = out_dir.join("report.md");
    std::fs::write(&report, md).map_err(io_err(&report))?;
    Ok(ReportSummary {
        headline: first,
        comparison: head,
        experiments: records.len(),
        report,
        csv,
        parquet,
        timeline_csv,
        figures,
    })
}

fn remove_stale_figures(dir: &Path, keep: &[Figure]) -> Result<(), ReportError> {
    let keep: BTreeSet<&Path> = keep.iter().flat_map(|f| [f.svg.as_path(), f.png.as_path()]).collect();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let ours = path.extension().is_some_and(|e| e == "svg" || e == "png");
        if ours && !keep.contains(path.as_path()) {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// `kfi report RESULTS_DIR`: regenerates everything from the store alone.
/// `store_path` is the store file or a results directory holding
/// [`STORE_FILE`]; `campaign` picks one campaign, `None` reports every
/// campaign in the store.
pub fn report_from_store(
    store_path: &Path,
    campaign: Option<&str>,
    out_dir: &Path,
) -> Result<ReportSummary, ReportError> {
    let file = if store_path.is_dir() { store_path.join(STORE_FILE) } else { store_path.to_path_buf() };
    if !file.is_file() {
        return Err(ReportError::NoStore { path: file });
    }
    let store = Store::open_read_only(&file)?;
    let metas = store.campaigns()?;
    let (records, metas) = match campaign {
        Some(name) => {
            let Some(meta) = metas.iter().find(|m| m.name == name).cloned() else {
                return Err(ReportError::UnknownCampaign {
                    store: file,
                    campaign: name.into(),
                    available: metas.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "),
                });
            };
            (store.records(name)?, vec![meta])
        }
        None => (store.all_records()?, metas),
    };
    if records.is_empty() {
        return Err(ReportError::NoRecords { what: file.display().to_string() });
    }
    write_report_with(&records, &metas, out_dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;
    use crate::tables::Cell;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn fixture_gives_known_downtime_numbers() {
        let stats = tables::downtime_stats(&fixture::records());
        let get = |s: RecordedStrategy| stats.iter().find(|x| x.strategy == s).unwrap();
        let full = get(RecordedStrategy::FullReboot).summary.unwrap();
        let service = get(RecordedStrategy::ServiceRestore).summary.unwrap();
        let phase = get(RecordedStrategy::PhaseRestore);
        assert_eq!((full.n, full.median, full.mean), (5, 22.0, 22.0));
        assert!(close(full.p95, 23.8));
        assert!(close(service.median, 1.4) && close(service.mean, 1.4));
        assert!(close(get(RecordedStrategy::ServiceRestore).reduction.unwrap(), 1.0 - 1.4 / 22.0));
        assert!(close(phase.reduction.unwrap(), 1.0 - 7.0 / 22.0));
        assert_eq!(get(RecordedStrategy::FullReboot).reduction, Some(0.0));
        // t(4) * sd / sqrt(5), sd = sqrt(2.5)
        let (lo, hi) = full.ci95.unwrap();
        assert!((hi - 22.0 - 2.776_445 * 2.5_f64.sqrt() / 5_f64.sqrt()).abs() < 1e-5 && close(22.0 - lo, hi - 22.0));
        assert_eq!(
            stats.iter().map(|s| s.strategy.name()).collect::<Vec<_>>(),
            ["full-reboot", "phase-restore", "service-restore"]
        );

        let table = tables::downtime(&fixture::records());
        let md = table.to_markdown();
        assert!(md.contains("| apache | crash:sysrq | service-restore | 5 | 1.400 | 1.400 |"), "{md}");
        assert!(md.contains("93.6%"), "{md}");
        let df = table.to_dataframe().unwrap();
        assert_eq!(df.height(), 3);
        assert!(df.column("ci95_mean_s_lo").is_ok() && df.column("reduction_pct").is_ok());
    }

    #[test]
    fn fixture_gives_known_outcome_and_activation_numbers() {
        let records = fixture::records();
        let by_model = tables::outcomes_by_model(&records);
        let row = by_model.rows.iter().find(|r| r[0] == Cell::Text("reg-flip".into())).unwrap();
        assert_eq!(row[1], Cell::Count(10));
        let header: Vec<&str> = by_model.columns.iter().map(|c| c.header.as_str()).collect();
        assert_eq!(header, ["fault model", "n", "forced-crash", "panic", "oops", "benign", "not-activated"]);
        assert_eq!(row[3], Cell::CountPct(4, 40.0));
        assert_eq!(row[6], Cell::CountPct(2, 20.0));
        let sys = tables::outcomes_by_subsystem(&records);
        assert_eq!(sys.rows.len(), 2);
        let act = tables::activation(&records);
        assert_eq!(act.rows[0][2], Cell::Count(8));
        assert_eq!(act.rows[0][3], Cell::Count(0));
        assert_eq!(act.rows[0][4], Cell::Pct(Some(80.0)));
        assert_eq!(act.rows[0][5], Cell::Pct(Some(75.0)));
        // A flip whose activation could not be decided leaves the rate's denominator.
        let mut undecided = records.clone();
        let r = undecided.iter_mut().find(|r| r.outcome == crate::record::RecordedOutcome::NotActivated).unwrap();
        r.outcome = crate::record::RecordedOutcome::ActivationUnknown;
        if let crate::Injection::Fault { activation_unknown, .. } = &mut r.injection {
            *activation_unknown = Some("the CPU went idle (hlt)".into());
        }
        let act = tables::activation(&undecided);
        assert_eq!((&act.rows[0][3], &act.rows[0][4]), (&Cell::Count(1), &Cell::Pct(Some(800.0 / 9.0))));
        let ok = tables::recovery_success(&records);
        assert_eq!(ok.rows.len(), 3);
        assert!(ok.rows.iter().all(|r| r[3] == Cell::Pct(Some(100.0))));
        let ram = tables::metric_vs_param(&records, "restore_s", "(s)", "ram_mb", Some("reduction")).unwrap();
        let md = ram.to_markdown();
        assert!(md.contains("| off | 256 | 1 | 0.800 |") && md.contains("| on | 1024 | 1 | 0.900 |"), "{md}");
        assert!(tables::metric_vs_param(&records, "nothing", "(s)", "ram_mb", None).is_none());
        // A composite series splits by the parameters that vary, naming them.
        let mut mixed = records.clone();
        for r in mixed.iter_mut().filter(|r| r.params.contains_key("ram_mb")) {
            let path = if r.params["ram_mb"] == "256" { "lazy" } else { "streamed" };
            r.params.insert("restore_path".into(), path.into());
            r.params.insert("cache".into(), "warm".into());
        }
        let split = tables::metric_vs_param(&mixed, "restore_s", "(s)", "ram_mb", Some(figures::names::RESTORE_SERIES))
            .unwrap()
            .to_markdown();
        assert!(
            split.contains("| condition |") && split.contains("| restore_path=lazy, reduction=off | 256 |"),
            "{split}"
        );
        assert!(!split.contains("cache="), "a constant parameter is not a series: {split}");
        let over = tables::overhead(&records);
        assert_eq!(over.rows[0][4], Cell::Pct(Some(50.0)));
        for t in [by_model, sys, act, ok, ram, over, tables::provenance(&records)] {
            t.to_dataframe().unwrap();
        }
    }

    #[test]
    fn headline_states_measured_and_published_reduction() {
        let h = headline(&fixture::records()).unwrap();
        assert_eq!((h.strategy.name(), h.n, h.n_reference), ("service-restore", 5, 5));
        assert_eq!(
            headline_line(Some(&h), 31),
            "Measured: service-restore cuts client-seen downtime by 93.6% vs full reboot (median, n=5, tiny guest, \
             TCG, static documents from busybox httpd, crash:sysrq); published: about 90%."
        );
        // Fallbacks measured another strategy's downtime: they are left
        // out of the figure, and the line says so.
        let fall_back = |how_many: usize| {
            let mut records = fixture::records();
            for r in records
                .iter_mut()
                .filter(|r| r.recovery.as_ref().is_some_and(|x| x.requested == RecordedStrategy::ServiceRestore))
                .take(how_many)
            {
                r.recovery.as_mut().unwrap().used = RecordedStrategy::PhaseRestore;
                // The fallback's own (slower) downtime.
                r.downtime_s = Some(100.0);
            }
            records
        };
        let some = fall_back(2);
        let h = headline(&some).unwrap();
        assert_eq!((h.fallbacks, h.fell_back_to.as_str(), h.n, h.ran_as_itself), (2, "phase-restore", 3, true));
        assert!(h.median_s < 100.0, "the fallbacks' downtime is not the strategy's: {h:?}");
        let line = headline_line(Some(&h), 31);
        assert!(
            line.contains(
                "(median, n=3 that ran as service-restore vs 5 full reboots; 2 more fell back to phase-restore and \
                 are left out, tiny guest"
            ),
            "{line}"
        );
        // A strategy that always fell back is never credited with the
        // fallback's figure.
        let all = fall_back(5);
        let h = headline(&all).unwrap();
        assert!(!h.ran_as_itself && h.median_s == 100.0, "{h:?}");
        let line = headline_line(Some(&h), 31);
        assert!(
            line.starts_with(
                "Measured: service-restore never ran as itself: all 5 of its experiments fell back to phase-restore, \
                 which raises client-seen downtime by"
            ),
            "{line}"
        );
        // Without service-restore the best other strategy is named.
        let no_service: Vec<_> = fixture::records()
            .into_iter()
            .filter(|r| r.recovery.as_ref().is_none_or(|x| x.requested != RecordedStrategy::ServiceRestore))
            .collect();
        assert_eq!(headline(&no_service).unwrap().strategy, RecordedStrategy::PhaseRestore);
        // Nothing to compare.
        let line = headline_line(headline(&fixture::records()[15..]).as_ref(), 16);
        assert!(line.starts_with("Measured: no downtime comparison") && !line.contains("published"), "{line}");
    }

    #[test]
    fn a_gap_between_client_seen_downtime_and_the_probe_is_explained() {
        let mut records: Vec<ExperimentRecord> =
            fixture::records().into_iter().filter(|r| r.recovery.is_some()).take(3).collect();
        for (r, (d, p, pre)) in records.iter_mut().zip([(0.2, 0.19, 9), (1.2, 0.55, 0), (0.6, 0.3, 7)]) {
            r.downtime_s = Some(d);
            r.probe_outage_s = Some(p);
            r.timeline = bins(pre);
        }
        let text = tables::downtime_gaps(&records).unwrap();
        assert!(text.starts_with("Client-seen downtime and the probe's outage agree within 10% in 1 of 3"), "{text}");
        assert!(text.contains("They differ in 2:") && text.contains("(1.200 s against 0.550 s)"), "{text}");
        assert!(text.contains(&format!("In 1 of these ({})", records[1].key)), "{text}");
        assert!(!text.contains(&format!("({})", records[2].key)), "answered before the failure: {text}");
        // Records without a probe outage say nothing.
        let mut old = records.clone();
        old.iter_mut().for_each(|r| r.probe_outage_s = None);
        assert_eq!(tables::downtime_gaps(&old), None);
    }

    /// Timeline bins of 0.1 s from -1 s to +1 s with `pre` correct answers
    /// in each bin wholly before the failure.
    fn bins(pre: u64) -> Vec<crate::record::TimelineBin> {
        (-10..10)
            .map(|i| {
                let t_s = f64::from(i) * 0.1;
                crate::record::TimelineBin { t_s, correct: if i < 0 { pre } else { 5 }, failed: 0, p50_s: None }
            })
            .collect()
    }

    fn png_size(path: &Path) -> (u32, u32) {
        let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        // Not blank: more than a handful of distinct pixels.
        let distinct: BTreeSet<&[u8]> = buf.chunks(3).collect();
        assert!(distinct.len() > 8, "{} looks blank", path.display());
        (info.width, info.height)
    }

    #[test]
    fn report_writes_data_figures_and_first_line() {
        let dir = crate::testdir::TestDir::new();
        let out = dir.path().join("results");
        // A stale figure from an earlier run goes away.
        std::fs::create_dir_all(out.join("figures")).unwrap();
        std::fs::write(out.join("figures/old.svg"), "<svg/>").unwrap();
        let summary = write_report(&fixture::records(), &out).unwrap();
        let md = std::fs::read_to_string(out.join("report.md")).unwrap();
        assert_eq!(md.lines().next().unwrap(), summary.headline);
        assert!(summary.headline.starts_with("Measured: service-restore cuts client-seen downtime by 93.6%"));
        assert!(!out.join("figures/old.svg").exists());

        let names: Vec<&str> = summary.figures.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "downtime-apache-crash-sysrq",
                "throughput-apache-crash-sysrq",
                "outcomes",
                "propagation-scope",
                "restore-vs-ram",
                "restore-vs-storage"
            ]
        );
        let labels = [
            ("downtime-apache-crash-sysrq", "client-seen downtime (s)"),
            ("throughput-apache-crash-sysrq", "time relative to failure (s)"),
            ("outcomes", "share of experiments (%)"),
            ("propagation-scope", "share of traced faults (%)"),
            ("restore-vs-ram", "guest RAM (MiB)"),
            ("restore-vs-storage", "restore time (s)"),
        ];
        for (f, (name, label)) in summary.figures.iter().zip(labels) {
            assert_eq!(f.name, name);
            let svg = std::fs::read_to_string(&f.svg).unwrap();
            assert!(svg.contains(label), "{name}.svg lacks `{label}`");
            assert_eq!(png_size(&f.png), figures::SIZE);
            let bytes = std::fs::metadata(&f.png).unwrap().len();
            assert!(bytes > 8_000, "{name}.png is only {bytes} bytes");
            assert!(md.contains(&format!("figures/{name}.svg")), "report does not link {name}");
        }
        let downtime_svg = std::fs::read_to_string(&summary.figures[0].svg).unwrap();
        assert!(downtime_svg.contains("published: −90%"));

        let csv = std::fs::read_to_string(&summary.csv).unwrap();
        assert_eq!(csv.lines().count(), 32);
        assert!(csv.lines().next().unwrap().contains("downtime_s"));
        assert!(csv.lines().next().unwrap().contains("param_ram_mb") && csv.contains("metric_restore_s"));
        use polars::prelude::{ParquetReader, SerReader};
        let back = ParquetReader::new(std::fs::File::open(&summary.parquet).unwrap()).finish().unwrap();
        let frame = crate::frame::records_frame(&fixture::records()).unwrap();
        assert_eq!(back.shape(), frame.shape());
        assert!(back.equals_missing(&frame), "the Parquet file reads back as the frame");
        assert!(summary.timeline_csv.is_some());
        for section in ["Client-seen downtime per recovery strategy", "Outcomes per fault model", "Provenance"] {
            assert!(md.contains(section), "report lacks {section}");
        }

        // Regenerating gives the same report.
        let again = write_report(&fixture::records(), &out).unwrap();
        assert_eq!(std::fs::read_to_string(&again.report).unwrap(), md);
    }

    #[test]
    fn report_from_store_reads_the_stored_campaign() {
        let dir = crate::testdir::TestDir::new();
        let results = dir.path().join("results");
        let store = Store::open(results.join(STORE_FILE)).unwrap();
        store.begin_campaign(&fixture::meta()).unwrap();
        for r in fixture::downtime_records() {
            store.insert(&r).unwrap();
        }
        drop(store);
        let summary = report_from_store(&results, None, &results).unwrap();
        assert_eq!(summary.experiments, 15);
        let md = std::fs::read_to_string(&summary.report).unwrap();
        assert!(md.starts_with("Measured: service-restore cuts client-seen downtime by 93.6%"));
        assert!(md.contains("| fixture |") && md.contains("15 of 31 | 16 missing"), "{md}");
        assert_eq!(report_from_store(&results, Some("fixture"), &results).unwrap().experiments, 15);

        let err = report_from_store(&results, Some("nope"), &results).unwrap_err().to_string();
        assert!(err.contains("`nope` is not in") && err.contains("fixture"), "{err}");
        let err = report_from_store(&dir.path().join("empty"), None, &results).unwrap_err();
        assert!(matches!(err, ReportError::NoStore { .. }), "{err}");
        assert!(matches!(write_report(&[], &results).unwrap_err(), ReportError::NoRecords { .. }));
    }

    #[test]
    fn the_fixture_scope_summary_has_known_numbers() {
        let records = fixture::records();
        let sum = tables::scope_summary(&records);
        assert_eq!(sum.traced, 8);
        assert_eq!(sum.counts.get(&RecordedScope::ProcessLocal), Some(&4));
        assert_eq!(sum.counts.get(&RecordedScope::KernelGlobal), Some(&2));
        assert_eq!(sum.counts.get(&RecordedScope::Masked), Some(&1));
        assert_eq!(sum.counts.get(&RecordedScope::Unknown), Some(&1));
        assert!((sum.local_share.unwrap() - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!((sum.surfaced_known, sum.surfaced_elsewhere), (1, 1));
        let by_subsystem = tables::scope_by_subsystem(&records);
        let md = by_subsystem.to_markdown();
        assert!(md.contains("| mm | 4 |"), "{md}");
        assert!(md.contains("| fs | 4 |"), "{md}");
        let by_model = tables::scope_by_model(&records);
        assert_eq!(by_model.rows.len(), 1);
    }

    #[test]
    fn the_method_says_how_the_records_downtimes_were_measured() {
        let mut records = fixture::records();
        let text = method(&records, &[]);
        assert!(text.contains("from the end of the last correct answer"), "{text}");
        assert!(text.contains("made before the availability probe"), "{text}");
        records[0].probe_outage_s = Some(0.2);
        let text = method(&records, &[]);
        assert!(text.contains("index page every 10 ms") && !text.contains("availability probe existed"), "{text}");
        for r in &mut records {
            r.recovery = None;
        }
        let text = method(&records, &[]);
        assert!(!text.contains("Downtime") && !text.contains("probe"), "{text}");
    }

    /// The method section states the definitions the code documents and
    /// computes with (the same constants), with the campaign's threshold
    /// and the records' tracing rules.
    #[test]
    fn the_method_states_the_definitions_the_code_uses() {
        use crate::stats::definitions;
        let mut records = fixture::records();
        let text = method(&records, &[]);
        assert!(text.contains(definitions::DOWNTIME), "{text}");
        assert!(text.contains(definitions::OUTCOMES), "{text}");
        assert!(text.contains("made before that rule"), "fixture records predate the outage rule: {text}");
        assert!(text.contains(definitions::SCOPES), "{text}");
        assert!(text.contains("made before the minimum watch"), "{text}");
        for r in &mut records {
            r.metrics.insert(figures::names::LONGEST_OUTAGE_S.into(), 0.0);
            if let crate::Injection::Fault { propagation: Some(p), .. } = &mut r.injection {
                p.detail = serde_json::json!({ "min_watch_s": 1.0, "interrupts": "task" });
            }
        }
        let mut meta = fixture::meta();
        meta.definition = serde_json::json!({ "observe": { "min_outage_s": 3.5 } });
        let text = method(&records, &[meta]);
        assert!(text.contains(&definitions::service_error(3.5)), "{text}");
        assert!(!text.contains("made before that rule") && !text.contains("made before the minimum"), "{text}");
        assert!(text.contains("Minimum watch: 1 s") && text.contains("`trace.interrupts = \"task\"`"), "{text}");
    }
}
