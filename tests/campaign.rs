//! Campaigns end to end with the real tiny guest: a run killed with -9
//! resumes with nothing lost or done twice, shard halves merge into the
//! same set as one run, and the report is written from the store.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use analysis::store::Store;
use support::{kfi, Spawned};

mod support;

/// A short sysrq campaign: `reps` service-restore crashes.
fn experiment_file(dir: &Path, name: &str, reps: u32) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, experiment_text(name, reps)).unwrap();
    path
}

fn experiment_text(name: &str, reps: u32) -> String {
    format!(
        r#"
name = "{name}"
seed = 5
repetitions = {reps}

[guest]
profile = "tiny"
accel = "tcg"
data_disk = true

[workload]
kind = "apache"
clients = 1
warmup_s = 0.5
acked_writes = 2

[observe]
window_s = 20.0
tail_s = 0.2
hang_timeout_s = 5.0

[[inject]]
crash = "sysrq"

[recovery]
strategies = ["service-restore"]
"#
    )
}

fn stored(results: &Path, campaign: &str) -> Vec<analysis::record::ExperimentRecord> {
    let path = results.join("campaign.sqlite");
    if !path.exists() {
        return Vec::new();
    }
    Store::open(&path).unwrap().records(campaign).unwrap_or_default()
}

fn run(file: &Path, results: &Path, extra: &[&str]) {
    run_with(kfi(), file, results, extra);
}

