//! The golden snapshot a running campaign's experiments start from, made
//! anew when it stops verifying mid-campaign.
//!
//! A golden snapshot can break while a campaign runs (a truncated file, a
//! cleaner removing part of the cache, a disk error). Every experiment
//! restores it, so without a check each later experiment would fail three
//! times and end as a `harness-error`: the campaign would carry on, but
//! measure nothing. After an experiment fails to start, its worker asks the
//! slot to check the snapshot it started from; a broken one is replaced by
//! a new golden run once, under a write lock, so the other workers wait for
//! the new one instead of failing on the old one, and the retry starts from
//! the new snapshot.
//!
//! Experiments already running when the snapshot is replaced keep the files
//! they opened; their recovery snapshots were the old golden ones, so a
//! service restore among them may fall back, and says so in its record.

use std::sync::{Arc, RwLock};

use anyhow::{anyhow, Result};
use recovery_sut::Golden;

/// Makes a new golden snapshot; its argument counts the snapshots made
/// anew before it in this run (0 for the first), so each gets its own
/// directory.
type Remake<'a> = Box<dyn Fn(u32) -> Result<Golden> + Send + Sync + 'a>;

/// The current golden snapshot, shared by a campaign's workers.
pub struct GoldenSlot<'a> {
    current: RwLock<Arc<Golden>>,
    remake: Remake<'a>,
    remade: std::sync::atomic::AtomicU32,
}

/// A golden snapshot replaced because it no longer verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remade {
    /// Why the old one was unusable.
    pub reason: String,
}

impl std::fmt::Display for Remade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the golden snapshot stopped verifying ({}); made it anew by a golden run", self.reason)
    }
}

impl<'a> GoldenSlot<'a> {
    /// A slot holding `golden`, renewed with `remake` when it breaks.
    pub fn new(golden: Golden, remake: impl Fn(u32) -> Result<Golden> + Send + Sync + 'a) -> GoldenSlot<'a> {
        GoldenSlot {
            current: RwLock::new(Arc::new(golden)),
            remake: Box::new(remake),
            remade: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// The snapshot the next experiment starts from.
    pub fn current(&self) -> Arc<Golden> {
        match self.current.read() {
            Ok(golden) => Arc::clone(&golden),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// How many snapshots were made anew so far.
    pub fn remade(&self) -> u32 {
        self.remade.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// After an experiment that started from `used` failed: when `used` is
    /// still the current snapshot and no longer verifies, makes a new one
    /// and says why. `None`: `used` verifies (the failure was something
    /// else) or another worker has replaced it already. An error: the new
    /// golden run failed too, which no experiment can get past.
    pub fn renew_if_broken(&self, used: &Arc<Golden>) -> Result<Option<Remade>> {
        let mut current = self.current.write().map_err(|_| anyhow!("a worker panicked holding the golden snapshot"))?;
        if !Arc::ptr_eq(&current, used) {
            return Ok(None);
        }
        let Err(broken) = used.verify() else { return Ok(None) };
        let made = self.remade.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *current = Arc::new((self.remake)(made)?);
        Ok(Some(Remade { reason: broken.to_string() }))
    }
}
