//! Campaigns on a Slurm cluster. `kfi campaign slurm` prepares the guest
//! once into the (shared) cache, writes a job array with one task per
//! `--shard` and a merge job that runs after every task has ended
//! (`afterany`, then a check that names missing shards), and submits
//! them with `sbatch`. `kfi campaign status` reads the shards' stores and
//! the jobs' states back.
//!
//! Layout of a results directory run this way:
//! `slurm/shard.sbatch`, `slurm/merge.sbatch`, `slurm/plan.json` (the
//! campaign, file hash, shard count and accelerator the scripts were
//! written for), `slurm/jobs.json` (every submission), `slurm/logs/`;
//! `shards/<i>-of-<N>/campaign.sqlite`, each a complete copy a task
//! publishes from its node-local scratch store after every experiment;
//! `campaign.sqlite` and the report, made by the merge job.
//!
//! It assumes the results directory, the cache, the experiment file and
//! the `kfi` binary are on a filesystem every node sees at the same path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use analysis::store::Store;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::env::{store_path, Shard};
use super::spec::{AccelName, Campaign, GuestProfile};

/// What `kfi campaign slurm` is asked for.
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// Array tasks, one per shard.
    pub shards: u64,
    /// The shared results directory.
    pub results: PathBuf,
    /// `--partition`, if not the cluster's default.
    pub partition: Option<String>,
    /// `--time` limit of each job, in Slurm's notation (`2:00:00`).
    pub time: Option<String>,
    /// CPUs of each task; its `--jobs` (under TCG a VM takes one core).
    pub cpus_per_task: u32,
    /// The guest the campaign runs on, if not the file's.
    pub guest: Option<GuestProfile>,
    /// Call `sbatch` instead of printing the command.
    pub submit: bool,
}

/// What the scripts run with, settled on the submitting host.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `kfi` binary the tasks run.
    pub kfi: PathBuf,
    /// The tasks' working directory (where `kfi campaign slurm` ran).
    pub workdir: PathBuf,
    /// The experiment file.
    pub file: PathBuf,
    /// `KFI_CACHE` of the tasks: where the guest was prepared.
    pub cache: PathBuf,
    /// `KFI_KERNEL_LOCK` of the tasks.
    pub kernel_lock: PathBuf,
    /// The accelerator every task is pinned to (never `auto`).
    pub accel: AccelName,
}

/// What the scripts in a results directory were written for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Campaign name.
    pub campaign: String,
    /// SHA-256 of its experiment file.
    pub file_sha256: String,
    /// Shard count.
    pub shards: u64,
    /// The tasks' accelerator.
    pub accel: AccelName,
}

/// One `sbatch` of the array (absent when no shard was missing anything)
/// and the merge job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    /// The array's job id.
    pub array_job: Option<String>,
    /// The shards (1-based) the array ran.
    pub shards: Vec<u64>,
    /// The merge job's id.
    pub merge_job: String,
    /// When (RFC 3339).
    pub submitted_at: String,
}

/// The written scripts.
#[derive(Debug, Clone, Serialize)]
pub struct Scripts {
    /// The job array.
    pub shard: PathBuf,
    /// The merge job.
    pub merge: PathBuf,
}

/// What `kfi campaign slurm` did.
#[derive(Debug, Clone, Serialize)]
pub struct Prepared {
    /// The scripts.
    pub scripts: Scripts,
    /// The accelerator every task is pinned to.
    pub accel: AccelName,
    /// Shards with experiments still to run (all of them at first).
    pub pending_shards: Vec<u64>,
    /// The jobs, when submitted.
    pub submission: Option<Submission>,
    /// The command that submits both jobs by hand.
    pub submit_command: String,
}

impl Prepared {
    /// What `kfi campaign slurm` prints.
    pub fn describe(&self, campaign: &str, results: &Path) -> String {
        let mut out = format!(
            "{campaign}: job array {} and merge job {} (every task on {}; results directory {} must be on a \
             filesystem all nodes share)\n",
            self.scripts.shard.display(),
            self.scripts.merge.display(),
            self.accel.as_str(),
            results.display()
        );
        match (&self.submission, self.pending_shards.is_empty()) {
            (Some(s), _) => {
                if let Some(array) = &s.array_job {
                    out += &format!("  submitted shards {} as job array {array}\n", join(&s.shards));
                } else {
                    out += "  every shard is complete: no array submitted\n";
                }
                out += &format!("  merge job {} runs when they end; then see `report.md`\n", s.merge_job);
            }
            (None, true) => out += "  every shard is complete; to merge again submit the merge job alone\n",
            (None, false) => {
                out += &format!(
                    "  shards to run: {}\n  submit with:\n    {}\n",
                    join(&self.pending_shards),
                    self.submit_command
                )
            }
        }
        out
    }
}