/// `kfi campaign run FILE --results RESULTS EXTRA…` through `kfi` (with
/// whatever environment it was given), stdin closed.
fn campaign_run(mut kfi: Command, file: &Path, results: &Path, extra: &[&str]) -> std::process::Output {
    kfi.args(["campaign", "run"])
        .arg(file)
        .arg("--results")
        .arg(results)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// [`campaign_run`], which must succeed; its stdout and stderr.
fn run_with(kfi: Command, file: &Path, results: &Path, extra: &[&str]) -> (String, String) {
    let out = campaign_run(kfi, file, results, extra);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kfi campaign run failed:\n{stdout}\n{stderr}");
    (stdout.into_owned(), stderr.into_owned())
}

#[test]
fn a_campaign_killed_with_sigkill_resumes_without_loss_or_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    let file = experiment_file(tmp.path(), "resume", 4);
    let results = tmp.path().join("results");
    // A temporary directory of its own, to see what the killed run leaves.
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let mut child = Spawned::start(
        kfi()
            .env("TMPDIR", &scratch)
            .args(["campaign", "run"])
            .arg(&file)
            .arg("--results")
            .arg(&results)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // Kill it as soon as the first record is durable, in the middle of the
    // second experiment.
    let deadline = Instant::now() + Duration::from_secs(300);
    while stored(&results, "resume").is_empty() {
        assert!(Instant::now() < deadline, "no experiment stored within 300 s");
        assert!(child.try_wait().unwrap().is_none(), "kfi ended before the kill");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(700));
    let killed = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    let before = stored(&results, "resume");
    assert!(!before.is_empty() && before.len() < 4, "killed too late to test a resume: {} stored", before.len());
    // The killed run's VM directories stay behind (its QEMU died with it),
    // each naming its dead owner; the next run removes them.
    let owned_by_killed = |dir: &PathBuf| {
        std::fs::read_to_string(dir.join(".kfi-owner")).is_ok_and(|o| o.starts_with(&format!("{killed} ")))
    };
    let dead: Vec<PathBuf> =
        std::fs::read_dir(&scratch).unwrap().map(|e| e.unwrap().path()).filter(owned_by_killed).collect();
    assert!(!dead.is_empty(), "the killed run left no directory naming it in {}", scratch.display());

    let mut resume = kfi();
    resume.env("TMPDIR", &scratch);
    run_with(resume, &file, &results, &[]);
    let still: Vec<&PathBuf> = dead.iter().filter(|d| d.exists()).collect();
    assert!(still.is_empty(), "the dead run's directories were not removed: {still:?}");
    let after = stored(&results, "resume");
    let indices: Vec<u64> = after.iter().map(|r| r.experiment).collect();
    assert_eq!(indices, vec![0, 1, 2, 3], "every experiment exactly once");
    // What was stored before the kill is untouched.
    for r in &before {
        assert_eq!(after.iter().find(|a| a.experiment == r.experiment), Some(r));
    }
    for r in &after {
        assert_eq!(r.outcome.name(), "panic", "{r:?}");
        let rec = r.recovery.as_ref().unwrap();
        assert!(rec.recovered, "{r:?}");
        assert_eq!(r.lost_writes, Some(0), "acknowledged writes lost: {r:?}");
        assert!(r.downtime_s.unwrap() > 0.0);
        // The availability probe saw the outage too, by its own requests.
        let probe = r.probe_outage_s.unwrap_or_else(|| panic!("no probe outage: {r:?}"));
        assert!(probe > 0.0 && probe < 30.0, "{r:?}");
        // Every restore runs on the standby QEMU launched for it before the
        // failure, a fallback known beforehand (the data disk written) too.
        assert_eq!(rec.on_standby, Some(rec.used.name() != "full-reboot"), "{r:?}");
        // The crash came soon after a correct answer to the clients.
        let answered = r.metrics.get("answered_before_injection_s").copied();
        assert!(answered.is_some_and(|a| (0.0..=0.1).contains(&a)), "{r:?}");
        assert_eq!(r.provenance.accel.name(), "tcg");
        assert!(!r.timeline.is_empty());
    }
    // A rerun of a finished campaign does nothing.
    run(&file, &results, &[]);
    assert_eq!(stored(&results, "resume").len(), 4);
    assert!(!results.join(".golden").exists(), "golden snapshot left behind");

    // The report comes from the store alone.
    let out = kfi().arg("report").arg(&results).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = std::fs::read_to_string(results.join("report.md")).unwrap();
    // No full reboot ran, so nothing is compared, with no published
    // figure beside it.
    let first = report.lines().next().unwrap();
    assert!(first.starts_with("Measured: no downtime comparison") && !first.contains("published"), "{report}");
}

#[test]
fn shard_halves_merge_into_the_same_set_as_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let file = experiment_file(tmp.path(), "sharded", 2);
    let (a, b, merged) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("merged"));
    run(&file, &a, &["--shard", "1/2"]);
    run(&file, &b, &["--shard", "2/2"]);
    assert_eq!(stored(&a, "sharded").iter().map(|r| r.experiment).collect::<Vec<_>>(), vec![0]);
    assert_eq!(stored(&b, "sharded").iter().map(|r| r.experiment).collect::<Vec<_>>(), vec![1]);
    let out = kfi().args(["campaign", "merge"]).arg(&merged).arg(&a).arg(&b).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let keys: BTreeSet<String> = stored(&merged, "sharded").into_iter().map(|r| r.key).collect();
    let want: BTreeSet<String> =
        ["crash=sysrq strategy=service-restore rep=0", "crash=sysrq strategy=service-restore rep=1"]
            .into_iter()
            .map(String::from)
            .collect();
    assert_eq!(keys, want);
    // Merging again imports nothing new.
    let out = kfi().args(["campaign", "merge"]).arg(&merged).arg(&a).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 records imported"));

    // Replaying a stored experiment re-runs it (the acknowledged writes make
    // the service snapshot stale both times: the same fallback) and stores
    // nothing.
    let out = kfi().args(["replay"]).arg(&file).arg("0").arg("--results").arg(&a).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("experiment 0 of sharded"), "{text}");
    for row in ["outcome", "strategy used", "downtime (s)", "lost writes"] {
        assert!(text.contains(row), "{row} missing:\n{text}");
    }
    assert!(text.contains("same experiment"), "{text}");
    assert_eq!(stored(&a, "sharded").len(), 1);
}

