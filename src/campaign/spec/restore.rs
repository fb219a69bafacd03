//! The `[restore]` table of an experiment file: restore measurements
//! (RAM sizes x memory reduction x restore path x storage x cache state),
//! their validation with file, line and key, and their stable expansion.
//! Running them is `campaign::restore`'s job. A part of the experiment
//! file's layer: it uses only its parent, `spec`.

use std::fmt;
use std::path::Path;

use recovery_sut::storage::Storage;
use recovery_sut::Strategy;
use serde::{Deserialize, Serialize};

use super::{Action, ExperimentFile, ExperimentFileError, Planned};

/// Memory reduction before the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reduction {
    /// The guest drops its page cache and free-page reporting (virtio-balloon)
    /// returns the freed pages, so the snapshot holds only used pages.
    On,
    /// The snapshot holds whatever the guest holds.
    Off,
}

/// Whether the snapshot's bytes are in the host page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheState {
    /// Dropped: the storage device is read.
    Cold,
    /// Resident: the device is not asked.
    Warm,
}

/// How the restore loads guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestorePath {
    /// Device state streamed, RAM file mapped copy-on-write and faulted in
    /// on demand (`x-ignore-shared`).
    Lazy,
    /// Device state and RAM in one migration stream, all loaded before the
    /// guest runs.
    Streamed,
}

macro_rules! kebab_display {
    ($t:ty, $($v:ident => $s:literal),+) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $(Self::$v => $s),+ })
            }
        }
    };
}
kebab_display!(Reduction, On => "on", Off => "off");
kebab_display!(CacheState, Cold => "cold", Warm => "warm");
kebab_display!(RestorePath, Lazy => "lazy", Streamed => "streamed");

/// A storage name in an experiment file (`hdd`, `sata-ssd`, `nvme`,
/// `page-cache`, `disk`, or MB/s as a string); unknown ones are parse
/// errors with their line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageName(pub Storage);

impl Serialize for StorageName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for StorageName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(StorageName).map_err(serde::de::Error::custom)
    }
}

fn default_reduction() -> Vec<Reduction> {
    vec![Reduction::Off]
}

fn default_storage() -> Vec<StorageName> {
    vec![StorageName(Storage::PageCache)]
}

fn default_cache() -> Vec<CacheState> {
    vec![CacheState::Warm]
}

fn default_paths() -> Vec<RestorePath> {
    vec![RestorePath::Lazy]
}

fn default_fill() -> f64 {
    0.5
}

/// `[restore]`: the conditions, each list crossed with the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreSpec {
    /// Guest RAM sizes in MiB (one guest boot each).
    pub ram_mb: Vec<u32>,
    /// `on` and/or `off`.
    #[serde(default = "default_reduction")]
    pub reduction: Vec<Reduction>,
    /// Where the snapshot is read from.
    #[serde(default = "default_storage")]
    pub storage: Vec<StorageName>,
    /// `cold` and/or `warm` (`page-cache` is warm only).
    #[serde(default = "default_cache")]
    pub cache: Vec<CacheState>,
    /// `lazy` and/or `streamed`.
    #[serde(default = "default_paths")]
    pub restore_path: Vec<RestorePath>,
    /// Share of guest RAM the guest reads into its page cache before the
    /// snapshot (from a disk of random data).
    #[serde(default = "default_fill")]
    pub page_cache_fill: f64,
}

/// The conditions of one restore experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePoint {
    /// Guest RAM, MiB.
    pub ram_mb: u32,
    /// Memory reduction before the snapshot.
    pub reduction: Reduction,
    /// Restore path.
    pub path: RestorePath,
    /// Storage read from.
    pub storage: Storage,
    /// Host page cache state.
    pub cache: CacheState,
}

impl RestorePoint {
    /// The experiment key's condition part.
    pub fn key(&self) -> String {
        format!(
            "restore ram_mb={} reduction={} restore_path={} storage={} cache={}",
            self.ram_mb, self.reduction, self.path, self.storage, self.cache
        )
    }
}

