//! One experiment: restore the golden snapshot, load the service, inject,
//! watch, recover, and turn what the clients saw into a record.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use analysis::record::{
    ExperimentRecord, HarnessFailure, Injection as RecordInjection, Provenance, RecordIdentity, RecordedOutcome,
    RecoveryRecord, RecoveryStages, TimelineBin,
};
use anyhow::{bail, Context, Result};
use recovery_sut::recovery::{Failure, FailureCause, RecoveryError, RecoveryTiming};
use recovery_sut::{probe, Golden, Sut};
use workloads::downtime::{analyze, DowntimeConfig};
use workloads::rubis::{self, Ack};
use workloads::timeline::Timeline;
use workloads::{seconds_since, DocList, Record};

use super::recorded;
use super::spec::{Action, Campaign, Crash, Planned, WorkloadKind, WorkloadSpec};
use crate::load::{ClientLoad, Clients, RunningLoad};

/// What every experiment of a campaign shares.
pub struct Shared<'a> {
    /// The campaign.
    pub campaign: &'a Campaign,
    /// The document set the load requests and checks.
    pub docs: &'a DocList,
    /// How results are obtained.
    pub provenance: &'a Provenance,
    /// Turns a planned fault into an injected one (none: the campaign has
    /// no faults).
    pub faults: Option<&'a dyn FaultRunner>,
}

/// Injects fault experiments; provided by the injector wiring so this
/// module stays about the experiment's frame (load, recovery, record).
pub trait FaultRunner: Sync {
    /// Injects fault `index` of group `group` into the running guest and
    /// watches it for `window`; returns what happened.
    fn inject(&self, sut: &mut Sut, group: usize, index: u64, window: Duration) -> Result<FaultObservation>;

    /// The record's injection part for fault `index` of group `group`
    /// without running it (for a harness-error record): activation not
    /// observed, so `activated` is false and no propagation is given.
    fn planned(&self, group: usize, index: u64) -> Result<RecordInjection>;
}

/// What a fault experiment observed before recovery.
pub struct FaultObservation {
    /// The record's injection part (model, target, description, spec,
    /// activation).
    pub injection: RecordInjection,
    /// Parsed oops, when any.
    pub detail: Option<serde_json::Value>,
    /// What the watch saw; the outcome is judged once the client records
    /// are in.
    pub watch: crate::fault_watch::Watch,
}

/// The record parameter naming the crash kernel reservation, MiB, of a
/// kexec-reboot experiment's guest.
pub const CRASH_KERNEL_PARAM: &str = analysis::figures::names::CRASH_KERNEL_MIB;

/// The record parameter naming the phase snapshot's boundary
/// (`Profile::phase_boundary`).
pub const PHASE_BOUNDARY_PARAM: &str = analysis::figures::names::PHASE_BOUNDARY;

/// The record parameter naming which answers counted for the downtime.
const DOWNTIME_ANSWERS_PARAM: &str = analysis::figures::names::DOWNTIME_ANSWERS;

/// The guest agent's phases that time a recovery's stages (see
/// [`RecoveryStages`]).
const PHASE_DATA_MOUNTED: &str = "data-mounted";
const PHASE_DB_READY: &str = "db-ready";

