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
use injector::outcome::{
    classify, parse_console, unattributed, Event, Evidence, OopsRecord, Outcome, ServiceCriterion,
};
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
    /// When the service counts as failed.
    pub service: ServiceCriterion,
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
            service: ServiceCriterion::default(),
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
    /// A failure with no evidence that the fault was activated.
    pub unattributed: bool,
    /// The failure's steps in order, first manifestation first.
    pub events: Vec<Event>,
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
    /// Of those, complete answers that were wrong.
    pub wrong_answers: usize,
    /// The longest time from a failed request to the next correct answer.
    pub longest_outage_s: f64,
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
    /// QEMU exited or the guest reset.
    gone: Option<Gone>,
    oops_at: Option<Instant>,
    hung_at: Option<Instant>,
}

/// The VM went away under the watch: when, which failure the VMM sees
/// (QEMU exited, or the guest reset), and how, in words.
#[derive(Debug, Clone)]
struct Gone {
    at: Instant,
    cause: FailureCause,
    what: String,
}

impl Gone {
    fn new(at: Instant, cause: FailureCause, what: String) -> Gone {
        Gone { at, cause, what }
    }
}

/// The outcome of one fault once the client records are in.
pub struct Verdict {
    /// The outcome.
    pub outcome: Outcome,
    /// A failure with no evidence that the fault was activated
    /// ([`injector::outcome::unattributed`]).
    pub unattributed: bool,
    /// The failure's steps in order, first manifestation first.
    pub events: Vec<Event>,
    /// The failure a recovery strategy must handle (panic, an oops that
    /// panicked, or a hang), with when it was seen.
    pub failure: Option<Failure>,
    /// When the outcome was seen, also for an oops the kernel survived.
    pub failed_at: Option<Instant>,
    /// Failed or wrong answers to requests sent after the injection.
    pub errors_after_injection: usize,
    /// Of those, complete answers that were wrong (status or content).
    pub wrong_answers: usize,
    /// The longest time from a failed request after the injection to the
    /// next correct answer, seconds (see [`ServiceCriterion`]).
    pub longest_outage_s: f64,
    /// Requests sent after the first event (within the watch) answered
    /// correctly, and not: whether the service kept working after an oops.
    pub after_first_event: Option<(usize, usize)>,
}

