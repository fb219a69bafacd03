//! Kernel-update experiment files (`experiments/update.toml`): which guest
//! is updated to which locked kernel, by which strategies, how often, under
//! which load. Unknown keys are refused; the expansion into experiments is
//! stable (rounds of every strategy in the file's order).

use std::path::{Path, PathBuf};

use recovery_sut::recovery::UpdateStrategy;
use recovery_sut::Profile;
use serde::Deserialize;

/// An update experiment file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateCampaign {
    /// Its name: the results go to `results/<name>/` by default.
    pub name: String,
    /// One line saying what it measures.
    pub description: String,
    /// Seed of the request mixes.
    #[serde(default = "one")]
    pub seed: u64,
    /// Updates per strategy.
    pub repetitions: u32,
    /// The guest and the kernel it is updated to.
    pub guest: GuestSection,
    /// The client load.
    #[serde(default)]
    pub workload: WorkloadSection,
    /// The strategies.
    pub update: UpdateSection,
}

fn one() -> u64 {
    1
}

/// `[guest]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestSection {
    /// The guest profile (its image is built to carry the kernel `to`).
    pub profile: Profile,
    /// The locked release to update to.
    pub to: String,
    /// Guest RAM in MiB (the profile's default when absent).
    pub memory_mib: Option<u32>,
}

/// `[workload]`: closed-loop static HTTP clients.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSection {
    /// Clients.
    #[serde(default = "two")]
    pub clients: usize,
    /// Load before the update, seconds (at least 1).
    #[serde(default = "two_s")]
    pub warmup_s: f64,
}

fn two() -> usize {
    2
}

fn two_s() -> f64 {
    2.0
}

impl Default for WorkloadSection {
    fn default() -> Self {
        WorkloadSection { clients: two(), warmup_s: two_s() }
    }
}

/// `[update]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSection {
    /// Strategies, in the order each round runs them.
    pub strategies: Vec<UpdateStrategy>,
}

/// Why an experiment file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UpdateSpecError {
    /// Unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML or a value the types refuse.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's words, with line and key.
        message: String,
    },
    /// A value outside its range.
    #[error("{path}: `{key}` {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// What is wrong and what to write instead.
        problem: String,
    },
}

/// One experiment of the expansion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateExperiment {
    /// Its index (the store's key).
    pub index: u64,
    /// The strategy.
    pub strategy: UpdateStrategy,
    /// Its repetition.
    pub rep: u32,
}

/// Whether the experiment file at `path` is an update campaign (it has an
/// `[update]` table) rather than a fault or recovery campaign.
pub fn is_update_file(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .is_some_and(|t| t.contains_key("update"))
}

