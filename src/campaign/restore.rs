//! Restore measurements (`[restore]` in an experiment file): how long a
//! restore takes from "start restoring" to "the service answers
//! correctly", against guest RAM, memory reduction, the restore path and
//! the storage the snapshot is read from.
//!
//! Each (RAM size, reduction) gets its own guest: booted with that much
//! RAM, its page cache filled by reading a disk of random data, reduced
//! or not, then saved twice at the same point (a lazy snapshot: device
//! state plus a sparse RAM file; a stream: device state and RAM in one
//! migration stream). That preparation is the golden run of these
//! experiments; every experiment of that group restores from it, so
//! repetitions vary the restore, not the snapshot. Experiments run one at
//! a time whatever `--jobs` says: a second VM would share the CPUs and
//! the disk the measurement is about.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use analysis::record::{
    ExperimentRecord, HarnessFailure, Injection as RecordInjection, RecordIdentity, RecordedOutcome,
};
use analysis::store::Store;
use anyhow::{bail, Context, Result};
use recovery_sut::snapshot::{self, Snapshot};
use recovery_sut::storage::{self, LoopDevice, ReadThrottle, Storage};
use recovery_sut::vm::save;
use recovery_sut::{memory, private, probe, Vm, VmConfig, VmError};

use super::env::{store_record, Environment, GoldenDir, RunOptions, RunSummary};
use super::spec::restore::{CacheState, Reduction, RestorePath, RestorePoint, RestoreSpec};
use super::spec::{Action, Campaign, ExperimentFile, Planned};

/// One prepared guest: the snapshots every experiment of its (RAM size,
/// reduction) group restores.
struct Prepared {
    key: (u32, Reduction),
    config: VmConfig,
    snapshot: Snapshot,
    stream: PathBuf,
    metrics: BTreeMap<String, f64>,
    _dir: tempfile::TempDir,
}

/// Seconds a prepared guest may take to boot (a 2 GB guest under TCG is
/// slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

fn prepare(env: &Environment<'_>, golden: &Path, spec: &RestoreSpec, point: &RestorePoint) -> Result<Prepared> {
    let dir = private::tempdir_in(&format!("ram-{}-{}-", point.ram_mb, point.reduction), golden)
        .with_context(|| format!("creating a directory in {}", golden.display()))?;
    let fill_mb = (f64::from(point.ram_mb) * spec.page_cache_fill).round() as u64;
    let mut metrics = BTreeMap::new();
    let fill = golden.join(format!("fill-{fill_mb}.img"));
    if fill_mb > 0 {
        let t = Instant::now();
        memory::make_fill_disk(&fill, fill_mb, 1).context("writing the page-cache fill disk")?;
        metrics.insert("fill_disk_s".to_string(), t.elapsed().as_secs_f64());
    }
    let disks = dir.path().join("disks");
    std::fs::create_dir_all(&disks).with_context(|| format!("creating {}", disks.display()))?;
    let config = VmConfig {
        memory_mib: point.ram_mb,
        shared_ram: true,
        disk_dir: Some(disks.clone()),
        fill_disk: (fill_mb > 0).then(|| fill.clone()),
        free_page_reporting: point.reduction == Reduction::On,
        ..env.config.clone()
    };
    let booted = Instant::now();
    let mut vm = Vm::start(env.image, &config).context("booting the guest to snapshot")?;
    vm.wait_http(BOOT_TIMEOUT).context("waiting for the guest's service")?;
    metrics.insert("boot_s".to_string(), booted.elapsed().as_secs_f64());
    let ram_file = vm.run_dir().join("guest.ram");
    let mb = |kb: u64| kb as f64 / 1024.0;
    if fill_mb > 0 {
        let took = memory::fill_page_cache(&vm, Duration::from_secs(1800)).context("filling the page cache")?;
        metrics.insert("fill_s".to_string(), took.as_secs_f64());
    }
    let filled = memory::meminfo(&vm).context("reading the guest's memory")?;
    metrics.insert("guest_cached_mb_filled".to_string(), mb(filled.cached_kb));
    let ram_bytes = |p: &Path| snapshot::allocated_bytes(p).with_context(|| format!("stat {}", p.display()));
    metrics.insert("guest_ram_bytes_filled".to_string(), ram_bytes(&ram_file)? as f64);
    if point.reduction == Reduction::On {
        let t = Instant::now();
        memory::drop_caches(&vm).context("dropping the guest's caches")?;
        memory::settle_reporting(&vm, Duration::from_secs(60)).context("waiting for free-page reporting")?;
        metrics.insert("reduce_s".to_string(), t.elapsed().as_secs_f64());
    }
    let now = memory::meminfo(&vm).context("reading the guest's memory")?;
    metrics.insert("guest_cached_mb_at_snapshot".to_string(), mb(now.cached_kb));
    metrics.insert("guest_free_mb_at_snapshot".to_string(), mb(now.free_kb));
    metrics.insert("guest_ram_bytes_at_snapshot".to_string(), ram_bytes(&ram_file)? as f64);
    let overlays: Vec<PathBuf> =
        ["root.qcow2", "data.qcow2"].iter().map(|n| disks.join(n)).filter(|p| p.exists()).collect();
    let snap = save::take_with_disks(&mut vm, &dir.path().join("lazy"), "services-ready", &overlays)
        .context("taking the lazy snapshot")?;
    metrics.insert("lazy_snapshot_bytes".to_string(), snap.stored_bytes().context("sizing the snapshot")? as f64);
    metrics.insert("snapshot_pause_s".to_string(), snap.meta.pause_s);
    let stream = dir.path().join("stream");
    let t = Instant::now();
    let stream_bytes = save::take_stream(&mut vm, &stream).context("saving the migration stream")?;
    metrics.insert("stream_save_s".to_string(), t.elapsed().as_secs_f64());
    metrics.insert("streamed_snapshot_bytes".to_string(), stream_bytes as f64);
    vm.kill();
    Ok(Prepared { key: (point.ram_mb, point.reduction), config, snapshot: snap, stream, metrics, _dir: dir })
}

