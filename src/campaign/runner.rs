//! The campaign runner: a golden run, then every experiment not yet stored,
//! on `--jobs` VMs at once, each result committed to the store as soon as
//! it exists.
//!
//! Resumption rests on one rule: an experiment is done exactly when its
//! record is in the store. A record is written in one transaction after the
//! experiment ends, so a kill at any point loses at most the experiments
//! that were running, and those run again on resume; the store refuses a
//! second record for an index, so nothing is done twice.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Instant;

use analysis::record::ExperimentRecord;
use anyhow::Result;
use recovery_sut::Strategy;
use workloads::DocList;

use super::env::{open_store_for, pending, store_path, store_record, Environment, GoldenDir, RunOptions, RunSummary};
use super::experiment::{self, Shared};
use super::golden::{golden_run, KeptGolden, Source};
use super::golden_slot::GoldenSlot;
use super::spec::{Campaign, Planned};

/// Runs the campaign's pending experiments, from golden snapshots kept in
/// `cache` when given (made there first when there is none), else from
/// golden runs of their own: one for kexec-reboot's experiments, one for
/// every other strategy's.
pub fn run(
    campaign: &Campaign,
    env: &Environment<'_>,
    opts: &RunOptions,
    cache: Option<&recovery_sut::Cache>,
) -> Result<RunSummary> {
    let started = Instant::now();
    let store = open_store_for(campaign, env, opts)?;
    let (mut todo, already_done) = pending(campaign, &store, opts.shard, opts.retry_errors)?;
    if let Some(limit) = opts.limit {
        todo.truncate(limit);
    }
    let total = campaign.expand().len() as u64;
    let mut summary = RunSummary {
        total,
        already_done,
        ran: 0,
        outcomes: BTreeMap::new(),
        golden_s: 0.0,
        wall_s: 0.0,
        overhead: None,
        store: store_path(&opts.results),
        interrupted: false,
        harness_errors: Vec::new(),
        golden: None,
        golden_remade: 0,
    };
    if todo.is_empty() {
        summary.wall_s = started.elapsed().as_secs_f64();
        summary.harness_errors = harness_errors(campaign, &store, opts)?;
        return Ok(summary);
    }

    // Restore measurements boot one guest per RAM size themselves.
    if campaign.file.restore.is_some() {
        return super::restore::run(campaign, env, opts, &store, todo, summary, started);
    }

    let docs = DocList::load(&env.image.dir.join("docs.json"))?;
    let bar = crate::progress::progress_bar(todo.len() as u64);
    // kexec-reboot's experiments boot with a crash kernel reserved: their
    // golden snapshot is their own, so every other strategy's guest (and
    // its baseline) keeps its RAM. One group after the other.
    let (kexec, plain): (Vec<Planned>, Vec<Planned>) =
        todo.into_iter().partition(|p| p.strategy == Strategy::KexecReboot);
    let mut overhead = (0.0, 0.0);
    let mut golden_sources = Vec::new();
    for (group, genv) in
        [(plain, env.for_strategy(Strategy::FullReboot)), (kexec, env.for_strategy(Strategy::KexecReboot))]
    {
        if group.is_empty() || env.stop.load(Ordering::SeqCst) {
            continue;
        }
        let kept = match cache {
            Some(cache) => Some(KeptGolden::new(cache, genv.image, &genv.config, campaign)?),
            None => None,
        };
        let ran =
            run_group(campaign, &genv, opts, kept.as_ref(), group, &docs, &store, &bar, &mut summary, &mut overhead);
        match ran {
            Ok(source) => golden_sources.push(source),
            Err(e) => {
                bar.finish_and_clear();
                return Err(e);
            }
        }
    }
    summary.golden = Some(golden_sources.join("; "));
    bar.finish_and_clear();
    summary.wall_s = started.elapsed().as_secs_f64();
    summary.overhead = (overhead.1 > 0.0).then(|| overhead.0 / overhead.1);
    summary.interrupted = env.stop.load(Ordering::SeqCst);
    summary.harness_errors = harness_errors(campaign, &store, opts)?;
    Ok(summary)
}

