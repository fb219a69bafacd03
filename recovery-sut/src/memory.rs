//! Memory reduction before a snapshot: the guest drops its page cache and
//! (with free-page reporting) hands the freed pages back, so the snapshot
//! holds only used pages.
//!
//! The experiments need a page cache worth dropping: the guest reads a
//! disk of pseudo-random data (`fill`), which goes through its block
//! layer's page cache exactly as file reads do, so `drop_caches` can free
//! it (a tmpfs file could not be freed, and zeros would be skipped by
//! every snapshot format for free).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};

use crate::agent::GuestMemory;
use crate::snapshot::allocated_bytes;
use crate::vm::Vm;

/// Errors driving the guest's memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The agent did not answer a command.
    #[error(
        "the guest agent did not answer `{command}` within {timeout:?}: the guest must be at `services-ready` \
         (the agent reads commands only then) and built from the current agent.sh (`kfi guest build tiny`)"
    )]
    NoAnswer {
        /// The command.
        command: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// The guest answered that it could not.
    #[error("the guest could not `{command}`: {why}")]
    Refused {
        /// The command.
        command: String,
        /// Its reason.
        why: String,
    },
    /// Writing to the agent or to a file failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Writes an ext4 image holding one file of `mib` MiB of pseudo-random
/// bytes (reused when it exists): no page of it is zero, none compresses.
/// The guest mounts it read-only and reads the file (`fill`).
pub fn make_fill_disk(path: &Path, mib: u64, seed: u64) -> Result<(), MemoryError> {
    if path.exists() {
        return Ok(());
    }
    let err = |action, p: &Path| {
        let p = p.to_path_buf();
        move |source| MemoryError::Io { action, path: p, source }
    };
    let parent = path.parent().unwrap_or(Path::new("."));
    let content = tempfile::Builder::new()
        .prefix(".kfi-fill-")
        .tempdir_in(parent)
        .map_err(err("create a directory in", parent))?;
    let file = content.path().join("fill");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file).map_err(err("create", &file))?);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        rng.fill_bytes(&mut buf);
        out.write_all(&buf).map_err(err("write", &file))?;
    }
    out.flush().map_err(err("write", &file))?;
    drop(out);
    // Room for ext4's metadata and journal.
    let size_mib = mib + mib / 16 + 16;
    let partial = path.with_extension("partial");
    crate::guest::make_ext4(&partial, content.path(), "kfi-fill", size_mib).map_err(|e| MemoryError::Io {
        action: "make the fill file system",
        path: partial.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    std::fs::rename(&partial, path).map_err(err("rename into", path))
}

use crate::agent::{next_seq, RequestError};

/// The agent reads commands only once its heartbeat loop runs (a moment
/// after `services-ready`); anything sent before is lost.
fn agent_listening(vm: &Vm) -> Result<(), MemoryError> {
    let timeout = Duration::from_secs(30);
    match vm.agent().wait_heartbeat(0, timeout) {
        Some(_) => Ok(()),
        None => Err(MemoryError::NoAnswer { command: "(a heartbeat)".into(), timeout }),
    }
}

fn command(vm: &Vm, verb: &str, timeout: Duration) -> Result<(), MemoryError> {
    agent_listening(vm)?;
    vm.agent().request(&format!("{verb} {{seq}}"), timeout).map_err(|e| match e {
        RequestError::Send { source, .. } => MemoryError::Io { action: "send to", path: "the agent".into(), source },
        RequestError::NoAnswer { command, timeout } => MemoryError::NoAnswer { command, timeout },
        RequestError::Refused { command, why } => MemoryError::Refused { command, why },
    })
}

/// Has the guest read its fill disk (`VmConfig::fill_disk`) through the
/// page cache; returns how long it took.
pub fn fill_page_cache(vm: &Vm, timeout: Duration) -> Result<Duration, MemoryError> {
    let started = Instant::now();
    command(vm, "fill", timeout)?;
    Ok(started.elapsed())
}

/// Has the guest write its dirty pages back, keeping its caches.
pub fn sync(vm: &Vm) -> Result<(), MemoryError> {
    command(vm, "sync", Duration::from_secs(60))
}

/// Has the guest sync and drop its page cache, dentries and inodes.
pub fn drop_caches(vm: &Vm) -> Result<(), MemoryError> {
    command(vm, "dropcaches", Duration::from_secs(60))
}

/// The guest's free memory and page cache, as its agent reads them.
pub fn meminfo(vm: &Vm) -> Result<GuestMemory, MemoryError> {
    agent_listening(vm)?;
    let seq = next_seq();
    let line = format!("meminfo {seq}");
    vm.agent().send(&line).map_err(|source| MemoryError::Io { action: "send to", path: "the agent".into(), source })?;
    let timeout = Duration::from_secs(30);
    vm.agent().wait_mem(seq, timeout).ok_or(MemoryError::NoAnswer { command: line, timeout })
}

/// Waits until free-page reporting has stopped shrinking the VM's RAM
/// file (the guest reports in batches, 2 s after pages are freed); returns
/// its allocated bytes then. Gives up (returning the current size) after
/// `timeout`.
pub fn settle_reporting(vm: &Vm, timeout: Duration) -> Result<u64, MemoryError> {
    let ram = vm.run_dir().join("guest.ram");
    let size = || allocated_bytes(&ram).map_err(|source| MemoryError::Io { action: "stat", path: ram.clone(), source });
    let deadline = Instant::now() + timeout;
    // The first report comes about 2 s after the pages were freed.
    std::thread::sleep(Duration::from_millis(2500));
    let mut last = size()?;
    let mut stable_since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let now = size()?;
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= Duration::from_millis(2500) {
            break;
        }
    }
    Ok(last)
}
