//! The golden-run profile of a campaign's kernel under its workload: the
//! guest boots under TCG with kfi's profiler plugin, serves, the counts are
//! reset, the campaign's load runs for the window, the counts are dumped.
//!
//! The profile lives beside the campaign's results (`<results>/profile.json`
//! and `profile.counts.xz`) and is made once per (kernel, image, workload):
//! a fault campaign whose `faults` tables draw `targets = "profile"` uses
//! it, and refuses one made on another kernel, image or workload.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use injector::profile::{Counts, Profile, ProfileMeta, FORMAT};
use injector::KernelImage;
use recovery_sut::{Accel, Plugin, Vm};
use workloads::DocList;

use super::experiment;
use super::spec::{Campaign, WorkloadKind};

/// The profiler plugin's file name (a cdylib of the `kfi-profiler` crate).
pub const PLUGIN_FILE: &str = "libkfi_profiler.so";

/// Where the profiler plugin is: `$KFI_PROFILER`, else beside the running
/// executable (or one directory up, for test binaries in `deps/`).
pub fn plugin_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KFI_PROFILER") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!(
                "KFI_PROFILER names {}, which does not exist: build it with `cargo build -p kfi-profiler`",
                p.display()
            );
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating the kfi executable")?;
    let candidates: Vec<PathBuf> = exe.ancestors().skip(1).take(2).map(|d| d.join(PLUGIN_FILE)).collect();
    candidates.iter().find(|p| p.is_file()).cloned().with_context(|| {
        format!(
            "the profiler plugin {PLUGIN_FILE} is not beside {} : build it with `cargo build -p kfi-profiler` (scripts/kfi does), or name it with KFI_PROFILER",
            exe.display()
        )
    })
}

/// Whether `meta` describes a profile of this campaign's kernel, image
/// and workload; `Err` names the first difference.
pub fn check_matches(meta: &ProfileMeta, expected: &ProfileMeta) -> Result<()> {
    let differences = [
        ("kernel build", &meta.kernel_build_id, &expected.kernel_build_id),
        ("guest", &meta.guest, &expected.guest),
        ("image recipe", &meta.image_recipe, &expected.image_recipe),
    ];
    for (what, found, wanted) in differences {
        if found != wanted {
            bail!("it was made on {what} {found}, this campaign runs on {what} {wanted}");
        }
    }
    if meta.workload != expected.workload {
        bail!("it was made under the workload {}, this campaign's is {}", meta.workload, expected.workload);
    }
    Ok(())
}

/// What a campaign's profile must have been measured on (the counts'
/// hash, window, QEMU, commit and time left blank).
pub fn expected_meta(campaign: &Campaign, image: &KernelImage, prepared: &crate::setup::Prepared) -> ProfileMeta {
    ProfileMeta {
        format: FORMAT,
        kernel_build_id: image.build_id().iter().map(|b| format!("{b:02x}")).collect(),
        kernel: prepared.kernel.identity(),
        guest: prepared.profile.to_string(),
        image_recipe: prepared.image.meta.recipe.clone(),
        workload: serde_json::to_value(&campaign.file.workload).expect("the workload serializes"),
        window_s: 0.0,
        qemu_version: String::new(),
        memory_ranges: Vec::new(),
        counts_sha256: String::new(),
        kfi_commit: String::new(),
        elapsed_s: 0.0,
        answered: 0,
    }
}

/// The ranges whose accesses the plugin keeps: the kernel's `.data` and
/// `.bss` (where data flips land).
fn data_ranges(image: &KernelImage) -> Vec<(u64, u64)> {
    [".data", ".bss"].iter().filter_map(|n| image.section(n)).map(|s| (s.address, s.end())).collect()
}

/// Talks to the plugin's control socket.
struct Control {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Control {
    fn connect(path: &Path) -> Result<Control> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(e).with_context(|| format!("connecting to the profiler at {}", path.display())),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Control { reader: BufReader::new(stream.try_clone()?), writer: stream })
    }

    fn command(&mut self, command: &str) -> Result<()> {
        writeln!(self.writer, "{command}").with_context(|| format!("sending `{command}` to the profiler"))?;
        let mut answer = String::new();
        self.reader.read_line(&mut answer).with_context(|| format!("the profiler's answer to `{command}`"))?;
        match answer.trim() {
            "ok" => Ok(()),
            other => bail!("the profiler answered `{other}` to `{command}`"),
        }
    }
}