fn join(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// `<results>/shards/<i>-of-<N>`: where shard i's task publishes its store.
pub fn shard_dir(results: &Path, shard: Shard) -> PathBuf {
    results.join("shards").join(format!("{}-of-{}", shard.index, shard.count))
}

fn slurm_dir(results: &Path) -> PathBuf {
    results.join("slurm")
}

/// The plan the scripts in `results` were written for, if any.
pub fn read_plan(results: &Path) -> Result<Option<Plan>> {
    read_json(&slurm_dir(results).join("plan.json"), "kfi Slurm plan")
}

/// Every submission made for `results`, oldest first.
pub fn submissions(results: &Path) -> Result<Vec<Submission>> {
    Ok(read_json(&slurm_dir(results).join("jobs.json"), "kfi job list")?.unwrap_or_default())
}

/// The JSON file at `path` (a `what`), if there is one.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<Option<T>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("{} is not a {what}", path.display()))?))
}

/// The shard counts of the `shards/<i>-of-<N>` directories in `results`.
fn shard_counts_on_disk(results: &Path) -> Result<Vec<u64>> {
    let dir = results.join("shards");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(Vec::new()) };
    let mut counts = Vec::new();
    for entry in entries {
        let name = entry.with_context(|| format!("listing {}", dir.display()))?.file_name();
        if let Some((_, n)) = name.to_string_lossy().split_once("-of-") {
            if let Ok(n) = n.parse::<u64>() {
                counts.push(n);
            }
        }
    }
    counts.sort_unstable();
    counts.dedup();
    Ok(counts)
}

/// Refuses what cannot work, before anything is prepared: a shard count
/// of 0 or beyond the experiments, `sbatch` missing for `--submit`, a
/// results directory that holds another campaign or another sharding.
pub fn check(campaign: &Campaign, opts: &SlurmOptions) -> Result<()> {
    check_with_path(campaign, opts, std::env::var_os("PATH"))
}

/// [`check`] with `sbatch` looked up in `path` (the tests' PATH without it).
fn check_with_path(campaign: &Campaign, opts: &SlurmOptions, path: Option<std::ffi::OsString>) -> Result<()> {
    let name = &campaign.file.name;
    let total = campaign.expand().len() as u64;
    if opts.shards == 0 || opts.shards > total {
        bail!(
            "--shards {}: campaign `{name}` has {total} experiments, so it can run as 1 to {total} shards; pick a \
             count in that range",
            opts.shards
        );
    }
    if opts.cpus_per_task == 0 {
        bail!("--cpus-per-task 0: each task needs at least one CPU for its VM");
    }
    if opts.submit {
        let cwd = std::env::current_dir().context("reading the working directory")?;
        which::which_in("sbatch", path, cwd).map_err(|_| {
            anyhow::anyhow!(
                "`sbatch` is not on PATH: run this on a Slurm login node (or install Slurm's client, Debian package \
                 slurm-client), or drop --submit to write the scripts and submit them where sbatch is"
            )
        })?;
    }
    let results = &opts.results;
    let elsewhere = |what: String| {
        anyhow::anyhow!(
            "{} holds {what}; give this campaign its own results directory with --results (or remove that one)",
            results.display()
        )
    };
    let plan = read_plan(results)?;
    let merged = store_path(results);
    if merged.exists() {
        let store = Store::open_read_only(&merged)?;
        for meta in store.campaigns()? {
            if meta.name != *name {
                return Err(elsewhere(format!("campaign `{}`", meta.name)));
            }
            if meta.file_sha256 != campaign.sha256 {
                return Err(elsewhere(format!("`{name}` from another version of its experiment file")));
            }
        }
        // The shards would run those experiments again, and merging their
        // records beside the stored ones would conflict.
        let stored = store.done(name)?.len();
        if plan.is_none() && stored > 0 {
            return Err(elsewhere(format!(
                "{stored} experiments of `{name}` run without Slurm (the shards would run them again); run the \
                 cluster campaign into its own results directory and `kfi campaign merge` the two afterwards"
            )));
        }
    }
    if let Some(plan) = plan {
        if plan.campaign != *name || plan.file_sha256 != campaign.sha256 {
            return Err(elsewhere(format!(
                "the Slurm scripts of campaign `{}` (experiment file sha256 {})",
                plan.campaign,
                &plan.file_sha256[..plan.file_sha256.len().min(12)]
            )));
        }
    }
    if let Some(other) = shard_counts_on_disk(results)?.into_iter().find(|n| *n != opts.shards) {
        return Err(elsewhere(format!(
            "the shards of a {other}-shard run (results/shards/*-of-{other}); rerun with --shards {other} to go on \
             with it"
        )));
    }
    Ok(())
}

