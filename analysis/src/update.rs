//! Kernel-update campaigns: one [`UpdateRecord`] per update, kept as JSON
//! lines in `updates.jsonl` ([`UpdateStore`]: appended and synced one record
//! at a time, so an interrupted campaign resumes where it stopped), their
//! per-strategy summary against a reboot ([`summarize`]) and the report
//! with its figures ([`write_update_report`]).

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::figures::{self, Figure, FigureError};
use crate::record::Provenance;

/// The store's file in a results directory.
pub const UPDATE_STORE_FILE: &str = "updates.jsonl";

/// The published band of ShadowReboot's downtime reduction against a
/// reboot (Yamada and Kono, VEE 2013).
pub const PUBLISHED_REDUCTION: (f64, f64) = (0.91, 0.98);

/// How an update was applied, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordedUpdateStrategy {
    /// Reboot into the new kernel (the baseline).
    Reboot,
    /// kexec into it.
    Kexec,
    /// ShadowReboot.
    ShadowReboot,
}

impl RecordedUpdateStrategy {
    /// Its name in records and tables.
    pub fn name(self) -> &'static str {
        match self {
            RecordedUpdateStrategy::Reboot => "reboot",
            RecordedUpdateStrategy::Kexec => "kexec",
            RecordedUpdateStrategy::ShadowReboot => "shadow-reboot",
        }
    }
}

impl fmt::Display for RecordedUpdateStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The shadow's part of a ShadowReboot, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedShadow {
    /// How the shadow got the primary's state (`fresh-boot-on-overlays`).
    pub clone: String,
    /// Its boot to the phase boundary, seconds.
    pub boot_s: f64,
    /// Its snapshot, seconds.
    pub snapshot_s: f64,
    /// Launching the standby the primary switched to, seconds.
    pub standby_s: f64,
    /// Boots (more than one: watched files changed meanwhile).
    pub boots: u32,
    /// Bytes the primary wrote to its root disk after the clone, lost with
    /// the switch (`None`: no root disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_writes_lost_bytes: Option<u64>,
}

/// One kernel update of a campaign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateRecord {
    /// The experiment's index in the campaign's expansion (unique).
    pub index: u64,
    /// The strategy.
    pub strategy: RecordedUpdateStrategy,
    /// Repetition of the strategy.
    pub rep: u32,
    /// Why the update failed, if it did (then the timings are absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The kernel before and after (`uname -r` as the agent reported it).
    pub from_release: String,
    /// The kernel after.
    pub to_release: String,
    /// Client-seen downtime (`kfi_stats::definitions::UPDATE_DOWNTIME`),
    /// seconds; `None`: not measured (the service did not come back).
    pub downtime_s: Option<f64>,
    /// The availability probe's outage by the same measure, seconds.
    pub probe_outage_s: Option<f64>,
    /// Work while the old kernel served (kexec's load, the shadow), seconds.
    pub prepare_s: Option<f64>,
    /// Stopping the data disk's writers at the switch's start, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiesce_s: Option<f64>,
    /// From the quiesce's end until the new kernel ran, seconds.
    pub switch_s: Option<f64>,
    /// From the switch until the VMM's probe got a correct answer, seconds.
    pub service_s: Option<f64>,
    /// From the switch until the guest reported every service running
    /// (`services-ready`; debian: MariaDB included), seconds, whether or
    /// not the clients waited for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_services_s: Option<f64>,
    /// Whether clients were held at the host until the data-dependent
    /// services ran (`None`: a record from before this was recorded, when
    /// debian held them and tiny did not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients_held: Option<bool>,
    /// Correct answers per second in the second before the preparation.
    pub baseline_rps: f64,
    /// Correct answers per second during the preparation (at least 0.5 s).
    pub prepare_rps: Option<f64>,
    /// The shadow, for a ShadowReboot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<RecordedShadow>,
    /// The switch ran on a QEMU launched beforehand.
    pub standby: bool,
    /// A phase snapshot of the new kernel was taken.
    pub phase_snapshot: bool,
    /// Writes the guest acknowledged as durable.
    pub writes_acked: u64,
    /// Acknowledged writes missing from the data disk afterwards.
    pub writes_lost: Vec<u64>,
    /// Requests the clients sent and correct answers.
    pub requests: u64,
    /// Correct answers.
    pub correct: u64,
    /// The kernel updated to (`debian:<package>=<version>`).
    pub to_kernel_origin: String,
    /// How the experiment was obtained (its kernel is the one updated from).
    pub provenance: Provenance,
    /// When it was stored (seconds since the epoch).
    pub finished_unix: u64,
}

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UpdateStoreError {
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line other than a torn last one does not parse.
    #[error("{path} line {line}: {message}; the store is damaged (move it away to start the campaign again)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// serde's words.
        message: String,
    },
    /// An experiment index stored twice.
    #[error("{path}: experiment {index} is stored twice")]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// The index.
        index: u64,
    },
    /// A figure failed.
    #[error(transparent)]
    Figure(#[from] FigureError),
}