/// Makes the campaign's profile over `window` of its load and saves it
/// into `dir`; `memory`: also count `.data`/`.bss` accesses (what data
/// flips are drawn from; the costly part).
#[allow(clippy::too_many_arguments)]
pub fn make(
    campaign: &Campaign,
    prepared: &crate::setup::Prepared,
    config: &recovery_sut::VmConfig,
    image: &KernelImage,
    window: Duration,
    memory: bool,
    dir: &Path,
    step: &dyn Fn(&str),
) -> Result<Profile> {
    let started = Instant::now();
    let plugin = plugin_path()?;
    let work = tempfile::Builder::new().prefix("kfi-profile-").tempdir().context("creating a scratch directory")?;
    let ctl = work.path().join("profiler.sock");
    let ranges = if memory { data_ranges(image) } else { Vec::new() };
    let mut args = vec![("ctl".to_string(), ctl.display().to_string())];
    for (start, end) in &ranges {
        args.push(("mem".into(), format!("{start:x}-{end:x}")));
    }
    // Plugins run only under TCG; the profile is what the kernel executes,
    // whichever accelerator the campaign then uses.
    let config =
        recovery_sut::VmConfig { accel: Accel::Tcg, plugin: Some(Plugin { path: plugin, args }), ..config.clone() };
    step(&format!("profiling: booting the {} guest with the profiler", prepared.profile));
    let vm = Vm::start(&prepared.image, &config).context("booting the guest to profile")?;
    let stop = AtomicBool::new(false);
    crate::setup::wait_ready(&vm, Duration::from_secs(300), &stop, &mut |_| {})?;
    let w = &campaign.file.workload;
    if w.kind == WorkloadKind::Rubis {
        vm.wait_phase("services-ready", Duration::from_secs(300))?;
    }
    let docs = DocList::load(&prepared.image.dir.join("docs.json"))?;
    let mut control = Control::connect(&ctl)?;
    // The warm-up is not part of the window, as in an experiment.
    let origin = Instant::now();
    let warmup = experiment::client_load(w, &docs, w.warmup(), w.timeout(), campaign.file.seed);
    crate::load::run(vm.http_addr(), &warmup, origin, Arc::new(AtomicBool::new(false)))?;
    control.command("reset")?;
    step(&format!("profiling: {} s of the campaign's load", window.as_secs_f64()));
    let load = experiment::client_load(w, &docs, window, w.timeout(), campaign.file.seed);
    let run = crate::load::run(vm.http_addr(), &load, origin, Arc::new(AtomicBool::new(false)))?;
    let dump = work.path().join("counts.txt");
    control.command(&format!("dump {}", dump.display()))?;
    let correct = run.records.iter().filter(|r| r.is_correct()).count();
    if correct == 0 {
        bail!("no request was answered correctly while profiling: the profile would not show the workload (console log: {})", vm.console_log().display());
    }
    let qemu_version = vm.qmp_version();
    vm.shutdown(Duration::from_secs(5));
    let text = std::fs::read_to_string(&dump).with_context(|| format!("reading {}", dump.display()))?;
    let counts = Counts::parse(&text)?;
    let meta = ProfileMeta {
        window_s: window.as_secs_f64(),
        qemu_version,
        memory_ranges: ranges,
        answered: correct as u64,
        kfi_commit: match crate::provenance::git_state(Path::new(env!("CARGO_MANIFEST_DIR"))) {
            Some((commit, dirty)) => format!("{commit}{}", if dirty { " (dirty)" } else { "" }),
            None => "unknown".into(),
        },
        elapsed_s: started.elapsed().as_secs_f64(),
        ..expected_meta(campaign, image, prepared)
    };
    let profile = Profile::new(meta, counts);
    profile.save(dir)?;
    tracing::info!(
        "profile {} of {}: {} requests answered correctly in the window",
        profile.id(),
        campaign.file.name,
        correct
    );
    Ok(profile)
}
