//! Records as polars DataFrames (one row per experiment, flattened), and
//! their CSV and Parquet exports.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;

use polars::prelude::{Column, CsvWriter, DataFrame, ParquetCompression, ParquetWriter, PolarsResult, SerWriter};

use crate::record::{ExperimentRecord, Injection};

/// Errors of the exports.
#[derive(Debug, thiserror::Error)]
pub enum DataFrameError {
    /// Building the DataFrame failed.
    #[error("cannot build the {what} DataFrame")]
    Build {
        /// Which frame.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: polars::error::PolarsError,
    },
    /// Writing a file failed.
    #[error("cannot write {path}; check that its directory exists and is writable")]
    Write {
        /// File.
        path: std::path::PathBuf,
        /// Underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn strings<'a>(name: &str, rs: &'a [ExperimentRecord], f: impl Fn(&'a ExperimentRecord) -> Option<String>) -> Column {
    Column::new(name.into(), rs.iter().map(f).collect::<Vec<Option<String>>>())
}

fn floats(name: &str, rs: &[ExperimentRecord], f: impl Fn(&ExperimentRecord) -> Option<f64>) -> Column {
    Column::new(name.into(), rs.iter().map(f).collect::<Vec<Option<f64>>>())
}

fn uints(name: &str, rs: &[ExperimentRecord], f: impl Fn(&ExperimentRecord) -> Option<u64>) -> Column {
    Column::new(name.into(), rs.iter().map(f).collect::<Vec<Option<u64>>>())
}

fn bools(name: &str, rs: &[ExperimentRecord], f: impl Fn(&ExperimentRecord) -> Option<bool>) -> Column {
    Column::new(name.into(), rs.iter().map(f).collect::<Vec<Option<bool>>>())
}

/// One row per experiment. Columns: identity (`campaign`, `experiment`,
/// `key`, `workload`), injection (`injection` label, `injection_kind`,
/// `crash`, `fault_model`, `subsystem`, `function`, `fault_description`,
/// `activated`, `activation_s`), `outcome`, recovery (`strategy_requested`,
/// `strategy_used`, `fallback_reason`, `detect_cause`, `recovered`,
/// `detect_s`, `restart_s`, `service_s`, `on_standby`), service (`downtime_s`,
/// `probe_outage_s`, `throughput_back_s`, `requests`, `correct`, `acked_writes`,
/// `lost_writes`), one `param_<name>` (string) per parameter and one
/// `metric_<name>` (float) per metric any record has, provenance (`accel`,
/// `qemu_version`, `kernel_version`, `profile`, `ram_mb`, `seed`,
/// `kfi_version`, `host`), timing (`started_at`, `wall_s`, `window_s`,
/// `overhead_s`) and `timeline_bins`. The full timeline is in
/// [`timeline_frame`]; the fault spec and outcome detail stay in the store.
pub fn records_frame(rs: &[ExperimentRecord]) -> PolarsResult<DataFrame> {
    let fault = |r: &ExperimentRecord| match &r.injection {
        Injection::Fault { model, subsystem, function, description, activated, activation_s, .. } => {
            Some((*model, subsystem.clone(), function.clone(), description.clone(), *activated, *activation_s))
        }
        _ => None,
    };
    let mut cols = vec![
        strings("campaign", rs, |r| Some(r.campaign.clone())),
        uints("experiment", rs, |r| Some(r.experiment)),
        strings("key", rs, |r| Some(r.key.clone())),
        strings("workload", rs, |r| Some(r.workload.to_string())),
        strings("injection", rs, |r| Some(r.injection.label())),
        strings("injection_kind", rs, |r| {
            Some(
                match r.injection {
                    Injection::None => "none",
                    Injection::Crash { .. } => "crash",
                    Injection::Fault { .. } => "fault",
                }
                .into(),
            )
        }),
        strings("crash", rs, |r| match &r.injection {
            Injection::Crash { crash } => Some(crash.to_string()),
            _ => None,
        }),
        strings("fault_model", rs, |r| fault(r).map(|f| f.0.to_string())),
        strings("subsystem", rs, |r| fault(r).and_then(|f| f.1)),
        strings("function", rs, |r| fault(r).and_then(|f| f.2)),
        strings("fault_description", rs, |r| fault(r).map(|f| f.3)),
        bools("activated", rs, |r| fault(r).map(|f| f.4)),
        floats("activation_s", rs, |r| fault(r).and_then(|f| f.5)),
        strings("scope", rs, |r| crate::tables::propagation(r).map(|p| p.scope.to_string())),
        strings("scope_activating", rs, |r| crate::tables::propagation(r).and_then(|p| p.activating.clone())),
        strings("scope_readers", rs, |r| crate::tables::propagation(r).map(|p| p.foreign_readers.join("; "))),
        floats("trace_steps", rs, |r| crate::tables::propagation(r).map(|p| p.steps as f64)),
        floats("trace_short_s", rs, |r| crate::tables::propagation(r).map(|p| p.short_s)),
        bools("surfaced_elsewhere", rs, |r| crate::tables::propagation(r).and_then(|p| p.surfaced_elsewhere)),
        strings("outcome", rs, |r| Some(r.outcome.to_string())),
        strings("strategy_requested", rs, |r| r.recovery.as_ref().map(|x| x.requested.to_string())),
        strings("strategy_used", rs, |r| r.recovery.as_ref().map(|x| x.used.to_string())),
        strings("fallback_reason", rs, |r| r.recovery.as_ref().and_then(|x| x.fallback_reason.clone())),
        strings("detect_cause", rs, |r| r.recovery.as_ref().map(|x| x.cause.to_string())),
        bools("recovered", rs, |r| r.recovery.as_ref().map(|x| x.recovered)),
        bools("on_standby", rs, |r| r.recovery.as_ref().and_then(|x| x.on_standby)),
        floats("detect_s", rs, |r| r.recovery.as_ref().map(|x| x.detect_s)),
        floats("restart_s", rs, |r| r.recovery.as_ref().map(|x| x.restart_s)),
        floats("service_s", rs, |r| r.recovery.as_ref().map(|x| x.service_s)),
        floats("downtime_s", rs, |r| r.downtime_s),
        floats("probe_outage_s", rs, |r| r.probe_outage_s),
        floats("throughput_back_s", rs, |r| r.throughput_back_s),
        uints("requests", rs, |r| Some(r.requests)),
        uints("correct", rs, |r| Some(r.correct)),
        uints("acked_writes", rs, |r| r.acked_writes),
        uints("lost_writes", rs, |r| r.lost_writes),
    ];
    let params: BTreeSet<&String> = rs.iter().flat_map(|r| r.params.keys()).collect();
    for p in params {
        cols.push(strings(&format!("param_{p}"), rs, |r| r.params.get(p).cloned()));
    }
    let metrics: BTreeSet<&String> = rs.iter().flat_map(|r| r.metrics.keys()).collect();
    for m in metrics {
        cols.push(floats(&format!("metric_{m}"), rs, |r| r.metrics.get(m).copied()));
    }
    cols.extend([
        strings("accel", rs, |r| Some(r.provenance.accel.to_string())),
        strings("qemu_version", rs, |r| Some(r.provenance.qemu_version.clone())),
        strings("kernel_version", rs, |r| Some(r.provenance.kernel_version.clone())),
        strings("profile", rs, |r| Some(r.provenance.profile.to_string())),
        uints("ram_mb", rs, |r| Some(u64::from(r.provenance.ram_mb))),
        uints("seed", rs, |r| Some(r.provenance.seed)),
        strings("kfi_version", rs, |r| Some(r.provenance.kfi_version.clone())),
        strings("host", rs, |r| Some(r.provenance.host.clone())),
        strings("started_at", rs, |r| Some(r.started_at.clone())),
        floats("wall_s", rs, |r| Some(r.wall_s)),
        floats("window_s", rs, |r| Some(r.window_s)),
        floats("overhead_s", rs, |r| Some(r.wall_s - r.window_s)),
        uints("timeline_bins", rs, |r| Some(r.timeline.len() as u64)),
    ]);
    DataFrame::new(rs.len(), cols)
}

/// The timelines in long form: one row per (experiment, bin) with
/// `campaign`, `experiment`, `workload`, `strategy` (requested, or `none`),
/// `t_s`, `correct`, `failed`, `p50_s`.
pub fn timeline_frame(rs: &[ExperimentRecord]) -> PolarsResult<DataFrame> {
    let rows: Vec<(&ExperimentRecord, &crate::record::TimelineBin)> =
        rs.iter().flat_map(|r| r.timeline.iter().map(move |b| (r, b))).collect();
    let cols = vec![
        Column::new("campaign".into(), rows.iter().map(|(r, _)| r.campaign.as_str()).collect::<Vec<_>>()),
        Column::new("experiment".into(), rows.iter().map(|(r, _)| r.experiment).collect::<Vec<_>>()),
        Column::new("workload".into(), rows.iter().map(|(r, _)| r.workload.name()).collect::<Vec<_>>()),
        Column::new(
            "strategy".into(),
            rows.iter().map(|(r, _)| r.recovery.as_ref().map_or("none", |x| x.requested.name())).collect::<Vec<_>>(),
        ),
        Column::new("t_s".into(), rows.iter().map(|(_, b)| b.t_s).collect::<Vec<_>>()),
        Column::new("correct".into(), rows.iter().map(|(_, b)| b.correct).collect::<Vec<_>>()),
        Column::new("failed".into(), rows.iter().map(|(_, b)| b.failed).collect::<Vec<_>>()),
        Column::new("p50_s".into(), rows.iter().map(|(_, b)| b.p50_s).collect::<Vec<_>>()),
    ];
    DataFrame::new(rows.len(), cols)
}

/// Writes `df` as CSV with a header.
pub fn write_csv(df: &mut DataFrame, path: &Path) -> Result<(), DataFrameError> {
    let werr =
        |source: Box<dyn std::error::Error + Send + Sync>| DataFrameError::Write { path: path.to_path_buf(), source };
    let mut file = File::create(path).map_err(|e| werr(Box::new(e)))?;
    CsvWriter::new(&mut file).include_header(true).finish(df).map_err(|e| werr(Box::new(e)))?;
    file.sync_all().map_err(|e| werr(Box::new(e)))
}

/// Writes `df` as Parquet (uncompressed: the files are small and any
/// reader opens them).
pub fn write_parquet(df: &mut DataFrame, path: &Path) -> Result<(), DataFrameError> {
    let werr =
        |source: Box<dyn std::error::Error + Send + Sync>| DataFrameError::Write { path: path.to_path_buf(), source };
    let mut file = File::create(path).map_err(|e| werr(Box::new(e)))?;
    ParquetWriter::new(&mut file)
        .with_compression(ParquetCompression::Uncompressed)
        .finish(df)
        .map_err(|e| werr(Box::new(e)))?;
    file.sync_all().map_err(|e| werr(Box::new(e)))
}
