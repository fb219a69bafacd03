//! Wiring of the injector into campaigns: a campaign's `faults` tables
//! become a [`FaultRunner`] that draws fault `i` from the campaign seed
//! (the same list `kfi faults --seed S` prints) and watches it.

use std::path::Path;
use std::time::Duration;

use analysis::record::{Injection as RecordInjection, Propagation, RecordedScope};
use anyhow::{bail, Context, Result};
use injector::fault::{Generator, Guide, ModelKind, TargetSelection};
use injector::trace::{KernelLayout, TraceConfig, Tracer};
use injector::{FaultSpec, Persistence};
use recovery_sut::{Cache, Sut, VmConfig};

use super::experiment::{FaultObservation, FaultRunner};
use super::recorded;
use super::spec::{Campaign, TargetSource};
use crate::fault_watch::{self, Watch, WatchLimits};
use crate::setup::{self, KernelModel, Prepared};

/// One `[[inject]]` table's faults, drawn once when the runner is made
/// (one generator per table: its candidate lists are what costs), each
/// with the error that drawing it gave, if any.
struct Group {
    /// The campaign-wide index of the table's first fault.
    first: u64,
    faults: Vec<Result<(FaultSpec, Drawn), String>>,
}

/// What a drawn fault's record says of its source: the profile's id and
/// the fault's class weight (both `None` when drawn from the image).
type Drawn = (Option<String>, Option<u64>);

/// Where a profile-guided campaign's profile is, or is made.
pub struct ProfileSite<'a> {
    /// The campaign's guest.
    pub prepared: &'a Prepared,
    /// Its VM settings.
    pub config: &'a VmConfig,
    /// The directory holding (or to hold) `profile.json`.
    pub dir: &'a Path,
}

/// After an oops, how long a campaign keeps watching: for the panic it may
/// cause, and for whether the service keeps answering (the
/// oops-then-continue rate of the reports).
const OOPS_GRACE: Duration = Duration::from_secs(3);

/// Injects a campaign's faults with the injector.
pub struct InjectorRunner {
    model: KernelModel,
    /// By `[[inject]]` index; `None` for crash tables.
    groups: Vec<Option<Group>>,
    hang_timeout: Duration,
    /// The kernel's layout and the tracer's bounds, when the campaign
    /// traces propagation.
    trace: Option<(KernelLayout, TraceConfig)>,
}

/// The fault runner a campaign needs: `None` when it injects no faults.
/// A campaign whose tables draw from the profile needs `profile`: the
/// profile kept there is checked against the campaign, or made.
pub fn runner_for(
    cache: &Cache,
    campaign: &Campaign,
    profile: Option<ProfileSite<'_>>,
    step: &dyn Fn(&str),
) -> Result<Option<Box<dyn FaultRunner>>> {
    if campaign.file.inject.iter().all(|i| i.faults.is_none()) {
        return Ok(None);
    }
    let model = setup::load_kernel_model(cache, &super::ops::kernel_choice(campaign)?, step)?;
    let profile = match (campaign.needs_profile(), profile) {
        (false, _) => None,
        (true, None) => bail!(
            "{}: a table draws from the profile, which this command cannot make: run `kfi profile {}` first",
            campaign.path.display(),
            campaign.path.display()
        ),
        (true, Some(site)) => {
            let request = super::ops::ProfileRequest::default();
            let used = super::ops::obtain_profile(
                campaign,
                site.prepared,
                site.config,
                &model.image,
                site.dir,
                request,
                step,
            )?;
            used.profile.check_kernel(&model.image)?;
            Some(used.profile)
        }
    };
    let mut groups = Vec::new();
    // Fault indices run on across tables, as `spec::Campaign::expand` numbers them.
    let mut next = 0;
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
        let guided = (faults.targets == TargetSource::Profile).then_some(faults.weighting);
        let guide = guided.zip(profile.as_ref()).map(|(weighting, profile)| Guide { profile, weighting });
        // Refuse an empty or unknown selection now, not at experiment i.
        let generator = Generator::new_with(&model.image, &model.code, &selection, &models, guide)
            .with_context(|| format!("{}: inject[{i}].faults", campaign.path.display()))?;
        if let Some(note) = generator.selection_note() {
            tracing::warn!("{}: inject[{i}].faults: {note}", campaign.path.display());
        }
        let drawn = |index: u64| -> Result<(FaultSpec, Drawn), String> {
            let spec = generator
                .generate(campaign.file.seed, index)
                .with_context(|| format!("generating fault {index}"))
                .map_err(|e| format!("{e:#}"))?;
            let drawn = (generator.profile().map(|p| p.id().to_string()), generator.class_weight(&spec));
            Ok((if faults.transient { spec.with_persistence(Persistence::Transient) } else { spec }, drawn))
        };
        groups.push(Some(Group { first: next, faults: (next..next + faults.count).map(drawn).collect() }));
        next += faults.count;
    }
    let trace = match &campaign.file.trace {
        Some(t) => {
            step("reading the kernel's task layout for propagation tracing");
            let layout = KernelLayout::load(&model.vmlinux, &model.image)
                .with_context(|| format!("{}: [trace]", campaign.path.display()))?;
            Some((layout, t.config()))
        }
        None => None,
    };
    Ok(Some(Box::new(InjectorRunner { model, groups, hang_timeout: campaign.file.observe.hang_timeout(), trace })))
}

