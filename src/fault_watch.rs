//! One fault applied through the gdbstub and watched: [`watch_fault`]
//! applies it at its trigger and watches the guest (pvpanic, console,
//! heartbeat) for a window, [`Watch::classify`] judges the outcome once the
//! client records are in, and [`run_fault_experiment`] does both under
//! closed-loop HTTP load on a booted VM (plain, or a `Sut`'s), leaving
//! recovery to the caller. `kfi inject` and campaign fault experiments use
//! it.

use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use injector::fault::{FaultSpec, ModelKind};
use injector::outcome::{classify, parse_console, Evidence, OopsRecord, Outcome};
use injector::{GdbClient, InjectionReport, KernelImage};
use recovery_sut::recovery::{Failure, FailureCause};
use recovery_sut::Vm;
use serde::Serialize;
use workloads::{seconds_since, DocList, Record};

use crate::load::{ClientLoad, Clients, RunningLoad};

/// How one fault experiment runs.
#[derive(Debug, Clone)]
pub struct FaultExperimentConfig {
    /// Load before the fault's clock starts (its delay counts from there).
    pub warmup: Duration,
    /// Observation window from the end of the warm-up.
    pub window: Duration,
    /// Closed-loop HTTP clients.
    pub clients: usize,
    /// Seed of the request mix.
    pub load_seed: u64,
    /// No heartbeat and no correct answer for this long: a hang.
    pub hang_timeout: Duration,
    /// After an oops, keep watching this long for the panic it may cause.
    pub oops_grace: Duration,
    /// Trace the error's propagation from the activation, with this
    /// kernel layout and these bounds.
    pub trace: Option<(injector::trace::KernelLayout, injector::trace::TraceConfig)>,
}

impl Default for FaultExperimentConfig {
    fn default() -> Self {
        FaultExperimentConfig {
            warmup: Duration::from_millis(500),
            window: Duration::from_secs(10),
            clients: 2,
            load_seed: 1,
            hang_timeout: Duration::from_secs(4),
            oops_grace: Duration::from_secs(1),
            trace: None,
        }
    }
}

/// Timings of one experiment, seconds from the end of the warm-up unless
/// named otherwise.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// When the fault was applied.
    pub injected_s: Option<f64>,
    /// Halt, apply, resume, milliseconds.
    pub injection_latency_ms: Option<f64>,
    /// From the application to the first activation.
    pub activation_after_s: Option<f64>,
    /// When the failure was detected (panic, oops, hang).
    pub failure_s: Option<f64>,
    /// How long the experiment observed.
    pub observed_s: f64,
}

/// What one fault did.
#[derive(Debug, Clone, Serialize)]
pub struct InjectionResult {
    /// The fault.
    pub fault: FaultSpec,
    /// One line.
    pub description: String,
    /// Its model.
    pub model: ModelKind,
    /// Whether it was executed or read.
    pub activated: bool,
    /// The outcome.
    pub outcome: Outcome,
    /// The first parsed oops/BUG/GPF, when there is one.
    pub detail: Option<OopsRecord>,
    /// The panic reason from the console.
    pub panic: Option<String>,
    /// Timings.
    pub timings: Timings,
    /// The injector's own account.
    pub injection: InjectionReport,
    /// Requests sent during the experiment.
    pub requests: usize,
    /// Correct answers.
    pub correct: usize,
    /// Failed or wrong answers that started after the injection.
    pub errors_after_injection: usize,
}

/// Reads what the console log gained since `offset`.
fn console_since(vm: &Vm, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(vm.console_log()) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    text
}

/// How long [`watch_fault`] watches, and what it calls a hang.
#[derive(Debug, Clone, Copy)]
pub struct WatchLimits {
    /// Observation window.
    pub window: Duration,
    /// No heartbeat for this long: a hang.
    pub hang_timeout: Duration,
    /// After an oops, keep watching this long for the panic it may cause.
    pub oops_grace: Duration,
}

/// What watching one fault saw; the client records complete the verdict
/// ([`Watch::classify`]).
pub struct Watch {
    /// The injector's own account.
    pub injection: InjectionReport,
    /// The console since the injection, parsed.
    pub console: injector::outcome::ConsoleReport,
    /// When watching started (the fault's delay counts from here).
    pub t0: Instant,
    /// How long it watched.
    pub observed: Duration,
    panicked_at: Option<Instant>,
    oops_at: Option<Instant>,
    hung_at: Option<Instant>,
}

