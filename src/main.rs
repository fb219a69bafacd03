//! `kfi`: the command line of the kernel fault-injection and recovery lab.
//! It parses arguments and wires the library crates together; the work
//! itself lives in `recovery-sut`, `injector`, `workloads` and `analysis`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod campaign;
mod faults;
mod inject;
mod recover;
mod sut;
mod workload;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use recovery_sut::{accel_probe, doctor, guest, kernel, AccelChoice, Cache, KernelChoice, Profile, Vm, VmConfig};

#[derive(Parser)]
#[command(name = "kfi", version, about = "Kernel fault injection and recovery evaluation lab", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check QEMU, accelerators, the cache, free disk and missing packages.
    Doctor {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Fetch or inspect the guest kernel.
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// Build or check guest images.
    #[command(subcommand)]
    Guest(GuestCommand),
    /// Boot a guest, print its phase timeline, and keep it up until Ctrl-C.
    Boot(BootArgs),
    /// Crash the guest repeatedly under client load and measure each recovery strategy's client-seen downtime.
    Recover(RecoverArgs),
    /// Run the recovery VMM: keep a guest's service up across kernel failures until Ctrl-C.
    #[command(subcommand)]
    Sut(SutCommand),
    /// List the deterministic faults of a campaign seed (the same list on every machine).
    Faults(faults::FaultsArgs),
    /// Boot a guest, inject one fault under HTTP load, observe it and classify the outcome.
    Inject(inject::InjectArgs),
    /// Run, resume, inspect or merge campaigns of experiments described in TOML (see experiments/).
    #[command(subcommand)]
    Campaign(campaign::cli::CampaignCommand),
    /// Re-run exactly one experiment of a campaign and compare it with the stored record.
    Replay(campaign::cli::ReplayArgs),
    /// Regenerate tables, figures and report.md of a results directory from its stored data alone.
    Report(campaign::cli::ReportArgs),
    /// Regression mode for a recovery VMM's CI: run a fixed crash set and fail on any unrecovered failure, lost write or slower strategy.
    Check(campaign::cli::CheckArgs),
    /// Reproduce the published downtime result: run experiments/downtime.toml (every experiment file with --all) and write results/<campaign>/.
    Reproduce(campaign::cli::ReproduceArgs),
    /// Offer the Apache or RUBiS workload to a booted guest and report throughput, latency and errors.
    #[command(subcommand)]
    Workload(workload::WorkloadCommand),
}