/// Attaches to the gdbstub, applies `spec` at its trigger and watches for
/// `window` (less when the kernel panics, oopses or hangs, or the VM goes
/// away), then detaches. The load, if any, is the caller's;
/// `console_offset` is the console log's length before the experiment.
///
/// A gdbstub connection that fails while QEMU still runs and the guest did
/// not reset is the harness's failure, returned as an error (a campaign
/// retries the experiment and then stores it as `harness-error`); one that
/// fails because QEMU exited or the guest reset is the fault's outcome
/// (`vm-exit`), with the activation the injector had seen until then.
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
    #[cfg(feature = "test-knobs")]
    knobs::arm(vm, &gdb)?;
    let mut panicked_at: Option<Instant> = None;
    let mut gone: Option<Gone> = None;
    let mut oops_at: Option<Instant> = None;
    let mut hung_at: Option<Instant> = None;
    let mut seen = InjectionReport::default();
    let mut last_console_check = Instant::now();
    let watch_from = Instant::now();
    let vm_ref: &Vm = vm;
    let mut tick = |report: &InjectionReport| -> bool {
        let now = Instant::now();
        seen.clone_from(report);
        // The tracer holds the guest while it single-steps: no heartbeat
        // comes then, and that is not a hang.
        let hang_timeout = hang_timeout + Duration::from_secs_f64(report.held_s);
        note_vm_events(vm_ref, now, &mut panicked_at, &mut gone);
        if now.duration_since(last_console_check) >= Duration::from_millis(200) {
            last_console_check = now;
            let report = parse_console(&console_since(vm_ref, console_offset));
            if report.panic.is_some() {
                panicked_at.get_or_insert(now);
            }
            if !report.oopses.is_empty() {
                oops_at.get_or_insert(now);
            }
            if report.rebooted && gone.is_none() {
                gone = Some(Gone::new(now, FailureCause::GuestReset, reset_text(&report)));
            }
        }
        let last_beat = vm_ref.agent().last_heartbeat().map(|h| h.at).unwrap_or(watch_from).max(watch_from);
        if hung_at.is_none() && now.duration_since(last_beat) > hang_timeout {
            hung_at = Some(now);
        }
        panicked_at.is_some()
            || gone.is_some()
            || hung_at.is_some()
            || oops_at.is_some_and(|o| now.duration_since(o) >= oops_grace)
    };
    let injection = injector::inject::run_traced(&mut gdb, image, spec, tracer, window, &mut tick);
    // Detach before anything else: a guest left paused by the client
    // would look hung to everything that follows.
    drop(gdb);
    if injection.is_err() {
        // A stub that closes the connection may be a QEMU on its way out:
        // give the process a moment to be seen gone before judging.
        let until = Instant::now() + Duration::from_secs(2);
        while vm.check_alive().is_ok() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        note_vm_events(vm, Instant::now(), &mut panicked_at, &mut gone);
    }
    let console_text = console_since(vm, console_offset);
    let console = parse_console(&console_text);
    if console.rebooted && gone.is_none() {
        gone = Some(Gone::new(Instant::now(), FailureCause::GuestReset, reset_text(&console)));
    }
    let injection = match injection {
        Ok(report) => report,
        // The stub went away under the debugger because the machine did:
        // that is the fault's outcome, with what the injector saw of its
        // activation before the connection ended.
        Err(e) if gone.is_some() || panicked_at.is_some() => {
            tracing::info!("the VM went away during the injection ({e})");
            seen
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "injecting {}: the gdbstub connection failed while QEMU still runs and the guest did not \
                     reset (a harness error, not an outcome)",
                    spec.describe()
                )
            })
        }
    };
    let observed = t0.elapsed();
    if console.panic.is_some() && panicked_at.is_none() {
        panicked_at = Some(Instant::now());
    }
    if !console.oopses.is_empty() && oops_at.is_none() {
        oops_at = Some(Instant::now());
    }
    Ok(Watch { injection, console, t0, observed, panicked_at, gone, oops_at, hung_at })
}

/// Oops reports kept as events per experiment: a fault in a path every
/// request takes oopses each worker in turn, hundreds of times; the first
/// ones tell the story and the record counts them all
/// (`oops_reports` in its metrics).
const MAX_OOPS_EVENTS: usize = 16;

/// Takes the VM's QMP events and process state: a panic, a reset or
/// power-off the guest asked for, QEMU gone.
fn note_vm_events(vm: &Vm, now: Instant, panicked_at: &mut Option<Instant>, gone: &mut Option<Gone>) {
    for event in vm.events() {
        let reason = event.data.get("reason").and_then(|r| r.as_str()).unwrap_or("unknown").to_string();
        match event.name.as_str() {
            "GUEST_PANICKED" => {
                panicked_at.get_or_insert(now);
            }
            "RESET" if gone.is_none() => {
                let what = format!("the guest reset (QMP RESET, reason {reason})");
                *gone = Some(Gone::new(now, FailureCause::GuestReset, what));
            }
            // QEMU quits after a guest shutdown (kfi passes no -no-shutdown).
            "SHUTDOWN" if gone.is_none() => {
                let what = format!("the guest shut down (QMP SHUTDOWN, reason {reason})");
                *gone = Some(Gone::new(now, FailureCause::QemuExited, what));
            }
            _ => {}
        }
    }
    if gone.is_none() {
        if let Err(e) = vm.check_alive() {
            *gone = Some(Gone::new(now, FailureCause::QemuExited, format!("QEMU exited: {e}")));
        }
    }
}

/// How a guest that booted again got there, as far as its console tells.
fn reset_text(console: &injector::outcome::ConsoleReport) -> String {
    let double = console.oopses.iter().any(|o| o.kind == Some(injector::outcome::OopsKind::DoubleFault));
    if double {
        "the kernel booted again after a double fault: a triple fault reset the machine".into()
    } else {
        "the kernel booted again (the console shows `Linux version`): the guest reset".into()
    }
}