/// Runs one group of experiments that share a golden snapshot (made, or
/// taken from `kept`) on `opts.jobs` workers; returns where its golden
/// snapshot came from.
#[allow(clippy::too_many_arguments)]
fn run_group(
    campaign: &Campaign,
    env: &Environment<'_>,
    opts: &RunOptions,
    kept: Option<&KeptGolden>,
    todo: Vec<Planned>,
    docs: &DocList,
    store: &analysis::store::Store,
    bar: &indicatif::ProgressBar,
    summary: &mut RunSummary,
    overhead: &mut (f64, f64),
) -> Result<String> {
    let golden_started = Instant::now();
    // In the results directory rather than /tmp: a run killed with -9
    // leaves its golden snapshot where the next run replaces it. A kept
    // snapshot is made anew in its own place.
    let home = match kept {
        Some(kept) => GoldenHome::Kept(kept),
        None => GoldenHome::Own(GoldenDir::named(opts.work_dir(), golden_dir_name(&env.config).as_deref())?),
    };
    let (golden, source) = match &home {
        GoldenHome::Kept(kept) => kept.obtain(env, docs, campaign)?,
        GoldenHome::Own(dir) => (golden_run(env, docs, &dir.0, campaign)?, Source::New),
    };
    summary.golden_s += golden_started.elapsed().as_secs_f64();
    let slot = GoldenSlot::new(golden, |made| match &home {
        GoldenHome::Kept(kept) => Ok(kept.obtain(env, docs, campaign)?.0),
        GoldenHome::Own(dir) => golden_run(env, docs, &dir.0.join(format!("remade-{made}")), campaign),
    });
    let shared = Shared { campaign, docs, provenance: &env.provenance, faults: env.faults };
    let queue = Mutex::new(todo.into_iter().collect::<VecDeque<_>>());
    let (tx, rx) = mpsc::channel::<(Planned, Result<ExperimentRecord>)>();
    let mut first_error = None;
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.max(1) {
            let tx = tx.clone();
            let (queue, shared, slot, stop) = (&queue, &shared, &slot, &env.stop);
            scope.spawn(move || loop {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Some(planned) = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None) else { break };
                let result = run_with_retries(shared, slot, &planned, opts.retries, stop);
                if tx.send((planned, result)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for (planned, result) in rx {
            match result.and_then(|record| store_record(store, &record, opts).map(|()| record)) {
                Ok(record) => {
                    summary.ran += 1;
                    *summary.outcomes.entry(record.outcome.to_string()).or_default() += 1;
                    overhead.0 += (record.wall_s - record.window_s).max(0.0);
                    overhead.1 += record.window_s;
                    bar.set_message(crate::progress::outcome_line(&summary.outcomes));
                    bar.inc(1);
                }
                Err(e) => {
                    // Only an interruption, the store or something every
                    // experiment shares (the fault list) gets here. The
                    // experiment stays pending: a resume runs it again.
                    bar.println(format!("kfi: experiment {} ({}) failed: {e:#}", planned.index, planned.key()));
                    if first_error.is_none() {
                        first_error = Some(e.context(format!("experiment {} ({})", planned.index, planned.key())));
                    }
                    env.stop.store(true, Ordering::SeqCst);
                }
            }
        }
    });
    summary.golden_remade += slot.remade();
    if let Some(e) = first_error {
        return Err(e.context(format!(
            "the campaign stopped; {} experiments are stored and a rerun of the same command resumes from there",
            summary.already_done + summary.ran
        )));
    }
    Ok(source.to_string())
}

/// The name of a group's golden snapshot directory in the run's: its own
/// for a guest with a crash kernel reserved (kexec-reboot's).
fn golden_dir_name(config: &recovery_sut::VmConfig) -> Option<String> {
    config.crash_kernel_mib.map(|mib| format!("crashkernel-{mib}m"))
}

/// Where a run's golden snapshots live: the cache's kept one, or the run's
/// own directory (removed when the run ends).
enum GoldenHome<'k> {
    Kept(&'k KeptGolden),
    Own(GoldenDir),
}

/// Runs one experiment; a harness error (the experiment returned an error
/// instead of a record) is retried from the golden snapshot up to
/// `retries` times, then becomes a `harness-error` record with every
/// attempt's error chain. Before a retry the golden snapshot is checked,
/// and made anew when it no longer verifies (see [`GoldenSlot`]). What the fault did to the guest (a reset, QEMU
/// exiting) is an outcome in a record, never an error, so it is not
/// retried. An error after Ctrl-C is the interruption's, and stays one
/// (the experiment stays pending).
fn run_with_retries(
    shared: &Shared<'_>,
    slot: &GoldenSlot<'_>,
    planned: &Planned,
    retries: u32,
    stop: &AtomicBool,
) -> Result<ExperimentRecord> {
    let started = Instant::now();
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut errors = Vec::new();
    let mut renewed = false;
    loop {
        let golden = slot.current();
        match experiment::run(shared, &golden, planned) {
            Ok(record) => return Ok(record),
            Err(e) if stop.load(Ordering::SeqCst) => return Err(e),
            Err(e) => {
                if let Some(remade) = if renewed { None } else { slot.renew_if_broken(&golden)? } {
                    renewed = true;
                    tracing::warn!(experiment = planned.index, "{remade}");
                    eprintln!("kfi: experiment {}: {remade}", planned.index);
                    // The attempt failed on the broken snapshot, not on
                    // anything of the experiment's own: it does not count.
                    continue;
                }
                let chain = format!("{e:#}");
                tracing::warn!(experiment = planned.index, attempt = errors.len() + 1, "harness error: {chain}");
                errors.push(chain);
                if errors.len() > retries as usize {
                    let wall_s = started.elapsed().as_secs_f64();
                    return experiment::harness_error(shared, planned, errors, started_at, wall_s);
                }
            }
        }
    }
}

/// This shard's experiments stored as `harness-error`.
pub(super) fn harness_errors(
    campaign: &Campaign,
    store: &analysis::store::Store,
    opts: &RunOptions,
) -> Result<Vec<u64>> {
    let errors = store.harness_errors(&campaign.file.name)?;
    Ok(errors.into_iter().filter(|i| opts.shard.is_none_or(|s| s.owns(*i))).collect())
}
