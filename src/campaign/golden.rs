//! The golden run and kept golden snapshots: one fault-free run frozen as
//! every experiment's start, and, with `--keep-golden`, that snapshot kept
//! in the cache under a key naming everything it depends on, so a later
//! run, another shard on the same machine or `kfi replay` starts from the
//! same state instead of a new golden run.
//!
//! The key hashes the image (its directory, profile, recipe and build
//! time: the snapshot's disk overlays name the image's files as backing
//! files), the kernel's identity, the QEMU version, the VM settings that
//! shape the guest, the workload the golden run loads it with and its
//! seed. A kept snapshot lives in `$KFI_CACHE/golden/<key>/` (its service
//! and phase snapshots, each with its manifest, and `key.json`, the key's
//! inputs); it is written under a build lock into a partial directory
//! renamed into place, so two shards starting at once make it once, and a
//! corrupt one is made anew.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use recovery_sut::cache::{BuildLock, PartialDir};
use recovery_sut::{Cache, Golden, GuestImage, Sut, VmConfig};
use serde::Serialize;
use sha2::{Digest, Sha256};
use workloads::{DocList, Record};

use super::env::Environment;
use super::experiment;
use super::spec::{Campaign, WorkloadKind};

/// Bumped when what a golden run does changes in a way the other inputs
/// do not show (its load, how it freezes).
const FORMAT: u32 = 1;

/// Everything a golden snapshot depends on; its hash is the key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyInputs {
    /// [`FORMAT`].
    pub format: u32,
    /// The image's directory (its files back the snapshot's disk overlays).
    pub image_dir: String,
    /// Guest profile.
    pub profile: String,
    /// The image's recipe hash.
    pub recipe: String,
    /// When the image was built (a rebuild of the same recipe is another image).
    pub image_built_unix: u64,
    /// `Kernel::identity()`.
    pub kernel: String,
    /// `qemu --version`.
    pub qemu_version: String,
    /// Accelerator.
    pub accel: String,
    /// Guest RAM, MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Whether a data disk is attached.
    pub data_disk: bool,
    /// Agent heartbeat interval, seconds.
    pub heartbeat_s: u32,
    /// Extra kernel command line.
    pub extra_cmdline: Vec<String>,
    /// Watchdog timeout, seconds.
    pub watchdog_s: Option<u32>,
    /// Crash kernel reservation, MiB.
    pub crash_kernel_mib: Option<u32>,
    /// Fill disk, when one is attached.
    pub fill_disk: Option<String>,
    /// Free-page reporting.
    pub free_page_reporting: bool,
    /// The campaign's `[workload]` (what the golden run loads the guest with).
    pub workload: serde_json::Value,
    /// The campaign's seed (the golden load's).
    pub seed: u64,
}

impl KeyInputs {
    /// The inputs of a campaign's golden snapshot on `image` with `config`
    /// under QEMU `qemu_version`.
    pub fn new(image: &GuestImage, qemu_version: &str, config: &VmConfig, campaign: &Campaign) -> Result<KeyInputs> {
        Ok(KeyInputs {
            format: FORMAT,
            image_dir: image.dir.display().to_string(),
            profile: image.profile().to_string(),
            recipe: image.meta.recipe.clone(),
            image_built_unix: image.meta.built_unix,
            kernel: image.kernel.identity(),
            qemu_version: qemu_version.to_string(),
            accel: config.accel.name().to_string(),
            memory_mib: config.memory_mib,
            cpus: config.cpus,
            data_disk: config.data_disk,
            heartbeat_s: config.heartbeat_s,
            extra_cmdline: config.extra_cmdline.clone(),
            watchdog_s: config.watchdog_s,
            crash_kernel_mib: config.crash_kernel_mib,
            fill_disk: config.fill_disk.as_ref().map(|p| p.display().to_string()),
            free_page_reporting: config.free_page_reporting,
            workload: serde_json::to_value(&campaign.file.workload).context("serializing the workload")?,
            seed: campaign.file.seed,
        })
    }

    /// The key: the first 20 hex digits of the SHA-256 of the inputs as
    /// JSON (fields in declaration order, maps sorted).
    pub fn key(&self) -> String {
        let json = serde_json::to_vec(self).expect("plain data serializes");
        hex::encode(Sha256::digest(&json))[..20].to_string()
    }
}