/// Shell-quotes a path for the scripts.
fn quoted(path: &Path) -> Result<String> {
    let text =
        path.to_str().with_context(|| format!("{} is not UTF-8; Slurm scripts need text paths", path.display()))?;
    Ok(shlex::try_quote(text).with_context(|| format!("{text} cannot be quoted for the shell"))?.into_owned())
}

/// The `#SBATCH` lines both jobs share.
fn common_directives(opts: &SlurmOptions, launch: &Launch) -> Result<String> {
    let mut out = format!("#SBATCH --chdir={}\n", quoted(&launch.workdir)?);
    if let Some(p) = &opts.partition {
        out += &format!("#SBATCH --partition={p}\n");
    }
    if let Some(t) = &opts.time {
        out += &format!("#SBATCH --time={t}\n");
    }
    Ok(out)
}

/// The job array's script: task `SLURM_ARRAY_TASK_ID` runs shard
/// `SLURM_ARRAY_TASK_ID + 1` of N.
pub fn shard_script(campaign: &Campaign, opts: &SlurmOptions, launch: &Launch) -> Result<String> {
    let (name, n, c) = (&campaign.file.name, opts.shards, opts.cpus_per_task);
    let results = quoted(&opts.results)?;
    let guest = opts.guest.map(|g| format!(" --guest {}", g.as_str())).unwrap_or_default();
    let logs = quoted(&slurm_dir(&opts.results).join("logs").join("shard-%a.log"))?;
    // With --time, kfi is told (it runs as the batch shell, through exec)
    // 10 minutes before the limit: it stops after the running experiments
    // and copies its store, instead of being killed mid-copy.
    let signal = if opts.time.is_some() { "#SBATCH --signal=B:TERM@600\n" } else { "" };
    Ok(format!(
        r#"#!/bin/bash
# kfi campaign `{name}` as a Slurm job array: one task per shard (written by
# `kfi campaign slurm`; write it again with that command, not by hand).
# Each task runs `kfi campaign run --shard i/{n}` with its store and golden
# snapshot on node-local scratch ($KFI_SCRATCH, else $TMPDIR, else /tmp): the
# store is SQLite in WAL mode, which needs a local filesystem. After every
# experiment, and when the task ends or is cancelled, kfi copies the store,
# complete, to {results}/shards/<i>-of-{n}/.
#SBATCH --job-name=kfi-{name}
#SBATCH --array=0-{last}
#SBATCH --cpus-per-task={c}
#SBATCH --output={logs}
{common}{signal}set -euo pipefail
export KFI_CACHE={cache}
export KFI_KERNEL_LOCK={lock}
shard=$((SLURM_ARRAY_TASK_ID + 1))
scratch="${{KFI_SCRATCH:-${{TMPDIR:-/tmp}}}}/kfi-{name}-${{SLURM_ARRAY_JOB_ID}}-$shard"
exec {kfi} campaign run {file}{guest} --accel {accel} --shard "$shard/{n}" --jobs {c} \
    --results {results}/shards/"$shard"-of-{n} --scratch "$scratch" --profile {results}
"#,
        last = n - 1,
        common = common_directives(opts, launch)?,
        cache = quoted(&launch.cache)?,
        lock = quoted(&launch.kernel_lock)?,
        kfi = quoted(&launch.kfi)?,
        file = quoted(&launch.file)?,
        accel = launch.accel.as_str(),
    ))
}