impl Watch {
    /// The outcome, judged with the client records (times relative to
    /// `origin`): a lost heartbeat is a hang only if the service fell
    /// silent too, and the service fails by `criterion`.
    pub fn classify(
        &self,
        records: &[Record],
        origin: Instant,
        hang_timeout: Duration,
        criterion: &ServiceCriterion,
    ) -> Verdict {
        let injected_at_s = self.injection.injected_after_s;
        let t0_s = seconds_since(origin, self.t0);
        let end_s = seconds_since(origin, self.t0 + self.observed);
        let after_injection = |r: &&Record| injected_at_s.is_some_and(|i| r.start >= t0_s + i) && r.start <= end_s;
        // Requests the tracer's hold timed out are the harness's doing; a
        // request started within a second after it may still be queued.
        let held = self.injection.held_from_s.map(|from| (t0_s + from, t0_s + from + self.injection.held_s + 1.0));
        let not_held = |r: &&Record| !held.is_some_and(|(from, to)| r.end >= from && r.start <= to);
        let failed: Vec<&Record> =
            records.iter().filter(after_injection).filter(not_held).filter(|r| !r.is_correct()).collect();
        let wrong: Vec<&&Record> = failed.iter().filter(|r| r.outcome.is_response()).collect();
        let (outage_seen, longest_outage_s) = longest_outage(records, &failed);
        let hung = self.hung_at.is_some_and(|h| {
            // A hang also silences the service: a correct answer in the
            // timeout before detection means only the agent stopped.
            let from = seconds_since(origin, h) - hang_timeout.as_secs_f64();
            !records.iter().any(|r| r.is_correct() && r.end >= from && r.end <= seconds_since(origin, h))
        });
        let outage = longest_outage_s >= criterion.min_outage_s;
        let agent_only = self.hung_at.is_some() && !hung;
        let evidence = Evidence {
            panicked: self.panicked_at.is_some(),
            vm_exit: self.gone.is_some(),
            oops: !self.console.oopses.is_empty(),
            hung,
            service_errors: !wrong.is_empty() || outage || agent_only,
            activated: self.injection.activated,
            activation_unknown: self.injection.activation_unknown.is_some(),
        };
        let outcome = classify(&evidence);
        let failed_at = match outcome {
            Outcome::Panic => self.panicked_at.or(self.oops_at),
            Outcome::VmExit => self.gone.as_ref().map(|g| g.at),
            Outcome::Oops => self.oops_at,
            Outcome::Hang => self.hung_at,
            _ => None,
        };
        // Event times count from the injection.
        let injected = self.t0 + Duration::from_secs_f64(injected_at_s.unwrap_or(0.0));
        let since = |at: Instant| at.saturating_duration_since(injected).as_secs_f64();
        let mut events = self.console_events(&since);
        if let Some(g) = &self.gone {
            events.push(Event::new(Outcome::VmExit, since(g.at), g.what.clone()));
        }
        if hung {
            if let Some(at) = self.hung_at {
                events.push(Event::new(Outcome::Hang, since(at), "no heartbeat and no correct answer".into()));
            }
        }
        let from_injection = |record_s: f64| record_s - (t0_s + injected_at_s.unwrap_or(0.0));
        // When the kernel itself failed: a panic or the VM gone when seen, a
        // hang from its estimated start. Clients failing after that see its
        // consequence, not a step of their own.
        let hang_start = hung.then_some(self.hung_at).flatten().map(|h| since(h) - hang_timeout.as_secs_f64());
        let fatal_s = [self.panicked_at.map(since), self.gone.as_ref().map(|g| since(g.at)), hang_start]
            .into_iter()
            .flatten()
            .reduce(f64::min);
        let before_fatal = |at: f64| fatal_s.is_none_or(|f| at < f);
        // A client sees a failure when its request ends (times out, is
        // refused, or answers wrongly): that is when the service showed it.
        if let Some(first) = wrong.first().filter(|w| before_fatal(from_injection(w.end))) {
            let what = format!("{} wrong answers after the injection (first: {:?})", wrong.len(), first.outcome);
            events.push(Event::new(Outcome::ServiceError, from_injection(first.end), what));
        } else if outage && wrong.is_empty() && before_fatal(from_injection(outage_seen)) {
            let what = format!("no correct answer for {longest_outage_s:.1} s after a failed request");
            events.push(Event::new(Outcome::ServiceError, from_injection(outage_seen), what));
        } else if agent_only {
            if let Some(at) = self.hung_at {
                let what = "the agent's heartbeat stopped while the service answered".to_string();
                events.push(Event::new(Outcome::ServiceError, since(at), what));
            }
        }
        events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        let after_first_event = events.first().map(|first| {
            let from = t0_s + injected_at_s.unwrap_or(0.0) + first.at_s;
            let after: Vec<&Record> = records.iter().filter(|r| r.start >= from && r.start <= end_s).collect();
            let correct = after.iter().filter(|r| r.is_correct()).count();
            (correct, after.len() - correct)
        });
        Verdict {
            after_first_event,
            outcome,
            unattributed: unattributed(outcome, &evidence),
            events,
            failure: self.failure(),
            failed_at,
            errors_after_injection: failed.len(),
            wrong_answers: wrong.len(),
            longest_outage_s,
        }
    }

