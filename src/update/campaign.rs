//! A kernel-update campaign (`kfi update --experiment FILE`): every
//! experiment of the file, one fresh guest each, stored as it ends in the
//! results directory's `updates.jsonl` (resumable: a rerun skips what is
//! stored), then `report.md`, `summary.json` and the figures.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use analysis::update::{
    write_update_report, RecordedShadow, RecordedUpdateStrategy, UpdateRecord, UpdateReport, UpdateStore,
};
use anyhow::{bail, Context, Result};
use recovery_sut::recovery::UpdateStrategy;
use recovery_sut::{Cache, KernelChoice, VmConfig};

use super::spec::UpdateCampaign;
use super::{one, UpdatePlan, UpdateTrial};
use crate::setup::prepare_updatable_guest;

/// The copy of the experiment file a results directory keeps.
pub const EXPERIMENT_COPY: &str = "experiment.toml";

/// What a campaign run did.
pub struct UpdateRun {
    /// Experiments run now (stored).
    pub ran: usize,
    /// Experiments already stored before.
    pub resumed: usize,
    /// Whether it stopped early (Ctrl-C); the rest runs on resume.
    pub interrupted: bool,
    /// The report, when every experiment is stored.
    pub report: Option<UpdateReport>,
}

fn recorded(s: UpdateStrategy) -> RecordedUpdateStrategy {
    match s {
        UpdateStrategy::Reboot => RecordedUpdateStrategy::Reboot,
        UpdateStrategy::Kexec => RecordedUpdateStrategy::Kexec,
        UpdateStrategy::ShadowReboot => RecordedUpdateStrategy::ShadowReboot,
    }
}

/// Runs what `results` lacks of `campaign`; `step` hears of each
/// experiment; `stop` ends it between experiments.
pub fn run(
    cache: &Cache,
    campaign: &UpdateCampaign,
    file_text: &str,
    results: &Path,
    stop: &AtomicBool,
    step: &dyn Fn(&str),
) -> Result<UpdateRun> {
    let mut store = UpdateStore::open(results)?;
    if store.dropped_torn_line() {
        step("dropped a record cut short by an earlier crash; its experiment runs again");
    }
    let copy = results.join(EXPERIMENT_COPY);
    match std::fs::read_to_string(&copy) {
        Ok(stored) if stored != file_text => bail!(
            "{} holds the results of another experiment file ({} differs); give --results another directory or move it away",
            results.display(),
            copy.display()
        ),
        Ok(_) => {}
        Err(_) => std::fs::write(&copy, file_text).with_context(|| format!("writing {}", copy.display()))?,
    }
    let prepared = prepare_updatable_guest(
        cache,
        campaign.guest.profile,
        &KernelChoice::Locked(crate::setup::locked_kernel(None)?),
        &campaign.guest.to,
        recovery_sut::AccelChoice::Auto,
        campaign.guest.memory_mib,
        step,
    )?;
    let (provenance, _) = crate::provenance::of(&prepared, campaign.seed)?;
    let next = prepared.image.update_to.clone().context("the image carries no kernel to update to")?;
    let config = VmConfig {
        accel: prepared.decision.accel,
        memory_mib: prepared.memory_mib,
        data_disk: true,
        ..VmConfig::default()
    };
    let plan = UpdatePlan {
        strategies: campaign.update.strategies.clone(),
        repeat: campaign.repetitions as usize,
        warmup: Duration::from_secs_f64(campaign.workload.warmup_s),
        tail: Duration::from_millis(500),
        clients: campaign.workload.clients,
        seed: campaign.seed,
    };
    let done = store.done();
    let experiments = campaign.experiments();
    let todo: Vec<_> = experiments.iter().filter(|e| !done.contains(&e.index)).collect();
    let resumed = experiments.len() - todo.len();
    let mut ran = 0;
    let mut interrupted = false;
    for (k, e) in todo.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        step(&format!(
            "experiment {} of {} ({} #{}; {} stored before)",
            resumed + k + 1,
            experiments.len(),
            e.strategy,
            e.rep + 1,
            resumed
        ));
        let outcome = one(&prepared.image, &config, &plan, e.strategy, e.rep as usize);
        let record = to_record(e.index, e.strategy, e.rep, outcome, &next, &provenance);
        if let Some(err) = &record.error {
            step(&format!("experiment {} failed: {err}", e.index));
        }
        store.append(record)?;
        ran += 1;
    }
    let complete = store.done().len() == experiments.len();
    let report = if complete {
        Some(write_update_report(store.records(), &campaign.name, &campaign.description, results)?)
    } else {
        None
    };
    Ok(UpdateRun { ran, resumed, interrupted, report })
}