/// Where a campaign's golden snapshot is kept, and under which key.
#[derive(Debug, Clone)]
pub struct KeptGolden {
    /// The key.
    pub key: String,
    /// `$KFI_CACHE/golden/<key>`.
    pub dir: PathBuf,
    /// What the key hashes.
    pub inputs: KeyInputs,
}

impl KeptGolden {
    /// The kept golden snapshot's place for `campaign` on `image` with
    /// `config` (asks QEMU for its version); nothing is read or written.
    pub fn new(cache: &Cache, image: &GuestImage, config: &VmConfig, campaign: &Campaign) -> Result<KeptGolden> {
        let qemu = recovery_sut::vm::qemu_version().context("asking QEMU for its version")?;
        let inputs = KeyInputs::new(image, &qemu, config, campaign)?;
        let key = inputs.key();
        Ok(KeptGolden { dir: cache.subdir("golden")?.join(&key), key, inputs })
    }

    /// The kept snapshot, when there is a usable one; a corrupt one is
    /// reported in one line and left for the next `--keep-golden` run to
    /// replace.
    pub fn open(&self, image: &GuestImage, config: &VmConfig) -> Option<Golden> {
        if !self.dir.exists() {
            return None;
        }
        match Golden::open(&self.dir, image, config) {
            Ok(golden) => Some(golden),
            Err(e) => {
                eprintln!("kfi: the kept golden snapshot {} is unusable ({e}); not using it", self.key);
                None
            }
        }
    }

    /// The kept snapshot, made by a golden run (and kept) when there is
    /// none or it is unusable. Holds the key's build lock meanwhile: a
    /// second run on the same key waits, then reuses the first one's.
    pub fn obtain(&self, env: &Environment<'_>, docs: &DocList, campaign: &Campaign) -> Result<(Golden, Source)> {
        let _lock = BuildLock::acquire(&self.dir)?;
        if self.dir.exists() {
            match Golden::open(&self.dir, env.image, &env.config) {
                Ok(golden) => return Ok((golden, Source::Kept { key: self.key.clone(), reused: true })),
                Err(e) => eprintln!("kfi: the kept golden snapshot {} is unusable ({e}); making it anew", self.key),
            }
        }
        let partial = PartialDir::begin(&self.dir)?;
        // The snapshot holds the guest's memory: only kfi's user reads it.
        recovery_sut::private::make(partial.path())
            .with_context(|| format!("making {} private", partial.path().display()))?;
        golden_run(env, docs, partial.path(), campaign)?;
        let inputs = serde_json::to_string_pretty(&self.inputs)? + "\n";
        std::fs::write(partial.path().join("key.json"), inputs).context("writing the golden snapshot's key.json")?;
        partial.commit()?;
        let golden = Golden::open(&self.dir, env.image, &env.config)
            .with_context(|| format!("reopening the golden snapshot just kept in {}", self.dir.display()))?;
        Ok((golden, Source::Kept { key: self.key.clone(), reused: false }))
    }
}

/// Where a run's or a replay's golden snapshot came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The kept one of this key; `reused`: it existed before this run.
    Kept {
        /// The key.
        key: String,
        /// Made before this run.
        reused: bool,
    },
    /// A golden run of its own, removed afterwards.
    New,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Kept { key, reused: true } => write!(f, "from the kept golden snapshot {key}"),
            Source::Kept { key, reused: false } => write!(f, "from a new golden run, kept as {key}"),
            Source::New => write!(f, "from a new golden run"),
        }
    }
}

/// The golden run's verdict on its clients' records: how many requests
/// failed, or an error when the service is not healthy. A wrong answer is
/// a broken service. A request that timed out or lost its connection is
/// not, while such requests stay rare and the service answers at the end:
/// the guest under emulation, the workload and the probe's 100 connections
/// a second can make one wait past its timeout on a 2-core host.
fn health(records: &[Record], profile: &str) -> Result<usize> {
    let wrong = records.iter().filter(|r| r.outcome.is_response() && !r.is_correct()).count();
    let failed = records.iter().filter(|r| !r.is_correct()).count() - wrong;
    // Answering at the end: a correct answer ended after the last failed
    // request began (with two clients, one may still be waiting on a lost
    // request when the run ends while the other is answered).
    let last_failed_start = records.iter().filter(|r| !r.is_correct()).map(|r| r.start).fold(f64::MIN, f64::max);
    let last_correct = records.iter().any(|r| r.is_correct() && r.end > last_failed_start);
    let too_many = failed as f64 > GOLDEN_FAILED_SHARE * records.len() as f64;
    if records.is_empty() || wrong > 0 || too_many || !last_correct {
        bail!(
            "the golden (fault-free) run got {wrong} wrong answers and {failed} failed requests out of {}{}: the \
             service is not healthy before any fault, so no experiment could be judged; check the guest with \
             `kfi boot --guest {profile}`",
            records.len(),
            if last_correct || records.is_empty() { "" } else { ", and no correct answer after the last failure" },
        );
    }
    Ok(failed)
}