/// What one restore measured.
struct Measured {
    restore_s: f64,
    load_s: f64,
    metrics: BTreeMap<String, f64>,
}

fn restore_once(env: &Environment<'_>, prep: &Prepared, point: &RestorePoint) -> Result<Measured> {
    let disks = private::tempdir("kfi-disks-").context("creating a disk directory")?;
    for disk in prep.snapshot.disk_files() {
        let target = disks.path().join(disk.file_name().unwrap_or_default());
        std::fs::copy(&disk, &target).with_context(|| format!("copying {}", disk.display()))?;
    }
    let config = VmConfig { disk_dir: Some(disks.path().to_path_buf()), http_port: None, ..prep.config.clone() };
    let mut metrics = BTreeMap::new();
    let emulated = point.storage.bytes_per_s();
    let cold = point.cache == CacheState::Cold;
    let set_cache = |file: &Path| -> Result<()> {
        // An emulated device's data stays in host memory behind its
        // limit; only the host's own disk is really read cold.
        if cold && point.storage == Storage::Disk {
            storage::drop_cached(file)?;
        } else {
            storage::warm(file)?;
        }
        Ok(())
    };
    let t0;
    let timing;
    let mut throttle_read = None;
    match point.path {
        RestorePath::Lazy => {
            set_cache(&prep.snapshot.state_file())?;
            set_cache(&prep.snapshot.ram_file())?;
            let device = match emulated {
                Some(rate) => {
                    let device = LoopDevice::attach(&prep.snapshot.ram_file())?;
                    let throttle = ReadThrottle::new(&device.dev_id(), rate)?;
                    if cold {
                        storage::drop_cached(device.path())?;
                    } else {
                        storage::warm(device.path())?;
                    }
                    Some((device, throttle))
                }
                None => None,
            };
            let ram = device.as_ref().map_or(prep.snapshot.ram_file(), |(d, _)| d.path().to_path_buf());
            metrics.insert("resident_before".to_string(), storage::resident_fraction(&ram)?);
            t0 = Instant::now();
            let throttle = device.as_ref().map(|(_, t)| t);
            let mut join = |vm: &Vm| match throttle {
                Some(t) => t.add(vm.pid()).map_err(|e| VmError::Restore(e.to_string())),
                None => Ok(()),
            };
            let restored = Vm::restore_lazy(env.image, &config, &prep.snapshot, &ram, &mut join)
                .context("restoring the lazy snapshot")?;
            let load_s = t0.elapsed().as_secs_f64();
            restored.wait_http(Duration::from_secs(300)).context("waiting for the restored service")?;
            let restore_s = t0.elapsed().as_secs_f64();
            if let Some((_, t)) = &device {
                throttle_read = t.read_bytes().ok();
            }
            check_content(&restored)?;
            restored.kill();
            drop(device);
            timing = (restore_s, load_s);
        }
        RestorePath::Streamed => {
            set_cache(&prep.stream)?;
            metrics.insert("resident_before".to_string(), storage::resident_fraction(&prep.stream)?);
            // Warm data is served by the host page cache, whatever the device.
            let rate = emulated.filter(|_| cold);
            t0 = Instant::now();
            let restored = Vm::restore_streamed(env.image, &config, &prep.stream, rate, &mut |_| Ok(()))
                .context("restoring the migration stream")?;
            let load_s = t0.elapsed().as_secs_f64();
            restored.wait_http(Duration::from_secs(300)).context("waiting for the restored service")?;
            let restore_s = t0.elapsed().as_secs_f64();
            check_content(&restored)?;
            restored.kill();
            timing = (restore_s, load_s);
        }
    }
    if let Some(bytes) = throttle_read {
        metrics.insert("device_read_bytes".to_string(), bytes as f64);
    }
    Ok(Measured { restore_s: timing.0, load_s: timing.1, metrics })
}