/// The stored form of one update (or of its failure).
pub fn to_record(
    index: u64,
    strategy: UpdateStrategy,
    rep: u32,
    outcome: Result<UpdateTrial>,
    next: &recovery_sut::Kernel,
    provenance: &analysis::Provenance,
) -> UpdateRecord {
    let finished_unix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut r = UpdateRecord {
        index,
        strategy: recorded(strategy),
        rep,
        error: None,
        from_release: provenance.kernel_version.clone(),
        to_release: next.release.clone(),
        downtime_s: None,
        probe_outage_s: None,
        prepare_s: None,
        quiesce_s: None,
        switch_s: None,
        service_s: None,
        all_services_s: None,
        clients_held: None,
        baseline_rps: 0.0,
        prepare_rps: None,
        shadow: None,
        standby: false,
        phase_snapshot: false,
        writes_acked: 0,
        writes_lost: Vec::new(),
        requests: 0,
        correct: 0,
        to_kernel_origin: next.identity(),
        provenance: provenance.clone(),
        finished_unix,
    };
    match outcome {
        Err(e) => r.error = Some(format!("{e:#}")),
        Ok(t) => {
            r.from_release = t.timing.from_release.clone();
            r.to_release = t.timing.to_release.clone();
            r.downtime_s = t.downtime_s;
            r.probe_outage_s = t.probe_outage_s;
            r.prepare_s = Some(t.timing.prepare_s);
            r.quiesce_s = Some(t.timing.quiesce_s);
            r.switch_s = Some(t.timing.switch_s);
            r.service_s = Some(t.timing.service_s);
            r.all_services_s = t.timing.all_services_s;
            r.clients_held = Some(t.timing.clients_held);
            r.baseline_rps = t.baseline_rps;
            r.prepare_rps = t.prepare_rps;
            r.shadow = t.timing.shadow.as_ref().map(|s| RecordedShadow {
                clone: s.clone.to_string(),
                boot_s: s.boot_s,
                snapshot_s: s.snapshot_s,
                standby_s: s.standby_s,
                boots: s.boots,
                root_writes_lost_bytes: s.root_writes_lost_bytes,
            });
            r.standby = t.timing.standby;
            r.phase_snapshot = t.timing.phase_snapshot;
            r.writes_acked = t.writes_acked as u64;
            r.writes_lost = t.writes_lost.clone();
            r.requests = t.requests as u64;
            r.correct = t.correct as u64;
        }
    }
    r
}

/// `kfi reproduce` of an update experiment file on `guest`: `None` (with
/// the reason) when the file is written for another guest; a complete
/// earlier result under `results_root` is measured anew (its data stays in
/// git history), an interrupted one resumed.
pub fn reproduce(
    cache: &Cache,
    file: &Path,
    results_root: &Path,
    guest: recovery_sut::Profile,
    stop: &AtomicBool,
    step: &dyn Fn(&str),
) -> Result<Result<(UpdateRun, std::path::PathBuf), String>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let campaign = UpdateCampaign::parse(file, &text)?;
    if campaign.guest.profile != guest {
        return Ok(Err(format!(
            "written for the {} guest (`--guest {}` runs it)",
            campaign.guest.profile, campaign.guest.profile
        )));
    }
    let results = results_root.join(&campaign.name);
    let stored = UpdateStore::read(&results).unwrap_or_default();
    let copy = std::fs::read_to_string(results.join(EXPERIMENT_COPY)).ok();
    if !stored.is_empty() && (stored.len() == campaign.experiments().len() || copy.as_deref() != Some(text.as_str())) {
        for name in [analysis::update::UPDATE_STORE_FILE, EXPERIMENT_COPY] {
            let path = results.join(name);
            if path.exists() {
                std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
        }
        step(&format!(
            "{} held a complete (or differently defined) update campaign; measuring anew",
            results.display()
        ));
    }
    let run = run(cache, &campaign, &text, &results, stop, step)?;
    Ok(Ok((run, results)))
}

/// `kfi report DIR` for an update campaign: the report from the stored
/// records and the kept experiment file alone.
pub fn report(results: &Path) -> Result<UpdateReport> {
    let copy = results.join(EXPERIMENT_COPY);
    let text = std::fs::read_to_string(&copy).with_context(|| format!("reading {}", copy.display()))?;
    let campaign = UpdateCampaign::parse(&copy, &text)?;
    let records = UpdateStore::read(results)?;
    if records.is_empty() {
        bail!("{} holds no update records yet", results.display());
    }
    Ok(write_update_report(&records, &campaign.name, &campaign.description, results)?)
}