impl FaultRunner for InjectorRunner {
    fn inject(&self, sut: &mut Sut, group: usize, index: u64, window: Duration) -> Result<FaultObservation> {
        let (spec, drawn) = self.spec(group, index)?;
        let vm = sut.vm();
        let console_offset = std::fs::metadata(vm.console_log()).map(|m| m.len()).unwrap_or(0);
        vm.events(); // stale events are not this fault's
        #[cfg(feature = "test-knobs")]
        crate::fault_watch::knobs::set_fault(index);
        let watch = fault_watch::watch_fault(
            vm,
            &self.model.image,
            &spec,
            &WatchLimits { window, hang_timeout: self.hang_timeout, oops_grace: OOPS_GRACE },
            console_offset,
            self.trace.map(|(layout, config)| Tracer::new(layout, &self.model.image, config)),
        )?;
        let propagation = self.propagation(&spec, &watch);
        // A register, stack or heap flip has no target of its own: it
        // lands in whatever function the CPU was executing.
        let landed =
            watch.injection.applied.as_ref().filter(|_| {
                matches!(spec.model().kind(), ModelKind::RegFlip | ModelKind::StackFlip | ModelKind::HeapFlip)
            });
        let (profile, class_weight) = drawn;
        let surfaced_in = self.surfaced_in(&watch);
        let injection = RecordInjection::Fault {
            model: recorded::model(spec.model().kind()),
            subsystem: spec
                .subsystem_in(&self.model.image)
                .map(str::to_string)
                .or_else(|| landed.and_then(|a| a.subsystem.clone())),
            function: spec
                .function_in(&self.model.image)
                .map(str::to_string)
                .or_else(|| landed.and_then(|a| a.function.clone())),
            description: spec.describe_in(&self.model.image),
            spec: serde_json::to_value(&spec)?,
            activated: watch.injection.activated,
            activation_unknown: watch.injection.activation_unknown.clone(),
            activation_s: watch.injection.activation_after_s,
            propagation,
            profile,
            class_weight,
            surfaced_in,
        };
        let detail = watch.console.oopses.first().map(serde_json::to_value).transpose()?;
        Ok(FaultObservation { injection, detail, watch })
    }

    fn planned(&self, group: usize, index: u64) -> Result<RecordInjection> {
        let (spec, (profile, class_weight)) = self.spec(group, index)?;
        Ok(RecordInjection::Fault {
            model: recorded::model(spec.model().kind()),
            subsystem: spec.subsystem_in(&self.model.image).map(str::to_string),
            function: spec.function_in(&self.model.image).map(str::to_string),
            description: spec.describe_in(&self.model.image),
            spec: serde_json::to_value(&spec)?,
            activated: false,
            activation_unknown: None,
            activation_s: None,
            propagation: None,
            profile,
            class_weight,
            surfaced_in: None,
        })
    }
}

impl InjectorRunner {
    /// Fault `index` of group `group`: a pure function of the seed, the
    /// index, the kernel image and (profile-guided) the profile; with the
    /// profile's id and the fault's class weight.
    fn spec(&self, group: usize, index: u64) -> Result<(FaultSpec, Drawn)> {
        let g = self.groups.get(group).and_then(Option::as_ref).context("a fault experiment of a crash table")?;
        let drawn = index
            .checked_sub(g.first)
            .and_then(|k| g.faults.get(usize::try_from(k).ok()?))
            .with_context(|| format!("fault {index} is not one of table {group}'s"))?;
        drawn.clone().map_err(|e| anyhow::anyhow!(e))
    }

    /// The subsystem of the function the first oops's RIP was in.
    fn surfaced_in(&self, watch: &Watch) -> Option<String> {
        let function = watch.console.oopses.first()?.function.as_deref()?;
        self.model.image.function(function)?.subsystem().map(str::to_string)
    }

    /// The propagation record of a traced fault: the tracer's verdict, a
    /// byte overwritten before it was read (masked), or nothing for a
    /// fault never activated or not traced.
    fn propagation(&self, spec: &FaultSpec, watch: &Watch) -> Option<Box<Propagation>> {
        self.trace?;
        let injection = &watch.injection;
        if !injection.activated && !injection.masked {
            return None;
        }
        let surfaced_in = self.surfaced_in(watch);
        let surfaced_elsewhere = surfaced_in.as_deref().zip(spec.subsystem()).map(|(a, b)| a != b);
        let blank = |scope: RecordedScope, why: &str| Propagation {
            scope,
            why: why.into(),
            activating: None,
            foreign_readers: Vec::new(),
            reads: 0,
            reporting_readers: Vec::new(),
            steps: 0,
            short_s: 0.0,
            long_s: 0.0,
            short_end: "none".into(),
            surfaced_in: surfaced_in.clone(),
            surfaced_elsewhere,
            detail: serde_json::Value::Null,
        };
        match &injection.propagation {
            Some(r) => Some(Box::new(Propagation {
                scope: recorded::scope(r.scope),
                why: r.why.clone(),
                activating: Some(r.activating.to_string()),
                foreign_readers: r.foreign_readers.clone(),
                reads: r.reads,
                reporting_readers: r.reporting_readers.clone(),
                steps: r.steps,
                short_s: r.short_s,
                long_s: r.long_s,
                short_end: serde_json::to_value(&r.short_end)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string).or_else(|| Some(v.to_string())))
                    .unwrap_or_default(),
                surfaced_in,
                surfaced_elsewhere,
                detail: serde_json::to_value(r).unwrap_or(serde_json::Value::Null),
            })),
            None if injection.masked => Some(Box::new(blank(
                RecordedScope::Masked,
                "the corrupted state was overwritten (or the branch never deviated) before use",
            ))),
            // Activated, but the guest went away before the tracer could
            // look (a fault that crashes at once under the debugger).
            None => Some(Box::new(blank(
                RecordedScope::Unknown,
                "activated, but not traced: the guest stopped or went away before the tracer could look",
            ))),
        }
    }
}
