//! `kfi inject`: one fault into a running guest under HTTP load, observed
//! for a window and classified. [`run_fault_experiment`] is the reusable
//! part: it takes a booted VM (plain, or a `Sut`'s) and leaves recovery to
//! the caller.

use std::io::{Read, Seek, SeekFrom};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use injector::fault::{FaultSpec, Generator, ModelKind};
use injector::outcome::{classify, parse_console, Evidence, OopsRecord, Outcome};
use injector::{GdbClient, InjectionReport, KernelImage};
use recovery_sut::recovery::{Failure, FailureCause};
use recovery_sut::{Cache, Vm, VmConfig};
use serde::Serialize;
use workloads::{seconds_since, ClosedLoop, DocList, LoadSpec, Mode, Record};

use crate::faults::{load_kernel, SelectionArgs};
use crate::GuestArgs;

/// How one fault experiment runs.
#[derive(Debug, Clone)]
pub struct ExperimentConfig {
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

impl Default for ExperimentConfig {
    fn default() -> Self {
        ExperimentConfig {
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
    let mut gdb = GdbClient::connect(vm.gdb_addr(), Duration::from_secs(5)).context("attaching to the gdbstub")?;
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
    config: &ExperimentConfig,
) -> Result<InjectionResult> {
    let console_offset = std::fs::metadata(vm.console_log()).map(|m| m.len()).unwrap_or(0);
    vm.events(); // stale events are not this fault's
    let addr = vm.http_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let origin = Instant::now();
    let load_spec = LoadSpec {
        mode: Mode::Closed(ClosedLoop {
            clients: config.clients.max(1),
            think: Duration::ZERO,
            failure_pause: Duration::from_millis(20),
        }),
        duration: config.warmup + config.window + Duration::from_secs(60),
        timeout: Duration::from_secs(1),
        seed: config.load_seed,
    };
    let load = {
        let docs = docs.clone();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || workloads::run_blocking_until(addr, &docs, &load_spec, origin, stop))
    };
    std::thread::sleep(config.warmup);
    let limits =
        WatchLimits { window: config.window, hang_timeout: config.hang_timeout, oops_grace: config.oops_grace };
    let tracer = config.trace.map(|(layout, bounds)| injector::trace::Tracer::new(layout, image, bounds));
    let watched = watch_fault(vm, image, spec, &limits, console_offset, tracer);
    stop.store(true, Ordering::SeqCst);
    let records = load.join().map_err(|_| anyhow::anyhow!("the load generator thread panicked"))??;
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

/// `kfi inject` arguments.
#[derive(clap::Args)]
pub struct InjectArgs {
    #[command(flatten)]
    vm: GuestArgs,
    /// The fault as JSON (as `kfi faults --json` prints in `spec`).
    #[arg(long, conflicts_with_all = ["seed", "index"], required_unless_present = "seed")]
    fault: Option<String>,
    /// Campaign seed (with --index): the fault `kfi faults --seed S` lists at that index.
    #[arg(long, requires = "index")]
    seed: Option<u64>,
    /// Index of the fault in the campaign.
    #[arg(long, requires = "seed")]
    index: Option<u64>,
    #[command(flatten)]
    select: SelectionArgs,
    /// Observation window after the warm-up, e.g. `10s` or `1500ms`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    window: Duration,
    /// Load before the fault's clock starts.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    warmup: Duration,
    /// Closed-loop HTTP clients.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Code faults act once (original bytes restored after the first execution).
    #[arg(long)]
    transient: bool,
    /// Trace the error from its activation (taint by single steps, then
    /// read watchpoints) and print its propagation scope.
    #[arg(long)]
    trace: bool,
    /// Single-step budget of the trace.
    #[arg(long, default_value_t = 4000, requires = "trace")]
    trace_steps: u64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// `10s`, `1500ms`, `2.5s`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("`{s}` is not a duration: write e.g. 10s or 500ms"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("`{s}` is not a duration: it must be a non-negative number"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// Boots the guest, runs one fault experiment, prints the result.
pub fn cmd(cache: &Cache, args: InjectArgs) -> Result<ExitCode> {
    let step = |m: &str| tracing::info!("{m}");
    let model = load_kernel(cache, &args.vm.kernel, &step)?;
    let spec: FaultSpec = match (&args.fault, args.seed, args.index) {
        (Some(json), _, _) => serde_json::from_str(json).context("parsing --fault (a FaultSpec as JSON)")?,
        (None, Some(seed), Some(index)) => {
            let (selection, models) = args.select.resolve();
            Generator::new(&model.image, &model.code, &selection, &models)?.generate(seed, index)?
        }
        _ => anyhow::bail!("give --fault SPEC_JSON, or --seed S --index I"),
    };
    let spec = if args.transient { spec.with_persistence(injector::Persistence::Transient) } else { spec };
    let prepared = args.vm.prepare(cache, &step)?;
    let docs = DocList::load(&prepared.image.dir.join("docs.json"))?;
    let config = VmConfig { accel: prepared.decision.accel, memory_mib: prepared.memory_mib, ..VmConfig::default() };
    let boot_started = Instant::now();
    let mut vm = Vm::start(&prepared.image, &config)?;
    vm.wait_http(Duration::from_secs(120)).context("waiting for the guest's service")?;
    vm.wait_phase("services-ready", Duration::from_secs(30))?;
    let boot_s = boot_started.elapsed().as_secs_f64();
    let trace = if args.trace {
        let layout = injector::trace::KernelLayout::load(&model.vmlinux, &model.image)?;
        Some((layout, injector::trace::TraceConfig { max_steps: args.trace_steps, ..Default::default() }))
    } else {
        None
    };
    let experiment = ExperimentConfig {
        window: args.window,
        warmup: args.warmup,
        clients: args.clients.max(1),
        trace,
        ..ExperimentConfig::default()
    };
    let result = run_fault_experiment(&mut vm, &model.image, &spec, &docs, &experiment)?;
    vm.kill();
    if args.json {
        let mut value = serde_json::to_value(&result)?;
        value["seed"] = serde_json::json!(args.seed);
        value["index"] = serde_json::json!(args.index);
        value["accel"] = prepared.decision.accel.name().into();
        value["kernel_version"] = model.kernel.release.clone().into();
        value["timings"]["boot_s"] = serde_json::json!(boot_s);
        println!("{}", serde_json::to_string(&value)?);
    } else {
        println!("fault       {}", result.description);
        println!("activated   {}", result.activated);
        println!("outcome     {}", result.outcome);
        if let Some(o) = &result.detail {
            println!(
                "oops        {} at {} (comm {}, pid {})",
                o.headline,
                o.rip.as_deref().unwrap_or("?"),
                o.comm.as_deref().unwrap_or("?"),
                o.pid.map_or("?".into(), |p| p.to_string())
            );
            if !o.call_trace.is_empty() {
                println!("trace       {}", o.call_trace.join(" <- "));
            }
        }
        if let Some(p) = &result.panic {
            println!("panic       {p}");
        }
        if let Some(p) = &result.injection.propagation {
            println!("scope       {} ({})", p.scope, p.why);
            println!(
                "trace       activated by {}, {} steps in {:.2} s ({:.0}/s, {:?}), {} cells watched {:.1} s, {} hits",
                p.activating, p.steps, p.short_s, p.steps_per_s, p.short_end, p.watched, p.long_s, p.hits
            );
        }
        let t = &result.timings;
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
        println!(
            "timings     injected at {} s, latency {} ms, activated after {} s, failure at {} s",
            f(t.injected_s),
            f(t.injection_latency_ms),
            f(t.activation_after_s),
            f(t.failure_s)
        );
        println!(
            "load        {} requests, {} correct, {} errors after the injection",
            result.requests, result.correct, result.errors_after_injection
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