/// The guest agent's heartbeat period (`VmConfig::heartbeat_s` default).
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// Runs one planned experiment from `golden` to its record.
pub fn run(shared: &Shared<'_>, golden: &Golden, planned: &Planned) -> Result<ExperimentRecord> {
    let wall = Instant::now();
    let started_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let f = &shared.campaign.file;
    let window = f.observe.window();
    let mut sut = restore_golden(golden, planned)?;
    sut.set_clients_need(f.workload.kind.clients_need());
    let addr = sut.vm().http_addr();

    let origin = Instant::now();
    let load = start_load(addr, shared, planned, origin);
    let probe = RunningLoad::start(addr, ClientLoad::probe(shared.docs, LOAD_LIMIT), origin);
    let run = (|| -> Result<Observed> {
        std::thread::sleep(f.workload.warmup());
        let acked = if f.workload.acked_writes > 0 {
            Some(acknowledge_writes(&mut sut, planned.index, f.workload.acked_writes)?)
        } else {
            None
        };
        // What the guest did since the golden snapshot (data-disk writes)
        // decides which snapshot the recovery will restore: its standby
        // QEMU is launched now, before the failure.
        sut.prepare_for(planned.strategy);
        let answered = load.wait_answered(origin, crate::load::ANSWER_GATE_TIMEOUT)?;
        let mut observed = inject_and_watch(shared, &mut sut, planned, window)?;
        observed.answered_before_s = answered;
        if let Some(failure) = &observed.failure {
            match sut.recover(planned.strategy, failure) {
                Ok(timing) => {
                    observed.recovery = Some(timing);
                    // The VMM's probe saw the service back; the clients see
                    // it at their next request, which may first have to
                    // time out: keep the load until they do (bounded).
                    let back_s = origin.elapsed().as_secs_f64();
                    if !load.wait_answered_after(back_s, crate::load::RECOVERED_ANSWER_TIMEOUT) {
                        tracing::warn!(
                            "the clients got no correct answer within {:?} after the service was back",
                            crate::load::RECOVERED_ANSWER_TIMEOUT
                        );
                    }
                }
                Err(RecoveryError::NotRecovered { last, .. }) => observed.not_recovered = Some(last),
                Err(e) => return Err(e).context("recovering"),
            }
            // A client whose request went out during the outage gives up
            // only at its timeout and then retries: the tail must outlast
            // that, or the clients' first correct answer falls outside the run.
            let tail =
                f.observe.tail().max(f.workload.timeout() + Duration::from_millis(500)).max(crate::load::PROBE_TAIL);
            std::thread::sleep(tail);
        }
        if let Some(seqs) = acked {
            let lost = lost_writes(addr, &seqs, observed.recovery.is_some());
            observed.acked = Some((seqs.len() as u64, lost));
        }
        Ok(observed)
    })();
    let load_s = origin.elapsed().as_secs_f64();
    let clients = load.finish()?;
    let probed = probe.finish()?;
    let mut observed = run?;
    if f.workload.kind == WorkloadKind::Rubis {
        // The writes the site acknowledged, before the failure and after
        // recovery alike, must all be on its pages now.
        let service_up = observed.failure.is_none() || observed.recovery.is_some();
        let lost = lost_site_writes(addr, &clients.acks, service_up, f.workload.timeout());
        let (agent_acked, agent_lost) = observed.acked.unwrap_or((0, 0));
        observed.acked = Some((agent_acked + clients.acks.len() as u64, agent_lost + lost));
    }
    if observed.recovery.is_some() {
        let vm = sut.vm();
        observed.stage_phases = (vm.phase_instant(PHASE_DATA_MOUNTED), vm.phase_instant(PHASE_DB_READY));
    }
    drop(sut);
    let records = clients.records;
    let times = Times { started_at, wall_s: wall.elapsed().as_secs_f64(), load_s };
    record(shared, golden, planned, observed, (&records, &probed.records), origin, times)
}

/// What happened between injection and the end of recovery.
struct Observed {
    injection: RecordInjection,
    /// Known for a forced crash; a fault's is judged with the client
    /// records (`None` until then).
    outcome: Option<RecordedOutcome>,
    detail: Option<serde_json::Value>,
    failure: Option<Failure>,
    recovery: Option<RecoveryTiming>,
    not_recovered: Option<String>,
    /// (acknowledged, lost).
    acked: Option<(u64, u64)>,
    injected_at: Instant,
    /// When the guest agent reported the data disk mounted and the
    /// database ready after the recovery (host clock), if it did.
    stage_phases: (Option<Instant>, Option<Instant>),
    /// A fault's watch, to judge its outcome with the client records.
    watch: Option<crate::fault_watch::Watch>,
    /// How long before the injection the static clients' latest correct
    /// answer ended (the injection waits for one within
    /// [`crate::load::ANSWERED_WITHIN`]).
    answered_before_s: Option<f64>,
}

/// When the experiment ran and for how long.
struct Times {
    started_at: String,
    /// The whole experiment, restore and teardown included.
    wall_s: f64,
    /// The observation: load running from warm-up to the end of the tail.
    load_s: f64,
}