/// The share of a golden run's requests that may fail (time out, lose
/// their connection) without its service counting as unhealthy.
const GOLDEN_FAILED_SHARE: f64 = 0.1;

/// How long a golden run loads its guest at most while its records are
/// not yet healthy.
const GOLDEN_LOAD_LIMIT: Duration = Duration::from_secs(20);

/// Boots the guest once, checks that a fault-free run serves only correct
/// answers (a rare request that failed aside), and freezes the running
/// service as every experiment's start.
pub fn golden_run(env: &Environment<'_>, docs: &DocList, dir: &Path, campaign: &Campaign) -> Result<Golden> {
    let mut sut = Sut::boot(env.image, &env.config).context("booting the golden system")?;
    let origin = Instant::now();
    let w = &campaign.file.workload;
    if w.kind == WorkloadKind::Rubis {
        // The site's pages need MariaDB, which comes up after Apache.
        sut.vm().wait_phase("services-ready", Duration::from_secs(300))?;
    }
    // Lenient with the static workload's first answers, as before any
    // fault; RUBiS pages get their own timeout.
    let timeout = match w.kind {
        WorkloadKind::Apache => w.timeout().max(Duration::from_secs(2)),
        WorkloadKind::Rubis => w.timeout(),
    };
    let load = experiment::client_load(w, docs, w.warmup().max(Duration::from_secs(1)), timeout, campaign.file.seed);
    // The availability probe runs here as in every experiment, so the
    // golden run sees the load the experiments do.
    let probe = crate::load::RunningLoad::start(
        sut.vm().http_addr(),
        crate::load::ClientLoad::probe(docs, GOLDEN_LOAD_LIMIT),
        origin,
    );
    // A short load on a busy host may end on a request that timed out, or
    // hold too few answers for one timeout to be rare: load on, a round at
    // a time, until the records are healthy or the limit is reached (the
    // judgement is then on everything they hold).
    let profile = env.provenance.profile.to_string();
    let mut records = Vec::new();
    loop {
        let stop = Arc::new(AtomicBool::new(false));
        records.extend(crate::load::run(sut.vm().http_addr(), &load, origin, stop)?.records);
        // A wrong answer is a broken service however long one waits.
        let wrong = records.iter().any(|r| r.outcome.is_response() && !r.is_correct());
        if wrong || health(&records, &profile).is_ok() || origin.elapsed() >= GOLDEN_LOAD_LIMIT {
            break;
        }
    }
    let probed = probe.finish()?.records;
    // The health check is the workload's: a probe request can time out on
    // a guest the host's load slows (it allows 1 s, at 100 a second).
    let probe_failed = probed.iter().filter(|r| !r.is_correct()).count();
    if probe_failed > 0 {
        tracing::warn!("{probe_failed} of {} availability-probe requests failed in the golden run", probed.len());
    }
    let failed = health(&records, &profile)?;
    if failed > 0 {
        tracing::warn!(
            "{failed} of {} requests of the golden run timed out or lost their connection; every answer was right",
            records.len()
        );
    }
    let golden = sut.freeze(dir).context("freezing the golden snapshot")?;
    Ok(golden)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use workloads::RequestOutcome;

    fn inputs() -> KeyInputs {
        KeyInputs {
            format: FORMAT,
            image_dir: "/cache/guests/tiny-6.1.0-56-amd64-abc".into(),
            profile: "tiny".into(),
            recipe: "abc".into(),
            image_built_unix: 1_700_000_000,
            kernel: "debian:linux-image-6.1.0-56-amd64=6.1.192-2".into(),
            qemu_version: "8.2.2".into(),
            accel: "tcg".into(),
            memory_mib: 256,
            cpus: 1,
            data_disk: true,
            heartbeat_s: 1,
            extra_cmdline: vec![],
            watchdog_s: None,
            crash_kernel_mib: None,
            fill_disk: None,
            free_page_reporting: false,
            workload: serde_json::json!({"kind": "apache", "clients": 2, "warmup_s": 1.0}),
            seed: 2024,
        }
    }

    #[test]
    fn a_golden_run_refuses_wrong_answers_and_tolerates_a_rare_failed_request() {
        let record =
            |end: f64, outcome| Record { start: end - 0.01, end, path: "/index.html".into(), outcome, bytes: 0 };
        let mut records: Vec<Record> = (1..=20).map(|i| record(f64::from(i) * 0.05, RequestOutcome::Ok)).collect();
        assert_eq!(health(&records, "tiny").unwrap(), 0);
        records[3].outcome = RequestOutcome::Timeout;
        assert_eq!(health(&records, "tiny").unwrap(), 1, "one timeout in 20");
        records[4].outcome = RequestOutcome::IoError;
        records[5].outcome = RequestOutcome::ConnectError;
        let err = health(&records, "tiny").unwrap_err().to_string();
        assert!(err.contains("0 wrong answers and 3 failed requests out of 20"), "{err}");
        let mut wrong: Vec<Record> = (1..=20).map(|i| record(f64::from(i) * 0.05, RequestOutcome::Ok)).collect();
        wrong[7].outcome = RequestOutcome::WrongContent;
        assert!(health(&wrong, "tiny").unwrap_err().to_string().contains("1 wrong answers"));
        let mut ends_failed: Vec<Record> = (1..=20).map(|i| record(f64::from(i) * 0.05, RequestOutcome::Ok)).collect();
        ends_failed[19].outcome = RequestOutcome::Timeout;
        let err = health(&ends_failed, "tiny").unwrap_err().to_string();
        assert!(
            err.contains("no correct answer after the last failure") && err.contains("kfi boot --guest tiny"),
            "{err}"
        );
        // One client's last request timed out while the other was still
        // answered after it began: the service answers at the end.
        let mut one_waiting = ends_failed.clone();
        one_waiting[19] = Record { start: 0.9, end: 1.9, ..one_waiting[19].clone() };
        one_waiting.push(record(1.0, RequestOutcome::Ok));
        assert_eq!(health(&one_waiting, "tiny").unwrap(), 1);
        assert!(health(&[], "tiny").is_err());
    }

    #[test]
    fn the_key_is_stable_and_changes_with_every_input() {
        let base = inputs();
        assert_eq!(base.key(), inputs().key());
        assert_eq!(base.key().len(), 20);
        type Change = (&'static str, fn(&mut KeyInputs));
        let changes: Vec<Change> = vec![
            ("format", |k| k.format += 1),
            ("image_dir", |k| k.image_dir.push('x')),
            ("profile", |k| k.profile = "debian".into()),
            ("recipe", |k| k.recipe.push('x')),
            ("image_built_unix", |k| k.image_built_unix += 1),
            ("kernel", |k| k.kernel.push('x')),
            ("qemu_version", |k| k.qemu_version = "9.0.0".into()),
            ("accel", |k| k.accel = "kvm".into()),
            ("memory_mib", |k| k.memory_mib = 512),
            ("cpus", |k| k.cpus = 2),
            ("data_disk", |k| k.data_disk = false),
            ("heartbeat_s", |k| k.heartbeat_s = 2),
            ("extra_cmdline", |k| k.extra_cmdline.push("nmi_watchdog=1".into())),
            ("watchdog_s", |k| k.watchdog_s = Some(5)),
            ("crash_kernel_mib", |k| k.crash_kernel_mib = Some(128)),
            ("fill_disk", |k| k.fill_disk = Some("/tmp/fill".into())),
            ("free_page_reporting", |k| k.free_page_reporting = true),
            ("workload", |k| k.workload["clients"] = 3.into()),
            ("workload warmup", |k| k.workload["warmup_s"] = 1.5.into()),
            ("seed", |k| k.seed += 1),
        ];
        // Every field is covered by a change above.
        let fields = serde_json::to_value(&base).unwrap().as_object().unwrap().len();
        assert_eq!(fields + 1, changes.len());
        let mut keys = std::collections::BTreeSet::from([base.key()]);
        for (what, change) in changes {
            let mut k = inputs();
            change(&mut k);
            assert!(keys.insert(k.key()), "changing {what} did not change the key");
        }
    }

    #[test]
    fn the_source_says_which_golden_snapshot() {
        let kept = Source::Kept { key: "0123".into(), reused: true };
        assert_eq!(kept.to_string(), "from the kept golden snapshot 0123");
        assert_eq!(Source::New.to_string(), "from a new golden run");
    }
}