/// A campaign's update records: `updates.jsonl` in its results directory.
pub struct UpdateStore {
    path: PathBuf,
    records: Vec<UpdateRecord>,
    dropped_torn: bool,
}

impl UpdateStore {
    /// Opens (or creates) the store in `dir`. A last line cut short by a
    /// crash while it was written is dropped (its experiment runs again);
    /// any other damage is an error.
    pub fn open(dir: &Path) -> Result<UpdateStore, UpdateStoreError> {
        std::fs::create_dir_all(dir).map_err(|source| UpdateStoreError::Io {
            action: "create",
            path: dir.into(),
            source,
        })?;
        let path = dir.join(UPDATE_STORE_FILE);
        let (records, dropped_torn) = if path.exists() { read_records(&path, true)? } else { (Vec::new(), false) };
        Ok(UpdateStore { path, records, dropped_torn })
    }

    /// Reads the records of `dir` (read-only, no torn line tolerated).
    pub fn read(dir: &Path) -> Result<Vec<UpdateRecord>, UpdateStoreError> {
        Ok(read_records(&dir.join(UPDATE_STORE_FILE), false)?.0)
    }

    /// Whether opening dropped a last line cut short by a crash (its
    /// experiment runs again).
    pub fn dropped_torn_line(&self) -> bool {
        self.dropped_torn
    }

    /// The records stored so far.
    pub fn records(&self) -> &[UpdateRecord] {
        &self.records
    }

    /// The experiment indices stored so far.
    pub fn done(&self) -> BTreeSet<u64> {
        self.records.iter().map(|r| r.index).collect()
    }

    /// Appends one record and syncs it to the disk before returning.
    pub fn append(&mut self, record: UpdateRecord) -> Result<(), UpdateStoreError> {
        if self.records.iter().any(|r| r.index == record.index) {
            return Err(UpdateStoreError::Duplicate { path: self.path.clone(), index: record.index });
        }
        let io = |action| {
            let path = self.path.clone();
            move |source| UpdateStoreError::Io { action, path, source }
        };
        let mut line = serde_json::to_string(&record).expect("a record is plain data");
        line.push('\n');
        let mut file = OpenOptions::new().create(true).append(true).open(&self.path).map_err(io("open"))?;
        file.write_all(line.as_bytes()).map_err(io("append to"))?;
        file.sync_data().map_err(io("sync"))?;
        self.records.push(record);
        Ok(())
    }
}