/// The outcome of one fault once the client records are in.
pub struct Verdict {
    /// The outcome.
    pub outcome: Outcome,
    /// The failure a recovery strategy must handle (panic, an oops that
    /// panicked, or a hang), with when it was seen.
    pub failure: Option<Failure>,
    /// When the outcome was seen, also for an oops the kernel survived.
    pub failed_at: Option<Instant>,
    /// Failed or wrong answers to requests sent after the injection.
    pub errors_after_injection: usize,
}

/// Attaches to the gdbstub, applies `spec` at its trigger and watches for
/// `window` (less when the kernel panics, oopses or hangs), then detaches.
/// The load, if any, is the caller's; `console_offset` is the console
/// log's length before the experiment.
pub fn watch_fault(
    vm: &mut Vm,
    image: &KernelImage,
    spec: &FaultSpec,
    limits: &WatchLimits,
    console_offset: u64,
    tracer: Option<injector::trace::Tracer>,
) -> Result<Watch> {
    let WatchLimits { window, hang_timeout, oops_grace } = *limits;
    let t0 = Instant::now();
    let mut gdb = GdbClient::connect(vm.gdb_socket(), Duration::from_secs(5)).context("attaching to the gdbstub")?;
    let mut panicked_at: Option<Instant> = None;
    let mut oops_at: Option<Instant> = None;
    let mut hung_at: Option<Instant> = None;
    let mut last_console_check = Instant::now();
    let watch_from = Instant::now();
    let vm_ref: &Vm = vm;
    let mut tick = |report: &InjectionReport| -> bool {
        let now = Instant::now();
        // The tracer holds the guest while it single-steps: no heartbeat
        // comes then, and that is not a hang.
        let hang_timeout = hang_timeout + Duration::from_secs_f64(report.held_s);
        if panicked_at.is_none() && vm_ref.events().iter().any(|e| e.name == "GUEST_PANICKED") {
            panicked_at = Some(now);
        }
        if vm_ref.check_alive().is_err() && panicked_at.is_none() {
            panicked_at = Some(now);
        }
        if now.duration_since(last_console_check) >= Duration::from_millis(200) {
            last_console_check = now;
            let report = parse_console(&console_since(vm_ref, console_offset));
            if report.panic.is_some() && panicked_at.is_none() {
                panicked_at = Some(now);
            }
            if !report.oopses.is_empty() && oops_at.is_none() {
                oops_at = Some(now);
            }
        }
        let last_beat = vm_ref.agent().last_heartbeat().map(|h| h.at).unwrap_or(watch_from).max(watch_from);
        if hung_at.is_none() && now.duration_since(last_beat) > hang_timeout {
            hung_at = Some(now);
        }
        panicked_at.is_some() || hung_at.is_some() || oops_at.is_some_and(|o| now.duration_since(o) >= oops_grace)
    };
    let injection = injector::inject::run_traced(&mut gdb, image, spec, tracer, window, &mut tick);
    // Detach before anything else: a guest left paused by the client
    // would look hung to everything that follows.
    drop(gdb);
    if injection.is_err() {
        // A stub that closes the connection is a QEMU on its way out: give
        // the process a moment to be seen gone before judging.
        let until = Instant::now() + Duration::from_secs(2);
        while vm.check_alive().is_ok() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let console_text = console_since(vm, console_offset);
    let injection = match injection {
        Ok(report) => report,
        // The stub went away under the debugger because the guest did:
        // QEMU ended, or the guest reset itself (a triple fault reboots
        // it). That is the fault's outcome, not a harness failure.
        Err(e) if vm.check_alive().is_err() || console_text.contains("Linux version") => {
            tracing::info!("the guest went away during the injection ({e}); counted as a failure");
            panicked_at.get_or_insert_with(Instant::now);
            InjectionReport { injected: true, activated: true, ..InjectionReport::default() }
        }
        Err(e) => return Err(e).with_context(|| format!("injecting {}", spec.describe())),
    };
    let observed = t0.elapsed();
    let console = parse_console(&console_text);
    if console.panic.is_some() && panicked_at.is_none() {
        panicked_at = Some(Instant::now());
    }
    Ok(Watch { injection, console, t0, observed, panicked_at, oops_at, hung_at })
}

impl Watch {
    /// The outcome, judged with the client records (times relative to
    /// `origin`): a lost heartbeat is a hang only if the service fell
    /// silent too, and wrong answers after the injection are a service
    /// error.
    pub fn classify(&self, records: &[Record], origin: Instant, hang_timeout: Duration) -> Verdict {
        let injected_at_s = self.injection.injected_after_s;
        let t0_s = seconds_since(origin, self.t0);
        let end_s = seconds_since(origin, self.t0 + self.observed);
        let after_injection = |r: &&Record| injected_at_s.is_some_and(|i| r.start >= t0_s + i) && r.start <= end_s;
        // Requests the tracer's hold timed out are the harness's doing; a
        // request started within a second after it may still be queued.
        let held = self.injection.held_from_s.map(|from| (t0_s + from, t0_s + from + self.injection.held_s + 1.0));
        let not_held = |r: &&Record| !held.is_some_and(|(from, to)| r.end >= from && r.start <= to);
        let errors_after_injection =
            records.iter().filter(after_injection).filter(not_held).filter(|r| !r.is_correct()).count();
        let hung = self.hung_at.is_some_and(|h| {
            // A hang also silences the service: a correct answer in the
            // timeout before detection means only the agent stopped.
            let from = seconds_since(origin, h) - hang_timeout.as_secs_f64();
            !records.iter().any(|r| r.is_correct() && r.end >= from && r.end <= seconds_since(origin, h))
        });
        let evidence = Evidence {
            panicked: self.panicked_at.is_some(),
            oops: !self.console.oopses.is_empty(),
            hung,
            service_errors: errors_after_injection > 0 || (self.hung_at.is_some() && !hung),
            activated: self.injection.activated,
            activation_unknown: self.injection.activation_unknown.is_some(),
        };
        let outcome = classify(&evidence);
        let failed_at = match outcome {
            Outcome::Panic => self.panicked_at.or(self.oops_at),
            Outcome::Oops => self.oops_at,
            Outcome::Hang => self.hung_at,
            _ => None,
        };
        Verdict { outcome, failure: self.failure(), failed_at, errors_after_injection }
    }

    /// The failure the VMM's detectors saw (a panic, or a lost heartbeat),
    /// known before the client records are: what recovery acts on.
    pub fn failure(&self) -> Option<Failure> {
        if let Some(at) = self.panicked_at {
            return Some(Failure { cause: FailureCause::GuestPanicked, detected_at: at });
        }
        self.hung_at.map(|at| Failure { cause: FailureCause::HeartbeatLost, detected_at: at })
    }
}

/// Runs one fault against a booted, serving VM: starts closed-loop load,
/// warms up, attaches to the gdbstub, applies `spec` at its trigger,
/// watches for `config.window` (less when the kernel panics or hangs),
/// detaches, stops the load and classifies. The VM is left as the fault
/// left it (running, panicked or hung); recovering it is the caller's job,
/// with [`InjectionResult::failure`] when the kernel failed.
pub fn run_fault_experiment(
    vm: &mut Vm,
    image: &KernelImage,
    spec: &FaultSpec,
    docs: &DocList,
    config: &FaultExperimentConfig,
) -> Result<InjectionResult> {
    let console_offset = std::fs::metadata(vm.console_log()).map(|m| m.len()).unwrap_or(0);
    vm.events(); // stale events are not this fault's
    let origin = Instant::now();
    let load = ClientLoad {
        clients: Clients::Static(docs.clone()),
        count: config.clients.max(1),
        think: Duration::ZERO,
        failure_pause: Duration::from_millis(20),
        timeout: Duration::from_secs(1),
        duration: config.warmup + config.window + Duration::from_secs(60),
        seed: config.load_seed,
    };
    let load = RunningLoad::start(vm.http_addr(), load, origin);
    std::thread::sleep(config.warmup);
    let limits =
        WatchLimits { window: config.window, hang_timeout: config.hang_timeout, oops_grace: config.oops_grace };
    let tracer = config.trace.map(|(layout, bounds)| injector::trace::Tracer::new(layout, image, bounds));
    let watched = watch_fault(vm, image, spec, &limits, console_offset, tracer);
    let records = load.finish()?.records;
    let watch = watched?;
    let verdict = watch.classify(&records, origin, config.hang_timeout);
    let (console, injection, t0, observed) = (watch.console, watch.injection, watch.t0, watch.observed);
    let (outcome, failure, errors_after_injection) = (verdict.outcome, verdict.failure, verdict.errors_after_injection);
    let failed_at = verdict.failed_at.or(failure.map(|f| f.detected_at));
    Ok(InjectionResult {
        fault: spec.clone(),
        description: spec.describe(),
        model: spec.model().kind(),
        activated: injection.activated,
        outcome,
        detail: console.oopses.first().cloned(),
        panic: console.panic.clone(),
        timings: Timings {
            injected_s: injection.injected_after_s,
            injection_latency_ms: injection.latency_ms,
            activation_after_s: injection.activation_after_s,
            failure_s: failed_at.map(|f| f.saturating_duration_since(t0).as_secs_f64()),
            observed_s: observed.as_secs_f64(),
        },
        injection,
        requests: records.len(),
        correct: records.iter().filter(|r| r.is_correct()).count(),
        errors_after_injection,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use workloads::RequestOutcome;

    /// A watch that started at `origin` and saw what the arguments say;
    /// the fault was applied 1 s in.
    fn watch(origin: Instant, activated: bool, panicked: Option<f64>, hung: Option<f64>) -> Watch {
        let at = |s: f64| origin + Duration::from_secs_f64(s);
        Watch {
            injection: InjectionReport {
                injected: true,
                activated,
                injected_after_s: Some(1.0),
                ..InjectionReport::default()
            },
            console: injector::outcome::ConsoleReport::default(),
            t0: origin,
            observed: Duration::from_secs(10),
            panicked_at: panicked.map(at),
            oops_at: None,
            hung_at: hung.map(at),
        }
    }

    fn answers(outcome: RequestOutcome, from: f64, to: f64) -> Vec<Record> {
        let n = ((to - from) / 0.1) as usize;
        (0..n)
            .map(|i| {
                let start = from + i as f64 * 0.1;
                Record { start, end: start + 0.05, path: "/".into(), outcome, bytes: 1 }
            })
            .collect()
    }

    #[test]
    fn outcomes_come_from_the_watch_and_the_client_records() {
        let origin = Instant::now();
        let hang = Duration::from_secs(4);
        let healthy = answers(RequestOutcome::Ok, 0.0, 10.0);

        let v = watch(origin, false, None, None).classify(&healthy, origin, hang);
        assert_eq!((v.outcome, v.errors_after_injection), (Outcome::NotActivated, 0));
        assert!(v.failure.is_none());

        let v = watch(origin, true, None, None).classify(&healthy, origin, hang);
        assert_eq!(v.outcome, Outcome::Benign);

        let v = watch(origin, true, Some(2.0), None).classify(&healthy[..20], origin, hang);
        assert_eq!(v.outcome, Outcome::Panic);
        assert_eq!(v.failure.map(|f| f.cause), Some(FailureCause::GuestPanicked));

        // Wrong answers after the injection, kernel alive: a service error.
        let mut broken = answers(RequestOutcome::Ok, 0.0, 1.0);
        broken.extend(answers(RequestOutcome::WrongContent, 1.0, 10.0));
        let v = watch(origin, true, None, None).classify(&broken, origin, hang);
        assert_eq!(v.outcome, Outcome::ServiceError);
        assert!(v.errors_after_injection > 80);

        // The heartbeat stopped but the service kept answering: not a hang.
        let v = watch(origin, true, None, Some(6.0)).classify(&healthy, origin, hang);
        assert_eq!(v.outcome, Outcome::ServiceError);
        // Both silent: a hang, which recovery acts on.
        let silent = answers(RequestOutcome::Timeout, 1.5, 10.0);
        let mut records = answers(RequestOutcome::Ok, 0.0, 1.0);
        records.extend(silent);
        let v = watch(origin, true, None, Some(6.0)).classify(&records, origin, hang);
        assert_eq!(v.outcome, Outcome::Hang);
        assert_eq!(v.failure.map(|f| f.cause), Some(FailureCause::HeartbeatLost));
    }
}
