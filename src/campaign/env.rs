//! What a campaign run is given and gives back: the prepared guest and
//! its provenance, the run options (results directory, jobs, shard,
//! limit), the store of a results directory, and the run's summary. The
//! fault-experiment runner (`runner`) and the restore measurements
//! (`restore`) both build on it, so neither needs the other.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use analysis::record::{ExperimentRecord, Provenance};
use analysis::store::{CampaignMeta, Store};
use anyhow::{Context, Result};
use recovery_sut::VmConfig;

use super::experiment::FaultRunner;
use super::spec::{Campaign, Planned};

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
    /// Runs again from the golden snapshot of an experiment that failed
    /// through a harness error, before it is stored as `harness-error`.
    pub retries: u32,
    /// Run only the experiments stored as `harness-error` (each replaced
    /// by its new record).
    pub retry_errors: bool,
    /// Keep the golden snapshot in the cache (`$KFI_CACHE/golden/<key>`)
    /// and start from the kept one when it exists, instead of a golden
    /// run of this run's own.
    pub keep_golden: bool,
    /// Store records of another environment (kernel, image, QEMU,
    /// accelerator) beside the stored ones instead of refusing to resume.
    pub allow_mixed: bool,
    /// Keep the store and the golden snapshot in this (node-local)
    /// directory while the run works, and copy the store, complete, into
    /// `results` after every record and when the run ends: SQLite's WAL
    /// needs a local filesystem, `results` may be a shared one.
    pub scratch: Option<PathBuf>,
    /// Where the golden-run profile of a profile-guided campaign is kept
    /// (made there when missing); `None`: `results`. A shard names its
    /// campaign's directory, so every shard draws from one profile.
    pub profile: Option<PathBuf>,
}

impl RunOptions {
    /// Everything (no shard, no limit), one VM, the default retries, a
    /// golden run of its own.
    pub fn all(results: PathBuf, jobs: usize) -> RunOptions {
        RunOptions {
            results,
            jobs,
            shard: None,
            limit: None,
            retries: DEFAULT_RETRIES,
            retry_errors: false,
            keep_golden: false,
            allow_mixed: false,
            scratch: None,
            profile: None,
        }
    }

    /// Where the campaign's profile is kept.
    pub fn profile_dir(&self) -> &Path {
        self.profile.as_deref().unwrap_or(&self.results)
    }

    /// Where the run's store and golden snapshot live while it works.
    pub fn work_dir(&self) -> &Path {
        self.scratch.as_deref().unwrap_or(&self.results)
    }

    /// Starts a run in `--scratch` (see [`seed_scratch`]).
    pub fn seed_scratch(&self) -> Result<()> {
        self.scratch.as_deref().map_or(Ok(()), |scratch| seed_scratch(scratch, &self.results))
    }

    /// Copies the scratch store, complete, into the results directory
    /// (nothing to do without `--scratch`).
    pub fn publish(&self, store: &Store) -> Result<()> {
        if self.scratch.is_some() {
            store.copy_complete_to(&store_path(&self.results))?;
        }
        Ok(())
    }
}

/// Starts work in `scratch` on the store of `results`: the scratch store
/// becomes a copy of the one in `results` (the authority: a task
/// resubmitted after a node failure lands on another node), or none.
pub fn seed_scratch(scratch: &Path, results: &Path) -> Result<()> {
    let local = store_path(scratch);
    // A stale WAL beside a replaced database would be replayed into it.
    for path in store_files(&local) {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing the stale scratch store file {}", path.display()))
            }
            _ => {}
        }
    }
    let shared = store_path(results);
    if shared.exists() {
        Store::open_read_only(&shared)?
            .copy_complete_to(&local)
            .with_context(|| format!("starting the scratch store from {}", shared.display()))?;
    }
    Ok(())
}

/// Ends work in `scratch`: the last complete copy of its store into
/// `results`, then the scratch store goes (and the directory, if empty).
/// A copy that fails leaves the scratch store in place and says where.
pub fn finish_scratch(scratch: &Path, results: &Path) -> Result<()> {
    let local = store_path(scratch);
    if !local.exists() {
        return Ok(());
    }
    Store::open(&local)
        .map_err(anyhow::Error::from)
        .and_then(|store| Ok(store.copy_complete_to(&store_path(results))?))
        .with_context(|| {
            format!(
                "the records are in {} but could not be copied into {}; copy that file there by hand once the \
                 results directory is reachable",
                local.display(),
                results.display()
            )
        })?;
    for path in store_files(&local) {
        let _ = std::fs::remove_file(path);
    }
    let _ = std::fs::remove_dir(scratch);
    Ok(())
}