/// The campaign workload's clients as one [`ClientLoad`].
pub fn client_load(w: &WorkloadSpec, docs: &DocList, duration: Duration, timeout: Duration, seed: u64) -> ClientLoad {
    let clients = match w.kind {
        WorkloadKind::Apache => Clients::Static(docs.clone()),
        WorkloadKind::Rubis => Clients::Rubis(w.rubis_mix()),
    };
    let failure_pause = crate::load::DOWNTIME_FAILURE_PAUSE;
    ClientLoad { clients, count: w.clients, think: w.think(), failure_pause, timeout, duration, seed }
}

/// An upper bound only: the load is stopped when the experiment ends.
const LOAD_LIMIT: Duration = Duration::from_secs(3600);

fn start_load(addr: SocketAddr, shared: &Shared<'_>, planned: &Planned, origin: Instant) -> RunningLoad {
    let w = &shared.campaign.file.workload;
    let seed = shared.campaign.file.seed ^ planned.index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    RunningLoad::start(addr, client_load(w, shared.docs, LOAD_LIMIT, w.timeout(), seed), origin)
}

/// RUBiS writes the site acknowledged that its pages no longer show. A
/// write that cannot be checked (its page gives no correct answer) counts
/// as lost, as do all of them when the service never came back.
fn lost_site_writes(addr: SocketAddr, acks: &[Ack], service_up: bool, timeout: Duration) -> u64 {
    if !service_up {
        return acks.len() as u64;
    }
    if acks.is_empty() {
        return 0;
    }
    match rubis::verify_acks(addr, acks, timeout) {
        Ok(report) => {
            for (ack, why) in &report.unchecked {
                tracing::warn!("acknowledged write {ack:?} could not be checked: {why}");
            }
            (report.missing.len() + report.unchecked.len()) as u64
        }
        Err(e) => {
            tracing::warn!("checking the acknowledged writes failed: {e}");
            acks.len() as u64
        }
    }
}

/// Appends numbered lines to the data disk through the agent, each fsynced
/// before the agent acknowledges it; returns the acknowledged numbers.
fn acknowledge_writes(sut: &mut Sut, experiment: u64, count: u64) -> Result<Vec<u64>> {
    let first = experiment * 1000 + 1;
    let mut acked = Vec::new();
    for seq in first..first + count {
        sut.vm().agent().send(&format!("append {seq}")).context("asking the agent for a data-disk write")?;
        if !sut.vm().agent().wait_ack(seq, Duration::from_secs(10)) {
            bail!("the guest agent did not acknowledge data-disk write {seq} within 10 s");
        }
        acked.push(seq);
    }
    Ok(acked)
}

/// Acknowledged numbers missing from the data disk after recovery (all of
/// them when the service never came back to be asked).
fn lost_writes(addr: SocketAddr, seqs: &[u64], recovered: bool) -> u64 {
    if !recovered {
        return seqs.len() as u64;
    }
    match probe::acked_on_disk(addr, Duration::from_secs(10)) {
        Ok(on_disk) => seqs.iter().filter(|s| !on_disk.contains(s)).count() as u64,
        Err(_) => seqs.len() as u64,
    }
}

