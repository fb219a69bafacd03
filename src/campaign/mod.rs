//! Campaigns: experiment files expanded into numbered experiments, run from
//! a golden snapshot on one or more VMs, each result stored durably, then
//! turned into tables, figures and a report by the `analysis` crate.

pub mod check;
pub mod cli;
pub mod compare;
pub mod experiment;
pub mod faults;
pub mod restore;
pub mod runner;
pub mod spec;
