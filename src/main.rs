//! `kfi`: the command line of the kernel fault-injection and recovery lab.
//! It parses arguments, calls the `kfi` library (the harness) and prints;
//! the work itself lives there and in `recovery-sut`, `injector`,
//! `workloads` and `analysis`.

use std::process::ExitCode;
use std::time::Instant;

mod cli;

use anyhow::Result;
use clap::{Parser, Subcommand};
use cli::{KernelArgs, Progress};
use kfi::campaign::spec::GuestProfile;
use recovery_sut::{guest, kernel, Cache};

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
    Boot(cli::boot::BootArgs),
    /// Crash the guest repeatedly under client load and measure each recovery strategy's client-seen downtime.
    Recover(cli::recover::RecoverArgs),
    /// Update a serving guest's kernel under client load by reboot, kexec or ShadowReboot and measure each strategy's client-seen downtime.
    Update(cli::update::UpdateArgs),
    /// Run the recovery VMM: keep a guest's service up across kernel failures until Ctrl-C.
    #[command(subcommand)]
    Sut(cli::recover::SutCommand),
    /// List the deterministic faults of a campaign seed (the same list on every machine).
    Faults(cli::faults::FaultsArgs),
    /// Boot a guest, inject one fault under HTTP load, observe it and classify the outcome.
    Inject(cli::inject::InjectArgs),
    /// Profile the kernel under a campaign's workload (once; kept beside its results) and show the hottest functions, subsystems and coverage.
    Profile(cli::profile::ProfileArgs),
    /// Run, resume, inspect or merge campaigns of experiments described in TOML (see experiments/), on one machine or a Slurm cluster.
    #[command(subcommand)]
    Campaign(cli::campaign::CampaignCommand),
    /// Re-run one experiment of a campaign (or, with --sample, N activated faults) and compare with the stored records.
    Replay(cli::campaign::ReplayArgs),
    /// Regenerate tables, figures and report.md of a results directory from its stored data alone.
    Report(cli::campaign::ReportArgs),
    /// Regression mode for a recovery VMM's CI: run a fixed crash set and fail on any unrecovered failure, lost write, strategy that never ran as itself, or strategy slower against the full reboots of its failure class.
    Check(cli::campaign::CheckArgs),
    /// Reproduce the published downtime result: run experiments/downtime.toml (every experiment file with --all) and write results/<campaign>/.
    Reproduce(cli::campaign::ReproduceArgs),
    /// Offer the Apache or RUBiS workload to a booted guest and report throughput, latency and errors.
    #[command(subcommand)]
    Workload(cli::workload::WorkloadCommand),
}

#[derive(Subcommand)]
enum KernelCommand {
    /// Fetch the kernel kernel.lock pins (its default) into the cache, checking each .deb's SHA-256.
    Fetch {
        /// Also fetch the -dbg package (debug vmlinux with DWARF, real System.map; about 850 MB).
        #[arg(long)]
        debug: bool,
        /// Unpack again even if cached (cached .debs are checked, not downloaded again).
        #[arg(long)]
        force: bool,
        /// Put this local .deb (image or -dbg, with a SHA-256 the lock names) into the cache instead.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["debug", "force"])]
        from: Option<std::path::PathBuf>,
    },
    /// Show kernel.lock ($KFI_KERNEL_LOCK names another).
    Lock {
        /// Lock what linux-image-amd64 points at now (downloads both .debs) as the new default.
        #[arg(long)]
        update: bool,
        /// Lock this release too (e.g. 6.1.0-57-amd64, a kernel to update to) at the archive's version, leaving the default; downloads the image .deb, locks the -dbg by the archive's SHA-256.
        #[arg(long, value_name = "RELEASE", conflicts_with = "update")]
        add: Option<String>,
    },
}

