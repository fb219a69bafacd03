//! The SUT's recovery snapshots and the rules that say whether one may be
//! restored: the phase snapshot (at the profile's phase boundary: what
//! does not depend on the data disk runs, the disk is not mounted) and
//! the service snapshot (services running), the safety monitor's verdict
//! on each (watched files as the agents reported them, against each
//! snapshot's manifest and the time it was taken), and the data disk's
//! write count (a service snapshot is stale once the disk was written
//! after it). It also lets the data disk settle before a service snapshot.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::error::RecoveryError;
use crate::agent::{AgentChannel, FileChange, FileState};
use crate::snapshot::Snapshot;
use crate::vm::{save, Vm};

/// How long the agent gets to report the watched files before a snapshot
/// is taken without a complete manifest.
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the data disk must go without a write before a service
/// snapshot is taken.
const DATA_QUIET: Duration = Duration::from_secs(2);

/// A snapshot asked for explicitly waits this long for the data disk.
pub(super) const QUIESCE_TIMEOUT: Duration = Duration::from_secs(60);

/// Which recovery snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Which {
    Service,
    Phase,
}

impl Which {
    /// Its name in messages, and its directory in the snapshot set.
    pub(super) fn name(self) -> &'static str {
        match self {
            Which::Service => "service",
            Which::Phase => "phase",
        }
    }
}

/// A SUT's recovery snapshots with what decides their validity; it
/// outlives every VM of the SUT.
pub(super) struct SnapshotSet {
    /// Where new snapshots are taken (golden ones stay where they are).
    dir: tempfile::TempDir,
    service: Option<Snapshot>,
    phase: Option<Snapshot>,
    /// Data-disk writes the current QEMU had counted when the disk last
    /// matched the service snapshot's view of it.
    data_baseline: Option<u64>,
    /// The data disk changed since the service snapshot: restoring it
    /// would bring back a page cache that disagrees with the disk.
    data_dirty: bool,
    /// The watched files as the agents last reported them, across VMs.
    files: BTreeMap<String, FileState>,
    /// Every watched-file change reported since the older snapshot.
    changes: Vec<FileChange>,
    /// When the service and phase snapshots were taken (or, for golden
    /// ones, adopted): a change reported later invalidates them.
    service_taken: Instant,
    phase_taken: Instant,
    /// The files the safety monitor watches on this guest: a snapshot
    /// whose manifest lacks one cannot be vouched for.
    watched: &'static [&'static str],
}

impl SnapshotSet {
    /// Takes the phase snapshot of a booting `vm` (held at its profile's
    /// phase boundary) into `dir`; no service snapshot yet.
    pub(super) fn at_boot(dir: tempfile::TempDir, vm: &mut Vm) -> Result<SnapshotSet, RecoveryError> {
        // The agent reports the watched files just before `held`.
        let boundary = vm.image().profile().phase_boundary().name;
        let phase = Some(save::take(vm, &dir.path().join(Which::Phase.name()), boundary)?);
        let taken = Instant::now();
        Ok(SnapshotSet {
            watched: vm.image().profile().watched_files(),
            dir,
            service: None,
            phase,
            data_baseline: None,
            data_dirty: false,
            files: BTreeMap::new(),
            changes: Vec::new(),
            service_taken: taken,
            phase_taken: taken,
        })
    }