fn read_records(path: &Path, drop_torn_tail: bool) -> Result<(Vec<UpdateRecord>, bool), UpdateStoreError> {
    let file = File::open(path).map_err(|source| UpdateStoreError::Io { action: "open", path: path.into(), source })?;
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|source| UpdateStoreError::Io { action: "read", path: path.into(), source })?;
    let text_len: usize = lines.iter().map(|l| l.len() + 1).sum();
    let ends_with_newline =
        std::fs::metadata(path).map(|m| m.len() as usize == text_len).unwrap_or(true) || lines.is_empty();
    let mut out: Vec<UpdateRecord> = Vec::new();
    let mut dropped = false;
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<UpdateRecord>(line) {
            Ok(r) => {
                if out.iter().any(|o| o.index == r.index) {
                    return Err(UpdateStoreError::Duplicate { path: path.into(), index: r.index });
                }
                out.push(r);
            }
            // Only the last line, written without its newline, can be torn.
            Err(_) if drop_torn_tail && i + 1 == lines.len() && !ends_with_newline => {
                dropped = true;
                let keep: usize = lines[..i].iter().map(|l| l.len() + 1).sum();
                let file = OpenOptions::new().write(true).open(path).map_err(|source| UpdateStoreError::Io {
                    action: "open",
                    path: path.into(),
                    source,
                })?;
                file.set_len(keep as u64).map_err(|source| UpdateStoreError::Io {
                    action: "truncate",
                    path: path.into(),
                    source,
                })?;
            }
            Err(e) => return Err(UpdateStoreError::Corrupt { path: path.into(), line: i + 1, message: e.to_string() }),
        }
    }
    Ok((out, dropped))
}

/// One strategy's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpdateSummary {
    /// The strategy.
    pub strategy: RecordedUpdateStrategy,
    /// Updates run.
    pub trials: usize,
    /// Updates that ended with the new kernel serving.
    pub served: usize,
    /// Downtime statistics (type-7 quantiles) over the served ones.
    pub downtime: Option<kfi_stats::Summary>,
    /// Median probe outage, seconds.
    pub probe_outage_median_s: Option<f64>,
    /// Median preparation, seconds.
    pub prepare_median_s: Option<f64>,
    /// Median of the preparation's correct-answer rate over the baseline's.
    pub prepare_throughput_ratio: Option<f64>,
    /// Median quiesce (the data disk's writers stopped), seconds.
    pub quiesce_median_s: Option<f64>,
    /// Median switch, seconds.
    pub switch_median_s: Option<f64>,
    /// Median shadow boot, seconds (ShadowReboot).
    pub shadow_boot_median_s: Option<f64>,
    /// Median time from the switch until every service ran again
    /// (`services-ready`; debian: MariaDB included), seconds.
    pub all_services_median_s: Option<f64>,
    /// Whether clients were held until the data-dependent services ran:
    /// `Some` when every served record says the same.
    pub clients_held: Option<bool>,
    /// Acknowledged writes and those lost, over all trials.
    pub writes_acked: u64,
    /// Lost ones.
    pub writes_lost: usize,
    /// 1 - median / median(reboot).
    pub reduction_vs_reboot: Option<f64>,
    /// The same of the time until every service ran again.
    pub all_services_reduction_vs_reboot: Option<f64>,
}

/// The value every item has, `None` when they differ or there are none.
fn the_one<T: Ord>(values: impl Iterator<Item = T>) -> Option<T> {
    let mut distinct: BTreeSet<T> = values.collect();
    match distinct.len() {
        1 => distinct.pop_first(),
        _ => None,
    }
}