fn inject_and_watch(shared: &Shared<'_>, sut: &mut Sut, planned: &Planned, window: Duration) -> Result<Observed> {
    let hang = shared.campaign.file.observe.hang_timeout();
    let injected_at = Instant::now();
    let blank = |injection, outcome: Option<RecordedOutcome>, failure| Observed {
        injection,
        outcome,
        detail: None,
        failure,
        recovery: None,
        not_recovered: None,
        acked: None,
        injected_at,
        stage_phases: (None, None),
        watch: None,
        answered_before_s: None,
    };
    match &planned.action {
        Action::Crash(crash) => {
            crash.trigger(sut.vm())?;
            let injection = RecordInjection::Crash { crash: recorded::crash(*crash) };
            let failure = sut.wait_failure(window, hang).with_context(|| format!("the {crash} crash was not seen"))?;
            let outcome = match failure.cause {
                FailureCause::HeartbeatLost | FailureCause::Watchdog | FailureCause::ServiceProbe => {
                    RecordedOutcome::Hang
                }
                FailureCause::GuestPanicked | FailureCause::GuestCrashLoaded => RecordedOutcome::Panic,
                FailureCause::QemuExited | FailureCause::GuestReset => RecordedOutcome::VmExit,
            };
            Ok(blank(injection, Some(outcome), Some(failure)))
        }
        Action::Fault { index, group } => {
            let runner = shared.faults.context("the campaign has fault experiments but no fault runner")?;
            let seen = runner.inject(sut, *group, *index, window)?;
            let mut observed = blank(seen.injection, None, seen.watch.failure());
            observed.detail = seen.detail;
            observed.watch = Some(seen.watch);
            Ok(observed)
        }
        Action::Restore(_) => bail!("restore measurements run in campaign::restore, not as injections"),
    }
}