/// A restored guest must serve the document set byte-exact, not only the
/// index the timing waited for.
fn check_content(vm: &Vm) -> Result<()> {
    for doc in vm.image().docs.docs.iter().step_by(25) {
        probe::check_doc(vm.http_addr(), doc, Duration::from_secs(30))
            .with_context(|| format!("the restored guest served {} wrongly", doc.path))?;
    }
    Ok(())
}

fn record(
    env: &Environment<'_>,
    file: &ExperimentFile,
    planned: &Planned,
    point: &RestorePoint,
    prep: &Prepared,
    m: Measured,
    (started_at, wall): (String, Instant),
) -> ExperimentRecord {
    let params = restore_params(planned, point);
    let mut metrics = prep.metrics.clone();
    metrics.extend(m.metrics);
    let bytes = match point.path {
        RestorePath::Lazy => metrics.get("lazy_snapshot_bytes"),
        RestorePath::Streamed => metrics.get("streamed_snapshot_bytes"),
    };
    if let Some(&b) = bytes {
        metrics.insert("snapshot_bytes".to_string(), b);
    }
    metrics.insert("restore_s".to_string(), m.restore_s);
    metrics.insert("load_s".to_string(), m.load_s);
    ExperimentRecord {
        params,
        metrics,
        wall_s: wall.elapsed().as_secs_f64(),
        window_s: m.restore_s,
        ..ExperimentRecord::unmeasured(identity(env, file, planned, point, RecordedOutcome::Restored, started_at))
    }
}

/// The parameters a restore experiment's record names.
fn restore_params(planned: &Planned, point: &RestorePoint) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    params.insert("ram_mb".to_string(), point.ram_mb.to_string());
    params.insert("reduction".to_string(), point.reduction.to_string());
    params.insert("restore_path".to_string(), point.path.to_string());
    params.insert("storage".to_string(), point.storage.to_string());
    params.insert("cache".to_string(), point.cache.to_string());
    params.insert("rep".to_string(), planned.rep.to_string());
    if let Some(rate) = point.storage.bytes_per_s() {
        params.insert("storage_mb_per_s".to_string(), (rate / 1_000_000).to_string());
    }
    params
}

fn identity(
    env: &Environment<'_>,
    file: &ExperimentFile,
    planned: &Planned,
    point: &RestorePoint,
    outcome: RecordedOutcome,
    started_at: String,
) -> RecordIdentity {
    let mut provenance = env.provenance.clone();
    provenance.ram_mb = point.ram_mb;
    RecordIdentity {
        campaign: file.name.clone(),
        experiment: planned.index,
        key: planned.key(),
        workload: super::recorded::workload(file.workload.kind),
        injection: RecordInjection::None,
        outcome,
        provenance,
        started_at,
    }
}

/// A restore experiment whose every attempt failed through the harness
/// (the guest did not boot, QEMU refused the snapshot): its parameters
/// and error chains, no measurement.
fn harness_error(
    env: &Environment<'_>,
    file: &ExperimentFile,
    planned: &Planned,
    point: &RestorePoint,
    errors: Vec<String>,
    (started_at, wall): (String, Instant),
) -> ExperimentRecord {
    ExperimentRecord {
        params: restore_params(planned, point),
        wall_s: wall.elapsed().as_secs_f64(),
        harness_error: Some(HarnessFailure { attempts: errors.len() as u32, errors }),
        ..ExperimentRecord::unmeasured(identity(env, file, planned, point, RecordedOutcome::HarnessError, started_at))
    }
}