/// The merge job's script: merges whatever the shards stored, checks that
/// every experiment is there (naming the shards that lack some), and
/// writes the report.
pub fn merge_script(campaign: &Campaign, opts: &SlurmOptions, launch: &Launch) -> Result<String> {
    let (name, n) = (&campaign.file.name, opts.shards);
    let results = quoted(&opts.results)?;
    let guest = opts.guest.map(|g| format!(" --guest {}", g.as_str())).unwrap_or_default();
    Ok(format!(
        r#"#!/bin/bash
# Merges the shards of kfi campaign `{name}` once the array has ended
# (written by `kfi campaign slurm`). Exit status 1: some experiments are
# missing (the status lists their shards); resubmit with the same
# `kfi campaign slurm ... --submit` to run only those.
#SBATCH --job-name=kfi-{name}-merge
#SBATCH --cpus-per-task=1
#SBATCH --output={logs}
{common}set -euo pipefail
export KFI_CACHE={cache}
export KFI_KERNEL_LOCK={lock}
scratch="${{KFI_SCRATCH:-${{TMPDIR:-/tmp}}}}/kfi-{name}-${{SLURM_JOB_ID}}-merge"
shards=()
for store in {results}/shards/*-of-{n}/campaign.sqlite; do
    [ -e "$store" ] && shards+=("$(dirname "$store")")
done
if [ ${{#shards[@]}} -eq 0 ]; then
    echo "kfi: no shard of campaign {name} stored anything; see the logs in {results}/slurm/logs/" >&2
    exit 1
fi
{kfi} campaign merge {results} "${{shards[@]}}" --scratch "$scratch"
complete=0
{kfi} campaign status {file}{guest} --results {results} --complete || complete=$?
{kfi} report {results}
exit $complete
"#,
        logs = quoted(&slurm_dir(&opts.results).join("logs").join("merge-%j.log"))?,
        common = common_directives(opts, launch)?,
        cache = quoted(&launch.cache)?,
        lock = quoted(&launch.kernel_lock)?,
        kfi = quoted(&launch.kfi)?,
        file = quoted(&launch.file)?,
    ))
}

/// Writes both scripts and the plan into `<results>/slurm/`.
pub fn write(campaign: &Campaign, opts: &SlurmOptions, launch: &Launch) -> Result<Scripts> {
    let dir = slurm_dir(&opts.results);
    std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("creating {}", dir.display()))?;
    let scripts = Scripts { shard: dir.join("shard.sbatch"), merge: dir.join("merge.sbatch") };
    let plan = Plan {
        campaign: campaign.file.name.clone(),
        file_sha256: campaign.sha256.clone(),
        shards: opts.shards,
        accel: launch.accel,
    };
    for (path, text) in [
        (&scripts.shard, shard_script(campaign, opts, launch)?),
        (&scripts.merge, merge_script(campaign, opts, launch)?),
        (&dir.join("plan.json"), serde_json::to_string_pretty(&plan)? + "\n"),
    ] {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(scripts)
}

/// How one shard stands, from its published store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardProgress {
    /// The shard.
    pub shard: u64,
    /// Of how many.
    pub of: u64,
    /// Its experiments.
    pub total: u64,
    /// Stored by its task (harness errors included).
    pub stored: u64,
    /// Stored as `harness-error`.
    pub harness_errors: u64,
    /// The Slurm state of its last task, when Slurm still knows it.
    pub job: Option<String>,
}

impl ShardProgress {
    /// Not yet stored.
    pub fn pending(&self) -> u64 {
        self.total - self.stored
    }
}

/// Every shard's progress, for the shard count of the plan in `results`
/// (none when the campaign was not run through `kfi campaign slurm`).
pub fn progress(campaign: &Campaign, results: &Path) -> Result<Vec<ShardProgress>> {
    let Some(plan) = read_plan(results)? else { return Ok(Vec::new()) };
    let all = campaign.expand();
    let states = job_states(results);
    (1..=plan.shards)
        .map(|index| {
            let shard = Shard { index, count: plan.shards };
            let total = all.iter().filter(|p| shard.owns(p.index)).count() as u64;
            let path = store_path(&shard_dir(results, shard));
            let (stored, harness_errors) = if path.exists() {
                let store = Store::open_read_only(&path)?;
                let name = &campaign.file.name;
                (store.done(name)?.len() as u64, store.harness_errors(name)?.len() as u64)
            } else {
                (0, 0)
            };
            Ok(ShardProgress {
                shard: index,
                of: plan.shards,
                total,
                stored,
                harness_errors,
                job: states.get(&index).cloned(),
            })
        })
        .collect()
}

/// The shards (1-based) whose stores lack experiments.
pub fn pending_shards(campaign: &Campaign, results: &Path) -> Result<Vec<u64>> {
    Ok(progress(campaign, results)?.into_iter().filter(|p| p.pending() > 0).map(|p| p.shard).collect())
}

/// Submits the array for `shards` (none: only the merge job) and the
/// merge job after it, and appends the submission to `slurm/jobs.json`.
pub fn submit(scripts: &Scripts, shards: &[u64], results: &Path) -> Result<Submission> {
    let array_job = match shards {
        [] => None,
        _ => Some(sbatch(&[format!("--array={}", array_tasks(shards))], &scripts.shard)?),
    };
    let after = array_job.iter().map(|j| format!("--dependency=afterany:{j}")).collect::<Vec<_>>();
    let merge_job = sbatch(&after, &scripts.merge)?;
    let submission = Submission {
        array_job,
        shards: shards.to_vec(),
        merge_job,
        submitted_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    let mut all = submissions(results)?;
    all.push(submission.clone());
    let path = slurm_dir(results).join("jobs.json");
    std::fs::write(&path, serde_json::to_string_pretty(&all)? + "\n")
        .with_context(|| format!("writing {} (the jobs were submitted: {submission:?})", path.display()))?;
    Ok(submission)
}

/// The command `submit` runs, for a user who submits by hand.
pub fn submit_command(scripts: &Scripts, shards: &[u64]) -> Result<String> {
    Ok(format!(
        "array=$(sbatch --parsable --array={} {}) && sbatch --dependency=afterany:${{array%%;*}} {}",
        array_tasks(shards),
        quoted(&scripts.shard)?,
        quoted(&scripts.merge)?
    ))
}

/// The array task ids (0-based) of shards (1-based), as `--array` takes them.
fn array_tasks(shards: &[u64]) -> String {
    shards.iter().map(|s| (s - 1).to_string()).collect::<Vec<_>>().join(",")
}

fn sbatch(args: &[String], script: &Path) -> Result<String> {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .args(args)
        .arg(script)
        .output()
        .context("running sbatch (is this a Slurm login node?)")?;
    if !out.status.success() {
        bail!(
            "`sbatch {} {}` failed ({}): {}",
            args.join(" "),
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // --parsable prints `id` or `id;cluster`.
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text.trim().split(';').next().unwrap_or_default().to_string();
    if id.is_empty() {
        bail!("sbatch printed no job id for {}", script.display());
    }
    Ok(id)
}

/// Each shard's state in its last submission: `squeue` while Slurm holds
/// the task, else `sacct` where accounting is on; nothing where neither
/// knows (Slurm forgets ended jobs without accounting) or neither exists.
fn job_states(results: &Path) -> BTreeMap<u64, String> {
    let mut latest = BTreeMap::new();
    for s in submissions(results).unwrap_or_default() {
        if let Some(job) = &s.array_job {
            for shard in &s.shards {
                latest.insert(*shard, format!("{job}_{}", shard - 1));
            }
        }
    }
    latest
        .into_iter()
        .filter_map(|(shard, task)| {
            let state = query(&["squeue", "-h", "-j", &task, "-o", "%T"])
                .or_else(|| query(&["sacct", "-n", "-P", "-X", "-j", &task, "-o", "State"]))?;
            Some((shard, format!("{task} {state}")))
        })
        .collect()
}

/// The first line of a command's output, when it ran and printed one.
fn query(argv: &[&str]) -> Option<String> {
    let out = Command::new(argv[0]).args(&argv[1..]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim();
    (out.status.success() && !line.is_empty()).then(|| line.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const FILE: &str = r#"
name = "small"
seed = 1
repetitions = 3

[guest]
profile = "tiny"

[workload]
kind = "apache"

[[inject]]
crash = "sysrq"

[recovery]
strategies = ["service-restore"]
"#;

    fn campaign() -> Campaign {
        let mut c = Campaign::parse(Path::new("/exp/small.toml"), FILE).unwrap();
        c.sha256 = "ab".repeat(32);
        c
    }

    fn opts(results: &Path, shards: u64) -> SlurmOptions {
        SlurmOptions {
            shards,
            results: results.to_path_buf(),
            partition: Some("batch".into()),
            time: Some("1:00:00".into()),
            cpus_per_task: 2,
            guest: None,
            submit: false,
        }
    }

    fn launch() -> Launch {
        Launch {
            kfi: "/opt/kfi bin/kfi".into(),
            workdir: "/home/me/kfi".into(),
            file: "/home/me/kfi/experiments/small.toml".into(),
            cache: "/shared/cache".into(),
            kernel_lock: "/home/me/kfi/kernel.lock".into(),
            accel: AccelName::Tcg,
        }
    }

    #[test]
    fn the_array_runs_shard_task_plus_one_of_n_into_its_own_store_from_node_local_scratch() {
        let dir = tempfile::tempdir().unwrap();
        let text = shard_script(&campaign(), &opts(dir.path(), 2), &launch()).unwrap();
        for line in [
            "#SBATCH --array=0-1",
            "#SBATCH --cpus-per-task=2",
            "#SBATCH --partition=batch",
            "#SBATCH --time=1:00:00",
            "#SBATCH --signal=B:TERM@600",
            "export KFI_CACHE=/shared/cache",
            "shard=$((SLURM_ARRAY_TASK_ID + 1))",
            "exec '/opt/kfi bin/kfi' campaign run /home/me/kfi/experiments/small.toml --accel tcg --shard \"$shard/2\" --jobs 2",
            "--scratch \"$scratch\"",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(text.contains(&format!("--results {}/shards/\"$shard\"-of-2", dir.path().display())), "{text}");
        let merge = merge_script(&campaign(), &opts(dir.path(), 2), &launch()).unwrap();
        assert!(merge.contains("/shards/*-of-2/campaign.sqlite"), "{merge}");
        assert!(
            merge.contains("campaign merge") && merge.contains("--complete") && merge.contains("report"),
            "{merge}"
        );
        // No partition or time: no such lines (the cluster's defaults apply).
        let bare = SlurmOptions { partition: None, time: None, ..opts(dir.path(), 2) };
        let text = shard_script(&campaign(), &bare, &launch()).unwrap();
        assert!(!text.contains("--partition") && !text.contains("--time") && !text.contains("--signal"), "{text}");
    }

    #[test]
    fn bad_shard_counts_and_a_results_directory_of_another_campaign_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = campaign();
        check(&c, &opts(dir.path(), 3)).unwrap();
        for bad in [0, 4] {
            let err = check(&c, &opts(dir.path(), bad)).unwrap_err().to_string();
            assert!(err.contains("has 3 experiments") && err.contains("1 to 3 shards"), "{err}");
        }
        // Scripts of another campaign.
        let mut other = campaign();
        other.file.name = "other".into();
        write(&other, &opts(dir.path(), 2), &launch()).unwrap();
        let err = check(&c, &opts(dir.path(), 2)).unwrap_err().to_string();
        assert!(err.contains("campaign `other`") && err.contains("--results"), "{err}");
        // The same campaign, sharded another way.
        write(&c, &opts(dir.path(), 2), &launch()).unwrap();
        std::fs::create_dir_all(dir.path().join("shards").join("1-of-2")).unwrap();
        check(&c, &opts(dir.path(), 2)).unwrap();
        let err = check(&c, &opts(dir.path(), 3)).unwrap_err().to_string();
        assert!(err.contains("2-shard run") && err.contains("--shards 2"), "{err}");
        // Without any shard stored, every shard is pending.
        assert_eq!(pending_shards(&c, dir.path()).unwrap(), [1, 2]);

        // A results directory of a run on one machine, with records.
        let local = tempfile::tempdir().unwrap();
        let store = Store::open(store_path(local.path())).unwrap();
        let mut meta = analysis::fixture::meta();
        (meta.name, meta.file_sha256, meta.total) = (c.file.name.clone(), c.sha256.clone(), 3);
        store.begin_campaign(&meta).unwrap();
        let mut record = analysis::fixture::records().remove(0);
        record.campaign = c.file.name.clone();
        store.insert(&record).unwrap();
        let err = check(&c, &opts(local.path(), 2)).unwrap_err().to_string();
        assert!(err.contains("1 experiments of `small` run without Slurm") && err.contains("merge"), "{err}");
    }

    #[test]
    fn submitting_without_sbatch_says_where_to_run_it() {
        let dir = tempfile::tempdir().unwrap();
        let submit = SlurmOptions { submit: true, ..opts(dir.path(), 1) };
        let err = check_with_path(&campaign(), &submit, Some(dir.path().into())).unwrap_err().to_string();
        assert!(err.contains("`sbatch` is not on PATH") && err.contains("drop --submit"), "{err}");
        // A PATH that has one (any executable of that name) passes.
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("sbatch"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(bin.join("sbatch"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        check_with_path(&campaign(), &submit, Some(bin.into())).unwrap();
    }
}