    /// The console's oopses (the first [`MAX_OOPS_EVENTS`]) and panic as
    /// events. Their times come from the kernel's own timestamps, anchored
    /// at the most precisely seen instant: the panic's GUEST_PANICKED
    /// arrives at once, after everything the kernel printed before it (its
    /// panic line, or else its latest oops line, stands there); without a
    /// panic, the first oops where the console read (every 200 ms) saw it.
    /// So an oops and the panic it led to keep their order and spacing.
    fn console_events(&self, since: &dyn Fn(Instant) -> f64) -> Vec<Event> {
        let c = &self.console;
        let latest_oops = c.oopses.iter().filter_map(|o| o.kernel_s).reduce(f64::max);
        let anchor = match (self.panicked_at, c.panic_kernel_s.or(latest_oops), self.oops_at) {
            (Some(at), Some(k), _) => Some((since(at), k)),
            (None, _, Some(at)) => c.first().and_then(|o| o.kernel_s).map(|k| (since(at), k)),
            _ => None,
        };
        let at = |kernel_s: Option<f64>, fallback: Option<Instant>| match (anchor, kernel_s) {
            (Some((host, k0)), Some(k)) => host + (k - k0),
            _ => fallback.map_or(0.0, since),
        };
        let mut events: Vec<Event> =
            c.oopses.iter().take(MAX_OOPS_EVENTS).map(|o| Event::oops(o, at(o.kernel_s, self.oops_at))).collect();
        if self.panicked_at.is_some() {
            let what = c.panic.clone().unwrap_or_else(|| "GUEST_PANICKED (no panic line on the console)".into());
            let mut panic = Event::new(Outcome::Panic, at(c.panic_kernel_s, self.panicked_at), what);
            panic.kernel_s = c.panic_kernel_s;
            events.push(panic);
        }
        events
    }

    /// The failure the VMM's detectors saw (a panic, the VM gone, or a lost
    /// heartbeat), known before the client records are: what recovery
    /// acts on.
    pub fn failure(&self) -> Option<Failure> {
        if let Some(at) = self.panicked_at {
            return Some(Failure { cause: FailureCause::GuestPanicked, detected_at: at });
        }
        if let Some(g) = &self.gone {
            return Some(Failure { cause: g.cause, detected_at: g.at });
        }
        self.hung_at.map(|at| Failure { cause: FailureCause::HeartbeatLost, detected_at: at })
    }
}

/// The longest stretch from a failed request to the next correct answer
/// (any request's that ended after the failed one started), with when
/// that failed request ended (its client saw the failure), seconds on the
/// records' clock. With no correct answer after it, the stretch runs to
/// the last record's end.
fn longest_outage(records: &[Record], failed: &[&Record]) -> (f64, f64) {
    let last_end = records.iter().map(|r| r.end).fold(0.0, f64::max);
    failed
        .iter()
        .map(|f| {
            let back =
                records.iter().filter(|r| r.is_correct() && r.end > f.start).map(|r| r.end).fold(f64::NAN, f64::min);
            let back = if back.is_nan() { last_end } else { back };
            (f.end, (back - f.start).max(0.0))
        })
        .fold((0.0, 0.0), |best, x| if x.1 > best.1 { x } else { best })
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
    let verdict = watch.classify(&records, origin, config.hang_timeout, &config.service);
    let (console, injection, t0, observed) = (watch.console, watch.injection, watch.t0, watch.observed);
    let failed_at = verdict.failed_at.or(verdict.failure.map(|f| f.detected_at));
    Ok(InjectionResult {
        fault: spec.clone(),
        description: spec.describe(),
        model: spec.model().kind(),
        activated: injection.activated,
        outcome: verdict.outcome,
        unattributed: verdict.unattributed,
        events: verdict.events,
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
        errors_after_injection: verdict.errors_after_injection,
        wrong_answers: verdict.wrong_answers,
        longest_outage_s: verdict.longest_outage_s,
    })
}

