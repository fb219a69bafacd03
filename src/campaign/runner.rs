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
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use analysis::record::{ExperimentRecord, Provenance};
use analysis::store::{CampaignMeta, Store};
use anyhow::{bail, Context, Result};
use recovery_sut::{Sut, VmConfig};
use workloads::DocList;

use super::experiment::{self, FaultRunner, Shared};
use super::spec::{Campaign, Planned, WorkloadKind};

/// `--shard i/N`: this machine runs the experiments whose index is
/// `i - 1` modulo `N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 1-based shard number.
    pub index: u64,
    /// Number of shards.
    pub count: u64,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = || format!("`{s}` is not a shard: write i/N with 1 <= i <= N, e.g. 1/2");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (u64, u64) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// Whether experiment `index` belongs to this shard.
    pub fn owns(&self, index: u64) -> bool {
        index % self.count == self.index - 1
    }
}

/// How to run a campaign.
pub struct RunOptions {
    /// Where the store (`campaign.sqlite`) and the report go.
    pub results: PathBuf,
    /// VMs at once.
    pub jobs: usize,
    /// Only this shard's experiments.
    pub shard: Option<Shard>,
    /// Stop after this many new experiments (for smoke runs and tests).
    pub limit: Option<usize>,
}

/// What a run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    /// Experiments in the campaign (all shards).
    pub total: u64,
    /// Stored before this run started.
    pub already_done: u64,
    /// Stored by this run.
    pub ran: u64,
    /// Outcome counts of this run.
    pub outcomes: BTreeMap<String, u64>,
    /// Wall-clock time of the golden run, seconds.
    pub golden_s: f64,
    /// Wall-clock time of the whole run, seconds.
    pub wall_s: f64,
    /// Sum over experiments of wall time beyond the observation window,
    /// divided by the sum of windows.
    pub overhead: Option<f64>,
    /// The store.
    pub store: PathBuf,
    /// Set when Ctrl-C stopped the run early.
    pub interrupted: bool,
}

/// The store of a campaign's results directory.
pub fn store_path(results: &Path) -> PathBuf {
    results.join("campaign.sqlite")
}

/// Everything a run needs besides the campaign file.
pub struct Environment<'a> {
    /// The prepared guest.
    pub image: &'a recovery_sut::GuestImage,
    /// VM settings (accelerator, RAM, data disk).
    pub config: VmConfig,
    /// Provenance stamped on every record.
    pub provenance: Provenance,
    /// Runs fault experiments, if the campaign has any.
    pub faults: Option<&'a dyn FaultRunner>,
    /// Set to stop after the running experiments.
    pub stop: Arc<AtomicBool>,
}

/// Opens the store and records (or checks) the campaign in it.
pub fn open_store(campaign: &Campaign, results: &Path) -> Result<Store> {
    std::fs::create_dir_all(results)
        .with_context(|| format!("creating the results directory {}", results.display()))?;
    let store = Store::open(store_path(results))?;
    let definition = serde_json::to_value(&campaign.file).context("serializing the campaign definition")?;
    store.begin_campaign(&CampaignMeta {
        name: campaign.file.name.clone(),
        file_sha256: campaign.sha256.clone(),
        seed: campaign.file.seed,
        total: campaign.expand().len() as u64,
        definition,
    })?;
    Ok(store)
}

/// The experiments this run still has to do.
pub fn pending(campaign: &Campaign, store: &Store, shard: Option<Shard>) -> Result<(Vec<Planned>, u64)> {
    let done = store.done(&campaign.file.name)?;
    let all = campaign.expand();
    let mine: Vec<Planned> = all.into_iter().filter(|p| shard.is_none_or(|s| s.owns(p.index))).collect();
    let already = mine.iter().filter(|p| done.contains(&p.index)).count() as u64;
    Ok((mine.into_iter().filter(|p| !done.contains(&p.index)).collect(), already))
}