/// Per-strategy figures in strategy order, with the reduction against the
/// reboot's median.
pub fn summarize(records: &[UpdateRecord]) -> Vec<UpdateSummary> {
    let strategies: BTreeSet<RecordedUpdateStrategy> = records.iter().map(|r| r.strategy).collect();
    let mut out: Vec<UpdateSummary> = strategies
        .into_iter()
        .map(|strategy| {
            let mine: Vec<&UpdateRecord> = records.iter().filter(|r| r.strategy == strategy).collect();
            let served: Vec<&&UpdateRecord> = mine.iter().filter(|r| r.error.is_none()).collect();
            UpdateSummary {
                strategy,
                trials: mine.len(),
                served: served.len(),
                downtime: kfi_stats::Summary::of(&served.iter().filter_map(|r| r.downtime_s).collect::<Vec<_>>()),
                probe_outage_median_s: kfi_stats::median(served.iter().filter_map(|r| r.probe_outage_s)),
                prepare_median_s: kfi_stats::median(served.iter().filter_map(|r| r.prepare_s)),
                prepare_throughput_ratio: kfi_stats::median(
                    served
                        .iter()
                        .filter_map(|r| r.prepare_rps.filter(|_| r.baseline_rps > 0.0).map(|p| p / r.baseline_rps)),
                ),
                quiesce_median_s: kfi_stats::median(served.iter().filter_map(|r| r.quiesce_s)),
                switch_median_s: kfi_stats::median(served.iter().filter_map(|r| r.switch_s)),
                shadow_boot_median_s: kfi_stats::median(
                    served.iter().filter_map(|r| r.shadow.as_ref().map(|s| s.boot_s)),
                ),
                all_services_median_s: kfi_stats::median(served.iter().filter_map(|r| r.all_services_s)),
                clients_held: the_one(served.iter().map(|r| r.clients_held)).flatten(),
                writes_acked: mine.iter().map(|r| r.writes_acked).sum(),
                writes_lost: mine.iter().map(|r| r.writes_lost.len()).sum(),
                reduction_vs_reboot: None,
                all_services_reduction_vs_reboot: None,
            }
        })
        .collect();
    let reboot = out.iter().find(|s| s.strategy == RecordedUpdateStrategy::Reboot);
    let baseline = reboot.and_then(|s| s.downtime.as_ref()).map(|d| d.median);
    let all_baseline = reboot.and_then(|s| s.all_services_median_s);
    let reduction = |v: Option<f64>, b: Option<f64>| match (v, b) {
        (Some(v), Some(b)) if b > 0.0 => Some(1.0 - v / b),
        _ => None,
    };
    for s in &mut out {
        s.reduction_vs_reboot = reduction(s.downtime.as_ref().map(|d| d.median), baseline);
        s.all_services_reduction_vs_reboot = reduction(s.all_services_median_s, all_baseline);
    }
    out
}

/// What [`write_update_report`] wrote.
#[derive(Debug)]
pub struct UpdateReport {
    /// `report.md`.
    pub path: PathBuf,
    /// Its first line.
    pub headline: String,
    /// The figures.
    pub figures: Vec<Figure>,
}

/// The report's first line: ShadowReboot's reduction against the reboot,
/// beside the published band, and kexec's.
pub fn headline(summary: &[UpdateSummary], guest: &str) -> String {
    let of = |s: RecordedUpdateStrategy| summary.iter().find(|x| x.strategy == s);
    let (lo, hi) = PUBLISHED_REDUCTION;
    match (of(RecordedUpdateStrategy::ShadowReboot), of(RecordedUpdateStrategy::Reboot)) {
        (Some(shadow), Some(reboot)) => {
            match (shadow.downtime.as_ref(), reboot.downtime.as_ref(), shadow.reduction_vs_reboot) {
                (Some(d), Some(b), Some(r)) => {
                    let kexec = of(RecordedUpdateStrategy::Kexec)
                        .and_then(|k| k.downtime.as_ref().map(|d| (d.median, k)))
                        .map_or(String::new(), |(m, k)| {
                            let r = k.reduction_vs_reboot.map_or("-".into(), |r| format!("{:+.1}%", -100.0 * r));
                            let failed = if k.served < k.trials {
                                format!(", {} of {} updates failed and rolled back", k.trials - k.served, k.trials)
                            } else {
                                String::new()
                            };
                            format!("; kexec {m:.3} s ({r}{failed})")
                        });
                    let all = match (shadow.all_services_median_s, reboot.all_services_median_s) {
                        (Some(a), Some(b)) => format!(
                            "; the guest reported every service running (the data disk mounted{}) {a:.3} s after the switch began vs {b:.3} s",
                            if guest == "debian" { ", MariaDB started" } else { "" }
                        ),
                        _ => String::new(),
                    };
                    format!(
                    "**ShadowReboot cut the client-seen downtime of a kernel update on the {guest} guest by {:.1}% against a reboot** (median {:.3} s vs {:.3} s, n={} and {}{kexec}{all}); published: {:.0}-{:.0}% (Yamada and Kono, VEE 2013).",
                    100.0 * r,
                    d.median,
                    b.median,
                    d.n,
                    b.n,
                    lo * 100.0,
                    hi * 100.0
                )
                }
                _ => format!("ShadowReboot or the reboot never served on the {guest} guest: no reduction to give."),
            }
        }
        _ => format!(
            "This campaign did not run both ShadowReboot and a reboot on the {guest} guest: no reduction to give."
        ),
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.3}"))
}