#[derive(Args)]
struct RecoverArgs {
    #[command(flatten)]
    vm: GuestArgs,
    /// How to crash the guest.
    #[arg(long, value_enum, default_value = "sysrq")]
    crash: recover::Crash,
    /// Strategies to compare, comma-separated: full-reboot (the baseline), phase-restore, service-restore, kexec-reboot.
    #[arg(long, value_delimiter = ',', default_value = "full-reboot,phase-restore,service-restore")]
    strategy: Vec<String>,
    /// Crashes per strategy.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Closed-loop HTTP clients.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Seconds of load before each crash.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seed of the request mix.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object (trials and per-strategy summary).
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum SutCommand {
    /// Boot the guest and recover it with one strategy after every failure, logging each, until Ctrl-C.
    Run(SutRunArgs),
}

#[derive(Args)]
struct SutRunArgs {
    #[command(flatten)]
    vm: GuestArgs,
    /// Recovery strategy: full-reboot, phase-restore, service-restore or kexec-reboot.
    #[arg(long, default_value = "service-restore")]
    strategy: String,
    /// Seconds without an agent heartbeat that count as a hang.
    #[arg(long, default_value_t = 5.0)]
    heartbeat_timeout: f64,
    /// Give the guest an i6300esb watchdog with this timeout (seconds) and watch it.
    #[arg(long, value_name = "SECONDS")]
    watchdog: Option<u32>,
    /// Do not probe the service from the host (3 failed probes in a row count as a failure).
    #[arg(long)]
    no_probe: bool,
    /// Crash the guest (sysrq through the agent) every this many seconds: a soak test.
    #[arg(long, value_name = "SECONDS")]
    crash_every: Option<f64>,
    /// Print one JSON object per recovery instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum KernelCommand {
    /// Fetch the current Debian linux-image-amd64 into the cache.
    Fetch {
        /// Also fetch the -dbg package (debug vmlinux with DWARF, real System.map; about 850 MB).
        #[arg(long)]
        debug: bool,
        /// Fetch again even if cached.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum GuestCommand {
    /// Build a guest image into the cache (atomically; cached by recipe hash).
    Build {
        /// Guest profile.
        profile: ProfileArg,
        /// Rebuild even if an image with the same recipe exists.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        kernel: KernelArgs,
    },
    /// Check every file of a built image against its manifest (full hash).
    Verify {
        /// Guest profile.
        profile: ProfileArg,
        #[command(flatten)]
        kernel: KernelArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ProfileArg {
    /// Busybox initramfs with busybox httpd (boots in seconds).
    Tiny,
    /// Debian bookworm: systemd, Apache, PHP, MariaDB on ext4.
    Debian,
}

impl From<ProfileArg> for Profile {
    fn from(p: ProfileArg) -> Profile {
        match p {
            ProfileArg::Tiny => Profile::Tiny,
            ProfileArg::Debian => Profile::Debian,
        }
    }
}

#[derive(Clone, Copy, ValueEnum, Default)]
enum AccelArg {
    /// KVM when a short probe boot proves it works here, else TCG.
    #[default]
    Auto,
    /// Software emulation.
    Tcg,
    /// Hardware virtualisation, without probing.
    Kvm,
}

#[derive(Args, Clone)]
struct KernelArgs {
    /// Boot this bzImage instead of the current Debian kernel.
    #[arg(long, value_name = "BZIMAGE")]
    kernel: Option<PathBuf>,
    /// The ELF vmlinux (with DWARF) matching --kernel, for the injector.
    #[arg(long, requires = "kernel")]
    vmlinux: Option<PathBuf>,
    /// The lib/modules/<release> tree matching --kernel (omit if the drivers are built in).
    #[arg(long, requires = "kernel")]
    modules: Option<PathBuf>,
}

impl KernelArgs {
    fn choice(&self) -> KernelChoice {
        match &self.kernel {
            None => KernelChoice::Debian,
            Some(k) => {
                KernelChoice::User { kernel: k.clone(), vmlinux: self.vmlinux.clone(), modules: self.modules.clone() }
            }
        }
    }
}

#[derive(Args)]
struct BootArgs {
    #[command(flatten)]
    vm: GuestArgs,
    /// Exit after the first correct HTTP answer instead of waiting for Ctrl-C.
    #[arg(long)]
    until_ready: bool,
    /// Print one JSON object (accel, qemu_version, kernel_version, phases, http_ready_s).
    #[arg(long)]
    json: bool,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Host port forwarded to the guest's port 80 (default: a free one).
    #[arg(long)]
    http_port: Option<u16>,
    /// Host port of the gdbstub (default: a free one).
    #[arg(long)]
    gdb_port: Option<u16>,
    /// Attach the data disk to the tiny guest (debian always has it).
    #[arg(long)]
    data_disk: bool,
    /// Seconds to wait for the guest to serve HTTP.
    #[arg(long)]
    timeout: Option<u64>,
    /// Keep the run directory (console log, QEMU output) and print its path.
    #[arg(long)]
    keep_run_dir: bool,
}

/// What every command that runs a guest needs: which guest, on which
/// kernel, accelerator and RAM size.
#[derive(Args)]
struct GuestArgs {
    /// Guest profile.
    #[arg(long, value_enum, default_value = "tiny")]
    guest: ProfileArg,
    /// Accelerator.
    #[arg(long, value_enum, default_value = "auto")]
    accel: AccelArg,
    /// Guest RAM in MiB (default: 256 for tiny, 1024 for debian).
    #[arg(long)]
    memory: Option<u32>,
    #[command(flatten)]
    kernel: KernelArgs,
}

/// A guest ready to start: its image, kernel, accelerator and RAM size.
struct Prepared {
    profile: Profile,
    kernel: recovery_sut::Kernel,
    image: recovery_sut::GuestImage,
    decision: recovery_sut::AccelDecision,
    memory_mib: u32,
}

impl GuestArgs {
    /// The guest these arguments name, ready to start.
    fn prepare(&self, cache: &Cache, step: &dyn Fn(&str)) -> Result<Prepared> {
        let choice = match self.accel {
            AccelArg::Auto => AccelChoice::Auto,
            AccelArg::Tcg => AccelChoice::Tcg,
            AccelArg::Kvm => AccelChoice::Kvm,
        };
        prepare_guest(cache, self.guest.into(), &self.kernel.choice(), choice, self.memory, step)
    }
}

/// Resolves the kernel, builds the image if needed and picks the
/// accelerator, reporting each step.
fn prepare_guest(
    cache: &Cache,
    profile: Profile,
    kernel_choice: &KernelChoice,
    accel_choice: AccelChoice,
    memory: Option<u32>,
    step: &dyn Fn(&str),
) -> Result<Prepared> {
    let kernel = kernel::resolve(cache, kernel_choice, step)?;
    let image = guest::ensure(cache, profile, &kernel, step)?;
    step("choosing the accelerator (the first KVM probe boot takes up to 15 s)");
    let decision = accel_probe::decide(accel_choice, cache, &image)?;
    let memory_mib = memory.unwrap_or(match profile {
        Profile::Tiny => 256,
        Profile::Debian => 1024,
    });
    Ok(Prepared { profile, kernel, image, decision, memory_mib })
}

fn say(msg: &str) {
    eprintln!("kfi: {msg}");
}

/// Shows long set-up work (kernel download, image builds) as a spinner
/// with the current step and the elapsed time; on a non-terminal stderr
/// each step is one line.
struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    fn new() -> Self {
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress { bar }
    }

    fn step(&self, msg: &str) {
        if self.bar.is_hidden() {
            say(msg);
        } else {
            self.bar.set_message(msg.to_string());
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KFI_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("kfi: error: {err}");
            for (i, cause) in err.chain().skip(1).enumerate() {
                eprintln!("  {}: {cause}", i + 1);
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let cache = Cache::from_env()?;
    match cli.command {
        Command::Doctor { json } => cmd_doctor(&cache, json),
        Command::Kernel(KernelCommand::Fetch { debug, force }) => {
            if force {
                kernel::forget_debian(&cache)?;
            }
            let progress = Progress::new();
            let step = |m: &str| progress.step(m);
            let k = kernel::resolve(&cache, &KernelChoice::Debian, &step)?;
            let k = if debug { kernel::fetch_debug(&cache, &k, &step)? } else { k };
            drop(progress);
            println!("kernel {}", k.describe());
            println!("  vmlinuz     {}", k.vmlinuz.display());
            println!(
                "  modules     {} ({})",
                k.modules.len(),
                k.modules.iter().map(|m| m.0.as_str()).collect::<Vec<_>>().join(" ")
            );
            if let (Some(v), Some(m)) = (&k.vmlinux, &k.system_map) {
                println!("  vmlinux     {}", v.display());
                println!("  System.map  {}", m.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Guest(GuestCommand::Build { profile, force, kernel }) => {
            let progress = Progress::new();
            let step = |m: &str| progress.step(m);
            let k = kernel::resolve(&cache, &kernel.choice(), &step)?;
            let started = Instant::now();
            let image = guest::build(&cache, profile.into(), &k, force, &step)?;
            drop(progress);
            println!(
                "{} guest image ready: {} ({:.1} MB, built in {:.1} s{})",
                image.profile(),
                image.dir.display(),
                image.size_bytes() as f64 / 1e6,
                image.meta.build_seconds,
                if started.elapsed().as_secs_f64() < image.meta.build_seconds { ", cached" } else { "" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Guest(GuestCommand::Verify { profile, kernel }) => {
            let k = kernel::resolve(&cache, &kernel.choice(), &say)?;
            let image = guest::open(&cache, profile.into(), &k)?;
            guest::verify_full(&image)?;
            println!("{} guest image {} is intact", image.profile(), image.dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Boot(args) => cmd_boot(&cache, args),
        Command::Recover(args) => cmd_recover(&cache, args),
        Command::Sut(SutCommand::Run(args)) => cmd_sut_run(&cache, args),
        Command::Faults(args) => faults::cmd(&cache, args),
        Command::Inject(args) => inject::cmd(&cache, args),
        Command::Campaign(campaign::cli::CampaignCommand::Run(args)) => campaign::cli::run(&cache, args),
        Command::Campaign(campaign::cli::CampaignCommand::Status(args)) => campaign::cli::status(args),
        Command::Campaign(campaign::cli::CampaignCommand::Merge { into, from }) => campaign::cli::merge(&into, &from),
        Command::Replay(args) => campaign::cli::replay(&cache, args),
        Command::Report(args) => campaign::cli::report(args),
        Command::Reproduce(args) => campaign::cli::reproduce(&cache, args),
        Command::Check(args) => campaign::cli::check(&cache, args),
        Command::Workload(cmd) => workload::cmd(&cache, cmd),
    }
}

fn cmd_recover(cache: &Cache, args: RecoverArgs) -> Result<ExitCode> {
    use recovery_sut::recovery::Strategy;
    let strategies = args.strategy.iter().map(|s| s.parse::<Strategy>()).collect::<Result<Vec<_>, _>>()?;
    let spinner = (!args.json).then(Progress::new);
    let step = |m: &str| {
        if let Some(s) = &spinner {
            s.step(m)
        }
    };
    let Prepared { profile, kernel: k, image, decision, memory_mib } = args.vm.prepare(cache, &step)?;
    step(&format!("booting the {profile} guest ({}) and taking the service snapshot", decision.accel.name()));
    // The data disk is attached, as in production: phase-restore remounts
    // it, and service-restore must prove it unchanged.
    let config = VmConfig { accel: decision.accel, memory_mib, data_disk: true, ..VmConfig::default() };
    let plan = recover::RecoverPlan {
        strategies: strategies.clone(),
        repeat: args.repeat,
        crash: args.crash,
        warmup: Duration::from_secs_f64(args.warmup.max(0.5)),
        tail: Duration::from_millis(500),
        clients: args.clients.max(1),
        seed: args.seed,
    };
    let show = |t: &recover::Trial| {
        step(&format!(
            "{} #{}: downtime {}",
            t.strategy,
            t.rep + 1,
            t.downtime_s.map_or("not recovered".into(), |d| format!("{d:.3} s"))
        ))
    };
    let trials = recover::run(&image, &config, &plan, &show)?;
    drop(spinner);
    let summary = recover::summarize(&trials, &strategies);
    let unrecovered = summary.iter().any(|s| s.recovered < s.trials);
    if args.json {
        let value = serde_json::json!({
            "guest": profile.name(),
            "kernel_version": k.release,
            "kernel": k.describe(),
            "accel": decision.accel.name(),
            "accel_reason": decision.reason,
            "qemu_version": recovery_sut::vm::qemu_version().unwrap_or_default(),
            "crash": args.crash,
            "repeat": args.repeat,
            "clients": plan.clients,
            "seed": args.seed,
            "strategies": summary,
            "trials": trials,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "{profile} guest, {} crashes, {} per strategy, accel {}, kernel {}",
            args.crash.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default(),
            args.repeat,
            decision.accel.name(),
            k.release
        );
        println!(
            "{:<16} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>11}",
            "strategy", "recovered", "fallbacks", "median s", "p95 s", "detect s", "restart s", "vs reboot"
        );
        for s in &summary {
            let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
            println!(
                "{:<16} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>11}",
                s.strategy.name(),
                format!("{}/{}", s.recovered, s.trials),
                s.fallbacks,
                f(s.downtime_median_s),
                f(s.downtime_p95_s),
                f(s.detect_median_s),
                f(s.restart_median_s),
                if s.strategy == Strategy::FullReboot {
                    "baseline".to_string()
                } else {
                    s.reduction_vs_full_reboot.map_or("-".into(), |r| format!("{:+.1}%", -r * 100.0))
                }
            );
        }
    }
    Ok(if unrecovered { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn cmd_sut_run(cache: &Cache, args: SutRunArgs) -> Result<ExitCode> {
    use recovery_sut::recovery::Strategy;
    let strategy: Strategy = args.strategy.parse()?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    }
    let spinner = Progress::new();
    let step = |m: &str| spinner.step(m);
    let Prepared { profile, image, decision, memory_mib, .. } = args.vm.prepare(cache, &step)?;
    step(&format!("booting the {profile} guest ({}) and taking its snapshots", decision.accel.name()));
    let config = VmConfig {
        accel: decision.accel,
        memory_mib,
        data_disk: true,
        watchdog_s: args.watchdog,
        ..VmConfig::default()
    };
    let plan = sut::SutPlan {
        strategy,
        detectors: sut::SutPlan::detectors(
            Duration::from_secs_f64(args.heartbeat_timeout.max(0.5)),
            args.watchdog.is_some(),
            !args.no_probe,
        ),
        crash_every: args.crash_every.map(|s| Duration::from_secs_f64(s.max(1.0))),
    };
    let mut spinner = Some(spinner);
    let json = args.json;
    let mut ready = |sut: &mut recovery_sut::Sut| {
        spinner.take();
        if !json {
            println!(
                "{profile} guest up: http://{}/ , recovering with {strategy}; Ctrl-C stops it",
                sut.vm().http_addr()
            );
        }
    };
    let mut log = |entry: &sut::RecoveryLog| {
        if json {
            if let Ok(line) = serde_json::to_string(entry) {
                println!("{line}");
            }
        } else {
            let t = &entry.timing;
            println!(
                "#{} at {:.1} s: {}{}, {} ran{}; service back {:.3} s after detection",
                entry.n,
                entry.at_s,
                t.cause.name(),
                if entry.injected { " (injected sysrq crash)" } else { "" },
                t.strategy,
                t.fallback_reason.as_deref().map_or(String::new(), |r| format!(" instead of {} ({r})", t.requested)),
                t.service_s
            );
        }
    };
    let n = sut::run(&image, &config, &plan, &stop, &mut log, &mut ready)?;
    if !json {
        say(&format!("stopped after {n} recoveries"));
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_doctor(cache: &Cache, json: bool) -> Result<ExitCode> {
    let report = doctor::examine(cache);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("QEMU          {}", report.qemu_version.as_deref().unwrap_or("not installed"));
        println!(
            "accelerators  {}",
            if report.accelerators.is_empty() { "none".into() } else { report.accelerators.join(", ") }
        );
        if let Some(note) = &report.kvm_note {
            println!("              kvm: /dev/kvm unusable: {note}");
        }
        if let Some(probe) = &report.kvm_probe {
            println!("              kvm probe: {}", probe["decision"]["reason"].as_str().unwrap_or("?"));
        }
        println!(
            "cache         {} ({:.1} MB used, {:.1} GB free)",
            report.cache_dir,
            report.cache_bytes as f64 / 1e6,
            report.free_bytes as f64 / 1e9
        );
        match &report.debian_kernel {
            Ok(k) => println!("kernel        {k}"),
            Err(e) => println!("kernel        unknown: {e}"),
        }
        for t in &report.tools {
            match &t.path {
                Some(p) => println!("  ok       {:<20} {p}", t.program),
                None => println!("  MISSING  {:<20} {} (package {})", t.program, t.purpose, t.package),
            }
        }
        if let Some(cmd) = &report.install_command {
            println!("install what is missing with:\n  {cmd}");
        }
    }
    Ok(if report.ready_for_tiny() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn cmd_boot(cache: &Cache, args: BootArgs) -> Result<ExitCode> {
    let spinner = (!args.json).then(Progress::new);
    let step = |m: &str| {
        if let Some(s) = &spinner {
            s.step(m)
        }
    };
    let Prepared { profile, kernel: k, image, decision, memory_mib } = args.vm.prepare(cache, &step)?;
    drop(spinner);
    let config = VmConfig {
        accel: decision.accel,
        memory_mib,
        cpus: args.cpus,
        http_port: args.http_port,
        gdb_port: args.gdb_port,
        data_disk: args.data_disk,
        keep_run_dir: args.keep_run_dir,
        ..VmConfig::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    }
    let vm = Vm::start(&image, &config)?;
    if !args.json {
        println!(
            "{} guest: kernel {}, QEMU {}, accel {} ({})",
            profile,
            k.describe(),
            vm.report(None).qemu_version,
            decision.accel.name(),
            decision.reason
        );
        println!("  {:>8.3} s  qemu started (pid {}, run dir {})", 0.0, vm.pid(), vm.run_dir().display());
    }
    let timeout = Duration::from_secs(args.timeout.unwrap_or(match profile {
        Profile::Tiny => 120,
        Profile::Debian => 300,
    }));
    let deadline = Instant::now() + timeout;
    let mut shown = 0;
    let show_phases = |shown: &mut usize| {
        let phases = vm.agent().phases();
        for p in &phases[*shown..] {
            if !args.json {
                println!("  {:>8.3} s  {}", p.at_s, p.name);
            }
        }
        *shown = phases.len();
    };
    // Phases print as they arrive; the readiness verdict is the HTTP probe.
    let http = loop {
        show_phases(&mut shown);
        if stop.load(Ordering::SeqCst) {
            vm.shutdown(Duration::from_secs(3));
            anyhow::bail!("interrupted before the guest was ready");
        }
        match vm.wait_http(Duration::from_millis(200)) {
            Ok(at) => break at,
            Err(recovery_sut::VmError::HttpTimeout { last, console, .. }) if Instant::now() >= deadline => {
                anyhow::bail!("the {profile} guest gave no correct HTTP answer within {timeout:?} (last attempt: {last}); console log: {}", console.display())
            }
            Err(recovery_sut::VmError::HttpTimeout { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    };
    // The agent reports services-ready right after its own local check,
    // which can reach the host a moment after the first correct answer.
    // (In debian, Apache answers before MariaDB is up.)
    if let Err(e) =
        vm.wait_phase("services-ready", deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(5)))
    {
        tracing::warn!("{e}");
    }
    show_phases(&mut shown);
    let report = vm.report(Some(http));
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["accel_reason"] = decision.reason.clone().into();
        value["http_addr"] = vm.http_addr().to_string().into();
        value["gdb_addr"] = vm.gdb_addr().to_string().into();
        println!("{value}");
    } else {
        println!("  {:>8.3} s  http-ready (correct answer on http://{}/)", http.as_secs_f64(), vm.http_addr());
    }
    if args.until_ready {
        // Disks are throw-away overlays: no need to wait for a clean poweroff.
        vm.shutdown(Duration::ZERO);
        return Ok(ExitCode::SUCCESS);
    }
    if !args.json {
        println!("guest is up: HTTP http://{}/ , gdbstub {}; Ctrl-C stops it", vm.http_addr(), vm.gdb_addr());
    }
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = vm.check_alive() {
            return Err(e.into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let how = vm.shutdown(Duration::from_secs(15));
    say(&format!("guest stopped ({how:?})"));
    Ok(ExitCode::SUCCESS)
}
