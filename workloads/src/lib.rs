//! Host-side load generators and what the client saw.
//!
//! This crate owns the client side of an experiment: it offers HTTP load to
//! a guest's web server from the host, writes one [`Record`] per request
//! (start, end, path, outcome, bytes), and turns records into a
//! [`Timeline`] of fixed-width bins and into the client-seen [`Downtime`]
//! and throughput recovery across one failure.
//!
//! It does not own guests (booting them, forwarding their ports, writing
//! their document sets: `recovery-sut`), faults or the failure instant
//! (`injector` and the experiment driver), or storing and plotting results
//! (`analysis`). It talks only to the address it is given.
//!
//! Modules, one job each:
//! - [`record`]: the per-request record and its outcome.
//! - [`docs`]: the guest's `docs.json` and which document to request next.
//! - [`loadgen`]: closed- and open-loop HTTP/1.1 load for a fixed duration.
//! - [`timeline`]: records into bins with counts and latency percentiles.
//! - [`downtime`]: downtime and throughput recovery across a failure.
//! - [`rubis`]: the RUBiS auction workload (site, data, emulated clients).

pub mod docs;
pub mod downtime;
pub mod loadgen;
pub mod record;
pub mod rubis;
pub mod timeline;

pub use docs::{Doc, DocList, DocsError, RequestPicker};
pub use downtime::{
    analyze, update_downtime, Downtime, DowntimeConfig, DowntimeError, DowntimeReport, Recovery, ThroughputRecovery,
};
pub use loadgen::{
    run, run_blocking, run_blocking_observed, run_blocking_until, run_until, ClosedLoop, LoadError, LoadProgress,
    LoadSpec, Mode, OpenLoop,
};
pub use record::{seconds_since, Record, RequestOutcome};
pub use timeline::{Bin, Timeline, TimelineError};