/// RUBiS in a campaign on the real debian guest: bidding sessions write
/// the data disk, so the service snapshot is stale at the crash and
/// service-restore must fall back to the phase snapshot, taken with Apache
/// and PHP running and before the data disk and MariaDB; known before the
/// failure, that fallback runs on the standby QEMU. MariaDB recovers from
/// the disk, and every bid, comment and purchase the site acknowledged is
/// still there afterwards.
#[test]
fn a_rubis_campaign_restores_the_data_independent_phase_and_keeps_every_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("rubis.toml");
    std::fs::write(
        &file,
        r#"
name = "rubis"
seed = 3
repetitions = 1

[guest]
profile = "debian"
accel = "tcg"

[workload]
kind = "rubis"
mix = "bidding"
clients = 4
think_ms = 100
warmup_s = 8.0

[observe]
window_s = 20.0
tail_s = 6.0
hang_timeout_s = 10.0

[[inject]]
crash = "sysrq"

[recovery]
strategies = ["service-restore"]
"#,
    )
    .unwrap();
    let results = tmp.path().join("results");
    run(&file, &results, &[]);
    let records = stored(&results, "rubis");
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.workload.name(), "rubis");
    let recovery = r.recovery.as_ref().expect("a recovery");
    assert!(recovery.recovered, "{recovery:?}");
    assert_eq!(recovery.used.name(), "phase-restore", "{recovery:?}");
    assert!(recovery.fallback_reason.as_deref().unwrap_or("").contains("data disk"), "{recovery:?}");
    assert_eq!(r.params.get("phase_boundary").map(String::as_str), Some("data-independent-services"), "{r:?}");
    assert_eq!(recovery.on_standby, Some(true), "the fallback was known before the failure: {recovery:?}");
    let stages = recovery.stages.as_ref().expect("the recovery's stages");
    assert!(stages.data_mount_s.is_some() && stages.database_s.is_some(), "{stages:?}");
    assert!(stages.first_correct_s.is_some(), "{stages:?}");
    // Clients were held at the host until MariaDB ran: the availability
    // probe (the index page, which Apache alone would serve) got no answer
    // from the detection until the database was up.
    let held = recovery.restart_s + stages.data_mount_s.unwrap() + stages.database_s.unwrap();
    let probe = r.probe_outage_s.expect("a probe outage");
    assert!(probe >= held - 0.05, "the probe was answered {probe} s after the failure, before MariaDB ran ({held} s)");
    assert!(r.acked_writes.unwrap_or(0) > 0, "the bidding sessions had no write acknowledged: {r:?}");
    assert_eq!(r.lost_writes, Some(0));
    assert!(r.downtime_s.is_some_and(|d| d > 0.0), "{:?}", r.downtime_s);
}

#[test]
fn a_malformed_experiment_file_is_refused_with_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("bad.toml");
    std::fs::write(&file, "name = \"x\"\nseed = 1\n[guest]\nprofile = \"tiny\"\nmemory = 3\n").unwrap();
    let out = kfi().args(["campaign", "run"]).arg(&file).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("line 5") && err.contains("memory"), "{err}");
}

// The slowed restore needs a kfi built with the `test-knobs` feature
// (`scripts/test` builds it so): without it the delay is never read.
#[cfg(feature = "test-knobs")]
#[test]
fn check_passes_on_its_baseline_and_fails_when_a_restore_is_made_slower() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("regress.toml");
    std::fs::write(
        &file,
        experiment_text("regress", 1)
            .replace(r#"["service-restore"]"#, r#"["full-reboot", "service-restore"]"#)
            .replace("acked_writes = 2", "acked_writes = 0"),
    )
    .unwrap();
    let baseline = tmp.path().join("baseline.json");
    let check = |extra: &[&str], delay_ms: Option<u64>| {
        let mut cmd = kfi();
        cmd.arg("check").arg(&file).arg("--baseline").arg(&baseline).args(["--slack", "0.3"]).args(extra);
        if let Some(ms) = delay_ms {
            cmd.env("KFI_TEST_RESTORE_DELAY_MS", ms.to_string());
        }
        cmd.output().unwrap()
    };
    let out = check(&["--update-baseline"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(baseline.exists());
    let out = check(&[], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("check passed"), "{stdout}");
    // A restore made 5 s slower on purpose: its ratio to a full reboot
    // (about 4 s on TCG, 10 s on a loaded machine) rises by far more than
    // the 0.3 slack, which only has to absorb one unslowed run's noise
    // (one sample per strategy: a 2-core CI machine once saw 6.0% -> 13.5%).
    let out = check(&[], Some(5000));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("FAIL crash:sysrq service-restore regressed"), "{stdout}");
}

/// An experiment whose QEMU fails every time is retried, then stored as
/// `harness-error`; the campaign completes the rest and says so in its exit
/// status; `--retry-errors` reruns only that one. A golden snapshot that
/// breaks mid-campaign (its device state truncated before experiment 2) is
/// made anew, and experiment 2 runs from the new one.
#[cfg(feature = "test-knobs")]
#[test]
fn a_harness_error_is_retried_stored_and_rerun_alone_and_a_broken_golden_is_made_anew() {
    let tmp = tempfile::tempdir().unwrap();
    let file = experiment_file(tmp.path(), "harness", 3);
    let results = tmp.path().join("results");
    let mut knobs = kfi();
    knobs.env("KFI_TEST_FAIL_EXPERIMENT", "1").env("KFI_TEST_CORRUPT_GOLDEN", "2");
    let out = campaign_run(knobs, &file, &results, &["--retries", "1"]);
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "harness errors remain: exit 3\n{text}");
    assert!(text.contains("harness-error") && text.contains("--retry-errors"), "{text}");
    assert!(text.contains("experiment 2: the golden snapshot stopped verifying"), "{text}");
    assert!(text.contains("made anew 1 times"), "{text}");
    let records = stored(&results, "harness");
    assert_eq!(records.iter().map(|r| r.experiment).collect::<Vec<_>>(), vec![0, 1, 2], "the rest completed");
    let failed = &records[1];
    assert_eq!(failed.outcome.name(), "harness-error");
    let h = failed.harness_error.as_ref().unwrap();
    assert_eq!(h.attempts, 2, "the first run and one retry: {h:?}");
    assert!(h.errors.iter().all(|e| e.contains("QEMU refused to start")), "{h:?}");
    assert!(failed.recovery.is_none() && failed.downtime_s.is_none());
    for r in [&records[0], &records[2]] {
        assert_eq!(r.outcome.name(), "panic", "{r:?}");
        assert!(r.harness_error.is_none(), "{r:?}");
    }

    let status = kfi().args(["campaign", "status"]).arg(&file).arg("--results").arg(&results).output().unwrap();
    let listed = String::from_utf8_lossy(&status.stdout);
    assert!(listed.contains("harness-error 1: ") && listed.contains("QEMU refused to start"), "{listed}");

    // Without the knob, only experiment 1 runs again and replaces its record.
    run(&file, &results, &["--retry-errors"]);
    let after = stored(&results, "harness");
    assert_eq!(after.len(), 3);
    assert_eq!(after[1].outcome.name(), "panic", "{:?}", after[1]);
    assert!(after[1].harness_error.is_none());
    assert_eq!((&after[0], &after[2]), (&records[0], &records[2]), "the others were not run again");
}