/// Writes `report.md`, `summary.json` and the figures of `records` into `dir`.
pub fn write_update_report(
    records: &[UpdateRecord],
    campaign: &str,
    description: &str,
    dir: &Path,
) -> Result<UpdateReport, UpdateStoreError> {
    let summary = summarize(records);
    let guest = records.first().map_or("?".to_string(), |r| r.provenance.profile.name().to_string());
    let headline = headline(&summary, &guest);
    let figures = figures::update_figures(records, &summary, &dir.join("figures"))?;
    let mut md = format!("{headline}\n\n# {campaign}\n\n{description}\n\n");
    md += "## Downtime per strategy\n\n";
    md += "| strategy | served | median downtime (s) | p95 (s) | 95% CI of the mean (s) | probe outage median (s) | quiesce median (s) | switch median (s) | all services running, median (s) | reduction vs reboot | published |\n";
    md += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
    let (lo, hi) = PUBLISHED_REDUCTION;
    for s in &summary {
        let d = s.downtime.as_ref();
        md += &format!(
            "| {} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            s.strategy,
            s.served,
            s.trials,
            fmt_opt(d.map(|d| d.median)),
            fmt_opt(d.map(|d| d.p95)),
            d.and_then(|d| d.ci95).map_or("-".into(), |(a, b)| format!("{a:.3}-{b:.3}")),
            fmt_opt(s.probe_outage_median_s),
            fmt_opt(s.quiesce_median_s),
            fmt_opt(s.switch_median_s),
            fmt_opt(s.all_services_median_s),
            match (s.strategy, s.reduction_vs_reboot) {
                (RecordedUpdateStrategy::Reboot, _) => "baseline".to_string(),
                (_, Some(r)) => format!("{:.1}%", 100.0 * r),
                (_, None) => "-".into(),
            },
            if s.strategy == RecordedUpdateStrategy::ShadowReboot {
                format!("{:.0}-{:.0}% below a reboot", lo * 100.0, hi * 100.0)
            } else {
                String::new()
            },
        );
    }
    md += "\n## While the old kernel served: the preparation and its cost\n\n";
    md += "| strategy | preparation median (s) | shadow boot median (s) | root-disk writes lost with the switch, median (bytes) | correct answers/s during it, share of the baseline's | acknowledged writes | lost |\n";
    md += "|---|---:|---:|---:|---:|---:|---:|\n";
    for s in &summary {
        let root_lost = kfi_stats::median(
            records
                .iter()
                .filter(|r| r.strategy == s.strategy)
                .filter_map(|r| r.shadow.as_ref()?.root_writes_lost_bytes.map(|b| b as f64)),
        );
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            s.strategy,
            fmt_opt(s.prepare_median_s),
            fmt_opt(s.shadow_boot_median_s),
            root_lost.map_or("-".into(), |b| format!("{b:.0}")),
            s.prepare_throughput_ratio.map_or("-".into(), |r| format!("{:.0}%", 100.0 * r)),
            s.writes_acked,
            s.writes_lost
        );
    }
    let failed: Vec<String> = records
        .iter()
        .filter_map(|r| {
            r.error.as_ref().map(|e| format!("- experiment {} ({} #{}): {e}", r.index, r.strategy, r.rep + 1))
        })
        .collect();
    if !failed.is_empty() {
        md += &format!("\n## Updates that failed\n\n{}\n", failed.join("\n"));
    }
    md += "\n## Figures\n\n";
    for f in &figures {
        let file = f.svg.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        md += &format!("![{}](figures/{file})\n\n", f.title);
    }
    md += "## Method\n\n";
    md += &format!("- {}\n", kfi_stats::definitions::UPDATE_DOWNTIME);
    md += "- Every update starts from a freshly booted guest on the old kernel, its service snapshot taken, under closed-loop static HTTP clients (the document set, each answer checked byte for byte) and an availability probe (the index page every 10 ms); a writer appends acknowledged, synced writes to the data disk through the guest agent before, during and after the update (one at a time, 100 ms after the last answer), and the data disk is read back afterwards.\n";
    md += "- The switch begins when the old kernel is told to stop the data disk's writers (`quiesce`: on debian MariaDB's orderly stop, then the data disk remounted read-only; the old kernel still serves what needs no database meanwhile), after kexec's load or the shadow's snapshot, while it served. reboot: the guest reboots (tiny: `reboot -f`; debian: `systemctl reboot`), QEMU (told `set-action reboot=shutdown`) exits and a new QEMU boots the new kernel. kexec: the agent loaded the new kernel (`kexec -l`, a bzImage the new kernel decompresses itself) while serving, then jumps into it in the same QEMU (debian: `systemctl kexec`). shadow-reboot: a shadow QEMU (network `restrict=on`, disks of its own, the data disk a throwaway overlay never mounted) boots the new kernel to the phase boundary, is snapshotted there and stopped; a standby QEMU is launched on that snapshot with the primary's ports and disks; the switch kills the primary and restores the standby, which mounts the data disk and starts the data-dependent services.\n";
    md += "- Reboot and kexec boot the new kernel straight through, as a plain reboot does; the new kernel's phase snapshot is then taken from a shadow boot of it off the downtime path (a ShadowReboot's is the shadow's own), and after every strategy the service snapshot is taken again on the new kernel once the data disk is quiet. Where the guest profile holds clients until its data-dependent services run (debian: until MariaDB serves), only clients whose requests need them are held, under every strategy alike.\n";
    md += &match the_one(records.iter().filter(|r| r.error.is_none()).map(|r| r.clients_held)) {
        Some(Some(false)) => format!("- Clients were forwarded to the new kernel as soon as it ran (every record's `clients_held` is false): their static pages need only the web server, which runs at the phase boundary ({}), not the data-dependent services; the data disk's mount{} behind them. `all services running` is the time from the switch until the guest reported `services-ready`, the data-dependent services included.{}\n", if guest == "debian" { "Apache with PHP" } else { "busybox httpd" }, if guest == "debian" { " and MariaDB's start happen" } else { " happens" }, if guest == "debian" { " Unheld clients also reach a guest that is still booting or starting MariaDB, whose one vCPU their requests share: that lengthens a reboot's way to its first answer and MariaDB's start after every strategy." } else { "" }),
        Some(Some(true)) => "- Clients were held at the host until the data-dependent services ran (every record's `clients_held` is true).\n".to_string(),
        Some(None) => "- These records predate `clients_held`: at their commit debian held every client until MariaDB ran and tiny held none.\n".to_string(),
        _ => "- The records differ in whether clients were held until the data-dependent services ran (`clients_held`): compare like with like.\n".to_string(),
    };
    md += match guest.as_str() {
        "debian" => "- The debian guest's root disk: the kernel to update to is installed on it as its package would be (files only: the guest boots through QEMU's `-kernel` and kfi's initramfs). The shadow boots on an overlay of the primary's root disk frozen at the clone (QMP `blockdev-snapshot-sync`); that overlay becomes the switched guest's root disk, so what the primary wrote to its root disk after the clone (logs, mostly) is lost with the switch: its size is in the table above.\n",
        _ => "- The tiny guest's root is its initramfs, so the shadow's fresh boot reaches the same state a reboot would, and no root-disk writes are lost.\n",
    };
    md += "- Differences from the published setup: QEMU TCG with one vCPU on a shared 2-core host, not VirtualBox on hardware; Debian 6.1 kernels of adjacent ABIs; the shadow shares the host's CPUs with the primary, so the preparation costs the primary throughput (table above).\n";
    if let Some(r) = records.first() {
        let p = &r.provenance;
        md += &format!(
            "\n## Provenance\n\n- guest {}, {} MiB, accelerator {}, QEMU {}\n- kernel {} ({}) updated to {} ({})\n- image recipe {}\n- kfi {} commit {}{}\n- host {} ({} cores)\n",
            p.profile.name(),
            p.ram_mb,
            p.accel.name(),
            p.qemu_version,
            p.kernel_version,
            p.kernel_origin.as_deref().unwrap_or("?"),
            r.to_release,
            r.to_kernel_origin,
            p.image_recipe.as_deref().unwrap_or("?"),
            p.kfi_version,
            p.kfi_commit.as_deref().unwrap_or("?"),
            if p.kfi_dirty == Some(true) { " (with uncommitted changes)" } else { "" },
            p.host_cpu.as_deref().unwrap_or("?"),
            p.host_cores.map_or("?".into(), |c| c.to_string()),
        );
    }
    let path = dir.join("report.md");
    std::fs::write(&path, md).map_err(|source| UpdateStoreError::Io { action: "write", path: path.clone(), source })?;
    let json = serde_json::to_string_pretty(&summary).expect("plain data");
    let summary_path = dir.join("summary.json");
    std::fs::write(&summary_path, json).map_err(|source| UpdateStoreError::Io {
        action: "write",
        path: summary_path,
        source,
    })?;
    Ok(UpdateReport { path, headline, figures })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record(index: u64, strategy: RecordedUpdateStrategy, downtime: f64) -> UpdateRecord {
        UpdateRecord {
            index,
            strategy,
            rep: index as u32,
            error: None,
            from_release: "6.1.0-56-amd64".into(),
            to_release: "6.1.0-57-amd64".into(),
            downtime_s: Some(downtime),
            probe_outage_s: Some(downtime),
            prepare_s: Some(if strategy == RecordedUpdateStrategy::Reboot { 0.0 } else { 4.0 }),
            quiesce_s: Some(0.01),
            switch_s: Some(downtime / 2.0),
            service_s: Some(downtime),
            all_services_s: Some(downtime + 1.0),
            clients_held: Some(false),
            baseline_rps: 100.0,
            prepare_rps: (strategy != RecordedUpdateStrategy::Reboot).then_some(70.0),
            shadow: (strategy == RecordedUpdateStrategy::ShadowReboot).then(|| RecordedShadow {
                clone: "fresh-boot-on-overlays".into(),
                boot_s: 3.5,
                snapshot_s: 0.5,
                standby_s: 0.1,
                boots: 1,
                root_writes_lost_bytes: None,
            }),
            standby: strategy == RecordedUpdateStrategy::ShadowReboot,
            phase_snapshot: true,
            writes_acked: 20,
            writes_lost: Vec::new(),
            requests: 1000,
            correct: 990,
            to_kernel_origin: "debian:linux-image-6.1.0-57-amd64=6.1.192-3".into(),
            provenance: crate::fixture::provenance(),
            finished_unix: 0,
        }
    }

    #[test]
    fn the_store_keeps_records_across_opens_drops_a_torn_tail_and_refuses_damage() {
        let dir = crate::testdir::TestDir::new();
        let mut store = UpdateStore::open(dir.path()).unwrap();
        store.append(record(0, RecordedUpdateStrategy::Reboot, 4.0)).unwrap();
        store.append(record(1, RecordedUpdateStrategy::ShadowReboot, 0.4)).unwrap();
        let dup = store.append(record(1, RecordedUpdateStrategy::ShadowReboot, 0.4)).unwrap_err();
        assert!(dup.to_string().contains("experiment 1 is stored twice"), "{dup}");
        drop(store);
        let path = dir.path().join(UPDATE_STORE_FILE);
        // A crash while the third record was written: half a line.
        let third = serde_json::to_string(&record(2, RecordedUpdateStrategy::Kexec, 9.0)).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&third.as_bytes()[..third.len() / 2]).unwrap();
        drop(f);
        assert!(UpdateStore::read(dir.path()).is_err(), "a read-only reader does not repair");
        let store = UpdateStore::open(dir.path()).unwrap();
        assert!(store.dropped_torn_line());
        assert_eq!(store.done(), BTreeSet::from([0, 1]));
        assert_eq!(UpdateStore::read(dir.path()).unwrap().len(), 2, "the torn line is gone from the file");
        // Damage inside the file is an error that names the line.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{{not json\n{text}")).unwrap();
        let err = UpdateStore::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("line 1") && err.contains("damaged"), "{err}");
    }

    #[test]
    fn the_summary_and_headline_compare_each_strategy_with_the_reboot_median() {
        let mut records = Vec::new();
        for (i, d) in [4.0, 4.4, 4.2].into_iter().enumerate() {
            records.push(record(i as u64, RecordedUpdateStrategy::Reboot, d));
        }
        for (i, d) in [0.40, 0.42, 0.38].into_iter().enumerate() {
            records.push(record(10 + i as u64, RecordedUpdateStrategy::ShadowReboot, d));
        }
        records.push(record(20, RecordedUpdateStrategy::Kexec, 9.0));
        let mut failed = record(21, RecordedUpdateStrategy::Kexec, 0.0);
        failed.error = Some("the guest could not load the new kernel".into());
        failed.downtime_s = None;
        records.push(failed);
        let summary = summarize(&records);
        let shadow = summary.iter().find(|s| s.strategy == RecordedUpdateStrategy::ShadowReboot).unwrap();
        assert!((shadow.reduction_vs_reboot.unwrap() - (1.0 - 0.40 / 4.2)).abs() < 1e-12);
        assert_eq!(shadow.prepare_throughput_ratio, Some(0.7));
        let kexec = summary.iter().find(|s| s.strategy == RecordedUpdateStrategy::Kexec).unwrap();
        assert_eq!((kexec.served, kexec.trials), (1, 2));
        assert!(kexec.reduction_vs_reboot.unwrap() < 0.0, "kexec slower than the reboot is a negative reduction");
        // The time until every service ran has a median and a reduction of its own.
        assert_eq!(shadow.all_services_median_s, Some(1.40));
        assert!((shadow.all_services_reduction_vs_reboot.unwrap() - (1.0 - 1.40 / 5.2)).abs() < 1e-12);
        assert_eq!(shadow.clients_held, Some(false));
        assert!(headline(&summary, "debian").contains("MariaDB started) 1.400 s after the switch began vs 5.200 s"));
        let line = headline(&summary, "tiny");
        assert!(
            line.contains("90.5%")
                && line.contains("91-98%")
                && line.contains("kexec 9.000 s (+114.3%, 1 of 2 updates failed and rolled back)")
                && line.contains("(the data disk mounted) 1.400 s after the switch began vs 5.200 s"),
            "{line}"
        );

        let dir = crate::testdir::TestDir::new();
        let report = write_update_report(&records, "update", "test", dir.path()).unwrap();
        assert_eq!(report.figures.len(), 2);
        let md = std::fs::read_to_string(&report.path).unwrap();
        assert!(md.starts_with(&line), "the headline is the report's first line");
        assert!(md.contains("experiment 21 (kexec #22): the guest could not load the new kernel"), "{md}");
        assert!(md.contains(kfi_stats::definitions::UPDATE_DOWNTIME));
        assert!(md.contains("every record's `clients_held` is false"), "{md}");

        // Records that disagree on the hold are named as such.
        records[0].clients_held = Some(true);
        assert_eq!(summarize(&records)[0].clients_held, None);
        let report = write_update_report(&records, "update", "test", dir.path()).unwrap();
        let md = std::fs::read_to_string(&report.path).unwrap();
        assert!(md.contains("compare like with like"), "{md}");
    }
}