/// Test builds can break a campaign fault's VM or gdbstub connection half
/// a second into its window, to exercise `vm-exit` and the harness-error
/// path (`test-knobs`; never in a default build): `KFI_TEST_KILL_QEMU=N`
/// sends SIGKILL to QEMU while fault N is watched, `KFI_TEST_SEVER_GDBSTUB=N`
/// shuts the gdbstub connection down then (in every attempt, so retries
/// fail alike).
#[cfg(feature = "test-knobs")]
pub(crate) mod knobs {
    use std::cell::Cell;

    use super::*;

    thread_local! {
        static FAULT: Cell<Option<u64>> = const { Cell::new(None) };
    }

    /// Names the campaign fault this thread watches next.
    pub(crate) fn set_fault(index: u64) {
        FAULT.with(|f| f.set(Some(index)));
    }

    fn wanted(name: &str) -> Option<u64> {
        std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
    }

    pub(super) fn arm(vm: &Vm, gdb: &GdbClient) -> Result<()> {
        let Some(n) = FAULT.with(Cell::take) else { return Ok(()) };
        let later = |f: Box<dyn FnOnce() + Send>| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(500));
                f();
            });
        };
        if wanted("KFI_TEST_KILL_QEMU") == Some(n) {
            let pid = libc::pid_t::try_from(vm.pid()).context("QEMU's pid")?;
            // SAFETY: kill(2) on QEMU's pid, which this process started.
            later(Box::new(move || unsafe {
                libc::kill(pid, libc::SIGKILL);
            }));
        }
        if wanted("KFI_TEST_SEVER_GDBSTUB") == Some(n) {
            let severer = gdb.severer().context("cloning the gdbstub connection")?;
            later(Box::new(move || severer.sever()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use injector::outcome::{ConsoleReport, OopsKind};
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
            console: ConsoleReport::default(),
            t0: origin,
            observed: Duration::from_secs(10),
            panicked_at: panicked.map(at),
            gone: None,
            oops_at: None,
            hung_at: hung.map(at),
        }
    }

    fn answers(outcome: RequestOutcome, from: f64, to: f64) -> Vec<Record> {
        let n = ((to - from) / 0.1).round() as usize;
        (0..n)
            .map(|i| {
                let start = from + i as f64 * 0.1;
                Record { start, end: start + 0.05, path: "/".into(), outcome, bytes: 1 }
            })
            .collect()
    }

    const HANG: Duration = Duration::from_secs(4);

    fn judge(w: &Watch, records: &[Record], origin: Instant) -> Verdict {
        w.classify(records, origin, HANG, &ServiceCriterion::default())
    }

    #[test]
    fn outcomes_come_from_the_watch_and_the_client_records() {
        let origin = Instant::now();
        let healthy = answers(RequestOutcome::Ok, 0.0, 10.0);

        let v = judge(&watch(origin, false, None, None), &healthy, origin);
        assert_eq!((v.outcome, v.errors_after_injection), (Outcome::NotActivated, 0));
        assert!(v.failure.is_none() && v.events.is_empty() && !v.unattributed);

        let v = judge(&watch(origin, true, None, None), &healthy, origin);
        assert_eq!(v.outcome, Outcome::Benign);

        let v = judge(&watch(origin, true, Some(2.0), None), &healthy[..20], origin);
        assert_eq!(v.outcome, Outcome::Panic);
        assert_eq!(v.failure.map(|f| f.cause), Some(FailureCause::GuestPanicked));
        assert_eq!(v.events.iter().map(|e| e.outcome).collect::<Vec<_>>(), [Outcome::Panic]);

        // Wrong answers after the injection, kernel alive: a service error.
        let mut broken = answers(RequestOutcome::Ok, 0.0, 1.0);
        broken.extend(answers(RequestOutcome::WrongContent, 1.0, 10.0));
        let v = judge(&watch(origin, true, None, None), &broken, origin);
        assert_eq!(v.outcome, Outcome::ServiceError);
        assert!(v.errors_after_injection > 80 && v.wrong_answers == v.errors_after_injection);
        assert!((v.events[0].at_s - 0.05).abs() < 1e-9, "{:?}", v.events);

        // The heartbeat stopped but the service kept answering: the agent
        // failed, the service did not; still a service error (of the
        // guest's own agent), never a hang.
        let v = judge(&watch(origin, true, None, Some(6.0)), &healthy, origin);
        assert_eq!(v.outcome, Outcome::ServiceError);
        // Both silent: a hang, which recovery acts on.
        // Timed-out requests end at the clients' 1 s timeout.
        let mut silent = answers(RequestOutcome::Timeout, 2.5, 10.0);
        for r in &mut silent {
            r.end = r.start + 1.0;
        }
        let mut records = answers(RequestOutcome::Ok, 0.0, 1.0);
        records.extend(silent);
        let v = judge(&watch(origin, true, None, Some(6.0)), &records, origin);
        assert_eq!(v.outcome, Outcome::Hang);
        assert_eq!(v.failure.map(|f| f.cause), Some(FailureCause::HeartbeatLost));
        // The clients' timeouts are the hang's, not a service error before
        // it: one event.
        assert_eq!(v.events.iter().map(|e| e.outcome).collect::<Vec<_>>(), [Outcome::Hang], "{:?}", v.events);
        // Refused connections after a panic are its consequence too.
        let mut after_panic = answers(RequestOutcome::Ok, 0.0, 2.0);
        after_panic.extend(answers(RequestOutcome::ConnectError, 2.0, 10.0));
        let v = judge(&watch(origin, true, Some(2.0), None), &after_panic, origin);
        assert_eq!(v.events.iter().map(|e| e.outcome).collect::<Vec<_>>(), [Outcome::Panic], "{:?}", v.events);
    }

    /// A failed request or two between correct answers, as a loaded
    /// two-core host gives with no fault at all, is counted but is no
    /// service error; an outage of the threshold is, and one with no
    /// activation seen is flagged unattributed.
    #[test]
    fn transient_failures_are_counted_and_outages_are_service_errors() {
        let origin = Instant::now();
        let mut blip = answers(RequestOutcome::Ok, 0.0, 10.0);
        blip[30].outcome = RequestOutcome::Timeout;
        blip[30].end = blip[30].start + 1.0;
        blip[55].outcome = RequestOutcome::ConnectError;
        let v = judge(&watch(origin, false, None, None), &blip, origin);
        assert_eq!((v.outcome, v.errors_after_injection, v.wrong_answers), (Outcome::NotActivated, 2, 0));
        assert!(v.longest_outage_s < 0.2, "{}", v.longest_outage_s);
        let v = judge(&watch(origin, true, None, None), &blip, origin);
        assert_eq!(v.outcome, Outcome::Benign);

        // 2.5 s of refused connections: an outage.
        let mut outage = answers(RequestOutcome::Ok, 0.0, 3.0);
        outage.extend(answers(RequestOutcome::ConnectError, 3.0, 5.5));
        outage.extend(answers(RequestOutcome::Ok, 5.5, 10.0));
        let v = judge(&watch(origin, true, None, None), &outage, origin);
        assert_eq!(v.outcome, Outcome::ServiceError);
        assert!((v.longest_outage_s - 2.55).abs() < 0.01, "{}", v.longest_outage_s);
        assert!(!v.unattributed);
        assert!(
            (v.events[0].at_s - 2.05).abs() < 1e-6,
            "when the first refused request ended, from the injection: {:?}",
            v.events
        );
        let v = judge(&watch(origin, false, None, None), &outage, origin);
        assert_eq!(v.outcome, Outcome::ServiceError);
        assert!(v.unattributed, "a failure without activation is flagged, not credited");
        // A longer threshold makes the same outage a transient.
        let lenient = ServiceCriterion { min_outage_s: 3.0 };
        let v = watch(origin, true, None, None).classify(&outage, origin, HANG, &lenient);
        assert_eq!(v.outcome, Outcome::Benign);
    }

    /// An oops in `httpd` and the panic it led to are both kept, in the
    /// kernel's order, placed by its timestamps, though the harness saw
    /// the panic first (GUEST_PANICKED) and the oops at its next console
    /// read.
    #[test]
    fn an_oops_followed_by_a_panic_keeps_both_events_in_order() {
        let origin = Instant::now();
        let mut w = watch(origin, true, Some(3.0), None);
        w.oops_at = Some(origin + Duration::from_secs_f64(3.15));
        w.console = ConsoleReport {
            oopses: vec![OopsRecord {
                kind: Some(OopsKind::NullPointer),
                headline: "BUG: kernel NULL pointer dereference, address: 0000000000000008".into(),
                function: Some("tcp_sendmsg_locked".into()),
                comm: Some("httpd".into()),
                pid: Some(97),
                kernel_s: Some(23.40),
                ..OopsRecord::default()
            }],
            panic: Some("Attempted to kill init! exitcode=0x00000009".into()),
            panic_kernel_s: Some(23.45),
            ..ConsoleReport::default()
        };
        let v = judge(&w, &answers(RequestOutcome::Ok, 0.0, 3.0), origin);
        assert_eq!(v.outcome, Outcome::Panic);
        let kinds: Vec<Outcome> = v.events.iter().map(|e| e.outcome).collect();
        assert_eq!(kinds, [Outcome::Oops, Outcome::Panic], "{:?}", v.events);
        let (oops, panic) = (&v.events[0], &v.events[1]);
        assert_eq!(
            (oops.function.as_deref(), oops.process.as_deref()),
            (Some("tcp_sendmsg_locked"), Some("httpd[97]"))
        );
        assert!(panic.what.contains("kill init"));
        // The panic was seen 2 s after the injection; the oops came 50 ms
        // before it by the kernel's clock.
        assert!((panic.at_s - 2.0).abs() < 1e-6 && (oops.at_s - 1.95).abs() < 1e-6, "{:?}", v.events);

        // A panic with no line on the console (a double fault's): the
        // latest oops line stands at GUEST_PANICKED, the earlier before it.
        w.console.panic = None;
        w.console.panic_kernel_s = None;
        let mut second = w.console.oopses[0].clone();
        second.kind = Some(OopsKind::DoubleFault);
        second.kernel_s = Some(23.42);
        w.console.oopses.push(second);
        let v = judge(&w, &answers(RequestOutcome::Ok, 0.0, 3.0), origin);
        let kinds: Vec<Outcome> = v.events.iter().map(|e| e.outcome).collect();
        assert_eq!(kinds, [Outcome::Oops, Outcome::Oops, Outcome::Panic], "{:?}", v.events);
        assert!((v.events[0].at_s - 1.98).abs() < 1e-6 && (v.events[1].at_s - 2.0).abs() < 1e-6, "{:?}", v.events);
        assert!(v.events[2].what.contains("no panic line"));
    }

    #[test]
    fn a_vm_gone_without_a_panic_is_vm_exit_with_its_cause() {
        let origin = Instant::now();
        let mut w = watch(origin, true, None, None);
        let at = origin + Duration::from_secs(4);
        w.gone = Some(Gone::new(at, FailureCause::QemuExited, "QEMU exited: killed".into()));
        let v = judge(&w, &answers(RequestOutcome::Ok, 0.0, 4.0), origin);
        assert_eq!(v.outcome, Outcome::VmExit);
        assert_eq!(v.failure.map(|f| f.cause), Some(FailureCause::QemuExited));
        assert_eq!(v.events.len(), 1);
        assert!((v.events[0].at_s - 3.0).abs() < 1e-6);
        w.gone = Some(Gone::new(at, FailureCause::GuestReset, reset_text(&ConsoleReport::default())));
        assert_eq!(w.failure().map(|f| f.cause), Some(FailureCause::GuestReset));
    }
}