/// A `[restore]` campaign (one small guest, lazy restores from the host's
/// page cache) measures every restore it names; an experiment whose every
/// attempt fails is stored as `harness-error` with its parameters and the
/// others are measured; `--retry-errors` measures only it.
#[cfg(feature = "test-knobs")]
#[test]
fn a_restore_campaign_measures_each_restore_and_stores_a_failing_one_as_a_harness_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("restore.toml");
    std::fs::write(
        &file,
        r#"
name = "restore"
seed = 1
repetitions = 3

[guest]
profile = "tiny"
accel = "tcg"
data_disk = true

[workload]
kind = "apache"

[restore]
ram_mb = [256]
reduction = ["off"]
restore_path = ["lazy"]
storage = ["page-cache"]
cache = ["warm"]
page_cache_fill = 0.0
"#,
    )
    .unwrap();
    let results = tmp.path().join("results");
    let mut knobs = kfi();
    knobs.env("KFI_TEST_FAIL_EXPERIMENT", "1");
    let out = campaign_run(knobs, &file, &results, &["--retries", "1"]);
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "harness errors remain: exit 3\n{text}");
    let records = stored(&results, "restore");
    assert_eq!(records.iter().map(|r| r.experiment).collect::<Vec<_>>(), vec![0, 1, 2], "{text}");
    let failed = &records[1];
    assert_eq!(failed.outcome.name(), "harness-error");
    assert_eq!(failed.harness_error.as_ref().map(|h| h.attempts), Some(2), "{failed:?}");
    assert_eq!(failed.params.get("ram_mb").map(String::as_str), Some("256"), "{failed:?}");
    assert!(!failed.metrics.contains_key("restore_s"), "{failed:?}");
    for r in [&records[0], &records[2]] {
        assert_eq!(r.outcome.name(), "restored", "{r:?}");
        let restore_s = r.metrics["restore_s"];
        assert!(restore_s > 0.0 && restore_s < 60.0, "{r:?}");
        assert!(r.metrics["load_s"] <= restore_s, "{r:?}");
        assert!(r.metrics["lazy_snapshot_bytes"] > 0.0, "{r:?}");
    }
    run(&file, &results, &["--retry-errors"]);
    let after = stored(&results, "restore");
    assert_eq!(after[1].outcome.name(), "restored", "{:?}", after[1]);
    assert_eq!((&after[0], &after[2]), (&records[0], &records[2]), "the others were not run again");
}

