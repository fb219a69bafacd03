//! `kfi boot` and `kfi doctor`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use kfi::duration;
use kfi::setup::Prepared;
use recovery_sut::{doctor, Cache, Profile, Vm, VmConfig};

use super::{say, spinner, stepper, GuestArgs};

/// `kfi boot`.
#[derive(Args)]
pub struct BootArgs {
    #[command(flatten)]
    pub vm: GuestArgs,
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
    /// Attach the data disk to the tiny guest (debian always has it).
    #[arg(long)]
    data_disk: bool,
    /// How long to wait for the guest to serve HTTP: seconds or a span (default 120 s for tiny, 300 s for debian).
    #[arg(long, value_parser = duration::flag("--timeout"))]
    timeout: Option<Duration>,
    /// Keep the run directory (console log, QEMU output) and print its path.
    #[arg(long)]
    keep_run_dir: bool,
}

/// Prints what `kfi doctor` finds.
pub fn doctor(cache: &Cache, json: bool) -> Result<ExitCode> {
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
        match kfi::setup::locked_kernel(None) {
            Ok(k) => println!("kernel        {} (pinned in {})", k.release(), kfi::setup::kernel_lock_path().display()),
            Err(e) => println!("kernel        {e:#}"),
        }
        match &report.debian_kernel {
            Ok(k) => println!("              Debian's current: {k} (`kfi kernel lock --update` pins it)"),
            Err(e) => println!("              Debian's current: unknown: {e}"),
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

/// Boots a guest and shows its phases.
pub fn boot(cache: &Cache, args: BootArgs) -> Result<ExitCode> {
    let spinner = spinner(!args.json);
    let step = stepper(&spinner);
    let Prepared { profile, kernel: k, image, decision, memory_mib } = args.vm.prepare(cache, &step)?;
    if let Some(s) = &spinner {
        s.finish();
    }
    let config = VmConfig {
        accel: decision.accel,
        memory_mib,
        cpus: args.cpus,
        http_port: args.http_port,
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
    let timeout = args.timeout.unwrap_or(Duration::from_secs(match profile {
        Profile::Tiny => 120,
        Profile::Debian => 300,
    }));
    let json = args.json;
    let http = kfi::setup::wait_ready(&vm, timeout, &stop, &mut |p| {
        if !json {
            println!("  {:>8.3} s  {}", p.at_s, p.name);
        }
    });
    let http = match http {
        Ok(at) => at,
        Err(e) => {
            vm.shutdown(Duration::from_secs(3));
            return Err(e);
        }
    };
    let report = vm.report(Some(http));
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["accel_reason"] = decision.reason.clone().into();
        value["http_addr"] = vm.http_addr().to_string().into();
        value["gdb_socket"] = vm.gdb_socket().display().to_string().into();
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
        let (http, gdb) = (vm.http_addr(), vm.gdb_socket());
        let gdb = gdb.display();
        println!("guest is up: HTTP http://{http}/ , gdbstub on the unix socket {gdb} (gdb: target remote {gdb}); Ctrl-C stops it");
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
