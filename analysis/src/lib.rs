//! Analysis of kfi campaigns: the durable campaign store the runner writes
//! ([`store`]), records as polars DataFrames with CSV and Parquet exports
//! ([`frame`]), the tables ([`tables`], statistics in [`stats`]), the
//! figures ([`figures`]) and the report that puts them together
//! ([`report`]).
//!
//! The crate depends on no VM crate: records hold plain strings
//! ([`record`]), so stores written by any kfi build can be analysed.

pub mod figures;
pub mod fixture;
pub mod frame;
pub mod published;
pub mod record;
pub mod report;
/// The statistics every table and figure uses (definitions in `kfi-stats`).
pub use kfi_stats as stats;
pub mod store;
pub mod tables;
#[cfg(test)]
mod testdir;
pub mod update;

pub use record::{ExperimentRecord, Injection, Provenance, RecoveryRecord, RecoveryStages, TimelineBin};
pub use report::{report_from_store, write_report, ReportError, ReportSummary};
pub use store::{Begun, CampaignMeta, MergeSummary, Store, StoreError, STORE_FILE};