/// A store and the `-wal` and `-shm` files SQLite keeps beside it.
fn store_files(store: &Path) -> [PathBuf; 3] {
    let beside = |suffix: &str| {
        let mut name = store.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [store.to_path_buf(), beside("-wal"), beside("-shm")]
}

/// Stores one experiment's record (over its `harness-error` record with
/// `--retry-errors`) and, with `--scratch`, copies the store into the
/// results directory. A failed copy is a warning: the record is safe in
/// the scratch store and the next one, or the run's end, copies it.
pub fn store_record(store: &Store, record: &ExperimentRecord, opts: &RunOptions) -> Result<()> {
    if opts.retry_errors { store.insert_over_harness_error(record) } else { store.insert(record) }
        .with_context(|| format!("storing experiment {}", record.experiment))?;
    if let Err(e) = opts.publish(store) {
        tracing::warn!("{e:#}");
        eprintln!("kfi: {e:#} (it is copied again after the next experiment)");
    }
    Ok(())
}

/// `--retries` unless told otherwise.
pub const DEFAULT_RETRIES: u32 = 2;

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
    /// Experiments of this shard stored as `harness-error` once the run
    /// ended (`kfi campaign run --retry-errors` reruns them).
    pub harness_errors: Vec<u64>,
    /// Where the experiments started from (`from the kept golden snapshot
    /// <key>`, ...), when any ran.
    pub golden: Option<String>,
    /// Golden snapshots made anew during the run because the one in use
    /// stopped verifying.
    pub golden_remade: u32,
}

impl RunSummary {
    /// The summary as `kfi campaign run` prints it, for campaign `name`.
    pub fn describe(&self, name: &str) -> String {
        let mut out = format!(
            "{name}: {} of {} experiments stored ({} before this run, {} now) in {}\n",
            self.already_done + self.ran,
            self.total,
            self.already_done,
            self.ran,
            self.store.display()
        );
        if self.ran > 0 {
            out += &format!("  outcomes: {}\n", crate::progress::outcome_line(&self.outcomes));
            out += &format!(
                "  golden run {:.1} s, total {:.1} s, overhead beyond the observation windows {}\n",
                self.golden_s,
                self.wall_s,
                self.overhead.map_or("n/a".into(), |o| format!("{:.0}%", o * 100.0))
            );
            if let Some(golden) = &self.golden {
                out += &format!("  experiments ran {golden}\n");
            }
            if self.golden_remade > 0 {
                out += &format!(
                    "  the golden snapshot stopped verifying and was made anew {} times\n",
                    self.golden_remade
                );
            }
        }
        if !self.harness_errors.is_empty() {
            out += &format!(
                "  {} experiments stored as harness-error (the harness failed, not the guest): {}; rerun them with \
                 --retry-errors\n",
                self.harness_errors.len(),
                list_indices(&self.harness_errors)
            );
        }
        if self.interrupted {
            out += "  interrupted: rerun the same command to resume\n";
        }
        out
    }
}

/// `0, 3, 7` (at most 20, then `...`).
pub fn list_indices(indices: &[u64]) -> String {
    let mut s = indices.iter().take(20).map(u64::to_string).collect::<Vec<_>>().join(", ");
    if indices.len() > 20 {
        s += ", ...";
    }
    s
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
    /// The debian image's package list (`provenance.image_packages` is its
    /// hash), kept in the store.
    pub image_packages: Option<String>,
    /// Runs fault experiments, if the campaign has any.
    pub faults: Option<&'a dyn FaultRunner>,
    /// Set to stop after the running experiments.
    pub stop: Arc<AtomicBool>,
}

impl<'a> Environment<'a> {
    /// The environment of `strategy`'s experiments: kexec-reboot's guests
    /// boot with a crash kernel reserved (and the RAM it needs besides),
    /// so they start from a golden snapshot of their own; every other
    /// strategy's is this one.
    pub fn for_strategy(&self, strategy: recovery_sut::Strategy) -> Environment<'a> {
        let config = strategy.vm_config(&self.config, self.image.profile());
        let provenance = Provenance { ram_mb: config.memory_mib, ..self.provenance.clone() };
        Environment {
            image: self.image,
            config,
            provenance,
            image_packages: self.image_packages.clone(),
            faults: self.faults,
            stop: self.stop.clone(),
        }
    }
}