fn record(
    shared: &Shared<'_>,
    golden: &Golden,
    planned: &Planned,
    observed: Observed,
    (records, probed): (&[Record], &[Record]),
    origin: Instant,
    times: Times,
) -> Result<ExperimentRecord> {
    let f = &shared.campaign.file;
    let mut observed = observed;
    let mut events = Vec::new();
    let mut unattributed = false;
    let mut metrics = BTreeMap::new();
    if let Some(watch) = &observed.watch {
        let hang = f.observe.hang_timeout();
        let verdict = watch.classify(records, origin, hang, &f.observe.service_criterion());
        observed.outcome = Some(recorded::outcome(verdict.outcome));
        events = verdict.events.iter().map(recorded::event).collect();
        unattributed = verdict.unattributed;
        use analysis::figures::names;
        metrics.insert(names::ERRORS_AFTER_INJECTION.to_string(), verdict.errors_after_injection as f64);
        metrics.insert(names::WRONG_ANSWERS.to_string(), verdict.wrong_answers as f64);
        metrics.insert(names::LONGEST_OUTAGE_S.to_string(), verdict.longest_outage_s);
        metrics.insert(names::OOPS_REPORTS.to_string(), watch.console.oopses.len() as f64);
        if let Some((correct, failed)) = verdict.after_first_event {
            metrics.insert(names::CORRECT_AFTER_FAILURE.to_string(), correct as f64);
            metrics.insert(names::FAILED_AFTER_FAILURE.to_string(), failed as f64);
        }
    }
    // When the service stopped, as the client-side analysis needs it. A
    // panic is reported within milliseconds, so its detection is the
    // instant (the crash request itself takes a moment to land, and an
    // answer in between must not end the downtime). A hang is seen only a
    // heartbeat timeout later: a forced one (the vCPUs stopped) began at
    // the injection; a fault's began at most one heartbeat interval after
    // the last heartbeat.
    let hang_timeout = f.observe.hang_timeout();
    let failure_at = observed.failure.map(|failure| {
        let began = match (failure.cause, &planned.action) {
            (FailureCause::HeartbeatLost, Action::Crash(Crash::Hang)) => observed.injected_at,
            (FailureCause::HeartbeatLost, _) => {
                (failure.detected_at - hang_timeout + HEARTBEAT_INTERVAL).max(observed.injected_at)
            }
            _ => failure.detected_at,
        };
        seconds_since(origin, began)
    });
    // RUBiS: a page Apache and PHP answer without the database (a menu, a
    // login form) says nothing of the auction site, and with the phase
    // snapshot holding Apache up they answer while MariaDB still starts:
    // the downtime counts the database pages only.
    let database_pages: Vec<Record>;
    let answers: &[Record] = if f.workload.kind == WorkloadKind::Rubis {
        database_pages = records.iter().filter(|r| rubis::interaction::needs_database(&r.path)).cloned().collect();
        &database_pages
    } else {
        records
    };
    // A downtime that cannot be measured (no correct answer before the
    // failure: a fault broke the service first) is recorded as unknown,
    // with the reason, rather than stopping the campaign.
    let mut downtime_error = None;
    let (downtime_s, throughput_back_s) = match failure_at {
        Some(at) => match analyze(answers, at, &DowntimeConfig::default()) {
            Ok(report) => (report.downtime.seconds(), report.throughput.after),
            Err(e) => {
                downtime_error = Some(e.to_string());
                (None, None)
            }
        },
        None => (None, None),
    };
    // The availability probe's outage, by the same definition over its
    // own requests (the index page every 10 ms).
    let probe_outage_s = failure_at.and_then(|at| crate::load::probe_outage(probed, at));
    // Without a failure the timeline is relative to the injection.
    let zero = failure_at.unwrap_or_else(|| seconds_since(origin, observed.injected_at));
    let timeline = match Timeline::build(records, workloads::timeline::DEFAULT_BIN_SECS) {
        Ok(t) => t
            .bins
            .iter()
            .map(|b| TimelineBin { t_s: b.start - zero, correct: b.correct, failed: b.failed, p50_s: b.p50 })
            .collect(),
        Err(_) => Vec::new(),
    };
    let recovery = match (&observed.failure, &observed.recovery) {
        (Some(failure), Some(t)) => Some(RecoveryRecord {
            requested: recorded::strategy(t.requested),
            used: recorded::strategy(t.strategy),
            fallback_reason: t.fallback_reason.clone(),
            cause: recorded::cause(t.cause),
            // Clients got correct answers again (measured downtime, or
            // correct answers to requests sent after the failure).
            recovered: downtime_s.is_some()
                || failure_at.is_some_and(|at| answers.iter().any(|r| r.is_correct() && r.start >= at)),
            detect_s: failure.detected_at.saturating_duration_since(observed.injected_at).as_secs_f64(),
            restart_s: t.restart_s,
            service_s: t.service_s,
            on_standby: Some(t.standby),
            stages: failure_at.map(|at| {
                let first = answers.iter().filter(|r| r.is_correct() && r.start >= at).map(|r| r.end).reduce(f64::min);
                let (mounted, database) = observed.stage_phases;
                let since = |i: Option<Instant>| i.map(|i| seconds_since(origin, i));
                RecoveryStages::from_instants(
                    seconds_since(origin, t.running_at),
                    since(mounted),
                    since(database),
                    first,
                )
            }),
        }),
        (Some(failure), None) => Some(RecoveryRecord {
            requested: recorded::strategy(planned.strategy),
            used: recorded::strategy(planned.strategy),
            fallback_reason: observed.not_recovered.clone(),
            cause: recorded::cause(failure.cause),
            recovered: false,
            detect_s: failure.detected_at.saturating_duration_since(observed.injected_at).as_secs_f64(),
            // Never back: no restart or service time to report.
            restart_s: 0.0,
            service_s: 0.0,
            on_standby: None,
            stages: None,
        }),
        _ => None,
    };
    let mut params = planned_params(planned);
    // kexec-reboot's guest booted with a crash kernel reserved (and the RAM
    // it needs besides): its record says so.
    if let Some(mib) = golden.config().crash_kernel_mib {
        params.insert(CRASH_KERNEL_PARAM.to_string(), mib.to_string());
    }
    if f.workload.kind == WorkloadKind::Rubis {
        params.insert(DOWNTIME_ANSWERS_PARAM.to_string(), analysis::figures::names::DATABASE_PAGES.to_string());
    }
    if let Some(e) = downtime_error {
        params.insert("downtime_error".to_string(), e);
    }
    if let Some(snap) = &golden.phase {
        metrics.insert("phase_snapshot_pause_s".to_string(), snap.meta.pause_s);
        // Where a phase restore of this experiment starts from.
        params.insert(PHASE_BOUNDARY_PARAM.to_string(), snap.meta.phase.clone());
    }
    metrics.insert("service_snapshot_pause_s".to_string(), golden.service.meta.pause_s);
    if let Some(age) = observed.answered_before_s {
        metrics.insert(analysis::figures::names::ANSWERED_BEFORE_INJECTION_S.to_string(), age);
    }
    Ok(ExperimentRecord {
        campaign: f.name.clone(),
        experiment: planned.index,
        key: planned.key(),
        workload: recorded::workload(f.workload.kind),
        injection: observed.injection,
        outcome: observed.outcome.context("no outcome was judged for this experiment")?,
        outcome_detail: observed.detail,
        recovery,
        downtime_s,
        probe_outage_s,
        throughput_back_s,
        requests: records.len() as u64,
        correct: records.iter().filter(|r| r.is_correct()).count() as u64,
        acked_writes: observed.acked.map(|a| a.0),
        lost_writes: observed.acked.map(|a| a.1),
        params,
        metrics,
        timeline,
        provenance: shared.provenance.clone(),
        started_at: times.started_at,
        wall_s: times.wall_s,
        window_s: times.load_s,
        harness_error: None,
        events,
        unattributed,
    })
}