/// Runs the campaign's pending experiments.
pub fn run(campaign: &Campaign, env: &Environment<'_>, opts: &RunOptions) -> Result<RunSummary> {
    let started = Instant::now();
    let store = open_store(campaign, &opts.results)?;
    let (mut todo, already_done) = pending(campaign, &store, opts.shard)?;
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
    };
    if todo.is_empty() {
        summary.wall_s = started.elapsed().as_secs_f64();
        return Ok(summary);
    }

    // Restore measurements boot one guest per RAM size themselves.
    if campaign.file.restore.is_some() {
        return super::restore::run(campaign, env, opts, &store, todo, summary, started);
    }

    // In the results directory rather than /tmp: a run killed with -9
    // leaves its golden snapshot where the next run replaces it.
    let golden_dir = GoldenDir::create(&opts.results)?;
    let golden_started = Instant::now();
    let docs = DocList::load(&env.image.dir.join("docs.json"))?;
    let golden = golden_run(env, &docs, &golden_dir.0, campaign)?;
    summary.golden_s = golden_started.elapsed().as_secs_f64();

    let shared = Shared { campaign, golden: &golden, docs: &docs, provenance: &env.provenance, faults: env.faults };
    let bar = progress_bar(todo.len() as u64);
    let queue = Mutex::new(todo.into_iter().collect::<VecDeque<_>>());
    let (tx, rx) = mpsc::channel::<(Planned, Result<ExperimentRecord>)>();
    let mut overhead = (0.0, 0.0);
    let mut first_error = None;
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.max(1) {
            let tx = tx.clone();
            let (queue, shared, stop) = (&queue, &shared, &env.stop);
            scope.spawn(move || loop {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Some(planned) = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None) else { break };
                let result = experiment::run(shared, &planned);
                if tx.send((planned, result)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for (planned, result) in rx {
            match result.and_then(|record| {
                store.insert(&record).with_context(|| format!("storing experiment {}", planned.index))?;
                Ok(record)
            }) {
                Ok(record) => {
                    summary.ran += 1;
                    *summary.outcomes.entry(record.outcome.clone()).or_default() += 1;
                    overhead.0 += (record.wall_s - record.window_s).max(0.0);
                    overhead.1 += record.window_s;
                    bar.set_message(outcome_line(&summary.outcomes));
                    bar.inc(1);
                }
                Err(e) => {
                    // The experiment stays pending: a resume runs it again.
                    bar.println(format!("kfi: experiment {} ({}) failed: {e:#}", planned.index, planned.key()));
                    if first_error.is_none() {
                        first_error = Some(e.context(format!("experiment {} ({})", planned.index, planned.key())));
                    }
                    // Infrastructure failures repeat: stop handing out work.
                    env.stop.store(true, Ordering::SeqCst);
                }
            }
        }
    });
    bar.finish_and_clear();
    summary.wall_s = started.elapsed().as_secs_f64();
    summary.overhead = (overhead.1 > 0.0).then(|| overhead.0 / overhead.1);
    if let Some(e) = first_error {
        return Err(e.context(format!(
            "the campaign stopped; {} experiments are stored and a rerun of the same command resumes from there",
            summary.already_done + summary.ran
        )));
    }
    summary.interrupted = env.stop.load(Ordering::SeqCst);
    Ok(summary)
}

/// `<results>/.golden`, removed when the run ends.
pub(super) struct GoldenDir(pub(super) PathBuf);

impl GoldenDir {
    pub(super) fn create(results: &Path) -> Result<GoldenDir> {
        let dir = results.join(".golden");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing the stale {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(GoldenDir(dir))
    }
}

impl Drop for GoldenDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Boots the guest once, checks that a fault-free run serves only correct
/// answers, and freezes the running service as every experiment's start.
pub(super) fn golden_run(
    env: &Environment<'_>,
    docs: &DocList,
    dir: &Path,
    campaign: &Campaign,
) -> Result<recovery_sut::Golden> {
    let mut sut = Sut::boot(env.image, &env.config).context("booting the golden system")?;
    let origin = Instant::now();
    let w = &campaign.file.workload;
    if w.kind == WorkloadKind::Rubis {
        // The site's pages need MariaDB, which comes up after Apache.
        sut.vm().wait_phase("services-ready", Duration::from_secs(300))?;
    }
    let plan = experiment::ClientPlan {
        duration: Duration::from_secs_f64(w.warmup_s.max(1.0)),
        // Lenient with the static workload's first answers, as before any
        // fault; RUBiS pages get their own timeout.
        timeout: match w.kind {
            WorkloadKind::Apache => w.timeout().max(Duration::from_secs(2)),
            WorkloadKind::Rubis => w.timeout(),
        },
        seed: campaign.file.seed,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let records = experiment::run_clients(sut.vm().http_addr(), w, docs, &plan, origin, stop)?.records;
    let bad = records.iter().filter(|r| !r.is_correct()).count();
    if records.is_empty() || bad > 0 {
        bail!(
            "the golden (fault-free) run got {bad} wrong or failed answers out of {}: the service is not healthy \
             before any fault, so no experiment could be judged; check the guest with `kfi boot --guest {}`",
            records.len(),
            env.provenance.profile
        );
    }
    let golden = sut.freeze(dir).context("freezing the golden snapshot")?;
    Ok(golden)
}

pub(super) fn progress_bar(len: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}, ETA {eta}] {msg}")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}

pub(super) fn outcome_line(outcomes: &BTreeMap<String, u64>) -> String {
    outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn shards_partition_the_experiments() {
        let halves: [Shard; 2] = ["1/2".parse().unwrap(), "2/2".parse().unwrap()];
        for i in 0..100 {
            assert_eq!(halves.iter().filter(|s| s.owns(i)).count(), 1);
        }
        for bad in ["0/2", "3/2", "1/0", "x", "1-2"] {
            assert!(bad.parse::<Shard>().unwrap_err().contains("i/N"), "{bad}");
        }
    }
}