/// Opens the store for a run in `env`: records (or checks) the campaign,
/// refuses to resume it in another environment than its stored records'
/// unless `allow_mixed`, and keeps the image's package list.
pub fn open_store_for(campaign: &Campaign, env: &Environment<'_>, opts: &RunOptions) -> Result<Store> {
    let store = open_store(campaign, opts.work_dir())?;
    check_environment(&store, &campaign.file.name, &env.provenance, opts.allow_mixed)?;
    if let (Some(sha), Some(list)) = (&env.provenance.image_packages, &env.image_packages) {
        store.record_image_packages(sha, list)?;
    }
    Ok(store)
}

/// Refuses records of `current` beside stored records of campaign `name`
/// from another environment, unless `allow_mixed`.
pub fn check_environment(store: &Store, name: &str, current: &Provenance, allow_mixed: bool) -> Result<()> {
    let diffs = store.environment_differences(name, current)?;
    if !diffs.is_empty() && !allow_mixed {
        let list: Vec<String> = diffs.iter().map(ToString::to_string).collect();
        anyhow::bail!(
            "campaign `{}` in {} was run in another environment ({}); results of different environments are not \
             comparable: resume it where it ran (the kernel is pinned in kernel.lock; an experiment file may name \
             its own `[guest] kernel`), run it into a new results directory, or pass --allow-mixed to store the \
             new records beside the old (the report then says the campaign is mixed)",
            name,
            store.path().display(),
            list.join("; ")
        );
    }
    Ok(())
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

/// The experiments this run still has to do, and how many of this
/// shard's were stored before.
/// With `retry_errors`, the pending ones are exactly those stored as
/// `harness-error`.
pub fn pending(
    campaign: &Campaign,
    store: &Store,
    shard: Option<Shard>,
    retry_errors: bool,
) -> Result<(Vec<Planned>, u64)> {
    let mut done = store.done(&campaign.file.name)?;
    if retry_errors {
        let errors = store.harness_errors(&campaign.file.name)?;
        done = campaign.expand().iter().map(|p| p.index).filter(|i| !errors.contains(i)).collect();
    }
    let all = campaign.expand();
    let mine: Vec<Planned> = all.into_iter().filter(|p| shard.is_none_or(|s| s.owns(p.index))).collect();
    let already = mine.iter().filter(|p| done.contains(&p.index)).count() as u64;
    Ok((mine.into_iter().filter(|p| !done.contains(&p.index)).collect(), already))
}

/// `<results>/.golden` (or `.golden-<name>`), removed when the run ends.
pub struct GoldenDir(pub PathBuf);

impl GoldenDir {
    /// `<results>/.golden`.
    pub fn create(results: &Path) -> Result<GoldenDir> {
        GoldenDir::named(results, None)
    }

    /// `<results>/.golden-<name>` (`.golden` without one), emptied first.
    pub fn named(results: &Path, name: Option<&str>) -> Result<GoldenDir> {
        let dir = results.join(name.map_or(".golden".to_string(), |n| format!(".golden-{n}")));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing the stale {}", dir.display()))?;
        }
        recovery_sut::private::make(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(GoldenDir(dir))
    }
}

impl Drop for GoldenDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_campaign_does_not_resume_on_another_kernel_unless_mixing_is_allowed() {
        use analysis::fixture;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("campaign.sqlite")).unwrap();
        store.begin_campaign(&fixture::meta()).unwrap();
        store.insert(&fixture::records().remove(0)).unwrap();
        let same = fixture::provenance();
        check_environment(&store, fixture::CAMPAIGN, &same, false).unwrap();
        let mut other = fixture::provenance();
        other.kernel_version = "6.1.0-57-amd64".into();
        other.kernel_origin = Some("debian:linux-image-6.1.0-57-amd64=6.1.192-3".into());
        let err = check_environment(&store, fixture::CAMPAIGN, &other, false).unwrap_err().to_string();
        assert!(err.contains("kernel: stored 6.12.38+deb13-amd64, now 6.1.0-57-amd64"), "{err}");
        assert!(err.contains("kernel package: stored debian:linux-image-6.12.38"), "{err}");
        assert!(err.contains("--allow-mixed") && err.contains("kernel.lock"), "{err}");
        check_environment(&store, fixture::CAMPAIGN, &other, true).unwrap();
        // A campaign with nothing stored yet resumes anywhere.
        check_environment(&store, "another", &other, false).unwrap();
    }

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
