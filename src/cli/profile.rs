//! `kfi profile`: make (once) and show a campaign's golden-run profile.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use kfi::campaign::ops;
use kfi::campaign::spec::GuestProfile;
use kfi::duration;
use recovery_sut::Cache;

use super::say;

/// `kfi profile` arguments.
#[derive(Args)]
pub struct ProfileArgs {
    /// Experiment file whose guest, kernel and workload are profiled.
    #[arg(default_value = "experiments/faults.toml")]
    file: PathBuf,
    /// Profile this guest instead of the file's (the campaign `<name>-<guest>`).
    #[arg(long, value_enum)]
    guest: Option<GuestProfile>,
    /// Where the profile is kept (default: results/<campaign name>).
    #[arg(long)]
    results: Option<PathBuf>,
    /// Seconds of load the counts cover (default: the file's observation window).
    #[arg(long, value_parser = duration::flag("--window"))]
    window: Option<Duration>,
    /// Make it anew even if the results directory holds one.
    #[arg(long)]
    remake: bool,
    /// Count only code, not the .data/.bss accesses (cheaper; data flips then cannot draw from it).
    #[arg(long)]
    no_memory: bool,
    /// Functions to list.
    #[arg(long, default_value_t = 20)]
    top: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// Makes the profile if needed and prints what ran.
pub fn cmd(cache: &Cache, args: ProfileArgs) -> Result<ExitCode> {
    let campaign = ops::load(&args.file, args.guest)?;
    let dir = ops::results_dir(&campaign, args.results.as_deref());
    let step = |m: &str| say(m);
    let request = ops::ProfileRequest { window: args.window, remake: args.remake, memory: !args.no_memory };
    let (used, summary) = ops::profile(cache, &campaign, &dir, request, &step)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(ExitCode::SUCCESS);
    }
    let m = &used.profile.meta;
    println!(
        "profile {} of {} ({}, {} guest, {} s of the workload, {} correct answers under the plugin; {} in {:.0} s) in {}",
        summary.id,
        campaign.file.name,
        m.kernel,
        m.guest,
        m.window_s,
        m.answered,
        if used.made { "made now" } else { "made earlier" },
        m.elapsed_s,
        used.dir.display()
    );
    println!(
        "coverage: {} of {} .text functions executed ({:.1}%), {} distinct instructions, {} instruction executions ({} outside the vmlinux: modules)",
        summary.executed_functions,
        summary.text_functions,
        100.0 * summary.executed_functions as f64 / summary.text_functions.max(1) as f64,
        summary.executed_instructions,
        summary.instruction_executions,
        summary.outside_vmlinux
    );
    if m.memory_ranges.is_empty() {
        println!(".data/.bss: not counted (--no-memory)");
    } else {
        println!(
            ".data/.bss: {} reads and {} writes of {} distinct addresses",
            summary.data_reads, summary.data_writes, summary.data_addresses
        );
    }
    println!("\nhottest functions (instruction executions):");
    for f in summary.functions.iter().take(args.top) {
        println!("  {:>12}  {:<40} {} ({} instructions ran)", f.executions, f.name, f.subsystem, f.instructions);
    }
    println!("\nsubsystems (executed functions, instruction executions):");
    for (name, functions, executions) in &summary.subsystems {
        println!("  {:>12}  {:<12} {} functions", executions, name, functions);
    }
    Ok(ExitCode::SUCCESS)
}
