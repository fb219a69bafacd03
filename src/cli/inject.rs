//! `kfi inject`: boot, load, inject one fault, print what it did.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use injector::fault::{FaultSpec, Generator};
use kfi::duration;
use kfi::fault_watch::{run_fault_experiment, FaultExperimentConfig};
use kfi::setup::load_kernel_model;
use recovery_sut::{Cache, Vm, VmConfig};
use workloads::DocList;

use super::faults::SelectionArgs;
use super::GuestArgs;

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
    #[arg(long, default_value = "10s", value_parser = duration::flag("--window"))]
    window: Duration,
    /// Load before the fault's clock starts.
    #[arg(long, default_value = "500ms", value_parser = duration::flag("--warmup"))]
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

/// Boots the guest, runs one fault experiment, prints the result.
pub fn cmd(cache: &Cache, args: InjectArgs) -> Result<ExitCode> {
    let step = |m: &str| tracing::info!("{m}");
    let model = load_kernel_model(cache, &args.vm.kernel.choice()?, &step)?;
    let spec: FaultSpec = match (&args.fault, args.seed, args.index) {
        (Some(json), _, _) => serde_json::from_str(json).context("parsing --fault (a FaultSpec as JSON)")?,
        (None, Some(seed), Some(index)) => {
            let (selection, models) = args.select.resolve();
            let profile = args.select.load_profile(&model.image)?;
            let guide = args.select.guide(profile.as_ref());
            Generator::new_with(&model.image, &model.code, &selection, &models, guide)?.generate(seed, index)?
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
    let experiment = FaultExperimentConfig {
        window: args.window,
        warmup: args.warmup,
        clients: args.clients.max(1),
        trace,
        ..FaultExperimentConfig::default()
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
        let flag = if result.unattributed { " (unattributed: the fault was not seen activated)" } else { "" };
        println!("outcome     {}{flag}", result.outcome);
        for e in &result.events {
            let place = [e.function.as_deref(), e.process.as_deref()].into_iter().flatten().collect::<Vec<_>>();
            let place = if place.is_empty() { String::new() } else { format!(" [{}]", place.join(" in ")) };
            println!("event       +{:.3} s {}: {}{place}", e.at_s, e.outcome, e.what);
        }
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
            "load        {} requests, {} correct, {} errors after the injection ({} wrong answers, longest outage {:.2} s)",
            result.requests, result.correct, result.errors_after_injection, result.wrong_answers, result.longest_outage_s
        );
    }
    Ok(ExitCode::SUCCESS)
}