/// The cache root kfi uses (as `recovery_sut::Cache::from_env`).
fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("KFI_CACHE") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Path::new(&dir).join("kfi");
    }
    Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache/kfi")
}

/// `--keep-golden`: the first shard makes and keeps the golden snapshot,
/// the second shard and `kfi replay` start from it, and a corrupt one is
/// made anew with a one-line message.
#[test]
fn a_kept_golden_snapshot_is_reused_by_shards_and_replays_and_remade_when_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    // A seed of its own: a key no other run has kept.
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let text = experiment_text("kept", 2).replace("seed = 5", &format!("seed = {seed}")).replace("20.0", "6.0");
    let file = tmp.path().join("kept.toml");
    std::fs::write(&file, text).unwrap();
    let run_kept =
        |results: &Path, extra: &[&str]| run_with(kfi(), &file, results, &[&["--keep-golden"], extra].concat());
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    let (first, _) = run_kept(&a, &["--shard", "1/2"]);
    let key = first.split("kept as ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap_or_else(|| {
        panic!("no new kept golden snapshot:\n{first}");
    });
    let dir = cache_root().join("golden").join(key);
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
            let _ = std::fs::remove_file(self.0.with_extension("lock"));
        }
    }
    let _remove = Remove(dir.clone());
    assert!(dir.join("key.json").exists() && dir.join("service/manifest.json").exists());
    assert!(!a.join(".golden").exists());

    let (second, _) = run_kept(&b, &["--shard", "2/2"]);
    assert!(second.contains(&format!("from the kept golden snapshot {key}")), "{second}");

    let out = kfi().args(["replay"]).arg(&file).arg("0").arg("--results").arg(&a).output().unwrap();
    let replay = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{replay}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(replay.contains(&format!("replayed from the kept golden snapshot {key}")), "{replay}");

    // A truncated device state: made anew, not fatal.
    let state = dir.join("service/state");
    let len = std::fs::metadata(&state).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&state).unwrap().set_len(len / 2).unwrap();
    let (third, stderr) = run_kept(&c, &["--limit", "1"]);
    assert!(stderr.contains(&format!("kept golden snapshot {key} is unusable")), "{stderr}");
    assert!(third.contains(&format!("kept as {key}")), "{third}");
    assert_eq!(stored(&c, "kept").len(), 1);
}

/// kexec-reboot runs in a campaign next to full reboot: its experiments
/// start from a golden snapshot of their own whose guest reserved a crash
/// kernel (and says so in its records), the full reboots' guest reserved
/// none, both recover, and the report names the reservation.
#[test]
fn kexec_reboot_runs_in_a_campaign_from_a_golden_snapshot_of_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("kexec.toml");
    let text = experiment_text("kexec", 1)
        .replace("acked_writes = 2\n", "")
        .replace("strategies = [\"service-restore\"]", "strategies = [\"full-reboot\", \"kexec-reboot\"]");
    std::fs::write(&file, text).unwrap();
    let results = tmp.path().join("results");
    run(&file, &results, &[]);
    let records = stored(&results, "kexec");
    assert_eq!(records.len(), 2, "{records:?}");
    let crash_kernel = analysis::figures::names::CRASH_KERNEL_MIB;
    for r in &records {
        let recovery = r.recovery.as_ref().unwrap();
        assert!(recovery.recovered, "{r:?}");
        assert_eq!(recovery.used, recovery.requested, "each ran as itself: {recovery:?}");
        match recovery.requested.name() {
            "kexec-reboot" => {
                assert_eq!(r.params.get(crash_kernel).map(String::as_str), Some("128"), "{:?}", r.params);
                assert_eq!(recovery.cause.name(), "guest-crash-loaded", "the crash kernel was loaded: {recovery:?}");
            }
            _ => assert!(!r.params.contains_key(crash_kernel), "{:?}", r.params),
        }
    }
    let summary = kfi().args(["report"]).arg(&results).output().unwrap();
    assert!(summary.status.success(), "{}", String::from_utf8_lossy(&summary.stderr));
    let md = std::fs::read_to_string(results.join("report.md")).unwrap();
    assert!(md.contains("kexec-reboot's guests booted with a crash kernel reservation"), "{md}");
    assert!(md.contains("| kexec-reboot |"), "{md}");
}
