//! Wiring of the injector into campaigns: a campaign's `faults` tables
//! become a [`FaultRunner`] that draws fault `i` from the campaign seed
//! (the same list `kfi faults --seed S` prints) and watches it.

use std::time::Duration;

use analysis::record::Injection as RecordInjection;
use anyhow::{Context, Result};
use injector::fault::{Generator, ModelKind, TargetSelection};
use injector::Persistence;
use recovery_sut::{Cache, KernelChoice, Sut};

use super::experiment::{FaultObservation, FaultRunner};
use super::spec::Campaign;
use crate::faults::KernelModel;
use crate::Prepared;

/// One `[[inject]]` table's fault population.
struct Group {
    selection: TargetSelection,
    models: Vec<ModelKind>,
    transient: bool,
}

/// Injects a campaign's faults with the injector.
pub struct InjectorRunner {
    model: KernelModel,
    /// By `[[inject]]` index; `None` for crash tables.
    groups: Vec<Option<Group>>,
    seed: u64,
    hang_timeout: Duration,
}

/// The fault runner a campaign needs: `None` when it injects no faults.
pub fn runner_for(
    cache: &Cache,
    campaign: &Campaign,
    _prepared: &Prepared,
    step: &dyn Fn(&str),
) -> Result<Option<Box<dyn FaultRunner>>> {
    if campaign.file.inject.iter().all(|i| i.faults.is_none()) {
        return Ok(None);
    }
    let model = crate::faults::load_kernel_choice(cache, &KernelChoice::Debian, step)?;
    let mut groups = Vec::new();
    for (i, inject) in campaign.file.inject.iter().enumerate() {
        let Some(faults) = &inject.faults else {
            groups.push(None);
            continue;
        };
        let models = if faults.models.is_empty() {
            ModelKind::ALL.to_vec()
        } else {
            faults
                .models
                .iter()
                .map(|m| m.parse::<ModelKind>().map_err(|e| anyhow::anyhow!("{e}")))
                .collect::<Result<Vec<_>>>()
                .with_context(|| format!("{}: inject[{i}].faults.models", campaign.path.display()))?
        };
        let selection =
            TargetSelection { subsystems: faults.subsystems.clone(), functions: faults.functions.clone(), regex: None };
        // Refuse an empty or unknown selection now, not at experiment i.
        Generator::new(&model.image, &model.code, &selection, &models)
            .with_context(|| format!("{}: inject[{i}].faults selects no target", campaign.path.display()))?;
        groups.push(Some(Group { selection, models, transient: faults.transient }));
    }
    Ok(Some(Box::new(InjectorRunner {
        model,
        groups,
        seed: campaign.file.seed,
        hang_timeout: Duration::from_secs_f64(campaign.file.observe.hang_timeout_s),
    })))
}

impl FaultRunner for InjectorRunner {
    fn inject(&self, sut: &mut Sut, group: usize, index: u64, window: Duration) -> Result<FaultObservation> {
        let g = self.groups.get(group).and_then(Option::as_ref).context("a fault experiment of a crash table")?;
        let generator = Generator::new(&self.model.image, &self.model.code, &g.selection, &g.models)?;
        let spec = generator.generate(self.seed, index).with_context(|| format!("generating fault {index}"))?;
        let spec = if g.transient { spec.with_persistence(Persistence::Transient) } else { spec };
        let vm = sut.vm();
        let console_offset = std::fs::metadata(vm.console_log()).map(|m| m.len()).unwrap_or(0);
        vm.events(); // stale events are not this fault's
        let watch = crate::inject::watch_fault(
            vm,
            &self.model.image,
            &spec,
            window,
            self.hang_timeout,
            Duration::from_secs(1),
            console_offset,
        )?;
        let injection = RecordInjection::Fault {
            model: spec.model().kind().to_string(),
            subsystem: spec.subsystem().map(str::to_string),
            function: spec.function().map(str::to_string),
            description: spec.describe(),
            spec: serde_json::to_value(&spec)?,
            activated: watch.injection.activated,
            activation_s: watch.injection.activation_after_s,
        };
        let detail = watch.console.oopses.first().map(serde_json::to_value).transpose()?;
        Ok(FaultObservation { injection, detail, watch })
    }
}