/// The numbered experiments: RAM sizes, then reduction (one prepared
/// guest per pair, so its experiments are consecutive), then path,
/// storage, cache and repetition. `page-cache` is expanded warm only.
pub fn expand(spec: &RestoreSpec, repetitions: u32) -> Vec<Planned> {
    let mut out = Vec::new();
    for &ram_mb in &spec.ram_mb {
        for &reduction in &spec.reduction {
            for &path in &spec.restore_path {
                for &StorageName(storage) in &spec.storage {
                    for &cache in &spec.cache {
                        if cache == CacheState::Cold && !storage.can_be_cold() {
                            continue;
                        }
                        let point = RestorePoint { ram_mb, reduction, path, storage, cache };
                        for rep in 0..repetitions {
                            out.push(Planned {
                                index: out.len() as u64,
                                action: Action::Restore(point),
                                strategy: Strategy::ServiceRestore,
                                rep,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// The 1-based line of `key = ...` inside the `[restore]` table (the
/// table's header line when the key is absent).
fn line_of(text: &str, key: &str) -> usize {
    let mut header = 1;
    let mut inside = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            inside = t == "[restore]";
            if inside {
                header = i + 1;
            }
        } else if inside && t.split('=').next().is_some_and(|k| k.trim() == key) {
            return i + 1;
        }
    }
    header
}

/// Checks a `[restore]` table; errors name the file, the line and the key.
pub fn validate(path: &Path, text: &str, file: &ExperimentFile, spec: &RestoreSpec) -> Result<(), ExperimentFileError> {
    let invalid = |key: &str, problem: String| ExperimentFileError::InvalidAt {
        path: path.to_path_buf(),
        line: line_of(text, key),
        key: format!("restore.{key}"),
        problem,
    };
    let points =
        [spec.ram_mb.len(), spec.reduction.len(), spec.restore_path.len(), spec.storage.len(), spec.cache.len()]
            .iter()
            .try_fold(u64::from(file.repetitions), |n, &k| n.checked_mul(k as u64));
    if points.is_none_or(|n| n > super::MAX_EXPERIMENTS) {
        return Err(invalid(
            "ram_mb",
            format!(
                "the table expands to more than {} experiments: use fewer values or repetitions",
                super::MAX_EXPERIMENTS
            ),
        ));
    }
    if !file.inject.is_empty() || !file.recovery.strategies.is_empty() {
        return Err(ExperimentFileError::InvalidAt {
            path: path.to_path_buf(),
            line: line_of(text, ""),
            key: "restore".into(),
            problem: "a [restore] campaign measures restores and injects nothing: remove [[inject]] and [recovery]"
                .into(),
        });
    }
    if spec.ram_mb.is_empty() {
        return Err(invalid("ram_mb", "list at least one guest RAM size in MiB, e.g. [256, 512]".into()));
    }
    if let Some(bad) = spec.ram_mb.iter().find(|&&m| !(128..=65536).contains(&m)) {
        return Err(invalid("ram_mb", format!("{bad} MiB is outside 128..=65536")));
    }
    for (key, len) in [
        ("reduction", spec.reduction.len()),
        ("storage", spec.storage.len()),
        ("cache", spec.cache.len()),
        ("restore_path", spec.restore_path.len()),
    ] {
        if len == 0 {
            return Err(invalid(key, "list at least one value (leave the key out for its default)".into()));
        }
    }
    let dup = |v: Vec<String>| v.len() != v.iter().collect::<std::collections::BTreeSet<_>>().len();
    for (key, values) in [
        ("ram_mb", spec.ram_mb.iter().map(|v| v.to_string()).collect::<Vec<_>>()),
        ("reduction", spec.reduction.iter().map(|v| v.to_string()).collect()),
        ("storage", spec.storage.iter().map(|v| v.0.to_string()).collect()),
        ("cache", spec.cache.iter().map(|v| v.to_string()).collect()),
        ("restore_path", spec.restore_path.iter().map(|v| v.to_string()).collect()),
    ] {
        if dup(values) {
            return Err(invalid(key, "a value is listed twice".into()));
        }
    }
    if spec.cache == [CacheState::Cold] && spec.storage.iter().all(|s| !s.0.can_be_cold()) {
        return Err(invalid(
            "cache",
            "the page cache is warm by definition: add \"warm\", or a storage such as \"hdd\"".into(),
        ));
    }
    if !(spec.page_cache_fill.is_finite() && (0.0..=0.9).contains(&spec.page_cache_fill)) {
        return Err(invalid(
            "page_cache_fill",
            format!("{} is not a share of guest RAM between 0 and 0.9", spec.page_cache_fill),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeSet;

    use super::super::Campaign;
    use super::*;

    const GOOD: &str = r#"
name = "memory"
seed = 1
repetitions = 2

[guest]
profile = "tiny"

[workload]
kind = "apache"

[restore]
ram_mb = [256, 512]
reduction = ["off", "on"]
restore_path = ["lazy", "streamed"]
storage = ["page-cache", "hdd"]
cache = ["cold", "warm"]
"#;

    fn parse(text: &str) -> Result<Campaign, ExperimentFileError> {
        Campaign::parse(Path::new("mem.toml"), text)
    }

    #[test]
    fn restore_tables_expand_into_keyed_restores_grouped_by_guest() {
        let c = parse(GOOD).unwrap();
        let planned = c.expand();
        // 2 RAM x 2 reductions x 2 paths x (hdd cold+warm, page-cache warm) x 2 reps.
        assert_eq!(planned.len(), 2 * 2 * 2 * 3 * 2);
        assert!(planned.iter().enumerate().all(|(i, p)| p.index == i as u64));
        let keys: BTreeSet<String> = planned.iter().map(Planned::key).collect();
        assert_eq!(keys.len(), planned.len());
        assert_eq!(
            planned[0].key(),
            "restore ram_mb=256 reduction=off restore_path=lazy storage=page-cache cache=warm strategy=service-restore rep=0"
        );
        assert!(!keys.iter().any(|k| k.contains("page-cache cache=cold")));
        // Each (RAM, reduction) group is one run of consecutive experiments.
        let groups: Vec<(u32, Reduction)> = planned
            .iter()
            .map(|p| match p.action {
                Action::Restore(r) => (r.ram_mb, r.reduction),
                _ => panic!("not a restore"),
            })
            .collect();
        let mut runs = groups.clone();
        runs.dedup();
        assert_eq!(runs.len(), 4);
        // Defaults: one lazy, warm, page-cache restore without reduction.
        let minimal = GOOD.split("[restore]").next().unwrap().to_string() + "[restore]\nram_mb = [256]\n";
        let c = parse(&minimal).unwrap();
        assert_eq!(c.expand().len(), 2);
        assert_eq!(c.file.restore.as_ref().unwrap().page_cache_fill, 0.5);
    }

    #[test]
    fn bad_restore_tables_name_file_line_and_key() {
        let bad = GOOD.replace("\"hdd\"]", "\"floppy\"]");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("mem.toml") && e.contains("line 16") && e.contains("floppy"), "{e}");

        let bad = GOOD.replace("[\"lazy\", \"streamed\"]", "[\"lazy\", \"eager\"]");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("line 15") && e.contains("eager"), "{e}");

        let bad = GOOD.replace("ram_mb = [256, 512]", "ram_mb = [256, 64]");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("mem.toml: line 13: key `restore.ram_mb`") && e.contains("64 MiB"), "{e}");

        let bad = GOOD.replace("cache = [\"cold\", \"warm\"]", "cache = [\"cold\", \"cold\"]");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("line 17") && e.contains("restore.cache") && e.contains("twice"), "{e}");

        let bad = GOOD.replace("cache = [\"cold\", \"warm\"]", "cache = [\"cold\"]\npage_cache_fill = 1.5");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("line 18") && e.contains("restore.page_cache_fill"), "{e}");

        let bad = GOOD
            .replace("storage = [\"page-cache\", \"hdd\"]", "storage = [\"page-cache\"]")
            .replace("cache = [\"cold\", \"warm\"]", "cache = [\"cold\"]");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("line 17") && e.contains("warm by definition"), "{e}");

        let bad = GOOD.replace("[restore]", "[[inject]]\ncrash = \"sysrq\"\n\n[restore]");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("line 15: key `restore`") && e.contains("remove [[inject]]"), "{e}");

        let bad = GOOD.replace("cache = [", "caches = [");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("line 17") && e.contains("caches"), "{e}");
    }
}
