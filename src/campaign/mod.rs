//! Campaigns: experiment files expanded into numbered experiments, run from
//! a golden snapshot on one or more VMs, each result stored durably, then
//! turned into tables, figures and a report by the `analysis` crate.
//!
//! Layers, each using only those above it in this list:
//! `recorded` (producer enums to stored names), `spec` (the file and its
//! expansion; `spec::restore` for the `[restore]` table), `experiment`
//! (one experiment from golden snapshot to record) and `faults` (the
//! injector's hook into it), `env` (what a run is given and returns),
//! `golden` (the golden run, and golden snapshots kept in the cache by
//! key), `golden_slot` (a running campaign's golden snapshot, made anew
//! when it breaks), `restore` (the `[restore]` measurements) and `runner` (workers,
//! resume), then `ops` (what the commands do: run, status,
//! replay, check, reproduce) and `slurm` (a campaign's shards as a Slurm
//! job array plus a merge job, and their progress). `check` and `compare` work on stored records
//! only.

pub mod check;
pub mod compare;
pub mod env;
pub mod experiment;
pub mod faults;
pub mod golden;
pub mod golden_slot;
pub mod ops;
pub mod profile;
pub mod recorded;
pub mod restore;
pub mod runner;
pub mod slurm;
pub mod spec;