    /// Adopts a golden service snapshot (and phase snapshot, if any) as
    /// taken now; `data_baseline` is the restored QEMU's data-disk write
    /// count; `watched`, the files the safety monitor watches on this
    /// guest. New snapshots go to `dir`.
    pub(super) fn adopted(
        dir: tempfile::TempDir,
        service: Snapshot,
        phase: Option<Snapshot>,
        data_baseline: Option<u64>,
        watched: &'static [&'static str],
    ) -> SnapshotSet {
        let now = Instant::now();
        SnapshotSet {
            watched,
            dir,
            service: Some(service),
            phase,
            data_baseline,
            data_dirty: false,
            files: BTreeMap::new(),
            changes: Vec::new(),
            service_taken: now,
            phase_taken: now,
        }
    }

    /// The snapshot, if there is one.
    pub(super) fn get(&self, which: Which) -> Option<&Snapshot> {
        match which {
            Which::Service => self.service.as_ref(),
            Which::Phase => self.phase.as_ref(),
        }
    }

    /// Whether the data disk was written since the service snapshot.
    pub(super) fn data_dirty(&self) -> bool {
        self.data_dirty
    }

    /// Takes the service snapshot of `vm` now (services must be running),
    /// once the agent has reported the `watched` files and, given `settle`,
    /// the data disk has settled or that long has passed (`None`: the
    /// caller let it settle).
    pub(super) fn take_service(
        &mut self,
        vm: &mut Vm,
        watched: &[&str],
        settle: Option<Duration>,
    ) -> Result<(), RecoveryError> {
        let dir = self.dir.path().join(Which::Service.name());
        wait_manifest(vm, watched);
        if let Some(timeout) = settle {
            quiesce_data_disk(vm, timeout);
        }
        let snap = save::take(vm, &dir, "services-ready")?;
        self.service_taken = Instant::now();
        self.absorb(vm.agent());
        self.data_baseline = data_writes(vm);
        self.data_dirty = false;
        self.service = Some(snap);
        Ok(())
    }

    /// Whether the service snapshot exists and may be restored now: the
    /// data disk unchanged since it and the safety monitor content.
    pub(super) fn service_usable(&self) -> bool {
        self.service.is_some() && !self.data_dirty && self.unsafe_reason(Which::Service).is_none()
    }

    /// Takes the phase snapshot again if the safety monitor has
    /// invalidated it and `vm` (held at the phase boundary) can be
    /// snapshotted.
    pub(super) fn retake_phase_if_unsafe(&mut self, vm: &mut Vm) -> Result<(), RecoveryError> {
        if let Some(reason) = self.unsafe_reason(Which::Phase) {
            if vm.snapshottable() {
                tracing::info!("taking the phase snapshot again: {reason}");
                let dir = self.dir.path().join(Which::Phase.name());
                self.phase = Some(save::take(vm, &dir, vm.image().profile().phase_boundary().name)?);
                self.phase_taken = Instant::now();
            }
        }
        Ok(())
    }

    /// The watched files the agents reported changed after `since`.
    pub(super) fn changed_since(&self, since: Instant) -> Vec<String> {
        let mut paths: Vec<String> = self.changes.iter().filter(|c| c.at > since).map(|c| c.path.clone()).collect();
        paths.dedup();
        paths
    }

    /// Where a snapshot named `name` goes in the set's directory.
    pub(super) fn path_of(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// After a kernel update that serves: `phase` (taken on the new
    /// kernel, `None` where it could not be) is the phase snapshot, the old
    /// kernel's service snapshot is gone (the caller takes a new one), and
    /// the data disk counts as remounted. Returns the old kernel's
    /// snapshots, for the caller to delete once nothing maps them.
    pub(super) fn updated(&mut self, phase: Option<Snapshot>, vm: &mut Vm) -> Vec<Snapshot> {
        let old: Vec<Snapshot> = [self.service.take(), self.phase.take()].into_iter().flatten().collect();
        self.phase = phase;
        self.phase_taken = Instant::now();
        self.service_taken = self.phase_taken;
        self.data_baseline = None;
        self.data_remounted(vm);
        self.absorb(vm.agent());
        old
    }

    /// Takes the watched-file reports of a VM's agent into the set's own
    /// view, which outlives the VM.
    pub(super) fn absorb(&mut self, agent: &AgentChannel) {
        let changes = agent.take_changes();
        self.files.extend(agent.watched_files());
        self.changes.extend(changes);
        // Changes older than both snapshots can no longer invalidate one.
        let oldest = self.service_taken.min(self.phase_taken);
        self.changes.retain(|c| c.at > oldest);
    }

    /// Notes writes `vm`'s QEMU (a crashed one still counts them) made to
    /// the data disk since the service snapshot's view of it.
    pub(super) fn note_data_writes(&mut self, vm: &mut Vm) {
        if let (Some(baseline), Some(now)) = (self.data_baseline, data_writes(vm)) {
            if now > baseline {
                self.data_dirty = true;
            }
        }
    }

    /// After a service restore: the restored guest's view of the disk is
    /// the snapshot's, and the new QEMU counts writes from zero.
    pub(super) fn data_restored(&mut self, vm: &mut Vm) {
        self.data_baseline = data_writes(vm);
    }

    /// After a boot or phase restore: the data disk, if any, was mounted
    /// anew (journal replay included).
    pub(super) fn data_remounted(&mut self, vm: &mut Vm) {
        if data_writes(vm).is_some() {
            self.data_dirty = true;
        }
    }

    /// Why the safety monitor forbids restoring a snapshot, if it does:
    /// its manifest lacks a watched file (the agent never reported it
    /// before the snapshot, so nothing can be checked: the monitor fails
    /// closed), a watched file differs from the manifest, or changed after
    /// the snapshot was taken.
    pub(super) fn unsafe_reason(&self, which: Which) -> Option<String> {
        let (snap, taken) = match which {
            Which::Service => (self.service.as_ref()?, self.service_taken),
            Which::Phase => (self.phase.as_ref()?, self.phase_taken),
        };
        let missing: Vec<&str> =
            self.watched.iter().copied().filter(|path| !snap.meta.watched.contains_key(*path)).collect();
        if !missing.is_empty() {
            return Some(format!(
                "the {} snapshot has no safety-monitor manifest of {} (the agent had not reported them when it was \
                 taken), so the monitor cannot vouch for it",
                which.name(),
                missing.join(", ")
            ));
        }
        let mut changed: BTreeMap<&str, String> = BTreeMap::new();
        for (path, was) in &snap.meta.watched {
            match self.files.get(path) {
                Some(now) if now != was => {
                    changed.insert(path, format!("{path} (was {was}, now {now})"));
                }
                _ => {}
            }
        }
        for c in self.changes.iter().filter(|c| c.at > taken) {
            changed.entry(&c.path).or_insert_with(|| format!("{} (changed to {} after the snapshot)", c.path, c.state));
        }
        (!changed.is_empty()).then(|| {
            format!(
                "the safety monitor saw watched files change since the {} snapshot: {}; restoring it would bring back a system that disagrees with them",
                which.name(),
                changed.into_values().collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// Write requests QEMU has counted on the data disk, if there is one.
pub(super) fn data_writes(vm: &mut Vm) -> Option<u64> {
    let stats = vm.qmp().execute("query-blockstats", None).ok()?;
    stats.as_array()?.iter().find(|d| d["device"] == "data")?["stats"]["wr_operations"].as_u64()
}

/// Waits until the agent has reported every `watched` file, so that a
/// snapshot records the full manifest.
pub(super) fn wait_manifest(vm: &mut Vm, watched: &[&str]) {
    // The heartbeat loop's manifest (a boot's hold reported one
    // earlier): the service then runs with the agent in its loop, and
    // a guest restored from the snapshot obeys commands at once.
    if vm.agent().wait_heartbeat(0, MANIFEST_TIMEOUT).is_none() {
        tracing::warn!("no agent heartbeat within {MANIFEST_TIMEOUT:?} before the snapshot");
    }
    if !vm.agent().wait_watched(watched, MANIFEST_TIMEOUT) {
        tracing::warn!("the agent reported no manifest of the watched files within {MANIFEST_TIMEOUT:?}; the snapshot will not be restored (the safety monitor cannot vouch for it)");
    }
}

/// Lets the data disk settle before a service snapshot: the guest
/// writes its dirty pages back, then the SUT waits until QEMU counts no
/// new write for [`DATA_QUIET`]. A snapshot taken with dirty pages, or
/// with a database in the middle of background work, writes the data
/// disk again after every restore, and that makes the next service
/// restore unsafe (see [`SnapshotSet::note_data_writes`]). Returns whether
/// the disk settled within `timeout` (true with no data disk).
pub(super) fn quiesce_data_disk(vm: &mut Vm, timeout: Duration) -> bool {
    let Some(mut last) = data_writes(vm) else { return true };
    let started = Instant::now();
    if let Err(e) = crate::memory::sync(vm) {
        tracing::warn!("the guest did not sync before the service snapshot: {e}");
    }
    let mut quiet_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = data_writes(vm).unwrap_or(last);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= DATA_QUIET {
            tracing::info!(seconds = started.elapsed().as_secs_f64(), "data disk quiet for the service snapshot");
            return true;
        }
        if started.elapsed() >= timeout {
            tracing::warn!(
                "the data disk was still being written after {timeout:?}; a service snapshot taken now would be stale at once"
            );
            return false;
        }
    }
}

/// Copies a snapshot's files into `dir` and opens the copy there. The
/// copy keeps the RAM image's holes: a plain copy writes every untouched
/// guest page as zeros, and a campaign keeps one such copy per golden run.
pub(super) fn copy_snapshot(snap: &Snapshot, dir: &Path) -> Result<Snapshot, RecoveryError> {
    std::fs::create_dir_all(dir).map_err(|source| RecoveryError::Io { what: "a snapshot copy", source })?;
    for entry in std::fs::read_dir(&snap.dir).map_err(|source| RecoveryError::Io { what: "a snapshot copy", source })? {
        let entry = entry.map_err(|source| RecoveryError::Io { what: "a snapshot copy", source })?;
        if entry.path().is_file() {
            crate::snapshot::copy_sparse(&entry.path(), &dir.join(entry.file_name()))
                .map_err(|source| RecoveryError::Io { what: "a snapshot copy", source })?;
        }
    }
    Ok(Snapshot::open(dir)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::snapshot::SnapshotMeta;

    const WATCHED: &[&str] = &["/bin/busybox", "/www"];

    fn snapshot(watched: &[&str]) -> Snapshot {
        let state = FileState::Present { inode: 1, size: 2, mtime: 3 };
        Snapshot {
            dir: "/nonexistent".into(),
            meta: SnapshotMeta {
                profile: "tiny".into(),
                kernel: "k".into(),
                qemu_version: "7.2".into(),
                accel: "tcg".into(),
                memory_mib: 128,
                phase: "services-ready".into(),
                pause_s: 0.0,
                watched: watched.iter().map(|p| (p.to_string(), state)).collect(),
            },
        }
    }

    fn set(service: Snapshot) -> SnapshotSet {
        SnapshotSet::adopted(tempfile::tempdir().unwrap(), service, None, None, WATCHED)
    }

    #[test]
    fn a_snapshot_without_the_full_watched_manifest_is_not_restorable() {
        assert_eq!(set(snapshot(WATCHED)).unsafe_reason(Which::Service), None);
        let reason = set(snapshot(&["/bin/busybox"])).unsafe_reason(Which::Service).unwrap();
        assert!(reason.contains("no safety-monitor manifest of /www"), "{reason}");
        assert!(reason.contains("cannot vouch"), "{reason}");
        let reason = set(snapshot(&[])).unsafe_reason(Which::Service).unwrap();
        assert!(reason.contains("/bin/busybox, /www"), "{reason}");
    }
}