/// Runs one restore experiment on a guest prepared for it alone (`kfi
/// replay`); nothing is stored.
pub fn replay(campaign: &Campaign, env: &Environment<'_>, planned: &Planned) -> Result<ExperimentRecord> {
    let Some(spec) = &campaign.file.restore else { bail!("{} has no [restore] table", campaign.path.display()) };
    let Action::Restore(point) = &planned.action else {
        bail!("experiment {} of a [restore] campaign is not a restore", planned.index)
    };
    let scratch = private::tempdir("kfi-replay-").context("creating a scratch directory")?;
    let wall = Instant::now();
    let started_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let prepared = prepare(env, scratch.path(), spec, point)?;
    let m = restore_once(env, &prepared, point)?;
    Ok(record(env, &campaign.file, planned, point, &prepared, m, (started_at, wall)))
}

/// Runs the pending restore experiments one at a time, preparing a guest
/// for each (RAM size, reduction) group on first need; each record is
/// stored as soon as it exists, so a killed run resumes.
pub fn run(
    campaign: &Campaign,
    env: &Environment<'_>,
    opts: &RunOptions,
    store: &Store,
    todo: Vec<Planned>,
    mut summary: RunSummary,
    started: Instant,
) -> Result<RunSummary> {
    let Some(spec) = &campaign.file.restore else { bail!("{} has no [restore] table", campaign.path.display()) };
    let golden = GoldenDir::create(opts.work_dir())?;
    let bar = crate::progress::progress_bar(todo.len() as u64);
    let mut prep: Option<Prepared> = None;
    let mut overhead = (0.0, 0.0);
    for planned in todo {
        if env.stop.load(Ordering::SeqCst) {
            break;
        }
        let Action::Restore(point) = planned.action else {
            bail!("experiment {} of a [restore] campaign is not a restore", planned.index)
        };
        let wall = Instant::now();
        let started_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        // A failed attempt (preparing the guest or restoring it) is tried
        // again from a freshly prepared guest, up to `--retries` times,
        // then stored as a harness error; after Ctrl-C it stays pending.
        let mut errors = Vec::new();
        let result = loop {
            let attempt = (|| -> Result<ExperimentRecord> {
                if prep.as_ref().is_none_or(|p| p.key != (point.ram_mb, point.reduction)) {
                    // One prepared guest at a time: a 2 GB one is gigabytes.
                    prep = None;
                    let t = Instant::now();
                    bar.set_message(format!("preparing a {} MiB guest, reduction {}", point.ram_mb, point.reduction));
                    prep = Some(prepare(env, &golden.0, spec, &point)?);
                    summary.golden_s += t.elapsed().as_secs_f64();
                }
                let p = prep.as_ref().context("no prepared guest")?;
                #[cfg(feature = "test-knobs")]
                super::experiment::fail_if_asked(planned.index)?;
                let m = restore_once(env, p, &point)?;
                Ok(record(env, &campaign.file, &planned, &point, p, m, (started_at.clone(), wall)))
            })();
            match attempt {
                Ok(r) => break Ok(r),
                Err(e) if env.stop.load(Ordering::SeqCst) => break Err(e),
                Err(e) => {
                    let chain = format!("{e:#}");
                    tracing::warn!(experiment = planned.index, attempt = errors.len() + 1, "harness error: {chain}");
                    errors.push(chain);
                    prep = None;
                    if errors.len() > opts.retries as usize {
                        let timing = (started_at.clone(), wall);
                        break Ok(harness_error(env, &campaign.file, &planned, &point, errors, timing));
                    }
                }
            }
        };
        match result.and_then(|r| store_record(store, &r, opts).map(|()| r)) {
            Ok(r) => {
                summary.ran += 1;
                *summary.outcomes.entry(r.outcome.to_string()).or_default() += 1;
                overhead.0 += (r.wall_s - r.window_s).max(0.0);
                overhead.1 += r.window_s;
                bar.set_message(crate::progress::outcome_line(&summary.outcomes));
                bar.inc(1);
            }
            Err(e) => {
                bar.finish_and_clear();
                return Err(e.context(format!(
                    "experiment {} ({}); the campaign stopped with {} experiments stored, and a rerun of the same \
                     command resumes from there",
                    planned.index,
                    planned.key(),
                    summary.already_done + summary.ran
                )));
            }
        }
    }
    bar.finish_and_clear();
    drop(prep);
    summary.wall_s = started.elapsed().as_secs_f64();
    summary.overhead = (overhead.1 > 0.0).then(|| overhead.0 / overhead.1);
    summary.interrupted = env.stop.load(Ordering::SeqCst);
    summary.harness_errors = super::runner::harness_errors(campaign, store, opts)?;
    Ok(summary)
}