impl UpdateCampaign {
    /// Reads and checks an experiment file.
    pub fn load(path: &Path) -> Result<UpdateCampaign, UpdateSpecError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| UpdateSpecError::Read { path: path.into(), source })?;
        Self::parse(path, &text)
    }

    /// Parses and checks experiment-file text (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<UpdateCampaign, UpdateSpecError> {
        let c: UpdateCampaign =
            toml::from_str(text).map_err(|e| UpdateSpecError::Parse { path: path.into(), message: e.to_string() })?;
        let invalid = |key, problem: &str| UpdateSpecError::Invalid { path: path.into(), key, problem: problem.into() };
        if c.name.is_empty() || !c.name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
            return Err(invalid("name", "must be letters, digits, `-` or `_` (it names the results directory)"));
        }
        if !(1..=1000).contains(&c.repetitions) {
            return Err(invalid("repetitions", "must be between 1 and 1000"));
        }
        if c.update.strategies.is_empty() {
            return Err(invalid("update.strategies", "is empty: name reboot, kexec or shadow-reboot"));
        }
        let mut seen = c.update.strategies.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != c.update.strategies.len() {
            return Err(invalid("update.strategies", "names a strategy twice"));
        }
        if c.workload.clients == 0 || c.workload.clients > 64 {
            return Err(invalid("workload.clients", "must be between 1 and 64"));
        }
        if !(c.workload.warmup_s.is_finite() && (1.0..=600.0).contains(&c.workload.warmup_s)) {
            return Err(invalid("workload.warmup_s", "must be between 1 and 600 seconds"));
        }
        if c.guest.to.trim().is_empty() {
            return Err(invalid("guest.to", "is empty: name a release kernel.lock locks (e.g. 6.1.0-57-amd64)"));
        }
        Ok(c)
    }

    /// Every experiment, in run order: round by round, each round every
    /// strategy in the file's order (so host drift spreads over all).
    pub fn experiments(&self) -> Vec<UpdateExperiment> {
        let n = self.update.strategies.len() as u64;
        (0..u64::from(self.repetitions) * n)
            .map(|index| UpdateExperiment {
                index,
                strategy: self.update.strategies[(index % n) as usize],
                rep: (index / n) as u32,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = r#"
name = "update"
description = "d"
repetitions = 2
[guest]
profile = "tiny"
to = "6.1.0-57-amd64"
[update]
strategies = ["reboot", "shadow-reboot"]
"#;

    #[test]
    fn the_expansion_runs_rounds_of_every_strategy() {
        let c = UpdateCampaign::parse(Path::new("u.toml"), GOOD).unwrap();
        let got: Vec<(u64, &str, u32)> = c.experiments().iter().map(|e| (e.index, e.strategy.name(), e.rep)).collect();
        assert_eq!(got, vec![(0, "reboot", 0), (1, "shadow-reboot", 0), (2, "reboot", 1), (3, "shadow-reboot", 1)]);
        assert_eq!(c.workload, WorkloadSection::default());
    }

    #[test]
    fn bad_files_name_the_key_and_the_fix() {
        for (text, want) in [
            (GOOD.replace("repetitions = 2", "repetitions = 0"), "`repetitions` must be between 1 and 1000"),
            (GOOD.replace("\"reboot\", ", "\"reboot\", \"reboot\", "), "names a strategy twice"),
            (
                GOOD.replace("shadow-reboot", "shadow"),
                "unknown variant `shadow`, expected one of `reboot`, `kexec`, `shadow-reboot`",
            ),
            (GOOD.replace("[update]", "[update]\nspeed = 1"), "unknown field `speed`"),
            (GOOD.replace("to = \"6.1.0-57-amd64\"", ""), "missing field `to`"),
            (GOOD.replace("name = \"update\"", "name = \"a/b\""), "`name` must be letters"),
        ] {
            let err = UpdateCampaign::parse(Path::new("u.toml"), &text).unwrap_err().to_string();
            assert!(err.starts_with("u.toml") && err.contains(want), "{err} (wanted {want})");
        }
    }

    proptest! {
        #[test]
        fn any_text_gives_a_campaign_or_an_error_never_a_panic(text in ".{0,300}") {
            let _ = UpdateCampaign::parse(Path::new("x.toml"), &text);
        }

        #[test]
        fn every_index_appears_once_with_each_strategy_repetitions_times(reps in 1u32..20, n in 1usize..4) {
            let strategies = &UpdateStrategy::ALL[..n];
            let text = format!(
                "name = \"u\"\ndescription = \"d\"\nrepetitions = {reps}\n[guest]\nprofile = \"tiny\"\nto = \"x\"\n[update]\nstrategies = [{}]\n",
                strategies.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
            );
            let c = UpdateCampaign::parse(Path::new("u.toml"), &text).unwrap();
            let e = c.experiments();
            prop_assert_eq!(e.len(), reps as usize * n);
            for (i, x) in e.iter().enumerate() {
                prop_assert_eq!(x.index, i as u64);
            }
            for s in strategies {
                prop_assert_eq!(e.iter().filter(|x| x.strategy == *s).count(), reps as usize);
            }
        }
    }
}