#[derive(Subcommand)]
enum GuestCommand {
    /// Build a guest image into the cache (atomically; cached by recipe hash).
    Build {
        /// Guest profile.
        profile: GuestProfile,
        /// Rebuild even if an image with the same recipe exists.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        kernel: KernelArgs,
    },
    /// Check every file of a built image against its manifest (full hash).
    Verify {
        /// Guest profile.
        profile: GuestProfile,
        #[command(flatten)]
        kernel: KernelArgs,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KFI_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        // No colour codes in log files (a Slurm task's output, a redirect).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        Command::Doctor { json } => cli::boot::doctor(&cache, json),
        Command::Kernel(KernelCommand::Fetch { from: Some(file), .. }) => {
            println!("{}", kfi::setup::import_kernel_deb(&cache, &file)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Kernel(KernelCommand::Fetch { debug, force, from: None }) => {
            let progress = Progress::new();
            let k = kfi::setup::fetch_kernel(&cache, debug, force, &|m| progress.step(m))?;
            drop(progress);
            println!("{}", kfi::setup::describe_kernel(&k));
            Ok(ExitCode::SUCCESS)
        }
        Command::Kernel(KernelCommand::Lock { update, add }) => {
            let progress = Progress::new();
            let step = |m: &str| progress.step(m);
            let lock = match (update, add) {
                (true, _) => kfi::setup::update_kernel_lock(&cache, &step)?,
                (false, Some(release)) => kfi::setup::add_to_kernel_lock(&cache, &release, &step)?,
                (false, None) => kfi::setup::kernel_lock()?,
            };
            drop(progress);
            println!("{}", kfi::setup::describe_lock(&lock));
            Ok(ExitCode::SUCCESS)
        }
        Command::Guest(GuestCommand::Build { profile, force, kernel }) => {
            let progress = Progress::new();
            let step = |m: &str| progress.step(m);
            let k = kernel::resolve(&cache, &kernel.choice()?, &step)?;
            let started = Instant::now();
            let image = guest::build(&cache, &kfi::setup::guest_recipe(profile.into()), &k, force, &step)?;
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
            let k = kernel::resolve(&cache, &kernel.choice()?, &cli::say)?;
            let image = guest::open(&cache, &kfi::setup::guest_recipe(profile.into()), &k)?;
            guest::verify_full(&image)?;
            println!("{} guest image {} is intact", image.profile(), image.dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Boot(args) => cli::boot::boot(&cache, args),
        Command::Recover(args) => cli::recover::recover(&cache, args),
        Command::Update(args) => cli::update::update(&cache, args),
        Command::Sut(cli::recover::SutCommand::Run(args)) => cli::recover::sut_run(&cache, args),
        Command::Faults(args) => cli::faults::cmd(&cache, args),
        Command::Inject(args) => cli::inject::cmd(&cache, args),
        Command::Profile(args) => cli::profile::cmd(&cache, args),
        Command::Campaign(cli::campaign::CampaignCommand::Run(args)) => cli::campaign::run(&cache, args),
        Command::Campaign(cli::campaign::CampaignCommand::Status(args)) => cli::campaign::status(args),
        Command::Campaign(cli::campaign::CampaignCommand::Merge { into, from, allow_mixed, scratch }) => {
            cli::campaign::merge(&into, &from, allow_mixed, scratch.as_deref())
        }
        Command::Campaign(cli::campaign::CampaignCommand::Slurm(args)) => cli::campaign::slurm(&cache, args),
        Command::Replay(args) => cli::campaign::replay(&cache, args),
        Command::Report(args) => cli::campaign::report(args),
        Command::Reproduce(args) => cli::campaign::reproduce(&cache, args),
        Command::Check(args) => cli::campaign::check(&cache, args),
        Command::Workload(cmd) => cli::workload::cmd(&cache, cmd),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every flag that takes a value, with the subcommand it belongs to.
    const VALUE_FLAGS: &[(&[&str], &str)] = &[
        (&["recover"], "--warmup"),
        (&["recover"], "--repeat"),
        (&["recover"], "--memory"),
        (&["sut", "run"], "--heartbeat-timeout"),
        (&["sut", "run"], "--crash-every"),
        (&["sut", "run"], "--watchdog"),
        (&["boot"], "--timeout"),
        (&["profile"], "--window"),
        (&["inject", "--seed", "1", "--index", "2"], "--window"),
        (&["inject", "--seed", "1", "--index", "2"], "--warmup"),
        (&["inject", "--seed", "1", "--index", "2"], "--trace-steps"),
        (&["workload", "run", "apache"], "--duration"),
        (&["workload", "run", "apache"], "--think"),
        (&["workload", "run", "apache"], "--timeout"),
        (&["campaign", "run", "x.toml"], "--shard"),
        (&["campaign", "run", "x.toml"], "--jobs"),
        (&["replay", "x.toml"], "--sample"),
        (&["replay", "x.toml", "--sample", "1"], "--seed"),
        (&["check", "x.toml"], "--tolerance"),
        (&["check", "x.toml"], "--slack"),
        (&["kernel", "fetch"], "--from"),
        (&["campaign", "slurm", "x.toml"], "--shards"),
        (&["campaign", "slurm", "x.toml", "--shards", "2"], "--cpus-per-task"),
        (&["campaign", "slurm", "x.toml", "--shards", "2"], "--time"),
        (&["campaign", "slurm", "x.toml", "--shards", "2"], "--partition"),
        (&["campaign", "run", "x.toml"], "--scratch"),
    ];
    /// Of those, the ones that take any text (a path, Slurm's own notation): no number is refused.
    const TEXT_FLAGS: &[&str] = &["--from", "--time", "--partition", "--scratch"];

    proptest! {
        // clap's value parsers (kfi's duration parser among them) return
        // an error for what they refuse; none may panic.
        #[test]
        fn argument_parsing_never_panics(flag in 0..VALUE_FLAGS.len(), value in any::<String>()) {
            let (command, name) = VALUE_FLAGS[flag];
            let argv = std::iter::once("kfi").chain(command.iter().copied()).chain([name, value.as_str()]);
            let _ = Cli::try_parse_from(argv);
        }

        #[test]
        fn special_numbers_are_refused_not_panicked_on(
            flag in 0..VALUE_FLAGS.len(),
            value in prop::sample::select(vec!["inf", "-inf", "NaN", "1e30", "-1", "1e400", "18446744073709551616"]),
        ) {
            let (command, name) = VALUE_FLAGS[flag];
            prop_assume!(!TEXT_FLAGS.contains(&name));
            let argv = std::iter::once("kfi").chain(command.iter().copied()).chain([name, value]);
            prop_assert!(Cli::try_parse_from(argv).is_err(), "{name} {value} was accepted");
        }
    }
}
