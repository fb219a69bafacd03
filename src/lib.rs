//! `kfi`, the harness: everything the `kfi` commands do, as a library the
//! thin binary (`src/main.rs`) parses arguments for, calls and prints.
//!
//! It owns the experiments, not their parts: how a guest is made ready
//! ([`setup`]), the client load every experiment offers ([`load`]), forced
//! crashes ([`crash`]), one fault applied and judged ([`fault_watch`]),
//! `kfi recover`'s trials ([`recover`]), the VMM as a service
//! ([`service`]), a plain workload run ([`workload_run`]), the campaign
//! engine ([`campaign`]: experiment files, runner, one experiment, restore
//! measurements, regression check, replay comparison) and the one duration
//! parser of every flag and key ([`duration`]) and how long work shows
//! progress ([`progress`]).
//!
//! It does not own the VMM under test (`recovery-sut`), the gdb client,
//! fault models and tracer (`injector`), load generation and downtime
//! analysis (`workloads`), records, store, tables and figures
//! (`analysis`) or the statistics' definitions (`kfi-stats`).
//!
//! Errors are `anyhow` with context: the harness's callers print them,
//! they do not match on them; the crates below use `thiserror`.

pub mod campaign;
pub mod crash;
pub mod duration;
pub mod fault_watch;
pub mod load;
pub mod progress;
pub mod provenance;
pub mod recover;
pub mod service;
pub mod setup;
pub mod update;
pub mod workload_run;