/// The record of an experiment the harness could not run: each attempt's
/// error chain, the planned injection (a fault's spec regenerated, its
/// activation not observed) and no measurement.
pub fn harness_error(
    shared: &Shared<'_>,
    planned: &Planned,
    errors: Vec<String>,
    started_at: String,
    wall_s: f64,
) -> Result<ExperimentRecord> {
    let f = &shared.campaign.file;
    let injection = match &planned.action {
        Action::Crash(crash) => RecordInjection::Crash { crash: recorded::crash(*crash) },
        Action::Fault { index, group } => {
            let runner = shared.faults.context("the campaign has fault experiments but no fault runner")?;
            runner.planned(*group, *index)?
        }
        Action::Restore(_) => RecordInjection::None,
    };
    Ok(ExperimentRecord {
        params: planned_params(planned),
        wall_s,
        harness_error: Some(HarnessFailure { attempts: errors.len() as u32, errors }),
        ..ExperimentRecord::unmeasured(RecordIdentity {
            campaign: f.name.clone(),
            experiment: planned.index,
            key: planned.key(),
            workload: recorded::workload(f.workload.kind),
            injection,
            outcome: RecordedOutcome::HarnessError,
            provenance: shared.provenance.clone(),
            started_at,
        })
    })
}

/// The parameters every crash or fault experiment's record names.
fn planned_params(planned: &Planned) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("strategy".to_string(), planned.strategy.to_string()),
        ("rep".to_string(), planned.rep.to_string()),
    ])
}

/// The golden snapshot restored into a fresh QEMU for one experiment.
fn restore_golden(golden: &Golden, planned: &Planned) -> Result<Sut> {
    #[cfg(feature = "test-knobs")]
    fail_if_asked(planned.index)?;
    #[cfg(feature = "test-knobs")]
    corrupt_golden_once(golden, planned)?;
    Sut::from_golden(golden, planned.strategy).context("restoring the golden snapshot")
}

/// Test builds can make one experiment's QEMU fail, to exercise the retry
/// and harness-error path (`test-knobs`; never in a default build).
#[cfg(feature = "test-knobs")]
pub(super) fn fail_if_asked(index: u64) -> Result<()> {
    if std::env::var("KFI_TEST_FAIL_EXPERIMENT").ok().and_then(|v| v.trim().parse::<u64>().ok()) == Some(index) {
        bail!("QEMU refused to start (KFI_TEST_FAIL_EXPERIMENT={index} in a test-knobs build)");
    }
    Ok(())
}

/// Test builds can truncate the golden snapshot's device state once, just
/// before experiment `KFI_TEST_CORRUPT_GOLDEN` restores it, to exercise
/// making it anew mid-campaign (`test-knobs`; never in a default build).
#[cfg(feature = "test-knobs")]
fn corrupt_golden_once(golden: &Golden, planned: &Planned) -> Result<()> {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let wanted = std::env::var("KFI_TEST_CORRUPT_GOLDEN").ok().and_then(|v| v.trim().parse::<u64>().ok());
    if wanted == Some(planned.index) && !DONE.swap(true, std::sync::atomic::Ordering::SeqCst) {
        let state = golden.service.state_file();
        let len = std::fs::metadata(&state)?.len();
        std::fs::OpenOptions::new().write(true).open(&state)?.set_len(len / 2)?;
    }
    Ok(())
}
