//! The recovery VMM as a service (`kfi sut run`). It boots a guest, keeps
//! its service up across kernel failures with one strategy until Ctrl-C,
//! and logs every failure and recovery as it happens.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use recovery_sut::recovery::{Detectors, RecoveryTiming, ServiceProbe, Strategy, Sut};
use recovery_sut::{GuestImage, VmConfig};
use serde::Serialize;

/// How often `kfi sut run` sees to its snapshots between failures.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// How `kfi sut run` watches and recovers.
pub struct SutPlan {
    /// The recovery strategy.
    pub strategy: Strategy,
    /// Which failure detectors run.
    pub detectors: Detectors,
    /// Crash the guest (sysrq through the agent) this often, for soak
    /// tests and demonstrations; `None`: only real failures.
    pub crash_every: Option<Duration>,
}

/// One logged recovery.
#[derive(Debug, Serialize)]
pub struct RecoveryLog {
    /// Its number, from 1.
    pub n: usize,
    /// Seconds since the SUT was up.
    pub at_s: f64,
    /// Whether kfi crashed the guest itself (`--crash-every`).
    pub injected: bool,
    /// What the VMM did and how long it took.
    pub timing: RecoveryTiming,
}

impl SutPlan {
    /// The detectors `kfi sut run` uses: heartbeat, pvpanic, and the
    /// watchdog and service probe when asked for.
    pub fn detectors(heartbeat_timeout: Duration, watchdog: bool, probe: bool) -> Detectors {
        Detectors { heartbeat_timeout: Some(heartbeat_timeout), watchdog, probe: probe.then(ServiceProbe::default) }
    }
}

/// Runs the SUT until `stop` is set; `log` hears of the boot and of every
/// recovery. Returns how many recoveries there were.
pub fn run(
    image: &GuestImage,
    config: &VmConfig,
    plan: &SutPlan,
    stop: &Arc<AtomicBool>,
    log: &mut dyn FnMut(&RecoveryLog),
    ready: &mut dyn FnMut(&mut Sut),
) -> Result<usize> {
    let config = plan.strategy.vm_config(config, image.profile());
    let mut sut = Sut::boot(image, &config).context("booting the system under test")?;
    sut.snapshot_service().context("taking the service snapshot")?;
    sut.prepare_for(plan.strategy);
    ready(&mut sut);
    let up = Instant::now();
    let mut n = 0;
    let mut next_crash = plan.crash_every.map(|every| Instant::now() + every);
    let mut next_upkeep = Instant::now() + UPKEEP_EVERY;
    while !stop.load(Ordering::SeqCst) {
        let crash_due = || next_crash.is_some_and(|at| Instant::now() >= at);
        let should_stop = || stop.load(Ordering::SeqCst) || crash_due() || Instant::now() >= next_upkeep;
        let failure = sut.watch_until(&plan.detectors, &should_stop).context("watching the guest")?;
        let (failure, injected) = match failure {
            Some(failure) => (failure, false),
            None if stop.load(Ordering::SeqCst) => break,
            // Retake a service snapshot a recovery left due, move the
            // standby to the snapshot the next recovery will restore.
            None if !crash_due() => {
                if sut.maintain().context("taking the service snapshot again")? {
                    tracing::info!("fresh service snapshot after the last recovery");
                }
                next_upkeep = Instant::now() + UPKEEP_EVERY;
                continue;
            }
            None => {
                next_crash = plan.crash_every.map(|every| Instant::now() + every);
                crate::crash::Crash::Sysrq.trigger(sut.vm())?;
                let failure = sut
                    .wait_failure_with(Duration::from_secs(60), &plan.detectors)
                    .context("waiting for the injected crash to be detected")?;
                (failure, true)
            }
        };
        let timing = sut.recover(plan.strategy, &failure).context("recovering")?;
        n += 1;
        log(&RecoveryLog { n, at_s: failure.detected_at.duration_since(up).as_secs_f64(), injected, timing });
    }
    Ok(n)
}
