//! `kfi faults`: the deterministic fault list of a campaign seed; and the
//! fault-selection flags `kfi inject` shares.

use std::process::ExitCode;

use anyhow::{Context, Result};
use std::path::PathBuf;

use injector::fault::{FaultSpec, Generator, Guide, ModelKind, TargetSelection, Weighting};
use injector::profile::Profile;
use kfi::setup::load_kernel_model;
use recovery_sut::Cache;
use serde::Serialize;

use super::GuestArgs;

/// What to draw faults from.
#[derive(clap::Args, Clone)]
pub struct SelectionArgs {
    /// Fault models to draw from, comma-separated (default: all).
    #[arg(long = "model", value_delimiter = ',')]
    pub models: Vec<ModelKind>,
    /// Only code in these subsystems (top source directory: net, mm, fs, kernel, drivers...).
    #[arg(long = "subsystem", value_delimiter = ',')]
    pub subsystems: Vec<String>,
    /// Only these functions (comma-separated exact names).
    #[arg(long = "function", value_delimiter = ',')]
    pub functions: Vec<String>,
    /// Only functions whose name matches this regex.
    #[arg(long)]
    pub regex: Option<String>,
    /// Draw from the golden-run profile in this directory (its profile.json; see `kfi profile`): executed
    /// instructions and the data they read, instead of the whole image.
    #[arg(long, value_name = "DIR")]
    pub profile: Option<PathBuf>,
    /// With --profile: weigh by executions, or every executed instruction alike.
    #[arg(long, value_enum, default_value = "executions", requires = "profile")]
    pub weighting: WeightingArg,
}

/// `--weighting`.
#[derive(clap::ValueEnum, Clone, Copy)]
pub enum WeightingArg {
    /// Hot code drawn more often.
    Executions,
    /// Every executed instruction alike.
    Uniform,
}

impl SelectionArgs {
    /// The profile named by `--profile`, checked against `image`.
    pub fn load_profile(&self, image: &injector::KernelImage) -> Result<Option<Profile>> {
        let Some(dir) = &self.profile else { return Ok(None) };
        let profile = Profile::load(dir).with_context(|| format!("--profile {}", dir.display()))?;
        profile.check_kernel(image)?;
        Ok(Some(profile))
    }

    /// How to draw from `profile`.
    pub fn guide<'p>(&self, profile: Option<&'p Profile>) -> Option<Guide<'p>> {
        let weighting = match self.weighting {
            WeightingArg::Executions => Weighting::Executions,
            WeightingArg::Uniform => Weighting::Uniform,
        };
        profile.map(|profile| Guide { profile, weighting })
    }
}

impl SelectionArgs {
    /// The selection and the models.
    pub fn resolve(&self) -> (TargetSelection, Vec<ModelKind>) {
        let selection = TargetSelection {
            subsystems: self.subsystems.clone(),
            functions: self.functions.clone(),
            regex: self.regex.clone(),
        };
        let models = if self.models.is_empty() { ModelKind::ALL.to_vec() } else { self.models.clone() };
        (selection, models)
    }
}

/// `kfi faults` arguments.
#[derive(clap::Args)]
pub struct FaultsArgs {
    #[command(flatten)]
    vm: GuestArgs,
    /// Campaign seed.
    #[arg(long)]
    seed: u64,
    /// Number of faults (indices 0..count).
    #[arg(long, default_value_t = 20)]
    count: u64,
    /// First index.
    #[arg(long, default_value_t = 0)]
    start: u64,
    #[command(flatten)]
    select: SelectionArgs,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// One listed fault.
#[derive(Serialize)]
struct Listed<'a> {
    index: u64,
    model: ModelKind,
    subsystem: Option<&'a str>,
    function: Option<&'a str>,
    description: String,
    spec: &'a FaultSpec,
}

/// Prints the fault list.
pub fn cmd(cache: &Cache, args: FaultsArgs) -> Result<ExitCode> {
    let model = load_kernel_model(cache, &args.vm.kernel.choice()?, &|m| tracing::info!("{m}"))?;
    let (selection, models) = args.select.resolve();
    let profile = args.select.load_profile(&model.image)?;
    let generator =
        Generator::new_with(&model.image, &model.code, &selection, &models, args.select.guide(profile.as_ref()))?;
    if let Some(note) = generator.selection_note() {
        eprintln!("kfi: note: {note}");
    }
    let specs = (args.start..args.start + args.count)
        .map(|i| generator.generate(args.seed, i).map(|s| (i, s)).with_context(|| format!("fault {i}")))
        .collect::<Result<Vec<_>>>()?;
    if args.json {
        let listed: Vec<Listed> = specs
            .iter()
            .map(|(i, s)| Listed {
                index: *i,
                model: s.model().kind(),
                subsystem: s.subsystem_in(&model.image),
                function: s.function_in(&model.image),
                description: s.describe_in(&model.image),
                spec: s,
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&listed)?);
    } else {
        println!(
            "seed {}, kernel {}, {} functions selected, models {}{}",
            args.seed,
            model.kernel.release,
            generator.functions().len(),
            models.iter().map(|m| m.name()).collect::<Vec<_>>().join(","),
            profile.as_ref().map(|p| format!(", drawn from profile {}", p.id())).unwrap_or_default()
        );
        println!("{:>6}  {:<10}  {:<8}  description", "index", "model", "subsys");
        for (i, s) in &specs {
            println!(
                "{:>6}  {:<10}  {:<8}  {}",
                i,
                s.model().kind().to_string(),
                s.subsystem_in(&model.image).unwrap_or("-"),
                s.describe_in(&model.image)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
